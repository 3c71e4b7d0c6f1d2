/* tools/bench_loader.c — `mrisam bench loader`: slices/s of the streaming loader (data/loader.h) for decode only,
 * decode + MAE augmentation (RandomResizedCrop + flip, 3-channel SAM normalisation) to 256 and to 1024, with 1 and
 * 2 worker threads, beside a PyTorch DataLoader (num_workers 2) reading the same store with the same transforms
 * (tools/bench/bench_loader_torch.py, /usr/bin/python3) in the same run (docs/PERFORMANCE.md §How figures are taken).
 * Per-core rates divide by the worker count on both sides. With --synthetic DIR it first writes an MRI-like phantom
 * store (ellipses, bias field, Rician noise, zero background) through the store writer, so the benchmark needs no data.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include <cjson/cJSON.h>

#include "base/clock.h"
#include "base/path.h"
#include "base/rng.h"
#include "cli.h"
#include "data/loader.h"
#include "data/store_fmt.h"
#include "data/store_write.h"

int ms_bench_loader(int argc, char **argv);

/* One phantom slice in [0,1]: head ellipse, two inner structures, a smooth bias field, Rician noise. */
static void phantom(uint16_t *px, int n, int vol, int z, int nz)
{
    ms_rng r;
    ms_rng_init(&r, 0x9a7e, (uint64_t)vol * 100000 + (uint64_t)z);
    double zz = 2.0 * z / (nz - 1 > 0 ? nz - 1 : 1) - 1, shrink = sqrt(fmax(0.05, 1 - zz * zz * 0.8));
    const double sigma = 0.012;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            double u = 2.0 * x / (n - 1) - 1, v = 2.0 * y / (n - 1) - 1, s = 0;
            double e = (u * u) / (0.75 * 0.75) + (v * v) / (0.9 * 0.9);
            if (e < shrink * shrink) {
                s = 0.35;
                if ((u - 0.2) * (u - 0.2) / 0.05 + v * v / 0.12 < shrink) s = 0.7;
                if ((u + 0.25) * (u + 0.25) / 0.02 + (v - 0.2) * (v - 0.2) / 0.04 < shrink) s = 0.9;
                s *= 1 + 0.15 * u + 0.1 * v * u + 0.05 * (vol % 3);
            }
            double a = s + sigma * ms_rng_normal(&r), b = sigma * ms_rng_normal(&r);
            double m = sqrt(a * a + b * b);
            px[(size_t)y * n + x] = (uint16_t)lrint(fmin(1.0, m) * 65535.0);
        }
}

static ms_status make_synthetic(const char *path, int vols, int slices, int size, int level)
{
    ms_status rc = MS_OK;
    ms_store_writer *w = NULL;
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    uint16_t *px = malloc((size_t)size * size * 2);
    ms_store_rec *recs = calloc((size_t)slices, sizeof(*recs));
    if (!cc || !px || !recs) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", path);
        goto leave;
    }
    struct stat sb;
    if (stat(path, &sb) == 0) {
        ms_store *s = NULL;
        if (ms_store_open(path, 4, &s) == MS_OK && ms_store_n_slices(s) >= (uint64_t)vols * slices) {
            ms_store_close(s);
            printf("using the existing synthetic store %s\n", path);
            goto leave;
        }
        if (s) ms_store_close(s);
    }
    rc = ms_store_writer_open(path, "{\"synthetic\":1}", "{\"tool\":\"mrisam bench loader\"}", &w);
    const float sp[2] = {1, 1};
    for (int v = 0; !rc && v < vols; v++) {
        char src[32];
        snprintf(src, sizeof(src), "phantom%d", v);
        if (ms_store_writer_has_source(w, src)) continue;
        for (int z = 0; !rc && z < slices; z++) {
            phantom(px, size, v, z, slices);
            rc = ms_store_encode(cc, level, 1, MS_REC_U16, px, (uint32_t)size, (uint32_t)size, sp, (uint32_t)z,
                                 &recs[z]);
        }
        if (!rc) {
            char js[256];
            snprintf(js, sizeof(js), "{\"height\":%d,\"width\":%d,\"spacing\":[1,1,1],\"intensity\":{\"offset\":0,"
                     "\"scale\":1}}", size, size);
            cJSON *j = cJSON_Parse(js);
            uint32_t id;
            int dup;
            rc = ms_store_writer_add(w, j, recs, NULL, (uint32_t)slices, src, NULL, 0, 0, &id, &dup);
            cJSON_Delete(j);
        }
        for (int z = 0; z < slices; z++) free(recs[z].data), recs[z].data = NULL;
    }
leave:
    if (w) {
        ms_status c = ms_store_writer_close(w);
        if (!rc) rc = c;
    }
    ZSTD_freeCCtx(cc);
    free(px);
    free(recs);
    return rc;
}

typedef struct result {
    double rate, ttfb, cpu_rate; /* slices per wall second, first-batch latency, slices per CPU second */
} result;

/* user + system CPU seconds of this process, all threads */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
           1e-6 * ru.ru_stime.tv_usec;
}

static ms_status bench_c(ms_store *st, const char *path, int mode, int threads, int batch, double seconds,
                         result *out)
{
    ms_loader_config c;
    ms_loader_config_default(&c);
    c.stores[0] = st;
    c.store_paths[0] = path;
    c.seed = 1234;
    c.global_batch = batch;
    c.n_threads = threads;
    c.ring = 3;
    if (mode == 0) c.output = MS_LOAD_NATIVE;
    else {
        ms_prep_config_default(&c.prep, mode == 1 ? 256 : 1024);
        c.prep.resize = MS_RESIZE_STRETCH; /* RandomResizedCrop's square output, as torchvision */
        c.augment = 1;
        ms_aug_config_mae(&c.aug);
    }
    ms_loader *L = NULL;
    const ms_batch *b = NULL;
    double t0 = ms_now_s();
    MS_TRY(ms_loader_open(&c, &L));
    ms_status rc = ms_loader_next(L, &b);
    out->ttfb = ms_now_s() - t0;
    for (int i = 0; !rc && i < 2; i++) rc = ms_loader_next(L, &b); /* warm-up */
    long n = 0;
    double t1 = ms_now_s(), c1 = cpu_s(), el = 0;
    while (!rc) {
        rc = ms_loader_next(L, &b);
        if (rc || !b) break;
        n += b->n;
        el = ms_now_s() - t1;
        if (el >= seconds && n >= 4L * batch) break;
    }
    out->rate = el > 0 ? (double)n / el : 0;
    /* the CPU time also covers the ring's batches filled ahead (bounded; counted against us) */
    double cpu = cpu_s() - c1;
    out->cpu_rate = cpu > 0 ? (double)n / cpu : 0;
    ms_loader_close(L);
    return rc;
}

int ms_bench_loader(int argc, char **argv)
{
    const char *modes = "decode,aug256,aug1024";
    const char *store = NULL, *synthetic = NULL, *python = "/usr/bin/python3", *script = NULL, *md = NULL;
    int batch = 32, vols = 8, slices = 160, size = 256, level = 3, no_torch = 0, workers = 2;
    double seconds = 3.0;
    ms_strlist threads = {0};
    static const ms_cmd_help h = {
        "mrisam bench loader (--store S | --synthetic DIR) [options]",
        "Slices/s of the loader: decode only, decode + MAE augmentation to 256 and to 1024, with 1 and 2 worker "
        "threads, beside a PyTorch DataLoader (num_workers 2) over the same store with the same transforms.",
        "mrisam bench loader --synthetic /tmp/phantom_store --seconds 3"};
    const ms_opt opts[] = {
        {"store", MS_OPT_STR, &store, "S", "an existing store"},
        {"synthetic", MS_OPT_STR, &synthetic, "DIR", "write (or reuse) a phantom store here and use it"},
        {"volumes", MS_OPT_INT, &vols, "N", "synthetic volumes (8)"},
        {"slices", MS_OPT_INT, &slices, "N", "synthetic slices per volume (160)"},
        {"size", MS_OPT_INT, &size, "N", "synthetic slice side (256)"},
        {"zstd-level", MS_OPT_INT, &level, "N", "synthetic store zstd level (3)"},
        {"batch", MS_OPT_INT, &batch, "B", "batch size (32)"},
        {"seconds", MS_OPT_FLOAT, &seconds, "T", "timed seconds per configuration (3)"},
        {"threads", MS_OPT_LIST, &threads, "N", "worker thread counts (repeatable; default 1 and 2)"},
        {"modes", MS_OPT_STR, &modes, "LIST", "subset of decode,aug256,aug1024 (all)"},
        {"no-torch", MS_OPT_FLAG, &no_torch, NULL, "skip the PyTorch side"},
        {"workers", MS_OPT_INT, &workers, "N", "PyTorch DataLoader workers (2)"},
        {"python", MS_OPT_STR, &python, "PY", "interpreter with torch, lmdb, zstandard (/usr/bin/python3)"},
        {"script", MS_OPT_STR, &script, "F", "bench_loader_torch.py (default: from $MS_SOURCE_DIR or ./tools/bench)"},
        {"md", MS_OPT_STR, &md, "F", "append the markdown table to F"},
        {0}};
    int prc = ms_cli_parse(&h, opts, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (!store == !synthetic || batch < 1 || seconds <= 0) {
        fprintf(stderr, "mrisam bench loader: give exactly one of --store and --synthetic (see --help)\n");
        ms_strlist_free(&threads);
        return MS_EXIT_USAGE;
    }
    ms_status rc = MS_OK;
    ms_store *st = NULL;
    int tl[8], nt = 0;
    for (int i = 0; i < threads.n && nt < 8; i++) tl[nt++] = atoi(threads.v[i]) > 0 ? atoi(threads.v[i]) : 1;
    if (nt == 0) tl[nt++] = 1, tl[nt++] = 2;
    if (synthetic) {
        double t0 = ms_now_s();
        rc = make_synthetic(synthetic, vols, slices, size, level);
        if (rc) goto leave;
        printf("synthetic store %s: %d volumes x %d slices of %dx%d (zstd %d), %.1f s\n", synthetic, vols, slices,
               size, size, level, ms_now_s() - t0);
        store = synthetic;
    }
    if ((rc = ms_store_open(store, 32, &st))) goto leave;
    static const char *mode_names[3] = {"decode", "aug256", "aug1024"};
    result res[3][8];
    memset(res, 0, sizeof(res));
    printf("%-8s %7s %12s %14s %16s %8s\n", "mode", "threads", "slices/s", "slices/s/core", "slices/cpu-s",
           "ttfb_s");
    for (int m = 0; m < 3; m++)
        for (int t = 0; t < nt && strstr(modes, mode_names[m]); t++) {
            if ((rc = bench_c(st, store, m, tl[t], batch, seconds, &res[m][t]))) goto leave;
            printf("%-8s %7d %12.0f %14.0f %16.0f %8.3f\n", mode_names[m], tl[t], res[m][t].rate,
                   res[m][t].rate / tl[t], res[m][t].cpu_rate, res[m][t].ttfb);
            printf("{\"bench\":\"loader\",\"impl\":\"mrisam\",\"mode\":\"%s\",\"threads\":%d,\"batch\":%d,"
                   "\"slices_per_s\":%.1f,\"slices_per_cpu_s\":%.1f,\"ttfb_s\":%.4f}\n",
                   mode_names[m], tl[t], batch, res[m][t].rate, res[m][t].cpu_rate, res[m][t].ttfb);
        }
    ms_store_close(st);
    st = NULL;
    double torch_rate[3] = {0, 0, 0}, torch_cpu[3] = {0, 0, 0};
    if (!no_torch) {
        char spath[MS_PATH_MAX], cmd[3 * MS_PATH_MAX];
        const char *src = getenv("MS_SOURCE_DIR");
        if (!script) {
            /* $MS_SOURCE_DIR, else the working folder, else the source tree above a build folder */
            if ((rc = ms_path_join(spath, src ? src : ".", "tools/bench/bench_loader_torch.py"))) goto leave;
            struct stat sb;
            if (stat(spath, &sb) != 0) {
                char exe[MS_PATH_MAX];
                ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
                if (n > 0) {
                    exe[n] = 0;
                    char *slash = strrchr(exe, '/');
                    if (slash) *slash = 0;
                    if ((rc = ms_path_join(spath, exe, "../tools/bench/bench_loader_torch.py"))) goto leave;
                }
            }
            script = spath;
        }
        snprintf(cmd, sizeof(cmd), "'%s' '%s' --store '%s' --batch %d --seconds %g --workers %d --modes '%s'",
                 python, script, store, batch, seconds, workers, modes);
        FILE *p = popen(cmd, "r");
        char line[4096];
        while (p && fgets(line, sizeof(line), p)) {
            fputs(line, stdout);
            cJSON *j = cJSON_Parse(line);
            const cJSON *mo = cJSON_GetObjectItem(j, "mode"), *r = cJSON_GetObjectItem(j, "slices_per_s");
            const cJSON *rc2 = cJSON_GetObjectItem(j, "slices_per_cpu_s");
            for (int m = 0; m < 3 && cJSON_IsString(mo) && cJSON_IsNumber(r); m++)
                if (!strcmp(mo->valuestring, mode_names[m])) {
                    torch_rate[m] = r->valuedouble;
                    torch_cpu[m] = cJSON_IsNumber(rc2) ? rc2->valuedouble : 0;
                }
            cJSON_Delete(j);
        }
        int prc2 = p ? pclose(p) : -1;
        if (prc2 != 0) fprintf(stderr, "mrisam bench loader: the PyTorch side failed (%s)\n", cmd);
    }
    /* per-core comparison: ours at 1 thread vs torch's rate over its workers */
    FILE *mf = md ? fopen(md, "a") : NULL;
    FILE *outs[2] = {stdout, mf};
    for (int o = 0; o < 2; o++) {
        FILE *f = outs[o];
        if (!f) continue;
        fprintf(f, "\n| mode | ours, 1 thread (slices/s) | ours, %d threads | PyTorch, %d workers | per-core ratio "
                   "(wall) | ours slices/CPU-s | PyTorch slices/CPU-s | per-CPU-s ratio |\n"
                   "|---|---|---|---|---|---|---|---|\n", tl[nt - 1], workers);
        for (int m = 0; m < 3; m++) {
            double pc_torch = torch_rate[m] / workers;
            fprintf(f, "| %s | %.0f | %.0f | %.0f | %.1fx | %.0f | %.0f | %.1fx |\n", mode_names[m],
                    res[m][0].rate / tl[0], res[m][nt - 1].rate, torch_rate[m],
                    pc_torch > 0 ? (res[m][0].rate / tl[0]) / pc_torch : 0.0, res[m][0].cpu_rate, torch_cpu[m],
                    torch_cpu[m] > 0 ? res[m][0].cpu_rate / torch_cpu[m] : 0.0);
        }
        /* the CPU-second rate is the per-core rate on an idle core; the wall rate is lower on a shared machine */
        double pc256 = res[1][0].cpu_rate > 0 ? res[1][0].cpu_rate : res[1][0].rate / tl[0];
        fprintf(f, "\nCores to feed MAE at 256 px with 10,000 slices/s (decode + RRC + flip + normalise, %.0f "
                   "slices/CPU-s): %.1f\n", pc256, pc256 > 0 ? 10000.0 / pc256 : 0.0);
    }
    if (mf) fclose(mf);
leave:
    if (st) ms_store_close(st);
    ms_strlist_free(&threads);
    if (rc) return ms_cli_report("bench loader", rc);
    return MS_EXIT_OK;
}
