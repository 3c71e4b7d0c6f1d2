/* finetune/prompt_gen.c — prompts from label maps (see prompt_gen.h for the rules).
 *
 * Components: finetune/components.h's (one slice, 8-connectivity). Distance transform:
 * Felzenszwalb & Huttenlocher's lower envelope of parabolas, columns then rows, each 1D line padded with a zero
 * site on both ends (the outside of the image is background); foreground sites (+inf) are left out of the
 * envelope instead of being given a large finite value, whose subtraction would lose the q² terms. Squared
 * distances are integers and stay exact in double.
 */
#include "finetune/prompt_gen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "finetune/components.h"

void ms_promptgen_opts_default(ms_promptgen_opts *o)
{
    o->max_regions = 3;
    o->n_points = 5;
    o->max_points = 8;
    o->box_jitter = 0.10f;
    o->dist_ratio = 0.10;
    o->scale = 1.0f;
    o->deterministic = 0;
}

static ms_status check_opts(const ms_promptgen_opts *o)
{
    MS_FAIL_IF(!o, MS_EINVAL, "prompt generation: no options");
    MS_FAIL_IF(o->max_regions < 1 || o->max_regions > MS_PROMPTGEN_MAX_REGIONS, MS_EINVAL,
               "prompt generation: max_regions %d not in 1..%d", o->max_regions, MS_PROMPTGEN_MAX_REGIONS);
    MS_FAIL_IF(o->max_points < 1 || o->max_points > MS_PROMPTGEN_MAX_POINTS, MS_EINVAL,
               "prompt generation: max_points %d not in 1..%d", o->max_points, MS_PROMPTGEN_MAX_POINTS);
    MS_FAIL_IF(o->n_points < 1 || o->n_points > o->max_points, MS_EINVAL,
               "prompt generation: n_points %d not in 1..max_points (%d)", o->n_points, o->max_points);
    MS_FAIL_IF(!(o->box_jitter >= 0.f) || !(o->scale > 0.f) || !(o->dist_ratio >= 0.0 && o->dist_ratio < 1.0),
               MS_EINVAL, "prompt generation: box_jitter %g, scale %g, dist_ratio %g out of range",
               (double)o->box_jitter, (double)o->scale, o->dist_ratio);
    return MS_OK;
}

/* ---- connected components ------------------------------------------------------------------------------ */

ms_status ms_components(const uint8_t *mask, int h, int w, int32_t *comp, int64_t *sizes, int cap, int *n_comp)
{
    MS_FAIL_IF(!mask || !comp || !n_comp || h < 1 || w < 1 || (int64_t)h * w > INT32_MAX, MS_EINVAL,
               "components: bad arguments (%dx%d)", h, w);
    const int64_t dim[3] = {w, h, 1}; /* one slice: 26-connectivity is the in-plane 8-connectivity */
    return ms_components3d(mask, dim, 26, comp, sizes, cap, n_comp);
}

/* ---- distance transform -------------------------------------------------------------------------------- */

/* 1D squared distance transform of g (m values, +inf = not a site; g[0] and g[m-1] are finite): d (m).
 * v (m), z (m + 1) scratch. */
static void dt1d(const double *g, int m, double *d, int *v, double *z)
{
    int k = 0;
    v[0] = 0;
    z[0] = -HUGE_VAL;
    z[1] = HUGE_VAL;
    for (int q = 1; q < m; q++) {
        if (g[q] == HUGE_VAL) continue;
        double s;
        for (;;) {
            int r = v[k];
            s = ((g[q] + (double)q * q) - (g[r] + (double)r * r)) / (2.0 * (q - r));
            if (s <= z[k] && k > 0) k--;
            else break;
        }
        k++;
        v[k] = q;
        z[k] = s;
        z[k + 1] = HUGE_VAL;
    }
    k = 0;
    for (int q = 0; q < m; q++) {
        while (z[k + 1] < q) k++;
        double dq = q - v[k];
        d[q] = dq * dq + g[v[k]];
    }
}

/* Squared EDT of (h, w) with the outside as background: d2 (h·w). */
static ms_status edt_sq(const uint8_t *mask, int h, int w, double *d2)
{
    const int m = (h > w ? h : w) + 2;
    double *g = malloc((size_t)m * sizeof *g), *d = malloc((size_t)m * sizeof *d);
    double *z = malloc((size_t)(m + 1) * sizeof *z);
    int *v = malloc((size_t)m * sizeof *v);
    if (!g || !d || !z || !v) {
        free(g);
        free(d);
        free(z);
        free(v);
        MS_FAIL(MS_ENOMEM, "distance transform: out of memory (%dx%d)", h, w);
    }
    for (int x = 0; x < w; x++) { /* columns: vertical distance to the nearest background (or the border) */
        g[0] = g[h + 1] = 0.0;
        for (int y = 0; y < h; y++) g[y + 1] = mask[(int64_t)y * w + x] ? HUGE_VAL : 0.0;
        dt1d(g, h + 2, d, v, z);
        for (int y = 0; y < h; y++) d2[(int64_t)y * w + x] = d[y + 1];
    }
    for (int y = 0; y < h; y++) { /* rows over the column results */
        double *row = d2 + (int64_t)y * w;
        g[0] = g[w + 1] = 0.0;
        memcpy(g + 1, row, (size_t)w * sizeof *g);
        dt1d(g, w + 2, d, v, z);
        memcpy(row, d + 1, (size_t)w * sizeof *g);
    }
    free(g);
    free(d);
    free(z);
    free(v);
    return MS_OK;
}

ms_status ms_edt(const uint8_t *mask, int h, int w, float *dist)
{
    MS_FAIL_IF(!mask || !dist || h < 1 || w < 1, MS_EINVAL, "distance transform: bad arguments (%dx%d)", h, w);
    double *d2 = malloc((size_t)h * w * sizeof *d2);
    MS_FAIL_IF(!d2, MS_ENOMEM, "distance transform: out of memory (%dx%d)", h, w);
    ms_status st = edt_sq(mask, h, w, d2);
    if (!st)
        for (int64_t i = 0; i < (int64_t)h * w; i++) dist[i] = (float)sqrt(d2[i]);
    free(d2);
    return st;
}

/* ---- regions of one mask ------------------------------------------------------------------------------- */

typedef struct {
    int h, w, n;          /* n = all components */
    int32_t *comp;        /* (h·w) rank or −1 */
    int64_t size[MS_PROMPTGEN_MAX_REGIONS];
    int bb[MS_PROMPTGEN_MAX_REGIONS][4]; /* x0, y0, x1, y1 of the first min(n, max_regions) regions */
} pg_regions;

static ms_status regions_find(pg_regions *rg, const uint8_t *mask, int h, int w, int k)
{
    rg->h = h;
    rg->w = w;
    rg->comp = malloc((size_t)h * w * sizeof *rg->comp);
    MS_FAIL_IF(!rg->comp, MS_ENOMEM, "prompt generation: out of memory (%dx%d)", h, w);
    MS_TRY(ms_components(mask, h, w, rg->comp, rg->size, MS_PROMPTGEN_MAX_REGIONS, &rg->n));
    for (int r = 0; r < k; r++) {
        rg->bb[r][0] = w, rg->bb[r][1] = h;
        rg->bb[r][2] = -1, rg->bb[r][3] = -1;
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int r = rg->comp[(int64_t)y * w + x];
            if (r < 0 || r >= k) continue;
            int *b = rg->bb[r];
            if (x < b[0]) b[0] = x;
            if (y < b[1]) b[1] = y;
            if (x > b[2]) b[2] = x;
            if (y > b[3]) b[3] = y;
        }
    return MS_OK;
}

/* 1 on the regions of rank < k. */
static void regions_target(const pg_regions *rg, int k, uint8_t *target)
{
    for (int64_t i = 0; i < (int64_t)rg->h * rg->w; i++) target[i] = rg->comp[i] >= 0 && rg->comp[i] < k;
}

typedef struct { double d2; int32_t idx; } px_key;

static int px_key_cmp(const void *a, const void *b)
{
    const px_key *x = a, *y = b;
    if (x->d2 != y->d2) return x->d2 > y->d2 ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

static int int_cmp(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* random_sum_to(n, k), n > k >= 1: k − 1 distinct cuts from 1..n−1 → k parts of >= 1 each. */
static void random_sum_to(ms_rng *r, int n, int k, int *parts)
{
    int pool[MS_PROMPTGEN_MAX_POINTS], cut[MS_PROMPTGEN_MAX_REGIONS + 1];
    for (int i = 0; i < n - 1; i++) pool[i] = i + 1;
    for (int i = 0; i < k - 1; i++) { /* partial Fisher-Yates */
        int j = i + (int)ms_rng_below(r, (uint64_t)(n - 1 - i));
        int t = pool[i];
        pool[i] = pool[j];
        pool[j] = t;
        cut[i] = pool[i];
    }
    qsort(cut, (size_t)(k - 1), sizeof *cut, int_cmp);
    int prev = 0;
    for (int i = 0; i < k - 1; i++) {
        parts[i] = cut[i] - prev;
        prev = cut[i];
    }
    parts[k - 1] = n - prev;
}

static ms_status points_from(const ms_promptgen_opts *o, const pg_regions *rg, uint64_t stream, float *xy,
                             int32_t *labels, int *n_regions)
{
    const int M = o->max_points;
    int k = rg->n < o->max_regions ? rg->n : o->max_regions;
    *n_regions = 0;
    if (k == 0) {
        for (int i = 0; i < M; i++) xy[2 * i] = xy[2 * i + 1] = 0.f, labels[i] = -1;
        return MS_OK;
    }
    ms_rng r = {stream, 0};
    int parts[MS_PROMPTGEN_MAX_REGIONS];
    const int n = o->n_points;
    if (n <= k) { /* finetune-SAM: one point in each of the n largest regions */
        k = n;
        for (int i = 0; i < k; i++) parts[i] = 1;
    } else if (o->deterministic) {
        for (int i = 0; i < k; i++) parts[i] = n / k + (i < n % k);
    } else {
        random_sum_to(&r, n, k, parts);
    }
    const float s = o->scale, off = (o->scale - 1.f) * 0.5f;
    int np = 0;
    ms_status st = MS_OK;
    for (int reg = 0; reg < k && !st; reg++) {
        const int *b = rg->bb[reg];
        const int cw = b[2] - b[0] + 1, ch = b[3] - b[1] + 1;
        const int64_t cn = (int64_t)cw * ch, size = rg->size[reg];
        uint8_t *crop = malloc((size_t)cn);
        double *d2 = malloc((size_t)cn * sizeof *d2);
        px_key *px = malloc((size_t)size * sizeof *px);
        if (!crop || !d2 || !px) st = ms_error(MS_ENOMEM, "prompt generation: out of memory (region of %lld px)",
                                               (long long)size);
        if (!st) {
            /* the region alone, cropped to its bounds: the crop's outside is background for it anyway */
            for (int y = 0; y < ch; y++)
                for (int x = 0; x < cw; x++)
                    crop[(int64_t)y * cw + x] = rg->comp[(int64_t)(y + b[1]) * rg->w + x + b[0]] == reg;
            st = edt_sq(crop, ch, cw, d2);
        }
        if (!st) {
            int64_t m = 0;
            for (int64_t i = 0; i < cn; i++)
                if (crop[i]) px[m++] = (px_key){d2[i], (int32_t)i};
            /* crop raster order is image raster order, so idx ties break as in the full image */
            qsort(px, (size_t)m, sizeof *px, px_key_cmp);
            int64_t t = (int64_t)(o->dist_ratio * (double)m);
            if (t >= m) t = m - 1;
            double thr = px[t].d2 > 1.0 ? px[t].d2 : 1.0;
            int64_t nc = 0; /* candidates: the prefix with d2 >= thr (every foreground pixel has d2 >= 1) */
            while (nc < m && px[nc].d2 >= thr) nc++;
            for (int j = 0; j < parts[reg]; j++) {
                int64_t pick = o->deterministic ? j % nc : (int64_t)ms_rng_below(&r, (uint64_t)nc);
                int32_t ci = px[pick].idx;
                xy[2 * np] = (float)(ci % cw + b[0]) * s + off;
                xy[2 * np + 1] = (float)(ci / cw + b[1]) * s + off;
                labels[np] = 1;
                np++;
            }
        }
        free(crop);
        free(d2);
        free(px);
    }
    if (st) return st;
    for (int i = np; i < M; i++) { /* pad by repeating the last point */
        xy[2 * i] = xy[2 * (np - 1)];
        xy[2 * i + 1] = xy[2 * (np - 1) + 1];
        labels[i] = 1;
    }
    *n_regions = k;
    return MS_OK;
}

static void boxes_from(const ms_promptgen_opts *o, const pg_regions *rg, uint64_t stream, float *boxes,
                       int *n_boxes)
{
    const int K = o->max_regions;
    const int k = rg->n < K ? rg->n : K;
    const float s = o->scale, ext = o->scale > 1.f ? o->scale - 1.f : 0.f;
    const float xmax = (float)rg->w * s - 1.f, ymax = (float)rg->h * s - 1.f;
    ms_rng r = {stream, 0};
    for (int reg = 0; reg < k; reg++) {
        const int *b = rg->bb[reg];
        float x0 = (float)b[0] * s, y0 = (float)b[1] * s;
        float x1 = (float)b[2] * s + ext, y1 = (float)b[3] * s + ext;
        if (!o->deterministic) { /* MaskToBoxSimple's draw order: x0, x1, y0, y1 */
            const float jx = (x1 - x0) * o->box_jitter, jy = (y1 - y0) * o->box_jitter;
            x0 -= jx * ms_rng_uniform(&r);
            x1 += jx * ms_rng_uniform(&r);
            y0 -= jy * ms_rng_uniform(&r);
            y1 += jy * ms_rng_uniform(&r);
        }
        float *out = boxes + 4 * reg;
        out[0] = x0 > 0.f ? x0 : 0.f;
        out[1] = y0 > 0.f ? y0 : 0.f;
        out[2] = x1 < xmax ? x1 : xmax;
        out[3] = y1 < ymax ? y1 : ymax;
    }
    if (k == 0) memset(boxes, 0, 4 * sizeof *boxes);
    for (int reg = (k > 0 ? k : 1); reg < K; reg++) memcpy(boxes + 4 * reg, boxes + 4 * (reg - 1), 4 * sizeof *boxes);
    *n_boxes = k;
}

ms_status ms_promptgen_points(const ms_promptgen_opts *o, const uint8_t *mask, int h, int w, uint64_t stream,
                              float *xy, int32_t *labels, uint8_t *target, int *n_regions)
{
    MS_TRY(check_opts(o));
    MS_FAIL_IF(!mask || !xy || !labels || !n_regions || h < 1 || w < 1, MS_EINVAL,
               "prompt generation: bad arguments (%dx%d)", h, w);
    pg_regions rg;
    ms_status st = regions_find(&rg, mask, h, w, o->max_regions);
    if (!st) st = points_from(o, &rg, stream, xy, labels, n_regions);
    if (!st && target) regions_target(&rg, *n_regions, target);
    free(rg.comp);
    return st;
}

ms_status ms_promptgen_boxes(const ms_promptgen_opts *o, const uint8_t *mask, int h, int w, uint64_t stream,
                             float *boxes, uint8_t *target, int *n_boxes)
{
    MS_TRY(check_opts(o));
    MS_FAIL_IF(!mask || !boxes || !n_boxes || h < 1 || w < 1, MS_EINVAL,
               "prompt generation: bad arguments (%dx%d)", h, w);
    pg_regions rg;
    ms_status st = regions_find(&rg, mask, h, w, o->max_regions);
    if (!st) {
        boxes_from(o, &rg, stream, boxes, n_boxes);
        if (target) regions_target(&rg, *n_boxes, target);
    }
    free(rg.comp);
    return st;
}

/* ---- batch packing ------------------------------------------------------------------------------------- */

void ms_promptgen_batch_init(ms_promptgen_batch *b) { memset(b, 0, sizeof *b); }

void ms_promptgen_batch_free(ms_promptgen_batch *b)
{
    free(b->points);
    free(b->labels);
    free(b->boxes);
    free(b->target);
    free(b->n_regions);
    memset(b, 0, sizeof *b);
}

static ms_status batch_reserve(ms_promptgen_batch *b, int B, int np, int64_t px)
{
    int64_t pts = (int64_t)B * (np > 0 ? np : 1);
    if (pts > b->cap_pts) {
        free(b->points);
        free(b->labels);
        b->points = malloc((size_t)pts * 2 * sizeof *b->points);
        b->labels = malloc((size_t)pts * sizeof *b->labels);
        b->cap_pts = b->points && b->labels ? pts : 0;
        MS_FAIL_IF(!b->cap_pts, MS_ENOMEM, "prompt batch: out of memory (%lld points)", (long long)pts);
    }
    if (B > b->cap_b) {
        free(b->boxes);
        free(b->n_regions);
        b->boxes = malloc((size_t)B * 4 * sizeof *b->boxes);
        b->n_regions = malloc((size_t)B * sizeof *b->n_regions);
        b->cap_b = b->boxes && b->n_regions ? B : 0;
        MS_FAIL_IF(!b->cap_b, MS_ENOMEM, "prompt batch: out of memory (%d samples)", B);
    }
    if (px > b->cap_px) {
        free(b->target);
        b->target = malloc((size_t)px);
        b->cap_px = b->target ? px : 0;
        MS_FAIL_IF(!b->cap_px, MS_ENOMEM, "prompt batch: out of memory (%lld target pixels)", (long long)px);
    }
    return MS_OK;
}

ms_status ms_promptgen_batch_fill(ms_promptgen_batch *b, const ms_promptgen_opts *o, ms_prompt_mode mode,
                                  const uint8_t *masks, int B, int h, int w, uint64_t seed, const uint64_t *ids)
{
    MS_TRY(check_opts(o));
    MS_FAIL_IF(mode != MS_PROMPT_BOX && mode != MS_PROMPT_POINT && mode != MS_PROMPT_HYBRID, MS_EINVAL,
               "prompt batch: mode %d is not box, point or hybrid", (int)mode);
    MS_FAIL_IF(!b || !masks || B < 1 || h < 1 || w < 1, MS_EINVAL, "prompt batch: bad arguments (B %d, %dx%d)", B,
               h, w);
    const int use_pts = mode != MS_PROMPT_BOX, use_box = mode != MS_PROMPT_POINT;
    const int M = use_pts ? o->max_points : 0, X = use_box ? 2 * (o->max_regions - 1) : 0, np = M + X;
    const int64_t hw = (int64_t)h * w;
    MS_TRY(batch_reserve(b, B, np, (int64_t)B * hw));
    b->B = B, b->h = h, b->w = w, b->mode = mode, b->n_points = np;
    float bx[4 * MS_PROMPTGEN_MAX_REGIONS];
    for (int i = 0; i < B; i++) {
        const uint64_t id = ids ? ids[i] : (uint64_t)i;
        float *xy = b->points + (int64_t)i * np * 2;
        int32_t *lab = b->labels + (int64_t)i * np;
        pg_regions rg;
        ms_status st = regions_find(&rg, masks + i * hw, h, w, o->max_regions);
        int kp = 0, kb = 0;
        if (!st && use_pts) st = points_from(o, &rg, ms_rng_stream(seed, id, MS_PROMPTGEN_POINTS), xy, lab, &kp);
        if (!st && use_box) {
            boxes_from(o, &rg, ms_rng_stream(seed, id, MS_PROMPTGEN_BOXES), bx, &kb);
            memcpy(b->boxes + 4 * i, bx, 4 * sizeof *bx);
            for (int j = 1; j < o->max_regions; j++) { /* boxes 1.. as corner pairs */
                float *p = xy + 2 * (M + 2 * (j - 1));
                int32_t *l = lab + M + 2 * (j - 1);
                memcpy(p, bx + 4 * j, 4 * sizeof *bx);
                l[0] = kb ? MS_SAM_LABEL_BOX_TL : -1;
                l[1] = kb ? MS_SAM_LABEL_BOX_BR : -1;
                if (!kb) p[0] = p[1] = p[2] = p[3] = 0.f;
            }
        }
        if (!st) {
            b->n_regions[i] = kp > kb ? kp : kb;
            regions_target(&rg, b->n_regions[i], b->target + i * hw);
        }
        free(rg.comp);
        if (st) {
            ms_error_prefix("prompt batch sample %d", i);
            return st;
        }
    }
    b->pr = (ms_sam_prompts){.bp = B, .n_points = np, .points = b->points, .labels = b->labels,
                             .boxes = use_box ? b->boxes : NULL, .masks = NULL};
    return MS_OK;
}
