/* tests/finetune/test_peft_decoder.c — LoRA, adapters and extra output heads in SAM's mask decoder.
 *
 * (a) golden: tests/finetune/golden/peft_decoder_lora_adapter.pth from tests/reference/peft_ref_decoder.py
 *     (finetune-SAM's _LoRA_qkv_proj and adapter TwoWayAttentionBlock in PyTorch, float64). LoRA rank 4 on every
 *     q/v projection with w_b ≠ 0, adapters in both layers, num_cls 3 (M = 4), no prompt, image batch 2, 8×8 grid.
 *     The same counter-based weights are regenerated here; masks, IoU, the loss, every parameter gradient and the
 *     image-embedding gradient are compared (normwise 1e-4, test_sam_decoder_golden.h). A second pass freezes
 *     everything but the PEFT tensors: same PEFT and image gradients, no base gradient memory.
 * (b) two heads (M = 4 under SAM's keys, M = 3 under "tasks.t1.mask_decoder."): heads 1, 0, 1 in turn (forward +
 *     backward) must equal fresh single-head decoders holding those head weights, and gradients must land in the
 *     used head's tensors only (also when the head is switched between forward and backward). A plain SAM
 *     state dict loads into that model (PEFT tensors and head 1 are optional).
 * (c) ms_sam_decoder_peft_init_random: w_b = 0 gives exactly the base decoder's outputs and image gradient (and a
 *     zero w_a gradient); value ranges of the PEFT and head initialisers.
 * Fresh seed (printed) for (b), (c); the golden case has its own stored seed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "finetune/sam_decoder.h"
#include "ops.h"
#include "test_sam_decoder_golden.h"

#define HEAD1 "tasks.t1.mask_decoder."

typedef struct model {
    ms_params ps;
    ms_sam_prompt pe;
    ms_sam_decoder dec;
    int head1; /* id of the extra head, or -1 */
} model;

static int is_peft(const char *name)
{
    return strstr(name, ".w_a.") || strstr(name, ".w_b.") || strstr(name, "Adapter.");
}

static int is_head(const char *name)
{
    return strstr(name, "mask_tokens.") || strstr(name, "output_hypernetworks_mlps.") ||
           strstr(name, "iou_prediction_head.");
}

/* pf NULL: no PEFT; m1 > 0: an extra head with m1 tokens. Weights: decoder_weight by name. */
static ms_status model_build(model *m, ms_device *dev, int M, int h, int w, const ms_sam_dec_peft *pf, int m1,
                             uint64_t seed)
{
    memset(m, 0, sizeof *m);
    ms_params_init(&m->ps);
    m->head1 = -1;
    MS_TRY(ms_sam_prompt_init(&m->pe, &m->ps, "prompt_encoder.", h, w, 16 * h));
    MS_TRY(ms_sam_decoder_init(&m->dec, &m->ps, "mask_decoder.", M, 2, h, w));
    if (pf) MS_TRY(ms_sam_decoder_add_peft(&m->dec, pf));
    if (m1) {
        m->head1 = ms_sam_decoder_add_head(&m->dec, HEAD1, m1);
        MS_FAIL_IF(m->head1 < 0, MS_EINVAL, "add_head: %s", ms_errmsg());
    }
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

/* No prompt: sparse empty, dense = no_mask_embed; one image batch b_img, tokens tiled over it. */
static ms_status fwd_bwd(ms_device *dev, model *m, ms_sam_prompt_state *pst, const float *emb, int b_img,
                         const float *dm, const float *di, float *demb)
{
    ms_sam_prompts pr = {.bp = 1};
    MS_TRY(ms_sam_prompt_forward(dev, &m->pe, &pr, pst));
    MS_TRY(ms_sam_decoder_forward(dev, &m->dec, emb, b_img, pst));
    if (!dm && !di) return MS_OK;
    return ms_sam_decoder_backward(dev, &m->dec, dm, di, demb, NULL, NULL);
}

static double normwise(const float *a, const float *b, int64_t n)
{
    double e = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) { e = fmax(e, fabs((double)a[i] - b[i])); mx = fmax(mx, fabs((double)b[i])); }
    return mx > 0 ? e / mx : e;
}

static double max_abs(const float *a, int64_t n)
{
    double mx = 0;
    for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)a[i]));
    return mx;
}

/* ---- (a) golden ------------------------------------------------------------------------------------------- */

static void golden_case(ms_device *dev)
{
    char path[1024];
    const char *src = getenv("MS_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/tests/finetune/golden/peft_decoder_lora_adapter.pth", src ? src : "../..");
    const char *cs = "lora_adapter";
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status st = ms_sd_load(path, &sd);
    MS_CHECK(st == MS_OK, "%s: %s", path, ms_errmsg());
    if (st) return;
    const uint64_t seed = (uint64_t)scalar(&sd, "meta.seed");
    const int M = (int)scalar(&sd, "meta.num_mask_tokens"), b_img = (int)scalar(&sd, "meta.b_img");
    const int h = (int)scalar(&sd, "meta.emb_h"), w = (int)scalar(&sd, "meta.emb_w");
    ms_sam_dec_peft pf = {.lora_rank = (int)scalar(&sd, "meta.lora_rank"), .adapters = (int)scalar(&sd, "meta.adapters"),
                          .adapter_scale = (float)scalar(&sd, "meta.adapter_scale")};
    const int64_t N = (int64_t)h * w, P = 16 * N, B = b_img, msel = M - 1;
    printf("golden %s: seed %llu, M %d, b_img %d, grid %dx%d, rank %d, adapters %d\n", cs, (unsigned long long)seed,
           M, b_img, h, w, pf.lora_rank, pf.adapters);
    model m;
    ms_sam_prompt_state pst;
    memset(&pst, 0, sizeof pst);
    int64_t es[2] = {(int64_t)b_img * 256, N}, nm[1] = {B * msel * P}, ni[1] = {B * msel};
    float *emb = malloc((size_t)(es[0] * es[1]) * sizeof(float)), *demb = calloc((size_t)(es[0] * es[1]), sizeof(float));
    float *demb2 = calloc((size_t)(es[0] * es[1]), sizeof(float));
    float *wm = malloc((size_t)nm[0] * sizeof(float)), *wi = malloc((size_t)ni[0] * sizeof(float));
    float *dm = calloc((size_t)(B * M * P), sizeof(float)), *di = calloc((size_t)(B * M), sizeof(float));
    st = model_build(&m, dev, M, h, w, &pf, 0, seed);
    MS_CHECK(st == MS_OK, "model: %s", ms_errmsg());
    if (st) goto leave;
    ms_counter_init(emb, "input.image_embed", es, 2, seed);
    double s = 0;
    for (int64_t i = 0; i < es[0] * es[1]; i++) s += emb[i];
    MS_CHECK(fabs(s - scalar(&sd, "in.image_embed.sum")) < 1e-6 * (double)(es[0] * es[1]), "image embedding differs");
    ms_counter_init(wm, "loss.masks", nm, 1, seed);
    ms_counter_init(wi, "loss.iou", ni, 1, seed);
    for (int64_t b = 0; b < B; b++)
        for (int i = 0; i < msel; i++) {
            memcpy(dm + (b * M + 1 + i) * P, wm + (b * msel + i) * P, (size_t)P * sizeof(float));
            di[b * M + 1 + i] = wi[b * msel + i];
        }

    double t0 = ms_now_s();
    st = fwd_bwd(dev, &m, &pst, emb, b_img, NULL, NULL, NULL);
    double t1 = ms_now_s();
    MS_CHECK(st == MS_OK, "forward: %s", ms_errmsg());
    if (st) goto leave;
    check(&sd, "out.masks", m.dec.masks, B * M * P, cs);
    check(&sd, "out.iou", m.dec.iou, B * M, cs);
    double loss = 0, aloss = 0;
    for (int64_t i = 0; i < B * M * P; i++) { loss += (double)m.dec.masks[i] * dm[i]; aloss += fabs((double)m.dec.masks[i] * dm[i]); }
    for (int64_t i = 0; i < B * M; i++) loss += (double)m.dec.iou[i] * di[i];
    MS_CHECK(fabs(loss - scalar(&sd, "out.loss")) <= TOL * aloss, "loss %.9g vs %.9g", loss, scalar(&sd, "out.loss"));
    st = ms_sam_decoder_backward(dev, &m.dec, dm, di, demb, NULL, NULL);
    double t2 = ms_now_s();
    MS_CHECK(st == MS_OK, "backward: %s", ms_errmsg());
    if (st) goto leave;
    printf("golden %s: forward %.1f ms, backward %.1f ms\n", cs, 1e3 * (t1 - t0), 1e3 * (t2 - t1));
    int n_peft = 0, n_base = 0;
    for (int i = 0; i < m.ps.n; i++) {
        const ms_param *p = &m.ps.p[i];
        char k[256], ki[270];
        snprintf(k, sizeof k, "grad.%s", p->name);
        snprintf(ki, sizeof ki, "%s.idx", k);
        float *g = ms_params_grad(&m.ps, i);
        if (!g) continue;
        if (!get(&sd, k) && !get(&sd, ki)) { /* PyTorch: None for unused tensors (point embeddings, mask path) */
            MS_CHECK(is_peft(p->name) == 0 && max_abs(g, p->numel) == 0, "%s: gradient where PyTorch has none",
                     p->name);
            continue;
        }
        check(&sd, k, g, p->numel, cs);
        if (is_peft(p->name)) n_peft++;
        else n_base++;
    }
    MS_CHECK(n_peft == 7 * 4 + 2 * 8, "%d PEFT gradients compared, expected 44", n_peft);
    check(&sd, "grad.image_embed", demb, es[0] * es[1], cs);
    printf("golden %s: %d PEFT + %d base gradients compared; largest normwise error so far %.3g (%s)\n", cs, n_peft,
           n_base, worst_err, worst_key);

    /* Only the PEFT tensors trainable: the frozen base passes activation gradients through, costs no memory. */
    for (int i = 0; i < m.ps.n; i++) m.ps.p[i].trainable = is_peft(m.ps.p[i].name) != 0;
    st = ms_params_alloc_grads(&m.ps);
    if (!st) st = fwd_bwd(dev, &m, &pst, emb, b_img, dm, di, demb2);
    MS_CHECK(st == MS_OK, "PEFT-only pass: %s", ms_errmsg());
    if (st) goto leave;
    int n_frozen_peft = 0;
    for (int i = 0; i < m.ps.n; i++) {
        const ms_param *p = &m.ps.p[i];
        char k[256];
        snprintf(k, sizeof k, "grad.%s", p->name);
        float *g = ms_params_grad(&m.ps, i);
        if (!is_peft(p->name)) { MS_CHECK(g == NULL, "%s: frozen tensor has a gradient", p->name); continue; }
        check(&sd, k, g, p->numel, "lora_adapter (PEFT only)");
        n_frozen_peft++;
    }
    MS_CHECK(n_frozen_peft == 44, "%d PEFT tensors", n_frozen_peft);
    check(&sd, "grad.image_embed", demb2, es[0] * es[1], "lora_adapter (PEFT only)");
    printf("golden %s: PEFT-only pass checked; largest normwise error %.3g (%s)\n", cs, worst_err, worst_key);
leave:
    free(emb); free(demb); free(demb2); free(wm); free(wi); free(dm); free(di);
    ms_sam_prompt_state_free(dev, &pst);
    model_free(&m);
    ms_sd_free(&sd);
}

/* ---- (b) two heads ---------------------------------------------------------------------------------------- */

typedef struct single_run {
    float *masks, *iou, *demb;
} single_run;

/* The name a tensor of the two-head model has in the single-head model of `head` ("" when it has none). */
static const char *single_name(const char *name, int head)
{
    const size_t n1 = strlen(HEAD1);
    if (!strncmp(name, HEAD1, n1)) return head == 1 ? name + n1 - strlen("mask_decoder.") : "";
    if (is_head(name) && head == 1) return "";
    return name;
}

static void two_heads(ms_device *dev, uint64_t seed)
{
    const int h = 8, w = 8, b_img = 2, Ms[2] = {4, 3};
    const int64_t N = (int64_t)h * w, P = 16 * N, ne = (int64_t)b_img * 256 * N;
    const ms_sam_dec_peft pf = {.lora_rank = 4, .adapters = 1, .adapter_scale = 0.5f};
    model mh, s[2];
    memset(s, 0, sizeof s);
    ms_sam_prompt_state pst;
    memset(&pst, 0, sizeof pst);
    single_run ref[2];
    memset(ref, 0, sizeof ref);
    float *emb = malloc((size_t)ne * sizeof(float)), *demb = malloc((size_t)ne * sizeof(float));
    float *dm = malloc((size_t)(b_img * 4 * P) * sizeof(float)), di[2 * 4];
    ms_rng r;
    ms_rng_init(&r, seed, 21);
    ms_fill_uniform(emb, ne, &r, -1, 1);
    ms_fill_uniform(dm, b_img * 4 * P, &r, -1, 1);
    ms_fill_uniform(di, b_img * 4, &r, -1, 1);
    ms_status st = model_build(&mh, dev, Ms[0], h, w, &pf, Ms[1], seed);
    MS_CHECK(st == MS_OK && mh.head1 == 1 && mh.dec.n_out_heads == 2, "two-head model: %s", ms_errmsg());
    if (st) { model_free(&mh); goto leave; }
    /* the API's error paths */
    MS_CHECK(ms_sam_decoder_add_head(&mh.dec, "tasks.t2.mask_decoder.", 3) == -1, "add_head after alloc accepted");
    MS_CHECK(ms_sam_decoder_use_head(&mh.dec, 2) != MS_OK, "use_head(2) of 2 heads accepted");
    MS_CHECK(ms_sam_decoder_add_peft(&mh.dec, &pf) != MS_OK, "second add_peft accepted");
    {
        const ms_sam_dec_head *h1 = &mh.dec.out_heads[1];
        MS_CHECK(h1->n_mask_tokens == 3 && mh.ps.p[h1->mask_tokens].optional &&
                     !strcmp(mh.ps.p[h1->mask_tokens].name, HEAD1 "mask_tokens.weight") &&
                     mh.ps.p[h1->iou_w[2]].shape[0] == 3 && mh.ps.p[h1->hyp_b[2][2]].optional,
                 "head 1 registration (%s)", mh.ps.p[h1->mask_tokens].name);
    }
    /* single-head references with the same weights */
    for (int hd = 0; hd < 2 && !st; hd++) {
        st = model_build(&s[hd], dev, Ms[hd], h, w, &pf, 0, seed);
        for (int i = 0; i < s[hd].ps.n && !st; i++) {
            const ms_param *p = &s[hd].ps.p[i];
            char nm[MS_PARAM_NAME_MAX + 32];
            snprintf(nm, sizeof nm, "%s%s", hd == 1 && is_head(p->name) ? "tasks.t1." : "", p->name);
            int j = ms_params_find(&mh.ps, nm);
            if (j < 0) { st = ms_error(MS_ENOTFOUND, "%s not in the two-head model", nm); break; }
            memcpy(ms_params_data(&s[hd].ps, i), ms_params_data(&mh.ps, j), (size_t)p->numel * sizeof(float));
        }
        const int64_t nmk = (int64_t)b_img * Ms[hd] * P;
        ref[hd].masks = malloc((size_t)nmk * sizeof(float));
        ref[hd].iou = malloc((size_t)(b_img * Ms[hd]) * sizeof(float));
        ref[hd].demb = calloc((size_t)ne, sizeof(float));
        if (!st) st = fwd_bwd(dev, &s[hd], &pst, emb, b_img, NULL, NULL, NULL);
        if (!st) {
            memcpy(ref[hd].masks, s[hd].dec.masks, (size_t)nmk * sizeof(float));
            memcpy(ref[hd].iou, s[hd].dec.iou, (size_t)(b_img * Ms[hd]) * sizeof(float));
            st = ms_sam_decoder_backward(dev, &s[hd].dec, dm, di, ref[hd].demb, NULL, NULL);
        }
        MS_CHECK(st == MS_OK, "single head %d: %s", hd, ms_errmsg());
    }
    /* heads 1, 0, 1; the last round switches to head 0 between forward and backward */
    const int order[4] = {1, 0, 1, 1};
    for (int k = 0; k < 4 && !st; k++) {
        const int hd = order[k], M = Ms[hd];
        st = ms_sam_decoder_use_head(&mh.dec, hd);
        if (!st) st = ms_params_zero_grads(&mh.ps);
        memset(demb, 0, (size_t)ne * sizeof(float));
        if (!st) st = fwd_bwd(dev, &mh, &pst, emb, b_img, NULL, NULL, NULL);
        if (!st && k == 3) st = ms_sam_decoder_use_head(&mh.dec, 0);
        if (!st) st = ms_sam_decoder_backward(dev, &mh.dec, dm, di, demb, NULL, NULL);
        MS_CHECK(st == MS_OK, "round %d (head %d): %s", k, hd, ms_errmsg());
        if (st) break;
        double em = normwise(mh.dec.masks, ref[hd].masks, (int64_t)b_img * M * P);
        double ei = normwise(mh.dec.iou, ref[hd].iou, b_img * M);
        double eg = normwise(demb, ref[hd].demb, ne);
        MS_CHECK(mh.dec.M == M && em <= 1e-6 && ei <= 1e-6 && eg <= 1e-6,
                 "round %d (head %d): M %d, masks %.3g, iou %.3g, image grad %.3g", k, hd, mh.dec.M, em, ei, eg);
        int n_cmp = 0, n_zero = 0;
        double worst = 0;
        for (int i = 0; i < mh.ps.n; i++) {
            const ms_param *p = &mh.ps.p[i];
            const float *g = ms_params_grad(&mh.ps, i);
            if (!g) continue;
            const char *sn = single_name(p->name, hd);
            if (!*sn) {
                MS_CHECK(max_abs(g, p->numel) == 0, "round %d (head %d): %s has a gradient", k, hd, p->name);
                n_zero++;
                continue;
            }
            int j = ms_params_find(&s[hd].ps, sn);
            const float *gr = j >= 0 ? ms_params_grad(&s[hd].ps, j) : NULL;
            MS_CHECK(gr != NULL, "round %d: %s (%s) not in the single-head model", k, p->name, sn);
            if (!gr) continue;
            double e = normwise(g, gr, p->numel);
            worst = fmax(worst, e);
            MS_CHECK(e <= 1e-6, "round %d (head %d): %s gradient differs, %.3g", k, hd, p->name, e);
            n_cmp++;
        }
        printf("two heads, round %d: head %d (M %d): outputs %.3g/%.3g, %d gradients equal (worst %.3g), %d zero\n", k,
               hd, M, em, ei, n_cmp, worst, n_zero);
    }
    MS_CHECK(st == MS_OK, "two heads: %s", ms_errmsg());
    /* A plain SAM state dict (no PEFT, no head 1) loads into the two-head PEFT model: those tensors are optional. */
    if (!st) {
        model plain;
        ms_state_dict sd;
        ms_sd_init(&sd);
        st = model_build(&plain, dev, Ms[0], h, w, NULL, 0, seed + 1);
        if (!st) st = ms_params_to_sd(&plain.ps, &sd);
        if (!st) st = ms_params_load(&mh.ps, &sd, "");
        MS_CHECK(st == MS_OK, "plain SAM decoder into the two-head PEFT model: %s", ms_errmsg());
        if (!st) {
            const int i0 = mh.dec.out_heads[0].mask_tokens, j0 = plain.dec.out_heads[0].mask_tokens;
            MS_CHECK(!memcmp(ms_params_data(&mh.ps, i0), ms_params_data(&plain.ps, j0), 256 * Ms[0] * sizeof(float)),
                     "plain load: head 0 mask tokens not loaded");
        }
        ms_sd_free(&sd);
        model_free(&plain);
    }
    model_free(&mh);
leave:
    for (int hd = 0; hd < 2; hd++) {
        model_free(&s[hd]);
        free(ref[hd].masks); free(ref[hd].iou); free(ref[hd].demb);
    }
    free(emb); free(demb); free(dm);
    ms_sam_prompt_state_free(dev, &pst);
}

/* ---- (c) initialisers ------------------------------------------------------------------------------------- */

static void check_range(const ms_params *ps, int idx, float bound, const char *what)
{
    const ms_param *p = &ps->p[idx];
    const float *v = ms_params_data(ps, idx);
    double mx = max_abs(v, p->numel), s2 = 0;
    for (int64_t i = 0; i < p->numel; i++) s2 += (double)v[i] * v[i];
    double sd = sqrt(s2 / (double)p->numel), want = bound / sqrt(3.0); /* U(±b): σ = b/√3 */
    MS_CHECK(mx <= bound && mx > 0.9 * bound && fabs(sd - want) < 0.25 * want, "%s %s: max %.4g, σ %.4g (U(±%.4g))",
             what, p->name, mx, sd, bound);
}

static void init_checks(ms_device *dev, uint64_t seed)
{
    const int h = 8, w = 8, b_img = 2, M = 4;
    const int64_t N = (int64_t)h * w, P = 16 * N, ne = (int64_t)b_img * 256 * N;
    const ms_sam_dec_peft lora = {.lora_rank = 4, .adapters = 0, .adapter_scale = 0.5f};
    model base, lm;
    ms_sam_prompt_state pst;
    memset(&pst, 0, sizeof pst);
    float *emb = malloc((size_t)ne * sizeof(float)), *dm = malloc((size_t)(b_img * M * P) * sizeof(float));
    float *g0 = calloc((size_t)ne, sizeof(float)), *g1 = calloc((size_t)ne, sizeof(float));
    float *masks0 = malloc((size_t)(b_img * M * P) * sizeof(float)), di[2 * 4], iou0[2 * 4];
    ms_rng r;
    ms_rng_init(&r, seed, 31);
    ms_fill_uniform(emb, ne, &r, -1, 1);
    ms_fill_uniform(dm, b_img * M * P, &r, -1, 1);
    ms_fill_uniform(di, b_img * M, &r, -1, 1);
    ms_status st = model_build(&base, dev, M, h, w, NULL, 0, seed);
    if (!st) st = model_build(&lm, dev, M, h, w, &lora, 0, seed);
    MS_CHECK(st == MS_OK, "models: %s", ms_errmsg());
    if (st) goto leave;
    MS_CHECK(base.dec.layer[0].self.lq_a == -1 && base.dec.fin.lv_b == -1 && base.dec.layer[1].ad_w1 == -1 &&
                 base.dec.layer[1].ma_b2 == -1 && base.dec.n_out_heads == 1 && base.dec.active_out_head == 0,
             "base decoder: PEFT indices not -1 / head table");
    st = ms_sam_decoder_peft_init_random(&lm.dec, seed);
    MS_CHECK(st == MS_OK, "peft_init_random: %s", ms_errmsg());
    int n_lora = 0;
    for (int i = 0; i < lm.ps.n && !st; i++) {
        const ms_param *p = &lm.ps.p[i];
        if (strstr(p->name, ".w_b.")) {
            MS_CHECK(max_abs(ms_params_data(&lm.ps, i), p->numel) == 0 && p->optional, "%s: not 0 / not optional", p->name);
            n_lora++;
        } else if (strstr(p->name, ".w_a.")) {
            check_range(&lm.ps, i, 1.f / 16.f, "LoRA A");
            MS_CHECK(p->optional && p->shape[0] == 4 && p->shape[1] == 256, "%s: shape / optional", p->name);
        }
    }
    MS_CHECK(n_lora == 14, "%d LoRA B tensors, expected 14", n_lora);
    if (!st) st = fwd_bwd(dev, &base, &pst, emb, b_img, dm, di, g0);
    if (!st) {
        memcpy(masks0, base.dec.masks, (size_t)(b_img * M * P) * sizeof(float));
        memcpy(iou0, base.dec.iou, sizeof iou0);
        st = fwd_bwd(dev, &lm, &pst, emb, b_img, dm, di, g1);
    }
    MS_CHECK(st == MS_OK, "forward/backward: %s", ms_errmsg());
    if (!st) {
        double em = normwise(lm.dec.masks, masks0, b_img * M * P), ei = normwise(lm.dec.iou, iou0, b_img * M);
        double eg = normwise(g1, g0, ne);
        MS_CHECK(em == 0 && ei == 0 && eg <= 1e-6, "w_b = 0: masks %.3g, iou %.3g, image grad %.3g from the base", em,
                 ei, eg);
        double ga = 0, gb = 0;
        for (int i = 0; i < lm.ps.n; i++) {
            const ms_param *p = &lm.ps.p[i];
            if (strstr(p->name, ".w_a.")) ga = fmax(ga, max_abs(ms_params_grad(&lm.ps, i), p->numel));
            if (strstr(p->name, ".w_b.")) gb = fmax(gb, max_abs(ms_params_grad(&lm.ps, i), p->numel));
        }
        MS_CHECK(ga == 0 && gb > 0, "w_b = 0: |grad w_a| %.3g (want 0), |grad w_b| %.3g (want > 0)", ga, gb);
        printf("peft_init_random: outputs vs base %.3g/%.3g, image grad %.3g, |grad w_b| %.3g\n", em, ei, eg, gb);
    }
    model_free(&lm);

    /* adapters and an extra head: PyTorch's defaults, deterministic in the seed */
    const ms_sam_dec_peft ad = {.lora_rank = 0, .adapters = 1, .adapter_scale = 0.5f};
    st = model_build(&lm, dev, M, h, w, &ad, 5, seed);
    if (!st) st = ms_sam_decoder_peft_init_random(&lm.dec, seed);
    if (!st) st = ms_sam_decoder_head_init_random(&lm.dec, lm.head1, seed);
    MS_CHECK(st == MS_OK, "adapter / head init: %s", ms_errmsg());
    if (!st) {
        const ms_sam_dec_layer_params *L = &lm.dec.layer[1];
        check_range(&lm.ps, L->ad_w1, 1.f / 16.f, "Adapter");
        check_range(&lm.ps, L->ad_b1, 1.f / 16.f, "Adapter");
        check_range(&lm.ps, L->ma_w2, 1.f / 8.f, "MLP_Adapter");
        check_range(&lm.ps, L->ma_b2, 1.f / 8.f, "MLP_Adapter");
        MS_CHECK(lm.ps.p[L->ad_b1].no_decay && !lm.ps.p[L->ad_w1].no_decay && lm.ps.p[L->ma_w1].optional,
                 "adapter flags");
        const ms_sam_dec_head *hd = &lm.dec.out_heads[lm.head1];
        const ms_param *mt = &lm.ps.p[hd->mask_tokens];
        const float *v = ms_params_data(&lm.ps, hd->mask_tokens);
        double s = 0, s2 = 0;
        for (int64_t i = 0; i < mt->numel; i++) { s += v[i]; s2 += (double)v[i] * v[i]; }
        double mean = s / (double)mt->numel, sd = sqrt(s2 / (double)mt->numel - mean * mean);
        MS_CHECK(mt->numel == 5 * 256 && fabs(mean) < 0.15 && fabs(sd - 1) < 0.1, "head mask tokens: mean %.3g, σ %.3g",
                 mean, sd);
        check_range(&lm.ps, hd->hyp_w[4][2], 1.f / 16.f, "head");
        check_range(&lm.ps, hd->iou_w[2], 1.f / 16.f, "head");
        /* the same seed gives the same values; SAM's own head is untouched */
        float first = v[7], base_mt = ms_params_data(&lm.ps, lm.dec.out_heads[0].mask_tokens)[7];
        st = ms_sam_decoder_head_init_random(&lm.dec, lm.head1, seed);
        MS_CHECK(st == MS_OK && v[7] == first, "head init not deterministic");
        st = ms_sam_decoder_head_init_random(&lm.dec, lm.head1, seed + 1);
        MS_CHECK(st == MS_OK && v[7] != first, "head init ignores the seed");
        MS_CHECK(ms_params_data(&lm.ps, lm.dec.out_heads[0].mask_tokens)[7] == base_mt, "head 0 changed");
        MS_CHECK(ms_sam_decoder_head_init_random(&lm.dec, 9, seed) != MS_OK, "head_init_random(9) accepted");
    }
    model_free(&lm);
leave:
    model_free(&base);
    free(emb); free(dm); free(g0); free(g1); free(masks0);
    ms_sam_prompt_state_free(dev, &pst);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_device dev;
    memset(&dev, 0, sizeof dev);
    if (ms_device_init(&dev, MS_DEV_CPU, 1)) { printf("device: %s\n", ms_errmsg()); return 1; }
    double t0 = ms_now_s();
    golden_case(&dev);
    double t1 = ms_now_s();
    two_heads(&dev, seed);
    double t2 = ms_now_s();
    init_checks(&dev, seed);
    printf("times: golden %.2f s, two heads %.2f s, init %.2f s\n", t1 - t0, t2 - t1, ms_now_s() - t2);
    printf("largest normwise error vs PyTorch: %.3g (%s)\n", worst_err, worst_key);
    ms_device_free(&dev);
    return ms_test_done();
}
