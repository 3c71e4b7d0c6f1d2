/* data/encode.c — see encode.h. */
#include "data/encode.h"

#include <math.h>
#include <stdlib.h>

const double ms_enc_pct[MS_ENC_NPCT] = {0, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 75, 90, 95, 98, 99, 99.5, 99.75,
                                        99.9, 100};

ms_status ms_encode_fit_int(const void *v, ms_int_type type, size_t n, ms_norm norm, double p_lo, double p_hi,
                            ms_encoding *e)
{
    e->type = type == MS_INT_U8 || type == MS_INT_U16 ? MS_STORED_U16 : MS_STORED_I16;
    e->slope = 1;
    e->inter = 0;
    e->max_error = 0;
    MS_TRY(ms_intensity_fit_int_ex(v, type, n, norm, p_lo, p_hi, ms_enc_pct, MS_ENC_NPCT, e->pct, &e->win));
    e->min = e->win.int_lo;
    e->max = e->win.int_hi;
    e->n_nonzero = e->win.n_nonzero;
    e->mean = e->win.mean;
    e->std = e->win.std;
    if (norm != MS_NORM_ZSCORE) e->win.mean = 0, e->win.std = 1; /* as layout 1 records them */
    return MS_OK;
}

ms_status ms_encode_floats(const float *v, size_t n, ms_norm norm, double p_lo, double p_hi, uint16_t *out,
                           ms_encoding *e)
{
    float mn = 0, mx = 0;
    for (size_t i = 0; i < n; i++) { /* branch-free: vectorised */
        mn = v[i] < mn ? v[i] : mn;
        mx = v[i] > mx ? v[i] : mx;
    }
    int integral = mn >= -32768.f && mx <= 65535.f && (mn >= 0 || mx <= 32767.f);
    if (integral) { /* inside int32's range, so the cast is defined */
        int all = 1;
        for (size_t i = 0; i < n; i++) all &= v[i] == (float)(int32_t)v[i];
        integral = all;
    }
    ms_int_type t;
    double slope = 1;
    if (integral && mn >= 0) { /* integers that fit: kept exactly */
        t = MS_INT_U16;
        for (size_t i = 0; i < n; i++) out[i] = (uint16_t)(int32_t)v[i];
    } else if (integral) {
        t = MS_INT_I16;
        for (size_t i = 0; i < n; i++) out[i] = (uint16_t)(int16_t)(int32_t)v[i];
    } else if (mn >= 0) { /* quantised, zero kept at zero; x + 0.5 >= 0, so truncation is floor */
        t = MS_INT_U16;
        slope = mx > 0 ? (double)mx / 65535.0 : 1;
        for (size_t i = 0; i < n; i++) out[i] = (uint16_t)(int32_t)((double)v[i] / slope + 0.5);
    } else {
        t = MS_INT_I16;
        double m = fmax(-(double)mn, (double)mx);
        slope = m / 32767.0;
        for (size_t i = 0; i < n; i++) {
            double x = (double)v[i] / slope + 0.5;
            int32_t k = (int32_t)x;        /* truncation; one less below zero when x is not whole: floor */
            out[i] = (uint16_t)(int16_t)(k - (x < (double)k));
        }
    }
    MS_TRY(ms_encode_fit_int(out, t, n, norm, p_lo, p_hi, e));
    e->slope = slope;
    e->max_error = slope == 1 && integral ? 0 : slope / 2;
    return MS_OK;
}

static inline uint16_t norm_one(double s, double off, double sc)
{
    double t = (s - off) / sc; /* the expression of layout 1 (ms_intensity_apply), in stored units */
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    return (uint16_t)(int32_t)(t * 65535.0 + 0.5);
}

/* The table for lo..hi when it costs less than the expression per pixel (a 256x256 slice of noisy MRI spans a few
 * thousand levels), else the expression. */
#define APPLY(T)                                                                                                       \
    do {                                                                                                               \
        const T *x = (const T *)stored;                                                                                \
        int32_t lo = x[0], hi = x[0];                                                                                  \
        for (size_t i = 1; i < n; i++) {                                                                               \
            lo = x[i] < lo ? x[i] : lo;                                                                                \
            hi = x[i] > hi ? x[i] : hi;                                                                                \
        }                                                                                                              \
        size_t m = (size_t)(hi - lo) + 1;                                                                              \
        uint16_t *lut = m * 2 <= n ? malloc(m * sizeof *lut) : NULL;                                                   \
        if (lut) {                                                                                                     \
            for (size_t k = 0; k < m; k++) lut[k] = norm_one((double)(lo + (int32_t)k), off, sc);                     \
            for (size_t i = 0; i < n; i++) out[i] = lut[x[i] - lo];                                                    \
            free(lut);                                                                                                 \
        } else {                                                                                                       \
            for (size_t i = 0; i < n; i++) out[i] = norm_one((double)x[i], off, sc);                                  \
        }                                                                                                              \
    } while (0)

void ms_encoding_apply(const ms_encoding *e, const uint16_t *stored, size_t n, uint16_t *out)
{
    if (n == 0) return;
    const double off = e->win.offset, sc = e->win.scale;
    if (e->type == MS_STORED_I16)
        APPLY(int16_t);
    else
        APPLY(uint16_t);
}
#undef APPLY

int32_t ms_encoding_threshold(const ms_encoding *e)
{
    /* norm_one is nondecreasing in s: bisect for the first s with a nonzero pixel over the type's range */
    int32_t lo = e->type == MS_STORED_I16 ? -32768 : 0, hi = e->type == MS_STORED_I16 ? 32768 : 65536;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (norm_one((double)mid, e->win.offset, e->win.scale) > 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo; /* one past the type's range when no value maps above 0 */
}

ms_status ms_encoding_rewindow(ms_encoding *e, ms_norm norm, double p_lo, double p_hi)
{
    ms_intensity *w = &e->win;
    w->mean = e->mean;
    w->std = e->std;
    if (norm == MS_NORM_PERCENTILE) {
        int a = -1, b = -1;
        for (int i = 0; i < MS_ENC_NPCT; i++) {
            if (ms_enc_pct[i] == p_lo) a = i;
            if (ms_enc_pct[i] == p_hi) b = i;
        }
        if (a < 0 || b < 0)
            return ms_error(MS_EINVAL, "percentiles %g, %g: the store keeps 0, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, "
                            "75, 90, 95, 98, 99, 99.5, 99.75, 99.9, 100; other ones need a new ingest", p_lo, p_hi);
        w->offset = e->n_nonzero ? e->pct[a] : 0;
        w->scale = e->n_nonzero ? e->pct[b] - e->pct[a] : 1;
        w->mean = 0, w->std = 1;
    } else {
        w->offset = e->min;
        w->scale = e->max - e->min;
        if (norm == MS_NORM_NONE) w->mean = 0, w->std = 1;
    }
    if (!(w->scale > 0)) w->scale = 1;
    return MS_OK;
}
