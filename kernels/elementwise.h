/* kernels/elementwise.h — residual add, broadcast add (position embedding over the batch, bias over rows),
 * scaling, batched transpose (NCHW ↔ NHWC), row gather, and the sum reduction. y may alias an input in
 * forward. Backward accumulates.
 *   add:        y = a + b                                  (n)
 *   add_bcast:  y[o,i] = x[o,i] + p[i]                     (outer, n); dp += Σ_o dy
 *   scale:      y = alpha·x                                (n)
 *   transpose:  y[a,c,r] = x[a,r,c]                        x (A,R,C) → y (A,C,R)
 *   gather_rows: y[i,:] = x[idx[i],:] (idx < 0 → zeros)    x (*,D), idx (n_idx); backward scatter-adds into dx
 *   reduce_sum: y[a,c] = Σ_r x[a,r,c]                      x (A,R,C) → y (A,C)
 * Tested by rows "add", "add_bcast", "scale", "transpose", "gather_rows", "reduce_sum" of tests/kernels/op_cases.c
 *   (test_ops_a: CPU vs reference, in-place forwards; test_ops_cuda: CUDA vs CPU).
 */
#ifndef MS_ELEMENTWISE_H
#define MS_ELEMENTWISE_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_add_forward, float *y, const float *a, const float *b, int64_t n)
MS_DECLARE_OP(ms_add_backward, float *da, float *db, const float *dy, int64_t n)
MS_DECLARE_OP(ms_add_bcast_forward, float *y, const float *x, const float *p, int64_t outer, int64_t n)
MS_DECLARE_OP(ms_add_bcast_backward, float *dx, float *dp, const float *dy, int64_t outer, int64_t n)
MS_DECLARE_OP(ms_scale_forward, float *y, const float *x, float alpha, int64_t n)
MS_DECLARE_OP(ms_scale_backward, float *dx, const float *dy, float alpha, int64_t n)
MS_DECLARE_OP(ms_transpose_forward, float *y, const float *x, int64_t A, int64_t R, int64_t C)
MS_DECLARE_OP(ms_transpose_backward, float *dx, const float *dy, int64_t A, int64_t R, int64_t C)
MS_DECLARE_OP(ms_gather_rows_forward, float *y, const float *x, const int32_t *idx, int64_t n_idx, int64_t D)
MS_DECLARE_OP(ms_gather_rows_backward, float *dx, const float *dy, const int32_t *idx, int64_t n_idx, int64_t D,
              int64_t n_rows_x)
MS_DECLARE_OP(ms_reduce_sum_forward, float *y, const float *x, int64_t A, int64_t R, int64_t C)
MS_DECLARE_OP(ms_reduce_sum_backward, float *dx, const float *dy, int64_t A, int64_t R, int64_t C)

static inline ms_status ms_add_forward(ms_device *dev, float *y, const float *a, const float *b, int64_t n)
{ return MS_DISPATCH(dev, ms_add_forward, y, a, b, n); }
static inline ms_status ms_add_backward(ms_device *dev, float *da, float *db, const float *dy, int64_t n)
{ return MS_DISPATCH(dev, ms_add_backward, da, db, dy, n); }
static inline ms_status ms_add_bcast_forward(ms_device *dev, float *y, const float *x, const float *p, int64_t outer,
                                             int64_t n)
{ return MS_DISPATCH(dev, ms_add_bcast_forward, y, x, p, outer, n); }
static inline ms_status ms_add_bcast_backward(ms_device *dev, float *dx, float *dp, const float *dy, int64_t outer,
                                              int64_t n)
{ return MS_DISPATCH(dev, ms_add_bcast_backward, dx, dp, dy, outer, n); }
static inline ms_status ms_scale_forward(ms_device *dev, float *y, const float *x, float alpha, int64_t n)
{ return MS_DISPATCH(dev, ms_scale_forward, y, x, alpha, n); }
static inline ms_status ms_scale_backward(ms_device *dev, float *dx, const float *dy, float alpha, int64_t n)
{ return MS_DISPATCH(dev, ms_scale_backward, dx, dy, alpha, n); }
static inline ms_status ms_transpose_forward(ms_device *dev, float *y, const float *x, int64_t A, int64_t R, int64_t C)
{ return MS_DISPATCH(dev, ms_transpose_forward, y, x, A, R, C); }
static inline ms_status ms_transpose_backward(ms_device *dev, float *dx, const float *dy, int64_t A, int64_t R,
                                              int64_t C)
{ return MS_DISPATCH(dev, ms_transpose_backward, dx, dy, A, R, C); }
static inline ms_status ms_gather_rows_forward(ms_device *dev, float *y, const float *x, const int32_t *idx,
                                               int64_t n_idx, int64_t D)
{ return MS_DISPATCH(dev, ms_gather_rows_forward, y, x, idx, n_idx, D); }
static inline ms_status ms_gather_rows_backward(ms_device *dev, float *dx, const float *dy, const int32_t *idx,
                                                int64_t n_idx, int64_t D, int64_t n_rows_x)
{ return MS_DISPATCH(dev, ms_gather_rows_backward, dx, dy, idx, n_idx, D, n_rows_x); }
static inline ms_status ms_reduce_sum_forward(ms_device *dev, float *y, const float *x, int64_t A, int64_t R, int64_t C)
{ return MS_DISPATCH(dev, ms_reduce_sum_forward, y, x, A, R, C); }
static inline ms_status ms_reduce_sum_backward(ms_device *dev, float *dx, const float *dy, int64_t A, int64_t R,
                                               int64_t C)
{ return MS_DISPATCH(dev, ms_reduce_sum_backward, dx, dy, A, R, C); }

#endif
