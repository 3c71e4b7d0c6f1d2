/* pretrain/flops.h — model FLOPs per image of SAM's image encoder (dense or on MAE's visible tokens) and of the MAE
 * decoder, counted analytically from their configurations (docs/PERFORMANCE.md §FLOP counting): a GEMM is 2·M·N·K,
 * attention 4·nq·nk·hd per head and group, the decomposed relative positions 2·nq·(h + w)·hd per head. Model FLOPs
 * are what the model needs, not what a kernel executes (padding, recomputation), so that implementations compare on
 * one scale. The benchmarks turn them into MFU. */
#ifndef MS_FLOPS_H
#define MS_FLOPS_H

#include "pretrain/mae_decoder.h"
#include "pretrain/sam_encoder.h"

/* Forward FLOPs per image, split by whether a backward also computes weight gradients for them. */
typedef struct ms_flops {
    double gemm; /* products with weights (linear layers, convolutions) */
    double attn; /* products of activations (q·kᵀ, P·v, rel-pos) */
} ms_flops;

/* SAM's image encoder at input side S: mask_ratio 0 runs dense (windowed blocks on the padded slots, SAM's way) and
 * adds the neck when neck = 1; mask_ratio > 0 counts the encoder on the visible tokens of window-stratified masking
 * (docs/MAE.md §Encoder on the visible tokens: per window (1 − m) of its real tokens as queries, (1 − m) of its slots
 * as keys; global blocks over all visible tokens), without the neck. */
ms_flops ms_flops_sam_encoder(const ms_sam_enc_config *c, int S, double mask_ratio, int neck);
/* The MAE decoder of config d (its grid and width set) after an encoder of visible share 1 − mask_ratio. */
ms_flops ms_flops_mae_decoder(const ms_mae_dec_config *d, double mask_ratio);
/* One training step from forward FLOPs: the backward is 2× the forward for trained weights (dX and dW) and for
 * attention, 1× for frozen weights (dX only). */
double ms_flops_step(ms_flops f, int weights_trained);
/* a + b */
ms_flops ms_flops_add(ms_flops a, ms_flops b);

#endif
