/* kernels/window.h — SAM's window partition / unpartition with zero padding (docs/MODEL.md §Image encoder).
 * partition: x (B,H,W,C) → out (B·nh·nw, ws, ws, C), nh = ceil(H/ws), nw = ceil(W/ws); window index
 *   b·nh·nw + wy·nw + wx, element (r,c) = x[b, wy·ws+r, wx·ws+c] or 0 beyond H/W.
 * unpartition: the inverse, cropping the pad. Backward of each accumulates into dx (pad slots drop out).
 * Tested by rows "window_partition", "window_unpartition" of tests/kernels/op_cases.c (test_ops_b: CPU vs reference;
 *   test_ops_cuda: CUDA vs CPU).
 */
#ifndef MS_WINDOW_H
#define MS_WINDOW_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_window_partition_forward, float *out, const float *x, int64_t B, int64_t H, int64_t W, int64_t C,
              int ws)
MS_DECLARE_OP(ms_window_partition_backward, float *dx, const float *dout, int64_t B, int64_t H, int64_t W,
              int64_t C, int ws)
MS_DECLARE_OP(ms_window_unpartition_forward, float *out, const float *x, int64_t B, int64_t H, int64_t W,
              int64_t C, int ws)
MS_DECLARE_OP(ms_window_unpartition_backward, float *dx, const float *dout, int64_t B, int64_t H, int64_t W,
              int64_t C, int ws)

static inline ms_status ms_window_partition_forward(ms_device *dev, float *out, const float *x, int64_t B,
                                                    int64_t H, int64_t W, int64_t C, int ws)
{ return MS_DISPATCH(dev, ms_window_partition_forward, out, x, B, H, W, C, ws); }
static inline ms_status ms_window_partition_backward(ms_device *dev, float *dx, const float *dout, int64_t B,
                                                     int64_t H, int64_t W, int64_t C, int ws)
{ return MS_DISPATCH(dev, ms_window_partition_backward, dx, dout, B, H, W, C, ws); }
static inline ms_status ms_window_unpartition_forward(ms_device *dev, float *out, const float *x, int64_t B,
                                                      int64_t H, int64_t W, int64_t C, int ws)
{ return MS_DISPATCH(dev, ms_window_unpartition_forward, out, x, B, H, W, C, ws); }
static inline ms_status ms_window_unpartition_backward(ms_device *dev, float *dx, const float *dout, int64_t B,
                                                       int64_t H, int64_t W, int64_t C, int ws)
{ return MS_DISPATCH(dev, ms_window_unpartition_backward, dx, dout, B, H, W, C, ws); }

#endif
