/* tools/cmd_pretrain.c — `mrisam pretrain`: MAE self-supervised pretraining of SAM's image encoder (SAM's ViT or
 * MobileSAM's TinyViT, vit_t) on MRI stores (docs/MAE.md; flags, RUN/ layout, log keys, signals and exit codes as docs/CLI.md says). The run itself is
 * pretrain/mae_run.h; this file parses the options, builds the SAM whose encoder trains (finetune/sam.h), prints
 * progress and turns SIGINT/SIGTERM into a checkpoint and exit 75. At the end RUN/sam_mri_<model>.pth and
 * .safetensors hold the full SAM state dict with the encoder replaced (prompt encoder and mask decoder copied).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "checkpoints/rundir.h"
#include "cli.h"
#include "finetune/sam.h"
#include "image_io.h"
#include "pretrain/mae_run.h"

/* What the tool itself reads; everything else goes straight into the run's configuration. */
typedef struct opts {
    ms_strlist stores;
    const char *sam_ckpt, *model, *mask_sampling, *device, *precision, *intensity;
    double p_lo, p_hi, dist_timeout, bucket_mb;
    int threads;
    int64_t seed;
} opts;

static ms_status sam_to_sd(void *ctx, ms_state_dict *sd) { return ms_sam_to_sd(ctx, sd); }

static void print_val(int64_t step, double loss, int n_val)
{
    printf("%sval step %lld: reconstruction loss %.4f on %d held-out slices\n", isatty(1) ? "\n" : "",
           (long long)step, loss, n_val);
}

/* What open decided. */
static void print_plan(const ms_mae_run_config *c, const char *sampling, const ms_mae_run_plan *pl,
                       const ms_device *dev)
{
    char dd[48];
    for (int i = 0; i < c->n_stores; i++)
        if (pl->single_volume >> i & 1)
            printf("pretrain: %s has one volume: validation uses a block of slices held out with a gap\n",
                   c->stores[i]);
    if (pl->resumed_from)
        printf("pretrain: resuming from %s (step %lld)\n", pl->resumed_from, (long long)pl->start_step);
    printf("pretrain: %s, input %d, %lld steps (%lld per epoch), batch %d x %d, lr %.3g (blr %.3g), mask %.2f %s, "
           "%s\n", c->model, pl->input_size, (long long)pl->total, (long long)pl->steps_per_epoch, c->batch, c->accum,
           pl->lr, c->blr, c->mask_ratio, sampling, ms_cli_device_desc(dev, dd, sizeof dd));
    if (pl->world > 1)
        printf("pretrain: %d ranks, batch %d per rank, global batch %d (ranks x batch x accumulation)\n", pl->world,
               c->batch, pl->global_batch);
    if (pl->validated) print_val(0, pl->val_loss, pl->n_val);
}

/* One step's messages; the progress line at most once a second (and at the end). */
static void print_step(const ms_mae_step_info *in, int n_val, double *t_last)
{
    if (!in->updated) {
        fprintf(stderr, "pretrain: step %lld: non-finite loss or gradient, step skipped (%lld in a row)\n",
                (long long)in->bad_step, (long long)in->bad_in_row);
        if (in->rolled_back_to)
            fprintf(stderr, "pretrain: rolled back to %s, lr scale now %.3g\n", in->rolled_back_to, in->lr_scale);
        return;
    }
    double t = ms_now_s();
    if (t - *t_last > 1.0 || in->done) {
        printf("%sstep %lld/%lld  loss %.4f  lr %.3g  %.2f img/s  ETA %dm%02ds%s", isatty(1) ? "\r" : "",
               (long long)in->step, (long long)in->total, in->loss, in->lr, in->img_per_s, (int)(in->eta_s / 60),
               (int)in->eta_s % 60, isatty(1) ? "   " : "\n");
        fflush(stdout);
        *t_last = t;
    }
    if (in->validated) print_val(in->step, in->val_loss, n_val);
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam pretrain --store S [--store S2 ...] (--ckpt F | --init random --model NAME) -o RUN/ [options]",
        "MAE self-supervised pretraining of SAM's image encoder on ingested MRI slices. The encoder runs on the\n"
        "visible tokens only (window-stratified masking; MobileSAM's TinyViT, vit_t, runs on the whole image with\n"
        "the hidden patches zeroed); a MAE decoder reconstructs the hidden 16x16 patches.\n"
        "Writes RUN/config.json, log.jsonl, tb/, ckpt/step_*/, val/step_*.png and, at the end,\n"
        "RUN/sam_mri_<model>.pth and .safetensors (full SAM weights, encoder replaced). SIGINT/SIGTERM: finish the\n"
        "step, checkpoint, exit 75; --resume RUN/ continues exactly. RUN/ must be new or empty (exit 2 otherwise):\n"
        "--overwrite starts again over an old run there.",
        "  mrisam pretrain --store store/ --init random --model vit_test --max-steps 200 -o run/\n"
        "  mrisam pretrain --store a/ --store b/ --ckpt sam_vit_b_01ec64.pth --batch-size 8 -o run/"};
    opts o = {.mask_sampling = "stratified", .device = "cpu", .p_lo = -1, .p_hi = -1, .dist_timeout = 600,
              .bucket_mb = 25};
    ms_mae_run_config c;
    ms_mae_run_config_default(&c);
    const ms_opt table[] = {
        {"store", MS_OPT_LIST, &o.stores, "DIR", "an ingested store (repeat for several; sampled by size)"},
        {"ckpt", MS_OPT_STR, &c.ckpt, "FILE", "SAM weights to start from (.pth or .safetensors)"},
        {"sam-ckpt", MS_OPT_STR, &o.sam_ckpt, "FILE", "alias of --ckpt"},
        {"init", MS_OPT_STR, &c.init, "random", "start from PyTorch's default initialisation (with --model)"},
        {"model", MS_OPT_STR, &o.model, "NAME", "vit_b, vit_l, vit_h, vit_t, vit_test, vit_t_test (--init random)"},
        {"o", MS_OPT_STR, &c.out, "RUN", "run directory"},
        {"resume", MS_OPT_STR, &c.resume, "RUN", "continue the run in RUN from its newest checkpoint"},
        {"overwrite", MS_OPT_FLAG, &c.overwrite, NULL, "start again over an old run in RUN (removes it)"},
        {"input-size", MS_OPT_INT, &c.input_size, "N",
         "input size (default: the checkpoint's; others interpolate the position tables, the export stays exact)"},
        {"batch-size", MS_OPT_INT, &c.batch, "B", "images per step per rank (default 8)"},
        {"accum-iter", MS_OPT_INT, &c.accum, "N", "gradient accumulation steps (default 1)"},
        {"epochs", MS_OPT_INT, &c.epochs, "E", "epochs (default 100; --max-steps wins)"},
        {"max-steps", MS_OPT_I64, &c.max_steps, "N", "optimizer steps"},
        {"blr", MS_OPT_FLOAT, &c.blr, "X", "base lr: lr = blr x effective batch / 256 (default 1.5e-4)"},
        {"lr", MS_OPT_FLOAT, &c.lr, "X", "absolute lr (overrides --blr)"},
        {"min-lr", MS_OPT_FLOAT, &c.min_lr, "X", "cosine floor (default 0)"},
        {"weight-decay", MS_OPT_FLOAT, &c.weight_decay, "X", "AdamW weight decay (default 0.05)"},
        {"warmup-steps", MS_OPT_INT, &c.warmup, "N", "linear warm-up steps (default 5% of the steps)"},
        {"mask-ratio", MS_OPT_FLOAT, &c.mask_ratio, "R", "share of hidden patches (default 0.75)"},
        {"mask-sampling", MS_OPT_STR, &o.mask_sampling, "stratified|random", "masking (default stratified)"},
        {"decoder-dim", MS_OPT_INT, &c.dec_dim, "N", "MAE decoder width (default 512)"},
        {"decoder-depth", MS_OPT_INT, &c.dec_depth, "N", "MAE decoder blocks (default 8)"},
        {"decoder-heads", MS_OPT_INT, &c.dec_heads, "N", "MAE decoder heads (default 16)"},
        {"norm-pix-loss", MS_OPT_INT, &c.norm_pix, "0|1", "per-patch normalised targets (default 1)"},
        {"freeze-encoder-epochs", MS_OPT_INT, &c.freeze_epochs, "N", "train the decoder alone first (default 0)"},
        {"clip-grad", MS_OPT_FLOAT, &c.clip, "X", "clip the global gradient norm (default 0: off)"},
        {"save-every", MS_OPT_INT, &c.save_every, "N", "checkpoint every N steps (default 1000)"},
        {"keep-last", MS_OPT_INT, &c.keep_last, "K", "checkpoints to keep (default 3)"},
        {"val-every", MS_OPT_INT, &c.val_every, "N", "validation every N steps (default 500)"},
        {"val-slices", MS_OPT_INT, &c.val_slices, "N", "held-out slices for validation (default 64)"},
        {"fg-threshold", MS_OPT_FLOAT, &c.fg_threshold, "X", "foreground patch: max intensity above X (default 0.05)"},
        {"max-bad-steps", MS_OPT_INT, &c.max_bad, "K", "non-finite losses in a row before rollback (default 5)"},
        {"seed", MS_OPT_I64, &o.seed, "S", "seed (default 0)"},
        {"intensity", MS_OPT_STR, &o.intensity, "M",
         "percentile|zscore|none: the stores' intensity normalisation (default: each store's own, ingest's)"},
        {"percentile-low", MS_OPT_FLOAT, &o.p_lo, "P", "lower percentile of --intensity percentile (0.5)"},
        {"percentile-high", MS_OPT_FLOAT, &o.p_hi, "P", "upper percentile of --intensity percentile (99.5)"},
        {"workers", MS_OPT_INT, &c.workers, "N", "loader threads (default: --threads)"},
        {"threads", MS_OPT_INT, &o.threads, "N", "CPU threads (default: all cores)"},
        MS_CLI_DIST_OPTIONS(&o.device, &o.dist_timeout, &o.bucket_mb, &c.zero1),
        {"cuda-graphs", MS_OPT_FLAG, &c.cuda_graphs, NULL,
         "CUDA: replay the backward of fixed-shape steps as a CUDA graph (experimental; never run on a GPU yet)"},
        {"recompute", MS_OPT_FLAG, &c.recompute, NULL,
         "recompute each encoder block in the backward: same gradients, less memory, ~1/3 more encoder work"},
        {"input-on-device", MS_OPT_FLAG, &c.input_on_device, NULL,
         "ship native uint16 slices and resize/normalise them on the device: same inputs, fewer bytes copied"},
        MS_CLI_PRECISION_OPTION(&o.precision),
        {0}};
    int prc = ms_cli_parse(&help, table, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (o.sam_ckpt && !c.ckpt) c.ckpt = o.sam_ckpt;
    if (c.resume && !c.out) c.out = c.resume;
    if (!c.out || !o.stores.n || (!c.ckpt && !(c.init && o.model)) || (c.init && strcmp(c.init, "random"))) {
        fprintf(stderr, "mrisam pretrain: needs --store, -o RUN and --ckpt F or --init random --model NAME (see --help)\n");
        return MS_EXIT_USAGE;
    }
    if (!strcmp(o.mask_sampling, "stratified")) c.sampling = MS_MASK_STRATIFIED;
    else if (!strcmp(o.mask_sampling, "random")) c.sampling = MS_MASK_RANDOM;
    else { fprintf(stderr, "mrisam pretrain: --mask-sampling stratified|random\n"); return MS_EXIT_USAGE; }
    if (c.batch < 1 || c.accum < 1 || o.stores.n > MS_ORDER_MAX_SOURCES) {
        fprintf(stderr, "mrisam pretrain: bad --batch-size / --accum-iter / number of stores\n");
        return MS_EXIT_USAGE;
    }
    if (ms_norm_choice_parse(o.intensity, o.p_lo, o.p_hi, &c.intensity)) {
        fprintf(stderr, "mrisam pretrain: %s\n", ms_errmsg());
        return MS_EXIT_USAGE;
    }
    c.n_stores = o.stores.n;
    for (int i = 0; i < o.stores.n; i++) c.stores[i] = o.stores.v[i];
    c.seed = (uint64_t)o.seed;
    /* Fault injection for tests (docs/CLI.md): MRISAM_TEST_NAN="STEP,COUNT" makes the first COUNT losses from
     * optimizer step STEP on non-finite, to exercise the skip-and-rollback path. */
    const char *nan_env = getenv("MRISAM_TEST_NAN");
    long long na = 0, nc = 0, nan_rank = -1; /* ",RANK": only that rank's losses (several ranks) */
    if (nan_env && sscanf(nan_env, "%lld,%lld,%lld", &na, &nc, &nan_rank) >= 2) { c.nan_at = na; c.nan_count = nc; }

    ms_device dev = {0};
    ms_sam sam;
    memset(&sam, 0, sizeof sam);
    ms_mae_run *r = NULL;
    char model_name[32];
    ms_dist *dist = NULL;
    ms_run_mode mode; /* a RUN/ that is refused is refused before the weights load (ms_mae_run_open checks again) */
    ms_status rc = ms_cli_dist_open(o.device, o.precision, o.threads, o.dist_timeout, o.bucket_mb, &dev, &dist);
    if (!rc && nan_rank >= 0 && ms_dist_rank(dist) != nan_rank) c.nan_count = 0;
    if (!rc) rc = ms_run_mode_of(c.out, c.resume, c.overwrite, &mode);
    if (!rc && ms_dist_rank(dist) == 0) rc = ms_run_dir_check(c.out, mode); /* rank 0 alone writes RUN/ */
    /* SAM: the encoder trains; the prompt encoder and mask decoder ride along for the export */
    if (!rc) rc = ms_sam_build(&sam, c.ckpt, o.model, c.seed, &dev, model_name, sizeof model_name);
    if (rc) goto leave;
    c.model = model_name;
    c.to_sd = sam_to_sd;
    c.to_sd_ctx = &sam;
    c.dist = dist;
    c.bucket_bytes = (size_t)(o.bucket_mb * 1048576.0);
    c.stop = ms_cli_catch_stop();
    ms_mae_encoder enc = {.vit = sam.cfg.tinyvit ? NULL : &sam.enc, .tv = sam.cfg.tinyvit ? &sam.tv : NULL};
    if ((rc = ms_mae_run_open_encoder(&c, &dev, &enc, &r))) goto leave;
    const ms_mae_run_plan *pl = ms_mae_run_plan_get(r);
    print_plan(&c, o.mask_sampling, pl, &dev);
    /* the step reads the stop flag and the ranks agree on it (in.stop); one process before its first step too */
    ms_mae_step_info in = {.step = pl->start_step, .done = pl->start_step >= pl->total, .stop = !dist && *c.stop};
    double t_last = ms_now_s();
    while (!in.done && !in.stop) {
        if ((rc = ms_mae_run_step(r, &in))) goto leave;
        if (ms_dist_rank(dist) == 0) print_step(&in, pl->n_val, &t_last); /* the ranks' steps are the same */
        if (in.updated) ms_cli_test_stop(in.step, ms_dist_rank(dist), c.stop);
    }
    if (in.stop) {
        if ((rc = ms_mae_run_save(r))) goto leave;
        printf("\npretrain: interrupted at step %lld; checkpoint written, continue with --resume %s\n",
               (long long)in.step, c.out);
        rc = ms_error(MS_EINTERRUPTED, "interrupted at step %lld (resumable)", (long long)in.step);
        goto leave;
    }
    if (pl->world > 1 && in.elapsed_s > 0)
        printf("pretrain: rank 0 waited %.2f s for gradient reductions after the backward (%.1f %% of %.1f s); "
               "%lld buckets started during the backward\n", in.comm_wait_s, 100 * in.comm_wait_s / in.elapsed_s,
               in.elapsed_s, (long long)in.buckets_early);
    if (!(rc = ms_mae_run_export(r)))
        printf("pretrain: exported %s/sam_mri_%s.pth and .safetensors\n", c.out, model_name);
leave:
    ms_mae_run_close(r);
    ms_sam_free(&sam);
    int code = ms_cli_report("pretrain", rc);
    ms_dist_close(dist, rc && rc != MS_EINTERRUPTED); /* a failed rank ends the whole job: no rank waits forever */
    ms_device_free(&dev);
    ms_strlist_free(&o.stores);
    return code;
}

const ms_command ms_cmd_pretrain = {"pretrain", "MAE pretraining of SAM's image encoder on MRI stores", run};
