/* finetune/predict.c — automatic (and prompted) SAM segmentation of NIfTI volumes (see predict.h).
 *
 * Invariants: the slice cut is ingest's (data/ingest.c cut(): rows = lower remaining canonical axis, columns = the
 * higher one), the pixel values are the store's (layout 2's stored values normalised by ms_encoding_apply, /65535 as
 * data/loader.c does), so a
 * model sees at prediction exactly what it saw in training. Without prompts the prompt state is built once (it does
 * not depend on the image) and tiled over the image batch by the decoder; with prompts each slice's image embedding
 * is repeated over that slice's prompts (one per present class).
 */
#include "finetune/predict.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/fileio.h"
#include "base/path.h"
#include "checkpoints/rundir.h"
#include "data/encode.h"
#include "data/ingest.h"
#include "data/nifti_write.h"
#include "data/png.h"
#include "finetune/components.h"
#include "finetune/prompt_gen.h"
#include "ops.h"

void ms_predict_opts_default(ms_predict_opts *o)
{
    memset(o, 0, sizeof *o);
    o->axis = MS_AXIS_AUTO;
    o->norm = MS_NORM_PERCENTILE;
    o->p_lo = 0.5;
    o->p_hi = 99.5;
    o->batch = 1;
    o->conn = 26;
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
    free(p->full);
    ms_prep_scratch_free(&p->scr);
    memset(p, 0, sizeof *p);
}

ms_status ms_predictor_init_ex(ms_predictor *p, ms_sam *m, ms_device *dev, int batch, const ms_prep_config *pc,
                               int prompt)
{
    ms_status rc = MS_OK;
    memset(p, 0, sizeof *p);
    p->m = m;
    p->dev = dev;
    p->batch = batch < 1 ? 1 : batch;
    p->prompt = prompt;
    const int M = ms_sam_decoder_head(&m->dec)->n_mask_tokens, g = m->emb_h, lo = 4 * g;
    p->pc = *pc;
    p->pc.channels = 3;
    const int S = p->pc.size;
    p->M = M;
    const int run = m->cfg.tinyvit ? m->img_size : ms_sam_enc_run_size(&m->enc);
    if (S != run || S != g * (m->cfg.tinyvit ? 16 : m->cfg.enc.patch)) {
        rc = ms_error(MS_EUNSUPPORTED, "predict: preprocessing input size %d, but the encoder runs at %d (grid %d)", S,
                      run, g);
        goto leave;
    }
    if (prompt == MS_PROMPT_NONE && M < 2) {
        rc = ms_error(MS_EINVAL, "predict: the model has %d mask token(s); automatic segmentation needs num_cls + 1 "
                                 ">= 2", M);
        goto leave;
    }
    if (prompt != MS_PROMPT_NONE && M != 3) {
        rc = ms_error(MS_EINVAL, "predict: a prompt-trained head has 3 mask tokens (binary), this one %d", M);
        goto leave;
    }
    p->num_cls = M - 1;
    /* with prompts a slice's present classes are decoded together: up to num_cls-1 prompts per slice, so the low-res
     * buffer holds one slice's prompts or a batch of slices, whichever is larger */
    size_t nlow = (size_t)p->batch > MS_FT_MAX_CLASSES ? (size_t)p->batch : MS_FT_MAX_CLASSES;
    size_t nx = (size_t)p->batch * 3 * S * S, ne = (size_t)p->batch * 256 * g * g;
    p->hx = malloc(nx * sizeof(float));
    p->low = malloc(nlow * M * lo * lo * sizeof(float));
    if (!p->hx || !p->low) { rc = ms_error(MS_ENOMEM, "predict: out of memory"); goto leave; }
    if ((rc = ms_dev_alloc(dev, nx * sizeof(float), (void **)&p->x))) goto leave;
    if ((rc = ms_dev_alloc(dev, ne * sizeof(float), (void **)&p->emb))) goto leave;
    if ((rc = ms_sam_image_reserve(m, p->batch, 0))) goto leave;
    if (prompt == MS_PROMPT_NONE) {
        /* no prompts: sparse (1, 0, 256), dense = no_mask_embed (segment_anything's PromptEncoder.forward) */
        ms_sam_prompts pr = {.bp = 1, .n_points = 0, .points = NULL, .labels = NULL, .boxes = NULL, .masks = NULL};
        if ((rc = ms_sam_prompt_forward(dev, &m->pe, &pr, &p->pst))) goto leave;
    }
leave:
    if (rc) ms_predictor_free(p);
    return rc;
}

ms_status ms_predictor_init(ms_predictor *p, ms_sam *m, ms_device *dev, int batch)
{
    ms_prep_config pc;
    ms_prep_config_default(&pc, m->img_size);
    return ms_predictor_init_ex(p, m, dev, batch, &pc, MS_PROMPT_NONE);
}

void ms_predict_result_free(ms_predict_result *r)
{
    free(r->labels);
    free(r->image01);
    memset(r, 0, sizeof *r);
}

static ms_status grow_full(ms_predictor *p, size_t n)
{
    if (n <= p->full_cap) return MS_OK;
    float *f = realloc(p->full, n * sizeof(float));
    MS_FAIL_IF(!f, MS_ENOMEM, "predict: out of memory");
    p->full = f;
    p->full_cap = n;
    return MS_OK;
}

/* Low-res logits (C, lo, lo) → (C, H, W) at the predictor's preprocessing (ms_sam_postprocess_masks). */
static ms_status postprocess(const ms_predictor *p, const float *low, int C, int H, int W, float *out)
{
    const int lo = 4 * p->m->emb_h;
    return ms_sam_postprocess_masks(low, C, lo, lo, p->pc.size, p->pc.resize == MS_RESIZE_STRETCH, H, W, out);
}

/* ---- prompts from a label slice ---------------------------------------------------------------------------------- */

/* One slice with prompts: emb (device, 1 image), plab its prompt label (H×W values). The label goes to the model's
 * label grid exactly as training's targets do (ms_prep_label), and each present class gets finetune/prompt_gen.h's
 * deterministic prompts there. Writes label values (class map applied). */
static ms_status run_prompted(ms_predictor *p, const ms_predict_opts *o, const float *emb, const uint16_t *plab,
                              int H, int W, uint16_t *lab)
{
    ms_sam *m = p->m;
    const int M = p->M, lo = 4 * m->emb_h, C = o->class_map ? o->n_class_map : 0, L = p->pc.label_size;
    const size_t npx = (size_t)H * W, plane = (size_t)lo * lo, nl = (size_t)L * L;
    MS_FAIL_IF(!o->class_map || C < 2, MS_EINVAL, "predict: prompts need the task's class values");
    MS_FAIL_IF(L < 1, MS_EINVAL, "predict: label size %d", L);
    for (size_t i = 0; i < npx; i++) lab[i] = o->class_map[0];
    uint16_t *small = malloc(nl * sizeof *small);
    uint8_t *masks = malloc((size_t)C * nl);
    if (!small || !masks) {
        free(small);
        free(masks);
        return ms_error(MS_ENOMEM, "predict: out of memory");
    }
    ms_prep_label(&p->pc, plab, H, W, NULL, small);
    int cls[MS_FT_MAX_CLASSES], n = 0;
    for (int c = 1; c < C; c++) {
        uint8_t *mk = masks + (size_t)n * nl;
        int any = 0;
        for (size_t i = 0; i < nl; i++) any |= (mk[i] = small[i] == o->class_map[c]);
        if (any) cls[n++] = c;
    }
    free(small);
    ms_status rc = MS_OK;
    ms_promptgen_batch pb;
    ms_promptgen_batch_init(&pb);
    if (!n) goto leave;
    ms_promptgen_opts po;
    ms_promptgen_opts_default(&po);
    po.deterministic = 1;
    po.scale = (float)p->pc.size / (float)L;
    if ((rc = ms_promptgen_batch_fill(&pb, &po, (ms_prompt_mode)p->prompt, masks, n, L, L, 0, NULL))) goto leave;
    if ((rc = ms_sam_prompt_forward(p->dev, &m->pe, &pb.pr, &p->pst))) goto leave;
    if ((rc = ms_sam_decoder_forward(p->dev, &m->dec, emb, 1, &p->pst))) goto leave;
    if (m->dec.B != n || m->dec.M != M) {
        rc = ms_error(MS_EINVAL, "predict: decoder batch %d x %d, expected %d x %d", m->dec.B, m->dec.M, n, M);
        goto leave;
    }
    if ((rc = ms_dev_to_host(p->dev, p->low, m->dec.masks, (size_t)n * M * plane * sizeof(float)))) goto leave;
    if ((rc = grow_full(p, 3 * npx))) goto leave;
    float *two = p->full, *best = p->full + 2 * npx;
    for (size_t i = 0; i < npx; i++) best[i] = 0.0f;
    for (int k = 0; k < n && !rc; k++) {
        /* tokens 1..2 = (background, foreground), as the head was trained */
        if ((rc = postprocess(p, p->low + ((size_t)k * M + 1) * plane, 2, H, W, two))) break;
        for (size_t i = 0; i < npx; i++) {
            float dlt = two[npx + i] - two[i]; /* σ(dlt) is monotone: the largest margin is the largest probability */
            if (dlt > best[i]) best[i] = dlt, lab[i] = o->class_map[cls[k]];
        }
    }
leave:
    ms_promptgen_batch_free(&pb);
    free(masks);
    return rc;
}

ms_status ms_predict_slices(ms_predictor *p, const ms_predict_opts *o, const float *img01, const uint16_t *prompt_lab,
                            int nb, int H, int W, uint16_t *lab)
{
    ms_sam *m = p->m;
    const int S = p->pc.size, g = m->emb_h, M = p->M, lo = 4 * g, C = p->num_cls;
    const size_t plane = (size_t)lo * lo, npx = (size_t)H * W, xs = (size_t)3 * S * S;
    MS_FAIL_IF(nb < 1 || nb > p->batch, MS_EINVAL, "predict: batch of %d slices (1..%d)", nb, p->batch);
    MS_FAIL_IF(p->prompt != MS_PROMPT_NONE && !prompt_lab, MS_EINVAL,
               "the checkpoint was trained with %s prompts: give a label volume to take them from (--prompts-from)",
               ms_prompt_mode_name(p->prompt));
    if (o->class_map && p->prompt == MS_PROMPT_NONE)
        MS_FAIL_IF(o->n_class_map < C, MS_EINVAL, "predict: the class map has %d entries, the model %d classes",
                   o->n_class_map, C);
    for (int b = 0; b < nb; b++) {
        float *dst = p->hx + (size_t)b * xs;
        memset(dst, 0, xs * sizeof(float)); /* SAM pads with 0 after normalising */
        MS_TRY(ms_prep_image(&p->pc, img01 + (size_t)b * npx, H, W, NULL, dst, &p->scr));
    }
    MS_TRY(ms_dev_from_host(p->dev, p->x, p->hx, (size_t)nb * xs * sizeof(float)));
    MS_TRY(ms_sam_image_forward(m, p->x, nb, p->emb));
    if (p->prompt != MS_PROMPT_NONE) {
        for (int b = 0; b < nb; b++)
            MS_TRY(run_prompted(p, o, p->emb + (size_t)b * 256 * g * g, prompt_lab + (size_t)b * npx, H, W,
                                lab + (size_t)b * npx));
        return MS_OK;
    }
    MS_TRY(ms_sam_decoder_forward(p->dev, &m->dec, p->emb, nb, &p->pst));
    MS_FAIL_IF(m->dec.B != nb || m->dec.M != M, MS_EINVAL, "predict: decoder batch %d x %d, expected %d x %d",
               m->dec.B, m->dec.M, nb, M);
    MS_TRY(ms_dev_to_host(p->dev, p->low, m->dec.masks, (size_t)nb * M * plane * sizeof(float)));
    MS_TRY(grow_full(p, (size_t)C * npx));
    float *full = p->full;
    for (int b = 0; b < nb; b++) {
        /* multimask output: tokens 1..num_cls are the classes (token 0 is discarded, as finetune-SAM does) */
        MS_TRY(postprocess(p, p->low + ((size_t)b * M + 1) * plane, C, H, W, full));
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

/* Frame 0 of a label volume on the canonical grid as uint16 values. */
static ms_status read_label_volume(const ms_nifti *n, size_t nv, uint16_t *dst)
{
    float *tmp = malloc(nv * sizeof *tmp);
    MS_FAIL_IF(!tmp, MS_ENOMEM, "out of memory");
    uint64_t bad = 0;
    ms_status rc = ms_nifti_frame(n, 0, tmp, &bad);
    for (size_t i = 0; i < nv && !rc; i++) {
        float v = tmp[i], r = rintf(v);
        if (!(r >= 0 && r <= 65535) || fabsf(v - r) > 1e-3f)
            rc = ms_error(MS_EFORMAT, "prompt label: voxel value %g is not a label (an integer 0..65535)", (double)v);
        else dst[i] = (uint16_t)r;
    }
    free(tmp);
    return rc;
}

/* Segments a canonical float volume (r->dim set, vol: r->dim voxels, x fastest; pvol: the prompt labels on the same
 * grid or NULL) slice by slice along the axis ingest picks with these voxel sizes, restacks the labels into r and
 * post-processes them. Fills r except dim and n_nonfinite; on failure the caller frees r. */
static ms_status predict_canonical(ms_predictor *p, const ms_predict_opts *o, int axis_opt, const double spacing[3],
                                   const float *vol, const uint16_t *pvol, ms_predict_result *r)
{
    ms_status rc = MS_OK;
    float *sl = NULL;
    uint16_t *q = NULL, *lab = NULL, *psl = NULL;
    const size_t nv = (size_t)(r->dim[0] * r->dim[1] * r->dim[2]);
    int axis = ms_ingest_pick_axis(axis_opt, spacing, r->dim);
    int ra = axis == 0 ? 1 : 0, ca = axis == 2 ? 1 : 2;
    const int64_t H = r->dim[ra], W = r->dim[ca], K = r->dim[axis];
    const int64_t st3[3] = {1, r->dim[0], r->dim[0] * r->dim[1]};
    const int64_t rs = st3[ra], cs = st3[ca], ks = st3[axis];
    r->axis = axis, r->n_slices = K, r->H = H, r->W = W;
    if (H > 65535 || W > 65535) return ms_error(MS_ESHAPE, "slices of %lldx%lld are too large", (long long)H,
                                                (long long)W);
    const size_t npx = (size_t)(H * W);
    q = malloc(nv * sizeof *q);
    r->labels = calloc(nv, sizeof *r->labels);
    r->image01 = malloc(nv * sizeof *r->image01);
    sl = malloc((size_t)p->batch * npx * sizeof *sl);
    lab = malloc((size_t)p->batch * npx * sizeof *lab);
    if (pvol) psl = malloc((size_t)p->batch * npx * sizeof *psl);
    if (!q || !r->labels || !r->image01 || !sl || !lab || (pvol && !psl)) {
        rc = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    /* the store's path (data/encode.h): stored values, the window fitted on them, the reader's normalisation */
    ms_encoding enc;
    if ((rc = ms_encode_floats(vol, nv, o->norm, o->p_lo, o->p_hi, q, &enc))) goto leave;
    ms_encoding_apply(&enc, q, nv, q);
    for (size_t i = 0; i < nv; i++) r->image01[i] = (float)q[i] * (1.0f / 65535.0f); /* the loader's scaling */

    for (int64_t k0 = 0; k0 < K; k0 += p->batch) {
        int nb = (int)(K - k0 < p->batch ? K - k0 : p->batch);
        for (int b = 0; b < nb; b++) {
            const size_t base = (size_t)((k0 + b) * ks);
            float *d = sl + (size_t)b * npx;
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++) d[y * W + x] = r->image01[base + y * rs + x * cs];
            if (pvol) {
                uint16_t *e = psl + (size_t)b * npx;
                for (int64_t y = 0; y < H; y++)
                    for (int64_t x = 0; x < W; x++) e[y * W + x] = pvol[base + y * rs + x * cs];
            }
        }
        if ((rc = ms_predict_slices(p, o, sl, psl, nb, (int)H, (int)W, lab))) goto leave;
        for (int b = 0; b < nb; b++) {
            uint16_t *dst = r->labels + (k0 + b) * ks;
            const uint16_t *l = lab + (size_t)b * npx;
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++) dst[y * rs + x * cs] = l[y * W + x];
        }
        if (o->progress) o->progress(o->progress_ctx, k0 + nb, K);
    }
    rc = ms_labels_postprocess(r->labels, r->dim, o->conn, o->keep_largest, o->min_size, NULL);
leave:
    free(q);
    free(sl);
    free(lab);
    free(psl);
    return rc;
}

ms_status ms_predict_volume_prompted(ms_predictor *p, const ms_predict_opts *o, const ms_nifti *n,
                                     const ms_nifti *pl, ms_predict_result *r)
{
    ms_status rc = MS_OK;
    float *vol = NULL;
    uint16_t *pvol = NULL;
    memset(r, 0, sizeof *r);
    for (int i = 0; i < 3; i++) r->dim[i] = n->cdim[i];
    const size_t nv = (size_t)(r->dim[0] * r->dim[1] * r->dim[2]);
    if (p->prompt != MS_PROMPT_NONE && !pl) {
        rc = ms_error(MS_EINVAL, "the checkpoint was trained with %s prompts: give --prompts-from LABEL.nii.gz",
                      ms_prompt_mode_name(p->prompt));
        goto leave;
    }
    if (p->prompt == MS_PROMPT_NONE) pl = NULL;
    if (pl) {
        int same = 1;
        for (int i = 0; i < 3; i++) same &= pl->sdim[i] == n->sdim[i] && pl->perm[i] == n->perm[i] &&
                                             pl->flip[i] == n->flip[i];
        if (!same || !ms_affine_close(pl->affine, n->affine, 1e-3)) {
            rc = ms_error(MS_ESHAPE, "the prompt label volume is not on the image's grid (shape or affine differ)");
            goto leave;
        }
    }
    vol = malloc(nv * sizeof *vol);
    if (pl) pvol = malloc(nv * sizeof *pvol);
    if (!vol || (pl && !pvol)) {
        rc = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    if ((rc = ms_nifti_frame(n, 0, vol, &r->n_nonfinite))) goto leave;
    if (pl && (rc = read_label_volume(pl, nv, pvol))) goto leave;
    rc = predict_canonical(p, o, o->axis, n->cspacing, vol, pvol, r);
leave:
    free(vol);
    free(pvol);
    if (rc) ms_predict_result_free(r);
    return rc;
}

ms_status ms_predict_volume(ms_predictor *p, const ms_predict_opts *o, const ms_nifti *n, ms_predict_result *r)
{
    return ms_predict_volume_prompted(p, o, n, NULL, r);
}

ms_status ms_predict_file_prompted(ms_predictor *p, const ms_predict_opts *o, const char *in_path,
                                   const char *prompt_path, const char *out_path, ms_predict_result *r)
{
    ms_nifti n, pn;
    ms_predict_result mine;
    ms_predict_result *res = r ? r : &mine;
    int open_ok = 0, popen_ok = 0;
    ms_status rc;
    memset(&n, 0, sizeof n);
    memset(&pn, 0, sizeof pn);
    memset(res, 0, sizeof *res);
    if ((rc = ms_nifti_open(in_path, &n))) goto leave;
    open_ok = 1;
    if (prompt_path) {
        if ((rc = ms_nifti_open(prompt_path, &pn))) goto leave;
        popen_ok = 1;
    }
    if ((rc = ms_predict_volume_prompted(p, o, &n, popen_ok ? &pn : NULL, res))) goto leave;
    if ((rc = ms_nifti_write_labels_like(out_path, in_path, &n, res->labels))) goto leave;
leave:
    if (rc) {
        /* "path: reason" whatever layer failed (the reader's messages already start with the path) */
        const char *msg = ms_errmsg();
        size_t li = strlen(in_path), lo = strlen(out_path), lp = prompt_path ? strlen(prompt_path) : 0;
        int named = (strncmp(msg, in_path, li) == 0 && msg[li] == ':') ||
                    (strncmp(msg, out_path, lo) == 0 && msg[lo] == ':') ||
                    (prompt_path && strncmp(msg, prompt_path, lp) == 0 && msg[lp] == ':');
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
    if (popen_ok) ms_nifti_close(&pn);
    return rc;
}

ms_status ms_predict_file(ms_predictor *p, const ms_predict_opts *o, const char *in_path, const char *out_path,
                          ms_predict_result *r)
{
    return ms_predict_file_prompted(p, o, in_path, NULL, out_path, r);
}

/* ---- the model behind --ckpt ------------------------------------------------------------------------------------ */

void ms_predict_model_task_names(const ms_predict_model *pm, char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = 0;
    if (!pm->finetuned) return;
    for (int t = 0; t < pm->ft.cfg.n_tasks && k < n; t++)
        k += (size_t)snprintf(buf + k, n - k, "%s%s", t ? ", " : "", pm->ft.cfg.task[t].name);
}

ms_status ms_ckpt_resolve(const char *ckpt, ms_ckpt_kind *kind, char *dir)
{
    char p[MS_PATH_MAX];
    int64_t step;
    *kind = MS_CKPT_WEIGHTS;
    if (!ms_path_is_dir(ckpt)) return ms_path_fmt(dir, "%s", ckpt);
    *kind = MS_CKPT_FINETUNE;
    if (ms_ft_is_checkpoint(ckpt)) return ms_path_fmt(dir, "%s", ckpt); /* ms_ft_model_load goes on to best/ */
    /* a pretraining run: a complete step directory, the run (its newest), or its ckpt/ folder (the run's newest) */
    char sub[MS_PATH_MAX];
    MS_TRY(ms_path_join(p, ckpt, "DONE"));
    MS_TRY(ms_path_join(sub, ckpt, "ckpt"));
    if (access(p, F_OK) == 0) {
        MS_TRY(ms_path_fmt(dir, "%s", ckpt));
    } else if (ms_path_is_dir(sub)) {
        MS_TRY(ms_ckpt_dir_latest(ckpt, &step, dir));
    } else {
        char probe[MS_PATH_MAX];
        MS_TRY(ms_path_join(p, ckpt, ".."));
        MS_TRY(ms_path_join(probe, p, "ckpt"));
        MS_FAIL_IF(!ms_path_is_dir(probe), MS_ENOTFOUND,
                   "%s: not a weight file, a run directory or a checkpoint (no meta.json, best/, DONE or ckpt/)", ckpt);
        MS_TRY(ms_ckpt_dir_latest(p, &step, dir));
    }
    /* a fine-tuning run before its first validation has no best/: its newest step holds meta.json */
    *kind = ms_ft_is_checkpoint(dir) ? MS_CKPT_FINETUNE : MS_CKPT_PRETRAIN;
    return MS_OK;
}

ms_status ms_sam_load_pretrain(ms_sam *m, const char *dir, ms_device *dev, char *name, size_t n)
{
    char p[MS_PATH_MAX];
    cJSON *cfg = NULL;
    ms_state_dict src;
    ms_sd_init(&src);
    memset(m, 0, sizeof *m);
    ms_status rc = ms_path_join(p, dir, "config.json");
    if (!rc) rc = ms_read_json(p, 1 << 20, &cfg);
    if (rc) return rc;
    const cJSON *ck = cJSON_GetObjectItemCaseSensitive(cfg, "ckpt"), *mo = cJSON_GetObjectItemCaseSensitive(cfg, "model"),
                *se = cJSON_GetObjectItemCaseSensitive(cfg, "seed");
    const char *start = cJSON_IsString(ck) && ck->valuestring[0] ? ck->valuestring : NULL;
    const char *model = cJSON_IsString(mo) ? mo->valuestring : NULL;
    uint64_t seed = cJSON_IsNumber(se) ? (uint64_t)se->valuedouble : 0;
    if ((rc = ms_sam_build(m, start, model, seed, dev, name, n))) goto leave;
    /* the trained encoder replaces the one the run started from */
    if (!(rc = ms_path_join(p, dir, "model.safetensors")) && !(rc = ms_sd_load(p, &src)) &&
        (rc = ms_params_load_prefix(&m->ps, &src, "image_encoder.")))
        ms_error_prefix("%s", p);
    /* TinyViT: the BatchNorms' counter, when the checkpoint keeps it (integer num_batches_tracked; the largest) */
    for (int i = 0; !rc && m->cfg.tinyvit && i < src.n; i++) {
        const ms_sd_entry *e = &src.e[i];
        if (e->t.dtype == MS_DTYPE_I64 && ms_tensor_numel(&e->t) == 1 &&
            ms_str_ends_with(e->name, ".num_batches_tracked") && *(const int64_t *)e->t.data > m->tv.bn_batches)
            m->tv.bn_batches = *(const int64_t *)e->t.data;
    }
    if (rc) ms_sam_free(m);
leave:
    cJSON_Delete(cfg);
    ms_sd_free(&src);
    return rc;
}

ms_status ms_predict_model_load(ms_predict_model *pm, const char *ckpt, const char *task, ms_device *dev)
{
    return ms_predict_model_load_ex(pm, ckpt, task, 0, dev);
}

ms_status ms_predict_model_load_ex(ms_predict_model *pm, const char *ckpt, const char *task, int any_task,
                                   ms_device *dev)
{
    memset(pm, 0, sizeof *pm);
    ms_ckpt_kind kind;
    char dir[MS_PATH_MAX], name[32];
    MS_TRY(ms_ckpt_resolve(ckpt, &kind, dir));
    if (kind != MS_CKPT_FINETUNE) {
        MS_FAIL_IF(task, MS_EINVAL, "%s: --task needs a fine-tuned checkpoint (RUN/ or a directory with meta.json)",
                   ckpt);
        if (kind == MS_CKPT_PRETRAIN) MS_TRY(ms_sam_load_pretrain(&pm->sam, dir, dev, name, sizeof name));
        else MS_TRY(ms_sam_load(&pm->sam, ckpt, dev));
        pm->m = &pm->sam;
        pm->prompt = MS_PROMPT_NONE;
        ms_prep_config_default(&pm->pc, pm->sam.img_size);
        pm->n_classes = pm->sam.cfg.n_mask_tokens - 1;
        for (int c = 0; c < MS_FT_MAX_CLASSES; c++) pm->class_map[c] = (uint16_t)c;
        return MS_OK;
    }
    MS_TRY(ms_ft_model_load(&pm->ft, dir, dev));
    pm->finetuned = 1;
    const ms_ft_config *cfg = &pm->ft.cfg;
    ms_status rc = MS_OK;
    char names[MS_FT_MAX_TASKS * (MS_FT_NAME_MAX + 2) + 1];
    ms_predict_model_task_names(pm, names, sizeof names);
    int t = -1;
    if (task) {
        for (int i = 0; i < cfg->n_tasks; i++)
            if (!strcmp(cfg->task[i].name, task)) t = i;
        if (t < 0) { rc = ms_error(MS_ENOTFOUND, "%s: no task '%s' (tasks: %s)", ckpt, task, names); goto leave; }
    } else if (cfg->n_tasks == 1 || any_task) {
        t = 0;
    } else {
        rc = ms_error(MS_EINVAL, "%s: %d tasks (%s): choose one with --task NAME", ckpt, cfg->n_tasks, names);
        goto leave;
    }
    if ((rc = ms_sam_decoder_use_head(&pm->ft.sam.dec, pm->ft.head[t]))) goto leave;
    pm->task = t;
    pm->m = &pm->ft.sam;
    pm->prompt = cfg->prompt;
    pm->pc = cfg->prep;
    pm->pc.channels = 3;
    pm->n_classes = cfg->task[t].num_cls;
    if (pm->n_classes < 2 || pm->n_classes > MS_FT_MAX_CLASSES) {
        rc = ms_error(MS_EFORMAT, "%s: task '%s' has %d classes", ckpt, cfg->task[t].name, pm->n_classes);
        goto leave;
    }
    for (int c = 0; c < pm->n_classes; c++) pm->class_map[c] = cfg->task[t].values[c];
    if (cfg->prompt == MS_PROMPT_NONE && ms_sam_decoder_head(&pm->ft.sam.dec)->n_mask_tokens != pm->n_classes + 1) {
        rc = ms_error(MS_EFORMAT, "%s: task '%s' has %d classes but its head %d mask tokens", ckpt, cfg->task[t].name,
                      pm->n_classes, ms_sam_decoder_head(&pm->ft.sam.dec)->n_mask_tokens);
        goto leave;
    }
    pm->has_prep = 1;
    pm->axis = cfg->axis;
    pm->norm = cfg->intensity;
    pm->p_lo = cfg->p_lo;
    pm->p_hi = cfg->p_hi;
leave:
    if (rc) ms_predict_model_free(pm);
    return rc;
}

void ms_predict_model_free(ms_predict_model *pm)
{
    if (pm->finetuned) ms_ft_model_free(&pm->ft);
    else if (pm->m) ms_sam_free(&pm->sam);
    memset(pm, 0, sizeof *pm);
}

/* Overlay colours for classes 1.. (class 0 is left gray). */
static const uint8_t palette[8][3] = {{230, 25, 75},  {60, 180, 75}, {0, 130, 200}, {255, 225, 25},
                                      {245, 130, 48}, {145, 30, 180}, {70, 240, 240}, {240, 50, 230}};

ms_status ms_predict_write_overlays(const char *dir, const char *in_path, const ms_predict_result *r)
{
    ms_status rc = MS_OK;
    const int64_t H = r->H, W = r->W, K = r->n_slices;
    const int axis = r->axis, ra = axis == 0 ? 1 : 0, ca = axis == 2 ? 1 : 2;
    const int64_t st3[3] = {1, r->dim[0], r->dim[0] * r->dim[1]};
    uint8_t *pix = malloc((size_t)(H * W) * 3);
    char stem[256], *path = NULL;
    if (!pix) return ms_error(MS_ENOMEM, "%s: out of memory", dir);
    snprintf(stem, sizeof stem, "%s", ms_path_base(in_path));
    const char *suf = ms_path_nii_suffix(stem);
    if (suf && suf > stem) stem[suf - stem] = 0;
    else if (ms_str_ends_with_nocase(stem, ".png") && strlen(stem) > 4) stem[strlen(stem) - 4] = 0;
    int64_t last = -1;
    for (int j = 1; j <= 3; j++) {
        int64_t k = K * j / 4;
        if (k >= K) k = K - 1;
        if (k == last) continue;
        last = k;
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++) {
                size_t v = (size_t)(k * st3[axis] + y * st3[ra] + x * st3[ca]);
                float g = r->image01[v] * 255.0f;
                uint8_t *o = pix + ((size_t)y * W + x) * 3;
                uint16_t l = r->labels[v];
                for (int c = 0; c < 3; c++) {
                    float val = l ? 0.5f * g + 0.5f * palette[(l - 1) % 8][c] : g;
                    o[c] = (uint8_t)(val < 0 ? 0 : val > 255 ? 255 : val + 0.5f);
                }
            }
        char name[300];
        snprintf(name, sizeof name, "%s_s%03lld.png", stem, (long long)k);
        free(path);
        if (!(path = ms_path_join_new(dir, name))) { rc = ms_error(MS_ENOMEM, "%s: out of memory", dir); break; }
        if ((rc = ms_png_write_u8(path, pix, (int)W, (int)H, 3))) break;
    }
    free(path);
    free(pix);
    return rc;
}

/* ---- 2-D images ------------------------------------------------------------------------------------------------- */

/* Writes canonical labels of a one-slice (rows, columns, 1) result as an 8-bit PNG: pixel (row y, column x) is
 * labels[y + rows·x], ingest's PNG order. */
static ms_status write_png_labels(const char *path, const ms_predict_result *r)
{
    const int64_t h = r->dim[0], w = r->dim[1];
    uint8_t *pix = malloc((size_t)(h * w));
    MS_FAIL_IF(!pix, MS_ENOMEM, "%s: out of memory", path);
    ms_status rc = MS_OK;
    for (int64_t y = 0; y < h && !rc; y++)
        for (int64_t x = 0; x < w; x++) {
            uint16_t v = r->labels[y + h * x];
            if (v > 255) {
                rc = ms_error(MS_EUNSUPPORTED, "%s: class value %u does not fit an 8-bit PNG", path, (unsigned)v);
                break;
            }
            pix[y * w + x] = (uint8_t)v;
        }
    if (!rc) rc = ms_png_write_u8(path, pix, (int)w, (int)h, 1);
    free(pix);
    return rc;
}

ms_status ms_predict_png(ms_predictor *p, const ms_predict_opts *o, const char *in_path, const char *out_path,
                         ms_predict_result *r)
{
    ms_predict_result mine;
    ms_predict_result *res = r ? r : &mine;
    ms_png img = {0};
    float *vol = NULL;
    memset(res, 0, sizeof *res);
    ms_status rc = MS_OK;
    if (p->prompt != MS_PROMPT_NONE) {
        rc = ms_error(MS_EUNSUPPORTED, "%s: the checkpoint was trained with %s prompts; PNG input takes no prompts "
                                       "yet (use a NIfTI volume and --prompts-from)", in_path,
                      ms_prompt_mode_name(p->prompt));
        goto leave;
    }
    if ((rc = ms_png_read(in_path, MS_PNG_GRAY, &img))) goto leave;
    const int64_t h = img.h, w = img.w;
    res->dim[0] = h, res->dim[1] = w, res->dim[2] = 1;
    if (!(vol = malloc((size_t)(h * w) * sizeof *vol))) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", in_path);
        goto leave;
    }
    for (int64_t y = 0; y < h; y++) /* ingest's canonical order: rows along x, columns along y */
        for (int64_t x = 0; x < w; x++) vol[y + h * x] = (float)img.px[y * w + x];
    const double one[3] = {1, 1, 1};
    if ((rc = predict_canonical(p, o, MS_AXIS_AUTO, one, vol, NULL, res))) {
        const char *msg = ms_errmsg();
        if (strncmp(msg, in_path, strlen(in_path)) != 0) {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", msg);
            rc = ms_error(rc, "%s: %s", in_path, buf);
        }
        goto leave;
    }
    rc = write_png_labels(out_path, res);
leave:
    ms_png_free(&img);
    free(vol);
    if (rc || !r) ms_predict_result_free(res);
    return rc;
}

const char *ms_predict_other_format(const char *path)
{
    static const struct { const char *ext, *what; } t[] = {
        {".jpg", "JPEG"}, {".jpeg", "JPEG"}, {".jpe", "JPEG"}, {".tif", "TIFF"}, {".tiff", "TIFF"},
        {".bmp", "BMP"},  {".gif", "GIF"},   {".webp", "WebP"}, {".dcm", "DICOM"}, {".npy", "NumPy"},
        {".npz", "NumPy"}, {".mha", "MetaImage"}, {".mhd", "MetaImage"}, {".nrrd", "NRRD"}, {".jp2", "JPEG 2000"}};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (ms_str_ends_with_nocase(path, t[i].ext)) return t[i].what;
    return NULL;
}

ms_status ms_predict_input_kind(const char *path, ms_input_kind *kind, const char **what)
{
    *what = NULL;
    static const char *const nifti[] = {".nii", ".nii.gz", ".hdr", ".hdr.gz", ".img", ".img.gz"};
    for (size_t i = 0; i < sizeof nifti / sizeof *nifti; i++)
        if (ms_str_ends_with_nocase(path, nifti[i])) return *kind = MS_INPUT_NIFTI, MS_OK;
    if (ms_str_ends_with_nocase(path, ".png")) return *kind = MS_INPUT_PNG, MS_OK;
    if ((*what = ms_predict_other_format(path))) return *kind = MS_INPUT_OTHER, MS_OK;
    unsigned char b[4096];
    FILE *f = fopen(path, "rb");
    MS_FAIL_IF(!f, errno, "%s: %s", path, strerror(errno));
    size_t n = fread(b, 1, sizeof b, f);
    fclose(f);
    int text = 1;
    for (size_t i = 0; i < n && text; i++) text = b[i] >= 0x20 || b[i] == '\t' || b[i] == '\n' || b[i] == '\r';
    *kind = MS_INPUT_OTHER;
    if (text) *kind = MS_INPUT_LIST;
    else if (n >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8)) *kind = MS_INPUT_PNG;
    else if (n >= 3 && !memcmp(b, "\xff\xd8\xff", 3)) *what = "JPEG";
    else if (n >= 4 && (!memcmp(b, "II*\0", 4) || !memcmp(b, "MM\0*", 4))) *what = "TIFF";
    else if (n >= 6 && (!memcmp(b, "GIF87a", 6) || !memcmp(b, "GIF89a", 6))) *what = "GIF";
    else if (n >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4)) *what = "WebP";
    else if (n >= 132 && !memcmp(b + 128, "DICM", 4)) *what = "DICOM";
    else if (n >= 6 && !memcmp(b, "\x93NUMPY", 6)) *what = "NumPy";
    else if (n >= 2 && !memcmp(b, "BM", 2)) *what = "BMP";
    else *kind = MS_INPUT_NIFTI; /* gzip, NIfTI, ANALYZE, or garbage the NIfTI reader names */
    return MS_OK;
}

ms_status ms_predict_list_read(const char *path, char ***paths, int *n)
{
    char *txt = NULL;
    size_t len = 0;
    *paths = NULL;
    *n = 0;
    MS_TRY(ms_read_file(path, (size_t)64 << 20, &txt, &len));
    char dir[MS_PATH_MAX] = ""; /* the list's folder, "" for the working directory */
    const int dl = (int)(ms_path_base(path) - path);
    if (dl > 0) snprintf(dir, sizeof dir, "%.*s", dl > 1 ? dl - 1 : 1, path);
    ms_status st = MS_OK;
    int cap = 0;
    for (char *s = txt, *next; s && *s && !st; s = next) {
        next = strchr(s, '\n');
        if (next) *next++ = 0;
        while (isspace((unsigned char)*s)) s++;
        size_t k = strlen(s);
        while (k && isspace((unsigned char)s[k - 1])) s[--k] = 0;
        if (!*s || *s == '#') continue;
        if (*n == cap) {
            char **t = realloc(*paths, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *t);
            if (!t) { st = ms_error(MS_ENOMEM, "%s: out of memory", path); break; }
            *paths = t;
        }
        char *e = s[0] == '/' || !dir[0] ? strdup(s) : ms_path_join_new(dir, s);
        if (!e) st = ms_error(MS_ENOMEM, "%s: out of memory", path);
        else (*paths)[(*n)++] = e;
    }
    free(txt);
    if (!st && *n == 0) st = ms_error(MS_EINVAL, "%s: lists no images (one path a line)", path);
    if (st) {
        for (int i = 0; i < *n; i++) free((*paths)[i]);
        free(*paths);
        *paths = NULL;
        *n = 0;
    }
    return st;
}
