/* tests/kernels/test_ops_cuda.c — every op on CUDA against the same op on the CPU (the CPU ops are themselves
 * tested against double-precision references and finite differences in test_ops_a/b).
 *
 * For each op: fresh random inputs (seed printed; MS_TEST_SEED replays), odd sizes (not multiples of warp or
 * tile sizes), outputs pre-filled with random values (an unwritten element shows up), gradient buffers
 * pre-filled with the same random values on both sides (so "accumulates, does not overwrite" is checked too).
 * Metric: NMSE = ‖gpu − cpu‖² / ‖cpu‖² and max-rel (|d| / (|cpu| + 1e-3·max|cpu|)). Tolerances:
 *   TOL_EXACT 1e-12 (index maps, copies: bit-identical expected, some slack for x+0 vs fma),
 *   TOL 1e-9 (fp32 reductions and GEMMs, different summation orders: ~1e-7 relative per element),
 *   TOL_ATT 1e-8 (attention: exp2 approximations and online softmax vs the CPU's exact softmax),
 *   max-rel below 1e-3 everywhere (2e-3 for attention, whose gradients are sums of many cancelling terms).
 * Exits 77 (skip) when this build has no CUDA backend or no GPU is visible. Also prints timings of the
 * attention and GEMM shapes the docs quote when MS_TEST_BENCH=1 (tools/gpu/build_and_test.sh sets it).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../harness.h"
#include "base/device.h"
#include "ops.h"

#ifdef MS_HAVE_CUDA

#define TOL_EXACT 1e-12
#define TOL 1e-9
#define TOL_ATT 1e-8

static ms_device cpu, gpu;
static ms_device gpu_v1;          /* a second context with MS_KERNEL_ATTENTION=1 (variant 1 kernels) */
static ms_device *gatt = &gpu;    /* the context the attention ops run on */
static const char *vname = "v2";
static ms_rng rng;
static void *allocs[4096];
static int n_allocs;

static float *hrand(int64_t n, float lo, float hi)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    ms_fill_uniform(p, n, &rng, lo, hi);
    allocs[n_allocs++] = p;
    return p;
}
static void *dup_dev(const void *h, size_t bytes)
{
    void *d = NULL;
    MS_CHECK_OK(ms_dev_alloc(&gpu, bytes ? bytes : 4, &d));
    if (d && bytes) MS_CHECK_OK(ms_dev_from_host(&gpu, d, h, bytes));
    allocs[n_allocs++] = d; /* freed with ms_dev_free below: tag by keeping a parallel flag */
    return d;
}
static int is_dev[4096];
static float *up(const float *h, int64_t n)
{
    float *d = dup_dev(h, (size_t)n * sizeof(float));
    is_dev[n_allocs - 1] = 1;
    return d;
}
static int32_t *up_i(const int32_t *h, int64_t n)
{
    int32_t *d = dup_dev(h, (size_t)n * sizeof(int32_t));
    is_dev[n_allocs - 1] = 1;
    return d;
}
static float *down(const float *d, int64_t n)
{
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    allocs[n_allocs++] = h;
    if (n) MS_CHECK_OK(ms_dev_to_host(&gpu, h, d, (size_t)n * sizeof(float)));
    return h;
}
static void release_all(void)
{
    for (int i = 0; i < n_allocs; i++) {
        if (is_dev[i]) ms_dev_free(&gpu, allocs[i]);
        else free(allocs[i]);
        is_dev[i] = 0;
    }
    n_allocs = 0;
}

/* compare the GPU array d (device) with the CPU array h */
static void cmp(const char *what, const float *d, const float *h, int64_t n, double tol, double max_rel)
{
    float *g = down(d, n);
    ms_cmp c = ms_compare_f(g, h, n);
    int ok = c.nmse <= tol && c.max_rel <= max_rel && !isnan(c.nmse);
    MS_CHECK(ok, "%-40s n=%-8lld nmse=%.2e max_rel=%.2e (worst %lld: gpu %.8g cpu %.8g)", what, (long long)n, c.nmse,
             c.max_rel, (long long)c.worst, (double)g[c.worst], (double)h[c.worst]);
    printf("  %-40s nmse=%.2e max_rel=%.2e %s\n", what, c.nmse, c.max_rel, ok ? "ok" : "FAIL");
}
#define CPU_OK(expr) MS_CHECK_OK(expr)
#define GPU_OK(expr) MS_CHECK_OK(expr)

/* ---- matmul / linear ------------------------------------------------------------------------------------------ */
static void t_matmul(int ta, int tb, int64_t batch, int bcast_a)
{
    int64_t M = 37, N = 29, K = 45;
    ms_matmul_desc d = ms_matmul_plain(M, N, K);
    d.trans_a = ta;
    d.trans_b = tb;
    d.lda = (ta ? M : K) + 3;
    d.ldb = (tb ? K : N) + 1;
    d.ldc = N + 2;
    d.batch = batch;
    int64_t sa_ = (ta ? K : M) * d.lda, sb_ = (tb ? N : K) * d.ldb, sc_ = M * d.ldc;
    d.stride_a = bcast_a ? 0 : sa_;
    d.stride_b = sb_;
    d.stride_c = sc_;
    d.alpha = 0.75f;
    d.beta = 0.5f;
    int64_t na = bcast_a ? sa_ : sa_ * batch, nb = sb_ * batch, nc = sc_ * batch;
    float *a = hrand(na, -1, 1), *b = hrand(nb, -1, 1), *c = hrand(nc, -1, 1);
    float *ga = up(a, na), *gb = up(b, nb), *gc = up(c, nc);
    CPU_OK(ms_matmul_forward_cpu(&cpu, c, a, b, &d));
    GPU_OK(ms_matmul_forward_cuda(&gpu, gc, ga, gb, &d));
    char name[96];
    snprintf(name, sizeof name, "matmul fwd ta=%d tb=%d batch=%lld bc=%d", ta, tb, (long long)batch, bcast_a);
    cmp(name, gc, c, nc, TOL, 1e-3);
    float *dc = hrand(nc, -1, 1), *da = hrand(na, -1, 1), *db = hrand(nb, -1, 1);
    float *gdc = up(dc, nc), *gda = up(da, na), *gdb = up(db, nb);
    CPU_OK(ms_matmul_backward_cpu(&cpu, da, db, dc, a, b, &d));
    GPU_OK(ms_matmul_backward_cuda(&gpu, gda, gdb, gdc, ga, gb, &d));
    snprintf(name, sizeof name, "matmul bwd da ta=%d tb=%d bc=%d", ta, tb, bcast_a);
    cmp(name, gda, da, na, TOL, 1e-3);
    snprintf(name, sizeof name, "matmul bwd db ta=%d tb=%d bc=%d", ta, tb, bcast_a);
    cmp(name, gdb, db, nb, TOL, 1e-3);
}

static void t_linear(void)
{
    int64_t M = 83, K = 51, N = 67;
    float *x = hrand(M * K, -1, 1), *w = hrand(N * K, -1, 1), *b = hrand(N, -1, 1), *y = hrand(M * N, -1, 1);
    float *gx = up(x, M * K), *gw = up(w, N * K), *gb = up(b, N), *gy = up(y, M * N);
    CPU_OK(ms_linear_forward_cpu(&cpu, y, x, w, b, M, K, N));
    GPU_OK(ms_linear_forward_cuda(&gpu, gy, gx, gw, gb, M, K, N));
    cmp("linear fwd", gy, y, M * N, TOL, 1e-3);
    float *dy = hrand(M * N, -1, 1), *dx = hrand(M * K, -1, 1), *dw = hrand(N * K, -1, 1), *db = hrand(N, -1, 1);
    float *gdy = up(dy, M * N), *gdx = up(dx, M * K), *gdw = up(dw, N * K), *gdb = up(db, N);
    CPU_OK(ms_linear_backward_cpu(&cpu, dx, dw, db, dy, x, w, M, K, N));
    GPU_OK(ms_linear_backward_cuda(&gpu, gdx, gdw, gdb, gdy, gx, gw, M, K, N));
    cmp("linear bwd dx", gdx, dx, M * K, TOL, 1e-3);
    cmp("linear bwd dw", gdw, dw, N * K, TOL, 1e-3);
    cmp("linear bwd db", gdb, db, N, TOL, 1e-3);
}

/* ---- norms, activations, softmax ------------------------------------------------------------------------------- */
static void t_layernorm(void)
{
    int64_t N = 77, D = 200;
    float *x = hrand(N * D, -2, 3), *w = hrand(D, 0.5f, 1.5f), *b = hrand(D, -1, 1), *y = hrand(N * D, -1, 1);
    float *mu = hrand(N, -1, 1), *rs = hrand(N, -1, 1);
    float *gx = up(x, N * D), *gw = up(w, D), *gb = up(b, D), *gy = up(y, N * D), *gmu = up(mu, N), *grs = up(rs, N);
    CPU_OK(ms_layernorm_forward_cpu(&cpu, y, mu, rs, x, w, b, N, D, 1e-6f));
    GPU_OK(ms_layernorm_forward_cuda(&gpu, gy, gmu, grs, gx, gw, gb, N, D, 1e-6f));
    cmp("layernorm fwd y", gy, y, N * D, TOL, 1e-3);
    cmp("layernorm fwd mean", gmu, mu, N, TOL, 1e-3);
    cmp("layernorm fwd rstd", grs, rs, N, TOL, 1e-3);
    float *dy = hrand(N * D, -1, 1), *dx = hrand(N * D, -1, 1), *dw = hrand(D, -1, 1), *db = hrand(D, -1, 1);
    float *gdy = up(dy, N * D), *gdx = up(dx, N * D), *gdw = up(dw, D), *gdb = up(db, D);
    CPU_OK(ms_layernorm_backward_cpu(&cpu, dx, dw, db, dy, x, w, mu, rs, N, D));
    GPU_OK(ms_layernorm_backward_cuda(&gpu, gdx, gdw, gdb, gdy, gx, gw, gmu, grs, N, D));
    cmp("layernorm bwd dx", gdx, dx, N * D, TOL, 1e-3);
    cmp("layernorm bwd dw", gdw, dw, D, TOL, 1e-3);
    cmp("layernorm bwd db", gdb, db, D, TOL, 1e-3);

    int64_t B = 3, C = 37, HW = 45;
    int64_t n = B * C * HW;
    float *x2 = hrand(n, -2, 3), *w2 = hrand(C, 0.5f, 1.5f), *b2 = hrand(C, -1, 1), *y2 = hrand(n, -1, 1);
    float *mu2 = hrand(B * HW, -1, 1), *rs2 = hrand(B * HW, -1, 1);
    float *gx2 = up(x2, n), *gw2 = up(w2, C), *gb2 = up(b2, C), *gy2 = up(y2, n), *gmu2 = up(mu2, B * HW),
          *grs2 = up(rs2, B * HW);
    CPU_OK(ms_layernorm2d_forward_cpu(&cpu, y2, mu2, rs2, x2, w2, b2, B, C, HW, 1e-6f));
    GPU_OK(ms_layernorm2d_forward_cuda(&gpu, gy2, gmu2, grs2, gx2, gw2, gb2, B, C, HW, 1e-6f));
    cmp("layernorm2d fwd y", gy2, y2, n, TOL, 1e-3);
    float *dy2 = hrand(n, -1, 1), *dx2 = hrand(n, -1, 1), *dw2 = hrand(C, -1, 1), *db2 = hrand(C, -1, 1);
    float *gdy2 = up(dy2, n), *gdx2 = up(dx2, n), *gdw2 = up(dw2, C), *gdb2 = up(db2, C);
    CPU_OK(ms_layernorm2d_backward_cpu(&cpu, dx2, dw2, db2, dy2, x2, w2, mu2, rs2, B, C, HW));
    GPU_OK(ms_layernorm2d_backward_cuda(&gpu, gdx2, gdw2, gdb2, gdy2, gx2, gw2, gmu2, grs2, B, C, HW));
    cmp("layernorm2d bwd dx", gdx2, dx2, n, TOL, 1e-3);
    cmp("layernorm2d bwd dw", gdw2, dw2, C, TOL, 1e-3);
    cmp("layernorm2d bwd db", gdb2, db2, C, TOL, 1e-3);
}

static void t_act_softmax(void)
{
    int64_t n = 10007;
    float *x = hrand(n, -4, 4), *y = hrand(n, -1, 1), *gy = NULL;
    float *gx = up(x, n);
    gy = up(y, n);
    CPU_OK(ms_gelu_forward_cpu(&cpu, y, x, n));
    GPU_OK(ms_gelu_forward_cuda(&gpu, gy, gx, n));
    cmp("gelu fwd", gy, y, n, TOL, 1e-3);
    float *dy = hrand(n, -1, 1), *dx = hrand(n, -1, 1);
    float *gdy = up(dy, n), *gdx = up(dx, n);
    CPU_OK(ms_gelu_backward_cpu(&cpu, dx, dy, x, n));
    GPU_OK(ms_gelu_backward_cuda(&gpu, gdx, gdy, gx, n));
    cmp("gelu bwd", gdx, dx, n, TOL, 1e-3);
    CPU_OK(ms_relu_forward_cpu(&cpu, y, x, n));
    GPU_OK(ms_relu_forward_cuda(&gpu, gy, gx, n));
    cmp("relu fwd", gy, y, n, TOL_EXACT, 1e-6);
    CPU_OK(ms_relu_backward_cpu(&cpu, dx, dy, x, n));
    GPU_OK(ms_relu_backward_cuda(&gpu, gdx, gdy, gx, n));
    cmp("relu bwd", gdx, dx, n, TOL, 1e-3);

    int64_t rows = 53, cols = 197;
    float *sx = hrand(rows * cols, -6, 6), *sy = hrand(rows * cols, -1, 1);
    float *gsx = up(sx, rows * cols), *gsy = up(sy, rows * cols);
    CPU_OK(ms_softmax_forward_cpu(&cpu, sy, sx, rows, cols));
    GPU_OK(ms_softmax_forward_cuda(&gpu, gsy, gsx, rows, cols));
    cmp("softmax fwd", gsy, sy, rows * cols, TOL, 1e-3);
    float *sdy = hrand(rows * cols, -1, 1), *sdx = hrand(rows * cols, -1, 1);
    float *gsdy = up(sdy, rows * cols), *gsdx = up(sdx, rows * cols);
    CPU_OK(ms_softmax_backward_cpu(&cpu, sdx, sdy, sy, rows, cols));
    GPU_OK(ms_softmax_backward_cuda(&gpu, gsdx, gsdy, gsy, rows, cols));
    cmp("softmax bwd", gsdx, sdx, rows * cols, TOL, 1e-3);
}

/* ---- elementwise ---------------------------------------------------------------------------------------------- */
static void t_elementwise(void)
{
    int64_t n = 4099, outer = 13, m = 317;
    float *a = hrand(n, -1, 1), *b = hrand(n, -1, 1), *y = hrand(n, -1, 1);
    float *ga = up(a, n), *gb = up(b, n), *gy = up(y, n);
    CPU_OK(ms_add_forward_cpu(&cpu, y, a, b, n));
    GPU_OK(ms_add_forward_cuda(&gpu, gy, ga, gb, n));
    cmp("add fwd", gy, y, n, TOL_EXACT, 1e-6);
    float *da = hrand(n, -1, 1), *db = hrand(n, -1, 1), *dy = hrand(n, -1, 1);
    float *gda = up(da, n), *gdb = up(db, n), *gdy = up(dy, n);
    CPU_OK(ms_add_backward_cpu(&cpu, da, db, dy, n));
    GPU_OK(ms_add_backward_cuda(&gpu, gda, gdb, gdy, n));
    cmp("add bwd da", gda, da, n, TOL_EXACT, 1e-6);
    cmp("add bwd db", gdb, db, n, TOL_EXACT, 1e-6);

    float *x = hrand(outer * m, -1, 1), *p = hrand(m, -1, 1), *yb = hrand(outer * m, -1, 1);
    float *gx = up(x, outer * m), *gp = up(p, m), *gyb = up(yb, outer * m);
    CPU_OK(ms_add_bcast_forward_cpu(&cpu, yb, x, p, outer, m));
    GPU_OK(ms_add_bcast_forward_cuda(&gpu, gyb, gx, gp, outer, m));
    cmp("add_bcast fwd", gyb, yb, outer * m, TOL_EXACT, 1e-6);
    float *dx = hrand(outer * m, -1, 1), *dp = hrand(m, -1, 1), *dyb = hrand(outer * m, -1, 1);
    float *gdx = up(dx, outer * m), *gdp = up(dp, m), *gdyb = up(dyb, outer * m);
    CPU_OK(ms_add_bcast_backward_cpu(&cpu, dx, dp, dyb, outer, m));
    GPU_OK(ms_add_bcast_backward_cuda(&gpu, gdx, gdp, gdyb, outer, m));
    cmp("add_bcast bwd dx", gdx, dx, outer * m, TOL_EXACT, 1e-6);
    cmp("add_bcast bwd dp", gdp, dp, m, TOL, 1e-3);

    CPU_OK(ms_scale_forward_cpu(&cpu, y, a, -1.25f, n));
    GPU_OK(ms_scale_forward_cuda(&gpu, gy, ga, -1.25f, n));
    cmp("scale fwd", gy, y, n, TOL_EXACT, 1e-6);
    CPU_OK(ms_scale_backward_cpu(&cpu, da, dy, 0.3f, n));
    GPU_OK(ms_scale_backward_cuda(&gpu, gda, gdy, 0.3f, n));
    cmp("scale bwd", gda, da, n, TOL, 1e-5); /* the GPU fuses dx + α·dy into one fma: last-bit differences */

    int64_t A = 3, R = 45, C = 71;
    float *tx = hrand(A * R * C, -1, 1), *ty = hrand(A * R * C, -1, 1);
    float *gtx = up(tx, A * R * C), *gty = up(ty, A * R * C);
    CPU_OK(ms_transpose_forward_cpu(&cpu, ty, tx, A, R, C));
    GPU_OK(ms_transpose_forward_cuda(&gpu, gty, gtx, A, R, C));
    cmp("transpose fwd", gty, ty, A * R * C, TOL_EXACT, 1e-6);
    float *tdx = hrand(A * R * C, -1, 1), *tdy = hrand(A * R * C, -1, 1);
    float *gtdx = up(tdx, A * R * C), *gtdy = up(tdy, A * R * C);
    CPU_OK(ms_transpose_backward_cpu(&cpu, tdx, tdy, A, R, C));
    GPU_OK(ms_transpose_backward_cuda(&gpu, gtdx, gtdy, A, R, C));
    cmp("transpose bwd", gtdx, tdx, A * R * C, TOL_EXACT, 1e-6);

    int64_t rows = 57, D = 33, n_idx = 40;
    int32_t idx[40];
    for (int i = 0; i < n_idx; i++) idx[i] = i % 7 == 3 ? -1 : (int32_t)ms_rng_below(&rng, (uint64_t)rows);
    float *gx_ = hrand(rows * D, -1, 1), *gyv = hrand(n_idx * D, -1, 1);
    float *ggx = up(gx_, rows * D), *ggy = up(gyv, n_idx * D);
    int32_t *gidx = up_i(idx, n_idx);
    CPU_OK(ms_gather_rows_forward_cpu(&cpu, gyv, gx_, idx, n_idx, D));
    GPU_OK(ms_gather_rows_forward_cuda(&gpu, ggy, ggx, gidx, n_idx, D));
    cmp("gather_rows fwd", ggy, gyv, n_idx * D, TOL_EXACT, 1e-6);
    float *gdx_ = hrand(rows * D, -1, 1), *gdyv = hrand(n_idx * D, -1, 1);
    float *ggdx = up(gdx_, rows * D), *ggdy = up(gdyv, n_idx * D);
    CPU_OK(ms_gather_rows_backward_cpu(&cpu, gdx_, gdyv, idx, n_idx, D, rows));
    GPU_OK(ms_gather_rows_backward_cuda(&gpu, ggdx, ggdy, gidx, n_idx, D, rows));
    cmp("gather_rows bwd (repeated idx)", ggdx, gdx_, rows * D, TOL, 1e-3);

    int64_t RA = 2, RR = 1037, RC = 45;
    float *rx = hrand(RA * RR * RC, -1, 1), *ry = hrand(RA * RC, -1, 1);
    float *grx = up(rx, RA * RR * RC), *gry = up(ry, RA * RC);
    CPU_OK(ms_reduce_sum_forward_cpu(&cpu, ry, rx, RA, RR, RC));
    GPU_OK(ms_reduce_sum_forward_cuda(&gpu, gry, grx, RA, RR, RC));
    cmp("reduce_sum fwd", gry, ry, RA * RC, TOL, 1e-3);
    float *rdx = hrand(RA * RR * RC, -1, 1), *rdy = hrand(RA * RC, -1, 1);
    float *grdx = up(rdx, RA * RR * RC), *grdy = up(rdy, RA * RC);
    CPU_OK(ms_reduce_sum_backward_cpu(&cpu, rdx, rdy, RA, RR, RC));
    GPU_OK(ms_reduce_sum_backward_cuda(&gpu, grdx, grdy, RA, RR, RC));
    cmp("reduce_sum bwd", grdx, rdx, RA * RR * RC, TOL_EXACT, 1e-6);
}

/* ---- window, rel_pos, resize ------------------------------------------------------------------------------------ */
static void t_window(void)
{
    int64_t B = 2, H = 13, W = 11, C = 5;
    int ws = 4;
    int64_t nh = (H + ws - 1) / ws, nw = (W + ws - 1) / ws, nwin = B * nh * nw * ws * ws * C, nx = B * H * W * C;
    float *x = hrand(nx, -1, 1), *o = hrand(nwin, -1, 1);
    float *gx = up(x, nx), *go = up(o, nwin);
    CPU_OK(ms_window_partition_forward_cpu(&cpu, o, x, B, H, W, C, ws));
    GPU_OK(ms_window_partition_forward_cuda(&gpu, go, gx, B, H, W, C, ws));
    cmp("window_partition fwd", go, o, nwin, TOL_EXACT, 1e-6);
    float *dx = hrand(nx, -1, 1), *dout = hrand(nwin, -1, 1);
    float *gdx = up(dx, nx), *gdout = up(dout, nwin);
    CPU_OK(ms_window_partition_backward_cpu(&cpu, dx, dout, B, H, W, C, ws));
    GPU_OK(ms_window_partition_backward_cuda(&gpu, gdx, gdout, B, H, W, C, ws));
    cmp("window_partition bwd", gdx, dx, nx, TOL_EXACT, 1e-6);
    float *u = hrand(nx, -1, 1);
    float *gu = up(u, nx);
    CPU_OK(ms_window_unpartition_forward_cpu(&cpu, u, o, B, H, W, C, ws));
    GPU_OK(ms_window_unpartition_forward_cuda(&gpu, gu, go, B, H, W, C, ws));
    cmp("window_unpartition fwd", gu, u, nx, TOL_EXACT, 1e-6);
    float *dw_ = hrand(nwin, -1, 1), *du = hrand(nx, -1, 1);
    float *gdw = up(dw_, nwin), *gdu = up(du, nx);
    CPU_OK(ms_window_unpartition_backward_cpu(&cpu, dw_, du, B, H, W, C, ws));
    GPU_OK(ms_window_unpartition_backward_cuda(&gpu, gdw, gdu, B, H, W, C, ws));
    cmp("window_unpartition bwd", gdw, dw_, nwin, TOL_EXACT, 1e-6);
}

static void t_rel_pos(int64_t L_in, int64_t L_out)
{
    int64_t C = 24;
    float *in = hrand(L_in * C, -1, 1), *out = hrand(L_out * C, -1, 1);
    float *gin = up(in, L_in * C), *gout = up(out, L_out * C);
    char name[64];
    CPU_OK(ms_rel_pos_resize_forward_cpu(&cpu, out, in, L_in, L_out, C));
    GPU_OK(ms_rel_pos_resize_forward_cuda(&gpu, gout, gin, L_in, L_out, C));
    snprintf(name, sizeof name, "rel_pos_resize fwd %lld->%lld", (long long)L_in, (long long)L_out);
    cmp(name, gout, out, L_out * C, TOL, 1e-3);
    float *din = hrand(L_in * C, -1, 1), *dout = hrand(L_out * C, -1, 1);
    float *gdin = up(din, L_in * C), *gdout = up(dout, L_out * C);
    CPU_OK(ms_rel_pos_resize_backward_cpu(&cpu, din, dout, L_in, L_out, C));
    GPU_OK(ms_rel_pos_resize_backward_cuda(&gpu, gdin, gdout, L_in, L_out, C));
    snprintf(name, sizeof name, "rel_pos_resize bwd %lld->%lld", (long long)L_in, (long long)L_out);
    cmp(name, gdin, din, L_in * C, TOL, 1e-3);
}

static void t_resize(int cubic, int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout)
{
    int64_t NC = 3, ni = NC * Hin * Win, no = NC * Hout * Wout;
    float *x = hrand(ni, -1, 1), *y = hrand(no, -1, 1);
    float *gx = up(x, ni), *gy = up(y, no);
    char name[96];
    if (cubic) {
        CPU_OK(ms_resize_bicubic_forward_cpu(&cpu, y, x, NC, Hin, Win, Hout, Wout));
        GPU_OK(ms_resize_bicubic_forward_cuda(&gpu, gy, gx, NC, Hin, Win, Hout, Wout));
    } else {
        CPU_OK(ms_resize_bilinear_forward_cpu(&cpu, y, x, NC, Hin, Win, Hout, Wout));
        GPU_OK(ms_resize_bilinear_forward_cuda(&gpu, gy, gx, NC, Hin, Win, Hout, Wout));
    }
    snprintf(name, sizeof name, "%s fwd %lldx%lld->%lldx%lld", cubic ? "bicubic" : "bilinear", (long long)Hin,
             (long long)Win, (long long)Hout, (long long)Wout);
    cmp(name, gy, y, no, TOL, 1e-3);
    float *dx = hrand(ni, -1, 1), *dy = hrand(no, -1, 1);
    float *gdx = up(dx, ni), *gdy = up(dy, no);
    if (cubic) {
        CPU_OK(ms_resize_bicubic_backward_cpu(&cpu, dx, dy, NC, Hin, Win, Hout, Wout));
        GPU_OK(ms_resize_bicubic_backward_cuda(&gpu, gdx, gdy, NC, Hin, Win, Hout, Wout));
    } else {
        CPU_OK(ms_resize_bilinear_backward_cpu(&cpu, dx, dy, NC, Hin, Win, Hout, Wout));
        GPU_OK(ms_resize_bilinear_backward_cuda(&gpu, gdx, gdy, NC, Hin, Win, Hout, Wout));
    }
    snprintf(name, sizeof name, "%s bwd %lldx%lld->%lldx%lld", cubic ? "bicubic" : "bilinear", (long long)Hin,
             (long long)Win, (long long)Hout, (long long)Wout);
    cmp(name, gdx, dx, ni, TOL, 1e-3);
}

/* ---- conv ------------------------------------------------------------------------------------------------------ */
static void t_conv(void)
{
    char name[96];
    for (int nhwc = 0; nhwc < 2; nhwc++) {
        int64_t B = 2, Cin = 3, H = 12, W = 20, Cout = 19;
        int k = 4;
        int64_t nx = B * Cin * H * W, nw = Cout * Cin * k * k, ny = B * Cout * (H / k) * (W / k);
        float *x = hrand(nx, -1, 1), *w = hrand(nw, -1, 1), *b = hrand(Cout, -1, 1), *y = hrand(ny, -1, 1);
        float *gx = up(x, nx), *gw = up(w, nw), *gb = up(b, Cout), *gy = up(y, ny);
        CPU_OK(ms_conv_patch_forward_cpu(&cpu, y, x, w, b, B, Cin, H, W, Cout, k, nhwc));
        GPU_OK(ms_conv_patch_forward_cuda(&gpu, gy, gx, gw, gb, B, Cin, H, W, Cout, k, nhwc));
        snprintf(name, sizeof name, "conv_patch fwd nhwc=%d", nhwc);
        cmp(name, gy, y, ny, TOL, 1e-3);
        float *dy = hrand(ny, -1, 1), *dx = hrand(nx, -1, 1), *dw = hrand(nw, -1, 1), *db = hrand(Cout, -1, 1);
        float *gdy = up(dy, ny), *gdx = up(dx, nx), *gdw = up(dw, nw), *gdb = up(db, Cout);
        CPU_OK(ms_conv_patch_backward_cpu(&cpu, dx, dw, db, dy, x, w, B, Cin, H, W, Cout, k, nhwc));
        GPU_OK(ms_conv_patch_backward_cuda(&gpu, gdx, gdw, gdb, gdy, gx, gw, B, Cin, H, W, Cout, k, nhwc));
        snprintf(name, sizeof name, "conv_patch bwd dx nhwc=%d", nhwc);
        cmp(name, gdx, dx, nx, TOL, 1e-3);
        snprintf(name, sizeof name, "conv_patch bwd dw nhwc=%d", nhwc);
        cmp(name, gdw, dw, nw, TOL, 1e-3);
        snprintf(name, sizeof name, "conv_patch bwd db nhwc=%d", nhwc);
        cmp(name, gdb, db, Cout, TOL, 1e-3);
    }
    int cfg[2][2] = {{3, 1}, {1, 0}};
    for (int c = 0; c < 2; c++) {
        int ks = cfg[c][0], pad = cfg[c][1];
        int64_t B = 2, Cin = 7, H = 9, W = 13, Cout = 11;
        int64_t Ho = H + 2 * pad - ks + 1, Wo = W + 2 * pad - ks + 1;
        int64_t nx = B * Cin * H * W, nw = Cout * Cin * ks * ks, ny = B * Cout * Ho * Wo;
        float *x = hrand(nx, -1, 1), *w = hrand(nw, -1, 1), *b = hrand(Cout, -1, 1), *y = hrand(ny, -1, 1);
        float *gx = up(x, nx), *gw = up(w, nw), *gb = up(b, Cout), *gy = up(y, ny);
        CPU_OK(ms_conv2d_forward_cpu(&cpu, y, x, w, b, B, Cin, H, W, Cout, ks, pad));
        GPU_OK(ms_conv2d_forward_cuda(&gpu, gy, gx, gw, gb, B, Cin, H, W, Cout, ks, pad));
        snprintf(name, sizeof name, "conv2d fwd ks=%d", ks);
        cmp(name, gy, y, ny, TOL, 1e-3);
        float *dy = hrand(ny, -1, 1), *dx = hrand(nx, -1, 1), *dw = hrand(nw, -1, 1), *db = hrand(Cout, -1, 1);
        float *gdy = up(dy, ny), *gdx = up(dx, nx), *gdw = up(dw, nw), *gdb = up(db, Cout);
        CPU_OK(ms_conv2d_backward_cpu(&cpu, dx, dw, db, dy, x, w, B, Cin, H, W, Cout, ks, pad));
        GPU_OK(ms_conv2d_backward_cuda(&gpu, gdx, gdw, gdb, gdy, gx, gw, B, Cin, H, W, Cout, ks, pad));
        snprintf(name, sizeof name, "conv2d bwd dx ks=%d", ks);
        cmp(name, gdx, dx, nx, TOL, 1e-3);
        snprintf(name, sizeof name, "conv2d bwd dw ks=%d", ks);
        cmp(name, gdw, dw, nw, TOL, 1e-3);
        snprintf(name, sizeof name, "conv2d bwd db ks=%d", ks);
        cmp(name, gdb, db, Cout, TOL, 1e-3);
    }
    {
        int64_t B = 2, Cin = 9, H = 5, W = 7, Cout = 6;
        int64_t nx = B * Cin * H * W, nw = Cin * Cout * 4, ny = B * Cout * 4 * H * W;
        float *x = hrand(nx, -1, 1), *w = hrand(nw, -1, 1), *b = hrand(Cout, -1, 1), *y = hrand(ny, -1, 1);
        float *gx = up(x, nx), *gw = up(w, nw), *gb = up(b, Cout), *gy = up(y, ny);
        CPU_OK(ms_conv_transpose2x2_forward_cpu(&cpu, y, x, w, b, B, Cin, H, W, Cout));
        GPU_OK(ms_conv_transpose2x2_forward_cuda(&gpu, gy, gx, gw, gb, B, Cin, H, W, Cout));
        cmp("conv_transpose2x2 fwd", gy, y, ny, TOL, 1e-3);
        float *dy = hrand(ny, -1, 1), *dx = hrand(nx, -1, 1), *dw = hrand(nw, -1, 1), *db = hrand(Cout, -1, 1);
        float *gdy = up(dy, ny), *gdx = up(dx, nx), *gdw = up(dw, nw), *gdb = up(db, Cout);
        CPU_OK(ms_conv_transpose2x2_backward_cpu(&cpu, dx, dw, db, dy, x, w, B, Cin, H, W, Cout));
        GPU_OK(ms_conv_transpose2x2_backward_cuda(&gpu, gdx, gdw, gdb, gdy, gx, gw, B, Cin, H, W, Cout));
        cmp("conv_transpose2x2 bwd dx", gdx, dx, nx, TOL, 1e-3);
        cmp("conv_transpose2x2 bwd dw", gdw, dw, nw, TOL, 1e-3);
        cmp("conv_transpose2x2 bwd db", gdb, db, Cout, TOL, 1e-3);
    }
}

/* ---- losses, optimiser ------------------------------------------------------------------------------------------- */
static void t_loss(void)
{
    int64_t rows = 41, cols = 77;
    float *p = hrand(rows * cols, -1, 1), *t = hrand(rows * cols, -1, 1), *w = hrand(rows, 0, 1);
    for (int64_t r = 0; r < rows; r += 3) w[r] = 0.f; /* MAE: unmasked patches weigh 0 */
    float *gp = up(p, rows * cols), *gt = up(t, rows * cols), *gw = up(w, rows);
    float loss = 0, *gl = up(&loss, 1);
    CPU_OK(ms_mse_loss_forward_cpu(&cpu, &loss, p, t, w, rows, cols));
    GPU_OK(ms_mse_loss_forward_cuda(&gpu, gl, gp, gt, gw, rows, cols));
    cmp("mse fwd", gl, &loss, 1, TOL, 1e-5);
    float *dp = hrand(rows * cols, -1, 1), *gdp = up(dp, rows * cols);
    CPU_OK(ms_mse_loss_backward_cpu(&cpu, dp, 0.7f, p, t, w, rows, cols));
    GPU_OK(ms_mse_loss_backward_cuda(&gpu, gdp, 0.7f, gp, gt, gw, rows, cols));
    cmp("mse bwd", gdp, dp, rows * cols, TOL, 1e-3);

    int64_t B = 2, C = 3, P = 517;
    int32_t *tg = malloc((size_t)(B * P) * sizeof(int32_t));
    for (int64_t i = 0; i < B * P; i++) tg[i] = (int32_t)ms_rng_below(&rng, (uint64_t)C + 1) - 1; /* -1 = ignore */
    float *lg = hrand(B * C * P, -4, 4), *glg = up(lg, B * C * P);
    int32_t *gtg = up_i(tg, B * P);
    for (int64_t i = 0; i < B * P; i++)
        if (tg[i] < 0) tg[i] = 0; /* dice: every pixel labelled */
    int32_t *gtg_d = up_i(tg, B * P);
    CPU_OK(ms_dice_loss_forward_cpu(&cpu, &loss, lg, tg, B, C, P, 1e-5f));
    GPU_OK(ms_dice_loss_forward_cuda(&gpu, gl, glg, gtg_d, B, C, P, 1e-5f));
    cmp("dice fwd", gl, &loss, 1, TOL, 1e-5);
    float *dl = hrand(B * C * P, -1, 1), *gdl = up(dl, B * C * P);
    CPU_OK(ms_dice_loss_backward_cpu(&cpu, dl, 1.3f, lg, tg, B, C, P, 1e-5f));
    GPU_OK(ms_dice_loss_backward_cuda(&gpu, gdl, 1.3f, glg, gtg_d, B, C, P, 1e-5f));
    cmp("dice bwd", gdl, dl, B * C * P, TOL, 1e-3);
    /* cross-entropy with ignored pixels: reload the -1 labels */
    MS_CHECK_OK(ms_dev_to_host(&gpu, tg, gtg, (size_t)(B * P) * sizeof(int32_t)));
    CPU_OK(ms_cross_entropy_forward_cpu(&cpu, &loss, lg, tg, B, C, P));
    GPU_OK(ms_cross_entropy_forward_cuda(&gpu, gl, glg, gtg, B, C, P));
    cmp("cross_entropy fwd", gl, &loss, 1, TOL, 1e-5);
    float *dc = hrand(B * C * P, -1, 1), *gdc = up(dc, B * C * P);
    CPU_OK(ms_cross_entropy_backward_cpu(&cpu, dc, 0.9f, lg, tg, B, C, P));
    GPU_OK(ms_cross_entropy_backward_cuda(&gpu, gdc, 0.9f, glg, gtg, B, C, P));
    cmp("cross_entropy bwd", gdc, dc, B * C * P, TOL, 1e-3);
    free(tg);
}

static void t_optim(void)
{
    int64_t n = 100003;
    float *p = hrand(n, -1, 1), *g = hrand(n, -1, 1), *m = hrand(n, -0.1f, 0.1f), *v = hrand(n, 0, 0.01f);
    float *gp = up(p, n), *gg = up(g, n), *gm = up(m, n), *gv = up(v, n);
    for (int step = 1; step <= 3; step++) {
        CPU_OK(ms_adamw_step_cpu(&cpu, p, g, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.05f, step));
        GPU_OK(ms_adamw_step_cuda(&gpu, gp, gg, gm, gv, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.05f, step));
    }
    cmp("adamw p (3 steps)", gp, p, n, TOL, 1e-4);
    cmp("adamw m", gm, m, n, TOL, 1e-4);
    cmp("adamw v", gv, v, n, TOL, 1e-4);
    double sc = 1.5, sg = 1.5, sg2 = 1.5;
    CPU_OK(ms_sumsq_cpu(&cpu, &sc, g, n));
    GPU_OK(ms_sumsq_cuda(&gpu, &sg, gg, n));
    GPU_OK(ms_sumsq_cuda(&gpu, &sg2, gg, n));
    MS_CHECK(fabs(sg - sc) <= 1e-10 * fabs(sc), "sumsq gpu %.17g cpu %.17g", sg, sc);
    MS_CHECK(sg == sg2, "sumsq not deterministic: %.17g vs %.17g", sg, sg2);
    printf("  %-40s rel=%.2e %s\n", "sumsq (+deterministic)", fabs(sg - sc) / fabs(sc), sg == sg2 ? "ok" : "FAIL");
    CPU_OK(ms_scale_inplace_cpu(&cpu, g, 0.37f, n));
    GPU_OK(ms_scale_inplace_cuda(&gpu, gg, 0.37f, n));
    cmp("scale_inplace", gg, g, n, TOL_EXACT, 1e-6);
}

/* ---- attention --------------------------------------------------------------------------------------------------- */
typedef struct att_case {
    const char *name;
    int64_t n_groups;
    int heads, hd;
    int rel;           /* decomposed rel-pos on a gh×gw grid per group */
    int gh, gw;        /* query grid (self attention: keys = queries) */
    int cross;         /* keys are a different set: nk keys per group, shared rows via k_idx */
    int64_t nk_cross;
    int lists;         /* use q_off/q_idx with variable sizes and permuted rows */
} att_case;

static void t_attention(const att_case *c)
{
    const int H = c->heads, hd = c->hd, D = H * hd;
    int64_t G = c->n_groups, per = (int64_t)c->gh * c->gw;
    int64_t nq_total, nk_rows;
    int32_t *q_off = NULL, *q_idx = NULL, *k_off = NULL, *k_idx = NULL;
    int64_t *gsize = malloc((size_t)G * sizeof(int64_t));
    /* query groups: per tokens each, or variable sizes (lists) */
    nq_total = 0;
    for (int64_t g = 0; g < G; g++) {
        gsize[g] = c->lists ? (int64_t)(per - (int64_t)ms_rng_below(&rng, (uint64_t)(per / 2))) : per;
        nq_total += gsize[g];
    }
    int64_t q_rows = nq_total + 5; /* a few rows in no group: must stay untouched */
    if (c->lists) {
        q_off = malloc((size_t)(G + 1) * sizeof(int32_t));
        q_idx = malloc((size_t)nq_total * sizeof(int32_t));
        q_off[0] = 0;
        for (int64_t g = 0; g < G; g++) q_off[g + 1] = q_off[g] + (int32_t)gsize[g];
        /* a random permutation of 0..q_rows-1, first nq_total used */
        int32_t *perm = malloc((size_t)q_rows * sizeof(int32_t));
        for (int64_t i = 0; i < q_rows; i++) perm[i] = (int32_t)i;
        for (int64_t i = q_rows - 1; i > 0; i--) {
            int64_t j = (int64_t)ms_rng_below(&rng, (uint64_t)i + 1);
            int32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t;
        }
        memcpy(q_idx, perm, (size_t)nq_total * sizeof(int32_t));
        free(perm);
    }
    /* keys: self attention uses the query rows (same offsets / lists); cross uses its own shared set */
    if (c->cross) {
        nk_rows = c->nk_cross * 2;
        k_off = malloc((size_t)(G + 1) * sizeof(int32_t));
        k_idx = malloc((size_t)(G * c->nk_cross) * sizeof(int32_t));
        k_off[0] = 0;
        for (int64_t g = 0; g < G; g++) {
            k_off[g + 1] = k_off[g] + (int32_t)c->nk_cross;
            for (int64_t j = 0; j < c->nk_cross; j++) /* groups share half of their keys */
                k_idx[g * c->nk_cross + j] = (int32_t)((j + (g % 2) * (c->nk_cross / 2)) % nk_rows);
        }
    } else {
        nk_rows = q_rows;
    }
    int64_t ldq = D + 3, ldk = D + 1, ldv = D, ldo = D + 2;
    float *q = hrand(q_rows * ldq, -1, 1), *k = hrand(nk_rows * ldk, -1, 1), *v = hrand(nk_rows * ldv, -1, 1);
    float *out = hrand(q_rows * ldo, -1, 1), *lse = hrand(q_rows * H, -1, 1);
    int64_t len_h = 2 * c->gh - 1, len_w = 2 * c->gw - 1;
    float *rel_h = c->rel ? hrand(len_h * hd, -0.5f, 0.5f) : NULL, *rel_w = c->rel ? hrand(len_w * hd, -0.5f, 0.5f) : NULL;
    int32_t *q_row = NULL, *q_col = NULL;
    if (c->rel) { /* token t of a group sits at (t / gw, t % gw) of its grid */
        q_row = malloc((size_t)q_rows * sizeof(int32_t));
        q_col = malloc((size_t)q_rows * sizeof(int32_t));
        for (int64_t i = 0; i < q_rows; i++) q_row[i] = q_col[i] = 0;
        int64_t s = 0;
        for (int64_t g = 0; g < G; g++)
            for (int64_t t = 0; t < gsize[g]; t++, s++) {
                int64_t r = q_idx ? q_idx[s] : s;
                q_row[r] = (int32_t)(t / c->gw);
                q_col[r] = (int32_t)(t % c->gw);
            }
    }
    ms_attention_desc d = {0};
    d.n_groups = G;
    d.n_heads = H;
    d.head_dim = hd;
    d.scale = 1.f / sqrtf((float)hd);
    d.nq = per;
    d.nk = per;
    d.ldq = ldq; d.ldk = ldk; d.ldv = ldv; d.ldo = ldo;
    d.len_h = len_h; d.len_w = len_w;
    ms_attention_desc dg = d;
    /* host descriptor */
    d.q_off = q_off; d.q_idx = q_idx;
    d.k_off = c->cross ? k_off : q_off; d.k_idx = c->cross ? k_idx : q_idx;
    d.rel_h = rel_h; d.rel_w = rel_w;
    d.q_row = q_row; d.q_col = q_col; d.k_row = q_row; d.k_col = q_col;
    /* device descriptor */
    dg.q_off = q_off ? up_i(q_off, G + 1) : NULL;
    dg.q_idx = q_idx ? up_i(q_idx, nq_total) : NULL;
    dg.k_off = c->cross ? up_i(k_off, G + 1) : dg.q_off;
    dg.k_idx = c->cross ? up_i(k_idx, G * c->nk_cross) : dg.q_idx;
    dg.rel_h = rel_h ? up(rel_h, len_h * hd) : NULL;
    dg.rel_w = rel_w ? up(rel_w, len_w * hd) : NULL;
    dg.q_row = q_row ? up_i(q_row, q_rows) : NULL;
    dg.q_col = q_col ? up_i(q_col, q_rows) : NULL;
    dg.k_row = dg.q_row;
    dg.k_col = dg.q_col;
    float *gq = up(q, q_rows * ldq), *gk = up(k, nk_rows * ldk), *gv = up(v, nk_rows * ldv);
    float *gout = up(out, q_rows * ldo), *glse = up(lse, q_rows * H);
    char name[128];
    CPU_OK(ms_attention_forward_cpu(&cpu, out, lse, q, k, v, &d));
    GPU_OK(ms_attention_forward_cuda(gatt, gout, glse, gq, gk, gv, &dg));
    MS_CHECK_OK(ms_dev_sync(gatt)); /* another stream than the copies' */
    snprintf(name, sizeof name, "att%s %s fwd out", vname, c->name);
    cmp(name, gout, out, q_rows * ldo, TOL_ATT, 2e-3);
    snprintf(name, sizeof name, "att%s %s fwd lse", vname, c->name);
    cmp(name, glse, lse, q_rows * H, TOL_ATT, 2e-3);

    float *dout = hrand(q_rows * ldo, -1, 1);
    float *dq = hrand(q_rows * ldq, -1, 1), *dk = hrand(nk_rows * ldk, -1, 1), *dv = hrand(nk_rows * ldv, -1, 1);
    float *drh = c->rel ? hrand(len_h * hd, -1, 1) : NULL, *drw = c->rel ? hrand(len_w * hd, -1, 1) : NULL;
    float *gdout = up(dout, q_rows * ldo), *gdq = up(dq, q_rows * ldq), *gdk = up(dk, nk_rows * ldk),
          *gdv = up(dv, nk_rows * ldv);
    float *gdrh = drh ? up(drh, len_h * hd) : NULL, *gdrw = drw ? up(drw, len_w * hd) : NULL;
    /* both backends consume the CPU's forward (out, lse), so the backward is compared on equal inputs */
    float *gout_c = up(out, q_rows * ldo), *glse_c = up(lse, q_rows * H);
    CPU_OK(ms_attention_backward_cpu(&cpu, dq, dk, dv, drh, drw, dout, out, lse, q, k, v, &d));
    GPU_OK(ms_attention_backward_cuda(gatt, gdq, gdk, gdv, gdrh, gdrw, gdout, gout_c, glse_c, gq, gk, gv, &dg));
    MS_CHECK_OK(ms_dev_sync(gatt));
    snprintf(name, sizeof name, "att%s %s bwd dq", vname, c->name);
    cmp(name, gdq, dq, q_rows * ldq, TOL_ATT, 2e-3);
    snprintf(name, sizeof name, "att%s %s bwd dk", vname, c->name);
    cmp(name, gdk, dk, nk_rows * ldk, TOL_ATT, 2e-3);
    snprintf(name, sizeof name, "att%s %s bwd dv", vname, c->name);
    cmp(name, gdv, dv, nk_rows * ldv, TOL_ATT, 2e-3);
    if (c->rel) {
        snprintf(name, sizeof name, "att%s %s bwd drel_h", vname, c->name);
        cmp(name, gdrh, drh, len_h * hd, TOL_ATT, 2e-3);
        snprintf(name, sizeof name, "att%s %s bwd drel_w", vname, c->name);
        cmp(name, gdrw, drw, len_w * hd, TOL_ATT, 2e-3);
        /* determinism of the drel partial tables: run again from the same start, expect identical bits */
        float *again = up(drh, len_h * hd); /* drh now holds the CPU result; only the GPU bits matter here */
        float *again2 = up(drh, len_h * hd);
        GPU_OK(ms_attention_backward_cuda(gatt, NULL, NULL, NULL, again, NULL, gdout, gout_c, glse_c, gq, gk, gv, &dg));
        GPU_OK(ms_attention_backward_cuda(gatt, NULL, NULL, NULL, again2, NULL, gdout, gout_c, glse_c, gq, gk, gv, &dg));
        MS_CHECK_OK(ms_dev_sync(gatt));
        float *b1 = down(again, len_h * hd), *b2 = down(again2, len_h * hd);
        MS_CHECK(!memcmp(b1, b2, (size_t)(len_h * hd) * sizeof(float)), "attention %s drel_h not deterministic",
                 c->name);
    }
    free(gsize);
    free(q_off); free(q_idx); free(k_off); free(k_idx); free(q_row); free(q_col);
}

/* ---- timings (MS_TEST_BENCH=1) ------------------------------------------------------------------------------------ */
static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}
#define TIME_MS(label, reps, stmt, flops)                                                                   \
    do {                                                                                                   \
        for (int w_ = 0; w_ < 2; w_++) stmt;                                                               \
        MS_CHECK_OK(ms_dev_sync(&gpu));                                                                    \
        MS_CHECK_OK(ms_dev_sync(&gpu_v1));                                                                 \
        double best_ = 1e30;                                                                               \
        for (int r_ = 0; r_ < (reps); r_++) {                                                              \
            double t0_ = now_ms();                                                                         \
            stmt;                                                                                          \
            MS_CHECK_OK(ms_dev_sync(&gpu));                                                                \
            MS_CHECK_OK(ms_dev_sync(&gpu_v1));                                                             \
            double t_ = now_ms() - t0_;                                                                    \
            if (t_ < best_) best_ = t_;                                                                    \
        }                                                                                                  \
        printf("BENCH %-44s %9.3f ms  %7.2f TFLOP/s\n", label, best_, (flops) / (best_ * 1e9));            \
    } while (0)

static void bench(ms_device *ad, const char *tag)
{
    if (ad == &gpu) { /* GEMM 4096x768x2304 (the qkv projection of 4096 tokens), once */
        int64_t M = 4096, K = 768, N = 2304;
        float *x = up(hrand(M * K, -1, 1), M * K), *w = up(hrand(N * K, -1, 1), N * K), *y = up(hrand(M * N, -1, 1), M * N);
        TIME_MS("linear fwd 4096x768 -> 2304 (fp32)", 10, ms_linear_forward_cuda(&gpu, y, x, w, NULL, M, K, N),
                2.0 * M * N * K);
    }
    /* attention, dim 768, 12 heads: 25 windows of 14x14 with rel-pos; 1 global 64x64 with rel-pos */
    int cfgs[2][3] = {{25, 14, 14}, {1, 64, 64}};
    for (int c = 0; c < 2; c++) {
        int64_t G = cfgs[c][0], gh = cfgs[c][1], gw = cfgs[c][2], per = gh * gw, n = G * per;
        int H = 12, hd = 64, Dm = H * hd;
        int64_t lh = 2 * gh - 1, lw = 2 * gw - 1;
        int32_t *qr = malloc((size_t)n * sizeof(int32_t)), *qc = malloc((size_t)n * sizeof(int32_t));
        for (int64_t i = 0; i < n; i++) { qr[i] = (int32_t)((i % per) / gw); qc[i] = (int32_t)(i % gw); }
        float *qkv = up(hrand(n * 3 * Dm, -1, 1), n * 3 * Dm), *o = up(hrand(n * Dm, -1, 1), n * Dm);
        float *l = up(hrand(n * H, -1, 1), n * H), *dqkv = up(hrand(n * 3 * Dm, -1, 1), n * 3 * Dm);
        float *rh = up(hrand(lh * hd, -0.5f, 0.5f), lh * hd), *rw = up(hrand(lw * hd, -0.5f, 0.5f), lw * hd);
        float *drh = up(hrand(lh * hd, -1, 1), lh * hd), *drw = up(hrand(lw * hd, -1, 1), lw * hd);
        ms_attention_desc d = {0};
        d.n_groups = G; d.n_heads = H; d.head_dim = hd; d.scale = 0.125f; d.nq = per; d.nk = per;
        d.ldq = d.ldk = d.ldv = 3 * Dm; d.ldo = Dm;
        d.rel_h = rh; d.rel_w = rw; d.len_h = lh; d.len_w = lw;
        d.q_row = d.k_row = up_i(qr, n); d.q_col = d.k_col = up_i(qc, n);
        double fl = 4.0 * G * H * (double)per * per * hd;
        char label[96];
        snprintf(label, sizeof label, "attention%s fwd %lldx%lld tok, relpos", tag, (long long)G, (long long)per);
        TIME_MS(label, 10, ms_attention_forward_cuda(ad, o, l, qkv, qkv + Dm, qkv + 2 * Dm, &d), fl);
        snprintf(label, sizeof label, "attention%s bwd %lldx%lld tok, relpos", tag, (long long)G, (long long)per);
        TIME_MS(label, 5,
                ms_attention_backward_cuda(ad, dqkv, dqkv + Dm, dqkv + 2 * Dm, drh, drw, o, o, l, qkv, qkv + Dm,
                                           qkv + 2 * Dm, &d),
                2.5 * fl);
        d.rel_h = d.rel_w = NULL;
        snprintf(label, sizeof label, "attention%s fwd %lldx%lld tok, no relpos", tag, (long long)G, (long long)per);
        TIME_MS(label, 10, ms_attention_forward_cuda(ad, o, l, qkv, qkv + Dm, qkv + 2 * Dm, &d), fl);
        snprintf(label, sizeof label, "attention%s bwd %lldx%lld tok, no relpos", tag, (long long)G, (long long)per);
        TIME_MS(label, 5,
                ms_attention_backward_cuda(ad, dqkv, dqkv + Dm, dqkv + 2 * Dm, NULL, NULL, o, o, l, qkv, qkv + Dm,
                                           qkv + 2 * Dm, &d),
                2.5 * fl);
        free(qr);
        free(qc);
    }
}
#endif /* MS_HAVE_CUDA */

int main(void)
{
#ifndef MS_HAVE_CUDA
    printf("test_ops_cuda: this build has no CUDA backend: skipped\n");
    return MS_TEST_SKIP;
#else
    if (!ms_cuda_available()) {
        printf("test_ops_cuda: no CUDA device visible: skipped\n");
        return MS_TEST_SKIP;
    }
    uint64_t seed = ms_test_seed();
    ms_rng_init(&rng, seed, 7);
    cpu.cuda_index = 0;
    gpu.cuda_index = 0;
    if (ms_device_init(&cpu, MS_DEV_CPU, 0) || ms_device_init(&gpu, MS_DEV_CUDA, 0)) {
        printf("device init failed: %s\n", ms_errmsg());
        return 1;
    }
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) t_matmul(ta, tb, 3, 0);
    t_matmul(0, 1, 4, 1);
    t_matmul(1, 0, 1, 0);
    t_linear();
    release_all();
    t_layernorm();
    t_act_softmax();
    t_elementwise();
    release_all();
    t_window();
    t_rel_pos(27, 127);
    t_rel_pos(127, 27);
    t_rel_pos(13, 13);
    t_resize(0, 17, 23, 40, 31);
    t_resize(0, 40, 31, 9, 14);
    t_resize(1, 11, 13, 29, 25);
    t_resize(1, 29, 25, 8, 6);
    release_all();
    t_conv();
    t_loss();
    t_optim();
    release_all();
    att_case cases[] = {
        {"window 7x7 relpos hd16", 6, 3, 16, 1, 7, 7, 0, 0, 0},
        {"window 5x6 relpos hd24", 4, 2, 24, 1, 5, 6, 0, 0, 0},
        {"global 14x14 relpos hd64", 1, 2, 64, 1, 14, 14, 0, 0, 0},
        {"lists var-size relpos hd32", 5, 2, 32, 1, 9, 8, 0, 0, 1},
        {"lists var-size hd64", 3, 3, 64, 0, 10, 11, 0, 0, 1},
        {"cross shared keys hd32", 4, 2, 32, 0, 3, 5, 1, 37, 0},
        {"cross lists hd16", 3, 4, 16, 0, 4, 4, 1, 70, 1},
        {"hd80 (vit_h) relpos", 2, 2, 80, 1, 6, 5, 0, 0, 0},
    };
    setenv("MS_KERNEL_ATTENTION", "1", 1);
    gpu_v1.cuda_index = 0;
    MS_CHECK_OK(ms_device_init(&gpu_v1, MS_DEV_CUDA, 0));
    unsetenv("MS_KERNEL_ATTENTION");
    for (int var = 0; var < 2; var++) {
        gatt = var ? &gpu_v1 : &gpu;
        vname = var ? "v1" : "v2";
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            t_attention(&cases[i]);
            release_all();
        }
    }
    const char *b = getenv("MS_TEST_BENCH");
    if (b && !strcmp(b, "1")) {
        bench(&gpu, "");
        bench(&gpu_v1, "(v1)");
        release_all();
    }
    ms_device_free(&gpu_v1);
    ms_device_free(&gpu);
    ms_device_free(&cpu);
    return ms_test_done();
#endif
}
