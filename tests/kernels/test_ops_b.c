/* tests/kernels/test_ops_b.c — the second half of the op table (op_cases.h) on the CPU: every attention row
 * (+ decomposed rel-pos) and the rows of half 'b' (rel_pos_resize, window partition/unpartition, conv_patch,
 * conv2d, conv_transpose2x2, bilinear and bicubic resizing). test_ops_cuda runs the same rows on CUDA.
 *
 * Every forward is compared with an independent double-precision loop written from the formula (attention: the
 * literal S = scale·q·k + q·Rh[..] + q·Rw[..] with the unscaled q, per (i,j)), every backward with central finite
 * differences of L = Σ g⊙f(x) evaluated in double (ms_fd_check). Backward buffers are pre-filled with random
 * values, so the checks also prove that gradients accumulate. Inputs are fresh random numbers each run (seed
 * printed). The resize ops and SAM's attention (forward and backward, segment_anything's code under autograd) are
 * also checked against PyTorch values in golden/ (gen_golden_resize.py).
 * Tolerances: forward max_rel (floor 1e-3·max|ref|) < 1e-4 and NMSE < 1e-12 for convs, < 1e-3 and < 1e-10 for
 * the interpolations (torch's float source coordinates, cancelling bicubic lobes), < 5e-4 and < 1e-11 for
 * attention; finite differences (h = 1e-3 in double, float analytic gradient) < 3e-3; PyTorch golden values
 * max_abs < 2e-5; 1 vs 2 threads max_rel < 1e-5; backward bit-identical on a repeated call.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "op_cases.h"
#include "ref.h"

static ms_rng R;
static ms_device DEV1, DEV2;

#define FD_TOL 3e-3
#define FD_H 1e-3

static float *fnew(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }
static double *dnew(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(double)); }
static float *frand(int64_t n, float lo, float hi)
{
    float *p = fnew(n);
    ms_fill_uniform(p, n, &R, lo, hi);
    return p;
}
static double *to_d(const float *a, int64_t n)
{
    double *d = dnew(n);
    for (int64_t i = 0; i < n; i++) d[i] = a[i];
    return d;
}
/* grad = after − before (the accumulated part) */
static float *delta(const float *after, const float *before, int64_t n)
{
    float *d = fnew(n);
    for (int64_t i = 0; i < n; i++) d[i] = after[i] - before[i];
    return d;
}
static float *fdup(const float *a, int64_t n)
{
    float *d = fnew(n);
    memcpy(d, a, (size_t)n * sizeof(float));
    return d;
}

/* ===================================== attention ===================================================== */

typedef struct att_ctx {
    const att_case *c;
    const double *q, *k, *v, *rh, *rw; /* double inputs (q/k/v may alias the packed buffer) */
    const double *g;                    /* upstream gradient, laid out like out (rows nq_rows, ldo) */
    double *out, *lse;                  /* optional outputs of the reference */
} att_ctx;

static int64_t set_n(const int32_t *off, int64_t uni, int64_t g) { return off ? off[g + 1] - off[g] : uni; }
static int64_t set_id(const int32_t *off, const int32_t *idx, int64_t uni, int64_t g, int64_t t)
{
    int64_t s = off ? off[g] : g * uni;
    return idx ? idx[s + t] : s + t;
}

/* The literal formula, in double. Returns Σ g⊙out when g is set. */
static double att_ref(void *vctx, const double *unused)
{
    (void)unused;
    att_ctx *x = vctx;
    const ms_attention_desc *d = &x->c->d;
    int64_t hd = d->head_dim, H = d->n_heads;
    int64_t ch = (d->len_h - 1) / 2, cw = (d->len_w - 1) / 2;
    double L = 0;
    double *s = dnew(x->c->nk_rows + 1);
    for (int64_t g = 0; g < d->n_groups; g++)
        for (int64_t h = 0; h < H; h++) {
            int64_t nq = set_n(d->q_off, d->nq, g), nk = set_n(d->k_off, d->nk, g);
            for (int64_t i = 0; i < nq; i++) {
                int64_t qi = set_id(d->q_off, d->q_idx, d->nq, g, i);
                const double *qv = x->q + qi * d->ldq + h * hd;
                double m = -INFINITY;
                for (int64_t j = 0; j < nk; j++) {
                    int64_t kj = set_id(d->k_off, d->k_idx, d->nk, g, j);
                    const double *kv = x->k + kj * d->ldk + h * hd;
                    double a = 0, rel = 0;
                    for (int64_t c = 0; c < hd; c++) a += qv[c] * kv[c];
                    if (d->rel_h) {
                        const double *th = x->rh + (d->q_row[qi] - d->k_row[kj] + ch) * hd;
                        const double *tw = x->rw + (d->q_col[qi] - d->k_col[kj] + cw) * hd;
                        for (int64_t c = 0; c < hd; c++) rel += qv[c] * th[c] + qv[c] * tw[c];
                    }
                    s[j] = d->scale * a + rel;
                    if (s[j] > m) m = s[j];
                }
                double sum = 0;
                for (int64_t j = 0; j < nk; j++) sum += exp(s[j] - m);
                if (x->lse) x->lse[qi * H + h] = m + log(sum);
                for (int64_t j = 0; j < nk; j++) s[j] = exp(s[j] - m) / sum; /* the probabilities, once per row */
                for (int64_t c = 0; c < hd; c++) {
                    double o = 0;
                    for (int64_t j = 0; j < nk; j++) {
                        int64_t kj = set_id(d->k_off, d->k_idx, d->nk, g, j);
                        o += s[j] * x->v[kj * d->ldv + h * hd + c];
                    }
                    if (x->out) x->out[qi * d->ldo + h * hd + c] = o;
                    if (x->g) L += x->g[qi * d->ldo + h * hd + c] * o;
                }
            }
        }
    free(s);
    return L;
}

/* Runs forward (1 and 2 threads), backward, and the finite-difference checks for one case. */
static void att_run(att_case *c)
{
    ms_attention_desc *d = &c->d;
    int64_t hd = d->head_dim, D = d->n_heads * hd;
    int64_t nq = c->nq_rows, nk = c->nk_rows;
    int64_t nqf = c->packed ? nq * 3 * D : nq * d->ldq, nkf = nk * d->ldk, nvf = nk * d->ldv;
    float *qkv = NULL, *q, *k, *v;
    if (c->packed) {
        qkv = frand(nqf, -1.5f, 1.5f);
        q = qkv; k = qkv + D; v = qkv + 2 * D;
        /* SAM's pad tokens: zero inputs, so q/k/v all equal the qkv bias */
        for (int64_t r = 0; c->pad && r < nq; r++)
            if (c->pad[r]) memcpy(qkv + r * 3 * D, qkv + nq * 3 * D - 3 * D, (size_t)(3 * D) * sizeof(float));
    } else {
        q = frand(nqf, -1.5f, 1.5f); k = frand(nkf, -1.5f, 1.5f); v = frand(nvf, -1.5f, 1.5f);
    }
    float *rh = d->rel_h ? frand(d->len_h * hd, -0.5f, 0.5f) : NULL;
    float *rw = d->rel_h ? frand(d->len_w * hd, -0.5f, 0.5f) : NULL;
    d->rel_h = rh; d->rel_w = rw;
    int64_t nof = nq * d->ldo;
    float *out = frand(nof, -9, 9), *out2 = fdup(out, nof), *lse = fnew(nq * d->n_heads), *lse2 = fnew(nq * d->n_heads);
    /* rows not in any group keep their contents: compare only rows that are queries */
    MS_CHECK_OK(ms_attention_forward(&DEV1, out, lse, q, k, v, d));
    MS_CHECK_OK(ms_attention_forward(&DEV2, out2, lse2, q, k, v, d));

    double *qd = c->packed ? to_d(qkv, nqf) : to_d(q, nqf);
    double *kd = c->packed ? qd + D : to_d(k, nkf), *vd = c->packed ? qd + 2 * D : to_d(v, nvf);
    double *rhd = rh ? to_d(rh, d->len_h * hd) : NULL, *rwd = rw ? to_d(rw, d->len_w * hd) : NULL;
    double *oref = dnew(nof), *lref = dnew(nq * d->n_heads);
    att_ctx x = {c, qd, kd, vd, rhd, rwd, NULL, oref, lref};
    att_ref(&x, NULL);
    /* gather the query rows' head columns into dense arrays for the comparison */
    int64_t nsel = 0;
    float *sel = fnew(nq * D), *sel2 = fnew(nq * D), *lsel = fnew(nq * d->n_heads);
    double *rsel = dnew(nq * D), *lrsel = dnew(nq * d->n_heads);
    char *isq = calloc((size_t)nq, 1);
    for (int64_t g = 0; g < d->n_groups; g++)
        for (int64_t t = 0; t < set_n(d->q_off, d->nq, g); t++) isq[set_id(d->q_off, d->q_idx, d->nq, g, t)] = 1;
    for (int64_t r = 0; r < nq; r++) {
        if (!isq[r]) continue;
        for (int64_t c2 = 0; c2 < D; c2++) {
            sel[nsel * D + c2] = out[r * d->ldo + c2];
            sel2[nsel * D + c2] = out2[r * d->ldo + c2];
            rsel[nsel * D + c2] = oref[r * d->ldo + c2];
        }
        for (int h = 0; h < d->n_heads; h++) {
            lsel[nsel * d->n_heads + h] = lse[r * d->n_heads + h];
            lrsel[nsel * d->n_heads + h] = lref[r * d->n_heads + h];
        }
        nsel++;
    }
    ms_cmp co = ms_compare(sel, rsel, nsel * D), cl = ms_compare(lsel, lrsel, nsel * d->n_heads);
    ms_cmp c12 = ms_compare_f(sel2, sel, nsel * D);
    printf("  %-28s fwd max_rel %.2e nmse %.1e  lse max_rel %.2e  1 vs 2 threads %.2e\n", c->name, co.max_rel,
           co.nmse, cl.max_rel, c12.max_rel);
    double fwd_rel = c->fwd_rel > 0 ? c->fwd_rel : 5e-4, thr_rel = c->thread_rel > 0 ? c->thread_rel : 1e-5;
    MS_CHECK(co.max_rel < fwd_rel && co.nmse < 1e-11, "attention %s forward max_rel %.3e nmse %.3e (worst %lld)",
             c->name, co.max_rel, co.nmse, (long long)co.worst);
    MS_CHECK(cl.max_rel < 1e-4, "attention %s lse max_rel %.3e", c->name, cl.max_rel);
    MS_CHECK(c12.max_rel < thr_rel, "attention %s 1 vs 2 threads %.3e", c->name, c12.max_rel);

    /* backward: upstream gradient on query rows only */
    float *gout = fnew(nof);
    for (int64_t r = 0; r < nq; r++)
        if (isq[r]) ms_fill_uniform(gout + r * d->ldo, D, &R, -1, 1);
    double *gd = to_d(gout, nof);
    int64_t n_gq = c->packed ? nqf : nqf;
    float *gq0 = frand(n_gq, -1, 1);
    float *gk0 = c->packed ? NULL : frand(nkf, -1, 1), *gv0 = c->packed ? NULL : frand(nvf, -1, 1);
    float *grh0 = rh ? frand(d->len_h * hd, -1, 1) : NULL, *grw0 = rw ? frand(d->len_w * hd, -1, 1) : NULL;
    float *gq = fdup(gq0, n_gq), *gk = gk0 ? fdup(gk0, nkf) : NULL, *gv = gv0 ? fdup(gv0, nvf) : NULL;
    float *grh = rh ? fdup(grh0, d->len_h * hd) : NULL, *grw = rw ? fdup(grw0, d->len_w * hd) : NULL;
    float *dq = gq, *dk = c->packed ? gq + D : gk, *dv = c->packed ? gq + 2 * D : gv;
    MS_CHECK_OK(ms_attention_backward(&DEV2, dq, dk, dv, grh, grw, gout, out, lse, q, k, v, d));
    /* determinism: the same call again gives the same bits */
    {
        float *gq_b = fdup(gq0, n_gq), *gk_b = gk0 ? fdup(gk0, nkf) : NULL, *gv_b = gv0 ? fdup(gv0, nvf) : NULL;
        float *grh_b = rh ? fdup(grh0, d->len_h * hd) : NULL, *grw_b = rw ? fdup(grw0, d->len_w * hd) : NULL;
        MS_CHECK_OK(ms_attention_backward(&DEV2, gq_b, c->packed ? gq_b + D : gk_b, c->packed ? gq_b + 2 * D : gv_b,
                                          grh_b, grw_b, gout, out, lse, q, k, v, d));
        int same = !memcmp(gq_b, gq, (size_t)n_gq * 4) && (!gk || !memcmp(gk_b, gk, (size_t)nkf * 4)) &&
                   (!gv || !memcmp(gv_b, gv, (size_t)nvf * 4)) &&
                   (!grh || !memcmp(grh_b, grh, (size_t)d->len_h * hd * 4)) &&
                   (!grw || !memcmp(grw_b, grw, (size_t)d->len_w * hd * 4));
        MS_CHECK(same, "attention %s backward not deterministic", c->name);
        /* NULL skipping: only dv (and drel_w) requested must give the same dv */
        float *gv_c = fdup(c->packed ? gq0 : gv0, c->packed ? n_gq : nvf);
        float *grw_c = rw ? fdup(grw0, d->len_w * hd) : NULL;
        MS_CHECK_OK(ms_attention_backward(&DEV2, NULL, NULL, c->packed ? gv_c + 2 * D : gv_c, NULL, grw_c, gout, out,
                                          lse, q, k, v, d));
        int ok = 1;
        for (int64_t r = 0; r < nk; r++)
            for (int64_t c2 = 0; c2 < D; c2++) {
                int64_t off = c->packed ? r * 3 * D + 2 * D + c2 : r * d->ldv + c2;
                if (gv_c[off] != (c->packed ? gq[off] : gv[off])) ok = 0;
            }
        if (rw) ok &= !memcmp(grw_c, grw, (size_t)d->len_w * hd * 4);
        MS_CHECK(ok, "attention %s: dv/drel_w alone differ from the full backward", c->name);
        free(gq_b); free(gk_b); free(gv_b); free(grh_b); free(grw_b); free(gv_c); free(grw_c);
    }
    att_ctx fx = {c, qd, kd, vd, rhd, rwd, gd, NULL, NULL};
    int64_t wi = -1;
    float *aq = delta(gq, gq0, n_gq);
    double e = ms_fd_check(att_ref, &fx, qd, c->packed ? nqf : nqf, aq, c->probes, FD_H, &R, &wi);
    printf("  %-28s fd: d%s %.2e", c->name, c->packed ? "qkv" : "q", e);
    MS_CHECK(e < FD_TOL, "attention %s d%s fd err %.3e at %lld", c->name, c->packed ? "qkv" : "q", e, (long long)wi);
    if (!c->packed) {
        float *ak = delta(gk, gk0, nkf), *av = delta(gv, gv0, nvf);
        e = ms_fd_check(att_ref, &fx, kd, nkf, ak, c->probes, FD_H, &R, &wi);
        printf(" dk %.2e", e);
        MS_CHECK(e < FD_TOL, "attention %s dk fd err %.3e at %lld", c->name, e, (long long)wi);
        e = ms_fd_check(att_ref, &fx, vd, nvf, av, c->probes, FD_H, &R, &wi);
        printf(" dv %.2e", e);
        MS_CHECK(e < FD_TOL, "attention %s dv fd err %.3e at %lld", c->name, e, (long long)wi);
        free(ak); free(av);
    }
    if (rh) {
        float *ah = delta(grh, grh0, d->len_h * hd), *aw = delta(grw, grw0, d->len_w * hd);
        e = ms_fd_check(att_ref, &fx, rhd, d->len_h * hd, ah, c->probes, FD_H, &R, &wi);
        printf(" drel_h %.2e", e);
        MS_CHECK(e < FD_TOL, "attention %s drel_h fd err %.3e at %lld", c->name, e, (long long)wi);
        e = ms_fd_check(att_ref, &fx, rwd, d->len_w * hd, aw, c->probes, FD_H, &R, &wi);
        printf(" drel_w %.2e", e);
        MS_CHECK(e < FD_TOL, "attention %s drel_w fd err %.3e at %lld", c->name, e, (long long)wi);
        free(ah); free(aw);
    }
    printf("\n");
    free(aq);
    if (c->packed) free(qkv);
    else { free(q); free(k); free(v); free(kd); free(vd); }
    free(qd); free(rh); free(rw); free(rhd); free(rwd); free(out); free(out2); free(lse); free(lse2);
    free(oref); free(lref); free(sel); free(sel2); free(lsel); free(rsel); free(lrsel); free(isq);
    free(gout); free(gd); free(gq0); free(gk0); free(gv0); free(grh0); free(grw0); free(gq); free(gk); free(gv);
    free(grh); free(grw);
}

static void test_attention(void)
{
    printf("attention\n");
    int n;
    const att_row *rows = att_table(&n);
    for (int i = 0; i < n; i++) {
        att_case c = {0};
        rows[i].build(&rows[i], &c, &R);
        c.name = rows[i].name;
        c.probes = rows[i].probes;
        c.fwd_rel = rows[i].fwd_rel;
        c.thread_rel = rows[i].thread_rel;
        att_run(&c);
        att_free(&c);
    }
    /* an out-of-table offset is refused */
    {
        int32_t rows[4] = {0, 0, 3, 3}, cols[4] = {0, 1, 0, 1};
        float qkv[4 * 6] = {0}, out[4 * 2], lse[4], t[3 * 2] = {0};
        ms_attention_desc d = {.n_groups = 1, .n_heads = 1, .head_dim = 2, .scale = 1, .nq = 4, .nk = 4, .ldq = 6,
                               .ldk = 6, .ldv = 6, .ldo = 2, .rel_h = t, .rel_w = t, .len_h = 3, .len_w = 3,
                               .q_row = rows, .q_col = cols, .k_row = rows, .k_col = cols};
        ms_status st = ms_attention_forward(&DEV1, out, lse, qkv, qkv + 2, qkv + 4, &d);
        MS_CHECK(st == MS_EINVAL, "attention: out-of-table offset gave %d, want MS_EINVAL", st);
    }
}

/* ===================================== window, rel_pos, resize, conv ========================================= */

typedef struct { opcase *c; int k; double *y; const double *g; } lin_fd;

/* L = Σ g ⊙ f(x) with input k replaced by p (the other inputs at their values) */
static double lin_loss(void *v, const double *p)
{
    lin_fd *f = v;
    const double *in[MAXIN];
    for (int i = 0; i < f->c->n_in; i++) in[i] = i == f->k ? p : f->c->ind[i];
    f->c->ref(f->c, in, f->y);
    double s = 0;
    for (int64_t i = 0; i < f->c->out_n; i++) s += f->g[i] * f->y[i];
    return s;
}

/* Forward (1 and 2 threads) vs ref_lin and backward (accumulating, vs finite differences) for x, w, b of one row. */
static void lin_run(opcase *c)
{
    static const char *gname[3] = {"dx", "dw", "db"};
    opc_alloc(c, &R);
    int64_t ny = c->out_n;
    float *y = c->out, *y2 = fdup(c->out, ny);
    double *yd = dnew(ny), *gd = to_d(c->gout, ny);
    MS_CHECK_OK(c->fwd(&DEV1, c));
    c->out = y2;
    MS_CHECK_OK(c->fwd(&DEV2, c));
    c->out = y;
    c->ref(c, (const double *const *)c->ind, yd);
    ms_cmp cf = ms_compare(y, yd, ny), c2 = ms_compare(y2, yd, ny);
    /* interpolations: torch's float scale vs exact double (op_cases.c, INTERP_FAR) */
    double nmse_tol = c->fwd_tol >= 1e-2 ? 1e-9 : c->fwd_tol >= 1e-3 ? 1e-10 : 1e-12;
    MS_CHECK(cf.max_rel < c->fwd_tol && c2.max_rel < c->fwd_tol && cf.nmse < nmse_tol && c2.nmse < nmse_tol,
             "%s forward max_rel %.3e / %.3e nmse %.3e (worst %lld)", c->name, cf.max_rel, c2.max_rel, cf.nmse,
             (long long)cf.worst);
    float *g0[MAXIN] = {0}, *gr[MAXIN] = {0};
    for (int k = 0; k < c->n_in; k++) {
        g0[k] = frand(c->in_n[k], -1, 1);
        gr[k] = fdup(g0[k], c->in_n[k]);
    }
    MS_CHECK_OK(c->bwd(&DEV2, c, gr));
    double e[MAXIN] = {0};
    /* the far interpolations' float weights differ from ref_lin's by the coordinate error (INTERP_FAR) */
    double fd_tol = c->fwd_tol >= 1e-2 ? c->fwd_tol : FD_TOL;
    for (int k = 0; k < c->n_in; k++) {
        float *a = delta(gr[k], g0[k], c->in_n[k]);
        lin_fd fx = {c, k, yd, gd};
        int64_t wi = -1;
        e[k] = ms_fd_check(lin_loss, &fx, c->ind[k], c->in_n[k], a, 40, FD_H, &R, &wi);
        MS_CHECK(e[k] < fd_tol, "%s %s fd err %.3e at %lld", c->name, gname[k], e[k], (long long)wi);
        free(a);
    }
    /* NULL gradients are skipped: only dx requested gives the same dx */
    float *only[MAXIN] = {fdup(g0[0], c->in_n[0])};
    MS_CHECK_OK(c->bwd(&DEV2, c, only));
    MS_CHECK(!memcmp(only[0], gr[0], (size_t)c->in_n[0] * 4), "%s: dx alone differs from dx with dw/db", c->name);
    printf("  %-34s fwd max_rel %.2e  fd dx %.2e dw %.2e db %.2e\n", c->name, cf.max_rel, e[0], e[1], e[2]);
    for (int k = 0; k < c->n_in; k++) { free(g0[k]); free(gr[k]); }
    free(only[0]); free(y2); free(yd); free(gd);
    opc_free(c);
}

static void test_linear_ops(void)
{
    printf("window / rel_pos / resize / conv\n");
    static opcase rows[OPC_MAX];
    int n = opc_table(rows, OPC_MAX), ran = 0;
    for (int i = 0; i < n; i++)
        if (rows[i].half == 'b') { lin_run(&rows[i]); ran++; }
    MS_CHECK(ran >= 30, "only %d rows of half 'b' in the op table", ran);
}

/* ===================================== PyTorch golden values ============================================ */

static void test_golden(void)
{
    const char *src = getenv("MS_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/kernels/golden/resize.txt", src ? src : "../..");
    FILE *f = fopen(path, "r");
    MS_CHECK(f != NULL, "cannot open %s (set MS_SOURCE_DIR)", path);
    if (!f) return;
    printf("PyTorch golden values (%s)\n", path);
    char kind[32];
    int n_cases = 0;
    while (fscanf(f, "%31s", kind) == 1) {
        long long a[5] = {0};
        long long cnt;
        int nd = !strcmp(kind, "rel_pos") ? 3 : 5;
        for (int i = 0; i < nd; i++) if (fscanf(f, "%lld", &a[i]) != 1) break;
        if (fscanf(f, "%lld", &cnt) != 1 || cnt <= 0 || cnt > 1000000) { MS_CHECK(0, "golden: bad header"); break; }
        double *want = dnew(cnt);
        for (long long i = 0; i < cnt; i++) if (fscanf(f, "%lf", &want[i]) != 1) want[i] = NAN;
        int64_t nin = nd == 3 ? a[0] * a[1] : a[0] * a[1] * a[2];
        float *x = fnew(nin), *y = fnew(cnt);
        for (int64_t i = 0; i < nin; i++) x[i] = (float)(sin(0.37 * i) + 0.5 * cos(1.3 * i + 0.2));
        ms_status st;
        if (nd == 3) st = ms_rel_pos_resize_forward(&DEV1, y, x, a[0], a[2], a[1]);
        else if (!strcmp(kind, "bilinear")) st = ms_resize_bilinear_forward(&DEV1, y, x, a[0], a[1], a[2], a[3], a[4]);
        else st = ms_resize_bicubic_forward(&DEV1, y, x, a[0], a[1], a[2], a[3], a[4]);
        MS_CHECK(st == MS_OK, "golden %s: %s", kind, ms_errmsg());
        ms_cmp c = ms_compare(y, want, cnt);
        printf("  %-9s %lld %lld %lld %lld %lld  max_abs %.2e\n", kind, a[0], a[1], a[2], a[3], a[4], c.max_abs);
        MS_CHECK(c.max_abs < 2e-5, "golden %s case %d: max_abs %.3e at %lld", kind, n_cases, c.max_abs,
                 (long long)c.worst);
        n_cases++;
        free(want); free(x); free(y);
    }
    fclose(f);
    MS_CHECK(n_cases == 11, "golden: %d cases read, want 11", n_cases);
}

/* The inputs gen_golden_resize.py builds: float32(sin(a·i + b) + c·cos(d·i + e)). */
static float golden_in(int64_t i, double a, double b, double c, double d, double e)
{
    return (float)(sin(a * (double)i + b) + c * cos(d * (double)i + e));
}

/* SAM's encoder attention as segment_anything computes it (PyTorch autograd), forward and backward, on 2 windows
 * of 3x5 tokens with 2 heads of 4: checks the packed qkv layout (s·D + h·hd + d), the window-local rel-pos
 * convention (q_row − k_row + S−1, unscaled q) and the gradients of qkv and both tables. */
static void test_golden_attention(void)
{
    const char *src = getenv("MS_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/kernels/golden/sam_attention.txt", src ? src : "../..");
    FILE *f = fopen(path, "r");
    MS_CHECK(f != NULL, "cannot open %s (set MS_SOURCE_DIR)", path);
    if (!f) return;
    enum { BW = 2, HH = 3, WW = 5, NH = 2, HD = 4, D = NH * HD, N = BW * HH * WW, LH = 2 * HH - 1, LW = 2 * WW - 1 };
    enum { COUNT = N * D + N * 3 * D + LH * HD + LW * HD };
    long long hdr[5], cnt = 0;
    int ok = fscanf(f, "sam_attention %lld %lld %lld %lld %lld %lld", &hdr[0], &hdr[1], &hdr[2], &hdr[3], &hdr[4],
                    &cnt) == 6 && hdr[0] == BW && hdr[1] == HH && hdr[2] == WW && hdr[3] == NH && hdr[4] == HD &&
             cnt == COUNT;
    MS_CHECK(ok, "%s: unexpected header", path);
    double *want = dnew(COUNT);
    for (int i = 0; ok && i < COUNT; i++) ok = fscanf(f, "%lf", &want[i]) == 1;
    fclose(f);
    MS_CHECK(ok, "%s: short file", path);
    if (!ok) { free(want); return; }
    float qkv[N * 3 * D], rh[LH * HD], rw[LW * HD], g[N * D], out[N * D], lse[N * NH];
    float dqkv[N * 3 * D] = {0}, drh[LH * HD] = {0}, drw[LW * HD] = {0};
    int32_t row[N], col[N];
    for (int i = 0; i < N * 3 * D; i++) qkv[i] = golden_in(i, 0.37, 0.0, 0.5, 1.3, 0.2);
    for (int i = 0; i < LH * HD; i++) rh[i] = 0.3f * golden_in(i, 0.91, 0.5, 0.0, 1.3, 0.2);
    for (int i = 0; i < LW * HD; i++) rw[i] = 0.3f * golden_in(i, 0.53, 1.0, 0.0, 1.3, 0.2);
    for (int i = 0; i < N * D; i++) g[i] = golden_in(i, 0.71, 0.3, 0.25, 2.1, 0.4);
    for (int t = 0; t < N; t++) {
        row[t] = (t % (HH * WW)) / WW;
        col[t] = t % WW;
    }
    ms_attention_desc d = {.n_groups = BW, .n_heads = NH, .head_dim = HD, .scale = 0.5f, .nq = HH * WW,
                           .nk = HH * WW, .ldq = 3 * D, .ldk = 3 * D, .ldv = 3 * D, .ldo = D, .rel_h = rh,
                           .rel_w = rw, .len_h = LH, .len_w = LW, .q_row = row, .q_col = col, .k_row = row,
                           .k_col = col};
    MS_CHECK_OK(ms_attention_forward(&DEV2, out, lse, qkv, qkv + D, qkv + 2 * D, &d));
    MS_CHECK_OK(ms_attention_backward(&DEV2, dqkv, dqkv + D, dqkv + 2 * D, drh, drw, g, out, lse, qkv, qkv + D,
                                      qkv + 2 * D, &d));
    ms_cmp co = ms_compare(out, want, N * D), cq = ms_compare(dqkv, want + N * D, N * 3 * D);
    ms_cmp ch = ms_compare(drh, want + N * 4 * D, LH * HD), cw = ms_compare(drw, want + N * 4 * D + LH * HD, LW * HD);
    double nmse = fmax(fmax(co.nmse, cq.nmse), fmax(ch.nmse, cw.nmse));
    printf("  sam_attention 2x(3x5) vs PyTorch: max_rel out %.2e dqkv %.2e drel_h %.2e drel_w %.2e, worst nmse "
           "%.1e\n", co.max_rel, cq.max_rel, ch.max_rel, cw.max_rel, nmse);
    /* both sides are float: torch's own rounding counts, so a looser max_rel than vs double, NMSE strict */
    MS_CHECK(co.max_rel < 5e-4 && cq.max_rel < 5e-4 && ch.max_rel < 5e-4 && cw.max_rel < 5e-4 && nmse < 1e-11,
             "sam_attention vs PyTorch: max_rel out %.3e dqkv %.3e drel_h %.3e drel_w %.3e", co.max_rel, cq.max_rel,
             ch.max_rel, cw.max_rel);
    free(want);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng_init(&R, seed, 0xb0b);
    if (ms_device_init(&DEV1, MS_DEV_CPU, 1) || ms_device_init(&DEV2, MS_DEV_CPU, 2)) {
        printf("device init failed: %s\n", ms_errmsg());
        return 1;
    }
    test_attention();
    test_linear_ops();
    test_golden();
    test_golden_attention();
    return ms_test_done();
}
