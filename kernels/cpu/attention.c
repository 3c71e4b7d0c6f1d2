/* kernels/cpu/attention.c — grouped scaled-dot-product attention with SAM's decomposed relative positions
 * (attention.h; docs/MODEL.md §Image encoder and §Backward), fp32, OpenMP + OpenBLAS.
 *
 * Work unit: one (group, head) pair. Its keys/values are gathered into contiguous per-thread tiles Kh, Vh
 * (nk, hd); queries are processed in blocks of at most BQ rows (whole group when it has <= BQ_WHOLE rows), so
 * scratch is O(BQ·nk), never nq·nk:
 *   S  = scale·Qb·Khᵀ                                    (sgemm)
 *   S += QRh[i, q_row(i) − k_row(j) + ch] + QRw[...]     QRh = Qb·rel_hᵀ (bq, len_h), QRw likewise (sgemm):
 *        the decomposed form — a table lookup per (i,j), no per-(i,j) dot products
 *   P  = softmax(S) (lse saved),  Ob = P·Vh             (sgemm), scattered to out's rows and head columns.
 * Backward is flash-style: P is recomputed from lse, D_i = rowsum(dO∘O), dS = P∘(dP − D), then
 *   dVh += Pᵀ·dO, dQb = scale·dS·Kh + dQRh·rel_h + dQRw·rel_w, dKh += scale·dSᵀ·Qb,
 *   drel_h += dQRhᵀ·Qb, with dQRh[i,t] = Σ_{j: q_row(i)−k_row(j)+ch = t} dS[i,j] (same for w).
 * Parallel scheme and determinism: the GEMMs run single-threaded inside the OpenMP region (OpenMP build of
 * OpenBLAS). Forward: static schedule over all (group, head) pairs, each writing disjoint rows/columns; when
 * there are fewer than 2 pairs per thread, each pair's query blocks are split into parts (a row's result does
 * not depend on the split). Backward always works on whole pairs (a split would need dK/dV reductions), so
 * it uses at most groups·heads threads.
 * Backward: when no key row is shared between groups, the same static schedule (dq, dk, dv writes are
 * disjoint); when groups share key rows, the outer parallel loop runs over heads only and each head walks its
 * groups in order, so every dk/dv element has a single writer in a fixed order. drel_h/drel_w go to per-thread
 * partial tables that are added in thread order after the region. Static schedules make the result a pure
 * function of the thread count. All index checks happen up front, on the calling thread (ms_errmsg is
 * per-thread). A group with no keys gives zero output rows and lse = −inf, and no gradient.
 * head_dim_qk (q and k wider than v, no relative positions): the Q/K tiles are head_dim_qk wide, V/O head_dim;
 * with head_dim_qk 0 or head_dim every call and every buffer is what it was before the field existed.
 * bf16 (dev->precision, the emulation attention.h defines): the rounded operands go through the same fp32 code;
 * with relative positions q and k are folded first (kernels/cpu/attention_fold.c) and the backward unfolds dq', dk'.
 * Row kernels (softmax, exp, rel-pos add and its transpose) are 8-wide vector code with an AVX2 clone; exp is a
 * polynomial (~2 ulp). When a group's keys form a row-major grid (windows, global blocks, detected per group)
 * the rel-pos add is a per-key-row constant plus one short vector, instead of two table lookups per score.
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention_fold.h"
#include "base/tensor.h"

enum { BQ = 128, BQ_WHOLE = 256 };

/* Token set of one group: count and the row id of its t-th member. */
typedef struct tokset {
    int64_t n, start;
    const int32_t *idx;
} tokset;

static inline tokset group_set(const int32_t *off, const int32_t *idx, int64_t uniform, int64_t g)
{
    tokset s;
    if (off) {
        s.start = off[g];
        s.n = (int64_t)off[g + 1] - off[g];
    } else {
        s.start = g * uniform;
        s.n = uniform;
    }
    s.idx = idx;
    return s;
}
static inline int64_t set_row(const tokset *s, int64_t t) { return s->idx ? s->idx[s->start + t] : s->start + t; }

/* e^x for x <= ~88, relative error ~2 ulp (Cephes expf polynomial): round-to-nearest via the 1.5·2^23 trick,
 * 2^n assembled in the exponent bits. Underflows to ~1e-38 instead of 0 (harmless next to the row max's 1). */
static inline float exp_fast(float x)
{
    x = x < -87.0f ? -87.0f : x;
    float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } e;
    e.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * e.f;
}

/* The row kernels (softmax, exp, rel-pos add) use GCC/Clang vector extensions, 8 floats at a time (two SSE
 * registers on baseline x86-64, one AVX register in the x86-64-v3 clone picked at load time). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* the v8f helpers are always inlined: no vector crosses a call */
#endif
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define ROW_KERNEL __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ROW_KERNEL
#endif

/* Always inlined: an out-of-line baseline helper called from the AVX clone would pass v8f in a different ABI
 * (this broke -O0 builds). */
#define V8_FN static inline __attribute__((always_inline))
V8_FN v8f v8_load(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
V8_FN void v8_store(float *p, v8f v) { memcpy(p, &v, sizeof v); }
V8_FN v8f v8_set(float a) { return (v8f){a, a, a, a, a, a, a, a}; }
V8_FN v8f v8_max(v8f a, v8f b) { v8i m = a > b; return (v8f)(((v8i)a & m) | ((v8i)b & ~m)); }

V8_FN v8f v8_exp(v8f x)
{
    x = v8_max(x, v8_set(-87.0f));
    v8f n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
    v8f r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v8f p = v8_set(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
    return p * (v8f)e;
}

/* In-place softmax of one row; returns log Σ exp. */
ROW_KERNEL static float softmax_row(float *s, int64_t n)
{
    int64_t j = 0, n8 = n & ~(int64_t)7;
    v8f vm = v8_set(-INFINITY);
    for (; j < n8; j += 8) vm = v8_max(vm, v8_load(s + j));
    float m = -INFINITY;
    for (int k = 0; k < 8; k++) m = vm[k] > m ? vm[k] : m;
    for (; j < n; j++) m = s[j] > m ? s[j] : m;
    v8f vs = v8_set(0.0f), vmm = v8_set(m);
    for (j = 0; j < n8; j += 8) {
        v8f e = v8_exp(v8_load(s + j) - vmm);
        v8_store(s + j, e);
        vs += e;
    }
    float sum = 0;
    for (int k = 0; k < 8; k++) sum += vs[k];
    for (; j < n; j++) {
        s[j] = exp_fast(s[j] - m);
        sum += s[j];
    }
    float inv = 1.0f / sum;
    for (j = 0; j < n; j++) s[j] *= inv;
    return m + logf(sum);
}

/* s = exp(s − l): the backward's recomputed probabilities. */
ROW_KERNEL static void exp_row(float *s, int64_t n, float l)
{
    int64_t j = 0, n8 = n & ~(int64_t)7;
    v8f vl = v8_set(l);
    for (; j < n8; j += 8) v8_store(s + j, v8_exp(v8_load(s + j) - vl));
    for (; j < n; j++) s[j] = exp_fast(s[j] - l);
}

/* s[j] += ph[−kr[j]] + pw[−kc[j]]; on a row-major grid of keys (gw > 0 columns, rows kr[0] + j / gw, cols
 * kc[0] + j % gw) this is a per-row constant plus a short reversed vector, computed once per query in tmp. */
ROW_KERNEL static void rel_add_row(float *s, int64_t n, const float *ph, const float *pw, const int32_t *kr,
                                   const int32_t *kc, int64_t gw, float *tmp)
{
    if (gw > 0) {
        for (int64_t b = 0; b < gw; b++) tmp[b] = pw[-kc[b]];
        for (int64_t j0 = 0; j0 < n; j0 += gw) {
            float bh = ph[-kr[j0]];
            float *sj = s + j0;
            for (int64_t b = 0; b < gw; b++) sj[b] += bh + tmp[b];
        }
        return;
    }
    for (int64_t j = 0; j < n; j++) s[j] += ph[-kr[j]] + pw[-kc[j]];
}

/* Transpose of rel_add_row: gh[−kr[j]] += ds[j], gw_[−kc[j]] += ds[j] (tmp: gw floats). */
ROW_KERNEL static void rel_grad_row(const float *ds, int64_t n, float *gh, float *gwp, const int32_t *kr,
                                    const int32_t *kc, int64_t gw, float *tmp)
{
    if (gw > 0) {
        for (int64_t b = 0; b < gw; b++) tmp[b] = 0;
        for (int64_t j0 = 0; j0 < n; j0 += gw) {
            const float *dj = ds + j0;
            float rs = 0;
            for (int64_t b = 0; b < gw; b++) {
                tmp[b] += dj[b];
                rs += dj[b];
            }
            gh[-kr[j0]] += rs;
        }
        for (int64_t b = 0; b < gw; b++) gwp[-kc[b]] += tmp[b];
        return;
    }
    for (int64_t j = 0; j < n; j++) {
        gh[-kr[j]] += ds[j];
        gwp[-kc[j]] += ds[j];
    }
}

/* Per-thread scratch. */
typedef struct scratch {
    float *Kh, *Vh, *dKh, *dVh;     /* (nk, hq) for K, (nk, hd) for V */
    float *Qb, *Ob, *dOb, *dQb;     /* (BQ, hq) for Q, (BQ, hd) for O */
    float *S, *dP;                  /* (BQ, nk) */
    float *QR, *dQR;                /* (BQ, len_h + len_w) */
    int32_t *kr, *kc;               /* (nk) key rows / cols */
    float *drel;                    /* (len_h + len_w, hd) partial table */
    float *tmp;                     /* (nk) row kernels' buffer */
    int64_t gw;                     /* > 0: the group's keys form a row-major grid this many columns wide */
} scratch;

typedef struct plan {
    const ms_attention_desc *d;
    int64_t nk_max, nq_max, bq, lr; /* lr = len_h + len_w (0 without rel-pos) */
    int64_t hq;                     /* q/k width per head: head_dim_qk, or head_dim */
    int shared_keys;
    size_t per_thread;              /* floats */
    int nt;
    float *mem;
} plan;

/* The descriptor's scalars; *hq receives the q/k width per head. */
static ms_status desc_check(const ms_attention_desc *d, int64_t *hq, const char *what)
{
    MS_FAIL_IF(d->n_groups < 0 || d->n_heads <= 0 || d->head_dim <= 0 || d->head_dim_qk < 0, MS_EINVAL,
               "%s: bad sizes groups=%lld heads=%d head_dim=%d head_dim_qk=%d", what, (long long)d->n_groups,
               d->n_heads, d->head_dim, d->head_dim_qk);
    int rel = d->rel_h != NULL;
    *hq = d->head_dim_qk ? d->head_dim_qk : d->head_dim;
    MS_FAIL_IF(rel && *hq != d->head_dim, MS_EINVAL,
               "%s: head_dim_qk %d differs from head_dim %d, which rules out relative positions (fold them into q "
               "and k: kernels/attention_fold.h)", what, d->head_dim_qk, d->head_dim);
    int64_t D = (int64_t)d->n_heads * d->head_dim, Dq = (int64_t)d->n_heads * *hq;
    MS_FAIL_IF(d->ldq < Dq || d->ldk < Dq || d->ldv < D || d->ldo < D, MS_EINVAL,
               "%s: row strides (%lld,%lld,%lld,%lld) below heads·head_dim (%lld for q and k, %lld for v and out)",
               what, (long long)d->ldq, (long long)d->ldk, (long long)d->ldv, (long long)d->ldo, (long long)Dq,
               (long long)D);
    MS_FAIL_IF((!d->q_off && d->nq < 0) || (!d->k_off && d->nk < 0), MS_EINVAL, "%s: negative group size", what);
    MS_FAIL_IF(rel && (!d->rel_w || d->len_h <= 0 || d->len_w <= 0 || !d->q_row || !d->q_col || !d->k_row ||
                       !d->k_col),
               MS_EINVAL, "%s: relative positions need rel_h, rel_w, their lengths and q/k rows and cols", what);
    return MS_OK;
}

static ms_status plan_make(plan *p, ms_device *dev, const ms_attention_desc *d, int backward, const char *what)
{
    memset(p, 0, sizeof *p);
    p->d = d;
    MS_TRY(desc_check(d, &p->hq, what));
    int rel = d->rel_h != NULL;
    int64_t ch = (d->len_h - 1) / 2, cw = (d->len_w - 1) / 2;
    int64_t max_krow = -1;
    for (int64_t g = 0; g < d->n_groups; g++) {
        tokset qs = group_set(d->q_off, d->q_idx, d->nq, g), ks = group_set(d->k_off, d->k_idx, d->nk, g);
        MS_FAIL_IF(qs.n < 0 || ks.n < 0, MS_EINVAL, "%s: group %lld has decreasing offsets", what, (long long)g);
        if (qs.n > p->nq_max) p->nq_max = qs.n;
        if (ks.n > p->nk_max) p->nk_max = ks.n;
        int64_t rmin = INT64_MAX, rmax = INT64_MIN, cmin = INT64_MAX, cmax = INT64_MIN;
        for (int64_t t = 0; t < ks.n; t++) {
            int64_t r = set_row(&ks, t);
            MS_FAIL_IF(r < 0, MS_EINVAL, "%s: negative key row id %lld in group %lld", what, (long long)r,
                       (long long)g);
            if (r > max_krow) max_krow = r;
            if (rel) {
                int64_t a = d->k_row[r], b = d->k_col[r];
                if (a < rmin) rmin = a;
                if (a > rmax) rmax = a;
                if (b < cmin) cmin = b;
                if (b > cmax) cmax = b;
            }
        }
        for (int64_t t = 0; t < qs.n; t++) {
            int64_t r = set_row(&qs, t);
            MS_FAIL_IF(r < 0, MS_EINVAL, "%s: negative query row id %lld in group %lld", what, (long long)r,
                       (long long)g);
            if (rel && ks.n > 0) {
                int64_t a = d->q_row[r], b = d->q_col[r];
                MS_FAIL_IF(a - rmax + ch < 0 || a - rmin + ch >= d->len_h || b - cmax + cw < 0 ||
                               b - cmin + cw >= d->len_w,
                           MS_EINVAL,
                           "%s: relative offset outside the tables (len_h %lld, len_w %lld) in group %lld; resize "
                           "them to 2·S−1 first", what, (long long)d->len_h, (long long)d->len_w, (long long)g);
            }
        }
    }
    p->lr = rel ? d->len_h + d->len_w : 0;
    p->bq = p->nq_max <= BQ_WHOLE ? p->nq_max : BQ;
    if (p->bq < 1) p->bq = 1;
    if (backward && d->k_idx && d->n_groups > 1) {
        /* Owner group per key row: a row seen in two groups means shared keys. */
        int32_t *owner = malloc((size_t)(max_krow + 1) * sizeof(int32_t));
        MS_FAIL_IF(!owner, MS_ENOMEM, "%s: out of memory", what);
        for (int64_t i = 0; i <= max_krow; i++) owner[i] = -1;
        for (int64_t g = 0; g < d->n_groups && !p->shared_keys; g++) {
            tokset ks = group_set(d->k_off, d->k_idx, d->nk, g);
            for (int64_t t = 0; t < ks.n; t++) {
                int64_t r = set_row(&ks, t);
                if (owner[r] >= 0 && owner[r] != g) { p->shared_keys = 1; break; }
                owner[r] = (int32_t)g;
            }
        }
        free(owner);
    }
    int64_t hd = d->head_dim, hq = p->hq, nk = p->nk_max, bq = p->bq, lr = p->lr;
    size_t f = (size_t)(2 * nk * (hq + hd) + 2 * bq * (hq + hd) + 2 * bq * nk + 2 * bq * lr + lr * hd) +
               (size_t)(3 * nk) + 64;
    p->per_thread = (f + 15) & ~(size_t)15; /* keep each thread's block 64-byte aligned */
    p->nt = dev->n_threads > 0 ? dev->n_threads : 1;
    p->mem = aligned_alloc(64, p->per_thread * (size_t)p->nt * sizeof(float));
    MS_FAIL_IF(!p->mem, MS_ENOMEM, "%s: out of memory for %zu scratch floats", what, p->per_thread * (size_t)p->nt);
    return MS_OK;
}

static scratch scratch_of(const plan *p, int tid)
{
    scratch s;
    int64_t hd = p->d->head_dim, hq = p->hq, nk = p->nk_max, bq = p->bq, lr = p->lr;
    float *m = p->mem + (size_t)tid * p->per_thread;
    s.Kh = m; m += nk * hq;
    s.Vh = m; m += nk * hd;
    s.dKh = m; m += nk * hq;
    s.dVh = m; m += nk * hd;
    s.Qb = m; m += bq * hq;
    s.Ob = m; m += bq * hd;
    s.dOb = m; m += bq * hd;
    s.dQb = m; m += bq * hq;
    s.S = m; m += bq * nk;
    s.dP = m; m += bq * nk;
    s.QR = m; m += bq * lr;
    s.dQR = m; m += bq * lr;
    s.drel = m; m += lr * hd;
    s.tmp = m; m += nk;
    s.kr = (int32_t *)m; m += nk;
    s.kc = (int32_t *)m;
    return s;
}

/* Gather head h's columns of n rows into a dense (n, hd) tile. */
static void gather(float *dst, const float *src, int64_t ld, const tokset *set, int64_t t0, int64_t n, int64_t col,
                   int64_t hd)
{
    for (int64_t t = 0; t < n; t++) memcpy(dst + t * hd, src + set_row(set, t0 + t) * ld + col, (size_t)hd * 4);
}

static void scatter_add(float *dst, int64_t ld, const float *src, const tokset *set, int64_t t0, int64_t n,
                        int64_t col, int64_t hd)
{
    for (int64_t t = 0; t < n; t++) {
        float *o = dst + set_row(set, t0 + t) * ld + col;
        const float *a = src + t * hd;
        for (int64_t c = 0; c < hd; c++) o[c] += a[c];
    }
}

/* S (bq, nk) = scale·Qb·Khᵀ + the decomposed rel-pos term (QR receives Qb·[rel_h; rel_w]ᵀ). */
static void scores(const plan *p, scratch *s, const tokset *qs, int64_t t0, int64_t bq, int64_t nk)
{
    const ms_attention_desc *d = p->d;
    int64_t hd = d->head_dim, hq = p->hq, lr = p->lr;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)bq, (int)nk, (int)hq, d->scale, s->Qb, (int)hq, s->Kh,
                (int)hq, 0.0f, s->S, (int)nk);
    if (!lr) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)bq, (int)d->len_h, (int)hd, 1.0f, s->Qb, (int)hd,
                d->rel_h, (int)hd, 0.0f, s->QR, (int)lr);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)bq, (int)d->len_w, (int)hd, 1.0f, s->Qb, (int)hd,
                d->rel_w, (int)hd, 0.0f, s->QR + d->len_h, (int)lr);
    int64_t ch = (d->len_h - 1) / 2, cw = (d->len_w - 1) / 2;
    for (int64_t i = 0; i < bq; i++) {
        int64_t r = set_row(qs, t0 + i);
        const float *ph = s->QR + i * lr + d->q_row[r] + ch;            /* ph[−k_row] */
        const float *pw = s->QR + i * lr + d->len_h + d->q_col[r] + cw; /* pw[−k_col] */
        rel_add_row(s->S + i * nk, nk, ph, pw, s->kr, s->kc, s->gw, s->tmp);
    }
}

static void load_keys(const plan *p, scratch *s, const tokset *ks, const float *k, const float *v, int64_t h)
{
    const ms_attention_desc *d = p->d;
    int64_t hd = d->head_dim, hq = p->hq;
    gather(s->Kh, k, d->ldk, ks, 0, ks->n, h * hq, hq);
    gather(s->Vh, v, d->ldv, ks, 0, ks->n, h * hd, hd);
    s->gw = 0;
    if (!p->lr || ks->n == 0) return;
    for (int64_t t = 0; t < ks->n; t++) {
        int64_t r = set_row(ks, t);
        s->kr[t] = d->k_row[r];
        s->kc[t] = d->k_col[r];
    }
    /* Detect the common case of keys on a row-major grid (windows, global blocks): the row kernels then work
     * on contiguous runs instead of per-key table lookups. */
    int64_t w0 = 1;
    while (w0 < ks->n && s->kr[w0] == s->kr[0]) w0++;
    if (ks->n % w0) return;
    for (int64_t t = 0; t < ks->n; t++)
        if (s->kr[t] != s->kr[0] + t / w0 || s->kc[t] != s->kc[0] + t % w0) return;
    s->gw = w0;
}

/* Query rows [r0, r1) of group g, head h. */
static void forward_task(const plan *p, scratch *s, float *out, float *lse, const float *q, const float *k,
                         const float *v, int64_t g, int64_t h, int64_t r0, int64_t r1)
{
    const ms_attention_desc *d = p->d;
    int64_t hd = d->head_dim, H = d->n_heads;
    tokset qs = group_set(d->q_off, d->q_idx, d->nq, g), ks = group_set(d->k_off, d->k_idx, d->nk, g);
    int64_t nk = ks.n;
    if (r1 > qs.n) r1 = qs.n;
    if (r0 >= r1) return;
    if (nk == 0) {
        for (int64_t t = r0; t < r1; t++) {
            int64_t r = set_row(&qs, t);
            memset(out + r * d->ldo + h * hd, 0, (size_t)hd * 4);
            if (lse) lse[r * H + h] = -INFINITY;
        }
        return;
    }
    load_keys(p, s, &ks, k, v, h);
    for (int64_t t0 = r0; t0 < r1; t0 += p->bq) {
        int64_t bq = r1 - t0 < p->bq ? r1 - t0 : p->bq;
        gather(s->Qb, q, d->ldq, &qs, t0, bq, h * p->hq, p->hq);
        scores(p, s, &qs, t0, bq, nk);
        for (int64_t i = 0; i < bq; i++) {
            float l = softmax_row(s->S + i * nk, nk);
            if (lse) lse[set_row(&qs, t0 + i) * H + h] = l;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)bq, (int)hd, (int)nk, 1.0f, s->S, (int)nk, s->Vh,
                    (int)hd, 0.0f, s->Ob, (int)hd);
        for (int64_t i = 0; i < bq; i++)
            memcpy(out + set_row(&qs, t0 + i) * d->ldo + h * hd, s->Ob + i * hd, (size_t)hd * 4);
    }
}

static ms_status forward_fp32(ms_device *dev, float *out, float *lse, const float *q, const float *k, const float *v,
                              const ms_attention_desc *d)
{
    plan p;
    ms_status rc = plan_make(&p, dev, d, 0, "attention");
    if (rc) goto leave;
    /* Too few (group, head) pairs for the threads (e.g. 12 heads of one global group on 16 cores): split each
     * pair's query blocks into `split` parts; each part gathers its own K/V tile. */
    int64_t pairs = d->n_groups * d->n_heads, nblk = (p.nq_max + p.bq - 1) / p.bq, split = 1;
    if (pairs > 0 && pairs < 2 * p.nt) {
        split = (2 * p.nt + pairs - 1) / pairs;
        if (split > nblk) split = nblk > 0 ? nblk : 1;
    }
    int64_t tasks = pairs * split;
    #pragma omp parallel num_threads(p.nt)
    {
        scratch s = scratch_of(&p, omp_get_thread_num());
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t pair = t / split, part = t % split;
            int64_t b0 = part * nblk / split, b1 = (part + 1) * nblk / split;
            forward_task(&p, &s, out, lse, q, k, v, pair / d->n_heads, pair % d->n_heads, b0 * p.bq, b1 * p.bq);
        }
    }
leave:
    free(p.mem);
    return rc;
}

typedef struct bwd_args {
    float *dq, *dk, *dv, *drel_h, *drel_w;
    const float *dout, *out, *lse, *q, *k, *v;
} bwd_args;

static void backward_task(const plan *p, scratch *s, const bwd_args *a, int64_t g, int64_t h)
{
    const ms_attention_desc *d = p->d;
    int64_t hd = d->head_dim, hq = p->hq, H = d->n_heads, lr = p->lr;
    tokset qs = group_set(d->q_off, d->q_idx, d->nq, g), ks = group_set(d->k_off, d->k_idx, d->nk, g);
    int64_t nk = ks.n;
    int want_rel = lr && (a->drel_h || a->drel_w);
    int need_ds = a->dq || a->dk || want_rel;
    if (qs.n == 0 || nk == 0) return;
    load_keys(p, s, &ks, a->k, a->v, h);
    if (a->dk) memset(s->dKh, 0, (size_t)(nk * hq) * 4);
    if (a->dv) memset(s->dVh, 0, (size_t)(nk * hd) * 4);
    int64_t ch = (d->len_h - 1) / 2, cw = (d->len_w - 1) / 2;
    for (int64_t t0 = 0; t0 < qs.n; t0 += p->bq) {
        int64_t bq = qs.n - t0 < p->bq ? qs.n - t0 : p->bq;
        gather(s->Qb, a->q, d->ldq, &qs, t0, bq, h * hq, hq);
        gather(s->dOb, a->dout, d->ldo, &qs, t0, bq, h * hd, hd);
        scores(p, s, &qs, t0, bq, nk);
        for (int64_t i = 0; i < bq; i++) {
            float l = a->lse[set_row(&qs, t0 + i) * H + h];
            exp_row(s->S + i * nk, nk, l);
        }
        if (a->dv)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)hd, (int)bq, 1.0f, s->S, (int)nk,
                        s->dOb, (int)hd, 1.0f, s->dVh, (int)hd);
        if (!need_ds) continue;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)bq, (int)nk, (int)hd, 1.0f, s->dOb, (int)hd, s->Vh,
                    (int)hd, 0.0f, s->dP, (int)nk);
        for (int64_t i = 0; i < bq; i++) {
            const float *o = a->out + set_row(&qs, t0 + i) * d->ldo + h * hd, *go = s->dOb + i * hd;
            float Di = 0;
            for (int64_t c = 0; c < hd; c++) Di += go[c] * o[c];
            float *pi = s->S + i * nk, *dpi = s->dP + i * nk;
            #pragma omp simd
            for (int64_t j = 0; j < nk; j++) dpi[j] = pi[j] * (dpi[j] - Di);
        }
        /* dS now lives in dP. */
        if (a->dk)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)hq, (int)bq, d->scale, s->dP, (int)nk,
                        s->Qb, (int)hq, 1.0f, s->dKh, (int)hq);
        if (a->dq)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)bq, (int)hq, (int)nk, d->scale, s->dP,
                        (int)nk, s->Kh, (int)hq, 0.0f, s->dQb, (int)hq);
        if (lr && (a->dq || want_rel)) {
            memset(s->dQR, 0, (size_t)(bq * lr) * 4);
            for (int64_t i = 0; i < bq; i++) {
                int64_t r = set_row(&qs, t0 + i);
                float *gh = s->dQR + i * lr + d->q_row[r] + ch, *gw = s->dQR + i * lr + d->len_h + d->q_col[r] + cw;
                rel_grad_row(s->dP + i * nk, nk, gh, gw, s->kr, s->kc, s->gw, s->tmp);
            }
            if (a->dq) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)bq, (int)hd, (int)d->len_h, 1.0f, s->dQR,
                            (int)lr, d->rel_h, (int)hd, 1.0f, s->dQb, (int)hd);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)bq, (int)hd, (int)d->len_w, 1.0f,
                            s->dQR + d->len_h, (int)lr, d->rel_w, (int)hd, 1.0f, s->dQb, (int)hd);
            }
            if (want_rel) /* drel (lr, hd) += dQRᵀ·Qb */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)lr, (int)hd, (int)bq, 1.0f, s->dQR, (int)lr,
                            s->Qb, (int)hd, 1.0f, s->drel, (int)hd);
        }
        if (a->dq) scatter_add(a->dq, d->ldq, s->dQb, &qs, t0, bq, h * hq, hq);
    }
    if (a->dk) scatter_add(a->dk, d->ldk, s->dKh, &ks, 0, nk, h * hq, hq);
    if (a->dv) scatter_add(a->dv, d->ldv, s->dVh, &ks, 0, nk, h * hd, hd);
}

static ms_status backward_fp32(ms_device *dev, float *dq, float *dk, float *dv, float *drel_h, float *drel_w,
                               const float *dout, const float *out, const float *lse, const float *q, const float *k,
                               const float *v, const ms_attention_desc *d)
{
    plan p;
    bwd_args a = {dq, dk, dv, drel_h, drel_w, dout, out, lse, q, k, v};
    ms_status rc = plan_make(&p, dev, d, 1, "attention_backward");
    if (rc) goto leave;
    if (!p.lr) a.drel_h = a.drel_w = NULL;
    int64_t G = d->n_groups, H = d->n_heads, hd = d->head_dim;
    #pragma omp parallel num_threads(p.nt)
    {
        scratch s = scratch_of(&p, omp_get_thread_num());
        if (p.lr) memset(s.drel, 0, (size_t)(p.lr * hd) * 4);
        if (!p.shared_keys) {
            #pragma omp for schedule(static)
            for (int64_t t = 0; t < G * H; t++) backward_task(&p, &s, &a, t / H, t % H);
        } else {
            /* Key rows shared between groups: one writer per head (disjoint columns), groups in order. */
            #pragma omp for schedule(static)
            for (int64_t h = 0; h < H; h++)
                for (int64_t g = 0; g < G; g++) backward_task(&p, &s, &a, g, h);
        }
    }
    if (a.drel_h || a.drel_w)
        for (int t = 0; t < p.nt; t++) {
            const float *part = scratch_of(&p, t).drel;
            if (a.drel_h) for (int64_t i = 0; i < d->len_h * hd; i++) a.drel_h[i] += part[i];
            if (a.drel_w) for (int64_t i = 0; i < d->len_w * hd; i++) a.drel_w[i] += part[d->len_h * hd + i];
        }
leave:
    free(p.mem);
    return rc;
}

/* ---- bf16 emulation (dev->precision == MS_PREC_BF16; attention.h): the inputs a tensor-core kernel would read,
 * rounded to bf16, through the fp32 kernels above. Scratch is allocated per call. ----------------------------- */

static float *zalloc(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }
static inline float bf16_round(float x) { return ms_bf16_to_f32(ms_f32_to_bf16(x)); }

/* 1 + the largest query / key row id of the groups (the rows the scratch copies need). */
static ms_status row_extent(const ms_attention_desc *d, int64_t *n_q, int64_t *n_k, const char *what)
{
    *n_q = *n_k = 0;
    for (int64_t g = 0; g < d->n_groups; g++)
        for (int keys = 0; keys < 2; keys++) {
            tokset s = keys ? group_set(d->k_off, d->k_idx, d->nk, g) : group_set(d->q_off, d->q_idx, d->nq, g);
            MS_FAIL_IF(s.n < 0, MS_EINVAL, "%s: group %lld has a negative size", what, (long long)g);
            int64_t *n = keys ? n_k : n_q;
            for (int64_t t = 0; t < s.n; t++) {
                int64_t r = set_row(&s, t);
                MS_FAIL_IF(r < 0, MS_EINVAL, "%s: negative row id %lld in group %lld", what, (long long)r,
                           (long long)g);
                if (r >= *n) *n = r + 1;
            }
        }
    return MS_OK;
}

/* dst (zeroed, stride ld) ← columns [0, w) of the query (keys 0) or key (keys 1) rows of the groups, rounded. */
static void round_rows(float *dst, const float *src, int64_t ld, int64_t w, const ms_attention_desc *d, int keys)
{
    for (int64_t g = 0; g < d->n_groups; g++) {
        tokset s = keys ? group_set(d->k_off, d->k_idx, d->nk, g) : group_set(d->q_off, d->q_idx, d->nq, g);
        for (int64_t t = 0; t < s.n; t++) {
            int64_t r = set_row(&s, t);
            for (int64_t c = 0; c < w; c++) dst[r * ld + c] = bf16_round(src[r * ld + c]);
        }
    }
}

static void round_all(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = bf16_round(x[i]);
}

/* The rounded operands of one call: q and k (folded when d has relative positions), v, and dout (backward). */
typedef struct bf16_in {
    float *q, *k, *v, *dout;
    ms_attention_desc pd;   /* the plain descriptor over them */
    ms_attention_fold f;    /* f.dqk > 0: folded */
    int64_t n_q, n_k;
} bf16_in;

static void bf16_free(bf16_in *b)
{
    free(b->q);
    free(b->k);
    free(b->v);
    free(b->dout);
}

static ms_status bf16_make(bf16_in *b, ms_device *dev, const float *q, const float *k, const float *v,
                           const float *dout, const ms_attention_desc *d, const char *what)
{
    memset(b, 0, sizeof *b);
    int64_t H = d->n_heads, hq;
    MS_TRY(desc_check(d, &hq, what));
    MS_TRY(row_extent(d, &b->n_q, &b->n_k, what));
    b->pd = *d;
    if (d->rel_h) {
        MS_TRY(ms_attention_fold_plan(d, b->n_q, b->n_k, &b->f));
        b->q = zalloc(b->n_q * H * b->f.dqk);
        b->k = zalloc(b->n_k * H * b->f.dqk);
        MS_FAIL_IF(!b->q || !b->k, MS_ENOMEM, "%s: out of memory for the folded q and k", what);
        MS_TRY(ms_attention_fold_forward_cpu(dev, b->q, b->k, q, k, d, &b->f));
        round_all(b->q, b->n_q * H * b->f.dqk);
        round_all(b->k, b->n_k * H * b->f.dqk);
        b->pd = ms_attention_fold_desc(d, &b->f);
    } else {
        b->q = zalloc(b->n_q * d->ldq);
        b->k = zalloc(b->n_k * d->ldk);
        MS_FAIL_IF(!b->q || !b->k, MS_ENOMEM, "%s: out of memory for the rounded q and k", what);
        round_rows(b->q, q, d->ldq, H * hq, d, 0);
        round_rows(b->k, k, d->ldk, H * hq, d, 1);
    }
    b->v = zalloc(b->n_k * d->ldv);
    MS_FAIL_IF(!b->v, MS_ENOMEM, "%s: out of memory for the rounded v", what);
    round_rows(b->v, v, d->ldv, H * d->head_dim, d, 1);
    if (dout) {
        b->dout = zalloc(b->n_q * d->ldo);
        MS_FAIL_IF(!b->dout, MS_ENOMEM, "%s: out of memory for the rounded dout", what);
        round_rows(b->dout, dout, d->ldo, H * d->head_dim, d, 0);
    }
    return MS_OK;
}

static ms_status forward_bf16(ms_device *dev, float *out, float *lse, const float *q, const float *k, const float *v,
                              const ms_attention_desc *d)
{
    bf16_in b;
    ms_status rc = bf16_make(&b, dev, q, k, v, NULL, d, "attention (bf16)");
    if (!rc) rc = forward_fp32(dev, out, lse, b.q, b.k, b.v, &b.pd);
    bf16_free(&b);
    return rc;
}

static ms_status backward_bf16(ms_device *dev, float *dq, float *dk, float *dv, float *drel_h, float *drel_w,
                               const float *dout, const float *out, const float *lse, const float *q, const float *k,
                               const float *v, const ms_attention_desc *d)
{
    bf16_in b;
    float *dqf = NULL, *dkf = NULL;
    ms_status rc = bf16_make(&b, dev, q, k, v, dout, d, "attention_backward (bf16)");
    if (rc) goto leave;
    if (!b.f.dqk) {
        rc = backward_fp32(dev, dq, dk, dv, NULL, NULL, b.dout, out, lse, b.q, b.k, b.v, d);
        goto leave;
    }
    /* folded: gradients of q' and k' (fp32), then through the fold onto q, k and the tables */
    int64_t w = (int64_t)d->n_heads * b.f.dqk;
    if (dq || drel_h || drel_w) dqf = zalloc(b.n_q * w);
    if (dk) dkf = zalloc(b.n_k * w);
    if (((dq || drel_h || drel_w) && !dqf) || (dk && !dkf)) {
        rc = ms_error(MS_ENOMEM, "attention_backward (bf16): out of memory for the folded gradients");
        goto leave;
    }
    rc = backward_fp32(dev, dqf, dkf, dv, NULL, NULL, b.dout, out, lse, b.q, b.k, b.v, &b.pd);
    if (!rc) rc = ms_attention_fold_backward_cpu(dev, dq, dk, drel_h, drel_w, dqf, dkf, q, d, &b.f);
leave:
    free(dqf);
    free(dkf);
    bf16_free(&b);
    return rc;
}

ms_status ms_attention_forward_cpu(ms_device *dev, float *out, float *lse, const float *q, const float *k,
                                   const float *v, const ms_attention_desc *d)
{
    if (dev->precision == MS_PREC_BF16) return forward_bf16(dev, out, lse, q, k, v, d);
    return forward_fp32(dev, out, lse, q, k, v, d);
}

ms_status ms_attention_backward_cpu(ms_device *dev, float *dq, float *dk, float *dv, float *drel_h, float *drel_w,
                                    const float *dout, const float *out, const float *lse, const float *q,
                                    const float *k, const float *v, const ms_attention_desc *d)
{
    if (dev->precision == MS_PREC_BF16)
        return backward_bf16(dev, dq, dk, dv, drel_h, drel_w, dout, out, lse, q, k, v, d);
    return backward_fp32(dev, dq, dk, dv, drel_h, drel_w, dout, out, lse, q, k, v, d);
}
