/* kernels/cuda/elementwise.cu — add, broadcast add, scale, batched transpose, row gather and the sum
 * reduction (contract: kernels/elementwise.h). Forward may alias; backward accumulates.
 * Determinism: add_bcast's dp and reduce_sum use the fixed-order column sum (cuda_common.h). gather_rows'
 * backward scatter-adds with float atomics: exact and deterministic when the indices are distinct (MAE's visible
 * tokens), order-dependent in the last bit when an index repeats. */
#include "cuda_common.h"

__global__ static void add_fwd_f32(float *y, const float *a, const float *b, int64_t n)
{
    MS_GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}
__global__ static void acc_f32(float *d, const float *g, int64_t n)
{
    MS_GRID_STRIDE(i, n) d[i] += g[i];
}
__global__ static void add_bcast_fwd_f32(float *y, const float *x, const float *p, int64_t total, int64_t n)
{
    MS_GRID_STRIDE(i, total) y[i] = x[i] + p[i % n];
}
__global__ static void scale_fwd_f32(float *y, const float *x, float alpha, int64_t n)
{
    MS_GRID_STRIDE(i, n) y[i] = alpha * x[i];
}
__global__ static void scale_bwd_f32(float *dx, const float *dy, float alpha, int64_t n)
{
    MS_GRID_STRIDE(i, n) dx[i] += alpha * dy[i];
}
/* y[a,c,r] (+)= x[a,r,c] through a 32×33 shared tile (coalesced both ways, no bank conflicts). */
__global__ static void transpose_f32(float *y, const float *x, int64_t R, int64_t C, int accumulate)
{
    __shared__ float t[32][33];
    int64_t a = blockIdx.z;
    int64_t r0 = (int64_t)blockIdx.y * 32, c0 = (int64_t)blockIdx.x * 32;
    const float *xa = x + a * R * C;
    float *ya = y + a * R * C;
    for (int k = threadIdx.y; k < 32; k += 8) {
        int64_t r = r0 + k, c = c0 + threadIdx.x;
        if (r < R && c < C) t[k][threadIdx.x] = xa[r * C + c];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < 32; k += 8) {
        int64_t c = c0 + k, r = r0 + threadIdx.x;
        if (r < R && c < C) {
            float v = t[threadIdx.x][k];
            ya[c * R + r] = accumulate ? ya[c * R + r] + v : v;
        }
    }
}
__global__ static void gather_fwd_f32(float *y, const float *x, const int32_t *idx, int64_t n_idx, int64_t D)
{
    MS_GRID_STRIDE(i, n_idx * D) {
        int64_t r = i / D;
        int32_t s = idx[r];
        y[i] = s >= 0 ? x[(int64_t)s * D + i % D] : 0.f;
    }
}
__global__ static void gather_bwd_f32(float *dx, const float *dy, const int32_t *idx, int64_t n_idx, int64_t D,
                                      int64_t n_rows)
{
    MS_GRID_STRIDE(i, n_idx * D) {
        int32_t s = idx[i / D];
        if (s >= 0 && s < n_rows) atomicAdd(&dx[(int64_t)s * D + i % D], dy[i]);
    }
}
__global__ static void bcast_rows_bwd_f32(float *dx, const float *dy, int64_t A, int64_t R, int64_t C)
{
    MS_GRID_STRIDE(i, A * R * C) {
        int64_t c = i % C, a = i / (R * C);
        dx[i] += dy[a * C + c];
    }
}

struct sum_x {
    const float *x;
    int64_t R, C;
    __device__ float operator()(int64_t a, int64_t r, int64_t c) const { return x[(a * R + r) * C + c]; }
};

#define PRELUDE(name, n)                                                                                   \
    MS_CU_CTX(dev);                                                                                        \
    MS_FAIL_IF((n) < 0, MS_EINVAL, name ": negative size");                                                \
    if ((n) == 0) return MS_OK

extern "C" ms_status ms_add_forward_cuda(ms_device *dev, float *y, const float *a, const float *b, int64_t n)
{
    PRELUDE("add_forward", n);
    MS_FAIL_IF(!y || !a || !b, MS_EINVAL, "add_forward: NULL argument");
    MS_LAUNCH(add_fwd_f32, n, y, a, b, n);
    return MS_OK;
}
extern "C" ms_status ms_add_backward_cuda(ms_device *dev, float *da, float *db, const float *dy, int64_t n)
{
    PRELUDE("add_backward", n);
    if (da) MS_LAUNCH(acc_f32, n, da, dy, n);
    if (db) MS_LAUNCH(acc_f32, n, db, dy, n);
    return MS_OK;
}
extern "C" ms_status ms_add_bcast_forward_cuda(ms_device *dev, float *y, const float *x, const float *p,
                                               int64_t outer, int64_t n)
{
    PRELUDE("add_bcast_forward", outer * n);
    MS_FAIL_IF(!y || !x || !p, MS_EINVAL, "add_bcast_forward: NULL argument");
    MS_LAUNCH(add_bcast_fwd_f32, outer * n, y, x, p, outer * n, n);
    return MS_OK;
}
extern "C" ms_status ms_add_bcast_backward_cuda(ms_device *dev, float *dx, float *dp, const float *dy,
                                                int64_t outer, int64_t n)
{
    PRELUDE("add_bcast_backward", outer * n);
    if (dx) MS_LAUNCH(acc_f32, outer * n, dx, dy, outer * n);
    if (dp) MS_TRY(ms_colsum(dev, dp, sum_x{dy, outer, n}, 1, outer, n, 1));
    return MS_OK;
}
extern "C" ms_status ms_scale_forward_cuda(ms_device *dev, float *y, const float *x, float alpha, int64_t n)
{
    PRELUDE("scale_forward", n);
    MS_LAUNCH(scale_fwd_f32, n, y, x, alpha, n);
    return MS_OK;
}
extern "C" ms_status ms_scale_backward_cuda(ms_device *dev, float *dx, const float *dy, float alpha, int64_t n)
{
    PRELUDE("scale_backward", n);
    if (dx) MS_LAUNCH(scale_bwd_f32, n, dx, dy, alpha, n);
    return MS_OK;
}
static ms_status transpose(ms_device *dev, float *y, const float *x, int64_t A, int64_t R, int64_t C, int acc)
{
    MS_FAIL_IF(A > 65535 || (R + 31) / 32 > 65535, MS_EUNSUPPORTED, "transpose: A=%lld R=%lld too large",
               (long long)A, (long long)R);
    dim3 grid((unsigned)((C + 31) / 32), (unsigned)((R + 31) / 32), (unsigned)A);
    transpose_f32<<<grid, dim3(32, 8), 0, ms_cuda_ctx_of(dev)->stream>>>(y, x, R, C, acc);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_transpose_forward_cuda(ms_device *dev, float *y, const float *x, int64_t A, int64_t R,
                                               int64_t C)
{
    PRELUDE("transpose_forward", A * R * C);
    MS_FAIL_IF(y == x, MS_EINVAL, "transpose_forward: y must not alias x");
    return transpose(dev, y, x, A, R, C, 0);
}
extern "C" ms_status ms_transpose_backward_cuda(ms_device *dev, float *dx, const float *dy, int64_t A, int64_t R,
                                                int64_t C)
{
    PRELUDE("transpose_backward", A * R * C);
    if (!dx) return MS_OK;
    return transpose(dev, dx, dy, A, C, R, 1); /* dy (A,C,R) → dx (A,R,C) */
}
extern "C" ms_status ms_gather_rows_forward_cuda(ms_device *dev, float *y, const float *x, const int32_t *idx,
                                                 int64_t n_idx, int64_t D)
{
    PRELUDE("gather_rows_forward", n_idx * D);
    MS_LAUNCH(gather_fwd_f32, n_idx * D, y, x, idx, n_idx, D);
    return MS_OK;
}
extern "C" ms_status ms_gather_rows_backward_cuda(ms_device *dev, float *dx, const float *dy, const int32_t *idx,
                                                  int64_t n_idx, int64_t D, int64_t n_rows_x)
{
    PRELUDE("gather_rows_backward", n_idx * D);
    if (dx) MS_LAUNCH(gather_bwd_f32, n_idx * D, dx, dy, idx, n_idx, D, n_rows_x);
    return MS_OK;
}
extern "C" ms_status ms_reduce_sum_forward_cuda(ms_device *dev, float *y, const float *x, int64_t A, int64_t R,
                                                int64_t C)
{
    PRELUDE("reduce_sum_forward", A * C);
    return ms_colsum(dev, y, sum_x{x, R, C}, A, R, C, 0);
}
extern "C" ms_status ms_reduce_sum_backward_cuda(ms_device *dev, float *dx, const float *dy, int64_t A, int64_t R,
                                                 int64_t C)
{
    PRELUDE("reduce_sum_backward", A * R * C);
    if (dx) MS_LAUNCH(bcast_rows_bwd_f32, A * R * C, dx, dy, A, R, C);
    return MS_OK;
}
