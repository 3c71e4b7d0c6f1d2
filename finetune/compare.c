/* finetune/compare.c — `mrisam compare`: splits, pretraining, the runs and their evaluations, the tables
 * (finetune/compare.h says what and why). */
#include "finetune/compare.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/buf.h"
#include "base/clock.h"
#include "base/fileio.h"
#include "base/path.h"
#include "base/rng.h"
#include "data/loader.h"
#include "data/sampler.h"
#include "data/store.h"
#include "finetune/eval.h"
#include "finetune/eval_run.h"
#include "finetune/ft_train.h"
#include "finetune/sam.h"

extern char **environ;

/* ---- statistics ------------------------------------------------------------------------------------------------ */

double ms_t_crit95(int df)
{
    /* t_{0.975, df} for df = 1..30 (scipy.stats.t.ppf(0.975, df), 9 decimals) */
    static const double t[30] = {12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581837, 2.446911849,
                                 2.364624251,  2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830,
                                 2.160368656,  2.144786688, 2.131449546, 2.119905299, 2.109815578, 2.100922040,
                                 2.093024054,  2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
                                 2.059538553,  2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456};
    if (df < 1) return NAN;
    if (df <= 30) return t[df - 1];
    /* beyond: the normal quantile with the first three terms of its Cornish-Fisher expansion in 1/df (Abramowitz &
     * Stegun 26.7.5), within 2e-6 of the exact quantile from df 31 on; the bare normal would be 4 % low there */
    const double z = 1.959963985, z3 = z * z * z, z5 = z3 * z * z, z7 = z5 * z * z, v = df;
    return z + (z3 + z) / (4 * v) + (5 * z5 + 16 * z3 + 3 * z) / (96 * v * v) +
           (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * v * v * v);
}

void ms_paired_diff(const double *a, const double *b, int n, ms_paired *out)
{
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof *d);
    int k = 0;
    for (int i = 0; d && i < n; i++)
        if (isfinite(a[i]) && isfinite(b[i])) d[k++] = a[i] - b[i];
    int used = 0;
    out->mean = out->sd = NAN;
    if (d) ms_mean_sd(d, k, &out->mean, &out->sd, &used);
    free(d);
    out->n = used;
    out->t = ms_t_crit95(used - 1);
    double half = used >= 2 ? out->t * out->sd / sqrt((double)used) : NAN;
    out->lo = out->mean - half;
    out->hi = out->mean + half;
}

/* ---- the plan -------------------------------------------------------------------------------------------------- */

enum { START_RANDOM, START_SAM, START_PRETRAINED, N_STARTS };
static const char *const start_name[N_STARTS] = {"random", "sam", "pretrained"};

/* One run's outcome: per class (value 1..) the held-out means, and the class mean. */
typedef struct run_result {
    int n_cls;
    int cls[64];
    double m[64][4]; /* dice, iou, hd95, nsd */
    double mean[4];
    int have;
} run_result;

typedef struct cmp {
    const ms_compare_config *c;
    ms_device *dev;
    int starts[N_STARTS], n_starts;
    char pretrained[MS_PATH_MAX]; /* the pretrained start's weights ("" without) */
    /* per task: the union over seeds of the held-out keys (bit per key), and per seed the held-out ranges */
    uint8_t *held[MS_FT_MAX_TASKS];
    uint64_t n_keys[MS_FT_MAX_TASKS];
    cJSON *json;        /* compare.json */
    run_result *res;    /* [task][budget][start][seed] */
    double t0;
    int n_runs, n_done, n_fresh;
    double fresh_s;
} cmp;

static void say(const cmp *x, const char *fmt, ...) MS_PRINTF(2, 3);
static void say(const cmp *x, const char *fmt, ...)
{
    if (!x->c->log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    x->c->log(x->c->log_ctx, line);
}

static void budget_label(int b, char *out, size_t n)
{
    if (b > 0) snprintf(out, n, "%d", b);
    else snprintf(out, n, "all");
}

static run_result *res_at(const cmp *x, int t, int b, int s, int seed)
{
    const ms_compare_config *c = x->c;
    return &x->res[((size_t)(t * c->n_budgets + b) * N_STARTS + (size_t)s) * (size_t)c->n_seeds + (size_t)seed];
}

static ms_status split_path(const cmp *x, int t, int b, int seed, char out[MS_PATH_MAX])
{
    char bl[16];
    budget_label(x->c->budget[b], bl, sizeof bl);
    return ms_path_fmt(out, "%s/splits/%s/s%lld_b%s.json", x->c->out, x->c->task[t],
                       (long long)(x->c->seed_base + seed), bl);
}

/* A run's folder relative to OUT (results.csv's "run"), and under OUT. */
static ms_status run_rel(const cmp *x, int t, int b, int s, int seed, char out[MS_PATH_MAX])
{
    char bl[16];
    budget_label(x->c->budget[b], bl, sizeof bl);
    return ms_path_fmt(out, "runs/%s/%s/b%s/s%lld", x->c->task[t], start_name[s], bl,
                       (long long)(x->c->seed_base + seed));
}

static ms_status run_dir(const cmp *x, int t, int b, int s, int seed, char out[MS_PATH_MAX])
{
    char rel[MS_PATH_MAX];
    MS_TRY(run_rel(x, t, b, s, seed, rel));
    return ms_path_join(out, x->c->out, rel);
}

static cJSON *ranges_json(const ms_selection *s)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < s->n_ranges; i++) {
        cJSON *r = cJSON_CreateArray();
        cJSON_AddItemToArray(r, cJSON_CreateNumber((double)s->ranges[i].first));
        cJSON_AddItemToArray(r, cJSON_CreateNumber((double)s->ranges[i].count));
        cJSON_AddItemToArray(a, r);
    }
    return a;
}

/* The set bits of a key bitmap as a finished selection. */
static ms_status bits_to_selection(const uint8_t *bits, uint64_t n, ms_selection *s)
{
    memset(s, 0, sizeof *s);
    ms_status rc = MS_OK;
    for (uint64_t k = 0; k < n && !rc;) {
        if (!bits[k]) { k++; continue; }
        uint64_t e = k;
        while (e < n && bits[e]) e++;
        rc = ms_selection_add(s, k, e - k);
        k = e;
    }
    if (!rc) rc = ms_selection_finish(s);
    if (rc) ms_selection_free(s);
    return rc;
}

/* A one-volume store's held-out block, placed in the labelled anatomy. finetune's split puts it at one end of the
 * volume (the seed picks which), where a template's label is small or cut short (ch2's axial ends: neck, skull top),
 * so a test set there measures the ends, not the structure. Here the block keeps its size (--val-fraction of the
 * volume's slices) and is centred on the slice of a labelled voxel drawn per seed from the middle half of them
 * (between the quartiles of the labelled voxels along the slicing axis), then moved to lie within the labelled
 * slices (first to last with a label) when they are as many; the training slices are the rest on both sides, `gap`
 * slices away from it. Seeds still vary the split. *all and *val are replaced; js records it. */
static ms_status labelled_block(ms_store *st, uint64_t seed, int gap, ms_selection *all, ms_selection *val, cJSON *js)
{
    uint64_t lo = val->ranges[0].first, hi = val->ranges[val->n_ranges - 1].first +
                                             val->ranges[val->n_ranges - 1].count, nv = val->n;
    if (all->n && all->ranges[0].first < lo) lo = all->ranges[0].first;
    if (all->n && all->ranges[all->n_ranges - 1].first + all->ranges[all->n_ranges - 1].count > hi)
        hi = all->ranges[all->n_ranges - 1].first + all->ranges[all->n_ranges - 1].count;
    const uint64_t n = hi - lo;
    double *w = calloc(n ? n : 1, sizeof *w), tot = 0;
    MS_FAIL_IF(!w, MS_ENOMEM, "out of memory");
    ms_store_reader *r = NULL;
    ms_status rc = ms_store_reader_new(st, &r);
    int64_t f0 = -1, f1 = -1;
    for (uint64_t i = 0; i < n && !rc; i++) { /* labelled voxels per slice */
        ms_slice sl;
        if ((rc = ms_store_read(r, lo + i, &sl))) break;
        for (size_t k = 0, np = (size_t)sl.height * sl.width; sl.label && k < np; k++) w[i] += sl.label[k] != 0;
        tot += w[i];
        if (w[i] > 0) f1 = (int64_t)i, f0 = f0 < 0 ? (int64_t)i : f0;
    }
    ms_store_reader_free(r);
    if (rc || f0 < 0) { /* nothing labelled: finetune's block stands (the run reports the empty task) */
        free(w);
        return rc;
    }
    /* the centre: a labelled voxel drawn from the middle half of them along the axis (between the quartiles) */
    double u = (0.25 + 0.5 * ms_rand_uniform(ms_rng_stream(seed, 0xb10c, 0), 0)) * tot, acc = 0;
    int64_t z = f0;
    for (int64_t i = f0; i <= f1; i++) {
        acc += w[i];
        z = i;
        if (u < acc) break;
    }
    free(w);
    int64_t start = z - (int64_t)nv / 2, lim0 = f0, lim1 = f1 + 1 - (int64_t)nv;
    if (lim1 < lim0) lim0 = 0, lim1 = (int64_t)(n - nv); /* fewer labelled slices than the block: the volume's */
    start = start < lim0 ? lim0 : start > lim1 ? lim1 : start;
    const int64_t t0 = start - gap, t1 = start + (int64_t)nv + gap;
    MS_FAIL_IF(t0 < 1 && t1 >= (int64_t)n, MS_EINVAL,
               "%llu slices: too few for a %llu-slice held-out block with %d-slice gaps", (unsigned long long)n,
               (unsigned long long)nv, gap);
    ms_selection_free(all);
    ms_selection_free(val);
    rc = ms_selection_add(val, lo + (uint64_t)start, nv);
    if (!rc && t0 > 0) rc = ms_selection_add(all, lo, (uint64_t)t0);
    if (!rc && t1 < (int64_t)n) rc = ms_selection_add(all, lo + (uint64_t)t1, n - (uint64_t)t1);
    if (!rc) rc = ms_selection_finish(val);
    if (!rc) rc = ms_selection_finish(all);
    cJSON *jl = cJSON_AddArrayToObject(js, "labelled_slices");
    cJSON_AddItemToArray(jl, cJSON_CreateNumber((double)(lo + (uint64_t)f0)));
    cJSON_AddItemToArray(jl, cJSON_CreateNumber((double)(lo + (uint64_t)f1)));
    cJSON_AddNumberToObject(js, "held_out_centre_drawn", (double)(lo + (uint64_t)z));
    return rc;
}

/* Task t, one seed: the held-out selection (into held[t]) and, per budget, the split file of the shots. */
static ms_status split_seed(cmp *x, ms_store *st, int t, int seed, cJSON *jseeds)
{
    const ms_compare_config *c = x->c;
    uint64_t sd = (uint64_t)(c->seed_base + seed);
    ms_split_spec sp;
    ms_split_spec_default(&sp);
    sp.seed = sd;
    sp.val_fraction = c->ft.val_fraction;
    sp.labeled_only = 1;
    ms_selection all = {0}, val = {0}, fg = {0}, shots = {0};
    int single = 0;
    uint64_t n_empty = 0;
    cJSON *js = cJSON_CreateObject();
    cJSON_AddNumberToObject(js, "seed", (double)sd);
    ms_status rc = ms_loader_select(st, &sp, &all, &val, &single);
    if (!rc && !val.n) rc = ms_error(MS_EINVAL, "%s: no held-out slices (--val-fraction)", c->store[t]);
    if (!rc && single) rc = labelled_block(st, sd, sp.gap < 8 ? 8 : sp.gap, &all, &val, js);
    if (!rc) rc = ms_ft_select_foreground(st, &all, &fg, &n_empty);
    for (int i = 0; !rc && i < val.n_ranges; i++)
        memset(x->held[t] + val.ranges[i].first, 1, val.ranges[i].count);
    cJSON_AddItemToObject(js, "held_out", ranges_json(&val));
    cJSON_AddNumberToObject(js, "training_slices_with_foreground", (double)fg.n);
    cJSON_AddItemToArray(jseeds, js);
    for (int b = 0; !rc && b < c->n_budgets; b++) {
        int k = c->budget[b];
        const ms_selection *tr = &fg;
        if (k > 0 && (uint64_t)k < fg.n) {
            rc = ms_ft_select_shots(&fg, k, sd, &shots);
            tr = &shots;
        } else if (k > 0) {
            say(x, "compare: %s seed %llu: budget %d >= the %llu training slices with foreground: all of them",
                c->task[t], (unsigned long long)sd, k, (unsigned long long)fg.n);
        }
        char path[MS_PATH_MAX];
        ms_split_spec ss = sp;
        ss.shots = tr == &shots ? k : 0;
        if (!rc) rc = split_path(x, t, b, seed, path);
        if (!rc) rc = ms_mkdirs_parent(path);
        const char *sp_path[1] = {c->store[t]};
        if (!rc) rc = ms_split_save(path, &ss, 1, sp_path, tr, &val, &single);
        ms_selection_free(&shots);
    }
    ms_selection_free(&all);
    ms_selection_free(&val);
    ms_selection_free(&fg);
    return rc;
}

/* Every task's splits and shots, for every seed (OUT/splits/), before anything trains. */
static ms_status make_splits(cmp *x)
{
    const ms_compare_config *c = x->c;
    cJSON *jt = cJSON_AddArrayToObject(x->json, "tasks");
    ms_status rc = MS_OK;
    for (int t = 0; t < c->n_tasks && !rc; t++) {
        ms_store *st = NULL;
        MS_TRY(ms_store_open(c->store[t], 4, &st));
        x->n_keys[t] = ms_store_n_slices(st);
        x->held[t] = calloc(x->n_keys[t] ? x->n_keys[t] : 1, 1);
        if (!x->held[t]) rc = ms_error(MS_ENOMEM, "out of memory");
        cJSON *j = cJSON_CreateObject();
        cJSON_AddItemToArray(jt, j);
        cJSON_AddStringToObject(j, "name", c->task[t]);
        cJSON_AddStringToObject(j, "store", c->store[t]);
        cJSON_AddNumberToObject(j, "slices", (double)x->n_keys[t]);
        /* the store's "value name" lines, for the report's class names */
        if (ms_store_label_names(st)) cJSON_AddStringToObject(j, "label_names", ms_store_label_names(st));
        cJSON *js = cJSON_AddArrayToObject(j, "seeds");
        for (int s = 0; s < c->n_seeds && !rc; s++) rc = split_seed(x, st, t, s, js);
        ms_store_close(st);
        if (rc) ms_error_prefix("%s", c->store[t]);
    }
    return rc;
}

/* ---- pretraining ----------------------------------------------------------------------------------------------- */

/* Whether two store paths name the same store: the same real path, or the same store ID. */
static int same_store(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX], ia[33], ib[33];
    if (realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb)) return 1;
    return !ms_store_id_at(a, ia) && !ms_store_id_at(b, ib) && ia[0] && !strcmp(ia, ib);
}

static int is_export(const char *name)
{
    return !strncmp(name, "sam_mri_", 8) && strlen(name) > 12 && !strcmp(name + strlen(name) - 4, ".pth");
}

/* OUT/pretrain/sam_mri_*.pth when the pretraining run has exported (path "" when not). */
static ms_status find_export(const char *run, char path[MS_PATH_MAX])
{
    path[0] = 0;
    if (!ms_path_is_dir(run)) return MS_OK;
    char **names = NULL;
    int n = 0;
    MS_TRY(ms_path_list(run, is_export, &names, &n));
    ms_status rc = n ? ms_path_join(path, run, names[0]) : MS_OK;
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

/* 1 when dir/ckpt holds a checkpoint directory. */
static int has_ckpt(const char *dir)
{
    char p[MS_PATH_MAX];
    if (ms_path_join(p, dir, "ckpt")) return 0;
    DIR *d = opendir(p);
    if (!d) return 0;
    int found = 0;
    for (struct dirent *e; !found && (e = readdir(d));) found = !strncmp(e->d_name, "step_", 5);
    closedir(d);
    return found;
}

static int dir_nonempty(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; !n && (e = readdir(d));) n = strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static ms_status sam_to_sd(void *ctx, ms_state_dict *sd) { return ms_sam_to_sd(ctx, sd); }

/* The pretraining stores' exclusions: each task store's held-out keys of every seed; compare.json's record. */
static ms_status exclusions(cmp *x, ms_mae_run_config *m, ms_selection *ex, cJSON *jp)
{
    const ms_compare_config *c = x->c;
    cJSON *ja = cJSON_AddArrayToObject(jp, "stores");
    for (int i = 0; i < m->n_stores; i++) {
        cJSON *js = cJSON_CreateObject();
        cJSON_AddItemToArray(ja, js);
        cJSON_AddStringToObject(js, "path", m->stores[i]);
        uint8_t *bits = NULL;
        uint64_t n = 0;
        cJSON *tasks = cJSON_AddArrayToObject(js, "held_out_of_tasks");
        for (int t = 0; t < c->n_tasks; t++) {
            if (!same_store(m->stores[i], c->store[t])) continue;
            if (!bits) {
                n = x->n_keys[t];
                bits = calloc(n ? n : 1, 1);
                MS_FAIL_IF(!bits, MS_ENOMEM, "out of memory");
            }
            for (uint64_t k = 0; k < n && k < x->n_keys[t]; k++) bits[k] |= x->held[t][k];
            cJSON_AddItemToArray(tasks, cJSON_CreateString(c->task[t]));
        }
        if (!bits)
            say(x, "compare: warning: pretraining store %s is none of the task stores: nothing is excluded from it, so "
                "it must not hold the tasks' volumes (pretrain on the task stores to keep their held-out slices out)",
                m->stores[i]);
        ms_status rc = bits ? bits_to_selection(bits, n, &ex[i]) : MS_OK;
        free(bits);
        MS_TRY(rc);
        m->exclude[i] = bits ? &ex[i] : NULL;
        cJSON_AddItemToObject(js, "excluded_keys", ranges_json(&ex[i]));
        cJSON_AddNumberToObject(js, "excluded_slices", (double)ex[i].n);
    }
    return MS_OK;
}

/* Steps an open MAE run to its end (or the stop flag), then exports. */
static ms_status pretrain_steps(cmp *x, ms_mae_run *r)
{
    const ms_mae_run_plan *pl = ms_mae_run_plan_get(r);
    ms_mae_step_info in = {.step = pl->start_step, .done = pl->start_step >= pl->total};
    double t_last = 0;
    while (!in.done) {
        if (x->c->stop && *x->c->stop) {
            MS_TRY(ms_mae_run_save(r));
            return ms_error(MS_EINTERRUPTED, "interrupted during pretraining at step %lld (rerun to resume)",
                            (long long)in.step);
        }
        MS_TRY(ms_mae_run_step(r, &in));
        if (ms_now_s() - t_last > 5 || in.done) {
            say(x, "compare: pretrain step %lld/%lld  loss %.4f  ETA %dm%02ds", (long long)in.step,
                (long long)in.total, in.loss, (int)(in.eta_s / 60), (int)in.eta_s % 60);
            t_last = ms_now_s();
        }
    }
    return ms_mae_run_export(r);
}

/* The pretrained start: the given file, or compare's own MAE run in OUT/pretrain/ (resumed, or skipped when it has
 * exported). */
static ms_status pretrain(cmp *x)
{
    const ms_compare_config *c = x->c;
    cJSON *jp = cJSON_AddObjectToObject(x->json, "pretraining");
    if (c->pretrained) {
        snprintf(x->pretrained, sizeof x->pretrained, "%s", c->pretrained);
        cJSON_AddStringToObject(jp, "weights", c->pretrained);
        cJSON_AddStringToObject(jp, "note", "given (--pretrained): what it saw is not known to compare");
        return MS_OK;
    }
    if (c->mae.max_steps <= 0) {
        cJSON_AddStringToObject(jp, "weights", "");
        return MS_OK;
    }
    char run[MS_PATH_MAX];
    MS_TRY(ms_path_join(run, c->out, "pretrain"));
    ms_mae_run_config m = c->mae;
    if (!m.n_stores) {
        m.n_stores = c->n_tasks;
        for (int t = 0; t < c->n_tasks; t++) m.stores[t] = c->store[t];
    }
    ms_selection ex[MS_ORDER_MAX_SOURCES] = {0};
    ms_status rc = exclusions(x, &m, ex, jp);
    cJSON_AddNumberToObject(jp, "steps", (double)m.max_steps);
    cJSON_AddNumberToObject(jp, "seed", (double)m.seed);
    cJSON_AddStringToObject(jp, "from", c->sam_ckpt ? c->sam_ckpt : "random");
    if (!rc) rc = find_export(run, x->pretrained);
    if (!rc && x->pretrained[0]) {
        say(x, "compare: pretraining done already: %s", x->pretrained);
    } else if (!rc) {
        ms_sam sam;
        memset(&sam, 0, sizeof sam);
        ms_mae_run *r = NULL;
        char name[32];
        m.out = run;
        m.resume = has_ckpt(run) ? run : NULL;
        m.overwrite = !m.resume && dir_nonempty(run);
        m.ckpt = c->sam_ckpt;
        m.init = c->sam_ckpt ? NULL : "random";
        m.to_sd = sam_to_sd;
        m.to_sd_ctx = &sam;
        m.stop = c->stop;
        rc = ms_sam_build(&sam, c->sam_ckpt, c->ft.model, m.seed, x->dev, name, sizeof name);
        m.model = name;
        const ms_mae_encoder enc = {.vit = sam.cfg.tinyvit ? NULL : &sam.enc, .tv = sam.cfg.tinyvit ? &sam.tv : NULL};
        if (!rc) rc = ms_mae_run_open_encoder(&m, x->dev, &enc, &r);
        if (!rc) {
            say(x, "compare: pretraining %s on %d store(s), %lld steps%s: %s", name, m.n_stores,
                (long long)m.max_steps, m.resume ? " (resumed)" : "", run);
            rc = pretrain_steps(x, r);
        }
        ms_mae_run_close(r);
        ms_sam_free(&sam);
        if (!rc) rc = find_export(run, x->pretrained);
        if (!rc && !x->pretrained[0]) rc = ms_error(MS_EIO, "%s: the pretraining run wrote no export", run);
    }
    for (int i = 0; i < MS_ORDER_MAX_SOURCES; i++) ms_selection_free(&ex[i]);
    cJSON_AddStringToObject(jp, "weights", x->pretrained);
    return rc;
}

/* ---- one fine-tune and its evaluation ---------------------------------------------------------------------------- */

/* RUN/eval/classes.csv: "class,dice,iou,hd95,nsd" per class (mean over the held-out volumes), then "mean". */
static ms_status classes_write(const ms_eval_result *r, const char *path, run_result *out)
{
    memset(out, 0, sizeof *out);
    int max_l = 0;
    for (int i = 0; i < r->n_pairs; i++) max_l = r->pairs[i].n_labels > max_l ? r->pairs[i].n_labels : max_l;
    double *v = malloc((size_t)(4 * r->n_pairs + 1) * sizeof *v), cm[4][64];
    MS_FAIL_IF(!v, MS_ENOMEM, "out of memory");
    for (int c = 1; c < max_l && out->n_cls < 64; c++) {
        int present = 0;
        for (int i = 0; i < r->n_pairs; i++)
            present |= c < r->pairs[i].n_labels && (r->pairs[i].np[c] || r->pairs[i].ng[c]);
        if (!present) continue;
        for (int i = 0; i < r->n_pairs; i++) { /* as eval's per_volume.csv has them */
            const ms_eval_pair *p = &r->pairs[i];
            int64_t in = c < p->n_labels ? p->inter[c] : 0, a = c < p->n_labels ? p->np[c] : 0,
                    g = c < p->n_labels ? p->ng[c] : 0;
            v[i] = ms_dice(in, a, g);
            v[r->n_pairs + i] = ms_iou(in, a, g);
            v[2 * r->n_pairs + i] = r->hd95 && c < p->n_labels ? p->hd95[c] : NAN;
            v[3 * r->n_pairs + i] = r->nsd && c < p->n_labels ? p->nsd[c] : NAN;
        }
        int k = out->n_cls++, used;
        out->cls[k] = c;
        for (int j = 0; j < 4; j++) {
            double sd;
            ms_mean_sd(v + j * r->n_pairs, r->n_pairs, &out->m[k][j], &sd, &used);
            cm[j][k] = out->m[k][j];
        }
    }
    free(v);
    for (int j = 0; j < 4; j++) {
        double sd;
        int used;
        ms_mean_sd(cm[j], out->n_cls, &out->mean[j], &sd, &used);
    }
    out->have = 1;
    char *txt = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&txt, &len);
    MS_FAIL_IF(!f, MS_ENOMEM, "out of memory");
    fputs("class,dice,iou,hd95,nsd\n", f);
    for (int k = 0; k <= out->n_cls; k++) {
        const double *m = k < out->n_cls ? out->m[k] : out->mean;
        if (k < out->n_cls) fprintf(f, "%d", out->cls[k]);
        else fputs("mean", f);
        for (int j = 0; j < 4; j++) fprintf(f, ",%.10g", m[j]);
        fputc('\n', f);
    }
    MS_FAIL_IF(fclose(f), MS_ENOMEM, "out of memory");
    ms_status rc = ms_write_file_atomic(path, txt, len);
    free(txt);
    return rc;
}

/* A run's classes.csv (as classes_write wrote it) back into out; *found 0 when it is absent. */
static ms_status classes_read(const char *path, run_result *out, int *found)
{
    memset(out, 0, sizeof *out);
    *found = 0;
    if (access(path, F_OK)) return MS_OK;
    char *txt = NULL;
    size_t len = 0;
    MS_TRY(ms_read_file(path, 1 << 20, &txt, &len));
    ms_status rc = MS_OK;
    char *save = NULL, *line = strtok_r(txt, "\n", &save);
    int mean_seen = 0;
    for (line = line ? strtok_r(NULL, "\n", &save) : NULL; line && !rc; line = strtok_r(NULL, "\n", &save)) {
        char name[32];
        double m[4];
        if (sscanf(line, "%31[^,],%lf,%lf,%lf,%lf", name, &m[0], &m[1], &m[2], &m[3]) != 5) {
            rc = ms_error(MS_EFORMAT, "%s: not a line \"class,dice,iou,hd95,nsd\": %.60s", path, line);
        } else if (!strcmp(name, "mean")) {
            memcpy(out->mean, m, sizeof m);
            mean_seen = 1;
        } else if (out->n_cls < 64) {
            out->cls[out->n_cls] = atoi(name);
            memcpy(out->m[out->n_cls++], m, sizeof m);
        }
    }
    free(txt);
    if (!rc && !mean_seen) rc = ms_error(MS_EFORMAT, "%s: no \"mean\" row", path);
    if (!rc) *found = out->have = 1;
    return rc;
}

/* RUN/best evaluated on the run's held-out volumes of store (its shots.json) into RUN/eval/. */
static ms_status evaluate(const cmp *x, const char *dir, const char *store, run_result *res)
{
    const ms_compare_config *c = x->c;
    char best[MS_PATH_MAX], shots[MS_PATH_MAX], edir[MS_PATH_MAX], cls[MS_PATH_MAX];
    MS_TRY(ms_path_join(best, dir, "best"));
    MS_TRY(ms_path_join(shots, dir, "shots.json"));
    MS_TRY(ms_path_join(edir, dir, "eval"));
    MS_TRY(ms_path_join(cls, edir, "classes.csv"));
    ms_eval_result r = {.nsd = c->nsd, .nsd_tol = c->nsd_tol};
    const ms_eval_store_opts o = {.ckpt = best, .store = store, .device = x->dev->kind == MS_DEV_CUDA ? "cuda" : "cpu",
                                  .shots = shots, .shots_index = 0, .n_threads = c->threads, .batch = c->eval_batch,
                                  .hd95 = c->hd95};
    char *md = NULL;
    size_t md_len = 0;
    ms_status rc = ms_eval_store(&r, &o);
    if (!rc) rc = ms_eval_report_write(&r, edir, &md, &md_len);
    if (!rc) rc = classes_write(&r, cls, res);
    free(md);
    ms_eval_result_free(&r);
    return rc;
}

/* ---- the validation curve ---------------------------------------------------------------------------------------- */

/* RUN/val_curve.jsonl: one line per validation, as log.jsonl's val lines ({"step", "split": "val", "score",
 * "dice": {task: {class: Dice or "n/a"}}}), so the report reads either. The held-out slices are the test set: these
 * points are watched, never used to choose a model or to stop. */
static ms_status curve_add(ms_buf *b, const ms_ft_run *r, int64_t step, const ms_ft_val *v)
{
    const ms_ft_config *fc = &ms_ft_run_model(r)->cfg;
    cJSON *j = cJSON_CreateObject(), *d = cJSON_AddObjectToObject(j, "dice");
    cJSON_AddNumberToObject(j, "step", (double)step);
    cJSON_AddStringToObject(j, "split", "val");
    cJSON_AddNumberToObject(j, "score", isnan(v->score) ? -1.0 : round(v->score * 1e6) / 1e6);
    for (int t = 0; t < fc->n_tasks; t++) {
        cJSON *to = cJSON_AddObjectToObject(d, fc->task[t].name);
        for (int k = 1; k < fc->task[t].num_cls; k++) {
            char key[MS_FT_NAME_MAX + 8];
            if (fc->task[t].class_names[k][0]) snprintf(key, sizeof key, "%s", fc->task[t].class_names[k]);
            else snprintf(key, sizeof key, "%u", fc->task[t].values[k]);
            double dv = ms_ft_dice_class(&v->dice[t], k);
            if (isnan(dv)) cJSON_AddStringToObject(to, key, "n/a");
            else cJSON_AddNumberToObject(to, key, round(dv * 1e6) / 1e6);
        }
    }
    char *txt = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    MS_FAIL_IF(!txt, MS_ENOMEM, "out of memory");
    ms_buf_put(b, txt, strlen(txt));
    ms_buf_put(b, "\n", 1);
    free(txt);
    MS_FAIL_IF(b->oom, MS_ENOMEM, "out of memory");
    return MS_OK;
}

/* A resumed run's curve: the lines of path up to its checkpoint's step (the steps after it are trained again). */
static ms_status curve_load(const char *path, int64_t upto, ms_buf *b)
{
    if (access(path, F_OK)) return MS_OK;
    char *txt = NULL;
    size_t len = 0;
    MS_TRY(ms_read_file(path, 64 << 20, &txt, &len));
    char *save = NULL;
    for (char *line = strtok_r(txt, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "step");
        if (cJSON_IsNumber(st) && st->valuedouble <= (double)upto) {
            ms_buf_put(b, line, strlen(line));
            ms_buf_put(b, "\n", 1);
        }
        cJSON_Delete(j);
    }
    free(txt);
    MS_FAIL_IF(b->oom, MS_ENOMEM, "out of memory");
    return MS_OK;
}

/* Steps an open fine-tune to its end, validating every `every` steps (0: only the run's own last validation) into
 * the curve at cpath; on the stop flag it checkpoints and returns MS_EINTERRUPTED. */
static ms_status train_steps(const cmp *x, ms_ft_run *r, const char *dir, int64_t every, const char *cpath)
{
    ms_ft_run_info in;
    ms_ft_run_get_info(r, &in);
    ms_buf curve = {0};
    ms_status rc = in.resumed_step >= 0 ? curve_load(cpath, in.resumed_step, &curve) : MS_OK;
    ms_ft_step_info s = {0};
    while (!rc && !s.done) {
        if (x->c->stop && *x->c->stop) {
            rc = ms_ft_run_save(r);
            if (!rc)
                rc = ms_error(MS_EINTERRUPTED, "%s: interrupted at step %lld (rerun compare to resume)", dir,
                              (long long)s.step);
            break;
        }
        if ((rc = ms_ft_run_step(r, &s)) || !s.stepped) break;
        ms_ft_val v;
        const ms_ft_val *pv = s.validated ? &s.val : NULL; /* the run's own validation (its last step) */
        if (!pv && every > 0 && s.step % every == 0) {
            rc = ms_ft_run_validate(r, &v); /* changes no run state: training goes on bit-exactly */
            pv = &v;
        }
        if (!rc && pv) rc = curve_add(&curve, r, s.step, pv);
        if (!rc && pv) rc = ms_write_file_atomic(cpath, curve.p, curve.n);
    }
    ms_buf_free(&curve);
    return rc;
}

/* The curve's period in steps: c->val_every, or about 10 points per run when it is -1. */
static int64_t val_every(const ms_compare_config *c)
{
    if (c->val_every >= 0) return c->val_every;
    int64_t k = c->ft.max_steps / 10;
    return k > 0 ? k : 1;
}

/* Fine-tune (task t, budget b, start s, seed): fresh, resumed from its checkpoint, or skipped when evaluated. */
static ms_status run_one(cmp *x, int t, int b, int s, int seed)
{
    const ms_compare_config *c = x->c;
    char dir[MS_PATH_MAX], split[MS_PATH_MAX], cls[MS_PATH_MAX], bl[16];
    MS_TRY(run_dir(x, t, b, s, seed, dir));
    MS_TRY(split_path(x, t, b, seed, split));
    MS_TRY(ms_path_fmt(cls, "%s/eval/classes.csv", dir));
    budget_label(c->budget[b], bl, sizeof bl);
    run_result *res = res_at(x, t, b, s, seed);
    int found = 0;
    MS_TRY(classes_read(cls, res, &found));
    long long sd = (long long)(c->seed_base + seed);
    if (found) {
        x->n_done++;
        say(x, "compare: [%d/%d] %s %s budget %s seed %lld: done already (Dice %.4f)", x->n_done, x->n_runs,
            c->task[t], start_name[s], bl, sd, res->mean[0]);
        return MS_OK;
    }
    double t0 = ms_now_s();
    ms_ft_run_config f = c->ft;
    f.n_tasks = 1;
    f.store[0] = c->store[t];
    f.task[0] = c->task[t];
    f.ckpt = s == START_SAM ? c->sam_ckpt : s == START_PRETRAINED ? x->pretrained : NULL;
    f.init_random = s == START_RANDOM;
    if (f.ckpt) f.model = NULL; /* the weights decide the model */
    f.split = split;
    f.shots = 0; /* the split file holds the shots */
    /* the held-out slices are the test set: no model selection or early stopping on them. One validation, at the
     * last step, so best/ is the final model */
    f.val_every = 1000000;
    f.patience = 1000000;
    f.seed = sd;
    f.out = dir;
    f.resume = has_ckpt(dir);
    f.overwrite = !f.resume && dir_nonempty(dir);
    f.stop = c->stop;
    char curve[MS_PATH_MAX];
    MS_TRY(ms_path_join(curve, dir, "val_curve.jsonl"));
    /* a fresh run starts its curve afresh (finetune's --overwrite removes only the files a run writes) */
    MS_FAIL_IF(!f.resume && unlink(curve) && errno != ENOENT, MS_EIO, "%s: %s", curve, strerror(errno));
    MS_TRY(ms_mkdirs_parent(dir));
    ms_ft_run *r = NULL;
    ms_status rc = ms_ft_run_open(&f, x->dev, &r);
    ms_ft_run_info in;
    if (!rc) rc = train_steps(x, r, dir, val_every(c), curve);
    if (!rc) ms_ft_run_get_info(r, &in);
    ms_ft_run_close(r);
    if (!rc) rc = evaluate(x, dir, c->store[t], res);
    if (rc) return rc;
    x->n_done++;
    x->n_fresh++;
    x->fresh_s += ms_now_s() - t0;
    double rate = x->fresh_s / x->n_fresh, eta = rate * (x->n_runs - x->n_done);
    say(x, "compare: [%d/%d] %s %s budget %s seed %lld: best val Dice %.4f, held-out 3-D Dice %.4f  (%.1f s/run, "
        "ETA %dm%02ds)", x->n_done, x->n_runs, c->task[t], start_name[s], bl, sd, in.best_score, res->mean[0], rate,
        (int)(eta / 60), (int)eta % 60);
    return MS_OK;
}

/* Every run, seed by seed (so an interrupted comparison has whole seeds to pair first). */
static ms_status run_all(cmp *x)
{
    const ms_compare_config *c = x->c;
    x->n_runs = c->n_seeds * c->n_tasks * c->n_budgets * x->n_starts;
    for (int seed = 0; seed < c->n_seeds; seed++)
        for (int t = 0; t < c->n_tasks; t++)
            for (int b = 0; b < c->n_budgets; b++)
                for (int k = 0; k < x->n_starts; k++) {
                    if (c->stop && *c->stop) /* between runs: nothing to checkpoint */
                        return ms_error(MS_EINTERRUPTED, "interrupted after %d of %d runs (rerun to continue)",
                                        x->n_done, x->n_runs);
                    MS_TRY(run_one(x, t, b, x->starts[k], seed));
                }
    return MS_OK;
}

/* ---- tables and plots ------------------------------------------------------------------------------------------- */

static void put(FILE *f, double v)
{
    if (isnan(v)) fputs("nan", f);
    else if (isinf(v)) fputs(v > 0 ? "inf" : "-inf", f);
    else fprintf(f, "%.10g", v);
}

/* Class-mean Dice of every seed of (t, b, s). */
static void dice_by_seed(const cmp *x, int t, int b, int s, double *v)
{
    for (int i = 0; i < x->c->n_seeds; i++) v[i] = res_at(x, t, b, s, i)->mean[0];
}

static ms_status write_mem(const char *dir, const char *name, char *txt, size_t len)
{
    char p[MS_PATH_MAX];
    ms_status rc = ms_path_join(p, dir, name);
    if (!rc) rc = ms_write_file_atomic(p, txt, len);
    free(txt);
    return rc;
}

static ms_status write_results(const cmp *x)
{
    const ms_compare_config *c = x->c;
    char *txt = NULL, bl[16];
    size_t len = 0;
    FILE *f = open_memstream(&txt, &len);
    MS_FAIL_IF(!f, MS_ENOMEM, "out of memory");
    fputs("task,budget,start,seed,class,dice,iou,hd95,nsd,run\n", f);
    for (int t = 0; t < c->n_tasks; t++)
        for (int b = 0; b < c->n_budgets; b++)
            for (int k = 0; k < x->n_starts; k++)
                for (int i = 0; i < c->n_seeds; i++) {
                    const run_result *r = res_at(x, t, b, x->starts[k], i);
                    char dir[MS_PATH_MAX];
                    budget_label(c->budget[b], bl, sizeof bl);
                    if (run_rel(x, t, b, x->starts[k], i, dir)) continue;
                    for (int j = 0; j <= r->n_cls; j++) {
                        fprintf(f, "%s,%s,%s,%lld,", c->task[t], bl, start_name[x->starts[k]],
                                (long long)(c->seed_base + i));
                        if (j < r->n_cls) fprintf(f, "%d", r->cls[j]);
                        else fputs("mean", f);
                        const double *m = j < r->n_cls ? r->m[j] : r->mean;
                        for (int q = 0; q < 4; q++) fputc(',', f), put(f, m[q]);
                        fprintf(f, ",%s\n", dir);
                    }
                }
    MS_FAIL_IF(fclose(f), MS_ENOMEM, "out of memory");
    return write_mem(c->out, "results.csv", txt, len);
}

/* summary.csv, paired.csv and summary.md together (the same numbers). */
static ms_status write_summaries(const cmp *x)
{
    const ms_compare_config *c = x->c;
    char *ts = NULL, *tp = NULL, *tm = NULL, bl[16];
    size_t ls = 0, lp = 0, lm = 0;
    FILE *fs = open_memstream(&ts, &ls), *fp = open_memstream(&tp, &lp), *fm = open_memstream(&tm, &lm);
    double *a = malloc((size_t)c->n_seeds * sizeof *a), *bv = malloc((size_t)c->n_seeds * sizeof *bv);
    MS_FAIL_IF(!fs || !fp || !fm || !a || !bv, MS_ENOMEM, "out of memory");
    fputs("task,budget,start,n,mean,sd\n", fs);
    fputs("task,budget,start,baseline,n,mean_diff,sd_diff,t_crit,ci_lo,ci_hi\n", fp);
    fprintf(fm, "# mrisam compare: held-out 3-D Dice\n\nClass-mean Dice (mean over foreground classes of the mean "
                "over held-out volumes) per run; mean ± sd (n − 1) over %d seed(s) from %lld.\n\n",
            c->n_seeds, (long long)c->seed_base);
    for (int t = 0; t < c->n_tasks; t++) {
        fprintf(fm, "## %s\n\n| budget |", c->task[t]);
        for (int k = 0; k < x->n_starts; k++) fprintf(fm, " %s |", start_name[x->starts[k]]);
        fputs("\n|---|", fm);
        for (int k = 0; k < x->n_starts; k++) fputs("---|", fm);
        fputc('\n', fm);
        for (int b = 0; b < c->n_budgets; b++) {
            budget_label(c->budget[b], bl, sizeof bl);
            fprintf(fm, "| %s |", bl);
            for (int k = 0; k < x->n_starts; k++) {
                double mean, sd;
                int n;
                dice_by_seed(x, t, b, x->starts[k], a);
                ms_mean_sd(a, c->n_seeds, &mean, &sd, &n);
                fprintf(fs, "%s,%s,%s,%d,", c->task[t], bl, start_name[x->starts[k]], n);
                put(fs, mean), fputc(',', fs), put(fs, sd), fputc('\n', fs);
                fprintf(fm, " %.4f ± %.4f (n %d) |", mean, sd, n);
            }
            fputc('\n', fm);
        }
        fputs("\nPaired by seed (start − baseline), Student t 95 % interval, df = n − 1:\n\n"
              "| budget | start | baseline | n | mean diff | sd | t | 95 % CI |\n"
              "|---|---|---|---:|---:|---:|---:|---|\n",
              fm);
        for (int b = 0; b < c->n_budgets; b++)
            for (int k = 0; k < x->n_starts; k++)
                for (int base = START_RANDOM; base <= START_SAM; base++) {
                    int s = x->starts[k];
                    if (s <= base || (base == START_SAM && !c->sam_ckpt)) continue;
                    ms_paired p;
                    dice_by_seed(x, t, b, s, a);
                    dice_by_seed(x, t, b, base, bv);
                    ms_paired_diff(a, bv, c->n_seeds, &p);
                    budget_label(c->budget[b], bl, sizeof bl);
                    fprintf(fp, "%s,%s,%s,%s,%d,", c->task[t], bl, start_name[s], start_name[base], p.n);
                    const double v[5] = {p.mean, p.sd, p.t, p.lo, p.hi};
                    for (int q = 0; q < 5; q++) put(fp, v[q]), fputc(q < 4 ? ',' : '\n', fp);
                    fprintf(fm, "| %s | %s | %s | %d | %+.4f | %.4f | %.3f | [%+.4f, %+.4f] |\n", bl, start_name[s],
                            start_name[base], p.n, p.mean, p.sd, p.t, p.lo, p.hi);
                }
        fputc('\n', fm);
    }
    free(a);
    free(bv);
    int e = fclose(fs) | fclose(fp) | fclose(fm);
    ms_status rc = e ? ms_error(MS_ENOMEM, "out of memory") : MS_OK;
    if (!rc) rc = write_mem(c->out, "summary.csv", ts, ls), ts = NULL;
    if (!rc) rc = write_mem(c->out, "paired.csv", tp, lp), tp = NULL;
    if (!rc) rc = write_mem(c->out, "summary.md", tm, lm), tm = NULL;
    free(ts);
    free(tp);
    free(tm);
    return rc;
}

/* The plotting program on PATH (or c->gnuplot as given); "" when there is none. */
static void find_gnuplot(const char *name, char out[MS_PATH_MAX])
{
    out[0] = 0;
    if (strchr(name, '/')) {
        if (!access(name, X_OK)) snprintf(out, MS_PATH_MAX, "%s", name);
        return;
    }
    const char *path = getenv("PATH");
    for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
        const char *e = strchr(p, ':');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char cand[MS_PATH_MAX];
        if (n && !ms_path_fmt(cand, "%.*s/%s", (int)n, p, name) && !access(cand, X_OK)) {
            snprintf(out, MS_PATH_MAX, "%s", cand);
            return;
        }
        p += n + (e != NULL);
    }
}

/* Runs gnuplot on one script, without a shell; its output to log. */
static ms_status run_gnuplot(const char *exe, const char *script, const char *log)
{
    char *argv[] = {"gnuplot", (char *)script, NULL};
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa)) return ms_error(MS_ENOMEM, "out of memory");
    int e = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (!e) e = posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (!e) e = posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = 0;
    if (!e) e = posix_spawn(&pid, exe, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e) return ms_error(e, "%s: cannot run %s: %s", script, exe, strerror(e));
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0)
        if (errno != EINTR) return ms_error(MS_EIO, "%s: waiting for gnuplot: %s", script, strerror(errno));
    if (!WIFEXITED(ws) || WEXITSTATUS(ws))
        return ms_error(MS_EIO, "%s: gnuplot failed (see %s)", script, log);
    return MS_OK;
}

/* One task's data and script: Dice vs budget (budgets at 0, 1, ... with their labels), a line per start, ±sd bars. */
static ms_status plot_script(const cmp *x, int t, const char *dir, char script[MS_PATH_MAX])
{
    const ms_compare_config *c = x->c;
    char dat[MS_PATH_MAX], svg[MS_PATH_MAX], bl[16];
    MS_TRY(ms_path_fmt(dat, "%s/%s.dat", dir, c->task[t]));
    MS_TRY(ms_path_fmt(svg, "%s/%s.svg", dir, c->task[t]));
    MS_TRY(ms_path_fmt(script, "%s/%s.gp", dir, c->task[t]));
    char *td = NULL, *tg = NULL;
    size_t ld = 0, lg = 0;
    FILE *fd = open_memstream(&td, &ld), *fg = open_memstream(&tg, &lg);
    double *v = malloc((size_t)c->n_seeds * sizeof *v);
    MS_FAIL_IF(!fd || !fg || !v, MS_ENOMEM, "out of memory");
    fprintf(fg, "set terminal svg size 720,480 dynamic background rgb 'white'\nset output '%s'\n"
                "set title 'mrisam compare: %s (mean ± sd over %d seeds)'\nset xlabel 'labelled training slices'\n"
                "set ylabel 'held-out 3-D Dice (class mean)'\nset yrange [0:1]\nset xrange [-0.5:%d.5]\n"
                "set key bottom right\nset grid ytics\nset xtics (",
            svg, c->task[t], c->n_seeds, c->n_budgets - 1);
    for (int b = 0; b < c->n_budgets; b++) {
        budget_label(c->budget[b], bl, sizeof bl);
        fprintf(fg, "%s'%s' %d", b ? ", " : "", bl, b);
    }
    fputs(")\nplot ", fg);
    for (int k = 0; k < x->n_starts; k++) {
        fprintf(fd, "# %s: budget index, mean, sd\n", start_name[x->starts[k]]);
        for (int b = 0; b < c->n_budgets; b++) {
            double mean, sd;
            int n;
            dice_by_seed(x, t, b, x->starts[k], v);
            ms_mean_sd(v, c->n_seeds, &mean, &sd, &n);
            fprintf(fd, "%.3f ", b + 0.04 * (k - (x->n_starts - 1) / 2.0)); /* side by side: the bars stay apart */
            put(fd, mean), fputc(' ', fd), put(fd, sd), fputc('\n', fd);
        }
        fputs("\n\n", fd);
        fprintf(fg, "%s'%s' index %d using 1:2:3 with yerrorlines lw 2 title '%s'", k ? ", \\\n     " : "", dat, k,
                start_name[x->starts[k]]);
    }
    fputc('\n', fg);
    free(v);
    int e = fclose(fd) | fclose(fg);
    ms_status rc = e ? ms_error(MS_ENOMEM, "out of memory") : MS_OK;
    if (!rc) rc = ms_write_file_atomic(dat, td, ld);
    if (!rc) rc = ms_write_file_atomic(script, tg, lg);
    free(td);
    free(tg);
    return rc;
}

/* OUT/plots/: every task's script, drawn when gnuplot is there (a missing or failing gnuplot is said, not fatal). */
static ms_status plots(const cmp *x)
{
    const ms_compare_config *c = x->c;
    char dir[MS_PATH_MAX], exe[MS_PATH_MAX], log[MS_PATH_MAX], script[MS_PATH_MAX];
    MS_TRY(ms_path_join(dir, c->out, "plots"));
    MS_TRY(ms_mkdirs(dir));
    MS_TRY(ms_path_join(log, dir, "gnuplot.log"));
    find_gnuplot(c->gnuplot ? c->gnuplot : "gnuplot", exe);
    if (!exe[0])
        say(x, "compare: gnuplot not found: no plots drawn (apt-get install gnuplot-nox, then run the scripts in %s)",
            dir);
    for (int t = 0; t < c->n_tasks; t++) {
        MS_TRY(plot_script(x, t, dir, script));
        if (!exe[0]) continue;
        if (run_gnuplot(exe, script, log)) say(x, "compare: %s", ms_errmsg());
        else say(x, "compare: plot %s/%s.svg", dir, c->task[t]);
    }
    return MS_OK;
}

/* compare.json's plan (the pretraining part is filled by pretrain()). */
static void plan_json(cmp *x)
{
    const ms_compare_config *c = x->c;
    cJSON *j = x->json;
    cJSON_AddNumberToObject(j, "version", 1);
    cJSON *st = cJSON_AddArrayToObject(j, "starts");
    for (int k = 0; k < x->n_starts; k++) cJSON_AddItemToArray(st, cJSON_CreateString(start_name[x->starts[k]]));
    if (c->sam_ckpt) cJSON_AddStringToObject(j, "sam_ckpt", c->sam_ckpt);
    cJSON *bu = cJSON_AddArrayToObject(j, "budgets");
    for (int b = 0; b < c->n_budgets; b++) {
        char bl[16];
        budget_label(c->budget[b], bl, sizeof bl);
        cJSON_AddItemToArray(bu, cJSON_CreateString(bl));
    }
    cJSON *se = cJSON_AddArrayToObject(j, "seeds");
    for (int i = 0; i < c->n_seeds; i++) cJSON_AddItemToArray(se, cJSON_CreateNumber((double)(c->seed_base + i)));
    cJSON *f = cJSON_AddObjectToObject(j, "finetune");
    cJSON_AddStringToObject(f, "model", c->ft.model ? c->ft.model : "");
    cJSON_AddStringToObject(f, "method", ms_ft_method_name(c->ft.method));
    cJSON_AddStringToObject(f, "scope", ms_ft_scope_name(c->ft.scope));
    cJSON_AddNumberToObject(f, "max_steps", (double)c->ft.max_steps);
    cJSON_AddNumberToObject(f, "warmup", c->ft.warmup);
    cJSON_AddNumberToObject(f, "lr", c->ft.lr);
    cJSON_AddNumberToObject(f, "batch", c->ft.batch);
    cJSON_AddNumberToObject(f, "input_size", c->ft.input_size);
    cJSON_AddNumberToObject(f, "val_fraction", c->ft.val_fraction);
    cJSON_AddNumberToObject(f, "val_every_steps", (double)val_every(c));
    cJSON *ev = cJSON_AddObjectToObject(j, "eval");
    cJSON_AddBoolToObject(ev, "hd95", c->hd95);
    cJSON_AddBoolToObject(ev, "nsd", c->nsd);
    cJSON_AddNumberToObject(ev, "nsd_tolerance_mm", c->nsd_tol);
}

static ms_status write_json(const cmp *x)
{
    char *txt = cJSON_Print(x->json);
    MS_FAIL_IF(!txt, MS_ENOMEM, "out of memory");
    size_t n = strlen(txt);
    char *t2 = realloc(txt, n + 2);
    if (t2) t2[n] = '\n', t2[n + 1] = 0, txt = t2, n++;
    return write_mem(x->c->out, "compare.json", txt, n);
}

void ms_compare_config_default(ms_compare_config *c)
{
    memset(c, 0, sizeof *c);
    static const int b[4] = {1, 3, 10, 0};
    c->n_budgets = 4;
    memcpy(c->budget, b, sizeof b);
    c->n_seeds = 3;
    c->hd95 = c->nsd = 1;
    c->nsd_tol = 1.0;
    c->eval_batch = 4;
    c->val_every = -1;
    ms_ft_run_config_default(&c->ft);
    ms_mae_run_config_default(&c->mae);
    c->mae.max_steps = 0;
}

static ms_status config_check(const ms_compare_config *c)
{
    MS_FAIL_IF(c->n_tasks < 1 || c->n_tasks > MS_FT_MAX_TASKS, MS_EINVAL, "compare: 1..%d tasks", MS_FT_MAX_TASKS);
    MS_FAIL_IF(c->n_budgets < 1 || c->n_budgets > MS_CMP_MAX_BUDGETS, MS_EINVAL, "compare: 1..%d budgets",
               MS_CMP_MAX_BUDGETS);
    MS_FAIL_IF(c->n_seeds < 1 || c->n_seeds > MS_CMP_MAX_SEEDS, MS_EINVAL, "compare: 1..%d seeds", MS_CMP_MAX_SEEDS);
    MS_FAIL_IF(!c->out, MS_EINVAL, "compare: no output folder");
    MS_FAIL_IF(!c->ft.model, MS_EINVAL, "compare: the random start needs a model (--model)");
    MS_FAIL_IF(!(c->ft.val_fraction > 0), MS_EINVAL, "compare: the held-out data needs --val-fraction > 0");
    for (int t = 0; t < c->n_tasks; t++) {
        MS_FAIL_IF(!c->task[t] || !*c->task[t] || strchr(c->task[t], '/') || !strcmp(c->task[t], ".") ||
                       !strcmp(c->task[t], ".."),
                   MS_EINVAL, "compare: task name '%s' cannot name a folder", c->task[t] ? c->task[t] : "");
        for (int u = 0; u < t; u++)
            MS_FAIL_IF(!strcmp(c->task[t], c->task[u]), MS_EINVAL, "compare: task %s given twice", c->task[t]);
    }
    for (int b = 0; b < c->n_budgets; b++) MS_FAIL_IF(c->budget[b] < 0, MS_EINVAL, "compare: a budget below 0");
    ms_ft_run_config f = c->ft;
    f.n_tasks = 1;
    f.store[0] = c->store[0];
    f.task[0] = c->task[0];
    f.out = c->out;
    f.init_random = 1;
    return ms_ft_run_config_check(&f);
}

ms_status ms_compare_run(const ms_compare_config *c, ms_device *dev)
{
    MS_TRY(config_check(c));
    cmp x = {.c = c, .dev = dev, .t0 = ms_now_s()};
    x.starts[x.n_starts++] = START_RANDOM;
    if (c->sam_ckpt) x.starts[x.n_starts++] = START_SAM;
    if (c->pretrained || c->mae.max_steps > 0) x.starts[x.n_starts++] = START_PRETRAINED;
    x.res = calloc((size_t)c->n_tasks * (size_t)c->n_budgets * N_STARTS * (size_t)c->n_seeds, sizeof *x.res);
    x.json = cJSON_CreateObject();
    ms_status rc = x.res && x.json ? ms_mkdirs(c->out) : ms_error(MS_ENOMEM, "out of memory");
    if (!rc) plan_json(&x);
    if (!rc) rc = make_splits(&x);
    if (!rc) rc = pretrain(&x);
    if (!rc) rc = write_json(&x); /* the plan and what pretraining saw, before the runs */
    if (!rc) rc = run_all(&x);
    if (!rc) rc = write_results(&x);
    if (!rc) rc = write_summaries(&x);
    if (!rc) rc = plots(&x);
    if (!rc)
        say(&x, "compare: %d runs (%d trained now) in %.0f s: %s/summary.md", x.n_runs, x.n_fresh,
            ms_now_s() - x.t0, c->out);
    for (int t = 0; t < MS_FT_MAX_TASKS; t++) free(x.held[t]);
    free(x.res);
    cJSON_Delete(x.json);
    return rc;
}
