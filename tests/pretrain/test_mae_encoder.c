/* tests/pretrain/test_mae_encoder.c — SAM's encoder on a token subset (MAE), docs/MAE.md §Encoder on the visible
 * tokens:
 *  1. mask ratio 0 (every token and pad slot kept) gives the dense forward's last-block tokens (relative error in
 *     norm <= 1e-5; elementwise <= 1e-3 of the largest value, as keys are summed in another order);
 *  2. with a real mask, pixels of hidden patches do not change the output (nothing leaks from hidden tokens);
 *  3. the subset backward against central finite differences of the subset forward (parameters and input);
 *  4. at an input size other than the native one (interpolated position tables): the dense backward against finite
 *     differences, the master tables receiving the gradient; the subset path runs at that size too.
 * Small odd config: 7×7 tokens, window 4 (so windows are padded), one global block, random weights everywhere. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pretrain/mae_mask.h"
#include "pretrain/sam_encoder.h"

static ms_sam_enc_subset subset_of(const ms_mae_mask *m)
{
    ms_sam_enc_subset s = {m->n_keep[0], m->n_keep_max, m->n_pad_max, m->keep, m->win_keep_off, m->pad,
                           m->win_pad_off};
    return s;
}

typedef struct {
    ms_sam_encoder *enc;
    float *x, *G;
    ms_sam_enc_subset s;
    int B;
    int64_t n_out;
} ctx_t;

static double loss_of(ctx_t *c)
{
    const float *t;
    if (ms_sam_encoder_forward_subset(c->enc, c->x, c->B, &c->s, &t)) return NAN;
    double acc = 0;
    for (int64_t i = 0; i < c->n_out; i++) acc += (double)t[i] * c->G[i];
    return acc;
}

static double probe(ctx_t *c, float *v, float h)
{
    float v0 = *v;
    *v = v0 + h;
    double lp = loss_of(c);
    *v = v0 - h;
    double lm = loss_of(c);
    *v = v0;
    return (lp - lm) / (2.0 * h);
}

/* 4. The encoder run at 80 px (5x5 grid) from the 112-px (7x7) masters: bicubic pos_embed, linear global rel-pos
 * tables; gradients of the interpolated tables against finite differences, and a subset forward at that size. */
static void check_other_size(ms_sam_encoder *enc, ms_params *ps, ms_device *dev, ms_rng *r, uint64_t seed, int B)
{
    ms_sam_encoder_free(enc);
    MS_CHECK(ms_sam_encoder_set_input_size(enc, 72) == MS_EINVAL, "input size not a multiple of the patch refused");
    MS_CHECK_OK(ms_sam_encoder_set_input_size(enc, 80));
    MS_CHECK_OK(ms_sam_encoder_reserve(enc, dev, B, 1));
    const int S2 = 80, g2 = 5;
    float *x3 = malloc(sizeof(float) * B * 3 * S2 * S2), *emb2 = malloc(sizeof(float) * B * 16 * g2 * g2);
    float *G2 = malloc(sizeof(float) * B * 16 * g2 * g2);
    ms_fill_uniform(x3, (int64_t)B * 3 * S2 * S2, r, -1.f, 1.f);
    ms_fill_uniform(G2, (int64_t)B * 16 * g2 * g2, r, -1.f, 1.f);
    MS_CHECK_OK(ms_sam_encoder_forward(enc, x3, B, emb2));
    MS_CHECK_OK(ms_params_zero_grads(ps));
    MS_CHECK_OK(ms_sam_encoder_backward(enc, G2, NULL));
    const char *probe_names[] = {"image_encoder.pos_embed", "image_encoder.blocks.1.attn.rel_pos_h",
                                 "image_encoder.blocks.1.attn.rel_pos_w", "image_encoder.blocks.0.attn.rel_pos_h",
                                 "image_encoder.patch_embed.proj.weight", "image_encoder.neck.2.weight"};
    double worst2 = 0;
    const char *wn2 = "";
    for (int k = 0; k < 6; k++) {
        int pi = ms_params_find(ps, probe_names[k]);
        MS_CHECK(pi >= 0, "%s registered", probe_names[k]);
        if (pi < 0) continue;
        float *gk = ms_params_grad(ps, pi), *wk = ms_params_data(ps, pi);
        double gmax = 0;
        for (int64_t i = 0; i < ps->p[pi].numel; i++) gmax = fmax(gmax, fabs(gk[i]));
        for (int t = 0; t < 4; t++) {
            int64_t i = (int64_t)ms_rng_below(r, (uint64_t)ps->p[pi].numel);
            float v0 = wk[i];
            double l[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                wk[i] = v0 + (sgn ? -1e-2f : 1e-2f);
                MS_CHECK_OK(ms_sam_encoder_forward(enc, x3, B, emb2));
                l[sgn] = 0;
                for (int64_t j = 0; j < (int64_t)B * 16 * g2 * g2; j++) l[sgn] += (double)emb2[j] * G2[j];
            }
            wk[i] = v0;
            double fd = (l[0] - l[1]) / 2e-2, err = fabs(fd - gk[i]) / (fabs(fd) + 0.05 * gmax + 1e-4);
            if (err > worst2) { worst2 = err; wn2 = probe_names[k]; }
        }
    }
    /* float32 central differences (step 1e-2) through LayerNorms: seeds reach ~3e-2; a broken path is O(1) */
    MS_CHECK(worst2 < 6e-2, "input 80 from 112 masters: gradient rel error %.3g at %s", worst2, wn2);
    ms_mae_mask m2;
    MS_CHECK_OK(ms_mae_mask_init(&m2, g2, 4, B));
    for (int b = 0; b < B; b++) MS_CHECK_OK(ms_mae_mask_sample(&m2, b, 0.5f, MS_MASK_STRATIFIED, seed, 40 + b));
    ms_sam_enc_subset s2 = subset_of(&m2);
    const float *tok;
    MS_CHECK_OK(ms_sam_encoder_forward_subset(enc, x3, B, &s2, &tok));
    MS_CHECK(s2.n_keep == (int)(g2 * g2 * 0.5) && isfinite(tok[0]), "subset forward at the run size");
    ms_mae_mask_free(&m2);
    free(x3); free(emb2); free(G2);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_device dev = {0};
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 2));
    ms_sam_enc_config cfg = {.img_size = 112, .patch = 16, .in_chans = 3, .embed_dim = 48, .depth = 2, .n_heads = 2,
                             .window = 4, .n_global = 1, .global_idx = {1}, .out_chans = 16};
    ms_params ps;
    ms_params_init(&ps);
    ms_sam_encoder enc;
    MS_CHECK_OK(ms_sam_encoder_init(&enc, &cfg, &ps, "image_encoder."));
    MS_CHECK_OK(ms_params_alloc(&ps, &dev));
    MS_CHECK_OK(ms_params_alloc_grads(&ps));
    ms_rng r;
    ms_rng_init(&r, seed, 1);
    for (int i = 0; i < ps.n; i++) { /* random everything, LN gammas near 1, rel-pos and pos_embed non-zero */
        float *d = ms_params_data(&ps, i), lo = -0.3f, hi = 0.3f;
        if (ps.p[i].ndim == 1 && strstr(ps.p[i].name, "norm") && strstr(ps.p[i].name, ".weight")) lo = 0.7f, hi = 1.3f;
        ms_fill_uniform(d, ps.p[i].numel, &r, lo, hi);
    }
    const int B = 2, S = 112, g = 7, D = 48;
    MS_CHECK_OK(ms_sam_encoder_reserve(&enc, &dev, B, 1));
    float *x = malloc(sizeof(float) * B * 3 * S * S);
    ms_fill_uniform(x, (int64_t)B * 3 * S * S, &r, -1.f, 1.f);

    /* 1. ratio 0 == dense */
    float *emb = malloc(sizeof(float) * B * 16 * g * g);
    MS_CHECK_OK(ms_sam_encoder_forward(&enc, x, B, emb));
    int64_t T = g * g;
    float *dense = malloc(sizeof(float) * B * T * D);
    memcpy(dense, ms_sam_encoder_tokens(&enc, cfg.depth - 1), sizeof(float) * B * T * D);
    ms_mae_mask m;
    MS_CHECK_OK(ms_mae_mask_init(&m, g, 4, B));
    for (int b = 0; b < B; b++) MS_CHECK_OK(ms_mae_mask_sample(&m, b, 0.f, MS_MASK_STRATIFIED, seed, 10 + b));
    ms_sam_enc_subset s = subset_of(&m);
    const float *tok;
    MS_CHECK_OK(ms_sam_encoder_forward_subset(&enc, x, B, &s, &tok));
    float *mapped = malloc(sizeof(float) * B * T * D);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < s.n_keep; i++)
            memcpy(mapped + ((size_t)b * T + m.keep[b * m.n_keep_max + i]) * D, tok + ((size_t)b * s.n_keep + i) * D,
                   sizeof(float) * D);
    ms_cmp c0 = ms_compare_f(mapped, dense, (int64_t)B * T * D);
    /* relative error in norm, ‖a − b‖ / ‖b‖ (keys are summed in another order, so elementwise bits differ) */
    printf("ratio 0 vs dense: norm rel %.3g, max_rel %.3g\n", sqrt(c0.nmse), c0.max_rel);
    MS_CHECK(s.n_keep == T && sqrt(c0.nmse) < 1e-5 && c0.max_rel < 1e-3, "ratio 0 vs dense: norm rel %.3g, max_rel %.3g (kept %d)",
             sqrt(c0.nmse), c0.max_rel, s.n_keep);
    MS_CHECK(ms_sam_encoder_backward(&enc, emb, NULL) == MS_EBADSTATE, "dense backward after a subset forward refused");

    /* 2. hidden patches do not leak */
    for (int b = 0; b < B; b++) MS_CHECK_OK(ms_mae_mask_sample(&m, b, 0.6f, MS_MASK_STRATIFIED, seed, 20 + b));
    s = subset_of(&m);
    MS_CHECK_OK(ms_sam_encoder_forward_subset(&enc, x, B, &s, &tok));
    int64_t n_out = (int64_t)B * s.n_keep * D;
    float *before = malloc(sizeof(float) * n_out);
    memcpy(before, tok, sizeof(float) * n_out);
    float *x2 = malloc(sizeof(float) * B * 3 * S * S);
    memcpy(x2, x, sizeof(float) * B * 3 * S * S);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            if (m.masked[b * T + t])
                for (int ch = 0; ch < 3; ch++)
                    for (int py = 0; py < 16; py++)
                        for (int px = 0; px < 16; px++)
                            x2[(((size_t)b * 3 + ch) * S + (t / g) * 16 + py) * S + (t % g) * 16 + px] += 5.f;
    MS_CHECK_OK(ms_sam_encoder_forward_subset(&enc, x2, B, &s, &tok));
    MS_CHECK(!memcmp(before, tok, sizeof(float) * n_out), "hidden patches changed the visible tokens");
    memcpy(x2, x, sizeof(float) * B * 3 * S * S);
    int t_vis = m.keep[0];
    x2[(size_t)(t_vis / g) * 16 * S + (t_vis % g) * 16] += 1.f;
    MS_CHECK_OK(ms_sam_encoder_forward_subset(&enc, x2, B, &s, &tok));
    MS_CHECK(memcmp(before, tok, sizeof(float) * n_out) != 0, "a visible patch did not change the output");

    /* 3. backward vs finite differences */
    ctx_t c = {.enc = &enc, .x = x, .s = s, .B = B, .n_out = n_out};
    c.G = malloc(sizeof(float) * n_out);
    ms_fill_uniform(c.G, n_out, &r, -1.f, 1.f);
    MS_CHECK(!isnan(loss_of(&c)), "subset forward failed: %s", ms_errmsg());
    float *dx = calloc((size_t)B * 3 * S * S, sizeof(float));
    MS_CHECK_OK(ms_params_zero_grads(&ps));
    MS_CHECK_OK(ms_sam_encoder_backward_subset(&enc, c.G, dx));
    double worst = 0;
    const char *wname = "";
    for (int k = 0; k < ps.n; k++) {
        const ms_param *p = &ps.p[k];
        if (!strncmp(p->name, "image_encoder.neck", 18)) continue; /* the subset path stops before the neck */
        float *gk = ms_params_grad(&ps, k);
        double gmax = 0;
        for (int64_t i = 0; i < p->numel; i++) gmax = fmax(gmax, fabs(gk[i]));
        for (int t = 0; t < 3; t++) {
            int64_t i = (int64_t)ms_rng_below(&r, (uint64_t)p->numel);
            double fd = probe(&c, ms_params_data(&ps, k) + i, 1e-2f);
            double err = fabs(fd - gk[i]) / (fabs(fd) + 0.05 * gmax + 1e-4);
            if (err > worst) { worst = err; wname = p->name; }
        }
    }
    MS_CHECK(worst < 2e-2, "parameter gradient rel error %.3g at %s", worst, wname);
    double wx = 0, xmax = 0;
    for (int64_t i = 0; i < (int64_t)B * 3 * S * S; i++) xmax = fmax(xmax, fabs(dx[i]));
    for (int t = 0; t < 16; t++) {
        int64_t i = (int64_t)ms_rng_below(&r, (uint64_t)B * 3 * S * S);
        double fd = probe(&c, x + i, 1e-2f);
        wx = fmax(wx, fabs(fd - dx[i]) / (fabs(fd) + 0.05 * xmax + 1e-4));
    }
    MS_CHECK(wx < 2e-2, "input gradient rel error %.3g", wx);

    check_other_size(&enc, &ps, &dev, &r, seed, B);
    free(x); free(x2); free(emb); free(dense); free(mapped); free(before); free(c.G); free(dx);
    ms_mae_mask_free(&m);
    ms_sam_encoder_free(&enc);
    ms_params_free(&ps);
    return ms_test_done();
}
