/* data/preprocess.c — longest-side / stretch resize, gray → channels, SAM normalisation, nearest labels.
 *
 * Invariants: resampling weights of every output pixel sum to 1 (taps outside the box are dropped and the rest
 * renormalised), so constants stay constant; a scale of exactly 1 yields one tap of weight 1 (identity); output
 * pixels outside the frame are exactly 0.
 */
#include "data/preprocess.h"

#include <math.h>

#include "prep_math.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

const float ms_sam_pixel_mean[3] = {MS_SAM_MEAN0, MS_SAM_MEAN1, MS_SAM_MEAN2};
const float ms_sam_pixel_std[3] = {MS_SAM_STD0, MS_SAM_STD1, MS_SAM_STD2};

void ms_prep_config_default(ms_prep_config *c, int size)
{
    c->size = size;
    c->resize = MS_RESIZE_LONGEST;
    c->norm = MS_NORM_SAM;
    c->channels = 3;
    c->label_size = size / 4 > 0 ? size / 4 : 1;
}

ms_status ms_prep_parse(ms_prep_config *c, const char *resize, const char *norm)
{
    if (resize) {
        if (!strcmp(resize, "longest") || !strcmp(resize, "sam")) c->resize = MS_RESIZE_LONGEST;
        else if (!strcmp(resize, "stretch")) c->resize = MS_RESIZE_STRETCH;
        else MS_FAIL(MS_EINVAL, "--resize %s: expected longest or stretch", resize);
    }
    if (norm) {
        if (!strcmp(norm, "sam")) c->norm = MS_NORM_SAM;
        else if (!strcmp(norm, "medsam") || !strcmp(norm, "unit")) c->norm = MS_NORM_UNIT;
        else MS_FAIL(MS_EINVAL, "--norm %s: expected sam or medsam", norm);
    }
    return MS_OK;
}

void ms_prep_frame(const ms_prep_config *c, float box_h, float box_w, int *oh, int *ow)
{
    ms_pm_frame(c->size, c->resize == MS_RESIZE_STRETCH, box_h, box_w, oh, ow);
}

void ms_prep_scratch_free(ms_prep_scratch *s)
{
    free(s->buf);
    s->buf = NULL;
    s->cap = 0;
}

static ms_status scratch_reserve(ms_prep_scratch *s, size_t bytes)
{
    if (bytes <= s->cap) return MS_OK;
    void *p = realloc(s->buf, bytes);
    MS_FAIL_IF(!p, MS_ENOMEM, "resize: out of memory (%zu bytes of scratch)", bytes);
    s->buf = p;
    s->cap = bytes;
    return MS_OK;
}

/* Taps of one axis: output i reads in[first[i] .. first[i]+count[i]) with weights w[i*k ..]. */
typedef struct axis_taps {
    int k;
    int *first, *count;
    float *w;
} axis_taps;

static int taps_per_output(double in_len, int out_len) { return ms_pm_taps_k(in_len, out_len); }

/* The taps of every output along one axis (kernels/prep_math.h holds the formula). */
static void build_taps(axis_taps *t, double start, double len, int in_len, int out_len)
{
    for (int i = 0; i < out_len; i++)
        t->count[i] = ms_pm_axis_taps(start, len, in_len, out_len, i, t->k, t->w + (size_t)i * t->k, &t->first[i]);
}

static void *carve(char **p, size_t bytes)
{
    void *r = *p;
    *p += (bytes + 63) & ~(size_t)63;
    return r;
}

static size_t taps_bytes(int k, int out_len)
{
    return 2 * (((size_t)out_len * sizeof(int) + 63) & ~(size_t)63) +
           (((size_t)out_len * k * sizeof(float) + 63) & ~(size_t)63);
}

/* Resamples into rows: emit(row index, row values, ctx) per output row. */
typedef void (*row_fn)(int i, const float *row, int ow, void *ctx);

static ms_status resample(const float *img, int h, int w, const ms_box *box, int oh, int ow, ms_prep_scratch *s,
                          row_fn emit, void *ctx)
{
    axis_taps tx, ty;
    tx.k = taps_per_output(box->w, ow);
    ty.k = taps_per_output(box->h, oh);
    int r0 = (int)floor(box->y0 + 1e-9), r1 = (int)ceil(box->y0 + box->h - 1e-9);
    if (r0 < 0) r0 = 0;
    if (r1 > h) r1 = h;
    if (r1 <= r0) r1 = r0 + 1;
    size_t need = taps_bytes(tx.k, ow) + taps_bytes(ty.k, oh) + (((size_t)(r1 - r0) * ow * sizeof(float) + 63) & ~63) +
                  (((size_t)ow * sizeof(float) + 63) & ~(size_t)63) + 64;
    MS_TRY(scratch_reserve(s, need));
    char *p = (char *)s->buf;
    tx.first = carve(&p, (size_t)ow * sizeof(int));
    tx.count = carve(&p, (size_t)ow * sizeof(int));
    tx.w = carve(&p, (size_t)ow * tx.k * sizeof(float));
    ty.first = carve(&p, (size_t)oh * sizeof(int));
    ty.count = carve(&p, (size_t)oh * sizeof(int));
    ty.w = carve(&p, (size_t)oh * ty.k * sizeof(float));
    float *mid = carve(&p, (size_t)(r1 - r0) * ow * sizeof(float));
    float *row = carve(&p, (size_t)ow * sizeof(float));
    build_taps(&tx, box->x0, box->w, w, ow);
    build_taps(&ty, box->y0, box->h, h, oh);
    /* Fixed tap count K for the horizontal pass: shift each window left (leading zero weights) so that every
     * output reads K pixels inside [c0, c1); then K = 2 (upsampling) runs a branch-free loop. */
    int K = 0, c0 = (int)floor(box->x0 + 1e-9), c1 = (int)ceil(box->x0 + box->w - 1e-9);
    if (c0 < 0) c0 = 0;
    if (c1 > w) c1 = w;
    for (int x = 0; x < ow; x++)
        if (tx.count[x] > K) K = tx.count[x];
    if (K <= c1 - c0 && K <= tx.k) {
        for (int x = 0; x < ow; x++) {
            float *wt = tx.w + (size_t)x * tx.k;
            int n = tx.count[x], f = tx.first[x];
            if (n < K) { /* pad: at the end when room, else at the front */
                int shift = f + K > c1 ? f + K - c1 : 0;
                memmove(wt + shift, wt, (size_t)n * sizeof(float));
                for (int a = 0; a < shift; a++) wt[a] = 0;
                for (int a = shift + n; a < K; a++) wt[a] = 0;
                tx.first[x] = f - shift;
                tx.count[x] = K;
            }
        }
    } else K = 0; /* degenerate box narrower than the filter: keep variable counts */
    /* horizontal pass over the rows the box touches */
    for (int r = r0; r < r1; r++) {
        const float *in = img + (size_t)r * w;
        float *restrict o = mid + (size_t)(r - r0) * ow;
        if (K == 2) {
            for (int x = 0; x < ow; x++) {
                const float *wt = tx.w + (size_t)x * tx.k, *src = in + tx.first[x];
                o[x] = wt[0] * src[0] + wt[1] * src[1];
            }
            continue;
        }
        for (int x = 0; x < ow; x++) {
            const float *wt = tx.w + (size_t)x * tx.k, *src = in + tx.first[x];
            float acc = 0;
            for (int a = 0; a < tx.count[x]; a++) acc += wt[a] * src[a];
            o[x] = acc;
        }
    }
    /* vertical pass, one output row at a time (contiguous, vectorised) */
    for (int y = 0; y < oh; y++) {
        const float *wt = ty.w + (size_t)y * ty.k;
        const float *src = mid + (size_t)(ty.first[y] - r0) * ow;
        int n = ty.count[y];
        if (n == 1 && wt[0] == 1.0f) {
            emit(y, src, ow, ctx);
            continue;
        }
        float *restrict rw = row;
        const float w0 = wt[0];
#pragma omp simd
        for (int x = 0; x < ow; x++) rw[x] = w0 * src[x];
        for (int a = 1; a < n; a++) {
            const float *restrict sa = src + (size_t)a * ow;
            const float wa = wt[a];
#pragma omp simd
            for (int x = 0; x < ow; x++) rw[x] += wa * sa[x];
        }
        emit(y, row, ow, ctx);
    }
    return MS_OK;
}

typedef struct copy_ctx {
    float *out;
    int stride;
} copy_ctx;

static void emit_copy(int i, const float *row, int ow, void *ctx)
{
    copy_ctx *c = ctx;
    memcpy(c->out + (size_t)i * c->stride, row, (size_t)ow * sizeof(float));
}

ms_status ms_resize_bilinear(const float *img, int h, int w, const ms_box *box, float *out, int oh, int ow,
                             int out_stride, ms_prep_scratch *s)
{
    copy_ctx c = {out, out_stride};
    return resample(img, h, w, box, oh, ow, s, emit_copy, &c);
}

typedef struct norm_ctx {
    float *out;
    int size, channels;
    float a[3], b[3]; /* out = a·v + b per channel */
} norm_ctx;

static void emit_norm(int i, const float *row, int ow, void *ctx)
{
    norm_ctx *c = ctx;
    const size_t plane = (size_t)c->size * c->size;
    for (int ch = 0; ch < c->channels; ch++) {
        float *restrict o = c->out + ch * plane + (size_t)i * c->size;
        const float *restrict in = row;
        const float a = c->a[ch], b = c->b[ch];
        int x = 0;
#if defined(__SSE2__)
        /* Streaming stores: the batch is written once and read later by the consumer, so bypassing the cache
         * saves the read-for-ownership traffic (the output is larger than the caches at 1024). */
        if (((uintptr_t)o & 15) == 0) {
            const __m128 va = _mm_set1_ps(a), vb = _mm_set1_ps(b);
            for (; x + 4 <= ow; x += 4) _mm_stream_ps(o + x, _mm_add_ps(_mm_mul_ps(va, _mm_loadu_ps(in + x)), vb));
        }
#endif
        for (; x < ow; x++) o[x] = a * in[x] + b;
    }
}

ms_status ms_prep_image(const ms_prep_config *c, const float *img, int h, int w, const ms_box *box, float *out,
                        ms_prep_scratch *s)
{
    MS_FAIL_IF(c->size < 1 || (c->channels != 1 && c->channels != 3) || h < 1 || w < 1, MS_EINVAL,
               "preprocess: invalid configuration (size %d, channels %d) or empty slice %dx%d", c->size, c->channels,
               h, w);
    ms_box full = {0, 0, (float)h, (float)w};
    if (!box) box = &full;
    int oh, ow;
    ms_prep_frame(c, box->h, box->w, &oh, &ow);
    norm_ctx nc = {out, c->size, c->channels, {0}, {0}};
    for (int ch = 0; ch < 3; ch++) ms_pm_norm_coef(c->norm == MS_NORM_SAM ? 0 : 1, ch, &nc.a[ch], &nc.b[ch]);
    /* zero the padding: right strip of the frame rows, then the rows below the frame */
    const size_t plane = (size_t)c->size * c->size;
    for (int ch = 0; ch < c->channels; ch++) {
        float *o = out + ch * plane;
        if (ow < c->size)
            for (int y = 0; y < oh; y++)
                memset(o + (size_t)y * c->size + ow, 0, (size_t)(c->size - ow) * sizeof(float));
        if (oh < c->size) memset(o + (size_t)oh * c->size, 0, (size_t)(c->size - oh) * c->size * sizeof(float));
    }
    ms_status rc = resample(img, h, w, box, oh, ow, s, emit_norm, &nc);
#if defined(__SSE2__)
    _mm_sfence(); /* order the streaming stores before the batch is handed over */
#endif
    return rc;
}

void ms_prep_label(const ms_prep_config *c, const uint16_t *label, int h, int w, const ms_box *box, uint16_t *out)
{
    ms_box full = {0, 0, (float)h, (float)w};
    if (!box) box = &full;
    int oh, ow;
    ms_prep_frame(c, box->h, box->w, &oh, &ow);
    const int L = c->label_size;
    const double step = (double)c->size / L, sy = box->h / oh, sx = box->w / ow;
    for (int i = 0; i < L; i++) {
        uint16_t *o = out + (size_t)i * L;
        double fy = (i + 0.5) * step; /* position in the size×size frame */
        if (fy >= oh) {
            memset(o, 0, (size_t)L * sizeof(uint16_t));
            continue;
        }
        int ry = (int)floor(box->y0 + fy * sy);
        ry = ry < 0 ? 0 : ry >= h ? h - 1 : ry;
        for (int j = 0; j < L; j++) {
            double fx = (j + 0.5) * step;
            if (fx >= ow) {
                o[j] = 0;
                continue;
            }
            int rx = (int)floor(box->x0 + fx * sx);
            rx = rx < 0 ? 0 : rx >= w ? w - 1 : rx;
            o[j] = label[(size_t)ry * w + rx];
        }
    }
}

/* Gray or RGB pixels on the 0..1 scale (HWC) → 3×S×S model input (zeros outside the frame). */
ms_status ms_prep_image_hwc(const ms_prep_config *pc, const float *img01, int h, int w, int c, float *out)
{
    ms_prep_scratch scr = {0};
    ms_status rc = MS_OK;
    size_t plane = (size_t)pc->size * pc->size;
    memset(out, 0, 3 * plane * sizeof(float));
    if (c == 1) {
        rc = ms_prep_image(pc, img01, h, w, NULL, out, &scr);
    } else {
        float *ch = malloc((size_t)h * w * sizeof(float));
        if (!ch) { ms_prep_scratch_free(&scr); return ms_error(MS_ENOMEM, "preprocess: out of memory"); }
        ms_box full = {0, 0, (float)h, (float)w};
        int oh, ow;
        ms_prep_frame(pc, (float)h, (float)w, &oh, &ow);
        for (int k = 0; k < 3 && !rc; k++) {
            for (size_t i = 0; i < (size_t)h * w; i++) ch[i] = img01[i * 3 + k];
            float *o = out + k * plane;
            rc = ms_resize_bilinear(ch, h, w, &full, o, oh, ow, pc->size, &scr);
            /* the same affine map ms_prep_image applies to gray: v·255/std − mean/std */
            float a, b;
            ms_pm_norm_coef(pc->norm == MS_NORM_SAM ? 0 : 1, k, &a, &b);
            for (int y = 0; y < oh && !rc; y++)
                for (int x = 0; x < ow; x++) o[(size_t)y * pc->size + x] = a * o[(size_t)y * pc->size + x] + b;
        }
        free(ch);
    }
    ms_prep_scratch_free(&scr);
    return rc;
}

/* The slice `key` of a store as 0..1 floats. */

void ms_prep_to_gray(const ms_prep_config *pc, const float *chw, int fh, int fw, float *gray)
{
    const int S = pc->size;
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            size_t i = (size_t)y * S + x;
            float v = pc->norm == MS_NORM_SAM ? (chw[i] * ms_sam_pixel_std[0] + ms_sam_pixel_mean[0]) / 255.f : chw[i];
            gray[i] = y < fh && x < fw ? v : 0.f;
        }
}
