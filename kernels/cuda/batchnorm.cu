/* kernels/cuda/batchnorm.cu — BatchNorm2d (contract: kernels/batchnorm.h). Statistics and parameter gradients: one
 * block per channel, each thread summing a fixed stride of the channel's B·HW values in double, then a fixed-order
 * block sum (two passes for the variance, as the CPU). y and dx: one thread an element. Deterministic.
 */
#include "cuda_common.h"

/* one block per channel: mean and rstd (training: from the batch, updating the running stats; inference: from
 * the running stats) into mean/rstd */
__global__ static void bn_stats(float *mean, float *rstd, const float *x, float *run_mean, float *run_var, int64_t B,
                                int64_t C, int64_t HW, float eps, float momentum, int training)
{
    __shared__ double sh[256];
    int64_t c = blockIdx.x, n = B * HW;
    double mu, var;
    if (training) {
        double s = 0;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += x[((j / HW) * C + c) * HW + j % HW];
        mu = ms_block_sum_d(s, sh) / (double)n;
        double v = 0;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
            double t = x[((j / HW) * C + c) * HW + j % HW] - mu;
            v += t * t;
        }
        var = ms_block_sum_d(v, sh) / (double)n;
    } else {
        mu = run_mean[c];
        var = run_var[c];
    }
    if (threadIdx.x == 0) {
        mean[c] = (float)mu;
        rstd[c] = (float)(1.0 / sqrt(var + (double)eps));
        if (training && run_mean) {
            run_mean[c] = (float)((1.0 - momentum) * run_mean[c] + (double)momentum * mu);
            run_var[c] = (float)((1.0 - momentum) * run_var[c] + (double)momentum * var * n / (double)(n - 1));
        }
    }
}

__global__ static void bn_apply(float *y, const float *x, const float *mean, const float *rstd, const float *gamma,
                                const float *beta, int64_t B, int64_t C, int64_t HW)
{
    MS_GRID_STRIDE(i, B * C * HW) {
        int64_t c = (i / HW) % C;
        float rs = rstd[c], g = gamma ? gamma[c] * rs : rs;
        y[i] = (x[i] - mean[c]) * g + (beta ? beta[c] : 0.f);
    }
}

/* one block per channel: sums[2c] = Σ dy, sums[2c+1] = Σ dy·x̂; dbeta/dgamma accumulate them */
__global__ static void bn_grad_sums(double *sums, float *dgamma, float *dbeta, const float *dy, const float *x,
                                    const float *mean, const float *rstd, int64_t B, int64_t C, int64_t HW)
{
    __shared__ double sh[256];
    int64_t c = blockIdx.x, n = B * HW;
    double mu = mean[c], rs = rstd[c], sd = 0, sdx = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        int64_t k = ((j / HW) * C + c) * HW + j % HW;
        sd += dy[k];
        sdx += dy[k] * ((x[k] - mu) * rs);
    }
    sd = ms_block_sum_d(sd, sh);
    sdx = ms_block_sum_d(sdx, sh);
    if (threadIdx.x == 0) {
        sums[2 * c] = sd;
        sums[2 * c + 1] = sdx;
        if (dbeta) dbeta[c] += (float)sd;
        if (dgamma) dgamma[c] += (float)sdx;
    }
}

__global__ static void bn_dx(float *dx, const float *dy, const float *x, const float *gamma, const float *mean,
                             const float *rstd, const double *sums, int64_t B, int64_t C, int64_t HW, int training)
{
    MS_GRID_STRIDE(i, B * C * HW) {
        int64_t c = (i / HW) % C;
        double n = (double)(B * HW), mu = mean[c], rs = rstd[c], g = (gamma ? gamma[c] : 1.0) * rs;
        double md = training ? sums[2 * c] / n : 0, mdx = training ? sums[2 * c + 1] / n : 0;
        dx[i] += (float)(g * (dy[i] - md - (x[i] - mu) * rs * mdx));
    }
}

extern "C" ms_status ms_batchnorm_forward_cuda(ms_device *dev, float *y, float *save_mean, float *save_rstd,
                                               const float *x, const float *gamma, const float *beta, float *run_mean,
                                               float *run_var, int64_t B, int64_t C, int64_t HW, float eps,
                                               float momentum, int training)
{
    MS_CU_CTX(dev);
    int64_t n = B * HW;
    MS_FAIL_IF(C > 2147483647LL, MS_EINVAL, "batchnorm_forward: bad shape B=%lld C=%lld HW=%lld", (long long)B,
               (long long)C, (long long)HW); /* one block per channel */
    MS_TRY(ms_batchnorm_forward_check(x, save_mean, save_rstd, run_mean, run_var, B, C, HW, training));
    if (n == 0) return MS_OK;
    float *mean = save_mean, *rstd = save_rstd;
    if (!mean || !rstd) { /* inference without save buffers */
        void *p;
        MS_TRY(ms_cuda_scratch(dev, (size_t)(2 * C) * sizeof(float), &p));
        mean = (float *)p;
        rstd = mean + C;
    }
    bn_stats<<<(unsigned)C, 256, 0, ms_cuda_ctx_of(dev)->stream>>>(mean, rstd, x, run_mean, run_var, B, C, HW, eps,
                                                                    momentum, training);
    MS_CU_LAUNCHED();
    MS_LAUNCH(bn_apply, B * C * HW, y, x, mean, rstd, gamma, beta, B, C, HW);
    return MS_OK;
}

extern "C" ms_status ms_batchnorm_backward_cuda(ms_device *dev, float *dx, float *dgamma, float *dbeta,
                                                const float *dy, const float *x, const float *gamma,
                                                const float *save_mean, const float *save_rstd, int64_t B, int64_t C,
                                                int64_t HW, int training)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(C > 2147483647LL, MS_EINVAL, "batchnorm_backward: bad shape B=%lld C=%lld HW=%lld", (long long)B,
               (long long)C, (long long)HW); /* one block per channel */
    MS_TRY(ms_batchnorm_check("batchnorm_backward", B, C, HW, x, save_mean, save_rstd));
    if (B * HW == 0 || (!dx && !dgamma && !dbeta)) return MS_OK;
    MS_FAIL_IF(!dy, MS_EINVAL, "batchnorm_backward: NULL dy");
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(2 * C) * sizeof(double), &p));
    double *sums = (double *)p;
    bn_grad_sums<<<(unsigned)C, 256, 0, ms_cuda_ctx_of(dev)->stream>>>(sums, dgamma, dbeta, dy, x, save_mean,
                                                                        save_rstd, B, C, HW);
    MS_CU_LAUNCHED();
    if (dx) MS_LAUNCH(bn_dx, B * C * HW, dx, dy, x, gamma, save_mean, save_rstd, sums, B, C, HW, training);
    return MS_OK;
}
