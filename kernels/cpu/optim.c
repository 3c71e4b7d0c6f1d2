/* kernels/cpu/optim.c — AdamW step, sum of squares and in-place scaling (contract: kernels/optim.h), plus the
 * backend-generic ms_clip_grad_norm, built only from the dispatched ms_sumsq / ms_scale_inplace so the same
 * code clips CUDA gradients.
 * AdamW follows torch.optim.AdamW (_single_tensor_adamw) step by step in float; the bias corrections are
 * computed in double, as torch does in Python. sumsq sums squares in double over chunks fixed by n and adds the
 * chunk partials in order: the total does not depend on the thread count.
 */
#include "optim.h"

#include <math.h>

#include "cpu/cpu_par.h"

ms_status ms_adamw_step_cpu(ms_device *dev, float *p, const float *g, float *m, float *v, int64_t n, float lr,
                            float beta1, float beta2, float eps, float wd, int64_t step)
{
    MS_FAIL_IF(n < 0, MS_EINVAL, "adamw_step: negative size %lld", (long long)n);
    MS_FAIL_IF(step < 1, MS_EINVAL, "adamw_step: step %lld (steps count from 1)", (long long)step);
    MS_FAIL_IF(!(beta1 >= 0.f && beta1 < 1.f && beta2 >= 0.f && beta2 < 1.f), MS_EINVAL,
               "adamw_step: betas (%g, %g) outside [0, 1)", (double)beta1, (double)beta2);
    double bc1 = 1.0 - pow((double)beta1, (double)step), bc2 = 1.0 - pow((double)beta2, (double)step);
    float decay = (float)(1.0 - (double)lr * (double)wd);
    float step_size = (float)((double)lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float omb1 = (float)(1.0 - (double)beta1), omb2 = (float)(1.0 - (double)beta2);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = beta1 * m[i] + omb1 * gi;
        float vi = beta2 * v[i] + omb2 * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
    return MS_OK;
}

ms_status ms_sumsq_cpu(ms_device *dev, double *out, const float *x, int64_t n)
{
    MS_FAIL_IF(n < 0, MS_EINVAL, "sumsq: negative size %lld", (long long)n);
    int64_t nch = ms_cpu_nchunks(n, 8192);
    double part[MS_CPU_MAX_CHUNKS];
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t ch = 0; ch < nch; ch++) {
        int64_t i0, i1;
        ms_cpu_chunk(n, nch, ch, &i0, &i1);
        double s = 0;
        for (int64_t i = i0; i < i1; i++) s += (double)x[i] * x[i];
        part[ch] = s;
    }
    double s = 0;
    for (int64_t ch = 0; ch < nch; ch++) s += part[ch];
    *out += s;
    return MS_OK;
}

ms_status ms_scale_inplace_cpu(ms_device *dev, float *x, float alpha, int64_t n)
{
    MS_FAIL_IF(n < 0, MS_EINVAL, "scale_inplace: negative size %lld", (long long)n);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) x[i] *= alpha;
    return MS_OK;
}

/* A NULL gradient (frozen tensor) is skipped. A non-finite norm is returned without scaling, so the caller can
 * see it and skip the step (torch would scale every gradient to NaN). */
ms_status ms_clip_grad_norm(ms_device *dev, float *const *grads, const int64_t *sizes, int n_tensors, float max_norm,
                            float *norm_out)
{
    MS_FAIL_IF(n_tensors < 0 || (n_tensors > 0 && (!grads || !sizes)), MS_EINVAL, "clip_grad_norm: bad tensor list");
    double total = 0;
    for (int i = 0; i < n_tensors; i++)
        if (grads[i] && sizes[i] > 0) MS_TRY(ms_sumsq(dev, &total, grads[i], sizes[i]));
    double norm = sqrt(total);
    if (norm_out) *norm_out = (float)norm;
    if (max_norm > 0 && isfinite(norm) && norm > max_norm) {
        float coef = (float)((double)max_norm / (norm + 1e-6));
        for (int i = 0; i < n_tensors; i++)
            if (grads[i] && sizes[i] > 0) MS_TRY(ms_scale_inplace(dev, grads[i], coef, sizes[i]));
    }
    return MS_OK;
}
