/* kernels/optim.h — AdamW (torch semantics, decoupled weight decay) and gradient-norm clipping.
 *   adamw_step on one tensor: p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
 *     p ← p − lr/(1−β1^t) · m / (√v/√(1−β2^t) + eps). step t counts from 1. The caller passes wd = 0 for the
 *     no-decay tensors (norms, biases, position tables): that is the per-tensor mask.
 *   sumsq: *out (host double) += Σ x² over n elements, summed in double in a fixed order (deterministic).
 *   ms_clip_grad_norm: total norm over n tensors; when max_norm > 0 and the norm exceeds it, every gradient is
 *     scaled by max_norm/(norm + 1e-6) (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping;
 *     a non-finite norm is returned without scaling anything, so the caller can skip the step.
 * Tested by tests/kernels/test_ops_a.c (test_adamw against torch's formula, test_sumsq_clip) and test_ops_cuda.c
 *   (t_optim: CUDA vs CPU); not table rows (state over steps).
 */
#ifndef MS_OPTIM_H
#define MS_OPTIM_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_adamw_step, float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1,
              float beta2, float eps, float wd, int64_t step)
MS_DECLARE_OP(ms_sumsq, double *out, const float *x, int64_t n)
MS_DECLARE_OP(ms_scale_inplace, float *x, float alpha, int64_t n)

static inline ms_status ms_adamw_step(ms_device *dev, float *p, const float *g, float *m, float *v, int64_t n,
                                      float lr, float beta1, float beta2, float eps, float wd, int64_t step)
{ return MS_DISPATCH(dev, ms_adamw_step, p, g, m, v, n, lr, beta1, beta2, eps, wd, step); }
static inline ms_status ms_sumsq(ms_device *dev, double *out, const float *x, int64_t n)
{ return MS_DISPATCH(dev, ms_sumsq, out, x, n); }
static inline ms_status ms_scale_inplace(ms_device *dev, float *x, float alpha, int64_t n)
{ return MS_DISPATCH(dev, ms_scale_inplace, x, alpha, n); }

/* Backend-generic (built from the ops above); in kernels/cpu/optim.c. */
ms_status ms_clip_grad_norm(ms_device *dev, float *const *grads, const int64_t *sizes, int n_tensors,
                            float max_norm, float *norm_out);

#endif
