/* kernels/attention.h — scaled-dot-product attention over groups of tokens given by index lists, with SAM's
 * decomposed relative positions as an option. One op serves windowed, global, sparse (MAE visible tokens) and
 * cross attention (the mask decoder's token→image and image→token attentions, different query/key counts).
 *
 * Per group g, head h (head h uses columns [h·hd, (h+1)·hd) of q, k, v and out):
 *   S[i,j] = scale·(q_i·k_j) + rel(i,j),   P = softmax_j(S),   out_i = Σ_j P[i,j]·v_j
 *   rel(i,j) = q_i·rel_h[q_row(i) − k_row(j) + (len_h−1)/2] + q_i·rel_w[q_col(i) − k_col(j) + (len_w−1)/2]
 *   (q unscaled; tables (len, hd) shared by all heads; docs/MODEL.md §Image encoder). The caller resizes the tables to
 *   2·S−1 first (ms_rel_pos_resize_forward); every index must fall inside its table.
 * Token sets: group g's queries are rows q_idx[q_off[g] .. q_off[g+1]) of q (and of out); its keys/values rows
 *   k_idx[k_off[g] .. k_off[g+1]) of k and v. q_idx == NULL: rows q_off[g] .. q_off[g+1]−1 themselves.
 *   q_off == NULL: uniform groups of nq consecutive positions (g·nq ..). The same for keys. A query row belongs
 *   to at most one group; key rows may be shared between groups (the backward stays race-free).
 *   q_row/q_col are indexed by q row id, k_row/k_col by k row id (each token's true row and column).
 * Saved for backward: lse (q rows, n_heads) = log Σ_j exp(S[i,j]), indexed [row·n_heads + h]; the backward
 *   recomputes P from it (flash-style), so no N×N matrix is ever stored.
 * Backward accumulates dq, dk, dv (strides ldq, ldk, ldv: they may point into one dqkv buffer) and drel_h,
 *   drel_w (len, hd); any may be NULL. out/dout use ldo. Deterministic for a given thread count.
 * Precision: with dev->precision == MS_PREC_BF16 the op reads q, k, v (and dout) as a bf16 tensor-core kernel
 *   would: with relative positions, q and k are first folded into q', k' (kernels/attention_fold.h, fp32), then
 *   q', k', v, dout are rounded to bf16 (round to nearest even) and the fp32 math runs with head_dim_qk = dqk;
 *   the backward takes dq', dk' back through the fold in fp32. Without relative positions q, k, v, dout are
 *   rounded as they are. out, lse and every gradient stay fp32. The CPU backend computes exactly this
 *   (kernels/cpu/attention.c); it is the reference the CUDA bf16 kernels are compared against.
 * Tested by the attention rows of tests/kernels/op_cases.c (test_ops_b: CPU vs reference and finite differences, plus
 *   PyTorch values in tests/kernels/golden/sam_attention.txt; test_ops_cuda: CUDA, both kernel variants, vs CPU);
 *   head_dim_qk, the fold and the bf16 emulation by tests/kernels/test_attention_fold.c.
 */
#ifndef MS_ATTENTION_H
#define MS_ATTENTION_H

#include "base/dispatch.h"

typedef struct ms_attention_desc {
    int64_t n_groups;
    int n_heads;
    int head_dim;
    int head_dim_qk;                /* width of q and k per head when it differs from v's (folded relative
                                       positions, kernels/attention_fold.h); 0: head_dim. Then q and k of head h
                                       are columns [h·head_dim_qk, (h+1)·head_dim_qk) and rel_h/rel_w must be NULL */
    float scale;
    const int32_t *q_off, *q_idx, *k_off, *k_idx;
    int64_t nq, nk;                 /* group sizes when q_off / k_off are NULL */
    int64_t ldq, ldk, ldv, ldo;     /* row strides in floats */
    const float *rel_h, *rel_w;     /* NULL: no relative positions */
    int64_t len_h, len_w;
    const int32_t *q_row, *q_col, *k_row, *k_col;
} ms_attention_desc;

MS_DECLARE_OP(ms_attention_forward, float *out, float *lse, const float *q, const float *k, const float *v,
              const ms_attention_desc *d)
MS_DECLARE_OP(ms_attention_backward, float *dq, float *dk, float *dv, float *drel_h, float *drel_w,
              const float *dout, const float *out, const float *lse, const float *q, const float *k,
              const float *v, const ms_attention_desc *d)

static inline ms_status ms_attention_forward(ms_device *dev, float *out, float *lse, const float *q, const float *k,
                                             const float *v, const ms_attention_desc *d)
{ return MS_DISPATCH(dev, ms_attention_forward, out, lse, q, k, v, d); }
static inline ms_status ms_attention_backward(ms_device *dev, float *dq, float *dk, float *dv, float *drel_h,
                                              float *drel_w, const float *dout, const float *out, const float *lse,
                                              const float *q, const float *k, const float *v,
                                              const ms_attention_desc *d)
{ return MS_DISPATCH(dev, ms_attention_backward, dq, dk, dv, drel_h, drel_w, dout, out, lse, q, k, v, d); }

#endif
