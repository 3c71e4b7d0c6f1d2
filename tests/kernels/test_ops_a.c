/* tests/kernels/test_ops_a.c — the first half of the op table (op_cases.h, rows of half 'a') on the CPU against
 * independent references (ref.c).
 *
 * Every row is one op with odd shapes (5·4·3-style, 72, 37, 97...) chosen large enough that the OpenMP paths run;
 * test_ops_cuda runs the same rows on CUDA against the CPU. For each row, with fresh random inputs (seed printed, MS_TEST_SEED replays):
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
 * Then the GEMM rows (matmul, linear) again on the bf16 emulation (dev->precision = MS_PREC_BF16, run_bf16): forward
 * against the double loop over the bf16-rounded operands (A, B, x, w; not the bias, not C of the beta term) within
 * the fp32 tolerance GEMM_TOL; backward against finite differences of that loop with the rounded upstream gradient
 * (the loss is linear in each operand, so the differences are exact: tolerance BF16_BWD_TOL 1e-4, far below the
 * ~2e-3 a missing rounding of one operand costs); and bf16 against fp32 differs normwise by bf16's precision
 * (between 1e-4 and 1e-2: not 0, not more), the bias gradient (a sum of the fp32 dy) not at all.
 * Then AdamW (5 steps vs torch's formula in double; the multi-tensor step bit-identical to per-tensor steps),
 * sumsq, clip_grad_norm, in-place forwards, add_layernorm's bits, error paths.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/tensor.h"
#include "harness.h"
#include "op_cases.h"
#include "ref.h"

#define FWD_TOL 1e-4
/* GEMM rows sum K = 72 products into values up to ~5: the float error grows like √K·2⁻²⁴·|partial sums|
 * (worst seen 1.1e-4 of the ms_compare floor over 18k outputs), so they get 5e-4 (GEMM_TOL, the rows' fwd_tol) */
#define BWD_TOL 2e-3
#define ACC_TOL 1e-4
#define FD_H 1e-3
#define FD_PROBES 32
#define BF16_BWD_TOL 1e-4

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
    opc_alloc(c, &r);
    int64_t maxn = 0;
    for (int k = 0; k < n; k++) {
        g[k] = falloc(c->in_n[k]); acc[k] = falloc(c->in_n[k]); r0[k] = falloc(c->in_n[k]); one[k] = falloc(c->in_n[k]);
        if (c->in_n[k] > maxn) maxn = c->in_n[k];
    }
    expect = malloc((size_t)(maxn > 0 ? maxn : 1) * sizeof(double));

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
    for (int k = 0; k < n; k++) { free(g[k]); free(acc[k]); free(r0[k]); free(one[k]); }
    opc_free(c);
    free(outd); free(scratch); free(expect); free(out_a);
}

/* ---- bf16 emulation of the GEMM rows ---------------------------------------------------------------------------- */

/* L(x) = Σ g_r ⊙ ref(inputs) with the bf16-rounded operands `in` (input k replaced by x) and rounded upstream g_r. */
typedef struct { opcase *c; int k; double *out; double **in; const double *g; } bf_ctx;

static double bf_loss(void *vctx, const double *x)
{
    bf_ctx *f = vctx;
    const double *in[MAXIN];
    for (int i = 0; i < f->c->n_in; i++) in[i] = i == f->k ? x : f->in[i];
    f->c->ref(f->c, in, f->out);
    double s = 0;
    for (int64_t i = 0; i < f->c->out_n; i++) s += f->g[i] * f->out[i];
    return s;
}

/* Normwise relative difference ‖a − b‖ / ‖b‖. */
static double normwise(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void run_bf16(ms_device *dev, opcase *c, uint64_t seed, int row)
{
    ms_rng r;
    ms_rng_init(&r, seed, 5000 + (uint64_t)row);
    opc_alloc(c, &r);
    int n = c->n_in;
    double *rin[MAXIN] = {0}, *gr = malloc((size_t)c->out_n * sizeof(double));
    double *outd = malloc((size_t)c->out_n * sizeof(double)), *scratch = malloc((size_t)c->out_n * sizeof(double));
    float *out32 = falloc(c->out_n), *g32[MAXIN] = {0}, *g16[MAXIN] = {0};
    for (int k = 0; k < n; k++) { /* inputs 0 and 1 are the GEMM operands; a bias (input 2) stays fp32 */
        rin[k] = malloc((size_t)c->in_n[k] * sizeof(double));
        for (int64_t i = 0; i < c->in_n[k]; i++) rin[k][i] = k < 2 ? (double)ms_bf16_round(c->in[k][i]) : c->ind[k][i];
        g32[k] = falloc(c->in_n[k]);
        g16[k] = falloc(c->in_n[k]);
    }
    for (int64_t i = 0; i < c->out_n; i++) gr[i] = ms_bf16_round(c->gout[i]);

    dev->precision = MS_PREC_FP32;
    MS_CHECK_OK(reset_fwd(dev, c));
    memcpy(out32, c->out, (size_t)c->out_n * sizeof(float));
    MS_CHECK_OK(c->bwd(dev, c, g32));
    dev->precision = MS_PREC_BF16;
    MS_CHECK_OK(reset_fwd(dev, c));
    c->ref(c, (const double *const *)rin, outd);
    ms_cmp fc = ms_compare(c->out, outd, c->out_n);
    MS_CHECK(fc.max_rel <= c->fwd_tol, "%s bf16 forward vs rounded-input reference: max_rel %.3g at %lld", c->name,
             fc.max_rel, (long long)fc.worst);
    double dfwd = normwise(c->out, out32, c->out_n), dmax = 0;
    MS_CHECK(dfwd >= 1e-4 && dfwd <= 1e-2, "%s bf16 forward differs from fp32 by %.3g normwise (want 1e-4..1e-2)",
             c->name, dfwd);

    MS_CHECK_OK(c->bwd(dev, c, g16));
    double worst = 0;
    for (int k = 0; k < n; k++) {
        double d = normwise(g16[k], g32[k], c->in_n[k]);
        if (k >= 2) { /* the bias gradient sums the fp32 dy: bit for bit the fp32 one (checked by run_case) */
            MS_CHECK(!memcmp(g16[k], g32[k], (size_t)c->in_n[k] * sizeof(float)),
                     "%s bf16 bias gradient is not the fp32 one", c->name);
            continue;
        }
        bf_ctx fx = {c, k, scratch, rin, gr};
        int64_t wi = -1;
        double e = ms_fd_check(bf_loss, &fx, rin[k], c->in_n[k], g16[k], FD_PROBES, FD_H, &r, &wi);
        double ed = ms_fd_directional(bf_loss, &fx, rin[k], c->in_n[k], g16[k], FD_H, &r, 3);
        worst = fmax(worst, fmax(e, ed));
        MS_CHECK(e <= BF16_BWD_TOL && ed >= 0 && ed <= BF16_BWD_TOL,
                 "%s bf16 backward input %d vs rounded-input differences: %.3g at %lld, directional %.3g", c->name, k,
                 e, (long long)wi, ed);
        dmax = fmax(dmax, d);
        MS_CHECK(d >= 1e-4 && d <= 1e-2, "%s bf16 gradient %d differs from fp32 by %.3g normwise (want 1e-4..1e-2)",
                 c->name, k, d);
    }
    dev->precision = MS_PREC_FP32;
    printf("  %-22s bf16: fwd max_rel %.2e, bwd err %.2e; vs fp32 fwd %.2e, grads %.2e\n", c->name, fc.max_rel, worst,
           dfwd, dmax);
    for (int k = 0; k < n; k++) { free(rin[k]); free(g32[k]); free(g16[k]); }
    opc_free(c);
    free(gr); free(outd); free(scratch); free(out32);
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

/* ms_adamw_multi over a table of mixed sizes (1, non-multiples of 4, chunk edges, an empty tensor; drawn at random)
 * equals one ms_adamw_step per tensor bit for bit, step after step with a changing lr, and follows torch's formula
 * in double (the test_adamw bounds). One plan serves every step. */
static void test_adamw_multi(ms_device *dev, ms_rng *r)
{
    enum { NT = 9, STEPS = 4 };
    static const int64_t pick[] = {1, 2, 3, 5, 7, 77, 4095, 4096, 4097, 8195, 10007, 20011};
    ms_adamw_tensor tt[NT];
    float *cp[NT], *cm[NT], *cv[NT], *g[NT];
    double *pd[NT], *md[NT], *vd[NT];
    const double lr0 = 0.01f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    for (int i = 0; i < NT; i++) {
        int64_t n = i == 0 ? 1 : i == 1 ? 0 : i == 2 ? 20011 : pick[ms_rng_below(r, sizeof pick / sizeof *pick)];
        tt[i] = (ms_adamw_tensor){.p = falloc(n), .g = NULL, .m = falloc(n), .v = falloc(n), .n = n,
                                  .wd = ms_rng_below(r, 2) ? 0.1f : 0.f};
        g[i] = falloc(n); cp[i] = falloc(n); cm[i] = falloc(n); cv[i] = falloc(n);
        pd[i] = calloc((size_t)n + 1, sizeof(double)); md[i] = calloc((size_t)n + 1, sizeof(double));
        vd[i] = calloc((size_t)n + 1, sizeof(double));
        tt[i].g = g[i];
        ms_fill_uniform(tt[i].p, n, r, -1, 1);
        memcpy(cp[i], tt[i].p, (size_t)n * sizeof(float));
        for (int64_t k = 0; k < n; k++) pd[i][k] = tt[i].p[k];
    }
    ms_adamw_plan pl;
    MS_CHECK_OK(ms_adamw_plan_init(&pl, dev, tt, NT));
    int same = 1;
    double worst = 0;
    for (int s = 1; s <= STEPS; s++) {
        float lr = (float)(lr0 * (1.0 - 0.2 * (s - 1))); /* a schedule: the table holds no lr */
        for (int i = 0; i < NT; i++) ms_fill_uniform(g[i], tt[i].n, r, -1, 1);
        MS_CHECK_OK(ms_adamw_multi(dev, &pl, lr, (float)b1, (float)b2, (float)eps, s));
        for (int i = 0; i < NT; i++) {
            int64_t n = tt[i].n;
            MS_CHECK_OK(ms_adamw_step_cpu(dev, cp[i], g[i], cm[i], cv[i], n, lr, (float)b1, (float)b2, (float)eps,
                                          tt[i].wd, s));
            same &= !memcmp(cp[i], tt[i].p, (size_t)n * sizeof(float)) && !memcmp(cm[i], tt[i].m, (size_t)n * sizeof(float)) &&
                    !memcmp(cv[i], tt[i].v, (size_t)n * sizeof(float));
            double bc1 = 1 - pow(b1, s), bc2 = 1 - pow(b2, s), wd = tt[i].wd;
            for (int64_t k = 0; k < n; k++) { /* torch.optim.AdamW, _single_tensor_adamw */
                pd[i][k] *= 1 - (double)lr * wd;
                md[i][k] = b1 * md[i][k] + (1 - b1) * g[i][k];
                vd[i][k] = b2 * vd[i][k] + (1 - b2) * (double)g[i][k] * g[i][k];
                pd[i][k] -= (double)lr / bc1 * md[i][k] / (sqrt(vd[i][k]) / sqrt(bc2) + eps);
            }
            ms_cmp ep = ms_compare(tt[i].p, pd[i], n), em = ms_compare(tt[i].m, md[i], n), ev = ms_compare(tt[i].v, vd[i], n);
            if (ep.max_abs > worst) worst = ep.max_abs;
            MS_CHECK(ep.max_abs <= 2e-6 && em.max_abs <= 5e-7 && ev.max_rel <= 1e-5,
                     "adamw_multi tensor %d (n %lld) step %d: p max_abs %.3g, m max_abs %.3g, v max_rel %.3g", i,
                     (long long)n, s, ep.max_abs, em.max_abs, ev.max_rel);
        }
    }
    MS_CHECK(same, "adamw_multi differs from per-tensor adamw_step");
    MS_CHECK(ms_adamw_multi(dev, &pl, 1e-3f, 0.9f, 0.999f, 1e-8f, 0) == MS_EINVAL, "adamw_multi step 0");
    ms_device other = {0};
    MS_CHECK_OK(ms_device_init(&other, MS_DEV_CPU, 1));
    MS_CHECK(ms_adamw_multi(&other, &pl, 1e-3f, 0.9f, 0.999f, 1e-8f, 1) == MS_EINVAL, "adamw_multi on another device");
    ms_device_free(&other);
    float *p0 = tt[0].p;
    tt[0].p = NULL;
    ms_adamw_plan bad;
    MS_CHECK(ms_adamw_plan_init(&bad, dev, tt, NT) == MS_EINVAL, "adamw_plan with a NULL buffer");
    tt[0].p = p0;
    printf("  %-22s %d tensors (%lld floats, %lld chunks) = per-tensor adamw_step bit for bit; p max_abs %.2e\n",
           "adamw_multi", NT, (long long)pl.numel, (long long)pl.chunk0[NT], worst);
    ms_adamw_plan_free(&pl);
    ms_adamw_plan_free(&pl); /* freeing twice is a no-op */
    for (int i = 0; i < NT; i++) {
        free(tt[i].p); free(tt[i].m); free(tt[i].v); free(g[i]); free(cp[i]); free(cm[i]); free(cv[i]);
        free(pd[i]); free(md[i]); free(vd[i]);
    }
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

/* add_layernorm on the CPU equals add then layernorm bit for bit (what keeps the encoder's results unchanged), out
 * of place and in place (s = x, s = r), on random shapes: D of any residue mod 4, N·D on both sides of the
 * threading threshold. */
static void test_add_layernorm_bits(ms_device *dev, ms_rng *r)
{
    for (int t = 0; t < 6; t++) {
        int64_t N = 1 + (int64_t)ms_rng_below(r, 300), D = 1 + (int64_t)ms_rng_below(r, 400), n = N * D;
        float *x = falloc(n), *res = falloc(n), *w = falloc(D), *b = falloc(D), *s0 = falloc(n), *y0 = falloc(n);
        float *s = falloc(n), *y = falloc(n), *m0 = falloc(N), *r0 = falloc(N), *m = falloc(N), *rs = falloc(N);
        ms_fill_uniform(x, n, r, -3, 3);
        ms_fill_uniform(res, n, r, -3, 3);
        ms_fill_uniform(w, D, r, 0.5f, 1.5f);
        ms_fill_uniform(b, D, r, -0.5f, 0.5f);
        MS_CHECK_OK(ms_add_forward_cpu(dev, s0, x, res, n));
        MS_CHECK_OK(ms_layernorm_forward_cpu(dev, y0, m0, r0, s0, w, b, N, D, 1e-6f));
        int ok = 1;
        for (int mode = 0; mode < 3; mode++) { /* 0: s apart, 1: s = x, 2: s = r */
            memcpy(s, mode == 2 ? res : x, (size_t)n * sizeof(float));
            memset(y, 0, (size_t)n * sizeof(float));
            MS_CHECK_OK(ms_add_layernorm_forward_cpu(dev, s, y, m, rs, mode == 1 ? s : x, mode == 2 ? s : res, w, b, N, D,
                                                     1e-6f));
            ok &= !memcmp(s, s0, (size_t)n * sizeof(float)) && !memcmp(y, y0, (size_t)n * sizeof(float)) &&
                  !memcmp(m, m0, (size_t)N * sizeof(float)) && !memcmp(rs, r0, (size_t)N * sizeof(float));
        }
        MS_CHECK(ok, "add_layernorm %lldx%lld differs from add + layernorm", (long long)N, (long long)D);
        free(x); free(res); free(w); free(b); free(s0); free(y0); free(s); free(y); free(m0); free(r0); free(m); free(rs);
    }
    printf("  %-22s bit-identical to add + layernorm (6 shapes, in place too)\n", "add_layernorm");
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
/* BatchNorm's running statistics after a training forward, against torch's rule in double: run ← 0.9·run +
 * 0.1·stat with the unbiased variance; one value per channel in training is refused (as torch does). */
static void test_batchnorm_running(ms_device *dev, ms_rng *r)
{
    enum { B = 3, C = 5, HW = 17, N = B * C * HW };
    float x[N], y[N], g[C], bt[C], mean[C], rstd[C], rm[C], rv[C], rm0[C], rv0[C];
    ms_fill_uniform(x, N, r, -3, 2);
    ms_fill_uniform(g, C, r, 0.5f, 1.5f);
    ms_fill_uniform(bt, C, r, -0.5f, 0.5f);
    ms_fill_uniform(rm0, C, r, -1, 1);
    ms_fill_uniform(rv0, C, r, 0.5f, 2);
    memcpy(rm, rm0, sizeof rm);
    memcpy(rv, rv0, sizeof rv);
    MS_CHECK_OK(ms_batchnorm_forward(dev, y, mean, rstd, x, g, bt, rm, rv, B, C, HW, 1e-5f, 0.1f, 1));
    double worst = 0;
    for (int c = 0; c < C; c++) {
        double mu = 0, v = 0;
        for (int b = 0; b < B; b++) for (int i = 0; i < HW; i++) mu += x[(b * C + c) * HW + i];
        mu /= B * HW;
        for (int b = 0; b < B; b++) for (int i = 0; i < HW; i++) { double t = x[(b * C + c) * HW + i] - mu; v += t * t; }
        double em = 0.9 * rm0[c] + 0.1 * mu, ev = 0.9 * rv0[c] + 0.1 * v / (B * HW - 1);
        double e = fmax(fabs(rm[c] - em) / (fabs(em) + 1e-3), fabs(rv[c] - ev) / ev);
        e = fmax(e, fabs(mean[c] - mu) / (fabs(mu) + 1e-3));
        e = fmax(e, fabs(rstd[c] - 1 / sqrt(v / (B * HW) + 1e-5)) * sqrt(v / (B * HW)));
        if (e > worst) worst = e;
    }
    MS_CHECK(worst < 1e-6, "batchnorm running stats: max rel err %.3g", worst);
    /* inference leaves them alone and uses them */
    float rm1[C], rv1[C];
    memcpy(rm1, rm, sizeof rm);
    memcpy(rv1, rv, sizeof rv);
    MS_CHECK_OK(ms_batchnorm_forward(dev, y, NULL, NULL, x, g, bt, rm, rv, B, C, HW, 1e-5f, 0.1f, 0));
    MS_CHECK(!memcmp(rm, rm1, sizeof rm) && !memcmp(rv, rv1, sizeof rv), "batchnorm inference changed running stats");
    double e0 = fabs(y[0] - ((x[0] - rm[0]) / sqrt(rv[0] + 1e-5) * g[0] + bt[0]));
    MS_CHECK(e0 < 1e-5, "batchnorm inference y[0] off by %.3g", e0);
    MS_CHECK(ms_batchnorm_forward(dev, y, mean, rstd, x, g, bt, rm, rv, 1, C, 1, 1e-5f, 0.1f, 1) == MS_EINVAL,
             "batchnorm training on one value per channel is refused");
    printf("  batchnorm running stats: max rel err %.2e\n", worst);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_device dev = {0};
    const char *te = getenv("MS_TEST_THREADS"); /* default 2: the parallel paths run, and CI boxes have 2 cores */
    int threads = te && atoi(te) > 0 ? atoi(te) : 2;
    printf("threads: %d (MS_TEST_THREADS)\n", threads);
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, threads));

    static opcase cases[OPC_MAX];
    int nc = opc_table(cases, OPC_MAX), ran = 0;
    for (int i = 0; i < nc; i++)
        if (cases[i].half == 'a') { run_case(&dev, &cases[i], seed, i); ran++; }
    MS_CHECK(ran >= 40, "only %d rows of half 'a' in the op table", ran);
    nc = opc_table(cases, OPC_MAX); /* fresh rows: run_case consumed their buffers */
    int nb = 0;
    for (int i = 0; i < nc; i++)
        if (cases[i].ref == ref_matmul || cases[i].ref == ref_linear) { run_bf16(&dev, &cases[i], seed, i); nb++; }
    MS_CHECK(nb >= 10, "only %d GEMM rows ran in bf16", nb);

    ms_rng r;
    ms_rng_init(&r, seed, 7);
    test_adamw(&dev, &r);
    test_adamw_multi(&dev, &r);
    test_sumsq_clip(&dev, &r);
    test_inplace(&dev, &r);
    test_add_layernorm_bits(&dev, &r);
    test_batchnorm_running(&dev, &r);
    test_errors(&dev);
    ms_device_free(&dev);
    return ms_test_done();
}
