/* kernels/cuda/resize.cu — bilinear and bicubic resizing of (NC, H, W) planes (contract: kernels/resize.h).
 * Taps per axis exactly as kernels/cpu/resize.c computes them (torch: float scale in/out; bilinear clamps the
 * source coordinate at 0, bicubic clamps tap indices, A = −0.75). Forward: one thread per output pixel.
 * Backward is a gather, not a scatter (no atomics, deterministic): two separable passes through scratch,
 * each input coordinate summing the outputs whose taps reach it (a small window found from the inverse map,
 * every candidate checked exactly).
 */
#include "cuda_common.h"

__device__ static inline float cubic1(float x, float A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }
__device__ static inline float cubic2(float x, float A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; }

/* taps of output coordinate d: indices ix[T], weights w[T] */
template <int CUBIC>
__device__ static inline void taps(int64_t d, int64_t in, int64_t out, int64_t *ix, float *w)
{
    float scale = (float)in / (float)out;
    float s = __fsub_rn(__fmul_rn(scale, (float)d + 0.5f), 0.5f);
    if (!CUBIC) {
        if (s < 0) s = 0;
        int64_t i0 = (int64_t)s;
        if (i0 > in - 1) i0 = in - 1;
        float lam = s - (float)i0;
        ix[0] = i0;
        ix[1] = i0 < in - 1 ? i0 + 1 : i0;
        w[0] = 1.f - lam;
        w[1] = lam;
    } else {
        float f = floorf(s), t = s - f;
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

template <int CUBIC>
__global__ static void resize_fwd_f32(float *y, const float *x, int64_t NC, int64_t Hin, int64_t Win, int64_t Hout,
                                      int64_t Wout)
{
    const int T = CUBIC ? 4 : 2;
    MS_GRID_STRIDE(i, NC * Hout * Wout) {
        int64_t wo = i % Wout, ho = (i / Wout) % Hout, n = i / (Wout * Hout);
        int64_t iy[4], ix[4];
        float wy[4], wx[4];
        taps<CUBIC>(ho, Hin, Hout, iy, wy);
        taps<CUBIC>(wo, Win, Wout, ix, wx);
        const float *xp = x + n * Hin * Win;
        float acc = 0.f;
#pragma unroll
        for (int a = 0; a < T; a++) {
            float r = 0.f;
#pragma unroll
            for (int b = 0; b < T; b++) r += wx[b] * xp[iy[a] * Win + ix[b]];
            acc += wy[a] * r;
        }
        y[i] = acc;
    }
}

/* Σ over output coordinates d whose taps reach input coordinate j, of weight·v(d) */
template <int CUBIC>
__device__ static inline void range_of(int64_t j, int64_t in, int64_t out, int64_t *lo, int64_t *hi)
{
    double inv = (double)out / (double)in;
    int64_t l = (int64_t)floor(((double)j - 2.5) * inv - 0.5) - 2;
    int64_t h = (int64_t)ceil(((double)j + 3.5) * inv - 0.5) + 2;
    if (j <= 1) l = 0;
    if (j >= in - 2) h = out - 1;
    *lo = l < 0 ? 0 : l;
    *hi = h > out - 1 ? out - 1 : h;
}

/* pass 1 (along W): t[n,ho,wi] = Σ_wo dy[n,ho,wo]·w(wo→wi) */
template <int CUBIC>
__global__ static void resize_bwd_w_f32(float *t, const float *dy, int64_t rows, int64_t Win, int64_t Wout)
{
    const int T = CUBIC ? 4 : 2;
    MS_GRID_STRIDE(i, rows * Win) {
        int64_t wi = i % Win, r = i / Win;
        int64_t lo, hi, ix[4];
        float w[4];
        range_of<CUBIC>(wi, Win, Wout, &lo, &hi);
        float acc = 0.f;
        for (int64_t wo = lo; wo <= hi; wo++) {
            taps<CUBIC>(wo, Win, Wout, ix, w);
            float ws = 0.f;
#pragma unroll
            for (int k = 0; k < T; k++) ws += ix[k] == wi ? w[k] : 0.f;
            if (ws != 0.f) acc += ws * dy[r * Wout + wo];
        }
        t[i] = acc;
    }
}
/* pass 2 (along H): dx[n,hi,wi] += Σ_ho t[n,ho,wi]·w(ho→hi) */
template <int CUBIC>
__global__ static void resize_bwd_h_f32(float *dx, const float *t, int64_t NC, int64_t Hin, int64_t Hout, int64_t Win)
{
    const int T = CUBIC ? 4 : 2;
    MS_GRID_STRIDE(i, NC * Hin * Win) {
        int64_t wi = i % Win, hi_ = (i / Win) % Hin, n = i / (Win * Hin);
        int64_t lo, hi, iy[4];
        float w[4];
        range_of<CUBIC>(hi_, Hin, Hout, &lo, &hi);
        float acc = 0.f;
        for (int64_t ho = lo; ho <= hi; ho++) {
            taps<CUBIC>(ho, Hin, Hout, iy, w);
            float ws = 0.f;
#pragma unroll
            for (int k = 0; k < T; k++) ws += iy[k] == hi_ ? w[k] : 0.f;
            if (ws != 0.f) acc += ws * t[(n * Hout + ho) * Win + wi];
        }
        dx[i] += acc;
    }
}

static ms_status check(const char *who, const void *a, const void *b, int64_t NC, int64_t Hin, int64_t Win,
                       int64_t Hout, int64_t Wout)
{
    MS_FAIL_IF(NC < 0 || Hin <= 0 || Win <= 0 || Hout <= 0 || Wout <= 0, MS_EINVAL,
               "%s: bad sizes NC=%lld in=%lldx%lld out=%lldx%lld", who, (long long)NC, (long long)Hin,
               (long long)Win, (long long)Hout, (long long)Wout);
    MS_FAIL_IF(NC > 0 && (!a || !b), MS_EINVAL, "%s: NULL argument", who);
    return MS_OK;
}

template <int CUBIC>
static ms_status fwd(ms_device *dev, float *y, const float *x, int64_t NC, int64_t Hin, int64_t Win, int64_t Hout,
                     int64_t Wout)
{
    MS_CU_CTX(dev);
    MS_TRY(check(CUBIC ? "resize_bicubic_forward" : "resize_bilinear_forward", y, x, NC, Hin, Win, Hout, Wout));
    int64_t n = NC * Hout * Wout;
    if (!n) return MS_OK;
    resize_fwd_f32<CUBIC><<<ms_cu_blocks(n, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(y, x, NC, Hin, Win, Hout,
                                                                                          Wout);
    MS_CU_LAUNCHED();
    return MS_OK;
}
template <int CUBIC>
static ms_status bwd(ms_device *dev, float *dx, const float *dy, int64_t NC, int64_t Hin, int64_t Win, int64_t Hout,
                     int64_t Wout)
{
    MS_CU_CTX(dev);
    if (!dx) return MS_OK;
    MS_TRY(check(CUBIC ? "resize_bicubic_backward" : "resize_bilinear_backward", dx, dy, NC, Hin, Win, Hout, Wout));
    if (!NC) return MS_OK;
    cudaStream_t s = ms_cuda_ctx_of(dev)->stream;
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(NC * Hout * Win) * sizeof(float), &p));
    float *t = (float *)p;
    resize_bwd_w_f32<CUBIC><<<ms_cu_blocks(NC * Hout * Win, 256), 256, 0, s>>>(t, dy, NC * Hout, Win, Wout);
    MS_CU_LAUNCHED();
    resize_bwd_h_f32<CUBIC><<<ms_cu_blocks(NC * Hin * Win, 256), 256, 0, s>>>(dx, t, NC, Hin, Hout, Win);
    MS_CU_LAUNCHED();
    return MS_OK;
}

extern "C" ms_status ms_resize_bilinear_forward_cuda(ms_device *dev, float *y, const float *x, int64_t NC,
                                                     int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout)
{ return fwd<0>(dev, y, x, NC, Hin, Win, Hout, Wout); }
extern "C" ms_status ms_resize_bilinear_backward_cuda(ms_device *dev, float *dx, const float *dy, int64_t NC,
                                                      int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout)
{ return bwd<0>(dev, dx, dy, NC, Hin, Win, Hout, Wout); }
extern "C" ms_status ms_resize_bicubic_forward_cuda(ms_device *dev, float *y, const float *x, int64_t NC, int64_t Hin,
                                                    int64_t Win, int64_t Hout, int64_t Wout)
{ return fwd<1>(dev, y, x, NC, Hin, Win, Hout, Wout); }
extern "C" ms_status ms_resize_bicubic_backward_cuda(ms_device *dev, float *dx, const float *dy, int64_t NC,
                                                     int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout)
{ return bwd<1>(dev, dx, dy, NC, Hin, Win, Hout, Wout); }
