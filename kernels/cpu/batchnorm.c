/* kernels/cpu/batchnorm.c — BatchNorm2d (contract: kernels/batchnorm.h). Statistics two-pass in double per channel
 * (mean, then the biased variance of x − mean). Threads: one channel an iteration for statistics and parameter
 * gradients (each walks its images in order), one (image, channel) plane for y and dx: deterministic, and
 * independent of the thread count.
 */
#include "batchnorm.h"

#include <math.h>
#include <stdlib.h>

#include "cpu/cpu_par.h"

ms_status ms_batchnorm_forward_cpu(ms_device *dev, float *y, float *save_mean, float *save_rstd, const float *x,
                                   const float *gamma, const float *beta, float *run_mean, float *run_var, int64_t B,
                                   int64_t C, int64_t HW, float eps, float momentum, int training)
{
    int64_t n = B * HW;
    MS_TRY(ms_batchnorm_forward_check(x, save_mean, save_rstd, run_mean, run_var, B, C, HW, training));
    if (n == 0) return MS_OK;
    int nt = ms_cpu_threads(dev);
    int par = n * C >= MS_CPU_PAR_MIN;
    float *mean = save_mean, *rstd = save_rstd;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
    for (int64_t c = 0; c < C; c++) {
        double mu, var;
        if (training) {
            double s = 0, v = 0;
            for (int64_t b = 0; b < B; b++)
                for (int64_t i = 0; i < HW; i++) s += x[(b * C + c) * HW + i];
            mu = s / (double)n;
            for (int64_t b = 0; b < B; b++)
                for (int64_t i = 0; i < HW; i++) { double t = x[(b * C + c) * HW + i] - mu; v += t * t; }
            var = v / (double)n;
            if (run_mean) {
                run_mean[c] = (float)((1.0 - momentum) * run_mean[c] + (double)momentum * mu);
                run_var[c] = (float)((1.0 - momentum) * run_var[c] + (double)momentum * var * n / (double)(n - 1));
            }
        } else {
            mu = run_mean[c];
            var = run_var[c];
        }
        if (mean) mean[c] = (float)mu;
        if (rstd) rstd[c] = (float)(1.0 / sqrt(var + (double)eps));
    }
    /* inference without save buffers: the statistics are recomputed per plane */
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
    for (int64_t p = 0; p < B * C; p++) {
        int64_t c = p % C;
        float mu = mean ? mean[c] : run_mean[c];
        float rs = rstd ? rstd[c] : (float)(1.0 / sqrt((double)run_var[c] + (double)eps));
        float g = gamma ? gamma[c] * rs : rs, bt = beta ? beta[c] : 0.f;
        const float *xp = x + p * HW;
        float *yp = y + p * HW;
        for (int64_t i = 0; i < HW; i++) yp[i] = (xp[i] - mu) * g + bt;
    }
    return MS_OK;
}

ms_status ms_batchnorm_backward_cpu(ms_device *dev, float *dx, float *dgamma, float *dbeta, const float *dy,
                                    const float *x, const float *gamma, const float *save_mean,
                                    const float *save_rstd, int64_t B, int64_t C, int64_t HW, int training)
{
    MS_TRY(ms_batchnorm_check("batchnorm_backward", B, C, HW, x, save_mean, save_rstd));
    int64_t n = B * HW;
    if (n == 0 || (!dx && !dgamma && !dbeta)) return MS_OK;
    MS_FAIL_IF(!dy, MS_EINVAL, "batchnorm_backward: NULL dy");
    int nt = ms_cpu_threads(dev);
    int par = n * C >= MS_CPU_PAR_MIN;
    double *sums = malloc((size_t)C * 2 * sizeof(double)); /* per channel Σ dy, Σ dy·x̂ */
    MS_FAIL_IF(!sums, MS_ENOMEM, "batchnorm_backward: out of memory");
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
    for (int64_t c = 0; c < C; c++) {
        double sd = 0, sdx = 0, mu = save_mean[c], rs = save_rstd[c];
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < HW; i++) {
                int64_t j = (b * C + c) * HW + i;
                sd += dy[j];
                sdx += dy[j] * ((x[j] - mu) * rs);
            }
        sums[2 * c] = sd;
        sums[2 * c + 1] = sdx;
        if (dbeta) dbeta[c] += (float)sd;
        if (dgamma) dgamma[c] += (float)sdx;
    }
    if (dx) {
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
        for (int64_t p = 0; p < B * C; p++) {
            int64_t c = p % C;
            double mu = save_mean[c], rs = save_rstd[c], g = (gamma ? gamma[c] : 1.0) * rs;
            double md = training ? sums[2 * c] / (double)n : 0, mdx = training ? sums[2 * c + 1] / (double)n : 0;
            const float *xp = x + p * HW, *dyp = dy + p * HW;
            float *dxp = dx + p * HW;
            for (int64_t i = 0; i < HW; i++) dxp[i] += (float)(g * (dyp[i] - md - (xp[i] - mu) * rs * mdx));
        }
    }
    free(sums);
    return MS_OK;
}
