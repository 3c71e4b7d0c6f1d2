/* pretrain/optimizer.h — AdamW over a parameter set, and the learning-rate schedules of pretrain and finetune.
 *
 * Moments exist for trainable tensors only (frozen ones cost no optimizer memory), in one allocation laid out like
 * the gradient block. No weight decay on tensors registered with no_decay (norms, biases, position tables).
 * The step counter is the number of optimizer steps taken (bias correction uses step + 1).
 * ZeRO-1 (ms_optimizer_shard): each rank keeps the moments of its contiguous part [lo, hi) of the trainable
 * (gradient-array) range only and updates those parameters with the same AdamW kernel; the updated parameters are
 * then gathered so every rank holds them all again. The gradients must be summed over ranks first (grad_sync.h).
 */
#ifndef MS_OPTIMIZER_H
#define MS_OPTIMIZER_H

#include "base/dist.h"
#include "optim.h"
#include "pretrain/params.h"

typedef struct ms_optimizer {
    ms_params *ps;
    float beta1, beta2, eps, weight_decay;
    int64_t step;
    float *m, *v;  /* device memory, hi - lo floats each */
    int64_t lo, hi; /* the part of the gradient array this optimizer keeps: [0, numel_trainable) or a ZeRO-1 shard */
    ms_dist *dist;  /* ZeRO-1: the ranks sharing the state (NULL: whole) */
    /* the step's table of (parameter, gradient, moments) spans for ms_adamw_multi (kernels/optim.h), built at the
     * first step and again only when what it was built from changes (skip_prefix, the blocks, the shard) */
    ms_adamw_plan plan;
    char *plan_skip;                    /* its skip_prefix (NULL: none) */
    const float *plan_data, *plan_grad; /* its parameter and gradient blocks */
} ms_optimizer;

/* Call after ms_params_alloc_grads(). */
ms_status ms_optimizer_init(ms_optimizer *o, ms_params *ps, float beta1, float beta2, float eps, float weight_decay);
void ms_optimizer_free(ms_optimizer *o);
/* ZeRO-1: from now on keep and update only this rank's part (ms_dist_range over numel_trainable); the moments
 * restart at zero. d NULL or of one rank: nothing changes. */
ms_status ms_optimizer_shard(ms_optimizer *o, ms_dist *d);
/* One AdamW step with learning rate lr on every trainable tensor, except those whose name starts with
 * skip_prefix (NULL: none) — used for the decoder-only warm-up, which leaves the encoder untouched. One
 * ms_adamw_multi call (one launch on CUDA) over the table in o->plan, rebuilt only when skip_prefix or the
 * parameter blocks change; the results equal one ms_adamw_step per tensor bit for bit. Sharded: the
 * own part, then the parameters gathered from every rank through the gradient array (its contents are lost: the
 * caller zeroes it after the step anyway). */
ms_status ms_optimizer_step(ms_optimizer *o, float lr, const char *skip_prefix);

/* The moments of the trainable tensors as state-dict tensors "m.<name>" / "v.<name>" (run checkpoints; a whole
 * optimizer only), and back (every one must be present with its shape; a sharded optimizer takes its part). */
ms_status ms_optimizer_moments_to_sd(const ms_optimizer *o, ms_state_dict *sd);
ms_status ms_optimizer_moments_from_sd(ms_optimizer *o, const ms_state_dict *sd);

/* A run checkpoint's AdamW state for n optimizers (tags name each one's flat tensors in shard files): whole in
 * DIR/optim.safetensors ("m.<name>", "v.<name>"), or, when they are sharded, one DIR/optim.rankRRR-of-WWW.safetensors
 * per rank. Save: a whole state is rank 0's to write; sharded, every rank writes its own file. Load: zero_world 0
 * reads the whole file, else the zero_world shard files (state.json records which), each once: laid end to end they
 * are the whole moments, and each optimizer keeps its own range, so a resume may change the number of ranks and
 * whether the state is sharded (at most 8 optimizers). */
ms_status ms_optimizers_save(ms_optimizer *const *o, const char *const *tags, int n, const char *dir);
ms_status ms_optimizers_load(ms_optimizer *const *o, const char *const *tags, int n, const char *dir, int zero_world);

typedef enum { MS_SCHED_COSINE = 0, MS_SCHED_POLY = 1, MS_SCHED_CONSTANT = 2 } ms_schedule;
/* Linear warm-up from 0 over `warmup` steps (lr·(step+1)/warmup), then half-cycle cosine to min_lr, or
 * finetune-SAM's poly decay lr·(1 − (step−warmup)/(total−warmup))^0.9. */
float ms_lr_at(ms_schedule kind, int64_t step, int64_t warmup, int64_t total, float base_lr, float min_lr);

#endif
