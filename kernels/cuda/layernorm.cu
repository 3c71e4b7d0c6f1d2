/* kernels/cuda/layernorm.cu — LayerNorm over the last dim and LayerNorm2d over NCHW channels (contract:
 * kernels/layernorm.h). Two-pass statistics (mean, then the biased variance of x − mean), saved as mean and
 * rstd; backward recomputes x̂: dx += rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·w.
 * LN: one warp per row. add_layernorm: one warp per row too, with the same sums in the same order (so its y, mean
 * and rstd equal layernorm's on the written s); the row is held in registers (V values per lane) for D ≤ 32·V, so
 * x and r are read once and s and y written once (5 passes over memory for add then layernorm become 4).
 * LN2d: one thread per (image, pixel), channels strided by HW (coalesced over pixels).
 * dw/db are deterministic: fixed-order column sums (LN) and one block per channel (LN2d); no atomics.
 */
#include "cuda_common.h"

__global__ static void ln_fwd_f32(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b,
                                  int64_t N, int64_t D, float eps)
{
    int lane = threadIdx.x & 31;
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < N;
         r += (int64_t)gridDim.x * (blockDim.x / 32)) {
        const float *xr = x + r * D;
        float s = 0.f;
        for (int64_t c = lane; c < D; c += 32) s += xr[c];
        float mu = ms_warp_sum(s) / (float)D;
        float v = 0.f;
        for (int64_t c = lane; c < D; c += 32) { float d = xr[c] - mu; v += d * d; }
        float rs = __frsqrt_rn(ms_warp_sum(v) / (float)D + eps);
        float *yr = y + r * D;
        for (int64_t c = lane; c < D; c += 32) yr[c] = (xr[c] - mu) * rs * w[c] + (b ? b[c] : 0.f);
        if (lane == 0) {
            if (mean) mean[r] = mu;
            if (rstd) rstd[r] = rs;
        }
    }
}
/* add + LN, one warp per row. V > 0: lane values in registers, D ≤ 32·V; V = 0: any D, s re-read from memory (each
 * lane reads back only what it wrote). A lane reads its x and r elements before storing them in s, so s may alias
 * x or r. */
template <int V>
__global__ static void add_ln_fwd_f32(float *s, float *y, float *mean, float *rstd, const float *x, const float *r,
                                      const float *w, const float *b, int64_t N, int64_t D, float eps)
{
    int lane = threadIdx.x & 31;
    for (int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; row < N;
         row += (int64_t)gridDim.x * (blockDim.x / 32)) {
        const float *xr = x + row * D, *rr = r + row * D;
        float *sr = s + row * D, *yr = y + row * D;
        float v[V > 0 ? V : 1];
        float sum = 0.f;
        if (V > 0) {
#pragma unroll
            for (int k = 0; k < V; k++) {
                int64_t c = lane + 32 * k;
                v[k] = c < D ? xr[c] + rr[c] : 0.f;
            }
#pragma unroll
            for (int k = 0; k < V; k++)
                if (lane + 32 * k < D) { sr[lane + 32 * k] = v[k]; sum += v[k]; }
        } else {
            for (int64_t c = lane; c < D; c += 32) {
                float t = xr[c] + rr[c];
                sr[c] = t;
                sum += t;
            }
        }
        float mu = ms_warp_sum(sum) / (float)D, var = 0.f;
        if (V > 0) {
#pragma unroll
            for (int k = 0; k < V; k++)
                if (lane + 32 * k < D) { float d = v[k] - mu; var += d * d; }
        } else {
            for (int64_t c = lane; c < D; c += 32) { float d = sr[c] - mu; var += d * d; }
        }
        float rs = __frsqrt_rn(ms_warp_sum(var) / (float)D + eps);
        if (V > 0) {
#pragma unroll
            for (int k = 0; k < V; k++) {
                int64_t c = lane + 32 * k;
                if (c < D) yr[c] = (v[k] - mu) * rs * w[c] + (b ? b[c] : 0.f);
            }
        } else {
            for (int64_t c = lane; c < D; c += 32) yr[c] = (sr[c] - mu) * rs * w[c] + (b ? b[c] : 0.f);
        }
        if (lane == 0) {
            if (mean) mean[row] = mu;
            if (rstd) rstd[row] = rs;
        }
    }
}
__global__ static void ln_bwd_dx_f32(float *dx, const float *dy, const float *x, const float *w, const float *mean,
                                     const float *rstd, int64_t N, int64_t D)
{
    int lane = threadIdx.x & 31;
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < N;
         r += (int64_t)gridDim.x * (blockDim.x / 32)) {
        const float *xr = x + r * D, *gr = dy + r * D;
        float mu = mean[r], rs = rstd[r];
        float sg = 0.f, sgx = 0.f;
        for (int64_t c = lane; c < D; c += 32) {
            float g = gr[c] * w[c], xh = (xr[c] - mu) * rs;
            sg += g;
            sgx += g * xh;
        }
        sg = ms_warp_sum(sg) / (float)D;
        sgx = ms_warp_sum(sgx) / (float)D;
        for (int64_t c = lane; c < D; c += 32) {
            float g = gr[c] * w[c], xh = (xr[c] - mu) * rs;
            dx[r * D + c] += rs * (g - sg - xh * sgx);
        }
    }
}
struct ln_dw_term {
    const float *dy, *x, *mean, *rstd;
    int64_t D;
    __device__ float operator()(int64_t, int64_t r, int64_t c) const
    {
        return dy[r * D + c] * (x[r * D + c] - mean[r]) * rstd[r];
    }
};
struct ln_db_term {
    const float *dy;
    int64_t D;
    __device__ float operator()(int64_t, int64_t r, int64_t c) const { return dy[r * D + c]; }
};

__global__ static void ln2d_fwd_f32(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b,
                                    int64_t B, int64_t C, int64_t HW, float eps)
{
    MS_GRID_STRIDE(i, B * HW) {
        int64_t bi = i / HW, p = i % HW;
        const float *xp = x + bi * C * HW + p;
        float s = 0.f;
        for (int64_t c = 0; c < C; c++) s += xp[c * HW];
        float mu = s / (float)C;
        float v = 0.f;
        for (int64_t c = 0; c < C; c++) { float d = xp[c * HW] - mu; v += d * d; }
        float rs = __frsqrt_rn(v / (float)C + eps);
        float *yp = y + bi * C * HW + p;
        for (int64_t c = 0; c < C; c++) yp[c * HW] = (xp[c * HW] - mu) * rs * w[c] + (b ? b[c] : 0.f);
        if (mean) mean[i] = mu;
        if (rstd) rstd[i] = rs;
    }
}
__global__ static void ln2d_bwd_dx_f32(float *dx, const float *dy, const float *x, const float *w, const float *mean,
                                       const float *rstd, int64_t B, int64_t C, int64_t HW)
{
    MS_GRID_STRIDE(i, B * HW) {
        int64_t bi = i / HW, p = i % HW, o = bi * C * HW + p;
        float mu = mean[i], rs = rstd[i];
        float sg = 0.f, sgx = 0.f;
        for (int64_t c = 0; c < C; c++) {
            float g = dy[o + c * HW] * w[c], xh = (x[o + c * HW] - mu) * rs;
            sg += g;
            sgx += g * xh;
        }
        sg /= (float)C;
        sgx /= (float)C;
        for (int64_t c = 0; c < C; c++) {
            float g = dy[o + c * HW] * w[c], xh = (x[o + c * HW] - mu) * rs;
            dx[o + c * HW] += rs * (g - sg - xh * sgx);
        }
    }
}
/* one block per channel: Σ over (image, pixel) in a fixed order */
__global__ static void ln2d_bwd_dwdb_f32(float *dw, float *db, const float *dy, const float *x, const float *mean,
                                         const float *rstd, int64_t B, int64_t C, int64_t HW)
{
    __shared__ float sh[256];
    int64_t c = blockIdx.x;
    float sw = 0.f, sb = 0.f;
    for (int64_t bi = 0; bi < B; bi++) {
        const float *g = dy + (bi * C + c) * HW, *xp = x + (bi * C + c) * HW;
        for (int64_t p = threadIdx.x; p < HW; p += 256) {
            int64_t s = bi * HW + p;
            sw += g[p] * (xp[p] - mean[s]) * rstd[s];
            sb += g[p];
        }
    }
    sw = ms_block_sum_f(sw, sh);
    sb = ms_block_sum_f(sb, sh);
    if (threadIdx.x == 0) {
        if (dw) dw[c] += sw;
        if (db) db[c] += sb;
    }
}

extern "C" ms_status ms_layernorm_forward_cuda(ms_device *dev, float *y, float *mean, float *rstd, const float *x,
                                               const float *w, const float *b, int64_t N, int64_t D, float eps)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(N < 0 || D < 0, MS_EINVAL, "layernorm_forward: negative size");
    if (!N) return MS_OK;
    MS_FAIL_IF(!D, MS_EINVAL, "layernorm_forward: D = 0");
    MS_FAIL_IF(!y || !x || !w, MS_EINVAL, "layernorm_forward: NULL input or weight");
    ln_fwd_f32<<<ms_cu_blocks(N, 8), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(y, mean, rstd, x, w, b, N, D, eps);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_add_layernorm_forward_cuda(ms_device *dev, float *s, float *y, float *mean, float *rstd,
                                                   const float *x, const float *r, const float *w, const float *b,
                                                   int64_t N, int64_t D, float eps)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(N < 0 || D < 0, MS_EINVAL, "add_layernorm_forward: negative size");
    if (!N) return MS_OK;
    MS_FAIL_IF(!D, MS_EINVAL, "add_layernorm_forward: D = 0");
    MS_FAIL_IF(!s || !y || !x || !r || !w, MS_EINVAL, "add_layernorm_forward: NULL input, output or weight");
    unsigned nb = ms_cu_blocks(N, 8);
    cudaStream_t st = ms_cuda_ctx_of(dev)->stream;
    /* registers per lane: the smallest V with 32·V ≥ D (SAM: 768 → 24, 1024 → 32, 1280 → 40; MAE decoder: 512 → 16) */
#define ADD_LN(V_) add_ln_fwd_f32<V_><<<nb, 256, 0, st>>>(s, y, mean, rstd, x, r, w, b, N, D, eps)
    if (D <= 64) ADD_LN(2);
    else if (D <= 128) ADD_LN(4);
    else if (D <= 256) ADD_LN(8);
    else if (D <= 512) ADD_LN(16);
    else if (D <= 768) ADD_LN(24);
    else if (D <= 1024) ADD_LN(32);
    else if (D <= 1280) ADD_LN(40);
    else ADD_LN(0);
#undef ADD_LN
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_layernorm_backward_cuda(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                                const float *x, const float *w, const float *mean, const float *rstd,
                                                int64_t N, int64_t D)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(N < 0 || D < 0, MS_EINVAL, "layernorm_backward: negative size");
    if (!N || !D) return MS_OK;
    MS_FAIL_IF(!dy || !x || !mean || !rstd || (dx && !w), MS_EINVAL, "layernorm_backward: NULL argument");
    if (dx) {
        ln_bwd_dx_f32<<<ms_cu_blocks(N, 8), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(dx, dy, x, w, mean, rstd, N, D);
        MS_CU_LAUNCHED();
    }
    if (dw) MS_TRY(ms_colsum(dev, dw, ln_dw_term{dy, x, mean, rstd, D}, 1, N, D, 1));
    if (db) MS_TRY(ms_colsum(dev, db, ln_db_term{dy, D}, 1, N, D, 1));
    return MS_OK;
}
extern "C" ms_status ms_layernorm2d_forward_cuda(ms_device *dev, float *y, float *mean, float *rstd, const float *x,
                                                 const float *w, const float *b, int64_t B, int64_t C, int64_t HW,
                                                 float eps)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(B < 0 || C < 0 || HW < 0, MS_EINVAL, "layernorm2d_forward: negative size");
    if (!B || !HW) return MS_OK;
    MS_FAIL_IF(!C, MS_EINVAL, "layernorm2d_forward: C = 0");
    MS_FAIL_IF(!y || !x || !w, MS_EINVAL, "layernorm2d_forward: NULL input or weight");
    ln2d_fwd_f32<<<ms_cu_blocks(B * HW, 128), 128, 0, ms_cuda_ctx_of(dev)->stream>>>(y, mean, rstd, x, w, b, B, C, HW,
                                                                                     eps);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_layernorm2d_backward_cuda(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                                  const float *x, const float *w, const float *mean, const float *rstd,
                                                  int64_t B, int64_t C, int64_t HW)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(B < 0 || C < 0 || HW < 0, MS_EINVAL, "layernorm2d_backward: negative size");
    if (!B || !C || !HW) return MS_OK;
    MS_FAIL_IF(!dy || !x || !mean || !rstd || (dx && !w), MS_EINVAL, "layernorm2d_backward: NULL argument");
    cudaStream_t s = ms_cuda_ctx_of(dev)->stream;
    if (dx) {
        ln2d_bwd_dx_f32<<<ms_cu_blocks(B * HW, 128), 128, 0, s>>>(dx, dy, x, w, mean, rstd, B, C, HW);
        MS_CU_LAUNCHED();
    }
    if (dw || db) {
        MS_FAIL_IF(C > 2147483647LL, MS_EUNSUPPORTED, "layernorm2d_backward: C too large");
        ln2d_bwd_dwdb_f32<<<(unsigned)C, 256, 0, s>>>(dw, db, dy, x, mean, rstd, B, C, HW);
        MS_CU_LAUNCHED();
    }
    return MS_OK;
}
