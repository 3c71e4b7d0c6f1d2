/* kernels/cuda/prep.cu — the CUDA half of the prep op (contract: kernels/prep.h): one thread per output pixel,
 * each computing its own vertical and horizontal taps with kernels/prep_math.h (correctly rounded intrinsics, no
 * FMA contraction) and reading the native slice from device memory. */
#include "cuda_common.h"
#include "prep.h"
#include "prep_math.h"

__global__ static void prep_native_k(float *y, const uint16_t *native, const ms_prep_sample *samples, int64_t n,
                                     int64_t native_h, int64_t native_w, int S, int channels, int stretch, int norm)
{
    const int64_t plane = (int64_t)S * S;
    MS_GRID_STRIDE(i, n * plane) {
        const int64_t k = i / plane;
        const int yy = (int)((i % plane) / S), x = (int)(i % S);
        const ms_prep_sample p = samples[k];
        float *out = y + k * channels * plane + (int64_t)yy * S + x;
        float v = 0;
        int oh = 0, ow = 0;
        if (p.h > 0 && p.w > 0) ms_pm_frame(S, stretch, p.bh, p.bw, &oh, &ow);
        const int inside = yy < oh && x < ow;
        if (inside) {
            float wy[MS_PREP_MAX_TAPS], wx[MS_PREP_MAX_TAPS];
            int ky = ms_pm_taps_k(p.bh, oh), kx = ms_pm_taps_k(p.bw, ow), fy, fx;
            ky = ky < MS_PREP_MAX_TAPS ? ky : MS_PREP_MAX_TAPS; /* ms_prep_check refuses larger ones */
            kx = kx < MS_PREP_MAX_TAPS ? kx : MS_PREP_MAX_TAPS;
            int ny = ms_pm_axis_taps(p.y0, p.bh, p.h, oh, yy, ky, wy, &fy);
            int nx = ms_pm_axis_taps(p.x0, p.bw, p.w, ow, x, kx, wx, &fx);
            v = ms_pm_pixel(native + k * native_h * native_w, native_w, p.w, p.flip, fy, ny, wy, fx, nx, wx);
        }
        for (int ch = 0; ch < channels; ch++) {
            float a, b;
            ms_pm_norm_coef(norm, ch, &a, &b);
            out[ch * plane] = inside ? __fadd_rn(__fmul_rn(a, v), b) : 0.f;
        }
    }
}

extern "C" ms_status ms_prep_native_cuda(ms_device *dev, float *y, const uint16_t *native,
                                         const ms_prep_sample *samples, int64_t n, int64_t native_h,
                                         int64_t native_w, int64_t size, int64_t channels, int64_t resize,
                                         int64_t norm)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(channels != 1 && channels != 3, MS_EINVAL, "prep: %lld channels", (long long)channels);
    MS_FAIL_IF(size < 1 || size > 65536, MS_EINVAL, "prep: model size %lld", (long long)size);
    if (n <= 0) return MS_OK;
    MS_LAUNCH(prep_native_k, n * size * size, y, native, samples, n, native_h, native_w, (int)size, (int)channels,
              resize == 1, (int)norm);
    return MS_OK;
}
