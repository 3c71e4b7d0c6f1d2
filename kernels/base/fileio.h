/* kernels/base/fileio.h — file I/O every part of the library shares: read-only mappings, crash-safe writes, mkdir -p.
 *
 * Readers map the whole file (PROT_READ, private) and check every offset and size against map.size before
 * touching a byte, so a hostile file can only produce an error, never an out-of-bounds read. Writers go through
 * ms_afile: a temporary file "<path>.tmp.<pid>" in the same folder, fsynced, renamed over `path`, then the
 * folder fsynced; on any failure the temporary is removed and `path` is left as it was, and the message names `path`
 * and the errno ("F: No space left on device (ENOSPC)", ms_error_sys).
 */
#ifndef MS_FILEIO_H
#define MS_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base/status.h"

typedef struct ms_map {
    const uint8_t *p;  /* NULL for an empty file */
    size_t size;
} ms_map;

ms_status ms_map_open(const char *path, ms_map *m);
void ms_map_close(ms_map *m);

typedef struct ms_afile {
    FILE *f;
    char *path, *tmp;
    uint64_t off;      /* bytes written so far */
} ms_afile;

ms_status ms_afile_open(ms_afile *a, const char *path);
ms_status ms_afile_write(ms_afile *a, const void *p, size_t n);
/* fflush + fsync + close + rename + fsync(folder). After it (success or not) the handle is closed. */
ms_status ms_afile_commit(ms_afile *a);
/* Closes and removes the temporary (safe to call after commit or twice). */
void ms_afile_abort(ms_afile *a);

/* mkdir -p */
ms_status ms_mkdirs(const char *path);
/* mkdir -p of the folder that will hold path. */
ms_status ms_mkdirs_parent(const char *path);
/* Writes `len` bytes to path atomically (tmp + fsync + rename + fsync of the directory). */
ms_status ms_write_file_atomic(const char *path, const void *data, size_t len);
/* Reads a whole file (malloc'd, NUL-terminated for convenience); *len gets the size. max_len bounds it. */
ms_status ms_read_file(const char *path, size_t max_len, char **data, size_t *len);
ms_status ms_fsync_dir(const char *dir);
/* Puts directory src in dst's place: an atomic exchange when dst exists (renameat2 RENAME_EXCHANGE; src then holds
 * the old dst), else a rename. */
ms_status ms_dir_swap_in(const char *src, const char *dst);
/* rm -r; a path that does not exist is no error. */
ms_status ms_dir_remove(const char *path);
/* fsync of the folder that holds path (a rename or a new entry there is durable after it). */
ms_status ms_fsync_parent(const char *path);

/* Little-endian loads (the buffer may be unaligned). */
static inline uint16_t ms_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ms_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t ms_le64(const uint8_t *p) { return (uint64_t)ms_le32(p) | ((uint64_t)ms_le32(p + 4) << 32); }
static inline void ms_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void ms_put32(uint8_t *p, uint32_t v) { ms_put16(p, (uint16_t)v); ms_put16(p + 2, (uint16_t)(v >> 16)); }
static inline void ms_put64(uint8_t *p, uint64_t v) { ms_put32(p, (uint32_t)v); ms_put32(p + 4, (uint32_t)(v >> 32)); }

#endif
