/* kernels/rel_pos.h — linear resize of a relative-position table (L_in, C) → (L_out, C), as SAM's get_rel_pos
 * (F.interpolate mode="linear", align_corners=False): s = (d+0.5)·L_in/L_out − 0.5, clamped at 0; i0 = floor(s),
 * i1 = min(i0+1, L_in−1), λ = s − i0. Backward scatters with the same weights (accumulates into din).
 * Tested by rows "rel_pos_resize" of tests/kernels/op_cases.c (test_ops_b: CPU vs reference, plus PyTorch values in
 *   tests/kernels/golden/resize.txt; test_ops_cuda: CUDA vs CPU).
 */
#ifndef MS_REL_POS_H
#define MS_REL_POS_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_rel_pos_resize_forward, float *out, const float *in, int64_t L_in, int64_t L_out, int64_t C)
MS_DECLARE_OP(ms_rel_pos_resize_backward, float *din, const float *dout, int64_t L_in, int64_t L_out, int64_t C)

static inline ms_status ms_rel_pos_resize_forward(ms_device *dev, float *out, const float *in, int64_t L_in,
                                                  int64_t L_out, int64_t C)
{ return MS_DISPATCH(dev, ms_rel_pos_resize_forward, out, in, L_in, L_out, C); }
static inline ms_status ms_rel_pos_resize_backward(ms_device *dev, float *din, const float *dout, int64_t L_in,
                                                   int64_t L_out, int64_t C)
{ return MS_DISPATCH(dev, ms_rel_pos_resize_backward, din, dout, L_in, L_out, C); }

#endif
