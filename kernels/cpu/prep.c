/* kernels/cpu/prep.c — the CPU half of the prep op (kernels/prep.h): per output pixel through
 * kernels/prep_math.h, the horizontal taps of a sample computed once, rows in parallel. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "prep.h"
#include "prep_math.h"

ms_status ms_prep_check(const ms_prep_sample *s, int64_t n, int64_t native_h, int64_t native_w, int64_t size,
                        int64_t resize)
{
    MS_FAIL_IF(size < 1 || size > 65536, MS_EINVAL, "prep: model size %lld", (long long)size);
    for (int64_t k = 0; k < n; k++) {
        const ms_prep_sample *p = &s[k];
        if (p->h == 0 || p->w == 0) continue;
        MS_FAIL_IF(p->h < 0 || p->w < 0 || p->h > native_h || p->w > native_w, MS_EINVAL,
                   "prep: sample %lld: slice %dx%d outside the batch's %lldx%lld", (long long)k, p->h, p->w,
                   (long long)native_h, (long long)native_w);
        MS_FAIL_IF(!(p->bh >= 1 && p->bw >= 1 && p->y0 >= 0 && p->x0 >= 0 && p->y0 + p->bh <= p->h &&
                     p->x0 + p->bw <= p->w),
                   MS_EINVAL, "prep: sample %lld: box %gx%g at (%g, %g) outside the slice %dx%d", (long long)k,
                   p->bh, p->bw, p->y0, p->x0, p->h, p->w);
        int oh, ow;
        ms_pm_frame((int)size, resize == 1, p->bh, p->bw, &oh, &ow);
        MS_FAIL_IF(ms_pm_taps_k(p->bh, oh) > MS_PREP_MAX_TAPS || ms_pm_taps_k(p->bw, ow) > MS_PREP_MAX_TAPS,
                   MS_EINVAL, "prep: sample %lld: box %gx%g shrinks to %dx%d, more than %d taps per output",
                   (long long)k, p->bh, p->bw, oh, ow, MS_PREP_MAX_TAPS);
    }
    return MS_OK;
}

ms_status ms_prep_native_cpu(ms_device *dev, float *y, const uint16_t *native, const ms_prep_sample *samples,
                             int64_t n, int64_t native_h, int64_t native_w, int64_t size, int64_t channels,
                             int64_t resize, int64_t norm)
{
    (void)dev;
    MS_FAIL_IF(channels != 1 && channels != 3, MS_EINVAL, "prep: %lld channels", (long long)channels);
    MS_TRY(ms_prep_check(samples, n, native_h, native_w, size, resize));
    const int S = (int)size;
    const size_t plane = (size_t)S * S;
    int *fx = malloc((size_t)S * sizeof(int)), *nx = malloc((size_t)S * sizeof(int));
    float *wx = malloc((size_t)S * MS_PREP_MAX_TAPS * sizeof(float));
    if (!fx || !nx || !wx) {
        free(fx), free(nx), free(wx);
        return ms_error(MS_ENOMEM, "prep: out of memory for %d taps", S);
    }
    float a[3], b[3];
    for (int ch = 0; ch < 3; ch++) ms_pm_norm_coef((int)norm, ch, &a[ch], &b[ch]);
    for (int64_t k = 0; k < n; k++) {
        const ms_prep_sample *p = &samples[k];
        float *out = y + (size_t)k * channels * plane;
        memset(out, 0, (size_t)channels * plane * sizeof(float));
        if (p->h == 0 || p->w == 0) continue;
        const uint16_t *px = native + (size_t)k * native_h * native_w;
        int oh, ow;
        ms_pm_frame(S, resize == 1, p->bh, p->bw, &oh, &ow);
        const int kx = ms_pm_taps_k(p->bw, ow), ky = ms_pm_taps_k(p->bh, oh);
        for (int x = 0; x < ow; x++)
            nx[x] = ms_pm_axis_taps(p->x0, p->bw, p->w, ow, x, kx, wx + (size_t)x * MS_PREP_MAX_TAPS, &fx[x]);
#pragma omp parallel for schedule(static)
        for (int yy = 0; yy < oh; yy++) {
            float wy[MS_PREP_MAX_TAPS];
            int fy, ny = ms_pm_axis_taps(p->y0, p->bh, p->h, oh, yy, ky, wy, &fy);
            for (int x = 0; x < ow; x++) {
                float v = ms_pm_pixel(px, native_w, p->w, p->flip, fy, ny, wy, fx[x], nx[x],
                                      wx + (size_t)x * MS_PREP_MAX_TAPS);
                for (int ch = 0; ch < channels; ch++)
                    out[ch * plane + (size_t)yy * S + x] = a[ch] * v + b[ch];
            }
        }
    }
    free(fx), free(nx), free(wx);
    return MS_OK;
}
