/* tests/finetune/test_sam_decoder_golden.h — helpers shared by test_sam_decoder.c and test_sam_model.c: reading the
 * PyTorch golden files (full tensors or sampled KEY.idx/.val/.sum/.asum/.sumsq entries, float64) and the
 * normwise comparison; decoder_weight() is counter_init with the rule of gen_decoder_golden.py.
 * Tolerance: fp32, normwise relative error max|c − ref| ≤ 1e-4·max|ref| per tensor (sampled tensors: over the
 * samples, plus |Σc − Σref| ≤ 1e-4·Σ|ref| and Σc² within 2e-4). Key-projection biases have an exact gradient of 0
 * (softmax is invariant to a per-query constant), so there |c| ≤ 1e-6. The q/k projection gradients of the
 * token→image attentions get 3e-4: they come through softmax rows over h·w = 4096 keys whose dS sums to zero,
 * a difference of nearly equal fp32 sums (observed up to 1e-4; everything else stays below 5e-5). */
#ifndef MS_TEST_SAM_DECODER_GOLDEN_H
#define MS_TEST_SAM_DECODER_GOLDEN_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/state_dict.h"
#include "harness.h"
#include "reference/counter_init.h"

#define TOL 1e-4

static double worst_err;         /* the largest normwise error seen, printed at the end */
static char worst_key[300];

static inline const ms_sd_entry *get(const ms_state_dict *sd, const char *key)
{
    return ms_sd_find(sd, key);
}

static inline double *as_double(const ms_sd_entry *e)
{
    int64_t n = ms_tensor_numel(&e->t);
    double *o = malloc((size_t)(n ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        switch (e->t.dtype) {
        case MS_DTYPE_F64: o[i] = ((const double *)e->t.data)[i]; break;
        case MS_DTYPE_F32: o[i] = ((const float *)e->t.data)[i]; break;
        case MS_DTYPE_I64: o[i] = (double)((const int64_t *)e->t.data)[i]; break;
        default: o[i] = NAN;
        }
    }
    return o;
}

static inline double max_abs_ref(const double *r, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(r[i]));
    return m;
}

/* Normwise check of got against ref; zero_grad: the exact value is 0, so only an absolute bound applies. */
static inline void cmp_norm(const float *got, const double *ref, int64_t n, const char *cs, const char *key, int zero_grad)
{
    ms_cmp c = ms_compare(got, ref, n);
    double mx = max_abs_ref(ref, n);
    if (zero_grad) {
        MS_CHECK(c.max_abs <= 1e-6, "%s %s: %.3g where the exact gradient is 0", cs, key, c.max_abs);
        return;
    }
    if (getenv("MS_TEST_VERBOSE") && mx > 0 && c.max_abs / mx > 2e-5) printf("  %s %s: %.3g\n", cs, key, c.max_abs / mx);
    if (mx > 0 && c.max_abs / mx > worst_err) {
        worst_err = c.max_abs / mx;
        snprintf(worst_key, sizeof worst_key, "%s %s", cs, key);
    }
    const double tol = strstr(key, "token_to_image") && (strstr(key, "q_proj") || strstr(key, "k_proj")) ? 3 * TOL : TOL;
    MS_CHECK(c.max_abs <= tol * mx, "%s %s: max_abs %.3g > %.0e·max|ref| (%.3g) at %lld: %.7g vs %.7g", cs, key,
             c.max_abs, tol, mx, (long long)c.worst, got[c.worst], ref[c.worst]);
}

static inline double scalar(const ms_state_dict *sd, const char *key)
{
    const ms_sd_entry *e = get(sd, key);
    if (!e) { printf("golden: %s missing\n", key); return NAN; }
    double *v = as_double(e), r = v[0];
    free(v);
    return r;
}

/* Compares n floats (host) with KEY (full) or KEY.idx/.val/.sum/.asum/.sumsq (sampled). */
static inline void check(const ms_state_dict *sd, const char *key, const float *got, int64_t n, const char *cs)
{
    char k[256];
    const int zero_grad = strstr(key, "k_proj.bias") != NULL;
    const ms_sd_entry *e = get(sd, key);
    if (e) {
        MS_CHECK(ms_tensor_numel(&e->t) == n, "%s %s: %lld elements, golden %lld", cs, key, (long long)n,
                 (long long)ms_tensor_numel(&e->t));
        if (ms_tensor_numel(&e->t) != n) return;
        double *r = as_double(e);
        cmp_norm(got, r, n, cs, key, zero_grad);
        free(r);
        return;
    }
    snprintf(k, sizeof k, "%s.idx", key);
    const ms_sd_entry *ei = get(sd, k);
    snprintf(k, sizeof k, "%s.val", key);
    const ms_sd_entry *ev = get(sd, k);
    MS_CHECK(ei && ev, "%s %s: not in the golden file", cs, key);
    if (!ei || !ev) return;
    int64_t m = ms_tensor_numel(&ei->t);
    double *idx = as_double(ei), *val = as_double(ev);
    float *g = malloc((size_t)m * sizeof(float));
    int bad_idx = 0;
    for (int64_t i = 0; i < m; i++) {
        int64_t j = (int64_t)idx[i];
        if (j < 0 || j >= n) { bad_idx = 1; g[i] = 0; } else g[i] = got[j];
    }
    MS_CHECK(!bad_idx, "%s %s: sampled index out of range (n %lld)", cs, key, (long long)n);
    cmp_norm(g, val, m, cs, key, zero_grad);
    double s = 0, as = 0, ss = 0;
    for (int64_t i = 0; i < n; i++) { s += got[i]; as += fabs(got[i]); ss += (double)got[i] * got[i]; }
    snprintf(k, sizeof k, "%s.sum", key);
    double rs = scalar(sd, k);
    snprintf(k, sizeof k, "%s.asum", key);
    double ras = scalar(sd, k);
    snprintf(k, sizeof k, "%s.sumsq", key);
    double rss = scalar(sd, k);
    MS_CHECK(zero_grad || fabs(s - rs) <= TOL * ras, "%s %s: sum %.9g vs %.9g (Σ|x| %.4g)", cs, key, s, rs, ras);
    MS_CHECK(zero_grad || fabs(ss - rss) <= 2 * TOL * rss, "%s %s: sumsq %.9g vs %.9g", cs, key, ss, rss);
    (void)as;
    free(idx);
    free(val);
    free(g);
}

/* counter_init, with the cross-attention projections rescaled by 1/sqrt(fan_in) (gen_decoder_golden.py's
 * decoder_weight): their names contain "token", which counter_init gives scale 1. */
static inline void decoder_weight(float *dst, const char *name, const int64_t *shape, int ndim, uint64_t seed)
{
    ms_counter_init(dst, name, shape, ndim, seed);
    if ((strstr(name, "token_to_image") || strstr(name, "image_to_token")) && ndim == 2) {
        float s = (float)(1.0 / sqrt((double)shape[1]));
        for (int64_t i = 0; i < shape[0] * shape[1]; i++) dst[i] *= s;
    }
}

#endif
