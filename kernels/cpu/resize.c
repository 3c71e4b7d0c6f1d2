/* kernels/cpu/resize.c — bilinear and bicubic resizing of (NC, H, W) planes (resize.h), torch's
 * F.interpolate with align_corners=False and no antialiasing.
 *
 * Both are separable: each output coordinate along an axis reads T taps (2 bilinear, 4 bicubic) with fixed
 * weights, computed once per axis as torch does (float scale in/out; bilinear clamps the source coordinate at
 * 0, bicubic does not and clamps the tap indices instead, A = −0.75). Forward is a gather, parallel over output
 * rows. Backward is the transposed scatter, done per plane (vertical pass into a (Hin, Wout) buffer, then
 * horizontal) and parallel over planes only, so every dx element is owned by one thread: deterministic.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "resize.h"

typedef struct axis {
    int T;          /* taps per output */
    int64_t *idx;   /* (out, T) source indices */
    float *w;       /* (out, T) weights */
} axis;

static float cubic1(float x, float A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }          /* |x| <= 1 */
static float cubic2(float x, float A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; }     /* 1 < |x| < 2 */

static ms_status axis_make(axis *a, int cubic, int64_t in, int64_t out)
{
    a->T = cubic ? 4 : 2;
    a->idx = malloc((size_t)(out * a->T) * sizeof(int64_t));
    a->w = malloc((size_t)(out * a->T) * sizeof(float));
    if (!a->idx || !a->w) {
        free(a->idx);
        free(a->w);
        a->idx = NULL;
        a->w = NULL;
        return ms_error(MS_ENOMEM, "resize: out of memory for %lld taps", (long long)out);
    }
    float scale = (float)in / (float)out;
    for (int64_t d = 0; d < out; d++) {
        float s = scale * ((float)d + 0.5f) - 0.5f;
        int64_t *ix = a->idx + d * a->T;
        float *w = a->w + d * a->T;
        if (!cubic) {
            if (s < 0) s = 0;
            int64_t i0 = (int64_t)s;
            if (i0 > in - 1) i0 = in - 1;
            float lam = s - (float)i0;
            ix[0] = i0;
            ix[1] = i0 < in - 1 ? i0 + 1 : i0;
            w[0] = 1.0f - lam;
            w[1] = lam;
        } else {
            float f = floorf(s);
            float t = s - f;
            const float A = -0.75f;
            w[0] = cubic2(t + 1, A);
            w[1] = cubic1(t, A);
            w[2] = cubic1(1 - t, A);
            w[3] = cubic2(2 - t, A);
            for (int k = 0; k < 4; k++) {
                int64_t i = (int64_t)f - 1 + k;
                ix[k] = i < 0 ? 0 : (i > in - 1 ? in - 1 : i);
            }
        }
    }
    return MS_OK;
}

static void axis_free(axis *a)
{
    free(a->idx);
    free(a->w);
}

static ms_status forward(ms_device *dev, int cubic, float *y, const float *x, int64_t NC, int64_t Hin, int64_t Win,
                         int64_t Hout, int64_t Wout)
{
    ms_status rc = MS_OK;
    axis ay = {0}, ax = {0};
    MS_FAIL_IF(NC < 0 || Hin <= 0 || Win <= 0 || Hout <= 0 || Wout <= 0, MS_EINVAL,
               "resize: bad shape NC=%lld %lldx%lld -> %lldx%lld", (long long)NC, (long long)Hin, (long long)Win,
               (long long)Hout, (long long)Wout);
    if ((rc = axis_make(&ay, cubic, Hin, Hout)) || (rc = axis_make(&ax, cubic, Win, Wout))) goto leave;
    int T = ay.T;
    #pragma omp parallel for schedule(static) num_threads(dev->n_threads)
    for (int64_t r = 0; r < NC * Hout; r++) {
        int64_t p = r / Hout, oy = r % Hout;
        const float *xp = x + p * Hin * Win;
        float *yr = y + r * Wout;
        for (int64_t ox = 0; ox < Wout; ox++) {
            const int64_t *ix = ax.idx + ox * T;
            const float *wx = ax.w + ox * T;
            float acc = 0;
            for (int a = 0; a < T; a++) {
                const float *row = xp + ay.idx[oy * T + a] * Win;
                float h = 0;
                for (int b = 0; b < T; b++) h += wx[b] * row[ix[b]];
                acc += ay.w[oy * T + a] * h;
            }
            yr[ox] = acc;
        }
    }
leave:
    axis_free(&ay);
    axis_free(&ax);
    return rc;
}

static ms_status backward(ms_device *dev, int cubic, float *dx, const float *dy, int64_t NC, int64_t Hin, int64_t Win,
                          int64_t Hout, int64_t Wout)
{
    ms_status rc = MS_OK;
    axis ay = {0}, ax = {0};
    float *tmp = NULL;
    MS_FAIL_IF(NC < 0 || Hin <= 0 || Win <= 0 || Hout <= 0 || Wout <= 0, MS_EINVAL,
               "resize_backward: bad shape NC=%lld %lldx%lld -> %lldx%lld", (long long)NC, (long long)Hin,
               (long long)Win, (long long)Hout, (long long)Wout);
    if (!dx) return MS_OK;
    if ((rc = axis_make(&ay, cubic, Hin, Hout)) || (rc = axis_make(&ax, cubic, Win, Wout))) goto leave;
    int nt = dev->n_threads > 0 ? dev->n_threads : 1;
    tmp = malloc((size_t)nt * (size_t)(Hin * Wout) * sizeof(float));
    if (!tmp) {
        rc = ms_error(MS_ENOMEM, "resize_backward: out of memory for %lldx%lld", (long long)Hin, (long long)Wout);
        goto leave;
    }
    int T = ay.T;
    #pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num();
        float *t = tmp + (size_t)tid * (size_t)(Hin * Wout);
        #pragma omp for schedule(static)
        for (int64_t p = 0; p < NC; p++) {
            const float *g = dy + p * Hout * Wout;
            float *d = dx + p * Hin * Win;
            for (int64_t i = 0; i < Hin * Wout; i++) t[i] = 0;
            for (int64_t oy = 0; oy < Hout; oy++)
                for (int a = 0; a < T; a++) {
                    float w = ay.w[oy * T + a];
                    float *tr = t + ay.idx[oy * T + a] * Wout;
                    const float *gr = g + oy * Wout;
                    for (int64_t ox = 0; ox < Wout; ox++) tr[ox] += w * gr[ox];
                }
            for (int64_t iy = 0; iy < Hin; iy++) {
                const float *tr = t + iy * Wout;
                float *dr = d + iy * Win;
                for (int64_t ox = 0; ox < Wout; ox++)
                    for (int b = 0; b < T; b++) dr[ax.idx[ox * T + b]] += ax.w[ox * T + b] * tr[ox];
            }
        }
    }
leave:
    free(tmp);
    axis_free(&ay);
    axis_free(&ax);
    return rc;
}

ms_status ms_resize_bilinear_forward_cpu(ms_device *dev, float *y, const float *x, int64_t NC, int64_t Hin,
                                         int64_t Win, int64_t Hout, int64_t Wout)
{
    return forward(dev, 0, y, x, NC, Hin, Win, Hout, Wout);
}

ms_status ms_resize_bilinear_backward_cpu(ms_device *dev, float *dx, const float *dy, int64_t NC, int64_t Hin,
                                          int64_t Win, int64_t Hout, int64_t Wout)
{
    return backward(dev, 0, dx, dy, NC, Hin, Win, Hout, Wout);
}

ms_status ms_resize_bicubic_forward_cpu(ms_device *dev, float *y, const float *x, int64_t NC, int64_t Hin,
                                        int64_t Win, int64_t Hout, int64_t Wout)
{
    return forward(dev, 1, y, x, NC, Hin, Win, Hout, Wout);
}

ms_status ms_resize_bicubic_backward_cpu(ms_device *dev, float *dx, const float *dy, int64_t NC, int64_t Hin,
                                         int64_t Win, int64_t Hout, int64_t Wout)
{
    return backward(dev, 1, dx, dy, NC, Hin, Win, Hout, Wout);
}
