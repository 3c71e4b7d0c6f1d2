/* kernels/prep_math.h — the one copy of SAM's input-preprocessing formulas (docs/MODEL.md §Preprocessing), shared
 * by the loader's CPU resampler (data/preprocess.c, separable passes), the prep op's CPU half (kernels/cpu/prep.c)
 * and its CUDA kernel (kernels/cuda/prep.cu, one thread per output pixel).
 *
 * Bit-identity: every product and sum goes through MS_PM_* (the correctly rounded intrinsics on the device, so
 * nvcc cannot contract them into FMAs; plain operators on the host, where -std=c11 keeps GCC from contracting), and
 * the per-pixel sum runs in the order of the separable passes: horizontal taps left to right from 0, then vertical
 * taps top to bottom starting from the first product. Zero-weight padding taps of the separable code add exact
 * zeros, so the per-pixel form gives the same bits.
 */
#ifndef MS_PREP_MATH_H
#define MS_PREP_MATH_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MS_PM_FN static __host__ __device__ __forceinline__
#else
#define MS_PM_FN static inline
#endif
#if defined(__CUDA_ARCH__)
#define MS_PM_DMUL(a, b) __dmul_rn(a, b)
#define MS_PM_DADD(a, b) __dadd_rn(a, b)
#define MS_PM_FMUL(a, b) __fmul_rn(a, b)
#define MS_PM_FADD(a, b) __fadd_rn(a, b)
#define MS_PM_FDIV(a, b) __fdiv_rn(a, b)
#else
#define MS_PM_DMUL(a, b) ((a) * (b))
#define MS_PM_DADD(a, b) ((a) + (b))
#define MS_PM_FMUL(a, b) ((a) * (b))
#define MS_PM_FADD(a, b) ((a) + (b))
#define MS_PM_FDIV(a, b) ((a) / (b))
#endif

/* SAM's pixel mean and std (segment_anything/modeling/sam.py), on the 0..255 scale. */
#define MS_SAM_MEAN0 123.675f
#define MS_SAM_MEAN1 116.28f
#define MS_SAM_MEAN2 103.53f
#define MS_SAM_STD0 58.395f
#define MS_SAM_STD1 57.12f
#define MS_SAM_STD2 57.375f

/* The most taps one output may read along an axis (the per-pixel forms keep them in a fixed array): enough for
 * shrinking by up to 30×. */
#define MS_PREP_MAX_TAPS 64

/* The frame the box fills in the size×size input: ResizeLongestSide.get_preprocess_shape (stretch: all of it). */
MS_PM_FN void ms_pm_frame(int size, int stretch, float box_h, float box_w, int *oh, int *ow)
{
    if (stretch) {
        *oh = *ow = size;
        return;
    }
    double scale = (double)size / (box_h > box_w ? box_h : box_w);
    *oh = (int)MS_PM_DADD(MS_PM_DMUL((double)box_h, scale), 0.5);
    *ow = (int)MS_PM_DADD(MS_PM_DMUL((double)box_w, scale), 0.5);
    if (*oh < 1) *oh = 1;
    if (*ow < 1) *ow = 1;
    if (*oh > size) *oh = size;
    if (*ow > size) *ow = size;
}

/* Room for the taps of one output: the triangle's support on both sides plus rounding. */
MS_PM_FN int ms_pm_taps_k(double in_len, int out_len)
{
    double support = in_len / out_len > 1 ? in_len / out_len : 1.0;
    return (int)ceil(2 * support) + 3;
}

/* The normalised weights of output i along one axis (PIL/torch antialiased bilinear: a triangle of radius
 * max(1, scale) sampled at pixel centres; taps outside the box [start, start+len) ∩ [0, in_len) are dropped and the
 * rest renormalised). Writes at most k weights to w, returns their count, the first input index in *first. */
MS_PM_FN int ms_pm_axis_taps(double start, double len, int in_len, int out_len, int i, int k, float *w, int *first)
{
    const double scale = len / out_len, support = scale > 1 ? scale : 1.0, inv = 1.0 / support;
    int lo = (int)floor(MS_PM_DADD(start, 1e-9)), hi = (int)ceil(MS_PM_DADD(MS_PM_DADD(start, len), -1e-9));
    if (lo < 0) lo = 0;
    if (hi > in_len) hi = in_len;
    if (hi <= lo) hi = lo + 1;
    double center = MS_PM_DADD(start, MS_PM_DMUL(i + 0.5, scale));
    int j0 = (int)floor(MS_PM_DADD(center, -support)), j1 = (int)ceil(MS_PM_DADD(center, support));
    if (j0 < lo) j0 = lo;
    if (j1 > hi) j1 = hi;
    double sum = 0;
    int n = 0, f = -1;
    for (int j = j0; j < j1 && n < k; j++) {
        double x = fabs(MS_PM_DMUL(MS_PM_DADD(j + 0.5, -center), inv)), v = x < 1 ? 1 - x : 0;
        if (v <= 0) {
            if (f < 0) continue; /* leading zero taps: skip */
            w[n++] = 0;          /* interior zeros keep the run contiguous */
            continue;
        }
        if (f < 0) f = j;
        w[n++] = (float)v;
        sum = MS_PM_DADD(sum, v);
    }
    while (n > 0 && w[n - 1] == 0) n--;
    if (f < 0 || sum <= 0) { /* degenerate: nearest pixel inside the box */
        int j = (int)floor(center);
        f = j < lo ? lo : j >= hi ? hi - 1 : j;
        w[0] = 1;
        n = 1;
        sum = 1;
    }
    for (int a = 0; a < n; a++) w[a] = (float)(w[a] / sum);
    *first = f;
    return n;
}

/* The store's normalised 16-bit pixel as the [0,1] float the resampler reads. */
MS_PM_FN float ms_pm_unit(uint16_t v) { return MS_PM_FMUL((float)v, 1.0f / 65535.0f); }

/* out = a·v + b of channel ch: SAM (norm 0): v·255 minus the pixel mean, over the std; unit (norm 1): v. */
MS_PM_FN void ms_pm_norm_coef(int norm, int ch, float *a, float *b)
{
    const float mean = ch == 0 ? MS_SAM_MEAN0 : ch == 1 ? MS_SAM_MEAN1 : MS_SAM_MEAN2;
    const float sd = ch == 0 ? MS_SAM_STD0 : ch == 1 ? MS_SAM_STD1 : MS_SAM_STD2;
    *a = norm == 0 ? MS_PM_FDIV(255.0f, sd) : 1.0f;
    *b = norm == 0 ? MS_PM_FDIV(-mean, sd) : 0.0f;
}

/* One resampled pixel (before the affine normalisation) of the native uint16 slice px (row stride `stride`, width
 * w; flip: read it mirrored left-right) from its vertical taps (fy, ny, wy) and horizontal taps (fx, nx, wx). */
MS_PM_FN float ms_pm_pixel(const uint16_t *px, int64_t stride, int w, int flip, int fy, int ny, const float *wy,
                           int fx, int nx, const float *wx)
{
    float v = 0;
    for (int b = 0; b < ny; b++) {
        const uint16_t *row = px + (int64_t)(fy + b) * stride;
        float hs = 0;
        for (int a = 0; a < nx; a++) {
            int c = fx + a;
            hs = MS_PM_FADD(hs, MS_PM_FMUL(wx[a], ms_pm_unit(row[flip ? w - 1 - c : c])));
        }
        v = b == 0 ? MS_PM_FMUL(wy[0], hs) : MS_PM_FADD(v, MS_PM_FMUL(wy[b], hs));
    }
    return v;
}

#endif
