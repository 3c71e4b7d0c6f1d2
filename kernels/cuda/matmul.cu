/* kernels/cuda/matmul.cu — batched GEMM and the linear layer on cuBLAS (contract: kernels/matmul.h).
 *
 * Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so we call cublasSgemmStridedBatched with the
 * operands swapped and no copies. Exact fp32 (CUBLAS_PEDANTIC_MATH) unless the context opted into TF32.
 * Backward: a broadcast operand (stride 0, batch > 1) gets its gradient summed over the batch by sequential
 * beta=1 GEMMs (no atomics, deterministic). The linear bias gradient is a deterministic column sum.
 */
#include "cuda_common.h"

static cublasOperation_t op_of(int t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

ms_status ms_cuda_gemm(ms_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                       const float *a, int64_t lda, int64_t sa, const float *b, int64_t ldb, int64_t sb, float beta,
                       float *c, int64_t ldc, int64_t sc, int64_t batch)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    if (m <= 0 || n <= 0 || batch <= 0) return MS_OK;
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX || ldc > INT32_MAX ||
        batch > INT32_MAX)
        return ms_error(MS_EUNSUPPORTED, "gemm: dimension beyond 2^31 (m=%lld n=%lld k=%lld)", (long long)m,
                        (long long)n, (long long)k);
    MS_CU(cublasSgemmStridedBatched(cx->blas, op_of(tb), op_of(ta), (int)n, (int)m, (int)k, &alpha, b, (int)ldb,
                                    sb, a, (int)lda, sa, &beta, c, (int)ldc, sc, (int)batch));
    return MS_OK;
}

/* Default leading dimensions when the descriptor leaves them at 0. */
static void leads(const ms_matmul_desc *d, int64_t *lda, int64_t *ldb, int64_t *ldc)
{
    *lda = d->lda > 0 ? d->lda : (d->trans_a ? d->m : d->k);
    *ldb = d->ldb > 0 ? d->ldb : (d->trans_b ? d->k : d->n);
    *ldc = d->ldc > 0 ? d->ldc : d->n;
}

extern "C" ms_status ms_matmul_forward_cuda(ms_device *dev, float *c, const float *a, const float *b,
                                            const ms_matmul_desc *d)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(!d || !c || !a || !b, MS_EINVAL, "matmul_forward: NULL argument");
    int64_t lda, ldb, ldc;
    leads(d, &lda, &ldb, &ldc);
    int64_t batch = d->batch > 0 ? d->batch : 1;
    return ms_cuda_gemm(dev, d->trans_a, d->trans_b, d->m, d->n, d->k, d->alpha, a, lda, d->stride_a, b, ldb,
                        d->stride_b, d->beta, c, ldc, d->stride_c, batch);
}

extern "C" ms_status ms_matmul_backward_cuda(ms_device *dev, float *da, float *db, const float *dc, const float *a,
                                             const float *b, const ms_matmul_desc *d)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(!d || !dc, MS_EINVAL, "matmul_backward: NULL argument");
    int64_t lda, ldb, ldc;
    leads(d, &lda, &ldb, &ldc);
    int64_t batch = d->batch > 0 ? d->batch : 1;
    int64_t M = d->m, N = d->n, K = d->k;
    float al = d->alpha;
    if (da) {
        MS_FAIL_IF(!b, MS_EINVAL, "matmul_backward: da needs b");
        /* one batched call, or a sequential sum when A is broadcast over the batch */
        int64_t nb = (d->stride_a == 0 && batch > 1) ? batch : 1;
        int64_t bb = nb > 1 ? 1 : batch;
        for (int64_t i = 0; i < nb; i++) {
            const float *dci = dc + i * d->stride_c, *bi = b + i * d->stride_b;
            if (!d->trans_a) /* dA (M,K) += α·dC·op(B)ᵀ */
                MS_TRY(ms_cuda_gemm(dev, 0, !d->trans_b, M, K, N, al, dci, ldc, d->stride_c, bi, ldb, d->stride_b,
                                    1.f, da, lda, d->stride_a, bb));
            else /* A stored (K,M): dA += α·op(B)·dCᵀ */
                MS_TRY(ms_cuda_gemm(dev, d->trans_b, 1, K, M, N, al, bi, ldb, d->stride_b, dci, ldc, d->stride_c,
                                    1.f, da, lda, d->stride_a, bb));
        }
    }
    if (db) {
        MS_FAIL_IF(!a, MS_EINVAL, "matmul_backward: db needs a");
        int64_t nb = (d->stride_b == 0 && batch > 1) ? batch : 1;
        int64_t bb = nb > 1 ? 1 : batch;
        for (int64_t i = 0; i < nb; i++) {
            const float *dci = dc + i * d->stride_c, *ai = a + i * d->stride_a;
            if (!d->trans_b) /* dB (K,N) += α·op(A)ᵀ·dC */
                MS_TRY(ms_cuda_gemm(dev, !d->trans_a, 0, K, N, M, al, ai, lda, d->stride_a, dci, ldc, d->stride_c,
                                    1.f, db, ldb, d->stride_b, bb));
            else /* B stored (N,K): dB += α·dCᵀ·op(A) */
                MS_TRY(ms_cuda_gemm(dev, 1, d->trans_a, N, K, M, al, dci, ldc, d->stride_c, ai, lda, d->stride_a,
                                    1.f, db, ldb, d->stride_b, bb));
        }
    }
    return MS_OK;
}

__global__ static void bias_rows_f32(float *y, const float *b, int64_t M, int64_t N)
{
    MS_GRID_STRIDE(i, M * N) y[i] = b[i % N];
}

extern "C" ms_status ms_linear_forward_cuda(ms_device *dev, float *y, const float *x, const float *w, const float *b,
                                            int64_t M, int64_t K, int64_t N)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(!y || !x || !w, MS_EINVAL, "linear_forward: NULL argument");
    MS_FAIL_IF(M < 0 || K < 0 || N < 0, MS_EINVAL, "linear_forward: negative size");
    if (M == 0 || N == 0) return MS_OK;
    float beta = 0.f;
    if (b) {
        /* y = b first, then y += x·wᵀ (fuses the bias into the GEMM's beta) */
        bias_rows_f32<<<ms_cu_blocks(M * N, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(y, b, M, N);
        MS_CU_LAUNCHED();
        beta = 1.f;
    }
    return ms_cuda_gemm(dev, 0, 1, M, N, K, 1.f, x, K, 0, w, K, 0, beta, y, N, 0, 1);
}

struct rows_sum {
    const float *dy;
    int64_t N;
    __device__ float operator()(int64_t, int64_t r, int64_t c) const { return dy[r * N + c]; }
};

extern "C" ms_status ms_linear_backward_cuda(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                             const float *x, const float *w, int64_t M, int64_t K, int64_t N)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(!dy, MS_EINVAL, "linear_backward: NULL dy");
    if (M <= 0 || N <= 0) return MS_OK;
    if (dx) MS_TRY(ms_cuda_gemm(dev, 0, 0, M, K, N, 1.f, dy, N, 0, w, K, 0, 1.f, dx, K, 0, 1)); /* dx += dy·w */
    if (dw) MS_TRY(ms_cuda_gemm(dev, 1, 0, N, K, M, 1.f, dy, N, 0, x, K, 0, 1.f, dw, K, 0, 1)); /* dw += dyᵀ·x */
    if (db) MS_TRY(ms_colsum(dev, db, rows_sum{dy, N}, 1, M, N, 1));
    return MS_OK;
}
