/* data/encode.c — see encode.h. */
#include "data/encode.h"

#include <math.h>
#include <stdlib.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MS_ENC_AVX2 1
#endif

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

/* x = (s − off)·k + 0.5 with k = 65535 / sc approximates 65535·(s − off)/sc + 0.5 to about 1e-11 (no cancellation:
 * s − off is formed first); clipped to [0.5, 65535.5] its truncation is the
 * expression's result unless x lies within 1e-7 of an integer (a tie of the exact expression, e.g. t = 1/2), where
 * the division decides. Returns 1 when pixel i must be recomputed that way. */
static inline int fast_one(double s, double off, double k, uint16_t *o)
{
    double x = (s - off) * k + 0.5;
    x = x < 0.5 ? 0.5 : x > 65535.5 ? 65535.5 : x;
    int32_t p = (int32_t)x;
    double f = x - (double)p;
    *o = (uint16_t)p;
    return f < 1e-7 || f > 1 - 1e-7;
}

#if defined(__SSE2__)
/* Four stored values (as int32) at a time in double: the scalar fast_one twice two-wide. Returns the flag bits. */
static inline int fast_four(__m128i v, __m128d off, __m128d k, uint16_t *o)
{
    const __m128d b = _mm_set1_pd(0.5);
    const __m128d lo = _mm_set1_pd(0.5), hi = _mm_set1_pd(65535.5), e0 = _mm_set1_pd(1e-7), e1 = _mm_set1_pd(1 - 1e-7);
    __m128d x0 = _mm_add_pd(_mm_mul_pd(_mm_sub_pd(_mm_cvtepi32_pd(v), off), k), b);
    __m128d x1 = _mm_add_pd(_mm_mul_pd(_mm_sub_pd(_mm_cvtepi32_pd(_mm_shuffle_epi32(v, 0xEE)), off), k), b);
    x0 = _mm_min_pd(_mm_max_pd(x0, lo), hi);
    x1 = _mm_min_pd(_mm_max_pd(x1, lo), hi);
    __m128i p0 = _mm_cvttpd_epi32(x0), p1 = _mm_cvttpd_epi32(x1);
    __m128d f0 = _mm_sub_pd(x0, _mm_cvtepi32_pd(p0)), f1 = _mm_sub_pd(x1, _mm_cvtepi32_pd(p1));
    int flags = _mm_movemask_pd(_mm_or_pd(_mm_cmplt_pd(f0, e0), _mm_cmpgt_pd(f0, e1))) |
                _mm_movemask_pd(_mm_or_pd(_mm_cmplt_pd(f1, e0), _mm_cmpgt_pd(f1, e1))) << 2;
    __m128i p = _mm_unpacklo_epi64(p0, p1); /* 4 x int32 in 0..65535 → uint16 through signed saturation */
    p = _mm_sub_epi32(p, _mm_set1_epi32(32768));
    p = _mm_xor_si128(_mm_packs_epi32(p, p), _mm_set1_epi16((short)0x8000));
    _mm_storel_epi64((__m128i *)o, p);
    return flags;
}
#endif

#if MS_ENC_AVX2
/* fast_one eight at a time, four doubles wide (AVX2, chosen at run time). Returns the pixels done (a multiple of 8). */
__attribute__((target("avx2"))) static size_t apply_avx2(const uint16_t *stored, size_t n, int i16, double off,
                                                          double sc, double k, uint16_t *out)
{
    const __m256d kk = _mm256_set1_pd(k), oo = _mm256_set1_pd(off), lo = _mm256_set1_pd(0.5);
    const __m256d hi = _mm256_set1_pd(65535.5), e0 = _mm256_set1_pd(1e-7), e1 = _mm256_set1_pd(1 - 1e-7);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i raw = _mm_loadu_si128((const __m128i *)(stored + i));
        __m256i v = i16 ? _mm256_cvtepi16_epi32(raw) : _mm256_cvtepu16_epi32(raw);
        __m256d x0 = _mm256_cvtepi32_pd(_mm256_castsi256_si128(v));
        __m256d x1 = _mm256_cvtepi32_pd(_mm256_extracti128_si256(v, 1));
        x0 = _mm256_min_pd(_mm256_max_pd(_mm256_add_pd(_mm256_mul_pd(_mm256_sub_pd(x0, oo), kk), lo), lo), hi);
        x1 = _mm256_min_pd(_mm256_max_pd(_mm256_add_pd(_mm256_mul_pd(_mm256_sub_pd(x1, oo), kk), lo), lo), hi);
        __m128i p0 = _mm256_cvttpd_epi32(x0), p1 = _mm256_cvttpd_epi32(x1);
        __m256d f0 = _mm256_sub_pd(x0, _mm256_cvtepi32_pd(p0)), f1 = _mm256_sub_pd(x1, _mm256_cvtepi32_pd(p1));
        int f = _mm256_movemask_pd(_mm256_or_pd(_mm256_cmp_pd(f0, e0, _CMP_LT_OQ), _mm256_cmp_pd(f0, e1, _CMP_GT_OQ))) |
                _mm256_movemask_pd(_mm256_or_pd(_mm256_cmp_pd(f1, e0, _CMP_LT_OQ), _mm256_cmp_pd(f1, e1, _CMP_GT_OQ)))
                    << 4;
        _mm_storeu_si128((__m128i *)(out + i), _mm_packus_epi32(p0, p1)); /* 0..65535 */
        if (f) { /* rare: a tie of the expression; the inputs are still in v (out may be stored) */
            int32_t s8[8];
            _mm256_storeu_si256((__m256i *)s8, v);
            for (int j = 0; j < 8; j++)
                if (f >> j & 1) out[i + j] = norm_one((double)s8[j], off, sc);
        }
    }
    return i;
}
#endif

void ms_encoding_apply(const ms_encoding *e, const uint16_t *stored, size_t n, uint16_t *out)
{
    const double off = e->win.offset, sc = e->win.scale, k = 65535.0 / sc;
    const int i16 = e->type == MS_STORED_I16;
    size_t i = 0;
#if MS_ENC_AVX2
    if (__builtin_cpu_supports("avx2")) i = apply_avx2(stored, n, i16, off, sc, k, out);
#endif
#if defined(__SSE2__)
    const __m128d kk = _mm_set1_pd(k), oo = _mm_set1_pd(off);
    for (; i + 4 <= n; i += 4) {
        __m128i v = _mm_loadl_epi64((const __m128i *)(stored + i)); /* 4 x 16 bits */
        v = i16 ? _mm_srai_epi32(_mm_unpacklo_epi16(v, v), 16) : _mm_unpacklo_epi16(v, _mm_setzero_si128());
        int f = fast_four(v, oo, kk, out + i);
        if (f) { /* rare: a tie of the expression; the inputs are still in v (out may be stored) */
            int32_t s4[4];
            _mm_storeu_si128((__m128i *)s4, v);
            for (int j = 0; j < 4; j++)
                if (f >> j & 1) out[i + j] = norm_one((double)s4[j], off, sc);
        }
    }
#endif
    for (; i < n; i++) {
        double s = i16 ? (double)(int16_t)stored[i] : (double)stored[i];
        if (fast_one(s, off, k, out + i)) out[i] = norm_one(s, off, sc);
    }
}

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
