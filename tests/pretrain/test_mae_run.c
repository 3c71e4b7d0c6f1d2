/* tests/pretrain/test_mae_run.c — an MAE pretraining run driven through the library (pretrain/mae_run.h), no CLI:
 * vit_test at 64 px with a small MAE decoder on a small synthetic store, batch 2 with 2 accumulation steps.
 *  (a) an uninterrupted run of 6 steps: validation at 0, 3 and 6, checkpoints at 3 and 6, panels, an export; the
 *      encoder moves, the block's other tensor does not;
 *  (b) 4 steps, a save (what a stop does), close; a fresh model from another seed resumes and finishes: the whole
 *      parameter block, the decoder, the AdamW moments, every log.jsonl value but t and img_per_s and the export
 *      equal (a) bit for bit;
 *  (c) injected non-finite losses: two skipped steps in a row roll back to the step-2 checkpoint at half the lr;
 *      the step after the rollback sees (a)'s parameters and batches of step 3 again (same loss, half (a)'s lr),
 *      the run finishes and counts 2 skipped steps;
 *  (d) killed after logging past the checkpoint: 5 steps (checkpoint at 3), closed without a save, a torn last line
 *      appended to log.jsonl (a kill mid-write); the resumed run's log.jsonl equals (a)'s (each step once, in order,
 *      same values), and the new TensorBoard file tells TensorBoard to purge from step 4 (SessionLog START);
 *  (f) the GPU input path on the CPU device (input_on_device: native integers + crop/flip, the prep op makes the
 *      model input): every step's loss and lr and the final parameter block equal (a)'s bit for bit;
 *  (e) a checkpoint write that fails (a directory where one of its files, drawn at random, goes): the step fails
 *      naming that file, and no step directory is left behind.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/path.h"
#include "checkpoints/rundir.h"
#include "data/png.h"
#include "harness.h"
#include "data/store_fixture.h"
#include "pretrain/mae_run.h"

#define STEPS 6

static uint64_t SEED;
static char TMP[256], STORE[MS_PATH_MAX];

typedef struct model {
    ms_params ps;
    ms_sam_encoder enc;
    int other; /* a tensor of the block that is not the encoder's: must stay frozen */
} model;

static ms_status model_build(model *m, ms_device *dev, uint64_t seed)
{
    ms_params_init(&m->ps);
    memset(&m->enc, 0, sizeof m->enc);
    ms_sam_enc_config ec;
    MS_TRY(ms_sam_enc_config_named("vit_test", &ec));
    MS_TRY(ms_sam_encoder_init(&m->enc, &ec, &m->ps, "image_encoder."));
    const int64_t sh[2] = {3, 5};
    m->other = ms_params_add(&m->ps, "other.weight", sh, 2, 0);
    MS_FAIL_IF(m->other < 0, MS_EINVAL, "%s", ms_errmsg());
    MS_TRY(ms_params_alloc(&m->ps, dev));
    MS_TRY(ms_sam_encoder_init_random(&m->enc, seed));
    float *o = ms_params_data(&m->ps, m->other);
    for (int i = 0; i < 15; i++) o[i] = 0.25f * (float)i - 1.0f;
    return MS_OK;
}

static void model_free(model *m)
{
    ms_sam_encoder_free(&m->enc);
    ms_params_free(&m->ps);
}

typedef struct png_count {
    int n, w, h;
} png_count;

/* The panels the run wrote into RUN/val/ (read back: they are real PNGs). */
static png_count count_panels(const char *out)
{
    png_count pc = {0, 0, 0};
    char dir[MS_PATH_MAX], p[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(dir, out, "val"));
    DIR *d = opendir(dir);
    if (!d) return pc;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!ms_str_ends_with(e->d_name, ".png")) continue;
        MS_CHECK_OK(ms_path_join(p, dir, e->d_name));
        ms_png img;
        if (ms_png_read(p, MS_PNG_AS_STORED, &img)) continue;
        pc.n++;
        pc.w = img.w;
        pc.h = img.h;
        ms_png_free(&img);
    }
    closedir(d);
    return pc;
}

static void base_config(ms_mae_run_config *c, const char *out)
{
    ms_mae_run_config_default(c);
    c->n_stores = 1;
    c->stores[0] = STORE;
    c->workers = 1;
    c->out = out;
    c->model = "vit_test";
    c->init = "random";
    c->input_size = 64;
    c->batch = 2;
    c->accum = 2;
    c->max_steps = STEPS;
    c->warmup = 2;
    c->lr = 1e-3;
    c->clip = 1.0;
    c->seed = SEED;
    c->dec_dim = 32;
    c->dec_depth = 1;
    c->dec_heads = 2;
    c->save_every = 3;
    c->keep_last = 5;
    c->val_every = 3;
    c->val_slices = 3; /* a full and a partial validation batch */
}

/* What a run ends with. */
typedef struct record {
    float *block;
    int64_t numel;
    ms_state_dict model, optim;
    char *log;
    double loss[STEPS + 1], lr[STEPS + 1];
    int64_t skipped;
} record;

static void record_free(record *rc)
{
    free(rc->block);
    free(rc->log);
    ms_sd_free(&rc->model);
    ms_sd_free(&rc->optim);
}

/* Steps until `until` optimizer steps are done (or the run is); every updated step's loss and lr go to rec. */
static ms_status run_until(ms_mae_run *r, int64_t until, record *rec, ms_mae_step_info *last)
{
    ms_mae_step_info in = {0};
    do {
        MS_TRY(ms_mae_run_step(r, &in));
        if (in.updated) {
            rec->loss[in.step] = in.loss;
            rec->lr[in.step] = in.lr;
        }
        rec->skipped = in.skipped;
        if (last) *last = in;
    } while (in.step < until && !in.done);
    return MS_OK;
}

/* log.jsonl with "t" and "img_per_s" taken out of every line. */
static char *read_log(const char *run)
{
    char p[MS_PATH_MAX], line[4096];
    MS_CHECK_OK(ms_path_join(p, run, "log.jsonl"));
    FILE *f = fopen(p, "r");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(cap, 1);
    while (fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        if (!j) { free(out); fclose(f); return NULL; }
        cJSON_DeleteItemFromObject(j, "t");
        cJSON_DeleteItemFromObject(j, "img_per_s");
        char *s = cJSON_PrintUnformatted(j);
        size_t n = strlen(s);
        if (len + n + 2 > cap) out = realloc(out, cap = 2 * (len + n + 2));
        memcpy(out + len, s, n);
        len += n;
        out[len++] = '\n';
        out[len] = 0;
        cJSON_free(s);
        cJSON_Delete(j);
    }
    fclose(f);
    return out;
}

static ms_status finish(ms_mae_run *r, const model *m, const char *out, record *rec)
{
    ms_sd_init(&rec->model);
    ms_sd_init(&rec->optim);
    MS_TRY(ms_mae_run_state_to_sd(r, &rec->model, &rec->optim));
    MS_TRY(ms_mae_run_export(r));
    rec->numel = m->ps.numel;
    rec->block = malloc((size_t)m->ps.numel * sizeof(float));
    MS_FAIL_IF(!rec->block, MS_ENOMEM, "out of memory");
    MS_TRY(ms_dev_to_host(m->ps.dev, rec->block, m->ps.data, (size_t)m->ps.numel * sizeof(float)));
    rec->log = read_log(out);
    return MS_OK;
}

static int sd_equal(const ms_state_dict *a, const ms_state_dict *b, const char *what)
{
    int ok = a->n == b->n && a->n > 0;
    for (int i = 0; ok && i < a->n; i++) {
        const ms_tensor *x = &a->e[i].t, *y = &b->e[i].t;
        size_t bytes = (size_t)ms_tensor_numel(x) * ms_dtype_size(x->dtype);
        ok = !strcmp(a->e[i].name, b->e[i].name) && x->dtype == y->dtype && ms_tensor_numel(x) == ms_tensor_numel(y) &&
             !memcmp(x->data, y->data, bytes);
        if (!ok) printf("  %s: entry %d (%s) differs\n", what, i, a->e[i].name);
    }
    return ok;
}

static int files_equal(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int ok = !ms_read_file(a, 1 << 26, &x, &nx) && !ms_read_file(b, 1 << 26, &y, &ny) && nx == ny && nx > 0 &&
             !memcmp(x, y, nx);
    free(x);
    free(y);
    return ok;
}

/* (a): the uninterrupted run. */
static void run_a(ms_device *dev, record *rec)
{
    char out[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(out, TMP, "a"));
    model m;
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x51));
    float *enc0 = malloc((size_t)m.ps.numel * sizeof(float));
    memcpy(enc0, m.ps.data, (size_t)m.ps.numel * sizeof(float));
    ms_mae_run_config c;
    base_config(&c, out);
    ms_mae_run *r = NULL;
    MS_CHECK_OK(ms_mae_run_open(&c, dev, &m.enc, &r));
    if (!r) { model_free(&m); free(enc0); return; }
    const ms_mae_run_plan *pl = ms_mae_run_plan_get(r);
    MS_CHECK(pl->total == STEPS && pl->start_step == 0 && pl->input_size == 64 && !pl->resumed_from,
             "plan: %lld steps from %lld at %d px", (long long)pl->total, (long long)pl->start_step, pl->input_size);
    MS_CHECK(pl->n_val == 3 && pl->validated && pl->val_loss > 0, "validation at step 0 on %d slices: %g", pl->n_val,
             pl->val_loss);
    int saved = 0, validated = 0;
    double v6 = 0;
    ms_mae_step_info in = {0};
    while (!in.done) {
        ms_status st = ms_mae_run_step(r, &in);
        MS_CHECK_OK(st);
        if (st) break;
        MS_CHECK(in.updated && in.step >= 1 && in.step <= STEPS && in.total == STEPS && isfinite(in.loss) &&
                     in.lr > 0 && in.img_per_s > 0,
                 "step %lld: loss %g, lr %g", (long long)in.step, in.loss, in.lr);
        rec->loss[in.step] = in.loss;
        rec->lr[in.step] = in.lr;
        saved |= in.saved << in.step;
        validated |= in.validated << in.step;
        if (in.validated) v6 = in.val_loss;
    }
    MS_CHECK(saved == (1 << 3 | 1 << 6) && validated == (1 << 3 | 1 << 6), "saved %#x, validated %#x (steps 3, 6)",
             saved, validated);
    MS_CHECK(ms_mae_run_step(r, &in) == MS_EBADSTATE, "a step after the last one is refused");
    png_count pc = count_panels(out);
    MS_CHECK(pc.n == 3 && pc.w == 4 * 64 && pc.h == 2 * 64, "%d panels of %dx%d (3 of 256x128)", pc.n, pc.w, pc.h);
    MS_CHECK_OK(finish(r, &m, out, rec));
    double v = -1;
    MS_CHECK_OK(ms_mae_run_validate(r, &v));
    MS_CHECK(v == v6 && v > 0, "validation is deterministic (fixed slices and masks; after the log was read): %.9g == %.9g", v, v6);
    ms_mae_run_close(r);
    char p[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(p, out, "ckpt/step_00000003/DONE"));
    MS_CHECK(access(p, F_OK) == 0, "%s", p);
    MS_CHECK_OK(ms_path_join(p, out, "val/step_00000006.png"));
    MS_CHECK(access(p, F_OK) == 0, "%s", p);
    const ms_param *q = &m.ps.p[m.other];
    MS_CHECK(!q->trainable && !memcmp(rec->block + q->off, enc0 + q->off, 15 * sizeof(float)),
             "the block's other tensor stays frozen and unchanged");
    int qk = ms_params_find(&m.ps, "image_encoder.blocks.0.attn.qkv.weight");
    MS_CHECK(qk >= 0 && memcmp(rec->block + m.ps.p[qk].off, enc0 + m.ps.p[qk].off, m.ps.p[qk].numel * 4),
             "the encoder moved");
    for (int i = 0; i < m.ps.n; i++) { /* MAE never runs the neck: frozen, and not shrunk by weight decay either */
        const ms_param *nk = &m.ps.p[i];
        if (strncmp(nk->name, "image_encoder.neck.", 19)) continue;
        MS_CHECK(!nk->trainable && !memcmp(rec->block + nk->off, enc0 + nk->off, (size_t)nk->numel * 4),
                 "%s stays frozen and unchanged", nk->name);
    }
    MS_CHECK(rec->log && strstr(rec->log, "\"split\":\"val\""), "log.jsonl has validation lines");
    free(enc0);
    model_free(&m);
}

/* (b): 4 steps, save, close; a model from another seed resumes and finishes. */
static void run_b(ms_device *dev, const record *a)
{
    char out[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(out, TMP, "b"));
    record rec = {0};
    model m;
    ms_mae_run_config c;
    base_config(&c, out);
    ms_mae_run *r = NULL;
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x51));
    MS_CHECK_OK(ms_mae_run_open(&c, dev, &m.enc, &r));
    if (r) MS_CHECK_OK(run_until(r, 4, &rec, NULL));
    if (r) MS_CHECK_OK(ms_mae_run_save(r)); /* step 4: what a stop does */
    if (r) MS_CHECK_OK(ms_mae_run_save(r)); /* nothing to do: this step is saved */
    ms_mae_run_close(r);
    model_free(&m);

    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x77)); /* other weights: the checkpoint must replace them */
    c.resume = out;
    r = NULL;
    MS_CHECK_OK(ms_mae_run_open(&c, dev, &m.enc, &r));
    if (r) {
        const ms_mae_run_plan *pl = ms_mae_run_plan_get(r);
        MS_CHECK(pl->start_step == 4 && pl->resumed_from && strstr(pl->resumed_from, "ckpt/step_00000004") &&
                     !pl->validated,
                 "resumed at step %lld from %s", (long long)pl->start_step, pl->resumed_from ? pl->resumed_from : "-");
        MS_CHECK_OK(run_until(r, STEPS, &rec, NULL));
        MS_CHECK_OK(finish(r, &m, out, &rec));
        ms_mae_run_close(r);
    }
    int same_loss = 1;
    for (int s = 1; s <= STEPS; s++) same_loss &= rec.loss[s] == a->loss[s] && rec.lr[s] == a->lr[s];
    MS_CHECK(same_loss, "losses and lrs of every step equal the uninterrupted run's");
    MS_CHECK(rec.block && rec.numel == a->numel && !memcmp(rec.block, a->block, (size_t)a->numel * 4),
             "the parameter block equals the uninterrupted run's bit for bit");
    MS_CHECK(sd_equal(&rec.model, &a->model, "model"), "encoder + decoder tensors equal bit for bit");
    MS_CHECK(sd_equal(&rec.optim, &a->optim, "optim"), "AdamW moments equal bit for bit");
    MS_CHECK(rec.log && a->log && !strcmp(rec.log, a->log), "log.jsonl equals the uninterrupted run's but t, img_per_s");
    char pa[MS_PATH_MAX], pb[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(pa, TMP, "a/sam_mri_vit_test.safetensors"));
    MS_CHECK_OK(ms_path_join(pb, TMP, "b/sam_mri_vit_test.safetensors"));
    MS_CHECK(files_equal(pa, pb), "the exports are byte-identical");
    MS_CHECK_OK(ms_path_join(pa, TMP, "a/ckpt/step_00000006/optim.safetensors"));
    MS_CHECK_OK(ms_path_join(pb, TMP, "b/ckpt/step_00000006/optim.safetensors"));
    MS_CHECK(files_equal(pa, pb), "the last checkpoints' optimizer files are byte-identical");
    record_free(&rec);
    model_free(&m);
}

/* (c): non-finite losses from step 3 on: two skipped steps in a row roll back to step 2 at half the lr. */
static void run_c(ms_device *dev, const record *a)
{
    char out[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(out, TMP, "c"));
    record rec = {0};
    model m;
    ms_mae_run_config c;
    base_config(&c, out);
    c.save_every = 2;
    c.max_bad = 2;
    c.nan_at = 3;
    c.nan_count = 3; /* accum 2: both batches of the first try, the first of the second */
    ms_mae_run *r = NULL;
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x51));
    MS_CHECK_OK(ms_mae_run_open(&c, dev, &m.enc, &r));
    if (!r) { model_free(&m); return; }
    ms_mae_step_info in = {0};
    MS_CHECK_OK(run_until(r, 2, &rec, &in));
    MS_CHECK(rec.loss[1] == a->loss[1] && rec.loss[2] == a->loss[2], "steps 1-2 as in (a)");
    MS_CHECK_OK(ms_mae_run_step(r, &in));
    MS_CHECK(!in.updated && in.bad_step == 2 && in.bad_in_row == 1 && in.skipped == 1 && !in.rolled_back_to &&
                 in.step == 2,
             "first non-finite step skipped (bad_step %lld, %lld in a row, %lld skipped)", (long long)in.bad_step,
             (long long)in.bad_in_row, (long long)in.skipped);
    MS_CHECK_OK(ms_mae_run_step(r, &in));
    MS_CHECK(!in.updated && in.bad_in_row == 2 && in.skipped == 2 && in.rolled_back_to &&
                 strstr(in.rolled_back_to, "ckpt/step_00000002") && in.lr_scale == 0.5 && in.step == 2,
             "second in a row: rolled back to %s at lr scale %g, step %lld",
             in.rolled_back_to ? in.rolled_back_to : "-", in.lr_scale, (long long)in.step);
    MS_CHECK_OK(ms_mae_run_step(r, &in));
    MS_CHECK(in.updated && in.step == 3 && in.loss == a->loss[3] && (float)in.lr == (float)(a->lr[3] * 0.5),
             "after the rollback step 3 sees (a)'s state again: loss %.9g (a: %.9g), lr %g (a: %g)", in.loss,
             a->loss[3], in.lr, a->lr[3]);
    MS_CHECK_OK(run_until(r, STEPS, &rec, &in));
    MS_CHECK(in.done && in.step == STEPS && in.skipped == 2 && in.lr_scale == 0.5, "finished: %lld skipped",
             (long long)in.skipped);
    ms_mae_run_close(r);
    char *log = read_log(out);
    const char *last = log ? strstr(log, "\"step\":6,") : NULL;
    MS_CHECK(last && strstr(last, "\"skipped\":2"), "log.jsonl counts the 2 skipped steps");
    free(log);
    record_free(&rec);
    model_free(&m);
}

/* 1 when an event file of RUN/tb/ holds Event{step: `step`, session_log{status: START}} (the bytes as written) */
static int tb_has_purge(const char *out, int64_t step)
{
    char dir[MS_PATH_MAX], p[MS_PATH_MAX];
    const unsigned char pat[] = {0x10, (unsigned char)step, 0x32, 0x02, 0x08, 0x01}; /* step < 128: a 1-byte varint */
    MS_CHECK_OK(ms_path_join(dir, out, "tb"));
    DIR *d = opendir(dir);
    int found = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) && !found) {
        char *ev = NULL;
        size_t n = 0;
        if (e->d_name[0] == '.' || ms_path_join(p, dir, e->d_name) || ms_read_file(p, 1 << 24, &ev, &n)) continue;
        for (size_t i = 0; i + sizeof pat <= n && !found; i++) found = !memcmp(ev + i, pat, sizeof pat);
        free(ev);
    }
    if (d) closedir(d);
    return found;
}

/* (d): 5 steps (checkpoint at 3, steps 4-5 logged), no save, a torn line; the resumed run logs as (a). */
static void run_d(ms_device *dev, const record *a)
{
    char out[MS_PATH_MAX], p[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(out, TMP, "d"));
    record rec = {0};
    model m;
    ms_mae_run_config c;
    base_config(&c, out);
    ms_mae_run *r = NULL;
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x51));
    MS_CHECK_OK(ms_mae_run_open(&c, dev, &m.enc, &r));
    if (r) MS_CHECK_OK(run_until(r, 5, &rec, NULL));
    ms_mae_run_close(r); /* killed: no save, steps 4 and 5 are logged but not checkpointed */
    model_free(&m);
    MS_CHECK_OK(ms_path_join(p, out, "log.jsonl"));
    FILE *f = fopen(p, "a");
    MS_CHECK(f && fputs("{\"step\": 6, \"epoch\": 1.5, \"spl", f) >= 0 && !fclose(f), "a torn line appended");

    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x77));
    c.resume = out;
    r = NULL;
    MS_CHECK_OK(ms_mae_run_open(&c, dev, &m.enc, &r));
    if (r) {
        const ms_mae_run_plan *pl = ms_mae_run_plan_get(r);
        MS_CHECK(pl->start_step == 3, "resumed at step %lld (the checkpoint at 3)", (long long)pl->start_step);
        MS_CHECK_OK(run_until(r, STEPS, &rec, NULL));
        ms_mae_run_close(r);
    }
    char *log = read_log(out);
    int n_train = 0, in_order = 1;
    for (const char *q = log ? strstr(log, "\"step\":") : NULL; q; q = strstr(q + 1, "\"step\":")) {
        const char *eol = strchr(q, '\n');
        if (!eol || !strstr(q, "\"train\"") || strstr(q, "\"train\"") > eol) continue;
        in_order &= atoi(q + 7) == ++n_train;
    }
    MS_CHECK(log && n_train == STEPS && in_order, "log.jsonl: train steps 1..%d each once, in order (%d lines)", STEPS,
             n_train);
    MS_CHECK(log && a->log && !strcmp(log, a->log), "log.jsonl equals the uninterrupted run's but t, img_per_s");
    if (log && a->log && strcmp(log, a->log)) printf("  resumed:\n%s  uninterrupted:\n%s", log, a->log);
    MS_CHECK(tb_has_purge(out, 4), "TensorBoard: a SessionLog START at step 4 purges the superseded steps");
    free(log);
    record_free(&rec);
    model_free(&m);
}

/* 1 when RUN/ckpt holds a step_* entry */
/* (f): the device input path gives (a)'s run bit for bit. */
static void run_f(ms_device *dev, const record *a)
{
    char out[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(out, TMP, "f"));
    record rec = {0};
    model m;
    ms_mae_run_config c;
    base_config(&c, out);
    c.input_on_device = 1;
    ms_mae_run *r = NULL;
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x51)); /* (a)'s initial weights */
    MS_CHECK_OK(ms_mae_run_open(&c, dev, &m.enc, &r));
    if (r) {
        MS_CHECK_OK(run_until(r, STEPS, &rec, NULL));
        MS_CHECK_OK(finish(r, &m, out, &rec));
        ms_mae_run_close(r);
    }
    int same_loss = 1;
    for (int s = 1; s <= STEPS; s++) {
        same_loss &= rec.loss[s] == a->loss[s] && rec.lr[s] == a->lr[s];
        if (rec.loss[s] != a->loss[s]) printf("step %d: loss %.9g, default path %.9g\n", s, rec.loss[s], a->loss[s]);
    }
    MS_CHECK(same_loss, "input_on_device: the losses and lrs of every step equal the default input path's");
    MS_CHECK(rec.block && rec.numel == a->numel && !memcmp(rec.block, a->block, (size_t)a->numel * 4),
             "input_on_device: the parameter block equals the default path's bit for bit");
    record_free(&rec);
    model_free(&m);
}

static int has_step_dir(const char *out)
{
    char p[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(p, out, "ckpt"));
    DIR *d = opendir(p);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) n += !strncmp(e->d_name, "step_", 5);
    if (d) closedir(d);
    return n;
}

/* (e): the checkpoint at step 3 cannot write one of its files (a directory stands in its place). */
static void run_e(ms_device *dev)
{
    static const char *const files[] = {"model.safetensors", "optim.safetensors", "state.json",
                                        "loader_state.bin", "config.json", "DONE"};
    const char *file = files[(SEED >> 7) % (sizeof files / sizeof *files)]; /* drawn with the printed seed */
    char out[MS_PATH_MAX], p[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(out, TMP, "e"));
    model m;
    ms_mae_run_config c;
    base_config(&c, out);
    ms_mae_run *r = NULL;
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x51));
    MS_CHECK_OK(ms_mae_run_open(&c, dev, &m.enc, &r));
    if (!r) { model_free(&m); return; }
    MS_CHECK_OK(ms_path_fmt(p, "%s/ckpt/step_00000003/%s/x", out, file));
    MS_CHECK_OK(ms_mkdirs(p));
    record rec = {0};
    MS_CHECK_OK(run_until(r, 2, &rec, NULL));
    ms_mae_step_info in;
    ms_status st = ms_mae_run_step(r, &in);
    MS_CHECK(st && strstr(ms_errmsg(), file), "writing %s fails, naming it: %s", file, ms_errmsg());
    MS_CHECK(!has_step_dir(out), "no partial step directory is left behind (%s blocked)", file);
    ms_mae_run_close(r);
    record_free(&rec);
    model_free(&m);
}

int main(void)
{
    SEED = ms_test_seed();
    snprintf(TMP, sizeof TMP, "/tmp/test_mae_run_XXXXXX");
    MS_CHECK(mkdtemp(TMP) != NULL, "mkdtemp");
    MS_CHECK_OK(ms_path_join(STORE, TMP, "store"));
    const fx_vol vols[] = {{40, 48, 8, 0}, {48, 40, 8, 0}, {44, 44, 8, 0}};
    MS_CHECK_OK(fx_make_store(STORE, SEED, vols, 3));
    ms_device dev = {0};
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 1));
    record a = {0};
    run_a(&dev, &a);
    if (a.block) {
        run_b(&dev, &a);
        run_c(&dev, &a);
        run_d(&dev, &a);
        run_f(&dev, &a);
    }
    run_e(&dev);
    record_free(&a);
    ms_device_free(&dev);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", TMP);
    if (system(cmd)) printf("note: could not remove %s\n", TMP);
    return ms_test_done();
}
