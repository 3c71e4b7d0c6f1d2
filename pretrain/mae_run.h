/* pretrain/mae_run.h — an MAE pretraining run (docs/MAE.md; RUN/ layout, log keys and exit codes in docs/CLI.md and
 * docs/FORMATS.md): the loop `mrisam pretrain` drives, as a library object that a test can drive too.
 *
 *   open:  the MAE decoder and AdamW for the encoder and the decoder; the stores split by volume (train / held-out);
 *          the loader; the fixed validation slices; RUN/config.json, log.jsonl, tb/; with resume, everything from
 *          the newest complete checkpoint RUN/ckpt/step_%08d/; on a fresh run, the validation at step 0.
 *   step:  one optimizer step: accum_iter loader batches → MAE forward/backward (the losses averaged) → clip →
 *          AdamW (the encoder waits during the decoder-only warm-up) → one log.jsonl line and TensorBoard scalars;
 *          every val_every steps the held-out loss and a PNG panel, every save_every steps a checkpoint.
 *          A non-finite loss or gradient skips the step; max_bad of them in a row roll the run back to the newest
 *          checkpoint at half the learning rate.
 *   save / export / close.
 *
 * The encoder is the caller's: its tensors live in the caller's parameter block enc->ps under enc_prefix; the run
 * trains those and leaves every other tensor of the block frozen (a whole SAM rides along that way). Checkpoints
 * hold the encoder's tensors and the decoder's (model.safetensors), the AdamW moments (optim.safetensors),
 * state.json (step, counters, AdamW step counts, the loader state) and loader_state.bin (the loader's resume struct).
 * The encoder is SAM's ViT or MobileSAM's TinyViT (ms_mae_run_open_encoder; docs/MAE.md §TinyViT). TinyViT trains
 * every tensor under enc_prefix but its BatchNorm running statistics (buffers: updated by the training forwards,
 * as torch does), its classifier (norm_head, head) and its neck (neither runs in MAE); it runs at its own input
 * size only; its BatchNorms use batch statistics in the training forwards and the running ones in the validation
 * and in the decoder-only warm-up (a frozen encoder never updates them). model.safetensors holds the running
 * statistics (they are tensors of the block) and each BatchNorm's num_batches_tracked (int64, MobileSAM's key) after
 * its running_var; with several
 * ranks the running statistics are averaged over the ranks after every step, so every rank holds the same.
 * On the CPU a resumed run continues bit-exactly: loader order, masks and augmentation are pure functions of
 * (seed, epoch, position), and every reduction has a fixed order.
 *
 * The run prints nothing: open's plan and each step's info say what happened, the caller reports it. It reads no
 * environment and installs no signal handler; a caller that is asked to stop calls ms_mae_run_save and closes.
 */
#ifndef MS_MAE_RUN_H
#define MS_MAE_RUN_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "base/dist.h"
#include "checkpoints/state_dict.h"
#include "data/sampler.h"
#include "data/store_norm.h"
#include "pretrain/mae.h"
#include "pretrain/sam_encoder.h"

typedef struct ms_mae_run_config {
    /* data: ingested stores, sampled in proportion to their size; each split by volume with seed */
    int n_stores;
    const char *stores[MS_ORDER_MAX_SOURCES];
    int workers;              /* loader threads; 0 = the device's thread count */
    ms_norm_choice intensity; /* given: every store is read with it (--intensity; config.json, compared on resume) */
    /* per store, keys kept out of training and validation (NULL: none; ms_split_spec.exclude): `mrisam compare`
     * passes the fine-tunes' held-out slices. The caller's; they must stay the same on resume */
    const ms_selection *exclude[MS_ORDER_MAX_SOURCES];
    /* the run directory; resume: the RUN/ whose newest checkpoint to continue from (usually out), NULL = fresh.
     * A fresh out must be absent or empty; overwrite: an old run there is removed first (ms_run_dir_prepare) */
    const char *out, *resume;
    int overwrite;
    /* what config.json records and the export is named after (sam_mri_<model>.pth) */
    const char *model, *ckpt, *init;
    const char *enc_prefix;   /* the encoder's names in its block ("image_encoder.") */
    int input_size;           /* 0 = the encoder's own; else ms_sam_encoder_set_input_size (TinyViT: its own only) */
    int input_on_device;      /* the loader ships native uint16 slices + crop/flip (MS_LOAD_NATIVE_AUG) and the prep
                               * op (kernels/prep.h) resamples them on the device: the same inputs and losses bit
                               * for bit, far fewer bytes copied (docs/PERFORMANCE.md §GPU input path) */
    int recompute;            /* `--recompute`: per-block activation recomputation in SAM's ViT encoder
                               * (ms_sam_encoder_set_recompute; same gradients, less memory; TinyViT: ignored) */
    /* schedule */
    int batch, accum, epochs, warmup;   /* warmup < 0: 5% of the steps */
    int64_t max_steps;                  /* 0: epochs × steps per epoch */
    int freeze_epochs;                  /* decoder-only warm-up */
    double blr, lr, min_lr, weight_decay, clip; /* lr > 0 wins over blr × batch × accum / 256; clip 0 = off */
    uint64_t seed;
    /* MAE: masking, loss (kept in double as config.json records them) and the decoder's shape */
    double mask_ratio, fg_threshold;
    ms_mask_sampling sampling;
    int norm_pix, dec_dim, dec_depth, dec_heads;
    int save_every, keep_last, val_every, val_slices, max_bad;
    /* fault injection for tests (MRISAM_TEST_NAN in docs/CLI.md): the first nan_count losses from optimizer step
     * nan_at on are made non-finite */
    int64_t nan_at, nan_count;
    /* The export: fills sd with the full state dict to write (the encoder's tensors are current in its block).
     * NULL: the whole parameter block. */
    ms_status (*to_sd)(void *ctx, ms_state_dict *sd);
    void *to_sd_ctx;
    int panels;                /* write the validation panels RUN/val/step_%08d.png (default 1) */
    /* data parallel (docs/DISTRIBUTED.md): the job (NULL: one process). batch is per rank; the global batch is
     * ranks × batch × accum and blr scales with it. Rank 0 alone writes RUN/; every rank computes the same
     * validation. Gradients are summed in buckets of bucket_bytes (0: 25 MiB) that start during the backward. */
    ms_dist *dist;
    size_t bucket_bytes;
    int zero1; /* ZeRO-1: each rank keeps the AdamW moments of its part of the parameters (pretrain/optimizer.h) */
    /* CUDA graphs (pretrain/step_graph.h; opt-in, default 0): the MAE backward, whose shapes stratified masking
     * fixes, is captured once and replayed. Ignored on the CPU, with several ranks and with TinyViT. */
    int cuda_graphs;
    /* the caller's stop request (a signal handler's flag; NULL: none): the ranks agree on it at every step, so all
     * of them stop after the same step (ms_mae_step_info.stop) */
    const volatile sig_atomic_t *stop;
} ms_mae_run_config;

/* `mrisam pretrain`'s defaults: batch 8, accum 1, 100 epochs, blr 1.5e-4, weight decay 0.05, mask 0.75 stratified,
 * norm-pix, decoder 512 × 8 blocks × 16 heads, save every 1000 (keep 3), validate every 500 on 64 slices, rollback
 * after 5 bad steps, seed 0, enc_prefix "image_encoder.". Stores, out and model are the caller's to fill. */
void ms_mae_run_config_default(ms_mae_run_config *c);

/* What open decided, for the caller to report. */
typedef struct ms_mae_run_plan {
    int input_size;
    int64_t total, steps_per_epoch, warmup, freeze_steps;
    double lr;                  /* the base learning rate */
    int n_val;                  /* validation slices (0: no validation) */
    uint32_t single_volume;     /* bit i: store i has one volume, validated on a block of slices held out with a gap */
    const char *resumed_from;   /* the checkpoint directory resumed from, or NULL */
    int64_t start_step;
    int world, global_batch;    /* ranks; samples per optimizer step over all ranks (batch × accum × world) */
    int validated;              /* a fresh run: the validation at step 0 ran */
    double val_loss;
} ms_mae_run_plan;

/* What one ms_mae_run_step did. Strings stay valid until the next call on the run. */
typedef struct ms_mae_step_info {
    int64_t step, total;        /* optimizer steps done / planned */
    int done;                   /* step == total: export next */
    int updated;                /* 0: the step was skipped */
    double loss, lr, grad_norm, img_per_s, eta_s, elapsed_s;
    int64_t skipped;            /* skipped steps so far */
    int64_t bad_step, bad_in_row; /* updated == 0: the step skipped, and how many in a row (before any rollback) */
    const char *rolled_back_to; /* a rollback happened: the checkpoint reloaded, at lr_scale */
    double lr_scale;
    int validated;              /* the held-out loss was computed at this step */
    double val_loss;
    int saved;                  /* a checkpoint of this step was written */
    int stop;                   /* some rank's stop flag was set: every rank stops after this step */
    int64_t buckets_early;      /* gradient buckets whose reduction started during the backward, so far */
    double comm_wait_s;         /* seconds waited for the gradient reductions after the backward, so far */
} ms_mae_step_info;

typedef struct ms_mae_run ms_mae_run;

/* The encoder a run trains: exactly one of SAM's ViT (vit) and MobileSAM's TinyViT (tv). */
typedef struct ms_mae_encoder {
    ms_sam_encoder *vit;
    ms_tinyvit *tv;
} ms_mae_encoder;

/* enc: the caller's encoder with its block allocated and initialised (unreserved, or reserved by an earlier run);
 * dev: the device it lives on. cfg's strings must outlive the run. */
ms_status ms_mae_run_open_encoder(const ms_mae_run_config *cfg, ms_device *dev, const ms_mae_encoder *enc,
                                  ms_mae_run **out);
/* The same for SAM's ViT. */
ms_status ms_mae_run_open(const ms_mae_run_config *cfg, ms_device *dev, ms_sam_encoder *enc, ms_mae_run **out);
const ms_mae_run_plan *ms_mae_run_plan_get(const ms_mae_run *r);
/* One optimizer step (or one skipped one); error when the run is already done. */
ms_status ms_mae_run_step(ms_mae_run *r, ms_mae_step_info *info);
/* The held-out reconstruction loss at the current step (log.jsonl "val" line, TensorBoard, the PNG panel);
 * *loss = -1 when the run has no validation slices. */
ms_status ms_mae_run_validate(ms_mae_run *r, double *loss);
/* A checkpoint of the current step (nothing to do when the newest one is of this step), pruned to keep_last. */
ms_status ms_mae_run_save(ms_mae_run *r);
/* RUN/sam_mri_<model>.pth and .safetensors, both from cfg.to_sd. */
ms_status ms_mae_run_export(ms_mae_run *r);
/* What a checkpoint holds, appended to the two state dicts (either may be NULL): model = the encoder's tensors
 * (block order) then the decoder's; optim = the AdamW moments of the encoder, then the decoder's. */
ms_status ms_mae_run_state_to_sd(const ms_mae_run *r, ms_state_dict *model, ms_state_dict *optim);
/* Frees everything the run made (the encoder's activation arena included); the encoder's block stays. */
void ms_mae_run_close(ms_mae_run *r);

#endif
