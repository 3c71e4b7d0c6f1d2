/* tests/finetune/test_sam_decoder.c — prompt encoder + mask decoder against the PyTorch reference (fp64 golden files).
 *
 * tests/finetune/golden/decoder_<case>.pth come from tests/reference/gen_decoder_golden.py: the same counter-based
 * weights and inputs are regenerated here from the stored seed, then every stage is compared (sparse and dense
 * prompt embeddings, transformer tokens and keys, all M masks, IoU) and, for the loss
 * L = Σ masks_sel·Wm + Σ iou_sel·Wi, the gradient of every parameter and of the image embedding.
 * Tolerance: fp32, normwise 1e-4 per tensor (test_sam_decoder_golden.h).
 * A second part uses a fresh seed: one image with two prompts must equal two one-prompt runs, with the image
 * gradient summed (the tiling rule of sam_decoder.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/sam_decoder.h"
#include "ops.h"
#include "test_sam_decoder_golden.h"

typedef struct model {
    ms_params ps;
    ms_sam_prompt pe;
    ms_sam_decoder dec;
} model;

static ms_status model_build(model *m, ms_device *dev, int n_mask_tokens, int h, int w, int img, uint64_t seed)
{
    ms_params_init(&m->ps);
    MS_TRY(ms_sam_prompt_init(&m->pe, &m->ps, "prompt_encoder.", h, w, img));
    MS_TRY(ms_sam_decoder_init(&m->dec, &m->ps, "mask_decoder.", n_mask_tokens, 2, h, w));
    MS_TRY(ms_params_alloc(&m->ps, dev));
    for (int i = 0; i < m->ps.n; i++) {
        const ms_param *p = &m->ps.p[i];
        decoder_weight(ms_params_data(&m->ps, i), p->name, p->shape, p->ndim, seed);
    }
    ms_params_set_trainable(&m->ps, "", 1);
    ms_sam_prompt_freeze_buffers(&m->pe);
    return ms_params_alloc_grads(&m->ps);
}

static void model_free(model *m)
{
    ms_sam_decoder_free(&m->dec);
    ms_params_free(&m->ps);
}

static void run_case(ms_device *dev, const char *name)
{
    char path[1024];
    const char *src = getenv("MS_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/tests/finetune/golden/decoder_%s.pth", src ? src : "../..", name);
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status st = ms_sd_load(path, &sd);
    MS_CHECK(st == MS_OK, "%s: %s", path, ms_errmsg());
    if (st) return;
    const uint64_t seed = (uint64_t)scalar(&sd, "meta.seed");
    const int M = (int)scalar(&sd, "meta.num_mask_tokens"), multimask = (int)scalar(&sd, "meta.multimask");
    const int b_img = (int)scalar(&sd, "meta.b_img"), bp = (int)scalar(&sd, "meta.bp");
    const int h = (int)scalar(&sd, "meta.emb_h"), w = (int)scalar(&sd, "meta.emb_w");
    const int img = (int)scalar(&sd, "meta.img_size"), np_ = (int)scalar(&sd, "meta.n_points");
    const int has_box = (int)scalar(&sd, "meta.has_box"), has_mask = (int)scalar(&sd, "meta.has_mask");
    const int64_t N = (int64_t)h * w, P = 16 * N, B = b_img > bp ? b_img : bp;
    printf("case %s: seed %llu, M %d, b_img %d, bp %d, points %d, box %d, mask %d, multimask %d\n", name,
           (unsigned long long)seed, M, b_img, bp, np_, has_box, has_mask, multimask);

    model m;
    ms_sam_prompt_state pst;
    memset(&pst, 0, sizeof pst);
    float *emb = NULL, *mask = NULL, *pts = NULL, *boxes = NULL, *dmasks = NULL, *diou = NULL, *demb = NULL;
    float *dsparse = NULL, *ddense = NULL, *wm = NULL, *wi = NULL;
    int32_t *labels = NULL;
    st = model_build(&m, dev, M, h, w, img, seed);
    MS_CHECK(st == MS_OK, "model: %s", ms_errmsg());
    if (st) goto leave;

    /* inputs */
    int64_t es[2] = {(int64_t)b_img * 256, N};
    emb = malloc((size_t)(es[0] * es[1]) * sizeof(float));
    ms_counter_init(emb, "input.image_embed", es, 2, seed);
    double s = 0;
    for (int64_t i = 0; i < es[0] * es[1]; i++) s += emb[i];
    MS_CHECK(fabs(s - scalar(&sd, "in.image_embed.sum")) < 1e-6 * (double)(es[0] * es[1]),
             "%s: regenerated image embedding differs from the reference's", name);
    ms_sam_prompts pr = {.bp = bp, .n_points = np_};
    if (has_mask) {
        int64_t ms_[2] = {bp, P};
        mask = malloc((size_t)(bp * P) * sizeof(float));
        ms_counter_init(mask, "input.mask_embed", ms_, 2, seed);
        pr.masks = mask;
    }
    if (np_) {
        const ms_sd_entry *e = get(&sd, "in.points"), *l = get(&sd, "in.labels");
        double *pv = as_double(e), *lv = as_double(l);
        pts = malloc((size_t)bp * np_ * 2 * sizeof(float));
        labels = malloc((size_t)bp * np_ * sizeof(int32_t));
        for (int i = 0; i < bp * np_ * 2; i++) pts[i] = (float)pv[i];
        for (int i = 0; i < bp * np_; i++) labels[i] = (int32_t)lv[i];
        free(pv);
        free(lv);
        pr.points = pts;
        pr.labels = labels;
    }
    if (has_box) {
        double *bv = as_double(get(&sd, "in.boxes"));
        boxes = malloc((size_t)bp * 4 * sizeof(float));
        for (int i = 0; i < bp * 4; i++) boxes[i] = (float)bv[i];
        free(bv);
        pr.boxes = boxes;
    }

    /* forward */
    st = ms_sam_prompt_forward(dev, &m.pe, &pr, &pst);
    MS_CHECK(st == MS_OK, "prompt forward: %s", ms_errmsg());
    if (st) goto leave;
    check(&sd, "out.sparse", pst.sparse, (int64_t)bp * pst.ns * 256, name);
    if (has_mask) check(&sd, "out.dense", pst.dense, (int64_t)bp * 256 * N, name);
    st = ms_sam_decoder_forward(dev, &m.dec, emb, b_img, &pst);
    MS_CHECK(st == MS_OK, "decoder forward: %s", ms_errmsg());
    if (st) goto leave;
    const int64_t T = m.dec.T;
    check(&sd, "out.hs", m.dec.hs, B * T * 256, name);
    check(&sd, "out.keys", m.dec.keys_out, B * N * 256, name);
    check(&sd, "out.masks", m.dec.masks, B * M * P, name);
    check(&sd, "out.iou", m.dec.iou, B * M, name);

    /* loss gradients on the selected outputs */
    const int msel = multimask ? M - 1 : 1, off = multimask ? 1 : 0;
    int64_t nm[1] = {B * msel * P}, ni[1] = {B * msel};
    wm = malloc((size_t)nm[0] * sizeof(float));
    wi = malloc((size_t)ni[0] * sizeof(float));
    ms_counter_init(wm, "loss.masks", nm, 1, seed);
    ms_counter_init(wi, "loss.iou", ni, 1, seed);
    dmasks = calloc((size_t)(B * M * P), sizeof(float));
    diou = calloc((size_t)(B * M), sizeof(float));
    double loss = 0, aloss = 0;
    for (int64_t b = 0; b < B; b++)
        for (int i = 0; i < msel; i++) {
            memcpy(dmasks + (b * M + off + i) * P, wm + (b * msel + i) * P, (size_t)P * sizeof(float));
            diou[b * M + off + i] = wi[b * msel + i];
            for (int64_t p = 0; p < P; p++) {
                double t = (double)m.dec.masks[(b * M + off + i) * P + p] * wm[(b * msel + i) * P + p];
                loss += t;
                aloss += fabs(t);
            }
            loss += (double)m.dec.iou[b * M + off + i] * wi[b * msel + i];
        }
    double rl = scalar(&sd, "out.loss");
    MS_CHECK(fabs(loss - rl) <= TOL * aloss, "%s loss %.9g vs %.9g", name, loss, rl);
    demb = calloc((size_t)(es[0] * es[1]), sizeof(float));
    dsparse = calloc((size_t)((int64_t)bp * (pst.ns ? pst.ns : 1) * 256), sizeof(float));
    if (has_mask) ddense = calloc((size_t)(bp * 256 * N), sizeof(float));
    st = ms_sam_decoder_backward(dev, &m.dec, dmasks, diou, demb, dsparse, ddense);
    MS_CHECK(st == MS_OK, "decoder backward: %s", ms_errmsg());
    if (st) goto leave;
    st = ms_sam_prompt_backward(dev, &m.pe, &pst, dsparse, ddense);
    MS_CHECK(st == MS_OK, "prompt backward: %s", ms_errmsg());
    if (st) goto leave;
    int n_grads = 0;
    for (int i = 0; i < m.ps.n; i++) {
        const ms_param *p = &m.ps.p[i];
        char k[256];
        snprintf(k, sizeof k, "grad.%s", p->name);
        float *g = ms_params_grad(&m.ps, i);
        if (!g) {
            MS_CHECK(!strstr(p->name, "gaussian") || !get(&sd, k), "%s: frozen buffer has a golden gradient", p->name);
            continue;
        }
        char kidx[270];
        snprintf(kidx, sizeof kidx, "%s.idx", k);
        if (!get(&sd, k) && !get(&sd, kidx)) {
            /* PyTorch leaves the grad None for unused parameters (mask_downscaling without a mask). */
            double mx = 0;
            for (int64_t j = 0; j < p->numel; j++) mx = fmax(mx, fabs(g[j]));
            MS_CHECK(mx == 0, "%s %s: gradient %.3g where PyTorch has none", name, p->name, mx);
            continue;
        }
        check(&sd, k, g, p->numel, name);
        n_grads++;
    }
    check(&sd, "grad.image_embed", demb, es[0] * es[1], name);
    printf("case %s: %d parameter gradients compared\n", name, n_grads);
leave:
    free(emb); free(mask); free(pts); free(labels); free(boxes); free(dmasks); free(diou); free(demb);
    free(dsparse); free(ddense); free(wm); free(wi);
    ms_sam_prompt_state_free(dev, &pst);
    model_free(&m);
    ms_sd_free(&sd);
}

static double normwise(const float *a, const float *b, int64_t n)
{
    double e = 0, m = 0;
    for (int64_t i = 0; i < n; i++) { e = fmax(e, fabs((double)a[i] - b[i])); m = fmax(m, fabs((double)b[i])); }
    return m > 0 ? e / m : e;
}

/* Fresh seed: one image + two prompts (image repeated) == each prompt alone; image gradients add up. */
static void check_tiling(ms_device *dev, uint64_t seed)
{
    const int h = 16, w = 16, img = 256, M = 4;
    const int64_t N = (int64_t)h * w, P = 16 * N;
    model m;
    ms_status st = model_build(&m, dev, M, h, w, img, seed);
    MS_CHECK(st == MS_OK, "model: %s", ms_errmsg());
    if (st) { model_free(&m); return; }
    ms_rng r;
    ms_rng_init(&r, seed, 7);
    float emb[256 * 256], pts[2 * 2 * 2], dm[2 * 4 * 4096], di[8], demb2[256 * 256], demb1[256 * 256];
    int32_t lab[4] = {1, 0, 1, 1};
    ms_fill_uniform(emb, 256 * N, &r, -1, 1);
    ms_fill_uniform(pts, 8, &r, 0, (float)img);
    ms_fill_uniform(dm, 2 * M * P, &r, -1, 1);
    ms_fill_uniform(di, 2 * M, &r, -1, 1);
    memset(demb2, 0, sizeof demb2);
    memset(demb1, 0, sizeof demb1);
    ms_sam_prompt_state pst;
    memset(&pst, 0, sizeof pst);
    ms_sam_prompts pr = {.bp = 2, .n_points = 2, .points = pts, .labels = lab};
    float *masks2 = malloc(sizeof(float) * 2 * M * P), iou2[8];
    st = ms_sam_prompt_forward(dev, &m.pe, &pr, &pst);
    if (!st) st = ms_sam_decoder_forward(dev, &m.dec, emb, 1, &pst);
    if (!st) {
        memcpy(masks2, m.dec.masks, sizeof(float) * 2 * M * P);
        memcpy(iou2, m.dec.iou, sizeof iou2);
        st = ms_sam_decoder_backward(dev, &m.dec, dm, di, demb2, NULL, NULL);
    }
    MS_CHECK(st == MS_OK, "tiling, batch of 2: %s", ms_errmsg());
    for (int b = 0; b < 2 && !st; b++) {
        ms_sam_prompts p1 = {.bp = 1, .n_points = 2, .points = pts + 4 * b, .labels = lab + 2 * b};
        st = ms_sam_prompt_forward(dev, &m.pe, &p1, &pst);
        if (!st) st = ms_sam_decoder_forward(dev, &m.dec, emb, 1, &pst);
        if (!st) {
            MS_CHECK(normwise(m.dec.masks, masks2 + (int64_t)b * M * P, M * P) <= 1e-5,
                     "tiling: prompt %d masks differ, %.3g", b, normwise(m.dec.masks, masks2 + (int64_t)b * M * P, M * P));
            MS_CHECK(normwise(m.dec.iou, iou2 + b * M, M) <= 1e-5, "tiling: prompt %d iou differs", b);
            st = ms_sam_decoder_backward(dev, &m.dec, dm + (int64_t)b * M * P, di + b * M, demb1, NULL, NULL);
        }
        MS_CHECK(st == MS_OK, "tiling, prompt %d: %s", b, ms_errmsg());
    }
    /* The batch adds both prompts' contributions inside each reduction, the single runs add them afterwards: float
     * rounding over reductions thousands long (up to n * 6e-8 ~ 2e-4 at n = 4096), measured up to 1.3e-5 over seeds;
     * a tiling bug gives errors of order 1. */
    MS_CHECK(normwise(demb2, demb1, 256 * N) <= 1e-4, "tiling: image gradient of the batch != sum of single runs, %.3g",
             normwise(demb2, demb1, 256 * N));
    free(masks2);
    ms_sam_prompt_state_free(dev, &pst);
    model_free(&m);
}

/* Frozen parameters (no gradient memory) still pass the input gradient: the image-embedding gradient of a fully
 * frozen decoder equals the trainable one's, and no parameter gradient exists. */
static void check_frozen(ms_device *dev, uint64_t seed)
{
    const int h = 16, w = 16, img = 256, M = 4;
    const int64_t N = (int64_t)h * w, P = 16 * N;
    model m;
    ms_status st = model_build(&m, dev, M, h, w, img, seed);
    MS_CHECK(st == MS_OK, "model: %s", ms_errmsg());
    if (st) { model_free(&m); return; }
    ms_rng r;
    ms_rng_init(&r, seed, 9);
    static float emb[256 * 256], dm[4 * 4096], g1[256 * 256], g2[256 * 256];
    float pts[2] = {100.f, 60.f}, di[4];
    int32_t lab[1] = {1};
    ms_fill_uniform(emb, 256 * N, &r, -1, 1);
    ms_fill_uniform(dm, M * P, &r, -1, 1);
    ms_fill_uniform(di, M, &r, -1, 1);
    memset(g1, 0, sizeof g1);
    memset(g2, 0, sizeof g2);
    ms_sam_prompt_state pst;
    memset(&pst, 0, sizeof pst);
    ms_sam_prompts pr = {.bp = 1, .n_points = 1, .points = pts, .labels = lab};
    for (int pass = 0; pass < 2 && !st; pass++) {
        if (pass == 1) {
            ms_params_set_trainable(&m.ps, "", 0);
            st = ms_params_alloc_grads(&m.ps);
            int any = 0;
            for (int i = 0; i < m.ps.n; i++) any |= ms_params_grad(&m.ps, i) != NULL;
            MS_CHECK(!any && m.ps.grad == NULL, "frozen model still has gradient memory");
        }
        if (!st) st = ms_sam_prompt_forward(dev, &m.pe, &pr, &pst);
        if (!st) st = ms_sam_decoder_forward(dev, &m.dec, emb, 1, &pst);
        if (!st) st = ms_sam_decoder_backward(dev, &m.dec, dm, di, pass ? g2 : g1, NULL, NULL);
        MS_CHECK(st == MS_OK, "frozen pass %d: %s", pass, ms_errmsg());
    }
    MS_CHECK(normwise(g2, g1, 256 * N) <= 1e-6, "frozen: image gradient differs (%.3g)", normwise(g2, g1, 256 * N));
    ms_sam_prompt_state_free(dev, &pst);
    model_free(&m);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_device dev;
    memset(&dev, 0, sizeof dev);
    if (ms_device_init(&dev, MS_DEV_CPU, 0)) { printf("device: %s\n", ms_errmsg()); return 1; }
    const char *cases[] = {"points", "box", "mask", "cls3", "cls5"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&dev, cases[i]);
    printf("largest normwise error: %.3g (%s)\n", worst_err, worst_key);
    check_tiling(&dev, seed);
    check_frozen(&dev, seed);
    ms_device_free(&dev);
    return ms_test_done();
}
