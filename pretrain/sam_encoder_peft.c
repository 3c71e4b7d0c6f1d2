/* pretrain/sam_encoder_peft.c — parameter-efficient fine-tuning of the encoder (finetune-SAM,
 * mazurowski-lab/finetune-SAM models/sam_LoRa.py and models/common.py Adapter): registration of the LoRA (q and v)
 * and adapter tensors and their initialisation. Their forward and backward branches run inside the encoder blocks
 * (sam_encoder.c); the scheme is described in sam_encoder.h. */
#include "sam_encoder_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"

ms_status ms_sam_encoder_add_peft(ms_sam_encoder *enc, const ms_sam_enc_peft *pf)
{
    ms_params *ps = enc->ps;
    const ms_sam_enc_config *c = &enc->cfg;
    MS_FAIL_IF(!ps, MS_EBADSTATE, "sam encoder: add_peft before ms_sam_encoder_init");
    MS_FAIL_IF(ps->data, MS_EBADSTATE, "sam encoder: add_peft after ms_params_alloc");
    MS_FAIL_IF(ms_sam_enc_has_peft(enc), MS_EBADSTATE, "sam encoder: PEFT tensors already added");
    MS_FAIL_IF(enc->priv, MS_EBADSTATE, "sam encoder: add_peft after ms_sam_encoder_reserve");
    MS_FAIL_IF(pf->lora_rank < 0 || pf->lora_rank > c->embed_dim, MS_EINVAL, "sam encoder: LoRA rank %d",
               pf->lora_rank);
    MS_FAIL_IF(pf->adapter_blocks && c->embed_dim < 4, MS_EINVAL, "sam encoder: adapters need D >= 4");
    uint64_t all = c->depth >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << c->depth) - 1);
    ms_sam_enc_peft f = *pf;
    f.lora_blocks = f.lora_rank ? f.lora_blocks & all : 0;
    f.adapter_blocks &= all;
    if (!f.lora_blocks) f.lora_rank = 0;
    if (f.adapter_blocks && f.adapter_scale == 0.0f) f.adapter_scale = 0.5f; /* finetune-SAM's Block default */
    /* the encoder keeps no prefix: recover it from the first tensor's name */
    char prefix[MS_PARAM_NAME_MAX];
    const char *pe = ps->p[enc->pos_embed].name;
    size_t lp = strlen(pe) - strlen("pos_embed");
    snprintf(prefix, sizeof prefix, "%.*s", (int)lp, pe);
    int64_t D = c->embed_dim, r = f.lora_rank, Da = D / 4;
    int first = ps->n, bad = 0;
#define ADD(dst, key, a, b, ndim, nd)                                                                              \
    do {                                                                                                           \
        snprintf(k, sizeof k, "blocks.%d.%s", i, key);                                                             \
        dst = ms_sam_enc_param_add(ps, prefix, k, a, b, 0, 0, ndim, nd);                                           \
        bad |= dst < 0;                                                                                            \
    } while (0)
    for (int i = 0; i < c->depth && !bad; i++) {
        ms_sam_enc_block_params *b = &enc->blk[i];
        char k[96];
        if (f.lora_blocks >> i & 1) {
            ADD(b->lora_aq, "attn.qkv.linear_a_q.weight", r, D, 2, 0);
            ADD(b->lora_bq, "attn.qkv.linear_b_q.weight", D, r, 2, 0);
            ADD(b->lora_av, "attn.qkv.linear_a_v.weight", r, D, 2, 0);
            ADD(b->lora_bv, "attn.qkv.linear_b_v.weight", D, r, 2, 0);
        }
        if (f.adapter_blocks >> i & 1) {
            ADD(b->sa_w1, "Space_Adapter.D_fc1.weight", Da, D, 2, 0);
            ADD(b->sa_b1, "Space_Adapter.D_fc1.bias", Da, 0, 1, 1);
            ADD(b->sa_w2, "Space_Adapter.D_fc2.weight", D, Da, 2, 0);
            ADD(b->sa_b2, "Space_Adapter.D_fc2.bias", D, 0, 1, 1);
            ADD(b->ma_w1, "MLP_Adapter.D_fc1.weight", Da, D, 2, 0);
            ADD(b->ma_b1, "MLP_Adapter.D_fc1.bias", Da, 0, 1, 1);
            ADD(b->ma_w2, "MLP_Adapter.D_fc2.weight", D, Da, 2, 0);
            ADD(b->ma_b2, "MLP_Adapter.D_fc2.bias", D, 0, 1, 1);
        }
    }
#undef ADD
    if (bad) return MS_EINVAL;
    for (int j = first; j < ps->n; j++) ps->p[j].optional = 1; /* a plain SAM file loads; these keep their init */
    enc->peft = f;
    return MS_OK;
}

/* One tensor ~ U(±bound) from (seed, its index), or zeros when bound is 0. */
static ms_status peft_fill(ms_params *ps, int idx, uint64_t seed, float bound, float *h)
{
    const ms_param *p = &ps->p[idx];
    ms_rng r;
    ms_rng_init(&r, seed, ms_rng_stream(0, (uint64_t)idx, 0x7065));
    for (int64_t j = 0; j < p->numel; j++) h[j] = bound > 0 ? ms_rng_range(&r, -bound, bound) : 0.0f;
    return ms_dev_from_host(ps->dev, ps->data + p->off, h, (size_t)p->numel * sizeof(float));
}

ms_status ms_sam_encoder_peft_init_random(ms_sam_encoder *enc, uint64_t seed)
{
    ms_params *ps = enc->ps;
    MS_FAIL_IF(!ps || !ps->data, MS_EBADSTATE, "sam encoder: parameters not allocated");
    if (!ms_sam_enc_has_peft(enc)) return MS_OK;
    int64_t D = enc->cfg.embed_dim, Da = D / 4;
    float *h = malloc((size_t)(D * D) * sizeof(float)); /* the largest PEFT tensor: r·D or (D/4)·D, r <= D */
    MS_FAIL_IF(!h, MS_ENOMEM, "sam encoder: out of memory");
    ms_status rc = MS_OK;
    float bD = 1.0f / sqrtf((float)D), bA = 1.0f / sqrtf((float)Da);
    for (int i = 0; i < enc->cfg.depth && !rc; i++) {
        const ms_sam_enc_block_params *b = &enc->blk[i];
        if (ms_sam_enc_has_lora(enc, i)) { /* kaiming_uniform(a=√5) on A (fan_in D), B = 0 (SAMed / finetune-SAM) */
            if (!rc) rc = peft_fill(ps, b->lora_aq, seed, bD, h);
            if (!rc) rc = peft_fill(ps, b->lora_bq, seed, 0, h);
            if (!rc) rc = peft_fill(ps, b->lora_av, seed, bD, h);
            if (!rc) rc = peft_fill(ps, b->lora_bv, seed, 0, h);
        }
        if (ms_sam_enc_has_adapter(enc, i)) { /* nn.Linear's default: weight and bias U(±1/√in_features) */
            const int idx[8] = {b->sa_w1, b->sa_b1, b->sa_w2, b->sa_b2, b->ma_w1, b->ma_b1, b->ma_w2, b->ma_b2};
            for (int j = 0; j < 8 && !rc; j++) rc = peft_fill(ps, idx[j], seed, (j & 2) ? bA : bD, h);
        }
    }
    free(h);
    return rc;
}
