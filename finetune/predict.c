/* finetune/predict.c — prompt-free multi-class SAM segmentation of NIfTI volumes (see predict.h).
 *
 * Invariants: the slice cut is ingest's (data/ingest.c cut(): rows = lower remaining canonical axis, columns = the
 * higher one), the pixel values are the store's (uint16 of ms_intensity_apply, /65535 as data/loader.c does), so a
 * model sees at prediction exactly what it saw in training. The prompt state is built once (no prompts do not
 * depend on the image) and tiled over the image batch by the decoder.
 */
#include "finetune/predict.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/ingest.h"
#include "data/nifti_write.h"

void ms_predict_opts_default(ms_predict_opts *o)
{
    memset(o, 0, sizeof *o);
    o->axis = MS_AXIS_AUTO;
    o->norm = MS_NORM_PERCENTILE;
    o->p_lo = 0.5;
    o->p_hi = 99.5;
    o->batch = 1;
}

void ms_predictor_free(ms_predictor *p)
{
    if (p->dev) {
        if (p->x) ms_dev_free(p->dev, p->x);
        if (p->emb) ms_dev_free(p->dev, p->emb);
        ms_sam_prompt_state_free(p->dev, &p->pst);
    }
    free(p->hx);
    free(p->low);
    ms_prep_scratch_free(&p->scr);
    memset(p, 0, sizeof *p);
}

ms_status ms_predictor_init(ms_predictor *p, ms_sam *m, ms_device *dev, int batch)
{
    ms_status rc = MS_OK;
    memset(p, 0, sizeof *p);
    p->m = m;
    p->dev = dev;
    p->batch = batch < 1 ? 1 : batch;
    const int S = m->img_size, g = m->emb_h, M = m->cfg.n_mask_tokens, lo = 4 * g;
    if (M < 2) {
        rc = ms_error(MS_EINVAL, "predict: the model has %d mask token(s); automatic segmentation needs num_cls + 1 "
                                 ">= 2", M);
        goto leave;
    }
    p->num_cls = M - 1;
    ms_prep_config_default(&p->pc, S);
    p->pc.channels = 3;
    size_t nx = (size_t)p->batch * 3 * S * S, ne = (size_t)p->batch * 256 * g * g;
    p->hx = malloc(nx * sizeof(float));
    p->low = malloc((size_t)p->batch * M * lo * lo * sizeof(float));
    if (!p->hx || !p->low) { rc = ms_error(MS_ENOMEM, "predict: out of memory"); goto leave; }
    if ((rc = ms_dev_alloc(dev, nx * sizeof(float), (void **)&p->x))) goto leave;
    if ((rc = ms_dev_alloc(dev, ne * sizeof(float), (void **)&p->emb))) goto leave;
    if ((rc = ms_sam_encoder_reserve(&m->enc, dev, p->batch, 0))) goto leave;
    /* no prompts: sparse (1, 0, 256), dense = no_mask_embed (sam.md §6.4) */
    ms_sam_prompts pr = {.bp = 1, .n_points = 0, .points = NULL, .labels = NULL, .boxes = NULL, .masks = NULL};
    if ((rc = ms_sam_prompt_forward(dev, &m->pe, &pr, &p->pst))) goto leave;
leave:
    if (rc) ms_predictor_free(p);
    return rc;
}

void ms_predict_result_free(ms_predict_result *r)
{
    free(r->labels);
    free(r->image01);
    memset(r, 0, sizeof *r);
}

/* Segments nb slices already preprocessed in p->hx; writes their labels (H×W each, class map applied) to lab. */
static ms_status run_batch(ms_predictor *p, const ms_predict_opts *o, int nb, int H, int W, float *full,
                           uint16_t *lab)
{
    ms_sam *m = p->m;
    const int S = m->img_size, g = m->emb_h, M = m->cfg.n_mask_tokens, lo = 4 * g, C = p->num_cls;
    const size_t plane = (size_t)lo * lo, npx = (size_t)H * W;
    MS_TRY(ms_dev_from_host(p->dev, p->x, p->hx, (size_t)nb * 3 * S * S * sizeof(float)));
    MS_TRY(ms_sam_encoder_forward(&m->enc, p->x, nb, p->emb));
    MS_TRY(ms_sam_decoder_forward(p->dev, &m->dec, p->emb, nb, &p->pst));
    MS_FAIL_IF(m->dec.B != nb || m->dec.M != M, MS_EINVAL, "predict: decoder batch %d x %d, expected %d x %d",
               m->dec.B, m->dec.M, nb, M);
    MS_TRY(ms_dev_to_host(p->dev, p->low, m->dec.masks, (size_t)nb * M * plane * sizeof(float)));
    for (int b = 0; b < nb; b++) {
        /* multimask output: tokens 1..num_cls are the classes (token 0 is discarded, as finetune-SAM does) */
        MS_TRY(ms_sam_postprocess_masks(p->low + ((size_t)b * M + 1) * plane, C, lo, lo, S, H, W, full));
        uint16_t *l = lab + (size_t)b * npx;
        for (size_t i = 0; i < npx; i++) {
            int best = 0;
            float bv = full[i];
            for (int c = 1; c < C; c++)
                if (full[(size_t)c * npx + i] > bv) bv = full[(size_t)c * npx + i], best = c;
            l[i] = o->class_map ? o->class_map[best] : (uint16_t)best;
        }
    }
    return MS_OK;
}

ms_status ms_predict_volume(ms_predictor *p, const ms_predict_opts *o, const ms_nifti *n, ms_predict_result *r)
{
    ms_status rc = MS_OK;
    float *vol = NULL, *full = NULL, *sl = NULL;
    uint16_t *q = NULL, *lab = NULL;
    memset(r, 0, sizeof *r);
    const int S = p->m->img_size;
    if (o->class_map && o->n_class_map < p->num_cls) {
        rc = ms_error(MS_EINVAL, "predict: the class map has %d entries, the model %d classes", o->n_class_map,
                      p->num_cls);
        goto leave;
    }
    for (int i = 0; i < 3; i++) r->dim[i] = n->cdim[i];
    const size_t nv = (size_t)(r->dim[0] * r->dim[1] * r->dim[2]);
    int axis = ms_ingest_pick_axis(o->axis, n->cspacing, r->dim);
    int ra = axis == 0 ? 1 : 0, ca = axis == 2 ? 1 : 2;
    const int64_t H = r->dim[ra], W = r->dim[ca], K = r->dim[axis];
    const int64_t st3[3] = {1, r->dim[0], r->dim[0] * r->dim[1]};
    const int64_t rs = st3[ra], cs = st3[ca], ks = st3[axis];
    r->axis = axis, r->n_slices = K, r->H = H, r->W = W;
    if (H > 65535 || W > 65535) { rc = ms_error(MS_ESHAPE, "slices of %lldx%lld are too large", (long long)H,
                                                (long long)W); goto leave; }
    const size_t npx = (size_t)(H * W);
    vol = malloc(nv * sizeof *vol);
    q = malloc(nv * sizeof *q);
    r->labels = calloc(nv, sizeof *r->labels);
    r->image01 = malloc(nv * sizeof *r->image01);
    full = malloc((size_t)p->num_cls * npx * sizeof *full);
    sl = malloc(npx * sizeof *sl);
    lab = malloc((size_t)p->batch * npx * sizeof *lab);
    if (!vol || !q || !r->labels || !r->image01 || !full || !sl || !lab) {
        rc = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    if ((rc = ms_nifti_frame(n, 0, vol, &r->n_nonfinite))) goto leave;
    ms_intensity it;
    if ((rc = ms_intensity_fit(vol, nv, o->norm, o->p_lo, o->p_hi, &it))) goto leave;
    ms_intensity_apply(vol, nv, &it, q);
    for (size_t i = 0; i < nv; i++) r->image01[i] = (float)q[i] * (1.0f / 65535.0f); /* the loader's scaling */

    const size_t xs = (size_t)3 * S * S;
    for (int64_t k0 = 0; k0 < K; k0 += p->batch) {
        int nb = (int)(K - k0 < p->batch ? K - k0 : p->batch);
        for (int b = 0; b < nb; b++) {
            const float *src = r->image01 + (k0 + b) * ks;
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++) sl[y * W + x] = src[y * rs + x * cs];
            float *dst = p->hx + (size_t)b * xs;
            memset(dst, 0, xs * sizeof(float)); /* SAM pads with 0 after normalising */
            if ((rc = ms_prep_image(&p->pc, sl, (int)H, (int)W, NULL, dst, &p->scr))) goto leave;
        }
        if ((rc = run_batch(p, o, nb, (int)H, (int)W, full, lab))) goto leave;
        for (int b = 0; b < nb; b++) {
            uint16_t *dst = r->labels + (k0 + b) * ks;
            const uint16_t *l = lab + (size_t)b * npx;
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++) dst[y * rs + x * cs] = l[y * W + x];
        }
        if (o->progress) o->progress(o->progress_ctx, k0 + nb, K);
    }
leave:
    free(vol);
    free(q);
    free(full);
    free(sl);
    free(lab);
    if (rc) ms_predict_result_free(r);
    return rc;
}

ms_status ms_predict_file(ms_predictor *p, const ms_predict_opts *o, const char *in_path, const char *out_path,
                          ms_predict_result *r)
{
    ms_nifti n;
    ms_predict_result mine;
    ms_predict_result *res = r ? r : &mine;
    int open_ok = 0;
    ms_status rc;
    memset(&n, 0, sizeof n);
    memset(res, 0, sizeof *res);
    if ((rc = ms_nifti_open(in_path, &n))) goto leave;
    open_ok = 1;
    if ((rc = ms_predict_volume(p, o, &n, res))) goto leave;
    if ((rc = ms_nifti_write_labels_like(out_path, in_path, &n, res->labels))) goto leave;
leave:
    if (rc) {
        /* "path: reason" whatever layer failed (the reader's messages already start with the path) */
        const char *msg = ms_errmsg();
        size_t li = strlen(in_path), lo = strlen(out_path);
        int named = (strncmp(msg, in_path, li) == 0 && msg[li] == ':') ||
                    (strncmp(msg, out_path, lo) == 0 && msg[lo] == ':');
        if (!named) {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", msg);
            rc = ms_error(rc, "%s: %s", in_path, buf);
        }
        ms_predict_result_free(res);
    } else if (!r) {
        ms_predict_result_free(res);
    }
    if (open_ok) ms_nifti_close(&n);
    return rc;
}
