/* tests/pretrain/tinyvit_golden.h — helpers shared by test_tinyvit.c and test_tinyvit_vit_t_slow.c: the weights
 * of tests/pretrain/gen_tinyvit_golden.py (counter_init plus its BatchNorm / bias-table rules), the golden file's
 * key list, and the stage comparison. Static inline functions (each test uses a subset).
 */
#ifndef MS_TEST_TINYVIT_GOLDEN_H
#define MS_TEST_TINYVIT_GOLDEN_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/path.h"
#include "harness.h"
#include "pretrain/params.h"
#include "reference/counter_init.h"

#define TOL 1e-4
#define PREFIX "image_encoder."

/* counter_init plus the generator's rules (gen_tinyvit_golden.py counter_value) */
static inline void tv_counter(float *dst, const char *name, const int64_t *shape, int ndim, uint64_t seed)
{
    ms_counter_init(dst, name, shape, ndim, seed);
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    float a = 1.f, b = 0.f;
    if (ms_str_ends_with(name, ".running_var")) { a = 5.f; b = 1.f; }
    else if (ms_str_ends_with(name, ".running_mean")) a = 5.f;
    else if (ms_str_ends_with(name, ".attention_biases")) a = 8.f;
    for (int64_t i = 0; i < n; i++) dst[i] = b + a * dst[i];
}

/* Golden "key.<name>" entries: [ndim, is_int64, dims...]. */
typedef struct gkey { const char *name; int ndim, is_int; int64_t shape[4]; } gkey;

static inline int golden_keys(const ms_state_dict *g, gkey **out)
{
    gkey *k = calloc((size_t)g->n, sizeof *k);
    int n = 0;
    for (int i = 0; k && i < g->n; i++) {
        const ms_sd_entry *e = &g->e[i];
        if (strncmp(e->name, "key.", 4)) continue;
        const int64_t *v = e->t.data;
        int64_t ne = ms_tensor_numel(&e->t);
        if (e->t.dtype != MS_DTYPE_I64 || ne < 2 || v[0] < 0 || v[0] > 4 || ne != 2 + v[0]) {
            MS_CHECK(0, "%s: malformed golden key entry", e->name);
            continue;
        }
        k[n].name = e->name + 4;
        k[n].ndim = (int)v[0];
        k[n].is_int = (int)v[1];
        for (int d = 0; d < k[n].ndim; d++) k[n].shape[d] = v[2 + d];
        n++;
    }
    *out = k;
    return n;
}

static inline void test_keys(const ms_params *ps, const gkey *k, int nk)
{
    int nfloat = 0, nint = 0, bad = 0;
    for (int i = 0; i < nk; i++) {
        if (k[i].is_int) {
            char mean[256];
            size_t n = strlen(k[i].name);
            int ok = n > 19 && !strcmp(k[i].name + n - 19, "num_batches_tracked") && k[i].ndim == 0;
            snprintf(mean, sizeof mean, "%.*srunning_mean", (int)(n - 19), k[i].name);
            ok = ok && ms_params_find(ps, mean) >= 0;
            if (!ok) { bad++; fprintf(stderr, "%s: integer key not matched\n", k[i].name); }
            nint++;
            continue;
        }
        nfloat++;
        int j = ms_params_find(ps, k[i].name);
        int ok = j >= 0 && ps->p[j].ndim == k[i].ndim;
        for (int d = 0; ok && d < k[i].ndim; d++) ok = ps->p[j].shape[d] == k[i].shape[d];
        if (!ok) { bad++; fprintf(stderr, "%s: not registered with its upstream shape\n", k[i].name); }
    }
    MS_CHECK(bad == 0 && nfloat == ps->n, "keys: %d mismatches; %d float keys upstream, %d registered", bad, nfloat,
             ps->n);
    printf("keys: %d float tensors (= registered), %d num_batches_tracked\n", nfloat, nint);
}

/* Stored in full (key) or sampled (key.idx / .val / .stats): max|c − r| ≤ tol·max|r| + atol, and for sampled
 * tensors Σ within tol·Σ|r| (+ n·atol) and Σx² within tol relative (+ the atol terms). atol: a floor for tensors
 * whose exact value is 0 (a gradient a training-mode BatchNorm cancels) and fp32 leaves at rounding level. Returns
 * the max error relative to max|r| + atol/tol (≤ tol: within the tolerance; printed when verbose). */
static inline double check_stage_tol(const ms_state_dict *g, const char *key, const float *c, int64_t n, double tol,
                              double atol, int verbose)
{
    char k[128];
    const ms_sd_entry *ef = ms_sd_find(g, key);
    snprintf(k, sizeof k, "%s.idx", key);
    const ms_sd_entry *ei = ms_sd_find(g, k);
    snprintf(k, sizeof k, "%s.val", key);
    const ms_sd_entry *ev = ms_sd_find(g, k);
    snprintf(k, sizeof k, "%s.stats", key);
    const ms_sd_entry *es = ms_sd_find(g, k);
    if (!c) { MS_CHECK(0, "%s: no output", key); return 1; }
    double mx = 0, err = 0;
    if (ef) {
        MS_CHECK(ef->t.dtype == MS_DTYPE_F32 && ms_tensor_numel(&ef->t) == n, "%s: golden size", key);
        if (ef->t.dtype != MS_DTYPE_F32 || ms_tensor_numel(&ef->t) != n) return 1;
        ms_cmp cm = ms_compare_f(c, ef->t.data, n);
        for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(((const float *)ef->t.data)[i]));
        err = cm.max_abs;
        if (verbose) printf("%-16s full      max err %.3g (rel %.3g), nmse %.3g\n", key, err, err / mx, cm.nmse);
    } else {
        int ok = ei && ev && es && ei->t.dtype == MS_DTYPE_I64 && ev->t.dtype == MS_DTYPE_F32 &&
                 es->t.dtype == MS_DTYPE_F64;
        MS_CHECK(ok, "%s: missing or mistyped in the golden file", key);
        if (!ok) return 1;
        const int64_t *idx = ei->t.data;
        const float *val = ev->t.data;
        for (int64_t i = 0; i < ms_tensor_numel(&ei->t); i++) {
            if (idx[i] < 0 || idx[i] >= n) { MS_CHECK(0, "%s: index out of range", key); return 1; }
            mx = fmax(mx, fabs(val[i]));
            err = fmax(err, fabs((double)c[idx[i]] - val[i]));
        }
        const double *st = es->t.data;
        double s = 0, s2 = 0;
        for (int64_t i = 0; i < n; i++) { s += c[i]; s2 += (double)c[i] * c[i]; }
        if (verbose)
            printf("%-16s sampled   max err %.3g (rel %.3g); sum %.9g vs %.9g; sumsq %.9g vs %.9g\n", key, err,
                   err / mx, s, st[0], s2, st[1]);
        double na = (double)n * atol;
        MS_CHECK(fabs(s - st[0]) <= tol * st[2] + na, "%s: sum %.9g vs %.9g", key, s, st[0]);
        MS_CHECK(fabs(s2 - st[1]) <= tol * st[1] + na * atol + 2 * atol * sqrt((double)n * st[1]),
                 "%s: sumsq %.9g vs %.9g", key, s2, st[1]);
    }
    MS_CHECK((mx > 0 || atol > 0) && err <= tol * mx + atol, "%s: max error %.3g > %g·%.3g + %.3g", key, err, tol,
             mx, atol);
    return err / (mx + (tol > 0 ? atol / tol : 0) + 1e-300);
}

static inline void check_stage(const ms_state_dict *g, const char *key, const float *c, int64_t n)
{
    check_stage_tol(g, key, c, n, TOL, 0, 1);
}

#endif
