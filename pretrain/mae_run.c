/* pretrain/mae_run.c — see mae_run.h. */
#include "mae_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "base/clock.h"
#include "checkpoints/rundir.h"
#include "checkpoints/runlog.h"
#include "data/loader.h"
#include "data/png.h"
#include "data/preprocess.h"
#include "ops.h"
#include "pretrain/grad_sync.h"
#include "pretrain/optimizer.h"
#include "pretrain/step_graph.h"


/* What state.json and loader_state.bin restore. */
typedef struct train_state {
    int64_t step, opt_steps, skipped, bad_in_row;
    double lr_scale;
    ms_loader_state loader;
} train_state;

struct ms_mae_run {
    ms_mae_run_config cfg;
    ms_device *dev;
    ms_sam_encoder *enc; /* the encoder: SAM's ViT, or */
    ms_tinyvit *tv;      /* MobileSAM's TinyViT (one of them NULL) */
    ms_params *eps; /* the encoder's block (the caller's) */
    ms_params dec_ps;
    ms_mae mae;
    ms_optimizer oe, od;
    ms_store *stores[MS_ORDER_MAX_SOURCES];
    ms_selection train_sel[MS_ORDER_MAX_SOURCES], val_sel[MS_ORDER_MAX_SOURCES];
    ms_loader_config lc; /* kept: a rollback reopens the loader at the checkpoint's state */
    ms_loader *loader;
    ms_runlog lg;
    char *config_json;
    int S, g, n_val;
    float *xdev, *gray, *vimg, *vgray, *recon; /* xdev on the device; the rest host */
    uint16_t *ndev;      /* input_on_device: the native batch on the device, and its samples' crop/flip */
    ms_prep_sample *sdev;
    size_t ncap;         /* bytes of ndev */
    uint8_t *vmask;
    uint64_t *keys;
    ms_mae_run_plan plan;
    double eff_batch;
    train_state ts;
    int64_t nan_left, saved_step;
    double t0;
    ms_run_mode mode; /* fresh, resume or overwrite: how RUN/ is prepared */
    int rank, world;  /* data parallel: rank 0 writes RUN/ */
    double comm_wait_s; /* time spent waiting for gradient reductions after the backward, since open */
    ms_grad_sync gs;
    ms_step_graph sg; /* the backward as a CUDA graph (cfg.cuda_graphs) */
    char resumed[MS_PATH_MAX], ckdir[MS_PATH_MAX];
};

void ms_mae_run_config_default(ms_mae_run_config *c)
{
    memset(c, 0, sizeof *c);
    c->enc_prefix = "image_encoder.";
    c->batch = 8;
    c->accum = 1;
    c->epochs = 100;
    c->warmup = -1;
    c->blr = 1.5e-4;
    c->weight_decay = 0.05;
    c->mask_ratio = 0.75;
    c->fg_threshold = 0.05;
    c->sampling = MS_MASK_STRATIFIED;
    c->norm_pix = 1;
    c->dec_dim = 512;
    c->dec_depth = 8;
    c->dec_heads = 16;
    c->save_every = 1000;
    c->keep_last = 3;
    c->val_every = 500;
    c->val_slices = 64;
    c->max_bad = 5;
    c->panels = 1;
}

const ms_mae_run_plan *ms_mae_run_plan_get(const ms_mae_run *r) { return &r->plan; }

/* ---- checkpoints ----------------------------------------------------------------------------------------- */

/* Loads the tensors of ps whose names start with prefix (NULL: all) from the file; every one must be there. tv:
 * its BatchNorm counter too (the largest num_batches_tracked, 0 when the file has none). */
static ms_status load_params_from(ms_params *ps, const char *path, const char *prefix, ms_tinyvit *tv)
{
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status rc = ms_sd_load(path, &sd);
    if (!rc) {
        rc = ms_params_load_prefix(ps, &sd, prefix);
        if (rc) ms_error_prefix("%s", path);
    }
    if (!rc && tv) {
        tv->bn_batches = 0;
        for (int i = 0; i < sd.n; i++) {
            const ms_sd_entry *e = &sd.e[i];
            if (e->t.dtype == MS_DTYPE_I64 && ms_tensor_numel(&e->t) == 1 &&
                ms_str_ends_with(e->name, ".num_batches_tracked") && *(const int64_t *)e->t.data > tv->bn_batches)
                tv->bn_batches = *(const int64_t *)e->t.data;
        }
    }
    ms_sd_free(&sd);
    return rc;
}

ms_status ms_mae_run_state_to_sd(const ms_mae_run *r, ms_state_dict *model, ms_state_dict *optim)
{
    if (model) {
        size_t np = strlen(r->cfg.enc_prefix);
        for (int i = 0; i < r->eps->n; i++) {
            const ms_param *q = &r->eps->p[i];
            if (strncmp(q->name, r->cfg.enc_prefix, np)) continue;
            float *h = malloc((size_t)q->numel * 4);
            MS_FAIL_IF(!h, MS_ENOMEM, "out of memory");
            ms_status rc = ms_dev_to_host(r->eps->dev, h, r->eps->data + q->off, (size_t)q->numel * 4);
            if (!rc) rc = ms_sd_add(model, q->name, MS_DTYPE_F32, q->shape, q->ndim, h);
            free(h);
            if (!rc && r->tv && ms_str_ends_with(q->name, ".running_var")) {
                /* TinyViT: each BatchNorm's counter after its running_var, as MobileSAM's state dicts have it */
                char k[MS_PARAM_NAME_MAX + 32];
                const int64_t one[1] = {1};
                snprintf(k, sizeof k, "%.*snum_batches_tracked", (int)(strlen(q->name) - strlen("running_var")),
                         q->name);
                rc = ms_sd_add(model, k, MS_DTYPE_I64, one, 0, &r->tv->bn_batches);
            }
            if (rc) return rc;
        }
        MS_TRY(ms_params_to_sd(&r->dec_ps, model));
    }
    if (optim) {
        MS_TRY(ms_optimizer_moments_to_sd(&r->oe, optim));
        MS_TRY(ms_optimizer_moments_to_sd(&r->od, optim));
    }
    return MS_OK;
}

static ms_status save_model(const char *dir, const ms_mae_run *r)
{
    char p[MS_PATH_MAX];
    MS_TRY(ms_path_join(p, dir, "model.safetensors"));
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status rc = ms_mae_run_state_to_sd(r, &sd, NULL);
    if (!rc) rc = ms_sd_save(p, &sd);
    ms_sd_free(&sd);
    return rc;
}

static const char *const opt_tags[2] = {"encoder", "decoder"};

/* The files of a checkpoint into its step directory dir (rank 0; DONE comes after every rank's part). */
static ms_status write_checkpoint(void *ctx, const char *dir)
{
    ms_mae_run *r = ctx;
    const train_state *ts = &r->ts;
    char p[MS_PATH_MAX];
    int zero_world = r->oe.dist ? r->world : 0;
    ms_optimizer *opts[2] = {&r->oe, &r->od};
    MS_TRY(save_model(dir, r));
    if (!zero_world) MS_TRY(ms_optimizers_save(opts, opt_tags, 2, dir));
    char js[2048];
    int n = snprintf(js, sizeof js,
                     "{\"step\": %lld, \"opt_steps\": %lld, \"skipped\": %lld, \"bad_in_row\": %lld, \"lr_scale\": %.17g,\n"
                     " \"adam_step_encoder\": %lld, \"adam_step_decoder\": %lld, \"zero_world\": %d,\n"
                     " \"loader\": {\"seed\": %llu, \"epoch\": %llu, \"step\": %llu, \"n_records\": %llu, "
                     "\"global_batch\": %u, \"world\": %u, \"skipped\": %llu}}\n",
                     (long long)ts->step, (long long)ts->opt_steps, (long long)ts->skipped, (long long)ts->bad_in_row,
                     ts->lr_scale, (long long)r->oe.step, (long long)r->od.step, zero_world,
                     (unsigned long long)ts->loader.seed,
                     (unsigned long long)ts->loader.epoch, (unsigned long long)ts->loader.step,
                     (unsigned long long)ts->loader.n_records, ts->loader.global_batch, ts->loader.world,
                     (unsigned long long)ts->loader.skipped);
    MS_TRY(ms_path_join(p, dir, "state.json"));
    MS_TRY(ms_write_file_atomic(p, js, (size_t)n));
    MS_TRY(ms_path_join(p, dir, "loader_state.bin")); /* the loader's fixed-width resume struct, as is */
    MS_TRY(ms_write_file_atomic(p, &ts->loader, sizeof ts->loader));
    MS_TRY(ms_path_join(p, dir, "config.json"));
    return ms_write_file_atomic(p, r->config_json, strlen(r->config_json));
}

static ms_status write_shard(void *ctx, const char *dir)
{
    ms_mae_run *r = ctx;
    ms_optimizer *opts[2] = {&r->oe, &r->od};
    return ms_optimizers_save(opts, opt_tags, 2, dir);
}

/* With ZeRO-1 every rank writes its optimizer shard; rank 0 the rest, DONE after all (ms_ckpt_dir_save). */
static ms_status save_checkpoint(ms_mae_run *r)
{
    MS_TRY(ms_ckpt_dir_save(r->cfg.out, r->ts.step, r->cfg.dist, r->oe.dist ? write_shard : NULL, write_checkpoint, r,
                            r->cfg.keep_last));
    r->saved_step = r->ts.step;
    return MS_OK;
}
static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* The stores' normalisation is the one thing a resume must not change (the others were never compared): a
 * checkpoint's config.json without "intensity" was written with the stores' own. */
static ms_status check_resume_intensity(const ms_mae_run *r, const char *dir)
{
    char p[MS_PATH_MAX], a[64], b[64];
    MS_TRY(ms_path_join(p, dir, "config.json"));
    cJSON *j;
    MS_TRY(ms_read_json(p, 1 << 20, &j));
    ms_norm_choice was;
    ms_norm_choice_from_json(j, &was);
    cJSON_Delete(j);
    MS_FAIL_IF(!ms_norm_choice_equal(&was, &r->cfg.intensity), MS_EINVAL,
               "%s: the run read its stores with %s, not %s: give the same --intensity with --resume", p,
               ms_norm_choice_str(&was, a, sizeof a), ms_norm_choice_str(&r->cfg.intensity, b, sizeof b));
    return MS_OK;
}

static ms_status load_checkpoint(ms_mae_run *r, const char *dir)
{
    train_state *ts = &r->ts;
    char p[MS_PATH_MAX];
    MS_TRY(ms_path_join(p, dir, "model.safetensors"));
    MS_TRY(load_params_from(r->eps, p, r->cfg.enc_prefix, r->tv));
    MS_TRY(load_params_from(&r->dec_ps, p, NULL, NULL));
    MS_TRY(ms_path_join(p, dir, "state.json"));
    cJSON *j;
    MS_TRY(ms_read_json(p, 1 << 20, &j));
    int zero_world = (int)jnum(j, "zero_world");
    ms_optimizer *opts[2] = {&r->oe, &r->od};
    /* whole or sharded, each optimizer takes what it keeps: a resume may change the ranks and --zero1 */
    ms_status rc = ms_optimizers_load(opts, opt_tags, 2, dir, zero_world);
    if (rc) {
        cJSON_Delete(j);
        return rc;
    }
    ts->step = (int64_t)jnum(j, "step");
    ts->opt_steps = (int64_t)jnum(j, "opt_steps");
    ts->skipped = (int64_t)jnum(j, "skipped");
    ts->bad_in_row = (int64_t)jnum(j, "bad_in_row");
    ts->lr_scale = jnum(j, "lr_scale");
    r->oe.step = (int64_t)jnum(j, "adam_step_encoder");
    r->od.step = (int64_t)jnum(j, "adam_step_decoder");
    cJSON_Delete(j);
    MS_FAIL_IF(!ts->lr_scale, MS_EFORMAT, "%s: incomplete state", p);
    MS_TRY(ms_path_join(p, dir, "loader_state.bin"));
    char *buf;
    size_t len;
    MS_TRY(ms_read_file(p, 4096, &buf, &len));
    if (len != sizeof ts->loader) {
        free(buf);
        return ms_error(MS_EFORMAT, "%s: %zu bytes, expected %zu", p, len, sizeof ts->loader);
    }
    memcpy(&ts->loader, buf, len);
    free(buf);
    r->saved_step = ts->step;
    return MS_OK;
}

ms_status ms_mae_run_save(ms_mae_run *r)
{
    if (r->saved_step == r->ts.step) return MS_OK;
    return save_checkpoint(r);
}

/* ---- validation -------------------------------------------------------------------------------------------- */

/* The gray [0,1] targets of the first n samples of a batch (the padding outside each slice's frame is 0). */
static void batch_to_gray(const ms_prep_config *pc, const ms_batch *bt, int n, float *gray)
{
    size_t SS = (size_t)pc->size * pc->size;
    for (int b = 0; b < n; b++)
        ms_prep_to_gray(pc, bt->image + (size_t)b * bt->channels * SS, bt->height ? bt->height[b] : pc->size,
                        bt->width ? bt->width[b] : pc->size, gray + (size_t)b * SS);
}

/* input | masked | reconstruction | reconstruction with the visible patches pasted back, one row per sample */
static ms_status write_panel(const ms_mae_run *r, const char *path, int n)
{
    int S = r->S, p = S / r->g, g = r->g, W = 4 * S, H = n * S;
    uint8_t *img = calloc((size_t)W * H, 1);
    MS_FAIL_IF(!img, MS_ENOMEM, "out of memory");
    for (int b = 0; b < n; b++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                size_t i = ((size_t)b * S + y) * S + x;
                float gr = r->vgray[i], rc = r->recon[i];
                int hidden = r->vmask[(size_t)b * g * g + (y / p) * g + x / p];
                float v[4] = {gr, hidden ? 0.f : gr, rc, hidden ? rc : gr};
                for (int k = 0; k < 4; k++) {
                    float c = v[k] < 0 ? 0 : (v[k] > 1 ? 1 : v[k]);
                    img[((size_t)b * S + y) * W + k * S + x] = (uint8_t)(c * 255.f + 0.5f);
                }
            }
    ms_status rc = ms_png_write_u8(path, img, W, H, 1);
    free(img);
    return rc;
}

/* Reconstruction loss on the fixed held-out slices with fixed masks (keyed by the slice's index in the set), its
 * log line (t = seconds since open), and the PNG panel of the first few. */
static ms_status validate_at(ms_mae_run *r, double t, double *loss)
{
    int S = r->S, B = r->cfg.batch;
    int64_t step = r->ts.step;
    double vsum = 0;
    if (r->tv) r->tv->bn_train = 0; /* validation reads the running statistics and leaves them alone */
    for (int b0 = 0; b0 < r->n_val; b0 += B) {
        int nb = r->n_val - b0 < B ? r->n_val - b0 : B;
        MS_TRY(ms_dev_from_host(r->dev, r->xdev, r->vimg + (size_t)b0 * 3 * S * S, (size_t)nb * 3 * S * S * 4));
        for (int b = 0; b < nb; b++) r->keys[b] = 0x76616cull + (uint64_t)(b0 + b);
        ms_mae_loss l;
        MS_TRY(ms_mae_forward(&r->mae, r->xdev, r->vgray + (size_t)b0 * S * S, nb, r->cfg.seed, r->keys, &l));
        vsum += l.loss * nb;
        if (b0 == 0 && r->cfg.panels && r->rank == 0) {
            MS_TRY(ms_mae_reconstruction(&r->mae, r->vgray, r->recon));
            memcpy(r->vmask, r->mae.mask.masked, (size_t)nb * r->g * r->g);
            char pp[MS_PATH_MAX];
            MS_TRY(ms_path_fmt(pp, "%s/val/step_%08lld.png", r->cfg.out, (long long)step));
            MS_TRY(write_panel(r, pp, nb < 4 ? nb : 4));
        }
    }
    *loss = vsum / r->n_val;
    if (r->rank != 0) return MS_OK;
    char js[512];
    snprintf(js, sizeof js, "{\"step\": %lld, \"epoch\": %.4f, \"split\": \"val\", \"loss\": %.7g, \"t\": %.3f}",
             (long long)step, (double)step / r->plan.steps_per_epoch, *loss, t);
    MS_TRY(ms_runlog_json(&r->lg, js));
    ms_runlog_scalar(&r->lg, "val/loss", step, *loss);
    return MS_OK;
}

ms_status ms_mae_run_validate(ms_mae_run *r, double *loss)
{
    *loss = -1;
    if (!r->n_val) return MS_OK;
    return validate_at(r, ms_now_s() - r->t0, loss);
}

/* ---- open ---------------------------------------------------------------------------------------------------- */

/* The MAE decoder, the gradient buckets (decoder first, then the encoder) and both optimizers. */
static ms_status open_decoder_and_optimizers(ms_mae_run *r, const ms_mae_config *mc)
{
    const ms_mae_run_config *c = &r->cfg;
    MS_TRY(r->tv ? ms_mae_init_tinyvit(&r->mae, r->tv, mc, &r->dec_ps) : ms_mae_init(&r->mae, r->enc, mc, &r->dec_ps));
    MS_TRY(ms_params_alloc(&r->dec_ps, r->dev));
    MS_TRY(ms_params_alloc_grads(&r->dec_ps));
    MS_TRY(ms_mae_decoder_init_weights(&r->mae.dec, c->seed));
    MS_TRY(ms_mae_reserve(&r->mae, r->dev, c->batch));
    ms_grad_sync_init(&r->gs, c->dist, c->bucket_bytes);
    MS_TRY(ms_grad_sync_add(&r->gs, &r->dec_ps));
    MS_TRY(ms_grad_sync_add(&r->gs, r->eps));
    if (r->world > 1 && r->enc) ms_sam_encoder_set_grads_hook(r->enc, ms_grad_sync_ready, &r->gs, 0);
    MS_TRY(ms_optimizer_init(&r->oe, r->eps, 0.9f, 0.95f, 1e-8f, (float)c->weight_decay));
    MS_TRY(ms_optimizer_init(&r->od, &r->dec_ps, 0.9f, 0.95f, 1e-8f, (float)c->weight_decay));
    if (c->zero1) MS_TRY(ms_optimizer_shard(&r->oe, c->dist));
    return c->zero1 ? ms_optimizer_shard(&r->od, c->dist) : MS_OK;
}

static ms_mae_config mae_config_of(const ms_mae_run_config *c)
{
    ms_mae_config mc = {.mask_ratio = (float)c->mask_ratio, .sampling = c->sampling, .norm_pix = c->norm_pix,
                        .fg_threshold = (float)c->fg_threshold,
                        .dec = {.dim = c->dec_dim, .depth = c->dec_depth, .n_heads = c->dec_heads, .target_ch = 1}};
    return mc;
}

/* TinyViT at its own input size: every tensor under the prefix trains but the BatchNorm running statistics
 * (buffers), the classifier and the neck, which MAE never runs (they are exported as they came). No gradient hook:
 * the buckets all start when the backward is done (ms_grad_sync_finish). */
static ms_status open_model_tinyvit(ms_mae_run *r)
{
    const ms_mae_run_config *c = &r->cfg;
    ms_tinyvit *tv = r->tv;
    ms_tinyvit_free(tv);
    MS_FAIL_IF(c->input_size && c->input_size != tv->cfg.img_size, MS_EUNSUPPORTED,
               "pretrain: TinyViT runs at its own input size %d only (--input-size %d)", tv->cfg.img_size,
               c->input_size);
    r->S = tv->cfg.img_size;
    r->g = ms_tinyvit_grid(&tv->cfg, 3);
    ms_params_set_trainable(r->eps, "", 0);
    ms_params_set_trainable(r->eps, c->enc_prefix, 1);
    static const char *const frozen[] = {"norm_head.", "head.", "neck."};
    for (int i = 0; i < 3; i++) {
        char pre[MS_PARAM_NAME_MAX];
        MS_FAIL_IF(snprintf(pre, sizeof pre, "%s%s", c->enc_prefix, frozen[i]) >= (int)sizeof pre, MS_EINVAL,
                   "pretrain: encoder prefix too long");
        ms_params_set_trainable(r->eps, pre, 0);
    }
    MS_TRY(ms_params_alloc_grads(r->eps));
    MS_TRY(ms_tinyvit_reserve(tv, c->batch, 1));
    ms_mae_config mc = mae_config_of(c);
    return open_decoder_and_optimizers(r, &mc);
}

/* The encoder trains (every other tensor of its block stays frozen); the MAE decoder and both optimizers. */
static ms_status open_model(ms_mae_run *r)
{
    const ms_mae_run_config *c = &r->cfg;
    ms_sam_encoder *enc = r->enc;
    if (r->tv) return open_model_tinyvit(r);
    /* another input size than the checkpoint's: position tables interpolated from the masters in every forward */
    ms_sam_encoder_free(enc);
    if (c->input_size) MS_TRY(ms_sam_encoder_set_input_size(enc, c->input_size));
    r->S = ms_sam_enc_run_size(enc);
    r->g = r->S / enc->cfg.patch;
    ms_params_set_trainable(r->eps, "", 0);
    ms_params_set_trainable(r->eps, c->enc_prefix, 1);
    /* MAE never runs the neck: frozen, so that weight decay does not shrink it either (it is exported as it came) */
    char neck[MS_PARAM_NAME_MAX];
    MS_FAIL_IF(snprintf(neck, sizeof neck, "%sneck.", c->enc_prefix) >= (int)sizeof neck, MS_EINVAL,
               "%s: encoder prefix too long", c->enc_prefix);
    ms_params_set_trainable(r->eps, neck, 0);
    MS_TRY(ms_params_alloc_grads(r->eps));
    /* MAE runs the encoder on the visible tokens only: its block buffers for those rows (the setting is for this
     * reserve alone; a later reserve by the caller is dense again) */
    ms_sam_encoder_set_recompute(enc, c->recompute);
    ms_sam_encoder_set_subset_only(enc, ms_mae_mask_keep_target(r->g, (float)c->mask_ratio));
    ms_status rc = ms_sam_encoder_reserve(enc, r->dev, c->batch, 1);
    ms_sam_encoder_set_subset_only(enc, 0);
    MS_TRY(rc);
    /* the backward finishes the decoder first, then the encoder block by block from the last */
    ms_mae_config mc = mae_config_of(c);
    return open_decoder_and_optimizers(r, &mc);
}

/* The stores, each split by volume: the loader's configuration over the training part. */
static ms_status open_stores(ms_mae_run *r)
{
    const ms_mae_run_config *c = &r->cfg;
    ms_loader_config *lc = &r->lc;
    int threads = c->workers ? c->workers : r->dev->n_threads;
    ms_loader_config_default(lc);
    lc->n_stores = c->n_stores;
    for (int i = 0; i < c->n_stores; i++) {
        MS_TRY(ms_store_open(c->stores[i], 4 + threads, &r->stores[i]));
        MS_TRY(ms_store_norm_apply(r->stores[i], c->stores[i], &c->intensity));
        ms_split_spec sp;
        ms_split_spec_default(&sp);
        sp.seed = c->seed;
        sp.val_fraction = c->val_slices > 0 ? 0.1 : 0;
        sp.exclude = c->exclude[i];
        int single = 0;
        MS_TRY(ms_loader_select(r->stores[i], &sp, &r->train_sel[i], c->val_slices > 0 ? &r->val_sel[i] : NULL,
                                &single));
        if (single) r->plan.single_volume |= 1u << i;
        lc->stores[i] = r->stores[i];
        lc->selection[i] = &r->train_sel[i];
    }
    lc->seed = c->seed;
    lc->global_batch = c->batch * r->world; /* each rank reads its share of every global batch */
    lc->rank = r->rank;
    lc->world = r->world;
    lc->n_threads = threads;
    lc->pinned = r->dev->kind == MS_DEV_CUDA;
    ms_prep_config_default(&lc->prep, r->S);
    lc->augment = 1;
    ms_aug_config_mae(&lc->aug);
    if (c->input_on_device) lc->output = MS_LOAD_NATIVE_AUG;
    return MS_OK;
}

/* Moves rows (2k + 1) n / 8, k < 4, to the front: the panel shows the first four validation slices, and a held-out
 * volume's first slices are its edge (the skull's top, the neck), where a reconstruction shows nothing. */
static void panel_rows_first(ms_mae_run *r)
{
    size_t img = (size_t)3 * r->S * r->S, gray = (size_t)r->S * r->S;
    if (r->n_val <= 4) return;
    for (int k = 0; k < 4; k++) {
        int src = (int)(((int64_t)2 * k + 1) * r->n_val / 8); /* >= k and increasing for n_val > 4 */
        if (src == k) continue;
        for (size_t e = 0; e < img; e++) {
            float t = r->vimg[k * img + e];
            r->vimg[k * img + e] = r->vimg[src * img + e];
            r->vimg[src * img + e] = t;
        }
        for (size_t e = 0; e < gray; e++) {
            float t = r->vgray[k * gray + e];
            r->vgray[k * gray + e] = r->vgray[src * gray + e];
            r->vgray[src * gray + e] = t;
        }
    }
}

/* val_slices held-out slices spread evenly over each store's held-out part (a store's share of them in proportion to
 * its held-out slices), unaugmented, with their gray targets. */
static ms_status open_validation(ms_mae_run *r)
{
    const ms_mae_run_config *c = &r->cfg;
    if (c->val_slices <= 0 || r->val_sel[0].n == 0) return MS_OK;
    int S = r->S;
    ms_loader_config vc = r->lc;
    vc.resume = NULL;
    uint64_t total = 0;
    for (int i = 0; i < c->n_stores; i++) total += r->val_sel[i].n;
    for (int i = 0; i < c->n_stores; i++) {
        /* rounded up, so that the shares add up to at least val_slices; the loop below takes val_slices */
        uint64_t share = (r->val_sel[i].n * (uint64_t)c->val_slices + total - 1) / total;
        ms_selection spread;
        MS_TRY(ms_selection_spread(&r->val_sel[i], share, &spread));
        ms_selection_free(&r->val_sel[i]);
        r->val_sel[i] = spread;
        vc.selection[i] = &r->val_sel[i];
    }
    vc.shuffle = 0;
    vc.augment = 0;
    vc.n_epochs = 1;
    vc.drop_last = 0;
    vc.output = MS_LOAD_MODEL; /* a handful of slices, read once */
    r->vimg = malloc((size_t)c->val_slices * 3 * S * S * sizeof(float));
    r->vgray = malloc((size_t)c->val_slices * S * S * sizeof(float));
    MS_FAIL_IF(!r->vimg || !r->vgray, MS_ENOMEM, "out of memory");
    ms_loader *vl;
    MS_TRY(ms_loader_open(&vc, &vl));
    const ms_batch *vb;
    ms_status rc = MS_OK;
    while (r->n_val < c->val_slices && !(rc = ms_loader_next(vl, &vb)) && vb) {
        int take = vb->n < c->val_slices - r->n_val ? vb->n : c->val_slices - r->n_val;
        memcpy(r->vimg + (size_t)r->n_val * 3 * S * S, vb->image, (size_t)take * 3 * S * S * sizeof(float));
        batch_to_gray(&r->lc.prep, vb, take, r->vgray + (size_t)r->n_val * S * S);
        r->n_val += take;
    }
    ms_loader_close(vl);
    if (!rc) panel_rows_first(r);
    r->plan.n_val = r->n_val;
    return rc;
}

/* RUN/config.json: what the options decided (export-weights rebuilds the model from it). */
static ms_status write_config(ms_mae_run *r)
{
    const ms_mae_run_config *c = &r->cfg;
    const ms_mae_run_plan *pl = &r->plan;
    cJSON *cj = cJSON_CreateObject();
    cJSON_AddStringToObject(cj, "command", "pretrain");
    cJSON_AddStringToObject(cj, "model", c->model);
    cJSON_AddStringToObject(cj, "ckpt", c->ckpt ? c->ckpt : "");
    cJSON_AddStringToObject(cj, "init", c->init ? c->init : "checkpoint");
    cJSON *sa = cJSON_AddArrayToObject(cj, "stores");
    for (int i = 0; i < c->n_stores; i++) cJSON_AddItemToArray(sa, cJSON_CreateString(c->stores[i]));
    cJSON_AddNumberToObject(cj, "input_size", r->S);
    cJSON_AddStringToObject(cj, "resize", "longest");
    cJSON_AddStringToObject(cj, "norm", "sam");
    ms_norm_choice_to_json(&c->intensity, cj);
    cJSON_AddNumberToObject(cj, "batch_size", c->batch);
    cJSON_AddNumberToObject(cj, "accum_iter", c->accum);
    cJSON_AddNumberToObject(cj, "world_size", r->world);
    cJSON_AddNumberToObject(cj, "zero1", c->zero1 && r->world > 1);
    cJSON_AddNumberToObject(cj, "global_batch", (double)c->batch * c->accum * r->world);
    cJSON_AddNumberToObject(cj, "max_steps", (double)pl->total);
    cJSON_AddNumberToObject(cj, "lr", pl->lr);
    cJSON_AddNumberToObject(cj, "blr", c->blr);
    cJSON_AddNumberToObject(cj, "min_lr", c->min_lr);
    cJSON_AddNumberToObject(cj, "warmup_steps", (double)pl->warmup);
    cJSON_AddNumberToObject(cj, "weight_decay", c->weight_decay);
    cJSON_AddNumberToObject(cj, "mask_ratio", c->mask_ratio);
    cJSON_AddStringToObject(cj, "mask_sampling", c->sampling == MS_MASK_RANDOM ? "random" : "stratified");
    cJSON_AddNumberToObject(cj, "decoder_dim", c->dec_dim);
    cJSON_AddNumberToObject(cj, "decoder_depth", c->dec_depth);
    cJSON_AddNumberToObject(cj, "decoder_heads", c->dec_heads);
    cJSON_AddNumberToObject(cj, "norm_pix_loss", c->norm_pix);
    cJSON_AddNumberToObject(cj, "freeze_encoder_epochs", c->freeze_epochs);
    cJSON_AddNumberToObject(cj, "clip_grad", c->clip);
    cJSON_AddNumberToObject(cj, "seed", (double)(int64_t)c->seed); /* the CLI's seed is signed */
    /* what this process computes with; a resume may change both (checkpoints are fp32 and device-independent) */
    cJSON_AddStringToObject(cj, "device", r->dev->kind == MS_DEV_CUDA ? "cuda" : "cpu");
    cJSON_AddStringToObject(cj, "precision", ms_precision_name(r->dev->precision));
    r->config_json = cJSON_Print(cj);
    cJSON_Delete(cj);
    MS_FAIL_IF(!r->config_json, MS_ENOMEM, "out of memory");
    char p[MS_PATH_MAX];
    MS_TRY(ms_path_join(p, c->out, "val"));
    MS_TRY(ms_mkdirs(p));
    MS_TRY(ms_path_join(p, c->out, "config.json"));
    return ms_write_file_atomic(p, r->config_json, strlen(r->config_json));
}

static ms_status check_config(const ms_mae_run_config *c)
{
    MS_FAIL_IF(!c->out || !c->model || !c->enc_prefix, MS_EINVAL, "pretrain: no run directory or model name");
    MS_FAIL_IF(c->n_stores < 1 || c->n_stores > MS_ORDER_MAX_SOURCES, MS_EINVAL, "pretrain: %d stores (1 to %d)",
               c->n_stores, MS_ORDER_MAX_SOURCES);
    MS_FAIL_IF(c->batch < 1 || c->accum < 1, MS_EINVAL, "pretrain: batch %d, accumulation %d", c->batch, c->accum);
    MS_FAIL_IF(c->save_every < 1 || (c->val_slices > 0 && c->val_every < 1), MS_EINVAL,
               "pretrain: save every %d, validate every %d steps: must be >= 1", c->save_every, c->val_every);
    return MS_OK;
}

static ms_status open_run(ms_mae_run *r)
{
    const ms_mae_run_config *c = &r->cfg;
    ms_mae_run_plan *pl = &r->plan;
    MS_TRY(open_model(r));
    MS_TRY(open_stores(r));
    r->ts.lr_scale = 1.0;
    r->saved_step = -1;
    if (c->resume) {
        int64_t ckstep;
        MS_TRY(ms_ckpt_dir_latest(c->resume, &ckstep, r->resumed));
        MS_TRY(check_resume_intensity(r, r->resumed));
        MS_TRY(load_checkpoint(r, r->resumed));
        if (strcmp(c->resume, c->out)) r->saved_step = -1; /* a checkpoint elsewhere: this RUN/ has none yet */
        r->lc.resume = &r->ts.loader;
        pl->resumed_from = r->resumed;
    }
    MS_TRY(ms_loader_open(&r->lc, &r->loader));
    ms_loader_state_get(r->loader, &r->ts.loader); /* a stop before the first step saves a resumable state */
    pl->input_size = r->S;
    pl->steps_per_epoch = (int64_t)ms_loader_steps_per_epoch(r->loader) / c->accum;
    if (pl->steps_per_epoch < 1) pl->steps_per_epoch = 1;
    pl->total = c->max_steps ? c->max_steps : (int64_t)c->epochs * pl->steps_per_epoch;
    pl->warmup = c->warmup >= 0 ? c->warmup : pl->total / 20;
    r->eff_batch = (double)c->batch * c->accum * r->world;
    pl->world = r->world;
    pl->global_batch = c->batch * c->accum * r->world;
    pl->lr = c->lr > 0 ? c->lr : c->blr * r->eff_batch / 256.0;
    pl->freeze_steps = (int64_t)c->freeze_epochs * pl->steps_per_epoch;
    pl->start_step = r->ts.step;
    MS_TRY(open_validation(r));
    if (r->rank == 0) {
        MS_TRY(ms_run_dir_prepare(c->out, r->mode)); /* the first write into RUN/ */
        MS_TRY(write_config(r));
        MS_TRY(ms_runlog_open(&r->lg, c->out));
        /* what was logged after the checkpoint is superseded; a run resumed at step 0 validates step 0 again */
        if (r->mode == MS_RUN_RESUME) MS_TRY(ms_runlog_rewind(&r->lg, r->ts.step ? r->ts.step + 1 : 0));
        /* a kill may have come between a checkpoint's DONE and the prune, or in the middle of the prune: finish
         * it, so RUN/ holds what an uninterrupted run holds even when no further checkpoint is written */
        if (r->mode == MS_RUN_RESUME) MS_TRY(ms_ckpt_dir_prune(c->out, c->keep_last, r->ts.step));
    }
    int S = r->S, nb = c->batch > c->val_slices ? c->batch : c->val_slices;
    MS_TRY(ms_dev_alloc(r->dev, (size_t)c->batch * 3 * S * S * sizeof(float), (void **)&r->xdev));
    r->gray = malloc((size_t)c->batch * S * S * sizeof(float));
    r->keys = malloc((size_t)c->batch * sizeof(uint64_t));
    r->recon = malloc((size_t)nb * S * S * sizeof(float));
    r->vmask = malloc((size_t)nb * r->g * r->g);
    MS_FAIL_IF(!r->gray || !r->keys || !r->recon || !r->vmask, MS_ENOMEM, "out of memory");
    r->nan_left = c->nan_count;
    r->sg.enabled = c->cuda_graphs && r->dev->kind == MS_DEV_CUDA && r->world == 1 && !r->tv;
    r->t0 = ms_now_s();
    if (r->n_val && r->ts.step == 0) { /* the starting point of the curve */
        MS_TRY(validate_at(r, 0, &pl->val_loss));
        pl->validated = 1;
    }
    return MS_OK;
}

ms_status ms_mae_run_open(const ms_mae_run_config *cfg, ms_device *dev, ms_sam_encoder *enc, ms_mae_run **out)
{
    ms_mae_encoder e = {.vit = enc};
    return ms_mae_run_open_encoder(cfg, dev, &e, out);
}

ms_status ms_mae_run_open_encoder(const ms_mae_run_config *cfg, ms_device *dev, const ms_mae_encoder *enc,
                                  ms_mae_run **out)
{
    *out = NULL;
    MS_FAIL_IF(!enc->vit == !enc->tv, MS_EINVAL, "pretrain: give exactly one encoder (SAM's ViT or TinyViT)");
    MS_TRY(check_config(cfg));
    ms_run_mode mode;
    MS_TRY(ms_run_mode_of(cfg->out, cfg->resume, cfg->overwrite, &mode));
    /* refused before anything is loaded; rank 0 alone writes RUN/, so the others would see its files */
    if (ms_dist_rank(cfg->dist) == 0) MS_TRY(ms_run_dir_check(cfg->out, mode));
    ms_mae_run *r = calloc(1, sizeof *r);
    MS_FAIL_IF(!r, MS_ENOMEM, "out of memory");
    r->cfg = *cfg;
    r->rank = ms_dist_rank(cfg->dist);
    r->world = ms_dist_world(cfg->dist);
    r->mode = mode;
    r->dev = dev;
    r->enc = enc->vit;
    r->tv = enc->tv;
    r->eps = enc->vit ? enc->vit->ps : enc->tv->ps;
    ms_params_init(&r->dec_ps);
    ms_status rc = open_run(r);
    if (rc) {
        ms_mae_run_close(r);
        return rc;
    }
    *out = r;
    return MS_OK;
}

/* ---- step ------------------------------------------------------------------------------------------------------ */

typedef struct step_loss {
    int finite;
    double loss, fgsum, bgsum;
    int fgn, bgn;
} step_loss;

/* The MAE backward, through a CUDA graph where r->sg allows: its signature is what its launches depend on that a
 * step may change (docs/PERFORMANCE-gpu-notes.md §CUDA graphs). */
typedef struct backward_call {
    ms_mae *m;
    float scale;
    int frozen;
} backward_call;

static ms_status backward_fn(void *ctx)
{
    backward_call *b = ctx;
    return ms_mae_backward(b->m, b->scale, b->frozen);
}

static ms_status backward(ms_mae_run *r, float scale, int frozen)
{
    backward_call b = {&r->mae, scale, frozen};
    if (!r->sg.enabled) return backward_fn(&b);
    const ms_mae_mask *mk = &r->mae.mask;
    int B = r->mae.batch, nw1 = mk->n_windows + 1;
    ms_step_sig sig = {{B, r->mae.n_vis, frozen, 0, 0, 0, r->dev->precision, 0}};
    memcpy(&sig.v[3], &scale, sizeof scale);
    sig.v[4] = ms_step_sig_hash(ms_step_sig_hash(0, mk->win_keep_off, (int64_t)B * nw1), mk->win_pad_off,
                                (int64_t)B * nw1);
    sig.v[5] = ms_step_sig_hash(ms_step_sig_hash(0, (const int32_t *)mk->n_keep, B), (const int32_t *)mk->n_pad,
                                B);
    return ms_step_graph_run(&r->sg, r->dev, &sig, backward_fn, &b);
}

/* input_on_device: the native integers and the crop/flip parameters up, the model input made there by the prep op
 * (what the loader's MS_LOAD_MODEL path would have shipped, bit for bit). The MAE targets are still computed on the
 * host (ms_mae_forward takes the gray image there): channel 0 comes back, one plane per sample. */
static ms_status input_on_device(ms_mae_run *r, const ms_batch *bt)
{
    const ms_prep_config *pc = &r->lc.prep;
    const size_t SS = (size_t)r->S * r->S, nbytes = (size_t)bt->n * bt->native_h * bt->native_w * sizeof(uint16_t);
    if (nbytes > r->ncap) { /* the batch shape is the stores' largest slice: grows once */
        ms_dev_free(r->dev, r->ndev);
        r->ndev = NULL;
        r->ncap = 0;
        MS_TRY(ms_dev_alloc(r->dev, nbytes, (void **)&r->ndev));
        r->ncap = nbytes;
    }
    if (!r->sdev) MS_TRY(ms_dev_alloc(r->dev, (size_t)r->cfg.batch * sizeof(ms_prep_sample), (void **)&r->sdev));
    MS_TRY(ms_dev_from_host(r->dev, r->ndev, bt->native, nbytes));
    MS_TRY(ms_dev_from_host(r->dev, r->sdev, bt->prep, (size_t)bt->n * sizeof(ms_prep_sample)));
    MS_TRY(ms_prep_native(r->dev, r->xdev, r->ndev, r->sdev, bt->n, bt->native_h, bt->native_w, pc->size, 3,
                          pc->resize, pc->norm));
    for (int b = 0; b < bt->n; b++) {
        float *g = r->gray + (size_t)b * SS;
        MS_TRY(ms_dev_to_host(r->dev, g, r->xdev + (size_t)b * 3 * SS, SS * sizeof(float)));
        ms_prep_to_gray(pc, g, bt->height[b], bt->width[b], g); /* elementwise: in place is fine */
    }
    return MS_OK;
}

/* accum_iter loader batches through the MAE forward and backward; the gradients accumulate loss / accum_iter. A
 * non-finite loss contributes nothing (and fails the step), the remaining batches are still consumed. */
static ms_status accumulate(ms_mae_run *r, int frozen, step_loss *sl)
{
    const ms_mae_run_config *c = &r->cfg;
    size_t SS = (size_t)r->S * r->S;
    memset(sl, 0, sizeof *sl);
    sl->finite = 1;
    for (int a = 0; a < c->accum; a++) {
        const ms_batch *bt;
        MS_TRY(ms_loader_next(r->loader, &bt));
        MS_FAIL_IF(!bt, MS_EINVAL, "pretrain: the loader ran out of data");
        if (bt->native) MS_TRY(input_on_device(r, bt));
        else {
            MS_TRY(ms_dev_from_host(r->dev, r->xdev, bt->image, (size_t)bt->n * 3 * SS * sizeof(float)));
            batch_to_gray(&r->lc.prep, bt, bt->n, r->gray);
        }
        for (int b = 0; b < bt->n; b++) r->keys[b] = bt->epoch * 0x9e3779b97f4a7c15ull + bt->position[b];
        ms_mae_loss l;
        if (r->tv) r->tv->bn_train = !frozen; /* a frozen encoder keeps its running statistics */
        MS_TRY(ms_mae_forward(&r->mae, r->xdev, r->gray, bt->n, c->seed, r->keys, &l));
        if (r->nan_left > 0 && r->ts.step + 1 >= c->nan_at) { l.loss = NAN; r->nan_left--; }
        if (!isfinite(l.loss)) { sl->finite = 0; continue; }
        if (a == c->accum - 1) ms_grad_sync_arm(&r->gs); /* the step's last backward: reduce as it goes */
        sl->loss += l.loss / c->accum;
        if (l.n_fg) { sl->fgsum += l.loss_fg * l.n_fg; sl->fgn += l.n_fg; }
        if (l.n_bg) { sl->bgsum += l.loss_bg * l.n_bg; sl->bgn += l.n_bg; }
        MS_TRY(backward(r, 1.0f / ((float)c->accum * r->world), frozen)); /* ranks' sum = mean */
    }
    return MS_OK;
}

/* A skipped step; max_bad in a row roll back to the newest checkpoint at half the learning rate. */
static ms_status skip_step(ms_mae_run *r, ms_mae_step_info *info)
{
    train_state *ts = &r->ts;
    ts->skipped++;
    ts->bad_in_row++;
    info->bad_step = ts->step;
    info->bad_in_row = ts->bad_in_row;
    if (ts->bad_in_row >= r->cfg.max_bad) {
        double scale = ts->lr_scale * 0.5;
        int64_t skipped = ts->skipped, ckstep;
        MS_TRY(ms_ckpt_dir_latest(r->cfg.out, &ckstep, r->ckdir));
        MS_TRY(load_checkpoint(r, r->ckdir));
        ts->lr_scale = scale;
        ts->skipped = skipped;
        ts->bad_in_row = 0;
        ms_loader_close(r->loader);
        r->loader = NULL;
        r->lc.resume = &ts->loader;
        MS_TRY(ms_loader_open(&r->lc, &r->loader));
        info->rolled_back_to = r->ckdir;
    }
    MS_TRY(ms_params_zero_grads(r->eps));
    return ms_params_zero_grads(&r->dec_ps);
}

/* What the ranks must agree on after the gradients: one non-finite loss fails the step everywhere, the losses
 * logged are the means over ranks, and a stop asked of any rank stops them all after this step. */
static ms_status agree(ms_mae_run *r, step_loss *sl, ms_mae_step_info *info)
{
    int asked = r->cfg.stop && *r->cfg.stop;
    info->buckets_early = r->gs.buckets_early;
    info->comm_wait_s = r->comm_wait_s;
    if (r->world == 1) {
        info->stop = asked;
        return MS_OK;
    }
    double v[7] = {!sl->finite, sl->loss, sl->fgsum, sl->fgn, sl->bgsum, sl->bgn, asked};
    MS_TRY(ms_dist_allreduce_host(r->cfg.dist, v, 7, 0));
    sl->finite = v[0] == 0;
    sl->loss = v[1] / r->world;
    sl->fgsum = v[2];
    sl->fgn = (int)v[3];
    sl->bgsum = v[4];
    sl->bgn = (int)v[5];
    info->stop = v[6] > 0;
    return MS_OK;
}

/* The step's log.jsonl line and TensorBoard scalars (rank 0). */
static ms_status log_step(ms_mae_run *r, const step_loss *sl, const ms_mae_step_info *in)
{
    if (r->rank != 0) return MS_OK;
    int64_t step = r->ts.step;
    char js[1024];
    snprintf(js, sizeof js,
             "{\"step\": %lld, \"epoch\": %.4f, \"split\": \"train\", \"loss\": %.7g, \"loss_fg\": %.7g, "
             "\"loss_bg\": %.7g, \"lr\": %.6g, \"grad_norm\": %.6g, \"img_per_s\": %.4g, \"skipped\": %lld, "
             "\"device\": \"%s\", \"precision\": \"%s\", \"t\": %.3f}",
             (long long)step, (double)step / r->plan.steps_per_epoch, sl->loss, sl->fgn ? sl->fgsum / sl->fgn : -1.0,
             sl->bgn ? sl->bgsum / sl->bgn : -1.0, in->lr, in->grad_norm, in->img_per_s, (long long)r->ts.skipped,
             r->dev->kind == MS_DEV_CUDA ? "cuda" : "cpu", ms_precision_name(r->dev->precision), in->elapsed_s);
    MS_TRY(ms_runlog_json(&r->lg, js));
    ms_runlog_scalar(&r->lg, "train/loss", step, sl->loss);
    if (sl->fgn) ms_runlog_scalar(&r->lg, "train/loss_fg", step, sl->fgsum / sl->fgn);
    if (sl->bgn) ms_runlog_scalar(&r->lg, "train/loss_bg", step, sl->bgsum / sl->bgn);
    ms_runlog_scalar(&r->lg, "train/lr", step, in->lr);
    ms_runlog_scalar(&r->lg, "train/grad_norm", step, in->grad_norm);
    ms_runlog_scalar(&r->lg, "train/img_per_s", step, in->img_per_s);
    return MS_OK;
}

/* Several ranks: TinyViT's BatchNorm running statistics, each rank's moving average of its own batches, are
 * replaced by their mean over the ranks (the mean of the moving averages is the moving average of the ranks' mean
 * batch statistics), so every rank and every checkpoint holds the same. */
static ms_status average_bn_stats(ms_mae_run *r)
{
    if (!r->tv || r->world < 2) return MS_OK;
    size_t np = strlen(r->cfg.enc_prefix);
    for (int i = 0; i < r->eps->n; i++) {
        const ms_param *q = &r->eps->p[i];
        if (!q->buffer || strncmp(q->name, r->cfg.enc_prefix, np)) continue;
        float *d = r->eps->data + q->off;
        MS_TRY(ms_dist_allreduce(r->cfg.dist, d, (size_t)q->numel));
        MS_TRY(ms_scale_forward(r->dev, d, d, 1.0f / (float)r->world, q->numel));
    }
    return MS_OK;
}

ms_status ms_mae_run_step(ms_mae_run *r, ms_mae_step_info *info)
{
    const ms_mae_run_config *c = &r->cfg;
    const ms_mae_run_plan *pl = &r->plan;
    train_state *ts = &r->ts;
    memset(info, 0, sizeof *info);
    info->total = pl->total;
    MS_FAIL_IF(ts->step >= pl->total, MS_EBADSTATE, "pretrain: the run is done (%lld steps)", (long long)pl->total);
    int frozen = ts->step < pl->freeze_steps;
    step_loss sl;
    MS_TRY(accumulate(r, frozen, &sl));
    double tw = ms_now_s();
    MS_TRY(ms_grad_sync_finish(&r->gs));
    MS_TRY(average_bn_stats(r));
    r->comm_wait_s += ms_now_s() - tw;
    MS_TRY(agree(r, &sl, info));
    float gnorm = 0;
    float *grads[2] = {r->eps->grad, r->dec_ps.grad};
    int64_t gsizes[2] = {r->eps->numel_trainable, r->dec_ps.numel_trainable};
    if (sl.finite) MS_TRY(ms_clip_grad_norm(r->dev, grads, gsizes, 2, (float)c->clip, &gnorm));
    if (!sl.finite || !isfinite(gnorm)) {
        MS_TRY(skip_step(r, info));
    } else {
        ts->bad_in_row = 0;
        float lr = (float)(ms_lr_at(MS_SCHED_COSINE, ts->step, pl->warmup, pl->total, (float)pl->lr,
                                    (float)c->min_lr) * ts->lr_scale);
        if (!frozen) MS_TRY(ms_optimizer_step(&r->oe, lr, NULL));
        MS_TRY(ms_optimizer_step(&r->od, lr, NULL));
        MS_TRY(ms_params_zero_grads(r->eps));
        MS_TRY(ms_params_zero_grads(&r->dec_ps));
        ts->step++;
        ts->opt_steps++;
        ms_loader_state_get(r->loader, &ts->loader);
        double t = ms_now_s();
        info->updated = 1;
        info->loss = sl.loss;
        info->lr = lr;
        info->grad_norm = gnorm;
        info->elapsed_s = t - r->t0;
        info->img_per_s = (double)(ts->step - pl->start_step) * r->eff_batch / (t - r->t0 + 1e-9);
        info->eta_s = (double)(pl->total - ts->step) * (t - r->t0) / (double)(ts->step - pl->start_step);
        MS_TRY(log_step(r, &sl, info));
        if (r->n_val && (ts->step % c->val_every == 0 || ts->step == pl->total)) {
            MS_TRY(validate_at(r, ms_now_s() - r->t0, &info->val_loss));
            info->validated = 1;
        }
        if (ts->step % c->save_every == 0 || ts->step == pl->total) {
            MS_TRY(save_checkpoint(r));
            info->saved = 1;
        }
    }
    info->step = ts->step;
    info->done = ts->step >= pl->total;
    info->skipped = ts->skipped;
    info->lr_scale = ts->lr_scale;
    return MS_OK;
}

/* ---- export and close ------------------------------------------------------------------------------------------ */

ms_status ms_mae_run_export(ms_mae_run *r)
{
    if (r->rank != 0) return MS_OK;
    ms_state_dict sd;
    ms_sd_init(&sd);
    char p[MS_PATH_MAX];
    ms_status rc = r->cfg.to_sd ? r->cfg.to_sd(r->cfg.to_sd_ctx, &sd) : ms_params_to_sd(r->eps, &sd);
    if (!rc) rc = ms_path_fmt(p, "%s/sam_mri_%s.pth", r->cfg.out, r->cfg.model);
    if (!rc) rc = ms_sd_save(p, &sd);
    if (!rc) rc = ms_path_fmt(p, "%s/sam_mri_%s.safetensors", r->cfg.out, r->cfg.model);
    if (!rc) rc = ms_sd_save(p, &sd);
    ms_sd_free(&sd);
    return rc;
}

void ms_mae_run_close(ms_mae_run *r)
{
    if (!r) return;
    ms_runlog_close(&r->lg);
    if (r->loader) ms_loader_close(r->loader);
    for (int i = 0; i < MS_ORDER_MAX_SOURCES; i++) {
        ms_selection_free(&r->train_sel[i]);
        ms_selection_free(&r->val_sel[i]);
        if (r->stores[i]) ms_store_close(r->stores[i]);
    }
    ms_dev_free(r->dev, r->xdev);
    ms_dev_free(r->dev, r->ndev);
    ms_dev_free(r->dev, r->sdev);
    free(r->gray);
    free(r->vgray);
    free(r->vimg);
    free(r->recon);
    free(r->vmask);
    free(r->keys);
    if (r->config_json) cJSON_free(r->config_json);
    ms_step_graph_free(&r->sg);
    ms_optimizer_free(&r->oe);
    ms_optimizer_free(&r->od);
    ms_mae_free(&r->mae);
    ms_params_free(&r->dec_ps);
    if (r->tv) {
        r->tv->bn_train = 0;
        ms_tinyvit_free(r->tv);
    } else {
        if (r->enc->grads_ready_ctx == &r->gs) ms_sam_encoder_set_grads_hook(r->enc, NULL, NULL, 0);
        ms_sam_encoder_free(r->enc);
    }
    free(r);
}
