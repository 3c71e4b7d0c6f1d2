/* tests/data/test_encode.c — layout 2's encoding (data/encode.h) against references computed here in double:
 * percentiles of sorted copies, the documented quantisation and normalisation expressions, a brute-force
 * threshold, and layout 1's own path (ms_intensity_fit + ms_intensity_apply on the same values as floats), which an
 * integer source must reproduce pixel for pixel. Random sizes, ranges, types and zero fractions; the seed is printed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "data/encode.h"
#include "data/intensity.h"
#include "harness.h"

/* encode.c compiled a second time under other names with the run-time AVX2 choice off, so that the SSE2 path is
 * checked on a machine that has AVX2 (as test_store does for the hashes). */
#define __builtin_cpu_supports(x) 0
#define ms_enc_pct sse2_enc_pct
#define ms_encode_fit_int sse2_encode_fit_int
#define ms_encode_floats sse2_encode_floats
#define ms_encoding_apply sse2_encoding_apply
#define ms_encoding_threshold sse2_encoding_threshold
#define ms_encoding_rewindow sse2_encoding_rewindow
#include "data/encode.c"
#undef __builtin_cpu_supports
#undef ms_enc_pct
#undef ms_encode_fit_int
#undef ms_encode_floats
#undef ms_encoding_apply
#undef ms_encoding_threshold
#undef ms_encoding_rewindow

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* numpy's linear-interpolation percentile of m sorted values */
static double pct_ref(const double *s, size_t m, double q)
{
    if (!m) return 0;
    double pos = q / 100 * (double)(m - 1);
    size_t k = (size_t)pos;
    return k + 1 < m ? s[k] + (pos - (double)k) * (s[k + 1] - s[k]) : s[m - 1];
}

static uint16_t norm_ref(double s, double off, double sc)
{
    double t = (s - off) / sc;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    return (uint16_t)floor(t * 65535.0 + 0.5);
}

static double stored_value(const ms_encoding *e, uint16_t bits)
{
    return e->type == MS_STORED_I16 ? (double)(int16_t)bits : (double)bits;
}

/* Everything the encoding claims about its stored values, against sorted references. */
static void check_encoding(const char *what, const ms_encoding *e, const uint16_t *q, size_t n, double p_lo,
                           double p_hi)
{
    double *s = malloc(n * sizeof *s);
    size_t m = 0;
    double mn = INFINITY, mx = -INFINITY, sum = 0, sum2 = 0;
    for (size_t i = 0; i < n; i++) {
        double x = stored_value(e, q[i]);
        mn = fmin(mn, x), mx = fmax(mx, x);
        if (x != 0) s[m++] = x, sum += x, sum2 += x * x;
    }
    qsort(s, m, sizeof *s, cmp_d);
    MS_CHECK(e->min == (int32_t)mn && e->max == (int32_t)mx && e->n_nonzero == m, "%s: min/max/nonzero", what);
    double mean = m ? sum / (double)m : 0, sd = m ? sqrt(fmax(sum2 / (double)m - mean * mean, 0)) : 1;
    MS_CHECK(fabs(e->mean - mean) <= 1e-9 * (1 + fabs(mean)) && (sd == 0 || fabs(e->std - sd) <= 1e-6 * (1 + sd)),
             "%s: mean %g vs %g, std %g vs %g", what, e->mean, mean, e->std, sd);
    int bad = 0;
    /* relative to the largest magnitude: a volume whose every non-zero value is negative has mx < 0 */
    double big = 1 + fmax(fabs(mn), fabs(mx));
    for (int i = 0; i < MS_ENC_NPCT; i++) bad += fabs(e->pct[i] - pct_ref(s, m, ms_enc_pct[i])) > 1e-9 * big;
    MS_CHECK(bad == 0, "%s: %d kept percentiles differ", what, bad);
    double lo = m ? pct_ref(s, m, p_lo) : 0, sc = m ? pct_ref(s, m, p_hi) - lo : 1;
    if (!(sc > 0)) sc = 1;
    MS_CHECK(fabs(e->win.offset - lo) <= 1e-9 * (1 + fabs(lo)) && fabs(e->win.scale - sc) <= 1e-9 * (1 + sc),
             "%s: window %g+%g vs %g+%g", what, e->win.offset, e->win.scale, lo, sc);
    free(s);
}

/* ms_encoding_apply (table and expression paths), the threshold, and layout 1's pixels for the same values. */
static void check_apply(const char *what, const ms_encoding *e, const uint16_t *q, size_t n, const float *as_float,
                        ms_norm norm, double p_lo, double p_hi)
{
    uint16_t *o = malloc(n * sizeof *o), *o1 = malloc(n * sizeof *o1);
    ms_encoding_apply(e, q, n, o);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += o[i] != norm_ref(stored_value(e, q[i]), e->win.offset, e->win.scale);
    MS_CHECK(bad == 0, "%s: %zu of %zu pixels differ from the expression", what, bad, n);
    memcpy(o1, q, n * sizeof *o1); /* in place, as predict calls it */
    ms_encoding_apply(e, o1, n, o1);
    MS_CHECK(!memcmp(o, o1, n * sizeof *o), "%s: in-place apply differs", what);
    sse2_encoding_apply(e, q, n, o1);
    MS_CHECK(!memcmp(o, o1, n * sizeof *o), "%s: the SSE2 path differs", what);
    /* a few pixels at a time: the expression path */
    for (size_t i = 0; i + 3 <= n && i < 60; i += 3) {
        uint16_t t[3];
        ms_encoding_apply(e, q + i, 3, t);
        MS_CHECK(!memcmp(t, o + i, sizeof t), "%s: short apply differs at %zu", what, i);
    }
    int32_t thr = ms_encoding_threshold(e), ref = e->type == MS_STORED_I16 ? -32768 : 0;
    int32_t end = e->type == MS_STORED_I16 ? 32768 : 65536;
    while (ref < end && norm_ref(ref, e->win.offset, e->win.scale) == 0) ref++;
    MS_CHECK(thr == ref, "%s: threshold %d vs %d", what, thr, ref);
    if (as_float) { /* layout 1 on the same values */
        ms_intensity it;
        MS_CHECK_OK(ms_intensity_fit(as_float, n, norm, p_lo, p_hi, &it));
        ms_intensity_apply(as_float, n, &it, o1);
        MS_CHECK(!memcmp(o, o1, n * sizeof *o), "%s: layout 2 pixels differ from layout 1's", what);
    }
    free(o);
    free(o1);
}

static void test_int(ms_rng *r)
{
    static const ms_int_type types[4] = {MS_INT_U8, MS_INT_I8, MS_INT_U16, MS_INT_I16};
    for (int t = 0; t < 40; t++) {
        ms_int_type ty = types[t % 4];
        size_t n = 1 + (size_t)(ms_rand_u64(r->stream, r->counter++) % 150000);
        int32_t lo = ty == MS_INT_U8 || ty == MS_INT_U16 ? 0 : ty == MS_INT_I8 ? -128 : -32768;
        int32_t span = ty == MS_INT_U8 || ty == MS_INT_I8 ? 256 : 1 + (int32_t)(ms_rand_u64(r->stream, r->counter++) % 65536);
        int zf = (int)(ms_rand_u64(r->stream, r->counter++) % 80);
        void *v = malloc(n * 2);
        uint16_t *q = malloc(n * 2);
        float *f = malloc(n * sizeof *f);
        for (size_t i = 0; i < n; i++) {
            uint64_t u = ms_rand_u64(r->stream, r->counter++);
            int32_t x = (int)(u % 100) < zf ? 0 : lo + (int32_t)((u >> 8) % (uint64_t)span);
            if (ty == MS_INT_I16 && x > 32767) x = 32767;
            if (ty == MS_INT_U16 && x > 65535) x = 65535;
            switch (ty) {
            case MS_INT_U8: ((uint8_t *)v)[i] = (uint8_t)x; break;
            case MS_INT_I8: ((int8_t *)v)[i] = (int8_t)x; break;
            case MS_INT_U16: ((uint16_t *)v)[i] = (uint16_t)x; break;
            case MS_INT_I16: ((int16_t *)v)[i] = (int16_t)x; break;
            }
            f[i] = (float)x;
            q[i] = (uint16_t)x; /* the stored bits ingest copies */
        }
        ms_norm norm = (ms_norm)(t / 4 % 3);
        double p_lo = ms_rng_range(r, 0, 5), p_hi = ms_rng_range(r, 95, 100);
        ms_encoding e;
        MS_CHECK_OK(ms_encode_fit_int(v, ty, n, norm, p_lo, p_hi, &e));
        MS_CHECK(e.type == (ty == MS_INT_U8 || ty == MS_INT_U16 ? MS_STORED_U16 : MS_STORED_I16) && e.slope == 1 &&
                     e.max_error == 0,
                 "int type %d: encoding type/slope", ty);
        char what[64];
        snprintf(what, sizeof what, "int type %d n %zu norm %d", ty, n, norm);
        if (norm == MS_NORM_PERCENTILE) check_encoding(what, &e, q, n, p_lo, p_hi);
        check_apply(what, &e, q, n, f, norm, p_lo, p_hi);
        /* another window from the kept statistics equals a fresh fit with it */
        double a = ms_enc_pct[1 + t % 6], b = ms_enc_pct[MS_ENC_NPCT - 1 - t % 5];
        ms_encoding w = e, ref;
        MS_CHECK_OK(ms_encoding_rewindow(&w, MS_NORM_PERCENTILE, a, b));
        MS_CHECK_OK(ms_encode_fit_int(v, ty, n, MS_NORM_PERCENTILE, a, b, &ref));
        MS_CHECK(w.win.offset == ref.win.offset && w.win.scale == ref.win.scale, "%s: rewindow %g..%g", what, a, b);
        MS_CHECK_OK(ms_encoding_rewindow(&w, MS_NORM_NONE, 0, 0));
        MS_CHECK_OK(ms_encode_fit_int(v, ty, n, MS_NORM_NONE, 0, 0, &ref));
        MS_CHECK(w.win.offset == ref.win.offset && w.win.scale == ref.win.scale, "%s: rewindow none", what);
        MS_CHECK(ms_encoding_rewindow(&w, MS_NORM_PERCENTILE, 0.7, 99) == MS_EINVAL, "%s: off-grid accepted", what);
        free(v);
        free(q);
        free(f);
    }
}

static void test_floats(ms_rng *r)
{
    for (int t = 0; t < 40; t++) {
        size_t n = 1 + (size_t)(ms_rand_u64(r->stream, r->counter++) % 100000);
        int kind = t % 4; /* 0 integral >= 0, 1 integral with negatives, 2 real >= 0, 3 real with negatives */
        double amp = exp(ms_rng_range(r, -6, 14));
        float *v = malloc(n * sizeof *v);
        uint16_t *q = malloc(n * 2);
        for (size_t i = 0; i < n; i++) {
            double x = ms_rng_uniform(r) * (kind == 0 || kind == 1 ? fmin(amp, 30000) : amp);
            if (kind & 1) x -= 0.3 * (kind == 1 ? fmin(amp, 30000) : amp);
            if (kind < 2) x = floor(x);
            if (ms_rng_uniform(r) < 0.2) x = 0;
            v[i] = (float)x;
        }
        ms_encoding e;
        MS_CHECK_OK(ms_encode_floats(v, n, MS_NORM_PERCENTILE, 0.5, 99.5, q, &e));
        char what[64];
        snprintf(what, sizeof what, "floats kind %d n %zu amp %g", kind, n, amp);
        double mn = 0, mx = 0;
        int integral = 1;
        for (size_t i = 0; i < n; i++) mn = fmin(mn, v[i]), mx = fmax(mx, v[i]), integral &= v[i] == floor(v[i]);
        int exact = integral && mn >= -32768 && mx <= 65535 && (mn >= 0 || mx <= 32767);
        double slope = exact ? 1 : mn >= 0 ? (mx > 0 ? mx / 65535 : 1) : fmax(-mn, mx) / 32767;
        MS_CHECK(e.slope == slope && e.max_error == (exact ? 0 : slope / 2), "%s: slope %g vs %g", what, e.slope, slope);
        MS_CHECK(e.type == (mn < 0 ? MS_STORED_I16 : MS_STORED_U16), "%s: type", what);
        size_t bad = 0, zeros = 0;
        for (size_t i = 0; i < n; i++) {
            double ref = exact ? v[i] : floor((double)v[i] / slope + 0.5), s = stored_value(&e, q[i]);
            bad += s != ref || fabs(s * slope - v[i]) > slope / 2 * (1 + 1e-9) + (exact ? 0 : 1e-12 * fabs(v[i]));
            zeros += v[i] == 0 && s != 0;
        }
        MS_CHECK(bad == 0 && zeros == 0, "%s: %zu stored values off the rule, %zu zeros moved", what, bad, zeros);
        check_encoding(what, &e, q, n, 0.5, 99.5);
        check_apply(what, &e, q, n, exact ? v : NULL, MS_NORM_PERCENTILE, 0.5, 99.5);
        free(v);
        free(q);
    }
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng r;
    ms_rng_init(&r, seed, 5);
    test_int(&r);
    test_floats(&r);
    return ms_test_done();
}
