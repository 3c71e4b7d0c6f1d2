/* tests/kernels/ref.c — the double-precision references of the op table (op_cases.h), written again from the
 * formulas (not from the kernels), and central finite differences (ref.h). */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "op_cases.h"

double ms_fd_check(ms_loss_fn f, void *ctx, double *x, int64_t n, const float *grad, int max_probe, double h,
                   ms_rng *r, int64_t *worst_index)
{
    double worst = 0, gmax = 0;
    for (int64_t i = 0; i < n; i++) if (fabs(grad[i]) > gmax) gmax = fabs(grad[i]);
    int probes = n < max_probe ? (int)n : max_probe;
    for (int p = 0; p < probes; p++) {
        int64_t i = n <= max_probe ? p : (int64_t)ms_rng_below(r, (uint64_t)n);
        double x0 = x[i];
        x[i] = x0 + h;
        double lp = f(ctx, x);
        x[i] = x0 - h;
        double lm = f(ctx, x);
        x[i] = x0;
        double fd = (lp - lm) / (2 * h);
        double err = fabs(fd - grad[i]) / (fabs(fd) + 1e-3 * gmax + 1e-12);
        if (!(err <= worst)) { worst = err; if (worst_index) *worst_index = i; }
    }
    return worst;
}

double ms_fd_directional(ms_loss_fn f, void *ctx, double *x, int64_t n, const float *grad, double h, ms_rng *r,
                         int n_dirs)
{
    double worst = 0;
    double *x0 = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    signed char *v = malloc((size_t)(n > 0 ? n : 1));
    if (!x0 || !v) { worst = -1; goto leave; }
    memcpy(x0, x, (size_t)n * sizeof(double));
    for (int d = 0; d < n_dirs; d++) {
        double a = 0, norm = 0;
        for (int64_t i = 0; i < n; i++) {
            v[i] = (ms_rng_u64(r) >> 63) ? 1 : -1;
            a += (double)grad[i] * v[i];
            norm += (double)grad[i] * grad[i];
        }
        for (int64_t i = 0; i < n; i++) x[i] = x0[i] + h * v[i];
        double lp = f(ctx, x);
        for (int64_t i = 0; i < n; i++) x[i] = x0[i] - h * v[i];
        double lm = f(ctx, x);
        memcpy(x, x0, (size_t)n * sizeof(double));
        double err = fabs((lp - lm) / (2 * h) - a) / (sqrt(norm) + 1e-12);
        if (!(err <= worst)) worst = err;
    }
leave:
    free(x0);
    free(v);
    return worst;
}

/* ---- op references ------------------------------------------------------------------------------------------ */

/* matmul: in[0] = A storage, in[1] = B storage; out = C storage, preset to out0 (beta term, untouched padding) */
static double mm_a(const ms_matmul_desc *d, const double *a, int64_t b, int64_t i, int64_t k)
{ return d->trans_a ? a[b * d->stride_a + k * d->lda + i] : a[b * d->stride_a + i * d->lda + k]; }

static double mm_b(const ms_matmul_desc *d, const double *x, int64_t b, int64_t k, int64_t j)
{ return d->trans_b ? x[b * d->stride_b + j * d->ldb + k] : x[b * d->stride_b + k * d->ldb + j]; }

void ref_matmul(const opcase *c, const double *const *in, double *out)
{
    const ms_matmul_desc *d = &c->md;
    for (int64_t i = 0; i < c->out_n; i++) out[i] = c->out0[i];
    for (int64_t b = 0; b < d->batch; b++)
        for (int64_t i = 0; i < d->m; i++)
            for (int64_t j = 0; j < d->n; j++) {
                double acc = 0;
                for (int64_t k = 0; k < d->k; k++) acc += mm_a(d, in[0], b, i, k) * mm_b(d, in[1], b, k, j);
                int64_t o = b * d->stride_c + i * d->ldc + j;
                out[o] = d->alpha * acc + d->beta * (double)c->out0[o];
            }
}

/* linear: in x (M,K), w (N,K), [b (N)]; d = {M, K, N} */
void ref_linear(const opcase *c, const double *const *in, double *out)
{
    int64_t M = c->d[0], K = c->d[1], N = c->d[2];
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = c->n_in > 2 ? in[2][j] : 0;
            for (int64_t k = 0; k < K; k++) acc += in[0][i * K + k] * in[1][j * K + k];
            out[i * N + j] = acc;
        }
}

/* layernorm: x (N,D), w, b (D); d = {N, D}; f[0] = eps */
void ref_layernorm(const opcase *c, const double *const *in, double *out)
{
    int64_t N = c->d[0], D = c->d[1];
    for (int64_t i = 0; i < N; i++) {
        const double *x = in[0] + i * D;
        double mu = 0, var = 0;
        for (int64_t j = 0; j < D; j++) mu += x[j];
        mu /= D;
        for (int64_t j = 0; j < D; j++) var += (x[j] - mu) * (x[j] - mu);
        var /= D;
        double rs = 1 / sqrt(var + c->f[0]);
        for (int64_t j = 0; j < D; j++) out[i * D + j] = (x[j] - mu) * rs * in[1][j] + in[2][j];
    }
}

/* layernorm2d: x (B,C,HW), w, b (C); d = {B, C, HW} */
void ref_layernorm2d(const opcase *c, const double *const *in, double *out)
{
    int64_t B = c->d[0], C = c->d[1], HW = c->d[2];
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < HW; p++) {
            const double *x = in[0] + b * C * HW + p;
            double mu = 0, var = 0;
            for (int64_t k = 0; k < C; k++) mu += x[k * HW];
            mu /= C;
            for (int64_t k = 0; k < C; k++) var += (x[k * HW] - mu) * (x[k * HW] - mu);
            var /= C;
            double rs = 1 / sqrt(var + c->f[0]);
            for (int64_t k = 0; k < C; k++) out[b * C * HW + k * HW + p] = (x[k * HW] - mu) * rs * in[1][k] + in[2][k];
        }
}

/* BatchNorm2d: d = {B, C, HW}, f = {eps}, op = training; inference takes the running stats from the second halves
 * of the host aux0 (mean) / aux1 (var) (op_cases.c, fwd_bn) */
void ref_batchnorm(const opcase *c, const double *const *in, double *out)
{
    int64_t B = c->d[0], C = c->d[1], HW = c->d[2], n = B * HW;
    const double *x = in[0], *g = in[1], *bt = in[2];
    for (int64_t ch = 0; ch < C; ch++) {
        double mu = 0, var = 0;
        if (c->op) {
            for (int64_t b = 0; b < B; b++) for (int64_t i = 0; i < HW; i++) mu += x[(b * C + ch) * HW + i];
            mu /= (double)n;
            for (int64_t b = 0; b < B; b++)
                for (int64_t i = 0; i < HW; i++) { double t = x[(b * C + ch) * HW + i] - mu; var += t * t; }
            var /= (double)n;
        } else {
            mu = c->aux0[C + ch];
            var = c->aux1[C + ch];
        }
        double rs = 1.0 / sqrt(var + (double)c->f[0]);
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < HW; i++) {
                int64_t j = (b * C + ch) * HW + i;
                out[j] = (x[j] - mu) * rs * g[ch] + bt[ch];
            }
    }
}

void ref_gelu(const opcase *c, const double *const *in, double *out)
{ for (int64_t i = 0; i < c->out_n; i++) out[i] = 0.5 * in[0][i] * (1 + erf(in[0][i] / sqrt(2.0))); }

void ref_relu(const opcase *c, const double *const *in, double *out)
{ for (int64_t i = 0; i < c->out_n; i++) out[i] = in[0][i] > 0 ? in[0][i] : 0; }

/* softmax: d = {rows, cols} */
void ref_softmax(const opcase *c, const double *const *in, double *out)
{
    int64_t R = c->d[0], C = c->d[1];
    for (int64_t i = 0; i < R; i++) {
        double s = 0;
        for (int64_t j = 0; j < C; j++) s += exp(in[0][i * C + j]);
        for (int64_t j = 0; j < C; j++) out[i * C + j] = exp(in[0][i * C + j]) / s;
    }
}

void ref_add(const opcase *c, const double *const *in, double *out)
{ for (int64_t i = 0; i < c->out_n; i++) out[i] = in[0][i] + in[1][i]; }

/* add_bcast: x (outer, n), p (n); d = {outer, n} */
void ref_add_bcast(const opcase *c, const double *const *in, double *out)
{
    for (int64_t o = 0; o < c->d[0]; o++)
        for (int64_t i = 0; i < c->d[1]; i++) out[o * c->d[1] + i] = in[0][o * c->d[1] + i] + in[1][i];
}

void ref_scale(const opcase *c, const double *const *in, double *out)
{ for (int64_t i = 0; i < c->out_n; i++) out[i] = (double)c->f[0] * in[0][i]; }

/* transpose: x (A,R,C) → y (A,C,R); d = {A, R, C} */
void ref_transpose(const opcase *c, const double *const *in, double *out)
{
    int64_t A = c->d[0], R = c->d[1], C = c->d[2];
    for (int64_t a = 0; a < A; a++)
        for (int64_t r = 0; r < R; r++)
            for (int64_t k = 0; k < C; k++) out[(a * C + k) * R + r] = in[0][(a * R + r) * C + k];
}

/* gather_rows: x (rows, D), idx (n_idx) with repeats and −1; d = {rows, D, n_idx} */
void ref_gather(const opcase *c, const double *const *in, double *out)
{
    int64_t D = c->d[1];
    for (int64_t i = 0; i < c->d[2]; i++)
        for (int64_t j = 0; j < D; j++) out[i * D + j] = c->lab[i] < 0 ? 0 : in[0][c->lab[i] * D + j];
}

/* reduce_sum: x (A,R,C) → y (A,C); d = {A, R, C} */
void ref_reduce(const opcase *c, const double *const *in, double *out)
{
    int64_t A = c->d[0], R = c->d[1], C = c->d[2];
    for (int64_t a = 0; a < A; a++)
        for (int64_t k = 0; k < C; k++) {
            double s = 0;
            for (int64_t r = 0; r < R; r++) s += in[0][(a * R + r) * C + k];
            out[a * C + k] = s;
        }
}

/* mse: pred, target (rows, cols) both differentiable in the reference, only pred has a gradient output;
 * aux0 = row weights or NULL; d = {rows, cols}. The op's backward fills g[0]; the target "gradient" is left
 * out by giving the case n_in = 1 and keeping target in in[1] only for the forward. */
void ref_mse(const opcase *c, const double *const *in, double *out)
{
    int64_t R = c->d[0], C = c->d[1];
    double s = 0, ws = 0;
    for (int64_t r = 0; r < R; r++) {
        double w = c->aux0 ? c->aux0[r] : 1, e = 0;
        for (int64_t k = 0; k < C; k++) { double t = in[0][r * C + k] - c->aux1[r * C + k]; e += t * t; }
        s += w * e / C;
        ws += w;
    }
    out[0] = ws != 0 ? s / ws : 0;
}

/* dice: logits (B,C,P), labels (B,P) in [-1, C); d = {B, C, P}; f[0] = smooth */
void ref_dice(const opcase *c, const double *const *in, double *out)
{
    int64_t B = c->d[0], C = c->d[1], P = c->d[2];
    double s = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t k = 0; k < C; k++) {
            double I = 0, sp = 0, sy = 0;
            for (int64_t p = 0; p < P; p++) {
                double pr = 1 / (1 + exp(-in[0][(b * C + k) * P + p])), y = c->lab[b * P + p] == k;
                I += pr * y; sp += pr * pr; sy += y * y;
            }
            s += 1 - (2 * I + c->f[0]) / (sp + sy + c->f[0]);
        }
    out[0] = s / (double)(B * C);
}

/* cross-entropy: logits (B,C,P), labels (B,P), −1 ignored */
void ref_ce(const opcase *c, const double *const *in, double *out)
{
    int64_t B = c->d[0], C = c->d[1], P = c->d[2], n = 0;
    double s = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < P; p++) {
            int32_t t = c->lab[b * P + p];
            if (t < 0) continue;
            double se = 0;
            for (int64_t k = 0; k < C; k++) se += exp(in[0][(b * C + k) * P + p]);
            s += log(se) - in[0][(b * C + t) * P + p];
            n++;
        }
    out[0] = n ? s / (double)n : 0;
}

static double cubic_w(double t, int k)
{
    const double A = -0.75;
    double x = k == 0 ? t + 1 : k == 1 ? t : k == 2 ? 1 - t : 2 - t;
    return x <= 1 ? ((A + 2) * x - (A + 3)) * x * x + 1 : ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
}

/* Tap list of one output coordinate (torch's formula, written out again in double). */
static int taps(int cubic, int64_t in, int64_t out, int64_t d, int64_t *idx, double *w)
{
    double s = (double)in / (double)out * (d + 0.5) - 0.5;
    if (!cubic) {
        if (s < 0) s = 0;
        int64_t i0 = (int64_t)floor(s);
        if (i0 > in - 1) i0 = in - 1;
        idx[0] = i0; idx[1] = i0 + 1 < in ? i0 + 1 : in - 1;
        w[0] = 1 - (s - i0); w[1] = s - i0;
        return 2;
    }
    double f = floor(s);
    for (int k = 0; k < 4; k++) {
        int64_t i = (int64_t)f - 1 + k;
        idx[k] = i < 0 ? 0 : i > in - 1 ? in - 1 : i;
        w[k] = cubic_w(s - f, k);
    }
    return 4;
}

void ref_lin(const opcase *c, const double *const *in, double *y)
{
    const int64_t *a = c->d;
    const double *x = in[0], *w = c->n_in > 1 ? in[1] : NULL, *b = c->n_in > 2 ? in[2] : NULL;
    memset(y, 0, (size_t)c->out_n * sizeof(double));
    switch (c->op) {
    case OP_PART: case OP_UNPART: { /* B H W C ws */
        int64_t B = a[0], H = a[1], W = a[2], C = a[3], ws = a[4], nh = (H + ws - 1) / ws, nw = (W + ws - 1) / ws;
        for (int64_t bb = 0; bb < B; bb++) for (int64_t wy = 0; wy < nh; wy++) for (int64_t wx = 0; wx < nw; wx++)
            for (int64_t r = 0; r < ws; r++) for (int64_t cc = 0; cc < ws; cc++) {
                int64_t yy = wy * ws + r, xx = wx * ws + cc;
                int64_t win = (((bb * nh + wy) * nw + wx) * ws + r) * ws + cc;
                if (yy >= H || xx >= W) continue;
                int64_t img = (bb * H + yy) * W + xx;
                for (int64_t k = 0; k < C; k++) {
                    if (c->op == OP_PART) y[win * C + k] = x[img * C + k];
                    else y[img * C + k] = x[win * C + k];
                }
            }
        break;
    }
    case OP_RELPOS: { /* Lin C Lout */
        for (int64_t d = 0; d < a[2]; d++) {
            int64_t idx[2]; double wt[2];
            taps(0, a[0], a[2], d, idx, wt);
            for (int64_t k = 0; k < a[1]; k++)
                y[d * a[1] + k] = wt[0] * x[idx[0] * a[1] + k] + wt[1] * x[idx[1] * a[1] + k];
        }
        break;
    }
    case OP_BILINEAR: case OP_BICUBIC: { /* NC Hin Win Hout Wout */
        int cub = c->op == OP_BICUBIC;
        for (int64_t p = 0; p < a[0]; p++) for (int64_t oy = 0; oy < a[3]; oy++) for (int64_t ox = 0; ox < a[4]; ox++) {
            int64_t iy[4], ix[4]; double wy[4], wx[4];
            int T = taps(cub, a[1], a[3], oy, iy, wy);
            taps(cub, a[2], a[4], ox, ix, wx);
            double s = 0;
            for (int u = 0; u < T; u++)
                for (int v = 0; v < T; v++) s += wy[u] * wx[v] * x[(p * a[1] + iy[u]) * a[2] + ix[v]];
            y[(p * a[3] + oy) * a[4] + ox] = s;
        }
        break;
    }
    case OP_PATCH: { /* B Cin H W Cout k nhwc */
        int64_t B = a[0], Ci = a[1], H = a[2], W = a[3], Co = a[4], k = a[5], Ho = H / k, Wo = W / k;
        for (int64_t bb = 0; bb < B; bb++) for (int64_t o = 0; o < Co; o++) for (int64_t py = 0; py < Ho; py++)
            for (int64_t px = 0; px < Wo; px++) {
                double s = b ? b[o] : 0;
                for (int64_t ci = 0; ci < Ci; ci++)
                    for (int64_t ky = 0; ky < k; ky++)
                        for (int64_t kx = 0; kx < k; kx++)
                    s += w[((o * Ci + ci) * k + ky) * k + kx] * x[((bb * Ci + ci) * H + py * k + ky) * W + px * k + kx];
                if (a[6]) y[((bb * Ho + py) * Wo + px) * Co + o] = s;
                else y[((bb * Co + o) * Ho + py) * Wo + px] = s;
            }
        break;
    }
    case OP_CONV: { /* B Cin H W Cout ks pad stride */
        int64_t B = a[0], Ci = a[1], H = a[2], W = a[3], Co = a[4], ks = a[5], pad = a[6], st = a[7];
        int64_t Ho = (H + 2 * pad - ks) / st + 1, Wo = (W + 2 * pad - ks) / st + 1;
        for (int64_t bb = 0; bb < B; bb++) for (int64_t o = 0; o < Co; o++) for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++) {
                double s = b ? b[o] : 0;
                for (int64_t ci = 0; ci < Ci; ci++)
                    for (int64_t ky = 0; ky < ks; ky++)
                        for (int64_t kx = 0; kx < ks; kx++) {
                    int64_t iy = oy * st + ky - pad, ix = ox * st + kx - pad;
                    if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                    s += w[((o * Ci + ci) * ks + ky) * ks + kx] * x[((bb * Ci + ci) * H + iy) * W + ix];
                }
                y[((bb * Co + o) * Ho + oy) * Wo + ox] = s;
            }
        break;
    }
    case OP_DW: { /* B C H W ks pad stride */
        int64_t B = a[0], C = a[1], H = a[2], W = a[3], ks = a[4], pad = a[5], st = a[6];
        int64_t Ho = (H + 2 * pad - ks) / st + 1, Wo = (W + 2 * pad - ks) / st + 1;
        for (int64_t bb = 0; bb < B; bb++) for (int64_t ch = 0; ch < C; ch++) for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++) {
                double s = b ? b[ch] : 0;
                for (int64_t ky = 0; ky < ks; ky++)
                    for (int64_t kx = 0; kx < ks; kx++) {
                        int64_t iy = oy * st + ky - pad, ix = ox * st + kx - pad;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                        s += w[(ch * ks + ky) * ks + kx] * x[((bb * C + ch) * H + iy) * W + ix];
                    }
                y[((bb * C + ch) * Ho + oy) * Wo + ox] = s;
            }
        break;
    }
    case OP_CT: { /* B Cin H W Cout */
        int64_t B = a[0], Ci = a[1], H = a[2], W = a[3], Co = a[4];
        for (int64_t bb = 0; bb < B; bb++) for (int64_t o = 0; o < Co; o++) for (int64_t i = 0; i < 2 * H; i++)
            for (int64_t j = 0; j < 2 * W; j++) {
                double s = b ? b[o] : 0;
                for (int64_t ci = 0; ci < Ci; ci++)
                    s += x[((bb * Ci + ci) * H + i / 2) * W + j / 2] * w[((ci * Co + o) * 2 + i % 2) * 2 + j % 2];
                y[((bb * Co + o) * 2 * H + i) * 2 * W + j] = s;
            }
        break;
    }
    }
}
