/* data/store.h — the slice store: one LMDB environment written by `mrisam ingest`, read by the loader.
 *
 * Layout (documented in full in docs/FORMATS.md): named databases meta, volumes, slices, labels. Slice keys are
 * sequential 64-bit integers from 0 in ingest order; a slice record is a small header (shape, dtype, spacing, volume
 * id, slice index, checksum of the raw pixels) followed by a zstd frame. Layout 2 (data/encode.h) keeps each volume's
 * stored values (its integers as they are, or floats quantised) and normalises on read; layout-1 stores hold the
 * normalised pixels themselves. Either way a read gives uint16 pixels: the volume's normalised intensity in [0,1]
 * scaled by 65535.
 * Labels (same key, separate database) are uint8 or uint16 in the file and always uint16 through this API.
 *
 * Reading is thread-safe through one ms_store_reader per thread (its own zstd context and buffers; short read
 * transactions, MDB_NOTLS), which is how loader workers use it.
 */
#ifndef MS_STORE_H
#define MS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "data/encode.h"

typedef struct ms_store ms_store;
typedef struct ms_store_reader ms_store_reader;

typedef struct ms_volume_info {
    uint32_t id;
    uint64_t first_key; /* slices of this volume are keys [first_key, first_key + n_slices) */
    uint32_t n_slices;
    int32_t height, width; /* in-plane size of every slice of the volume */
    float spacing[3]; /* in-plane row spacing, column spacing, slice spacing (mm) */
    int has_labels;
    int n_label_values;
    uint16_t label_values[256]; /* the distinct label values present (sorted), first n_label_values */
    double intensity_offset, intensity_scale; /* original ≈ offset + scale · (pixel / 65535) inside the window */
    int layout;                               /* 1: pixels stored normalised; 2: stored values + enc */
    ms_encoding enc;                          /* layout 2: the encoding, window as reads apply it */
    char source_hash[65]; /* hex content hash of the source file(s) */
} ms_volume_info;

typedef struct ms_slice {
    uint64_t key;
    uint32_t volume_id;
    uint32_t slice_index; /* index along the slicing axis in the canonical (RAS+) volume */
    int32_t height, width;
    float spacing[2];
    const uint16_t *pixels; /* height·width normalised pixels, row-major; valid until the next read on the reader */
    const uint16_t *stored; /* layout 2: the stored values (bits of stored_type) the pixels come from; else NULL */
    int stored_type;        /* MS_STORED_U16 | MS_STORED_I16, 0 for layout 1 */
    const uint16_t *label; /* height·width, or NULL when the slice has no label */
} ms_slice;

/* Open read-only. max_readers sizes LMDB's reader table (one per loader worker plus a few). A folder of shards
 * (ms_store_is_set) opens as one store: its volumes ordered by their source's index in the full source list, keys
 * consecutive in that order (what a one-piece ingest of the same sources gives), every function below working on
 * the whole set. A set missing a shard, holding one twice, or mixing sets is refused ("DIR: <reason>"). */
ms_status ms_store_open(const char *path, int max_readers, ms_store **out);
/* 1 when path is a folder without data.mdb holding shard-K-of-N folders (ingest --shard). */
int ms_store_is_set(const char *path);
/* Shard k of n of the set in dir: dir/shard-KKKKK-of-NNNNN (five digits at least). */
ms_status ms_store_shard_path(const char *dir, int k, int n, char out[4096]);
/* The set's shard count, 0 for a one-piece store; the folder of shard k. */
int ms_store_n_shards(const ms_store *s);
const char *ms_store_shard_dir(const ms_store *s, int k);
/* The store's ID (32 hex digits; a set's: the ID all its shards record), NULL for a store written before stores
 * had IDs. Split files name their store by it (docs/CLI.md §Split files). */
const char *ms_store_id(const ms_store *s);
/* The ID of the store at path without opening it as a whole (id[0] = 0 when it has none). */
ms_status ms_store_id_at(const char *path, char id[33]);
void ms_store_close(ms_store *s);
uint64_t ms_store_n_slices(const ms_store *s);
uint32_t ms_store_n_volumes(const ms_store *s);
ms_status ms_store_volume(ms_store *s, uint32_t volume_id, ms_volume_info *out);
/* The store's label names ("class name" lines from --label-names), or NULL. */
const char *ms_store_label_names(const ms_store *s);

/* The store's format version: 1 (normalised pixels) or 2 (stored values, data/encode.h). */
int ms_store_layout(const ms_store *s);
/* Reads layout-2 volumes with another window than the one ingest chose (--norm of pretrain/finetune): zscore, none,
 * or percentile with p_lo, p_hi among the kept ones (data/encode.h). Call before creating readers. A layout-1 store
 * is refused (MS_EUNSUPPORTED: its normalisation was applied at ingest). */
ms_status ms_store_set_norm(ms_store *s, ms_norm norm, double p_lo, double p_hi);

ms_status ms_store_reader_new(ms_store *s, ms_store_reader **out);
void ms_store_reader_free(ms_store_reader *r);
/* Reads and decompresses slice `key` (and its label). A checksum failure returns MS_ECORRUPT with a message naming
 * the store and the key; the reader stays usable. */
ms_status ms_store_read(ms_store_reader *r, uint64_t key, ms_slice *out);

/* ---- additions by ingest (verify, inspect, export) ---- */

/* The JSON text of a meta entry ("format", "params", "counts") or of volume `id`; NULL / MS_ENOTFOUND when absent.
 * The returned string is malloc'ed; free it. */
ms_status ms_store_meta_json(ms_store *s, const char *name, char **out);
ms_status ms_store_volume_json(ms_store *s, uint32_t volume_id, char **out);

/* Every slice and label record: decompressed and checked (header crc, pixel crc, zstd checksum, sizes, volume
 * ranges). Calls on_bad(ctx, db, key, reason) for each bad record; *n_bad counts them, *n_checked counts records
 * read. Returns MS_OK even when records are bad (the count says so); an error only when the store cannot be read. */
typedef void (*ms_store_bad_fn)(void *ctx, const char *db, uint64_t key, const char *reason);
ms_status ms_store_verify(ms_store *s, ms_store_bad_fn on_bad, void *ctx, uint64_t *n_checked, uint64_t *n_bad);

/* Sizes for inspect: compressed bytes of slice and label records and their decompressed sizes. */
typedef struct ms_store_sizes {
    uint64_t slice_records, slice_bytes, slice_raw_bytes;
    uint64_t label_records, label_bytes, label_raw_bytes;
    uint64_t file_bytes;
} ms_store_sizes;
ms_status ms_store_sizes_get(ms_store *s, ms_store_sizes *out);

#endif
