/* pretrain/sam_encoder.h — SAM's image encoder (ImageEncoderViT, segment_anything/modeling/image_encoder.py;
 * docs/MODEL.md), forward and backward, CPU or CUDA through the op table (kernels/ops.h). Configuration:
 * sam_encoder_config.c; PEFT registration: sam_encoder_peft.c; the rest: sam_encoder.c.
 *
 *   x (B,3,S,S) → patch_embed (conv 16/16) → tokens (B,g,g,D), g = S/16 → + pos_embed → depth × Block → neck
 *   (1x1 conv, LN2d, 3x3 conv, LN2d) → embeddings (B,out_chans,g,g).
 *
 * Parameters are registered in a caller's ms_params under SAM's state-dict keys with a prefix ("image_encoder."
 * for a full SAM), so the image encoder, prompt encoder and mask decoder can share one parameter block and one
 * ms_params_load() call. Activations live in one arena sized once for (config, max batch, backward or not).
 *
 * Token layout: row b·g·g + y·g + x of a (B·g·g, D) matrix — the BHWC tensor of SAM, flattened.
 * Windowed blocks: SAM pads the normalised tokens to a multiple of the window with zero vectors (no attention
 * mask), so pad keys/values equal the qkv bias. Here the ws·ws possible pad slots of a window get one extra qkv row
 * each (qkv of a zero row = bias; finetune-SAM variant: qkv of norm1.bias), and attention runs on index lists:
 * group = one window, queries = its real tokens, keys = its real tokens + the pad rows of its missing slots, with
 * window-local (row, col) coordinates for the relative positions. Pad queries are never computed (SAM crops them).
 * Global blocks: one group per image, global coordinates. The attention op recomputes P from lse in backward.
 * (The pad rows are shared by all windows, so the CPU attention backward parallelises over heads, not windows;
 * per-window pad copies would lift that if many-core CPU training of small-head models ever matters.)
 *
 * MAE (a later issue) runs the same blocks on a SUBSET of tokens: the token matrix then holds only the visible
 * tokens (n_vis rows per image), and the index lists are built from their true (y, x): global blocks group an
 * image's visible rows with their true coordinates; windowed blocks group by the window of the true coordinate.
 * The block code below only depends on (rows, groups, coordinates), so that is a new index builder, not a new
 * block.
 *
 * Invariants: cfg.embed_dim == n_heads·head_dim; global blocks have rel-pos tables of length rel_len_global,
 * windowed ones rel_len_window (resized to 2·S−1 at run time when they differ, as SAM's get_rel_pos does).
 * Backward accumulates (+=) into the gradients of trainable parameters only (frozen ones: NULL, no work) and,
 * when asked, into the input gradient; it uses the activations of the last forward (which must have been run
 * with backward enabled in ms_sam_encoder_reserve).
 */
#ifndef MS_SAM_ENCODER_H
#define MS_SAM_ENCODER_H

#include <stdint.h>

#include "base/device.h"
#include "base/status.h"
#include "base/tensor.h"
#include "checkpoints/state_dict.h"
#include "pretrain/params.h"

#define MS_SAM_MAX_DEPTH 64

typedef struct ms_sam_enc_config {
    int img_size;          /* input side S (square), multiple of patch: 1024 for vit_b/l/h, 256 for vit_test */
    int patch;             /* 16 */
    int in_chans;          /* 3 */
    int embed_dim;         /* D */
    int depth;
    int n_heads;
    int head_dim;          /* D / n_heads */
    int mlp_dim;           /* 4·D */
    int window;            /* 14; 0 = every block global */
    int n_global;
    int global_idx[MS_SAM_MAX_DEPTH];
    int rel_len_window;    /* rel-pos table length of windowed blocks (2·window−1 in SAM) */
    int rel_len_global;    /* ... of global blocks (2·g−1 in SAM) */
    int out_chans;         /* 256 */
    float eps;             /* 1e-6 (encoder LayerNorms and neck LayerNorm2d) */
    int finetune_sam_block;/* 1: finetune-SAM's block (window partition before norm1: pad tokens = norm1.bias) */
} ms_sam_enc_config;

/* vit_b, vit_l, vit_h (1024 input) and vit_test (D 192, depth 4, 3 heads, window 14, global [1,3], input 256). */
ms_status ms_sam_enc_config_named(const char *name, ms_sam_enc_config *cfg);
/* Reads the variant from a state dict's shapes under `prefix` ("image_encoder." for SAM files): D from
 * patch_embed, depth from the block count, head_dim from the rel-pos tables (→ heads), window and global blocks
 * from the tables' lengths, image size from pos_embed, mlp dim from lin1, out_chans from neck.0. */
ms_status ms_sam_enc_config_from_sd(const ms_state_dict *sd, const char *prefix, ms_sam_enc_config *cfg);
/* Fills the derived fields (mlp_dim, head_dim, rel lengths) of a hand-written config and validates it. */
ms_status ms_sam_enc_config_check(ms_sam_enc_config *cfg);
int ms_sam_enc_block_is_global(const ms_sam_enc_config *cfg, int i);
/* Grid side g = img_size / patch. */
static inline int ms_sam_enc_grid(const ms_sam_enc_config *cfg) { return cfg->img_size / cfg->patch; }
/* Number of encoder parameters (floats). */
int64_t ms_sam_enc_numel(const ms_sam_enc_config *cfg);

typedef struct ms_sam_enc_block_params {
    int norm1_w, norm1_b, rel_h, rel_w, qkv_w, qkv_b, proj_w, proj_b, norm2_w, norm2_b, lin1_w, lin1_b, lin2_w,
        lin2_b;
    /* PEFT (ms_sam_encoder_add_peft); -1 when the block has none */
    int lora_aq, lora_bq, lora_av, lora_bv;       /* A (r, D), B (D, r) for q and v */
    int sa_w1, sa_b1, sa_w2, sa_b2;               /* Space_Adapter D_fc1 (D/4, D), D_fc2 (D, D/4) */
    int ma_w1, ma_b1, ma_w2, ma_b2;               /* MLP_Adapter, same shapes */
} ms_sam_enc_block_params;

/* Parameter-efficient fine-tuning of the encoder (finetune-SAM: mazurowski-lab/finetune-SAM models/sam_LoRa.py
 * and models/common.py; Gu et al., arXiv 2404.09957; docs/MODEL.md).
 * LoRA on block i (bit i of lora_blocks): qkv[:, 0:D] += (ln1·A_qᵀ)·B_qᵀ, qkv[:, 2D:3D] += (ln1·A_vᵀ)·B_vᵀ — q and v
 * only, scale 1, no dropout; names <prefix>blocks.i.attn.qkv.linear_{a,b}_{q,v}.weight (finetune-SAM's; its base
 * qkv is renamed attn.qkv.qkv.* — ours keeps SAM's attn.qkv.*, export-weights renames). The pad rows of windowed
 * blocks get the LoRA delta too (their input is a zero or norm1.bias row, like any other token).
 * Adapter on block i (bit i of adapter_blocks): a = proj(attn); xmid = x_in + a + fc2(GELU(fc1(a)))  (Space_Adapter,
 * with its skip); out = xmid + mlp(ln2) + adapter_scale·fc2(GELU(fc1(ln2)))  (MLP_Adapter, parallel, no skip);
 * hidden width D/4; names <prefix>blocks.i.{Space_Adapter,MLP_Adapter}.D_fc{1,2}.{weight,bias}.
 * PEFT tensors are registered as optional (ms_params_set_optional), so a plain SAM file loads and leaves them at
 * their initialisation; biases are no_decay. They are appended after the encoder's tensors (ms_params keeps insertion
 * order), block by block: LoRA a_q, b_q, a_v, b_v, then Space_Adapter fc1 w/b, fc2 w/b, then MLP_Adapter.
 * Bits of lora_blocks / adapter_blocks at or above depth are ignored; lora_rank 0 means no LoRA; adapter_scale 0
 * means 0.5. Frozen PEFT or base tensors get no gradient, but activation gradients still flow through every branch.
 * Dense forward/backward only: ms_sam_encoder_forward_subset (MAE) returns MS_EUNSUPPORTED for an encoder with PEFT.
 * Tested by tests/finetune/test_peft_encoder.c (reference: tests/reference/peft_ref_encoder.py). */
typedef struct ms_sam_enc_peft {
    int lora_rank;            /* 0 = no LoRA */
    uint64_t lora_blocks;     /* bit i = block i */
    uint64_t adapter_blocks;  /* 0 = no adapters */
    float adapter_scale;      /* 0.5 */
} ms_sam_enc_peft;

typedef struct ms_sam_encoder {
    ms_sam_enc_config cfg;
    ms_params *ps;         /* not owned */
    int pos_embed, patch_w, patch_b;               /* parameter indices in ps */
    ms_sam_enc_block_params blk[MS_SAM_MAX_DEPTH];
    ms_sam_enc_peft peft;  /* what ms_sam_encoder_add_peft added (zeros: none) */
    int neck0_w, neck1_w, neck1_b, neck2_w, neck3_w, neck3_b;

    /* activations (ms_sam_encoder_reserve) */
    ms_device *dev;
    int max_batch, with_backward, batch; /* batch = B of the last forward */
    int run_size;          /* input side the activations are sized for (0 = cfg.img_size); see ms_sam_encoder_set_input_size */
    int recompute;         /* per-block recomputation in the backward (ms_sam_encoder_set_recompute) */
    int subset_keep;       /* > 0: the next reserve is for token subsets of at most this many tokens per image */
    ms_arena arena;
    void *priv;            /* buffer pointers and index lists */

    /* data parallel (ms_sam_encoder_set_grads_hook): after block i's backward, every trainable gradient of ps at
     * offset >= ready_lo[i] is final */
    ms_status (*grads_ready)(void *ctx, const ms_params *ps, int64_t lo);
    void *grads_ready_ctx;
    int64_t ready_lo[MS_SAM_MAX_DEPTH];
} ms_sam_encoder;

/* Installs (fn non-NULL) or removes the hook the backward calls after each block, for gradient reductions that
 * start while the backward runs (pretrain/grad_sync.h). Call after ms_params_alloc_grads: the offsets come from the
 * trainable set then. A gradient counts as final after block i when it belongs to block j >= i (PEFT tensors
 * included) or to the neck, and the tensors of ps outside the encoder when outside_final says their backward ran
 * before the encoder's (SAM's prompt encoder and mask decoder in fine-tuning); the position table and the patch
 * embedding only at the end. ready_lo[i] is the end of the highest gradient not yet final. */
void ms_sam_encoder_set_grads_hook(ms_sam_encoder *enc, ms_status (*fn)(void *, const ms_params *, int64_t),
                                   void *ctx, int outside_final);

/* Registers the encoder's tensors in ps with names prefix + SAM key ("image_encoder.blocks.0.attn.qkv.weight").
 * ps must not be allocated yet. */
ms_status ms_sam_encoder_init(ms_sam_encoder *enc, const ms_sam_enc_config *cfg, ms_params *ps, const char *prefix);
/* Adds LoRA and/or adapter tensors (after ms_sam_encoder_init, before ms_params_alloc and ms_sam_encoder_reserve;
 * once). enc->peft then holds the effective settings (masked to depth). */
ms_status ms_sam_encoder_add_peft(ms_sam_encoder *enc, const ms_sam_enc_peft *pf);
/* Initialises the PEFT tensors only (parameters allocated): LoRA A = U(±1/√fan_in) (kaiming_uniform a=√5), B = 0 —
 * so the model starts equal to the base — and adapters with PyTorch's Linear default (weights and biases
 * U(±1/√fan_in)), from seed. */
ms_status ms_sam_encoder_peft_init_random(ms_sam_encoder *enc, uint64_t seed);

/* Runs the encoder at input side S (a multiple of the patch) instead of the checkpoint's native cfg.img_size: the
 * master position embedding is resized bicubically to the run grid and the global blocks' relative-position tables
 * linearly to 2·g−1 inside every forward (get_rel_pos in image_encoder.py; docs/MODEL.md), with gradients flowing back to the masters, so the
 * parameters — and an export — keep their native shapes. Call before ms_sam_encoder_reserve. */
ms_status ms_sam_encoder_set_input_size(ms_sam_encoder *enc, int S);
/* The input side the encoder runs at. */
static inline int ms_sam_enc_run_size(const ms_sam_encoder *enc) { return enc->run_size ? enc->run_size : enc->cfg.img_size; }

/* Sizes the activation arena for batches up to max_batch; with_backward keeps every block's activations (else two
 * token buffers are reused and only the embeddings survive). Call after ms_params_alloc (uses ps->dev's device). */
ms_status ms_sam_encoder_reserve(ms_sam_encoder *enc, ms_device *dev, int max_batch, int with_backward);

/* Per-block activation recomputation (`--recompute`; docs/PERFORMANCE.md §Memory), for the next
 * ms_sam_encoder_reserve with backward: the forward keeps only each block's output (the next block's input) in the
 * arena, every other activation of a block lives in one set shared by all blocks; the backward re-runs block i's
 * forward from its kept input into that set, then block i's backward. About one extra forward of the blocks; on the
 * CPU the gradients are bit-identical to the run without it (tests/pretrain/test_recompute.c). Dense and token-
 * subset (MAE) paths, with or without PEFT. Without backward the setting changes nothing. */
void ms_sam_encoder_set_recompute(ms_sam_encoder *enc, int on);

/* For the next ms_sam_encoder_reserve (max_keep > 0; 0 restores the default): the encoder will only run on token
 * subsets (MAE) of at most max_keep tokens per image, so every block buffer is sized for max_batch·max_keep rows
 * instead of max_batch·g² (docs/PERFORMANCE.md §Memory), the dense index lists and the neck's buffers are left out,
 * and ms_sam_encoder_forward answers MS_EUNSUPPORTED. The results of the subset path are the same bits. */
void ms_sam_encoder_set_subset_only(ms_sam_encoder *enc, int max_keep);

/* Count only: the bytes of device memory ms_sam_encoder_reserve(enc, dev, max_batch, with_backward) would allocate
 * with recomputation on or off — plus, with subset, the token-subset arena the first
 * ms_sam_encoder_forward_subset allocates — from the same plan, allocating nothing. enc needs only
 * ms_sam_encoder_init (and ms_sam_encoder_add_peft / _set_input_size where used); parameters need not be allocated. */
ms_status ms_sam_encoder_activation_bytes(const ms_sam_encoder *enc, int max_batch, int with_backward, int recompute,
                                          int subset, size_t *bytes);
/* Bytes of device memory the encoder's activation arenas hold now (the reserved arena plus, after a subset forward,
 * the subset arena): what ms_sam_encoder_activation_bytes predicts. */
size_t ms_sam_encoder_arena_bytes(const ms_sam_encoder *enc);
void ms_sam_encoder_free(ms_sam_encoder *enc);

/* x (B,3,S,S) and emb (B,out_chans,g,g) in device memory; B <= max_batch. x is copied (backward needs it). */
ms_status ms_sam_encoder_forward(ms_sam_encoder *enc, const float *x, int B, float *emb);
/* demb (B,out_chans,g,g) → parameter gradients (trainable only, +=) and dx (B,3,S,S) += when dx != NULL. */
ms_status ms_sam_encoder_backward(ms_sam_encoder *enc, const float *demb, float *dx);

/* Activations of the last forward, for tests and debugging (device memory, token layout (B·g·g, D)):
 * stage −1 = patch embedding + pos_embed, stage i = output of block i. NULL when not kept (inference mode keeps
 * only the last block). */
const float *ms_sam_encoder_tokens(const ms_sam_encoder *enc, int stage);

/* Sets every encoder parameter to PyTorch's default init (LN γ=1 β=0, pos_embed and rel-pos 0, linear/conv weights
 * and biases U(±1/√fan_in)) from seed, for `--init random`, PEFT tensors included (ms_sam_encoder_peft_init_random:
 * LoRA B = 0). The parameters must be allocated. */
ms_status ms_sam_encoder_init_random(ms_sam_encoder *enc, uint64_t seed);

/* ---- token subsets (MAE pretraining: the encoder on visible tokens only, docs/MAE.md)---------------------
 * Every image keeps the same number of tokens. keep (host, B rows of keep_stride) lists image b's visible grid
 * indices y·g + x grouped by window in window order (win_keep_off (B, n_win+1) delimits them); pad (host, B rows
 * of pad_stride) lists the kept pad slots of the padded grid (index y·gp + x, gp = windows·ws), delimited by
 * win_pad_off. Windowed blocks attend within a window over its visible tokens plus its kept pad slots; global
 * blocks over all visible tokens of the image; relative positions use each token's true coordinates. With every
 * token and pad slot kept this is exactly the dense forward (tested). Only the blocks run: no neck. */
typedef struct ms_sam_enc_subset {
    int n_keep, keep_stride, pad_stride;
    const int32_t *keep, *win_keep_off, *pad, *win_pad_off;
} ms_sam_enc_subset;

/* tokens → the last block's output for the subset, (B·n_keep, D) device memory owned by the encoder. */
ms_status ms_sam_encoder_forward_subset(ms_sam_encoder *enc, const float *x, int B, const ms_sam_enc_subset *s,
                                        const float **tokens);
/* dtokens (B·n_keep, D) → parameter gradients (+=), and dx += when dx != NULL. */
ms_status ms_sam_encoder_backward_subset(ms_sam_encoder *enc, const float *dtokens, float *dx);

#endif
