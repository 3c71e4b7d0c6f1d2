/* tests/finetune/test_ft_run.c — a fine-tuning run driven through the library (finetune/ft_run.h), no CLI.
 *
 * A small labelled store (tests/data/store_fixture.h: three volumes, label values {0, 3, 7}), vit_test from a
 * seeded random init at input 64, a few-shot selection so that an epoch is two steps, validation every epoch and a
 * checkpoint every two steps. Each case runs twice:
 *  (a) uninterrupted, N steps;
 *  (b) k steps, ms_ft_run_save (what the CLI does on a signal), close; reopen with resume and finish.
 * Then (b) must equal (a) bit for bit: every parameter, the AdamW moments and step, best/ (model.safetensors and
 * meta.json), the last checkpoint's files, every validation panel, and every log.jsonl line with "t" and
 * "img_per_s" (timings) removed. Cases: full / decoder with the embedding cache and two tasks on one store;
 * LoRA / encoder+decoder without the cache; adapters / decoder with box prompts and the cache. Also: a resume
 * with other options is refused, and the run learned something (parameters moved, finite losses, best/ written).
 * For the first case also:
 *  (c) killed after logging past the checkpoint: k steps, a save, 2 more steps (logged, one validated), close without
 *      a save; the resumed run's log.jsonl must equal (a)'s (each step once, in order, the same values);
 *  (d) a checkpoint whose write fails (a directory where one of its files, drawn at random, goes): the save fails
 *      naming that file and no step directory is left behind.
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/path.h"
#include "checkpoints/rundir.h"
#include "finetune/ft_run.h"
#include "harness.h"
#include "data/store_fixture.h"

enum { N_STEPS = 6, K_STEPS = 3 };

/* The validation panels the run wrote into RUN/val/. */
static int count_panels(const char *run)
{
    char dir[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(dir, run, "val"));
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += ms_str_ends_with(e->d_name, ".png");
    closedir(d);
    return n;
}

static int same_file(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int ok = !ms_read_file(a, 1 << 28, &x, &nx) && !ms_read_file(b, 1 << 28, &y, &ny) && nx == ny &&
             !memcmp(x, y, nx);
    if (!ok) printf("  differ: %s %s (%zu, %zu bytes)\n", a, b, nx, ny);
    ms_error_clear();
    free(x);
    free(y);
    return ok;
}

/* Removes `"key": value` (and the comma before it) from a log line in place. */
static void drop_field(char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, ", \"%s\": ", key);
    char *s = strstr(line, pat);
    if (!s) return;
    char *e = s + strlen(pat);
    while (*e && *e != ',' && *e != '}') e++;
    memmove(s, e, strlen(e) + 1);
}

/* log.jsonl without timings; *n_lines gets the line count. The caller frees. */
static char *log_without_times(const char *run, int *n_lines)
{
    char p[MS_PATH_MAX], *txt = NULL;
    size_t len = 0;
    MS_CHECK_OK(ms_path_join(p, run, "log.jsonl"));
    if (ms_read_file(p, 1 << 24, &txt, &len)) return NULL;
    char *out = calloc(len + 1, 1);
    *n_lines = 0;
    for (char *line = strtok(txt, "\n"); line; line = strtok(NULL, "\n")) {
        drop_field(line, "img_per_s");
        drop_field(line, "t");
        strcat(out, line);
        strcat(out, "\n");
        (*n_lines)++;
    }
    free(txt);
    return out;
}

typedef struct snapshot {
    float *params, *m, *v;
    int64_t numel, numel_tr, adam_step;
} snapshot;

static void snap(const ms_ft_run *r, snapshot *s)
{
    const ms_params *ps = &ms_ft_run_model(r)->sam.ps;
    const ms_optimizer *o = ms_ft_run_optimizer(r);
    s->numel = ps->numel;
    s->numel_tr = ps->numel_trainable;
    s->adam_step = o->step;
    s->params = malloc((size_t)s->numel * sizeof(float));
    s->m = malloc((size_t)s->numel_tr * sizeof(float));
    s->v = malloc((size_t)s->numel_tr * sizeof(float));
    memcpy(s->params, ps->data, (size_t)s->numel * sizeof(float)); /* CPU: device memory is host memory */
    memcpy(s->m, o->m, (size_t)s->numel_tr * sizeof(float));
    memcpy(s->v, o->v, (size_t)s->numel_tr * sizeof(float));
}

static void snap_free(snapshot *s) { free(s->params); free(s->m); free(s->v); }

/* Steps an open run to its end (or `stop_after` steps); returns the steps taken, -1 on error. */
static int drive(ms_ft_run *r, int stop_after, int *n_val, int *n_best, double *last_loss)
{
    ms_ft_step_info s = {0};
    int n = 0;
    while (!s.done && n != stop_after) {
        ms_status st = ms_ft_run_step(r, &s);
        if (st) { printf("  step: %s\n", ms_errmsg()); return -1; }
        n += s.stepped;
        *n_val += s.validated;
        *n_best += s.validated && s.best;
        if (s.stepped) *last_loss = s.loss;
    }
    return n;
}

/* 1 when RUN/ckpt holds a step_* entry */
static int has_step_dir(const char *run)
{
    char p[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(p, run, "ckpt"));
    DIR *d = opendir(p);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) n += !strncmp(e->d_name, "step_", 5);
    if (d) closedir(d);
    return n;
}

/* (c): k steps, a save, 2 more steps, killed (closed without a save); resumed and finished, log.jsonl equals log_a. */
static void run_killed(const char *name, ms_ft_run_config c, const char *tmp, ms_device *dev, const char *log_a)
{
    char run[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_fmt(run, "%s/%s_c", tmp, name));
    c.out = run;
    ms_ft_run *r = NULL;
    int nv = 0, nb = 0, n = -1;
    double loss = NAN;
    MS_CHECK_OK(ms_ft_run_open(&c, dev, &r));
    if (r && drive(r, K_STEPS, &nv, &nb, &loss) == K_STEPS) {
        MS_CHECK_OK(ms_ft_run_save(r));
        n = drive(r, 2, &nv, &nb, &loss); /* logged, never checkpointed */
    }
    ms_ft_run_close(r);
    r = NULL;
    c.resume = 1;
    MS_CHECK_OK(ms_ft_run_open(&c, dev, &r));
    if (r) {
        ms_ft_run_info in;
        ms_ft_run_get_info(r, &in);
        MS_CHECK(n == 2 && in.resumed_step == K_STEPS, "%s (killed): resumed at step %lld after %d steps past it",
                 name, (long long)in.resumed_step, n);
        drive(r, -1, &nv, &nb, &loss);
        ms_ft_run_close(r);
    }
    int lc = 0;
    char *log_c = log_without_times(run, &lc);
    MS_CHECK(log_c && log_a && !strcmp(log_c, log_a), "%s (killed): log.jsonl equals the uninterrupted run's (%d lines)",
             name, lc);
    if (log_c && log_a && strcmp(log_c, log_a)) printf("  resumed:\n%s  uninterrupted:\n%s", log_c, log_a);
    free(log_c);
}

/* (d): the save at step k cannot write one of its files: it fails naming it and leaves no step directory. */
static void run_failed_save(const char *name, ms_ft_run_config c, const char *tmp, ms_device *dev, uint64_t seed)
{
    static const char *const files[] = {"model.safetensors", "meta.json", "optim.safetensors", "state.json",
                                        "loader_0.bin", "config.json", "DONE"};
    const char *file = files[(seed >> 9) % (sizeof files / sizeof *files)]; /* drawn with the printed seed */
    char run[MS_PATH_MAX], p[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_fmt(run, "%s/%s_d", tmp, name));
    c.out = run;
    ms_ft_run *r = NULL;
    int nv = 0, nb = 0;
    double loss = NAN;
    MS_CHECK_OK(ms_ft_run_open(&c, dev, &r));
    if (!r) return;
    MS_CHECK_OK(ms_path_fmt(p, "%s/ckpt/step_%08d/%s/x", run, K_STEPS, file));
    MS_CHECK_OK(ms_mkdirs(p));
    MS_CHECK(drive(r, K_STEPS, &nv, &nb, &loss) == K_STEPS, "%s: %d steps", name, K_STEPS);
    ms_status st = ms_ft_run_save(r);
    MS_CHECK(st && strstr(ms_errmsg(), file), "%s: writing %s fails, naming it: %s", name, file, ms_errmsg());
    MS_CHECK(!has_step_dir(run), "%s: no partial step directory is left behind (%s blocked)", name, file);
    ms_ft_run_close(r);
}

typedef struct tcase {
    const char *name;
    ms_ft_method method;
    ms_ft_scope scope;
    ms_prompt_mode prompt;
    int cache, two_tasks;
} tcase;

static void run_case(const tcase *tc, const char *tmp, const char *store, uint64_t seed, ms_device *dev, int extra)
{
    char run_a[MS_PATH_MAX], run_b[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_fmt(run_a, "%s/%s_a", tmp, tc->name));
    MS_CHECK_OK(ms_path_fmt(run_b, "%s/%s_b", tmp, tc->name));
    ms_ft_run_config c;
    ms_ft_run_config_default(&c);
    c.n_tasks = tc->two_tasks ? 2 : 1;
    c.store[0] = c.store[1] = store;
    c.task[0] = "brain";
    c.task[1] = "other";
    c.model = "vit_test";
    c.init_random = 1;
    c.input_size = 64;
    c.method = tc->method;
    c.scope = tc->scope;
    c.prompt = tc->prompt;
    c.cache_embeddings = tc->cache;
    c.shots = tc->two_tasks ? 2 : 4; /* batch 2: an epoch is 2 steps (of 1 per task with two tasks) */
    c.val_fraction = 0.34;
    c.val_slices = 3;
    c.batch = 2;
    c.max_steps = N_STEPS;
    c.warmup = 2;
    c.lr = 1e-3;
    c.val_every = 1;
    c.patience = 100;
    c.save_every = 100;          /* checkpoints: the save at step K_STEPS and the last step */
    c.keep_last = 10;
    c.seed = (int64_t)(seed % 1000003);
    c.workers = 1;

    /* (a) uninterrupted */
    ms_ft_run *r = NULL;
    c.out = run_a;
    ms_status st = ms_ft_run_open(&c, dev, &r);
    MS_CHECK(st == MS_OK, "%s: open: %s", tc->name, ms_errmsg());
    if (st) return;
    snapshot init, a, b;
    snap(r, &init);
    int nv_a = 0, nb_a = 0, nv_b = 0, nb_b = 0;
    double loss_a = NAN, loss_b = NAN;
    int n_a = drive(r, -1, &nv_a, &nb_a, &loss_a);
    snap(r, &a);
    ms_ft_run_close(r);

    /* (b) k steps, save, close; resume, finish */
    c.out = run_b;
    MS_CHECK_OK(ms_ft_run_open(&c, dev, &r));
    int n_b = r ? drive(r, K_STEPS, &nv_b, &nb_b, &loss_b) : -1;
    if (r) MS_CHECK_OK(ms_ft_run_save(r));
    ms_ft_run_close(r);
    r = NULL;
    ms_ft_run_config other = c;
    other.lr = 5e-4;
    other.resume = 1;
    st = ms_ft_run_open(&other, dev, &r);
    MS_CHECK(st != MS_OK && strstr(ms_errmsg(), "options differ"), "%s: a resume with another lr is refused (%s)",
             tc->name, ms_errmsg());
    ms_ft_run_close(r);
    r = NULL;
    c.resume = 1;
    MS_CHECK_OK(ms_ft_run_open(&c, dev, &r));
    if (r) {
        ms_ft_run_info in;
        ms_ft_run_get_info(r, &in);
        MS_CHECK(in.resumed_step == K_STEPS && in.step == K_STEPS, "%s: resumed at step %lld", tc->name,
                 (long long)in.resumed_step);
        int more = drive(r, -1, &nv_b, &nb_b, &loss_b);
        n_b = more < 0 || n_b < 0 ? -1 : n_b + more;
        snap(r, &b);
        ms_ft_run_close(r);
    } else {
        memset(&b, 0, sizeof b);
    }

    /* the run did something */
    int n_png = count_panels(run_a) + count_panels(run_b);
    int moved = 0;
    for (int64_t i = 0; i < a.numel && !moved; i++) moved = a.params[i] != init.params[i];
    printf("%s: %d + %d steps, %d validations (%d best), last loss %.6f / %.6f, %d panels, %lld trainable\n",
           tc->name, n_a, n_b, nv_a, nb_a, loss_a, loss_b, n_png, (long long)a.numel_tr);
    MS_CHECK(n_a == N_STEPS && n_b == N_STEPS, "%s: %d and %d steps", tc->name, n_a, n_b);
    MS_CHECK(moved && isfinite(loss_a) && loss_a > 0, "%s: the parameters moved, finite loss", tc->name);
    MS_CHECK(nv_a == N_STEPS / 2 && nv_b == nv_a && nb_a >= 1 && nb_b == nb_a, "%s: validations %d/%d, best %d/%d",
             tc->name, nv_a, nv_b, nb_a, nb_b);
    /* panels: task 0's first slices with their argmax maps (automatic mode only) */
    MS_CHECK(n_png == (tc->prompt == MS_PROMPT_NONE ? 2 * nv_a : 0), "%s: %d panels", tc->name, n_png);

    /* (b) == (a) */
    int same = b.params && a.numel == b.numel && a.numel_tr == b.numel_tr && a.adam_step == b.adam_step &&
               !memcmp(a.params, b.params, (size_t)a.numel * sizeof(float)) &&
               !memcmp(a.m, b.m, (size_t)a.numel_tr * sizeof(float)) &&
               !memcmp(a.v, b.v, (size_t)a.numel_tr * sizeof(float));
    MS_CHECK(same, "%s: parameters, AdamW moments and step bit-identical after save + resume", tc->name);
    const char *files[] = {"best/model.safetensors", "best/meta.json", "ckpt/step_00000006/model.safetensors",
                           "ckpt/step_00000006/optim.safetensors", "ckpt/step_00000006/state.json",
                           "ckpt/step_00000006/loader_0.bin", "shots.json", "val/step_00000002.png",
                           "val/step_00000004.png", "val/step_00000006.png", NULL};
    for (int i = 0; files[i] && (tc->prompt == MS_PROMPT_NONE || !strstr(files[i], ".png")); i++) {
        char pa[MS_PATH_MAX], pb[MS_PATH_MAX];
        MS_CHECK_OK(ms_path_join(pa, run_a, files[i]));
        MS_CHECK_OK(ms_path_join(pb, run_b, files[i]));
        MS_CHECK(same_file(pa, pb), "%s: %s identical", tc->name, files[i]);
    }
    int la = 0, lb = 0;
    char *log_a = log_without_times(run_a, &la), *log_b = log_without_times(run_b, &lb);
    MS_CHECK(log_a && log_b && la == N_STEPS + N_STEPS / 2 && !strcmp(log_a, log_b),
             "%s: log.jsonl identical but for t and img_per_s (%d and %d lines)", tc->name, la, lb);
    if (extra) {
        c.resume = 0;
        run_killed(tc->name, c, tmp, dev, log_a);
        run_failed_save(tc->name, c, tmp, dev, seed);
    }
    free(log_a);
    free(log_b);
    snap_free(&init);
    snap_free(&a);
    snap_free(&b);
}

/* The default warm-up is min(200, 10 % of the run's steps) (a few-shot run of 40 steps never left a 200-step warm-up,
 * and its validation Dice stayed 0); a given warm-up that lasts the whole run is flagged. Random run lengths. */
static void check_warmup(const char *tmp, const char *store, uint64_t seed, ms_device *dev)
{
    ms_rng g;
    ms_rng_init(&g, seed, 77);
    for (int k = 0; k < 3; k++) {
        int64_t total = k == 2 ? 2000 + (int64_t)ms_rng_below(&g, 3000) : 5 + (int64_t)ms_rng_below(&g, 600);
        int given = k == 1 ? (int)total + (int)ms_rng_below(&g, 50) : -1;
        ms_ft_run_config c;
        ms_ft_run_config_default(&c);
        c.n_tasks = 1;
        c.store[0] = store;
        c.task[0] = "brain";
        c.model = "vit_test";
        c.init_random = 1;
        c.input_size = 64;
        c.batch = 2;
        c.max_steps = total;
        c.workers = 1;
        if (given >= 0) c.warmup = given;
        char out[MS_PATH_MAX];
        MS_CHECK_OK(ms_path_fmt(out, "%s/warmup%d", tmp, k));
        c.out = out;
        ms_ft_run *r = NULL;
        MS_CHECK_OK(ms_ft_run_open(&c, dev, &r));
        if (!r) continue;
        ms_ft_run_info in;
        ms_ft_run_get_info(r, &in);
        int64_t want = given >= 0 ? given : (total / 10 < 200 ? total / 10 : 200);
        MS_CHECK(in.total == total && in.warmup == want && in.warmup_exceeds_run == (want >= total),
                 "%lld steps, warm-up given %d: %lld (expected %lld), exceeds %d", (long long)total, given,
                 (long long)in.warmup, (long long)want, in.warmup_exceeds_run);
        ms_ft_run_close(r);
    }
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    char tmp[] = "/tmp/test_ft_run.XXXXXX";
    if (!mkdtemp(tmp)) { perror("mkdtemp"); return 1; }
    char store[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(store, tmp, "store"));
    const fx_vol vols[] = {{40, 36, 10, 1}, {36, 40, 10, 1}, {40, 40, 10, 1}};
    MS_CHECK_OK(fx_make_store(store, seed, vols, 3));
    ms_device dev;
    MS_CHECK_OK(ms_device_init_at(&dev, MS_DEV_CPU, 0, 2));
    const tcase cases[] = {
        {"full_decoder_cache_2tasks", MS_FT_FULL, MS_FT_SCOPE_DECODER, MS_PROMPT_NONE, 1, 1},
        {"lora_encdec", MS_FT_LORA, MS_FT_SCOPE_ENC_DEC, MS_PROMPT_NONE, 0, 0},
        {"adapter_decoder_box_cache", MS_FT_ADAPTER, MS_FT_SCOPE_DECODER, MS_PROMPT_BOX, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], tmp, store, seed, &dev, i == 0);
    check_warmup(tmp, store, seed, &dev);
    ms_device_free(&dev);
    if (getenv("MS_TEST_KEEP")) printf("kept %s\n", tmp);
    else if (ms_dir_remove(tmp)) printf("cannot remove %s: %s\n", tmp, ms_errmsg());
    return ms_test_done();
}
