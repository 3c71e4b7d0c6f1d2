/* tools/cmd_finetune.c — `mrisam finetune`: supervised fine-tuning of SAM on labelled MRI stores, finetune-SAM's
 * recipe (paper.md §2-3) with full / LoRA / adapter methods, decoder or encoder+decoder scope, optional box/point
 * prompts, few-shot subsets and several tasks at once (docs/FINETUNE.md; flags and RUN/ layout as cli.md says).
 *
 * Step: the task of this step (seeded schedule) → its loader's batch (foreground training slices only) → cached
 * embeddings or the image encoder → the task's prompt encoder + mask decoder → Dice + CE on the low-res logits →
 * backward → AdamW with warm-up + poly (or cosine) lr. Every --val-every epochs: foreground Dice per class on all
 * slices of the held-out volumes; the best score goes to RUN/best/ (written aside, then swapped in). Checkpoints
 * RUN/ckpt/step_%08d/ hold the model, AdamW moments, loader states and counters; --resume continues bit-exactly on
 * the CPU (every random choice is a pure function of (seed, step, sample)). SIGINT/SIGTERM: finish the step,
 * checkpoint, exit 75.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* renameat2 */
#endif
#include <errno.h>
#include <fcntl.h>
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
#include "data/ingest.h"
#include "data/loader.h"
#include "finetune/ft_model.h"
#include "finetune/ft_train.h"
#include "finetune/prompt_gen.h"
#include "image_io.h"
#include "ops.h"
#include "pretrain/optimizer.h"

static volatile sig_atomic_t g_stop; /* the CLI's one piece of process state: a signal asked us to stop */

static void on_signal(int sig)
{
    if (g_stop) _exit(128 + sig); /* second signal: exit at once; the last complete checkpoint stays valid */
    g_stop = 1;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct opts {
    ms_strlist stores;
    const char *ckpt, *init, *model, *out, *resume, *method, *scope, *prompt, *shot_unit, *split, *schedule;
    const char *lora_blocks, *adapter_blocks, *augment, *resize, *norm, *device, *task_weights;
    int shots, epochs, batch, warmup, val_every, patience, lora_rank, cache, compat, input_size, threads, workers;
    int save_every, keep_last, val_slices;
    int64_t max_steps, seed;
    double val_fraction, lr, wd, clip, min_lr;
} opts;

/* ---- the run --------------------------------------------------------------------------------------------------- */

typedef struct task_data {
    char path[4096];              /* store path (without :TASK) */
    ms_store *store;
    ms_selection train, val;
    int own_store;                /* opened here (a store named twice is opened once) */
    int store_id;                 /* the first task with this store: the embedding cache's key */
    int single;                   /* one labelled volume: split by slice blocks */
    uint16_t *label_map;          /* 65536 entries */
    ms_loader *loader;
    ms_loader_state lstate;
} task_data;

typedef struct run_state {
    int64_t step, skipped, samples;
    double best_score, best_epoch;
    int64_t best_step;
    int stopped_early;
} run_state;

typedef struct ft_run {
    opts *o;
    ms_device dev;
    ms_ft_model m;
    ms_optimizer opt;
    ms_schedule sched;
    int n_tasks;
    task_data td[MS_FT_MAX_TASKS];
    double weights[MS_FT_MAX_TASKS];
    ms_loader_config lc[MS_FT_MAX_TASKS];
    ms_ft_loss loss;
    ms_emb_cache *cache;
    ms_promptgen_batch pg;
    ms_promptgen_opts pgo;
    ms_runlog lg;
    char *config_json;
    int S, L, g, B, Cmax;
    int64_t P, emb_floats, steps_per_epoch, total, warmup;
    /* host / device scratch */
    float *img;          /* host (B, 3, S, S) compacted images */
    int32_t *target;     /* host (B, P) */
    uint8_t *bin;        /* host (B, L, L) binary masks (prompt modes) */
    float *emb_host;     /* host (B, emb_floats) (cache) */
    float *emb_dev;      /* device (B, emb_floats) (cache, prompt validation) */
    float *logits_host;  /* host (B, Cmax, P) */
    uint64_t *keys, *ids;
    run_state st;
    double t0;
} ft_run;

/* "path:TASK" → path and task name (a suffix after the last ':' that holds no '/'). */
static void split_store_arg(const char *arg, char *path, size_t np, char *task, size_t nt)
{
    const char *c = strrchr(arg, ':');
    if (c && c[1] && !strchr(c + 1, '/')) {
        snprintf(path, np, "%.*s", (int)(c - arg), arg);
        snprintf(task, nt, "%s", c + 1);
    } else {
        snprintf(path, np, "%s", arg);
        ms_ft_task_default_name(path, task, nt);
    }
}

/* A blocks list "0,1,10,11" (or "all") → bit mask (0 = every block). */
static int parse_blocks(const char *s, uint64_t *out)
{
    *out = 0;
    if (!s || !strcmp(s, "all") || !*s) return 0;
    const char *p = s;
    while (*p) {
        char *e;
        long v = strtol(p, &e, 10);
        if (e == p || v < 0 || v > 63) return -1;
        *out |= 1ull << v;
        p = e;
        if (*p == ',') p++;
        else if (*p) return -1;
    }
    return 0;
}

/* Axis and intensity normalisation from a store's "params" meta (they travel with the checkpoint). */
static void store_prep_meta(ms_store *s, ms_ft_config *c)
{
    char *js = NULL;
    if (ms_store_meta_json(s, "params", &js) || !js) { ms_error_clear(); return; }
    cJSON *j = cJSON_Parse(js);
    free(js);
    if (!j) return;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "axis"), *n = cJSON_GetObjectItemCaseSensitive(j, "norm");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "percentiles");
    if (cJSON_IsString(a)) {
        const char *v = a->valuestring;
        c->axis = !strcmp(v, "sagittal") ? MS_AXIS_SAGITTAL : !strcmp(v, "coronal") ? MS_AXIS_CORONAL
                : !strcmp(v, "axial") ? MS_AXIS_AXIAL : MS_AXIS_AUTO;
    }
    if (cJSON_IsString(n)) ms_norm_parse(n->valuestring, &c->intensity);
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 2) {
        c->p_lo = cJSON_GetArrayItem(p, 0)->valuedouble;
        c->p_hi = cJSON_GetArrayItem(p, 1)->valuedouble;
    }
    cJSON_Delete(j);
}

/* Replaces dst (a directory) by src atomically when both exist (renameat2 RENAME_EXCHANGE), else renames. */
static ms_status swap_dir_in(const char *src, const char *dst)
{
    struct stat sb;
    if (stat(dst, &sb) == 0) {
        if (renameat2(AT_FDCWD, src, AT_FDCWD, dst, RENAME_EXCHANGE))
            return ms_error(errno, "%s: %s", dst, strerror(errno));
        return MS_OK;
    }
    if (rename(src, dst)) return ms_error(errno, "%s: %s", dst, strerror(errno));
    return MS_OK;
}

static void rm_dir_files(const char *dir)
{
    char p[4400];
    static const char *names[] = {"model.safetensors", "meta.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
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

/* ---- checkpoints ----------------------------------------------------------------------------------------------- */

static ms_status save_checkpoint(ft_run *R)
{
    char dir[4200], p[4400];
    MS_TRY(ms_ckpt_dir_create(R->o->out, R->st.step, dir, sizeof dir));
    char extra[256];
    snprintf(extra, sizeof extra, "{\"step\": %lld, \"epoch\": %.6f}", (long long)R->st.step,
             (double)R->st.step / R->steps_per_epoch);
    MS_TRY(ms_ft_model_save(&R->m, dir, extra));
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status rc = ms_optimizer_moments_to_sd(&R->opt, &sd);
    snprintf(p, sizeof p, "%s/optim.safetensors", dir);
    if (!rc) rc = ms_sd_save(p, &sd);
    ms_sd_free(&sd);
    if (rc) return rc;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", (double)R->st.step);
    cJSON_AddNumberToObject(j, "adam_step", (double)R->opt.step);
    cJSON_AddNumberToObject(j, "skipped", (double)R->st.skipped);
    cJSON_AddNumberToObject(j, "samples", (double)R->st.samples);
    /* the best score as a bit pattern too, so that a resumed run compares exactly as the uninterrupted one */
    char bits[32];
    uint64_t u;
    memcpy(&u, &R->st.best_score, 8);
    snprintf(bits, sizeof bits, "%016llx", (unsigned long long)u);
    cJSON_AddStringToObject(j, "best_score_bits", bits);
    cJSON_AddNumberToObject(j, "best_score", isfinite(R->st.best_score) ? R->st.best_score : -1);
    cJSON_AddNumberToObject(j, "best_epoch", R->st.best_epoch);
    cJSON_AddNumberToObject(j, "best_step", (double)R->st.best_step);
    cJSON_AddNumberToObject(j, "stopped_early", R->st.stopped_early);
    cJSON_AddNumberToObject(j, "n_tasks", R->n_tasks);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    snprintf(p, sizeof p, "%s/state.json", dir);
    rc = txt ? ms_write_file_atomic(p, txt, strlen(txt)) : ms_error(MS_ENOMEM, "out of memory");
    free(txt);
    if (rc) return rc;
    for (int t = 0; t < R->n_tasks; t++) {
        ms_loader_state ls;
        ms_loader_state_get(R->td[t].loader, &ls);
        snprintf(p, sizeof p, "%s/loader_%d.bin", dir, t); /* the loader's fixed-width resume struct, as is */
        MS_TRY(ms_write_file_atomic(p, &ls, sizeof ls));
    }
    snprintf(p, sizeof p, "%s/config.json", dir);
    MS_TRY(ms_write_file_atomic(p, R->config_json, strlen(R->config_json)));
    MS_TRY(ms_ckpt_dir_commit(dir));
    return ms_ckpt_dir_prune(R->o->out, R->o->keep_last, -1);
}

static ms_status load_checkpoint(ft_run *R, const char *dir)
{
    char p[4400];
    ms_state_dict sd;
    ms_sd_init(&sd);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    ms_status rc = ms_sd_load(p, &sd);
    if (!rc) rc = ms_params_load(&R->m.sam.ps, &sd, "");
    ms_sd_free(&sd);
    if (rc) { ms_error_prefix("%s", p); return rc; }
    ms_sd_init(&sd);
    snprintf(p, sizeof p, "%s/optim.safetensors", dir);
    rc = ms_sd_load(p, &sd);
    if (!rc) rc = ms_optimizer_moments_from_sd(&R->opt, &sd);
    ms_sd_free(&sd);
    if (rc) { ms_error_prefix("%s", p); return rc; }
    char *js;
    size_t len;
    snprintf(p, sizeof p, "%s/config.json", dir);
    MS_TRY(ms_read_file(p, 1 << 20, &js, &len));
    int same = !strcmp(js, R->config_json);
    free(js);
    MS_FAIL_IF(!same, MS_EINVAL, "%s: the options differ from the run's (give the same options with --resume)", p);
    snprintf(p, sizeof p, "%s/state.json", dir);
    cJSON *j;
    MS_TRY(ms_read_json(p, 1 << 20, &j));
#define JN(k) (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, k)) ? cJSON_GetObjectItemCaseSensitive(j, k)->valuedouble : 0)
    R->st.step = (int64_t)JN("step");
    R->opt.step = (int64_t)JN("adam_step");
    R->st.skipped = (int64_t)JN("skipped");
    R->st.samples = (int64_t)JN("samples");
    R->st.best_epoch = JN("best_epoch");
    R->st.best_step = (int64_t)JN("best_step");
    R->st.stopped_early = (int)JN("stopped_early");
    int nt = (int)JN("n_tasks");
#undef JN
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(j, "best_score_bits");
    unsigned long long u = 0;
    int okbits = cJSON_IsString(bs) && sscanf(bs->valuestring, "%llx", &u) == 1;
    cJSON_Delete(j);
    MS_FAIL_IF(!okbits || nt != R->n_tasks, MS_EFORMAT, "%s: incomplete state", p);
    memcpy(&R->st.best_score, &u, 8);
    for (int t = 0; t < R->n_tasks; t++) {
        snprintf(p, sizeof p, "%s/loader_%d.bin", dir, t);
        MS_TRY(ms_read_file(p, 4096, &js, &len));
        if (len != sizeof(ms_loader_state)) {
            free(js);
            return ms_error(MS_EFORMAT, "%s: %zu bytes, expected %zu", p, len, sizeof(ms_loader_state));
        }
        memcpy(&R->td[t].lstate, js, len);
        free(js);
    }
    return MS_OK;
}

/* RUN/best: written into RUN/best.tmp, then swapped in, so a crash leaves the old or the new best, whole. */
static ms_status save_best(ft_run *R, const char *extra)
{
    char tmp[4200], dst[4200];
    snprintf(tmp, sizeof tmp, "%s/best.tmp", R->o->out);
    snprintf(dst, sizeof dst, "%s/best", R->o->out);
    rm_dir_files(tmp);
    MS_TRY(ms_mkdirs(tmp));
    MS_TRY(ms_ft_model_save(&R->m, tmp, extra));
    MS_TRY(ms_fsync_dir(tmp));
    MS_TRY(swap_dir_in(tmp, dst));
    MS_TRY(ms_fsync_dir(R->o->out));
    rm_dir_files(tmp); /* the previous best, after an exchange */
    return MS_OK;
}

/* ---- embeddings ------------------------------------------------------------------------------------------------- */

/* Image embeddings of n images (host img, (n, 3, S, S)) of task t with slice keys `keys`: on the device at *emb.
 * With the cache, known slices are looked up and only the others encoded. */
static ms_status embed_batch(ft_run *R, int t, const float *img, const uint64_t *keys, int n, const float **emb)
{
    const size_t isz = (size_t)3 * R->S * R->S, esz = (size_t)R->emb_floats;
    if (!R->cache) {
        MS_TRY(ms_dev_from_host(&R->dev, R->m.x, img, (size_t)n * isz * sizeof(float)));
        MS_TRY(ms_ft_model_encode(&R->m, R->m.x, n));
        *emb = R->m.emb;
        return MS_OK;
    }
    int miss[256], nm = 0;
    for (int b = 0; b < n; b++) {
        const float *e = ms_emb_cache_get(R->cache, R->td[t].store_id, keys[b]);
        if (e) memcpy(R->emb_host + b * esz, e, esz * sizeof(float));
        else {
            MS_TRY(ms_dev_from_host(&R->dev, R->m.x + (size_t)nm * isz, img + b * isz, isz * sizeof(float)));
            miss[nm++] = b;
        }
    }
    if (nm) {
        MS_TRY(ms_ft_model_encode(&R->m, R->m.x, nm));
        for (int k = 0; k < nm; k++) {
            float *dst = R->emb_host + (size_t)miss[k] * esz;
            MS_TRY(ms_dev_to_host(&R->dev, dst, R->m.emb + (size_t)k * esz, esz * sizeof(float)));
            MS_TRY(ms_emb_cache_put(R->cache, R->td[t].store_id, keys[miss[k]], dst));
        }
    }
    MS_TRY(ms_dev_from_host(&R->dev, R->emb_dev, R->emb_host, (size_t)n * esz * sizeof(float)));
    *emb = R->emb_dev;
    return MS_OK;
}

/* ---- validation ----------------------------------------------------------------------------------------------- */

/* The gray input on 0..255; the zero padding outside the frame the slice fills (fh × fw) is black. */
static void gray_plane(const ms_prep_config *pc, const float *chw, int S, int fh, int fw, uint8_t *out, int stride)
{
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            float v = chw[(size_t)y * S + x];
            if (y >= fh || x >= fw) v = pc->norm == MS_NORM_SAM ? -ms_sam_pixel_mean[0] / ms_sam_pixel_std[0] : 0;
            if (pc->norm == MS_NORM_SAM) v = (v * ms_sam_pixel_std[0] + ms_sam_pixel_mean[0]) / 255.f;
            v = v < 0 ? 0 : v > 1 ? 1 : v;
            out[(size_t)y * stride + x] = (uint8_t)(v * 255.f + 0.5f);
        }
}

/* One validation pass over every task's held-out slices; returns the score (mean over tasks of the mean
 * foreground Dice; NaN when no class can be scored). Writes the log line and, for task 0, a PNG panel. */
static ms_status validate(ft_run *R, ms_ft_dice_acc *acc, double *score, double *vloss)
{
    const ms_ft_config *c = &R->m.cfg;
    const int S = R->S, L = R->L;
    const int64_t P = R->P;
    double lsum = 0;
    int64_t ln = 0;
    enum { PANEL = 4 };
    uint8_t *panel = NULL;
    int panel_n = 0;
    ms_status rc = MS_OK;
    for (int t = 0; t < R->n_tasks && !rc; t++) {
        const int C = ms_ft_out_channels(c, t);
        ms_ft_dice_reset(&acc[t], c->task[t].num_cls);
        if (!R->td[t].val.n) continue;
        ms_loader_config vc = R->lc[t];
        vc.resume = NULL;
        vc.selection[0] = &R->td[t].val;
        vc.shuffle = 0;
        vc.augment = 0;
        vc.n_epochs = 1;
        vc.drop_last = 0;
        vc.epoch_len = 0;
        ms_loader *vl = NULL;
        if ((rc = ms_loader_open(&vc, &vl))) break;
        const ms_batch *bt;
        int seen = 0;
        while (!rc && !(rc = ms_loader_next(vl, &bt)) && bt) {
            int n = bt->n;
            if (R->o->val_slices > 0 && seen + n > R->o->val_slices) n = R->o->val_slices - seen;
            if (n <= 0) break;
            seen += n;
            const float *emb;
            if ((rc = embed_batch(R, t, bt->image, bt->key, n, &emb))) break;
            if (c->prompt == MS_PROMPT_NONE) {
                if ((rc = ms_ft_model_decode(&R->m, t, emb, n, NULL))) break;
                for (int64_t i = 0; i < (int64_t)n * P; i++) R->target[i] = bt->label[i];
                double d, e;
                if ((rc = ms_ft_loss_run(&R->loss, R->m.logits, R->target, n, C, P, NULL, &d, &e))) break;
                lsum += (d + e) * n;
                ln += n;
                if ((rc = ms_dev_to_host(&R->dev, R->logits_host, R->m.logits, (size_t)n * C * P * sizeof(float))))
                    break;
                ms_ft_dice_add(&acc[t], R->logits_host, R->target, n, C, P);
                if (t == 0 && panel_n < PANEL) { /* image | ground truth | prediction */
                    if (!panel && !(panel = calloc((size_t)PANEL * S * 3 * S, 1))) { rc = ms_error(MS_ENOMEM, "out of memory"); break; }
                    for (int b = 0; b < n && panel_n < PANEL; b++, panel_n++) {
                        uint8_t *row = panel + (size_t)panel_n * S * 3 * S;
                        gray_plane(&c->prep, bt->image + (size_t)b * 3 * S * S, S, bt->height[b], bt->width[b], row, 3 * S);
                        const float *lg = R->logits_host + (size_t)b * C * P;
                        for (int y = 0; y < S; y++)
                            for (int x = 0; x < S; x++) {
                                int64_t i = (int64_t)(y * L / S) * L + x * L / S;
                                int best = 0;
                                for (int k = 1; k < C; k++) if (lg[k * P + i] > lg[best * P + i]) best = k;
                                row[(size_t)y * 3 * S + S + x] = (uint8_t)(bt->label[b * P + i] * 255 / (C - 1));
                                row[(size_t)y * 3 * S + 2 * S + x] = (uint8_t)(best * 255 / (C - 1));
                            }
                    }
                }
                continue;
            }
            /* prompt modes: every (slice, present class) is one binary target with deterministic prompts */
            for (int b = 0; b < n && !rc; b++) {
                const uint16_t *lb = bt->label + (size_t)b * P;
                int present[MS_FT_MAX_CLASSES] = {0};
                for (int64_t i = 0; i < P; i++) present[lb[i] < MS_FT_MAX_CLASSES ? lb[i] : 0] = 1;
                for (int k = 1; k < c->task[t].num_cls && !rc; k++) {
                    if (!present[k]) continue;
                    for (int64_t i = 0; i < P; i++) R->bin[i] = lb[i] == k;
                    uint64_t id = bt->key[b] * 64 + (uint64_t)k;
                    if ((rc = ms_promptgen_batch_fill(&R->pg, &R->pgo, c->prompt, R->bin, 1, L, L, 0, &id))) break;
                    if ((rc = ms_ft_model_decode(&R->m, t, emb + (size_t)b * R->emb_floats, 1, &R->pg.pr))) break;
                    for (int64_t i = 0; i < P; i++) R->target[i] = R->pg.target[i];
                    double d, e;
                    if ((rc = ms_ft_loss_run(&R->loss, R->m.logits, R->target, 1, 2, P, NULL, &d, &e))) break;
                    lsum += d + e;
                    ln++;
                    if ((rc = ms_dev_to_host(&R->dev, R->logits_host, R->m.logits, (size_t)2 * P * sizeof(float))))
                        break;
                    ms_ft_dice_add_binary(&acc[t], k, R->logits_host, R->target, P);
                }
            }
        }
        ms_loader_close(vl);
    }
    if (!rc && panel_n) {
        char p[4300];
        snprintf(p, sizeof p, "%s/val/step_%08lld.png", R->o->out, (long long)R->st.step);
        rc = ms_png_write_u8(p, panel, 3 * S, panel_n * S, 1);
    }
    free(panel);
    if (rc) return rc;
    double s = 0;
    int ns = 0;
    for (int t = 0; t < R->n_tasks; t++) {
        double v = ms_ft_dice_mean(&acc[t], NULL);
        if (!isnan(v)) { s += v; ns++; }
    }
    *score = ns ? s / ns : NAN;
    *vloss = ln ? lsum / ln : NAN;
    return MS_OK;
}

/* ---- one training step ------------------------------------------------------------------------------------------ */

typedef struct step_out {
    int task, n, skipped;
    double dice, ce, ce_fg, ce_bg;
    float gnorm, lr;
} step_out;

static ms_status train_step(ft_run *R, step_out *so)
{
    const ms_ft_config *c = &R->m.cfg;
    const int S = R->S, L = R->L;
    const int64_t P = R->P;
    const size_t isz = (size_t)3 * S * S;
    const uint64_t seed = (uint64_t)R->o->seed;
    memset(so, 0, sizeof *so);
    int t = ms_ft_task_at(seed, R->st.step, R->n_tasks, R->weights);
    so->task = t;
    const ms_batch *bt;
    MS_TRY(ms_loader_next(R->td[t].loader, &bt));
    MS_FAIL_IF(!bt, MS_EINVAL, "finetune: the loader of task %s ran out of data", c->task[t].name);
    so->skipped = bt->n_skipped;
    /* samples that take part: valid records; in prompt modes those with a present class (one picked per sample) */
    int n = 0;
    for (int b = 0; b < bt->n; b++) {
        if (!bt->valid[b]) { so->skipped++; continue; }
        const uint16_t *lb = bt->label + (size_t)b * P;
        int k = 0;
        if (c->prompt != MS_PROMPT_NONE) {
            int present[MS_FT_MAX_CLASSES] = {0}, np = 0, list[MS_FT_MAX_CLASSES];
            for (int64_t i = 0; i < P; i++) present[lb[i] < MS_FT_MAX_CLASSES ? lb[i] : 0] = 1;
            for (int q = 1; q < c->task[t].num_cls; q++) if (present[q]) list[np++] = q;
            if (!np) { so->skipped++; continue; }
            k = list[ms_rand_u64(ms_rng_stream(seed, 0xc1a55, (uint64_t)R->st.step), (uint64_t)b) % (uint64_t)np];
            for (int64_t i = 0; i < P; i++) R->bin[(size_t)n * P + i] = lb[i] == k;
        }
        memcpy(R->img + (size_t)n * isz, bt->image + (size_t)b * isz, isz * sizeof(float));
        if (c->prompt == MS_PROMPT_NONE)
            for (int64_t i = 0; i < P; i++) R->target[(size_t)n * P + i] = lb[i];
        R->keys[n] = bt->key[b];
        R->ids[n] = (uint64_t)R->st.step * (uint64_t)R->B + (uint64_t)b;
        n++;
    }
    so->n = n;
    so->lr = ms_lr_at(R->sched, R->st.step, R->warmup, R->total, (float)R->o->lr, (float)R->o->min_lr);
    if (!n) return MS_OK; /* nothing to learn from: the step passes without an update */
    const float *img = R->img;
    const float *emb;
    MS_TRY(embed_batch(R, t, img, R->keys, n, &emb));
    int C = ms_ft_out_channels(c, t);
    const ms_sam_prompts *pr = NULL;
    if (c->prompt != MS_PROMPT_NONE) {
        MS_TRY(ms_promptgen_batch_fill(&R->pg, &R->pgo, c->prompt, R->bin, n, L, L, seed ^ 0x9707, R->ids));
        for (int64_t i = 0; i < (int64_t)n * P; i++) R->target[i] = R->pg.target[i];
        pr = &R->pg.pr;
    }
    MS_TRY(ms_ft_model_decode(&R->m, t, emb, n, pr));
    MS_TRY(ms_ft_loss_run(&R->loss, R->m.logits, R->target, n, C, P, R->m.dlogits, &so->dice, &so->ce));
    MS_TRY(ms_ft_loss_split(&R->loss, R->m.logits, R->target, n, C, P, &so->ce_fg, &so->ce_bg));
    MS_TRY(ms_ft_model_backward(&R->m, R->m.dlogits));
    float *g = R->m.sam.ps.grad;
    int64_t gn = R->m.sam.ps.numel_trainable;
    MS_TRY(ms_clip_grad_norm(&R->dev, &g, &gn, 1, (float)R->o->clip, &so->gnorm));
    if (isfinite(so->gnorm) && isfinite(so->dice) && isfinite(so->ce)) MS_TRY(ms_optimizer_step(&R->opt, so->lr, NULL));
    else so->skipped += n;
    return ms_params_zero_grads(&R->m.sam.ps);
}

/* ---- main ------------------------------------------------------------------------------------------------------- */

static char *make_config_json(const opts *o, const ms_ft_config *c, int n_tasks, task_data *td, int64_t total,
                              int64_t warmup)
{
    cJSON *cj = cJSON_CreateObject();
    cJSON_AddStringToObject(cj, "command", "finetune");
    cJSON_AddStringToObject(cj, "model", c->model);
    cJSON_AddStringToObject(cj, "ckpt", o->ckpt ? o->ckpt : "");
    cJSON_AddStringToObject(cj, "init", o->init ? o->init : "checkpoint");
    cJSON *sa = cJSON_AddArrayToObject(cj, "stores");
    for (int t = 0; t < n_tasks; t++) {
        cJSON *so = cJSON_CreateObject();
        cJSON_AddStringToObject(so, "path", td[t].path);
        cJSON_AddStringToObject(so, "task", c->task[t].name);
        cJSON_AddNumberToObject(so, "train_slices", (double)td[t].train.n);
        cJSON_AddNumberToObject(so, "val_slices", (double)td[t].val.n);
        cJSON_AddItemToArray(sa, so);
    }
    cJSON_AddStringToObject(cj, "method", o->method);
    cJSON_AddStringToObject(cj, "scope", o->scope);
    cJSON_AddStringToObject(cj, "prompt", o->prompt);
    cJSON_AddNumberToObject(cj, "shots", o->shots);
    cJSON_AddStringToObject(cj, "shot_unit", o->shot_unit);
    cJSON_AddStringToObject(cj, "split", o->split ? o->split : "");
    cJSON_AddNumberToObject(cj, "val_fraction", o->val_fraction);
    cJSON_AddNumberToObject(cj, "epochs", o->epochs);
    cJSON_AddNumberToObject(cj, "max_steps", (double)total);
    cJSON_AddNumberToObject(cj, "batch_size", o->batch);
    cJSON_AddNumberToObject(cj, "lr", o->lr);
    cJSON_AddNumberToObject(cj, "min_lr", o->min_lr);
    cJSON_AddNumberToObject(cj, "weight_decay", o->wd);
    cJSON_AddNumberToObject(cj, "warmup_steps", (double)warmup);
    cJSON_AddStringToObject(cj, "schedule", o->schedule);
    cJSON_AddNumberToObject(cj, "clip_grad", o->clip);
    cJSON_AddNumberToObject(cj, "val_every", o->val_every);
    cJSON_AddNumberToObject(cj, "val_slices", o->val_slices);
    cJSON_AddNumberToObject(cj, "patience", o->patience);
    cJSON_AddNumberToObject(cj, "lora_rank", o->lora_rank);
    cJSON_AddStringToObject(cj, "lora_blocks", o->lora_blocks ? o->lora_blocks : "all");
    cJSON_AddStringToObject(cj, "adapter_blocks", o->adapter_blocks ? o->adapter_blocks : "all");
    cJSON_AddNumberToObject(cj, "cache_embeddings", o->cache);
    cJSON_AddNumberToObject(cj, "compat_finetune_sam", o->compat);
    cJSON_AddStringToObject(cj, "augment", o->augment);
    cJSON_AddNumberToObject(cj, "input_size", c->prep.size);
    cJSON_AddStringToObject(cj, "resize", c->prep.resize == MS_RESIZE_STRETCH ? "stretch" : "longest");
    cJSON_AddStringToObject(cj, "norm", c->prep.norm == MS_NORM_UNIT ? "medsam" : "sam");
    cJSON_AddNumberToObject(cj, "label_size", c->prep.label_size);
    cJSON_AddStringToObject(cj, "task_weights", o->task_weights);
    cJSON_AddNumberToObject(cj, "seed", (double)o->seed);
    cJSON_AddNumberToObject(cj, "save_every", o->save_every);
    cJSON_AddNumberToObject(cj, "keep_last", o->keep_last);
    char *s = cJSON_Print(cj);
    cJSON_Delete(cj);
    return s;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam finetune --store S[:TASK] [--store S2[:TASK2] ...] (--ckpt F | --init random --model NAME) -o RUN/\n"
        "       --method full|lora|adapter --scope decoder|encoder+decoder [options]",
        "Supervised fine-tuning of SAM on labelled slices (finetune-SAM's recipe: Dice + CE, AdamW, warm-up + poly\n"
        "decay, validation every 2 epochs, early stopping). Each store is one task with its own class map (the\n"
        "sorted label values, 0 = background) and output head; tasks share everything else. Training uses only\n"
        "slices whose label has foreground; splits are by volume (one labelled volume: slice blocks with a gap).\n"
        "Writes RUN/config.json, shots.json, log.jsonl, tb/, ckpt/step_*/, val/step_*.png and best/ (the best\n"
        "validation Dice; predict and eval read it). SIGINT/SIGTERM: finish the step, checkpoint, exit 75;\n"
        "--resume RUN/ with the same options continues exactly. docs/FINETUNE.md has the details.",
        "  mrisam finetune --store brain/ --init random --model vit_test --method full --scope decoder \\\n"
        "      --shots 8 --max-steps 300 --warmup-steps 30 --val-every 20 -o run/\n"
        "  mrisam finetune --store prostate/ --ckpt sam_vit_b_01ec64.pth --method lora --scope encoder+decoder -o run/\n"
        "  mrisam finetune --store a/:brain --store b/:tissue --ckpt sam_mri_vit_b.pth --method adapter \\\n"
        "      --scope encoder+decoder -o run/"};
    opts o = {.prompt = "none", .shot_unit = "slice", .schedule = "poly", .augment = "none", .device = "cpu",
              .task_weights = "size", .epochs = 200, .batch = 4, .warmup = 200, .val_every = 2, .patience = 20,
              .lora_rank = 4, .save_every = 1000, .keep_last = 2, .val_fraction = 0.2, .lr = 1e-3, .wd = 0.1};
    const ms_opt table[] = {
        {"store", MS_OPT_LIST, &o.stores, "S[:TASK]", "a labelled store; repeat for several tasks (name: TASK or the "
                                                      "store's folder name)"},
        {"ckpt", MS_OPT_STR, &o.ckpt, "FILE", "SAM weights to start from (.pth or .safetensors)"},
        {"init", MS_OPT_STR, &o.init, "random", "start from PyTorch's default initialisation (with --model)"},
        {"model", MS_OPT_STR, &o.model, "NAME", "vit_b, vit_l, vit_h or vit_test (with --init random)"},
        {"o", MS_OPT_STR, &o.out, "RUN", "run directory"},
        {"method", MS_OPT_STR, &o.method, "full|lora|adapter", "what is fine-tuned (docs/FINETUNE.md table)"},
        {"scope", MS_OPT_STR, &o.scope, "decoder|encoder+decoder", "decoder only (encoder frozen) or both"},
        {"prompt", MS_OPT_STR, &o.prompt, "none|box|point|hybrid", "prompts from the labels (default none: automatic)"},
        {"shots", MS_OPT_INT, &o.shots, "K", "few-shot: K training slices (or volumes), chosen by seed"},
        {"shot-unit", MS_OPT_STR, &o.shot_unit, "slice|volume", "what --shots counts (default slice)"},
        {"split", MS_OPT_STR, &o.split, "FILE", "reuse a split / shots file (RUN/shots.json of another run)"},
        {"val-fraction", MS_OPT_FLOAT, &o.val_fraction, "F", "share of volumes held out (default 0.2)"},
        {"epochs", MS_OPT_INT, &o.epochs, "E", "epochs (default 200; --max-steps wins)"},
        {"max-steps", MS_OPT_I64, &o.max_steps, "N", "optimizer steps"},
        {"batch-size", MS_OPT_INT, &o.batch, "B", "slices per step (default 4)"},
        {"lr", MS_OPT_FLOAT, &o.lr, "X", "peak learning rate (default 1e-3)"},
        {"min-lr", MS_OPT_FLOAT, &o.min_lr, "X", "cosine floor (default 0)"},
        {"weight-decay", MS_OPT_FLOAT, &o.wd, "X", "AdamW weight decay (default 0.1)"},
        {"warmup-steps", MS_OPT_INT, &o.warmup, "N", "linear warm-up steps (default 200)"},
        {"schedule", MS_OPT_STR, &o.schedule, "poly|cosine", "decay after warm-up (default poly 0.9)"},
        {"clip-grad", MS_OPT_FLOAT, &o.clip, "X", "clip the global gradient norm (default 0: off)"},
        {"val-every", MS_OPT_INT, &o.val_every, "E", "validate every E epochs (default 2)"},
        {"val-slices", MS_OPT_INT, &o.val_slices, "N", "validate on the first N held-out slices per task (default 0: all)"},
        {"patience", MS_OPT_INT, &o.patience, "E", "stop after E epochs without a better validation Dice (default 20)"},
        {"lora-rank", MS_OPT_INT, &o.lora_rank, "R", "LoRA rank (default 4)"},
        {"lora-blocks", MS_OPT_STR, &o.lora_blocks, "LIST", "encoder blocks with LoRA, e.g. 0,1,10,11 (default all)"},
        {"adapter-blocks", MS_OPT_STR, &o.adapter_blocks, "LIST", "encoder blocks with adapters (default all)"},
        {"cache-embeddings", MS_OPT_FLAG, &o.cache, NULL, "compute each slice's embedding once (frozen encoder, no "
                                                          "augmentation)"},
        {"compat-finetune-sam", MS_OPT_FLAG, &o.compat, NULL, "train exactly what finetune-SAM trains"},
        {"augment", MS_OPT_STR, &o.augment, "none|seg", "training augmentation (default none)"},
        {"task-weights", MS_OPT_STR, &o.task_weights, "size|uniform", "how often each task trains (default size: "
                                                                      "proportional to its training slices)"},
        {"input-size", MS_OPT_INT, &o.input_size, "N", "model input size (default: the model's own; others interpolate the position tables)"},
        {"resize", MS_OPT_STR, &o.resize, "longest|stretch", "SAM's longest-side resize (default) or a square stretch"},
        {"norm", MS_OPT_STR, &o.norm, "sam|medsam", "pixel normalisation (default sam)"},
        {"seed", MS_OPT_I64, &o.seed, "S", "seed (default 0)"},
        {"resume", MS_OPT_STR, &o.resume, "RUN", "continue the run in RUN from its newest checkpoint"},
        {"save-every", MS_OPT_INT, &o.save_every, "N", "checkpoint every N steps (default 1000)"},
        {"keep-last", MS_OPT_INT, &o.keep_last, "K", "checkpoints to keep (default 2)"},
        {"workers", MS_OPT_INT, &o.workers, "N", "loader threads per task (default: --threads)"},
        {"threads", MS_OPT_INT, &o.threads, "N", "CPU threads (default: all cores)"},
        {"device", MS_OPT_STR, &o.device, "cpu|cuda", "compute device (default cpu)"},
        {0}};
    int prc = ms_cli_parse(&help, table, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (o.resume && !o.out) o.out = o.resume;
#define USAGE(...) do { fprintf(stderr, "mrisam finetune: " __VA_ARGS__); fprintf(stderr, "\n"); \
                        ms_strlist_free(&o.stores); return MS_EXIT_USAGE; } while (0)
    if (!o.out || !o.stores.n || (!o.ckpt && !(o.init && o.model)) || (o.init && strcmp(o.init, "random")) ||
        !o.method || !o.scope)
        USAGE("needs --store, -o RUN, --method, --scope and --ckpt F or --init random --model NAME (see --help)");
    if (o.resume && strcmp(o.resume, o.out)) USAGE("--resume RUN and -o must name the same run");
    if (o.stores.n > MS_FT_MAX_TASKS) USAGE("at most %d stores (tasks)", MS_FT_MAX_TASKS);
    if (o.batch < 1 || o.batch > 256 || o.val_every < 1 || o.patience < 0 || o.shots < 0 || o.save_every < 1 ||
        o.keep_last < 1 || o.val_fraction < 0 || o.val_fraction >= 1 || o.warmup < 0)
        USAGE("bad --batch-size (1..256), --val-every, --patience, --shots, --save-every, --keep-last, "
              "--val-fraction or --warmup-steps");
    ms_ft_config cfg;
    ms_ft_config_default(&cfg);
    if (ms_ft_method_parse(o.method, &cfg.method) || ms_ft_scope_parse(o.scope, &cfg.scope) ||
        ms_prompt_mode_parse(o.prompt, &cfg.prompt))
        USAGE("%s", ms_errmsg());
    int shot_unit = !strcmp(o.shot_unit, "slice") ? MS_SHOT_SLICE : !strcmp(o.shot_unit, "volume") ? MS_SHOT_VOLUME : -1;
    if (shot_unit < 0) USAGE("--shot-unit slice|volume");
    ms_schedule sched;
    if (!strcmp(o.schedule, "poly")) sched = MS_SCHED_POLY;
    else if (!strcmp(o.schedule, "cosine")) sched = MS_SCHED_COSINE;
    else USAGE("--schedule poly|cosine");
    if (strcmp(o.augment, "none") && strcmp(o.augment, "seg")) USAGE("--augment none|seg");
    if (strcmp(o.task_weights, "size") && strcmp(o.task_weights, "uniform")) USAGE("--task-weights size|uniform");
    if (parse_blocks(o.lora_blocks, &cfg.lora_blocks) || parse_blocks(o.adapter_blocks, &cfg.adapter_blocks))
        USAGE("--lora-blocks / --adapter-blocks: a list like 0,1,10,11 or all");
    cfg.lora_rank = o.lora_rank;
    cfg.compat_finetune_sam = o.compat;
    if (o.cache && (cfg.scope != MS_FT_SCOPE_DECODER || strcmp(o.augment, "none")))
        USAGE("--cache-embeddings needs a frozen encoder (--scope decoder) and no image augmentation (--augment "
              "none): otherwise a slice's embedding changes from one visit to the next");
#undef USAGE

    ft_run *R = calloc(1, sizeof *R);
    if (!R) return ms_cli_report("finetune", ms_error(MS_ENOMEM, "out of memory"));
    R->o = &o;
    R->sched = sched;
    R->st.best_score = NAN;
    R->st.best_step = -1;
    ms_promptgen_batch_init(&R->pg);
    ms_promptgen_opts_default(&R->pgo);
    ms_state_dict init_sd;
    ms_sd_init(&init_sd);
    ms_status rc = MS_OK;
    char ckdir[4200] = "";
    int64_t ckstep = 0;
    ms_ft_dice_acc acc[MS_FT_MAX_TASKS];

    ms_device_kind kind;
    int index;
    if ((rc = ms_device_parse(o.device, &kind, &index))) goto leave;
    if ((rc = ms_device_init_at(&R->dev, kind, index, o.threads))) goto leave;
    int workers = o.workers ? o.workers : R->dev.n_threads;
    if (o.resume && (rc = ms_ckpt_dir_latest(o.resume, &ckstep, ckdir, sizeof ckdir))) goto leave;

    /* ---- tasks: stores, class maps ---- */
    R->n_tasks = cfg.n_tasks = o.stores.n;
    for (int t = 0; t < R->n_tasks; t++) {
        task_data *td = &R->td[t];
        char name[MS_FT_NAME_MAX];
        split_store_arg(o.stores.v[t], td->path, sizeof td->path, name, sizeof name);
        td->store_id = t;
        for (int u = 0; u < t && !td->store; u++) /* LMDB: one environment per store and process */
            if (!strcmp(R->td[u].path, td->path)) {
                td->store = R->td[u].store;
                td->store_id = u;
            }
        if (!td->store) {
            if ((rc = ms_store_open(td->path, 8 + 4 * workers * R->n_tasks, &td->store))) goto leave;
            td->own_store = 1;
        }
        if ((rc = ms_ft_task_from_store(&cfg.task[t], name, td->store))) { ms_error_prefix("%s", td->path); goto leave; }
        if (!(td->label_map = malloc(65536 * sizeof(uint16_t)))) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
        ms_ft_task_label_map(&cfg.task[t], td->label_map);
    }
    store_prep_meta(R->td[0].store, &cfg);

    /* ---- model ---- */
    {
        int S = o.input_size;
        ms_sam_config sc;
        if (o.ckpt) {
            if (ms_ft_is_checkpoint(o.ckpt)) {
                rc = ms_error(MS_EUNSUPPORTED, "%s: a finetune run; start from SAM-layout weights (mrisam "
                              "export-weights makes them)", o.ckpt);
                goto leave;
            }
            if ((rc = ms_sd_load(o.ckpt, &init_sd))) goto leave;
            if ((rc = ms_sam_config_from_sd(&init_sd, &sc))) { ms_error_prefix("%s", o.ckpt); goto leave; }
        } else {
            snprintf(cfg.model, sizeof cfg.model, "%s", o.model);
            if ((rc = ms_sam_config_named(o.model, 3, &sc))) goto leave;
        }
        if (!S) S = sc.enc.img_size;
        ms_prep_config_default(&cfg.prep, S);
        cfg.prep.channels = 3;
        if ((rc = ms_prep_parse(&cfg.prep, o.resize, o.norm))) goto leave;
    }
    if ((rc = ms_ft_model_build(&R->m, &cfg, o.ckpt ? &init_sd : NULL, (uint64_t)o.seed, &R->dev))) goto leave;
    ms_sd_free(&init_sd);
    const ms_ft_config *c = &R->m.cfg;
    R->S = c->prep.size;
    R->L = c->prep.label_size;
    R->g = R->m.sam.emb_h;
    R->P = (int64_t)R->L * R->L;
    R->B = o.batch;
    R->emb_floats = (int64_t)256 * R->m.sam.emb_h * R->m.sam.emb_w;
    R->Cmax = 2;
    for (int t = 0; t < R->n_tasks; t++) if (ms_ft_out_channels(c, t) > R->Cmax) R->Cmax = ms_ft_out_channels(c, t);
    if ((rc = ms_ft_model_reserve(&R->m, o.batch, 1))) goto leave;
    if ((rc = ms_optimizer_init(&R->opt, &R->m.sam.ps, 0.9f, 0.999f, 1e-8f, (float)o.wd))) goto leave;
    if ((rc = ms_ft_loss_init(&R->loss, &R->dev, (int64_t)o.batch * R->P))) goto leave;
    R->pgo.scale = (float)R->S / (float)R->L;

    /* ---- splits: by volume, foreground training slices, shots ---- */
    char shots_path[4200];
    snprintf(shots_path, sizeof shots_path, "%s/shots.json", o.out);
    const char *split_file = o.resume ? shots_path : o.split;
    for (int t = 0; t < R->n_tasks; t++) {
        task_data *td = &R->td[t];
        ms_selection train_all = {0}, fg = {0};
        if (split_file) {
            rc = ms_split_load(split_file, t, &train_all, &td->val);
        } else {
            ms_split_spec sp;
            ms_split_spec_default(&sp);
            sp.seed = (uint64_t)o.seed;
            sp.val_fraction = o.val_fraction;
            sp.labeled_only = 1;
            if (o.shots && shot_unit == MS_SHOT_VOLUME) { sp.shots = o.shots; sp.shot_unit = MS_SHOT_VOLUME; }
            rc = ms_loader_select(td->store, &sp, &train_all, o.val_fraction > 0 ? &td->val : NULL, &td->single);
        }
        uint64_t n_empty = 0;
        if (!rc) rc = ms_ft_select_foreground(td->store, &train_all, &fg, &n_empty);
        ms_selection_free(&train_all);
        if (!rc && !split_file && o.shots && shot_unit == MS_SHOT_SLICE) {
            rc = ms_ft_select_shots(&fg, o.shots, (uint64_t)o.seed, &td->train);
            ms_selection_free(&fg);
        } else if (!rc) {
            td->train = fg;
        }
        if (rc) { ms_error_prefix("%s", td->path); ms_selection_free(&fg); goto leave; }
        if (!td->train.n) { rc = ms_error(MS_EINVAL, "%s: no training slice with foreground", td->path); goto leave; }
        if (td->single)
            printf("finetune: %s has one labelled volume: training and validation are contiguous slice blocks "
                   "%d slices apart\n", td->path, 8);
        if (td->single && !split_file && o.shots && shot_unit == MS_SHOT_VOLUME)
            fprintf(stderr, "finetune: warning: %s: --shots %d --shot-unit volume on a store with one labelled "
                    "volume: that volume's training block is used whole\n", td->path, o.shots);
        printf("finetune: task %s: %d classes, %llu training slices with foreground (%llu empty left out), "
               "%llu validation slices\n", c->task[t].name, c->task[t].num_cls, (unsigned long long)td->train.n,
               (unsigned long long)n_empty, (unsigned long long)td->val.n);
        R->weights[t] = !strcmp(o.task_weights, "uniform") ? 1.0 : (double)td->train.n;
    }

    /* ---- loaders (one per task, endless; the schedule picks which one serves a step) ---- */
    R->steps_per_epoch = 0;
    for (int t = 0; t < R->n_tasks; t++) {
        ms_loader_config *lc = &R->lc[t];
        ms_loader_config_default(lc);
        lc->n_stores = 1;
        lc->stores[0] = R->td[t].store;
        lc->store_paths[0] = R->td[t].path;
        lc->selection[0] = &R->td[t].train;
        lc->seed = ms_rng_stream((uint64_t)o.seed, 0x10ad, (uint64_t)t);
        lc->shuffle = 1;
        lc->drop_last = 0;
        lc->n_epochs = 0;
        lc->global_batch = o.batch;
        lc->n_threads = workers;
        lc->pinned = kind == MS_DEV_CUDA;
        lc->prep = c->prep;
        lc->labels = 1;
        lc->label_map[0] = R->td[t].label_map;
        lc->augment = !strcmp(o.augment, "seg");
        if (lc->augment) ms_aug_config_seg(&lc->aug);
        uint64_t spe = (uint64_t)((R->td[t].train.n + (uint64_t)o.batch - 1) / (uint64_t)o.batch);
        R->steps_per_epoch += (int64_t)spe;
    }
    R->total = o.max_steps > 0 ? o.max_steps : (int64_t)o.epochs * R->steps_per_epoch;
    R->warmup = o.warmup;
    R->config_json = make_config_json(&o, c, R->n_tasks, R->td, R->total, R->warmup);
    if (!R->config_json) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
    if (o.resume) {
        if ((rc = load_checkpoint(R, ckdir))) goto leave;
        for (int t = 0; t < R->n_tasks; t++) R->lc[t].resume = &R->td[t].lstate;
        printf("finetune: resuming from %s (step %lld)\n", ckdir, (long long)R->st.step);
    }
    for (int t = 0; t < R->n_tasks; t++)
        if ((rc = ms_loader_open(&R->lc[t], &R->td[t].loader))) goto leave;

    /* ---- buffers, cache ---- */
    {
        size_t B = (size_t)o.batch;
        R->img = malloc(B * 3 * R->S * R->S * sizeof(float));
        R->target = malloc(B * R->P * sizeof(int32_t));
        R->bin = malloc(B * R->P);
        R->logits_host = malloc(B * R->Cmax * R->P * sizeof(float));
        R->emb_host = malloc(B * R->emb_floats * sizeof(float));
        R->keys = malloc(B * sizeof(uint64_t));
        R->ids = malloc(B * sizeof(uint64_t));
        if (!R->img || !R->target || !R->bin || !R->logits_host || !R->emb_host || !R->keys || !R->ids) {
            rc = ms_error(MS_ENOMEM, "out of memory");
            goto leave;
        }
        if ((rc = ms_dev_alloc(&R->dev, B * R->emb_floats * sizeof(float), (void **)&R->emb_dev))) goto leave;
        if (o.cache && (rc = ms_emb_cache_new(R->emb_floats, &R->cache))) goto leave;
    }

    /* ---- RUN/ ---- */
    {
        char p[4300];
        snprintf(p, sizeof p, "%s/val", o.out);
        if ((rc = ms_mkdirs(p))) goto leave;
        if (!o.resume) {
            snprintf(p, sizeof p, "%s/config.json", o.out);
            if ((rc = ms_write_file_atomic(p, R->config_json, strlen(R->config_json)))) goto leave;
            const char *sp[MS_FT_MAX_TASKS];
            ms_selection tr[MS_FT_MAX_TASKS], va[MS_FT_MAX_TASKS];
            int single[MS_FT_MAX_TASKS];
            for (int t = 0; t < R->n_tasks; t++) {
                sp[t] = R->td[t].path;
                tr[t] = R->td[t].train;
                va[t] = R->td[t].val;
                single[t] = R->td[t].single;
            }
            ms_split_spec ss;
            ms_split_spec_default(&ss);
            ss.seed = (uint64_t)o.seed;
            ss.val_fraction = o.val_fraction;
            ss.labeled_only = 1;
            ss.shots = o.shots;
            ss.shot_unit = shot_unit;
            if ((rc = ms_split_save(shots_path, &ss, R->n_tasks, sp, tr, va, single))) goto leave;
        }
    }
    if ((rc = ms_runlog_open(&R->lg, o.out))) goto leave;
    {
        int ntens;
        int64_t ntr = ms_ft_model_trainable_numel(&R->m, &ntens);
        printf("finetune: %s, %s / %s, prompt %s, input %d, %d task(s), %lld steps (%lld per epoch), batch %d, "
               "lr %.3g %s (warm-up %lld), %lld trainable parameters in %d tensors%s\n",
               c->model, o.method, o.scope, o.prompt, R->S, R->n_tasks, (long long)R->total,
               (long long)R->steps_per_epoch, o.batch, o.lr, o.schedule, (long long)R->warmup, (long long)ntr, ntens,
               o.cache ? ", embeddings cached" : "");
    }

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    R->t0 = now();
    double t_last = R->t0;
    const int64_t start_step = R->st.step, val_period = (int64_t)o.val_every * R->steps_per_epoch;
    int64_t samples0 = R->st.samples;
    int any_val = 0;
    for (int t = 0; t < R->n_tasks; t++) any_val |= R->td[t].val.n > 0;
    while (R->st.step < R->total && !g_stop && !R->st.stopped_early) {
        step_out so;
        if ((rc = train_step(R, &so))) goto leave;
        R->st.step++;
        R->st.skipped += so.skipped;
        R->st.samples += so.n;
        double t = now(), epoch = (double)R->st.step / R->steps_per_epoch;
        double ips = (double)(R->st.samples - samples0) / (t - R->t0 + 1e-9);
        char js[1024];
        double loss = so.dice + so.ce;
        snprintf(js, sizeof js,
                 "{\"step\": %lld, \"epoch\": %.4f, \"split\": \"train\", \"task\": \"%s\", \"loss\": %.7g, "
                 "\"loss_dice\": %.7g, \"loss_ce\": %.7g, \"loss_fg\": %.7g, \"loss_bg\": %.7g, \"lr\": %.6g, "
                 "\"grad_norm\": %.6g, \"img_per_s\": %.4g, \"skipped\": %lld, \"t\": %.3f}",
                 (long long)R->st.step, epoch, c->task[so.task].name, so.n ? loss : 0.0, so.dice, so.ce, so.ce_fg,
                 so.ce_bg, so.lr, so.gnorm, ips, (long long)R->st.skipped, t - R->t0);
        if ((rc = ms_runlog_json(&R->lg, js))) goto leave;
        char tag[128];
        snprintf(tag, sizeof tag, "train/loss/%s", c->task[so.task].name);
        ms_runlog_scalar(&R->lg, R->n_tasks > 1 ? tag : "train/loss", R->st.step, loss);
        ms_runlog_scalar(&R->lg, "train/lr", R->st.step, so.lr);
        ms_runlog_scalar(&R->lg, "train/grad_norm", R->st.step, so.gnorm);
        ms_runlog_scalar(&R->lg, "train/img_per_s", R->st.step, ips);
        if (t - t_last > 1.0 || R->st.step == R->total) {
            double eta = (double)(R->total - R->st.step) * (t - R->t0) / (double)(R->st.step - start_step);
            printf("%sstep %lld/%lld  epoch %.1f  loss %.4f  lr %.3g  %.2f img/s  ETA %dm%02ds%s", isatty(1) ? "\r" : "",
                   (long long)R->st.step, (long long)R->total, epoch, loss, so.lr, ips, (int)(eta / 60),
                   (int)eta % 60, isatty(1) ? "   " : "\n");
            fflush(stdout);
            t_last = t;
        }
        if (any_val && (R->st.step % val_period == 0 || R->st.step == R->total)) {
            double score, vloss;
            if ((rc = validate(R, acc, &score, &vloss))) goto leave;
            int better = !isnan(score) && (isnan(R->st.best_score) || score > R->st.best_score);
            cJSON *d = dice_json(c, acc);
            char *dtxt = cJSON_PrintUnformatted(d);
            cJSON_Delete(d);
            if (!dtxt) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
            char *line = malloc(strlen(dtxt) + 512);
            if (!line) { free(dtxt); rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
            sprintf(line, "{\"step\": %lld, \"epoch\": %.4f, \"split\": \"val\", \"loss\": %.7g, \"dice\": %s, "
                    "\"score\": %.6g, \"best\": %d, \"t\": %.3f}", (long long)R->st.step, epoch,
                    isnan(vloss) ? -1.0 : vloss, dtxt, isnan(score) ? -1.0 : score, better, now() - R->t0);
            rc = ms_runlog_json(&R->lg, line);
            free(line);
            if (!isnan(score)) ms_runlog_scalar(&R->lg, "val/dice", R->st.step, score);
            for (int t = 0; t < R->n_tasks && R->n_tasks > 1; t++) {
                double v = ms_ft_dice_mean(&acc[t], NULL);
                char tag[128];
                snprintf(tag, sizeof tag, "val/dice/%s", c->task[t].name);
                if (!isnan(v)) ms_runlog_scalar(&R->lg, tag, R->st.step, v);
            }
            if (!isnan(vloss)) ms_runlog_scalar(&R->lg, "val/loss", R->st.step, vloss);
            printf("%sval step %lld (epoch %.1f): loss %.4f, mean foreground Dice %.4f%s\n", isatty(1) ? "\n" : "",
                   (long long)R->st.step, epoch, vloss, score, better ? " (best)" : "");
            if (!rc && better) {
                R->st.best_score = score;
                R->st.best_epoch = epoch;
                R->st.best_step = R->st.step;
                char *extra = malloc(strlen(dtxt) + 256);
                if (!extra) rc = ms_error(MS_ENOMEM, "out of memory");
                else {
                    sprintf(extra, "{\"step\": %lld, \"epoch\": %.4f, \"score\": %.6g, \"dice\": %s}",
                            (long long)R->st.step, epoch, score, dtxt);
                    rc = save_best(R, extra);
                    free(extra);
                }
            }
            free(dtxt);
            if (rc) goto leave;
            /* finetune-SAM: stop when more than `patience` epochs passed since the last improvement */
            if (!isnan(R->st.best_score) && epoch - R->st.best_epoch > o.patience) {
                R->st.stopped_early = 1;
                printf("finetune: no better validation Dice for %.1f epochs (--patience %d): stopping\n",
                       epoch - R->st.best_epoch, o.patience);
            }
        }
        if (R->st.step % o.save_every == 0 || R->st.step == R->total || g_stop || R->st.stopped_early)
            if ((rc = save_checkpoint(R))) goto leave;
    }
    if (g_stop) {
        printf("\nfinetune: interrupted at step %lld; checkpoint written, continue with the same options and "
               "--resume %s\n", (long long)R->st.step, o.out);
        rc = ms_error(MS_EINTERRUPTED, "interrupted at step %lld (resumable)", (long long)R->st.step);
        goto leave;
    }
    if (R->st.best_step < 0) { /* no (scorable) validation: the final model is the one to use */
        char extra[128];
        snprintf(extra, sizeof extra, "{\"step\": %lld, \"epoch\": %.4f}", (long long)R->st.step,
                 (double)R->st.step / R->steps_per_epoch);
        if ((rc = save_best(R, extra))) goto leave;
    }
    if (R->cache)
        printf("finetune: embedding cache: %lld slices, %llu hits\n", (long long)ms_emb_cache_count(R->cache),
               (unsigned long long)ms_emb_cache_hits(R->cache));
    if (!isnan(R->st.best_score))
        printf("finetune: best validation Dice %.4f at step %lld (epoch %.1f): %s/best\n", R->st.best_score,
               (long long)R->st.best_step, R->st.best_epoch, o.out);
    else
        printf("finetune: %s; the final model is in %s/best\n",
               any_val ? "no class could be scored on the validation slices" : "no validation set", o.out);
leave:
    ms_runlog_close(&R->lg);
    for (int t = 0; t < MS_FT_MAX_TASKS; t++)
        if (R->td[t].loader) ms_loader_close(R->td[t].loader); /* before any store: tasks may share one */
    for (int t = 0; t < MS_FT_MAX_TASKS; t++) {
        task_data *td = &R->td[t];
        ms_selection_free(&td->train);
        ms_selection_free(&td->val);
        if (td->own_store) ms_store_close(td->store);
        free(td->label_map);
    }
    ms_sd_free(&init_sd);
    ms_emb_cache_free(R->cache);
    ms_promptgen_batch_free(&R->pg);
    ms_ft_loss_free(&R->loss);
    if (R->emb_dev) ms_dev_free(&R->dev, R->emb_dev);
    free(R->img); free(R->target); free(R->bin); free(R->logits_host); free(R->emb_host);
    free(R->keys); free(R->ids);
    if (R->config_json) cJSON_free(R->config_json);
    ms_optimizer_free(&R->opt);
    ms_ft_model_free(&R->m);
    ms_device_free(&R->dev);
    ms_strlist_free(&o.stores);
    free(R);
    return ms_cli_report("finetune", rc);
}

const ms_command ms_cmd_finetune = {"finetune", "fine-tune SAM on labelled stores (full, LoRA, adapters; multi-task)",
                                    run};
