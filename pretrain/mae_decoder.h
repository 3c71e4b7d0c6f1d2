/* pretrain/mae_decoder.h — MAE's decoder and reconstruction loss for pretraining SAM's encoder (docs/MAE.md §Decoder,
 * §Loss). Pretraining only: it is never exported into SAM weights.
 *
 *   visible encoder tokens (n_vis, C) ─ LayerNorm(C) (MAE's encoder `norm`) ─ Linear(C→Dd) ─┐
 *   mask_token (Dd) at every hidden grid position ───────────────────────────────────────────┴─ (B·L, Dd), L = g²
 *   + fixed 2D sin-cos positions (column half first, mae util/pos_embed.py) → depth × pre-norm block (global
 *   attention over the L tokens of an image, MLP 4·Dd, GELU, LN eps 1e-6) → LayerNorm → Linear(Dd → p²·T)
 *   → pred (B·L, p²·T): token y·g + x predicts patch (y, x), pixels in (py, px, channel) order.
 * Loss: MSE on the hidden (masked) patches only; with norm_pix each target patch is normalised by its own mean and
 * unbiased variance (eps 1e-6). T = 1 (gray target) by default.
 * Parameter names (prefix + ...): norm_in.{weight,bias}, embed.{weight,bias}, mask_token (1,1,Dd),
 * blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}, norm.{weight,bias}, pred.{weight,bias}.
 * Initialisation as MAE: xavier-uniform linears, zero biases, LN 1/0, mask_token N(0, 0.02).
 */
#ifndef MS_MAE_DECODER_H
#define MS_MAE_DECODER_H

#include "base/device.h"
#include "pretrain/params.h"

#define MS_MAE_MAX_DEPTH 32

typedef struct ms_mae_dec_config {
    int enc_dim;    /* C: the encoder width */
    int dim;        /* Dd, default 512 */
    int depth;      /* default 8 */
    int n_heads;    /* default 16 */
    int grid;       /* g */
    int patch;      /* 16 */
    int target_ch;  /* T: 1 gray (default) or 3 */
} ms_mae_dec_config;

typedef struct ms_mae_decoder {
    ms_mae_dec_config cfg;
    ms_params *ps;
    int norm_in_w, norm_in_b, embed_w, embed_b, mask_token, norm_w, norm_b, pred_w, pred_b;
    struct { int n1w, n1b, qkvw, qkvb, projw, projb, n2w, n2b, fc1w, fc1b, fc2w, fc2b; } blk[MS_MAE_MAX_DEPTH];
    ms_device *dev;
    int max_batch, max_vis, batch, n_vis;
    ms_arena arena;
    void *priv;
} ms_mae_decoder;

ms_status ms_mae_decoder_init(ms_mae_decoder *d, const ms_mae_dec_config *cfg, ms_params *ps, const char *prefix);
/* After ms_params_alloc: activations for up to max_batch images with up to max_vis visible tokens each. */
ms_status ms_mae_decoder_reserve(ms_mae_decoder *d, ms_device *dev, int max_batch, int max_vis);
/* Count only: the bytes of the arena ms_mae_decoder_reserve allocates for (c, max_batch, max_vis), from the same
 * plan, allocating nothing. */
ms_status ms_mae_decoder_activation_bytes(const ms_mae_dec_config *c, int max_batch, int max_vis, size_t *bytes);
void ms_mae_decoder_free(ms_mae_decoder *d);
/* MAE initialisation of the decoder's parameters (seeded). */
ms_status ms_mae_decoder_init_weights(ms_mae_decoder *d, uint64_t seed);

/* tokens (B·n_vis, C) device; vis_idx (B·n_vis) host, grid index y·g + x of each visible token of image b in rows
 * b·n_vis ..; pred (B·L, p²·T) device (may be NULL: the decoder's own buffer is used; see ms_mae_decoder_pred). */
ms_status ms_mae_decoder_forward(ms_mae_decoder *d, const float *tokens, const int32_t *vis_idx, int B, int n_vis);
const float *ms_mae_decoder_pred(const ms_mae_decoder *d);
/* dpred (B·L, p²·T) → parameter gradients (+=) and dtokens (B·n_vis, C) += (NULL: skip). */
ms_status ms_mae_decoder_backward(ms_mae_decoder *d, const float *dpred, float *dtokens);

/* Host-side helpers for the loss. Patchify a gray image batch (B, S, S) into (B·L, p²) rows; norm_pix normalises
 * every row by its mean and unbiased variance (+1e-6). */
void ms_mae_patchify(const float *img, int B, int S, int patch, int norm_pix, float *target);
/* 2D sin-cos position table (L, dim): first dim/2 channels encode the column, the rest the row. */
void ms_mae_sincos_2d(float *out, int grid, int dim);

#endif
