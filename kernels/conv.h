/* kernels/conv.h — the convolutions SAM needs, NCHW, PyTorch weight layouts.
 * conv_patch: kernel = stride = k, no padding (patch embedding k=16, mask downscaling k=2); H, W multiples of k.
 *   x (B,Cin,H,W), w (Cout,Cin,k,k), b (Cout) or NULL → y (B,Cout,H/k,W/k), or with nhwc_out the same values
 *   laid out (B,H/k,W/k,Cout) (the token layout the encoder wants, without a transpose).
 * conv2d: stride s, padding pad (SAM's neck: 1x1 pad 0 and 3x3 pad 1, s 1; TinyViT's stem: 3x3 pad 1, s 2), b may
 *   be NULL. x (B,Cin,H,W), w (Cout,Cin,ks,ks) → y (B,Cout,Ho,Wo), Ho = (H+2·pad−ks)/s + 1 (floor, as torch).
 * conv_transpose2x2: kernel 2 stride 2 (output upscaling). x (B,Cin,H,W), w (Cin,Cout,2,2) → y (B,Cout,2H,2W):
 *   y[o,2i+di,2j+dj] = b[o] + Σ_c x[c,i,j]·w[c,o,di,dj].
 * Backward accumulates dx, dw, db; NULL skips.
 * Tested by rows "conv_patch", "conv2d", "conv_transpose2x2" of tests/kernels/op_cases.c (test_ops_b: CPU vs reference;
 *   test_ops_cuda: CUDA vs CPU).
 */
#ifndef MS_CONV_H
#define MS_CONV_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_conv_patch_forward, float *y, const float *x, const float *w, const float *b, int64_t B,
              int64_t Cin, int64_t H, int64_t W, int64_t Cout, int k, int nhwc_out)
MS_DECLARE_OP(ms_conv_patch_backward, float *dx, float *dw, float *db, const float *dy, const float *x,
              const float *w, int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int k, int nhwc_out)
MS_DECLARE_OP(ms_conv2d_forward, float *y, const float *x, const float *w, const float *b, int64_t B, int64_t Cin,
              int64_t H, int64_t W, int64_t Cout, int ks, int pad, int stride)
MS_DECLARE_OP(ms_conv2d_backward, float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
              int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int ks, int pad, int stride)
MS_DECLARE_OP(ms_conv_transpose2x2_forward, float *y, const float *x, const float *w, const float *b, int64_t B,
              int64_t Cin, int64_t H, int64_t W, int64_t Cout)
MS_DECLARE_OP(ms_conv_transpose2x2_backward, float *dx, float *dw, float *db, const float *dy, const float *x,
              const float *w, int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout)

static inline ms_status ms_conv_patch_forward(ms_device *dev, float *y, const float *x, const float *w,
                                              const float *b, int64_t B, int64_t Cin, int64_t H, int64_t W,
                                              int64_t Cout, int k, int nhwc_out)
{ return MS_DISPATCH(dev, ms_conv_patch_forward, y, x, w, b, B, Cin, H, W, Cout, k, nhwc_out); }
static inline ms_status ms_conv_patch_backward(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                               const float *x, const float *w, int64_t B, int64_t Cin, int64_t H,
                                               int64_t W, int64_t Cout, int k, int nhwc_out)
{ return MS_DISPATCH(dev, ms_conv_patch_backward, dx, dw, db, dy, x, w, B, Cin, H, W, Cout, k, nhwc_out); }
static inline ms_status ms_conv2d_forward(ms_device *dev, float *y, const float *x, const float *w, const float *b,
                                          int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int ks, int pad,
                                          int stride)
{ return MS_DISPATCH(dev, ms_conv2d_forward, y, x, w, b, B, Cin, H, W, Cout, ks, pad, stride); }
static inline ms_status ms_conv2d_backward(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                           const float *x, const float *w, int64_t B, int64_t Cin, int64_t H,
                                           int64_t W, int64_t Cout, int ks, int pad, int stride)
{ return MS_DISPATCH(dev, ms_conv2d_backward, dx, dw, db, dy, x, w, B, Cin, H, W, Cout, ks, pad, stride); }
static inline ms_status ms_conv_transpose2x2_forward(ms_device *dev, float *y, const float *x, const float *w,
                                                     const float *b, int64_t B, int64_t Cin, int64_t H, int64_t W,
                                                     int64_t Cout)
{ return MS_DISPATCH(dev, ms_conv_transpose2x2_forward, y, x, w, b, B, Cin, H, W, Cout); }
static inline ms_status ms_conv_transpose2x2_backward(ms_device *dev, float *dx, float *dw, float *db,
                                                      const float *dy, const float *x, const float *w, int64_t B,
                                                      int64_t Cin, int64_t H, int64_t W, int64_t Cout)
{ return MS_DISPATCH(dev, ms_conv_transpose2x2_backward, dx, dw, db, dy, x, w, B, Cin, H, W, Cout); }

#endif
