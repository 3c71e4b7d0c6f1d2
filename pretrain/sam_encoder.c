/* pretrain/sam_encoder.c — SAM's image encoder: parameters, activation arena, forward, backward (dense and on token
 * subsets). The configuration (named variants, detection from a state dict, input size) is sam_encoder_config.c.
 * See sam_encoder.h for the data layout and the windowed-attention scheme (index lists + ws·ws pad rows).
 *
 * Per block (M = B·g·g token rows, ref: segment_anything/modeling/image_encoder.py Block.forward):
 *   ln1 = LN(x_in); qkv = ln1·Wqkvᵀ + b (plus the pad rows); ao = attn(qkv); xmid = x_in + ao·Wpᵀ + bp;
 *   ln2 = LN(xmid); h = ln2·W1ᵀ + b1; gl = GELU(h); out = xmid + gl·W2ᵀ + b2.
 * The add that makes xmid and ln2 are one op (ms_add_layernorm_forward, kernels/layernorm.h), and so are the add
 * that makes out and the next block's ln1 where no MLP_Adapter comes between; on the CPU the results are those of
 * the separate ops, bit for bit. The backward needs nothing new: ln2's and ln1's backward read the kept xmid / x_in.
 * With backward enabled every block keeps ln1, mean/rstd, qkv, ao, lse, xmid, ln2, h, gl and out (≈16·M·D floats);
 * the backward walks the same list in reverse, each op accumulating into zeroed scratch or into the gradients.
 * With recompute (ms_sam_encoder_set_recompute) only each block's out is kept; the other buffers are one set shared by
 * all blocks, refilled by block_forward(..., again = 1) before each block's backward. ms_sam_encoder_set_subset_only
 * sizes the block buffers for the visible rows of MAE instead of every token. The plans (plan_activations,
 * plan_subset) are also what ms_sam_encoder_activation_bytes counts, so the count and the allocation are one layout.
 * PEFT (finetune-SAM; registration and initialisation in sam_encoder_peft.c), per block that has it:
 *   LoRA:    tq = ln1·A_qᵀ, tv = ln1·A_vᵀ (kept); qkv[:, 0:D] += tq·B_qᵀ, qkv[:, 2D:3D] += tv·B_vᵀ — pad rows too.
 *   Adapter: a = ao·Wpᵀ + bp (kept); xmid = x_in + a + fc2(GELU(fc1(a)));
 *            out = xmid + mlp(ln2) + scale·fc2'(GELU(fc1'(ln2))); both adapters keep their hidden pre/post GELU.
 * Tested by tests/pretrain/test_sam_encoder.c (PyTorch golden outputs and gradients, CPU and CUDA) and
 * tests/pretrain/test_sam_encoder_vitb_slow.c (vit_b at 1024); the reference is tests/reference/sam_ref_encoder.py.
 * PEFT: tests/finetune/test_peft_encoder.c against tests/reference/peft_ref_encoder.py.
 */
#include "sam_encoder_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "ops.h"

typedef struct blk_act {
    float *x_in, *ln1, *mean1, *rstd1, *qkv, *ao, *lse, *xmid, *ln2, *mean2, *rstd2, *h, *gl, *out;
    /* PEFT (NULL when the block has none): LoRA t = ln1·Aᵀ for q and v ((rows + ws²) × r, pad rows at pad_base
     * like qkv); adapters: a = proj(ao), Space_Adapter and MLP_Adapter hidden pre/post GELU (M × D/4) */
    float *tq, *tv, *a, *sa_h, *sa_g, *ma_h, *ma_g;
} blk_act;

struct enc_priv {
    float *x_copy, *tok0;
    blk_act blk[MS_SAM_MAX_DEPTH];
    float *neck0, *neck0t, *n1, *n1_mean, *n1_rstd, *n2, *n3_mean, *n3_rstd;
    float *zeros;        /* (ws², D), never written: the pad tokens' input in official SAM */
    float *padx;         /* (ws², D) norm1.bias rows (finetune-SAM block) */
    float *rel_a, *rel_b; /* resized rel-pos tables (when a table length differs from 2·S−1) */
    float *pos_run, *pos_t, *pos_z; /* position embedding at the run grid, and its two transposed stages (run ≠ native) */
    /* backward scratch */
    float *d_a, *d_b, *dln, *dao, *dqkv, *dg, *dh, *dpadx, *drel_a, *drel_b;
    float *dn0, *dn0t, *dn1, *dn2;
    float *pf_tmp;       /* (M, D) adapter fc2 output (forward) and its gradient (backward) */
    float *dtq;          /* ((M + ws²), r) LoRA: d(ln1·Aᵀ) */
    /* index lists (device memory) */
    int32_t *w_qoff, *w_qidx, *w_koff, *w_kidx, *w_row, *w_col, *g_row, *g_col;
    int64_t n_win;       /* windows per image */
    int64_t pad_base;    /* first pad row in qkv = max_batch·T */
    /* token-subset mode (MAE: visible tokens only), built per call by ms_sam_encoder_forward_subset */
    int sub_active;      /* 1 while the activations hold a subset forward */
    int64_t sub_rows;    /* B·n_keep token rows */
    int64_t sub_keep;    /* n_keep */
    ms_arena sub_arena;
    float *tok_sub, *dtok_full;
    int32_t *s_gather, *s_qoff, *s_koff, *s_kidx, *s_wrow, *s_wcol, *s_grow, *s_gcol; /* device */
    int32_t *h_idx;      /* host staging for the lists above */
    int recompute;       /* reserved with per-block recomputation (ms_sam_encoder_set_recompute) */
    int sub_only;        /* reserved for token subsets only (ms_sam_encoder_set_subset_only) */
};

/* ------------------------------------------------------------------------------------------------ params */

int ms_sam_enc_param_add(ms_params *ps, const char *prefix, const char *key, int64_t a, int64_t b, int64_t c,
                         int64_t d, int ndim, int no_decay)
{
    char name[MS_PARAM_NAME_MAX + 128]; /* too long for ms_params_add is reported there, not truncated here */
    snprintf(name, sizeof name, "%s%s", prefix, key);
    int64_t shape[4] = {a, b, c, d};
    return ms_params_add(ps, name, shape, ndim, no_decay);
}

ms_status ms_sam_encoder_init(ms_sam_encoder *enc, const ms_sam_enc_config *cfg, ms_params *ps, const char *prefix)
{
    memset(enc, 0, sizeof *enc);
    for (int i = 0; i < MS_SAM_MAX_DEPTH; i++) {
        ms_sam_enc_block_params *b = &enc->blk[i];
        b->lora_aq = b->lora_bq = b->lora_av = b->lora_bv = -1;
        b->sa_w1 = b->sa_b1 = b->sa_w2 = b->sa_b2 = b->ma_w1 = b->ma_b1 = b->ma_w2 = b->ma_b2 = -1;
    }
    enc->cfg = *cfg;
    MS_TRY(ms_sam_enc_config_check(&enc->cfg));
    const ms_sam_enc_config *c = &enc->cfg;
    enc->ps = ps;
    int64_t D = c->embed_dim, g = c->img_size / c->patch, M = c->mlp_dim, C = c->out_chans, hd = c->head_dim;
    int bad = 0;
#define ADD(dst, ...) do { dst = ms_sam_enc_param_add(ps, prefix, __VA_ARGS__); bad |= dst < 0; } while (0)
    /* SAM's registration order (segment_anything/modeling/image_encoder.py), so a saved state dict lists keys as the
     * official files do. */
    ADD(enc->pos_embed, "pos_embed", 1, g, g, D, 4, 1);
    ADD(enc->patch_w, "patch_embed.proj.weight", D, c->in_chans, c->patch, c->patch, 4, 0);
    ADD(enc->patch_b, "patch_embed.proj.bias", D, 0, 0, 0, 1, 1);
    for (int i = 0; i < c->depth && !bad; i++) {
        ms_sam_enc_block_params *b = &enc->blk[i];
        int64_t L = ms_sam_enc_block_is_global(c, i) ? c->rel_len_global : c->rel_len_window;
        char k[96];
#define K(s) (snprintf(k, sizeof k, "blocks.%d.%s", i, s), k)
        ADD(b->norm1_w, K("norm1.weight"), D, 0, 0, 0, 1, 1);
        ADD(b->norm1_b, K("norm1.bias"), D, 0, 0, 0, 1, 1);
        ADD(b->rel_h, K("attn.rel_pos_h"), L, hd, 0, 0, 2, 1);
        ADD(b->rel_w, K("attn.rel_pos_w"), L, hd, 0, 0, 2, 1);
        ADD(b->qkv_w, K("attn.qkv.weight"), 3 * D, D, 0, 0, 2, 0);
        ADD(b->qkv_b, K("attn.qkv.bias"), 3 * D, 0, 0, 0, 1, 1);
        ADD(b->proj_w, K("attn.proj.weight"), D, D, 0, 0, 2, 0);
        ADD(b->proj_b, K("attn.proj.bias"), D, 0, 0, 0, 1, 1);
        ADD(b->norm2_w, K("norm2.weight"), D, 0, 0, 0, 1, 1);
        ADD(b->norm2_b, K("norm2.bias"), D, 0, 0, 0, 1, 1);
        ADD(b->lin1_w, K("mlp.lin1.weight"), M, D, 0, 0, 2, 0);
        ADD(b->lin1_b, K("mlp.lin1.bias"), M, 0, 0, 0, 1, 1);
        ADD(b->lin2_w, K("mlp.lin2.weight"), D, M, 0, 0, 2, 0);
        ADD(b->lin2_b, K("mlp.lin2.bias"), D, 0, 0, 0, 1, 1);
#undef K
    }
    if (!bad) {
        ADD(enc->neck0_w, "neck.0.weight", C, D, 1, 1, 4, 0);
        ADD(enc->neck1_w, "neck.1.weight", C, 0, 0, 0, 1, 1);
        ADD(enc->neck1_b, "neck.1.bias", C, 0, 0, 0, 1, 1);
        ADD(enc->neck2_w, "neck.2.weight", C, C, 3, 3, 4, 0);
        ADD(enc->neck3_w, "neck.3.weight", C, 0, 0, 0, 1, 1);
        ADD(enc->neck3_b, "neck.3.bias", C, 0, 0, 0, 1, 1);
    }
#undef ADD
    return bad ? MS_EINVAL : MS_OK;
}

ms_status ms_sam_encoder_init_random(ms_sam_encoder *enc, uint64_t seed)
{
    ms_params *ps = enc->ps;
    MS_FAIL_IF(!ps || !ps->data, MS_EBADSTATE, "sam encoder: parameters not allocated");
    int first = enc->pos_embed, last = enc->neck3_b;
    int64_t maxn = 0;
    for (int i = first; i <= last; i++) if (ps->p[i].numel > maxn) maxn = ps->p[i].numel;
    float *h = malloc((size_t)maxn * sizeof(float));
    MS_FAIL_IF(!h, MS_ENOMEM, "sam encoder: out of memory");
    ms_status rc = MS_OK;
    for (int i = first; i <= last && !rc; i++) {
        const ms_param *p = &ps->p[i];
        const char *nm = p->name;
        size_t ln = strlen(nm);
        int is_norm = strstr(nm, ".norm") != NULL || strstr(nm, "neck.1.") != NULL || strstr(nm, "neck.3.") != NULL;
        int is_w = ln > 7 && !strcmp(nm + ln - 7, ".weight");
        if (strstr(nm, "pos_embed") || strstr(nm, "rel_pos")) {
            memset(h, 0, (size_t)p->numel * sizeof(float));
        } else if (is_norm) {
            for (int64_t j = 0; j < p->numel; j++) h[j] = is_w ? 1.0f : 0.0f;
        } else {
            /* kaiming_uniform(a=√5) = U(±1/√fan_in) for weights; the bias uses the weight's fan_in. */
            int64_t fan_in;
            if (is_w) { fan_in = 1; for (int d = 1; d < p->ndim; d++) fan_in *= p->shape[d]; }
            else fan_in = ps->p[i - 1].numel / p->shape[0];
            ms_rng r;
            ms_rng_init(&r, seed, ms_rng_stream(0, (uint64_t)i, 0x5a4d));
            float bound = 1.0f / sqrtf((float)fan_in);
            for (int64_t j = 0; j < p->numel; j++) h[j] = ms_rng_range(&r, -bound, bound);
        }
        rc = ms_dev_from_host(ps->dev, ps->data + p->off, h, (size_t)p->numel * sizeof(float));
    }
    free(h);
    /* PEFT tensors sit after the neck (registered later): LoRA B = 0, so the model starts as the base */
    if (!rc) rc = ms_sam_encoder_peft_init_random(enc, seed);
    return rc;
}

/* ------------------------------------------------------------------------------------------------ arena */

#define F(n) ((size_t)(n) * sizeof(float))
#define I(n) ((size_t)(n) * sizeof(int32_t))

/* The sizes every activation buffer is planned from (max_batch images at the run size). */
typedef struct enc_dims {
    int64_t S, D, g, T, B, Mt; /* run side, width, grid, tokens per image, batch, token rows B·T */
    int64_t Mb, Mn;            /* rows of the block buffers (Mt, or B·max_keep for subsets only) and of the neck's */
    int sub_only;              /* ms_sam_encoder_set_subset_only: no dense forward, no dense index lists */
    int64_t Mlp, C, H, gm;     /* MLP width, neck channels, heads, native grid */
    int64_t ws, ws2, nh;       /* window, its area, windows per side */
    int64_t Lmax;              /* longest rel-pos table after resize */
    int64_t r, Da;             /* LoRA rank, adapter width */
} enc_dims;

static enc_dims enc_dims_of(const ms_sam_encoder *enc, int max_batch)
{
    const ms_sam_enc_config *c = &enc->cfg;
    enc_dims e;
    e.S = ms_sam_enc_run_size(enc);
    e.D = c->embed_dim;
    e.g = e.S / c->patch;
    e.T = e.g * e.g;
    e.B = max_batch;
    e.Mt = e.B * e.T;
    e.sub_only = enc->subset_keep > 0;
    e.Mb = e.sub_only ? e.B * (enc->subset_keep < e.T ? enc->subset_keep : e.T) : e.Mt;
    e.Mn = e.sub_only ? 0 : e.Mt;
    e.Mlp = c->mlp_dim;
    e.C = c->out_chans;
    e.H = c->n_heads;
    e.gm = c->img_size / c->patch;
    e.ws = c->window;
    e.ws2 = e.ws * e.ws;
    e.nh = e.ws ? (e.g + e.ws - 1) / e.ws : 0;
    /* Largest rel-pos table after resize: 2·max(ws, g) − 1 rows, or the stored table if longer. */
    e.Lmax = 2 * (e.g > e.ws ? e.g : e.ws) - 1;
    int64_t Lraw = c->rel_len_global > c->rel_len_window ? c->rel_len_global : c->rel_len_window;
    if (Lraw > e.Lmax) e.Lmax = Lraw;
    e.r = enc->peft.lora_rank;
    e.Da = e.D / 4;
    return e;
}

/* The activations of one block set: every block with backward, one shared set without (it then needs the PEFT
 * buffers when any block has PEFT). */
static void plan_block(ms_plan *pl, blk_act *b, const enc_dims *e, int lora, int adap)
{
    const int64_t Mt = e->Mb, D = e->D, ws2 = e->ws2; /* block rows */
    if (lora) {
        ms_plan_add_f32(pl, &b->tq, (Mt + ws2) * e->r);
        ms_plan_add_f32(pl, &b->tv, (Mt + ws2) * e->r);
    }
    if (adap) {
        ms_plan_add_f32(pl, &b->a, Mt * D);
        ms_plan_add_f32(pl, &b->sa_h, Mt * e->Da);
        ms_plan_add_f32(pl, &b->sa_g, Mt * e->Da);
        ms_plan_add_f32(pl, &b->ma_h, Mt * e->Da);
        ms_plan_add_f32(pl, &b->ma_g, Mt * e->Da);
    }
    ms_plan_add_f32(pl, &b->ln1, Mt * D);
    ms_plan_add_f32(pl, &b->mean1, Mt);
    ms_plan_add_f32(pl, &b->rstd1, Mt);
    ms_plan_add_f32(pl, &b->qkv, (Mt + ws2) * 3 * D);
    ms_plan_add_f32(pl, &b->ao, Mt * D);
    ms_plan_add_f32(pl, &b->lse, Mt * e->H);
    ms_plan_add_f32(pl, &b->xmid, Mt * D);
    ms_plan_add_f32(pl, &b->ln2, Mt * D);
    ms_plan_add_f32(pl, &b->mean2, Mt);
    ms_plan_add_f32(pl, &b->rstd2, Mt);
    ms_plan_add_f32(pl, &b->h, Mt * e->Mlp);
    ms_plan_add_f32(pl, &b->gl, Mt * e->Mlp);
    ms_plan_add_f32(pl, &b->out, Mt * D);
}

/* Every activation and scratch buffer of the dense forward/backward, and the index lists. spare_out: the second
 * token buffer of inference mode (blocks alternate between it and blk[0].out). */
static void plan_activations(ms_plan *pl, const ms_sam_encoder *enc, struct enc_priv *p, const enc_dims *e,
                             int with_backward, int recompute, float **spare_out)
{
    const ms_sam_enc_config *c = &enc->cfg;
    const int64_t Mt = e->Mt, Mb = e->Mb, Mn = e->Mn, D = e->D, C = e->C, ws2 = e->ws2, hd = c->head_dim;
    const int keep_all = with_backward && !recompute; /* one activation set per block */
    ms_plan_add_f32(pl, &p->x_copy, e->B * c->in_chans * e->S * e->S);
    ms_plan_add_f32(pl, &p->tok0, Mt * D);
    for (int i = 0; i < (keep_all ? c->depth : 1); i++) {
        int lora = keep_all ? ms_sam_enc_has_lora(enc, i) : enc->peft.lora_blocks != 0;
        int adap = keep_all ? ms_sam_enc_has_adapter(enc, i) : enc->peft.adapter_blocks != 0;
        plan_block(pl, &p->blk[i], e, lora, adap);
    }
    if (!with_backward) ms_plan_add_f32(pl, spare_out, Mb * D);
    /* recompute: every block's output (the next block's input) is kept, the rest is the shared set above */
    if (with_backward && recompute)
        for (int i = 1; i < c->depth; i++) ms_plan_add_f32(pl, &p->blk[i].out, Mb * D);
    float **neck[] = {&p->neck0, &p->neck0t, &p->n1, &p->n1_mean, &p->n1_rstd, &p->n2, &p->n3_mean, &p->n3_rstd};
    const int64_t neck_n[] = {Mn * C, Mn * C, Mn * C, Mn, Mn, Mn * C, Mn, Mn};
    for (int k = 0; k < 8; k++) ms_plan_add_f32(pl, neck[k], neck_n[k]);
    if (enc->peft.adapter_blocks) ms_plan_add_f32(pl, &p->pf_tmp, Mb * D);
    if (enc->peft.lora_blocks && with_backward) ms_plan_add_f32(pl, &p->dtq, (Mb + ws2) * e->r);
    ms_plan_add_f32(pl, &p->zeros, ws2 * D);
    ms_plan_add_f32(pl, &p->padx, ws2 * D);
    ms_plan_add_f32(pl, &p->rel_a, e->Lmax * hd);
    ms_plan_add_f32(pl, &p->rel_b, e->Lmax * hd);
    if (e->g != e->gm) { /* resized position embedding (forward) and the same buffers reused for its gradient */
        ms_plan_add_f32(pl, &p->pos_run, e->T * D);
        ms_plan_add_f32(pl, &p->pos_t, e->gm * e->gm * D);
        ms_plan_add_f32(pl, &p->pos_z, e->T * D);
    }
    if (with_backward) {
        float **bw[] = {&p->d_a, &p->d_b, &p->dln, &p->dao, &p->dqkv, &p->dg, &p->dh, &p->dpadx, &p->drel_a,
                        &p->drel_b, &p->dn0, &p->dn0t, &p->dn1, &p->dn2};
        const int64_t bw_n[] = {Mb * D, Mb * D, Mb * D, Mb * D, (Mb + ws2) * 3 * D, Mb * e->Mlp, Mb * e->Mlp,
                                ws2 * D, e->Lmax * hd, e->Lmax * hd, Mn * C, Mn * C, Mn * C, Mn * C};
        for (int k = 0; k < 14; k++) ms_plan_add_f32(pl, bw[k], bw_n[k]);
    }
    if (e->sub_only) return; /* the dense index lists */
    if (e->ws) {
        const int64_t nwg = e->B * p->n_win;
        ms_plan_add_i32(pl, &p->w_qoff, nwg + 1);
        ms_plan_add_i32(pl, &p->w_qidx, Mt);
        ms_plan_add_i32(pl, &p->w_koff, nwg + 1);
        ms_plan_add_i32(pl, &p->w_kidx, nwg * ws2);
        ms_plan_add_i32(pl, &p->w_row, Mt + ws2);
        ms_plan_add_i32(pl, &p->w_col, Mt + ws2);
    }
    ms_plan_add_i32(pl, &p->g_row, Mt);
    ms_plan_add_i32(pl, &p->g_col, Mt);
}

/* The subset arena (token rows, the dense token gradient, the subset's index lists), for Mt dense token rows and
 * at most Mb subset rows (the block buffers' rows: Mt, or fewer with ms_sam_encoder_set_subset_only). */
static void plan_subset(ms_plan *pl, struct enc_priv *p, int64_t Mt, int64_t Mb, int64_t D, int64_t ngw, int64_t ws2)
{
    ms_plan_add_f32(pl, &p->tok_sub, Mb * D);
    ms_plan_add_f32(pl, &p->dtok_full, Mt * D);
    ms_plan_add_i32(pl, &p->s_gather, Mb);
    ms_plan_add_i32(pl, &p->s_qoff, ngw + 1);
    ms_plan_add_i32(pl, &p->s_koff, ngw + 1);
    ms_plan_add_i32(pl, &p->s_kidx, Mb + ngw * ws2);
    ms_plan_add_i32(pl, &p->s_wrow, Mb + ws2);
    ms_plan_add_i32(pl, &p->s_wcol, Mb + ws2);
    ms_plan_add_i32(pl, &p->s_grow, Mb);
    ms_plan_add_i32(pl, &p->s_gcol, Mb);
}

/* The dense forward's index lists (see sam_encoder.h): per (image, window) the query rows and key rows (real
 * tokens, then the shared pad rows at pad_base) with window-local coordinates, and every token's grid coordinates
 * for the global blocks. Built on the host back to back, then one copy per list. */
static ms_status upload_index_lists(ms_device *dev, const struct enc_priv *p, const enc_dims *e)
{
    const int64_t B = e->B, T = e->T, g = e->g, Mt = e->Mt, ws = e->ws, ws2 = e->ws2, nh = e->nh;
    const int64_t nwg = B * p->n_win;
    const size_t o_qoff = 0, o_qidx = o_qoff + (size_t)(nwg + 1), o_koff = o_qidx + (size_t)Mt,
                 o_kidx = o_koff + (size_t)(nwg + 1), o_wrow = o_kidx + (size_t)(nwg * ws2),
                 o_wcol = o_wrow + (size_t)(Mt + ws2), o_grow = ws ? o_wcol + (size_t)(Mt + ws2) : 0,
                 o_gcol = o_grow + (size_t)Mt;
    int32_t *hbuf = malloc(I(o_gcol + (size_t)Mt));
    MS_FAIL_IF(!hbuf, MS_ENOMEM, "sam encoder: out of memory");
    if (ws) {
        int32_t *qoff = hbuf + o_qoff, *qidx = hbuf + o_qidx, *koff = hbuf + o_koff, *kidx = hbuf + o_kidx;
        int32_t *wrow = hbuf + o_wrow, *wcol = hbuf + o_wcol;
        int64_t nq = 0, gi = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t wy = 0; wy < nh; wy++)
                for (int64_t wx = 0; wx < nh; wx++, gi++) {
                    qoff[gi] = (int32_t)nq;
                    koff[gi] = (int32_t)(gi * ws2);
                    for (int64_t r = 0; r < ws; r++)
                        for (int64_t cc = 0; cc < ws; cc++) {
                            int64_t y = wy * ws + r, x = wx * ws + cc;
                            int64_t row = (y < g && x < g) ? b * T + y * g + x : Mt + r * ws + cc;
                            kidx[gi * ws2 + r * ws + cc] = (int32_t)row;
                            if (y < g && x < g) qidx[nq++] = (int32_t)row;
                        }
                }
        qoff[gi] = (int32_t)nq;
        koff[gi] = (int32_t)(gi * ws2);
        for (int64_t i = 0; i < Mt; i++) {
            int64_t t = i % T;
            wrow[i] = (int32_t)((t / g) % ws);
            wcol[i] = (int32_t)((t % g) % ws);
        }
        for (int64_t i = 0; i < ws2; i++) { wrow[Mt + i] = (int32_t)(i / ws); wcol[Mt + i] = (int32_t)(i % ws); }
    }
    for (int64_t i = 0; i < Mt; i++) {
        int64_t t = i % T;
        hbuf[o_grow + i] = (int32_t)(t / g);
        hbuf[o_gcol + i] = (int32_t)(t % g);
    }
    ms_status rc = MS_OK;
    if (ws) {
        if (!rc) rc = ms_dev_from_host(dev, p->w_qoff, hbuf + o_qoff, I(nwg + 1));
        if (!rc) rc = ms_dev_from_host(dev, p->w_qidx, hbuf + o_qidx, I(Mt));
        if (!rc) rc = ms_dev_from_host(dev, p->w_koff, hbuf + o_koff, I(nwg + 1));
        if (!rc) rc = ms_dev_from_host(dev, p->w_kidx, hbuf + o_kidx, I(nwg * ws2));
        if (!rc) rc = ms_dev_from_host(dev, p->w_row, hbuf + o_wrow, I(Mt + ws2));
        if (!rc) rc = ms_dev_from_host(dev, p->w_col, hbuf + o_wcol, I(Mt + ws2));
    }
    if (!rc) rc = ms_dev_from_host(dev, p->g_row, hbuf + o_grow, I(Mt));
    if (!rc) rc = ms_dev_from_host(dev, p->g_col, hbuf + o_gcol, I(Mt));
    free(hbuf);
    return rc;
}

ms_status ms_sam_encoder_reserve(ms_sam_encoder *enc, ms_device *dev, int max_batch, int with_backward)
{
    ms_sam_encoder_free(enc);
    MS_FAIL_IF(max_batch <= 0, MS_EINVAL, "sam encoder: batch %d", max_batch);
    const ms_sam_enc_config *c = &enc->cfg;
    struct enc_priv *p = calloc(1, sizeof *p);
    MS_FAIL_IF(!p, MS_ENOMEM, "sam encoder: out of memory");
    const enc_dims e = enc_dims_of(enc, max_batch);
    p->n_win = e.nh * e.nh;
    p->pad_base = e.Mb; /* the block buffers' rows: the shared pad rows follow them */
    ms_plan pl = {0};
    float *spare_out = NULL;
    const int recompute = with_backward && enc->recompute;
    p->recompute = recompute;
    p->sub_only = e.sub_only;
    plan_activations(&pl, enc, p, &e, with_backward, recompute, &spare_out);
    ms_status rc = ms_plan_alloc(&pl, dev, &enc->arena);
    ms_plan_free(&pl);
    if (!rc) {
        if (recompute) {
            /* one shared activation set; each block keeps its own output */
            for (int i = 1; i < c->depth; i++) {
                float *out = p->blk[i].out;
                p->blk[i] = p->blk[0];
                p->blk[i].out = out;
            }
            for (int i = 0; i < c->depth; i++) p->blk[i].x_in = i == 0 ? p->tok0 : p->blk[i - 1].out;
        } else if (!with_backward) {
            /* one activation set; tokens alternate between blk[0].out and spare_out */
            for (int i = 1; i < c->depth; i++) p->blk[i] = p->blk[0];
            for (int i = 0; i < c->depth; i++) {
                p->blk[i].x_in = i == 0 ? p->tok0 : p->blk[i - 1].out;
                p->blk[i].out = (i & 1) ? spare_out : p->blk[0].out;
            }
        } else {
            for (int i = 0; i < c->depth; i++) p->blk[i].x_in = i == 0 ? p->tok0 : p->blk[i - 1].out;
        }
        if (!e.sub_only) rc = upload_index_lists(dev, p, &e);
    }
    if (rc) {
        ms_arena_free(&enc->arena);
        free(p);
        return rc;
    }
    enc->dev = dev;
    enc->max_batch = max_batch;
    enc->with_backward = with_backward;
    enc->priv = p;
    return MS_OK;
}

void ms_sam_encoder_free(ms_sam_encoder *enc)
{
    if (enc->priv) {
        struct enc_priv *p = enc->priv;
        ms_arena_free(&enc->arena);
        ms_arena_free(&p->sub_arena);
        free(p->h_idx);
    }
    free(enc->priv);
    enc->priv = NULL;
    enc->max_batch = enc->batch = 0;
}

void ms_sam_encoder_set_recompute(ms_sam_encoder *enc, int on) { enc->recompute = on != 0; }

void ms_sam_encoder_set_subset_only(ms_sam_encoder *enc, int max_keep) { enc->subset_keep = max_keep > 0 ? max_keep : 0; }

ms_status ms_sam_encoder_activation_bytes(const ms_sam_encoder *enc, int max_batch, int with_backward, int recompute,
                                          int subset, size_t *bytes)
{
    MS_FAIL_IF(max_batch <= 0, MS_EINVAL, "sam encoder: batch %d", max_batch);
    struct enc_priv *p = calloc(1, sizeof *p); /* the plan writes its pointers here; nothing is allocated */
    MS_FAIL_IF(!p, MS_ENOMEM, "sam encoder: out of memory");
    const enc_dims e = enc_dims_of(enc, max_batch);
    p->n_win = e.nh * e.nh;
    p->pad_base = e.Mb; /* the block buffers' rows: the shared pad rows follow them */
    ms_plan pl = {0}, ps = {0};
    float *spare_out = NULL;
    plan_activations(&pl, enc, p, &e, with_backward, with_backward && recompute, &spare_out);
    if (subset) { /* subset_lists' arena: windows per side as it counts them (window 0: one window of g) */
        int64_t ws = e.ws ? e.ws : e.g, nh = (e.g + ws - 1) / ws;
        plan_subset(&ps, p, e.Mt, e.Mb, e.D, e.B * nh * nh, ws * ws);
    }
    int oom = pl.oom || ps.oom;
    *bytes = ms_plan_bytes(&pl) + ms_plan_bytes(&ps);
    ms_plan_free(&pl);
    ms_plan_free(&ps);
    free(p);
    MS_FAIL_IF(oom, MS_ENOMEM, "sam encoder: out of memory (arena plan)");
    return MS_OK;
}

size_t ms_sam_encoder_arena_bytes(const ms_sam_encoder *enc)
{
    const struct enc_priv *p = enc->priv;
    return p ? enc->arena.used + p->sub_arena.used : 0;
}

const float *ms_sam_encoder_tokens(const ms_sam_encoder *enc, int stage)
{
    const struct enc_priv *p = enc->priv;
    if (!p || stage < -1 || stage >= enc->cfg.depth) return NULL;
    if (stage == -1) return enc->with_backward ? p->tok0 : NULL;
    if (!enc->with_backward && stage != enc->cfg.depth - 1) return NULL;
    return p->blk[stage].out;
}

/* ------------------------------------------------------------------------------------------------ forward */

/* The position embedding at the run grid: the master (1, gm, gm, D) itself, or resized bicubically
 * (channels-last → (D, gm, gm) → (D, g, g) → (g·g, D)). */
static ms_status pos_forward(ms_sam_encoder *enc, const float **pos)
{
    const ms_sam_enc_config *c = &enc->cfg;
    struct enc_priv *p = enc->priv;
    const float *master = ms_params_data(enc->ps, enc->pos_embed);
    int64_t D = c->embed_dim, gm = c->img_size / c->patch, g = ms_sam_enc_run_size(enc) / c->patch;
    if (g == gm) { *pos = master; return MS_OK; }
    MS_TRY(ms_transpose_forward(enc->dev, p->pos_t, master, 1, gm * gm, D));
    MS_TRY(ms_resize_bicubic_forward(enc->dev, p->pos_z, p->pos_t, D, gm, gm, g, g));
    MS_TRY(ms_transpose_forward(enc->dev, p->pos_run, p->pos_z, 1, D, g * g));
    *pos = p->pos_run;
    return MS_OK;
}

/* d(tokens after the position add) (B, g·g, D) → the master position embedding's gradient (+=). */
static ms_status pos_backward(ms_sam_encoder *enc, const float *dtok, int B)
{
    const ms_sam_enc_config *c = &enc->cfg;
    struct enc_priv *p = enc->priv;
    ms_device *dev = enc->dev;
    float *gpos = ms_params_grad(enc->ps, enc->pos_embed);
    if (!gpos) return MS_OK;
    int64_t D = c->embed_dim, gm = c->img_size / c->patch, g = ms_sam_enc_run_size(enc) / c->patch;
    if (g == gm) return ms_add_bcast_backward(dev, NULL, gpos, dtok, B, g * g * D);
    /* the forward buffers are free again: reuse them for the gradient, in reverse */
    MS_TRY(ms_dev_zero(dev, p->pos_run, F(g * g * D)));
    MS_TRY(ms_add_bcast_backward(dev, NULL, p->pos_run, dtok, B, g * g * D));
    MS_TRY(ms_dev_zero(dev, p->pos_z, F(g * g * D)));
    MS_TRY(ms_transpose_backward(dev, p->pos_z, p->pos_run, 1, D, g * g));
    MS_TRY(ms_dev_zero(dev, p->pos_t, F(gm * gm * D)));
    MS_TRY(ms_resize_bicubic_backward(dev, p->pos_t, p->pos_z, D, gm, gm, g, g));
    return ms_transpose_backward(dev, gpos, p->pos_t, 1, gm * gm, D);
}

/* The attention descriptor of block i for batch B, and the (possibly resized) rel-pos tables it reads. */
static ms_status block_desc(ms_sam_encoder *enc, int i, int B, ms_attention_desc *d, int *resized)
{
    const ms_sam_enc_config *c = &enc->cfg;
    struct enc_priv *p = enc->priv;
    ms_params *ps = enc->ps;
    int glob = ms_sam_enc_block_is_global(c, i);
    int64_t D = c->embed_dim, g = ms_sam_enc_run_size(enc) / c->patch, S = glob ? g : c->window;
    int64_t L = glob ? c->rel_len_global : c->rel_len_window, Lt = 2 * S - 1;
    memset(d, 0, sizeof *d);
    d->n_heads = c->n_heads;
    d->head_dim = c->head_dim;
    d->scale = 1.0f / sqrtf((float)c->head_dim);
    d->ldq = d->ldk = d->ldv = 3 * D;
    d->ldo = D;
    d->len_h = d->len_w = Lt;
    if (p->sub_active && glob) {
        d->n_groups = B;
        d->nq = d->nk = p->sub_keep;
        d->q_row = d->k_row = p->s_grow;
        d->q_col = d->k_col = p->s_gcol;
    } else if (p->sub_active) {
        d->n_groups = B * p->n_win;
        d->q_off = p->s_qoff;
        d->k_off = p->s_koff;
        d->k_idx = p->s_kidx;
        d->q_row = d->k_row = p->s_wrow;
        d->q_col = d->k_col = p->s_wcol;
    } else if (glob) {
        d->n_groups = B;
        d->nq = d->nk = g * g;
        d->q_row = d->k_row = p->g_row;
        d->q_col = d->k_col = p->g_col;
    } else {
        d->n_groups = B * p->n_win;
        d->q_off = p->w_qoff;
        d->q_idx = p->w_qidx;
        d->k_off = p->w_koff;
        d->k_idx = p->w_kidx;
        d->q_row = d->k_row = p->w_row;
        d->q_col = d->k_col = p->w_col;
    }
    const float *rh = ms_params_data(ps, enc->blk[i].rel_h), *rw = ms_params_data(ps, enc->blk[i].rel_w);
    *resized = L != Lt;
    if (*resized) {
        /* get_rel_pos: linear interpolation of the table to 2·S−1 rows */
        MS_TRY(ms_rel_pos_resize_forward(enc->dev, p->rel_a, rh, L, Lt, c->head_dim));
        MS_TRY(ms_rel_pos_resize_forward(enc->dev, p->rel_b, rw, L, Lt, c->head_dim));
        rh = p->rel_a;
        rw = p->rel_b;
    }
    d->rel_h = rh;
    d->rel_w = rw;
    return MS_OK;
}

/* LoRA (_LoRA_qkv): for n rows whose qkv input is x (n, D), t_q = x·A_qᵀ and t_v = x·A_vᵀ (n, r), kept for backward,
 * then qkv[:, 0:D] += t_q·B_qᵀ and qkv[:, 2D:3D] += t_v·B_vᵀ (scale 1). The descriptor adds t·Bᵀ into a column
 * slice of the 3D-wide qkv rows. */
static ms_matmul_desc lora_desc(int64_t n, int64_t D, int64_t r)
{
    ms_matmul_desc d = ms_matmul_plain(n, D, r);
    d.trans_b = 1;
    d.ldb = r;
    d.ldc = 3 * D;
    d.beta = 1.0f;
    return d;
}

static ms_status lora_forward(ms_sam_encoder *enc, int i, float *qkv, float *tq, float *tv, const float *x, int64_t n)
{
    ms_params *ps = enc->ps;
    const ms_sam_enc_block_params *w = &enc->blk[i];
    int64_t D = enc->cfg.embed_dim, r = enc->peft.lora_rank;
    ms_matmul_desc d = lora_desc(n, D, r);
    MS_TRY(ms_linear_forward(enc->dev, tq, x, ms_params_data(ps, w->lora_aq), NULL, n, D, r));
    MS_TRY(ms_matmul_forward(enc->dev, qkv, tq, ms_params_data(ps, w->lora_bq), &d));
    MS_TRY(ms_linear_forward(enc->dev, tv, x, ms_params_data(ps, w->lora_av), NULL, n, D, r));
    return ms_matmul_forward(enc->dev, qkv + 2 * D, tv, ms_params_data(ps, w->lora_bv), &d);
}

/* dqkv (n rows of 3D) → dB (+=), dA (+=) and dx (+=, when non-NULL) through both LoRA branches; dtq is scratch. */
static ms_status lora_backward(ms_sam_encoder *enc, int i, const float *dqkv, const float *tq, const float *tv,
                               const float *x, float *dx, int64_t n)
{
    struct enc_priv *p = enc->priv;
    ms_params *ps = enc->ps;
    ms_device *dev = enc->dev;
    const ms_sam_enc_block_params *w = &enc->blk[i];
    int64_t D = enc->cfg.embed_dim, r = enc->peft.lora_rank;
    ms_matmul_desc d = lora_desc(n, D, r);
    const int s_off[2] = {0, 2};
    const int a_idx[2] = {w->lora_aq, w->lora_av}, b_idx[2] = {w->lora_bq, w->lora_bv};
    const float *t[2] = {tq, tv};
    for (int k = 0; k < 2; k++) {
        float *gA = ms_params_grad(ps, a_idx[k]);
        MS_TRY(ms_dev_zero(dev, p->dtq, F(n * r)));
        MS_TRY(ms_matmul_backward(dev, p->dtq, ms_params_grad(ps, b_idx[k]), dqkv + s_off[k] * D, t[k],
                                  ms_params_data(ps, b_idx[k]), &d));
        if (dx || gA) MS_TRY(ms_linear_backward(dev, dx, gA, NULL, p->dtq, x, ms_params_data(ps, a_idx[k]), n, D, r));
    }
    return MS_OK;
}

/* qkv rows of the ws² pad slots: official SAM pads with zero vectors after norm1; finetune-SAM pads before norm1,
 * so its pad tokens are norm1(0) = norm1.bias. */
static ms_status pad_rows_forward(ms_sam_encoder *enc, int i, blk_act *b)
{
    const ms_sam_enc_config *c = &enc->cfg;
    struct enc_priv *p = enc->priv;
    ms_params *ps = enc->ps;
    int64_t D = c->embed_dim, ws2 = (int64_t)c->window * c->window;
    const float *x = p->zeros;
    if (c->finetune_sam_block) {
        MS_TRY(ms_add_bcast_forward(enc->dev, p->padx, p->zeros, ms_params_data(ps, enc->blk[i].norm1_b), ws2, D));
        x = p->padx;
    }
    MS_TRY(ms_linear_forward(enc->dev, b->qkv + p->pad_base * 3 * D, x, ms_params_data(ps, enc->blk[i].qkv_w),
                             ms_params_data(ps, enc->blk[i].qkv_b), ws2, D, 3 * D));
    /* the LoRA delta of a zero row is 0, but finetune-SAM's norm1.bias rows get a real one */
    if (ms_sam_enc_has_lora(enc, i)) {
        int64_t r = enc->peft.lora_rank;
        MS_TRY(lora_forward(enc, i, b->qkv + p->pad_base * 3 * D, b->tq + p->pad_base * r, b->tv + p->pad_base * r, x,
                            ws2));
    }
    return MS_OK;
}

/* Adapter (finetune-SAM common.py): y = fc2(GELU(fc1(x))) for M rows, hidden h/g (M, D/4) kept for backward. */
static ms_status adapter_forward(ms_sam_encoder *enc, int w1, int b1, int w2, int b2, float *y, float *h, float *g,
                                 const float *x, int64_t M)
{
    ms_params *ps = enc->ps;
    int64_t D = enc->cfg.embed_dim, Da = D / 4;
    MS_TRY(ms_linear_forward(enc->dev, h, x, ms_params_data(ps, w1), ms_params_data(ps, b1), M, D, Da));
    MS_TRY(ms_gelu_forward(enc->dev, g, h, M * Da));
    return ms_linear_forward(enc->dev, y, g, ms_params_data(ps, w2), ms_params_data(ps, b2), M, Da, D);
}

/* dy (M, D) → adapter parameter gradients (+=) and dx (+=); dg/dh are (M, D/4) scratch. */
static ms_status adapter_backward(ms_sam_encoder *enc, int w1, int b1, int w2, int b2, float *dx, const float *dy,
                                  const float *h, const float *g, const float *x, int64_t M)
{
    struct enc_priv *p = enc->priv;
    ms_params *ps = enc->ps;
    ms_device *dev = enc->dev;
    int64_t D = enc->cfg.embed_dim, Da = D / 4;
    MS_TRY(ms_dev_zero(dev, p->dg, F(M * Da)));
    MS_TRY(ms_linear_backward(dev, p->dg, ms_params_grad(ps, w2), ms_params_grad(ps, b2), dy, g,
                              ms_params_data(ps, w2), M, Da, D));
    MS_TRY(ms_dev_zero(dev, p->dh, F(M * Da)));
    MS_TRY(ms_gelu_backward(dev, p->dh, p->dg, h, M * Da));
    return ms_linear_backward(dev, dx, ms_params_grad(ps, w1), ms_params_grad(ps, b1), p->dh, x,
                              ms_params_data(ps, w1), M, D, Da);
}

/* *ln1_ready: on entry, block i's ln1/mean1/rstd1 were already written by block i − 1 (its MLP residual add fused
 * with this norm1); on return, whether this block did that for block i + 1.
 * again: the recomputation before block i's backward (ms_sam_encoder_set_recompute): only what the backward reads
 * is rewritten, from the kept x_in — no lin2, no residual add into the kept output, no next block's norm1. On the
 * CPU every buffer then holds the bits of the first forward (norm1 alone equals the fused add + norm1 bit for
 * bit, kernels/layernorm.h). */
static ms_status block_forward(ms_sam_encoder *enc, int i, int B, int *ln1_ready, int again)
{
    const ms_sam_enc_config *c = &enc->cfg;
    struct enc_priv *p = enc->priv;
    ms_params *ps = enc->ps;
    ms_device *dev = enc->dev;
    const ms_sam_enc_block_params *w = &enc->blk[i];
    blk_act *b = &p->blk[i];
    int64_t D = c->embed_dim, g = ms_sam_enc_run_size(enc) / c->patch, Mlp = c->mlp_dim;
    int64_t M = p->sub_active ? p->sub_rows : (int64_t)B * g * g; /* token rows: every token, or the subset */
    int glob = ms_sam_enc_block_is_global(c, i), resized;
#define P(x) ms_params_data(ps, w->x)
    if (!*ln1_ready)
        MS_TRY(ms_layernorm_forward(dev, b->ln1, b->mean1, b->rstd1, b->x_in, P(norm1_w), P(norm1_b), M, D, c->eps));
    MS_TRY(ms_linear_forward(dev, b->qkv, b->ln1, P(qkv_w), P(qkv_b), M, D, 3 * D));
    if (ms_sam_enc_has_lora(enc, i)) MS_TRY(lora_forward(enc, i, b->qkv, b->tq, b->tv, b->ln1, M));
    if (!glob) MS_TRY(pad_rows_forward(enc, i, b));
    ms_attention_desc d;
    MS_TRY(block_desc(enc, i, B, &d, &resized));
    MS_TRY(ms_attention_forward(dev, b->ao, b->lse, b->qkv, b->qkv + D, b->qkv + 2 * D, &d));
    int adap = ms_sam_enc_has_adapter(enc, i);
    if (adap) { /* xmid = x_in + (a + Space_Adapter(a)), a = proj(ao) */
        MS_TRY(ms_linear_forward(dev, b->a, b->ao, P(proj_w), P(proj_b), M, D, D));
        MS_TRY(adapter_forward(enc, w->sa_w1, w->sa_b1, w->sa_w2, w->sa_b2, p->pf_tmp, b->sa_h, b->sa_g, b->a, M));
        MS_TRY(ms_add_forward(dev, b->xmid, b->a, p->pf_tmp, M * D));
    } else
        MS_TRY(ms_linear_forward(dev, b->xmid, b->ao, P(proj_w), P(proj_b), M, D, D));
    MS_TRY(ms_add_layernorm_forward(dev, b->xmid, b->ln2, b->mean2, b->rstd2, b->xmid, b->x_in, P(norm2_w), P(norm2_b),
                                    M, D, c->eps)); /* xmid += x_in; ln2 = LN(xmid) */
    MS_TRY(ms_linear_forward(dev, b->h, b->ln2, P(lin1_w), P(lin1_b), M, D, Mlp));
    MS_TRY(ms_gelu_forward(dev, b->gl, b->h, M * Mlp));
    if (again) { /* the backward also reads the MLP_Adapter's hidden activations */
        *ln1_ready = 0;
        if (adap)
            MS_TRY(adapter_forward(enc, w->ma_w1, w->ma_b1, w->ma_w2, w->ma_b2, p->pf_tmp, b->ma_h, b->ma_g, b->ln2,
                                   M));
        return MS_OK;
    }
    MS_TRY(ms_linear_forward(dev, b->out, b->gl, P(lin2_w), P(lin2_b), M, Mlp, D));
    /* out += xmid is the last add unless the MLP_Adapter follows: then it also gives the next block's norm1 (out is
     * that block's x_in; in inference its ln1 buffers are this block's, free by now) */
    *ln1_ready = !adap && i + 1 < c->depth;
    if (*ln1_ready) {
        const ms_sam_enc_block_params *wn = &enc->blk[i + 1];
        blk_act *bn = &p->blk[i + 1];
        const float *n1w = ms_params_data(ps, wn->norm1_w), *n1b = ms_params_data(ps, wn->norm1_b);
        MS_TRY(ms_add_layernorm_forward(dev, b->out, bn->ln1, bn->mean1, bn->rstd1, b->out, b->xmid, n1w, n1b, M, D,
                                        c->eps));
    } else
        MS_TRY(ms_add_forward(dev, b->out, b->out, b->xmid, M * D));
    if (adap) { /* out += scale·MLP_Adapter(ln2), parallel to the MLP */
        MS_TRY(adapter_forward(enc, w->ma_w1, w->ma_b1, w->ma_w2, w->ma_b2, p->pf_tmp, b->ma_h, b->ma_g, b->ln2, M));
        MS_TRY(ms_scale_forward(dev, p->pf_tmp, p->pf_tmp, enc->peft.adapter_scale, M * D));
        MS_TRY(ms_add_forward(dev, b->out, b->out, p->pf_tmp, M * D));
    }
#undef P
    return MS_OK;
}

ms_status ms_sam_encoder_forward(ms_sam_encoder *enc, const float *x, int B, float *emb)
{
    struct enc_priv *p = enc->priv;
    MS_FAIL_IF(!p, MS_EBADSTATE, "sam encoder: ms_sam_encoder_reserve was not called");
    MS_FAIL_IF(B <= 0 || B > enc->max_batch, MS_EINVAL, "sam encoder: batch %d, reserved for %d", B,
               enc->max_batch);
    MS_FAIL_IF(p->sub_only, MS_EUNSUPPORTED, "sam encoder: reserved for token subsets only (MAE), not a dense forward");
    const ms_sam_enc_config *c = &enc->cfg;
    ms_params *ps = enc->ps;
    ms_device *dev = enc->dev;
    int64_t D = c->embed_dim, S = ms_sam_enc_run_size(enc), g = S / c->patch, T = g * g, M = (int64_t)B * T,
            C = c->out_chans;
    enc->batch = B;
    p->sub_active = 0;
    p->blk[0].x_in = p->tok0;
    MS_TRY(ms_dev_copy(dev, p->x_copy, x, F((int64_t)B * c->in_chans * S * S)));
    MS_TRY(ms_conv_patch_forward(dev, p->tok0, p->x_copy, ms_params_data(ps, enc->patch_w),
                                 ms_params_data(ps, enc->patch_b), B, c->in_chans, S, S, D, c->patch, 1));
    const float *pos;
    MS_TRY(pos_forward(enc, &pos));
    MS_TRY(ms_add_bcast_forward(dev, p->tok0, p->tok0, pos, B, T * D));
    int ln1_ready = 0;
    for (int i = 0; i < c->depth; i++) MS_TRY(block_forward(enc, i, B, &ln1_ready, 0));
    const float *last = p->blk[c->depth - 1].out;
    /* neck: 1x1 conv = a linear layer on tokens, then NHWC → NCHW for the 2D LayerNorms and the 3x3 conv */
    MS_TRY(ms_linear_forward(dev, p->neck0, last, ms_params_data(ps, enc->neck0_w), NULL, M, D, C));
    MS_TRY(ms_transpose_forward(dev, p->neck0t, p->neck0, B, T, C));
    MS_TRY(ms_layernorm2d_forward(dev, p->n1, p->n1_mean, p->n1_rstd, p->neck0t, ms_params_data(ps, enc->neck1_w),
                                  ms_params_data(ps, enc->neck1_b), B, C, T, c->eps));
    MS_TRY(ms_conv2d_forward(dev, p->n2, p->n1, ms_params_data(ps, enc->neck2_w), NULL, B, C, g, g, C, 3, 1, 1));
    MS_TRY(ms_layernorm2d_forward(dev, emb, p->n3_mean, p->n3_rstd, p->n2, ms_params_data(ps, enc->neck3_w),
                                  ms_params_data(ps, enc->neck3_b), B, C, T, c->eps));
    return MS_OK;
}

/* ------------------------------------------------------------------------------------------------ backward */

/* dcur (M, D) = d(block output) on entry; on return dnext = d(block input). dcur is not modified. */
static ms_status block_backward(ms_sam_encoder *enc, int i, int B, const float *dcur, float *dnext)
{
    const ms_sam_enc_config *c = &enc->cfg;
    struct enc_priv *p = enc->priv;
    ms_params *ps = enc->ps;
    ms_device *dev = enc->dev;
    const ms_sam_enc_block_params *w = &enc->blk[i];
    blk_act *b = &p->blk[i];
    int64_t D = c->embed_dim, g = ms_sam_enc_run_size(enc) / c->patch, Mlp = c->mlp_dim;
    int64_t M = p->sub_active ? p->sub_rows : (int64_t)B * g * g; /* token rows: every token, or the subset */
    int64_t ws2 = (int64_t)c->window * c->window;
    int glob = ms_sam_enc_block_is_global(c, i), resized;
#define P(x) ms_params_data(ps, w->x)
#define G(x) ms_params_grad(ps, w->x)
    /* MLP branch: out = xmid + lin2(gelu(lin1(ln2))) */
    float *dx = dnext; /* d(xmid) accumulates here first, then becomes d(x_in) */
    MS_TRY(ms_dev_copy(dev, dx, dcur, F(M * D)));
    MS_TRY(ms_dev_zero(dev, p->dg, F(M * Mlp)));
    MS_TRY(ms_linear_backward(dev, p->dg, G(lin2_w), G(lin2_b), dcur, b->gl, P(lin2_w), M, Mlp, D));
    MS_TRY(ms_dev_zero(dev, p->dh, F(M * Mlp)));
    MS_TRY(ms_gelu_backward(dev, p->dh, p->dg, b->h, M * Mlp));
    MS_TRY(ms_dev_zero(dev, p->dln, F(M * D)));
    MS_TRY(ms_linear_backward(dev, p->dln, G(lin1_w), G(lin1_b), p->dh, b->ln2, P(lin1_w), M, D, Mlp));
    int adap = ms_sam_enc_has_adapter(enc, i);
    if (adap) { /* out += scale·MLP_Adapter(ln2): its input gradient joins d(ln2) */
        MS_TRY(ms_dev_zero(dev, p->pf_tmp, F(M * D)));
        MS_TRY(ms_scale_backward(dev, p->pf_tmp, dcur, enc->peft.adapter_scale, M * D));
        MS_TRY(adapter_backward(enc, w->ma_w1, w->ma_b1, w->ma_w2, w->ma_b2, p->dln, p->pf_tmp, b->ma_h, b->ma_g,
                                b->ln2, M));
    }
    MS_TRY(ms_layernorm_backward(dev, dx, G(norm2_w), G(norm2_b), p->dln, b->xmid, P(norm2_w), b->mean2, b->rstd2,
                                 M, D));
    /* attention branch: xmid = x_in + proj(attn(qkv(ln1))); dx holds d(xmid) = the residual part of d(x_in) */
    const float *dproj = dx;
    if (adap) { /* xmid = x_in + a + Space_Adapter(a): d(a) = d(xmid) + the adapter's input gradient (dln is free) */
        MS_TRY(ms_dev_copy(dev, p->dln, dx, F(M * D)));
        MS_TRY(adapter_backward(enc, w->sa_w1, w->sa_b1, w->sa_w2, w->sa_b2, p->dln, dx, b->sa_h, b->sa_g, b->a, M));
        dproj = p->dln;
    }
    MS_TRY(ms_dev_zero(dev, p->dao, F(M * D)));
    MS_TRY(ms_linear_backward(dev, p->dao, G(proj_w), G(proj_b), dproj, b->ao, P(proj_w), M, D, D));
    int64_t qrows = glob ? M : p->pad_base + ws2;
    MS_TRY(ms_dev_zero(dev, p->dqkv, F(qrows * 3 * D)));
    ms_attention_desc d;
    MS_TRY(block_desc(enc, i, B, &d, &resized));
    float *drh = G(rel_h), *drw = G(rel_w);
    int64_t L = glob ? c->rel_len_global : c->rel_len_window;
    if (resized && (drh || drw)) {
        MS_TRY(ms_dev_zero(dev, p->drel_a, F(d.len_h * c->head_dim)));
        MS_TRY(ms_dev_zero(dev, p->drel_b, F(d.len_w * c->head_dim)));
    }
    MS_TRY(ms_attention_backward(dev, p->dqkv, p->dqkv + D, p->dqkv + 2 * D, resized ? (drh ? p->drel_a : NULL) : drh,
                                 resized ? (drw ? p->drel_b : NULL) : drw, p->dao, b->ao, b->lse, b->qkv,
                                 b->qkv + D, b->qkv + 2 * D, &d));
    if (resized && drh) MS_TRY(ms_rel_pos_resize_backward(dev, drh, p->drel_a, L, d.len_h, c->head_dim));
    if (resized && drw) MS_TRY(ms_rel_pos_resize_backward(dev, drw, p->drel_b, L, d.len_w, c->head_dim));
    int lora = ms_sam_enc_has_lora(enc, i);
    int64_t r = enc->peft.lora_rank;
    if (!glob) {
        /* pad rows: their k/v gradients flow into qkv.bias (and, finetune-SAM, through W into norm1.bias); with
         * LoRA and finetune-SAM's norm1.bias pads, their q/v gradients also reach A, B and norm1.bias */
        const float *dpad = p->dqkv + p->pad_base * 3 * D;
        if (c->finetune_sam_block) {
            float *gb1 = G(norm1_b);
            /* padx is shared scratch: rebuild this block's norm1.bias rows */
            MS_TRY(ms_add_bcast_forward(dev, p->padx, p->zeros, P(norm1_b), ws2, D));
            if (gb1) MS_TRY(ms_dev_zero(dev, p->dpadx, F(ws2 * D)));
            MS_TRY(ms_linear_backward(dev, gb1 ? p->dpadx : NULL, G(qkv_w), G(qkv_b), dpad, p->padx, P(qkv_w), ws2,
                                      D, 3 * D));
            if (lora)
                MS_TRY(lora_backward(enc, i, dpad, b->tq + p->pad_base * r, b->tv + p->pad_base * r, p->padx,
                                     gb1 ? p->dpadx : NULL, ws2));
            if (gb1) MS_TRY(ms_add_bcast_backward(dev, NULL, gb1, p->dpadx, ws2, D));
        } else {
            /* zero pad rows: their LoRA t = 0·Aᵀ = 0, so they give A and B no gradient */
            MS_TRY(ms_linear_backward(dev, NULL, NULL, G(qkv_b), dpad, p->zeros, P(qkv_w), ws2, D, 3 * D));
        }
    }
    MS_TRY(ms_dev_zero(dev, p->dln, F(M * D)));
    if (lora) MS_TRY(lora_backward(enc, i, p->dqkv, b->tq, b->tv, b->ln1, p->dln, M));
    MS_TRY(ms_linear_backward(dev, p->dln, G(qkv_w), G(qkv_b), p->dqkv, b->ln1, P(qkv_w), M, D, 3 * D));
    MS_TRY(ms_layernorm_backward(dev, dx, G(norm1_w), G(norm1_b), p->dln, b->x_in, P(norm1_w), b->mean1, b->rstd1,
                                 M, D));
#undef P
#undef G
    return MS_OK;
}

void ms_sam_encoder_set_grads_hook(ms_sam_encoder *enc, ms_status (*fn)(void *, const ms_params *, int64_t),
                                   void *ctx, int outside_final)
{
    const ms_params *ps = enc->ps;
    int depth = enc->cfg.depth;
    enc->grads_ready = fn;
    enc->grads_ready_ctx = ctx;
    if (!fn) return;
    /* final_after[k]: the block after whose backward tensor k's gradient is complete (depth: the neck, before any
     * block; -1: only at the end) */
    int *final_after = malloc((size_t)(ps->n ? ps->n : 1) * sizeof(int));
    if (!final_after) { /* no overlap then: every report says "nothing final yet" */
        for (int i = 0; i < depth; i++) enc->ready_lo[i] = ps->numel_trainable;
        return;
    }
    for (int k = 0; k < ps->n; k++) final_after[k] = outside_final ? depth : -1;
    final_after[enc->pos_embed] = final_after[enc->patch_w] = final_after[enc->patch_b] = -1;
    const int neck[] = {enc->neck0_w, enc->neck1_w, enc->neck1_b, enc->neck2_w, enc->neck3_w, enc->neck3_b};
    for (size_t j = 0; j < sizeof neck / sizeof neck[0]; j++)
        if (neck[j] >= 0 && neck[j] < ps->n) final_after[neck[j]] = depth;
    for (int i = 0; i < depth; i++) { /* the block's table is all parameter indices (-1: absent) */
        const int *ix = (const int *)&enc->blk[i];
        for (size_t j = 0; j < sizeof enc->blk[i] / sizeof(int); j++)
            if (ix[j] >= 0 && ix[j] < ps->n) final_after[ix[j]] = i;
    }
    for (int i = 0; i < depth; i++) {
        int64_t lo = 0;
        for (int k = 0; k < ps->n; k++) {
            const ms_param *q = &ps->p[k];
            if (q->trainable && final_after[k] < i && (int64_t)q->goff + q->numel > lo) lo = (int64_t)q->goff + q->numel;
        }
        enc->ready_lo[i] = lo;
    }
    free(final_after);
}

/* From d(last block output) in dcur to every block, the patch embedding and the position table (and dx); in
 * subset mode the visible rows are scattered back onto the full grid first (hidden tokens get no gradient). */
static ms_status blocks_embed_backward(ms_sam_encoder *enc, float *dcur, float *dnext, float *dx)
{
    const ms_sam_enc_config *c = &enc->cfg;
    struct enc_priv *p = enc->priv;
    ms_params *ps = enc->ps;
    ms_device *dev = enc->dev;
    int B = enc->batch;
    int64_t D = c->embed_dim, S = ms_sam_enc_run_size(enc), g = S / c->patch, T = g * g;
    for (int i = c->depth - 1; i >= 0; i--) {
        int ln1_ready = 0;
        if (p->recompute) MS_TRY(block_forward(enc, i, B, &ln1_ready, 1));
        MS_TRY(block_backward(enc, i, B, dcur, dnext));
        float *t = dcur; dcur = dnext; dnext = t;
        if (enc->grads_ready) MS_TRY(enc->grads_ready(enc->grads_ready_ctx, ps, enc->ready_lo[i]));
    }
    if (p->sub_active) {
        MS_TRY(ms_dev_zero(dev, p->dtok_full, F((int64_t)B * T * D)));
        MS_TRY(ms_gather_rows_backward(dev, p->dtok_full, dcur, p->s_gather, p->sub_rows, D, (int64_t)B * T));
        dcur = p->dtok_full;
    }
    MS_TRY(pos_backward(enc, dcur, B));
    float *gw = ms_params_grad(ps, enc->patch_w), *gb = ms_params_grad(ps, enc->patch_b);
    if (dx || gw || gb)
        MS_TRY(ms_conv_patch_backward(dev, dx, gw, gb, dcur, p->x_copy, ms_params_data(ps, enc->patch_w), B,
                                      c->in_chans, S, S, D, c->patch, 1));
    return MS_OK;
}

ms_status ms_sam_encoder_backward(ms_sam_encoder *enc, const float *demb, float *dx)
{
    struct enc_priv *p = enc->priv;
    MS_FAIL_IF(!p || !enc->with_backward, MS_EBADSTATE,
               "sam encoder: backward needs ms_sam_encoder_reserve(..., with_backward=1)");
    MS_FAIL_IF(!enc->batch, MS_EBADSTATE, "sam encoder: backward before forward");
    MS_FAIL_IF(p->sub_active, MS_EBADSTATE, "sam encoder: the last forward ran on a token subset");
    const ms_sam_enc_config *c = &enc->cfg;
    ms_params *ps = enc->ps;
    ms_device *dev = enc->dev;
    int B = enc->batch;
    int64_t D = c->embed_dim, S = ms_sam_enc_run_size(enc), g = S / c->patch, T = g * g, M = (int64_t)B * T,
            C = c->out_chans;
#define P(x) ms_params_data(ps, enc->x)
#define G(x) ms_params_grad(ps, enc->x)
    MS_TRY(ms_dev_zero(dev, p->dn2, F(M * C)));
    MS_TRY(ms_layernorm2d_backward(dev, p->dn2, G(neck3_w), G(neck3_b), demb, p->n2, P(neck3_w), p->n3_mean,
                                   p->n3_rstd, B, C, T));
    MS_TRY(ms_dev_zero(dev, p->dn1, F(M * C)));
    MS_TRY(ms_conv2d_backward(dev, p->dn1, G(neck2_w), NULL, p->dn2, p->n1, P(neck2_w), B, C, g, g, C, 3, 1, 1));
    MS_TRY(ms_dev_zero(dev, p->dn0t, F(M * C)));
    MS_TRY(ms_layernorm2d_backward(dev, p->dn0t, G(neck1_w), G(neck1_b), p->dn1, p->neck0t, P(neck1_w), p->n1_mean,
                                   p->n1_rstd, B, C, T));
    MS_TRY(ms_dev_zero(dev, p->dn0, F(M * C)));
    MS_TRY(ms_transpose_backward(dev, p->dn0, p->dn0t, B, T, C));
    float *dcur = p->d_a, *dnext = p->d_b;
    MS_TRY(ms_dev_zero(dev, dcur, F(M * D)));
    MS_TRY(ms_linear_backward(dev, dcur, G(neck0_w), NULL, p->dn0, p->blk[c->depth - 1].out, P(neck0_w), M, D, C));
#undef P
#undef G
    return blocks_embed_backward(enc, dcur, dnext, dx);
}

/* ------------------------------------------------------------------------------------------------ token subsets */

/* Index lists of a subset, on the device. Rows of the subset: image b's visible tokens are rows
 * b·n_keep .. (b+1)·n_keep − 1, in the caller's order (grouped by window, window order). Windowed blocks: one group
 * per (image, window); queries are the window's visible rows (contiguous), keys those rows plus the pad rows of
 * the window's kept pad slots (the shared ws² rows at pad_base: qkv of a zero — or norm1.bias — token), every row
 * with window-local coordinates. Global blocks: one group per image over its visible rows, grid coordinates. */
static ms_status subset_lists(ms_sam_encoder *enc, int B, const ms_sam_enc_subset *s)
{
    const ms_sam_enc_config *c = &enc->cfg;
    struct enc_priv *p = enc->priv;
    ms_device *dev = enc->dev;
    int64_t D = c->embed_dim, g = ms_sam_enc_run_size(enc) / c->patch, T = g * g, Mt = (int64_t)enc->max_batch * T;
    int64_t ws = c->window ? c->window : g, ws2 = ws * ws, nh = (g + ws - 1) / ws, gp = nh * ws, nwin = nh * nh;
    int64_t nk = s->n_keep, R = (int64_t)B * nk, ngw = (int64_t)enc->max_batch * nwin;
    MS_FAIL_IF(nk < 1 || nk > T, MS_EINVAL, "sam encoder: subset of %lld tokens out of %lld", (long long)nk,
               (long long)T);
    MS_FAIL_IF(R > p->pad_base, MS_EINVAL, "sam encoder: %lld visible tokens per image, reserved for %lld",
               (long long)nk, (long long)(p->pad_base / enc->max_batch));
    if (!p->sub_arena.base) { /* sized once for the largest subset: every token and every pad slot */
        ms_plan pl = {0};
        plan_subset(&pl, p, Mt, p->pad_base, D, ngw, ws2);
        ms_status rc = ms_plan_alloc(&pl, dev, &p->sub_arena);
        ms_plan_free(&pl);
        MS_TRY(rc);
        p->h_idx = malloc(I(Mt + ngw * ws2 + 2 * (ngw + 1)));
        MS_FAIL_IF(!p->h_idx, MS_ENOMEM, "sam encoder: out of memory");
    }
    int32_t *h = p->h_idx;
    /* gather rows and coordinates */
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < nk; i++) {
            int32_t t = s->keep[b * s->keep_stride + i];
            MS_FAIL_IF(t < 0 || t >= T, MS_EINVAL, "sam encoder: subset token %d outside the %lld-token grid", t,
                       (long long)T);
            h[b * nk + i] = (int32_t)(b * T + t);
        }
    MS_TRY(ms_dev_from_host(dev, p->s_gather, h, I(R)));
    for (int64_t r = 0; r < R; r++) h[r] = (h[r] % T) / (int32_t)g;
    MS_TRY(ms_dev_from_host(dev, p->s_grow, h, I(R)));
    for (int64_t r = 0; r < R; r++) { int32_t t = s->keep[(r / nk) * s->keep_stride + r % nk]; h[r] = t % (int32_t)g; }
    MS_TRY(ms_dev_from_host(dev, p->s_gcol, h, I(R)));
    if (c->window) {
        int32_t *qoff = h, *koff = h + ngw + 1, *kidx = h + 2 * (ngw + 1);
        int64_t kn = 0, gi = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t w = 0; w < nwin; w++, gi++) {
                const int32_t *ko = s->win_keep_off + b * (nwin + 1), *po = s->win_pad_off + b * (nwin + 1);
                MS_FAIL_IF(ko[w] > ko[w + 1] || ko[w + 1] > nk, MS_EINVAL, "sam encoder: bad subset window offsets");
                qoff[gi] = (int32_t)(b * nk + ko[w]);
                koff[gi] = (int32_t)kn;
                for (int32_t i = ko[w]; i < ko[w + 1]; i++) kidx[kn++] = (int32_t)(b * nk + i);
                for (int32_t i = po[w]; i < po[w + 1]; i++) {
                    int32_t q = s->pad[b * s->pad_stride + i], y = q / (int32_t)gp, x = q % (int32_t)gp;
                    MS_FAIL_IF(q < 0 || y >= gp || (y < g && x < g) || (y / ws) * nh + x / ws != w, MS_EINVAL,
                               "sam encoder: subset pad slot %d is not a pad slot of window %lld", q, (long long)w);
                    kidx[kn++] = (int32_t)(p->pad_base + (y % ws) * ws + x % ws);
                }
            }
        qoff[gi] = (int32_t)R;
        koff[gi] = (int32_t)kn;
        MS_TRY(ms_dev_from_host(dev, p->s_qoff, qoff, I(gi + 1)));
        MS_TRY(ms_dev_from_host(dev, p->s_koff, koff, I(gi + 1)));
        MS_TRY(ms_dev_from_host(dev, p->s_kidx, kidx, I(kn)));
        /* window-local coordinates of the subset rows, then of the ws² pad rows */
        for (int64_t r = 0; r < R; r++) {
            int32_t t = s->keep[(r / nk) * s->keep_stride + r % nk];
            h[r] = (int32_t)((t / g) % ws);
        }
        MS_TRY(ms_dev_from_host(dev, p->s_wrow, h, I(R)));
        for (int64_t r = 0; r < R; r++) {
            int32_t t = s->keep[(r / nk) * s->keep_stride + r % nk];
            h[r] = (int32_t)((t % g) % ws);
        }
        MS_TRY(ms_dev_from_host(dev, p->s_wcol, h, I(R)));
        for (int64_t i = 0; i < ws2; i++) h[i] = (int32_t)(i / ws);
        MS_TRY(ms_dev_from_host(dev, p->s_wrow + p->pad_base, h, I(ws2)));
        for (int64_t i = 0; i < ws2; i++) h[i] = (int32_t)(i % ws);
        MS_TRY(ms_dev_from_host(dev, p->s_wcol + p->pad_base, h, I(ws2)));
    }
    p->sub_rows = R;
    p->sub_keep = nk;
    return MS_OK;
}

ms_status ms_sam_encoder_forward_subset(ms_sam_encoder *enc, const float *x, int B, const ms_sam_enc_subset *s,
                                        const float **tokens)
{
    struct enc_priv *p = enc->priv;
    MS_FAIL_IF(!p, MS_EBADSTATE, "sam encoder: ms_sam_encoder_reserve was not called");
    MS_FAIL_IF(B <= 0 || B > enc->max_batch, MS_EINVAL, "sam encoder: batch %d, reserved for %d", B,
               enc->max_batch);
    /* PEFT is a fine-tuning feature; MAE pretraining has no use for it, so the subset path stays PEFT-free */
    MS_FAIL_IF(ms_sam_enc_has_peft(enc), MS_EUNSUPPORTED,
               "sam encoder: the token-subset (MAE) path does not support LoRA/adapters; use the dense forward");
    const ms_sam_enc_config *c = &enc->cfg;
    ms_params *ps = enc->ps;
    ms_device *dev = enc->dev;
    int64_t D = c->embed_dim, S = ms_sam_enc_run_size(enc), g = S / c->patch, T = g * g;
    p->sub_active = 0;
    MS_TRY(subset_lists(enc, B, s));
    enc->batch = B;
    /* patch embedding and position on the full grid (≈0.5% of the encoder's work), then the visible rows */
    MS_TRY(ms_dev_copy(dev, p->x_copy, x, F((int64_t)B * c->in_chans * S * S)));
    MS_TRY(ms_conv_patch_forward(dev, p->tok0, p->x_copy, ms_params_data(ps, enc->patch_w),
                                 ms_params_data(ps, enc->patch_b), B, c->in_chans, S, S, D, c->patch, 1));
    const float *pos;
    MS_TRY(pos_forward(enc, &pos));
    MS_TRY(ms_add_bcast_forward(dev, p->tok0, p->tok0, pos, B, T * D));
    MS_TRY(ms_gather_rows_forward(dev, p->tok_sub, p->tok0, p->s_gather, p->sub_rows, D));
    p->sub_active = 1;
    p->blk[0].x_in = p->tok_sub;
    int ln1_ready = 0;
    for (int i = 0; i < c->depth; i++) MS_TRY(block_forward(enc, i, B, &ln1_ready, 0));
    *tokens = p->blk[c->depth - 1].out;
    return MS_OK;
}

ms_status ms_sam_encoder_backward_subset(ms_sam_encoder *enc, const float *dtokens, float *dx)
{
    struct enc_priv *p = enc->priv;
    MS_FAIL_IF(!p || !enc->with_backward, MS_EBADSTATE,
               "sam encoder: backward needs ms_sam_encoder_reserve(..., with_backward=1)");
    MS_FAIL_IF(!p->sub_active, MS_EBADSTATE, "sam encoder: backward_subset without a subset forward");
    float *dcur = p->d_a, *dnext = p->d_b;
    MS_TRY(ms_dev_copy(enc->dev, dcur, dtokens, F(p->sub_rows * (int64_t)enc->cfg.embed_dim)));
    return blocks_embed_backward(enc, dcur, dnext, dx);
}
