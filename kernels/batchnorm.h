/* kernels/batchnorm.h — BatchNorm2d over NCHW, as torch.nn.BatchNorm2d (TinyViT's Conv2d_BN units).
 *   x, y (B,C,HW); gamma, beta (C); save_mean, save_rstd (C); run_mean, run_var (C).
 * Training (training = 1): per channel the mean and the biased variance over the n = B·HW values, y = (x − mean)·
 *   rstd·γ + β with rstd = 1/√(var + eps); mean and rstd are saved (required) for the backward. When run_mean and
 *   run_var are given they are updated as torch does: run ← (1 − momentum)·run + momentum·stat, with the
 *   UNBIASED variance var·n/(n − 1). Training needs n > 1 (torch refuses it too).
 * Inference (training = 0): mean = run_mean, rstd = 1/√(run_var + eps) (both required), nothing updated; save_mean
 *   and save_rstd receive them when given, so one backward serves both modes.
 * Backward accumulates dx, dgamma, dbeta (NULL skips). Training: the batch statistics depend on x, so
 *   dx = γ·rstd·(dy − mean(dy) − x̂·mean(dy·x̂)); inference: dx = γ·rstd·dy. Both: dγ = Σ dy·x̂, dβ = Σ dy, with
 *   x̂ = (x − mean)·rstd from the saved statistics.
 * Tested by the "batchnorm" rows of tests/kernels/op_cases.c (test_ops_a: CPU vs reference, the running update
 *   against its formula; test_ops_cuda: CUDA vs CPU).
 */
#ifndef MS_BATCHNORM_H
#define MS_BATCHNORM_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_batchnorm_forward, float *y, float *save_mean, float *save_rstd, const float *x, const float *gamma,
              const float *beta, float *run_mean, float *run_var, int64_t B, int64_t C, int64_t HW, float eps,
              float momentum, int training)
MS_DECLARE_OP(ms_batchnorm_backward, float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
              const float *gamma, const float *save_mean, const float *save_rstd, int64_t B, int64_t C, int64_t HW,
              int training)

/* The argument checks both backends make (one copy): shapes, and the statistics each mode needs. */
static inline ms_status ms_batchnorm_check(const char *who, int64_t B, int64_t C, int64_t HW, const float *x,
                                           const float *mean, const float *rstd)
{
    MS_FAIL_IF(B < 0 || C <= 0 || HW < 0, MS_EINVAL, "%s: bad shape B=%lld C=%lld HW=%lld", who, (long long)B,
               (long long)C, (long long)HW);
    MS_FAIL_IF(B * HW > 0 && (!x || !mean || !rstd), MS_EINVAL, "%s: NULL input or statistics", who);
    return MS_OK;
}
static inline ms_status ms_batchnorm_forward_check(const float *x, const float *save_mean, const float *save_rstd,
                                                   const float *run_mean, const float *run_var, int64_t B,
                                                   int64_t C, int64_t HW, int training)
{
    if (!training) return ms_batchnorm_check("batchnorm_forward", B, C, HW, x, run_mean, run_var);
    MS_TRY(ms_batchnorm_check("batchnorm_forward", B, C, HW, x, save_mean, save_rstd));
    MS_FAIL_IF(B * HW == 1, MS_EINVAL, "batchnorm_forward: training needs more than 1 value per channel");
    MS_FAIL_IF((run_mean == NULL) != (run_var == NULL), MS_EINVAL, "batchnorm_forward: give both running stats");
    return MS_OK;
}

static inline ms_status ms_batchnorm_forward(ms_device *dev, float *y, float *save_mean, float *save_rstd,
                                             const float *x, const float *gamma, const float *beta, float *run_mean,
                                             float *run_var, int64_t B, int64_t C, int64_t HW, float eps,
                                             float momentum, int training)
{
    return MS_DISPATCH(dev, ms_batchnorm_forward, y, save_mean, save_rstd, x, gamma, beta, run_mean, run_var, B, C,
                       HW, eps, momentum, training);
}
static inline ms_status ms_batchnorm_backward(ms_device *dev, float *dx, float *dgamma, float *dbeta, const float *dy,
                                              const float *x, const float *gamma, const float *save_mean,
                                              const float *save_rstd, int64_t B, int64_t C, int64_t HW, int training)
{
    return MS_DISPATCH(dev, ms_batchnorm_backward, dx, dgamma, dbeta, dy, x, gamma, save_mean, save_rstd, B, C, HW,
                       training);
}

#endif
