/* tools/cmd_pretrain.c — `mrisam pretrain`: MAE self-supervised pretraining of SAM's image encoder on MRI stores
 * (mae.md §4; flags, RUN/ layout, log keys, signals and exit codes as cli.md says).
 *
 * Loop: loader batch → MAE step (pretrain/mae.h) → accumulate → clip → AdamW (encoder and decoder) → log; every
 * --save-every steps a crash-safe checkpoint RUN/ckpt/step_%08d/ (model.safetensors: encoder + MAE decoder;
 * optim.safetensors: AdamW moments; state.json: step, loader state, counters), the newest --keep-last kept;
 * every --val-every steps the reconstruction loss on fixed held-out slices with fixed masks and a PNG panel.
 * --resume continues bit-exactly on the CPU: loader order, masks and augmentation are pure functions of
 * (seed, epoch, position), and every reduction has a fixed order. At the end RUN/sam_mri_<model>.pth and
 * .safetensors hold the full SAM state dict with the encoder replaced (prompt encoder and mask decoder copied).
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/rng.h"
#include "checkpoints/rundir.h"
#include "checkpoints/runlog.h"
#include "cli.h"
#include "data/loader.h"
#include "finetune/sam.h"
#include "image_io.h"
#include "ops.h"
#include "pretrain/mae.h"
#include "pretrain/optimizer.h"
#include "pretrain_model.h"

static volatile sig_atomic_t g_stop; /* the CLI's one piece of process state: a signal asked us to stop */

static void on_signal(int sig)
{
    if (g_stop) _exit(128 + sig); /* second signal: exit at once; the last complete checkpoint stays valid */
    g_stop = 1;
}

typedef struct opts {
    ms_strlist stores;
    const char *ckpt, *sam_ckpt, *init, *model, *out, *resume, *mask_sampling, *device;
    int input_size, batch, accum, epochs, warmup, dec_dim, dec_depth, dec_heads, norm_pix, freeze_epochs;
    int save_every, keep_last, val_every, val_slices, threads, workers, max_bad;
    int64_t max_steps, seed;
    double blr, lr, min_lr, wd, mask_ratio, clip, fg_thr;
} opts;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static ms_status load_params_from(ms_params *ps, const char *path, const char *only_prefix)
{
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status rc = ms_sd_load(path, &sd);
    if (!rc) {
        /* load the tensors of this set that the file has under the prefix (all of them must be there) */
        size_t np = only_prefix ? strlen(only_prefix) : 0;
        for (int i = 0; i < ps->n && !rc; i++) {
            const ms_param *p = &ps->p[i];
            if (np && strncmp(p->name, only_prefix, np)) continue;
            float *h = malloc((size_t)p->numel * sizeof(float));
            if (!h) { rc = ms_error(MS_ENOMEM, "out of memory"); break; }
            rc = ms_sd_get_f32(&sd, p->name, p->shape, p->ndim, h);
            if (!rc) rc = ms_dev_from_host(ps->dev, ps->data + p->off, h, (size_t)p->numel * 4);
            free(h);
        }
        if (rc) ms_error_prefix("%s", path);
    }
    ms_sd_free(&sd);
    return rc;
}

typedef struct train_state {
    int64_t step, opt_steps, skipped, bad_in_row;
    double lr_scale;
    ms_loader_state loader;
} train_state;

static ms_status save_checkpoint(const opts *o, ms_sam *sam, ms_params *dec_ps, ms_optimizer *oe, ms_optimizer *od,
                                 const train_state *ts, const char *config_json)
{
    char dir[4200], p[4400];
    MS_TRY(ms_ckpt_dir_create(o->out, ts->step, dir, sizeof dir));
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status rc = MS_OK;
    /* encoder tensors (SAM keys) + decoder tensors (mae_decoder.*) */
    for (int i = 0; i < sam->ps.n && !rc; i++) {
        const ms_param *q = &sam->ps.p[i];
        if (strncmp(q->name, "image_encoder.", 14)) continue;
        float *h = malloc((size_t)q->numel * 4);
        if (!h) { rc = ms_error(MS_ENOMEM, "out of memory"); break; }
        rc = ms_dev_to_host(sam->ps.dev, h, sam->ps.data + q->off, (size_t)q->numel * 4);
        if (!rc) rc = ms_sd_add(&sd, q->name, MS_DTYPE_F32, q->shape, q->ndim, h);
        free(h);
    }
    if (!rc) rc = ms_params_to_sd(dec_ps, &sd);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    if (!rc) rc = ms_sd_save(p, &sd);
    ms_sd_free(&sd);
    ms_sd_init(&sd);
    if (!rc) rc = ms_optimizer_moments_to_sd(oe, &sd);
    if (!rc) rc = ms_optimizer_moments_to_sd(od, &sd);
    snprintf(p, sizeof p, "%s/optim.safetensors", dir);
    if (!rc) rc = ms_sd_save(p, &sd);
    ms_sd_free(&sd);
    if (rc) return rc;
    char js[2048];
    int n = snprintf(js, sizeof js,
                     "{\"step\": %lld, \"opt_steps\": %lld, \"skipped\": %lld, \"bad_in_row\": %lld, \"lr_scale\": %.17g,\n"
                     " \"adam_step_encoder\": %lld, \"adam_step_decoder\": %lld,\n"
                     " \"loader\": {\"seed\": %llu, \"epoch\": %llu, \"step\": %llu, \"n_records\": %llu, "
                     "\"global_batch\": %u, \"world\": %u, \"skipped\": %llu}}\n",
                     (long long)ts->step, (long long)ts->opt_steps, (long long)ts->skipped, (long long)ts->bad_in_row,
                     ts->lr_scale, (long long)oe->step, (long long)od->step, (unsigned long long)ts->loader.seed,
                     (unsigned long long)ts->loader.epoch, (unsigned long long)ts->loader.step,
                     (unsigned long long)ts->loader.n_records, ts->loader.global_batch, ts->loader.world,
                     (unsigned long long)ts->loader.skipped);
    snprintf(p, sizeof p, "%s/state.json", dir);
    MS_TRY(ms_write_file_atomic(p, js, (size_t)n));
    snprintf(p, sizeof p, "%s/loader_state.bin", dir); /* the loader's fixed-width resume struct, as is */
    MS_TRY(ms_write_file_atomic(p, &ts->loader, sizeof ts->loader));
    snprintf(p, sizeof p, "%s/config.json", dir);
    MS_TRY(ms_write_file_atomic(p, config_json, strlen(config_json)));
    MS_TRY(ms_ckpt_dir_commit(dir));
    return ms_ckpt_dir_prune(o->out, o->keep_last, -1);
}

static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static ms_status load_checkpoint(const char *dir, ms_sam *sam, ms_params *dec_ps, ms_optimizer *oe,
                                 ms_optimizer *od, train_state *ts)
{
    char p[4400];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    MS_TRY(load_params_from(&sam->ps, p, "image_encoder."));
    MS_TRY(load_params_from(dec_ps, p, NULL));
    snprintf(p, sizeof p, "%s/optim.safetensors", dir);
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status rc = ms_sd_load(p, &sd);
    if (!rc) rc = ms_optimizer_moments_from_sd(oe, &sd);
    if (!rc) rc = ms_optimizer_moments_from_sd(od, &sd);
    ms_sd_free(&sd);
    if (rc) return rc;
    snprintf(p, sizeof p, "%s/state.json", dir);
    cJSON *j;
    MS_TRY(ms_read_json(p, 1 << 20, &j));
    ts->step = (int64_t)jnum(j, "step");
    ts->opt_steps = (int64_t)jnum(j, "opt_steps");
    ts->skipped = (int64_t)jnum(j, "skipped");
    ts->bad_in_row = (int64_t)jnum(j, "bad_in_row");
    ts->lr_scale = jnum(j, "lr_scale");
    oe->step = (int64_t)jnum(j, "adam_step_encoder");
    od->step = (int64_t)jnum(j, "adam_step_decoder");
    cJSON_Delete(j);
    MS_FAIL_IF(!ts->lr_scale, MS_EFORMAT, "%s: incomplete state", p);
    snprintf(p, sizeof p, "%s/loader_state.bin", dir);
    char *js;
    size_t len;
    MS_TRY(ms_read_file(p, 4096, &js, &len));
    if (len != sizeof ts->loader) {
        free(js);
        return ms_error(MS_EFORMAT, "%s: %zu bytes, expected %zu", p, len, sizeof ts->loader);
    }
    memcpy(&ts->loader, js, len);
    free(js);
    return MS_OK;
}

/* gray [0,1] image from the loader's normalised 3-channel input (SAM mean/std on channel 0); the zero padding
 * outside the frame the slice fills is 0, not the pixel mean, so it counts as background */
static void gray_from_batch(const ms_batch *bt, float *gray, int S, int norm)
{
    for (int b = 0; b < bt->n; b++) {
        const float *src = bt->image + (size_t)b * bt->channels * S * S;
        float *dst = gray + (size_t)b * S * S;
        int fh = bt->height ? bt->height[b] : S, fw = bt->width ? bt->width[b] : S;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                size_t i = (size_t)y * S + x;
                float v = norm == MS_NORM_SAM ? (src[i] * ms_sam_pixel_std[0] + ms_sam_pixel_mean[0]) / 255.f : src[i];
                dst[i] = y < fh && x < fw ? v : 0.f;
            }
    }
}

/* input | masked | reconstruction | reconstruction with the visible patches pasted back, one row per sample */
static ms_status write_panel(const char *path, const float *gray, const float *recon, const uint8_t *masked, int n,
                             int S, int p)
{
    int g = S / p, W = 4 * S, H = n * S;
    uint8_t *img = calloc((size_t)W * H, 1);
    MS_FAIL_IF(!img, MS_ENOMEM, "out of memory");
    for (int b = 0; b < n; b++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                size_t i = ((size_t)b * S + y) * S + x;
                int hidden = masked[(size_t)b * g * g + (y / p) * g + x / p];
                float v[4] = {gray[i], hidden ? 0.f : gray[i], recon[i], hidden ? recon[i] : gray[i]};
                for (int k = 0; k < 4; k++) {
                    float c = v[k] < 0 ? 0 : (v[k] > 1 ? 1 : v[k]);
                    img[((size_t)b * S + y) * W + k * S + x] = (uint8_t)(c * 255.f + 0.5f);
                }
            }
    ms_status rc = ms_png_write_u8(path, img, W, H, 1);
    free(img);
    return rc;
}

typedef struct val_ctx {
    ms_mae *mae;
    ms_device *dev;
    ms_runlog *lg;
    const char *out;
    float *xdev, *vimg, *vgray, *recon;
    uint8_t *vmask;
    uint64_t *keys;
    int n_val, batch, S, patch;
    uint64_t seed;
    int64_t steps_per_epoch;
} val_ctx;

/* Reconstruction loss on the fixed held-out slices with fixed masks (keyed by the slice's index in the set), and
 * the PNG panel of the first few. */
static ms_status validate(val_ctx *v, int64_t step, double t)
{
    int S = v->S, g = S / v->patch;
    double vsum = 0;
    for (int b0 = 0; b0 < v->n_val; b0 += v->batch) {
        int nb = v->n_val - b0 < v->batch ? v->n_val - b0 : v->batch;
        MS_TRY(ms_dev_from_host(v->dev, v->xdev, v->vimg + (size_t)b0 * 3 * S * S, (size_t)nb * 3 * S * S * 4));
        for (int b = 0; b < nb; b++) v->keys[b] = 0x76616cull + (uint64_t)(b0 + b);
        ms_mae_loss l;
        MS_TRY(ms_mae_forward(v->mae, v->xdev, v->vgray + (size_t)b0 * S * S, nb, v->seed, v->keys, &l));
        vsum += l.loss * nb;
        if (b0 == 0) {
            MS_TRY(ms_mae_reconstruction(v->mae, v->vgray, v->recon));
            memcpy(v->vmask, v->mae->mask.masked, (size_t)nb * g * g);
            char pp[4300];
            snprintf(pp, sizeof pp, "%s/val/step_%08lld.png", v->out, (long long)step);
            MS_TRY(write_panel(pp, v->vgray, v->recon, v->vmask, nb < 4 ? nb : 4, S, v->patch));
        }
    }
    char js[512];
    snprintf(js, sizeof js, "{\"step\": %lld, \"epoch\": %.4f, \"split\": \"val\", \"loss\": %.7g, \"t\": %.3f}",
             (long long)step, (double)step / v->steps_per_epoch, vsum / v->n_val, t);
    MS_TRY(ms_runlog_json(v->lg, js));
    ms_runlog_scalar(v->lg, "val/loss", step, vsum / v->n_val);
    printf("%sval step %lld: reconstruction loss %.4f on %d held-out slices\n", isatty(1) ? "\n" : "",
           (long long)step, vsum / v->n_val, v->n_val);
    return MS_OK;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam pretrain --store S [--store S2 ...] (--ckpt F | --init random --model NAME) -o RUN/ [options]",
        "MAE self-supervised pretraining of SAM's image encoder on ingested MRI slices. The encoder runs on the\n"
        "visible tokens only (window-stratified masking); a MAE decoder reconstructs the hidden 16x16 patches.\n"
        "Writes RUN/config.json, log.jsonl, tb/, ckpt/step_*/, val/step_*.png and, at the end,\n"
        "RUN/sam_mri_<model>.pth and .safetensors (full SAM weights, encoder replaced). SIGINT/SIGTERM: finish the\n"
        "step, checkpoint, exit 75; --resume RUN/ continues exactly.",
        "  mrisam pretrain --store store/ --init random --model vit_test --max-steps 200 -o run/\n"
        "  mrisam pretrain --store a/ --store b/ --ckpt sam_vit_b_01ec64.pth --batch-size 8 -o run/"};
    opts o = {.mask_sampling = "stratified", .device = "cpu", .input_size = 0, .batch = 8, .accum = 1,
              .epochs = 100, .warmup = -1, .dec_dim = 512, .dec_depth = 8, .dec_heads = 16, .norm_pix = 1,
              .save_every = 1000, .keep_last = 3, .val_every = 500, .val_slices = 64, .threads = 0, .workers = 0,
              .max_bad = 5, .max_steps = 0, .seed = 0, .blr = 1.5e-4, .lr = 0, .min_lr = 0, .wd = 0.05,
              .mask_ratio = 0.75, .clip = 0, .fg_thr = 0.05};
    const ms_opt table[] = {
        {"store", MS_OPT_LIST, &o.stores, "DIR", "an ingested store (repeat for several; sampled by size)"},
        {"ckpt", MS_OPT_STR, &o.ckpt, "FILE", "SAM weights to start from (.pth or .safetensors)"},
        {"sam-ckpt", MS_OPT_STR, &o.sam_ckpt, "FILE", "alias of --ckpt"},
        {"init", MS_OPT_STR, &o.init, "random", "start from PyTorch's default initialisation (with --model)"},
        {"model", MS_OPT_STR, &o.model, "NAME", "vit_b, vit_l, vit_h or vit_test (with --init random)"},
        {"o", MS_OPT_STR, &o.out, "RUN", "run directory"},
        {"resume", MS_OPT_STR, &o.resume, "RUN", "continue the run in RUN from its newest checkpoint"},
        {"input-size", MS_OPT_INT, &o.input_size, "N",
         "input size (default: the checkpoint's; others interpolate the position tables, the export stays exact)"},
        {"batch-size", MS_OPT_INT, &o.batch, "B", "images per step per rank (default 8)"},
        {"accum-iter", MS_OPT_INT, &o.accum, "N", "gradient accumulation steps (default 1)"},
        {"epochs", MS_OPT_INT, &o.epochs, "E", "epochs (default 100; --max-steps wins)"},
        {"max-steps", MS_OPT_I64, &o.max_steps, "N", "optimizer steps"},
        {"blr", MS_OPT_FLOAT, &o.blr, "X", "base lr: lr = blr x effective batch / 256 (default 1.5e-4)"},
        {"lr", MS_OPT_FLOAT, &o.lr, "X", "absolute lr (overrides --blr)"},
        {"min-lr", MS_OPT_FLOAT, &o.min_lr, "X", "cosine floor (default 0)"},
        {"weight-decay", MS_OPT_FLOAT, &o.wd, "X", "AdamW weight decay (default 0.05)"},
        {"warmup-steps", MS_OPT_INT, &o.warmup, "N", "linear warm-up steps (default 5% of the steps)"},
        {"mask-ratio", MS_OPT_FLOAT, &o.mask_ratio, "R", "share of hidden patches (default 0.75)"},
        {"mask-sampling", MS_OPT_STR, &o.mask_sampling, "stratified|random", "masking (default stratified)"},
        {"decoder-dim", MS_OPT_INT, &o.dec_dim, "N", "MAE decoder width (default 512)"},
        {"decoder-depth", MS_OPT_INT, &o.dec_depth, "N", "MAE decoder blocks (default 8)"},
        {"decoder-heads", MS_OPT_INT, &o.dec_heads, "N", "MAE decoder heads (default 16)"},
        {"norm-pix-loss", MS_OPT_INT, &o.norm_pix, "0|1", "per-patch normalised targets (default 1)"},
        {"freeze-encoder-epochs", MS_OPT_INT, &o.freeze_epochs, "N", "train the decoder alone first (default 0)"},
        {"clip-grad", MS_OPT_FLOAT, &o.clip, "X", "clip the global gradient norm (default 0: off)"},
        {"save-every", MS_OPT_INT, &o.save_every, "N", "checkpoint every N steps (default 1000)"},
        {"keep-last", MS_OPT_INT, &o.keep_last, "K", "checkpoints to keep (default 3)"},
        {"val-every", MS_OPT_INT, &o.val_every, "N", "validation every N steps (default 500)"},
        {"val-slices", MS_OPT_INT, &o.val_slices, "N", "held-out slices for validation (default 64)"},
        {"fg-threshold", MS_OPT_FLOAT, &o.fg_thr, "X", "foreground patch: max intensity above X (default 0.05)"},
        {"max-bad-steps", MS_OPT_INT, &o.max_bad, "K", "non-finite losses in a row before rollback (default 5)"},
        {"seed", MS_OPT_I64, &o.seed, "S", "seed (default 0)"},
        {"workers", MS_OPT_INT, &o.workers, "N", "loader threads (default: --threads)"},
        {"threads", MS_OPT_INT, &o.threads, "N", "CPU threads (default: all cores)"},
        {"device", MS_OPT_STR, &o.device, "cpu|cuda", "compute device (default cpu)"},
        {0}};
    int prc = ms_cli_parse(&help, table, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (o.sam_ckpt && !o.ckpt) o.ckpt = o.sam_ckpt;
    if (o.resume && !o.out) o.out = o.resume;
    if (!o.out || !o.stores.n || (!o.ckpt && !(o.init && o.model)) || (o.init && strcmp(o.init, "random"))) {
        fprintf(stderr, "mrisam pretrain: needs --store, -o RUN and --ckpt F or --init random --model NAME (see --help)\n");
        return MS_EXIT_USAGE;
    }
    ms_mask_sampling sampling;
    if (!strcmp(o.mask_sampling, "stratified")) sampling = MS_MASK_STRATIFIED;
    else if (!strcmp(o.mask_sampling, "random")) sampling = MS_MASK_RANDOM;
    else { fprintf(stderr, "mrisam pretrain: --mask-sampling stratified|random\n"); return MS_EXIT_USAGE; }
    if (o.batch < 1 || o.accum < 1 || o.stores.n > MS_ORDER_MAX_SOURCES) {
        fprintf(stderr, "mrisam pretrain: bad --batch-size / --accum-iter / number of stores\n");
        return MS_EXIT_USAGE;
    }

    ms_status rc = MS_OK;
    ms_device dev = {0};
    ms_sam sam;
    memset(&sam, 0, sizeof sam);
    ms_params dec_ps;
    ms_params_init(&dec_ps);
    ms_mae mae;
    memset(&mae, 0, sizeof mae);
    ms_optimizer oe = {0}, od = {0};
    ms_loader *loader = NULL, *vloader = NULL;
    ms_store *stores[MS_ORDER_MAX_SOURCES] = {0};
    ms_selection train_sel[MS_ORDER_MAX_SOURCES], val_sel[MS_ORDER_MAX_SOURCES];
    memset(train_sel, 0, sizeof train_sel);
    memset(val_sel, 0, sizeof val_sel);
    ms_runlog lg = {0};
    float *xdev = NULL, *gray = NULL, *vgray = NULL, *vimg = NULL, *recon = NULL;
    uint8_t *vmask = NULL;
    uint64_t *keys = NULL;
    char *config_json = NULL;
    int n_val = 0;

    ms_device_kind kind;
    int index;
    if ((rc = ms_device_parse(o.device, &kind, &index))) goto leave;
    if ((rc = ms_device_init_at(&dev, kind, index, o.threads))) goto leave;

    /* ---- the model: SAM (encoder trains; prompt encoder and mask decoder ride along for the export) ---- */
    char model_name[32];
    if ((rc = ms_pt_build_sam(&sam, o.ckpt, o.model, (uint64_t)o.seed, &dev, model_name, sizeof model_name)))
        goto leave;
    const ms_sam_enc_config *ec = &sam.enc.cfg;
    /* another input size than the checkpoint's: position tables interpolated from the masters in every forward */
    if (o.input_size && (rc = ms_sam_encoder_set_input_size(&sam.enc, o.input_size))) goto leave;
    int S = ms_sam_enc_run_size(&sam.enc), g = S / ec->patch;
    ms_params_set_trainable(&sam.ps, "", 0);
    ms_params_set_trainable(&sam.ps, "image_encoder.", 1);
    if ((rc = ms_params_alloc_grads(&sam.ps))) goto leave;
    if ((rc = ms_sam_encoder_reserve(&sam.enc, &dev, o.batch, 1))) goto leave;
    ms_mae_config mc = {.mask_ratio = (float)o.mask_ratio, .sampling = sampling, .norm_pix = o.norm_pix,
                        .fg_threshold = (float)o.fg_thr,
                        .dec = {.dim = o.dec_dim, .depth = o.dec_depth, .n_heads = o.dec_heads, .target_ch = 1}};
    if ((rc = ms_mae_init(&mae, &sam.enc, &mc, &dec_ps))) goto leave;
    if ((rc = ms_params_alloc(&dec_ps, &dev))) goto leave;
    if ((rc = ms_params_alloc_grads(&dec_ps))) goto leave;
    if ((rc = ms_mae_decoder_init_weights(&mae.dec, (uint64_t)o.seed))) goto leave;
    if ((rc = ms_mae_reserve(&mae, &dev, o.batch))) goto leave;
    if ((rc = ms_optimizer_init(&oe, &sam.ps, 0.9f, 0.95f, 1e-8f, (float)o.wd))) goto leave;
    if ((rc = ms_optimizer_init(&od, &dec_ps, 0.9f, 0.95f, 1e-8f, (float)o.wd))) goto leave;

    /* ---- data: a split by volume per store; train on the rest, validate on fixed held-out slices ---- */
    ms_loader_config lc;
    ms_loader_config_default(&lc);
    lc.n_stores = o.stores.n;
    for (int i = 0; i < o.stores.n; i++) {
        if ((rc = ms_store_open(o.stores.v[i], 4 + (o.workers ? o.workers : dev.n_threads), &stores[i]))) goto leave;
        ms_split_spec sp;
        ms_split_spec_default(&sp);
        sp.seed = (uint64_t)o.seed;
        sp.val_fraction = o.val_slices > 0 ? 0.1 : 0;
        int single = 0;
        if ((rc = ms_loader_select(stores[i], &sp, &train_sel[i], o.val_slices > 0 ? &val_sel[i] : NULL, &single)))
            goto leave;
        if (single) printf("pretrain: %s has one volume: validation uses a block of slices held out with a gap\n",
                           o.stores.v[i]);
        lc.stores[i] = stores[i];
        lc.selection[i] = &train_sel[i];
    }
    lc.seed = (uint64_t)o.seed;
    lc.global_batch = o.batch;
    lc.n_threads = o.workers ? o.workers : dev.n_threads;
    lc.pinned = kind == MS_DEV_CUDA;
    ms_prep_config_default(&lc.prep, S);
    lc.augment = 1;
    ms_aug_config_mae(&lc.aug);
    int64_t total = o.max_steps;
    /* ---- resume ---- */
    train_state ts = {.lr_scale = 1.0};
    char ckdir[4200];
    int64_t ckstep = 0;
    if (o.resume) {
        if ((rc = ms_ckpt_dir_latest(o.resume, &ckstep, ckdir, sizeof ckdir))) goto leave;
        if ((rc = load_checkpoint(ckdir, &sam, &dec_ps, &oe, &od, &ts))) goto leave;
        lc.resume = &ts.loader;
        printf("pretrain: resuming from %s (step %lld)\n", ckdir, (long long)ts.step);
    }
    if ((rc = ms_loader_open(&lc, &loader))) goto leave;
    int64_t steps_per_epoch = (int64_t)ms_loader_steps_per_epoch(loader) / o.accum;
    if (steps_per_epoch < 1) steps_per_epoch = 1;
    if (!total) total = (int64_t)o.epochs * steps_per_epoch;
    int64_t warmup = o.warmup >= 0 ? o.warmup : total / 20;
    double eff_batch = (double)o.batch * o.accum;
    double base_lr = o.lr > 0 ? o.lr : o.blr * eff_batch / 256.0;
    int64_t freeze_steps = (int64_t)o.freeze_epochs * steps_per_epoch;

    /* validation set: the first --val-slices held-out slices, fixed masks keyed by their index */
    if (o.val_slices > 0 && val_sel[0].n > 0) {
        ms_loader_config vc = lc;
        vc.resume = NULL;
        for (int i = 0; i < o.stores.n; i++) vc.selection[i] = &val_sel[i];
        vc.shuffle = 0;
        vc.augment = 0;
        vc.n_epochs = 1;
        vc.drop_last = 0;
        if ((rc = ms_loader_open(&vc, &vloader))) goto leave;
        vimg = malloc((size_t)o.val_slices * 3 * S * S * sizeof(float));
        vgray = malloc((size_t)o.val_slices * S * S * sizeof(float));
        if (!vimg || !vgray) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
        const ms_batch *vb;
        while (n_val < o.val_slices && !(rc = ms_loader_next(vloader, &vb)) && vb) {
            int take = vb->n < o.val_slices - n_val ? vb->n : o.val_slices - n_val;
            memcpy(vimg + (size_t)n_val * 3 * S * S, vb->image, (size_t)take * 3 * S * S * sizeof(float));
            ms_batch tmp = *vb;
            tmp.n = take;
            gray_from_batch(&tmp, vgray + (size_t)n_val * S * S, S, lc.prep.norm);
            n_val += take;
        }
        ms_loader_close(vloader);
        vloader = NULL;
        if (rc) goto leave;
    }

    /* ---- RUN/ ---- */
    if ((rc = ms_mkdirs(o.out))) goto leave;
    {
        char vdir[4200];
        snprintf(vdir, sizeof vdir, "%s/val", o.out);
        if ((rc = ms_mkdirs(vdir))) goto leave;
        cJSON *cj = cJSON_CreateObject();
        cJSON_AddStringToObject(cj, "command", "pretrain");
        cJSON_AddStringToObject(cj, "model", model_name);
        cJSON_AddStringToObject(cj, "ckpt", o.ckpt ? o.ckpt : "");
        cJSON_AddStringToObject(cj, "init", o.init ? o.init : "checkpoint");
        cJSON *sa = cJSON_AddArrayToObject(cj, "stores");
        for (int i = 0; i < o.stores.n; i++) cJSON_AddItemToArray(sa, cJSON_CreateString(o.stores.v[i]));
        cJSON_AddNumberToObject(cj, "input_size", S);
        cJSON_AddStringToObject(cj, "resize", "longest");
        cJSON_AddStringToObject(cj, "norm", "sam");
        cJSON_AddNumberToObject(cj, "batch_size", o.batch);
        cJSON_AddNumberToObject(cj, "accum_iter", o.accum);
        cJSON_AddNumberToObject(cj, "max_steps", (double)total);
        cJSON_AddNumberToObject(cj, "lr", base_lr);
        cJSON_AddNumberToObject(cj, "blr", o.blr);
        cJSON_AddNumberToObject(cj, "min_lr", o.min_lr);
        cJSON_AddNumberToObject(cj, "warmup_steps", (double)warmup);
        cJSON_AddNumberToObject(cj, "weight_decay", o.wd);
        cJSON_AddNumberToObject(cj, "mask_ratio", o.mask_ratio);
        cJSON_AddStringToObject(cj, "mask_sampling", o.mask_sampling);
        cJSON_AddNumberToObject(cj, "decoder_dim", o.dec_dim);
        cJSON_AddNumberToObject(cj, "decoder_depth", o.dec_depth);
        cJSON_AddNumberToObject(cj, "decoder_heads", o.dec_heads);
        cJSON_AddNumberToObject(cj, "norm_pix_loss", o.norm_pix);
        cJSON_AddNumberToObject(cj, "freeze_encoder_epochs", o.freeze_epochs);
        cJSON_AddNumberToObject(cj, "clip_grad", o.clip);
        cJSON_AddNumberToObject(cj, "seed", (double)o.seed);
        config_json = cJSON_Print(cj);
        cJSON_Delete(cj);
        char p[4200];
        snprintf(p, sizeof p, "%s/config.json", o.out);
        if (!config_json || (rc = ms_write_file_atomic(p, config_json, strlen(config_json)))) {
            if (!rc) rc = ms_error(MS_ENOMEM, "out of memory");
            goto leave;
        }
    }
    if ((rc = ms_runlog_open(&lg, o.out))) goto leave;
    printf("pretrain: %s, input %d, %lld steps (%lld per epoch), batch %d x %d, lr %.3g (blr %.3g), mask %.2f %s\n",
           model_name, S, (long long)total, (long long)steps_per_epoch, o.batch, o.accum, base_lr, o.blr,
           o.mask_ratio, o.mask_sampling);

    size_t img_bytes = (size_t)o.batch * 3 * S * S * sizeof(float);
    if ((rc = ms_dev_alloc(&dev, img_bytes, (void **)&xdev))) goto leave;
    gray = malloc((size_t)o.batch * S * S * sizeof(float));
    keys = malloc((size_t)o.batch * sizeof(uint64_t));
    recon = malloc((size_t)(o.batch > o.val_slices ? o.batch : o.val_slices) * S * S * sizeof(float));
    vmask = malloc((size_t)(o.batch > o.val_slices ? o.batch : o.val_slices) * g * g);
    if (!gray || !keys || !recon || !vmask) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    /* Fault injection for tests (documented in docs/CLI.md): MRISAM_TEST_NAN="STEP,COUNT" makes the first COUNT
     * losses from optimizer step STEP on non-finite, to exercise the skip-and-rollback path. */
    int64_t nan_at = 0, nan_left = 0;
    const char *nan_env = getenv("MRISAM_TEST_NAN");
    if (nan_env) {
        long long a = 0, b = 0;
        if (sscanf(nan_env, "%lld,%lld", &a, &b) == 2) { nan_at = a; nan_left = b; }
    }
    double t0 = now(), t_last = t0;
    val_ctx v = {&mae, &dev, &lg, o.out, xdev, vimg, vgray, recon, vmask, keys, n_val, o.batch, S, ec->patch,
                 (uint64_t)o.seed, steps_per_epoch};
    if (n_val && ts.step == 0 && (rc = validate(&v, 0, 0))) goto leave; /* the starting point of the curve */
    int64_t start_step = ts.step;
    float *grads[2] = {sam.ps.grad, dec_ps.grad};
    int64_t gsizes[2] = {sam.ps.numel_trainable, dec_ps.numel_trainable};
    while (ts.step < total && !g_stop) {
        ms_mae_loss acc = {0, 0, 0, 0, 0};
        int finite = 1, frozen = ts.step < freeze_steps;
        double fgsum = 0, bgsum = 0;
        int fgn = 0, bgn = 0;
        for (int a = 0; a < o.accum; a++) {
            const ms_batch *bt;
            if ((rc = ms_loader_next(loader, &bt))) goto leave;
            if (!bt) { rc = ms_error(MS_EINVAL, "pretrain: the loader ran out of data"); goto leave; }
            if ((rc = ms_dev_from_host(&dev, xdev, bt->image, (size_t)bt->n * 3 * S * S * sizeof(float)))) goto leave;
            gray_from_batch(bt, gray, S, lc.prep.norm);
            for (int b = 0; b < bt->n; b++) keys[b] = bt->epoch * 0x9e3779b97f4a7c15ull + bt->position[b];
            ms_mae_loss l;
            if ((rc = ms_mae_forward(&mae, xdev, gray, bt->n, (uint64_t)o.seed, keys, &l))) goto leave;
            if (nan_left > 0 && ts.step + 1 >= nan_at) { l.loss = NAN; nan_left--; } /* test hook, see below */
            if (!isfinite(l.loss)) { finite = 0; continue; }
            acc.loss += l.loss / o.accum;
            if (l.n_fg) { fgsum += l.loss_fg * l.n_fg; fgn += l.n_fg; }
            if (l.n_bg) { bgsum += l.loss_bg * l.n_bg; bgn += l.n_bg; }
            if ((rc = ms_mae_backward(&mae, 1.0f / o.accum, frozen))) goto leave;
        }
        float gnorm = 0;
        if (finite && (rc = ms_clip_grad_norm(&dev, grads, gsizes, 2, (float)o.clip, &gnorm))) goto leave;
        if (!finite || !isfinite(gnorm)) {
            ts.skipped++;
            ts.bad_in_row++;
            fprintf(stderr, "pretrain: step %lld: non-finite loss or gradient, step skipped (%lld in a row)\n",
                    (long long)ts.step, (long long)ts.bad_in_row);
            if (ts.bad_in_row >= o.max_bad) {
                /* roll back to the last checkpoint at half the learning rate */
                double scale = ts.lr_scale * 0.5;
                int64_t skipped = ts.skipped;
                if ((rc = ms_ckpt_dir_latest(o.out, &ckstep, ckdir, sizeof ckdir))) goto leave;
                if ((rc = load_checkpoint(ckdir, &sam, &dec_ps, &oe, &od, &ts))) goto leave;
                ts.lr_scale = scale;
                ts.skipped = skipped;
                ts.bad_in_row = 0;
                ms_loader_close(loader);
                loader = NULL;
                lc.resume = &ts.loader;
                if ((rc = ms_loader_open(&lc, &loader))) goto leave;
                fprintf(stderr, "pretrain: rolled back to %s, lr scale now %.3g\n", ckdir, ts.lr_scale);
            }
            ms_params_zero_grads(&sam.ps);
            ms_params_zero_grads(&dec_ps);
            continue;
        }
        ts.bad_in_row = 0;
        float lr = (float)(ms_lr_at(MS_SCHED_COSINE, ts.step, warmup, total, (float)base_lr, (float)o.min_lr) *
                           ts.lr_scale);
        if (!frozen && (rc = ms_optimizer_step(&oe, lr, NULL))) goto leave;
        if ((rc = ms_optimizer_step(&od, lr, NULL))) goto leave;
        if ((rc = ms_params_zero_grads(&sam.ps)) || (rc = ms_params_zero_grads(&dec_ps))) goto leave;
        ts.step++;
        ts.opt_steps++;
        ms_loader_state_get(loader, &ts.loader);

        double t = now();
        double ips = (double)(ts.step - start_step) * eff_batch / (t - t0 + 1e-9);
        char js[1024];
        snprintf(js, sizeof js,
                 "{\"step\": %lld, \"epoch\": %.4f, \"split\": \"train\", \"loss\": %.7g, \"loss_fg\": %.7g, "
                 "\"loss_bg\": %.7g, \"lr\": %.6g, \"grad_norm\": %.6g, \"img_per_s\": %.4g, \"skipped\": %lld, "
                 "\"t\": %.3f}",
                 (long long)ts.step, (double)ts.step / steps_per_epoch, acc.loss, fgn ? fgsum / fgn : -1.0,
                 bgn ? bgsum / bgn : -1.0, lr, gnorm, ips, (long long)ts.skipped, t - t0);
        if ((rc = ms_runlog_json(&lg, js))) goto leave;
        ms_runlog_scalar(&lg, "train/loss", ts.step, acc.loss);
        if (fgn) ms_runlog_scalar(&lg, "train/loss_fg", ts.step, fgsum / fgn);
        if (bgn) ms_runlog_scalar(&lg, "train/loss_bg", ts.step, bgsum / bgn);
        ms_runlog_scalar(&lg, "train/lr", ts.step, lr);
        ms_runlog_scalar(&lg, "train/grad_norm", ts.step, gnorm);
        ms_runlog_scalar(&lg, "train/img_per_s", ts.step, ips);
        if (t - t_last > 1.0 || ts.step == total) {
            double eta = (double)(total - ts.step) * (t - t0) / (double)(ts.step - start_step);
            printf("%sstep %lld/%lld  loss %.4f  lr %.3g  %.2f img/s  ETA %dm%02ds%s", isatty(1) ? "\r" : "",
                   (long long)ts.step, (long long)total, acc.loss, lr, ips, (int)(eta / 60), (int)eta % 60,
                   isatty(1) ? "   " : "\n");
            fflush(stdout);
            t_last = t;
        }
        if (n_val && (ts.step % o.val_every == 0 || ts.step == total))
            if ((rc = validate(&v, ts.step, now() - t0))) goto leave;
        if (ts.step % o.save_every == 0 || ts.step == total || g_stop)
            if ((rc = save_checkpoint(&o, &sam, &dec_ps, &oe, &od, &ts, config_json))) goto leave;
    }
    if (g_stop) {
        printf("\npretrain: interrupted at step %lld; checkpoint written, continue with --resume %s\n",
               (long long)ts.step, o.out);
        rc = ms_error(MS_EINTERRUPTED, "interrupted at step %lld (resumable)", (long long)ts.step);
        goto leave;
    }
    /* ---- export: full SAM state dict, encoder replaced ---- */
    {
        ms_state_dict sd;
        ms_sd_init(&sd);
        char p[4200];
        rc = ms_sam_to_sd(&sam, &sd);
        snprintf(p, sizeof p, "%s/sam_mri_%s.pth", o.out, model_name);
        if (!rc) rc = ms_sd_save(p, &sd);
        snprintf(p, sizeof p, "%s/sam_mri_%s.safetensors", o.out, model_name);
        if (!rc) rc = ms_sd_save(p, &sd);
        ms_sd_free(&sd);
        if (!rc) printf("pretrain: exported %s/sam_mri_%s.pth and .safetensors\n", o.out, model_name);
    }
leave:
    ms_runlog_close(&lg);
    if (loader) ms_loader_close(loader);
    for (int i = 0; i < MS_ORDER_MAX_SOURCES; i++) {
        ms_selection_free(&train_sel[i]);
        ms_selection_free(&val_sel[i]);
        if (stores[i]) ms_store_close(stores[i]);
    }
    ms_dev_free(&dev, xdev);
    free(gray); free(vgray); free(vimg); free(recon); free(vmask); free(keys);
    if (config_json) cJSON_free(config_json);
    ms_optimizer_free(&oe);
    ms_optimizer_free(&od);
    ms_mae_free(&mae);
    ms_params_free(&dec_ps);
    ms_sam_free(&sam);
    ms_device_free(&dev);
    ms_strlist_free(&o.stores);
    return ms_cli_report("pretrain", rc);
}

const ms_command ms_cmd_pretrain = {"pretrain", "MAE pretraining of SAM's image encoder on MRI stores", run};
