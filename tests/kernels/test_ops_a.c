/* tests/kernels/test_ops_a.c — the first half of the CPU op library against independent references.
 *
 * Table-driven: every row is one op with odd shapes (5·4·3-style, 72, 37, 97...) chosen large enough that the
 * OpenMP paths run. For each row, with fresh random inputs (seed printed, MS_TEST_SEED replays):
 *   forward   vs a naive double-precision loop;        fp32 tolerance max-rel 1e-4 (ms_compare floor 1e-3·max),
 *             5e-4 for the GEMM rows (GEMM_TOL)
 *   backward  vs central finite differences (h = 1e-3) of the double reference L(x) = Σ g ⊙ f(x): 32 probed
 *             coordinates per input, plus 3 random ±1 directions over all coordinates (ms_fd_directional, which
 *             sees an error the probes miss). Tolerance 2e-3: the float gradient sums up to ~10⁴ terms (error
 *             ≲ √n·2⁻²⁴·max ≈ 1e-5·max) against |fd| + 1e-3·max|grad| (ref.c); the h² truncation is ~1e-6.
 *   accumulation: backward onto random non-zero gradients gives r + g, twice gives r + 2g (rel 1e-4: a
 *             broadcast gradient adds its batch terms onto r one by one, a different float order; a missing
 *             accumulation errs by O(1))
 *   NULL gradients: each gradient alone equals the all-gradients result; all NULL is a no-op returning OK
 *   determinism: two runs with the same thread count (2, or MS_TEST_THREADS) give identical bits
 * Then AdamW (5 steps vs torch's formula in double), sumsq, clip_grad_norm, in-place forwards, error paths.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ops.h"
#include "ref.h"

#define MAXIN 4
#define FWD_TOL 1e-4
/* GEMM rows sum K = 72 products into values up to ~5: the float error grows like √K·2⁻²⁴·|partial sums|
 * (worst seen 1.1e-4 of the ms_compare floor over 18k outputs), so they get 5e-4 */
#define GEMM_TOL 5e-4
#define BWD_TOL 2e-3
#define ACC_TOL 1e-4
#define FD_H 1e-3
#define FD_PROBES 32

typedef struct opcase opcase;
typedef void (*ref_fn)(const opcase *c, const double *const *in, double *out);
typedef ms_status (*fwd_fn)(ms_device *dev, opcase *c);
typedef ms_status (*bwd_fn)(ms_device *dev, opcase *c, float *const *g);
typedef void (*init_fn)(opcase *c, ms_rng *r);

struct opcase {
    const char *name;
    int n_in;              /* differentiable inputs */
    int64_t in_n[MAXIN];
    float lo[MAXIN], hi[MAXIN];
    int64_t out_n;
    int64_t d[6];          /* sizes, op-specific */
    float f[2];            /* scalars, op-specific */
    double fwd_tol;        /* 0 = FWD_TOL */
    ms_matmul_desc md;
    init_fn init;
    ref_fn ref;
    fwd_fn fwd;
    bwd_fn bwd;
    /* run-time buffers */
    float *in[MAXIN];
    double *ind[MAXIN];
    float *out, *out0, *gout;
    float *aux0, *aux1;    /* saved tensors (LN mean/rstd) or per-row weights (mse) */
    int32_t *lab;          /* labels / indices */
};

/* ---- references (double) and op wrappers ---------------------------------------------------------------- */

/* matmul: in[0] = A storage, in[1] = B storage; out = C storage, preset to out0 (beta term, untouched padding) */
static double mm_a(const ms_matmul_desc *d, const double *a, int64_t b, int64_t i, int64_t k)
{ return d->trans_a ? a[b * d->stride_a + k * d->lda + i] : a[b * d->stride_a + i * d->lda + k]; }
static double mm_b(const ms_matmul_desc *d, const double *x, int64_t b, int64_t k, int64_t j)
{ return d->trans_b ? x[b * d->stride_b + j * d->ldb + k] : x[b * d->stride_b + k * d->ldb + j]; }
static void ref_matmul(const opcase *c, const double *const *in, double *out)
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
static ms_status fwd_matmul(ms_device *dev, opcase *c) { return ms_matmul_forward_cpu(dev, c->out, c->in[0], c->in[1], &c->md); }
static ms_status bwd_matmul(ms_device *dev, opcase *c, float *const *g)
{ return ms_matmul_backward_cpu(dev, g[0], g[1], c->gout, c->in[0], c->in[1], &c->md); }

/* storage sizes for a descriptor (gap = extra elements between batch items) */
static void mm_setup(opcase *c, ms_matmul_desc d, int64_t gap, int bcast_a, int bcast_b)
{
    int64_t ra = d.trans_a ? d.k : d.m, rb = d.trans_b ? d.n : d.k;
    d.stride_a = bcast_a ? 0 : ra * d.lda + gap;
    d.stride_b = bcast_b ? 0 : rb * d.ldb + gap;
    d.stride_c = d.m * d.ldc + gap;
    c->in_n[0] = (d.batch - 1) * d.stride_a + ra * d.lda;
    c->in_n[1] = (d.batch - 1) * d.stride_b + rb * d.ldb;
    c->out_n = (d.batch - 1) * d.stride_c + d.m * d.ldc;
    c->md = d;
}

/* linear: in x (M,K), w (N,K), [b (N)]; d = {M, K, N} */
static void ref_linear(const opcase *c, const double *const *in, double *out)
{
    int64_t M = c->d[0], K = c->d[1], N = c->d[2];
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = c->n_in > 2 ? in[2][j] : 0;
            for (int64_t k = 0; k < K; k++) acc += in[0][i * K + k] * in[1][j * K + k];
            out[i * N + j] = acc;
        }
}
static ms_status fwd_linear(ms_device *dev, opcase *c)
{ return ms_linear_forward_cpu(dev, c->out, c->in[0], c->in[1], c->n_in > 2 ? c->in[2] : NULL, c->d[0], c->d[1], c->d[2]); }
static ms_status bwd_linear(ms_device *dev, opcase *c, float *const *g)
{ return ms_linear_backward_cpu(dev, g[0], g[1], c->n_in > 2 ? g[2] : NULL, c->gout, c->in[0], c->in[1], c->d[0], c->d[1], c->d[2]); }

/* layernorm: x (N,D), w, b (D); d = {N, D}; f[0] = eps */
static void ref_layernorm(const opcase *c, const double *const *in, double *out)
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
static ms_status fwd_layernorm(ms_device *dev, opcase *c)
{ return ms_layernorm_forward_cpu(dev, c->out, c->aux0, c->aux1, c->in[0], c->in[1], c->in[2], c->d[0], c->d[1], c->f[0]); }
static ms_status bwd_layernorm(ms_device *dev, opcase *c, float *const *g)
{ return ms_layernorm_backward_cpu(dev, g[0], g[1], g[2], c->gout, c->in[0], c->in[1], c->aux0, c->aux1, c->d[0], c->d[1]); }

/* layernorm2d: x (B,C,HW), w, b (C); d = {B, C, HW} */
static void ref_layernorm2d(const opcase *c, const double *const *in, double *out)
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
static ms_status fwd_layernorm2d(ms_device *dev, opcase *c)
{ return ms_layernorm2d_forward_cpu(dev, c->out, c->aux0, c->aux1, c->in[0], c->in[1], c->in[2], c->d[0], c->d[1], c->d[2], c->f[0]); }
static ms_status bwd_layernorm2d(ms_device *dev, opcase *c, float *const *g)
{ return ms_layernorm2d_backward_cpu(dev, g[0], g[1], g[2], c->gout, c->in[0], c->in[1], c->aux0, c->aux1, c->d[0], c->d[1], c->d[2]); }

static void ref_gelu(const opcase *c, const double *const *in, double *out)
{ for (int64_t i = 0; i < c->out_n; i++) out[i] = 0.5 * in[0][i] * (1 + erf(in[0][i] / sqrt(2.0))); }
static ms_status fwd_gelu(ms_device *dev, opcase *c) { return ms_gelu_forward_cpu(dev, c->out, c->in[0], c->out_n); }
static ms_status bwd_gelu(ms_device *dev, opcase *c, float *const *g) { return ms_gelu_backward_cpu(dev, g[0], c->gout, c->in[0], c->out_n); }

static void ref_relu(const opcase *c, const double *const *in, double *out)
{ for (int64_t i = 0; i < c->out_n; i++) out[i] = in[0][i] > 0 ? in[0][i] : 0; }
static ms_status fwd_relu(ms_device *dev, opcase *c) { return ms_relu_forward_cpu(dev, c->out, c->in[0], c->out_n); }
static ms_status bwd_relu(ms_device *dev, opcase *c, float *const *g) { return ms_relu_backward_cpu(dev, g[0], c->gout, c->in[0], c->out_n); }
/* keep inputs ≥ 0.05 away from the kink so the finite difference (h = 1e-3) never straddles it */
static void init_relu(opcase *c, ms_rng *r)
{
    (void)r;
    for (int64_t i = 0; i < c->in_n[0]; i++) c->in[0][i] += c->in[0][i] >= 0 ? 0.05f : -0.05f;
}

/* softmax: d = {rows, cols} */
static void ref_softmax(const opcase *c, const double *const *in, double *out)
{
    int64_t R = c->d[0], C = c->d[1];
    for (int64_t i = 0; i < R; i++) {
        double s = 0;
        for (int64_t j = 0; j < C; j++) s += exp(in[0][i * C + j]);
        for (int64_t j = 0; j < C; j++) out[i * C + j] = exp(in[0][i * C + j]) / s;
    }
}
static ms_status fwd_softmax(ms_device *dev, opcase *c) { return ms_softmax_forward_cpu(dev, c->out, c->in[0], c->d[0], c->d[1]); }
static ms_status bwd_softmax(ms_device *dev, opcase *c, float *const *g)
{ return ms_softmax_backward_cpu(dev, g[0], c->gout, c->out, c->d[0], c->d[1]); }

static void ref_add(const opcase *c, const double *const *in, double *out)
{ for (int64_t i = 0; i < c->out_n; i++) out[i] = in[0][i] + in[1][i]; }
static ms_status fwd_add(ms_device *dev, opcase *c) { return ms_add_forward_cpu(dev, c->out, c->in[0], c->in[1], c->out_n); }
static ms_status bwd_add(ms_device *dev, opcase *c, float *const *g) { return ms_add_backward_cpu(dev, g[0], g[1], c->gout, c->out_n); }

/* add_bcast: x (outer, n), p (n); d = {outer, n} */
static void ref_add_bcast(const opcase *c, const double *const *in, double *out)
{
    for (int64_t o = 0; o < c->d[0]; o++)
        for (int64_t i = 0; i < c->d[1]; i++) out[o * c->d[1] + i] = in[0][o * c->d[1] + i] + in[1][i];
}
static ms_status fwd_add_bcast(ms_device *dev, opcase *c) { return ms_add_bcast_forward_cpu(dev, c->out, c->in[0], c->in[1], c->d[0], c->d[1]); }
static ms_status bwd_add_bcast(ms_device *dev, opcase *c, float *const *g)
{ return ms_add_bcast_backward_cpu(dev, g[0], g[1], c->gout, c->d[0], c->d[1]); }

static void ref_scale(const opcase *c, const double *const *in, double *out)
{ for (int64_t i = 0; i < c->out_n; i++) out[i] = (double)c->f[0] * in[0][i]; }
static ms_status fwd_scale(ms_device *dev, opcase *c) { return ms_scale_forward_cpu(dev, c->out, c->in[0], c->f[0], c->out_n); }
static ms_status bwd_scale(ms_device *dev, opcase *c, float *const *g) { return ms_scale_backward_cpu(dev, g[0], c->gout, c->f[0], c->out_n); }

/* transpose: x (A,R,C) → y (A,C,R); d = {A, R, C} */
static void ref_transpose(const opcase *c, const double *const *in, double *out)
{
    int64_t A = c->d[0], R = c->d[1], C = c->d[2];
    for (int64_t a = 0; a < A; a++)
        for (int64_t r = 0; r < R; r++)
            for (int64_t k = 0; k < C; k++) out[(a * C + k) * R + r] = in[0][(a * R + r) * C + k];
}
static ms_status fwd_transpose(ms_device *dev, opcase *c) { return ms_transpose_forward_cpu(dev, c->out, c->in[0], c->d[0], c->d[1], c->d[2]); }
static ms_status bwd_transpose(ms_device *dev, opcase *c, float *const *g)
{ return ms_transpose_backward_cpu(dev, g[0], c->gout, c->d[0], c->d[1], c->d[2]); }

/* gather_rows: x (rows, D), idx (n_idx) with repeats and −1; d = {rows, D, n_idx} */
static void ref_gather(const opcase *c, const double *const *in, double *out)
{
    int64_t D = c->d[1];
    for (int64_t i = 0; i < c->d[2]; i++)
        for (int64_t j = 0; j < D; j++) out[i * D + j] = c->lab[i] < 0 ? 0 : in[0][c->lab[i] * D + j];
}
static void init_gather(opcase *c, ms_rng *r)
{
    for (int64_t i = 0; i < c->d[2]; i++)
        c->lab[i] = i % 7 == 3 ? -1 : (int32_t)ms_rng_below(r, (uint64_t)(c->d[0] * 2 / 3)); /* repeats, unused rows */
}
static ms_status fwd_gather(ms_device *dev, opcase *c) { return ms_gather_rows_forward_cpu(dev, c->out, c->in[0], c->lab, c->d[2], c->d[1]); }
static ms_status bwd_gather(ms_device *dev, opcase *c, float *const *g)
{ return ms_gather_rows_backward_cpu(dev, g[0], c->gout, c->lab, c->d[2], c->d[1], c->d[0]); }

/* reduce_sum: x (A,R,C) → y (A,C); d = {A, R, C} */
static void ref_reduce(const opcase *c, const double *const *in, double *out)
{
    int64_t A = c->d[0], R = c->d[1], C = c->d[2];
    for (int64_t a = 0; a < A; a++)
        for (int64_t k = 0; k < C; k++) {
            double s = 0;
            for (int64_t r = 0; r < R; r++) s += in[0][(a * R + r) * C + k];
            out[a * C + k] = s;
        }
}
static ms_status fwd_reduce(ms_device *dev, opcase *c) { return ms_reduce_sum_forward_cpu(dev, c->out, c->in[0], c->d[0], c->d[1], c->d[2]); }
static ms_status bwd_reduce(ms_device *dev, opcase *c, float *const *g)
{ return ms_reduce_sum_backward_cpu(dev, g[0], c->gout, c->d[0], c->d[1], c->d[2]); }

/* mse: pred, target (rows, cols) both differentiable in the reference, only pred has a gradient output;
 * aux0 = row weights or NULL; d = {rows, cols}. The op's backward fills g[0]; the target "gradient" is left
 * out by giving the case n_in = 1 and keeping target in in[1] only for the forward. */
static void ref_mse(const opcase *c, const double *const *in, double *out)
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
static void init_mse(opcase *c, ms_rng *r)
{
    for (int64_t i = 0; i < c->d[0] * c->d[1]; i++) c->aux1[i] = ms_rng_range(r, -1, 1);
    if (c->aux0)
        for (int64_t i = 0; i < c->d[0]; i++) c->aux0[i] = i % 4 == 1 ? 0.f : ms_rng_range(r, 0.5f, 1.5f);
}
static ms_status fwd_mse(ms_device *dev, opcase *c) { return ms_mse_loss_forward_cpu(dev, c->out, c->in[0], c->aux1, c->aux0, c->d[0], c->d[1]); }
static ms_status bwd_mse(ms_device *dev, opcase *c, float *const *g)
{ return ms_mse_loss_backward_cpu(dev, g[0], c->gout[0], c->in[0], c->aux1, c->aux0, c->d[0], c->d[1]); }

/* dice: logits (B,C,P), labels (B,P) in [-1, C); d = {B, C, P}; f[0] = smooth */
static void ref_dice(const opcase *c, const double *const *in, double *out)
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
static void init_labels(opcase *c, ms_rng *r)
{
    int64_t C = c->d[1];
    for (int64_t i = 0; i < c->d[0] * c->d[2]; i++)
        c->lab[i] = ms_rng_below(r, 10) == 0 ? -1 : (int32_t)ms_rng_below(r, (uint64_t)C);
}
static ms_status fwd_dice(ms_device *dev, opcase *c) { return ms_dice_loss_forward_cpu(dev, c->out, c->in[0], c->lab, c->d[0], c->d[1], c->d[2], c->f[0]); }
static ms_status bwd_dice(ms_device *dev, opcase *c, float *const *g)
{ return ms_dice_loss_backward_cpu(dev, g[0], c->gout[0], c->in[0], c->lab, c->d[0], c->d[1], c->d[2], c->f[0]); }

/* cross-entropy: logits (B,C,P), labels (B,P), −1 ignored */
static void ref_ce(const opcase *c, const double *const *in, double *out)
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
static ms_status fwd_ce(ms_device *dev, opcase *c) { return ms_cross_entropy_forward_cpu(dev, c->out, c->in[0], c->lab, c->d[0], c->d[1], c->d[2]); }
static ms_status bwd_ce(ms_device *dev, opcase *c, float *const *g)
{ return ms_cross_entropy_backward_cpu(dev, g[0], c->gout[0], c->in[0], c->lab, c->d[0], c->d[1], c->d[2]); }

/* ---- the driver --------------------------------------------------------------------------------------------- */

typedef struct { opcase *c; int k; double *out; } fd_ctx;

static double fd_loss(void *vctx, const double *x)
{
    fd_ctx *f = vctx;
    const double *in[MAXIN];
    for (int i = 0; i < f->c->n_in; i++) in[i] = i == f->k ? x : f->c->ind[i];
    f->c->ref(f->c, in, f->out);
    double s = 0;
    for (int64_t i = 0; i < f->c->out_n; i++) s += (double)f->c->gout[i] * f->out[i];
    return s;
}

static float *falloc(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }

static ms_status reset_fwd(ms_device *dev, opcase *c)
{
    memcpy(c->out, c->out0, (size_t)c->out_n * sizeof(float));
    return c->fwd(dev, c);
}

static void run_case(ms_device *dev, opcase *c, uint64_t seed, int row)
{
    ms_rng r;
    ms_rng_init(&r, seed, 1000 + (uint64_t)row);
    int n = c->n_in;
    float *g[MAXIN] = {0}, *acc[MAXIN] = {0}, *r0[MAXIN] = {0}, *one[MAXIN] = {0};
    double *outd = malloc((size_t)c->out_n * sizeof(double)), *scratch = malloc((size_t)c->out_n * sizeof(double));
    double *expect = NULL;
    float *out_a = falloc(c->out_n);
    c->out = falloc(c->out_n);
    c->out0 = falloc(c->out_n);
    c->gout = falloc(c->out_n);
    ms_fill_uniform(c->out0, c->out_n, &r, -1, 1);
    ms_fill_uniform(c->gout, c->out_n, &r, -1, 1);
    int64_t maxn = 0;
    for (int k = 0; k < n; k++) {
        c->in[k] = falloc(c->in_n[k]);
        ms_fill_uniform(c->in[k], c->in_n[k], &r, c->lo[k], c->hi[k]);
        g[k] = falloc(c->in_n[k]); acc[k] = falloc(c->in_n[k]); r0[k] = falloc(c->in_n[k]); one[k] = falloc(c->in_n[k]);
        if (c->in_n[k] > maxn) maxn = c->in_n[k];
    }
    expect = malloc((size_t)(maxn > 0 ? maxn : 1) * sizeof(double));
    if (c->init) c->init(c, &r);
    for (int k = 0; k < n; k++) {
        c->ind[k] = malloc((size_t)c->in_n[k] * sizeof(double));
        for (int64_t i = 0; i < c->in_n[k]; i++) c->ind[k][i] = c->in[k][i];
    }

    /* forward vs double reference */
    MS_CHECK_OK(reset_fwd(dev, c));
    c->ref(c, (const double *const *)c->ind, outd);
    ms_cmp fc = ms_compare(c->out, outd, c->out_n);
    MS_CHECK(fc.max_rel <= (c->fwd_tol > 0 ? c->fwd_tol : FWD_TOL), "%s forward: max_rel %.3g max_abs %.3g at %lld", c->name, fc.max_rel, fc.max_abs,
             (long long)fc.worst);

    /* backward vs finite differences */
    MS_CHECK_OK(c->bwd(dev, c, g));
    double worst_fd = 0;
    for (int k = 0; k < n; k++) {
        fd_ctx fx = {c, k, scratch};
        int64_t wi = -1;
        double e = ms_fd_check(fd_loss, &fx, c->ind[k], c->in_n[k], g[k], FD_PROBES, FD_H, &r, &wi);
        if (e > worst_fd) worst_fd = e;
        MS_CHECK(e <= BWD_TOL, "%s backward input %d: fd rel err %.3g at %lld", c->name, k, e, (long long)wi);
        double ed = ms_fd_directional(fd_loss, &fx, c->ind[k], c->in_n[k], g[k], FD_H, &r, 3);
        if (ed > worst_fd) worst_fd = ed;
        MS_CHECK(ed >= 0 && ed <= BWD_TOL, "%s backward input %d: directional fd err %.3g", c->name, k, ed);
    }

    /* accumulation onto non-zero gradients: r + g, then r + 2g */
    for (int k = 0; k < n; k++) {
        ms_fill_uniform(r0[k], c->in_n[k], &r, -1, 1);
        memcpy(acc[k], r0[k], (size_t)c->in_n[k] * sizeof(float));
    }
    for (int pass = 1; pass <= 2; pass++) {
        MS_CHECK_OK(c->bwd(dev, c, acc));
        for (int k = 0; k < n; k++) {
            for (int64_t i = 0; i < c->in_n[k]; i++) expect[i] = (double)r0[k][i] + pass * (double)g[k][i];
            ms_cmp ac = ms_compare(acc[k], expect, c->in_n[k]);
            MS_CHECK(ac.max_rel <= ACC_TOL, "%s accumulate pass %d input %d: max_rel %.3g", c->name, pass, k, ac.max_rel);
        }
    }

    /* NULL gradients: each alone equals the full result; all NULL is a no-op */
    for (int k = 0; k < n && n > 1; k++) {
        float *only[MAXIN] = {0};
        memset(one[k], 0, (size_t)c->in_n[k] * sizeof(float));
        only[k] = one[k];
        MS_CHECK_OK(c->bwd(dev, c, only));
        ms_cmp nc = ms_compare_f(one[k], g[k], c->in_n[k]);
        MS_CHECK(nc.max_rel <= 1e-6, "%s NULL others, input %d: max_rel %.3g", c->name, k, nc.max_rel);
    }
    {
        float *none[MAXIN] = {0};
        MS_CHECK_OK(c->bwd(dev, c, none));
    }

    /* determinism: the same bits twice with the same thread count */
    MS_CHECK_OK(reset_fwd(dev, c));
    memcpy(out_a, c->out, (size_t)c->out_n * sizeof(float));
    MS_CHECK_OK(reset_fwd(dev, c));
    MS_CHECK(!memcmp(out_a, c->out, (size_t)c->out_n * sizeof(float)), "%s forward not deterministic", c->name);
    int same = 1;
    for (int k = 0; k < n; k++) { memset(acc[k], 0, (size_t)c->in_n[k] * sizeof(float)); }
    MS_CHECK_OK(c->bwd(dev, c, acc));
    for (int k = 0; k < n; k++) same &= !memcmp(acc[k], g[k], (size_t)c->in_n[k] * sizeof(float));
    MS_CHECK(same, "%s backward not deterministic", c->name);

    printf("  %-22s fwd max_rel %.2e  bwd fd err %.2e\n", c->name, fc.max_rel, worst_fd);
    for (int k = 0; k < n; k++) { free(c->in[k]); free(c->ind[k]); free(g[k]); free(acc[k]); free(r0[k]); free(one[k]); }
    free(c->out); free(c->out0); free(c->gout); free(outd); free(scratch); free(expect); free(out_a);
}

/* ---- other checks ---------------------------------------------------------------------------------------- */

static void test_adamw(ms_device *dev, ms_rng *r)
{
    enum { N = 20011, STEPS = 5 };
    float *p = falloc(N), *m = falloc(N), *v = falloc(N), *g = falloc(N);
    double *pd = calloc(N, sizeof(double)), *md = calloc(N, sizeof(double)), *vd = calloc(N, sizeof(double));
    /* the op takes float hyper-parameters, so the reference uses the same float values in double
     * (torch's Python doubles differ: 1 − 0.999f is 1.3e-5 away from 1 − 0.999) */
    const double lr = 0.01f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    for (int pass = 0; pass < 2; pass++) { /* with and without weight decay */
        double wd = pass ? 0.0 : (double)0.1f;
        ms_fill_uniform(p, N, r, -1, 1);
        memset(m, 0, N * sizeof(float)); memset(v, 0, N * sizeof(float));
        for (int i = 0; i < N; i++) { pd[i] = p[i]; md[i] = 0; vd[i] = 0; }
        double worst = 0;
        for (int t = 1; t <= STEPS; t++) {
            ms_fill_uniform(g, N, r, -1, 1);
            MS_CHECK_OK(ms_adamw_step_cpu(dev, p, g, m, v, N, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, t));
            double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
            for (int i = 0; i < N; i++) { /* torch.optim.AdamW, _single_tensor_adamw */
                pd[i] *= 1 - lr * wd;
                md[i] = b1 * md[i] + (1 - b1) * g[i];
                vd[i] = b2 * vd[i] + (1 - b2) * (double)g[i] * g[i];
                pd[i] -= lr / bc1 * md[i] / (sqrt(vd[i]) / sqrt(bc2) + eps);
            }
            ms_cmp cp = ms_compare(p, pd, N), cm = ms_compare(m, md, N), cv = ms_compare(v, vd, N);
            if (cp.max_abs > worst) worst = cp.max_abs;
            /* |p|, |m| <= 1: each step rounds them by ~6e-8 (float ulp), so after 5 steps the drift is <= ~4e-7;
             * 2e-6 on p still catches any formula slip (a missing bias correction moves step 1 by ~2·lr = 2e-2).
             * v > 0 has no cancellation: relative 1e-5. m may cancel to ~0, so it is checked in absolute terms. */
            MS_CHECK(cp.max_abs <= 2e-6 && cm.max_abs <= 5e-7 && cv.max_rel <= 1e-5,
                     "adamw wd=%g step %d: p max_abs %.3g, m max_abs %.3g, v max_rel %.3g", wd, t, cp.max_abs,
                     cm.max_abs, cv.max_rel);
        }
        printf("  %-22s wd=%.1f p max_abs %.2e after %d steps\n", "adamw_step", wd, worst, STEPS);
    }
    MS_CHECK(ms_adamw_step_cpu(dev, p, g, m, v, N, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.f, 0) == MS_EINVAL, "adamw step 0");
    free(p); free(m); free(v); free(g); free(pd); free(md); free(vd);
}

static void test_sumsq_clip(ms_device *dev, ms_rng *r)
{
    enum { NT = 3 };
    int64_t sizes[NT] = {100003, 37, 4321};
    float *gr[NT], *keep[NT];
    double ref = 0;
    for (int t = 0; t < NT; t++) {
        gr[t] = falloc(sizes[t]); keep[t] = falloc(sizes[t]);
        ms_fill_uniform(gr[t], sizes[t], r, -2, 2);
        memcpy(keep[t], gr[t], (size_t)sizes[t] * sizeof(float));
        for (int64_t i = 0; i < sizes[t]; i++) ref += (double)gr[t][i] * gr[t][i];
    }
    double s = 5.0; /* sumsq adds into *out */
    MS_CHECK_OK(ms_sumsq_cpu(dev, &s, gr[0], sizes[0]));
    double r0 = 0;
    for (int64_t i = 0; i < sizes[0]; i++) r0 += (double)gr[0][i] * gr[0][i];
    MS_CHECK(fabs(s - 5.0 - r0) <= 1e-12 * r0, "sumsq %.17g vs %.17g", s - 5.0, r0);
    double s2 = 5.0;
    MS_CHECK_OK(ms_sumsq_cpu(dev, &s2, gr[0], sizes[0]));
    MS_CHECK(s2 == s, "sumsq not deterministic");

    double norm = sqrt(ref);
    float got = 0;
    MS_CHECK_OK(ms_clip_grad_norm(dev, gr, sizes, NT, (float)(2 * norm), &got)); /* below the limit: untouched */
    MS_CHECK(fabs(got - norm) <= 1e-6 * norm, "clip norm %.9g vs %.9g", got, norm);
    int same = 1;
    for (int t = 0; t < NT; t++) same &= !memcmp(gr[t], keep[t], (size_t)sizes[t] * sizeof(float));
    MS_CHECK(same, "clip above the norm changed gradients");
    MS_CHECK_OK(ms_clip_grad_norm(dev, gr, sizes, NT, 0.f, &got)); /* max_norm 0: report only */
    same = 1;
    for (int t = 0; t < NT; t++) same &= !memcmp(gr[t], keep[t], (size_t)sizes[t] * sizeof(float));
    MS_CHECK(same && fabs(got - norm) <= 1e-6 * norm, "clip with max_norm 0");
    float maxn = (float)(norm / 3);
    MS_CHECK_OK(ms_clip_grad_norm(dev, gr, sizes, NT, maxn, &got));
    double coef = maxn / (norm + 1e-6), worst = 0, after = 0;
    for (int t = 0; t < NT; t++)
        for (int64_t i = 0; i < sizes[t]; i++) {
            double e = fabs(gr[t][i] - coef * keep[t][i]);
            if (e > worst) worst = e;
            after += (double)gr[t][i] * gr[t][i];
        }
    MS_CHECK(worst <= 2e-7 * 2 && fabs(sqrt(after) - maxn) <= 1e-5 * maxn, "clip scaled: max err %.3g, norm after %.9g vs %.9g",
             worst, sqrt(after), (double)maxn);
    printf("  %-22s norm %.6g, clipped to %.6g\n", "clip_grad_norm", norm, sqrt(after));
    for (int t = 0; t < NT; t++) { free(gr[t]); free(keep[t]); }
}

/* Forwards documented as in-place safe give the same values in place. */
static void test_inplace(ms_device *dev, ms_rng *r)
{
    enum { N = 20000 };
    float *x = falloc(N), *b = falloc(N), *y = falloc(N), *z = falloc(N);
    ms_fill_uniform(x, N, r, -3, 3);
    ms_fill_uniform(b, N, r, -3, 3);
    int ok = 1;
    memcpy(z, x, sizeof(float) * N); MS_CHECK_OK(ms_gelu_forward_cpu(dev, y, x, N)); MS_CHECK_OK(ms_gelu_forward_cpu(dev, z, z, N));
    ok &= !memcmp(y, z, sizeof(float) * N);
    memcpy(z, x, sizeof(float) * N); MS_CHECK_OK(ms_relu_forward_cpu(dev, y, x, N)); MS_CHECK_OK(ms_relu_forward_cpu(dev, z, z, N));
    ok &= !memcmp(y, z, sizeof(float) * N);
    memcpy(z, x, sizeof(float) * N); MS_CHECK_OK(ms_add_forward_cpu(dev, y, x, b, N)); MS_CHECK_OK(ms_add_forward_cpu(dev, z, z, b, N));
    ok &= !memcmp(y, z, sizeof(float) * N);
    memcpy(z, x, sizeof(float) * N); MS_CHECK_OK(ms_scale_forward_cpu(dev, y, x, 0.3f, N)); MS_CHECK_OK(ms_scale_forward_cpu(dev, z, z, 0.3f, N));
    ok &= !memcmp(y, z, sizeof(float) * N);
    memcpy(z, x, sizeof(float) * N); MS_CHECK_OK(ms_add_bcast_forward_cpu(dev, y, x, b, 50, N / 50));
    MS_CHECK_OK(ms_add_bcast_forward_cpu(dev, z, z, b, 50, N / 50));
    ok &= !memcmp(y, z, sizeof(float) * N);
    MS_CHECK(ok, "in-place forward differs from out-of-place");
    free(x); free(b); free(y); free(z);
}

/* Bad arguments and bad labels are errors with a message, and leave outputs alone. */
static void test_errors(ms_device *dev)
{
    float a[64] = {0}, b[64] = {0}, c[64] = {0}, loss = 7.f;
    ms_matmul_desc d = ms_matmul_plain(4, 4, 4);
    d.lda = 3;
    MS_CHECK(ms_matmul_forward_cpu(dev, c, a, b, &d) == MS_EINVAL && strstr(ms_errmsg(), "lda"), "lda check: %s", ms_errmsg());
    d = ms_matmul_plain(4, 4, 4);
    d.batch = 2; d.stride_c = 0;
    MS_CHECK(ms_matmul_forward_cpu(dev, c, a, b, &d) == MS_EINVAL, "stride_c 0 check");
    int32_t idx[3] = {0, 5, 1};
    float dx[16] = {0}, dy[12];
    for (int i = 0; i < 12; i++) dy[i] = 1.f;
    MS_CHECK(ms_gather_rows_backward_cpu(dev, dx, dy, idx, 3, 4, 4) == MS_EINVAL && dx[0] == 0.f, "gather index check");
    int32_t lab[4] = {0, 1, 3, 0};
    MS_CHECK(ms_cross_entropy_forward_cpu(dev, &loss, a, lab, 1, 3, 4) == MS_EINVAL && loss == 7.f, "CE label check: %s", ms_errmsg());
    MS_CHECK(ms_dice_loss_forward_cpu(dev, &loss, a, lab, 1, 3, 4, 1e-5f) == MS_EINVAL, "dice label check");
    int32_t ign[4] = {-1, -1, -1, -1};
    MS_CHECK_OK(ms_cross_entropy_forward_cpu(dev, &loss, a, ign, 1, 3, 4));
    MS_CHECK(loss == 0.f, "CE with every pixel ignored: %g", loss);
    float w0[4] = {0, 0, 0, 0};
    for (int i = 0; i < 16; i++) b[i] = 1.f;
    MS_CHECK_OK(ms_mse_loss_forward_cpu(dev, &loss, a, b, w0, 4, 4));
    MS_CHECK(loss == 0.f, "mse with zero weights: %g", loss);
    MS_CHECK_OK(ms_mse_loss_backward_cpu(dev, dx, 1.f, a, b, w0, 4, 4));
    MS_CHECK(dx[0] == 0.f && dx[15] == 0.f, "mse with zero weights has no gradient");
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_device dev = {0};
    const char *te = getenv("MS_TEST_THREADS"); /* default 2: the parallel paths run, and CI boxes have 2 cores */
    int threads = te && atoi(te) > 0 ? atoi(te) : 2;
    printf("threads: %d (MS_TEST_THREADS)\n", threads);
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, threads));

    opcase cases[32];
    int nc = 0;
    /* matmul rows: plain; both transposes with padded ld, gaps, alpha/beta; broadcast B; broadcast A; many small */
    {
        opcase c = {.name = "matmul plain", .n_in = 2, .fwd_tol = GEMM_TOL, .lo = {-1, -1}, .hi = {1, 1}, .ref = ref_matmul, .fwd = fwd_matmul, .bwd = bwd_matmul};
        mm_setup(&c, ms_matmul_plain(60, 37, 72), 0, 0, 0);
        cases[nc++] = c;
        ms_matmul_desc d = {.trans_a = 1, .m = 60, .n = 37, .k = 72, .lda = 63, .ldb = 39, .ldc = 41, .batch = 3, .alpha = 0.7f, .beta = 0.5f};
        c.name = "matmul tA ld batch";
        mm_setup(&c, d, 5, 0, 0);
        cases[nc++] = c;
        d = (ms_matmul_desc){.trans_b = 1, .m = 60, .n = 37, .k = 72, .lda = 72, .ldb = 75, .ldc = 37, .batch = 3, .alpha = -1.3f, .beta = 1.f};
        c.name = "matmul tB bcast B";
        mm_setup(&c, d, 3, 0, 1);
        cases[nc++] = c;
        d = (ms_matmul_desc){.trans_a = 1, .trans_b = 1, .m = 45, .n = 37, .k = 29, .lda = 47, .ldb = 29, .ldc = 40, .batch = 4, .alpha = 1.f};
        c.name = "matmul tA tB bcast A";
        mm_setup(&c, d, 2, 1, 0);
        cases[nc++] = c;
        d = (ms_matmul_desc){.trans_b = 1, .m = 7, .n = 5, .k = 9, .lda = 9, .ldb = 9, .ldc = 5, .batch = 16, .alpha = 1.f};
        c.name = "matmul 16 small";
        mm_setup(&c, d, 0, 0, 0);
        cases[nc++] = c;
    }
    cases[nc++] = (opcase){.name = "linear bias", .n_in = 3, .d = {300, 72, 61}, .in_n = {300 * 72, 61 * 72, 61}, .out_n = 300 * 61, .fwd_tol = GEMM_TOL,
                           .lo = {-1, -1, -1}, .hi = {1, 1, 1}, .ref = ref_linear, .fwd = fwd_linear, .bwd = bwd_linear};
    cases[nc++] = (opcase){.name = "linear no bias", .n_in = 2, .d = {60, 72, 37}, .in_n = {60 * 72, 37 * 72}, .out_n = 60 * 37, .fwd_tol = GEMM_TOL,
                           .lo = {-1, -1}, .hi = {1, 1}, .ref = ref_linear, .fwd = fwd_linear, .bwd = bwd_linear};
    static float ln_mean[400], ln_rstd[400], ln2_mean[3 * 195], ln2_rstd[3 * 195];
    cases[nc++] = (opcase){.name = "layernorm", .n_in = 3, .d = {300, 72}, .f = {1e-6f}, .in_n = {300 * 72, 72, 72}, .out_n = 300 * 72,
                           .lo = {-2, 0.5f, -0.5f}, .hi = {2, 1.5f, 0.5f}, .aux0 = ln_mean, .aux1 = ln_rstd,
                           .ref = ref_layernorm, .fwd = fwd_layernorm, .bwd = bwd_layernorm};
    cases[nc++] = (opcase){.name = "layernorm2d", .n_in = 3, .d = {3, 37, 195}, .f = {1e-6f}, .in_n = {3 * 37 * 195, 37, 37},
                           .out_n = 3 * 37 * 195, .lo = {-2, 0.5f, -0.5f}, .hi = {2, 1.5f, 0.5f}, .aux0 = ln2_mean,
                           .aux1 = ln2_rstd, .ref = ref_layernorm2d, .fwd = fwd_layernorm2d, .bwd = bwd_layernorm2d};
    cases[nc++] = (opcase){.name = "gelu", .n_in = 1, .in_n = {21600}, .out_n = 21600, .lo = {-4}, .hi = {4},
                           .ref = ref_gelu, .fwd = fwd_gelu, .bwd = bwd_gelu};
    cases[nc++] = (opcase){.name = "relu", .n_in = 1, .in_n = {21600}, .out_n = 21600, .lo = {-2}, .hi = {2}, .init = init_relu,
                           .ref = ref_relu, .fwd = fwd_relu, .bwd = bwd_relu};
    cases[nc++] = (opcase){.name = "softmax", .n_in = 1, .d = {300, 72}, .in_n = {21600}, .out_n = 21600, .lo = {-4}, .hi = {4},
                           .ref = ref_softmax, .fwd = fwd_softmax, .bwd = bwd_softmax};
    cases[nc++] = (opcase){.name = "add", .n_in = 2, .in_n = {21600, 21600}, .out_n = 21600, .lo = {-1, -1}, .hi = {1, 1},
                           .ref = ref_add, .fwd = fwd_add, .bwd = bwd_add};
    cases[nc++] = (opcase){.name = "add_bcast", .n_in = 2, .d = {7, 3240}, .in_n = {7 * 3240, 3240}, .out_n = 7 * 3240,
                           .lo = {-1, -1}, .hi = {1, 1}, .ref = ref_add_bcast, .fwd = fwd_add_bcast, .bwd = bwd_add_bcast};
    cases[nc++] = (opcase){.name = "scale", .n_in = 1, .f = {-0.7f}, .in_n = {21600}, .out_n = 21600, .lo = {-1}, .hi = {1},
                           .ref = ref_scale, .fwd = fwd_scale, .bwd = bwd_scale};
    cases[nc++] = (opcase){.name = "transpose", .n_in = 1, .d = {3, 97, 71}, .in_n = {3 * 97 * 71}, .out_n = 3 * 97 * 71,
                           .lo = {-1}, .hi = {1}, .ref = ref_transpose, .fwd = fwd_transpose, .bwd = bwd_transpose};
    static int32_t gidx[50], labs[2 * 9000];
    cases[nc++] = (opcase){.name = "gather_rows", .n_in = 1, .d = {40, 520, 50}, .in_n = {40 * 520}, .out_n = 50 * 520,
                           .lo = {-1}, .hi = {1}, .lab = gidx, .init = init_gather, .ref = ref_gather, .fwd = fwd_gather,
                           .bwd = bwd_gather};
    cases[nc++] = (opcase){.name = "reduce_sum", .n_in = 1, .d = {5, 61, 72}, .in_n = {5 * 61 * 72}, .out_n = 5 * 72,
                           .lo = {-1}, .hi = {1}, .ref = ref_reduce, .fwd = fwd_reduce, .bwd = bwd_reduce};
    static float mse_w[300], mse_t[300 * 72];
    cases[nc++] = (opcase){.name = "mse weighted", .n_in = 1, .d = {300, 72}, .in_n = {300 * 72}, .out_n = 1, .lo = {-1}, .hi = {1},
                           .aux0 = mse_w, .aux1 = mse_t, .init = init_mse, .ref = ref_mse, .fwd = fwd_mse, .bwd = bwd_mse};
    cases[nc++] = (opcase){.name = "mse unweighted", .n_in = 1, .d = {60, 37}, .in_n = {60 * 37}, .out_n = 1, .lo = {-1}, .hi = {1},
                           .aux1 = mse_t, .init = init_mse, .ref = ref_mse, .fwd = fwd_mse, .bwd = bwd_mse};
    cases[nc++] = (opcase){.name = "dice", .n_in = 1, .d = {2, 3, 9000}, .f = {1e-5f}, .in_n = {2 * 3 * 9000}, .out_n = 1,
                           .lo = {-3}, .hi = {3}, .lab = labs, .init = init_labels, .ref = ref_dice, .fwd = fwd_dice, .bwd = bwd_dice};
    cases[nc++] = (opcase){.name = "dice small smooth 1", .n_in = 1, .d = {3, 4, 37}, .f = {1.f}, .in_n = {3 * 4 * 37}, .out_n = 1,
                           .lo = {-3}, .hi = {3}, .lab = labs, .init = init_labels, .ref = ref_dice, .fwd = fwd_dice, .bwd = bwd_dice};
    cases[nc++] = (opcase){.name = "cross_entropy", .n_in = 1, .d = {2, 4, 3000}, .in_n = {2 * 4 * 3000}, .out_n = 1,
                           .lo = {-3}, .hi = {3}, .lab = labs, .init = init_labels, .ref = ref_ce, .fwd = fwd_ce, .bwd = bwd_ce};

    for (int i = 0; i < nc; i++) run_case(&dev, &cases[i], seed, i);

    ms_rng r;
    ms_rng_init(&r, seed, 7);
    test_adamw(&dev, &r);
    test_sumsq_clip(&dev, &r);
    test_inplace(&dev, &r);
    test_errors(&dev);
    ms_device_free(&dev);
    return ms_test_done();
}
