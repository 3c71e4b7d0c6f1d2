/* finetune/sam_prompt.h — SAM's prompt encoder (PromptEncoder, docs/MODEL.md §Prompt encoder), forward and backward.
 *
 *   points (bp,N,2) + labels (bp,N), box (bp,4)  → sparse embeddings (bp, ns, 256)   [host, a few tokens]
 *   mask (bp,1,4h,4w) low-res logits             → dense embeddings (bp, 256, h·w)   [device, via the op table]
 *   no mask                                      → dense = no_mask_embed broadcast (left to the decoder: it adds
 *                                                   the (256) vector to every key, so nothing of size h·w is made)
 *
 * The random-Fourier positional encoding uses the checkpoint's gaussian matrix G (2,128), a buffer: it is loaded,
 * never regenerated, and never trained. PE(x,y) = [sin(2π·c'G), cos(2π·c'G)], c' = 2·(x/img, y/img) − 1.
 * Points get +0.5 (pixel centres); with points and no box a pad point (0,0) with label −1 is appended, whose PE is
 * zeroed and replaced by not_a_point_embed. Labels 0/1 add point_embeddings[0]/[1]; box corners add [2]/[3].
 *
 * Invariants: parameters live in the caller's ms_params under prefix + SAM key ("prompt_encoder.point_embeddings.0.
 * weight"); the sparse path runs on the host (a handful of 256-vectors, so the small learned embeddings are copied
 * down and their gradients added back), the mask path on the device. Backward accumulates (+=) into the
 * gradients of trainable tensors only; frozen ones (NULL gradient) cost nothing.
 */
#ifndef MS_SAM_PROMPT_H
#define MS_SAM_PROMPT_H

#include <stdint.h>

#include "base/device.h"
#include "base/status.h"
#include "base/tensor.h"
#include "pretrain/params.h"

/* dst (device, n) += src (host, n): small parameter gradients computed on the host. */
ms_status ms_sam_acc_from_host(ms_device *dev, float *dst, const float *src, int64_t n);

typedef struct ms_sam_prompt {
    int dim;            /* 256 */
    int emb_h, emb_w;   /* image-embedding grid (64×64 for a 1024 input) */
    int img_size;       /* model input side: point coordinates are divided by it */
    int mask_in;        /* 16 (mask_in_chans) */
    ms_params *ps;      /* not owned */
    int gauss, pt[4], not_a_point, no_mask; /* parameter indices */
    int md_w[5], md_b[5];                   /* mask_downscaling.{0,1,3,4,6} */
} ms_sam_prompt;

/* One batch of prompts. Coordinates are in the model's input frame (after ResizeLongestSide, before padding). */
/* Point labels that make a point a box corner (point_embeddings[2] / [3]): several boxes per image are box 0 in
 * `boxes` and the others as corner pairs, the token set of finetune-SAM's multi-box prompt encoder. (SAM v1 itself
 * gives labels 2 and 3 no embedding, so those keep their meaning.) */
#define MS_SAM_LABEL_BOX_TL 1002
#define MS_SAM_LABEL_BOX_BR 1003

typedef struct ms_sam_prompts {
    int bp;                /* prompt batch (>= 1) */
    int n_points;          /* points per prompt; 0 = none */
    const float *points;   /* host (bp, n_points, 2) as (x, y) */
    const int32_t *labels; /* host (bp, n_points): 1 positive, 0 negative, −1 padding, MS_SAM_LABEL_BOX_TL/_BR a box corner (extra boxes), other = bare PE (SAM v1) */
    const float *boxes;    /* host (bp, 4) as x0,y0,x1,y1, or NULL */
    const float *masks;    /* device (bp, 1, 4h, 4w) low-res logits, or NULL */
} ms_sam_prompts;

/* What one forward produced and keeps for backward. */
typedef struct ms_sam_prompt_state {
    const ms_sam_prompt *pe; /* the encoder that produced it (the decoder takes the dense PE from it) */
    int bp, ns;
    float *sparse;          /* host (bp, ns, dim) */
    int8_t *kind;           /* host (bp·ns): 0..3 point_embeddings[k], 4 not_a_point, −1 none */
    float *dense;           /* device (bp, dim, h·w) from the mask path; NULL when no mask was given */
    const float *dense_vec; /* device (dim): no_mask_embed, when dense == NULL */
    float *dense_vec_grad;  /* its gradient or NULL (frozen) */
    /* mask_downscaling activations (device) */
    const float *m_in;
    float *c0, *n0, *mu0, *rs0, *g0, *c1, *n1, *mu1, *rs1, *g1;
    float *d_a, *d_b;       /* backward scratch */
    ms_arena arena;
    int sparse_cap;
} ms_sam_prompt_state;

/* Registers the 17 tensors under prefix ("prompt_encoder." for SAM). The gaussian matrix is marked frozen. */
ms_status ms_sam_prompt_init(ms_sam_prompt *pe, ms_params *ps, const char *prefix, int emb_h, int emb_w,
                             int img_size);
/* Marks the gaussian buffer frozen: call after ms_params_set_trainable and before ms_params_alloc_grads (its
 * gradient is never computed anyway; this keeps it out of the gradient memory and the optimizer). */
void ms_sam_prompt_freeze_buffers(ms_sam_prompt *pe);

ms_status ms_sam_prompt_forward(ms_device *dev, const ms_sam_prompt *pe, const ms_sam_prompts *pr,
                                ms_sam_prompt_state *st);
/* d_sparse: host (bp, ns, dim) or NULL; d_dense: device (bp, dim, h·w) or NULL (the no-mask gradient is added by
 * the decoder straight into dense_vec_grad). */
ms_status ms_sam_prompt_backward(ms_device *dev, const ms_sam_prompt *pe, ms_sam_prompt_state *st,
                                 const float *d_sparse, const float *d_dense);
void ms_sam_prompt_state_free(ms_device *dev, ms_sam_prompt_state *st);

/* Dense positional encoding get_dense_pe() in token layout: out (h·w, dim) host, row y·w + x. */
ms_status ms_sam_dense_pe(ms_device *dev, const ms_sam_prompt *pe, float *out);
/* PE of n points already normalised to [0,1]² (x, y): out (n, dim) host. G is the host copy of the matrix. */
void ms_sam_pe_encode(const float *G, int dim, const float *xy01, int n, float *out);

#endif
