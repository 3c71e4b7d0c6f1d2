/* finetune/sam_decoder.c — see sam_decoder.h. ref: segment_anything/modeling/mask_decoder.py and transformer.py
 * (forward), finetune-SAM's num_cls decoder (tiling); docs/MODEL.md.
 *
 * Every step is an op from kernels/ops.h, so the same code runs on the CPU and on CUDA; only the token assembly
 * (1+M+ns rows) and its gradient split happen on the host. Activation names follow transformer.py's
 * TwoWayAttentionBlock:
 *   layer: qs = Xq+qpe (layers > 0), q1 → LN1 → Q1; qs2 = Q1+qpe, ks2 = Xk+kpe; q2 → LN2 → Q2; h = lin1(Q2),
 *          hr = ReLU(h), q3 = Q2 + lin2(hr) → LN3 → Q3; qs4 = Q3+qpe; k4 = Xk + i2t(q=ks2, k=qs4, v=Q3) → LN4 → K4.
 * ks2 serves steps (2) and (4): the keys do not change between them.
 * PEFT (finetune-SAM models/common.py, models/sam_LoRa.py): LoRA adds (x·w_aᵀ)·w_bᵀ onto Q and V inside attn_fwd
 * (lq, lv keep x·w_aᵀ); adapters turn q2p = Q1 + t2i into q2 = Adapter(q2p), add scale·MLP_Adapter(Q2) to q3, and
 * turn k4p = Xk + i2t into k4 = Adapter(k4p) (the same Adapter weights as for the queries, so their gradients add
 * up).
 */
#include "sam_decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "ops.h"

typedef struct attn_act {
    float *Q, *K, *V, *O, *lse, *out;
    float *lq, *lv; /* LoRA: q·w_aᵀ, v·w_aᵀ (rows, r) */
} attn_act;

typedef struct layer_act {
    attn_act sa, t2i, i2t;
    float *qs, *q1, *Q1, *mu1, *rs1, *qs2, *ks2, *q2, *Q2, *mu2, *rs2, *h, *hr, *q3, *Q3, *mu3, *rs3, *qs4, *k4,
        *K4, *mu4, *rs4;
    float *q2p, *aq_h, *aq_g, *k4p, *ak_h, *ak_g; /* Adapter on queries and keys: input, fc1 out, GELU out */
    float *m_h, *m_g, *m_o;                       /* MLP_Adapter */
    const float *Xq, *Xk;
} layer_act;

typedef struct dec_act {
    ms_sam_dec_head head; /* the output head of the last forward: backward uses it, whatever is active by then */
    float G[256];  /* the gaussian matrix kpe was computed from (kpe is reused while it and the arena stay) */
    int kpe_valid;
    float *tok, *kpe, *keys0, *dense_t;
    layer_act L[MS_SAM_DEC_MAX_DEPTH];
    attn_act fa;
    float *qf, *kf, *qfin, *hs, *muf, *rsf;
    float *src, *u1, *u1n, *muu, *rsu, *u1g, *u2, *up;
    float *idx_tok, *idx_stack; /* int32 stored in float-sized slots */
    float *X, *hh1, *hh1r, *hh2, *hh2r, *hout, *H;
    float *ih1, *ih1r, *ih2, *ih2r;
    float *masks, *iou;
    /* backward scratch */
    float *gQ, *gXq, *tq1, *tq2, *gtok, *gK, *gXk, *tk1, *tk2;
    float *dQ, *dK, *dV, *dO, *dh1, *dh2;
    float *dup, *du2, *du1a, *du1b, *dsrc;
    float *dH, *dHs, *dX, *dm1, *dm2, *dkeys_img, *ddense_t;
    float *dlr, *da1, *da2, *dad; /* PEFT: LoRA (rows, r), adapter hidden (rows, 64), scaled MLP_Adapter grad */
} dec_act;

/* ---- registration ----------------------------------------------------------------------------------------- */

static int reg(ms_params *ps, const char *prefix, const char *name, int ndim, int64_t a, int64_t b, int64_t c,
               int64_t d, int no_decay)
{
    char full[2 * MS_PARAM_NAME_MAX]; /* longer than any valid name: ms_params_add rejects, never truncates */
    int64_t shape[4] = {a, b, c, d};
    snprintf(full, sizeof full, "%s%s", prefix, name);
    return ms_params_add(ps, full, shape, ndim, no_decay);
}

static int reg_linear(ms_params *ps, const char *prefix, const char *base, int64_t out, int64_t in, int *w, int *b)
{
    char n[128];
    snprintf(n, sizeof n, "%s.weight", base);
    *w = reg(ps, prefix, n, 2, out, in, 0, 0, 0);
    snprintf(n, sizeof n, "%s.bias", base);
    *b = reg(ps, prefix, n, 1, out, 0, 0, 0, 1);
    return *w < 0 || *b < 0;
}

static int reg_norm(ms_params *ps, const char *prefix, const char *base, int64_t n_ch, int *w, int *b)
{
    char n[128];
    snprintf(n, sizeof n, "%s.weight", base);
    *w = reg(ps, prefix, n, 1, n_ch, 0, 0, 0, 1);
    snprintf(n, sizeof n, "%s.bias", base);
    *b = reg(ps, prefix, n, 1, n_ch, 0, 0, 0, 1);
    return *w < 0 || *b < 0;
}

static int reg_attn(ms_params *ps, const char *prefix, const char *base, int dim, int ci, ms_sam_attn_params *a)
{
    char n[160];
    int bad = 0;
    a->ci = ci;
    snprintf(n, sizeof n, "%s.q_proj", base);
    bad |= reg_linear(ps, prefix, n, ci, dim, &a->q_w, &a->q_b);
    snprintf(n, sizeof n, "%s.k_proj", base);
    bad |= reg_linear(ps, prefix, n, ci, dim, &a->k_w, &a->k_b);
    snprintf(n, sizeof n, "%s.v_proj", base);
    bad |= reg_linear(ps, prefix, n, ci, dim, &a->v_w, &a->v_b);
    snprintf(n, sizeof n, "%s.out_proj", base);
    bad |= reg_linear(ps, prefix, n, dim, ci, &a->o_w, &a->o_b);
    return bad;
}

ms_status ms_sam_decoder_init(ms_sam_decoder *d, ms_params *ps, const char *prefix, int n_mask_tokens, int depth,
                              int emb_h, int emb_w)
{
    memset(d, 0, sizeof *d);
    MS_FAIL_IF(n_mask_tokens < 1 || n_mask_tokens > MS_SAM_MAX_MASK_TOKENS, MS_EINVAL,
               "mask decoder: %d mask tokens (1..%d supported)", n_mask_tokens, MS_SAM_MAX_MASK_TOKENS);
    MS_FAIL_IF(depth < 1 || depth > MS_SAM_DEC_MAX_DEPTH, MS_EINVAL, "mask decoder: depth %d (1..%d supported)",
               depth, MS_SAM_DEC_MAX_DEPTH);
    MS_FAIL_IF(emb_h <= 0 || emb_w <= 0, MS_EINVAL, "mask decoder: bad grid %dx%d", emb_h, emb_w);
    d->dim = 256;
    d->heads = 8;
    d->mlp_dim = 2048;
    d->depth = depth;
    d->emb_h = emb_h;
    d->emb_w = emb_w;
    d->ps = ps;
    const int D = d->dim, M = n_mask_tokens;
    char n[160];
    int bad = 0;
    for (int l = 0; l < MS_SAM_DEC_MAX_DEPTH; l++) { /* no PEFT until ms_sam_decoder_add_peft */
        ms_sam_dec_layer_params *L = &d->layer[l];
        ms_sam_attn_params *at[3] = {&L->self, &L->t2i, &L->i2t};
        for (int k = 0; k < 3; k++) at[k]->lq_a = at[k]->lq_b = at[k]->lv_a = at[k]->lv_b = -1;
        L->ad_w1 = L->ad_b1 = L->ad_w2 = L->ad_b2 = -1;
        L->ma_w1 = L->ma_b1 = L->ma_w2 = L->ma_b2 = -1;
    }
    d->fin.lq_a = d->fin.lq_b = d->fin.lv_a = d->fin.lv_b = -1;
    /* SAM's state_dict order (the official checkpoints): transformer, tokens, upscaling, hypernets, IoU head. */
    for (int l = 0; l < depth; l++) {
        ms_sam_dec_layer_params *L = &d->layer[l];
        snprintf(n, sizeof n, "transformer.layers.%d.self_attn", l);
        bad |= reg_attn(ps, prefix, n, D, D, &L->self);
        snprintf(n, sizeof n, "transformer.layers.%d.norm1", l);
        bad |= reg_norm(ps, prefix, n, D, &L->norm_w[0], &L->norm_b[0]);
        snprintf(n, sizeof n, "transformer.layers.%d.cross_attn_token_to_image", l);
        bad |= reg_attn(ps, prefix, n, D, D / 2, &L->t2i);
        snprintf(n, sizeof n, "transformer.layers.%d.norm2", l);
        bad |= reg_norm(ps, prefix, n, D, &L->norm_w[1], &L->norm_b[1]);
        snprintf(n, sizeof n, "transformer.layers.%d.mlp.lin1", l);
        bad |= reg_linear(ps, prefix, n, d->mlp_dim, D, &L->lin1_w, &L->lin1_b);
        snprintf(n, sizeof n, "transformer.layers.%d.mlp.lin2", l);
        bad |= reg_linear(ps, prefix, n, D, d->mlp_dim, &L->lin2_w, &L->lin2_b);
        snprintf(n, sizeof n, "transformer.layers.%d.norm3", l);
        bad |= reg_norm(ps, prefix, n, D, &L->norm_w[2], &L->norm_b[2]);
        snprintf(n, sizeof n, "transformer.layers.%d.norm4", l);
        bad |= reg_norm(ps, prefix, n, D, &L->norm_w[3], &L->norm_b[3]);
        snprintf(n, sizeof n, "transformer.layers.%d.cross_attn_image_to_token", l);
        bad |= reg_attn(ps, prefix, n, D, D / 2, &L->i2t);
    }
    bad |= reg_attn(ps, prefix, "transformer.final_attn_token_to_image", D, D / 2, &d->fin);
    bad |= reg_norm(ps, prefix, "transformer.norm_final_attn", D, &d->norm_f_w, &d->norm_f_b);
    d->iou_token = reg(ps, prefix, "iou_token.weight", 2, 1, D, 0, 0, 1);
    ms_sam_dec_head *h0 = &d->out_heads[0];
    h0->n_mask_tokens = M;
    h0->mask_tokens = reg(ps, prefix, "mask_tokens.weight", 2, M, D, 0, 0, 1);
    d->up0_w = reg(ps, prefix, "output_upscaling.0.weight", 4, D, D / 4, 2, 2, 0);
    d->up0_b = reg(ps, prefix, "output_upscaling.0.bias", 1, D / 4, 0, 0, 0, 1);
    bad |= reg_norm(ps, prefix, "output_upscaling.1", D / 4, &d->up1_w, &d->up1_b);
    d->up3_w = reg(ps, prefix, "output_upscaling.3.weight", 4, D / 4, D / 8, 2, 2, 0);
    d->up3_b = reg(ps, prefix, "output_upscaling.3.bias", 1, D / 8, 0, 0, 0, 1);
    bad |= d->iou_token < 0 || h0->mask_tokens < 0 || d->up0_w < 0 || d->up0_b < 0 || d->up3_w < 0 || d->up3_b < 0;
    for (int i = 0; i < M; i++)
        for (int k = 0; k < 3; k++) {
            snprintf(n, sizeof n, "output_hypernetworks_mlps.%d.layers.%d", i, k);
            bad |= reg_linear(ps, prefix, n, k == 2 ? D / 8 : D, D, &h0->hyp_w[i][k], &h0->hyp_b[i][k]);
        }
    for (int k = 0; k < 3; k++) {
        snprintf(n, sizeof n, "iou_prediction_head.layers.%d", k);
        bad |= reg_linear(ps, prefix, n, k == 2 ? M : 256, k == 0 ? D : 256, &h0->iou_w[k], &h0->iou_b[k]);
    }
    d->n_out_heads = 1;
    d->active_out_head = 0;
    return bad ? ms_error(MS_EINVAL, "mask decoder: %s", ms_errmsg()) : MS_OK;
}

/* ---- output heads and PEFT -------------------------------------------------------------------------------- */

static int reg_opt(ms_params *ps, const char *prefix, const char *name, int ndim, int64_t a, int64_t b, int no_decay)
{
    int i = reg(ps, prefix, name, ndim, a, b, 0, 0, no_decay);
    if (i >= 0) ps->p[i].optional = 1;
    return i;
}

static int reg_linear_opt(ms_params *ps, const char *prefix, const char *base, int64_t out, int64_t in, int *w, int *b)
{
    char n[160];
    snprintf(n, sizeof n, "%s.weight", base);
    *w = reg_opt(ps, prefix, n, 2, out, in, 0);
    snprintf(n, sizeof n, "%s.bias", base);
    *b = reg_opt(ps, prefix, n, 1, out, 0, 1);
    return *w < 0 || *b < 0;
}

int ms_sam_decoder_add_head(ms_sam_decoder *d, const char *prefix, int n_mask_tokens)
{
    if (d->n_out_heads >= MS_SAM_MAX_HEADS) {
        ms_error(MS_EINVAL, "mask decoder: more than %d output heads", MS_SAM_MAX_HEADS);
        return -1;
    }
    if (n_mask_tokens < 1 || n_mask_tokens > MS_SAM_MAX_MASK_TOKENS) {
        ms_error(MS_EINVAL, "mask decoder: head %s: %d mask tokens (1..%d supported)", prefix, n_mask_tokens,
                 MS_SAM_MAX_MASK_TOKENS);
        return -1;
    }
    ms_params *ps = d->ps;
    const int D = d->dim, M = n_mask_tokens;
    ms_sam_dec_head h;
    memset(&h, 0, sizeof h);
    h.n_mask_tokens = M;
    char n[160];
    h.mask_tokens = reg_opt(ps, prefix, "mask_tokens.weight", 2, M, D, 1);
    int bad = h.mask_tokens < 0;
    for (int i = 0; i < M && !bad; i++)
        for (int k = 0; k < 3 && !bad; k++) {
            snprintf(n, sizeof n, "output_hypernetworks_mlps.%d.layers.%d", i, k);
            bad |= reg_linear_opt(ps, prefix, n, k == 2 ? D / 8 : D, D, &h.hyp_w[i][k], &h.hyp_b[i][k]);
        }
    for (int k = 0; k < 3 && !bad; k++) {
        snprintf(n, sizeof n, "iou_prediction_head.layers.%d", k);
        bad |= reg_linear_opt(ps, prefix, n, k == 2 ? M : 256, k == 0 ? D : 256, &h.iou_w[k], &h.iou_b[k]);
    }
    if (bad) {
        ms_error(MS_EINVAL, "mask decoder: head %s: %s", prefix, ms_errmsg());
        return -1;
    }
    d->out_heads[d->n_out_heads] = h;
    return d->n_out_heads++;
}

ms_status ms_sam_decoder_use_head(ms_sam_decoder *d, int head)
{
    MS_FAIL_IF(head < 0 || head >= d->n_out_heads, MS_EINVAL, "mask decoder: no output head %d (%d registered)", head,
               d->n_out_heads);
    d->active_out_head = head;
    return MS_OK; /* the next forward re-plans the activation arena for the new M */
}

static int reg_lora(ms_params *ps, const char *prefix, const char *attn, int r, ms_sam_attn_params *a)
{
    char n[MS_PARAM_NAME_MAX];
    snprintf(n, sizeof n, "%s.q_proj.w_a.weight", attn);
    a->lq_a = reg_opt(ps, prefix, n, 2, r, 256, 0);
    snprintf(n, sizeof n, "%s.q_proj.w_b.weight", attn);
    a->lq_b = reg_opt(ps, prefix, n, 2, a->ci, r, 0);
    snprintf(n, sizeof n, "%s.v_proj.w_a.weight", attn);
    a->lv_a = reg_opt(ps, prefix, n, 2, r, 256, 0);
    snprintf(n, sizeof n, "%s.v_proj.w_b.weight", attn);
    a->lv_b = reg_opt(ps, prefix, n, 2, a->ci, r, 0);
    return a->lq_a < 0 || a->lq_b < 0 || a->lv_a < 0 || a->lv_b < 0;
}

static int reg_adapter(ms_params *ps, const char *prefix, const char *base, int D, int *w1, int *b1, int *w2, int *b2)
{
    char n[MS_PARAM_NAME_MAX];
    snprintf(n, sizeof n, "%s.D_fc1", base);
    int bad = reg_linear_opt(ps, prefix, n, D / 4, D, w1, b1);
    snprintf(n, sizeof n, "%s.D_fc2", base);
    return bad | reg_linear_opt(ps, prefix, n, D, D / 4, w2, b2);
}

ms_status ms_sam_decoder_add_peft(ms_sam_decoder *d, const ms_sam_dec_peft *pf)
{
    MS_FAIL_IF(d->peft.lora_rank || d->peft.adapters, MS_EBADSTATE, "mask decoder: PEFT tensors already added");
    MS_FAIL_IF(pf->lora_rank < 0 || pf->lora_rank > d->dim, MS_EINVAL, "mask decoder: LoRA rank %d (0..%d)",
               pf->lora_rank, d->dim);
    ms_params *ps = d->ps;
    /* The decoder's key prefix, recovered from a tensor that init registered ("mask_decoder.iou_token.weight"). */
    char prefix[MS_PARAM_NAME_MAX];
    snprintf(prefix, sizeof prefix, "%s", ps->p[d->iou_token].name);
    prefix[strlen(prefix) - strlen("iou_token.weight")] = 0;
    char n[160];
    int bad = 0;
    for (int l = 0; l < d->depth; l++) {
        ms_sam_dec_layer_params *L = &d->layer[l];
        if (pf->lora_rank) {
            snprintf(n, sizeof n, "transformer.layers.%d.self_attn", l);
            bad |= reg_lora(ps, prefix, n, pf->lora_rank, &L->self);
            snprintf(n, sizeof n, "transformer.layers.%d.cross_attn_token_to_image", l);
            bad |= reg_lora(ps, prefix, n, pf->lora_rank, &L->t2i);
            snprintf(n, sizeof n, "transformer.layers.%d.cross_attn_image_to_token", l);
            bad |= reg_lora(ps, prefix, n, pf->lora_rank, &L->i2t);
        }
        if (pf->adapters) {
            snprintf(n, sizeof n, "transformer.layers.%d.MLP_Adapter", l);
            bad |= reg_adapter(ps, prefix, n, d->dim, &L->ma_w1, &L->ma_b1, &L->ma_w2, &L->ma_b2);
            snprintf(n, sizeof n, "transformer.layers.%d.Adapter", l);
            bad |= reg_adapter(ps, prefix, n, d->dim, &L->ad_w1, &L->ad_b1, &L->ad_w2, &L->ad_b2);
        }
    }
    if (pf->lora_rank) bad |= reg_lora(ps, prefix, "transformer.final_attn_token_to_image", pf->lora_rank, &d->fin);
    MS_FAIL_IF(bad, MS_EINVAL, "mask decoder PEFT: %s", ms_errmsg());
    d->peft = *pf;
    return MS_OK;
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* Fills tensor idx: kind 0 zeros, 1 U(±bound), 2 N(0,1). Each tensor draws from its own stream keyed by its name,
 * so the values do not depend on what else is registered. */
static ms_status init_tensor(ms_sam_decoder *d, int idx, int kind, float bound, uint64_t seed)
{
    const ms_param *p = &d->ps->p[idx];
    float *h = malloc((size_t)p->numel * sizeof(float));
    MS_FAIL_IF(!h, MS_ENOMEM, "out of memory");
    ms_rng r;
    ms_rng_init(&r, seed, ms_rng_stream(0x6465632d696e6974ull /* "dec-init" */, name_hash(p->name), 0));
    for (int64_t j = 0; j < p->numel; j++)
        h[j] = kind == 0 ? 0.f : kind == 1 ? ms_rng_range(&r, -bound, bound) : ms_rng_normal(&r);
    ms_status rc = ms_dev_from_host(d->ps->dev, ms_params_data(d->ps, idx), h, (size_t)p->numel * sizeof(float));
    free(h);
    return rc;
}

/* nn.Linear's default (kaiming_uniform(a=√5) for the weight, U(±1/√fan_in) for the bias): both U(±1/√fan_in). */
static ms_status init_linear(ms_sam_decoder *d, int w, int b, uint64_t seed)
{
    float bound = 1.f / sqrtf((float)d->ps->p[w].shape[1]);
    MS_TRY(init_tensor(d, w, 1, bound, seed));
    return init_tensor(d, b, 1, bound, seed);
}

static ms_status init_lora(ms_sam_decoder *d, const ms_sam_attn_params *a, uint64_t seed)
{
    if (a->lq_a < 0) return MS_OK;
    const float bound = 1.f / sqrtf((float)d->ps->p[a->lq_a].shape[1]);
    MS_TRY(init_tensor(d, a->lq_a, 1, bound, seed));
    MS_TRY(init_tensor(d, a->lv_a, 1, bound, seed));
    MS_TRY(init_tensor(d, a->lq_b, 0, 0.f, seed)); /* w_b = 0: the model starts equal to the base one */
    return init_tensor(d, a->lv_b, 0, 0.f, seed);
}

ms_status ms_sam_decoder_peft_init_random(ms_sam_decoder *d, uint64_t seed)
{
    MS_FAIL_IF(!d->ps->data, MS_EBADSTATE, "mask decoder: PEFT init before ms_params_alloc");
    for (int l = 0; l < d->depth; l++) {
        const ms_sam_dec_layer_params *L = &d->layer[l];
        MS_TRY(init_lora(d, &L->self, seed));
        MS_TRY(init_lora(d, &L->t2i, seed));
        MS_TRY(init_lora(d, &L->i2t, seed));
        if (L->ad_w1 >= 0) {
            MS_TRY(init_linear(d, L->ad_w1, L->ad_b1, seed));
            MS_TRY(init_linear(d, L->ad_w2, L->ad_b2, seed));
        }
        if (L->ma_w1 >= 0) {
            MS_TRY(init_linear(d, L->ma_w1, L->ma_b1, seed));
            MS_TRY(init_linear(d, L->ma_w2, L->ma_b2, seed));
        }
    }
    return init_lora(d, &d->fin, seed);
}

ms_status ms_sam_decoder_head_init_random(ms_sam_decoder *d, int head, uint64_t seed)
{
    MS_FAIL_IF(head < 0 || head >= d->n_out_heads, MS_EINVAL, "mask decoder: no output head %d (%d registered)", head,
               d->n_out_heads);
    MS_FAIL_IF(!d->ps->data, MS_EBADSTATE, "mask decoder: head init before ms_params_alloc");
    const ms_sam_dec_head *h = &d->out_heads[head];
    MS_TRY(init_tensor(d, h->mask_tokens, 2, 0.f, seed)); /* nn.Embedding: N(0, 1) */
    for (int i = 0; i < h->n_mask_tokens; i++)
        for (int k = 0; k < 3; k++) MS_TRY(init_linear(d, h->hyp_w[i][k], h->hyp_b[i][k], seed));
    for (int k = 0; k < 3; k++) MS_TRY(init_linear(d, h->iou_w[k], h->iou_b[k], seed));
    return MS_OK;
}

void ms_sam_decoder_free(ms_sam_decoder *d)
{
    ms_arena_free(&d->arena);
    free(d->priv);
    d->priv = NULL;
}

/* ---- activation arena ------------------------------------------------------------------------------------- */

static void plan_attn(ms_plan *p, attn_act *a, const ms_sam_attn_params *w, int64_t r, int64_t B, int64_t nq,
                      int64_t nk, int ci, int heads, int D)
{
    ms_plan_add_f32(p, &a->lq, w->lq_a >= 0 ? B * nq * r : 1);
    ms_plan_add_f32(p, &a->lv, w->lv_a >= 0 ? B * nk * r : 1);
    ms_plan_add_f32(p, &a->Q, B * nq * ci);
    ms_plan_add_f32(p, &a->K, B * nk * ci);
    ms_plan_add_f32(p, &a->V, B * nk * ci);
    ms_plan_add_f32(p, &a->O, B * nq * ci);
    ms_plan_add_f32(p, &a->lse, B * nq * heads);
    ms_plan_add_f32(p, &a->out, B * nq * D);
}

static ms_status plan_all(ms_device *dev, ms_sam_decoder *d, dec_act *a, int with_dense)
{
    const int64_t B = d->B, T = d->T, N = d->N, M = d->M, D = d->dim, H = d->heads, F = d->mlp_dim;
    const int64_t P = 16 * N; /* 4h·4w mask pixels */
    ms_plan plan = {0}, *p = &plan;
    const int64_t BTD = B * T * D, BND = B * N * D;
    ms_plan_add_f32(p, &a->tok, BTD);
    ms_plan_add_f32(p, &a->kpe, N * D);
    ms_plan_add_f32(p, &a->keys0, BND);
    ms_plan_add_f32(p, &a->dense_t, with_dense ? d->bp * N * D : 1);
    const int64_t r = d->peft.lora_rank, Ha = D / 4; /* LoRA rank, adapter hidden width */
    for (int l = 0; l < d->depth; l++) {
        layer_act *L = &a->L[l];
        const ms_sam_dec_layer_params *w = &d->layer[l];
        plan_attn(p, &L->sa, &w->self, r, B, T, T, D, (int)H, (int)D);
        plan_attn(p, &L->t2i, &w->t2i, r, B, T, N, (int)D / 2, (int)H, (int)D);
        plan_attn(p, &L->i2t, &w->i2t, r, B, N, T, (int)D / 2, (int)H, (int)D);
        const int ad = w->ad_w1 >= 0, ma = w->ma_w1 >= 0;
        ms_plan_add_f32(p, &L->q2p, ad ? BTD : 1);
        ms_plan_add_f32(p, &L->aq_h, ad ? B * T * Ha : 1);
        ms_plan_add_f32(p, &L->aq_g, ad ? B * T * Ha : 1);
        ms_plan_add_f32(p, &L->k4p, ad ? BND : 1);
        ms_plan_add_f32(p, &L->ak_h, ad ? B * N * Ha : 1);
        ms_plan_add_f32(p, &L->ak_g, ad ? B * N * Ha : 1);
        ms_plan_add_f32(p, &L->m_h, ma ? B * T * Ha : 1);
        ms_plan_add_f32(p, &L->m_g, ma ? B * T * Ha : 1);
        ms_plan_add_f32(p, &L->m_o, ma ? BTD : 1);
        float **bt[] = {&L->qs, &L->q1, &L->Q1, &L->qs2, &L->q2, &L->Q2, &L->q3, &L->Q3, &L->qs4};
        for (size_t i = 0; i < sizeof bt / sizeof bt[0]; i++) ms_plan_add_f32(p, bt[i], BTD);
        float **st[] = {&L->mu1, &L->rs1, &L->mu2, &L->rs2, &L->mu3, &L->rs3};
        for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) ms_plan_add_f32(p, st[i], B * T);
        ms_plan_add_f32(p, &L->h, B * T * F);
        ms_plan_add_f32(p, &L->hr, B * T * F);
        ms_plan_add_f32(p, &L->ks2, BND);
        ms_plan_add_f32(p, &L->k4, BND);
        ms_plan_add_f32(p, &L->K4, BND);
        ms_plan_add_f32(p, &L->mu4, B * N);
        ms_plan_add_f32(p, &L->rs4, B * N);
    }
    plan_attn(p, &a->fa, &d->fin, r, B, T, N, (int)D / 2, (int)H, (int)D);
    ms_plan_add_f32(p, &a->qf, BTD);
    ms_plan_add_f32(p, &a->kf, BND);
    ms_plan_add_f32(p, &a->qfin, BTD);
    ms_plan_add_f32(p, &a->hs, BTD);
    ms_plan_add_f32(p, &a->muf, B * T);
    ms_plan_add_f32(p, &a->rsf, B * T);
    ms_plan_add_f32(p, &a->src, BND);
    ms_plan_add_f32(p, &a->u1, B * (D / 4) * 4 * N);
    ms_plan_add_f32(p, &a->u1n, B * (D / 4) * 4 * N);
    ms_plan_add_f32(p, &a->u1g, B * (D / 4) * 4 * N);
    ms_plan_add_f32(p, &a->muu, B * 4 * N);
    ms_plan_add_f32(p, &a->rsu, B * 4 * N);
    ms_plan_add_f32(p, &a->u2, B * (D / 8) * P);
    ms_plan_add_f32(p, &a->up, B * (D / 8) * P);
    ms_plan_add_f32(p, &a->idx_tok, (M + 1) * B);
    ms_plan_add_f32(p, &a->idx_stack, M * B);
    ms_plan_add_f32(p, &a->X, (M + 1) * B * D);
    ms_plan_add_f32(p, &a->hh1, M * B * D);
    ms_plan_add_f32(p, &a->hh1r, M * B * D);
    ms_plan_add_f32(p, &a->hh2, M * B * D);
    ms_plan_add_f32(p, &a->hh2r, M * B * D);
    ms_plan_add_f32(p, &a->hout, M * B * (D / 8));
    ms_plan_add_f32(p, &a->H, B * M * (D / 8));
    ms_plan_add_f32(p, &a->ih1, B * 256);
    ms_plan_add_f32(p, &a->ih1r, B * 256);
    ms_plan_add_f32(p, &a->ih2, B * 256);
    ms_plan_add_f32(p, &a->ih2r, B * 256);
    ms_plan_add_f32(p, &a->masks, B * M * P);
    ms_plan_add_f32(p, &a->iou, B * M);
    /* backward scratch */
    float **bq[] = {&a->gQ, &a->gXq, &a->tq1, &a->tq2, &a->gtok};
    for (size_t i = 0; i < sizeof bq / sizeof bq[0]; i++) ms_plan_add_f32(p, bq[i], BTD);
    float **bk[] = {&a->gK, &a->gXk, &a->tk1, &a->tk2};
    for (size_t i = 0; i < sizeof bk / sizeof bk[0]; i++) ms_plan_add_f32(p, bk[i], BND);
    int64_t att = B * N * (D / 2) > BTD ? B * N * (D / 2) : BTD;
    ms_plan_add_f32(p, &a->dQ, att);
    ms_plan_add_f32(p, &a->dK, att);
    ms_plan_add_f32(p, &a->dV, att);
    ms_plan_add_f32(p, &a->dO, att);
    ms_plan_add_f32(p, &a->dh1, B * T * F);
    ms_plan_add_f32(p, &a->dh2, B * T * F);
    ms_plan_add_f32(p, &a->dup, B * (D / 8) * P);
    ms_plan_add_f32(p, &a->du2, B * (D / 8) * P);
    ms_plan_add_f32(p, &a->du1a, B * (D / 4) * 4 * N);
    ms_plan_add_f32(p, &a->du1b, B * (D / 4) * 4 * N);
    ms_plan_add_f32(p, &a->dsrc, BND);
    ms_plan_add_f32(p, &a->dH, B * M * (D / 8));
    ms_plan_add_f32(p, &a->dHs, M * B * (D / 8));
    ms_plan_add_f32(p, &a->dX, (M + 1) * B * D);
    ms_plan_add_f32(p, &a->dm1, B * 256);
    ms_plan_add_f32(p, &a->dm2, B * 256);
    ms_plan_add_f32(p, &a->dkeys_img, N * D);
    ms_plan_add_f32(p, &a->ddense_t, with_dense ? d->bp * N * D : 1);
    const int64_t rows = B * (N > T ? N : T);
    ms_plan_add_f32(p, &a->dlr, rows * (r ? r : 1));
    ms_plan_add_f32(p, &a->da1, rows * Ha);
    ms_plan_add_f32(p, &a->da2, rows * Ha);
    ms_plan_add_f32(p, &a->dad, BTD);

    /* kpe survives a re-plan only where it stays in place (its region belonged to it alone in the last layout). */
    const float *kpe_before = a->kpe;
    int fresh;
    ms_status rc = ms_plan_fit(p, dev, &d->arena, &fresh);
    if (fresh || a->kpe != kpe_before) a->kpe_valid = 0;
    ms_plan_free(p);
    return rc;
}

/* ---- building blocks -------------------------------------------------------------------------------------- */

#define PD(i) ms_params_data(d->ps, (i))
#define PG(i) ms_params_grad(d->ps, (i))

static ms_status zero(ms_device *dev, float *p, int64_t n) { return ms_dev_zero(dev, p, (size_t)n * sizeof(float)); }
static ms_status copy(ms_device *dev, float *dst, const float *src, int64_t n)
{
    return ms_dev_copy(dev, dst, src, (size_t)n * sizeof(float));
}
static ms_status acc(ms_device *dev, float *dst, const float *src, int64_t n)
{
    return ms_add_forward(dev, dst, dst, src, n);
}

/* LoRA: y (rows, ci) += (x·w_aᵀ)·w_bᵀ, keeping t = x·w_aᵀ (rows, r) for backward. No-op without LoRA. */
static ms_status lora_fwd(ms_device *dev, const ms_sam_decoder *d, float *y, float *t, const float *x, int ia, int ib,
                          int64_t rows, int ci)
{
    if (ia < 0) return MS_OK;
    const int64_t r = d->ps->p[ia].shape[0];
    MS_TRY(ms_linear_forward(dev, t, x, PD(ia), NULL, rows, d->dim, r));
    ms_matmul_desc md = ms_matmul_plain(rows, ci, r);
    md.trans_b = 1; /* w_b is stored (ci, r) */
    md.ldb = r;
    md.beta = 1.f;
    return ms_matmul_forward(dev, y, t, PD(ib), &md);
}

/* dx += the LoRA branch's input gradient for dy; w_a / w_b gradients += where trainable. */
static ms_status lora_bwd(ms_device *dev, const ms_sam_decoder *d, dec_act *s, const float *dy, const float *t,
                          const float *x, float *dx, int ia, int ib, int64_t rows, int ci)
{
    if (ia < 0) return MS_OK;
    const int64_t r = d->ps->p[ia].shape[0];
    MS_TRY(zero(dev, s->dlr, rows * r));
    MS_TRY(ms_linear_backward(dev, s->dlr, PG(ib), NULL, dy, t, PD(ib), rows, r, ci));
    return ms_linear_backward(dev, dx, PG(ia), NULL, s->dlr, x, PD(ia), rows, d->dim, r);
}

/* Adapter (finetune-SAM models/common.py): y = [x +] fc2(GELU(fc1(x))), hidden D/4; h, g keep fc1's and GELU's outputs. y ≠ x. */
static ms_status adapter_fwd(ms_device *dev, const ms_sam_decoder *d, int w1, int b1, int w2, int b2, float *y,
                             float *h, float *g, const float *x, int64_t rows, int skip)
{
    const int64_t D = d->dim, Ha = D / 4;
    MS_TRY(ms_linear_forward(dev, h, x, PD(w1), PD(b1), rows, D, Ha));
    MS_TRY(ms_gelu_forward(dev, g, h, rows * Ha));
    MS_TRY(ms_linear_forward(dev, y, g, PD(w2), PD(b2), rows, Ha, D));
    return skip ? acc(dev, y, x, rows * D) : MS_OK;
}

/* The branch fc2(GELU(fc1(x))) only: dx += its input gradient for dy (the skip's dy is the caller's). dx may be
 * dy itself: dy is read (fc2's backward) before dx is written (fc1's). */
static ms_status adapter_bwd(ms_device *dev, const ms_sam_decoder *d, dec_act *s, int w1, int b1, int w2, int b2,
                             const float *dy, const float *h, const float *g, const float *x, float *dx, int64_t rows)
{
    const int64_t D = d->dim, Ha = D / 4;
    MS_TRY(zero(dev, s->da1, rows * Ha));
    MS_TRY(ms_linear_backward(dev, s->da1, PG(w2), PG(b2), dy, g, PD(w2), rows, Ha, D));
    MS_TRY(zero(dev, s->da2, rows * Ha));
    MS_TRY(ms_gelu_backward(dev, s->da2, s->da1, h, rows * Ha));
    return ms_linear_backward(dev, dx, PG(w1), PG(b1), s->da2, x, PD(w1), rows, D, Ha);
}

static ms_attention_desc attn_desc(const ms_sam_decoder *d, int ci, int64_t B, int64_t nq, int64_t nk)
{
    ms_attention_desc ad;
    memset(&ad, 0, sizeof ad);
    ad.n_groups = B;
    ad.n_heads = d->heads;
    ad.head_dim = ci / d->heads;
    ad.scale = (float)(1.0 / sqrt((double)ad.head_dim));
    ad.nq = nq;
    ad.nk = nk;
    ad.ldq = ad.ldk = ad.ldv = ad.ldo = ci;
    return ad;
}

static ms_status attn_fwd(ms_device *dev, const ms_sam_decoder *d, const ms_sam_attn_params *w, attn_act *a,
                          const float *qin, const float *kin, const float *vin, int64_t B, int64_t nq, int64_t nk)
{
    const int D = d->dim, ci = w->ci;
    MS_TRY(ms_linear_forward(dev, a->Q, qin, PD(w->q_w), PD(w->q_b), B * nq, D, ci));
    MS_TRY(lora_fwd(dev, d, a->Q, a->lq, qin, w->lq_a, w->lq_b, B * nq, ci));
    MS_TRY(ms_linear_forward(dev, a->K, kin, PD(w->k_w), PD(w->k_b), B * nk, D, ci));
    MS_TRY(ms_linear_forward(dev, a->V, vin, PD(w->v_w), PD(w->v_b), B * nk, D, ci));
    MS_TRY(lora_fwd(dev, d, a->V, a->lv, vin, w->lv_a, w->lv_b, B * nk, ci));
    ms_attention_desc ad = attn_desc(d, ci, B, nq, nk);
    MS_TRY(ms_attention_forward(dev, a->O, a->lse, a->Q, a->K, a->V, &ad));
    return ms_linear_forward(dev, a->out, a->O, PD(w->o_w), PD(w->o_b), B * nq, ci, D);
}

/* dout (B·nq, D) → dqin, dkin, dvin += (any may alias each other: the linear backward calls run one at a time). */
static ms_status attn_bwd(ms_device *dev, const ms_sam_decoder *d, dec_act *s, const ms_sam_attn_params *w,
                          const attn_act *a, const float *dout, const float *qin, const float *kin, const float *vin,
                          float *dqin, float *dkin, float *dvin, int64_t B, int64_t nq, int64_t nk)
{
    const int D = d->dim, ci = w->ci;
    MS_TRY(ms_dev_zero(dev, s->dO, (size_t)(B * nq * ci) * sizeof(float)));
    MS_TRY(ms_linear_backward(dev, s->dO, PG(w->o_w), PG(w->o_b), dout, a->O, PD(w->o_w), B * nq, ci, D));
    MS_TRY(ms_dev_zero(dev, s->dQ, (size_t)(B * nq * ci) * sizeof(float)));
    MS_TRY(ms_dev_zero(dev, s->dK, (size_t)(B * nk * ci) * sizeof(float)));
    MS_TRY(ms_dev_zero(dev, s->dV, (size_t)(B * nk * ci) * sizeof(float)));
    ms_attention_desc ad = attn_desc(d, ci, B, nq, nk);
    MS_TRY(ms_attention_backward(dev, s->dQ, s->dK, s->dV, NULL, NULL, s->dO, a->O, a->lse, a->Q, a->K, a->V, &ad));
    MS_TRY(ms_linear_backward(dev, dqin, PG(w->q_w), PG(w->q_b), s->dQ, qin, PD(w->q_w), B * nq, D, ci));
    MS_TRY(lora_bwd(dev, d, s, s->dQ, a->lq, qin, dqin, w->lq_a, w->lq_b, B * nq, ci));
    MS_TRY(ms_linear_backward(dev, dkin, PG(w->k_w), PG(w->k_b), s->dK, kin, PD(w->k_w), B * nk, D, ci));
    MS_TRY(ms_linear_backward(dev, dvin, PG(w->v_w), PG(w->v_b), s->dV, vin, PD(w->v_w), B * nk, D, ci));
    return lora_bwd(dev, d, s, s->dV, a->lv, vin, dvin, w->lv_a, w->lv_b, B * nk, ci);
}

/* A 3-layer MLP with ReLU between layers (hypernetworks, IoU head): x (B, in) → out (B, n_out). */
static ms_status mlp3_fwd(ms_device *dev, const ms_sam_decoder *d, const int *w, const int *b, const float *x,
                          float *h1, float *h1r, float *h2, float *h2r, float *out, int64_t B, int64_t n_out)
{
    const int64_t D = d->dim;
    MS_TRY(ms_linear_forward(dev, h1, x, PD(w[0]), PD(b[0]), B, D, 256));
    MS_TRY(ms_relu_forward(dev, h1r, h1, B * 256));
    MS_TRY(ms_linear_forward(dev, h2, h1r, PD(w[1]), PD(b[1]), B, 256, 256));
    MS_TRY(ms_relu_forward(dev, h2r, h2, B * 256));
    return ms_linear_forward(dev, out, h2r, PD(w[2]), PD(b[2]), B, 256, n_out);
}

static ms_status mlp3_bwd(ms_device *dev, const ms_sam_decoder *d, dec_act *s, const int *w, const int *b,
                          const float *x, const float *h1, const float *h1r, const float *h2, const float *h2r,
                          const float *dout, float *dx, int64_t B, int64_t n_out)
{
    const int64_t D = d->dim;
    const size_t bytes = (size_t)(B * 256) * sizeof(float);
    MS_TRY(ms_dev_zero(dev, s->dm1, bytes));
    MS_TRY(ms_linear_backward(dev, s->dm1, PG(w[2]), PG(b[2]), dout, h2r, PD(w[2]), B, 256, n_out));
    MS_TRY(ms_dev_zero(dev, s->dm2, bytes));
    MS_TRY(ms_relu_backward(dev, s->dm2, s->dm1, h2, B * 256));
    MS_TRY(ms_dev_zero(dev, s->dm1, bytes));
    MS_TRY(ms_linear_backward(dev, s->dm1, PG(w[1]), PG(b[1]), s->dm2, h1r, PD(w[1]), B, 256, 256));
    MS_TRY(ms_dev_zero(dev, s->dm2, bytes));
    MS_TRY(ms_relu_backward(dev, s->dm2, s->dm1, h1, B * 256));
    return ms_linear_backward(dev, dx, PG(w[0]), PG(b[0]), s->dm2, x, PD(w[0]), B, D, 256);
}


/* ---- forward ---------------------------------------------------------------------------------------------- */

static ms_status build_tokens(ms_device *dev, ms_sam_decoder *d, dec_act *a, const ms_sam_prompt_state *pst)
{
    const int64_t D = d->dim, T = d->T, M = d->M, ns = pst->ns, bp = d->bp, B = d->B;
    float *host = malloc((size_t)(bp * T * D) * sizeof(float));
    float *kpe = malloc((size_t)(d->N * D) * sizeof(float));
    int32_t *idx = malloc((size_t)((M + 1) * B + M * B) * sizeof(int32_t));
    ms_status rc = MS_OK;
    if (!host || !kpe || !idx) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
    for (int64_t b = 0; b < bp; b++) {
        float *t = host + b * T * D;
        rc = ms_dev_to_host(dev, t, PD(d->iou_token), (size_t)D * sizeof(float));
        if (!rc) rc = ms_dev_to_host(dev, t + D, PD(a->head.mask_tokens), (size_t)(M * D) * sizeof(float));
        if (rc) goto leave;
        if (ns) memcpy(t + (1 + M) * D, pst->sparse + b * ns * D, (size_t)(ns * D) * sizeof(float));
    }
    /* Tile the prompt batch over the working batch (bp == B, or bp == 1). */
    for (int64_t b = 0; b < B; b++) {
        rc = ms_dev_from_host(dev, a->tok + b * T * D, host + (bp == B ? b : 0) * T * D, (size_t)(T * D) * sizeof(float));
        if (rc) goto leave;
    }
    /* Row indices: X[t·B + b] = hs[b·T + t] for t in 0..M (IoU token, then mask tokens); H[b·M + i] = hout[i·B + b]. */
    for (int64_t t = 0; t <= M; t++)
        for (int64_t b = 0; b < B; b++) idx[t * B + b] = (int32_t)(b * T + t);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < M; i++) idx[(M + 1) * B + b * M + i] = (int32_t)(i * B + b);
    rc = ms_dev_from_host(dev, a->idx_tok, idx, (size_t)((M + 1) * B) * sizeof(int32_t));
    if (!rc) rc = ms_dev_from_host(dev, a->idx_stack, idx + (M + 1) * B, (size_t)(M * B) * sizeof(int32_t));
    if (rc) goto leave;
    if (pst->pe->emb_h != d->emb_h || pst->pe->emb_w != d->emb_w) {
        rc = ms_error(MS_EINVAL, "mask decoder: prompt encoder grid %dx%d, decoder %dx%d", pst->pe->emb_h,
                      pst->pe->emb_w, d->emb_h, d->emb_w);
        goto leave;
    }
    /* The dense PE depends only on the (frozen) gaussian matrix: recompute it when that changed. */
    float G[256];
    const ms_params *pps = pst->pe->ps;
    rc = ms_dev_to_host(dev, G, ms_params_data(pps, pst->pe->gauss), sizeof G);
    if (rc) goto leave;
    if (!a->kpe_valid || memcmp(G, a->G, sizeof G)) {
        rc = ms_sam_dense_pe(dev, pst->pe, kpe);
        if (!rc) rc = ms_dev_from_host(dev, a->kpe, kpe, (size_t)(d->N * D) * sizeof(float));
        if (!rc) { memcpy(a->G, G, sizeof G); a->kpe_valid = 1; }
    }
leave:
    free(host);
    free(kpe);
    free(idx);
    return rc;
}

static ms_status layer_fwd(ms_device *dev, ms_sam_decoder *d, dec_act *a, int l, const float *Xq, const float *Xk)
{
    const ms_sam_dec_layer_params *w = &d->layer[l];
    layer_act *L = &a->L[l];
    const int64_t B = d->B, T = d->T, N = d->N, D = d->dim, F = d->mlp_dim;
    const int64_t BTD = B * T * D, BND = B * N * D;
    L->Xq = Xq;
    L->Xk = Xk;
    /* (1) self-attention; layer 0: no PE, no residual */
    if (l == 0) {
        MS_TRY(attn_fwd(dev, d, &w->self, &L->sa, Xq, Xq, Xq, B, T, T));
        MS_TRY(copy(dev, L->q1, L->sa.out, BTD));
    } else {
        MS_TRY(ms_add_forward(dev, L->qs, Xq, a->tok, BTD));
        MS_TRY(attn_fwd(dev, d, &w->self, &L->sa, L->qs, L->qs, Xq, B, T, T));
        MS_TRY(ms_add_forward(dev, L->q1, Xq, L->sa.out, BTD));
    }
    MS_TRY(ms_layernorm_forward(dev, L->Q1, L->mu1, L->rs1, L->q1, PD(w->norm_w[0]), PD(w->norm_b[0]), B * T, D,
                                1e-5f));
    /* (2) tokens → image */
    MS_TRY(ms_add_forward(dev, L->qs2, L->Q1, a->tok, BTD));
    MS_TRY(ms_add_bcast_forward(dev, L->ks2, Xk, a->kpe, B, N * D));
    MS_TRY(attn_fwd(dev, d, &w->t2i, &L->t2i, L->qs2, L->ks2, Xk, B, T, N));
    const int ad = w->ad_w1 >= 0;
    MS_TRY(ms_add_forward(dev, ad ? L->q2p : L->q2, L->Q1, L->t2i.out, BTD));
    if (ad) MS_TRY(adapter_fwd(dev, d, w->ad_w1, w->ad_b1, w->ad_w2, w->ad_b2, L->q2, L->aq_h, L->aq_g, L->q2p, B * T, 1));
    MS_TRY(ms_layernorm_forward(dev, L->Q2, L->mu2, L->rs2, L->q2, PD(w->norm_w[1]), PD(w->norm_b[1]), B * T, D,
                                1e-5f));
    /* (3) MLP */
    MS_TRY(ms_linear_forward(dev, L->h, L->Q2, PD(w->lin1_w), PD(w->lin1_b), B * T, D, F));
    MS_TRY(ms_relu_forward(dev, L->hr, L->h, B * T * F));
    MS_TRY(ms_linear_forward(dev, L->q3, L->hr, PD(w->lin2_w), PD(w->lin2_b), B * T, F, D));
    MS_TRY(ms_add_forward(dev, L->q3, L->q3, L->Q2, BTD));
    if (w->ma_w1 >= 0) { /* + scale·MLP_Adapter(Q2), no skip */
        MS_TRY(adapter_fwd(dev, d, w->ma_w1, w->ma_b1, w->ma_w2, w->ma_b2, L->m_o, L->m_h, L->m_g, L->Q2, B * T, 0));
        MS_TRY(ms_scale_forward(dev, L->m_o, L->m_o, d->peft.adapter_scale, BTD));
        MS_TRY(acc(dev, L->q3, L->m_o, BTD));
    }
    MS_TRY(ms_layernorm_forward(dev, L->Q3, L->mu3, L->rs3, L->q3, PD(w->norm_w[2]), PD(w->norm_b[2]), B * T, D,
                                1e-5f));
    /* (4) image → tokens (queries are the image tokens) */
    MS_TRY(ms_add_forward(dev, L->qs4, L->Q3, a->tok, BTD));
    MS_TRY(attn_fwd(dev, d, &w->i2t, &L->i2t, L->ks2, L->qs4, L->Q3, B, N, T));
    MS_TRY(ms_add_forward(dev, ad ? L->k4p : L->k4, Xk, L->i2t.out, BND));
    if (ad) MS_TRY(adapter_fwd(dev, d, w->ad_w1, w->ad_b1, w->ad_w2, w->ad_b2, L->k4, L->ak_h, L->ak_g, L->k4p, B * N, 1));
    return ms_layernorm_forward(dev, L->K4, L->mu4, L->rs4, L->k4, PD(w->norm_w[3]), PD(w->norm_b[3]), B * N, D,
                                1e-5f);
}

ms_status ms_sam_decoder_forward(ms_device *dev, ms_sam_decoder *d, const float *emb, int b_img,
                                 const ms_sam_prompt_state *pst)
{
    const int bp = pst->bp;
    MS_FAIL_IF(b_img < 1 || bp < 1 || (b_img != bp && b_img != 1 && bp != 1), MS_EINVAL,
               "mask decoder: image batch %d and prompt batch %d do not broadcast", b_img, bp);
    if (!d->priv) {
        d->priv = calloc(1, sizeof(dec_act));
        MS_FAIL_IF(!d->priv, MS_ENOMEM, "out of memory");
    }
    dec_act *a = d->priv;
    a->head = *ms_sam_decoder_head(d); /* the backward uses the head of its forward */
    const ms_sam_dec_head *hd = &a->head;
    d->dev = dev;
    d->b_img = b_img;
    d->bp = bp;
    d->B = b_img > bp ? b_img : bp;
    d->M = hd->n_mask_tokens;
    d->T = 1 + d->M + pst->ns;
    d->N = (int64_t)d->emb_h * d->emb_w;
    d->emb_in = emb;
    d->pst = pst;
    MS_TRY(plan_all(dev, d, a, pst->dense != NULL));
    const int64_t B = d->B, T = d->T, N = d->N, D = d->dim, M = d->M, P = 16 * N;
    const int64_t BND = B * N * D;
    MS_TRY(build_tokens(dev, d, a, pst));

    /* keys = image embedding (NCHW → token rows) + dense prompt embedding */
    if (b_img == B) MS_TRY(ms_transpose_forward(dev, a->keys0, emb, B, D, N));
    else {
        MS_TRY(ms_transpose_forward(dev, a->keys0, emb, 1, D, N));
        for (int64_t b = 1; b < B; b++) MS_TRY(copy(dev, a->keys0 + b * N * D, a->keys0, N * D));
    }
    if (!pst->dense) MS_TRY(ms_add_bcast_forward(dev, a->keys0, a->keys0, pst->dense_vec, B * N, D));
    else {
        MS_TRY(ms_transpose_forward(dev, a->dense_t, pst->dense, bp, D, N));
        if (bp == B) MS_TRY(acc(dev, a->keys0, a->dense_t, BND));
        else MS_TRY(ms_add_bcast_forward(dev, a->keys0, a->keys0, a->dense_t, B, N * D));
    }

    /* two-way transformer */
    const float *Xq = a->tok, *Xk = a->keys0;
    for (int l = 0; l < d->depth; l++) {
        MS_TRY(layer_fwd(dev, d, a, l, Xq, Xk));
        Xq = a->L[l].Q3;
        Xk = a->L[l].K4;
    }
    MS_TRY(ms_add_forward(dev, a->qf, Xq, a->tok, B * T * D));
    MS_TRY(ms_add_bcast_forward(dev, a->kf, Xk, a->kpe, B, N * D));
    MS_TRY(attn_fwd(dev, d, &d->fin, &a->fa, a->qf, a->kf, Xk, B, T, N));
    MS_TRY(ms_add_forward(dev, a->qfin, Xq, a->fa.out, B * T * D));
    MS_TRY(ms_layernorm_forward(dev, a->hs, a->muf, a->rsf, a->qfin, PD(d->norm_f_w), PD(d->norm_f_b), B * T, D,
                                1e-5f));
    d->hs = a->hs;
    d->keys_out = (float *)Xk;

    /* output upscaling */
    const int64_t h = d->emb_h, w = d->emb_w, c1 = D / 4, c2 = D / 8;
    MS_TRY(ms_transpose_forward(dev, a->src, Xk, B, N, D));
    MS_TRY(ms_conv_transpose2x2_forward(dev, a->u1, a->src, PD(d->up0_w), PD(d->up0_b), B, D, h, w, c1));
    MS_TRY(ms_layernorm2d_forward(dev, a->u1n, a->muu, a->rsu, a->u1, PD(d->up1_w), PD(d->up1_b), B, c1, 4 * N,
                                  1e-6f));
    MS_TRY(ms_gelu_forward(dev, a->u1g, a->u1n, B * c1 * 4 * N));
    MS_TRY(ms_conv_transpose2x2_forward(dev, a->u2, a->u1g, PD(d->up3_w), PD(d->up3_b), B, c1, 2 * h, 2 * w, c2));
    MS_TRY(ms_gelu_forward(dev, a->up, a->u2, B * c2 * P));

    /* hypernetworks and IoU head on the output tokens */
    MS_TRY(ms_gather_rows_forward(dev, a->X, a->hs, (const int32_t *)a->idx_tok, (M + 1) * B, D));
    for (int64_t i = 0; i < M; i++)
        MS_TRY(mlp3_fwd(dev, d, hd->hyp_w[i], hd->hyp_b[i], a->X + (1 + i) * B * D, a->hh1 + i * B * D,
                        a->hh1r + i * B * D, a->hh2 + i * B * D, a->hh2r + i * B * D, a->hout + i * B * c2, B, c2));
    MS_TRY(ms_gather_rows_forward(dev, a->H, a->hout, (const int32_t *)a->idx_stack, M * B, c2));
    ms_matmul_desc md = ms_matmul_plain(M, P, c2);
    md.batch = B;
    md.stride_a = M * c2;
    md.stride_b = c2 * P;
    md.stride_c = M * P;
    MS_TRY(ms_matmul_forward(dev, a->masks, a->H, a->up, &md));
    MS_TRY(mlp3_fwd(dev, d, hd->iou_w, hd->iou_b, a->X, a->ih1, a->ih1r, a->ih2, a->ih2r, a->iou, B, M));
    d->masks = a->masks;
    d->iou = a->iou;
    return MS_OK;
}

/* ---- backward --------------------------------------------------------------------------------------------- */

/* gQ, gK: gradients w.r.t. the layer's outputs (Q3, K4). Leaves the input gradients in gXq, gXk; query-PE
 * gradients go to gtok. */
static ms_status layer_bwd(ms_device *dev, ms_sam_decoder *d, dec_act *a, int l)
{
    const ms_sam_dec_layer_params *w = &d->layer[l];
    layer_act *L = &a->L[l];
    const int64_t B = d->B, T = d->T, N = d->N, D = d->dim, F = d->mlp_dim;
    const int64_t BTD = B * T * D, BND = B * N * D;
    float *gQ = a->gQ, *gK = a->gK;
    /* (4) keys = LN4(Xk + i2t(q=ks2, k=qs4, v=Q3)) */
    MS_TRY(zero(dev, a->tk1, BND));
    MS_TRY(ms_layernorm_backward(dev, a->tk1, PG(w->norm_w[3]), PG(w->norm_b[3]), gK, L->k4, PD(w->norm_w[3]),
                                 L->mu4, L->rs4, B * N, D));
    const int ad = w->ad_w1 >= 0;
    if (ad) /* k4 = k4p + Adapter branch: tk1 becomes d k4p */
        MS_TRY(adapter_bwd(dev, d, a, w->ad_w1, w->ad_b1, w->ad_w2, w->ad_b2, a->tk1, L->ak_h, L->ak_g, L->k4p,
                           a->tk1, B * N));
    MS_TRY(copy(dev, a->gXk, a->tk1, BND));
    MS_TRY(zero(dev, a->tk2, BND)); /* d ks2 */
    MS_TRY(zero(dev, a->tq1, BTD)); /* d qs4 */
    MS_TRY(attn_bwd(dev, d, a, &w->i2t, &L->i2t, a->tk1, L->ks2, L->qs4, L->Q3, a->tk2, a->tq1, gQ, B, N, T));
    MS_TRY(acc(dev, gQ, a->tq1, BTD));
    MS_TRY(acc(dev, a->gtok, a->tq1, BTD));
    /* (3) Q3 = LN3(Q2 + lin2(ReLU(lin1(Q2)))) */
    MS_TRY(zero(dev, a->tq1, BTD));
    MS_TRY(ms_layernorm_backward(dev, a->tq1, PG(w->norm_w[2]), PG(w->norm_b[2]), gQ, L->q3, PD(w->norm_w[2]),
                                 L->mu3, L->rs3, B * T, D));
    MS_TRY(copy(dev, gQ, a->tq1, BTD));
    MS_TRY(zero(dev, a->dh1, B * T * F));
    MS_TRY(ms_linear_backward(dev, a->dh1, PG(w->lin2_w), PG(w->lin2_b), a->tq1, L->hr, PD(w->lin2_w), B * T, F, D));
    MS_TRY(zero(dev, a->dh2, B * T * F));
    MS_TRY(ms_relu_backward(dev, a->dh2, a->dh1, L->h, B * T * F));
    MS_TRY(ms_linear_backward(dev, gQ, PG(w->lin1_w), PG(w->lin1_b), a->dh2, L->Q2, PD(w->lin1_w), B * T, D, F));
    if (w->ma_w1 >= 0) {
        MS_TRY(ms_scale_forward(dev, a->dad, a->tq1, d->peft.adapter_scale, BTD));
        MS_TRY(adapter_bwd(dev, d, a, w->ma_w1, w->ma_b1, w->ma_w2, w->ma_b2, a->dad, L->m_h, L->m_g, L->Q2, gQ,
                           B * T));
    }
    /* (2) Q2 = LN2(Q1 + t2i(q=qs2, k=ks2, v=Xk)) */
    MS_TRY(zero(dev, a->tq1, BTD));
    MS_TRY(ms_layernorm_backward(dev, a->tq1, PG(w->norm_w[1]), PG(w->norm_b[1]), gQ, L->q2, PD(w->norm_w[1]),
                                 L->mu2, L->rs2, B * T, D));
    if (ad) /* q2 = q2p + Adapter branch (the same weights as the keys': their gradients add up) */
        MS_TRY(adapter_bwd(dev, d, a, w->ad_w1, w->ad_b1, w->ad_w2, w->ad_b2, a->tq1, L->aq_h, L->aq_g, L->q2p,
                           a->tq1, B * T));
    MS_TRY(copy(dev, gQ, a->tq1, BTD));
    MS_TRY(zero(dev, a->tq2, BTD)); /* d qs2 */
    MS_TRY(attn_bwd(dev, d, a, &w->t2i, &L->t2i, a->tq1, L->qs2, L->ks2, L->Xk, a->tq2, a->tk2, a->gXk, B, T, N));
    MS_TRY(acc(dev, gQ, a->tq2, BTD));
    MS_TRY(acc(dev, a->gtok, a->tq2, BTD));
    MS_TRY(acc(dev, a->gXk, a->tk2, BND)); /* ks2 = Xk + kpe, from steps (2) and (4) */
    /* (1) Q1 = LN1(self-attention) */
    MS_TRY(zero(dev, a->tq1, BTD));
    MS_TRY(ms_layernorm_backward(dev, a->tq1, PG(w->norm_w[0]), PG(w->norm_b[0]), gQ, L->q1, PD(w->norm_w[0]),
                                 L->mu1, L->rs1, B * T, D));
    if (l == 0) {
        MS_TRY(zero(dev, a->gXq, BTD));
        MS_TRY(attn_bwd(dev, d, a, &w->self, &L->sa, a->tq1, L->Xq, L->Xq, L->Xq, a->gXq, a->gXq, a->gXq, B, T, T));
    } else {
        MS_TRY(copy(dev, a->gXq, a->tq1, BTD));
        MS_TRY(zero(dev, a->tq2, BTD)); /* d qs */
        MS_TRY(attn_bwd(dev, d, a, &w->self, &L->sa, a->tq1, L->qs, L->qs, L->Xq, a->tq2, a->tq2, a->gXq, B, T, T));
        MS_TRY(acc(dev, a->gXq, a->tq2, BTD));
        MS_TRY(acc(dev, a->gtok, a->tq2, BTD));
    }
    /* the inputs' gradients become the next (lower) layer's output gradients */
    float *t = a->gQ; a->gQ = a->gXq; a->gXq = t;
    t = a->gK; a->gK = a->gXk; a->gXk = t;
    return MS_OK;
}

/* Splits the token gradient (B,T,D) into the output tokens' gradients and the sparse prompt gradients. */
static ms_status tokens_bwd(ms_device *dev, ms_sam_decoder *d, dec_act *a, float *d_sparse_host)
{
    const int64_t B = d->B, T = d->T, D = d->dim, M = d->M, bp = d->bp, ns = T - 1 - M;
    float *g = malloc((size_t)(B * T * D) * sizeof(float));
    float *ot = calloc((size_t)((1 + M) * D), sizeof(float));
    ms_status rc = MS_OK;
    if (!g || !ot) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
    rc = ms_dev_to_host(dev, g, a->gtok, (size_t)(B * T * D) * sizeof(float));
    if (rc) goto leave;
    for (int64_t b = 0; b < B; b++) {
        const float *gb = g + b * T * D;
        for (int64_t i = 0; i < (1 + M) * D; i++) ot[i] += gb[i];
        if (d_sparse_host && ns) {
            float *ds = d_sparse_host + (bp == B ? b : 0) * ns * D; /* a tiled prompt sums over the batch */
            for (int64_t i = 0; i < ns * D; i++) ds[i] += gb[(1 + M) * D + i];
        }
    }
    rc = ms_sam_acc_from_host(dev, PG(d->iou_token), ot, D);
    if (!rc) rc = ms_sam_acc_from_host(dev, PG(a->head.mask_tokens), ot + D, M * D);
leave:
    free(g);
    free(ot);
    return rc;
}

ms_status ms_sam_decoder_backward(ms_device *dev, ms_sam_decoder *d, const float *dmasks, const float *diou,
                                  float *demb, float *d_sparse_host, float *d_dense)
{
    dec_act *a = d->priv;
    MS_FAIL_IF(!a || !d->pst, MS_EBADSTATE, "mask decoder: backward without a forward");
    const ms_sam_prompt_state *pst = d->pst;
    const int64_t B = d->B, T = d->T, N = d->N, D = d->dim, M = d->M, P = 16 * N;
    const int64_t h = d->emb_h, w = d->emb_w, c1 = D / 4, c2 = D / 8;
    const int64_t BTD = B * T * D, BND = B * N * D;
    MS_TRY(zero(dev, a->dX, (M + 1) * B * D));
    MS_TRY(zero(dev, a->gK, BND));
    MS_TRY(zero(dev, a->gtok, BTD));
    if (dmasks) {
        ms_matmul_desc md = ms_matmul_plain(M, P, c2);
        md.batch = B;
        md.stride_a = M * c2;
        md.stride_b = c2 * P;
        md.stride_c = M * P;
        MS_TRY(zero(dev, a->dH, B * M * c2));
        MS_TRY(zero(dev, a->dup, B * c2 * P));
        MS_TRY(ms_matmul_backward(dev, a->dH, a->dup, dmasks, a->H, a->up, &md));
        MS_TRY(zero(dev, a->dHs, M * B * c2));
        MS_TRY(ms_gather_rows_backward(dev, a->dHs, a->dH, (const int32_t *)a->idx_stack, M * B, c2, M * B));
        for (int64_t i = 0; i < M; i++)
            MS_TRY(mlp3_bwd(dev, d, a, a->head.hyp_w[i], a->head.hyp_b[i], a->X + (1 + i) * B * D, a->hh1 + i * B * D,
                            a->hh1r + i * B * D, a->hh2 + i * B * D, a->hh2r + i * B * D, a->dHs + i * B * c2,
                            a->dX + (1 + i) * B * D, B, c2));
        /* output upscaling */
        MS_TRY(zero(dev, a->du2, B * c2 * P));
        MS_TRY(ms_gelu_backward(dev, a->du2, a->dup, a->u2, B * c2 * P));
        MS_TRY(zero(dev, a->du1a, B * c1 * 4 * N));
        MS_TRY(ms_conv_transpose2x2_backward(dev, a->du1a, PG(d->up3_w), PG(d->up3_b), a->du2, a->u1g, PD(d->up3_w),
                                             B, c1, 2 * h, 2 * w, c2));
        MS_TRY(zero(dev, a->du1b, B * c1 * 4 * N));
        MS_TRY(ms_gelu_backward(dev, a->du1b, a->du1a, a->u1n, B * c1 * 4 * N));
        MS_TRY(zero(dev, a->du1a, B * c1 * 4 * N));
        MS_TRY(ms_layernorm2d_backward(dev, a->du1a, PG(d->up1_w), PG(d->up1_b), a->du1b, a->u1, PD(d->up1_w), a->muu,
                                       a->rsu, B, c1, 4 * N));
        MS_TRY(zero(dev, a->dsrc, BND));
        MS_TRY(ms_conv_transpose2x2_backward(dev, a->dsrc, PG(d->up0_w), PG(d->up0_b), a->du1a, a->src, PD(d->up0_w),
                                             B, D, h, w, c1));
        MS_TRY(ms_transpose_backward(dev, a->gK, a->dsrc, B, N, D));
    }
    if (diou)
        MS_TRY(mlp3_bwd(dev, d, a, a->head.iou_w, a->head.iou_b, a->X, a->ih1, a->ih1r, a->ih2, a->ih2r, diou, a->dX, B, M));
    /* hs → final attention → LN */
    MS_TRY(zero(dev, a->tq1, BTD));
    MS_TRY(ms_gather_rows_backward(dev, a->tq1, a->dX, (const int32_t *)a->idx_tok, (M + 1) * B, D, B * T));
    const float *K = d->keys_out;
    MS_TRY(zero(dev, a->gQ, BTD));
    MS_TRY(ms_layernorm_backward(dev, a->gQ, PG(d->norm_f_w), PG(d->norm_f_b), a->tq1, a->qfin, PD(d->norm_f_w),
                                 a->muf, a->rsf, B * T, D));
    MS_TRY(zero(dev, a->tq2, BTD)); /* d qf */
    MS_TRY(copy(dev, a->tq1, a->gQ, BTD));
    MS_TRY(attn_bwd(dev, d, a, &d->fin, &a->fa, a->tq1, a->qf, a->kf, K, a->tq2, a->gK, a->gK, B, T, N));
    MS_TRY(acc(dev, a->gQ, a->tq2, BTD));
    MS_TRY(acc(dev, a->gtok, a->tq2, BTD));
    for (int l = d->depth - 1; l >= 0; l--) MS_TRY(layer_bwd(dev, d, a, l));
    MS_TRY(acc(dev, a->gtok, a->gQ, BTD)); /* layer 0's queries are the tokens themselves */
    MS_TRY(tokens_bwd(dev, d, a, d_sparse_host));

    /* keys0 = tile(transpose(emb)) + dense */
    const float *gk0 = a->gK;
    if (demb) {
        if (d->b_img == B) MS_TRY(ms_transpose_backward(dev, demb, gk0, B, D, N));
        else {
            MS_TRY(zero(dev, a->dkeys_img, N * D));
            MS_TRY(ms_add_bcast_backward(dev, NULL, a->dkeys_img, gk0, B, N * D));
            MS_TRY(ms_transpose_backward(dev, demb, a->dkeys_img, 1, D, N));
        }
    }
    if (!pst->dense) {
        if (pst->dense_vec_grad) MS_TRY(ms_add_bcast_backward(dev, NULL, pst->dense_vec_grad, gk0, B * N, D));
    } else if (d_dense) {
        const float *g = gk0;
        if (d->bp != B) {
            MS_TRY(zero(dev, a->ddense_t, N * D));
            MS_TRY(ms_add_bcast_backward(dev, NULL, a->ddense_t, gk0, B, N * D));
            g = a->ddense_t;
        }
        MS_TRY(ms_transpose_backward(dev, d_dense, g, d->bp, D, N));
    }
    return MS_OK;
}
