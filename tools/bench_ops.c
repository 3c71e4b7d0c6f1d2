/* tools/bench_ops.c — `mrisam bench ops`: GEMM and attention throughput at SAM ViT-B shapes, ours vs PyTorch.
 *
 * Ours: OpenBLAS sgemm (the GEMM every linear layer uses) at the qkv (4096x768 · 768x2304) and MLP
 * (4096x768 · 768x3072) shapes, and ms_attention_forward / _backward at SAM ViT-B's windowed blocks (25 windows
 * of 14x14 tokens, rel-pos tables 27x64) and global blocks (64x64 tokens, tables 127x64), dim 768, 12 heads,
 * reading a packed qkv buffer as the encoder does. PyTorch: tools/bench/bench_ops_torch.py, run in the same
 * invocation, times the same shapes with segment_anything's own attention code (add_decomposed_rel_pos).
 * Figures: best and median of --repeats timed runs after one warm-up; GFLOP/s on model FLOPs (GEMM 2·M·N·K;
 * attention 4·N²·hd per head and window forward, 12·N²·hd forward+backward, as docs/PERFORMANCE.md §FLOP model counts
 * them).
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/path.h"
#include "base/rng.h"
#include "bench.h"
#include "cli.h"
#include "ops.h"

typedef struct row {
    char name[16], mode[8];
    int threads;
    double gflop;
    double ours_best, ours_med, torch_best, torch_med; /* seconds; torch < 0 when not measured */
} row;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef ms_status (*bench_fn)(void *ctx);

/* One warm-up, then `repeats` timed calls: best and median seconds. */
static ms_status timeit(bench_fn fn, void *ctx, int repeats, double *best, double *med)
{
    double t[64];
    if (repeats > 64) repeats = 64;
    if (repeats < 1) repeats = 1;
    MS_TRY(fn(ctx));
    for (int i = 0; i < repeats; i++) {
        double t0 = ms_now_s();
        MS_TRY(fn(ctx));
        t[i] = ms_now_s() - t0;
    }
    qsort(t, (size_t)repeats, sizeof(double), cmp_d);
    *best = t[0];
    *med = repeats % 2 ? t[repeats / 2] : 0.5 * (t[repeats / 2 - 1] + t[repeats / 2]);
    return MS_OK;
}

typedef struct gemm_ctx { int64_t m, n, k; const float *x, *w; float *y; } gemm_ctx;

static ms_status run_gemm(void *v)
{
    gemm_ctx *g = v;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g->m, (int)g->n, (int)g->k, 1.0f, g->x, (int)g->k,
                g->w, (int)g->k, 0.0f, g->y, (int)g->n);
    return MS_OK;
}

typedef struct att_ctx {
    ms_device *dev;
    ms_attention_desc d;
    float *qkv, *out, *lse, *dout, *dqkv, *drh, *drw, *rh, *rw;
    int32_t *row, *col;
    int with_bwd;
} att_ctx;

static ms_status run_att(void *v)
{
    att_ctx *a = v;
    int64_t D = (int64_t)a->d.n_heads * a->d.head_dim;
    MS_TRY(ms_attention_forward(a->dev, a->out, a->lse, a->qkv, a->qkv + D, a->qkv + 2 * D, &a->d));
    if (a->with_bwd)
        MS_TRY(ms_attention_backward(a->dev, a->dqkv, a->dqkv + D, a->dqkv + 2 * D, a->drh, a->drw, a->dout, a->out,
                                     a->lse, a->qkv, a->qkv + D, a->qkv + 2 * D, &a->d));
    return MS_OK;
}

static float *randbuf(int64_t n, float amp, uint64_t seed)
{
    float *p = malloc((size_t)n * sizeof(float));
    if (!p) return NULL;
    ms_rng r;
    ms_rng_init(&r, seed, 0);
    for (int64_t i = 0; i < n; i++) p[i] = ms_rng_range(&r, -amp, amp);
    return p;
}

static void att_free(att_ctx *a)
{
    free(a->qkv); free(a->out); free(a->lse); free(a->dout); free(a->dqkv); free(a->drh); free(a->drw);
    free(a->rh); free(a->rw); free(a->row); free(a->col);
}

/* SAM ViT-B attention on `groups` windows of S x S tokens (window-local rows/cols, tables 2S−1). */
static ms_status att_make(att_ctx *a, ms_device *dev, int64_t groups, int64_t S)
{
    const int H = 12, hd = 64, D = H * hd;
    int64_t n = groups * S * S, L = 2 * S - 1;
    memset(a, 0, sizeof *a);
    a->dev = dev;
    a->qkv = randbuf(n * 3 * D, 1.0f, 1);
    a->dout = randbuf(n * D, 1.0f, 2);
    a->rh = randbuf(L * hd, 0.1f, 3);
    a->rw = randbuf(L * hd, 0.1f, 4);
    a->out = calloc((size_t)(n * D), sizeof(float));
    a->lse = calloc((size_t)(n * H), sizeof(float));
    a->dqkv = calloc((size_t)(n * 3 * D), sizeof(float));
    a->drh = calloc((size_t)(L * hd), sizeof(float));
    a->drw = calloc((size_t)(L * hd), sizeof(float));
    a->row = malloc((size_t)n * sizeof(int32_t));
    a->col = malloc((size_t)n * sizeof(int32_t));
    if (!a->qkv || !a->dout || !a->rh || !a->rw || !a->out || !a->lse || !a->dqkv || !a->drh || !a->drw || !a->row ||
        !a->col) {
        att_free(a);
        return ms_error(MS_ENOMEM, "bench ops: out of memory for attention buffers");
    }
    for (int64_t t = 0; t < n; t++) {
        a->row[t] = (int32_t)((t / S) % S);
        a->col[t] = (int32_t)(t % S);
    }
    a->d = (ms_attention_desc){.n_groups = groups, .n_heads = H, .head_dim = hd, .scale = 0.125f, .nq = S * S,
                               .nk = S * S, .ldq = 3 * D, .ldk = 3 * D, .ldv = 3 * D, .ldo = D, .rel_h = a->rh,
                               .rel_w = a->rw, .len_h = L, .len_w = L, .q_row = a->row, .q_col = a->col,
                               .k_row = a->row, .k_col = a->col};
    return MS_OK;
}

/* bench_ops_torch.py: the given path, else from the working folder, $MS_SOURCE_DIR or the source tree above a build
 * folder (built in buf[MS_PATH_MAX]; a candidate too long to build is skipped); NULL when none is readable. */
static const char *find_script(const char *given, char *buf)
{
    if (given) return given;
    const char *rel = "tools/bench/bench_ops_torch.py";
    if (access(rel, R_OK) == 0) return rel;
    const char *src = getenv("MS_SOURCE_DIR");
    if (src && ms_path_join(buf, src, rel) == MS_OK && access(buf, R_OK) == 0) return buf;
    char exe[MS_PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k > 0) {
        exe[k] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        /* a build folder inside the source tree */
        if (ms_path_fmt(buf, "%s/../%s", exe, rel) == MS_OK && access(buf, R_OK) == 0) return buf;
    }
    return NULL;
}

static void print_table(FILE *f, const row *rows, int n, int markdown)
{
    const char *hdr[] = {"op", "shape", "pass", "thr", "ours ms", "ours GFLOP/s", "torch ms", "torch GFLOP/s",
                         "speed-up"};
    if (markdown) {
        fprintf(f, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5],
                hdr[6], hdr[7], hdr[8]);
        fprintf(f, "|---|---|---|---:|---:|---:|---:|---:|---:|\n");
    } else {
        fprintf(f, "%-10s %-22s %-4s %3s %10s %12s %10s %13s %8s\n", hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5],
                hdr[6], hdr[7], hdr[8]);
    }
    for (int i = 0; i < n; i++) {
        const row *r = &rows[i];
        const char *shape = !strcmp(r->name, "gemm_qkv")   ? "4096x768 x 768x2304"
                            : !strcmp(r->name, "gemm_mlp") ? "4096x768 x 768x3072"
                            : !strcmp(r->name, "attn_win") ? "25x196 tok 12h64 rel"
                                                           : "1x4096 tok 12h64 rel";
        char tm[32] = "-", tg[32] = "-", sp[32] = "-";
        if (r->torch_best > 0) {
            snprintf(tm, sizeof tm, "%.1f", 1e3 * r->torch_best);
            snprintf(tg, sizeof tg, "%.1f", r->gflop / r->torch_best);
            snprintf(sp, sizeof sp, "%.2fx", r->torch_best / r->ours_best);
        }
        if (markdown)
            fprintf(f, "| %s | %s | %s | %d | %.1f | %.1f | %s | %s | %s |\n", r->name, shape, r->mode, r->threads,
                    1e3 * r->ours_best, r->gflop / r->ours_best, tm, tg, sp);
        else
            fprintf(f, "%-10s %-22s %-4s %3d %10.1f %12.1f %10s %13s %8s\n", r->name, shape, r->mode, r->threads,
                    1e3 * r->ours_best, r->gflop / r->ours_best, tm, tg, sp);
    }
}

int ms_bench_ops(int argc, char **argv)
{
    const char *threads = "1,2", *markdown = NULL, *python = "/usr/bin/python3", *script = NULL;
    int repeats = 5, grepeats = 2, skip_global = 0, no_torch = 0;
    static const ms_cmd_help h = {
        "mrisam bench ops [options]",
        "GEMM (SAM ViT-B qkv and MLP shapes) and attention with decomposed relative positions (25 windows of 196 "
        "tokens; one global group of 4096 tokens; dim 768, 12 heads), forward and forward+backward, ours vs "
        "PyTorch (tools/bench/bench_ops_torch.py, segment_anything's attention code) in the same run. Reports the "
        "best of the timed repeats.",
        "mrisam bench ops --threads 1,2 --markdown ops.md"};
    const ms_opt opts[] = {
        {"threads", MS_OPT_STR, &threads, "LIST", "thread counts to measure, comma-separated (default 1,2)"},
        {"repeats", MS_OPT_INT, &repeats, "N", "timed repeats per measurement (default 5)"},
        {"global-repeats", MS_OPT_INT, &grepeats, "N", "timed repeats for the 4096-token attention (default 2)"},
        {"skip-global", MS_OPT_FLAG, &skip_global, NULL, "leave out the 4096-token global attention"},
        {"no-torch", MS_OPT_FLAG, &no_torch, NULL, "do not run the PyTorch side"},
        {"python", MS_OPT_STR, &python, "PATH", "interpreter with torch (default /usr/bin/python3)"},
        {"torch-script", MS_OPT_STR, &script, "FILE", "path of bench_ops_torch.py (default: found from the tree)"},
        {"markdown", MS_OPT_STR, &markdown, "FILE", "also write the table as Markdown to FILE"},
        {0}};
    int prc = ms_cli_parse(&h, opts, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;

    int tl[16], nt = 0;
    for (const char *p = threads; *p && nt < 16;) {
        char *e;
        long v = strtol(p, &e, 10);
        if (e == p || v < 1 || v > 1024) {
            fprintf(stderr, "mrisam bench ops: bad --threads '%s'\n", threads);
            return MS_EXIT_USAGE;
        }
        tl[nt++] = (int)v;
        p = *e == ',' ? e + 1 : e;
    }
    row rows[16 * 6];
    int nr = 0;
    ms_status st = MS_OK;
    const int64_t M = 4096, K = 768;
    float *x = randbuf(M * K, 1.0f, 10), *w = randbuf(4 * K * K, 0.03f, 11), *y = malloc((size_t)(M * 4 * K) * 4);
    if (!x || !w || !y) {
        st = ms_error(MS_ENOMEM, "bench ops: out of memory");
        goto leave;
    }
    printf("mrisam bench ops: ours (OpenBLAS + OpenMP) vs PyTorch %s, best of %d (global attention: %d)\n",
           no_torch ? "(skipped)" : "via tools/bench/bench_ops_torch.py", repeats, grepeats);
    for (int ti = 0; ti < nt; ti++) {
        ms_device dev;
        if ((st = ms_device_init(&dev, MS_DEV_CPU, tl[ti]))) goto leave;
        for (int gi = 0; gi < 2; gi++) {
            gemm_ctx g = {M, gi ? 4 * K : 3 * K, K, x, w, y};
            row *r = &rows[nr++];
            memset(r, 0, sizeof *r);
            snprintf(r->name, sizeof r->name, "%s", gi ? "gemm_mlp" : "gemm_qkv");
            snprintf(r->mode, sizeof r->mode, "fwd");
            r->threads = tl[ti];
            r->gflop = 2e-9 * (double)(g.m * g.n * g.k);
            r->torch_best = -1;
            if ((st = timeit(run_gemm, &g, repeats, &r->ours_best, &r->ours_med))) goto leave;
            printf("  ours %-9s fwd %d thr: %8.1f ms\n", r->name, tl[ti], 1e3 * r->ours_best);
        }
        for (int ai = 0; ai < (skip_global ? 1 : 2); ai++) {
            int64_t groups = ai ? 1 : 25, S = ai ? 64 : 14;
            att_ctx a;
            if ((st = att_make(&a, &dev, groups, S))) goto leave;
            for (int fb = 0; fb < 2; fb++) {
                row *r = &rows[nr++];
                memset(r, 0, sizeof *r);
                snprintf(r->name, sizeof r->name, "%s", ai ? "attn_glob" : "attn_win");
                snprintf(r->mode, sizeof r->mode, "%s", fb ? "fb" : "fwd");
                r->threads = tl[ti];
                r->gflop = (fb ? 12e-9 : 4e-9) * (double)(groups * 12 * S * S * S * S * 64);
                r->torch_best = -1;
                a.with_bwd = fb;
                st = timeit(run_att, &a, ai ? grepeats : repeats, &r->ours_best, &r->ours_med);
                if (st) break;
                printf("  ours %-9s %-3s %d thr: %8.1f ms\n", r->name, r->mode, tl[ti], 1e3 * r->ours_best);
            }
            att_free(&a);
            if (st) goto leave;
        }
    }
    if (!no_torch) {
        char buf[MS_PATH_MAX], cmd[3 * MS_PATH_MAX];
        const char *sp = find_script(script, buf);
        if (!sp) {
            fprintf(stderr, "mrisam bench ops: bench_ops_torch.py not found (use --torch-script); torch skipped\n");
        } else {
            snprintf(cmd, sizeof cmd, "'%s' '%s' --threads %s --repeats %d --global-repeats %d%s", python, sp, threads,
                     repeats, grepeats, skip_global ? " --skip-global" : "");
            printf("running: %s\n", cmd);
            FILE *p = popen(cmd, "r");
            if (!p) {
                fprintf(stderr, "mrisam bench ops: cannot run %s; torch skipped\n", python);
            } else {
                char line[256], name[32], mode[8];
                int th;
                double best, med;
                while (fgets(line, sizeof line, p)) {
                    if (sscanf(line, "%31s %7s %d %lf %lf", name, mode, &th, &best, &med) != 5) continue;
                    printf("  torch %-8s %-3s %d thr: %8.1f ms\n", name, mode, th, 1e3 * best);
                    for (int i = 0; i < nr; i++)
                        if (!strcmp(rows[i].name, name) && !strcmp(rows[i].mode, mode) && rows[i].threads == th) {
                            rows[i].torch_best = best;
                            rows[i].torch_med = med;
                        }
                }
                int prc2 = pclose(p);
                if (prc2) fprintf(stderr, "mrisam bench ops: the PyTorch script exited with status %d\n", prc2);
            }
        }
    }
    printf("\n");
    print_table(stdout, rows, nr, 0);
    if (markdown) {
        FILE *f = fopen(markdown, "w");
        if (!f) {
            st = ms_error(MS_EIO, "%s: cannot open for writing", markdown);
            goto leave;
        }
        print_table(f, rows, nr, 1);
        if (fclose(f)) {
            st = ms_error(MS_EIO, "%s: write failed", markdown);
            goto leave;
        }
    }
leave:
    free(x);
    free(w);
    free(y);
    return ms_cli_report("bench ops", st);
}
