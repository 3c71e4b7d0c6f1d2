/* pretrain/mae_mask.c — see mae_mask.h. */
#include "mae_mask.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"

static int win_real(int grid, int window, int wy, int wx)
{
    int h = grid - wy * window, w = grid - wx * window;
    h = h < 0 ? 0 : (h > window ? window : h);
    w = w < 0 ? 0 : (w > window ? window : w);
    return h * w;
}

int ms_mae_mask_keep_target(int grid, float ratio) { return (int)floor((double)grid * grid * (1.0 - ratio)); }

void ms_mae_mask_stratified_counts(int grid, int window, float ratio, int *real_keep, int *pad_keep)
{
    int nw = (grid + window - 1) / window, W = nw * nw;
    int target = ms_mae_mask_keep_target(grid, ratio);
    double *rem = malloc((size_t)W * sizeof *rem);
    int sum = 0;
    for (int w = 0; w < W; w++) {
        int n = win_real(grid, window, w / nw, w % nw);
        double q = (1.0 - ratio) * n;
        real_keep[w] = (int)floor(q);
        if (rem) rem[w] = q - real_keep[w];
        sum += real_keep[w];
        int np = window * window - n;
        pad_keep[w] = (int)floor((1.0 - ratio) * np + 0.5);
    }
    /* largest remainder: hand out the missing tokens to the windows with the largest fractional parts
       (ties: lower window index), never above the window's real count */
    while (sum < target && rem) {
        int best = -1;
        for (int w = 0; w < W; w++)
            if (real_keep[w] < win_real(grid, window, w / nw, w % nw) && (best < 0 || rem[w] > rem[best])) best = w;
        if (best < 0) break;
        real_keep[best]++;
        rem[best] = -1;
        sum++;
    }
    free(rem);
}

ms_status ms_mae_mask_init(ms_mae_mask *m, int grid, int window, int batch)
{
    memset(m, 0, sizeof *m);
    MS_FAIL_IF(grid <= 0 || window <= 0 || batch <= 0, MS_EINVAL, "mae mask: bad sizes");
    m->grid = grid;
    m->window = window;
    int nw = (grid + window - 1) / window;
    m->padded = nw * window;
    m->n_windows = nw * nw;
    m->batch = batch;
    m->n_keep_max = grid * grid;
    m->n_pad_max = m->padded * m->padded - grid * grid;
    m->n_keep = calloc((size_t)batch, sizeof(int));
    m->n_pad = calloc((size_t)batch, sizeof(int));
    m->keep = malloc((size_t)batch * (size_t)m->n_keep_max * sizeof(int32_t));
    m->pad = malloc((size_t)batch * (size_t)(m->n_pad_max ? m->n_pad_max : 1) * sizeof(int32_t));
    m->win_keep_off = calloc((size_t)batch * (size_t)(m->n_windows + 1), sizeof(int32_t));
    m->win_pad_off = calloc((size_t)batch * (size_t)(m->n_windows + 1), sizeof(int32_t));
    m->masked = calloc((size_t)batch * (size_t)grid * (size_t)grid, 1);
    if (!m->n_keep || !m->n_pad || !m->keep || !m->pad || !m->win_keep_off || !m->win_pad_off || !m->masked) {
        ms_mae_mask_free(m);
        MS_FAIL(MS_ENOMEM, "mae mask: out of memory");
    }
    return MS_OK;
}

void ms_mae_mask_free(ms_mae_mask *m)
{
    free(m->n_keep); free(m->n_pad); free(m->keep); free(m->pad);
    free(m->win_keep_off); free(m->win_pad_off); free(m->masked);
    memset(m, 0, sizeof *m);
}

/* Chooses k of the n items in idx (in place: the chosen ones end up sorted in idx[0..k)). */
static void choose(int32_t *idx, int n, int k, ms_rng *r)
{
    for (int i = 0; i < k; i++) {
        int j = i + (int)ms_rng_below(r, (uint64_t)(n - i));
        int32_t t = idx[i]; idx[i] = idx[j]; idx[j] = t;
    }
    /* insertion sort of the chosen prefix: raster order within the window */
    for (int i = 1; i < k; i++) {
        int32_t v = idx[i];
        int j = i - 1;
        while (j >= 0 && idx[j] > v) { idx[j + 1] = idx[j]; j--; }
        idx[j + 1] = v;
    }
}

ms_status ms_mae_mask_sample(ms_mae_mask *m, int b, float ratio, ms_mask_sampling how, uint64_t seed,
                             uint64_t sample_key)
{
    MS_FAIL_IF(b < 0 || b >= m->batch, MS_EINVAL, "mae mask: sample %d out of range", b);
    MS_FAIL_IF(!(ratio >= 0.f && ratio < 1.f), MS_EINVAL, "--mask-ratio must be in [0, 1), got %g", ratio);
    int g = m->grid, ws = m->window, gp = m->padded, nw = gp / ws, W = m->n_windows;
    int *real_keep = malloc((size_t)W * sizeof(int)), *pad_keep = malloc((size_t)W * sizeof(int));
    int32_t *buf = malloc((size_t)ws * ws * sizeof(int32_t));
    uint8_t *keepflag = NULL;
    ms_status rc = MS_OK;
    if (!real_keep || !pad_keep || !buf) { rc = ms_error(MS_ENOMEM, "mae mask: out of memory"); goto leave; }
    ms_mae_mask_stratified_counts(g, ws, ratio, real_keep, pad_keep);
    ms_rng r;
    ms_rng_init(&r, seed, ms_rng_stream(0x6d61736bull, sample_key, 0));
    uint8_t *masked = m->masked + (size_t)b * g * g;
    if (how == MS_MASK_RANDOM) {
        /* uniform over the whole grid; window counts follow from the draw */
        int L = g * g, k = ms_mae_mask_keep_target(g, ratio);
        int32_t *all = malloc((size_t)L * sizeof(int32_t));
        keepflag = calloc((size_t)L, 1);
        if (!all || !keepflag) { free(all); rc = ms_error(MS_ENOMEM, "mae mask: out of memory"); goto leave; }
        for (int i = 0; i < L; i++) all[i] = i;
        for (int i = 0; i < k; i++) {
            int j = i + (int)ms_rng_below(&r, (uint64_t)(L - i));
            int32_t t = all[i]; all[i] = all[j]; all[j] = t;
            keepflag[all[i]] = 1;
        }
        free(all);
    }
    int32_t *keep = m->keep + (size_t)b * m->n_keep_max, *pad = m->pad + (size_t)b * m->n_pad_max;
    int32_t *koff = m->win_keep_off + (size_t)b * (W + 1), *poff = m->win_pad_off + (size_t)b * (W + 1);
    int nk = 0, np = 0;
    memset(masked, 1, (size_t)g * g);
    for (int w = 0; w < W; w++) {
        int wy = w / nw, wx = w % nw;
        koff[w] = nk;
        poff[w] = np;
        /* real tokens of this window */
        int n = 0;
        for (int rr = 0; rr < ws; rr++)
            for (int cc = 0; cc < ws; cc++) {
                int y = wy * ws + rr, x = wx * ws + cc;
                if (y < g && x < g) buf[n++] = y * g + x;
            }
        if (how == MS_MASK_RANDOM) {
            for (int i = 0; i < n; i++)
                if (keepflag[buf[i]]) keep[nk++] = buf[i];
        } else {
            choose(buf, n, real_keep[w], &r);
            for (int i = 0; i < real_keep[w]; i++) keep[nk++] = buf[i];
        }
        /* pad slots of this window */
        n = 0;
        for (int rr = 0; rr < ws; rr++)
            for (int cc = 0; cc < ws; cc++) {
                int y = wy * ws + rr, x = wx * ws + cc;
                if (y >= g || x >= g) buf[n++] = y * gp + x;
            }
        choose(buf, n, pad_keep[w], &r);
        for (int i = 0; i < pad_keep[w]; i++) pad[np++] = buf[i];
    }
    koff[W] = nk;
    poff[W] = np;
    for (int i = 0; i < nk; i++) masked[keep[i]] = 0;
    m->n_keep[b] = nk;
    m->n_pad[b] = np;
leave:
    free(real_keep);
    free(pad_keep);
    free(buf);
    free(keepflag);
    return rc;
}

ms_status ms_mae_mask_set(ms_mae_mask *m, int b, const int32_t *keep, int n_keep, const int32_t *pad, int n_pad)
{
    int g = m->grid, ws = m->window, gp = m->padded, nw = gp / ws, W = m->n_windows;
    MS_FAIL_IF(b < 0 || b >= m->batch || n_keep < 0 || n_keep > m->n_keep_max || n_pad < 0 || n_pad > m->n_pad_max,
               MS_EINVAL, "mae mask: bad sizes for sample %d", b);
    int32_t *k = m->keep + (size_t)b * m->n_keep_max, *p = m->pad + (size_t)b * m->n_pad_max;
    int32_t *koff = m->win_keep_off + (size_t)b * (W + 1), *poff = m->win_pad_off + (size_t)b * (W + 1);
    uint8_t *masked = m->masked + (size_t)b * g * g;
    memset(masked, 1, (size_t)g * g);
    int wk = 0, wp = 0;
    for (int w = 0; w <= W; w++) koff[w] = poff[w] = 0;
    for (int i = 0; i < n_keep; i++) {
        int t = keep[i];
        MS_FAIL_IF(t < 0 || t >= g * g || !masked[t], MS_EINVAL, "mae mask: token %d out of range or repeated", t);
        int w = (t / g / ws) * nw + (t % g) / ws;
        MS_FAIL_IF(w < wk, MS_EINVAL, "mae mask: visible tokens not in window order");
        wk = w;
        k[i] = t;
        masked[t] = 0;
        koff[w + 1]++;
    }
    for (int i = 0; i < n_pad; i++) {
        int q = pad[i], y = q / gp, x = q % gp;
        MS_FAIL_IF(q < 0 || y >= gp || (y < g && x < g), MS_EINVAL, "mae mask: %d is not a pad slot", q);
        int w = (y / ws) * nw + x / ws;
        MS_FAIL_IF(w < wp, MS_EINVAL, "mae mask: pad slots not in window order");
        wp = w;
        p[i] = q;
        poff[w + 1]++;
    }
    for (int w = 0; w < W; w++) { koff[w + 1] += koff[w]; poff[w + 1] += poff[w]; }
    m->n_keep[b] = n_keep;
    m->n_pad[b] = n_pad;
    return MS_OK;
}
