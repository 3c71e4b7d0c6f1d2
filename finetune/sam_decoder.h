/* finetune/sam_decoder.h — SAM's mask decoder (MaskDecoder + TwoWayTransformer, docs/MODEL.md §Mask decoder), forward
 * and backward.
 *
 *   tokens  = [iou_token, mask_tokens (M), sparse prompt tokens (ns)]          (B, T = 1+M+ns, 256)
 *   keys    = image_embedding (as (B, h·w, 256)) + dense prompt embedding
 *   TwoWayTransformer(depth 2, heads 8, MLP 2048 ReLU, post-norm LN eps 1e-5; layer 0's self-attention has no PE
 *   and no residual; query_pe = the original tokens at every layer; key_pe = dense PE; the cross attentions work
 *   at 128 channels (downsample 2)) → hs (B,T,256), keys (B,h·w,256)
 *   output_upscaling: convT 2x2 (256→64), LN2d, GELU, convT 2x2 (64→32), GELU           → up (B,32,4h·4w)
 *   masks[b,i] = hypernet_i(hs[b,1+i]) (256→256→256→32, ReLU) · up[b]                  → (B, M, 4h·4w) logits
 *   iou[b]     = iou_head(hs[b,0]) (256→256→256→M, ReLU)                                → (B, M)
 * M = num_mask_tokens = num_multimask_outputs + 1 (4 in SAM; num_cls + 1 in finetune-SAM, docs/MODEL.md §Multi-class
 * output). The decoder returns all M masks; multimask selection ([1:M] or [0:1]) is the caller's (tools/cmd_segment.c).
 *
 * Batching: the working batch is B = max(b_img, bp). An image batch of 1 is repeated over the prompts (official
 * predictor); a prompt batch of 1 is tiled over the images (finetune-SAM); otherwise b_img == bp. Backward sums the
 * gradients of whatever was repeated back onto its source.
 *
 * Invariants: parameters live in the caller's ms_params under prefix + SAM key ("mask_decoder.transformer..."). All
 * activations of the last forward are kept in one arena (resized when B, T or M change). Backward accumulates (+=)
 * into trainable parameters' gradients only (frozen: NULL gradient, no weight-gradient work), into the image-
 * embedding gradient when asked, and hands the prompt gradients to ms_sam_prompt_backward.
 */
#ifndef MS_SAM_DECODER_H
#define MS_SAM_DECODER_H

#include "finetune/sam_prompt.h"

#define MS_SAM_MAX_MASK_TOKENS 32
#define MS_SAM_DEC_MAX_DEPTH 4

#define MS_SAM_MAX_HEADS 16

typedef struct ms_sam_attn_params {
    int q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;
    int ci; /* internal channels: 256 (self) or 128 (cross, downsample 2) */
    int lq_a, lq_b, lv_a, lv_b; /* LoRA on q_proj / v_proj: w_a (r, 256), w_b (ci, r); -1 = none */
} ms_sam_attn_params;

typedef struct ms_sam_dec_layer_params {
    ms_sam_attn_params self, t2i, i2t;
    int norm_w[4], norm_b[4]; /* norm1..norm4 */
    int lin1_w, lin1_b, lin2_w, lin2_b;
    int ad_w1, ad_b1, ad_w2, ad_b2; /* Adapter (shared by queries and keys) D_fc1 (64, 256), D_fc2 (256, 64); -1 = none */
    int ma_w1, ma_b1, ma_w2, ma_b2; /* MLP_Adapter, same shapes */
} ms_sam_dec_layer_params;

/* The per-task output head: mask tokens, hypernetwork MLPs and IoU head (the IoU token, transformer and output
 * upscaling are shared). Head 0 is the one ms_sam_decoder_init registers under SAM's own keys. */
typedef struct ms_sam_dec_head {
    int n_mask_tokens;
    int mask_tokens;
    int hyp_w[MS_SAM_MAX_MASK_TOKENS][3], hyp_b[MS_SAM_MAX_MASK_TOKENS][3];
    int iou_w[3], iou_b[3];
} ms_sam_dec_head;

/* Decoder PEFT (finetune-SAM, docs/MODEL.md §PEFT). LoRA: every q_proj and v_proj of the transformer (self,
 * token→image, image→token attention of each layer, and the final token→image attention) becomes proj(x) + w_b(w_a(x)),
 * scale 1; names <attn>.{q,v}_proj.w_{a,b}.weight (finetune-SAM renames the base to <attn>.{q,v}_proj.proj.* — ours
 * keeps SAM's keys, export-weights renames). Adapters, in every layer: after the token→image residual,
 * queries = Adapter(queries) (with skip) before norm2; the MLP step becomes queries + mlp(q) + scale·MLP_Adapter(q)
 * (no skip) before norm3; after the image→token residual keys = Adapter(keys) (the SAME Adapter weights) before
 * norm4. Hidden width 64 (= 256/4), GELU; names transformer.layers.l.{Adapter,MLP_Adapter}.D_fc{1,2}.{weight,bias}.
 * PEFT tensors are optional for ms_params_load. */
typedef struct ms_sam_dec_peft {
    int lora_rank;       /* 0 = none */
    int adapters;        /* 1 = adapters in every layer */
    float adapter_scale; /* 0.5 */
} ms_sam_dec_peft;

typedef struct ms_sam_decoder {
    int dim, heads, mlp_dim, depth, emb_h, emb_w;
    ms_params *ps; /* not owned */
    int iou_token;
    ms_sam_dec_layer_params layer[MS_SAM_DEC_MAX_DEPTH];
    ms_sam_attn_params fin;
    int norm_f_w, norm_f_b;
    int up0_w, up0_b, up1_w, up1_b, up3_w, up3_b;
    /* the output heads (mask tokens, hypernetworks, IoU head); out_heads[0] is SAM's own, the next forward uses
     * out_heads[active_out_head] (ms_sam_decoder_use_head) */
    int n_out_heads, active_out_head;
    ms_sam_dec_head out_heads[MS_SAM_MAX_HEADS];
    ms_sam_dec_peft peft;

    /* activations of the last forward */
    ms_device *dev;
    int B, b_img, bp, T, M;
    int64_t N; /* h·w keys */
    ms_arena arena;
    void *priv;
    const float *emb_in;                  /* the image embedding of the last forward (not owned) */
    const ms_sam_prompt_state *pst;       /* the prompt state of the last forward (not owned) */
    float *masks;                         /* device (B, M, 4h·4w) */
    float *iou;                           /* device (B, M) */
    float *hs;                            /* device (B, T, 256): transformer token output */
    float *keys_out;                      /* device (B, h·w, 256): transformer image output */
} ms_sam_decoder;

/* Registers the decoder's tensors under prefix ("mask_decoder."). n_mask_tokens = num_cls + 1 (4 for SAM). */
ms_status ms_sam_decoder_init(ms_sam_decoder *d, ms_params *ps, const char *prefix, int n_mask_tokens, int depth,
                              int emb_h, int emb_w);
void ms_sam_decoder_free(ms_sam_decoder *d);
/* Adds LoRA / adapter tensors (after init, before ms_params_alloc; once) under the decoder's own prefix. Tensors
 * are optional for ms_params_load; adapter biases are no_decay. */
ms_status ms_sam_decoder_add_peft(ms_sam_decoder *d, const ms_sam_dec_peft *pf);
/* PEFT tensors only (allocated parameters): LoRA w_a = U(±1/√fan_in), w_b = 0; adapters PyTorch Linear default.
 * Each tensor draws from its own stream of `seed` keyed by its name (independent of registration order). */
ms_status ms_sam_decoder_peft_init_random(ms_sam_decoder *d, uint64_t seed);
/* The head the next forward uses. */
static inline const ms_sam_dec_head *ms_sam_decoder_head(const ms_sam_decoder *d)
{
    return &d->out_heads[d->active_out_head];
}

/* Registers another output head (multi-task) with n_mask_tokens tokens under `prefix` + SAM's head keys
 * ("tasks.liver.mask_decoder." + "mask_tokens.weight", "output_hypernetworks_mlps.i.layers.j.*",
 * "iou_prediction_head.layers.j.*"), shapes as head 0's with M = n_mask_tokens, all optional for ms_params_load;
 * before ms_params_alloc. Returns the head id (>= 1) or -1 (ms_errmsg set). */
int ms_sam_decoder_add_head(ms_sam_decoder *d, const char *prefix, int n_mask_tokens);
/* Selects the head the next forward uses (0 = SAM's own). The next forward re-plans the activations for its M. A backward always goes with the head of the
 * forward before it, even when the active head was switched in between. */
ms_status ms_sam_decoder_use_head(ms_sam_decoder *d, int head);
/* PyTorch's default init of one head (mask tokens N(0,1), Linear U(±1/√fan_in) for weights and biases) from seed,
 * one stream per tensor name as above. */
ms_status ms_sam_decoder_head_init_random(ms_sam_decoder *d, int head, uint64_t seed);

/* emb: device (b_img, 256, h, w); pst: the prompt encoder's output for a batch of bp prompts. Results in d->masks,
 * d->iou (valid until the next forward). */
ms_status ms_sam_decoder_forward(ms_device *dev, ms_sam_decoder *d, const float *emb, int b_img,
                                 const ms_sam_prompt_state *pst);
/* dmasks: device (B, M, 4h·4w) or NULL; diou: device (B, M) or NULL. demb: device (b_img, 256, h, w) += or NULL.
 * d_sparse_host (bp, ns, 256) and d_dense (device, (bp, 256, h·w)) receive (+=) the prompt gradients when non-NULL;
 * pass them to ms_sam_prompt_backward. The no-mask embedding's gradient is added directly. */
ms_status ms_sam_decoder_backward(ms_device *dev, ms_sam_decoder *d, const float *dmasks, const float *diou,
                                  float *demb, float *d_sparse_host, float *d_dense);

#endif
