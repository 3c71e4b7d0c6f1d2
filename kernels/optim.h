/* kernels/optim.h — AdamW (torch semantics, decoupled weight decay) and gradient-norm clipping.
 *   adamw_step on one tensor: p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
 *     p ← p − lr/(1−β1^t) · m / (√v/√(1−β2^t) + eps). step t counts from 1. The caller passes wd = 0 for the
 *     no-decay tensors (norms, biases, position tables): that is the per-tensor mask.
 *   sumsq: *out (host double) += Σ x² over n elements, summed in double in a fixed order (deterministic).
 *   ms_clip_grad_norm: total norm over n tensors; when max_norm > 0 and the norm exceeds it, every gradient is
 *     scaled by max_norm/(norm + 1e-6) (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping;
 *     a non-finite norm is returned without scaling anything, so the caller can skip the step.
 *   adamw_multi: the same step on every tensor of a table, in one call — one CUDA launch whose blocks map to
 *     (tensor, chunk of MS_ADAMW_CHUNK elements), instead of one launch per tensor. The table (ms_adamw_plan:
 *     p, g, m, v, n, wd per tensor) is built once by ms_adamw_plan_init and, on CUDA, uploaded to device memory
 *     then; a step passes only lr, the betas, eps and step by value, so it uploads nothing and its one launch has
 *     fixed arguments apart from those scalars (what a CUDA graph needs). Rebuild the plan when any pointer or
 *     size in it changes. The CPU runs the chunks with OpenMP. Every element gets exactly ms_adamw_step's float
 *     expressions with the same per-step constants, so the results equal one ms_adamw_step per tensor bit for bit
 *     on the CPU (and on CUDA against its own ms_adamw_step).
 * Tested by tests/kernels/test_ops_a.c (test_adamw against torch's formula, test_adamw_multi: bit-identical to
 *   per-tensor steps and against the formula, test_sumsq_clip) and test_ops_cuda.c (t_optim: CUDA vs CPU); not
 *   table rows (state over steps).
 */
#ifndef MS_OPTIM_H
#define MS_OPTIM_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_adamw_step, float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1,
              float beta2, float eps, float wd, int64_t step)
/* One tensor (or the part of one a ZeRO-1 shard updates) of an adamw_multi table. */
typedef struct ms_adamw_tensor {
    float *p;
    const float *g;
    float *m, *v;
    int64_t n;
    float wd; /* 0 for the no-decay tensors */
} ms_adamw_tensor;

/* Elements per chunk: a CUDA block's share (16 per thread at 256 threads), the CPU's unit of work. */
#define MS_ADAMW_CHUNK 4096

/* The table of an adamw_multi step (device memory of ms_adamw_plan_init's device). */
typedef struct ms_adamw_plan {
    ms_device *dev;
    int n;                 /* tensors */
    ms_adamw_tensor *t;    /* host copy, n entries */
    int64_t *chunk0;       /* host, n + 1: first chunk of each tensor; chunk0[n] = total chunks */
    void *dev_table;       /* CUDA: t then chunk0 in one device allocation (NULL on the CPU) */
    int64_t numel;
} ms_adamw_plan;

MS_DECLARE_OP(ms_adamw_multi, const ms_adamw_plan *pl, float lr, float beta1, float beta2, float eps, int64_t step)
MS_DECLARE_OP(ms_sumsq, double *out, const float *x, int64_t n)
MS_DECLARE_OP(ms_scale_inplace, float *x, float alpha, int64_t n)

static inline ms_status ms_adamw_step(ms_device *dev, float *p, const float *g, float *m, float *v, int64_t n,
                                      float lr, float beta1, float beta2, float eps, float wd, int64_t step)
{ return MS_DISPATCH(dev, ms_adamw_step, p, g, m, v, n, lr, beta1, beta2, eps, wd, step); }
static inline ms_status ms_adamw_multi(ms_device *dev, const ms_adamw_plan *pl, float lr, float beta1, float beta2,
                                       float eps, int64_t step)
{ return MS_DISPATCH(dev, ms_adamw_multi, pl, lr, beta1, beta2, eps, step); }
static inline ms_status ms_sumsq(ms_device *dev, double *out, const float *x, int64_t n)
{ return MS_DISPATCH(dev, ms_sumsq, out, x, n); }
static inline ms_status ms_scale_inplace(ms_device *dev, float *x, float alpha, int64_t n)
{ return MS_DISPATCH(dev, ms_scale_inplace, x, alpha, n); }

/* Backend-generic (built from the ops above); in kernels/cpu/optim.c. */
/* Builds the table of n tensors (copied; empty ones are fine) for ms_adamw_multi on dev; ms_adamw_plan_free
 * releases it (and is a no-op on a zeroed or freed plan). */
ms_status ms_adamw_plan_init(ms_adamw_plan *pl, ms_device *dev, const ms_adamw_tensor *t, int n);
void ms_adamw_plan_free(ms_adamw_plan *pl);
ms_status ms_clip_grad_norm(ms_device *dev, float *const *grads, const int64_t *sizes, int n_tensors,
                            float max_norm, float *norm_out);

#endif
