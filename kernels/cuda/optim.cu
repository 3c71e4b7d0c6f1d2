/* kernels/cuda/optim.cu — AdamW step (one tensor, or every tensor of an ms_adamw_plan in one launch), Σx² and
 * in-place scaling (contract: kernels/optim.h).
 * sumsq is deterministic: a fixed grid of SUMSQ_BLOCKS blocks strides over x accumulating in double, each block
 * reduces in a fixed tree order, one block sums the partials in index order; the double comes back to the host
 * (this synchronises the stream). */
#include "cuda_common.h"

#define SUMSQ_BLOCKS 512

/* The same float expressions as kernels/cpu/optim.c, so both backends round alike (up to fast-math sqrt/div). */
__device__ static inline void adamw_elem(float *p, const float *g, float *m, float *v, int64_t i, float decay, float b1,
                                         float b2, float omb1, float omb2, float eps, float step_size, float bc2_sqrt)
{
    float gi = g[i];
    float pi = p[i] * decay;
    float mi = b1 * m[i] + omb1 * gi;
    float vi = b2 * v[i] + omb2 * gi * gi;
    float denom = __fdiv_rn(__fsqrt_rn(vi), bc2_sqrt) + eps;
    p[i] = pi - step_size * __fdiv_rn(mi, denom);
    m[i] = mi;
    v[i] = vi;
}
__global__ static void adamw_f32(float *p, const float *g, float *m, float *v, int64_t n, float decay, float b1,
                                 float b2, float omb1, float omb2, float eps, float step_size, float bc2_sqrt)
{
    MS_GRID_STRIDE(i, n) adamw_elem(p, g, m, v, i, decay, b1, b2, omb1, omb2, eps, step_size, bc2_sqrt);
}
/* adamw_multi: block → chunk c (grid-stride over chunks) → tensor t, the last with chunk0[t] <= c (a binary search
 * every thread does alike on the small, cached chunk0) → its elements [(c − chunk0[t])·CHUNK, +CHUNK). The decay
 * 1 − lr·wd is the host's double expression, rounded step by step (no fma), as ms_adamw_step_cuda computes it. */
__global__ static void adamw_multi_f32(const ms_adamw_tensor *tab, const int64_t *chunk0, int n, int64_t n_chunks,
                                       float lr, float b1, float b2, float omb1, float omb2, float eps, float step_size,
                                       float bc2_sqrt)
{
    for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        int lo = 0, hi = n - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (chunk0[mid] <= c) lo = mid;
            else hi = mid - 1;
        }
        const ms_adamw_tensor t = tab[lo];
        float decay = __double2float_rn(__dsub_rn(1.0, __dmul_rn((double)lr, (double)t.wd)));
        int64_t i0 = (c - chunk0[lo]) * MS_ADAMW_CHUNK, i1 = i0 + MS_ADAMW_CHUNK < t.n ? i0 + MS_ADAMW_CHUNK : t.n;
        for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x)
            adamw_elem(t.p, t.g, t.m, t.v, i, decay, b1, b2, omb1, omb2, eps, step_size, bc2_sqrt);
    }
}
__global__ static void sumsq_partial(double *part, const float *x, int64_t n)
{
    __shared__ double sh[256];
    double s = 0;
    MS_GRID_STRIDE(i, n) { double v = x[i]; s += v * v; }
    s = ms_block_sum_d(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}
__global__ static void sumsq_final(double *out, const double *part, int n)
{
    __shared__ double sh[256];
    double s = 0;
    for (int i = threadIdx.x; i < n; i += 256) s += part[i];
    s = ms_block_sum_d(s, sh);
    if (threadIdx.x == 0) *out = s;
}
__global__ static void scale_ip_f32(float *x, float a, int64_t n)
{
    MS_GRID_STRIDE(i, n) x[i] *= a;
}

extern "C" ms_status ms_adamw_step_cuda(ms_device *dev, float *p, const float *g, float *m, float *v, int64_t n,
                                        float lr, float beta1, float beta2, float eps, float wd, int64_t step)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(n < 0 || step < 1, MS_EINVAL, "adamw_step: n=%lld step=%lld (step counts from 1)", (long long)n,
               (long long)step);
    if (!n) return MS_OK;
    MS_FAIL_IF(!p || !g || !m || !v, MS_EINVAL, "adamw_step: NULL argument");
    MS_FAIL_IF(!(beta1 >= 0.f && beta1 < 1.f && beta2 >= 0.f && beta2 < 1.f), MS_EINVAL,
               "adamw_step: betas (%g, %g) outside [0, 1)", (double)beta1, (double)beta2);
    /* bias corrections in double on the host, as torch computes them in Python floats */
    double bc1 = 1.0 - pow((double)beta1, (double)step), bc2 = 1.0 - pow((double)beta2, (double)step);
    float decay = (float)(1.0 - (double)lr * (double)wd);
    float step_size = (float)((double)lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float omb1 = (float)(1.0 - (double)beta1), omb2 = (float)(1.0 - (double)beta2);
    adamw_f32<<<ms_cu_blocks(n, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(p, g, m, v, n, decay, beta1, beta2,
                                                                              omb1, omb2, eps, step_size, bc2_sqrt);
    MS_CU_LAUNCHED();
    return MS_OK;
}

extern "C" ms_status ms_adamw_multi_cuda(ms_device *dev, const ms_adamw_plan *pl, float lr, float beta1, float beta2,
                                         float eps, int64_t step)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(!pl || pl->dev != dev, MS_EINVAL, "adamw_multi: the plan was built for another device");
    MS_FAIL_IF(step < 1, MS_EINVAL, "adamw_multi: step %lld (steps count from 1)", (long long)step);
    MS_FAIL_IF(!(beta1 >= 0.f && beta1 < 1.f && beta2 >= 0.f && beta2 < 1.f), MS_EINVAL,
               "adamw_multi: betas (%g, %g) outside [0, 1)", (double)beta1, (double)beta2);
    int64_t n_chunks = pl->n ? pl->chunk0[pl->n] : 0;
    if (!n_chunks) return MS_OK;
    MS_FAIL_IF(!pl->dev_table, MS_EINVAL, "adamw_multi: the plan has no device table");
    double bc1 = 1.0 - pow((double)beta1, (double)step), bc2 = 1.0 - pow((double)beta2, (double)step);
    float step_size = (float)((double)lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float omb1 = (float)(1.0 - (double)beta1), omb2 = (float)(1.0 - (double)beta2);
    const ms_adamw_tensor *tab = (const ms_adamw_tensor *)pl->dev_table;
    const int64_t *chunk0 = (const int64_t *)((const char *)pl->dev_table + (size_t)pl->n * sizeof(ms_adamw_tensor));
    unsigned nb = (unsigned)(n_chunks < 65535LL * 32 ? n_chunks : 65535LL * 32); /* grid-stride over chunks */
    adamw_multi_f32<<<nb, 256, 0, ms_cuda_ctx_of(dev)->stream>>>(tab, chunk0, pl->n, n_chunks, lr, beta1, beta2, omb1,
                                                                  omb2, eps, step_size, bc2_sqrt);
    MS_CU_LAUNCHED();
    return MS_OK;
}

extern "C" ms_status ms_sumsq_cuda(ms_device *dev, double *out, const float *x, int64_t n)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(!out || n < 0, MS_EINVAL, "sumsq: bad argument");
    if (!n) return MS_OK;
    MS_FAIL_IF(!x, MS_EINVAL, "sumsq: NULL x");
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    void *p;
    double host = 0;
    MS_TRY(ms_cuda_scratch(dev, (SUMSQ_BLOCKS + 1) * sizeof(double), &p));
    double *part = (double *)p;
    sumsq_partial<<<SUMSQ_BLOCKS, 256, 0, cx->stream>>>(part, x, n);
    MS_CU_LAUNCHED();
    sumsq_final<<<1, 256, 0, cx->stream>>>(part + SUMSQ_BLOCKS, part, SUMSQ_BLOCKS);
    MS_CU_LAUNCHED();
    MS_CU(cudaMemcpyAsync(&host, part + SUMSQ_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost, cx->stream));
    MS_CU(cudaStreamSynchronize(cx->stream));
    *out += host;
    return MS_OK;
}

extern "C" ms_status ms_scale_inplace_cuda(ms_device *dev, float *x, float alpha, int64_t n)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(n < 0, MS_EINVAL, "scale_inplace: negative size");
    if (!n) return MS_OK;
    scale_ip_f32<<<ms_cu_blocks(n, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(x, alpha, n);
    MS_CU_LAUNCHED();
    return MS_OK;
}
