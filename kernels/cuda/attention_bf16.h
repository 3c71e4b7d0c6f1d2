/* kernels/cuda/attention_bf16.h — what the fp32 attention kernels (attention.cu) and the bf16 tensor-core ones
 * (attention_bf16.cu) share: the descriptor check, the host copy of the group offsets, the group indexing on the
 * device, and the bf16 entry points that attention.cu's ms_attention_{forward,backward}_cuda call when
 * dev->precision is MS_PREC_BF16.
 * Internal to kernels/cuda (C++ only).
 */
#ifndef MS_CUDA_ATTENTION_BF16_H
#define MS_CUDA_ATTENTION_BF16_H

#include "cuda_common.h"

/* Group g's queries are slots q_base .. q_base + q_cnt of the query index list (rows q_idx[slot], or the slot
 * itself without a list); the same for keys (kernels/attention.h). A is any argument struct with these fields. */
template <class A> __device__ static inline int64_t q_base(const A &a, int64_t g)
{
    return a.q_off ? a.q_off[g] : g * a.nq;
}
template <class A> __device__ static inline int64_t q_cnt(const A &a, int64_t g)
{
    return a.q_off ? (int64_t)a.q_off[g + 1] - a.q_off[g] : a.nq;
}
template <class A> __device__ static inline int64_t k_base(const A &a, int64_t g)
{
    return a.k_off ? a.k_off[g] : g * a.nk;
}
template <class A> __device__ static inline int64_t k_cnt(const A &a, int64_t g)
{
    return a.k_off ? (int64_t)a.k_off[g + 1] - a.k_off[g] : a.nk;
}
template <class A> __device__ static inline int64_t q_rowid(const A &a, int64_t s) { return a.q_idx ? a.q_idx[s] : s; }
template <class A> __device__ static inline int64_t k_rowid(const A &a, int64_t s) { return a.k_idx ? a.k_idx[s] : s; }

/* Host copies of q_off / k_off (NULL when the descriptor has none) and the largest group sizes. */
typedef struct ms_attn_plan {
    int32_t *q_off, *k_off;
    int64_t max_nq, max_nk;
} ms_attn_plan;

ms_status ms_attn_plan_make(ms_device *dev, const ms_attention_desc *d, ms_attn_plan *p, const char *what);
void ms_attn_plan_free(ms_attn_plan *p);
/* The checks every attention entry point makes (shapes, strides, rel-pos tables). */
ms_status ms_attn_check_desc(const ms_attention_desc *d, const char *what);

/* The bf16 tensor-core attention (attention_bf16.cu). *done = 0 (and MS_OK) when the shape is outside what the
 * kernels cover (folded width over 256, or too little shared memory): the caller then runs the fp32 kernels. */
ms_status ms_attn_bf16_forward(ms_device *dev, float *out, float *lse, const float *q, const float *k,
                               const float *v, const ms_attention_desc *d, int *done);
ms_status ms_attn_bf16_backward(ms_device *dev, float *dq, float *dk, float *dv, float *drel_h, float *drel_w,
                                const float *dout, const float *out, const float *lse, const float *q,
                                const float *k, const float *v, const ms_attention_desc *d, int *done);

#endif
