/* kernels/matmul.h — batched GEMM and the linear layer (OpenBLAS sgemm on the CPU, cuBLAS(Lt) on CUDA).
 *
 * Row-major throughout. matmul: for b in [0,batch): C_b = alpha·op(A_b)·op(B_b) + beta·C_b, op(A) (M,K),
 * op(B) (K,N), C (M,N); A_b = a + b·stride_a (stride 0 broadcasts one matrix over the batch).
 * trans_a: A is stored (K,M) with row stride lda; else (M,K). Same for B.
 * linear: y (M,N) = x (M,K)·wᵀ + b, w (N,K) in PyTorch layout, b (N) or NULL.
 * Backward rule for every op in kernels/: gradients are ACCUMULATED (+=) into every gradient output, and a
 * NULL gradient pointer means "not needed" (frozen weights cost no work). matmul_backward ignores beta (the
 * caller owns the beta·C term).
 * Precision (dev->precision, docs/PRECISION.md): fp32 is exact fp32. bf16 rounds the two GEMM operands of every
 * product (a and b; x and w; dy in the backward) to bf16, round to nearest even, and accumulates in fp32; C, the
 * beta·C term, the bias and db stay fp32. The CPU emulates it (rounded copies, fp32 sgemm), CUDA runs cuBLASLt on
 * bf16 copies with the bias as its epilogue; both give the same values up to the order of sums.
 * Tested by rows "matmul", "linear" of tests/kernels/op_cases.c (test_ops_a: CPU vs reference, bad descriptors,
 *   the bf16 emulation vs rounded-input references; test_ops_cuda: CUDA vs CPU, fp32 and bf16).
 */
#ifndef MS_MATMUL_H
#define MS_MATMUL_H

#include "base/dispatch.h"

typedef struct ms_matmul_desc {
    int trans_a, trans_b;
    int64_t m, n, k;
    int64_t lda, ldb, ldc;
    int64_t batch, stride_a, stride_b, stride_c; /* in elements */
    float alpha, beta;
} ms_matmul_desc;

/* A plain descriptor: no transposes, dense strides, batch 1, alpha 1, beta 0. */
ms_matmul_desc ms_matmul_plain(int64_t m, int64_t n, int64_t k);

MS_DECLARE_OP(ms_matmul_forward, float *c, const float *a, const float *b, const ms_matmul_desc *d)
MS_DECLARE_OP(ms_matmul_backward, float *da, float *db, const float *dc, const float *a, const float *b,
              const ms_matmul_desc *d)
MS_DECLARE_OP(ms_linear_forward, float *y, const float *x, const float *w, const float *b, int64_t M, int64_t K,
              int64_t N)
MS_DECLARE_OP(ms_linear_backward, float *dx, float *dw, float *db, const float *dy, const float *x,
              const float *w, int64_t M, int64_t K, int64_t N)

static inline ms_status ms_matmul_forward(ms_device *dev, float *c, const float *a, const float *b, const ms_matmul_desc *d)
{ return MS_DISPATCH(dev, ms_matmul_forward, c, a, b, d); }
static inline ms_status ms_matmul_backward(ms_device *dev, float *da, float *db, const float *dc, const float *a,
                                           const float *b, const ms_matmul_desc *d)
{ return MS_DISPATCH(dev, ms_matmul_backward, da, db, dc, a, b, d); }
static inline ms_status ms_linear_forward(ms_device *dev, float *y, const float *x, const float *w, const float *b,
                                          int64_t M, int64_t K, int64_t N)
{ return MS_DISPATCH(dev, ms_linear_forward, y, x, w, b, M, K, N); }
static inline ms_status ms_linear_backward(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                           const float *x, const float *w, int64_t M, int64_t K, int64_t N)
{ return MS_DISPATCH(dev, ms_linear_backward, dx, dw, db, dy, x, w, M, K, N); }

#endif
