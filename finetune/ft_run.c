/* finetune/ft_run.c — see ft_run.h. */
#include "finetune/ft_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "base/clock.h"
#include "base/rng.h"
#include "checkpoints/rundir.h"
#include "checkpoints/runlog.h"
#include "data/ingest.h"
#include "data/loader.h"
#include "data/png.h"
#include "data/store_norm.h"
#include "finetune/prompt_gen.h"
#include "ops.h"
#include "pretrain/grad_sync.h"

typedef struct task_data {
    const char *path;             /* store path (the caller's string) */
    ms_store *store;
    ms_selection train, val;
    int own_store;                /* opened here (a store named twice is opened once) */
    int store_id;                 /* the first task with this store: the embedding cache's key */
    int single;                   /* one labelled volume: split by slice blocks */
    uint64_t n_empty;             /* training slices left out for want of foreground */
    uint16_t *label_map;          /* 65536 entries */
    ms_loader *loader;
    ms_loader_state lstate;
} task_data;

struct ms_ft_run {
    ms_ft_run_config cfg;
    ms_device *dev;
    ms_ft_model m;
    ms_optimizer opt;
    int ck_zero_world; /* the checkpoint being loaded: its optimizer shards (0: whole) */
    int n_tasks, workers, any_val;
    task_data td[MS_FT_MAX_TASKS];
    double weights[MS_FT_MAX_TASKS];
    ms_loader_config lc[MS_FT_MAX_TASKS];
    ms_ft_loss loss;
    ms_emb_cache *cache;
    ms_promptgen_batch pg;
    ms_promptgen_opts pgo;
    ms_runlog lg;
    char *config_json;
    char resumed_from[MS_PATH_MAX];
    int64_t resumed_step;
    int S, L, B, Cmax;
    int64_t P, emb_floats, steps_per_epoch, total;
    /* host / device scratch */
    float *img;          /* host (B, 3, S, S) compacted images */
    int32_t *target;     /* host (B, P) */
    uint8_t *bin;        /* host (B, L, L) binary masks (prompt modes) */
    float *emb_host;     /* host (B, emb_floats) (cache) */
    float *emb_dev;      /* device (B, emb_floats) (cache, prompt validation) */
    float *logits_host;  /* host (B, Cmax, P) */
    uint64_t *keys, *ids;
    /* counters (state.json) */
    int64_t step, skipped, samples;
    double best_score, best_epoch;
    int64_t best_step;
    int stopped_early, finished;
    int64_t saved_step;  /* the step of the newest checkpoint written or resumed from */
    /* rates */
    double t0;
    int64_t start_step, samples0;
    /* data parallel: rank 0 writes RUN/ */
    int rank, world;
    ms_grad_sync gs;
};

/* ---- configuration ----------------------------------------------------------------------------------------------- */

void ms_ft_run_config_default(ms_ft_run_config *c)
{
    memset(c, 0, sizeof *c);
    c->method = MS_FT_FULL;
    c->scope = MS_FT_SCOPE_DECODER;
    c->prompt = MS_PROMPT_NONE;
    c->lora_rank = 4;
    c->resize = MS_RESIZE_LONGEST;
    c->norm = MS_NORM_SAM;
    c->val_fraction = 0.2;
    c->shot_unit = MS_SHOT_SLICE;
    c->epochs = 200;
    c->batch = 4;
    c->lr = 1e-3;
    c->weight_decay = 0.1;
    c->warmup = -1; /* min(200, 10 % of the run), resolved once the run knows its length */
    c->schedule = MS_SCHED_POLY;
    c->val_every = 2;
    c->patience = 20;
    c->save_every = 1000;
    c->keep_last = 2;
    c->panels = 1;
}

ms_status ms_ft_run_config_check(const ms_ft_run_config *c)
{
    MS_FAIL_IF(c->n_tasks < 1 || c->n_tasks > MS_FT_MAX_TASKS, MS_EINVAL, "1 to %d stores (tasks)", MS_FT_MAX_TASKS);
    MS_FAIL_IF(!c->out, MS_EINVAL, "no run directory");
    MS_FAIL_IF(!c->ckpt && !c->model, MS_EINVAL, "needs SAM weights to start from or a model to initialise");
    MS_FAIL_IF(c->batch < 1 || c->batch > 256 || c->val_every < 1 || c->patience < 0 || c->shots < 0 ||
               c->save_every < 1 || c->keep_last < 1 || c->val_fraction < 0 || c->val_fraction >= 1 || c->warmup < -1,
               MS_EINVAL, "bad --batch-size (1..256), --val-every, --patience, --shots, --save-every, --keep-last, "
               "--val-fraction or --warmup-steps");
    MS_FAIL_IF(c->cache_embeddings && (c->scope != MS_FT_SCOPE_DECODER || c->augment), MS_EINVAL,
               "--cache-embeddings needs a frozen encoder (--scope decoder) and no image augmentation (--augment "
               "none): otherwise a slice's embedding changes from one visit to the next");
    return MS_OK;
}

/* A block mask as config.json spells it: "all" (0) or "0,1,10,11". */
static void blocks_name(uint64_t mask, char *out, size_t n)
{
    if (!mask) { snprintf(out, n, "all"); return; }
    size_t k = 0;
    out[0] = 0;
    for (int i = 0; i < 64 && k < n; i++)
        if (mask >> i & 1) k += (size_t)snprintf(out + k, n - k, "%s%d", k ? "," : "", i);
}

/* RUN/config.json: every option that shapes the run; a resume must reproduce it exactly, but for the keys of
 * resume_free. ranks 0: without world_size and global_batch, as a run written before data parallel has it. */
static char *config_json(const ms_ft_run *r, int ranks)
{
    const ms_ft_run_config *o = &r->cfg;
    const ms_ft_config *c = &r->m.cfg;
    char lb[256], ab[256];
    blocks_name(o->lora_blocks, lb, sizeof lb);
    blocks_name(o->adapter_blocks, ab, sizeof ab);
    cJSON *cj = cJSON_CreateObject();
    cJSON_AddStringToObject(cj, "command", "finetune");
    cJSON_AddStringToObject(cj, "model", c->model);
    cJSON_AddStringToObject(cj, "ckpt", o->ckpt ? o->ckpt : "");
    cJSON_AddStringToObject(cj, "init", o->init_random ? "random" : "checkpoint");
    cJSON *sa = cJSON_AddArrayToObject(cj, "stores");
    for (int t = 0; t < r->n_tasks; t++) {
        cJSON *so = cJSON_CreateObject();
        cJSON_AddStringToObject(so, "path", r->td[t].path);
        cJSON_AddStringToObject(so, "task", c->task[t].name);
        cJSON_AddNumberToObject(so, "train_slices", (double)r->td[t].train.n);
        cJSON_AddNumberToObject(so, "val_slices", (double)r->td[t].val.n);
        cJSON_AddItemToArray(sa, so);
    }
    cJSON_AddStringToObject(cj, "method", ms_ft_method_name(o->method));
    cJSON_AddStringToObject(cj, "scope", ms_ft_scope_name(o->scope));
    cJSON_AddStringToObject(cj, "prompt", ms_prompt_mode_name(o->prompt));
    cJSON_AddNumberToObject(cj, "shots", o->shots);
    cJSON_AddStringToObject(cj, "shot_unit", o->shot_unit == MS_SHOT_VOLUME ? "volume" : "slice");
    cJSON_AddStringToObject(cj, "split", o->split ? o->split : "");
    cJSON_AddNumberToObject(cj, "val_fraction", o->val_fraction);
    cJSON_AddNumberToObject(cj, "epochs", o->epochs);
    cJSON_AddNumberToObject(cj, "max_steps", (double)r->total);
    cJSON_AddNumberToObject(cj, "batch_size", o->batch);
    if (ranks) {
        cJSON_AddNumberToObject(cj, "world_size", r->world);
        cJSON_AddNumberToObject(cj, "global_batch", (double)o->batch * r->world);
    }
    cJSON_AddNumberToObject(cj, "lr", o->lr);
    cJSON_AddNumberToObject(cj, "min_lr", o->min_lr);
    cJSON_AddNumberToObject(cj, "weight_decay", o->weight_decay);
    cJSON_AddNumberToObject(cj, "warmup_steps", (double)o->warmup);
    cJSON_AddStringToObject(cj, "schedule", o->schedule == MS_SCHED_COSINE ? "cosine" : "poly");
    cJSON_AddNumberToObject(cj, "clip_grad", o->clip_grad);
    cJSON_AddNumberToObject(cj, "val_every", o->val_every);
    cJSON_AddNumberToObject(cj, "val_slices", o->val_slices);
    cJSON_AddNumberToObject(cj, "patience", o->patience);
    cJSON_AddNumberToObject(cj, "lora_rank", o->lora_rank);
    cJSON_AddStringToObject(cj, "lora_blocks", lb);
    cJSON_AddStringToObject(cj, "adapter_blocks", ab);
    cJSON_AddNumberToObject(cj, "cache_embeddings", o->cache_embeddings);
    cJSON_AddNumberToObject(cj, "compat_finetune_sam", o->compat_finetune_sam);
    cJSON_AddStringToObject(cj, "augment", o->augment ? "seg" : "none");
    cJSON_AddNumberToObject(cj, "input_size", c->prep.size);
    cJSON_AddStringToObject(cj, "resize", c->prep.resize == MS_RESIZE_STRETCH ? "stretch" : "longest");
    cJSON_AddStringToObject(cj, "norm", c->prep.norm == MS_NORM_UNIT ? "medsam" : "sam");
    ms_norm_choice_to_json(&o->intensity, cj);
    cJSON_AddNumberToObject(cj, "label_size", c->prep.label_size);
    cJSON_AddStringToObject(cj, "task_weights", o->task_weights_uniform ? "uniform" : "size");
    cJSON_AddNumberToObject(cj, "seed", (double)o->seed);
    cJSON_AddNumberToObject(cj, "save_every", o->save_every);
    cJSON_AddNumberToObject(cj, "keep_last", o->keep_last);
    cJSON_AddStringToObject(cj, "device", r->dev->kind == MS_DEV_CUDA ? "cuda" : "cpu");
    cJSON_AddStringToObject(cj, "precision", ms_precision_name(r->dev->precision));
    char *s = cJSON_Print(cj);
    cJSON_Delete(cj);
    return s;
}

/* JSON of {task: {class: dice | "n/a"}} (class key: its name, else its stored label value). */
static cJSON *dice_json(const ms_ft_config *c, const ms_ft_dice_acc *acc)
{
    cJSON *d = cJSON_CreateObject();
    for (int t = 0; t < c->n_tasks; t++) {
        cJSON *to = cJSON_AddObjectToObject(d, c->task[t].name);
        for (int k = 1; k < c->task[t].num_cls; k++) {
            char key[MS_FT_NAME_MAX + 8];
            if (c->task[t].class_names[k][0]) snprintf(key, sizeof key, "%s", c->task[t].class_names[k]);
            else snprintf(key, sizeof key, "%u", c->task[t].values[k]);
            double v = ms_ft_dice_class(&acc[t], k);
            if (isnan(v)) cJSON_AddStringToObject(to, key, "n/a");
            else cJSON_AddNumberToObject(to, key, round(v * 1e6) / 1e6);
        }
    }
    return d;
}

/* ---- checkpoints ------------------------------------------------------------------------------------------------- */

static ms_status write_state_json(const ms_ft_run *r, const char *dir)
{
    char p[MS_PATH_MAX];
    MS_TRY(ms_path_join(p, dir, "state.json"));
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", (double)r->step);
    cJSON_AddNumberToObject(j, "adam_step", (double)r->opt.step);
    cJSON_AddNumberToObject(j, "zero_world", r->opt.dist ? r->world : 0);
    cJSON_AddNumberToObject(j, "skipped", (double)r->skipped);
    cJSON_AddNumberToObject(j, "samples", (double)r->samples);
    /* the best score as a bit pattern too, so that a resumed run compares exactly as the uninterrupted one */
    char bits[32];
    uint64_t u;
    memcpy(&u, &r->best_score, 8);
    snprintf(bits, sizeof bits, "%016llx", (unsigned long long)u);
    cJSON_AddStringToObject(j, "best_score_bits", bits);
    cJSON_AddNumberToObject(j, "best_score", isfinite(r->best_score) ? r->best_score : -1);
    cJSON_AddNumberToObject(j, "best_epoch", r->best_epoch);
    cJSON_AddNumberToObject(j, "best_step", (double)r->best_step);
    cJSON_AddNumberToObject(j, "stopped_early", r->stopped_early);
    cJSON_AddNumberToObject(j, "n_tasks", r->n_tasks);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    ms_status rc = txt ? ms_write_file_atomic(p, txt, strlen(txt)) : ms_error(MS_ENOMEM, "out of memory");
    free(txt);
    return rc;
}

static const char *const opt_tags[1] = {"sam"};

/* The files of a checkpoint into its step directory dir (rank 0; DONE comes after every rank's part). */
static ms_status write_checkpoint(void *ctx, const char *dir)
{
    ms_ft_run *r = ctx;
    char p[MS_PATH_MAX], extra[256];
    snprintf(extra, sizeof extra, "{\"step\": %lld, \"epoch\": %.6f}", (long long)r->step,
             (double)r->step / r->steps_per_epoch);
    MS_TRY(ms_ft_model_save(&r->m, dir, extra));
    ms_optimizer *op = &r->opt;
    if (!r->opt.dist) MS_TRY(ms_optimizers_save(&op, opt_tags, 1, dir)); /* sharded: every rank wrote its own */
    MS_TRY(write_state_json(r, dir));
    for (int t = 0; t < r->n_tasks; t++) {
        ms_loader_state ls;
        ms_loader_state_get(r->td[t].loader, &ls);
        MS_TRY(ms_path_fmt(p, "%s/loader_%d.bin", dir, t)); /* the loader's fixed-width resume struct, as is */
        MS_TRY(ms_write_file_atomic(p, &ls, sizeof ls));
    }
    MS_TRY(ms_path_join(p, dir, "config.json"));
    return ms_write_file_atomic(p, r->config_json, strlen(r->config_json));
}

static ms_status write_shard(void *ctx, const char *dir)
{
    ms_ft_run *r = ctx;
    ms_optimizer *op = &r->opt;
    return ms_optimizers_save(&op, opt_tags, 1, dir);
}

/* With ZeRO-1 every rank writes its optimizer shard; rank 0 the rest, DONE after all (ms_ckpt_dir_save). The loader
 * states are rank 0's: a position counts global batches, the same on every rank. */
ms_status ms_ft_run_save(ms_ft_run *r)
{
    if (r->step == r->saved_step) return MS_OK;
    MS_TRY(ms_ckpt_dir_save(r->cfg.out, r->step, r->cfg.dist, r->opt.dist ? write_shard : NULL, write_checkpoint, r,
                            r->cfg.keep_last));
    r->saved_step = r->step;
    return MS_OK;
}
static ms_status read_state_json(ms_ft_run *r, const char *dir)
{
    char p[MS_PATH_MAX];
    MS_TRY(ms_path_join(p, dir, "state.json"));
    cJSON *j;
    MS_TRY(ms_read_json(p, 1 << 20, &j));
#define JN(k) (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, k)) ? cJSON_GetObjectItemCaseSensitive(j, k)->valuedouble : 0)
    r->step = (int64_t)JN("step");
    r->opt.step = (int64_t)JN("adam_step");
    r->ck_zero_world = (int)JN("zero_world");
    r->skipped = (int64_t)JN("skipped");
    r->samples = (int64_t)JN("samples");
    r->best_epoch = JN("best_epoch");
    r->best_step = (int64_t)JN("best_step");
    r->stopped_early = (int)JN("stopped_early");
    int nt = (int)JN("n_tasks");
#undef JN
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(j, "best_score_bits");
    unsigned long long u = 0;
    int okbits = cJSON_IsString(bs) && sscanf(bs->valuestring, "%llx", &u) == 1;
    cJSON_Delete(j);
    MS_FAIL_IF(!okbits || nt != r->n_tasks, MS_EFORMAT, "%s: incomplete state", p);
    memcpy(&r->best_score, &u, 8);
    return MS_OK;
}

/* Model, moments, counters and loader states of checkpoint dir; its config.json must equal this run's. */
/* The keys of config.json a resume may change: the device and precision (checkpoints are fp32 and
 * device-independent, docs/CLI.md §Precision). Removed before the comparison; j may be NULL. */
static void resume_free(cJSON *j)
{
    static const char *const keys[] = {"device", "precision"};
    for (int k = 0; j && k < 2; k++) cJSON_DeleteItemFromObjectCaseSensitive(j, keys[k]);
}

static ms_status load_checkpoint(ms_ft_run *r, const char *dir)
{
    char p[MS_PATH_MAX];
    ms_state_dict sd;
    MS_TRY(ms_path_join(p, dir, "model.safetensors"));
    ms_sd_init(&sd);
    ms_status rc = ms_sd_load(p, &sd);
    if (!rc) rc = ms_params_load(&r->m.sam.ps, &sd, "");
    ms_sd_free(&sd);
    if (rc) { ms_error_prefix("%s", p); return rc; }
    char *js;
    size_t len;
    MS_TRY(ms_path_join(p, dir, "config.json"));
    MS_TRY(ms_read_file(p, 1 << 20, &js, &len));
    int same = !strcmp(js, r->config_json), ranks = 1, gb = 0;
    if (!same) {
        cJSON *j = cJSON_Parse(js), *mine = cJSON_Parse(r->config_json);
        resume_free(j);
        resume_free(mine);
        same = j && mine && cJSON_Compare(j, mine, 1);
        const cJSON *w = j ? cJSON_GetObjectItemCaseSensitive(j, "world_size") : NULL;
        const cJSON *g = j ? cJSON_GetObjectItemCaseSensitive(j, "global_batch") : NULL;
        if (cJSON_IsNumber(w)) ranks = w->valueint;
        if (cJSON_IsNumber(g)) gb = g->valueint;
        if (!same && cJSON_IsNumber(w) && mine) { /* another number of ranks over the same global batch: the same run */
            static const char *const per_rank[] = {"world_size", "batch_size"};
            for (int k = 0; k < 2; k++) {
                cJSON_DeleteItemFromObjectCaseSensitive(j, per_rank[k]);
                cJSON_DeleteItemFromObjectCaseSensitive(mine, per_rank[k]);
            }
            same = cJSON_Compare(j, mine, 1);
        } else if (!same && j && r->world == 1) { /* written before data parallel: the same options without the two keys */
            char *old = config_json(r, 0);
            cJSON *oj = old ? cJSON_Parse(old) : NULL;
            resume_free(oj);
            same = oj && cJSON_Compare(j, oj, 1);
            cJSON_Delete(oj);
            cJSON_free(old);
        }
        cJSON_Delete(j);
        cJSON_Delete(mine);
    }
    free(js);
    MS_FAIL_IF(!same && ranks != r->world && gb > 0 && gb % r->world == 0, MS_EINVAL,
               "%s: the run had %d ranks and a global batch of %d, this one %d ranks and %d: give --batch-size %d", p,
               ranks, gb, r->world, r->cfg.batch * r->world, gb / r->world);
    MS_FAIL_IF(!same && ranks != r->world, MS_EINVAL,
               "%s: the run had %d ranks and a global batch of %d, which does not split over %d ranks", p, ranks, gb,
               r->world);
    MS_FAIL_IF(!same, MS_EINVAL, "%s: the options differ from the run's (give the same options with --resume)", p);
    MS_TRY(read_state_json(r, dir));
    ms_optimizer *op = &r->opt; /* whole or in shards: the optimizer takes what it keeps */
    MS_TRY(ms_optimizers_load(&op, opt_tags, 1, dir, r->ck_zero_world));
    for (int t = 0; t < r->n_tasks; t++) {
        MS_TRY(ms_path_fmt(p, "%s/loader_%d.bin", dir, t));
        MS_TRY(ms_read_file(p, 4096, &js, &len));
        if (len != sizeof(ms_loader_state)) {
            free(js);
            return ms_error(MS_EFORMAT, "%s: %zu bytes, expected %zu", p, len, sizeof(ms_loader_state));
        }
        memcpy(&r->td[t].lstate, js, len);
        free(js);
    }
    r->saved_step = r->step;
    return MS_OK;
}

/* RUN/best: written into RUN/best.tmp, then swapped in, so a crash leaves the old or the new best, whole. */
static ms_status save_best(ms_ft_run *r, const char *extra)
{
    if (r->rank != 0) return MS_OK; /* the others keep the same best score and step, not the files */
    char tmp[MS_PATH_MAX], dst[MS_PATH_MAX];
    MS_TRY(ms_path_join(tmp, r->cfg.out, "best.tmp"));
    MS_TRY(ms_path_join(dst, r->cfg.out, "best"));
    MS_TRY(ms_dir_remove(tmp));
    MS_TRY(ms_mkdirs(tmp));
    ms_status rc = ms_ft_model_save(&r->m, tmp, extra);
    if (!rc) rc = ms_fsync_dir(tmp);
    if (rc) { /* a full disk, say: best/ stays as it was, and no best.tmp/ is left behind */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ms_errmsg());
        ms_dir_remove(tmp);
        return ms_error(rc, "%s", msg);
    }
    MS_TRY(ms_dir_swap_in(tmp, dst));
    MS_TRY(ms_fsync_dir(r->cfg.out));
    return ms_dir_remove(tmp); /* the previous best, after an exchange */
}

/* ---- embeddings -------------------------------------------------------------------------------------------------- */

/* Image embeddings of n images (host img, (n, 3, S, S)) of task t with slice keys `keys`: on the device at *emb.
 * With the cache, known slices are looked up and only the others encoded. */
static ms_status embed_batch(ms_ft_run *r, int t, const float *img, const uint64_t *keys, int n, const float **emb)
{
    const size_t isz = (size_t)3 * r->S * r->S, esz = (size_t)r->emb_floats;
    if (!r->cache) {
        MS_TRY(ms_dev_from_host(r->dev, r->m.x, img, (size_t)n * isz * sizeof(float)));
        MS_TRY(ms_ft_model_encode(&r->m, r->m.x, n));
        *emb = r->m.emb;
        return MS_OK;
    }
    int miss[256], nm = 0;
    for (int b = 0; b < n; b++) {
        const float *e = ms_emb_cache_get(r->cache, r->td[t].store_id, keys[b]);
        if (e) memcpy(r->emb_host + b * esz, e, esz * sizeof(float));
        else {
            MS_TRY(ms_dev_from_host(r->dev, r->m.x + (size_t)nm * isz, img + b * isz, isz * sizeof(float)));
            miss[nm++] = b;
        }
    }
    if (nm) {
        MS_TRY(ms_ft_model_encode(&r->m, r->m.x, nm));
        for (int k = 0; k < nm; k++) {
            float *dst = r->emb_host + (size_t)miss[k] * esz;
            MS_TRY(ms_dev_to_host(r->dev, dst, r->m.emb + (size_t)k * esz, esz * sizeof(float)));
            MS_TRY(ms_emb_cache_put(r->cache, r->td[t].store_id, keys[miss[k]], dst));
        }
    }
    MS_TRY(ms_dev_from_host(r->dev, r->emb_dev, r->emb_host, (size_t)n * esz * sizeof(float)));
    *emb = r->emb_dev;
    return MS_OK;
}

/* ---- validation -------------------------------------------------------------------------------------------------- */

enum { PANEL = 4 }; /* validation slices in the PNG panel */

typedef struct val_sums {
    double lsum;
    int64_t ln;
    uint8_t *panel;      /* (PANEL · S) × 3S: image | ground truth | prediction */
    int panel_n;
} val_sums;

/* Panel rows of the first slices of a batch (task 0): the gray input on 0..255 (the padding outside the frame
 * black), the ground truth and the argmax prediction, classes spread over 0..255. */
static ms_status panel_add(ms_ft_run *r, val_sums *vs, const ms_batch *bt, int n, int C)
{
    const int S = r->S, L = r->L;
    const int64_t P = r->P;
    if (!vs->panel && !(vs->panel = calloc((size_t)PANEL * S * 3 * S, 1))) return ms_error(MS_ENOMEM, "out of memory");
    float *gray = malloc((size_t)S * S * sizeof(float));
    MS_FAIL_IF(!gray, MS_ENOMEM, "out of memory");
    for (int b = 0; b < n && vs->panel_n < PANEL; b++, vs->panel_n++) {
        uint8_t *row = vs->panel + (size_t)vs->panel_n * S * 3 * S;
        ms_prep_to_gray(&r->m.cfg.prep, bt->image + (size_t)b * 3 * S * S, bt->height[b], bt->width[b], gray);
        const float *lg = r->logits_host + (size_t)b * C * P;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                float v = gray[(size_t)y * S + x];
                v = v < 0 ? 0 : v > 1 ? 1 : v;
                row[(size_t)y * 3 * S + x] = (uint8_t)(v * 255.f + 0.5f);
                int64_t i = (int64_t)(y * L / S) * L + x * L / S;
                int best = 0;
                for (int k = 1; k < C; k++) if (lg[k * P + i] > lg[best * P + i]) best = k;
                row[(size_t)y * 3 * S + S + x] = (uint8_t)(bt->label[b * P + i] * 255 / (C - 1));
                row[(size_t)y * 3 * S + 2 * S + x] = (uint8_t)(best * 255 / (C - 1));
            }
    }
    free(gray);
    return MS_OK;
}

/* Prompt modes: every (slice, present class) of the batch is one binary target with deterministic prompts. */
static ms_status validate_prompted(ms_ft_run *r, int t, const ms_batch *bt, int n, const float *emb,
                                   ms_ft_dice_acc *acc, val_sums *vs)
{
    const ms_ft_config *c = &r->m.cfg;
    const int L = r->L;
    const int64_t P = r->P;
    for (int b = 0; b < n; b++) {
        const uint16_t *lb = bt->label + (size_t)b * P;
        int present[MS_FT_MAX_CLASSES] = {0};
        for (int64_t i = 0; i < P; i++) present[lb[i] < MS_FT_MAX_CLASSES ? lb[i] : 0] = 1;
        for (int k = 1; k < c->task[t].num_cls; k++) {
            if (!present[k]) continue;
            for (int64_t i = 0; i < P; i++) r->bin[i] = lb[i] == k;
            uint64_t id = bt->key[b] * 64 + (uint64_t)k;
            MS_TRY(ms_promptgen_batch_fill(&r->pg, &r->pgo, c->prompt, r->bin, 1, L, L, 0, &id));
            MS_TRY(ms_ft_model_decode(&r->m, t, emb + (size_t)b * r->emb_floats, 1, &r->pg.pr));
            for (int64_t i = 0; i < P; i++) r->target[i] = r->pg.target[i];
            double d, e;
            MS_TRY(ms_ft_loss_run(&r->loss, r->m.logits, r->target, 1, 2, P, NULL, &d, &e));
            vs->lsum += d + e;
            vs->ln++;
            MS_TRY(ms_dev_to_host(r->dev, r->logits_host, r->m.logits, (size_t)2 * P * sizeof(float)));
            ms_ft_dice_add_binary(acc, k, r->logits_host, r->target, P);
        }
    }
    return MS_OK;
}

/* Task t's validation loader: its held-out slices in order, once, without augmentation. */
static ms_status val_loader_open(const ms_ft_run *r, int t, ms_loader **vl)
{
    ms_loader_config vc = r->lc[t];
    vc.resume = NULL;
    vc.global_batch = r->B; /* every rank reads every held-out slice */
    vc.rank = 0;
    vc.world = 1;
    vc.selection[0] = &r->td[t].val;
    vc.shuffle = 0;
    vc.augment = 0;
    vc.n_epochs = 1;
    vc.drop_last = 0;
    vc.epoch_len = 0;
    return ms_loader_open(&vc, vl);
}

/* The next validation batch and how many of its slices count (the first val_slices in all); *bt NULL: done. */
static ms_status val_next(const ms_ft_run *r, ms_loader *vl, int *seen, const ms_batch **bt, int *n)
{
    MS_TRY(ms_loader_next(vl, bt));
    if (!*bt) return MS_OK;
    *n = (*bt)->n;
    if (r->cfg.val_slices > 0 && *seen + *n > r->cfg.val_slices) *n = r->cfg.val_slices - *seen;
    if (*n <= 0) *bt = NULL;
    else *seen += *n;
    return MS_OK;
}

/* Task t's held-out slices (the first val_slices of them when set), in order, without augmentation. */
static ms_status validate_task(ms_ft_run *r, int t, ms_ft_dice_acc *acc, val_sums *vs)
{
    const ms_ft_config *c = &r->m.cfg;
    const int C = ms_ft_out_channels(c, t);
    const int64_t P = r->P;
    ms_loader *vl = NULL;
    MS_TRY(val_loader_open(r, t, &vl));
    const ms_batch *bt;
    int seen = 0, n;
    ms_status rc;
    while (!(rc = val_next(r, vl, &seen, &bt, &n)) && bt) {
        const float *emb;
        if ((rc = embed_batch(r, t, bt->image, bt->key, n, &emb))) break;
        if (c->prompt != MS_PROMPT_NONE) {
            if ((rc = validate_prompted(r, t, bt, n, emb, acc, vs))) break;
            continue;
        }
        if ((rc = ms_ft_model_decode(&r->m, t, emb, n, NULL))) break;
        for (int64_t i = 0; i < (int64_t)n * P; i++) r->target[i] = bt->label[i];
        double d, e;
        if ((rc = ms_ft_loss_run(&r->loss, r->m.logits, r->target, n, C, P, NULL, &d, &e))) break;
        vs->lsum += (d + e) * n;
        vs->ln += n;
        if ((rc = ms_dev_to_host(r->dev, r->logits_host, r->m.logits, (size_t)n * C * P * sizeof(float)))) break;
        ms_ft_dice_add(acc, r->logits_host, r->target, n, C, P);
        if (t == 0 && vs->panel_n < PANEL && (rc = panel_add(r, vs, bt, n, C))) break;
    }
    ms_loader_close(vl);
    return rc;
}

ms_status ms_ft_run_validate(ms_ft_run *r, ms_ft_val *v)
{
    const ms_ft_config *c = &r->m.cfg;
    val_sums vs = {0};
    ms_status rc = MS_OK;
    for (int t = 0; t < r->n_tasks && !rc; t++) {
        ms_ft_dice_reset(&v->dice[t], c->task[t].num_cls);
        if (r->td[t].val.n) rc = validate_task(r, t, &v->dice[t], &vs);
    }
    if (!rc && vs.panel_n && r->cfg.panels && r->rank == 0) {
        char p[MS_PATH_MAX];
        rc = ms_path_fmt(p, "%s/val/step_%08lld.png", r->cfg.out, (long long)r->step);
        if (!rc) rc = ms_png_write_u8(p, vs.panel, 3 * r->S, vs.panel_n * r->S, 1);
    }
    free(vs.panel);
    if (rc) return rc;
    double s = 0;
    int ns = 0;
    for (int t = 0; t < r->n_tasks; t++) {
        double d = ms_ft_dice_mean(&v->dice[t], NULL);
        if (!isnan(d)) { s += d; ns++; }
    }
    v->score = ns ? s / ns : NAN;
    v->loss = vs.ln ? vs.lsum / vs.ln : NAN;
    /* every rank validated the same slices with the same weights; rank 0's numbers decide best/ and early stopping
     * everywhere, so no last bit of a reduction order can make one rank stop alone */
    return ms_dist_bcast_host(r->cfg.dist, v, sizeof *v, 0);
}

/* ---- one training step ------------------------------------------------------------------------------------------- */

typedef struct step_out {
    int task, n, skipped;
    double dice, ce, ce_fg, ce_bg;
    float gnorm, lr;
    int64_t n_fg, n_bg;  /* target pixels of each side (the weights of ce_fg / ce_bg over ranks) */
    int finite;          /* the losses are finite (on every rank) */
    int stop;            /* some rank's stop flag is set */
} step_out;

/* Compacts the batch's usable samples into img / target (or bin) / keys / ids; returns their count. Prompt modes
 * use a sample only when its label has a class, one of which the step's seed picks. */
static int gather_batch(ms_ft_run *r, int t, const ms_batch *bt, int *skipped)
{
    const ms_ft_config *c = &r->m.cfg;
    const int64_t P = r->P;
    const size_t isz = (size_t)3 * r->S * r->S;
    const uint64_t seed = (uint64_t)r->cfg.seed;
    int n = 0;
    for (int b = 0; b < bt->n; b++) {
        if (!bt->valid[b]) { (*skipped)++; continue; }
        /* the sample's position in the global batch (data/sampler.h): its draws are the same on any rank count */
        const uint64_t gb = (uint64_t)r->rank + (uint64_t)b * (uint64_t)r->world;
        const uint16_t *lb = bt->label + (size_t)b * P;
        int k = 0;
        if (c->prompt != MS_PROMPT_NONE) {
            int present[MS_FT_MAX_CLASSES] = {0}, np = 0, list[MS_FT_MAX_CLASSES];
            for (int64_t i = 0; i < P; i++) present[lb[i] < MS_FT_MAX_CLASSES ? lb[i] : 0] = 1;
            for (int q = 1; q < c->task[t].num_cls; q++) if (present[q]) list[np++] = q;
            if (!np) { (*skipped)++; continue; }
            k = list[ms_rand_u64(ms_rng_stream(seed, 0xc1a55, (uint64_t)r->step), gb) % (uint64_t)np];
            for (int64_t i = 0; i < P; i++) r->bin[(size_t)n * P + i] = lb[i] == k;
        }
        memcpy(r->img + (size_t)n * isz, bt->image + (size_t)b * isz, isz * sizeof(float));
        if (c->prompt == MS_PROMPT_NONE)
            for (int64_t i = 0; i < P; i++) r->target[(size_t)n * P + i] = lb[i];
        r->keys[n] = bt->key[b];
        r->ids[n] = (uint64_t)r->step * (uint64_t)r->B * (uint64_t)r->world + gb;
        n++;
    }
    return n;
}

/* The forward and backward of this rank's n samples (compacted by gather_batch) of task t; N: the step's samples
 * over all ranks. */
static ms_status forward_backward(ms_ft_run *r, int t, int n, double N, step_out *so)
{
    const ms_ft_config *c = &r->m.cfg;
    const int64_t P = r->P;
    const float *emb;
    ms_ft_model_set_training(&r->m, 1); /* TinyViT's BatchNorms: batch statistics when they train */
    ms_status rc = embed_batch(r, t, r->img, r->keys, n, &emb);
    ms_ft_model_set_training(&r->m, 0);
    MS_TRY(rc);
    int C = ms_ft_out_channels(c, t);
    const ms_sam_prompts *pr = NULL;
    if (c->prompt != MS_PROMPT_NONE) {
        MS_TRY(ms_promptgen_batch_fill(&r->pg, &r->pgo, c->prompt, r->bin, n, r->L, r->L,
                                       (uint64_t)r->cfg.seed ^ 0x9707, r->ids));
        for (int64_t i = 0; i < (int64_t)n * P; i++) r->target[i] = r->pg.target[i];
        pr = &r->pg.pr;
    }
    MS_TRY(ms_ft_model_decode(&r->m, t, emb, n, pr));
    MS_TRY(ms_ft_loss_run(&r->loss, r->m.logits, r->target, n, C, P, r->m.dlogits, &so->dice, &so->ce));
    MS_TRY(ms_ft_loss_split(&r->loss, r->m.logits, r->target, n, C, P, &so->ce_fg, &so->ce_bg));
    so->finite = isfinite(so->dice) && isfinite(so->ce);
    if (r->world > 1) {
        /* Dice is a mean over samples and CE over pixels (n·P each): weighted n / N, the ranks' sum is the mean of
         * one process over all N samples */
        for (int64_t i = 0; i < (int64_t)n * P; i++) { so->n_fg += r->target[i] > 0; so->n_bg += r->target[i] == 0; }
        MS_TRY(ms_scale_forward(r->dev, r->m.dlogits, r->m.dlogits, (float)(n / N), (int64_t)n * C * P));
    }
    return ms_ft_model_backward(&r->m, r->m.dlogits);
}

/* What the ranks agree on after the gradients: the logged losses are means over all N samples (CE's sides over
 * their pixels), a non-finite loss anywhere skips the step everywhere, skipped samples add up, and a stop asked of
 * any rank stops them all after this step. */
static ms_status agree(ms_ft_run *r, step_out *so, double N)
{
    if (r->world == 1) return MS_OK;
    const double n = so->n;
    double v[10] = {!so->finite, so->dice * n, so->ce * n, so->ce_fg * (double)so->n_fg, (double)so->n_fg,
                    so->ce_bg * (double)so->n_bg, (double)so->n_bg, so->skipped, r->cfg.stop && *r->cfg.stop, 0};
    MS_TRY(ms_dist_allreduce_host(r->cfg.dist, v, 10, 0));
    so->finite = v[0] == 0;
    so->n = (int)N;
    so->dice = N > 0 ? v[1] / N : 0;
    so->ce = N > 0 ? v[2] / N : 0;
    so->ce_fg = v[4] > 0 ? v[3] / v[4] : 0;
    so->ce_bg = v[6] > 0 ? v[5] / v[6] : 0;
    so->skipped = (int)v[7];
    so->stop = v[8] > 0;
    return MS_OK;
}

static ms_status train_step(ms_ft_run *r, step_out *so)
{
    const ms_ft_config *c = &r->m.cfg;
    const ms_ft_run_config *o = &r->cfg;
    memset(so, 0, sizeof *so);
    so->finite = 1;
    int t = ms_ft_task_at((uint64_t)o->seed, r->step, r->n_tasks, r->weights);
    so->task = t;
    const ms_batch *bt;
    MS_TRY(ms_loader_next(r->td[t].loader, &bt));
    MS_FAIL_IF(!bt, MS_EINVAL, "finetune: the loader of task %s ran out of data", c->task[t].name);
    so->skipped = bt->n_skipped;
    int n = so->n = gather_batch(r, t, bt, &so->skipped);
    so->lr = ms_lr_at(o->schedule, r->step, o->warmup, r->total, (float)o->lr, (float)o->min_lr);
    double N = n; /* the step's samples over all ranks: each rank's share of the loss is n / N */
    if (r->world > 1) MS_TRY(ms_dist_allreduce_host(o->dist, &N, 1, 0));
    if (N > 0) {
        ms_grad_sync_arm(&r->gs); /* this step's reduction starts from the gradients' end */
        if (n) MS_TRY(forward_backward(r, t, n, N, so)); /* a rank without samples adds zero gradients */
        MS_TRY(ms_grad_sync_finish(&r->gs));
    }
    MS_TRY(agree(r, so, N));
    if (!(N > 0)) return MS_OK; /* nothing to learn from: the step passes without an update */
    float *g = r->m.sam.ps.grad;
    int64_t gn = r->m.sam.ps.numel_trainable;
    MS_TRY(ms_clip_grad_norm(r->dev, &g, &gn, 1, (float)o->clip_grad, &so->gnorm));
    if (isfinite(so->gnorm) && so->finite) MS_TRY(ms_optimizer_step(&r->opt, so->lr, NULL));
    else so->skipped += so->n;
    return ms_params_zero_grads(&r->m.sam.ps);
}

/* ---- the embedding cache of a resumed run ------------------------------------------------------------------------ */

/* The embeddings a validation pass computes first (the cache's misses, in its groups). */
static ms_status replay_validation(ms_ft_run *r)
{
    for (int t = 0; t < r->n_tasks; t++) {
        if (!r->td[t].val.n) continue;
        ms_loader *vl = NULL;
        MS_TRY(val_loader_open(r, t, &vl));
        const ms_batch *bt;
        const float *emb;
        int seen = 0, n;
        ms_status rc;
        while (!(rc = val_next(r, vl, &seen, &bt, &n)) && bt)
            if ((rc = embed_batch(r, t, bt->image, bt->key, n, &emb))) break;
        ms_loader_close(vl);
        MS_TRY(rc);
    }
    return MS_OK;
}

/* The image encoder's output depends in its last bits on how many images it encodes at once (GEMM blocking), so
 * a cached embedding depends on which slices missed the cache together. A resumed run rebuilds the cache the
 * uninterrupted run had by replaying the batches and validations before `upto`, encoding the misses in the same
 * groups, until every task has been through an epoch and the first validation has run: from then on nothing
 * misses. Each slice is encoded once, as in the uninterrupted run; the batches are read again.
 * Several ranks: a rank caches only the slices it reads, and a later epoch's order hands it slices it has not seen
 * yet, so its replay ends when its cache holds every training and validation slice (tasks that share a store
 * count their common slices twice and never get there: then every step before `upto` is replayed). */
static ms_status replay_cache(ms_ft_run *r, int64_t upto)
{
    ms_loader *ld[MS_FT_MAX_TASKS] = {0};
    int64_t drawn[MS_FT_MAX_TASKS] = {0};
    const int64_t step0 = r->step, val_period = (int64_t)r->cfg.val_every * r->steps_per_epoch;
    int val_done = !r->any_val;
    int64_t want = 0; /* slices in the cache once nothing can miss (several ranks) */
    for (int t = 0; t < r->n_tasks; t++) {
        uint64_t nv = r->td[t].val.n, cap = (uint64_t)r->cfg.val_slices;
        want += (int64_t)(r->td[t].train.n + (cap > 0 && cap < nv ? cap : nv));
    }
    ms_status rc = MS_OK;
    for (int t = 0; t < r->n_tasks && !rc; t++) {
        ms_loader_config lc = r->lc[t];
        lc.resume = NULL;
        rc = ms_loader_open(&lc, &ld[t]);
    }
    for (int64_t s = 0; s < upto && !rc; s++) {
        int complete = val_done;
        if (r->world > 1) complete &= ms_emb_cache_count(r->cache) >= want;
        else for (int t = 0; t < r->n_tasks; t++) complete &= (uint64_t)(drawn[t] * r->B) >= r->td[t].train.n;
        if (complete) break;
        int t = ms_ft_task_at((uint64_t)r->cfg.seed, s, r->n_tasks, r->weights);
        const ms_batch *bt;
        if ((rc = ms_loader_next(ld[t], &bt))) break;
        if (!bt) {
            rc = ms_error(MS_EINVAL, "finetune: the loader of task %s ran out of data", r->m.cfg.task[t].name);
            break;
        }
        drawn[t]++;
        r->step = s; /* what gather_batch reads (the prompt mode's class draw) */
        int skipped = 0, n = gather_batch(r, t, bt, &skipped);
        const float *emb;
        if (n && (rc = embed_batch(r, t, r->img, r->keys, n, &emb))) break;
        if (r->any_val && ((s + 1) % val_period == 0 || s + 1 == r->total)) {
            rc = replay_validation(r);
            val_done = 1;
        }
    }
    r->step = step0;
    for (int t = 0; t < r->n_tasks; t++) if (ld[t]) ms_loader_close(ld[t]);
    return rc;
}

/* ---- the step ---------------------------------------------------------------------------------------------------- */

/* The train line of log.jsonl and its TensorBoard scalars. */
static ms_status log_train(ms_ft_run *r, const step_out *so, double t, double epoch, double ips, double loss)
{
    if (r->rank != 0) return MS_OK;
    const ms_ft_config *c = &r->m.cfg;
    char js[1024];
    snprintf(js, sizeof js,
             "{\"step\": %lld, \"epoch\": %.4f, \"split\": \"train\", \"task\": \"%s\", \"loss\": %.7g, "
             "\"loss_dice\": %.7g, \"loss_ce\": %.7g, \"loss_fg\": %.7g, \"loss_bg\": %.7g, \"lr\": %.6g, "
             "\"grad_norm\": %.6g, \"img_per_s\": %.4g, \"skipped\": %lld, \"device\": \"%s\", \"precision\": \"%s\", "
             "\"t\": %.3f}",
             (long long)r->step, epoch, c->task[so->task].name, so->n ? loss : 0.0, so->dice, so->ce, so->ce_fg,
             so->ce_bg, so->lr, so->gnorm, ips, (long long)r->skipped, r->dev->kind == MS_DEV_CUDA ? "cuda" : "cpu",
             ms_precision_name(r->dev->precision), t - r->t0);
    MS_TRY(ms_runlog_json(&r->lg, js));
    char tag[128];
    snprintf(tag, sizeof tag, "train/loss/%s", c->task[so->task].name);
    ms_runlog_scalar(&r->lg, r->n_tasks > 1 ? tag : "train/loss", r->step, loss);
    ms_runlog_scalar(&r->lg, "train/lr", r->step, so->lr);
    ms_runlog_scalar(&r->lg, "train/grad_norm", r->step, so->gnorm);
    ms_runlog_scalar(&r->lg, "train/img_per_s", r->step, ips);
    return MS_OK;
}

/* Validation after a step: the val line of log.jsonl, TensorBoard scalars, best/ when better, early stopping. */
static ms_status validate_step(ms_ft_run *r, double epoch, ms_ft_step_info *info)
{
    const ms_ft_config *c = &r->m.cfg;
    ms_ft_val *v = &info->val;
    MS_TRY(ms_ft_run_validate(r, v));
    int better = !isnan(v->score) && (isnan(r->best_score) || v->score > r->best_score);
    cJSON *d = dice_json(c, v->dice);
    char *dtxt = cJSON_PrintUnformatted(d);
    cJSON_Delete(d);
    MS_FAIL_IF(!dtxt, MS_ENOMEM, "out of memory");
    char *line = malloc(strlen(dtxt) + 512);
    if (!line) { free(dtxt); return ms_error(MS_ENOMEM, "out of memory"); }
    sprintf(line, "{\"step\": %lld, \"epoch\": %.4f, \"split\": \"val\", \"loss\": %.7g, \"dice\": %s, "
            "\"score\": %.6g, \"best\": %d, \"t\": %.3f}", (long long)r->step, epoch,
            isnan(v->loss) ? -1.0 : v->loss, dtxt, isnan(v->score) ? -1.0 : v->score, better, ms_now_s() - r->t0);
    ms_status rc = MS_OK;
    if (r->rank == 0) { /* the others hold the same numbers (ms_ft_run_validate) and keep the same best */
        rc = ms_runlog_json(&r->lg, line);
        if (!isnan(v->score)) ms_runlog_scalar(&r->lg, "val/dice", r->step, v->score);
        for (int t = 0; t < r->n_tasks && r->n_tasks > 1; t++) {
            double dt = ms_ft_dice_mean(&v->dice[t], NULL);
            char tag[128];
            snprintf(tag, sizeof tag, "val/dice/%s", c->task[t].name);
            if (!isnan(dt)) ms_runlog_scalar(&r->lg, tag, r->step, dt);
        }
        if (!isnan(v->loss)) ms_runlog_scalar(&r->lg, "val/loss", r->step, v->loss);
    }
    free(line);
    info->validated = 1;
    info->best = better;
    if (!rc && better) {
        r->best_score = v->score;
        r->best_epoch = epoch;
        r->best_step = r->step;
        char *extra = malloc(strlen(dtxt) + 256);
        if (!extra) rc = ms_error(MS_ENOMEM, "out of memory");
        else {
            sprintf(extra, "{\"step\": %lld, \"epoch\": %.4f, \"score\": %.6g, \"dice\": %s}", (long long)r->step,
                    epoch, v->score, dtxt);
            rc = save_best(r, extra);
            free(extra);
        }
    }
    free(dtxt);
    if (rc) return rc;
    /* finetune-SAM: stop when more than `patience` epochs passed since the last improvement */
    info->epochs_since_best = epoch - r->best_epoch;
    if (!isnan(r->best_score) && epoch - r->best_epoch > r->cfg.patience) {
        r->stopped_early = 1;
        info->stopped_early = 1;
    }
    return MS_OK;
}

/* The end of a run: without a (scorable) validation, the final model is the one to use. */
static ms_status finish(ms_ft_run *r)
{
    r->finished = 1;
    if (r->best_step >= 0) return MS_OK;
    char extra[128];
    snprintf(extra, sizeof extra, "{\"step\": %lld, \"epoch\": %.4f}", (long long)r->step,
             (double)r->step / r->steps_per_epoch);
    return save_best(r, extra);
}

ms_status ms_ft_run_step(ms_ft_run *r, ms_ft_step_info *info)
{
    memset(info, 0, sizeof *info);
    info->total = r->total;
    if (r->step >= r->total || r->stopped_early) {
        if (!r->finished) MS_TRY(finish(r));
        info->step = r->step;
        info->epoch = (double)r->step / r->steps_per_epoch;
        info->done = 1;
        return MS_OK;
    }
    step_out so;
    MS_TRY(train_step(r, &so));
    r->step++;
    r->skipped += so.skipped;
    r->samples += so.n;
    double t = ms_now_s(), epoch = (double)r->step / r->steps_per_epoch;
    double ips = (double)(r->samples - r->samples0) / (t - r->t0 + 1e-9);
    double loss = so.dice + so.ce;
    MS_TRY(log_train(r, &so, t, epoch, ips, loss));
    info->stepped = 1;
    info->step = r->step;
    info->epoch = epoch;
    info->task = so.task;
    info->n = so.n;
    info->skipped = so.skipped;
    info->loss = loss;
    info->lr = so.lr;
    info->grad_norm = so.gnorm;
    info->img_per_s = ips;
    info->eta_s = (double)(r->total - r->step) * (t - r->t0) / (double)(r->step - r->start_step);
    const int64_t val_period = (int64_t)r->cfg.val_every * r->steps_per_epoch;
    if (r->any_val && (r->step % val_period == 0 || r->step == r->total)) MS_TRY(validate_step(r, epoch, info));
    if (r->step % r->cfg.save_every == 0 || r->step == r->total || r->stopped_early) MS_TRY(ms_ft_run_save(r));
    if (r->step >= r->total || r->stopped_early) {
        MS_TRY(finish(r));
        info->done = 1;
    }
    /* one process reads the flag last, as its caller's loop did; several ranks agreed on it with the gradients */
    info->stop = r->world > 1 ? so.stop : r->cfg.stop && *r->cfg.stop;
    return MS_OK;
}

/* ---- opening ----------------------------------------------------------------------------------------------------- */

/* Axis and intensity normalisation from a store's "params" meta (they travel with the checkpoint); a given
 * --intensity is what the model sees instead. */
static void store_prep_meta(ms_store *s, const ms_norm_choice *given, ms_ft_config *c)
{
    ms_norm_choice own;
    const ms_norm_choice *in = given->given ? given : ms_store_norm_own(s, &own) ? NULL : &own;
    if (in) {
        c->intensity = in->norm;
        c->p_lo = in->p_lo;
        c->p_hi = in->p_hi;
    }
    ms_error_clear();
    char *js = NULL;
    if (ms_store_meta_json(s, "params", &js) || !js) { ms_error_clear(); return; }
    cJSON *j = cJSON_Parse(js);
    free(js);
    if (!j) return;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "axis");
    if (cJSON_IsString(a)) {
        const char *v = a->valuestring;
        c->axis = !strcmp(v, "sagittal") ? MS_AXIS_SAGITTAL : !strcmp(v, "coronal") ? MS_AXIS_CORONAL
                : !strcmp(v, "axial") ? MS_AXIS_AXIAL : MS_AXIS_AUTO;
    }
    cJSON_Delete(j);
}

/* Stores (each opened once) and class maps of every task into fc. */
static ms_status open_tasks(ms_ft_run *r, ms_ft_config *fc)
{
    r->n_tasks = fc->n_tasks = r->cfg.n_tasks;
    for (int t = 0; t < r->n_tasks; t++) {
        task_data *td = &r->td[t];
        td->path = r->cfg.store[t];
        td->store_id = t;
        for (int u = 0; u < t && !td->store; u++) /* LMDB: one environment per store and process */
            if (!strcmp(r->td[u].path, td->path)) {
                td->store = r->td[u].store;
                td->store_id = u;
            }
        if (!td->store) {
            MS_TRY(ms_store_open(td->path, 8 + 4 * r->workers * r->n_tasks, &td->store));
            td->own_store = 1;
            MS_TRY(ms_store_norm_apply(td->store, td->path, &r->cfg.intensity));
        }
        ms_status rc = ms_ft_task_from_store(&fc->task[t], r->cfg.task[t], td->store);
        if (rc) { ms_error_prefix("%s", td->path); return rc; }
        MS_FAIL_IF(!(td->label_map = malloc(65536 * sizeof(uint16_t))), MS_ENOMEM, "out of memory");
        ms_ft_task_label_map(&fc->task[t], td->label_map);
    }
    store_prep_meta(r->td[0].store, &r->cfg.intensity, fc);
    return MS_OK;
}

/* The model: from the initial weights (SAM layout) or a random init, at the input size asked for. */
static ms_status build_model(ms_ft_run *r, ms_ft_config *fc)
{
    const ms_ft_run_config *o = &r->cfg;
    fc->method = o->method;
    fc->scope = o->scope;
    fc->prompt = o->prompt;
    fc->lora_rank = o->lora_rank;
    fc->lora_blocks = o->lora_blocks;
    fc->adapter_blocks = o->adapter_blocks;
    fc->compat_finetune_sam = o->compat_finetune_sam;
    ms_state_dict init;
    ms_sd_init(&init);
    ms_sam_config sc;
    ms_status rc = MS_OK;
    if (o->ckpt) {
        if (ms_ft_is_checkpoint(o->ckpt))
            return ms_error(MS_EUNSUPPORTED, "%s: a finetune run; start from SAM-layout weights (mrisam "
                            "export-weights makes them)", o->ckpt);
        rc = ms_sd_load(o->ckpt, &init);
        if (!rc && (rc = ms_sam_config_from_sd(&init, &sc))) ms_error_prefix("%s", o->ckpt);
    } else {
        snprintf(fc->model, sizeof fc->model, "%s", o->model);
        rc = ms_sam_config_named(o->model, 3, &sc);
    }
    if (!rc) {
        int S = o->input_size ? o->input_size : sc.tinyvit ? sc.tv.img_size : sc.enc.img_size;
        ms_prep_config_default(&fc->prep, S);
        fc->prep.channels = 3;
        fc->prep.resize = o->resize;
        fc->prep.norm = o->norm;
        rc = ms_ft_model_build(&r->m, fc, o->ckpt ? &init : NULL, (uint64_t)o->seed, r->dev);
    }
    ms_sd_free(&init);
    return rc;
}

/* Task t's training and validation slices: from the split file, else split by seed; foreground only; shots. */
static ms_status select_task(ms_ft_run *r, int t, const char *split_file)
{
    const ms_ft_run_config *o = &r->cfg;
    task_data *td = &r->td[t];
    ms_selection train_all = {0}, fg = {0};
    ms_status rc;
    if (split_file) {
        rc = ms_split_load(split_file, t, td->path, ms_store_n_slices(td->store), &train_all, &td->val);
    } else {
        ms_split_spec sp;
        ms_split_spec_default(&sp);
        sp.seed = (uint64_t)o->seed;
        sp.val_fraction = o->val_fraction;
        sp.labeled_only = 1;
        if (o->shots && o->shot_unit == MS_SHOT_VOLUME) { sp.shots = o->shots; sp.shot_unit = MS_SHOT_VOLUME; }
        rc = ms_loader_select(td->store, &sp, &train_all, o->val_fraction > 0 ? &td->val : NULL, &td->single);
    }
    if (!rc) rc = ms_ft_select_foreground(td->store, &train_all, &fg, &td->n_empty);
    ms_selection_free(&train_all);
    if (!rc && !split_file && o->shots && o->shot_unit == MS_SHOT_SLICE) {
        rc = ms_ft_select_shots(&fg, o->shots, (uint64_t)o->seed, &td->train);
        ms_selection_free(&fg);
    } else if (!rc) {
        td->train = fg;
    }
    if (rc) { ms_error_prefix("%s", td->path); ms_selection_free(&fg); return rc; }
    MS_FAIL_IF(!td->train.n, MS_EINVAL, "%s: no training slice with foreground", td->path);
    r->weights[t] = o->task_weights_uniform ? 1.0 : (double)td->train.n;
    return MS_OK;
}

/* Loader configurations: one per task, endless; the schedule picks which one serves a step. */
static void configure_loaders(ms_ft_run *r)
{
    const ms_ft_run_config *o = &r->cfg;
    r->steps_per_epoch = 0;
    for (int t = 0; t < r->n_tasks; t++) {
        ms_loader_config *lc = &r->lc[t];
        ms_loader_config_default(lc);
        lc->n_stores = 1;
        lc->stores[0] = r->td[t].store;
        lc->store_paths[0] = r->td[t].path;
        lc->selection[0] = &r->td[t].train;
        lc->seed = ms_rng_stream((uint64_t)o->seed, 0x10ad, (uint64_t)t);
        lc->shuffle = 1;
        lc->drop_last = 0;
        lc->n_epochs = 0;
        lc->global_batch = o->batch * r->world; /* each rank reads its share of every global batch */
        lc->rank = r->rank;
        lc->world = r->world;
        lc->n_threads = r->workers;
        lc->pinned = r->dev->kind == MS_DEV_CUDA;
        lc->prep = r->m.cfg.prep;
        lc->labels = 1;
        lc->label_map[0] = r->td[t].label_map;
        lc->augment = o->augment;
        if (lc->augment) ms_aug_config_seg(&lc->aug);
        const uint64_t gb = (uint64_t)o->batch * (uint64_t)r->world;
        uint64_t spe = (uint64_t)((r->td[t].train.n + gb - 1) / gb);
        r->steps_per_epoch += (int64_t)spe;
    }
    r->total = o->max_steps > 0 ? o->max_steps : (int64_t)o->epochs * r->steps_per_epoch;
    /* the default warm-up: finetune-SAM's 200 steps, but never most of a short few-shot run */
    if (r->cfg.warmup < 0) r->cfg.warmup = (int)(r->total / 10 < 200 ? r->total / 10 : 200);
}

static ms_status alloc_buffers(ms_ft_run *r)
{
    size_t B = (size_t)r->B;
    r->img = malloc(B * 3 * r->S * r->S * sizeof(float));
    r->target = malloc(B * r->P * sizeof(int32_t));
    r->bin = malloc(B * r->P);
    r->logits_host = malloc(B * r->Cmax * r->P * sizeof(float));
    r->emb_host = malloc(B * r->emb_floats * sizeof(float));
    r->keys = malloc(B * sizeof(uint64_t));
    r->ids = malloc(B * sizeof(uint64_t));
    MS_FAIL_IF(!r->img || !r->target || !r->bin || !r->logits_host || !r->emb_host || !r->keys || !r->ids, MS_ENOMEM,
               "out of memory");
    MS_TRY(ms_dev_alloc(r->dev, B * r->emb_floats * sizeof(float), (void **)&r->emb_dev));
    if (r->cfg.cache_embeddings) MS_TRY(ms_emb_cache_new(r->emb_floats, &r->cache));
    return MS_OK;
}

/* A fresh run's RUN/config.json and RUN/shots.json (the split as used, reusable with a split file). */
static ms_status write_run_files(ms_ft_run *r, const char *shots_path)
{
    const ms_ft_run_config *o = &r->cfg;
    char p[MS_PATH_MAX];
    MS_TRY(ms_path_join(p, o->out, "config.json"));
    MS_TRY(ms_write_file_atomic(p, r->config_json, strlen(r->config_json)));
    const char *sp[MS_FT_MAX_TASKS];
    ms_selection tr[MS_FT_MAX_TASKS], va[MS_FT_MAX_TASKS];
    int single[MS_FT_MAX_TASKS];
    for (int t = 0; t < r->n_tasks; t++) {
        sp[t] = r->td[t].path;
        tr[t] = r->td[t].train;
        va[t] = r->td[t].val;
        single[t] = r->td[t].single;
    }
    ms_split_spec ss;
    ms_split_spec_default(&ss);
    ss.seed = (uint64_t)o->seed;
    ss.val_fraction = o->val_fraction;
    ss.labeled_only = 1;
    ss.shots = o->shots;
    ss.shot_unit = o->shot_unit;
    return ms_split_save(shots_path, &ss, r->n_tasks, sp, tr, va, single);
}

static ms_status open_run(ms_ft_run *r)
{
    const ms_ft_run_config *o = &r->cfg;
    char ckdir[MS_PATH_MAX] = "", shots_path[MS_PATH_MAX];
    int64_t ckstep = 0;
    if (o->resume) MS_TRY(ms_ckpt_dir_latest(o->out, &ckstep, ckdir));
    ms_ft_config fc;
    ms_ft_config_default(&fc);
    MS_TRY(open_tasks(r, &fc));
    MS_TRY(build_model(r, &fc));
    const ms_ft_config *c = &r->m.cfg;
    MS_FAIL_IF(o->cache_embeddings && r->m.train_bn, MS_EINVAL, "--cache-embeddings with --compat-finetune-sam on "
               "%s: finetune-SAM's train mode runs TinyViT's BatchNorms on batch statistics, so a slice's embedding "
               "changes with its batch", c->model);
    r->S = c->prep.size;
    r->L = c->prep.label_size;
    r->P = (int64_t)r->L * r->L;
    r->B = o->batch;
    r->emb_floats = (int64_t)256 * r->m.sam.emb_h * r->m.sam.emb_w;
    r->Cmax = 2;
    for (int t = 0; t < r->n_tasks; t++) if (ms_ft_out_channels(c, t) > r->Cmax) r->Cmax = ms_ft_out_channels(c, t);
    if (!r->m.sam.cfg.tinyvit) ms_sam_encoder_set_recompute(&r->m.sam.enc, o->recompute);
    MS_TRY(ms_ft_model_reserve(&r->m, o->batch, 1));
    MS_TRY(ms_optimizer_init(&r->opt, &r->m.sam.ps, 0.9f, 0.999f, 1e-8f, (float)o->weight_decay));
    if (o->zero1) MS_TRY(ms_optimizer_shard(&r->opt, o->dist));
    /* one parameter block: its trainable gradients are summed over ranks after the backward */
    ms_grad_sync_init(&r->gs, o->dist, o->bucket_bytes);
    MS_TRY(ms_grad_sync_add(&r->gs, &r->m.sam.ps));
    /* the mask decoder's and prompt encoder's backward runs before the encoder's: with them final, the buckets from
     * the array's end start block by block while the encoder's backward goes on */
    if (r->world > 1 && !r->m.sam.cfg.tinyvit) /* TinyViT has no per-block hook: its buckets start at the end */
        ms_sam_encoder_set_grads_hook(&r->m.sam.enc, ms_grad_sync_ready, &r->gs, 1);
    MS_TRY(ms_ft_loss_init(&r->loss, r->dev, (int64_t)o->batch * r->P));
    r->pgo.scale = (float)r->S / (float)r->L;

    MS_TRY(ms_path_join(shots_path, o->out, "shots.json"));
    const char *split_file = o->resume ? shots_path : o->split;
    for (int t = 0; t < r->n_tasks; t++) {
        MS_TRY(select_task(r, t, split_file));
        r->any_val |= r->td[t].val.n > 0;
    }
    configure_loaders(r);
    MS_FAIL_IF(!(r->config_json = config_json(r, 1)), MS_ENOMEM, "out of memory");
    if (o->resume) {
        MS_TRY(load_checkpoint(r, ckdir));
        for (int t = 0; t < r->n_tasks; t++) r->lc[t].resume = &r->td[t].lstate;
        snprintf(r->resumed_from, sizeof r->resumed_from, "%s", ckdir);
        r->resumed_step = r->step;
    }
    MS_TRY(alloc_buffers(r));
    if (r->cache && r->step > 0) MS_TRY(replay_cache(r, r->step));
    for (int t = 0; t < r->n_tasks; t++) MS_TRY(ms_loader_open(&r->lc[t], &r->td[t].loader));
    /* every rank has read what it needs of RUN/ (the checkpoint, the split file) before rank 0 writes there */
    MS_TRY(ms_dist_barrier(o->dist));
    if (r->rank != 0) return MS_OK;
    ms_run_mode mode;
    MS_TRY(ms_run_mode_of(o->out, o->resume ? o->out : NULL, o->overwrite, &mode));
    MS_TRY(ms_run_dir_prepare(o->out, mode)); /* the first write into RUN/: the split file has been read */
    /* a kill between a checkpoint's DONE and its prune, or during the prune: finish it (as pretrain does) */
    if (o->resume) MS_TRY(ms_ckpt_dir_prune(o->out, o->keep_last, r->step));
    char p[MS_PATH_MAX];
    MS_TRY(ms_path_join(p, o->out, "val"));
    MS_TRY(ms_mkdirs(p));
    if (!o->resume) MS_TRY(write_run_files(r, shots_path));
    MS_TRY(ms_runlog_open(&r->lg, o->out));
    return o->resume ? ms_runlog_rewind(&r->lg, r->step + 1) : MS_OK; /* what followed the checkpoint is superseded */
}

ms_status ms_ft_run_open(const ms_ft_run_config *cfg, ms_device *dev, ms_ft_run **out)
{
    *out = NULL;
    MS_TRY(ms_ft_run_config_check(cfg));
    ms_run_mode mode;
    MS_TRY(ms_run_mode_of(cfg->out, cfg->resume ? cfg->out : NULL, cfg->overwrite, &mode));
    /* refused before anything is loaded; rank 0 alone writes RUN/, so the others would see its files */
    if (ms_dist_rank(cfg->dist) == 0) MS_TRY(ms_run_dir_check(cfg->out, mode));
    ms_ft_run *r = calloc(1, sizeof *r);
    MS_FAIL_IF(!r, MS_ENOMEM, "out of memory");
    r->cfg = *cfg;
    r->dev = dev;
    r->rank = ms_dist_rank(cfg->dist);
    r->world = ms_dist_world(cfg->dist);
    r->workers = cfg->workers ? cfg->workers : dev->n_threads;
    r->best_score = NAN;
    r->best_step = -1;
    r->resumed_step = -1;
    ms_promptgen_batch_init(&r->pg);
    ms_promptgen_opts_default(&r->pgo);
    ms_status rc = open_run(r);
    if (rc) { ms_ft_run_close(r); return rc; }
    r->t0 = ms_now_s();
    r->start_step = r->step;
    r->samples0 = r->samples;
    *out = r;
    return MS_OK;
}

void ms_ft_run_close(ms_ft_run *r)
{
    if (!r) return;
    ms_runlog_close(&r->lg);
    for (int t = 0; t < MS_FT_MAX_TASKS; t++)
        if (r->td[t].loader) ms_loader_close(r->td[t].loader); /* before any store: tasks may share one */
    for (int t = 0; t < MS_FT_MAX_TASKS; t++) {
        task_data *td = &r->td[t];
        ms_selection_free(&td->train);
        ms_selection_free(&td->val);
        if (td->own_store) ms_store_close(td->store);
        free(td->label_map);
    }
    ms_emb_cache_free(r->cache);
    ms_promptgen_batch_free(&r->pg);
    ms_ft_loss_free(&r->loss);
    if (r->emb_dev) ms_dev_free(r->dev, r->emb_dev);
    free(r->img); free(r->target); free(r->bin); free(r->logits_host); free(r->emb_host);
    free(r->keys); free(r->ids);
    if (r->config_json) cJSON_free(r->config_json);
    ms_optimizer_free(&r->opt);
    ms_ft_model_free(&r->m);
    free(r);
}

void ms_ft_run_get_info(const ms_ft_run *r, ms_ft_run_info *info)
{
    memset(info, 0, sizeof *info);
    const ms_ft_config *c = &r->m.cfg;
    info->model = c->model;
    info->input_size = r->S;
    info->n_tasks = r->n_tasks;
    for (int t = 0; t < r->n_tasks; t++) {
        ms_ft_run_task_info *ti = &info->task[t];
        ti->name = c->task[t].name;
        ti->store = r->td[t].path;
        ti->num_cls = c->task[t].num_cls;
        ti->n_train = r->td[t].train.n;
        ti->n_empty = r->td[t].n_empty;
        ti->n_val = r->td[t].val.n;
        ti->single_volume = r->td[t].single;
    }
    info->total = r->total;
    info->steps_per_epoch = r->steps_per_epoch;
    info->warmup = r->cfg.warmup;
    info->warmup_exceeds_run = r->cfg.warmup >= r->total;
    info->step = r->step;
    info->trainable = ms_ft_model_trainable_numel(&r->m, &info->n_trainable_tensors);
    info->has_val = r->any_val;
    info->resumed_step = r->resumed_step;
    info->resumed_from = r->resumed_from[0] ? r->resumed_from : NULL;
    info->best_score = r->best_score;
    info->best_epoch = r->best_epoch;
    info->best_step = r->best_step;
    info->stopped_early = r->stopped_early;
    info->cache_count = r->cache ? ms_emb_cache_count(r->cache) : 0;
    info->cache_hits = r->cache ? ms_emb_cache_hits(r->cache) : 0;
    info->world = r->world;
    info->global_batch = r->B * r->world;
}

const ms_ft_model *ms_ft_run_model(const ms_ft_run *r) { return &r->m; }
const ms_optimizer *ms_ft_run_optimizer(const ms_ft_run *r) { return &r->opt; }
