/* tools/image_io.c — PNG write via libpng and .npy write/read; see image_io.h. libpng reports errors by longjmp, so
 * the PNG writer keeps its status in a volatile local and has one exit. */
#include "image_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"

ms_status ms_npy_read_f32(const char *path, float **data, int64_t *shape, int *ndim)
{
    *data = NULL;
    *ndim = 0;
    ms_map m;
    MS_TRY(ms_map_open(path, &m));
    ms_status rc = MS_OK;
    if (m.size < 10 || memcmp(m.p, "\x93NUMPY", 6) || m.p[6] != 1) {
        rc = ms_error(MS_EFORMAT, "%s: not a version-1 .npy file", path);
        goto leave;
    }
    size_t hl = ms_le16(m.p + 8);
    if (10 + hl > m.size) { rc = ms_error(MS_EFORMAT, "%s: truncated header", path); goto leave; }
    char hdr[1024];
    if (hl >= sizeof hdr) { rc = ms_error(MS_EFORMAT, "%s: header too long", path); goto leave; }
    memcpy(hdr, m.p + 10, hl);
    hdr[hl] = 0;
    if (!strstr(hdr, "'descr': '<f4'") || !strstr(hdr, "'fortran_order': False")) {
        rc = ms_error(MS_EUNSUPPORTED, "%s: only C-order little-endian float32 .npy is read", path);
        goto leave;
    }
    const char *s = strstr(hdr, "'shape': (");
    if (!s) { rc = ms_error(MS_EFORMAT, "%s: no shape", path); goto leave; }
    s += 10;
    int64_t n = 1;
    while (*s && *s != ')') {
        char *e;
        long long v = strtoll(s, &e, 10);
        if (e == s) { s++; continue; }
        if (v < 0 || *ndim >= 8 || (v && n > INT64_MAX / 4 / v)) { rc = ms_error(MS_EFORMAT, "%s: bad shape", path); goto leave; }
        shape[(*ndim)++] = v;
        n *= v;
        s = e;
    }
    if (10 + hl + (size_t)n * 4 > m.size) { rc = ms_error(MS_EFORMAT, "%s: truncated data", path); goto leave; }
    *data = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!*data) { rc = ms_error(MS_ENOMEM, "%s: out of memory", path); goto leave; }
    memcpy(*data, m.p + 10 + hl, (size_t)n * 4);
leave:
    ms_map_close(&m);
    return rc;
}
