/* kernels/resize.h — image resizing on (NC, H, W) planes, align_corners=False, no antialiasing (torch's
 * F.interpolate). Bilinear: per axis s = (d+0.5)·in/out − 0.5, s = max(s,0), i0 = floor(s),
 * i1 = min(i0+1,in−1), λ = s−i0 (SAM's post-processing and mask resizing). Bicubic: torch's cubic convolution
 * with A = −0.75 and clamped border indices (pretrain resizes the absolute position embedding with it).
 * Backward scatters with the same weights, accumulating into dx.
 * Tested by rows "bilinear", "bicubic" of tests/kernels/op_cases.c (test_ops_b: CPU vs reference, plus PyTorch values
 *   in tests/kernels/golden/resize.txt; test_ops_cuda: CUDA vs CPU).
 */
#ifndef MS_RESIZE_H
#define MS_RESIZE_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_resize_bilinear_forward, float *y, const float *x, int64_t NC, int64_t Hin, int64_t Win,
              int64_t Hout, int64_t Wout)
MS_DECLARE_OP(ms_resize_bilinear_backward, float *dx, const float *dy, int64_t NC, int64_t Hin, int64_t Win,
              int64_t Hout, int64_t Wout)
MS_DECLARE_OP(ms_resize_bicubic_forward, float *y, const float *x, int64_t NC, int64_t Hin, int64_t Win,
              int64_t Hout, int64_t Wout)
MS_DECLARE_OP(ms_resize_bicubic_backward, float *dx, const float *dy, int64_t NC, int64_t Hin, int64_t Win,
              int64_t Hout, int64_t Wout)

static inline ms_status ms_resize_bilinear_forward(ms_device *dev, float *y, const float *x, int64_t NC, int64_t Hin,
                                                   int64_t Win, int64_t Hout, int64_t Wout)
{ return MS_DISPATCH(dev, ms_resize_bilinear_forward, y, x, NC, Hin, Win, Hout, Wout); }
static inline ms_status ms_resize_bilinear_backward(ms_device *dev, float *dx, const float *dy, int64_t NC,
                                                    int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout)
{ return MS_DISPATCH(dev, ms_resize_bilinear_backward, dx, dy, NC, Hin, Win, Hout, Wout); }
static inline ms_status ms_resize_bicubic_forward(ms_device *dev, float *y, const float *x, int64_t NC, int64_t Hin,
                                                  int64_t Win, int64_t Hout, int64_t Wout)
{ return MS_DISPATCH(dev, ms_resize_bicubic_forward, y, x, NC, Hin, Win, Hout, Wout); }
static inline ms_status ms_resize_bicubic_backward(ms_device *dev, float *dx, const float *dy, int64_t NC,
                                                   int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout)
{ return MS_DISPATCH(dev, ms_resize_bicubic_backward, dx, dy, NC, Hin, Win, Hout, Wout); }

#endif
