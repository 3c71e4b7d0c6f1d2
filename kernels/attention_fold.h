/* kernels/attention_fold.h — SAM's decomposed relative positions folded into plain attention, so that a standard
 * (tensor-core, flash) attention kernel computes them: the bias becomes extra query and key columns.
 *
 * For group g, head h, query row i and key row j of an ms_attention_desc with rel_h / rel_w (kernels/attention.h):
 *   Lh = (len_h + 1) / 2, Lw = (len_w + 1) / 2   (key-row and key-column slots; Lh − 1 = (len_h − 1) / 2, the
 *   centre of attention.h's table)
 *   q'_i = [ scale·q_i | q_i·rel_h[q_row(i) − r + Lh − 1] for r < Lh | q_i·rel_w[q_col(i) − c + Lw − 1] for c < Lw | 0 ]
 *   k'_j = [ k_j       | onehot(k_row(j)) (Lh)                          | onehot(k_col(j)) (Lw)                        | 0 ]
 * so q'_i·k'_j = scale·q_i·k_j + rel(i,j) = S[i,j] of attention.h, and attention with scale 1 and no relative
 * positions over (q', k', v) gives the same output, lse and probabilities. Widths: dqk = head_dim + Lh + Lw
 * rounded up to a multiple of 16 (tensor-core k-steps; the padding is zero), v keeps head_dim.
 * The caller's promise (on top of attention.h's): every key of a group has 0 <= k_row < Lh and 0 <= k_col < Lw
 *   (true for SAM: rows and columns in [0, S), tables 2·S − 1 long). A q' slot whose table index falls outside
 *   the table is 0: no key of the group can have that row or column (attention.h's own rule), so the fold stays
 *   exact. The CPU backend checks the promise and every row id; the CUDA backend cannot read the (device) index
 *   lists on the host and skips out-of-range rows, columns and slots instead of faulting.
 * Layout: qf (n_q rows, n_heads, dqk) and kf (n_k rows, n_heads, dqk), row ids as in q and k (not compacted); only
 *   rows that belong to a group (q_off/q_idx, k_off/k_idx of the descriptor) are written (forward) or read
 *   (backward): other rows keep whatever they held. The plain descriptor over them: ms_attention_fold_desc.
 * Backward accumulates, through the same rows: dq += scale·dqf[:head_dim] + Σ_r dqf[hd+r]·rel_h[..] + Σ_c ...,
 *   drel_h[q_row(i) − r + Lh − 1] += dqf[hd+r]·q_i (the same for rel_w), dk += dkf[:head_dim] (the one-hot
 *   columns have no gradient), once per key row even where groups share it (dkf already holds the sum over
 *   groups). NULL outputs are skipped (and dqf / dkf may be NULL when no output needs them). Deterministic: a
 *   pure function of the thread count on the CPU, fully on CUDA (no float atomics).
 * ms_attention_fold_plan / _desc read only the descriptor's scalars and pointers' presence, never the index lists,
 *   so they serve both backends (they live in kernels/cpu/attention_fold.c).
 * The CUDA backend takes its temporaries (drel partial tables, key-row owners) from cudaMallocAsync on the
 *   device's stream, never from ms_cuda_scratch: the caller's qf/kf/dqf/dkf may live in that scratch.
 * Used by the bf16 attention paths (CPU emulation in kernels/cpu/attention.c, tensor cores in
 * kernels/cuda/attention_bf16.cu); the equivalence is tested by tests/kernels/test_attention_fold.c.
 */
#ifndef MS_ATTENTION_FOLD_H
#define MS_ATTENTION_FOLD_H

#include "attention.h"

typedef struct ms_attention_fold {
    int64_t n_q, n_k; /* rows of q / qf and of k / kf */
    int n_heads, head_dim;
    int lh, lw;       /* key-row and key-column slots */
    int dqk;          /* folded width per head */
} ms_attention_fold;

/* The fold of descriptor d (which must have rel_h and rel_w, their lengths, the row/column lists, head_dim_qk 0 or
 * head_dim) over n_q query rows and n_k key rows (every row id of d's lists is below them). MS_EINVAL otherwise. */
ms_status ms_attention_fold_plan(const ms_attention_desc *d, int64_t n_q, int64_t n_k, ms_attention_fold *f);
/* The descriptor of the plain attention over (qf, kf, v): d's groups and ldv/ldo, head_dim_qk = dqk,
 * ldq = ldk = n_heads·dqk, scale 1, no relative positions. */
ms_attention_desc ms_attention_fold_desc(const ms_attention_desc *d, const ms_attention_fold *f);

MS_DECLARE_OP(ms_attention_fold_forward, float *qf, float *kf, const float *q, const float *k,
              const ms_attention_desc *d, const ms_attention_fold *f)
MS_DECLARE_OP(ms_attention_fold_backward, float *dq, float *dk, float *drel_h, float *drel_w, const float *dqf,
              const float *dkf, const float *q, const ms_attention_desc *d, const ms_attention_fold *f)

static inline ms_status ms_attention_fold_forward(ms_device *dev, float *qf, float *kf, const float *q, const float *k,
                                                  const ms_attention_desc *d, const ms_attention_fold *f)
{ return MS_DISPATCH(dev, ms_attention_fold_forward, qf, kf, q, k, d, f); }
static inline ms_status ms_attention_fold_backward(ms_device *dev, float *dq, float *dk, float *drel_h,
                                                   float *drel_w, const float *dqf, const float *dkf,
                                                   const float *q, const ms_attention_desc *d,
                                                   const ms_attention_fold *f)
{ return MS_DISPATCH(dev, ms_attention_fold_backward, dq, dk, drel_h, drel_w, dqf, dkf, q, d, f); }

#endif
