/* kernels/cuda/activation.cu — GELU (exact erf form) and ReLU, forward and backward (contract:
 * kernels/activation.h). Elementwise, grid-stride; y may alias x; backward accumulates into dx.
 * erff is kept precise under --use_fast_math (only exp/log/div/sqrt are approximated). */
#include "cuda_common.h"

__global__ static void gelu_fwd_f32(float *y, const float *x, int64_t n)
{
    MS_GRID_STRIDE(i, n) { float v = x[i]; y[i] = 0.5f * v * (1.f + erff(v * 0.70710678118654752f)); }
}
__global__ static void gelu_bwd_f32(float *dx, const float *dy, const float *x, int64_t n)
{
    MS_GRID_STRIDE(i, n) {
        float v = x[i];
        float cdf = 0.5f * (1.f + erff(v * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        dx[i] += dy[i] * (cdf + v * pdf);
    }
}
__global__ static void relu_fwd_f32(float *y, const float *x, int64_t n)
{
    MS_GRID_STRIDE(i, n) { float v = x[i]; y[i] = v > 0.f ? v : 0.f; }
}
__global__ static void relu_bwd_f32(float *dx, const float *dy, const float *x, int64_t n)
{
    MS_GRID_STRIDE(i, n) if (x[i] > 0.f) dx[i] += dy[i];
}

#define ENTRY(name, kern, check, ...)                                                                      \
    {                                                                                                      \
        MS_CU_CTX(dev);                                                                                    \
        MS_FAIL_IF(n < 0, MS_EINVAL, name ": negative size");                                              \
        if (n == 0) return MS_OK;                                                                          \
        MS_FAIL_IF(check, MS_EINVAL, name ": NULL argument");                                              \
        kern<<<ms_cu_blocks(n, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(__VA_ARGS__);                   \
        MS_CU_LAUNCHED();                                                                                  \
        return MS_OK;                                                                                      \
    }

extern "C" ms_status ms_gelu_forward_cuda(ms_device *dev, float *y, const float *x, int64_t n)
ENTRY("gelu_forward", gelu_fwd_f32, !y || !x, y, x, n)
extern "C" ms_status ms_gelu_backward_cuda(ms_device *dev, float *dx, const float *dy, const float *x, int64_t n)
{
    if (!dx) return MS_OK;
    ENTRY("gelu_backward", gelu_bwd_f32, !dy || !x, dx, dy, x, n)
}
extern "C" ms_status ms_relu_forward_cuda(ms_device *dev, float *y, const float *x, int64_t n)
ENTRY("relu_forward", relu_fwd_f32, !y || !x, y, x, n)
extern "C" ms_status ms_relu_backward_cuda(ms_device *dev, float *dx, const float *dy, const float *x, int64_t n)
{
    if (!dx) return MS_OK;
    ENTRY("relu_backward", relu_bwd_f32, !dy || !x, dx, dy, x, n)
}
