/* tests/data/test_png.c — the one PNG reader (data/png.h). PNGs of random size and random samples (seed printed) are
 * written with libpng directly — 8- and 16-bit gray and RGB, interlaced and not, with alpha, palette and 1-bit gray —
 * and read back: ms_png_read must return exactly the written samples at their bit depth (16-bit never divided), and
 * ms_png_read_image exactly sample · (1 / (2^depth − 1)) in float (0 → 0, max → 1). MS_PNG_GRAY keeps gray pixels
 * and R = G = B pixels as they are and puts every other pixel between its smallest and largest channel. A file that
 * is not a PNG, a truncated PNG and a missing file fail with the path in the message. */
#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/png.h"
#include "harness.h"

typedef struct spec {
    const char *what;
    int color_type; /* PNG_COLOR_TYPE_GRAY, _RGB, _GRAY_ALPHA, _RGB_ALPHA, _PALETTE */
    int depth;      /* 1, 8 or 16 */
    int interlace;  /* PNG_INTERLACE_NONE or _ADAM7 */
} spec;

static int n_channels(int ct)
{
    return ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_PALETTE ? 1 : ct == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
           : ct == PNG_COLOR_TYPE_RGB                                 ? 3
                                                                      : 4;
}

/* Writes the PNG of w·h pixels of nc samples (the file's own channels, alpha included; palette indices) with libpng.
 * Returns 0 on success. */
static int write_png(const char *path, const spec *s, int w, int h, const uint16_t *v, const png_color *pal, int npal)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    const int nc = n_channels(s->color_type), bps = s->depth == 16 ? 2 : 1;
    uint8_t *img = malloc((size_t)h * ((size_t)w * nc * 2 + 1));
    png_bytep *rows = malloc((size_t)h * sizeof *rows);
    int rc = -1;
    if (!png || !info || !img || !rows || setjmp(png_jmpbuf(png))) goto leave;
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, s->depth, s->color_type, s->interlace,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (pal) png_set_PLTE(png, info, pal, npal);
    png_write_info(png, info);
    const size_t rb = png_get_rowbytes(png, info);
    for (int y = 0; y < h; y++) {
        uint8_t *r = img + (size_t)y * rb;
        const uint16_t *src = v + (size_t)y * w * nc;
        rows[y] = r;
        if (s->depth == 1) { /* 8 pixels a byte, most significant bit first */
            memset(r, 0, rb);
            for (int x = 0; x < w; x++) r[x / 8] |= (uint8_t)((src[x] & 1) << (7 - x % 8));
            continue;
        }
        for (int i = 0; i < w * nc; i++) {
            if (bps == 2) r[2 * i] = (uint8_t)(src[i] >> 8), r[2 * i + 1] = (uint8_t)(src[i] & 0xff); /* big-endian */
            else r[i] = (uint8_t)src[i];
        }
    }
    png_write_image(png, rows);
    png_write_end(png, NULL);
    rc = 0;
leave:
    png_destroy_write_struct(&png, info ? &info : NULL);
    free(img);
    free(rows);
    fclose(f);
    return rc;
}

/* One spec: random size and samples, written, read back both ways, compared. */
static void check_case(const spec *s, const char *dir, ms_rng *r)
{
    /* w >= 2: the first and the last pixel below must differ, or one overwrites the other */
    const int w = 2 + (int)(ms_rng_below(r, 69)), h = 1 + (int)(ms_rng_below(r, 50));
    const int nc = n_channels(s->color_type), mx = s->depth == 16 ? 65535 : s->depth == 8 ? 255 : 1;
    const int is_pal = s->color_type == PNG_COLOR_TYPE_PALETTE;
    const size_t n = (size_t)w * h * nc;
    uint16_t *v = malloc(n * sizeof *v);
    png_color pal[16];
    for (int i = 0; i < 16; i++)
        pal[i].red = (png_byte)ms_rng_below(r, 256), pal[i].green = (png_byte)ms_rng_below(r, 256), pal[i].blue = (png_byte)ms_rng_below(r, 256);
    for (size_t i = 0; i < n; i++) v[i] = (uint16_t)ms_rng_below(r, is_pal ? 16 : (uint64_t)mx + 1);
    if (!is_pal) v[0] = 0, v[n - nc] = (uint16_t)mx; /* both ends of the range (not in an alpha channel) */
    char path[512];
    snprintf(path, sizeof path, "%s/%s.png", dir, s->what);
    MS_CHECK(write_png(path, s, w, h, v, is_pal ? pal : NULL, 16) == 0, "%s: libpng could not write", s->what);

    /* what the reader should give: alpha dropped, palette → RGB, 1-bit → 0/255 */
    const int oc = is_pal || nc >= 3 ? 3 : 1;
    const int odepth = s->depth == 16 ? 16 : 8;
    uint16_t *want = malloc((size_t)w * h * oc * sizeof *want);
    for (size_t p = 0; p < (size_t)w * h; p++)
        for (int c = 0; c < oc; c++) {
            const uint16_t *src = v + p * nc;
            want[p * oc + c] = is_pal ? (c == 0 ? pal[src[0]].red : c == 1 ? pal[src[0]].green : pal[src[0]].blue)
                             : s->depth == 1 ? (uint16_t)(src[0] ? 255 : 0)
                                             : src[c];
        }

    ms_png png;
    ms_status st = ms_png_read(path, MS_PNG_AS_STORED, &png);
    MS_CHECK(st == MS_OK, "%s: ms_png_read: %s", s->what, ms_errmsg());
    if (st == MS_OK) {
        MS_CHECK(png.w == w && png.h == h && png.c == oc && png.depth == odepth, "%s: %dx%dx%d depth %d, want %dx%dx%d "
                 "depth %d", s->what, png.w, png.h, png.c, png.depth, w, h, oc, odepth);
        size_t bad = 0, first = 0;
        if (png.w == w && png.h == h && png.c == oc)
            for (size_t i = 0; i < (size_t)w * h * oc; i++)
                if (png.px[i] != want[i] && !bad++) first = i;
        MS_CHECK(bad == 0, "%s (%dx%d): %zu samples differ, first at %zu: %u, want %u", s->what, w, h, bad, first,
                 png.px[first], want[first]);
        ms_png_free(&png);
    }

    ms_image img;
    st = ms_png_read_image(path, &img);
    MS_CHECK(st == MS_OK, "%s: ms_png_read_image: %s", s->what, ms_errmsg());
    if (st == MS_OK && img.w == w && img.h == h && img.c == oc) {
        const float scale = odepth == 16 ? 1.0f / 65535.0f : 1.0f / 255.0f;
        const double dmax = odepth == 16 ? 65535.0 : 255.0;
        size_t bad = 0;
        double worst = 0;
        for (size_t i = 0; i < (size_t)w * h * oc; i++) {
            float x = img.data[i];
            double d = fabs((double)x - want[i] / dmax);
            worst = d > worst ? d : worst;
            bad += x != (float)want[i] * scale || !(x >= 0.0f && x <= 1.0f);
        }
        MS_CHECK(bad == 0 && worst < 1e-7, "%s: image path: %zu samples are not sample/%g (max |x - v/max| = %.3g)",
                 s->what, bad, dmax, worst);
        if (!is_pal && s->depth != 1)
            MS_CHECK(img.data[0] == 0.0f && img.data[((size_t)w * h - 1) * oc] == 1.0f, "%s: 0 → %g, max → %g",
                     s->what, (double)img.data[0], (double)img.data[((size_t)w * h - 1) * oc]);
        ms_image_free(&img);
    } else if (st == MS_OK) {
        MS_CHECK(0, "%s: image path gave %dx%dx%d", s->what, img.w, img.h, img.c);
        ms_image_free(&img);
    }

    /* MS_PNG_GRAY: gray stays as it is; a colour pixel becomes a weighted mean of its channels */
    st = ms_png_read(path, MS_PNG_GRAY, &png);
    MS_CHECK(st == MS_OK, "%s: ms_png_read gray: %s", s->what, ms_errmsg());
    if (st == MS_OK) {
        MS_CHECK(png.c == 1 && png.w == w && png.h == h && png.depth == odepth, "%s: gray read gave %d channels",
                 s->what, png.c);
        size_t bad = 0;
        for (size_t p = 0; png.c == 1 && png.w == w && png.h == h && p < (size_t)w * h; p++) {
            const uint16_t *q = want + p * oc;
            uint16_t lo = q[0], hi = q[0];
            for (int c = 1; c < oc; c++) lo = q[c] < lo ? q[c] : lo, hi = q[c] > hi ? q[c] : hi;
            bad += lo == hi ? png.px[p] != lo : png.px[p] < lo || png.px[p] > hi;
        }
        MS_CHECK(bad == 0, "%s: gray read: %zu pixels outside their channels' range (or changed when gray)", s->what,
                 bad);
        ms_png_free(&png);
    }
    unlink(path);
    free(v);
    free(want);
}

/* Files that are not (whole) PNGs fail with the path in the one-line message. */
static void check_errors(const char *dir)
{
    char path[512], good[512];
    ms_png p;
    snprintf(path, sizeof path, "%s/not.png", dir);
    FILE *f = fopen(path, "wb");
    fputs("P5\n2 2\n255\n\x01\x02\x03\x04", f);
    fclose(f);
    ms_status st = ms_png_read(path, MS_PNG_AS_STORED, &p);
    MS_CHECK(st == MS_EFORMAT && strstr(ms_errmsg(), path) == ms_errmsg(), "not a PNG: %d, '%s'", st, ms_errmsg());
    unlink(path);

    /* a valid PNG cut in the middle of its data */
    const spec s = {"whole", PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE};
    uint16_t v[64 * 64];
    for (int i = 0; i < 64 * 64; i++) v[i] = (uint16_t)((i * 7919) % 251);
    snprintf(good, sizeof good, "%s/whole.png", dir);
    MS_CHECK(write_png(good, &s, 64, 64, v, NULL, 0) == 0, "libpng could not write");
    f = fopen(good, "rb");
    uint8_t buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/cut.png", dir);
    f = fopen(path, "wb");
    fwrite(buf, 1, n / 2, f);
    fclose(f);
    st = ms_png_read(path, MS_PNG_AS_STORED, &p);
    MS_CHECK(st == MS_EFORMAT && strstr(ms_errmsg(), path) == ms_errmsg(), "truncated PNG: %d, '%s'", st,
             ms_errmsg());
    unlink(path);
    unlink(good);

    snprintf(path, sizeof path, "%s/missing.png", dir);
    st = ms_png_read(path, MS_PNG_AS_STORED, &p);
    MS_CHECK(st == ENOENT && strstr(ms_errmsg(), path) == ms_errmsg(), "missing file: %d, '%s'", st, ms_errmsg());
}

int main(void)
{
    ms_rng r;
    ms_rng_init(&r, ms_test_seed(), 0);
    char dir[] = "/tmp/ms_test_png_XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    static const spec specs[] = {
        {"gray8", PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE},
        {"gray16", PNG_COLOR_TYPE_GRAY, 16, PNG_INTERLACE_NONE},
        {"rgb8", PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE},
        {"rgb16", PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_NONE},
        {"gray16_adam7", PNG_COLOR_TYPE_GRAY, 16, PNG_INTERLACE_ADAM7},
        {"rgb8_adam7", PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_ADAM7},
        {"gray_alpha16", PNG_COLOR_TYPE_GRAY_ALPHA, 16, PNG_INTERLACE_NONE},
        {"rgba8", PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_NONE},
        {"palette8", PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE},
        {"gray1", PNG_COLOR_TYPE_GRAY, 1, PNG_INTERLACE_NONE},
    };
    for (int rep = 0; rep < 3; rep++)
        for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) check_case(&specs[i], dir, &r);
    check_errors(dir);
    rmdir(dir);
    return ms_test_done();
}
