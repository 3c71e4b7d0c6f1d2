/* data/png.c — see png.h. libpng reports errors by longjmp: everything assigned after the setjmp is volatile, and
 * the function has one exit. */
#include "data/png.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"

enum { EMSG_MAX = 160 };

static void on_error(png_structp p, png_const_charp msg)
{
    snprintf((char *)png_get_error_ptr(p), EMSG_MAX, "%s", msg);
    png_longjmp(p, 1);
}

static void on_warning(png_structp p, png_const_charp msg)
{
    (void)p;
    (void)msg;
}

void ms_png_free(ms_png *p)
{
    free(p->px);
    memset(p, 0, sizeof *p);
}

/* The expansions of png.h: 8 or 16 bits, 1 or 3 channels, no alpha, de-interlaced. */
static void set_transforms(png_structp png, png_infop info, ms_png_color color)
{
    int ct = png_get_color_type(png, info), bd = png_get_bit_depth(png, info);
    int trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ct == PNG_COLOR_TYPE_GRAY && bd < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (trns) png_set_tRNS_to_alpha(png);
    if ((ct & PNG_COLOR_MASK_ALPHA) || trns) png_set_strip_alpha(png);
    if (color == MS_PNG_GRAY && (ct & PNG_COLOR_MASK_COLOR)) png_set_rgb_to_gray(png, PNG_ERROR_ACTION_NONE, -1, -1);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
}

ms_status ms_png_read(const char *path, ms_png_color color, ms_png *out)
{
    memset(out, 0, sizeof *out);
    char emsg[EMSG_MAX] = "";
    uint8_t sig[8];
    FILE *f = fopen(path, "rb");
    if (!f) return ms_error(errno, "%s: %s", path, strerror(errno));
    png_structp png = NULL;
    png_infop info = NULL;
    uint8_t *volatile buf = NULL;
    png_bytep *volatile rows = NULL;
    uint16_t *volatile px = NULL;
    volatile ms_status st = MS_OK;
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8)) {
        st = ms_error(MS_EFORMAT, "%s: not a PNG file", path);
        goto leave;
    }
    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, emsg, on_error, on_warning);
    info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        st = ms_error(MS_ENOMEM, "%s: out of memory", path);
        goto leave;
    }
    if (setjmp(png_jmpbuf(png))) {
        st = ms_error(MS_EFORMAT, "%s: bad PNG (%s)", path, emsg);
        goto leave;
    }
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (w == 0 || h == 0 || w > 65536 || h > 65536) {
        st = ms_error(MS_EFORMAT, "%s: image size %ux%u out of range", path, (unsigned)w, (unsigned)h);
        goto leave;
    }
    set_transforms(png, info, color);
    int ch = png_get_channels(png, info), bd = png_get_bit_depth(png, info);
    if ((ch != 1 && ch != 3) || (bd != 8 && bd != 16)) {
        st = ms_error(MS_EUNSUPPORTED, "%s: %d channels of %d bits after expansion", path, ch, bd);
        goto leave;
    }
    size_t rowbytes = png_get_rowbytes(png, info), n = (size_t)w * ch;
    buf = malloc(rowbytes * h);
    rows = malloc(h * sizeof *rows);
    px = malloc(n * h * sizeof *px);
    if (!buf || !rows || !px) {
        st = ms_error(MS_ENOMEM, "%s: out of memory", path);
        goto leave;
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = buf + y * rowbytes;
    png_read_image(png, rows);
    for (png_uint_32 y = 0; y < h; y++) {
        const uint8_t *r = buf + y * rowbytes;
        uint16_t *o = px + (size_t)y * n;
        for (size_t i = 0; i < n; i++) o[i] = bd == 8 ? r[i] : (uint16_t)(r[2 * i] << 8 | r[2 * i + 1]); /* big-endian */
    }
    out->w = (int)w;
    out->h = (int)h;
    out->c = ch;
    out->depth = bd;
    out->px = px;
    px = NULL;
leave:
    if (png) png_destroy_read_struct(&png, info ? &info : NULL, NULL);
    free(rows);
    free(buf);
    free(px);
    fclose(f);
    return st;
}

void ms_image_free(ms_image *img)
{
    free(img->data);
    memset(img, 0, sizeof *img);
}

ms_status ms_png_read_image(const char *path, ms_image *img)
{
    ms_png p;
    memset(img, 0, sizeof *img);
    MS_TRY(ms_png_read(path, MS_PNG_AS_STORED, &p));
    const size_t n = (size_t)p.w * p.h * p.c;
    const float scale = p.depth == 16 ? 1.0f / 65535.0f : 1.0f / 255.0f;
    img->data = malloc(n * sizeof *img->data);
    if (!img->data) {
        ms_png_free(&p);
        return ms_error(MS_ENOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; i < n; i++) img->data[i] = (float)p.px[i] * scale;
    img->w = p.w;
    img->h = p.h;
    img->c = p.c;
    ms_png_free(&p);
    return MS_OK;
}

/* the output file and the status of its first failed write (a full disk: the message names the file and errno) */
typedef struct png_out {
    ms_afile a;
    ms_status rc;
} png_out;

static void png_write_fn(png_structp png, png_bytep data, png_size_t n)
{
    png_out *o = png_get_io_ptr(png);
    if ((o->rc = ms_afile_write(&o->a, data, n))) png_error(png, "write failed");
}
static void png_flush_fn(png_structp png) { (void)png; }

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

ms_status ms_png_write_u8(const char *path, const uint8_t *pix, int w, int h, int channels)
{
    if ((channels != 1 && channels != 3) || w <= 0 || h <= 0)
        return ms_error(MS_EINVAL, "%s: cannot write a %dx%dx%d PNG", path, w, h, channels);
    png_out o = {.rc = MS_OK};
    char emsg[EMSG_MAX] = "";
    volatile ms_status rc = ms_afile_open(&o.a, path);
    if (rc) return rc;
    /* on_error: libpng's default handler would print a second line of its own */
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, emsg, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) { rc = ms_error(MS_ENOMEM, "%s: out of memory", path); goto leave; }
    if (setjmp(png_jmpbuf(png))) { /* o lives in memory (libpng holds its address), so its rc is current */
        rc = o.rc ? o.rc : ms_error(MS_EIO, "%s: PNG write failed (%s)", path, emsg);
        goto leave;
    }
    png_set_write_fn(png, &o, png_write_fn, png_flush_fn);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(pix + (size_t)y * w * channels));
    png_write_end(png, NULL);
leave:
    if (png) png_destroy_write_struct(&png, info ? &info : NULL);
    if (!rc) rc = ms_afile_commit(&o.a);
    else ms_afile_abort(&o.a);
    return rc;
}
