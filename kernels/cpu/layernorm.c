/* kernels/cpu/layernorm.c — LayerNorm over the last dim and LayerNorm2d over NCHW channels (contract:
 * kernels/layernorm.h). Statistics are two-pass in double (mean, then biased variance of x − mean), stored as
 * float mean and rstd = 1/√(var + eps); backward recomputes x̂ from them.
 * Backward per normalised vector: g = dy·w; dx += rstd·(g − mean(g) − x̂·mean(g·x̂)); dw += Σ dy·x̂; db += Σ dy.
 * add_layernorm writes a row's sum, then normalises it with the same row code as layernorm (bit-identical to the
 * two ops in sequence).
 * Threads: rows (LN) or (image, pixel block) (LN2d) in forward and dx; dw/db by column block (LN) or channel
 * (LN2d), each summing its rows in a fixed order, so every result is deterministic.
 */
#include "layernorm.h"

#include <math.h>

#include "cpu/cpu_par.h"

/* Row mean and biased variance in double, two-pass. Four interleaved partial sums break the add latency chain
 * (and let the compiler vectorise); their order is fixed, so results stay deterministic. */
static void row_stats(const float *x, int64_t D, double *mu_out, double *var_out)
{
    double s[4] = {0, 0, 0, 0}, v[4] = {0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 4 <= D; j += 4)
        for (int l = 0; l < 4; l++) s[l] += x[j + l];
    for (; j < D; j++) s[0] += x[j];
    double mu = ((s[0] + s[1]) + (s[2] + s[3])) / (double)D;
    for (j = 0; j + 4 <= D; j += 4)
        for (int l = 0; l < 4; l++) { double t = x[j + l] - mu; v[l] += t * t; }
    for (; j < D; j++) { double t = x[j] - mu; v[0] += t * t; }
    *mu_out = mu;
    *var_out = ((v[0] + v[1]) + (v[2] + v[3])) / (double)D;
}

static ms_status check_args(const char *who, const float *x, const float *w, int64_t a, int64_t b, int64_t c)
{
    MS_FAIL_IF(a < 0 || b < 0 || c < 0, MS_EINVAL, "%s: negative size", who);
    MS_FAIL_IF((a * b * c > 0) && (!x || !w), MS_EINVAL, "%s: NULL input or weight", who);
    return MS_OK;
}

/* One row: statistics of xr, then yr. Shared by layernorm and add_layernorm, so both round alike. */
static void ln_row(float *yr, float *mean, float *rstd, const float *xr, const float *w, const float *b, int64_t D,
                   float eps)
{
    double mu, var;
    row_stats(xr, D, &mu, &var);
    double rs = 1.0 / sqrt(var + (double)eps);
    float muf = (float)mu, rsf = (float)rs;
    for (int64_t j = 0; j < D; j++) yr[j] = (xr[j] - muf) * rsf * w[j] + (b ? b[j] : 0.f);
    if (mean) *mean = muf;
    if (rstd) *rstd = rsf;
}

ms_status ms_layernorm_forward_cpu(ms_device *dev, float *y, float *mean, float *rstd, const float *x, const float *w,
                                   const float *b, int64_t N, int64_t D, float eps)
{
    MS_TRY(check_args("layernorm_forward", x, w, N, D, 1));
    MS_FAIL_IF(N > 0 && D == 0, MS_EINVAL, "layernorm_forward: D = 0");
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (N * D >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < N; i++)
        ln_row(y + i * D, mean ? mean + i : NULL, rstd ? rstd + i : NULL, x + i * D, w, b, D, eps);
    return MS_OK;
}

/* The row's sum is written first and read back by ln_row, so s and y are those of add then layernorm. */
ms_status ms_add_layernorm_forward_cpu(ms_device *dev, float *s, float *y, float *mean, float *rstd, const float *x,
                                       const float *r, const float *w, const float *b, int64_t N, int64_t D,
                                       float eps)
{
    MS_TRY(check_args("add_layernorm_forward", x, w, N, D, 1));
    MS_FAIL_IF(N > 0 && D == 0, MS_EINVAL, "add_layernorm_forward: D = 0");
    MS_FAIL_IF(N > 0 && (!r || !s || !y), MS_EINVAL, "add_layernorm_forward: NULL residual or output");
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (N * D >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < N; i++) {
        const float *xr = x + i * D, *rr = r + i * D;
        float *sr = s + i * D;
        for (int64_t j = 0; j < D; j++) sr[j] = xr[j] + rr[j];
        ln_row(y + i * D, mean ? mean + i : NULL, rstd ? rstd + i : NULL, sr, w, b, D, eps);
    }
    return MS_OK;
}

ms_status ms_layernorm_backward_cpu(ms_device *dev, float *dx, float *dw, float *db, const float *dy, const float *x,
                                    const float *w, const float *mean, const float *rstd, int64_t N, int64_t D)
{
    MS_TRY(check_args("layernorm_backward", x, w, N, D, 1));
    MS_FAIL_IF(N * D > 0 && (!dy || !mean || !rstd), MS_EINVAL, "layernorm_backward: NULL dy, mean or rstd");
    int nt = ms_cpu_threads(dev);
    if (dx) {
#pragma omp parallel for num_threads(nt) schedule(static) if (N * D >= MS_CPU_PAR_MIN)
        for (int64_t i = 0; i < N; i++) {
            const float *xr = x + i * D, *gr = dy + i * D;
            float *dr = dx + i * D;
            float mu = mean[i], rs = rstd[i];
            double sg4[4] = {0, 0, 0, 0}, sgx4[4] = {0, 0, 0, 0};
            int64_t j = 0;
            for (; j + 4 <= D; j += 4)
                for (int l = 0; l < 4; l++) {
                    float g = gr[j + l] * w[j + l], xh = (xr[j + l] - mu) * rs;
                    sg4[l] += g;
                    sgx4[l] += (double)g * xh;
                }
            for (; j < D; j++) {
                float g = gr[j] * w[j], xh = (xr[j] - mu) * rs;
                sg4[0] += g;
                sgx4[0] += (double)g * xh;
            }
            double sg = (sg4[0] + sg4[1]) + (sg4[2] + sg4[3]), sgx = (sgx4[0] + sgx4[1]) + (sgx4[2] + sgx4[3]);
            float mg = (float)(sg / (double)D), mgx = (float)(sgx / (double)D);
            for (j = 0; j < D; j++) {
                float g = gr[j] * w[j], xh = (xr[j] - mu) * rs;
                dr[j] += rs * (g - mg - xh * mgx);
            }
        }
    }
    if ((dw || db) && D > 0) {
        int64_t bw = ms_cpu_colblock(D, nt), nblk = (D + bw - 1) / bw;
#pragma omp parallel for num_threads(nt) schedule(static) if (N * D >= MS_CPU_PAR_MIN)
        for (int64_t blk = 0; blk < nblk; blk++) {
            double aw[MS_CPU_COLBLOCK_MAX] = {0}, ab[MS_CPU_COLBLOCK_MAX] = {0};
            int64_t j0 = blk * bw, j1 = j0 + bw < D ? j0 + bw : D;
            for (int64_t i = 0; i < N; i++) {
                const float *xr = x + i * D, *gr = dy + i * D;
                float mu = mean[i], rs = rstd[i];
                for (int64_t j = j0; j < j1; j++) {
                    aw[j - j0] += (double)gr[j] * ((xr[j] - mu) * rs);
                    ab[j - j0] += gr[j];
                }
            }
            for (int64_t j = j0; j < j1; j++) {
                if (dw) dw[j] += (float)aw[j - j0];
                if (db) db[j] += (float)ab[j - j0];
            }
        }
    }
    return MS_OK;
}

/* LN2d works on pixel blocks of one image so the channel loop reads contiguous rows of HW. */
#define LN2D_PB 64

ms_status ms_layernorm2d_forward_cpu(ms_device *dev, float *y, float *mean, float *rstd, const float *x,
                                     const float *w, const float *b, int64_t B, int64_t C, int64_t HW, float eps)
{
    MS_TRY(check_args("layernorm2d_forward", x, w, B, C, HW));
    MS_FAIL_IF(B * HW > 0 && C == 0, MS_EINVAL, "layernorm2d_forward: C = 0");
    int nt = ms_cpu_threads(dev);
    int64_t npb = (HW + LN2D_PB - 1) / LN2D_PB, ntask = B * npb;
#pragma omp parallel for num_threads(nt) schedule(static) if (B * C * HW >= MS_CPU_PAR_MIN)
    for (int64_t t = 0; t < ntask; t++) {
        int64_t bi = t / npb, p0 = (t % npb) * LN2D_PB, p1 = p0 + LN2D_PB < HW ? p0 + LN2D_PB : HW, np = p1 - p0;
        const float *xb = x + bi * C * HW;
        float *yb = y + bi * C * HW;
        double s[LN2D_PB] = {0}, v[LN2D_PB] = {0};
        float muf[LN2D_PB], rsf[LN2D_PB];
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < np; p++) s[p] += xb[c * HW + p0 + p];
        for (int64_t p = 0; p < np; p++) s[p] /= (double)C;
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < np; p++) { double d = xb[c * HW + p0 + p] - s[p]; v[p] += d * d; }
        for (int64_t p = 0; p < np; p++) {
            muf[p] = (float)s[p];
            rsf[p] = (float)(1.0 / sqrt(v[p] / (double)C + (double)eps));
            if (mean) mean[bi * HW + p0 + p] = muf[p];
            if (rstd) rstd[bi * HW + p0 + p] = rsf[p];
        }
        for (int64_t c = 0; c < C; c++) {
            float wc = w[c], bc = b ? b[c] : 0.f;
            for (int64_t p = 0; p < np; p++) {
                int64_t o = c * HW + p0 + p;
                yb[o] = (xb[o] - muf[p]) * rsf[p] * wc + bc;
            }
        }
    }
    return MS_OK;
}

ms_status ms_layernorm2d_backward_cpu(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                      const float *x, const float *w, const float *mean, const float *rstd, int64_t B,
                                      int64_t C, int64_t HW)
{
    MS_TRY(check_args("layernorm2d_backward", x, w, B, C, HW));
    MS_FAIL_IF(B * C * HW > 0 && (!dy || !mean || !rstd), MS_EINVAL, "layernorm2d_backward: NULL dy, mean or rstd");
    int nt = ms_cpu_threads(dev);
    if (dx && C > 0) {
        int64_t npb = (HW + LN2D_PB - 1) / LN2D_PB, ntask = B * npb;
#pragma omp parallel for num_threads(nt) schedule(static) if (B * C * HW >= MS_CPU_PAR_MIN)
        for (int64_t t = 0; t < ntask; t++) {
            int64_t bi = t / npb, p0 = (t % npb) * LN2D_PB, p1 = p0 + LN2D_PB < HW ? p0 + LN2D_PB : HW, np = p1 - p0;
            const float *xb = x + bi * C * HW, *gb = dy + bi * C * HW;
            const float *mu = mean + bi * HW + p0, *rs = rstd + bi * HW + p0;
            float *db_ = dx + bi * C * HW;
            double sg[LN2D_PB] = {0}, sgx[LN2D_PB] = {0};
            float mg[LN2D_PB], mgx[LN2D_PB];
            for (int64_t c = 0; c < C; c++)
                for (int64_t p = 0; p < np; p++) {
                    int64_t o = c * HW + p0 + p;
                    float g = gb[o] * w[c], xh = (xb[o] - mu[p]) * rs[p];
                    sg[p] += g;
                    sgx[p] += (double)g * xh;
                }
            for (int64_t p = 0; p < np; p++) { mg[p] = (float)(sg[p] / (double)C); mgx[p] = (float)(sgx[p] / (double)C); }
            for (int64_t c = 0; c < C; c++)
                for (int64_t p = 0; p < np; p++) {
                    int64_t o = c * HW + p0 + p;
                    float g = gb[o] * w[c], xh = (xb[o] - mu[p]) * rs[p];
                    db_[o] += rs[p] * (g - mg[p] - xh * mgx[p]);
                }
        }
    }
    if (dw || db) { /* one channel per iteration: Σ over images then pixels, in order */
#pragma omp parallel for num_threads(nt) schedule(static) if (B * C * HW >= MS_CPU_PAR_MIN)
        for (int64_t c = 0; c < C; c++) {
            double aw = 0, ab = 0;
            for (int64_t bi = 0; bi < B; bi++) {
                const float *xr = x + (bi * C + c) * HW, *gr = dy + (bi * C + c) * HW;
                const float *mu = mean + bi * HW, *rs = rstd + bi * HW;
                for (int64_t p = 0; p < HW; p++) {
                    aw += (double)gr[p] * ((xr[p] - mu[p]) * rs[p]);
                    ab += gr[p];
                }
            }
            if (dw) dw[c] += (float)aw;
            if (db) db[c] += (float)ab;
        }
    }
    return MS_OK;
}
