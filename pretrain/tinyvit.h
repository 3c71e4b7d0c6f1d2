/* pretrain/tinyvit.h — MobileSAM's image encoder, TinyViT (ChaoningZhang/MobileSAM,
 * mobile_sam/modeling/tiny_vit_sam.py; build_sam.py build_sam_vit_t; docs/MODEL.md §TinyViT). Forward and
 * backward, BatchNorm in inference mode (running statistics, never updated) or training mode (batch statistics,
 * running ones updated: ms_tinyvit.bn_train), LoRA and adapters as finetune-SAM applies them. CPU or CUDA through
 * the op table (kernels/ops.h); tested on the CPU against MobileSAM's own code (tests/pretrain/test_tinyvit.c,
 * test_tinyvit_grad.c).
 *
 *   x (B,3,S,S) → stem: Conv2d_BN(3→C0/2, 3×3 s2) GELU Conv2d_BN(→C0, 3×3 s2)          (B,C0,S/4,S/4)
 *   → layer 0: depth0 × MBConv (1×1 expand 4, GELU, dw 3×3, GELU, 1×1, + x, GELU), then PatchMerging
 *   → layers 1, 2: depth × TinyViTBlock, then PatchMerging; layer 3: depth3 × TinyViTBlock (no merging)
 *   → tokens (B,g,g,C3), g = S/16 → neck: Conv 1×1 (C3→256, no bias), LN2d, Conv 3×3 (pad 1, no bias), LN2d
 *   → embeddings (B,256,g,g).
 * Conv2d_BN = Conv2d (no bias) + BatchNorm2d (eps 1e-5). PatchMerging (NCHW; tokens are turned back into a grid):
 * Conv2d_BN 1×1 (C→C'), GELU, depthwise Conv2d_BN 3×3 (stride merge_stride[i], pad 1), GELU, Conv2d_BN 1×1, then
 * flattened to tokens. Strides 2, 2, 1: MobileSAM keeps the last grid at S/16 (upstream picks stride 1 when the
 * output dim is 320, 448 or 576, i.e. in its models at the last merging).
 * TinyViTBlock on tokens (B,H,W,C), LayerNorm eps 1e-5:
 *   x = x + proj(attn(LN(window_partition(x))))   cropped back (zero pad at bottom/right; pad slots are
 *                                                  normalised like any token: keys from LN's bias, no mask)
 *   x = BN(dwconv3×3(x))                          local conv on the grid, NO residual
 *   x = x + fc2(GELU(fc1(LN(x))))
 *   attention per window and head: softmax(q·kᵀ/√hd + bias[h, |Δy|·ws + |Δx|])·v, with the qkv output laid out per
 *   head as [q | k | v] (hd columns each: qkv.view(B,N,heads,3·hd).split), not SAM's [all q | all k | all v].
 *
 * Parameters are registered under MobileSAM's state-dict keys with a prefix ("image_encoder." for a full model),
 * including the classifier (norm_head, head: unused by SAM, but in every MobileSAM file) and BatchNorm's running
 * statistics (float buffers, ms_param.buffer: never trainable, never given a gradient).
 * num_batches_tracked (int64) is not a float and lives outside ms_params: ms_tinyvit_load accepts it, and
 * export writes it (a later step). attention_bias_idxs is a non-persistent buffer (not in files): built here.
 *
 * Layouts: NCHW in the stem, layer 0 and the mergings; tokens (B·H·W, C), row b·H·W + y·W + x, in layers 1–3.
 * Activations live in one arena sized once for (config, max batch, with_backward); the stage outputs stay readable
 * until the next forward (ms_tinyvit_stage). Without backward every block runs in shared scratch; with it each
 * unit keeps what its backward reads, plus a copy of the input.
 */
#ifndef MS_TINYVIT_H
#define MS_TINYVIT_H

#include <stdint.h>

#include "base/device.h"
#include "base/status.h"
#include "base/tensor.h"
#include "checkpoints/state_dict.h"
#include "pretrain/params.h"

#define MS_TINYVIT_STAGES 4
#define MS_TINYVIT_MAX_DEPTH 16

typedef struct ms_tinyvit_config {
    int img_size;             /* S, multiple of 16 (1024 for vit_t) */
    int in_chans;             /* 3 */
    int dims[4];              /* 64, 128, 160, 320 */
    int depths[4];            /* 2, 2, 6, 2 */
    int heads[4];             /* 2, 4, 5, 10 (heads[0] unused: layer 0 is convolutional) */
    int windows[4];           /* 7, 7, 14, 7 (windows[0] unused) */
    int mlp_ratio;            /* 4 */
    int mbconv_expand;        /* 4 */
    int local_conv;           /* 3 */
    int merge_stride[3];      /* 2, 2, 1 */
    int num_classes;          /* classifier head kept for the state dict: 1000 */
    int out_chans;            /* 256 */
} ms_tinyvit_config;

/* vit_t (MobileSAM: TinyViT-5M at 1024) and vit_t_test (dims 32/64/80/320, depths 1/2/2/1, heads 1/2/5/10,
 * windows 7/7/14/7, 10 classes, input 256: the golden-file variant of tests/pretrain/gen_tinyvit_golden.py). */
ms_status ms_tinyvit_config_named(const char *name, ms_tinyvit_config *cfg);
/* Validates a hand-written config (sizes, heads dividing dims, the grid after each stride). */
ms_status ms_tinyvit_config_check(const ms_tinyvit_config *cfg);
/* Grid side of layer i's blocks (S/4, then after each merging); i = 4: the neck's grid (= S/16 for vit_t). */
int ms_tinyvit_grid(const ms_tinyvit_config *cfg, int i);

typedef struct ms_tinyvit_cbn { int w, g, b, mean, var; } ms_tinyvit_cbn; /* Conv2d_BN: c.weight, bn.* */

typedef struct ms_tinyvit_block {
    int ab, norm_w, norm_b, qkv_w, qkv_b, proj_w, proj_b;   /* attn.{attention_biases, norm, qkv, proj} */
    int mnorm_w, mnorm_b, fc1_w, fc1_b, fc2_w, fc2_b;       /* mlp.{norm, fc1, fc2} */
    ms_tinyvit_cbn local;                                   /* local_conv */
    /* PEFT (ms_tinyvit_add_peft); -1 when the block has none. Names as finetune-SAM's TinyViT:
     * attn.qkv.linear_{a,b}_{q,v}.weight, {Space_Adapter,MLP_Adapter}.D_fc{1,2}.{weight,bias} */
    int lora_aq, lora_bq, lora_av, lora_bv;
    int sa_w1, sa_b1, sa_w2, sa_b2, ma_w1, ma_b1, ma_w2, ma_b2;
} ms_tinyvit_block;

/* Parameter-efficient fine-tuning of TinyViT as finetune-SAM applies it (mazurowski-lab/finetune-SAM
 * models/sam_LoRa.py, models/sam/modeling/tiny_vit_sam.py; docs/MODEL.md §TinyViT):
 * LoRA (rank r, scale 1) on the qkv Linear of every block of the layers in lora_layers (bit i = layers.i, i in 1..3).
 *   TinyViT lays qkv's output out per head as [q_h | k_h | v_h]; by default the q delta (ln·A_qᵀ)·B_qᵀ (C columns,
 *   head-major) goes to the q columns of each head and the v delta to the v columns — true q/v LoRA. With
 *   fsam_slicing (finetune-SAM's _LoRA_qkv, written for SAM's [all q | all k | all v]) the deltas go to columns
 *   [0, C) and [2C, 3C) instead, which mixes q, k and v of different heads.
 * Adapters in every block of the layers in adapter_layers: a = attention output (cropped, before the residual);
 *   x = x_in + a + fc2(GELU(fc1(a)))  (Space_Adapter, with its skip); after the local conv, with y its output:
 *   out = y + mlp(y) + adapter_scale·fc2(GELU(fc1(y)))  (MLP_Adapter, parallel; its input is y itself, not the
 *   MLP's LayerNorm). Hidden width C/4 (int(C·0.25)); scale 0 means 0.5.
 * PEFT tensors are optional for loading (a plain MobileSAM file loads) and appended after the encoder's. */
typedef struct ms_tinyvit_peft {
    int lora_rank;            /* 0 = no LoRA */
    unsigned lora_layers;     /* bit i = layers.i (1..3) */
    unsigned adapter_layers;  /* bit i = layers.i (1..3) */
    float adapter_scale;      /* 0.5 */
    int fsam_slicing;         /* 1: finetune-SAM's LoRA column slicing (--compat-finetune-sam) */
} ms_tinyvit_peft;

typedef struct ms_tinyvit {
    ms_tinyvit_config cfg;
    ms_tinyvit_peft peft;                   /* what ms_tinyvit_add_peft added (zeros: none) */
    /* BatchNorm mode of the next forward: 0 = inference (running statistics, never updated); 1 = training (batch
     * statistics; the running ones updated as torch does, momentum 0.1, and bn_batches incremented). The caller
     * sets it (docs/MODEL.md §TinyViT: a frozen encoder never trains its BatchNorms). */
    int bn_train;
    int64_t bn_batches;                     /* num_batches_tracked: read by ms_tinyvit_load, written on export */
    ms_params *ps;                          /* not owned */
    ms_tinyvit_cbn stem[2];
    ms_tinyvit_cbn mb[MS_TINYVIT_MAX_DEPTH][3];           /* layer 0: blocks.j.conv{1,2,3} */
    ms_tinyvit_block blk[4][MS_TINYVIT_MAX_DEPTH];         /* layers 1..3 */
    ms_tinyvit_cbn merge[3][3];                            /* layers 0..2: downsample.conv{1,2,3} */
    int head_norm_w, head_norm_b, head_w, head_b;
    int neck0_w, neck1_w, neck1_b, neck2_w, neck3_w, neck3_b;
    char prefix[64];

    /* activations (ms_tinyvit_reserve) */
    ms_device *dev;
    int max_batch, batch, with_backward;
    int neck_ran;                           /* the last forward ran the neck (emb != NULL) */
    ms_arena arena;
    void *priv;
} ms_tinyvit;

/* Registers every tensor in ps under prefix + MobileSAM key. ps must not be allocated yet. */
ms_status ms_tinyvit_init(ms_tinyvit *tv, const ms_tinyvit_config *cfg, ms_params *ps, const char *prefix);
/* Adds LoRA and/or adapter tensors (after ms_tinyvit_init, before the parameters are allocated; once). */
ms_status ms_tinyvit_add_peft(ms_tinyvit *tv, const ms_tinyvit_peft *pf);
/* Initialises every tensor (parameters allocated) as MobileSAM's TinyViT does on construction (Linear weights
 * trunc_normal std 0.02 and biases 0, LayerNorm 1/0, convolutions PyTorch's default U(±1/√fan_in), BatchNorm
 * γ = 1 (0 for MBConv's conv3) β = 0, running mean 0 / var 1, attention biases 0; the neck PyTorch's default)
 * and the PEFT tensors as ms_tinyvit_peft_init_random, from seed. */
ms_status ms_tinyvit_init_random(ms_tinyvit *tv, uint64_t seed);
/* PEFT tensors only: LoRA A = U(±1/√fan_in), B = 0 (the model starts equal to the base); adapters PyTorch's Linear
 * default, from seed. */
ms_status ms_tinyvit_peft_init_random(ms_tinyvit *tv, uint64_t seed);
/* Activations for batches up to max_batch (parameters allocated: ps->dev is used); with_backward keeps what the
 * backward needs. */
ms_status ms_tinyvit_reserve(ms_tinyvit *tv, int max_batch, int with_backward);
void ms_tinyvit_free(ms_tinyvit *tv);
/* Strict load from a state dict written by MobileSAM's code: every registered tensor with its shape; under the
 * prefix, the only extra keys allowed are the num_batches_tracked of registered BatchNorms (int, scalar). One line
 * per problem; nothing loaded on any error. */
ms_status ms_tinyvit_load(ms_tinyvit *tv, const ms_state_dict *sd);
/* A shallow view of sd without the registered BatchNorms' num_batches_tracked keys (the entries are shared: free
 * only view->e), and the largest of those counters in *batches (0 when none): for loaders that check the rest of
 * a whole model's keys themselves. */
ms_status ms_tinyvit_sd_view(const ms_tinyvit *tv, const ms_state_dict *sd, ms_state_dict *view, int64_t *batches);
/* x (B,3,S,S) → emb (B,out_chans,g,g), device memory, B ≤ max_batch. emb == NULL: stop after layer 3 (its tokens
 * are ms_tinyvit_stage(tv, 3); MAE's encoder output; tv->neck_ran says which). BatchNorm in the mode tv->bn_train
 * says; in training mode the running statistics are updated (momentum 0.1, unbiased variance) and bn_batches += 1.
 * With backward reserved x is copied: the caller may reuse it before the backward. */
ms_status ms_tinyvit_forward(ms_tinyvit *tv, const float *x, int B, float *emb);
/* Backward of the last forward (reserved with_backward): from demb (B,out_chans,g,g) when that forward ran the
 * neck, else from dtok (B·g·g, C3) for layer 3's tokens (the other is ignored). BatchNorm's
 * backward in the mode of that forward (training: through the batch statistics). Accumulates (+=) into the
 * gradients of trainable tensors (frozen ones, ms_params_grad NULL, cost no weight-gradient work) and into dx
 * (B,3,S,S) when dx != NULL; without dx it stops at the lowest layer holding a trainable tensor. Repeatable: it
 * only reads what the forward kept. */
ms_status ms_tinyvit_backward(ms_tinyvit *tv, const float *demb, const float *dtok, float *dx);
/* Outputs of the last forward (device memory): stage −1 the stem (B,C0,S/4,S/4); stage i in 0..3 layers[i]'s
 * output as tokens (B, L, C) (after its merging). NULL before a forward. */
const float *ms_tinyvit_stage(const ms_tinyvit *tv, int stage);
/* Number of registered floats. */
int64_t ms_tinyvit_numel(const ms_tinyvit *tv);

#endif
