/* kernels/dwconv.h — depthwise 2-D convolution (groups = channels), NCHW, PyTorch weight layout: TinyViT's MBConv
 * and patch-merging 3x3 convs (stride 1 or 2) and its blocks' local 3x3 conv.
 *   x (B,C,H,W), w (C,1,ks,ks), b (C) or NULL → y (B,C,Ho,Wo), Ho = (H+2·pad−ks)/stride + 1 (floor, as torch):
 *   y[b,c,oy,ox] = b[c] + Σ_{ky,kx} w[c,ky,kx]·x[b, c, oy·stride+ky−pad, ox·stride+kx−pad] (zero outside).
 * Backward accumulates dx, dw, db; NULL skips. ref: torch.nn.Conv2d(C, C, ks, stride, pad, groups=C).
 * Tested by the "dwconv" rows of tests/kernels/op_cases.c (test_ops_b: CPU vs reference; test_ops_cuda: CUDA vs
 *   CPU).
 */
#ifndef MS_DWCONV_H
#define MS_DWCONV_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_dwconv2d_forward, float *y, const float *x, const float *w, const float *b, int64_t B, int64_t C,
              int64_t H, int64_t W, int ks, int pad, int stride)
MS_DECLARE_OP(ms_dwconv2d_backward, float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
              int64_t B, int64_t C, int64_t H, int64_t W, int ks, int pad, int stride)

static inline ms_status ms_dwconv2d_forward(ms_device *dev, float *y, const float *x, const float *w, const float *b,
                                            int64_t B, int64_t C, int64_t H, int64_t W, int ks, int pad, int stride)
{ return MS_DISPATCH(dev, ms_dwconv2d_forward, y, x, w, b, B, C, H, W, ks, pad, stride); }
static inline ms_status ms_dwconv2d_backward(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                             const float *x, const float *w, int64_t B, int64_t C, int64_t H,
                                             int64_t W, int ks, int pad, int stride)
{ return MS_DISPATCH(dev, ms_dwconv2d_backward, dx, dw, db, dy, x, w, B, C, H, W, ks, pad, stride); }

/* Output size along one axis (callers size their buffers with it). */
static inline int64_t ms_conv_out_size(int64_t n, int ks, int pad, int stride) { return (n + 2 * pad - ks) / stride + 1; }

#endif
