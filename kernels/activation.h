/* kernels/activation.h — elementwise activations. GELU is the exact erf form 0.5·x·(1+erf(x/√2)) (SAM's
 * nn.GELU); ReLU's gradient at 0 is 0 (torch). y may alias x in forward. Backward accumulates into dx.
 * Tested by rows "gelu", "relu" of tests/kernels/op_cases.c (test_ops_a: CPU vs reference; test_ops_cuda: CUDA vs CPU).
 */
#ifndef MS_ACTIVATION_H
#define MS_ACTIVATION_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_gelu_forward, float *y, const float *x, int64_t n)
MS_DECLARE_OP(ms_gelu_backward, float *dx, const float *dy, const float *x, int64_t n)
MS_DECLARE_OP(ms_relu_forward, float *y, const float *x, int64_t n)
MS_DECLARE_OP(ms_relu_backward, float *dx, const float *dy, const float *x, int64_t n)

static inline ms_status ms_gelu_forward(ms_device *dev, float *y, const float *x, int64_t n)
{ return MS_DISPATCH(dev, ms_gelu_forward, y, x, n); }
static inline ms_status ms_gelu_backward(ms_device *dev, float *dx, const float *dy, const float *x, int64_t n)
{ return MS_DISPATCH(dev, ms_gelu_backward, dx, dy, x, n); }
static inline ms_status ms_relu_forward(ms_device *dev, float *y, const float *x, int64_t n)
{ return MS_DISPATCH(dev, ms_relu_forward, y, x, n); }
static inline ms_status ms_relu_backward(ms_device *dev, float *dx, const float *dy, const float *x, int64_t n)
{ return MS_DISPATCH(dev, ms_relu_backward, dx, dy, x, n); }

#endif
