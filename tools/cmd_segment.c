/* tools/cmd_segment.c — `mrisam segment`: zero-shot SAM on one PNG with point/box prompts (the official
 * predictor: docs/MODEL.md §Preprocessing).
 *
 * Image → SAM preprocessing (resize the longest side to the model's input size, pixel mean/std, zero pad;
 * data/preprocess.h, the same as `mrisam embed`) → image encoder → prompts (points and box in the image's pixels,
 * mapped by ResizeLongestSide's apply_coords) → prompt encoder + mask decoder → multimask selection (tokens 1..M−1
 * with --multimask, else token 0) → the chosen mask (highest predicted IoU) upsampled: bilinear to S×S, crop to the
 * resized frame, bilinear to the original size, > 0 → MASK.png (0/255). The IoU predictions are printed; --logits
 * writes the selected low-resolution logits as float32 (1, M, 4·S/16, 4·S/16).
 *
 * --embedding EMB.npy replaces the encoder run by `mrisam embed`'s output (the image still gives the size the prompts
 * and the mask refer to); --mask-input LOW.npy is SAM predictor's mask_input: one channel of low-resolution logits
 * (a previous --logits), encoded by the prompt encoder's mask_downscaling instead of no_mask_embed.
 *
 * --auto runs SAM's automatic mask generator (finetune/amg.h) instead of prompts: a label PNG and, with --json, the
 * masks as COCO uncompressed RLE.
 *
 * --ckpt is anything finetune/predict.h's ms_predict_model_load takes (weight files, pretraining and fine-tuning run
 * directories). A fine-tuned checkpoint runs its task's head (--task) with the checkpoint's preprocessing: the class
 * channels (tokens 1..C) post-processed, their argmax written as the task's class values (docs/CLI.md §embed, segment, convert).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/device.h"
#include "cli.h"
#include "data/preprocess.h"
#include "finetune/amg.h"
#include "finetune/predict.h"
#include "finetune/sam.h"
#include "image_io.h"

static int parse_nums(const char *s, float *v, int n_min, int n_max)
{
    int n = 0;
    const char *p = s;
    while (*p && n < n_max) {
        char *e;
        v[n] = strtof(p, &e);
        if (e == p) return -1;
        n++;
        if (*e == ',') p = e + 1;
        else if (*e == 0) { p = e; break; }
        else return -1;
    }
    return (*p || n < n_min) ? -1 : n;
}

/* --point / --box strings → points (n, 2), labels (n), box. Returns 0, or an exit code after printing why (then
 * nothing is left allocated). */
static int parse_prompts(const ms_strlist *point_s, const char *box_s, float **pts, int32_t **labels, float *box)
{
    const int np_ = point_s->n;
    int rc = 0;
    *pts = calloc((size_t)(np_ ? np_ : 1) * 2, sizeof(float));
    *labels = calloc((size_t)(np_ ? np_ : 1), sizeof(int32_t));
    if (!*pts || !*labels) { fprintf(stderr, "mrisam segment: out of memory\n"); rc = MS_EXIT_FAIL; goto leave; }
    for (int i = 0; i < np_; i++) {
        float v[3] = {0, 0, 1};
        int n = parse_nums(point_s->v[i], v, 2, 3);
        if (n < 0 || (n == 3 && v[2] != 0 && v[2] != 1)) {
            fprintf(stderr, "mrisam segment: bad --point '%s' (expected X,Y or X,Y,LABEL with LABEL 0 or 1)\n",
                    point_s->v[i]);
            rc = MS_EXIT_USAGE;
            goto leave;
        }
        (*pts)[2 * i] = v[0];
        (*pts)[2 * i + 1] = v[1];
        (*labels)[i] = (int32_t)v[2];
    }
    if (box_s && parse_nums(box_s, box, 4, 4) != 4) {
        fprintf(stderr, "mrisam segment: bad --box '%s' (expected X0,Y0,X1,Y1)\n", box_s);
        rc = MS_EXIT_USAGE;
    }
leave:
    if (rc) {
        free(*pts);
        free(*labels);
        *pts = NULL;
        *labels = NULL;
    }
    return rc;
}

/* Prompts in the image's pixels: every point inside it, a box with x0 < x1, y0 < y1 inside it. */
static ms_status check_prompts(const char *image, const float *pts, int n, const float *box, int w, int h)
{
    for (int i = 0; i < n; i++)
        MS_FAIL_IF(!(pts[2 * i] >= 0 && pts[2 * i] < w && pts[2 * i + 1] >= 0 && pts[2 * i + 1] < h), MS_EINVAL,
                   "--point %g,%g lies outside %s (%dx%d: 0 <= x < %d, 0 <= y < %d)", pts[2 * i], pts[2 * i + 1],
                   image, w, h, w, h);
    if (box)
        MS_FAIL_IF(!(box[0] >= 0 && box[1] >= 0 && box[0] < box[2] && box[1] < box[3] && box[2] <= w && box[3] <= h),
                   MS_EINVAL, "--box %g,%g,%g,%g is not X0,Y0,X1,Y1 with X0 < X1 <= %d and Y0 < Y1 <= %d inside %s (%dx%d)",
                   box[0], box[1], box[2], box[3], w, h, image, w, h);
    return MS_OK;
}

/* A fine-tuned task's class values are the PNG's pixels: they must fit 8 bits. */
static ms_status check_class_values(const char *ckpt, const ms_predict_model *pm)
{
    if (!pm->finetuned) return MS_OK;
    for (int c = 0; c < pm->n_classes; c++)
        MS_FAIL_IF(pm->class_map[c] > 255, MS_EUNSUPPORTED,
                   "%s: task '%s' has class value %u, which an 8-bit mask PNG cannot hold", ckpt,
                   pm->ft.cfg.task[pm->task].name, (unsigned)pm->class_map[c]);
    return MS_OK;
}

/* A fine-tuned head's C class channels (low-res, host) → the image's size → per-pixel argmax (the first maximum
 * wins, as predict) → the task's class values. A prompt-trained head has two channels (background, the prompted
 * object): its foreground is the task's one foreground value, or 255 when the task has several classes (the
 * prompt picks an object, not its class). Prints the pixels of each class. */
static ms_status write_class_map(const ms_predict_model *pm, const float *low, int C, int lo, int S, int stretched,
                                 int h, int w, float *full, uint8_t *pix, const char *out)
{
    MS_TRY(ms_sam_postprocess_masks(low, C, lo, lo, S, stretched, h, w, full));
    const size_t n = (size_t)h * w;
    size_t count[MS_FT_MAX_CLASSES] = {0};
    uint8_t value[MS_FT_MAX_CLASSES];
    for (int c = 0; c < C && c < MS_FT_MAX_CLASSES; c++)
        value[c] = pm->prompt != MS_PROMPT_NONE && c == 1 && pm->n_classes != 2 ? 255 : (uint8_t)pm->class_map[c];
    MS_FAIL_IF(C > MS_FT_MAX_CLASSES || (pm->prompt == MS_PROMPT_NONE && C != pm->n_classes), MS_EFORMAT,
               "%d class channels for %d classes", C, pm->n_classes);
    for (size_t i = 0; i < n; i++) {
        int best = 0;
        for (int c = 1; c < C; c++)
            if (full[(size_t)c * n + i] > full[(size_t)best * n + i]) best = c;
        pix[i] = value[best];
        count[best]++;
    }
    MS_TRY(ms_png_write_u8(out, pix, w, h, 1));
    printf("classes (task %s, value: pixels):", pm->ft.cfg.task[pm->task].name);
    for (int c = 0; c < C; c++) printf(" %u: %zu", (unsigned)value[c], count[c]);
    printf(", %s\n", out);
    return MS_OK;
}

/* "(a, b, c)" of an .npy shape, for messages. */
static const char *shape_str(const int64_t *shape, int nd, char *buf, size_t n)
{
    int o = snprintf(buf, n, "(");
    for (int i = 0; i < nd && o > 0 && (size_t)o < n; i++)
        o += snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o > 0 && (size_t)o < n) snprintf(buf + o, n - o, ")");
    return buf;
}

/* The image embedding of --embedding (an `mrisam embed` output): float32 (1, 256, g, g) or (256, g, g), g the
 * model's embedding grid; anything else is refused naming the file and the shape expected. */
static ms_status read_embedding(const char *path, int g, int S, float **emb)
{
    int64_t shape[8];
    int nd;
    MS_TRY(ms_npy_read_f32(path, emb, shape, &nd));
    const int64_t *s = nd == 4 ? shape + 1 : shape;
    if (!((nd == 4 && shape[0] == 1) || nd == 3) || s[0] != 256 || s[1] != g || s[2] != g) {
        char got[160];
        free(*emb);
        *emb = NULL;
        return ms_error(MS_ESHAPE, "%s: an embedding of shape %s; this model (input %d) takes (1, 256, %d, %d), "
                        "as `mrisam embed` writes it with the same weights", path, shape_str(shape, nd, got, sizeof got),
                        S, g, g);
    }
    return MS_OK;
}

/* --mask-input: SAM predictor's mask_input, the low-resolution logits of a previous prediction (one channel of
 * --logits): float32 (1, 1, lo, lo), (1, lo, lo) or (lo, lo), lo = 4·g, finite. */
static ms_status read_mask_input(const char *path, int lo, float **mask)
{
    int64_t shape[8];
    int nd;
    MS_TRY(ms_npy_read_f32(path, mask, shape, &nd));
    int ok = nd >= 2 && nd <= 4 && shape[nd - 1] == lo && shape[nd - 2] == lo;
    for (int i = 0; i < nd - 2; i++) ok &= shape[i] == 1;
    char why[200];
    snprintf(why, sizeof why, "shape ");
    shape_str(shape, nd, why + 6, sizeof why - 6);
    for (int64_t i = 0; ok && i < (int64_t)lo * lo; i++)
        if (!isfinite((*mask)[i])) {
            ok = 0;
            snprintf(why, sizeof why, "a non-finite value at (%lld, %lld)", (long long)(i / lo), (long long)(i % lo));
        }
    if (ok) return MS_OK;
    free(*mask);
    *mask = NULL;
    return ms_error(MS_EFORMAT, "%s: %s; --mask-input takes one channel of low-resolution logits, float32 (1, %d, %d) "
                    "(a previous segment's --logits without --multimask, or one channel of it)", path, why, lo, lo);
}

/* emb (device, (1, 256, g, g)) = the image encoder on img with pc, or --embedding's file when emb_path is set:
 * `mrisam embed`'s output for this image, the same encoder output, so the same masks. */
static ms_status image_embedding(ms_device *dev, ms_sam *m, const ms_prep_config *pc, const ms_image *img,
                                 const char *emb_path, float *emb)
{
    const int S = m->img_size, g = m->emb_h;
    const size_t nx = (size_t)3 * S * S, ne = (size_t)256 * g * g;
    float *hx = NULL, *x = NULL;
    ms_status rc;
    if (emb_path) {
        if (!(rc = read_embedding(emb_path, g, S, &hx))) rc = ms_dev_from_host(dev, emb, hx, ne * sizeof(float));
        free(hx);
        return rc;
    }
    hx = malloc(nx * sizeof(float));
    if (!hx) return ms_error(MS_ENOMEM, "segment: out of memory");
    rc = ms_prep_image_hwc(pc, img->data, img->h, img->w, img->c, hx);
    if (!rc) rc = ms_dev_alloc(dev, nx * sizeof(float), (void **)&x);
    if (!rc) rc = ms_dev_from_host(dev, x, hx, nx * sizeof(float));
    if (!rc) rc = ms_sam_image_reserve(m, 1, 0);
    if (!rc) rc = ms_sam_image_forward(m, x, 1, emb);
    free(hx);
    if (x) ms_dev_free(dev, x);
    return rc;
}

/* --auto: SamAutomaticMaskGenerator (finetune/amg.h) → MASK.png of labels (1 + rank, smaller masks on top; 8-bit,
 * so masks of rank >= 255 only in the JSON), --json with every mask as COCO uncompressed RLE; --auto-candidates
 * PREFIX writes every candidate before filtering (PREFIX.logits.npy (points, M−1, h, w), PREFIX.iou.npy (points,
 * M−1)) for tests. */
static ms_status run_auto(ms_device *dev, ms_sam *m, const float *emb, int h, int w, int stretched, ms_amg_config *ac,
                          const char *out, const char *json, const char *cand)
{
    ms_amg_result r = {0};
    const size_t hw = (size_t)h * w;
    const int M = ms_sam_decoder_head(&m->dec)->n_mask_tokens, nm = M > 1 ? M - 1 : 1;
    const int64_t P = (int64_t)ac->points_per_side * ac->points_per_side;
    uint16_t *lab = malloc(hw * sizeof(uint16_t));
    uint8_t *pix = malloc(hw);
    ms_status rc = MS_OK;
    if (!lab || !pix) { rc = ms_error(MS_ENOMEM, "segment: out of memory"); goto leave; }
    if (cand && ac->points_per_side >= 1 && ac->points_per_side <= 1024) {
        ac->cand_logits = malloc((size_t)P * nm * hw * sizeof(float));
        ac->cand_iou = malloc((size_t)P * nm * sizeof(float));
        if (!ac->cand_logits || !ac->cand_iou) { rc = ms_error(MS_ENOMEM, "segment: out of memory"); goto leave; }
    }
    if ((rc = ms_amg_generate(dev, m, emb, h, w, stretched, ac, &r))) goto leave;
    if ((rc = ms_amg_label_map(&r, 255, lab))) goto leave;
    for (size_t i = 0; i < hw; i++) pix[i] = (uint8_t)lab[i];
    if ((rc = ms_png_write_u8(out, pix, w, h, 1))) goto leave;
    if (json && (rc = ms_amg_write_json(json, &r))) goto leave;
    if (cand) {
        char path[4096];
        int64_t sl[4] = {P, nm, h, w}, si[2] = {P, nm};
        snprintf(path, sizeof path, "%s.logits.npy", cand);
        if ((rc = ms_npy_write_f32(path, ac->cand_logits, sl, 4))) goto leave;
        snprintf(path, sizeof path, "%s.iou.npy", cand);
        if ((rc = ms_npy_write_f32(path, ac->cand_iou, si, 2))) goto leave;
    }
    printf("auto: %lld points, %d candidates, %d past predicted IoU > %g, %d past stability >= %g, %d masks after box "
           "NMS at %g; %s%s%s%s\n", (long long)P, r.n_candidates, r.n_iou, (double)ac->pred_iou_thresh, r.n_stable,
           (double)ac->stability_thresh, r.n, ac->box_nms_thresh, out, json ? ", " : "", json ? json : "",
           r.n > 255 ? " (the PNG holds the first 255 masks, the JSON all)" : "");
leave:
    free(ac->cand_logits);
    free(ac->cand_iou);
    ac->cand_logits = ac->cand_iou = NULL;
    free(lab);
    free(pix);
    ms_amg_result_free(&r);
    return rc;
}

/* The prompted prediction: points (np_, image pixels) and box (or NULL) mapped to the input frame, the optional
 * mask input (device), prompt encoder, decoder; prints the IoU predictions, writes MASK.png (and --logits). */
static ms_status run_prompted(ms_device *dev, ms_predict_model *pm, const float *emb, float *pts, const int32_t *labels,
                              int np_, float *box, const float *dmask, int multimask, int stretched, int h, int w,
                              const char *out, const char *logits)
{
    ms_sam *const m = pm->m;
    const int ft = pm->finetuned, S = m->img_size, g = m->emb_h;
    float *low = NULL, *iou = NULL, *full = NULL;
    uint8_t *pix = NULL;
    ms_sam_prompt_state pst;
    memset(&pst, 0, sizeof pst);
    ms_status rc = MS_OK;
    /* prompts in the resized frame (a stretched input scales each axis to S) */
    if (stretched) {
        for (int i = 0; i < np_; i++) { pts[2 * i] *= (float)S / w; pts[2 * i + 1] *= (float)S / h; }
        if (box) { box[0] *= (float)S / w; box[2] *= (float)S / w; box[1] *= (float)S / h; box[3] *= (float)S / h; }
    } else {
        ms_sam_apply_coords(pts, np_, h, w, S);
        if (box) ms_sam_apply_coords(box, 2, h, w, S);
    }
    ms_sam_prompts pr = {.bp = 1, .n_points = np_, .points = pts, .labels = labels, .boxes = box,
                          .masks = dmask};
    if ((rc = ms_sam_prompt_forward(dev, &m->pe, &pr, &pst))) goto done;
    /* the decoder's active head: the task's (ms_predict_model_load selected it) or SAM's */
    if ((rc = ms_sam_decoder_forward(dev, &m->dec, emb, 1, &pst))) goto done;

    const int M = m->dec.M, lo = 4 * g;
    /* a fine-tuned head's class channels are tokens 1..M-1 (docs/MODEL.md §Multi-class output) */
    const int first = (ft || multimask) && M > 1 ? 1 : 0, nsel = (ft || multimask) && M > 1 ? M - 1 : 1;
    const size_t plane = (size_t)lo * lo;
    low = malloc((size_t)M * plane * sizeof(float));
    iou = malloc((size_t)M * sizeof(float));
    full = malloc((size_t)(ft ? nsel : 1) * h * w * sizeof(float));
    pix = malloc((size_t)h * w);
    if (!low || !iou || !full || !pix) { rc = ms_error(MS_ENOMEM, "segment: out of memory"); goto done; }
    if ((rc = ms_dev_to_host(dev, low, m->dec.masks, (size_t)M * plane * sizeof(float)))) goto done;
    if ((rc = ms_dev_to_host(dev, iou, m->dec.iou, (size_t)M * sizeof(float)))) goto done;
    int best = first;
    printf("iou:");
    for (int i = first; i < first + nsel; i++) {
        printf(" %.6f", iou[i]);
        if (iou[i] > iou[best]) best = i;
    }
    printf("\n");
    if (ft) {
        if ((rc = write_class_map(pm, low + (size_t)first * plane, nsel, lo, S, stretched, h, w, full, pix, out)))
            goto done;
    } else {
        if ((rc = ms_sam_postprocess_masks(low + (size_t)best * plane, 1, lo, lo, S, 0, h, w, full))) goto done;
        size_t on = 0;
        for (size_t i = 0; i < (size_t)h * w; i++) { pix[i] = full[i] > 0.0f ? 255 : 0; on += pix[i] != 0; }
        if ((rc = ms_png_write_u8(out, pix, w, h, 1))) goto done;
        printf("mask: token %d (predicted IoU %.6f), %zu of %zu pixels, %s\n", best, iou[best], on, (size_t)h * w, out);
    }
    if (logits) {
        int64_t shape[4] = {1, nsel, lo, lo};
        if ((rc = ms_npy_write_f32(logits, low + (size_t)first * plane, shape, 4))) goto done;
    }
done:
    free(low);
    free(iou);
    free(full);
    free(pix);
    ms_sam_prompt_state_free(dev, &pst);
    return rc;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam segment --ckpt F|RUN --image IMG.png [--point X,Y[,LABEL]]... [--box X0,Y0,X1,Y1] [--multimask] "
        "[--mask-input LOW.npy] [--embedding EMB.npy] [--task NAME] -o MASK.png [--logits LOW.npy]\n"
        "       mrisam segment --ckpt F --image IMG.png --auto -o LABELS.png [--json MASKS.json] [--points-per-side 32] "
        "[--pred-iou-thresh 0.88] [--stability-thresh 0.95] [--box-nms-thresh 0.7]",
        "Zero-shot SAM with the official predictor's pre- and post-processing; SAM's vit_b/l/h or MobileSAM's vit_t "
        "(mobile_sam.pt), read from the checkpoint's shapes. Coordinates are in the image's pixels "
        "(x = column, y = row); LABEL is 1 (foreground, default) or 0 (background). Without --multimask the "
        "single-mask token is used; with it, the mask with the highest predicted IoU of the three. Prints the IoU "
        "predictions; --logits writes the selected low-resolution logits, float32 (1, M, 4·S/16, 4·S/16). --ckpt also "
        "takes a pretraining run (RUN/, RUN/ckpt/step_N) and a fine-tuning one (RUN/, RUN/best, RUN/ckpt/step_N): "
        "a fine-tuned checkpoint runs its task's head (--task when several) with its preprocessing and writes the "
        "argmax class map, pixels = the task's class values; --logits then holds its class channels (1, C, ...). "
        "--embedding reuses `mrisam embed`'s output for IMG (same weights): the encoder is not run, the image gives "
        "the size. --mask-input feeds a previous prediction's low-resolution logits (1, 4·S/16, 4·S/16) to the prompt "
        "encoder, as SAM's predictor's mask_input. --auto is SamAutomaticMaskGenerator without crops: a point grid, the "
        "multimask outputs kept by predicted IoU and stability score, box NMS; LABELS.png = 1 + each mask's rank "
        "(smaller masks painted over larger ones), --json = every mask as COCO uncompressed RLE (column-major).",
        "mrisam segment --ckpt sam_vit_b_01ec64.pth --image slice.png --point 120,88 --multimask -o mask.png"};
    const char *ckpt = NULL, *image = NULL, *box_s = NULL, *out = NULL, *logits = NULL, *device = "cpu",
               *norm = NULL, *task = NULL, *emb_path = NULL, *mask_path = NULL, *precision = NULL;
    int multimask = 0, threads = 0, auto_ = 0;
    const char *json = NULL, *cand = NULL;
    ms_amg_config ac;
    ms_amg_config_default(&ac);
    double iou_t = ac.pred_iou_thresh, stab_t = ac.stability_thresh, stab_off = ac.stability_offset;
    ms_strlist point_s = {0};
    const ms_opt opts[] = {
        {"ckpt", MS_OPT_STR, &ckpt, "F|RUN", "SAM-layout weights (.pth, .safetensors) or a run directory"},
        {"task", MS_OPT_STR, &task, "NAME", "the task whose head runs (fine-tuned checkpoints with several)"},
        {"image", MS_OPT_STR, &image, "IMG.png", "input image (8/16-bit gray or RGB PNG)"},
        {"point", MS_OPT_LIST, &point_s, "X,Y[,LABEL]", "a point prompt (repeatable)"},
        {"box", MS_OPT_STR, &box_s, "X0,Y0,X1,Y1", "a box prompt"},
        {"mask-input", MS_OPT_STR, &mask_path, "LOW.npy", "a previous prediction's low-res logits (SAM's mask_input)"},
        {"embedding", MS_OPT_STR, &emb_path, "EMB.npy", "the image's embedding from `mrisam embed` (no encoder run)"},
        {"multimask", MS_OPT_FLAG, &multimask, NULL, "three candidate masks; keep the best by predicted IoU"},
        {"o", MS_OPT_STR, &out, "MASK.png", "output mask (0/255, the image's size)"},
        {"logits", MS_OPT_STR, &logits, "LOW.npy", "also write the low-resolution logits"},
        {"auto", MS_OPT_FLAG, &auto_, NULL, "SAM's automatic mask generator: MASK.png of labels (no prompts)"},
        {"json", MS_OPT_STR, &json, "MASKS.json", "--auto: every mask, COCO uncompressed RLE"},
        {"points-per-side", MS_OPT_INT, &ac.points_per_side, "N", "--auto: point grid N x N (default 32)"},
        {"points-per-batch", MS_OPT_INT, &ac.points_per_batch, "N", "--auto: points per decoder run (default 64)"},
        {"pred-iou-thresh", MS_OPT_FLOAT, &iou_t, "X", "--auto: keep predicted IoU > X (default 0.88; <= 0: all)"},
        {"stability-thresh", MS_OPT_FLOAT, &stab_t, "X", "--auto: keep stability >= X (default 0.95; <= 0: all)"},
        {"stability-offset", MS_OPT_FLOAT, &stab_off, "X", "--auto: stability thresholds at +-X (default 1)"},
        {"box-nms-thresh", MS_OPT_FLOAT, &ac.box_nms_thresh, "X", "--auto: box NMS IoU threshold (default 0.7)"},
        {"auto-candidates", MS_OPT_STR, &cand, "PREFIX", "--auto: also write every candidate (tests)"},
        {"norm", MS_OPT_STR, &norm, "sam|medsam", "input normalisation (default sam)"},
        {"threads", MS_OPT_INT, &threads, "N", "CPU threads (default: all cores)"},
        {"device", MS_OPT_STR, &device, "cpu|cuda", "compute device (default cpu)"},
        MS_CLI_PRECISION_OPTION(&precision),
        {0}};
    int prc = ms_cli_parse(&help, opts, argc, argv, NULL);
    if (prc) { ms_strlist_free(&point_s); return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE; }
    if (!ckpt || !image || !out) {
        fprintf(stderr, "mrisam segment: needs --ckpt, --image and -o (see --help)\n");
        ms_strlist_free(&point_s);
        return MS_EXIT_USAGE;
    }
    const int np_ = point_s.n;
    if (auto_ ? np_ || box_s || mask_path || multimask || logits : json || cand) {
        fprintf(stderr, auto_ ? "mrisam segment: --auto prompts with its own point grid: no --point, --box, "
                                "--mask-input, --multimask or --logits\n"
                              : "mrisam segment: --json and --auto-candidates go with --auto\n");
        ms_strlist_free(&point_s);
        return MS_EXIT_USAGE;
    }
    ac.pred_iou_thresh = (float)iou_t; /* compared in float32, as PyTorch compares a float32 tensor */
    ac.stability_thresh = (float)stab_t;
    ac.stability_offset = (float)stab_off;
    float *pts = NULL, box[4];
    int32_t *labels = NULL;
    int bad = parse_prompts(&point_s, box_s, &pts, &labels, box);
    ms_strlist_free(&point_s);
    if (bad) return bad;

    ms_device dev;
    ms_predict_model pm;
    ms_image img = {0};
    int dev_ok = 0, model_ok = 0;
    float *emb = NULL, *hmask = NULL, *dmask = NULL;
    memset(&pm, 0, sizeof pm);
    ms_device_kind kind;
    int index;
    ms_status rc;
    if ((rc = ms_device_parse(device, &kind, &index))) goto leave;
    if ((rc = ms_device_init_at(&dev, kind, index, threads))) goto leave;
    dev_ok = 1;
    if ((rc = ms_cli_set_precision(&dev, precision))) goto leave;
    if ((rc = ms_predict_model_load(&pm, ckpt, task, &dev))) goto leave;
    model_ok = 1;
    ms_sam *const m = pm.m;
    const int ft = pm.finetuned;
    if (ft && multimask) { rc = ms_error(MS_EINVAL, "%s: --multimask goes with SAM weights; a fine-tuned checkpoint "
                                                     "outputs its task's classes", ckpt); goto leave; }
    if (ft && auto_) { rc = ms_error(MS_EINVAL, "%s: --auto goes with SAM weights; a fine-tuned checkpoint "
                                                "outputs its task's classes (predict segments without prompts)", ckpt);
        goto leave; }
    if ((rc = check_class_values(ckpt, &pm))) goto leave;
    if ((rc = ms_png_read_image(image, &img))) goto leave;
    const int h = img.h, w = img.w, g = m->emb_h;
    if ((rc = check_prompts(image, pts, np_, box_s ? box : NULL, w, h))) goto leave;

    /* image embedding: the checkpoint's preprocessing (SAM's for weight files), --norm overriding */
    ms_prep_config pc = pm.pc;
    pc.channels = 3;
    if ((rc = ms_prep_parse(&pc, NULL, norm))) goto leave;
    const int stretched = pc.resize == MS_RESIZE_STRETCH;
    if ((rc = ms_dev_alloc(&dev, (size_t)256 * g * g * sizeof(float), (void **)&emb))) goto leave;
    if ((rc = image_embedding(&dev, m, &pc, &img, emb_path, emb))) goto leave;
    if (auto_) {
        rc = run_auto(&dev, m, emb, h, w, stretched, &ac, out, json, cand);
        goto leave;
    }
    if (mask_path) { /* the prompt encoder's mask path (mask_downscaling) replaces no_mask_embed */
        if ((rc = read_mask_input(mask_path, 4 * g, &hmask))) goto leave;
        if ((rc = ms_dev_alloc(&dev, (size_t)16 * g * g * sizeof(float), (void **)&dmask))) goto leave;
        if ((rc = ms_dev_from_host(&dev, dmask, hmask, (size_t)16 * g * g * sizeof(float)))) goto leave;
    }

    rc = run_prompted(&dev, &pm, emb, pts, labels, np_, box_s ? box : NULL, dmask, multimask, stretched, h, w, out,
                      logits);
leave:
    free(pts);
    free(labels);
    free(hmask);
    ms_image_free(&img);
    if (dev_ok) {
        if (emb) ms_dev_free(&dev, emb);
        if (dmask) ms_dev_free(&dev, dmask);
    }
    if (model_ok) ms_predict_model_free(&pm);
    if (dev_ok) ms_device_free(&dev);
    return ms_cli_report("segment", rc);
}

const ms_command ms_cmd_segment = {"segment", "zero-shot SAM on a PNG with point/box prompts (mask PNG)", run};
