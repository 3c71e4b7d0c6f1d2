/* tests/kernels/test_ops_b.c — CPU ops, second half: attention (+ decomposed rel-pos), rel_pos_resize, window
 * partition/unpartition, conv_patch, conv2d, conv_transpose2x2, bilinear and bicubic resizing.
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
#include "ops.h"
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

typedef struct att_case {
    const char *name;
    ms_attention_desc d;
    int64_t nq_rows, nk_rows;           /* rows in the q buffer and in the k/v buffers */
    int packed;                         /* q, k, v share one (rows, 3D) buffer (self-attention) */
    const char *pad;                    /* rows that are pad tokens: they all get the same q/k/v (packed only) */
    /* owned arrays */
    int32_t *q_off, *q_idx, *k_off, *k_idx, *q_row, *q_col, *k_row, *k_col;
} att_case;

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
                for (int64_t c = 0; c < hd; c++) {
                    double o = 0;
                    for (int64_t j = 0; j < nk; j++) {
                        int64_t kj = set_id(d->k_off, d->k_idx, d->nk, g, j);
                        o += exp(s[j] - m) / sum * x->v[kj * d->ldv + h * hd + c];
                    }
                    if (x->out) x->out[qi * d->ldo + h * hd + c] = o;
                    if (x->g) L += x->g[qi * d->ldo + h * hd + c] * o;
                }
            }
        }
    free(s);
    return L;
}

static void att_free(att_case *c)
{
    free(c->q_off); free(c->q_idx); free(c->k_off); free(c->k_idx);
    free(c->q_row); free(c->q_col); free(c->k_row); free(c->k_col);
}

/* Runs forward (1 and 2 threads), backward, and the finite-difference checks for one case. */
static void att_run(att_case *c, int probes)
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
    MS_CHECK(co.max_rel < 5e-4 && co.nmse < 1e-11, "attention %s forward max_rel %.3e nmse %.3e (worst %lld)",
             c->name, co.max_rel, co.nmse, (long long)co.worst);
    MS_CHECK(cl.max_rel < 1e-4, "attention %s lse max_rel %.3e", c->name, cl.max_rel);
    MS_CHECK(c12.max_rel < 1e-5, "attention %s 1 vs 2 threads %.3e", c->name, c12.max_rel);

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
    double e = ms_fd_check(att_ref, &fx, qd, c->packed ? nqf : nqf, aq, probes, FD_H, &R, &wi);
    printf("  %-28s fd: d%s %.2e", c->name, c->packed ? "qkv" : "q", e);
    MS_CHECK(e < FD_TOL, "attention %s d%s fd err %.3e at %lld", c->name, c->packed ? "qkv" : "q", e, (long long)wi);
    if (!c->packed) {
        float *ak = delta(gk, gk0, nkf), *av = delta(gv, gv0, nvf);
        e = ms_fd_check(att_ref, &fx, kd, nkf, ak, probes, FD_H, &R, &wi);
        printf(" dk %.2e", e);
        MS_CHECK(e < FD_TOL, "attention %s dk fd err %.3e at %lld", c->name, e, (long long)wi);
        e = ms_fd_check(att_ref, &fx, vd, nvf, av, probes, FD_H, &R, &wi);
        printf(" dv %.2e", e);
        MS_CHECK(e < FD_TOL, "attention %s dv fd err %.3e at %lld", c->name, e, (long long)wi);
        free(ak); free(av);
    }
    if (rh) {
        float *ah = delta(grh, grh0, d->len_h * hd), *aw = delta(grw, grw0, d->len_w * hd);
        e = ms_fd_check(att_ref, &fx, rhd, d->len_h * hd, ah, probes, FD_H, &R, &wi);
        printf(" drel_h %.2e", e);
        MS_CHECK(e < FD_TOL, "attention %s drel_h fd err %.3e at %lld", c->name, e, (long long)wi);
        e = ms_fd_check(att_ref, &fx, rwd, d->len_w * hd, aw, probes, FD_H, &R, &wi);
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

static int32_t *ialloc(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(int32_t)); }

/* Shuffle-based random subset of [0, n) of size m. */
static void subset(int32_t *dst, int64_t m, int64_t n)
{
    int32_t *p = ialloc(n);
    for (int64_t i = 0; i < n; i++) p[i] = (int32_t)i;
    for (int64_t i = 0; i < m; i++) {
        int64_t j = i + (int64_t)ms_rng_below(&R, (uint64_t)(n - i));
        int32_t t = p[i]; p[i] = p[j]; p[j] = t;
        dst[i] = p[i];
    }
    free(p);
}

static void test_attention(void)
{
    printf("attention\n");
    /* (a) windowed, self-attention on a packed qkv buffer: 9x11 image, ws 5 -> 2x3 windows of 25 tokens with pad
     * tokens (all equal, like SAM's qkv bias); window-local rows/cols, tables 2·5−1. */
    {
        att_case c = {0};
        int ws = 5, Hh = 9, Ww = 11, nh = 2, nw = 3, H = 2, hd = 6, D = H * hd;
        int64_t n = (int64_t)nh * nw * ws * ws;
        c.name = "windowed+pad (packed qkv)";
        c.d = (ms_attention_desc){.n_groups = nh * nw, .n_heads = H, .head_dim = hd, .scale = 1.0f / sqrtf((float)hd),
                                  .nq = ws * ws, .nk = ws * ws, .ldq = 3 * D, .ldk = 3 * D, .ldv = 3 * D, .ldo = D + 3,
                                  .len_h = 2 * ws - 1, .len_w = 2 * ws - 1};
        c.nq_rows = c.nk_rows = n;
        c.packed = 1;
        c.q_row = ialloc(n); c.q_col = ialloc(n);
        char *pad = calloc((size_t)n, 1);
        for (int64_t t = 0; t < n; t++) {
            int64_t r = (t / ws) % ws, cc = t % ws, win = t / (ws * ws);
            c.q_row[t] = (int32_t)r;
            c.q_col[t] = (int32_t)cc;
            pad[t] = (win / nw) * ws + r >= Hh || (win % nw) * ws + cc >= Ww;
        }
        c.pad = pad;
        c.d.q_row = c.d.k_row = c.q_row; c.d.q_col = c.d.k_col = c.q_col;
        c.d.rel_h = (const float *)1; /* att_run allocates the tables */
        att_run(&c, 40);
        free(pad);
        att_free(&c);
    }
    /* (b) global on a non-square 7x6 grid, separate q/k/v buffers with padding in the row strides. */
    {
        att_case c = {0};
        int Hh = 7, Ww = 6, H = 3, hd = 5, D = H * hd;
        int64_t n = Hh * Ww;
        c.name = "global 7x6";
        c.d = (ms_attention_desc){.n_groups = 1, .n_heads = H, .head_dim = hd, .scale = 0.41f, .nq = n, .nk = n,
                                  .ldq = D + 1, .ldk = D + 2, .ldv = D, .ldo = D, .len_h = 2 * Hh - 1,
                                  .len_w = 2 * Ww - 1};
        c.nq_rows = c.nk_rows = n;
        c.q_row = ialloc(n); c.q_col = ialloc(n);
        for (int64_t t = 0; t < n; t++) { c.q_row[t] = (int32_t)(t / Ww); c.q_col[t] = (int32_t)(t % Ww); }
        c.d.q_row = c.d.k_row = c.q_row; c.d.q_col = c.d.k_col = c.q_col;
        c.d.rel_h = (const float *)1;
        att_run(&c, 30);
        att_free(&c);
    }
    /* (c) sparse subsets (MAE visible tokens): 3 images of an 8x8 grid each, random visible subsets of different
     * sizes, index lists, true grid rows/cols, tables 15. */
    {
        att_case c = {0};
        int S = 8, G = 3, H = 2, hd = 4, D = H * hd;
        int64_t per = S * S, n = G * per;
        c.name = "sparse subsets (idx lists)";
        c.q_off = ialloc(G + 1); c.q_idx = ialloc(n);
        int64_t pos = 0;
        for (int g = 0; g < G; g++) {
            int64_t m = 5 + (int64_t)ms_rng_below(&R, 20);
            c.q_off[g] = (int32_t)pos;
            subset(c.q_idx + pos, m, per);
            for (int64_t t = 0; t < m; t++) c.q_idx[pos + t] += (int32_t)(g * per);
            pos += m;
        }
        c.q_off[G] = (int32_t)pos;
        c.d = (ms_attention_desc){.n_groups = G, .n_heads = H, .head_dim = hd, .scale = 0.5f, .q_off = c.q_off,
                                  .q_idx = c.q_idx, .k_off = c.q_off, .k_idx = c.q_idx, .ldq = D, .ldk = D, .ldv = D,
                                  .ldo = D, .len_h = 2 * S - 1, .len_w = 2 * S - 1};
        c.nq_rows = c.nk_rows = n;
        c.q_row = ialloc(n); c.q_col = ialloc(n);
        for (int64_t t = 0; t < n; t++) { c.q_row[t] = (int32_t)((t % per) / S); c.q_col[t] = (int32_t)(t % S); }
        c.d.q_row = c.d.k_row = c.q_row; c.d.q_col = c.d.k_col = c.q_col;
        c.d.rel_h = (const float *)1;
        att_run(&c, 30);
        att_free(&c);
    }
    /* (d) cross attention, no rel-pos: 2 groups, 5 queries against 37 keys, then 37 queries against 5 keys. */
    for (int rev = 0; rev < 2; rev++) {
        att_case c = {0};
        int G = 2, H = 2, hd = 3, D = H * hd;
        int64_t a = rev ? 37 : 5, b = rev ? 5 : 37;
        c.name = rev ? "cross 37 q x 5 k" : "cross 5 q x 37 k";
        c.d = (ms_attention_desc){.n_groups = G, .n_heads = H, .head_dim = hd, .scale = 1.0f / sqrtf(3.0f), .nq = a,
                                  .nk = b, .ldq = D, .ldk = D + 4, .ldv = D + 1, .ldo = D + 2};
        c.nq_rows = G * a;
        c.nk_rows = G * b;
        att_run(&c, 30);
        att_free(&c);
    }
    /* (e) key rows shared between groups (disjoint queries): 4 groups over a 6x5 grid, each group's keys a random
     * subset of all 30 tokens, queries a partition of the tokens; rel-pos with true positions. */
    {
        att_case c = {0};
        int Hh = 6, Ww = 5, G = 4, H = 3, hd = 4, D = H * hd;
        int64_t n = Hh * Ww;
        c.name = "shared keys across groups";
        c.q_off = ialloc(G + 1); c.q_idx = ialloc(n); c.k_off = ialloc(G + 1); c.k_idx = ialloc(G * n);
        subset(c.q_idx, n, n);
        int64_t kpos = 0;
        for (int g = 0; g < G; g++) {
            c.q_off[g] = (int32_t)(g * n / G);
            int64_t m = 8 + (int64_t)ms_rng_below(&R, 15);
            c.k_off[g] = (int32_t)kpos;
            subset(c.k_idx + kpos, m, n);
            kpos += m;
        }
        c.q_off[G] = (int32_t)n;
        c.k_off[G] = (int32_t)kpos;
        c.d = (ms_attention_desc){.n_groups = G, .n_heads = H, .head_dim = hd, .scale = 0.45f, .q_off = c.q_off,
                                  .q_idx = c.q_idx, .k_off = c.k_off, .k_idx = c.k_idx, .ldq = D, .ldk = D, .ldv = D,
                                  .ldo = D, .len_h = 2 * Hh - 1, .len_w = 2 * Ww - 1};
        c.nq_rows = c.nk_rows = n;
        c.q_row = ialloc(n); c.q_col = ialloc(n);
        for (int64_t t = 0; t < n; t++) { c.q_row[t] = (int32_t)(t / Ww); c.q_col[t] = (int32_t)(t % Ww); }
        c.d.q_row = c.d.k_row = c.q_row; c.d.q_col = c.d.k_col = c.q_col;
        c.d.rel_h = (const float *)1;
        att_run(&c, 30);
        att_free(&c);
    }
    /* (f) a global group larger than one query block (19x17 = 323 tokens), packed qkv. */
    {
        att_case c = {0};
        int Hh = 19, Ww = 17, H = 2, hd = 4, D = H * hd;
        int64_t n = Hh * Ww;
        c.name = "global 19x17 (blocked)";
        c.d = (ms_attention_desc){.n_groups = 1, .n_heads = H, .head_dim = hd, .scale = 0.5f, .nq = n, .nk = n,
                                  .ldq = 3 * D, .ldk = 3 * D, .ldv = 3 * D, .ldo = D, .len_h = 2 * Hh - 1,
                                  .len_w = 2 * Ww - 1};
        c.nq_rows = c.nk_rows = n;
        c.packed = 1;
        c.q_row = ialloc(n); c.q_col = ialloc(n);
        for (int64_t t = 0; t < n; t++) { c.q_row[t] = (int32_t)(t / Ww); c.q_col[t] = (int32_t)(t % Ww); }
        c.d.q_row = c.d.k_row = c.q_row; c.d.q_col = c.d.k_col = c.q_col;
        c.d.rel_h = (const float *)1;
        att_run(&c, 12);
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

/* ===================================== window ========================================================= */

typedef struct lin_ctx {
    int op;                 /* which op the callback evaluates */
    int64_t a[8];           /* sizes */
    const double *x, *w, *b; /* inputs (the one perturbed is passed as x to the callback) */
    const double *g;        /* upstream gradient */
    double *y;              /* reference output (n_out) */
    int64_t n_out;
    int which;              /* 0 x, 1 w, 2 b: which input the fd callback's argument replaces */
} lin_ctx;

static void ref_eval(lin_ctx *c, const double *x, const double *w, const double *b);

static double lin_loss(void *vc, const double *p)
{
    lin_ctx *c = vc;
    ref_eval(c, c->which == 0 ? p : c->x, c->which == 1 ? p : c->w, c->which == 2 ? p : c->b);
    double s = 0;
    for (int64_t i = 0; i < c->n_out; i++) s += c->g[i] * c->y[i];
    return s;
}

enum { OP_PART, OP_UNPART, OP_RELPOS, OP_BILINEAR, OP_BICUBIC, OP_PATCH, OP_CONV, OP_CT };

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

static void ref_eval(lin_ctx *c, const double *x, const double *w, const double *b)
{
    int64_t *a = c->a;
    double *y = c->y;
    memset(y, 0, (size_t)c->n_out * sizeof(double));
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
    case OP_CONV: { /* B Cin H W Cout ks pad */
        int64_t B = a[0], Ci = a[1], H = a[2], W = a[3], Co = a[4], ks = a[5], pad = a[6];
        int64_t Ho = H + 2 * pad - ks + 1, Wo = W + 2 * pad - ks + 1;
        for (int64_t bb = 0; bb < B; bb++) for (int64_t o = 0; o < Co; o++) for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++) {
                double s = b ? b[o] : 0;
                for (int64_t ci = 0; ci < Ci; ci++)
                    for (int64_t ky = 0; ky < ks; ky++)
                        for (int64_t kx = 0; kx < ks; kx++) {
                    int64_t iy = oy + ky - pad, ix = ox + kx - pad;
                    if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                    s += w[((o * Ci + ci) * ks + ky) * ks + kx] * x[((bb * Ci + ci) * H + iy) * W + ix];
                }
                y[((bb * Co + o) * Ho + oy) * Wo + ox] = s;
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

/* Forward vs reference and backward (accumulating, vs finite differences) for x, w, b of a linear op.
 * fwd(y, x, w, b) / bwd(dx, dw, db, dy, x, w) wrap the op. */
typedef ms_status (*fwd_fn)(ms_device *, lin_ctx *, float *, const float *, const float *, const float *);
typedef ms_status (*bwd_fn)(ms_device *, lin_ctx *, float *, float *, float *, const float *, const float *,
                            const float *);

static void lin_run(const char *name, lin_ctx *c, int64_t nx, int64_t nw, int64_t nb, fwd_fn fwd, bwd_fn bwd,
                    double fwd_tol)
{
    float *x = frand(nx, -1, 1), *w = nw ? frand(nw, -1, 1) : NULL, *b = nb ? frand(nb, -1, 1) : NULL;
    float *y = frand(c->n_out, -5, 5), *y2 = fdup(y, c->n_out);
    double *xd = to_d(x, nx), *wd = w ? to_d(w, nw) : NULL, *bd = b ? to_d(b, nb) : NULL;
    c->y = dnew(c->n_out);
    c->x = xd; c->w = wd; c->b = bd;
    MS_CHECK_OK(fwd(&DEV1, c, y, x, w, b));
    MS_CHECK_OK(fwd(&DEV2, c, y2, x, w, b));
    ref_eval(c, xd, wd, bd);
    ms_cmp cf = ms_compare(y, c->y, c->n_out), c2 = ms_compare(y2, c->y, c->n_out);
    double nmse_tol = fwd_tol >= 1e-3 ? 1e-10 : 1e-12; /* interpolations: torch's float scale vs exact double */
    MS_CHECK(cf.max_rel < fwd_tol && c2.max_rel < fwd_tol && cf.nmse < nmse_tol && c2.nmse < nmse_tol,
             "%s forward max_rel %.3e / %.3e nmse %.3e (worst %lld)", name, cf.max_rel, c2.max_rel, cf.nmse,
             (long long)cf.worst);
    float *g = frand(c->n_out, -1, 1);
    double *gd = to_d(g, c->n_out);
    c->g = gd;
    float *dx0 = frand(nx, -1, 1), *dw0 = nw ? frand(nw, -1, 1) : NULL, *db0 = nb ? frand(nb, -1, 1) : NULL;
    float *dx = fdup(dx0, nx), *dw = nw ? fdup(dw0, nw) : NULL, *db = nb ? fdup(db0, nb) : NULL;
    MS_CHECK_OK(bwd(&DEV2, c, dx, dw, db, g, x, w));
    float *ax = delta(dx, dx0, nx);
    int64_t wi = -1;
    c->which = 0;
    double ex = ms_fd_check(lin_loss, c, xd, nx, ax, 40, FD_H, &R, &wi), ew = 0, eb = 0;
    MS_CHECK(ex < FD_TOL, "%s dx fd err %.3e at %lld", name, ex, (long long)wi);
    if (nw) {
        float *aw = delta(dw, dw0, nw);
        c->which = 1;
        ew = ms_fd_check(lin_loss, c, wd, nw, aw, 40, FD_H, &R, &wi);
        MS_CHECK(ew < FD_TOL, "%s dw fd err %.3e at %lld", name, ew, (long long)wi);
        free(aw);
    }
    if (nb) {
        float *ab = delta(db, db0, nb);
        c->which = 2;
        eb = ms_fd_check(lin_loss, c, bd, nb, ab, 40, FD_H, &R, &wi);
        MS_CHECK(eb < FD_TOL, "%s db fd err %.3e at %lld", name, eb, (long long)wi);
        free(ab);
    }
    /* NULL gradients are skipped: only dx requested gives the same dx */
    float *dx_only = fdup(dx0, nx);
    MS_CHECK_OK(bwd(&DEV2, c, dx_only, NULL, NULL, g, x, w));
    MS_CHECK(!memcmp(dx_only, dx, (size_t)nx * 4), "%s: dx alone differs from dx with dw/db", name);
    printf("  %-34s fwd max_rel %.2e  fd dx %.2e dw %.2e db %.2e\n", name, cf.max_rel, ex, ew, eb);
    free(x); free(w); free(b); free(y); free(y2); free(xd); free(wd); free(bd); free(c->y); free(g); free(gd);
    free(dx0); free(dw0); free(db0); free(dx); free(dw); free(db); free(ax); free(dx_only);
}

/* op wrappers: sizes come from c->a (see ref_eval for each op's order) */
#define FWD_ARGS ms_device *d, lin_ctx *c, float *y, const float *x, const float *w, const float *b
#define BWD_ARGS ms_device *d, lin_ctx *c, float *dx, float *dw, float *db, const float *dy, const float *x, \
                 const float *w
static ms_status f_part(FWD_ARGS)
{
    (void)w; (void)b;
    int64_t *a = c->a;
    if (c->op == OP_PART) return ms_window_partition_forward(d, y, x, a[0], a[1], a[2], a[3], (int)a[4]);
    return ms_window_unpartition_forward(d, y, x, a[0], a[1], a[2], a[3], (int)a[4]);
}
static ms_status b_part(BWD_ARGS)
{
    (void)dw; (void)db; (void)x; (void)w;
    int64_t *a = c->a;
    if (c->op == OP_PART) return ms_window_partition_backward(d, dx, dy, a[0], a[1], a[2], a[3], (int)a[4]);
    return ms_window_unpartition_backward(d, dx, dy, a[0], a[1], a[2], a[3], (int)a[4]);
}
static ms_status f_rel(FWD_ARGS)
{
    (void)w; (void)b;
    return ms_rel_pos_resize_forward(d, y, x, c->a[0], c->a[2], c->a[1]);
}
static ms_status b_rel(BWD_ARGS)
{
    (void)dw; (void)db; (void)x; (void)w;
    return ms_rel_pos_resize_backward(d, dx, dy, c->a[0], c->a[2], c->a[1]);
}
static ms_status f_rs(FWD_ARGS)
{
    (void)w; (void)b;
    int64_t *a = c->a;
    if (c->op == OP_BICUBIC) return ms_resize_bicubic_forward(d, y, x, a[0], a[1], a[2], a[3], a[4]);
    return ms_resize_bilinear_forward(d, y, x, a[0], a[1], a[2], a[3], a[4]);
}
static ms_status b_rs(BWD_ARGS)
{
    (void)dw; (void)db; (void)x; (void)w;
    int64_t *a = c->a;
    if (c->op == OP_BICUBIC) return ms_resize_bicubic_backward(d, dx, dy, a[0], a[1], a[2], a[3], a[4]);
    return ms_resize_bilinear_backward(d, dx, dy, a[0], a[1], a[2], a[3], a[4]);
}
static ms_status f_patch(FWD_ARGS)
{
    int64_t *a = c->a;
    return ms_conv_patch_forward(d, y, x, w, b, a[0], a[1], a[2], a[3], a[4], (int)a[5], (int)a[6]);
}
static ms_status b_patch(BWD_ARGS)
{
    int64_t *a = c->a;
    return ms_conv_patch_backward(d, dx, dw, db, dy, x, w, a[0], a[1], a[2], a[3], a[4], (int)a[5], (int)a[6]);
}
static ms_status f_conv(FWD_ARGS)
{
    int64_t *a = c->a;
    return ms_conv2d_forward(d, y, x, w, b, a[0], a[1], a[2], a[3], a[4], (int)a[5], (int)a[6]);
}
static ms_status b_conv(BWD_ARGS)
{
    int64_t *a = c->a;
    return ms_conv2d_backward(d, dx, dw, db, dy, x, w, a[0], a[1], a[2], a[3], a[4], (int)a[5], (int)a[6]);
}
static ms_status f_ct(FWD_ARGS)
{
    int64_t *a = c->a;
    return ms_conv_transpose2x2_forward(d, y, x, w, b, a[0], a[1], a[2], a[3], a[4]);
}
static ms_status b_ct(BWD_ARGS)
{
    int64_t *a = c->a;
    return ms_conv_transpose2x2_backward(d, dx, dw, db, dy, x, w, a[0], a[1], a[2], a[3], a[4]);
}

static void test_linear_ops(void)
{
    printf("window / rel_pos / resize / conv\n");
    char name[96];
    /* window partition / unpartition, odd shapes with padding */
    for (int op = OP_PART; op <= OP_UNPART; op++) {
        lin_ctx c = {.op = op, .a = {2, 9, 11, 5, 4}};
        int64_t img = 2 * 9 * 11 * 5, win = 2 * 3 * 3 * 4 * 4 * 5;
        c.n_out = op == OP_PART ? win : img;
        snprintf(name, sizeof name, "%s 2x9x11x5 ws4", op == OP_PART ? "window_partition" : "window_unpartition");
        lin_run(name, &c, op == OP_PART ? img : win, 0, 0, f_part, b_part, 1e-7);
    }
    /* rel-pos resize: up, down, identity */
    int64_t rp[3][3] = {{7, 5, 13}, {27, 3, 11}, {9, 4, 9}};
    for (int i = 0; i < 3; i++) {
        lin_ctx c = {.op = OP_RELPOS, .a = {rp[i][0], rp[i][1], rp[i][2]}, .n_out = rp[i][2] * rp[i][1]};
        snprintf(name, sizeof name, "rel_pos_resize %lld->%lld x%lld", (long long)rp[i][0], (long long)rp[i][2],
                 (long long)rp[i][1]);
        lin_run(name, &c, rp[i][0] * rp[i][1], 0, 0, f_rel, b_rel, 1e-3);
    }
    /* resizes: up, down, mixed, identity */
    int64_t rs[4][5] = {{2, 5, 7, 11, 4}, {3, 9, 8, 4, 3}, {1, 6, 5, 6, 5}, {2, 3, 4, 16, 13}};
    for (int op = OP_BILINEAR; op <= OP_BICUBIC; op++)
        for (int i = 0; i < 4; i++) {
            lin_ctx c = {.op = op, .a = {rs[i][0], rs[i][1], rs[i][2], rs[i][3], rs[i][4]},
                         .n_out = rs[i][0] * rs[i][3] * rs[i][4]};
            snprintf(name, sizeof name, "%s %lldx%lldx%lld->%lldx%lld", op == OP_BILINEAR ? "bilinear" : "bicubic",
                     (long long)rs[i][0], (long long)rs[i][1], (long long)rs[i][2], (long long)rs[i][3],
                     (long long)rs[i][4]);
            lin_run(name, &c, rs[i][0] * rs[i][1] * rs[i][2], 0, 0, f_rs, b_rs, 1e-3);
        }
    /* conv_patch, both layouts, with and without bias */
    for (int nhwc = 0; nhwc < 2; nhwc++) {
        int64_t B = 2, Ci = 3, H = 8, W = 12, Co = 5, k = 4;
        lin_ctx c = {.op = OP_PATCH, .a = {B, Ci, H, W, Co, k, nhwc}, .n_out = B * Co * (H / k) * (W / k)};
        snprintf(name, sizeof name, "conv_patch k4 %s%s", nhwc ? "nhwc" : "nchw", nhwc ? "" : " no bias");
        lin_run(name, &c, B * Ci * H * W, Co * Ci * k * k, nhwc ? Co : 0, f_patch, b_patch, 1e-4);
    }
    /* conv2d 1x1 pad 0 and 3x3 pad 1 (odd sizes) */
    for (int ks = 1; ks <= 3; ks += 2) {
        int64_t B = 2, Ci = 4, H = 7, W = 5, Co = 3, pad = ks / 2;
        lin_ctx c = {.op = OP_CONV, .a = {B, Ci, H, W, Co, ks, pad}, .n_out = B * Co * H * W};
        snprintf(name, sizeof name, "conv2d %dx%d pad %lld%s", ks, ks, (long long)pad, ks == 1 ? " no bias" : "");
        lin_run(name, &c, B * Ci * H * W, Co * Ci * ks * ks, ks == 1 ? 0 : Co, f_conv, b_conv, 1e-4);
    }
    {
        int64_t B = 2, Ci = 5, H = 3, W = 4, Co = 3;
        lin_ctx c = {.op = OP_CT, .a = {B, Ci, H, W, Co}, .n_out = B * Co * 4 * H * W};
        lin_run("conv_transpose2x2 5->3 3x4", &c, B * Ci * H * W, Ci * Co * 4, Co, f_ct, b_ct, 1e-4);
    }
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
