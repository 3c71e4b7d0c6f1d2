/* tools/image_io.c — PNG write via libpng and .npy write/read; see image_io.h. libpng reports errors by longjmp, so
 * the PNG writer keeps its status in a volatile local and has one exit. */
#include "image_io.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"

static void png_write_fn(png_structp png, png_bytep data, png_size_t n)
{
    ms_afile *a = png_get_io_ptr(png);
    if (ms_afile_write(a, data, n)) png_error(png, "write failed");
}
static void png_flush_fn(png_structp png) { (void)png; }

ms_status ms_png_write_u8(const char *path, const uint8_t *pix, int w, int h, int channels)
{
    if ((channels != 1 && channels != 3) || w <= 0 || h <= 0)
        return ms_error(MS_EINVAL, "%s: cannot write a %dx%dx%d PNG", path, w, h, channels);
    ms_afile a;
    volatile ms_status rc = ms_afile_open(&a, path);
    if (rc) return rc;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) { rc = ms_error(MS_ENOMEM, "%s: out of memory", path); goto leave; }
    if (setjmp(png_jmpbuf(png))) { rc = ms_error(MS_EIO, "%s: PNG write failed", path); goto leave; }
    png_set_write_fn(png, &a, png_write_fn, png_flush_fn);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(pix + (size_t)y * w * channels));
    png_write_end(png, NULL);
leave:
    if (png) png_destroy_write_struct(&png, info ? &info : NULL);
    if (!rc) rc = ms_afile_commit(&a);
    else ms_afile_abort(&a);
    return rc;
}

ms_status ms_npy_write_f32(const char *path, const float *data, const int64_t *shape, int ndim)
{
    char hdr[256], sh[160] = "";
    size_t k = 0;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        k += (size_t)snprintf(sh + k, sizeof sh - k, "%lld,%s", (long long)shape[i], ndim > 1 && i < ndim - 1 ? " " : "");
        if (k >= sizeof sh) return ms_error(MS_EINVAL, "%s: too many dims", path);
        n *= shape[i];
    }
    if (ndim > 1) sh[--k] = 0; /* drop the trailing comma: "(1, 2)"; one dim keeps it: "(5,)" */
    int len = snprintf(hdr + 10, sizeof hdr - 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", sh);
    size_t total = 10 + (size_t)len + 1;
    size_t padded = (total + 63) / 64 * 64;
    memset(hdr + 10 + len, ' ', padded - total);
    hdr[padded - 1] = '\n';
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    hdr[8] = (char)((padded - 10) & 0xff);
    hdr[9] = (char)((padded - 10) >> 8);
    ms_afile a;
    ms_status rc = ms_afile_open(&a, path);
    if (rc) return rc;
    rc = ms_afile_write(&a, hdr, padded);
    if (!rc) rc = ms_afile_write(&a, data, (size_t)n * sizeof(float)); /* x86/ARM hosts are little-endian */
    if (!rc) rc = ms_afile_commit(&a);
    else ms_afile_abort(&a);
    return rc;
}

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
