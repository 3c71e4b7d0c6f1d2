/* tests/pretrain/test_recompute.c — per-block activation recomputation of SAM's encoder (ms_sam_encoder_set_recompute,
 * docs/PERFORMANCE.md §Memory) and the count-only arena size (ms_sam_encoder_activation_bytes).
 *
 * Random small configurations (printed seed): grid 7 with window 4 (pad slots in every window row/column) or 3,
 * one or two global blocks, official or finetune-SAM block, with and without LoRA and adapters on random blocks.
 * For each one, on the CPU:
 *  1. dense: the embeddings, every parameter gradient and dx of a run with recompute are the bits of the run without
 *     (memcmp: same ops in the same order); the recompute arena is smaller;
 *  2. token subset (MAE, mask 0.5; PEFT-free configurations): the last-block tokens, gradients and dx, bit for bit;
 *  3. the counted bytes equal what the reserves (and the first subset forward) allocated, with and without backward
 *     and recompute;
 *  2b. the same with the block buffers sized for the visible rows only (ms_sam_encoder_set_subset_only);
 *  4. one MAE step (mask 0.5, small decoder): encoder and decoder gradients bit for bit with recompute (and with
 *     recompute + subset-only block buffers, as pretrain reserves), and
 *     ms_mae_step_bytes against the sizes actually allocated (parameters, gradients, arenas) plus AdamW's moments
 *     and the step's own buffers counted independently here.
 * The table of docs/PERFORMANCE.md §Memory built on these counts is `mrisam bench memory` (tools/bench_memory.c).
 */
#include <stdlib.h>
#include <string.h>

#include "../harness.h"
#include "finetune/ft_model.h"
#include "pretrain/mae.h"
#include "pretrain/mae_mask.h"
#include "pretrain/sam_encoder.h"

typedef struct run_out {
    float *out, *grad, *dx;
    size_t arena;
} run_out;

static void run_free(run_out *o) { free(o->out); free(o->grad); free(o->dx); }

/* One forward + backward at the encoder's current recompute setting; subset: the MAE path on mask s. */
static void run_once(ms_sam_encoder *enc, ms_params *ps, ms_device *dev, int B, const float *x, const float *G,
                     const ms_sam_enc_subset *s, run_out *o)
{
    const ms_sam_enc_config *c = &enc->cfg;
    int64_t S = c->img_size, g = S / c->patch, nx = (int64_t)B * 3 * S * S;
    int64_t nout = s ? (int64_t)B * s->n_keep * c->embed_dim : (int64_t)B * c->out_chans * g * g;
    o->out = calloc((size_t)nout, sizeof(float));
    o->dx = calloc((size_t)nx, sizeof(float));
    o->grad = calloc((size_t)ps->numel_trainable, sizeof(float));
    MS_CHECK_OK(ms_sam_encoder_reserve(enc, dev, B, 1));
    MS_CHECK_OK(ms_params_zero_grads(ps));
    if (s) {
        const float *tok = NULL;
        MS_CHECK_OK(ms_sam_encoder_forward_subset(enc, x, B, s, &tok));
        if (tok) memcpy(o->out, tok, (size_t)nout * sizeof(float));
        MS_CHECK_OK(ms_sam_encoder_backward_subset(enc, G, o->dx));
    } else {
        MS_CHECK_OK(ms_sam_encoder_forward(enc, x, B, o->out));
        MS_CHECK_OK(ms_sam_encoder_backward(enc, G, o->dx));
    }
    memcpy(o->grad, ps->grad, (size_t)ps->numel_trainable * sizeof(float));
    o->arena = ms_sam_encoder_arena_bytes(enc);
}

static void check_same(const run_out *a, const run_out *b, int64_t nout, int64_t nx, int64_t ng, const char *what)
{
    MS_CHECK(!memcmp(a->out, b->out, (size_t)nout * sizeof(float)), "%s: outputs differ with recompute", what);
    MS_CHECK(!memcmp(a->dx, b->dx, (size_t)nx * sizeof(float)), "%s: dx differs with recompute", what);
    int64_t first = -1;
    for (int64_t i = 0; i < ng && first < 0; i++)
        if (memcmp(&a->grad[i], &b->grad[i], sizeof(float))) first = i;
    MS_CHECK(first < 0, "%s: parameter gradients differ with recompute (first at flat index %lld)", what,
             (long long)first);
}


/* 4. One MAE step without and with recompute on a PEFT-free encoder (its parameters already random). */
static void mae_case(ms_device *dev, ms_sam_encoder *enc, ms_params *eps, uint64_t seed)
{
    const int B = 2, S = enc->cfg.img_size, g = S / enc->cfg.patch, L = g * g;
    ms_params dps;
    ms_params_init(&dps);
    ms_mae mae;
    ms_mae_config mc = {.mask_ratio = 0.5f, .sampling = MS_MASK_STRATIFIED, .norm_pix = 1, .fg_threshold = 0.05f,
                        .dec = {.dim = 32, .depth = 2, .n_heads = 2}};
    MS_CHECK_OK(ms_mae_init(&mae, enc, &mc, &dps));
    MS_CHECK_OK(ms_params_alloc(&dps, dev));
    ms_params_set_trainable(&dps, "", 1);
    MS_CHECK_OK(ms_params_alloc_grads(&dps));
    ms_rng r;
    ms_rng_init(&r, seed, 77);
    for (int i = 0; i < dps.n; i++) ms_fill_uniform(ms_params_data(&dps, i), dps.p[i].numel, &r, -0.3f, 0.3f);
    float *x = malloc(sizeof(float) * (size_t)B * 3 * S * S), *gray = malloc(sizeof(float) * (size_t)B * S * S);
    ms_fill_uniform(x, (int64_t)B * 3 * S * S, &r, -1.f, 1.f);
    ms_fill_uniform(gray, (int64_t)B * S * S, &r, 0.f, 1.f);
    const uint64_t keys[2] = {3, 4};
    float *ge[3], *gd[3];
    ms_mae_loss l[3];
    size_t counted[3], actual[3];
    for (int mode = 0; mode < 3; mode++) { /* plain, recompute, recompute + subset-only (as pretrain reserves) */
        int rec = mode > 0;
        ms_sam_encoder_set_recompute(enc, rec);
        ms_sam_encoder_set_subset_only(enc, mode == 2 ? ms_mae_mask_keep_target(g, mc.mask_ratio) : 0);
        MS_CHECK_OK(ms_sam_encoder_reserve(enc, dev, B, 1));
        if (rec == 0) MS_CHECK_OK(ms_mae_reserve(&mae, dev, B));
        MS_CHECK_OK(ms_params_zero_grads(eps));
        MS_CHECK_OK(ms_params_zero_grads(&dps));
        MS_CHECK_OK(ms_mae_forward(&mae, x, gray, B, seed, keys, &l[mode]));
        MS_CHECK_OK(ms_mae_backward(&mae, 1.0f, 0));
        ge[mode] = malloc(sizeof(float) * (size_t)eps->numel_trainable);
        gd[mode] = malloc(sizeof(float) * (size_t)dps.numel_trainable);
        memcpy(ge[mode], eps->grad, sizeof(float) * (size_t)eps->numel_trainable);
        memcpy(gd[mode], dps.grad, sizeof(float) * (size_t)dps.numel_trainable);
        MS_CHECK_OK(ms_mae_step_bytes(&mae, &dps, B, rec, &counted[mode]));
        /* independent sum: what was allocated, AdamW's two moments per gradient, the step's own buffers */
        int64_t R = (int64_t)B * L, P = 16 * 16, own = 2 * R * P + 3 * R + (int64_t)B * L * enc->cfg.embed_dim + 4;
        actual[mode] = (size_t)(eps->numel + 3 * eps->numel_trainable + dps.numel + 3 * dps.numel_trainable + own) * 4 +
                      ms_sam_encoder_arena_bytes(enc) + mae.dec.arena.used;
    }
    for (int mode = 1; mode < 3; mode++) {
        MS_CHECK(!memcmp(&l[0].loss, &l[mode].loss, sizeof(double)), "mae (mode %d): losses differ", mode);
        MS_CHECK(!memcmp(ge[0], ge[mode], sizeof(float) * (size_t)eps->numel_trainable),
                 "mae (mode %d): encoder gradients differ", mode);
        MS_CHECK(!memcmp(gd[0], gd[mode], sizeof(float) * (size_t)dps.numel_trainable),
                 "mae (mode %d): decoder gradients differ", mode);
        MS_CHECK(counted[mode] < counted[mode - 1], "mae step: mode %d counts %zu, not below %zu", mode,
                 counted[mode], counted[mode - 1]);
    }
    for (int mode = 0; mode < 3; mode++)
        MS_CHECK(counted[mode] == actual[mode], "mae step (mode %d): counted %zu bytes, allocated %zu", mode,
                 counted[mode], actual[mode]);
    ms_sam_encoder_set_subset_only(enc, 0);
    for (int k = 0; k < 3; k++) { free(ge[k]); free(gd[k]); }
    free(x);
    free(gray);
    ms_mae_free(&mae);
    ms_params_free(&dps);
}

static void one_case(ms_device *dev, uint64_t seed, int k)
{
    ms_rng r;
    ms_rng_init(&r, seed, 100 + (uint64_t)k);
    ms_sam_enc_config cfg = {.img_size = 112, .patch = 16, .in_chans = 3, .embed_dim = 48, .depth = 3, .n_heads = 2,
                             .out_chans = 16};
    cfg.window = ms_rng_u64(&r) % 2 ? 4 : 3;
    cfg.n_global = 1 + (int)(ms_rng_u64(&r) % 2);
    cfg.global_idx[0] = 1;
    cfg.global_idx[1] = 2;
    cfg.finetune_sam_block = (int)(ms_rng_u64(&r) % 2);
    int peft = k % 2; /* every other case with LoRA / adapters (dense only) */
    ms_sam_enc_peft pf = {.lora_rank = 2, .lora_blocks = ms_rng_u64(&r) % 8, .adapter_blocks = ms_rng_u64(&r) % 8};
    if (peft && !pf.lora_blocks && !pf.adapter_blocks) pf.lora_blocks = 1;
    printf("case %d: window %d, %d global, finetune_sam_block %d, lora blocks %#x, adapter blocks %#x\n", k,
           cfg.window, cfg.n_global, cfg.finetune_sam_block, peft ? (unsigned)pf.lora_blocks : 0,
           peft ? (unsigned)pf.adapter_blocks : 0);
    ms_params ps;
    ms_params_init(&ps);
    ms_sam_encoder enc;
    MS_CHECK_OK(ms_sam_encoder_init(&enc, &cfg, &ps, "image_encoder."));
    if (peft) MS_CHECK_OK(ms_sam_encoder_add_peft(&enc, &pf));
    MS_CHECK_OK(ms_params_alloc(&ps, dev));
    ms_params_set_trainable(&ps, "", 1);
    MS_CHECK_OK(ms_params_alloc_grads(&ps));
    for (int i = 0; i < ps.n; i++) { /* everything random and non-zero (LoRA B too), LN gammas near 1 */
        float lo = -0.3f, hi = 0.3f;
        if (ps.p[i].ndim == 1 && strstr(ps.p[i].name, "norm") && strstr(ps.p[i].name, ".weight")) lo = 0.7f, hi = 1.3f;
        ms_fill_uniform(ms_params_data(&ps, i), ps.p[i].numel, &r, lo, hi);
    }
    const int B = 2, S = 112, g = 7, D = 48;
    int64_t nx = (int64_t)B * 3 * S * S, nemb = (int64_t)B * 16 * g * g;
    float *x = malloc(sizeof(float) * (size_t)nx), *G = malloc(sizeof(float) * (size_t)(B * g * g * D));
    ms_fill_uniform(x, nx, &r, -1.f, 1.f);
    ms_fill_uniform(G, (int64_t)B * g * g * D, &r, -1.f, 1.f);

    /* 1. dense */
    run_out a, b;
    ms_sam_encoder_set_recompute(&enc, 0);
    run_once(&enc, &ps, dev, B, x, G, NULL, &a);
    ms_sam_encoder_set_recompute(&enc, 1);
    run_once(&enc, &ps, dev, B, x, G, NULL, &b);
    check_same(&a, &b, nemb, nx, ps.numel_trainable, "dense");
    MS_CHECK(b.arena < a.arena, "recompute arena %zu not below %zu", b.arena, a.arena);
    /* 3. counted bytes == allocated bytes, both modes (and inference) */
    size_t n0 = 0, n1 = 0, ninf = 0;
    MS_CHECK_OK(ms_sam_encoder_activation_bytes(&enc, B, 1, 0, 0, &n0));
    MS_CHECK_OK(ms_sam_encoder_activation_bytes(&enc, B, 1, 1, 0, &n1));
    MS_CHECK(n0 == a.arena && n1 == b.arena, "dense: counted %zu / %zu bytes, allocated %zu / %zu", n0, n1, a.arena,
             b.arena);
    MS_CHECK_OK(ms_sam_encoder_reserve(&enc, dev, B + 1, 0));
    MS_CHECK_OK(ms_sam_encoder_activation_bytes(&enc, B + 1, 0, 1, 0, &ninf));
    MS_CHECK(ninf == ms_sam_encoder_arena_bytes(&enc), "inference: counted %zu, allocated %zu", ninf,
             ms_sam_encoder_arena_bytes(&enc));
    run_free(&a);
    run_free(&b);

    /* 2. token subset (MAE), PEFT-free encoders only (the subset path refuses PEFT) */
    if (!peft) {
        ms_mae_mask m;
        MS_CHECK_OK(ms_mae_mask_init(&m, g, cfg.window, B));
        for (int i = 0; i < B; i++) MS_CHECK_OK(ms_mae_mask_sample(&m, i, 0.5f, MS_MASK_STRATIFIED, seed, 7 + i));
        ms_sam_enc_subset s = {m.n_keep[0], m.n_keep_max, m.n_pad_max, m.keep, m.win_keep_off, m.pad, m.win_pad_off};
        int64_t ntok = (int64_t)B * s.n_keep * D;
        ms_sam_encoder_set_recompute(&enc, 0);
        run_once(&enc, &ps, dev, B, x, G, &s, &a);
        ms_sam_encoder_set_recompute(&enc, 1);
        run_once(&enc, &ps, dev, B, x, G, &s, &b);
        check_same(&a, &b, ntok, nx, ps.numel_trainable, "subset");
        MS_CHECK_OK(ms_sam_encoder_activation_bytes(&enc, B, 1, 0, 1, &n0));
        MS_CHECK_OK(ms_sam_encoder_activation_bytes(&enc, B, 1, 1, 1, &n1));
        MS_CHECK(n0 == a.arena && n1 == b.arena, "subset: counted %zu / %zu bytes, allocated %zu / %zu", n0, n1,
                 a.arena, b.arena);
        /* block buffers sized for the visible rows only (ms_sam_encoder_set_subset_only), recompute off and on */
        for (int rec = 0; rec < 2; rec++) {
            run_out o;
            ms_sam_encoder_set_recompute(&enc, rec);
            ms_sam_encoder_set_subset_only(&enc, s.n_keep);
            run_once(&enc, &ps, dev, B, x, G, &s, &o);
            check_same(&a, &o, ntok, nx, ps.numel_trainable, rec ? "subset-only + recompute" : "subset-only");
            MS_CHECK_OK(ms_sam_encoder_activation_bytes(&enc, B, 1, rec, 1, &n0));
            MS_CHECK(n0 == o.arena, "subset-only: counted %zu bytes, allocated %zu", n0, o.arena);
            MS_CHECK(o.arena < (rec ? b.arena : a.arena), "subset-only arena %zu not below %zu", o.arena,
                     rec ? b.arena : a.arena);
            float *emb = malloc(sizeof(float) * (size_t)nemb);
            MS_CHECK(ms_sam_encoder_forward(&enc, x, B, emb) == MS_EUNSUPPORTED, "dense forward after subset-only");
            free(emb);
            run_free(&o);
        }
        ms_sam_encoder_set_subset_only(&enc, 0);
        run_free(&a);
        run_free(&b);
        ms_mae_mask_free(&m);
        mae_case(dev, &enc, &ps, seed);
    }
    ms_sam_encoder_free(&enc);
    ms_params_free(&ps);
    free(x);
    free(G);
}


int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_device dev = {0};
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 2));
    for (int k = 0; k < 4; k++) one_case(&dev, seed, k);
    ms_device_free(&dev);
    return ms_test_done();
}
