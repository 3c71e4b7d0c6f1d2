/* kernels/cpu/rel_pos.c — linear resize of a relative-position table (rel_pos.h), SAM's get_rel_pos
 * interpolation: torch F.interpolate(mode="linear", align_corners=False) along L, each of the C columns alike.
 * The source coordinate is computed as torch does (float scale L_in/L_out, clamp at 0), so results match torch
 * to rounding. Backward scatters with the same two weights, serially over d (tables are tiny) so it is
 * deterministic; it accumulates into din.
 */
#include "rel_pos.h"

/* Tap pair for output position d. */
static inline void taps(int64_t d, int64_t L_in, int64_t L_out, int64_t *i0, int64_t *i1, float *lam)
{
    float scale = (float)L_in / (float)L_out;
    float s = scale * ((float)d + 0.5f) - 0.5f;
    if (s < 0) s = 0;
    int64_t a = (int64_t)s;
    if (a > L_in - 1) a = L_in - 1;
    *i0 = a;
    *i1 = a < L_in - 1 ? a + 1 : a;
    *lam = s - (float)a;
}

static ms_status check(int64_t L_in, int64_t L_out, int64_t C, const char *what)
{
    MS_FAIL_IF(L_in <= 0 || L_out <= 0 || C < 0, MS_EINVAL, "%s: bad sizes L_in=%lld L_out=%lld C=%lld", what,
               (long long)L_in, (long long)L_out, (long long)C);
    return MS_OK;
}

ms_status ms_rel_pos_resize_forward_cpu(ms_device *dev, float *out, const float *in, int64_t L_in, int64_t L_out,
                                        int64_t C)
{
    (void)dev;
    MS_TRY(check(L_in, L_out, C, "rel_pos_resize"));
    for (int64_t d = 0; d < L_out; d++) {
        int64_t i0, i1;
        float lam;
        taps(d, L_in, L_out, &i0, &i1, &lam);
        const float *a = in + i0 * C, *b = in + i1 * C;
        float *o = out + d * C;
        for (int64_t c = 0; c < C; c++) o[c] = (1.0f - lam) * a[c] + lam * b[c];
    }
    return MS_OK;
}

ms_status ms_rel_pos_resize_backward_cpu(ms_device *dev, float *din, const float *dout, int64_t L_in, int64_t L_out,
                                         int64_t C)
{
    (void)dev;
    MS_TRY(check(L_in, L_out, C, "rel_pos_resize_backward"));
    if (!din) return MS_OK;
    for (int64_t d = 0; d < L_out; d++) {
        int64_t i0, i1;
        float lam;
        taps(d, L_in, L_out, &i0, &i1, &lam);
        const float *g = dout + d * C;
        float *a = din + i0 * C, *b = din + i1 * C;
        for (int64_t c = 0; c < C; c++) a[c] += (1.0f - lam) * g[c];
        for (int64_t c = 0; c < C; c++) b[c] += lam * g[c];
    }
    return MS_OK;
}
