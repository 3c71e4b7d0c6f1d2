/* data/store_fmt.h — byte layout of the store's records, shared by the reader (store.c), the writer
 * (store_write.c) and verify. Internal to data/; docs/FORMATS.md is the user-facing description.
 *
 * Slice/label record = 44-byte header (little-endian) + one zstd frame (content size and checksum flag set):
 *   0 magic "MSR1" | 4 u8 dtype (1 = uint16, 2 = uint8, 3 = int16) | 5 u8 flags (bit 0: byte planes shuffled, low
 *   bytes first; bit 1: stored values of layout 2, normalised on read with the volume's encoding, data/encode.h) | 6 u16 reserved 0 | 8 u32 height | 12 u32 width | 16 f32 row spacing | 20 f32 column spacing |
 *   24 u32 volume id | 28 u32 slice index | 32 u32 crc32c of the raw pixels (little-endian, unshuffled) |
 *   36 u32 length of the zstd frame | 40 u32 crc32c of bytes 0..39.
 * Keys of slices/labels are 8-byte big-endian integers, volume keys 4-byte big-endian, so cursor order = key order.
 */
#ifndef MS_STORE_FMT_H
#define MS_STORE_FMT_H

#include <lmdb.h>
#include <stdint.h>
#include <string.h>
#include <zstd.h>

#include "base/status.h"

#define MS_REC_MAGIC "MSR1"
#define MS_REC_HDR 44
#define MS_REC_U16 1
#define MS_REC_U8 2
#define MS_REC_I16 3
#define MS_REC_SHUFFLED 1
#define MS_REC_STORED 2
/* 1: normalised uint16 pixels; 2: stored values + per-volume encoding (data/encode.h). Readers take both. */
#define MS_STORE_VERSION 2

typedef struct ms_rec_hdr {
    uint8_t dtype, flags;
    uint32_t height, width;
    float spacing[2];
    uint32_t volume_id, slice_index, crc, zlen, hcrc;
} ms_rec_hdr;

static inline void ms_put_u32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static inline uint32_t ms_get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void ms_key64(uint8_t k[8], uint64_t v)
{
    for (int i = 0; i < 8; i++) k[i] = (uint8_t)(v >> (56 - 8 * i));
}
static inline uint64_t ms_unkey64(const uint8_t k[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | k[i];
    return v;
}
static inline void ms_key32(uint8_t k[4], uint32_t v)
{
    for (int i = 0; i < 4; i++) k[i] = (uint8_t)(v >> (24 - 8 * i));
}

/* Decodes one slice or label record of len bytes into a uint16 buffer (*dst, grown as needed; *tmp is scratch):
 * the header's checks, the zstd frame's size against the header, the pixel checksum. Returns 0 and sets *why on
 * any inconsistency. Defined in store.c (the record reader of ms_store_read and verify; its fuzz target is
 * tests/data/fuzz_store_record.c). */
int ms_rec_decode(ZSTD_DCtx *dctx, const uint8_t *p, size_t len, ms_rec_hdr *h, uint16_t **dst, size_t *dst_cap,
                  uint8_t **tmp, size_t *tmp_cap, const char **why);

/* Refuses a data file shorter than the pages the store's meta page says it has (a partial copy): reading such a
 * file through LMDB's map dies with SIGBUS, in mdb_dbi_open or later. Called with env NULL before mdb_env_open
 * (a data file too short to hold its two meta pages, which LMDB reports as "not an LMDB file" or, for the writer,
 * would initialise as a new store) and with the opened env right after mdb_env_open, before any page beyond the
 * meta pages is read. path: the store as given; is_dir: whether it is a directory (data.mdb inside) rather than
 * the data file itself. MS_ECORRUPT "<store>/data.mdb: truncated: N bytes, the store's pages need M (a partial
 * copy?)"; MS_OK when the file is absent (the caller reports or creates it). Defined in store.c. */
ms_status ms_store_check_length(const char *path, int is_dir, MDB_env *env);

#endif
