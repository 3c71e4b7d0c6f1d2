/* kernels/cuda/softmax.cu — row softmax over the last dim, forward and backward (contract: kernels/softmax.h).
 * One warp per row (any cols: each lane strides the row), max-subtracted; backward uses the saved y:
 * dx += y ⊙ (dy − Σ dy⊙y). Fixed lane order in the shuffles: deterministic. */
#include "cuda_common.h"

__global__ static void softmax_fwd_f32(float *y, const float *x, int64_t rows, int64_t cols)
{
    int lane = threadIdx.x & 31;
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows;
         r += (int64_t)gridDim.x * (blockDim.x / 32)) {
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
    float m = -INFINITY;
    for (int64_t c = lane; c < cols; c += 32) m = fmaxf(m, xr[c]);
    m = ms_warp_max(m);
    float s = 0.f;
    for (int64_t c = lane; c < cols; c += 32) s += expf(xr[c] - m);
    s = ms_warp_sum(s);
    float inv = 1.f / s;
    for (int64_t c = lane; c < cols; c += 32) yr[c] = expf(xr[c] - m) * inv;
    }
}
__global__ static void softmax_bwd_f32(float *dx, const float *dy, const float *y, int64_t rows, int64_t cols)
{
    int lane = threadIdx.x & 31;
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows;
         r += (int64_t)gridDim.x * (blockDim.x / 32)) {
    const float *yr = y + r * cols, *gr = dy + r * cols;
    float s = 0.f;
    for (int64_t c = lane; c < cols; c += 32) s += yr[c] * gr[c];
    s = ms_warp_sum(s);
    for (int64_t c = lane; c < cols; c += 32) dx[r * cols + c] += yr[c] * (gr[c] - s);
    }
}

extern "C" ms_status ms_softmax_forward_cuda(ms_device *dev, float *y, const float *x, int64_t rows, int64_t cols)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(rows < 0 || cols < 0, MS_EINVAL, "softmax_forward: negative size");
    if (!rows || !cols) return MS_OK;
    MS_FAIL_IF(!y || !x, MS_EINVAL, "softmax_forward: NULL argument");
    softmax_fwd_f32<<<ms_cu_blocks(rows, 8), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(y, x, rows, cols);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_softmax_backward_cuda(ms_device *dev, float *dx, const float *dy, const float *y, int64_t rows,
                                              int64_t cols)
{
    MS_CU_CTX(dev);
    if (!dx || !rows || !cols) return MS_OK;
    MS_FAIL_IF(rows < 0 || cols < 0, MS_EINVAL, "softmax_backward: negative size");
    MS_FAIL_IF(!dy || !y, MS_EINVAL, "softmax_backward: NULL argument");
    softmax_bwd_f32<<<ms_cu_blocks(rows, 8), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(dx, dy, y, rows, cols);
    MS_CU_LAUNCHED();
    return MS_OK;
}
