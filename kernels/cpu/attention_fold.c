/* kernels/cpu/attention_fold.c — SAM's decomposed relative positions folded into extra query/key columns
 * (contract: kernels/attention_fold.h), fp32, OpenMP. Also the home of ms_attention_fold_plan / _desc, which are
 * backend-independent (they read the descriptor's scalars only) and serve the CUDA backend too.
 *
 * The group rows are listed first, on the calling thread (ms_errmsg is per thread): every query row (a query row
 * in two groups is an error, attention.h forbids it) and every distinct key row (groups may share key rows), with
 * all index checks. Then one thread owns each listed row (static schedule): it writes qf / kf, or adds into dq /
 * dk. drel_h / drel_w go to per-thread partial tables that are added in thread order after the region, so every
 * result is a pure function of the thread count.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention_fold.h"

ms_status ms_attention_fold_plan(const ms_attention_desc *d, int64_t n_q, int64_t n_k, ms_attention_fold *f)
{
    MS_FAIL_IF(!d || !f, MS_EINVAL, "attention fold: no descriptor");
    MS_FAIL_IF(!d->rel_h || !d->rel_w || d->len_h <= 0 || d->len_w <= 0, MS_EINVAL,
               "attention fold: the descriptor has no relative-position tables (rel_h, rel_w and their lengths)");
    MS_FAIL_IF(!d->q_row || !d->q_col || !d->k_row || !d->k_col, MS_EINVAL,
               "attention fold: relative positions need the q/k row and column lists");
    MS_FAIL_IF(d->n_groups < 0 || d->n_heads <= 0 || d->head_dim <= 0, MS_EINVAL,
               "attention fold: bad sizes groups=%lld heads=%d head_dim=%d", (long long)d->n_groups, d->n_heads,
               d->head_dim);
    MS_FAIL_IF(d->head_dim_qk != 0 && d->head_dim_qk != d->head_dim, MS_EINVAL,
               "attention fold: head_dim_qk %d with relative positions (q and k must be head_dim %d wide)",
               d->head_dim_qk, d->head_dim);
    MS_FAIL_IF(n_q < 0 || n_k < 0, MS_EINVAL, "attention fold: negative row counts %lld, %lld", (long long)n_q,
               (long long)n_k);
    int64_t D = (int64_t)d->n_heads * d->head_dim;
    MS_FAIL_IF(d->ldq < D || d->ldk < D, MS_EINVAL,
               "attention fold: row strides (%lld, %lld) below heads·head_dim %lld", (long long)d->ldq,
               (long long)d->ldk, (long long)D);
    /* table lengths bounded so that dqk (an int, with tensor-core padding) cannot overflow */
    MS_FAIL_IF(d->len_h > (1 << 20) || d->len_w > (1 << 20) || d->head_dim > (1 << 20), MS_EINVAL,
               "attention fold: tables of %lld and %lld rows are too long", (long long)d->len_h, (long long)d->len_w);
    f->n_q = n_q;
    f->n_k = n_k;
    f->n_heads = d->n_heads;
    f->head_dim = d->head_dim;
    f->lh = (int)((d->len_h + 1) / 2);
    f->lw = (int)((d->len_w + 1) / 2);
    f->dqk = (d->head_dim + f->lh + f->lw + 15) & ~15;
    return MS_OK;
}

ms_attention_desc ms_attention_fold_desc(const ms_attention_desc *d, const ms_attention_fold *f)
{
    ms_attention_desc p = *d;
    p.head_dim_qk = f->dqk;
    p.ldq = p.ldk = (int64_t)f->n_heads * f->dqk;
    p.scale = 1.0f;
    p.rel_h = p.rel_w = NULL;
    p.len_h = p.len_w = 0;
    p.q_row = p.q_col = p.k_row = p.k_col = NULL;
    return p;
}

/* The listed rows of a descriptor: query rows, distinct key rows. */
typedef struct fold_rows {
    int64_t *q, *k;
    int64_t nq, nk;
} fold_rows;

static int64_t grp_start(const int32_t *off, int64_t uniform, int64_t g) { return off ? off[g] : g * uniform; }
static int64_t grp_count(const int32_t *off, int64_t uniform, int64_t g)
{
    return off ? (int64_t)off[g + 1] - off[g] : uniform;
}

/* Checks group g's keys (rows, row/column slots) and lists the new ones; returns the key slots' extent. */
static ms_status list_keys(fold_rows *w, uint8_t *seen, const ms_attention_desc *d, const ms_attention_fold *f,
                           int64_t g, int64_t ext[4])
{
    int64_t s0 = grp_start(d->k_off, d->nk, g), n = grp_count(d->k_off, d->nk, g);
    ext[0] = ext[2] = INT64_MAX;
    ext[1] = ext[3] = INT64_MIN;
    for (int64_t t = 0; t < n; t++) {
        int64_t r = d->k_idx ? d->k_idx[s0 + t] : s0 + t;
        MS_FAIL_IF(r < 0 || r >= f->n_k, MS_EINVAL, "attention fold: key row %lld of group %lld outside [0, %lld)",
                   (long long)r, (long long)g, (long long)f->n_k);
        int64_t a = d->k_row[r], b = d->k_col[r];
        MS_FAIL_IF(a < 0 || a >= f->lh || b < 0 || b >= f->lw, MS_EINVAL,
                   "attention fold: key row %lld at (%lld, %lld) outside the %d×%d slots of the tables",
                   (long long)r, (long long)a, (long long)b, f->lh, f->lw);
        if (a < ext[0]) ext[0] = a;
        if (a > ext[1]) ext[1] = a;
        if (b < ext[2]) ext[2] = b;
        if (b > ext[3]) ext[3] = b;
        if (!(seen[r] & 2)) {
            seen[r] |= 2;
            w->k[w->nk++] = r;
        }
    }
    return MS_OK;
}

static ms_status list_queries(fold_rows *w, uint8_t *seen, const ms_attention_desc *d, const ms_attention_fold *f,
                              int64_t g, const int64_t ext[4])
{
    int64_t s0 = grp_start(d->q_off, d->nq, g), n = grp_count(d->q_off, d->nq, g);
    int64_t ch = (d->len_h - 1) / 2, cw = (d->len_w - 1) / 2;
    int has_keys = ext[1] >= ext[0];
    for (int64_t t = 0; t < n; t++) {
        int64_t r = d->q_idx ? d->q_idx[s0 + t] : s0 + t;
        MS_FAIL_IF(r < 0 || r >= f->n_q, MS_EINVAL, "attention fold: query row %lld of group %lld outside [0, %lld)",
                   (long long)r, (long long)g, (long long)f->n_q);
        MS_FAIL_IF(seen[r] & 1, MS_EINVAL, "attention fold: query row %lld is in two groups", (long long)r);
        int64_t a = d->q_row[r], b = d->q_col[r];
        MS_FAIL_IF(has_keys && (a - ext[1] + ch < 0 || a - ext[0] + ch >= d->len_h || b - ext[3] + cw < 0 ||
                                b - ext[2] + cw >= d->len_w),
                   MS_EINVAL,
                   "attention fold: relative offset outside the tables (len_h %lld, len_w %lld) in group %lld",
                   (long long)d->len_h, (long long)d->len_w, (long long)g);
        seen[r] |= 1;
        w->q[w->nq++] = r;
    }
    return MS_OK;
}

static ms_status rows_make(fold_rows *w, const ms_attention_desc *d, const ms_attention_fold *f)
{
    memset(w, 0, sizeof *w);
    MS_FAIL_IF(f->n_heads != d->n_heads || f->head_dim != d->head_dim, MS_EINVAL,
               "attention fold: the fold was planned for another descriptor");
    int64_t n = f->n_q > f->n_k ? f->n_q : f->n_k;
    uint8_t *seen = calloc((size_t)(n > 0 ? n : 1), 1); /* bit 0: query row listed, bit 1: key row listed */
    w->q = malloc((size_t)(f->n_q > 0 ? f->n_q : 1) * sizeof(int64_t));
    w->k = malloc((size_t)(f->n_k > 0 ? f->n_k : 1) * sizeof(int64_t));
    ms_status rc = MS_OK;
    if (!seen || !w->q || !w->k) rc = ms_error(MS_ENOMEM, "attention fold: out of memory for the row lists");
    for (int64_t g = 0; g < d->n_groups && !rc; g++) {
        if (grp_count(d->q_off, d->nq, g) < 0 || grp_count(d->k_off, d->nk, g) < 0) {
            rc = ms_error(MS_EINVAL, "attention fold: group %lld has a negative size", (long long)g);
            break;
        }
        int64_t ext[4];
        rc = list_keys(w, seen, d, f, g, ext);
        if (!rc) rc = list_queries(w, seen, d, f, g, ext);
    }
    free(seen);
    return rc;
}

static void rows_free(fold_rows *w)
{
    free(w->q);
    free(w->k);
}

static int n_threads(const ms_device *dev) { return dev->n_threads > 0 ? dev->n_threads : 1; }

static float dot(const float *a, const float *b, int64_t n)
{
    float s = 0;
    for (int64_t c = 0; c < n; c++) s += a[c] * b[c];
    return s;
}

/* q'_i of every head: [scale·q | q·rel_h[..] | q·rel_w[..] | 0]. */
static void fold_query(float *dst, const float *qi, const ms_attention_desc *d, const ms_attention_fold *f, int64_t r)
{
    int64_t hd = f->head_dim, ch = f->lh - 1, cw = f->lw - 1, qr = d->q_row[r], qc = d->q_col[r];
    for (int64_t h = 0; h < f->n_heads; h++, dst += f->dqk, qi += hd) {
        for (int64_t c = 0; c < hd; c++) dst[c] = d->scale * qi[c];
        float *x = dst + hd;
        for (int64_t s = 0; s < f->lh; s++) {
            int64_t t = qr - s + ch;
            x[s] = t >= 0 && t < d->len_h ? dot(qi, d->rel_h + t * hd, hd) : 0.0f;
        }
        x += f->lh;
        for (int64_t s = 0; s < f->lw; s++) {
            int64_t t = qc - s + cw;
            x[s] = t >= 0 && t < d->len_w ? dot(qi, d->rel_w + t * hd, hd) : 0.0f;
        }
        for (int64_t c = hd + f->lh + f->lw; c < f->dqk; c++) dst[c] = 0.0f;
    }
}

ms_status ms_attention_fold_forward_cpu(ms_device *dev, float *qf, float *kf, const float *q, const float *k,
                                        const ms_attention_desc *d, const ms_attention_fold *f)
{
    fold_rows w;
    ms_status rc = rows_make(&w, d, f);
    if (rc) goto leave;
    int64_t hd = f->head_dim, H = f->n_heads, dqk = f->dqk, nq = w.nq, nk = w.nk;
    #pragma omp parallel num_threads(n_threads(dev))
    {
        #pragma omp for schedule(static) nowait
        for (int64_t t = 0; t < nq; t++) {
            int64_t r = w.q[t];
            fold_query(qf + r * H * dqk, q + r * d->ldq, d, f, r);
        }
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < nk; t++) {
            int64_t r = w.k[t];
            const float *kj = k + r * d->ldk;
            float *dst = kf + r * H * dqk;
            for (int64_t h = 0; h < H; h++, dst += dqk, kj += hd) {
                memcpy(dst, kj, (size_t)hd * sizeof(float));
                memset(dst + hd, 0, (size_t)(dqk - hd) * sizeof(float));
                dst[hd + d->k_row[r]] = 1.0f;
                dst[hd + f->lh + d->k_col[r]] = 1.0f;
            }
        }
    }
leave:
    rows_free(&w);
    return rc;
}

/* Query row r's share of the backward: dq row (when dq) and the partial drel tables (part: len_h + len_w rows). */
static void unfold_query(float *dq, float *part, float *acc, const float *g, const float *qi,
                         const ms_attention_desc *d, const ms_attention_fold *f, int64_t r)
{
    int64_t hd = f->head_dim, ch = f->lh - 1, cw = f->lw - 1, qr = d->q_row[r], qc = d->q_col[r];
    for (int64_t h = 0; h < f->n_heads; h++, g += f->dqk, qi += hd) {
        if (dq)
            for (int64_t c = 0; c < hd; c++) acc[c] = d->scale * g[c];
        for (int64_t s = 0; s < f->lh + f->lw; s++) {
            int hs = s < f->lh;
            int64_t t = hs ? qr - s + ch : qc - (s - f->lh) + cw, len = hs ? d->len_h : d->len_w;
            float a = g[hd + s];
            if (t < 0 || t >= len) continue; /* a zero slot of the fold */
            const float *rel = (hs ? d->rel_h : d->rel_w) + t * hd;
            if (dq)
                for (int64_t c = 0; c < hd; c++) acc[c] += a * rel[c];
            if (part) {
                float *p = part + ((hs ? 0 : d->len_h) + t) * hd;
                for (int64_t c = 0; c < hd; c++) p[c] += a * qi[c];
            }
        }
        if (dq)
            for (int64_t c = 0; c < hd; c++) dq[h * hd + c] += acc[c];
    }
}

ms_status ms_attention_fold_backward_cpu(ms_device *dev, float *dq, float *dk, float *drel_h, float *drel_w,
                                         const float *dqf, const float *dkf, const float *q,
                                         const ms_attention_desc *d, const ms_attention_fold *f)
{
    if (!dqf) dq = drel_h = drel_w = NULL;
    if (!dkf) dk = NULL;
    if (!dq && !dk && !drel_h && !drel_w) return MS_OK;
    fold_rows w;
    float *mem = NULL;
    ms_status rc = rows_make(&w, d, f);
    if (rc) goto leave;
    int nt = n_threads(dev);
    int64_t hd = f->head_dim, H = f->n_heads, dqk = f->dqk, nq = w.nq, nk = w.nk, L = d->len_h + d->len_w;
    int want_rel = drel_h || drel_w;
    size_t per = (size_t)(hd + (want_rel ? L * hd : 0)); /* per thread: acc (hd), partial tables (L, hd) */
    mem = calloc(per * (size_t)nt, sizeof(float));
    if (!mem) {
        rc = ms_error(MS_ENOMEM, "attention fold: out of memory for %zu partial floats", per * (size_t)nt);
        goto leave;
    }
    #pragma omp parallel num_threads(nt)
    {
        float *acc = mem + per * (size_t)omp_get_thread_num(), *part = want_rel ? acc + hd : NULL;
        if (dq || want_rel) {
            #pragma omp for schedule(static) nowait
            for (int64_t t = 0; t < nq; t++) {
                int64_t r = w.q[t];
                unfold_query(dq ? dq + r * d->ldq : NULL, part, acc, dqf + r * H * dqk, q + r * d->ldq, d, f, r);
            }
        }
        if (dk) {
            #pragma omp for schedule(static)
            for (int64_t t = 0; t < nk; t++) {
                int64_t r = w.k[t];
                for (int64_t h = 0; h < H; h++) {
                    const float *g = dkf + (r * H + h) * dqk;
                    float *o = dk + r * d->ldk + h * hd;
                    for (int64_t c = 0; c < hd; c++) o[c] += g[c];
                }
            }
        }
    }
    if (want_rel)
        for (int t = 0; t < nt; t++) {
            const float *part = mem + per * (size_t)t + hd;
            if (drel_h) for (int64_t i = 0; i < d->len_h * hd; i++) drel_h[i] += part[i];
            if (drel_w) for (int64_t i = 0; i < d->len_w * hd; i++) drel_w[i] += part[d->len_h * hd + i];
        }
leave:
    free(mem);
    rows_free(&w);
    return rc;
}
