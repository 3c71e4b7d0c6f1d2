/* checkpoints/zip.h — the STORED-only zip subset that torch.save writes (docs/FORMATS.md §Checkpoints and weights).
 *
 * Reader: works on a caller-owned byte range (a mapped file). The end record is found by scanning back from the
 * end; Zip64 end record/locator and the 0x0001 extra field are honoured; sizes and offsets come from the central
 * directory, the data start from the LOCAL header's own name/extra lengths. Every offset and size is checked
 * against the file size (and entry data against the central directory's start) before use; only method 0
 * (stored), unencrypted, single-disk archives are accepted; duplicate names are refused.
 * Writer: STORED entries whose data start on a 64-byte file offset (padding in an "FB" extra field filled with
 * 'Z', as torch does), sizes and CRC32 in the local header, Zip64 records when a size, offset or count needs them
 * (or always, with force_zip64, which the tests use to exercise the Zip64 paths on small files).
 */
#ifndef MS_CKPT_ZIP_H
#define MS_CKPT_ZIP_H

#include <stdint.h>

#include "base/status.h"
#include "base/fileio.h"

typedef struct ms_zip_entry {
    char *name;
    uint64_t data_off, size;
    uint32_t crc;
} ms_zip_entry;

typedef struct ms_zip {
    char *path;
    const uint8_t *p;
    uint64_t size;
    int n;
    ms_zip_entry *e;
} ms_zip;

ms_status ms_zip_open(ms_zip *z, const uint8_t *p, uint64_t size, const char *path);
const ms_zip_entry *ms_zip_find(const ms_zip *z, const char *name);
/* Recomputes the CRC32 of an entry and compares it with the central directory's. */
ms_status ms_zip_check_crc(const ms_zip *z, const ms_zip_entry *e);
void ms_zip_close(ms_zip *z);

typedef struct ms_zipw_entry {
    char *name;
    uint64_t off, size;
    uint32_t crc;
} ms_zipw_entry;

typedef struct ms_zipw {
    ms_afile *f;        /* entries are appended at f->off */
    int force_zip64;
    int n, cap;
    ms_zipw_entry *e;
} ms_zipw;

void ms_zipw_init(ms_zipw *w, ms_afile *f);
ms_status ms_zipw_add(ms_zipw *w, const char *name, const void *data, uint64_t size);
/* Writes the central directory and end records. */
ms_status ms_zipw_finish(ms_zipw *w);
void ms_zipw_free(ms_zipw *w);

#endif
