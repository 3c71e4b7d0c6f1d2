/* kernels/softmax.h — softmax over the last dim of (rows, cols). Backward uses the saved output y:
 * dx += y ⊙ (dy − rowsum(dy ⊙ y)).
 * Tested by rows "softmax" of tests/kernels/op_cases.c (test_ops_a: CPU vs reference; test_ops_cuda: CUDA vs CPU).
 */
#ifndef MS_SOFTMAX_H
#define MS_SOFTMAX_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_softmax_forward, float *y, const float *x, int64_t rows, int64_t cols)
MS_DECLARE_OP(ms_softmax_backward, float *dx, const float *dy, const float *y, int64_t rows, int64_t cols)

static inline ms_status ms_softmax_forward(ms_device *dev, float *y, const float *x, int64_t rows, int64_t cols)
{ return MS_DISPATCH(dev, ms_softmax_forward, y, x, rows, cols); }
static inline ms_status ms_softmax_backward(ms_device *dev, float *dx, const float *dy, const float *y, int64_t rows,
                                            int64_t cols)
{ return MS_DISPATCH(dev, ms_softmax_backward, dx, dy, y, rows, cols); }

#endif
