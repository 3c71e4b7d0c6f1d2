/* finetune/ft_run.h — a fine-tuning run of SAM on labelled stores, driven step by step: finetune-SAM's recipe
 * (Gu et al., arXiv:2404.09957, and mazurowski-lab/finetune-SAM's train loop: Dice + CE, AdamW, linear warm-up
 * then poly decay, validation every few epochs, early stopping; docs/FINETUNE.md). `mrisam finetune` is a loop over
 * ms_ft_run_step; tests drive the same run from C.
 *
 * Step: the task of this step (seeded schedule) → its loader's batch (foreground training slices only) → cached
 * embeddings or the image encoder → the task's prompt encoder + mask decoder → Dice + CE on the low-res logits →
 * backward → AdamW at the step's learning rate. Every val_every epochs (and at the last step): foreground Dice per
 * class on the held-out slices; a better score goes to RUN/best/ (written aside, then swapped in). After
 * `patience` epochs without a better score the run stops early. Checkpoints RUN/ckpt/step_%08d/ hold the model,
 * the AdamW moments, the loader states, the counters and config.json; a run opened with resume continues from the
 * newest one bit-exactly on the CPU (every random choice is a pure function of (seed, step, sample)). With the
 * embedding cache, a resume first rebuilds the cache as the uninterrupted run had it: the encoder's last bits depend
 * on how many slices it encodes at once, so the slices that missed together are encoded together again (the
 * batches before the checkpoint are read once more, each slice encoded once).
 *
 * Data parallel (cfg.dist, W ranks under mpirun / srun): rank r reads positions r, r + W, ... of each global batch
 * of W × batch (data/sampler.h), the loss gradient of its n_r samples is weighted n_r / N (N: the step's samples
 * over all ranks, agreed before the backward) and the trainable gradients are summed over ranks, so W ranks × B
 * take the step one process takes with W × B. The ranks then agree on the logged losses (weighted means), a
 * non-finite step (skipped everywhere) and the stop flag. Every rank computes the same validation and takes rank
 * 0's numbers, so best/ and early stopping are decided alike; rank 0 alone writes RUN/, a checkpoint's DONE after a
 * barrier. The embedding cache is per rank: each caches the slices it reads and the validation slices.
 *
 * RUN/ layout (docs/CLI.md): config.json, shots.json, log.jsonl, tb/, ckpt/step_*, val/step_*.png, best/.
 * The run prints nothing (ms_ft_run_get_info and each step's info say what happened; the caller reports it) and
 * installs no signal handler: a caller asked to stop calls ms_ft_run_save and closes the run.
 */
#ifndef MS_FT_RUN_H
#define MS_FT_RUN_H

#include <signal.h>
#include <stdint.h>

#include "base/device.h"
#include "base/dist.h"
#include "base/status.h"
#include "data/store_norm.h"
#include "finetune/ft_model.h"
#include "finetune/ft_train.h"
#include "pretrain/optimizer.h"

typedef struct ms_ft_run_config {
    /* tasks: one labelled store each; a store named by several tasks is opened once */
    int n_tasks;
    const char *store[MS_FT_MAX_TASKS];  /* store paths */
    const char *task[MS_FT_MAX_TASKS];   /* task names (ms_ft_task_default_name gives the usual one) */
    /* model */
    const char *ckpt;          /* SAM-layout weights to start from (.pth / .safetensors); NULL: random init */
    const char *model;         /* vit_b, vit_l, vit_h, vit_test: the model of a random init */
    int init_random;           /* 1 when the caller asked for a random init (config.json's "init") */
    ms_ft_method method;
    ms_ft_scope scope;
    ms_prompt_mode prompt;
    int lora_rank;
    uint64_t lora_blocks, adapter_blocks; /* encoder blocks (bit i); 0 = every block */
    int compat_finetune_sam;
    int input_size;            /* 0: the model's own */
    int recompute;             /* `--recompute`: per-block activation recomputation in SAM's ViT encoder when it trains
                                * (ms_sam_encoder_set_recompute; same gradients, less memory; TinyViT: ignored) */
    int resize, norm;          /* MS_RESIZE_*, MS_NORM_* */
    /* data */
    const char *split;         /* a split / shots file to reuse; NULL: split by seed */
    double val_fraction;
    int shots, shot_unit;      /* few-shot: shots > 0 training slices (MS_SHOT_SLICE) or volumes (MS_SHOT_VOLUME) */
    int augment;               /* segmentation augmentation of training batches */
    int cache_embeddings;      /* compute each slice's embedding once (frozen encoder, no augmentation) */
    int task_weights_uniform;  /* every task trains equally often (else in proportion to its training slices) */
    int workers;               /* loader threads per task; 0: the device's thread count */
    ms_norm_choice intensity;  /* given: every store is read with it (--intensity; meta.json's preprocess) */
    /* optimisation */
    int epochs;
    int64_t max_steps;         /* > 0 wins over epochs */
    int batch;
    double lr, min_lr, weight_decay, clip_grad;
    int warmup;                /* linear warm-up steps; -1 (default): min(200, 10 % of the run's steps) */
    ms_schedule schedule;      /* MS_SCHED_POLY or MS_SCHED_COSINE */
    int64_t seed;
    /* validation and checkpoints */
    int val_every;             /* epochs */
    int val_slices;            /* validate on the first N held-out slices per task; 0 = all */
    int patience;              /* epochs without a better validation score before stopping */
    int save_every, keep_last; /* steps; checkpoints kept */
    const char *out;           /* RUN/ */
    int resume;                /* continue RUN/ from its newest complete checkpoint */
    int overwrite;             /* a fresh run over an old one in RUN/ (removed first); else RUN/ must be new or empty */
    int panels;                /* write the validation panels RUN/val/step_%08d.png (default 1) */
    /* data parallel (docs/FINETUNE.md): the job (NULL: one process, everything as before). batch is per rank; the
     * global batch is ranks × batch, and lr is not scaled with it. Rank 0 alone writes RUN/; every rank runs the
     * same validation. The trainable gradients are summed in buckets of bucket_bytes (0: 25 MiB). */
    ms_dist *dist;
    size_t bucket_bytes;
    int zero1; /* ZeRO-1: each rank keeps the AdamW moments of its part of the parameters (pretrain/optimizer.h) */
    /* the caller's stop request (a signal handler's flag; NULL: none): read after every step, agreed by the ranks,
     * so all of them stop after the same step (ms_ft_step_info.stop) */
    const volatile sig_atomic_t *stop;
} ms_ft_run_config;

/* The defaults of docs/CLI.md: full / decoder, no prompt, 200 epochs, batch 4, lr 1e-3 poly, warm-up
 * min(200, 10 % of the steps), weight decay 0.1, validation every 2 epochs, patience 20, LoRA rank 4, save every
 * 1000 steps, keep 2, val_fraction 0.2, seed 0. Stores, model and out are left NULL. */
void ms_ft_run_config_default(ms_ft_run_config *c);
/* MS_EINVAL with a one-line reason when the options cannot make a run (ranges, the cache with a training encoder
 * or augmentation, missing model or output). */
ms_status ms_ft_run_config_check(const ms_ft_run_config *c);

typedef struct ms_ft_run ms_ft_run;

/* What a run is, for the caller's messages (filled by ms_ft_run_get_info). */
typedef struct ms_ft_run_task_info {
    const char *name, *store;
    int num_cls;
    uint64_t n_train, n_empty, n_val; /* training slices with foreground, empty ones left out, validation slices */
    int single_volume;                /* one labelled volume: train and val are slice blocks */
} ms_ft_run_task_info;

typedef struct ms_ft_run_info {
    const char *model;                /* the variant built */
    int input_size, n_tasks;
    ms_ft_run_task_info task[MS_FT_MAX_TASKS];
    int64_t total, steps_per_epoch, warmup, step; /* warmup as resolved */
    int warmup_exceeds_run;           /* the warm-up lasts the whole run: the learning rate never reaches lr */
    int64_t trainable;                /* trainable parameters, in n_trainable_tensors tensors */
    int n_trainable_tensors;
    int has_val;                      /* some task has validation slices */
    int64_t resumed_step;             /* the checkpoint's step when resumed, else -1 */
    const char *resumed_from;         /* its directory, or NULL */
    double best_score, best_epoch;    /* NaN / 0 until a validation scores */
    int64_t best_step;                /* -1 until then */
    int stopped_early;
    int64_t cache_count;              /* embedding cache: slices held, hits (0 without the cache); this rank's */
    uint64_t cache_hits;
    int world, global_batch;          /* ranks; slices per step over all ranks (batch × world) */
} ms_ft_run_info;

/* Opens a run: stores and class maps, the model (from cfg->ckpt or a random init), splits and shots, loaders,
 * optimizer, RUN/ (config.json and shots.json on a fresh run), and with cfg->resume the newest checkpoint (the
 * options must give the same config.json). dev and cfg's strings must outlive the run. */
ms_status ms_ft_run_open(const ms_ft_run_config *cfg, ms_device *dev, ms_ft_run **out);
void ms_ft_run_close(ms_ft_run *r);
void ms_ft_run_get_info(const ms_ft_run *r, ms_ft_run_info *info);

/* One validation pass. */
typedef struct ms_ft_val {
    double score;                           /* mean over tasks of the mean foreground Dice; NaN: nothing scored */
    double loss;                            /* mean Dice + CE per target; NaN without targets */
    ms_ft_dice_acc dice[MS_FT_MAX_TASKS];   /* per task and class */
} ms_ft_val;

/* What one ms_ft_run_step did, for progress lines. */
typedef struct ms_ft_step_info {
    int stepped;                 /* 0: nothing left to do (the run had already finished) */
    int64_t step, total;         /* steps done after this one, of total */
    double epoch;
    int task;                    /* the task that trained */
    int n, skipped;              /* samples used (over all ranks); skipped in total so far is in the log */
    double loss, lr, grad_norm, img_per_s;
    double eta_s;                /* estimated seconds left at this step's rate */
    int validated;               /* a validation ran after this step: */
    ms_ft_val val;
    int best;                    /* its score is the best so far (RUN/best/ updated) */
    int stopped_early;           /* this step stopped the run (patience) */
    double epochs_since_best;
    int done;                    /* the run is complete: best/ final, nothing left to step */
    int stop;                    /* the stop flag was set (on some rank): every rank stops after this step */
} ms_ft_step_info;

/* One optimizer step with its log line, then validation, best/, early stopping and the periodic checkpoint as
 * due; the step that completes the run also writes the final best/ when no validation could score. */
ms_status ms_ft_run_step(ms_ft_run *r, ms_ft_step_info *info);
/* Validates the current model on every task's held-out slices and writes RUN/val/step_N.png (task 0's first
 * slices: image | ground truth | prediction). Changes no run state. With several ranks, every rank calls it (each
 * validates; rank 0's numbers are broadcast) and the ranks step and save together, as they do all three. */
ms_status ms_ft_run_validate(ms_ft_run *r, ms_ft_val *v);
/* Writes the checkpoint of the current step (a no-op when it is already written); several ranks: every rank calls
 * it, rank 0 writes. */
ms_status ms_ft_run_save(ms_ft_run *r);

/* The model and optimizer (read-only: for tests and reports). */
const ms_ft_model *ms_ft_run_model(const ms_ft_run *r);
const ms_optimizer *ms_ft_run_optimizer(const ms_ft_run *r);

#endif
