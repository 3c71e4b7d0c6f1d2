/* data/intensity.c — see intensity.h. */
#include "data/intensity.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

ms_status ms_norm_parse(const char *s, ms_norm *out)
{
    if (!strcmp(s, "percentile"))
        *out = MS_NORM_PERCENTILE;
    else if (!strcmp(s, "zscore"))
        *out = MS_NORM_ZSCORE;
    else if (!strcmp(s, "none"))
        *out = MS_NORM_NONE;
    else
        return ms_error(MS_EINVAL, "--norm: '%s' is not percentile, zscore or none", s);
    return MS_OK;
}

const char *ms_norm_name(ms_norm n)
{
    return n == MS_NORM_PERCENTILE ? "percentile" : n == MS_NORM_ZSCORE ? "zscore" : "none";
}

/* Places the k-th smallest value at v[k], smaller ones before, larger after (Hoare quickselect, median of 3). */
static void select_k(float *v, size_t n, size_t k)
{
    size_t lo = 0, hi = n - 1;
    while (hi > lo) {
        size_t mid = lo + (hi - lo) / 2;
        float a = v[lo], b = v[mid], c = v[hi];
        float p = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        size_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < p) i++;
            while (v[j] > p) j--;
            if (i <= j) {
                float t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                if (j == 0) break;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return;
    }
}

double ms_percentile_select(float *v, size_t n, double q)
{
    if (n == 0) return 0;
    double pos = q / 100.0 * (double)(n - 1);
    size_t k = (size_t)floor(pos);
    if (k >= n - 1) {
        select_k(v, n, n - 1);
        return v[n - 1];
    }
    double frac = pos - (double)k;
    select_k(v, n, k);
    float lo = v[k], hi = v[k + 1];
    for (size_t i = k + 2; i < n; i++)
        if (v[i] < hi) hi = v[i]; /* the next value is the minimum of the upper part */
    return (double)lo + frac * ((double)hi - (double)lo);
}

/* Exact percentiles of the nonzero values by histogram: one counting pass into 65536 bins over [mn, mx], then only
 * the values of the (at most 4) bins that hold the wanted ranks are copied and selected exactly. When the values are
 * integers spanning fewer than 65536 levels each bin is one value, and no copy is needed at all. */
#define NBINS 65536
static inline int bin_of(float x, float mn, float sc)
{
    int b = (int)((x - mn) * sc);
    return b < 0 ? 0 : b > NBINS - 1 ? NBINS - 1 : b;
}
static ms_status percentiles_hist(const float *v, size_t n, size_t m, double mn, double mx, int integral,
                                  const double q[2], double out[2])
{
    uint32_t *hist = calloc(NBINS, sizeof *hist);
    if (!hist) return ms_error(MS_ENOMEM, "out of memory");
    int exact = integral && mx - mn < NBINS;
    double sc = exact ? 1.0 : (mx > mn ? (NBINS - 1) / (mx - mn) : 0);
    /* bins in float: cheap, and the refinement pass below uses the very same function, so ranks stay exact */
    const float fmn = (float)mn, fsc = (float)sc;
#define BIN(x) bin_of((x), fmn, fsc)
    if (exact && (float)mn == mn && mx - mn < (1 << 23))
        for (size_t i = 0; i < n; i++) hist[BIN(v[i])] += v[i] != 0;
    else
        for (size_t i = 0; i < n; i++)
            if (v[i] != 0) hist[BIN(v[i])]++;
    ms_status st = MS_OK;
    for (int p = 0; p < 2 && !st; p++) {
        double pos = q[p] / 100.0 * (double)(m - 1);
        size_t k = (size_t)floor(pos), rank[2] = {k, k + 1 < m ? k + 1 : k};
        double val[2];
        for (int r = 0; r < 2; r++) {
            size_t cum = 0;
            int b = 0;
            while (cum + hist[b] <= rank[r]) cum += hist[b++];
            if (exact) {
                val[r] = mn + b;
                continue;
            }
            /* the rank lies in bin b: select among that bin's values (rank - cum of them come before) */
            float *t = malloc((size_t)hist[b] * sizeof *t);
            if (!t) {
                st = ms_error(MS_ENOMEM, "out of memory");
                break;
            }
            size_t c = 0;
            for (size_t i = 0; i < n; i++)
                if (v[i] != 0 && BIN(v[i]) == b) t[c++] = v[i];
            select_k(t, c, rank[r] - cum);
            val[r] = t[rank[r] - cum];
            free(t);
        }
        out[p] = val[0] + (pos - (double)k) * (val[1] - val[0]);
    }
#undef BIN
    free(hist);
    return st;
}

/* The common MRI case (uint8/int8/uint16/int16 voxels, no scaling): every value is an integer in [-32768, 65535], so
 * one counting pass gives min, max, the nonzero count, exact percentiles and the moments. Returns 0 (and leaves the
 * general path to the caller) at the first value that does not fit. */
#define SI_LO (-32768)
#define SI_N (65536 + 32768)
static void fit_hist(const uint32_t *hist, size_t n, ms_norm norm, const double q[2], ms_intensity *out);

static int fit_small_int(const float *v, size_t n, ms_norm norm, const double q[2], ms_intensity *out, int *oom)
{
    uint32_t *hist = calloc(SI_N, sizeof *hist);
    if (!hist) {
        *oom = 1;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        float x = v[i];
        if (!(x >= (float)SI_LO && x <= 65535.f)) {
            free(hist);
            return 0;
        }
        int32_t k = (int32_t)x;
        if ((float)k != x) {
            free(hist);
            return 0;
        }
        hist[k - SI_LO]++;
    }
    fit_hist(hist, n, norm, q, out);
    free(hist);
    return 1;
}

/* The q-th percentile (numpy's linear interpolation) of the nz nonzero values counted in hist (SI_N bins, value
 * b + SI_LO in bin b; the zero bin is skipped). */
static double pct_hist(const uint32_t *hist, uint64_t nz, double q)
{
    double pos = q / 100.0 * (double)(nz - 1);
    uint64_t k = (uint64_t)floor(pos), rank[2] = {k, k + 1 < nz ? k + 1 : k};
    double val[2];
    for (int t = 0; t < 2; t++) { /* the rank-th nonzero value: walk the bins, skipping the zero bin */
        uint64_t cum = 0;
        int32_t b = 0;
        for (;; b++) {
            uint64_t c = b == -SI_LO ? 0 : hist[b];
            if (cum + c > rank[t]) break;
            cum += c;
        }
        val[t] = b + SI_LO;
    }
    return val[0] + (pos - (double)k) * (val[1] - val[0]);
}

/* Everything fit_small_int derives from its histogram of SI_N bins (value b + SI_LO in bin b) of n values; with
 * nq > 0 also the moments and the percentiles q[0..nq) of the nonzero values into qv. */
static void fit_hist_ex(const uint32_t *hist, size_t n, ms_norm norm, const double q2[2], const double *q, int nq,
                        double *qv, ms_intensity *out)
{
    int32_t lo = 0, hi = -1;
    for (int32_t b = 0; b < SI_N; b++)
        if (hist[b]) {
            lo = b + SI_LO;
            break;
        }
    for (int32_t b = SI_N - 1; b >= 0; b--)
        if (hist[b]) {
            hi = b + SI_LO;
            break;
        }
    uint64_t nz = n - hist[-SI_LO];
    double sum = 0, sum2 = 0;
    if (norm == MS_NORM_ZSCORE || nq > 0)
        for (int32_t b = 0; b < SI_N; b++) {
            double x = b + SI_LO;
            sum += hist[b] * x;
            sum2 += hist[b] * x * x;
        }
    out->n_nonzero = nz;
    out->mean = nz ? sum / (double)nz : 0;
    double var = nz ? sum2 / (double)nz - out->mean * out->mean : 1;
    out->std = var > 0 ? sqrt(var) : 1;
    out->int_lo = lo;
    out->int_hi = hi;
    for (int i = 0; i < nq; i++) qv[i] = nz ? pct_hist(hist, nz, q[i]) : 0;
    if (n == 0) {
        out->offset = 0;
        out->scale = 1;
    } else if (norm != MS_NORM_PERCENTILE) {
        out->offset = lo;
        out->scale = hi - lo;
    } else if (nz == 0) {
        out->offset = 0;
        out->scale = 1;
    } else {
        out->offset = pct_hist(hist, nz, q2[0]);
        out->scale = pct_hist(hist, nz, q2[1]) - out->offset;
    }
    if (!(out->scale > 0)) out->scale = 1;
}

static void fit_hist(const uint32_t *hist, size_t n, ms_norm norm, const double q[2], ms_intensity *out)
{
    fit_hist_ex(hist, n, norm, q, NULL, 0, NULL, out);
}

/* Counting into 4 interleaved histograms breaks the store-to-load chain of runs of equal values (background), which
 * otherwise serialises the increments; the four are summed into one at the end. */
#define COUNT_INT(T)                                                                                                   \
    do {                                                                                                               \
        const T *x = (const T *)v;                                                                                     \
        size_t i = 0;                                                                                                  \
        for (; i + 4 <= n; i += 4) {                                                                                   \
            h4[0 * SI_N + (int32_t)x[i] - SI_LO]++;                                                                    \
            h4[1 * SI_N + (int32_t)x[i + 1] - SI_LO]++;                                                                \
            h4[2 * SI_N + (int32_t)x[i + 2] - SI_LO]++;                                                                \
            h4[3 * SI_N + (int32_t)x[i + 3] - SI_LO]++;                                                                \
        }                                                                                                              \
        for (; i < n; i++) h4[(int32_t)x[i] - SI_LO]++;                                                                \
    } while (0)

ms_status ms_intensity_fit_int_ex(const void *v, ms_int_type type, size_t n, ms_norm norm, double p_lo,
                                  double p_hi, const double *q, int nq, double *qv, ms_intensity *out)
{
    uint32_t *h4 = calloc((size_t)4 * SI_N, sizeof *h4);
    if (!h4) return ms_error(MS_ENOMEM, "out of memory");
    switch (type) {
    case MS_INT_U8: COUNT_INT(uint8_t); break;
    case MS_INT_I8: COUNT_INT(int8_t); break;
    case MS_INT_U16: COUNT_INT(uint16_t); break;
    case MS_INT_I16: COUNT_INT(int16_t); break;
    }
    for (int k = 1; k < 4; k++)
        for (size_t b = 0; b < SI_N; b++) h4[b] += h4[(size_t)k * SI_N + b];
    fit_hist_ex(h4, n, norm, (double[2]){p_lo, p_hi}, q, nq, qv, out);
    free(h4);
    return MS_OK;
}

ms_status ms_intensity_fit_int(const void *v, ms_int_type type, size_t n, ms_norm norm, double p_lo, double p_hi,
                               ms_intensity *out)
{
    return ms_intensity_fit_int_ex(v, type, n, norm, p_lo, p_hi, NULL, 0, NULL, out);
}
#undef COUNT_INT

ms_status ms_intensity_lut(const ms_intensity *it, uint16_t **lut)
{
    *lut = NULL;
    if (it->int_hi < it->int_lo) return ms_error(MS_EINVAL, "intensity: not an integer window");
    size_t m = (size_t)((int64_t)it->int_hi - it->int_lo + 1);
    uint16_t *t = malloc(m * sizeof *t);
    if (!t) return ms_error(MS_ENOMEM, "out of memory");
    const double off = it->offset, sc = it->scale;
    for (size_t k = 0; k < m; k++) {
        double x = ((double)(it->int_lo + (int64_t)k) - off) / sc;
        x = x < 0 ? 0 : x > 1 ? 1 : x;
        t[k] = (uint16_t)(int32_t)(x * 65535.0 + 0.5);
    }
    *lut = t;
    return MS_OK;
}

ms_status ms_intensity_fit(const float *v, size_t n, ms_norm norm, double p_lo, double p_hi, ms_intensity *out)
{
    int oom = 0;
    out->int_lo = 0;
    out->int_hi = -1;
    if (fit_small_int(v, n, norm, (double[2]){p_lo, p_hi}, out, &oom)) return MS_OK;
    if (oom) return ms_error(MS_ENOMEM, "out of memory");
    out->int_lo = 0;
    out->int_hi = -1;
    double sum = 0, sum2 = 0, mn = INFINITY, mx = -INFINITY, nzmn = INFINITY, nzmx = -INFINITY;
    uint64_t nz = 0;
    int integral = 1;
    float fmn = INFINITY, fmx = -INFINITY, fnzmn = INFINITY, fnzmx = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        float x = v[i];
        fmn = x < fmn ? x : fmn;
        fmx = x > fmx ? x : fmx;
        if (x != 0) {
            nz++;
            fnzmn = x < fnzmn ? x : fnzmn;
            fnzmx = x > fnzmx ? x : fnzmx;
            integral &= fabsf(x) < 2e9f && (float)(int32_t)x == x;
        }
    }
    mn = fmn, mx = fmx, nzmn = fnzmn, nzmx = fnzmx;
    if (norm ==
        MS_NORM_ZSCORE) /* mean/std only where they are used: a second pass is cheaper than doubles in the first */
        for (size_t i = 0; i < n; i++)
            if (v[i] != 0) {
                sum += v[i];
                sum2 += (double)v[i] * v[i];
            }
    out->n_nonzero = nz;
    out->mean = nz ? sum / (double)nz : 0;
    double var = nz ? sum2 / (double)nz - out->mean * out->mean : 1;
    out->std = var > 0 ? sqrt(var) : 1;
    if (n == 0) mn = 0, mx = 1;
    if (norm == MS_NORM_PERCENTILE) {
        if (nz == 0) {
            out->offset = 0;
            out->scale = 1;
            return MS_OK;
        }
        double q[2] = {p_lo, p_hi}, r[2];
        MS_TRY(percentiles_hist(v, n, (size_t)nz, nzmn, nzmx, integral, q, r));
        out->offset = r[0];
        out->scale = r[1] - r[0];
    } else {
        out->offset = mn;
        out->scale = mx - mn;
    }
    if (!(out->scale > 0)) out->scale = 1; /* constant volume: everything at or below the offset maps to 0 */
    return MS_OK;
}

void ms_intensity_apply(const float *v, size_t n, const ms_intensity *it, uint16_t *out)
{
    /* exactly the documented expression, in double: float would put ~1 % of voxels one step off, and a precomputed
     * 65535/scale would round integer data's exact .5 ties (e.g. 98/196) the other way */
    const double off = it->offset, sc = it->scale;
    int64_t range = (int64_t)it->int_hi - it->int_lo;
    if (range >= 0 && range < 65536 * 2 && (uint64_t)range * 4 < n) {
        /* integer voxels: one exact evaluation per level, then a table lookup per voxel */
        uint16_t *lut = malloc((size_t)(range + 1) * sizeof *lut);
        if (lut) {
            for (int64_t k = 0; k <= range; k++) {
                double t = ((double)(it->int_lo + k) - off) / sc;
                t = t < 0 ? 0 : t > 1 ? 1 : t;
                lut[k] = (uint16_t)(int32_t)(t * 65535.0 + 0.5);
            }
            const int32_t lo = it->int_lo;
            const float flo = (float)it->int_lo, fhi = (float)it->int_hi;
            for (size_t i = 0; i < n; i++) {
                float x = v[i];
                int32_t k = x >= flo && x <= fhi ? (int32_t)x - lo : -1; /* range first: the cast must not overflow */
                if (k >= 0 && (float)(k + lo) == x)
                    out[i] = lut[k];
                else { /* not from the fitted array: the exact expression */
                    double t = ((double)x - off) / sc;
                    t = t < 0 ? 0 : t > 1 ? 1 : t;
                    out[i] = (uint16_t)(int32_t)(t * 65535.0 + 0.5);
                }
            }
            free(lut);
            return;
        }
    }
    for (size_t i = 0; i < n; i++) {
        double t = ((double)v[i] - off) / sc;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        out[i] = (uint16_t)(int32_t)(t * 65535.0 + 0.5);
    }
}
