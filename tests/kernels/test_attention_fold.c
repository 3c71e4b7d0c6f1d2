/* tests/kernels/test_attention_fold.c — SAM's decomposed relative positions folded into extra q/k columns
 * (kernels/attention_fold.h) against the relative-position attention op (kernels/attention.h), and the CPU bf16
 * emulation of the op.
 *
 * Token layouts as the image encoder builds them (pretrain/sam_encoder.c): windowed blocks with padded windows
 * (each window's missing slots are extra key rows shared by all windows), global blocks, and the MAE subsets
 * (visible tokens only, grouped by window with the kept pad slots, or per image with their true grid row and
 * column). Sizes, heads (2–3), head dims (16–32), inputs, tables and gradients are random (seed printed).
 * Checks, per layout:
 *  (a) attention with rel-pos vs fold → plain attention (head_dim_qk = dqk, scale 1): out and lse, relative
 *      normwise error < 1e-6 (a different float summation order is the only difference);
 *  (b) backward: dq, dk, dv, drel_h, drel_w (accumulated onto random values) through the fold vs the op, each
 *      normwise < 1e-5;
 *  (c) the fold itself (q', k', and its backward for random dq', dk') against double-precision loops written from
 *      the formula in attention_fold.h: < 2e-6 (k' exactly);
 *  (d) bf16 emulation (dev->precision = bf16): out and every gradient within 1e-2 normwise of fp32, and not
 *      bit-identical to it (the rounding happens);
 *  plus a plain cross attention with head_dim_qk ≠ head_dim against a double loop (max_rel < 5e-4 with the floor
 *  1e-3·max|ref|, NMSE < 1e-11, as test_ops_b has for attention), its bf16 emulation, and
 *  (e) bad descriptors (fold without tables, rel-pos with head_dim_qk, key slots outside the tables) give an
 *      error, not a crash.
 * In a CUDA build with a visible GPU the CUDA fold and its backward are also compared with the CPU fold (< 1e-6
 * normwise, k' exact, backward bit-identical on a repeat); without one only the CPU checks run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention_fold.h"
#include "harness.h"

static ms_rng R;
static ms_device DEV, DEVB; /* fp32, bf16 */

static float *fnew(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }
static float *frand(int64_t n, float a)
{
    float *p = fnew(n);
    ms_fill_uniform(p, n, &R, -a, a);
    return p;
}
static float *fdup(const float *a, int64_t n)
{
    float *d = fnew(n);
    memcpy(d, a, (size_t)n * sizeof(float));
    return d;
}
static int irand(int lo, int hi) { return lo + (int)ms_rng_below(&R, (uint64_t)(hi - lo + 1)); }
static void shuffle(int *x, int n)
{
    for (int t = n - 1; t > 0; t--) {
        int j = (int)ms_rng_below(&R, (uint64_t)t + 1), a = x[t];
        x[t] = x[j];
        x[j] = a;
    }
}

/* Relative normwise error ||a − b|| / ||b|| over n floats. */
static double nerr(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)a[i] - b[i];
        num += e * e;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
/* The same on the accumulated parts (after − before) of two buffers that started equal. */
static double nerr_delta(const float *a, const float *b, const float *before, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = (double)a[i] - before[i], y = (double)b[i] - before[i];
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ---------------------------------------------------------------------------------------------- layouts */

typedef struct layout {
    const char *name;
    int64_t rows, D;        /* token rows of the packed qkv buffer (ld 3·D), out rows (ld D) */
    ms_attention_desc d;
    int32_t *q_off, *q_idx, *k_off, *k_idx, *row, *col; /* owned */
    float *rel_h, *rel_w;
} layout;

static void layout_free(layout *L)
{
    free(L->q_off); free(L->q_idx); free(L->k_off); free(L->k_idx); free(L->row); free(L->col);
    free(L->rel_h); free(L->rel_w);
}

static void layout_common(layout *L, int64_t S)
{
    ms_attention_desc *d = &L->d;
    d->n_heads = irand(2, 3);
    d->head_dim = irand(16, 32);
    d->scale = 1.0f / sqrtf((float)d->head_dim);
    L->D = (int64_t)d->n_heads * d->head_dim;
    d->ldq = d->ldk = d->ldv = 3 * L->D;
    d->ldo = L->D;
    d->len_h = d->len_w = 2 * S - 1;
    L->rel_h = frand(d->len_h * d->head_dim, 0.5f);
    L->rel_w = frand(d->len_w * d->head_dim, 0.5f);
    d->rel_h = L->rel_h;
    d->rel_w = L->rel_w;
    d->q_off = L->q_off; d->q_idx = L->q_idx; d->k_off = L->k_off; d->k_idx = L->k_idx;
    d->q_row = d->k_row = L->row;
    d->q_col = d->k_col = L->col;
}

/* Windowed blocks over B images of a g×g grid, windows ws×ws, the grid padded to a multiple of ws: each window's
 * queries are its real tokens, its keys those plus the pad rows of its missing slots (ws² shared rows after the
 * tokens), coordinates window-local. With keep > 0: the MAE subset — keep visible tokens per image (rows grouped
 * by window), a random half of each window's pad slots kept. */
static layout make_windowed(int B, int g, int ws, int keep)
{
    layout L = {0};
    L.name = keep ? "MAE subset, windowed" : "windowed";
    int nh = (g + ws - 1) / ws, nwin = nh * nh, T = g * g, per = keep ? keep : T;
    int64_t pad_base = (int64_t)B * per, rows = pad_base + ws * ws, G = (int64_t)B * nwin;
    L.rows = rows;
    L.q_off = malloc((size_t)(G + 1) * sizeof(int32_t));
    L.q_idx = malloc((size_t)pad_base * sizeof(int32_t));
    L.k_off = malloc((size_t)(G + 1) * sizeof(int32_t));
    L.k_idx = malloc((size_t)(pad_base + G * ws * ws) * sizeof(int32_t));
    L.row = malloc((size_t)rows * sizeof(int32_t));
    L.col = malloc((size_t)rows * sizeof(int32_t));
    int *tok = malloc((size_t)T * sizeof(int)), *sel = malloc((size_t)T * sizeof(int));
    int64_t nq = 0, nk = 0, gi = 0;
    for (int b = 0; b < B; b++) {
        /* visible tokens: a random subset (or all), then ordered by window and raster inside it */
        for (int t = 0; t < T; t++) tok[t] = t;
        shuffle(tok, T);
        memset(sel, 0, (size_t)T * sizeof(int));
        for (int t = 0; t < per; t++) sel[tok[t]] = 1;
        int64_t r = (int64_t)b * per;
        for (int w = 0; w < nwin; w++, gi++) {
            int wy = w / nh, wx = w % nh;
            L.q_off[gi] = (int32_t)nq;
            L.k_off[gi] = (int32_t)nk;
            for (int y = wy * ws; y < wy * ws + ws; y++)
                for (int x = wx * ws; x < wx * ws + ws; x++) {
                    if (y < g && x < g) {
                        if (!sel[y * g + x]) continue;
                        /* the subset's rows are compact per image; the full layout keeps the raster row */
                        int64_t row = keep ? r++ : (int64_t)b * T + y * g + x;
                        L.row[row] = y % ws;
                        L.col[row] = x % ws;
                        L.q_idx[nq++] = (int32_t)row;
                        L.k_idx[nk++] = (int32_t)row;
                    } else if (!keep || ms_rng_below(&R, 2)) {
                        L.k_idx[nk++] = (int32_t)(pad_base + (y % ws) * ws + x % ws);
                    }
                }
        }
    }
    L.q_off[G] = (int32_t)nq;
    L.k_off[G] = (int32_t)nk;
    for (int i = 0; i < ws * ws; i++) {
        L.row[pad_base + i] = i / ws;
        L.col[pad_base + i] = i % ws;
    }
    free(tok);
    free(sel);
    L.d.n_groups = G;
    layout_common(&L, ws);
    if (keep) L.d.q_idx = NULL; /* the subset's query rows are contiguous per window, as the encoder passes them */
    return L;
}

/* Global blocks: one group per image over its g² tokens, grid coordinates. With keep > 0 the MAE subset: keep
 * random visible tokens per image in random order, uniform groups, each row with its true grid row and column. */
static layout make_global(int B, int g, int keep)
{
    layout L = {0};
    L.name = keep ? "MAE subset, global" : "global";
    int T = g * g, per = keep ? keep : T;
    L.rows = (int64_t)B * per;
    L.row = malloc((size_t)L.rows * sizeof(int32_t));
    L.col = malloc((size_t)L.rows * sizeof(int32_t));
    int *tok = malloc((size_t)T * sizeof(int));
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) tok[t] = t;
        if (keep) shuffle(tok, T);
        for (int i = 0; i < per; i++) {
            L.row[(int64_t)b * per + i] = tok[i] / g;
            L.col[(int64_t)b * per + i] = tok[i] % g;
        }
    }
    free(tok);
    L.d.n_groups = B;
    L.d.nq = L.d.nk = per;
    layout_common(&L, g);
    return L;
}

/* ----------------------------------------------------------------------------- double-precision fold */

/* q'_r and k'_r of every head from the formula (attention_fold.h), in double. */
static void ref_fold_row(double *qf, double *kf, const float *qkv, const ms_attention_desc *d,
                         const ms_attention_fold *f, int64_t r)
{
    int64_t hd = d->head_dim, ch = (d->len_h - 1) / 2, cw = (d->len_w - 1) / 2;
    const float *q = qkv + r * d->ldq, *k = q + d->n_heads * hd;
    for (int64_t h = 0; h < d->n_heads; h++) {
        double *x = qf + h * f->dqk, *y = kf + h * f->dqk;
        for (int64_t c = 0; c < f->dqk; c++) x[c] = y[c] = 0;
        for (int64_t c = 0; c < hd; c++) {
            x[c] = (double)d->scale * q[h * hd + c];
            y[c] = k[h * hd + c];
        }
        for (int64_t s = 0; s < f->lh + f->lw; s++) {
            int hs = s < f->lh;
            int64_t t = hs ? d->q_row[r] - s + ch : d->q_col[r] - (s - f->lh) + cw, len = hs ? d->len_h : d->len_w;
            if (t < 0 || t >= len) continue;
            const float *rel = (hs ? d->rel_h : d->rel_w) + t * hd;
            double a = 0;
            for (int64_t c = 0; c < hd; c++) a += (double)q[h * hd + c] * rel[c];
            x[hd + s] = a;
        }
        y[hd + d->k_row[r]] = 1;
        y[hd + f->lh + d->k_col[r]] = 1;
    }
}

/* in[r]: bit 0 when row r is a query of some group, bit 1 when a key. */
static uint8_t *membership(const ms_attention_desc *d, int64_t rows)
{
    uint8_t *in = calloc((size_t)rows, 1);
    for (int64_t g = 0; g < d->n_groups; g++)
        for (int keys = 0; keys < 2; keys++) {
            const int32_t *off = keys ? d->k_off : d->q_off, *idx = keys ? d->k_idx : d->q_idx;
            int64_t u = keys ? d->nk : d->nq, s0 = off ? off[g] : g * u, n = off ? off[g + 1] - off[g] : u;
            for (int64_t t = 0; t < n; t++) in[idx ? idx[s0 + t] : s0 + t] |= (uint8_t)(1 << keys);
        }
    return in;
}

/* (c): the fold and its backward against the double loops (q' and dq over query rows, k' and dk over key rows). */
static void check_fold(const layout *L, const float *qkv)
{
    const ms_attention_desc *d = &L->d;
    ms_attention_fold f;
    MS_CHECK_OK(ms_attention_fold_plan(d, L->rows, L->rows, &f));
    int64_t H = d->n_heads, hd = d->head_dim, W = H * f.dqk, n = L->rows * W;
    MS_CHECK(f.dqk % 16 == 0 && f.dqk >= hd + f.lh + f.lw && f.dqk < hd + f.lh + f.lw + 16, "%s: dqk %d", L->name,
             f.dqk);
    float *qf = fnew(n), *kf = fnew(n);
    MS_CHECK_OK(ms_attention_fold_forward(&DEV, qf, kf, qkv, qkv + L->D, d, &f));
    double *rq = calloc((size_t)W, sizeof(double)), *rk = calloc((size_t)W, sizeof(double));
    double qerr = 0, qmax = 0;
    int64_t kbad = 0;
    /* backward: random dq', dk' onto random dq, dk, drel */
    float *dqf = frand(n, 1.0f), *dkf = frand(n, 1.0f), *dqkv = frand(L->rows * 3 * L->D, 1.0f);
    float *before = fdup(dqkv, L->rows * 3 * L->D);
    float *drh = frand(d->len_h * hd, 1.0f), *drw = frand(d->len_w * hd, 1.0f);
    float *drh0 = fdup(drh, d->len_h * hd), *drw0 = fdup(drw, d->len_w * hd);
    MS_CHECK_OK(ms_attention_fold_backward(&DEV, dqkv, dqkv + L->D, drh, drw, dqf, dkf, qkv, d, &f));
    double *gq = calloc((size_t)(L->rows * L->D), sizeof(double));
    double *gk = calloc((size_t)(L->rows * L->D), sizeof(double));
    double *grh = calloc((size_t)(d->len_h * hd), sizeof(double));
    double *grw = calloc((size_t)(d->len_w * hd), sizeof(double));
    int64_t ch = (d->len_h - 1) / 2, cw = (d->len_w - 1) / 2;
    uint8_t *in = membership(d, L->rows);
    for (int64_t r = 0; r < L->rows; r++) {
        ref_fold_row(rq, rk, qkv, d, &f, r);
        for (int64_t i = 0; i < W; i++) {
            double e = (in[r] & 1) ? fabs(qf[r * W + i] - rq[i]) : fabs(qf[r * W + i]); /* other rows untouched */
            if (e > qerr) qerr = e;
            if ((in[r] & 1) && fabs(rq[i]) > qmax) qmax = fabs(rq[i]);
            kbad += kf[r * W + i] != ((in[r] & 2) ? (float)rk[i] : 0.0f);
        }
        const float *q = qkv + r * d->ldq;
        for (int64_t h = 0; h < H; h++) {
            const float *a = dqf + r * W + h * f.dqk;
            for (int64_t c = 0; c < hd; c++) {
                if (in[r] & 1) gq[r * L->D + h * hd + c] += (double)d->scale * a[c];
                if (in[r] & 2) gk[r * L->D + h * hd + c] += dkf[r * W + h * f.dqk + c];
            }
            if (!(in[r] & 1)) continue;
            for (int64_t s = 0; s < f.lh + f.lw; s++) {
                int hs = s < f.lh;
                int64_t t = hs ? d->q_row[r] - s + ch : d->q_col[r] - (s - f.lh) + cw, len = hs ? d->len_h : d->len_w;
                if (t < 0 || t >= len) continue;
                const float *rel = (hs ? d->rel_h : d->rel_w) + t * hd;
                double *gr = (hs ? grh : grw) + t * hd;
                for (int64_t c = 0; c < hd; c++) {
                    gq[r * L->D + h * hd + c] += (double)a[hd + s] * rel[c];
                    gr[c] += (double)a[hd + s] * q[h * hd + c];
                }
            }
        }
    }
    MS_CHECK(qerr <= 2e-6 * qmax, "%s: fold q' max error %.3g (max |q'| %.3g)", L->name, qerr, qmax);
    MS_CHECK(kbad == 0, "%s: fold k' differs in %lld places", L->name, (long long)kbad);
    /* backward: compare the accumulated parts in double */
    double worst = 0;
    for (int part = 0; part < 4; part++) {
        int64_t m = part < 2 ? L->rows * L->D : (part == 2 ? d->len_h : d->len_w) * hd;
        double num = 0, den = 0;
        for (int64_t i = 0; i < m; i++) {
            double got, ref;
            if (part < 2) {
                int64_t r = i / L->D, c = i % L->D, at = r * 3 * L->D + part * L->D + c;
                got = (double)dqkv[at] - before[at];
                ref = part ? gk[i] : gq[i];
            } else {
                got = part == 2 ? (double)drh[i] - drh0[i] : (double)drw[i] - drw0[i];
                ref = part == 2 ? grh[i] : grw[i];
            }
            num += (got - ref) * (got - ref);
            den += ref * ref;
        }
        double e = sqrt(num / (den > 0 ? den : 1));
        if (e > worst) worst = e;
        MS_CHECK(e < 2e-6, "%s: fold backward part %d (dq, dk, drel_h, drel_w) normwise %.3g", L->name, part, e);
    }
    printf("  %-22s fold vs double: q' max %.2e (rel. to max |q'|), k' exact, backward normwise max %.2e\n", L->name,
           qerr / qmax, worst);
    free(qf); free(kf); free(rq); free(rk); free(dqf); free(dkf); free(dqkv); free(before);
    free(drh); free(drw); free(drh0); free(drw0); free(gq); free(gk); free(grh); free(grw); free(in);
}

/* ----------------------------------------------------------------------- (a), (b), (d) on one layout */

typedef struct grads {
    float *out, *lse, *dqkv, *drh, *drw;
} grads;

static void grads_free(grads *g) { free(g->out); free(g->lse); free(g->dqkv); free(g->drh); free(g->drw); }

/* The rel-pos op on device dev: forward, then backward onto copies of the random initial gradients. */
static grads run_op(ms_device *dev, const layout *L, const float *qkv, const float *dout, const grads *init)
{
    const ms_attention_desc *d = &L->d;
    int64_t n3 = L->rows * 3 * L->D, hd = d->head_dim;
    grads g = {fnew(L->rows * L->D), fnew(L->rows * d->n_heads), fdup(init->dqkv, n3),
               fdup(init->drh, d->len_h * hd), fdup(init->drw, d->len_w * hd)};
    MS_CHECK_OK(ms_attention_forward(dev, g.out, g.lse, qkv, qkv + L->D, qkv + 2 * L->D, d));
    MS_CHECK_OK(ms_attention_backward(dev, g.dqkv, g.dqkv + L->D, g.dqkv + 2 * L->D, g.drh, g.drw, dout, g.out, g.lse,
                                      qkv, qkv + L->D, qkv + 2 * L->D, d));
    return g;
}

/* The same through the fold: q', k' → plain attention (head_dim_qk = dqk, scale 1) → unfold. */
static grads run_fold(const layout *L, const float *qkv, const float *dout, const grads *init)
{
    const ms_attention_desc *d = &L->d;
    int64_t n3 = L->rows * 3 * L->D, hd = d->head_dim;
    grads g = {fnew(L->rows * L->D), fnew(L->rows * d->n_heads), fdup(init->dqkv, n3),
               fdup(init->drh, d->len_h * hd), fdup(init->drw, d->len_w * hd)};
    ms_attention_fold f;
    MS_CHECK_OK(ms_attention_fold_plan(d, L->rows, L->rows, &f));
    int64_t n = L->rows * d->n_heads * f.dqk;
    float *qf = fnew(n), *kf = fnew(n), *dqf = fnew(n), *dkf = fnew(n);
    ms_attention_desc pd = ms_attention_fold_desc(d, &f);
    MS_CHECK(pd.head_dim_qk == f.dqk && pd.scale == 1.0f && !pd.rel_h && pd.ldq == d->n_heads * f.dqk,
             "%s: fold descriptor", L->name);
    MS_CHECK_OK(ms_attention_fold_forward(&DEV, qf, kf, qkv, qkv + L->D, d, &f));
    MS_CHECK_OK(ms_attention_forward(&DEV, g.out, g.lse, qf, kf, qkv + 2 * L->D, &pd));
    MS_CHECK_OK(ms_attention_backward(&DEV, dqf, dkf, g.dqkv + 2 * L->D, NULL, NULL, dout, g.out, g.lse, qf, kf,
                                      qkv + 2 * L->D, &pd));
    MS_CHECK_OK(ms_attention_fold_backward(&DEV, g.dqkv, g.dqkv + L->D, g.drh, g.drw, dqf, dkf, qkv, d, &f));
    free(qf); free(kf); free(dqf); free(dkf);
    return g;
}

/* Normwise errors of b against a: out, lse, dq, dk, dv, drel_h, drel_w (gradients: their accumulated parts). */
static void compare(const layout *L, const grads *a, const grads *b, const grads *init, double e[7])
{
    const ms_attention_desc *d = &L->d;
    int64_t D = L->D, n = L->rows, hd = d->head_dim;
    e[0] = nerr(b->out, a->out, n * D);
    e[1] = nerr(b->lse, a->lse, n * d->n_heads);
    for (int part = 0; part < 3; part++) {
        /* one of q, k, v's column blocks of the packed buffers */
        float *x = fnew(n * D), *y = fnew(n * D), *z = fnew(n * D);
        for (int64_t r = 0; r < n; r++)
            for (int64_t c = 0; c < D; c++) {
                int64_t at = r * 3 * D + part * D + c;
                x[r * D + c] = b->dqkv[at];
                y[r * D + c] = a->dqkv[at];
                z[r * D + c] = init->dqkv[at];
            }
        e[2 + part] = nerr_delta(x, y, z, n * D);
        free(x); free(y); free(z);
    }
    e[5] = nerr_delta(b->drh, a->drh, init->drh, d->len_h * hd);
    e[6] = nerr_delta(b->drw, a->drw, init->drw, d->len_w * hd);
}

static double worst_fold[7], worst_bf16[7];

static void check_layout(layout *L)
{
    const ms_attention_desc *d = &L->d;
    int64_t n3 = L->rows * 3 * L->D, hd = d->head_dim;
    printf("%s: %lld groups, %d heads, head_dim %d, tables %lld, %lld token rows\n", L->name, (long long)d->n_groups,
           d->n_heads, d->head_dim, (long long)d->len_h, (long long)L->rows);
    float *qkv = frand(n3, 1.0f), *dout = frand(L->rows * L->D, 1.0f);
    grads init = {NULL, NULL, frand(n3, 1.0f), frand(d->len_h * hd, 1.0f), frand(d->len_w * hd, 1.0f)};
    check_fold(L, qkv);
    grads ref = run_op(&DEV, L, qkv, dout, &init), fo = run_fold(L, qkv, dout, &init);
    double e[7];
    static const char *nm[7] = {"out", "lse", "dq", "dk", "dv", "drel_h", "drel_w"};
    compare(L, &ref, &fo, &init, e);
    for (int i = 0; i < 7; i++) {
        MS_CHECK(e[i] < (i < 2 ? 1e-6 : 1e-5), "%s: fold path %s normwise error %.3g", L->name, nm[i], e[i]);
        if (e[i] > worst_fold[i]) worst_fold[i] = e[i];
    }
    printf("  %-22s fold path vs op: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e drel_h %.2e drel_w %.2e\n", L->name,
           e[0], e[1], e[2], e[3], e[4], e[5], e[6]);
    /* (d) bf16 emulation */
    grads bf = run_op(&DEVB, L, qkv, dout, &init);
    compare(L, &ref, &bf, &init, e);
    for (int i = 0; i < 7; i++) {
        MS_CHECK(e[i] < 1e-2, "%s: bf16 %s normwise error %.3g", L->name, nm[i], e[i]);
        if (e[i] > worst_bf16[i]) worst_bf16[i] = e[i];
    }
    MS_CHECK(memcmp(bf.out, ref.out, (size_t)(L->rows * L->D) * sizeof(float)) != 0 &&
                 memcmp(bf.dqkv, ref.dqkv, (size_t)n3 * sizeof(float)) != 0 &&
                 memcmp(bf.drh, ref.drh, (size_t)(d->len_h * hd) * sizeof(float)) != 0,
             "%s: bf16 results are bit-identical to fp32 (no rounding happened)", L->name);
    printf("  %-22s bf16 vs fp32:    out %.2e lse %.2e dq %.2e dk %.2e dv %.2e drel_h %.2e drel_w %.2e\n", L->name,
           e[0], e[1], e[2], e[3], e[4], e[5], e[6]);
    grads_free(&ref); grads_free(&fo); grads_free(&bf); grads_free(&init);
    free(qkv); free(dout);
}

/* ------------------------------------------------------ plain cross attention, head_dim_qk ≠ head_dim */

static void check_cross(void)
{
    int H = irand(2, 3), hd = irand(16, 32), hq = hd + 8 * irand(1, 3), nq = irand(5, 9), nk = irand(40, 70), G = 2;
    ms_attention_desc d = {.n_groups = G, .n_heads = H, .head_dim = hd, .head_dim_qk = hq, .scale = 0.3f, .nq = nq,
                           .nk = nk, .ldq = H * hq, .ldk = H * hq, .ldv = H * hd, .ldo = H * hd};
    float *q = frand(G * nq * H * hq, 1.0f), *k = frand(G * nk * H * hq, 1.0f), *v = frand(G * nk * H * hd, 1.0f);
    float *out = fnew(G * nq * H * hd), *lse = fnew(G * nq * H);
    float *outb = fnew(G * nq * H * hd), *lseb = fnew(G * nq * H);
    MS_CHECK_OK(ms_attention_forward(&DEV, out, lse, q, k, v, &d));
    MS_CHECK_OK(ms_attention_forward(&DEVB, outb, lseb, q, k, v, &d));
    double *ro = calloc((size_t)(G * nq * H * hd), sizeof(double)), *s = calloc((size_t)nk, sizeof(double));
    for (int g = 0; g < G; g++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < nq; i++) {
                const float *qi = q + ((int64_t)(g * nq + i) * H + h) * hq;
                double m = -INFINITY, sum = 0;
                for (int j = 0; j < nk; j++) {
                    const float *kj = k + ((int64_t)(g * nk + j) * H + h) * hq;
                    double a = 0;
                    for (int c = 0; c < hq; c++) a += (double)qi[c] * kj[c];
                    s[j] = 0.3 * a;
                    if (s[j] > m) m = s[j];
                }
                for (int j = 0; j < nk; j++) sum += exp(s[j] - m);
                double *o = ro + ((int64_t)(g * nq + i) * H + h) * hd;
                for (int j = 0; j < nk; j++) {
                    const float *vj = v + ((int64_t)(g * nk + j) * H + h) * hd;
                    for (int c = 0; c < hd; c++) o[c] += exp(s[j] - m) / sum * vj[c];
                }
            }
    ms_cmp c = ms_compare(out, ro, G * nq * H * hd);
    MS_CHECK(c.max_rel < 5e-4 && c.nmse < 1e-11, "cross attention, head_dim_qk %d: max_rel %.3g nmse %.3g", hq,
             c.max_rel, c.nmse);
    double eb = nerr(outb, out, G * nq * H * hd);
    MS_CHECK(eb < 1e-2 && memcmp(outb, out, (size_t)(G * nq * H * hd) * sizeof(float)) != 0,
             "cross attention bf16: normwise %.3g (or bit-identical to fp32)", eb);
    printf("cross attention, head_dim %d, head_dim_qk %d: vs double max_rel %.2e; bf16 vs fp32 out %.2e\n", hd, hq,
           c.max_rel, eb);
    free(q); free(k); free(v); free(out); free(lse); free(outb); free(lseb); free(ro); free(s);
}

/* ------------------------------------------------------------------------------ (e) bad descriptors */

static void check_bad(layout *L)
{
    ms_attention_desc d = L->d;
    ms_attention_fold f;
    float *buf = fnew(L->rows * 3 * L->D), *out = fnew(L->rows * L->D), *lse = fnew(L->rows * d.n_heads);
    d.rel_h = NULL;
    MS_CHECK(ms_attention_fold_plan(&d, L->rows, L->rows, &f) == MS_EINVAL, "fold without tables accepted");
    printf("  fold without tables: %s\n", ms_errmsg());
    d = L->d;
    d.head_dim_qk = d.head_dim + 16;
    MS_CHECK(ms_attention_fold_plan(&d, L->rows, L->rows, &f) == MS_EINVAL, "fold with head_dim_qk accepted");
    MS_CHECK(ms_attention_forward(&DEV, out, lse, buf, buf + L->D, buf + 2 * L->D, &d) == MS_EINVAL,
             "rel-pos attention with head_dim_qk accepted");
    printf("  rel-pos with head_dim_qk: %s\n", ms_errmsg());
    MS_CHECK(ms_attention_forward(&DEVB, out, lse, buf, buf + L->D, buf + 2 * L->D, &d) == MS_EINVAL,
             "bf16 rel-pos attention with head_dim_qk accepted");
    d = L->d;
    d.head_dim = 0;
    MS_CHECK(ms_attention_fold_plan(&d, L->rows, L->rows, &f) == MS_EINVAL, "fold with head_dim 0 accepted");
    /* a key slot outside the tables (k_row = Lh), and a row count below the rows used */
    d = L->d;
    MS_CHECK_OK(ms_attention_fold_plan(&d, L->rows, L->rows, &f));
    int32_t *row = malloc((size_t)L->rows * sizeof(int32_t));
    memcpy(row, L->row, (size_t)L->rows * sizeof(int32_t));
    row[0] = f.lh;
    d.k_row = row;
    int64_t n = L->rows * d.n_heads * f.dqk;
    float *qf = fnew(n), *kf = fnew(n);
    MS_CHECK(ms_attention_fold_forward(&DEV, qf, kf, buf, buf + L->D, &d, &f) == MS_EINVAL,
             "fold with a key row outside the slots accepted");
    printf("  key slot outside: %s\n", ms_errmsg());
    d = L->d;
    uint8_t *in = membership(&d, L->rows);
    int64_t last = L->rows - 1; /* the largest row id in use: rows [0, last) leave it out */
    while (last > 0 && !in[last]) last--;
    free(in);
    MS_CHECK_OK(ms_attention_fold_plan(&d, last, last, &f));
    MS_CHECK(ms_attention_fold_forward(&DEV, qf, kf, buf, buf + L->D, &d, &f) == MS_EINVAL,
             "fold over too few rows accepted");
    MS_CHECK(ms_attention_fold_backward(&DEV, buf, buf + L->D, NULL, NULL, qf, kf, buf, &d, &f) == MS_EINVAL,
             "fold backward over too few rows accepted");
    printf("  too few rows: %s\n", ms_errmsg());
    free(row); free(qf); free(kf); free(buf); free(out); free(lse);
}

#ifdef MS_HAVE_CUDA
/* ------------------------------------------- the CUDA fold against the CPU fold (only where a GPU is visible) */

static void *up(ms_device *gpu, const void *host, size_t bytes, void **list, int *n)
{
    void *p = NULL;
    if (!host) return NULL;
    MS_CHECK_OK(ms_dev_alloc(gpu, bytes, &p));
    if (p) MS_CHECK_OK(ms_dev_from_host(gpu, p, host, bytes));
    list[(*n)++] = p;
    return p;
}

static void check_cuda(ms_device *gpu, const layout *L)
{
    const ms_attention_desc *d = &L->d;
    ms_attention_fold f;
    MS_CHECK_OK(ms_attention_fold_plan(d, L->rows, L->rows, &f));
    int64_t n = L->rows * d->n_heads * f.dqk, n3 = L->rows * 3 * L->D, hd = d->head_dim, G = d->n_groups;
    float *qkv = frand(n3, 1.0f), *dqf = frand(n, 1.0f), *dkf = frand(n, 1.0f), *g0 = frand(n3, 1.0f);
    float *rh0 = frand(d->len_h * hd, 1.0f), *rw0 = frand(d->len_w * hd, 1.0f);
    /* CPU */
    float *qf = fnew(n), *kf = fnew(n), *g = fdup(g0, n3);
    float *rh = fdup(rh0, d->len_h * hd), *rw = fdup(rw0, d->len_w * hd);
    MS_CHECK_OK(ms_attention_fold_forward(&DEV, qf, kf, qkv, qkv + L->D, d, &f));
    MS_CHECK_OK(ms_attention_fold_backward(&DEV, g, g + L->D, rh, rw, dqf, dkf, qkv, d, &f));
    /* CUDA, twice (the backward must be bit-identical) */
    void *list[32];
    int nl = 0;
    ms_attention_desc gd = *d;
    size_t I = sizeof(int32_t);
    gd.q_off = up(gpu, d->q_off, (size_t)(G + 1) * I, list, &nl);
    gd.k_off = up(gpu, d->k_off, (size_t)(G + 1) * I, list, &nl);
    gd.q_idx = up(gpu, d->q_idx, (size_t)(d->q_off ? d->q_off[G] : 1) * I, list, &nl);
    gd.k_idx = up(gpu, d->k_idx, (size_t)(d->k_off ? d->k_off[G] : 1) * I, list, &nl);
    gd.q_row = gd.k_row = up(gpu, d->q_row, (size_t)L->rows * I, list, &nl);
    gd.q_col = gd.k_col = up(gpu, d->q_col, (size_t)L->rows * I, list, &nl);
    gd.rel_h = up(gpu, d->rel_h, (size_t)(d->len_h * hd) * 4, list, &nl);
    gd.rel_w = up(gpu, d->rel_w, (size_t)(d->len_w * hd) * 4, list, &nl);
    float *x = up(gpu, qkv, (size_t)n3 * 4, list, &nl), *gdqf = up(gpu, dqf, (size_t)n * 4, list, &nl);
    float *gdkf = up(gpu, dkf, (size_t)n * 4, list, &nl), *gqf = up(gpu, qf, (size_t)n * 4, list, &nl);
    float *gkf = up(gpu, kf, (size_t)n * 4, list, &nl);
    MS_CHECK_OK(ms_dev_zero(gpu, gqf, (size_t)n * 4));
    MS_CHECK_OK(ms_dev_zero(gpu, gkf, (size_t)n * 4));
    MS_CHECK_OK(ms_attention_fold_forward(gpu, gqf, gkf, x, x + L->D, &gd, &f));
    float *hq = fnew(n), *hk = fnew(n), *hg[2], *hrh[2], *hrw[2];
    MS_CHECK_OK(ms_dev_to_host(gpu, hq, gqf, (size_t)n * 4));
    MS_CHECK_OK(ms_dev_to_host(gpu, hk, gkf, (size_t)n * 4));
    for (int rep = 0; rep < 2; rep++) {
        float *gg = up(gpu, g0, (size_t)n3 * 4, list, &nl), *grh = up(gpu, rh0, (size_t)(d->len_h * hd) * 4, list, &nl);
        float *grw = up(gpu, rw0, (size_t)(d->len_w * hd) * 4, list, &nl);
        MS_CHECK_OK(ms_attention_fold_backward(gpu, gg, gg + L->D, grh, grw, gdqf, gdkf, x, &gd, &f));
        hg[rep] = fnew(n3);
        hrh[rep] = fnew(d->len_h * hd);
        hrw[rep] = fnew(d->len_w * hd);
        MS_CHECK_OK(ms_dev_to_host(gpu, hg[rep], gg, (size_t)n3 * 4));
        MS_CHECK_OK(ms_dev_to_host(gpu, hrh[rep], grh, (size_t)(d->len_h * hd) * 4));
        MS_CHECK_OK(ms_dev_to_host(gpu, hrw[rep], grw, (size_t)(d->len_w * hd) * 4));
    }
    double eq = nerr(hq, qf, n), eg = nerr_delta(hg[0], g, g0, n3), eh = nerr_delta(hrh[0], rh, rh0, d->len_h * hd);
    double ew = nerr_delta(hrw[0], rw, rw0, d->len_w * hd);
    MS_CHECK(eq < 1e-6 && !memcmp(hk, kf, (size_t)n * 4), "%s: CUDA fold q' %.3g (or k' differs)", L->name, eq);
    MS_CHECK(eg < 1e-6 && eh < 1e-6 && ew < 1e-6, "%s: CUDA fold backward dq/dk %.3g drel_h %.3g drel_w %.3g",
             L->name, eg, eh, ew);
    MS_CHECK(!memcmp(hg[0], hg[1], (size_t)n3 * 4) && !memcmp(hrh[0], hrh[1], (size_t)(d->len_h * hd) * 4) &&
                 !memcmp(hrw[0], hrw[1], (size_t)(d->len_w * hd) * 4),
             "%s: CUDA fold backward not bit-identical on a repeat", L->name);
    printf("  %-22s CUDA fold vs CPU: q' %.2e, k' exact, dq/dk %.2e drel_h %.2e drel_w %.2e\n", L->name, eq, eg,
           eh, ew);
    for (int i = 0; i < nl; i++) ms_dev_free(gpu, list[i]);
    for (int rep = 0; rep < 2; rep++) { free(hg[rep]); free(hrh[rep]); free(hrw[rep]); }
    free(qkv); free(dqf); free(dkf); free(g0); free(rh0); free(rw0); free(qf); free(kf); free(g); free(rh); free(rw);
    free(hq); free(hk);
}
#endif

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng_init(&R, seed, 13);
    if (ms_device_init(&DEV, MS_DEV_CPU, 2) || ms_device_init(&DEVB, MS_DEV_CPU, 2)) {
        printf("device init failed: %s\n", ms_errmsg());
        return 1;
    }
    DEVB.precision = MS_PREC_BF16;
    layout L[4];
    /* 14×14 windows over a grid that is not a multiple of 14 (pad rows in the border windows) */
    L[0] = make_windowed(1, irand(15, 26), 14, 0);
    L[1] = make_global(2, 16, 0);
    L[2] = make_windowed(2, irand(15, 26), 14, irand(60, 120));
    L[3] = make_global(2, 16, irand(40, 120));
    for (int i = 0; i < 4; i++) check_layout(&L[i]);
    check_cross();
#ifdef MS_HAVE_CUDA
    ms_device gpu;
    if (ms_cuda_available() && !ms_device_init(&gpu, MS_DEV_CUDA, 0)) {
        for (int i = 0; i < 4; i++) check_cuda(&gpu, &L[i]);
        ms_device_free(&gpu);
    } else {
        printf("no CUDA device: the CUDA fold is not checked\n");
    }
#endif
    printf("bad descriptors:\n");
    check_bad(&L[2]);
    printf("worst fold path vs op:  out %.2e lse %.2e dq %.2e dk %.2e dv %.2e drel_h %.2e drel_w %.2e\n",
           worst_fold[0], worst_fold[1], worst_fold[2], worst_fold[3], worst_fold[4], worst_fold[5], worst_fold[6]);
    printf("worst bf16 vs fp32:     out %.2e lse %.2e dq %.2e dk %.2e dv %.2e drel_h %.2e drel_w %.2e\n",
           worst_bf16[0], worst_bf16[1], worst_bf16[2], worst_bf16[3], worst_bf16[4], worst_bf16[5], worst_bf16[6]);
    for (int i = 0; i < 4; i++) layout_free(&L[i]);
    ms_device_free(&DEV);
    ms_device_free(&DEVB);
    return ms_test_done();
}
