/* kernels/cpu/elementwise.c — add, broadcast add, scale, batched transpose, row gather and sum reduction
 * (contract: kernels/elementwise.h). Forward may run in place where the header allows (y aliasing an input of
 * the same layout). Backward accumulates and skips NULL gradients. Sums over rows (dp of add_bcast, the
 * scatter-add of gather_rows, reduce_sum) give each column block to one thread, which walks the rows in order:
 * deterministic, with no atomics.
 */
#include "elementwise.h"

#include <string.h>

#include "cpu/cpu_par.h"

#define NEG_CHECK(who, cond) MS_FAIL_IF(cond, MS_EINVAL, "%s: negative size", who)

ms_status ms_add_forward_cpu(ms_device *dev, float *y, const float *a, const float *b, int64_t n)
{
    NEG_CHECK("add_forward", n < 0);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    return MS_OK;
}

ms_status ms_add_backward_cpu(ms_device *dev, float *da, float *db, const float *dy, int64_t n)
{
    NEG_CHECK("add_backward", n < 0);
    int nt = ms_cpu_threads(dev);
    if (da) {
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++) da[i] += dy[i];
    }
    if (db) {
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++) db[i] += dy[i];
    }
    return MS_OK;
}

ms_status ms_add_bcast_forward_cpu(ms_device *dev, float *y, const float *x, const float *p, int64_t outer, int64_t n)
{
    NEG_CHECK("add_bcast_forward", outer < 0 || n < 0);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (outer * n >= MS_CPU_PAR_MIN)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < n; i++) y[o * n + i] = x[o * n + i] + p[i];
    return MS_OK;
}

ms_status ms_add_bcast_backward_cpu(ms_device *dev, float *dx, float *dp, const float *dy, int64_t outer, int64_t n)
{
    NEG_CHECK("add_bcast_backward", outer < 0 || n < 0);
    int nt = ms_cpu_threads(dev);
    if (dx) {
        int64_t total = outer * n;
#pragma omp parallel for num_threads(nt) schedule(static) if (total >= MS_CPU_PAR_MIN)
        for (int64_t i = 0; i < total; i++) dx[i] += dy[i];
    }
    if (dp && n > 0) {
        int64_t bw = ms_cpu_colblock(n, nt), nblk = (n + bw - 1) / bw;
#pragma omp parallel for num_threads(nt) schedule(static) if (outer * n >= MS_CPU_PAR_MIN)
        for (int64_t blk = 0; blk < nblk; blk++) {
            double acc[MS_CPU_COLBLOCK_MAX] = {0};
            int64_t j0 = blk * bw, j1 = j0 + bw < n ? j0 + bw : n;
            for (int64_t o = 0; o < outer; o++)
                for (int64_t j = j0; j < j1; j++) acc[j - j0] += dy[o * n + j];
            for (int64_t j = j0; j < j1; j++) dp[j] += (float)acc[j - j0];
        }
    }
    return MS_OK;
}

ms_status ms_scale_forward_cpu(ms_device *dev, float *y, const float *x, float alpha, int64_t n)
{
    NEG_CHECK("scale_forward", n < 0);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = alpha * x[i];
    return MS_OK;
}

ms_status ms_scale_backward_cpu(ms_device *dev, float *dx, const float *dy, float alpha, int64_t n)
{
    NEG_CHECK("scale_backward", n < 0);
    if (!dx) return MS_OK;
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) dx[i] += alpha * dy[i];
    return MS_OK;
}

/* out[a,c,r] (=|+=) in[a,r,c] for in (A,R,C), in 32×32 tiles so both sides stay in cache. Not in place. */
#define TILE 32
static void transpose_tiles(int nt, float *out, const float *in, int64_t A, int64_t R, int64_t C, int accumulate)
{
    int64_t tr = (R + TILE - 1) / TILE, tc = (C + TILE - 1) / TILE, ntask = A * tr * tc;
#pragma omp parallel for num_threads(nt) schedule(static) if (A * R * C >= MS_CPU_PAR_MIN)
    for (int64_t t = 0; t < ntask; t++) {
        int64_t a = t / (tr * tc), r0 = (t / tc % tr) * TILE, c0 = (t % tc) * TILE;
        int64_t r1 = r0 + TILE < R ? r0 + TILE : R, c1 = c0 + TILE < C ? c0 + TILE : C;
        const float *src = in + a * R * C;
        float *dst = out + a * R * C;
        for (int64_t c = c0; c < c1; c++)
            for (int64_t r = r0; r < r1; r++) {
                if (accumulate) dst[c * R + r] += src[r * C + c];
                else dst[c * R + r] = src[r * C + c];
            }
    }
}

ms_status ms_transpose_forward_cpu(ms_device *dev, float *y, const float *x, int64_t A, int64_t R, int64_t C)
{
    NEG_CHECK("transpose_forward", A < 0 || R < 0 || C < 0);
    MS_FAIL_IF(y == x && A * R * C > 0 && R > 1 && C > 1, MS_EINVAL, "transpose_forward: cannot run in place");
    transpose_tiles(ms_cpu_threads(dev), y, x, A, R, C, 0);
    return MS_OK;
}

ms_status ms_transpose_backward_cpu(ms_device *dev, float *dx, const float *dy, int64_t A, int64_t R, int64_t C)
{
    NEG_CHECK("transpose_backward", A < 0 || R < 0 || C < 0);
    if (!dx) return MS_OK;
    /* dy is (A,C,R); dx[a,r,c] += dy[a,c,r] is the same tiled transpose of dy with R and C swapped */
    transpose_tiles(ms_cpu_threads(dev), dx, dy, A, C, R, 1);
    return MS_OK;
}

ms_status ms_gather_rows_forward_cpu(ms_device *dev, float *y, const float *x, const int32_t *idx, int64_t n_idx,
                                     int64_t D)
{
    NEG_CHECK("gather_rows_forward", n_idx < 0 || D < 0);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n_idx * D >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n_idx; i++) {
        if (idx[i] < 0) memset(y + i * D, 0, (size_t)D * sizeof(float));
        else memcpy(y + i * D, x + (int64_t)idx[i] * D, (size_t)D * sizeof(float));
    }
    return MS_OK;
}

ms_status ms_gather_rows_backward_cpu(ms_device *dev, float *dx, const float *dy, const int32_t *idx, int64_t n_idx,
                                      int64_t D, int64_t n_rows_x)
{
    NEG_CHECK("gather_rows_backward", n_idx < 0 || D < 0 || n_rows_x < 0);
    if (!dx || D == 0) return MS_OK;
    for (int64_t i = 0; i < n_idx; i++) /* validate first: a bad index must not leave dx half-updated */
        MS_FAIL_IF(idx[i] >= n_rows_x, MS_EINVAL, "gather_rows_backward: index %d at %lld >= %lld rows", idx[i],
                   (long long)i, (long long)n_rows_x);
    /* Indices may repeat, so split columns, not rows: each dx element is updated by one thread, in idx order. */
    int nt = ms_cpu_threads(dev);
    int64_t bw = ms_cpu_colblock(D, nt), nblk = (D + bw - 1) / bw;
#pragma omp parallel for num_threads(nt) schedule(static) if (n_idx * D >= MS_CPU_PAR_MIN)
    for (int64_t blk = 0; blk < nblk; blk++) {
        int64_t j0 = blk * bw, j1 = j0 + bw < D ? j0 + bw : D;
        for (int64_t i = 0; i < n_idx; i++) {
            if (idx[i] < 0) continue;
            float *dr = dx + (int64_t)idx[i] * D;
            const float *gr = dy + i * D;
            for (int64_t j = j0; j < j1; j++) dr[j] += gr[j];
        }
    }
    return MS_OK;
}

ms_status ms_reduce_sum_forward_cpu(ms_device *dev, float *y, const float *x, int64_t A, int64_t R, int64_t C)
{
    NEG_CHECK("reduce_sum_forward", A < 0 || R < 0 || C < 0);
    if (C == 0) return MS_OK;
    int nt = ms_cpu_threads(dev);
    int64_t bw = ms_cpu_colblock(C, nt), nblk = (C + bw - 1) / bw, ntask = A * nblk;
#pragma omp parallel for num_threads(nt) schedule(static) if (A * R * C >= MS_CPU_PAR_MIN)
    for (int64_t t = 0; t < ntask; t++) {
        int64_t a = t / nblk, j0 = (t % nblk) * bw, j1 = j0 + bw < C ? j0 + bw : C;
        double acc[MS_CPU_COLBLOCK_MAX] = {0};
        const float *xa = x + a * R * C;
        for (int64_t r = 0; r < R; r++)
            for (int64_t j = j0; j < j1; j++) acc[j - j0] += xa[r * C + j];
        for (int64_t j = j0; j < j1; j++) y[a * C + j] = (float)acc[j - j0];
    }
    return MS_OK;
}

ms_status ms_reduce_sum_backward_cpu(ms_device *dev, float *dx, const float *dy, int64_t A, int64_t R, int64_t C)
{
    NEG_CHECK("reduce_sum_backward", A < 0 || R < 0 || C < 0);
    if (!dx) return MS_OK;
    int nt = ms_cpu_threads(dev);
    int64_t rows = A * R;
#pragma omp parallel for num_threads(nt) schedule(static) if (rows * C >= MS_CPU_PAR_MIN)
    for (int64_t ar = 0; ar < rows; ar++) {
        const float *g = dy + (ar / (R > 0 ? R : 1)) * C;
        float *d = dx + ar * C;
        for (int64_t j = 0; j < C; j++) d[j] += g[j];
    }
    return MS_OK;
}
