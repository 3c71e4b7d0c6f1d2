/* kernels/layernorm.h — LayerNorm over the last dim, and LayerNorm2d over the channels of NCHW (SAM's neck,
 * mask downscaling and output upscaling). Biased variance; eps is a parameter (SAM: 1e-6 in the encoder and
 * LN2d, 1e-5 in the mask decoder's transformer).
 *   layernorm:   x,y (N,D); w,b (D); mean,rstd (N) saved for backward.
 *   layernorm2d: x,y (B,C,HW); w,b (C); mean,rstd (B,HW).
 * Backward accumulates dx, dw, db (NULL = skip). ref: torch.nn.LayerNorm, segment_anything/modeling/common.py
 *   add_layernorm (forward only): s = x + r, y = LayerNorm(s) in one pass over the rows — the residual add of a
 *     transformer block fused with the LayerNorm that reads its result. s is written too (the next residual add
 *     needs it) and may alias x or r (in place); y aliases nothing. mean/rstd are those of s, as layernorm saves
 *     them. The CPU gives s and y bit-identical to ms_add_forward(s, x, r) + ms_layernorm_forward(y, .., s, ..).
 *     No backward op of its own: the backward is ms_layernorm_backward on the saved s, whose dx (+=) goes into
 *     the buffer that already holds d(s) from s's other readers (the next residual); that d(s) is then d(x) and
 *     d(r) alike (an add passes its gradient through), so the caller uses it for both without another op.
 * Tested by rows "layernorm", "layernorm2d", "add_layernorm" of tests/kernels/op_cases.c (test_ops_a: CPU vs
 *   reference; test_ops_cuda: CUDA vs CPU), and test_ops_a's test_add_layernorm_bits (bit-identical to add then
 *   layernorm, in place too).
 */
#ifndef MS_LAYERNORM_H
#define MS_LAYERNORM_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_layernorm_forward, float *y, float *mean, float *rstd, const float *x, const float *w,
              const float *b, int64_t N, int64_t D, float eps)
MS_DECLARE_OP(ms_layernorm_backward, float *dx, float *dw, float *db, const float *dy, const float *x,
              const float *w, const float *mean, const float *rstd, int64_t N, int64_t D)
MS_DECLARE_OP(ms_add_layernorm_forward, float *s, float *y, float *mean, float *rstd, const float *x, const float *r,
              const float *w, const float *b, int64_t N, int64_t D, float eps)
MS_DECLARE_OP(ms_layernorm2d_forward, float *y, float *mean, float *rstd, const float *x, const float *w,
              const float *b, int64_t B, int64_t C, int64_t HW, float eps)
MS_DECLARE_OP(ms_layernorm2d_backward, float *dx, float *dw, float *db, const float *dy, const float *x,
              const float *w, const float *mean, const float *rstd, int64_t B, int64_t C, int64_t HW)

static inline ms_status ms_layernorm_forward(ms_device *dev, float *y, float *mean, float *rstd, const float *x,
                                             const float *w, const float *b, int64_t N, int64_t D, float eps)
{ return MS_DISPATCH(dev, ms_layernorm_forward, y, mean, rstd, x, w, b, N, D, eps); }
static inline ms_status ms_layernorm_backward(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                              const float *x, const float *w, const float *mean,
                                              const float *rstd, int64_t N, int64_t D)
{ return MS_DISPATCH(dev, ms_layernorm_backward, dx, dw, db, dy, x, w, mean, rstd, N, D); }
static inline ms_status ms_add_layernorm_forward(ms_device *dev, float *s, float *y, float *mean, float *rstd,
                                                 const float *x, const float *r, const float *w, const float *b,
                                                 int64_t N, int64_t D, float eps)
{ return MS_DISPATCH(dev, ms_add_layernorm_forward, s, y, mean, rstd, x, r, w, b, N, D, eps); }
static inline ms_status ms_layernorm2d_forward(ms_device *dev, float *y, float *mean, float *rstd, const float *x,
                                               const float *w, const float *b, int64_t B, int64_t C, int64_t HW,
                                               float eps)
{ return MS_DISPATCH(dev, ms_layernorm2d_forward, y, mean, rstd, x, w, b, B, C, HW, eps); }
static inline ms_status ms_layernorm2d_backward(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                                const float *x, const float *w, const float *mean,
                                                const float *rstd, int64_t B, int64_t C, int64_t HW)
{ return MS_DISPATCH(dev, ms_layernorm2d_backward, dx, dw, db, dy, x, w, mean, rstd, B, C, HW); }

#endif
