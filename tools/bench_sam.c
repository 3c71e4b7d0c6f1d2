/* tools/bench_sam.c — `mrisam bench sam`: CPU seconds per image of SAM's image encoder, forward and forward+backward
 * (all encoder parameters trainable, loss Σ emb·G), for vit_test at 256 and vit_b at 1024, beside the PyTorch
 * reference (tests/reference/sam_ref_encoder.py through tools/bench/bench_sam_torch.py, /usr/bin/python3) on the
 * same thread count in the same run. vit_t / vit_t_test: MobileSAM's TinyViT (pretrain/tinyvit.h), forward with
 * inference BatchNorm and forward+backward with training BatchNorm, beside MobileSAM's own code (--upstream DIR or
 * MOBILESAM_DIR: a checkout of ChaoningZhang/MobileSAM). Weights are random (timing does not depend on them). Prints a table and,
 * with --md, the rows for docs/PERFORMANCE.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/device.h"
#include "base/path.h"
#include "base/rng.h"
#include "cli.h"
#include "pretrain/params.h"
#include "pretrain/sam_encoder.h"
#include "pretrain/tinyvit.h"

int ms_bench_sam(int argc, char **argv);

typedef struct timing { double fwd, fb; } timing;

static int is_tinyvit(const char *model) { return !strncmp(model, "vit_t", 5) && strcmp(model, "vit_test"); }

/* The encoder under test: SAM's ViT or TinyViT, behind three calls. */
typedef struct bench_enc {
    int tiny;
    ms_sam_encoder enc;
    ms_tinyvit tv;
    int64_t S, ne; /* input side, embedding floats */
} bench_enc;

static ms_status enc_build(bench_enc *e, const char *model, ms_params *ps, ms_device *dev)
{
    memset(e, 0, sizeof *e);
    e->tiny = is_tinyvit(model);
    if (e->tiny) {
        ms_tinyvit_config c;
        MS_TRY(ms_tinyvit_config_named(model, &c));
        MS_TRY(ms_tinyvit_init(&e->tv, &c, ps, "image_encoder."));
        MS_TRY(ms_params_alloc(ps, dev));
        MS_TRY(ms_tinyvit_init_random(&e->tv, 1));
        MS_TRY(ms_params_alloc_grads(ps));
        MS_TRY(ms_tinyvit_reserve(&e->tv, 1, 1));
        int64_t g = ms_tinyvit_grid(&c, 4);
        e->S = c.img_size;
        e->ne = (int64_t)c.out_chans * g * g;
        return MS_OK;
    }
    ms_sam_enc_config c;
    MS_TRY(ms_sam_enc_config_named(model, &c));
    MS_TRY(ms_sam_encoder_init(&e->enc, &c, ps, "image_encoder."));
    MS_TRY(ms_params_alloc(ps, dev));
    MS_TRY(ms_sam_encoder_init_random(&e->enc, 1));
    MS_TRY(ms_params_alloc_grads(ps));
    MS_TRY(ms_sam_encoder_reserve(&e->enc, dev, 1, 1));
    int64_t g = ms_sam_enc_grid(&c);
    e->S = c.img_size;
    e->ne = (int64_t)c.out_chans * g * g;
    return MS_OK;
}

/* train: the forward a backward follows (TinyViT's BatchNorms on batch statistics) */
static ms_status enc_forward(bench_enc *e, const float *x, float *emb, int train)
{
    if (!e->tiny) return ms_sam_encoder_forward(&e->enc, x, 1, emb);
    e->tv.bn_train = train;
    return ms_tinyvit_forward(&e->tv, x, 1, emb);
}

static ms_status enc_backward(bench_enc *e, const float *g)
{
    return e->tiny ? ms_tinyvit_backward(&e->tv, g, NULL, NULL) : ms_sam_encoder_backward(&e->enc, g, NULL);
}

static void enc_free(bench_enc *e)
{
    ms_sam_encoder_free(&e->enc);
    ms_tinyvit_free(&e->tv);
}

static ms_status bench_c(const char *model, int threads, const char *precision, int reps, timing *out)
{
    ms_device dev;
    ms_params ps;
    bench_enc e;
    float *x = NULL, *emb = NULL, *g = NULL;
    ms_params_init(&ps);
    memset(&e, 0, sizeof e);
    MS_TRY(ms_device_init(&dev, MS_DEV_CPU, threads));
    ms_status rc = ms_cli_set_precision(&dev, precision);
    if (!rc) rc = enc_build(&e, model, &ps, &dev);
    if (rc) goto leave;
    int64_t S = e.S, nx = 3 * S * S, ne = e.ne;
    x = malloc((size_t)nx * sizeof(float));
    emb = malloc((size_t)ne * sizeof(float));
    g = malloc((size_t)ne * sizeof(float));
    if (!x || !emb || !g) { rc = ms_error(MS_ENOMEM, "bench sam: out of memory"); goto leave; }
    ms_rng r;
    ms_rng_init(&r, 7, 0);
    for (int64_t i = 0; i < nx; i++) x[i] = ms_rng_range(&r, -2, 2);
    for (int64_t i = 0; i < ne; i++) g[i] = ms_rng_range(&r, -1, 1);
    out->fwd = out->fb = 1e30;
    for (int it = 0; it <= reps && !rc; it++) { /* iteration 0 warms up (page faults, OpenBLAS buffers) */
        double t0 = ms_now_s();
        rc = enc_forward(&e, x, emb, 0);
        double t1 = ms_now_s();
        if (!rc) rc = enc_forward(&e, x, emb, 1);
        if (!rc) rc = enc_backward(&e, g);
        double t2 = ms_now_s();
        if (it > 0 && t1 - t0 < out->fwd) out->fwd = t1 - t0;
        if (it > 0 && t2 - t1 < out->fb) out->fb = t2 - t1;
    }
leave:
    free(x);
    free(emb);
    free(g);
    enc_free(&e);
    ms_params_free(&ps);
    ms_device_free(&dev);
    return rc;
}

/* Runs the PyTorch side; returns 0 and fills t when it printed both lines. */
static int bench_torch(const char *python, const char *script, const char *upstream, const char *model, int threads,
                       int reps, timing *t)
{
    char cmd[8192];
    int n = snprintf(cmd, sizeof cmd, "'%s' '%s' --model %s --threads %d --reps %d", python, script, model, threads,
                     reps);
    if (upstream && n > 0 && (size_t)n < sizeof cmd) snprintf(cmd + n, sizeof cmd - (size_t)n, " --upstream '%s'", upstream);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[256];
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        char m[32], kind[8];
        int th;
        double best;
        if (sscanf(line, "%31s %7s %d %lf", m, kind, &th, &best) == 4) {
            if (!strcmp(kind, "fwd")) { t->fwd = best; got |= 1; }
            if (!strcmp(kind, "fb")) { t->fb = best; got |= 2; }
        }
    }
    int st = pclose(p);
    return got == 3 && st == 0 ? 0 : -1;
}

int ms_bench_sam(int argc, char **argv)
{
    static const ms_cmd_help h = {
        "mrisam bench sam [--models vit_test,vit_b,vit_t] [--threads N] [--reps R] [--no-torch] [--python PY] "
        "[--upstream DIR]",
        "Seconds per image (batch 1, best of R after one warm-up) of SAM's image encoder forward and "
        "forward+backward on the CPU, beside the PyTorch reference on the same threads.",
        "mrisam bench sam --models vit_test --threads 2 --reps 3"};
    const char *models = "vit_test,vit_b", *script = NULL, *python = "/usr/bin/python3", *upstream = NULL,
               *precision = NULL;
    int threads = 0, reps = 2, no_torch = 0;
    const ms_opt opts[] = {
        {"models", MS_OPT_STR, &models, "LIST", "comma-separated model names: vit_test, vit_b, vit_l, vit_h, vit_t "
         "(MobileSAM's TinyViT), vit_t_test (default vit_test,vit_b)"},
        {"upstream", MS_OPT_STR, &upstream, "DIR", "a ChaoningZhang/MobileSAM checkout: the PyTorch side of vit_t "
         "(default: $MOBILESAM_DIR)"},
        {"threads", MS_OPT_INT, &threads, "N", "CPU threads for both sides (default: all cores)"},
        {"reps", MS_OPT_INT, &reps, "R", "timed repetitions (default 2)"},
        MS_CLI_PRECISION_OPTION(&precision),
        {"no-torch", MS_OPT_FLAG, &no_torch, NULL, "skip the PyTorch side"},
        {"python", MS_OPT_STR, &python, "PY", "interpreter with torch (default /usr/bin/python3, Debian's)"},
        {"torch-script", MS_OPT_STR, &script, "PY", "path of bench_sam_torch.py (default: from MS_SOURCE_DIR or ./tools/bench)"},
        {0}};
    int prc = ms_cli_parse(&h, opts, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (reps < 1) reps = 1;
    char spath[MS_PATH_MAX];
    if (!script) {
        const char *src = getenv("MS_SOURCE_DIR");
        if (ms_path_join(spath, src ? src : ".", "tools/bench/bench_sam_torch.py")) {
            fprintf(stderr, "mrisam bench sam: %s\n", ms_errmsg());
            return MS_EXIT_FAIL;
        }
        script = spath;
    }
    ms_device probe;
    if (ms_device_init(&probe, MS_DEV_CPU, threads) == MS_OK) {
        threads = probe.n_threads;
        ms_device_free(&probe);
    }
    printf("SAM image encoder, CPU, %d threads, batch 1, best of %d, ours in %s (seconds per image; x = torch / "
           "mrisam)\n", threads, reps, precision ? precision : "fp32");
    printf("%-10s %6s %12s %12s %12s %12s %8s %8s\n", "model", "input", "mrisam fwd", "torch fwd", "mrisam f+b",
           "torch f+b", "fwd x", "f+b x");
    char list[256];
    snprintf(list, sizeof list, "%s", models);
    int rc = 0;
    for (char *save = NULL, *m = strtok_r(list, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
        ms_sam_enc_config c;
        ms_tinyvit_config tcfg;
        ms_status known = is_tinyvit(m) ? ms_tinyvit_config_named(m, &tcfg) : ms_sam_enc_config_named(m, &c);
        if (known) return ms_cli_report("bench sam", known);
        if (is_tinyvit(m)) c.img_size = tcfg.img_size;
        timing tc = {0, 0}, tt = {0, 0};
        /* PyTorch first: once our OpenMP pool exists its idle threads can steal the child's cores */
        int have_t = !no_torch && bench_torch(python, script, upstream, m, threads, reps, &tt) == 0;
        ms_status st = bench_c(m, threads, precision, reps, &tc);
        if (st) { rc = ms_cli_report("bench sam", st); continue; }
        if (have_t)
            printf("%-10s %6d %12.3f %12.3f %12.3f %12.3f %8.2f %8.2f\n", m, c.img_size, tc.fwd, tt.fwd, tc.fb, tt.fb,
                   tt.fwd / tc.fwd, tt.fb / tc.fb);
        else
            printf("%-10s %6d %12.3f %12s %12.3f %12s\n", m, c.img_size, tc.fwd, "-", tc.fb, "-");
        fflush(stdout);
    }
    return rc;
}
