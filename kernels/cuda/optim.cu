/* kernels/cuda/optim.cu — AdamW step, Σx² and in-place scaling (contract: kernels/optim.h).
 * sumsq is deterministic: a fixed grid of SUMSQ_BLOCKS blocks strides over x accumulating in double, each block
 * reduces in a fixed tree order, one block sums the partials in index order; the double comes back to the host
 * (this synchronises the stream). */
#include "cuda_common.h"

#define SUMSQ_BLOCKS 512

/* The same float expressions as kernels/cpu/optim.c, so both backends round alike (up to fast-math sqrt/div). */
__global__ static void adamw_f32(float *p, const float *g, float *m, float *v, int64_t n, float decay, float b1,
                                 float b2, float omb1, float omb2, float eps, float step_size, float bc2_sqrt)
{
    MS_GRID_STRIDE(i, n) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * gi * gi;
        float denom = __fdiv_rn(__fsqrt_rn(vi), bc2_sqrt) + eps;
        p[i] = pi - step_size * __fdiv_rn(mi, denom);
        m[i] = mi;
        v[i] = vi;
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
