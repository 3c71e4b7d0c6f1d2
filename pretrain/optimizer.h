/* pretrain/optimizer.h — AdamW over a parameter set, and the learning-rate schedules of pretrain and finetune.
 *
 * Moments exist for trainable tensors only (frozen ones cost no optimizer memory), in one allocation laid out like
 * the gradient block. No weight decay on tensors registered with no_decay (norms, biases, position tables).
 * The step counter is the number of optimizer steps taken (bias correction uses step + 1).
 */
#ifndef MS_OPTIMIZER_H
#define MS_OPTIMIZER_H

#include "pretrain/params.h"

typedef struct ms_optimizer {
    ms_params *ps;
    float beta1, beta2, eps, weight_decay;
    int64_t step;
    float *m, *v; /* device memory, ps->numel_trainable floats each */
} ms_optimizer;

/* Call after ms_params_alloc_grads(). */
ms_status ms_optimizer_init(ms_optimizer *o, ms_params *ps, float beta1, float beta2, float eps, float weight_decay);
void ms_optimizer_free(ms_optimizer *o);
/* One AdamW step with learning rate lr on every trainable tensor, except those whose name starts with
 * skip_prefix (NULL: none) — used for the decoder-only warm-up, which leaves the encoder untouched. */
ms_status ms_optimizer_step(ms_optimizer *o, float lr, const char *skip_prefix);

/* The moments of the trainable tensors as state-dict tensors "m.<name>" / "v.<name>" (run checkpoints), and back
 * (every one must be present with its shape). */
ms_status ms_optimizer_moments_to_sd(const ms_optimizer *o, ms_state_dict *sd);
ms_status ms_optimizer_moments_from_sd(ms_optimizer *o, const ms_state_dict *sd);

typedef enum { MS_SCHED_COSINE = 0, MS_SCHED_POLY = 1, MS_SCHED_CONSTANT = 2 } ms_schedule;
/* Linear warm-up from 0 over `warmup` steps (lr·(step+1)/warmup), then half-cycle cosine to min_lr, or
 * finetune-SAM's poly decay lr·(1 − (step−warmup)/(total−warmup))^0.9. */
float ms_lr_at(ms_schedule kind, int64_t step, int64_t warmup, int64_t total, float base_lr, float min_lr);

#endif
