/* tools/bench_sam.c — `mrisam bench sam`: CPU seconds per image of SAM's image encoder, forward and forward+backward
 * (all encoder parameters trainable, loss Σ emb·G), for vit_test at 256 and vit_b at 1024, beside the PyTorch
 * reference (tests/reference/sam_ref_encoder.py through tools/bench/bench_sam_torch.py, /usr/bin/python3) on the
 * same thread count in the same run. Weights are random (timing does not depend on them). Prints a table and,
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

int ms_bench_sam(int argc, char **argv);

typedef struct timing { double fwd, fb; } timing;

static ms_status bench_c(const char *model, int threads, int reps, timing *out)
{
    ms_device dev;
    ms_params ps;
    ms_sam_encoder enc;
    ms_sam_enc_config c;
    float *x = NULL, *emb = NULL, *g = NULL;
    ms_params_init(&ps);
    memset(&enc, 0, sizeof enc);
    MS_TRY(ms_device_init(&dev, MS_DEV_CPU, threads));
    ms_status rc = ms_sam_enc_config_named(model, &c);
    if (!rc) rc = ms_sam_encoder_init(&enc, &c, &ps, "image_encoder.");
    if (!rc) rc = ms_params_alloc(&ps, &dev);
    if (!rc) rc = ms_sam_encoder_init_random(&enc, 1);
    if (!rc) rc = ms_params_alloc_grads(&ps);
    if (!rc) rc = ms_sam_encoder_reserve(&enc, &dev, 1, 1);
    if (rc) goto leave;
    int64_t S = c.img_size, gs = ms_sam_enc_grid(&c), nx = 3 * S * S, ne = (int64_t)c.out_chans * gs * gs;
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
        rc = ms_sam_encoder_forward(&enc, x, 1, emb);
        double t1 = ms_now_s();
        if (!rc) rc = ms_sam_encoder_backward(&enc, g, NULL);
        double t2 = ms_now_s();
        if (it > 0 && t1 - t0 < out->fwd) out->fwd = t1 - t0;
        if (it > 0 && t2 - t0 < out->fb) out->fb = t2 - t0;
    }
leave:
    free(x);
    free(emb);
    free(g);
    ms_sam_encoder_free(&enc);
    ms_params_free(&ps);
    ms_device_free(&dev);
    return rc;
}

/* Runs the PyTorch side; returns 0 and fills t when it printed both lines. */
static int bench_torch(const char *python, const char *script, const char *model, int threads, int reps, timing *t)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' '%s' --model %s --threads %d --reps %d", python, script, model, threads, reps);
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
        "mrisam bench sam [--models vit_test,vit_b] [--threads N] [--reps R] [--no-torch] [--python PY]",
        "Seconds per image (batch 1, best of R after one warm-up) of SAM's image encoder forward and "
        "forward+backward on the CPU, beside the PyTorch reference on the same threads.",
        "mrisam bench sam --models vit_test --threads 2 --reps 3"};
    const char *models = "vit_test,vit_b", *script = NULL, *python = "/usr/bin/python3";
    int threads = 0, reps = 2, no_torch = 0;
    const ms_opt opts[] = {
        {"models", MS_OPT_STR, &models, "LIST", "comma-separated model names (default vit_test,vit_b)"},
        {"threads", MS_OPT_INT, &threads, "N", "CPU threads for both sides (default: all cores)"},
        {"reps", MS_OPT_INT, &reps, "R", "timed repetitions (default 2)"},
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
    printf("SAM image encoder, CPU, %d threads, batch 1, best of %d (seconds per image; x = torch / mrisam)\n",
           threads, reps);
    printf("%-10s %6s %12s %12s %12s %12s %8s %8s\n", "model", "input", "mrisam fwd", "torch fwd", "mrisam f+b",
           "torch f+b", "fwd x", "f+b x");
    char list[256];
    snprintf(list, sizeof list, "%s", models);
    int rc = 0;
    for (char *save = NULL, *m = strtok_r(list, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
        ms_sam_enc_config c;
        if (ms_sam_enc_config_named(m, &c)) return ms_cli_report("bench sam", MS_EINVAL);
        timing tc = {0, 0}, tt = {0, 0};
        /* PyTorch first: once our OpenMP pool exists its idle threads can steal the child's cores */
        int have_t = !no_torch && bench_torch(python, script, m, threads, reps, &tt) == 0;
        ms_status st = bench_c(m, threads, reps, &tc);
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
