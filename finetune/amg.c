/* finetune/amg.c — see amg.h. ref: segment_anything/automatic_mask_generator.py (_process_batch, _process_crop),
 * segment_anything/utils/amg.py, torchvision/csrc/ops/cpu/nms_kernel.cpp. */
#include "amg.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/fileio.h"

void ms_amg_config_default(ms_amg_config *c)
{
    memset(c, 0, sizeof *c);
    c->points_per_side = 32;
    c->points_per_batch = 64;
    c->pred_iou_thresh = 0.88f;
    c->stability_thresh = 0.95f;
    c->stability_offset = 1.0f;
    c->box_nms_thresh = 0.7;
}

/* numpy.linspace(1/(2n), 1 − 1/(2n), n)[k]: k·step + start, the last element exactly stop. */
static double grid_coord(int n, int k)
{
    const double start = 1.0 / (2.0 * n), stop = 1.0 - start;
    if (n > 1 && k == n - 1) return stop;
    return n > 1 ? (double)k * ((stop - start) / (double)(n - 1)) + start : start;
}

/* Inclusive bounds, area and the column-major RLE of mask = logit > 0 (h·w logits, row-major). */
static ms_status mask_record(const float *full, int h, int w, ms_amg_mask *r)
{
    int x0 = w, y0 = h, x1 = -1, y1 = -1;
    int64_t area = 0, runs = 1;
    int prev = 0;
    for (int x = 0; x < w; x++)
        for (int y = 0; y < h; y++) {
            int on = full[(size_t)y * w + x] > 0.0f;
            runs += on != prev;
            prev = on;
            if (!on) continue;
            area++;
            if (x < x0) x0 = x;
            if (x > x1) x1 = x;
            if (y < y0) y0 = y;
            if (y > y1) y1 = y;
        }
    if (x1 < 0) x0 = y0 = x1 = y1 = 0; /* empty: (0, 0, 0, 0) as batched_mask_to_box */
    r->box[0] = x0; r->box[1] = y0; r->box[2] = x1; r->box[3] = y1;
    r->area = area;
    r->counts = malloc((size_t)runs * sizeof(int64_t));
    MS_FAIL_IF(!r->counts, MS_ENOMEM, "automatic masks: out of memory");
    int64_t n = 0, len = 0;
    prev = 0;
    for (int x = 0; x < w; x++)
        for (int y = 0; y < h; y++) {
            int on = full[(size_t)y * w + x] > 0.0f;
            if (on != prev) { r->counts[n++] = len; len = 0; prev = on; }
            len++;
        }
    r->counts[n++] = len;
    r->n_counts = n;
    return MS_OK;
}

/* calculate_stability_score: int counts, their quotient in float32 (NaN for an empty union, which never passes). */
static float stability_score(const float *full, size_t n, float offset)
{
    int64_t inter = 0, uni = 0;
    for (size_t i = 0; i < n; i++) {
        inter += full[i] > offset;
        uni += full[i] > -offset;
    }
    return (float)inter / (float)uni;
}

int ms_amg_iou_passes(const ms_amg_config *c, float iou)
{
    return !(c->pred_iou_thresh > 0.0f) || iou > c->pred_iou_thresh;
}

ms_status ms_amg_add_candidate(ms_amg_result *r, const ms_amg_config *c, const float *logits, float iou, double x,
                               double y)
{
    r->n_candidates++;
    if (!ms_amg_iou_passes(c, iou)) return MS_OK;
    r->n_iou++;
    const float st = stability_score(logits, (size_t)r->h * r->w, c->stability_offset);
    if (c->stability_thresh > 0.0f && !(st >= c->stability_thresh)) return MS_OK;
    r->n_stable++;
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 64;
        ms_amg_mask *p = realloc(r->m, (size_t)cap * sizeof *p);
        MS_FAIL_IF(!p, MS_ENOMEM, "automatic masks: out of memory");
        r->m = p;
        r->cap = cap;
    }
    ms_amg_mask *mk = &r->m[r->n];
    *mk = (ms_amg_mask){.point = {x, y}, .iou = iou, .stability = st};
    MS_TRY(mask_record(logits, r->h, r->w, mk));
    r->n++;
    return MS_OK;
}

typedef struct amg_batch {
    ms_device *dev;
    ms_sam *m;
    const float *emb;
    int h, w, stretched;
    const ms_amg_config *c;
    ms_sam_prompt_state pst;
    float *pts, *low, *iou, *full;
    int32_t *labels;
    double *pxy; /* the grid points in the image's pixels */
} amg_batch;

/* Points [p0, p0 + bp) through the prompt encoder and decoder; every multimask output filtered into out. */
static ms_status run_batch(amg_batch *a, int p0, int bp, ms_amg_result *out)
{
    ms_sam *m = a->m;
    const int S = m->img_size, lo = 4 * m->emb_h, h = a->h, w = a->w;
    int nh = S, nw = S;
    if (!a->stretched) ms_sam_resize_shape(h, w, S, &nh, &nw);
    for (int b = 0; b < bp; b++) { /* apply_coords in double (numpy), the prompt in float */
        a->pts[2 * b] = (float)(a->pxy[2 * (p0 + b)] * ((double)nw / w));
        a->pts[2 * b + 1] = (float)(a->pxy[2 * (p0 + b) + 1] * ((double)nh / h));
        a->labels[b] = 1;
    }
    ms_sam_prompts pr = {.bp = bp, .n_points = 1, .points = a->pts, .labels = a->labels};
    MS_TRY(ms_sam_prompt_forward(a->dev, &m->pe, &pr, &a->pst));
    MS_TRY(ms_sam_decoder_forward(a->dev, &m->dec, a->emb, 1, &a->pst));
    const int M = m->dec.M, first = M > 1 ? 1 : 0, nm = M > 1 ? M - 1 : 1;
    const size_t plane = (size_t)lo * lo, hw = (size_t)h * w;
    MS_TRY(ms_dev_to_host(a->dev, a->low, m->dec.masks, (size_t)bp * M * plane * sizeof(float)));
    MS_TRY(ms_dev_to_host(a->dev, a->iou, m->dec.iou, (size_t)bp * M * sizeof(float)));
    const ms_amg_config *c = a->c;
    for (int b = 0; b < bp; b++)
        for (int t = first; t < first + nm; t++) {
            const size_t ci = (size_t)(p0 + b) * nm + (t - first);
            const float iou = a->iou[(size_t)b * M + t];
            const int pass = ms_amg_iou_passes(c, iou); /* only those are brought to the image's size */
            float *full = c->cand_logits ? c->cand_logits + ci * hw : a->full;
            if (c->cand_iou) c->cand_iou[ci] = iou;
            if (pass || c->cand_logits)
                MS_TRY(ms_sam_postprocess_masks(a->low + ((size_t)b * M + t) * plane, 1, lo, lo, S, a->stretched, h,
                                                w, full));
            MS_TRY(ms_amg_add_candidate(out, c, pass ? full : NULL, iou, a->pxy[2 * (p0 + b)],
                                        a->pxy[2 * (p0 + b) + 1]));
        }
    return MS_OK;
}

/* (key, index) pairs: qsort's comparator sees the key without a context pointer; ties keep the index order. */
typedef struct amg_key {
    double key;
    int idx;
} amg_key;

static int by_key_desc(const void *pa, const void *pb)
{
    const amg_key *a = pa, *b = pb;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

/* order[0..n) = indices by decreasing key (float IoU or integer area, both exact in a double). */
static void sort_desc(amg_key *k, int n, int *order)
{
    qsort(k, (size_t)n, sizeof *k, by_key_desc);
    for (int i = 0; i < n; i++) order[i] = k[i].idx;
}

/* torchvision's nms on the float boxes: greedy in decreasing score, suppress IoU > thresh. Keeps order[0..*n_keep). */
static ms_status nms(const ms_amg_mask *c, int n, double thresh, int *order, int *n_keep)
{
    if (n == 0) { *n_keep = 0; return MS_OK; }
    char *sup = calloc((size_t)(n ? n : 1), 1);
    float *area = malloc((size_t)(n ? n : 1) * sizeof(float));
    amg_key *key = malloc((size_t)(n ? n : 1) * sizeof(amg_key));
    if (!sup || !area || !key) {
        free(sup);
        free(area);
        free(key);
        return ms_error(MS_ENOMEM, "automatic masks: out of memory");
    }
    for (int i = 0; i < n; i++) /* a NaN score (a broken model, filters off) sorts last instead of breaking qsort */
        key[i] = (amg_key){c[i].iou == c[i].iou ? c[i].iou : -HUGE_VAL, i};
    sort_desc(key, n, order);
    free(key);
    for (int i = 0; i < n; i++)
        area[i] = ((float)c[i].box[2] - (float)c[i].box[0]) * ((float)c[i].box[3] - (float)c[i].box[1]);
    int k = 0;
    for (int oi = 0; oi < n; oi++) {
        const int i = order[oi];
        if (sup[i]) continue;
        order[k++] = i; /* k <= oi: the kept prefix never overtakes the scan */
        const float ix0 = (float)c[i].box[0], iy0 = (float)c[i].box[1], ix1 = (float)c[i].box[2],
                    iy1 = (float)c[i].box[3];
        for (int oj = oi + 1; oj < n; oj++) {
            const int j = order[oj];
            if (sup[j]) continue;
            const float xx0 = ix0 > c[j].box[0] ? ix0 : (float)c[j].box[0];
            const float yy0 = iy0 > c[j].box[1] ? iy0 : (float)c[j].box[1];
            const float xx1 = ix1 < c[j].box[2] ? ix1 : (float)c[j].box[2];
            const float yy1 = iy1 < c[j].box[3] ? iy1 : (float)c[j].box[3];
            const float ww = xx1 - xx0 > 0.0f ? xx1 - xx0 : 0.0f, hh = yy1 - yy0 > 0.0f ? yy1 - yy0 : 0.0f;
            const float inter = ww * hh;
            const float ovr = inter / (area[i] + area[j] - inter);
            if ((double)ovr > thresh) sup[j] = 1;
        }
    }
    *n_keep = k;
    free(sup);
    free(area);
    return MS_OK;
}

ms_status ms_amg_nms(ms_amg_result *r, double thresh)
{
    const int n = r->n;
    int *order = malloc((size_t)(n ? n : 1) * sizeof(int));
    ms_amg_mask *kept = malloc((size_t)(n ? n : 1) * sizeof(ms_amg_mask));
    char *taken = calloc((size_t)(n ? n : 1), 1);
    int k = 0;
    ms_status rc = !order || !kept || !taken ? ms_error(MS_ENOMEM, "automatic masks: out of memory") : MS_OK;
    if (!rc) rc = nms(r->m, n, thresh, order, &k);
    if (!rc) {
        for (int i = 0; i < k; i++) { kept[i] = r->m[order[i]]; taken[order[i]] = 1; }
        for (int i = 0; i < n; i++) if (!taken[i]) free(r->m[i].counts);
        free(r->m);
        r->m = kept;
        r->n = r->cap = k;
        kept = NULL;
    }
    free(order);
    free(kept);
    free(taken);
    return rc;
}

ms_status ms_amg_generate(ms_device *dev, ms_sam *m, const float *emb, int h, int w, int stretched,
                          const ms_amg_config *c, ms_amg_result *out)
{
    memset(out, 0, sizeof *out);
    out->h = h;
    out->w = w;
    MS_FAIL_IF(c->points_per_side < 1 || c->points_per_side > 1024 || c->points_per_batch < 1, MS_EINVAL,
               "automatic masks: %d points per side (1..1024), %d per batch (>= 1)", c->points_per_side,
               c->points_per_batch);
    MS_FAIL_IF(h < 1 || w < 1, MS_EINVAL, "automatic masks: image %dx%d", w, h);
    MS_TRY(ms_sam_decoder_use_head(&m->dec, 0));
    const int n = c->points_per_side, P = n * n, ppb = c->points_per_batch < P ? c->points_per_batch : P;
    const int lo = 4 * m->emb_h, M = ms_sam_decoder_head(&m->dec)->n_mask_tokens;
    amg_batch a = {.dev = dev, .m = m, .emb = emb, .h = h, .w = w, .stretched = stretched, .c = c};
    ms_status rc = MS_OK;
    a.pts = malloc((size_t)ppb * 2 * sizeof(float));
    a.labels = malloc((size_t)ppb * sizeof(int32_t));
    a.low = malloc((size_t)ppb * M * lo * lo * sizeof(float));
    a.iou = malloc((size_t)ppb * M * sizeof(float));
    a.full = malloc((size_t)h * w * sizeof(float));
    a.pxy = malloc((size_t)P * 2 * sizeof(double));
    if (!a.pts || !a.labels || !a.low || !a.iou || !a.full || !a.pxy) {
        rc = ms_error(MS_ENOMEM, "automatic masks: out of memory");
        goto leave;
    }
    for (int j = 0; j < n; j++) /* build_point_grid: row j (y), column i (x), scaled by (w, h) */
        for (int i = 0; i < n; i++) {
            a.pxy[2 * (j * n + i)] = grid_coord(n, i) * w;
            a.pxy[2 * (j * n + i) + 1] = grid_coord(n, j) * h;
        }
    for (int p0 = 0; p0 < P && !rc; p0 += ppb) rc = run_batch(&a, p0, P - p0 < ppb ? P - p0 : ppb, out);
    if (!rc) rc = ms_amg_nms(out, c->box_nms_thresh);
leave:
    free(a.pts);
    free(a.labels);
    free(a.low);
    free(a.iou);
    free(a.full);
    free(a.pxy);
    ms_sam_prompt_state_free(dev, &a.pst);
    if (rc) ms_amg_result_free(out);
    return rc;
}

void ms_amg_result_free(ms_amg_result *r)
{
    for (int i = 0; i < r->n; i++) free(r->m[i].counts);
    free(r->m);
    r->m = NULL;
    r->n = r->cap = 0;
}

ms_status ms_amg_label_map(const ms_amg_result *r, int max_label, uint16_t *labels)
{
    const int h = r->h, w = r->w;
    memset(labels, 0, (size_t)h * w * sizeof *labels);
    const int n = r->n < max_label ? r->n : max_label;
    int *order = malloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    amg_key *key = malloc((size_t)(n > 0 ? n : 1) * sizeof(amg_key));
    if (!order || !key) { free(order); free(key); return ms_error(MS_ENOMEM, "automatic masks: out of memory"); }
    for (int i = 0; i < n; i++) key[i] = (amg_key){(double)r->m[i].area, i};
    sort_desc(key, n, order);
    free(key);
    for (int k = 0; k < n; k++) {
        const ms_amg_mask *mk = &r->m[order[k]];
        int64_t pos = 0;
        for (int64_t q = 0; q < mk->n_counts; q++) {
            if (q % 2) /* a run of ones: column-major positions pos .. pos + count − 1 */
                for (int64_t t = pos; t < pos + mk->counts[q]; t++)
                    labels[(size_t)(t % h) * w + (size_t)(t / h)] = (uint16_t)(order[k] + 1);
            pos += mk->counts[q];
        }
    }
    free(order);
    return MS_OK;
}

/* A float32 with 9 significant digits (reads back to the same float); NaN and infinities as Python's json writes
 * them (a NaN stability score: an empty mask at −offset, kept only with that filter off). */
static const char *json_f32(float v, char *buf, size_t n)
{
    if (isnan(v)) return "NaN";
    if (isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
    snprintf(buf, n, "%.9g", (double)v);
    return buf;
}

static void bputf(ms_buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) ms_buf_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

ms_status ms_amg_write_json(const char *path, const ms_amg_result *r)
{
    ms_buf b = {0};
    bputf(&b, "[");
    for (int i = 0; i < r->n; i++) {
        const ms_amg_mask *mk = &r->m[i];
        bputf(&b, "%s\n{\"segmentation\": {\"size\": [%d, %d], \"counts\": [", i ? "," : "", r->h, r->w);
        for (int64_t q = 0; q < mk->n_counts; q++) bputf(&b, q ? ", %lld" : "%lld", (long long)mk->counts[q]);
        char f0[32], f1[32];
        bputf(&b, "]}, \"area\": %lld, \"bbox\": [%d, %d, %d, %d], \"predicted_iou\": %s, ", (long long)mk->area,
              mk->box[0], mk->box[1], mk->box[2] - mk->box[0], mk->box[3] - mk->box[1],
              json_f32(mk->iou, f0, sizeof f0));
        bputf(&b, "\"point_coords\": [[%.17g, %.17g]], \"stability_score\": %s, \"crop_box\": [0, 0, %d, %d]}",
              mk->point[0], mk->point[1], json_f32(mk->stability, f1, sizeof f1), r->w, r->h);
    }
    bputf(&b, "%s]\n", r->n ? "\n" : "");
    ms_status rc = b.oom ? ms_error(MS_ENOMEM, "%s: out of memory", path) : ms_write_file_atomic(path, b.p, b.n);
    ms_buf_free(&b);
    return rc;
}
