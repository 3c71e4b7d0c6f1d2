/* kernels/cuda/matmul.cu — batched GEMM and the linear layer on cuBLAS / cuBLASLt (contract: kernels/matmul.h).
 *
 * Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so we call cublasSgemmStridedBatched with the
 * operands swapped and no copies. Exact fp32 (CUBLAS_PEDANTIC_MATH) unless the context opted into TF32.
 * Backward: a broadcast operand (stride 0, batch > 1) gets its gradient summed over the batch by sequential
 * beta=1 GEMMs (no atomics, deterministic). The linear bias gradient is a deterministic column sum.
 *
 * bf16 (dev->precision == MS_PREC_BF16, docs/PRECISION.md): the same GEMMs with A and B rounded to bf16 (round to
 * nearest even) and fp32 accumulation into fp32 C, through cuBLASLt (A/B CUDA_R_16BF, C/D CUDA_R_32F,
 * CUBLAS_COMPUTE_32F), with the same operand swap. Activations are fp32 in memory, so a small kernel first writes
 * each operand as bf16 into the context's bf16 buffer, dense with padded rows: leading dimension rounded up to 8
 * elements (16 bytes), pieces 256-byte aligned, batch items 256 bytes apart, so cuBLASLt's tensor-core alignment
 * rules hold whatever the fp32 layout was. That buffer grows to the largest GEMM's two operands (2 bytes per
 * element of op(A) and op(B), padding aside) and is kept. The linear forward's bias is cuBLASLt's BIAS epilogue
 * (added in fp32 to the fp32 accumulator: exact, no separate bias pass). The algorithm comes from cuBLASLt's
 * heuristic, asked once per shape (ctx->lt_plan). Where it offers none, the operands are rounded into fp32 copies
 * and the fp32 cuBLAS path runs on them: the same values, so the same result up to the order of sums. The CPU
 * emulates this (kernels/cpu/matmul.c) and is the reference (tests/kernels/test_ops_cuda.c, bf16 pass).
 * The linear backward converts dy once per GEMM that reads it (twice when dx and dw are both wanted).
 */
#include <cuda_bf16.h>
#include <string.h>

#include "cuda_common.h"

static cublasOperation_t op_of(int t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

/* cuBLAS and cuBLASLt take int sizes. */
static ms_status int32_dims(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, int64_t batch)
{
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX || ldc > INT32_MAX ||
        batch > INT32_MAX)
        return ms_error(MS_EUNSUPPORTED, "gemm: dimension beyond 2^31 (m=%lld n=%lld k=%lld)", (long long)m,
                        (long long)n, (long long)k);
    return MS_OK;
}

ms_status ms_cuda_gemm(ms_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                       const float *a, int64_t lda, int64_t sa, const float *b, int64_t ldb, int64_t sb, float beta,
                       float *c, int64_t ldc, int64_t sc, int64_t batch)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    if (m <= 0 || n <= 0 || batch <= 0) return MS_OK;
    MS_TRY(int32_dims(m, n, k, lda, ldb, ldc, batch));
    MS_CU(cublasSgemmStridedBatched(cx->blas, op_of(tb), op_of(ta), (int)n, (int)m, (int)k, &alpha, b, (int)ldb,
                                    sb, a, (int)lda, sa, &beta, c, (int)ldc, sc, (int)batch));
    return MS_OK;
}

__global__ static void bias_rows_f32(float *y, const float *b, int64_t M, int64_t N)
{
    MS_GRID_STRIDE(i, M * N) y[i] = b[i % N];
}

/* ---- bf16 ------------------------------------------------------------------------------------------------------ */

/* One operand as stored (rows x cols, row-major, leading dimension ld, `items` matrices stride apart) and its
 * rounded copy: leading dimension ldp (cols rounded up to 8), items sp elements apart (0 for one shared matrix),
 * at byte offset off of the bf16 buffer, bytes long. */
typedef struct bf_op {
    const float *src;
    int64_t rows, cols, ld, stride, items;
    int64_t ldp, sp;
    size_t off, bytes;
} bf_op;

static bf_op bf_plan(const float *src, int64_t rows, int64_t cols, int64_t ld, int64_t stride, int64_t batch,
                     size_t elem, size_t *offset)
{
    bf_op o = {src, rows, cols, ld, stride, stride == 0 ? 1 : batch, 0, 0, 0, 0};
    o.ldp = (cols + 7) / 8 * 8;
    o.sp = o.items > 1 ? (rows * o.ldp + 127) / 128 * 128 : 0;
    o.off = *offset;
    o.bytes = ((size_t)((o.items - 1) * o.sp + rows * o.ldp) * elem + 255) & ~(size_t)255;
    *offset += o.bytes;
    return o;
}

template <class T> __device__ inline T round_bf16_as(float x);
template <> __device__ inline __nv_bfloat16 round_bf16_as<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ inline float round_bf16_as<float>(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

/* dst (items, rows, ldp), items sp apart, padding columns zero <- src rounded to bf16; four columns a thread. */
template <class T>
__global__ static void round_bf16_k(T *dst, const float *src, int64_t rows, int64_t cols, int64_t ld, int64_t stride,
                                    int64_t ldp, int64_t sp, int64_t n_quads)
{
    const int64_t qpr = ldp / 4;
    MS_GRID_STRIDE(q, n_quads) {
        int64_t c0 = (q % qpr) * 4, t = q / qpr, r = t % rows, it = t / rows;
        const float *s = src + it * stride + r * ld;
        T *d = dst + it * sp + r * ldp + c0;
#pragma unroll
        for (int j = 0; j < 4; j++) d[j] = round_bf16_as<T>(c0 + j < cols ? s[c0 + j] : 0.f);
    }
}

template <class T>
static ms_status bf_convert(ms_device *dev, void *buf, const bf_op *o)
{
    int64_t n_quads = o->items * o->rows * (o->ldp / 4);
    MS_LAUNCH(round_bf16_k<T>, n_quads, (T *)((char *)buf + o->off), o->src, o->rows, o->cols, o->ld, o->stride,
              o->ldp, o->sp, n_quads);
    return MS_OK;
}

/* Largest power of two (at most 256) dividing the address and the byte strides: what cuBLASLt may assume. */
static int64_t align_of(const void *p, int64_t ld_bytes, int64_t stride_bytes)
{
    uint64_t v = (uint64_t)(uintptr_t)p | (uint64_t)ld_bytes | (uint64_t)stride_bytes | 256u;
    return (int64_t)(v & (~v + 1));
}

/* Column-major cuBLASLt layout of a row-major matrix stored rows x cols (leading dimension ld). */
static ms_status lt_layout(cublasLtMatrixLayoutOpaque_t *l, cudaDataType t, int64_t rows, int64_t cols, int64_t ld,
                           int64_t stride, int64_t batch)
{
    MS_CU(cublasLtMatrixLayoutInit(l, t, (uint64_t)cols, (uint64_t)rows, ld));
    if (batch > 1) {
        int32_t bc = (int32_t)batch;
        MS_CU(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
        MS_CU(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
    return MS_OK;
}

/* The algorithm for this shape: from the context's plans, else from the heuristic (kept, found or not). */
static ms_status lt_plan_for(ms_cuda_ctx *cx, const int64_t key[MS_LT_KEY], cublasLtMatmulDesc_t desc,
                             cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc,
                             const ms_lt_plan **out)
{
    for (int i = 0; i < cx->lt_plans; i++)
        if (!memcmp(cx->lt_plan[i].key, key, sizeof cx->lt_plan[i].key)) {
            *out = &cx->lt_plan[i];
            return MS_OK;
        }
    cublasLtMatmulPreferenceOpaque_t pref;
    MS_CU(cublasLtMatmulPreferenceInit(&pref));
    uint64_t ws = cx->workspace_bytes;
    MS_CU(cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    /* key[12..14]: the alignments of (cuBLASLt's) A, B and C/D; the defaults would assume 256 bytes */
    static const cublasLtMatmulPreferenceAttributes_t al[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++) {
        uint32_t a = (uint32_t)key[12 + (i < 3 ? i : 2)];
        MS_CU(cublasLtMatmulPreferenceSetAttribute(&pref, al[i], &a, sizeof a));
    }
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    memset(&res, 0, sizeof res);
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cx->lt, desc, la, lb, lc, lc, &pref, 1, &res, &found);
    if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED)
        return ms_error(MS_EDEVICE, "cublasLtMatmulAlgoGetHeuristic: %s (%s:%d)", cublasGetStatusString(st), __FILE__,
                        __LINE__);
    ms_lt_plan *p = &cx->lt_plan[cx->lt_next];
    cx->lt_next = (cx->lt_next + 1) % MS_LT_PLANS;
    if (cx->lt_plans < MS_LT_PLANS) cx->lt_plans++;
    memcpy(p->key, key, sizeof p->key);
    p->ok = st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
    p->algo = res.algo;
    *out = p;
    return MS_OK;
}

/* No cuBLASLt algorithm: A and B rounded to bf16 into fp32 copies, then the fp32 GEMM (and bias rows first). */
static ms_status gemm_bf16_fallback(ms_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                                    const float *a, int64_t lda, int64_t sa, const float *b, int64_t ldb, int64_t sb,
                                    float beta, float *c, int64_t ldc, int64_t sc, int64_t batch, const float *bias)
{
    if (bias) {
        bias_rows_f32<<<ms_cu_blocks(m * n, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(c, bias, m, n);
        MS_CU_LAUNCHED();
        beta = 1.f;
    }
    if (k <= 0) /* nothing is multiplied: C = beta·C */
        return ms_cuda_gemm(dev, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch);
    size_t off = 0;
    bf_op A = bf_plan(a, ta ? k : m, ta ? m : k, lda, sa, batch, sizeof(float), &off);
    bf_op B = bf_plan(b, tb ? n : k, tb ? k : n, ldb, sb, batch, sizeof(float), &off);
    void *buf;
    MS_TRY(ms_cuda_bf16_buffer(dev, off, &buf));
    MS_TRY(bf_convert<float>(dev, buf, &A));
    MS_TRY(bf_convert<float>(dev, buf, &B));
    return ms_cuda_gemm(dev, ta, tb, m, n, k, alpha, (const float *)((char *)buf + A.off), A.ldp, A.sp,
                        (const float *)((char *)buf + B.off), B.ldp, B.sp, beta, c, ldc, sc, batch);
}

ms_status ms_cuda_gemm_bf16(ms_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                            const float *a, int64_t lda, int64_t sa, const float *b, int64_t ldb, int64_t sb,
                            float beta, float *c, int64_t ldc, int64_t sc, int64_t batch, const float *bias)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    if (m <= 0 || n <= 0 || batch <= 0) return MS_OK;
    MS_TRY(int32_dims(m, n, k, lda, ldb, ldc, batch));
    MS_FAIL_IF(bias && (batch != 1 || beta != 0.f || ldc != n), MS_EINVAL,
               "gemm_bf16: a bias needs batch 1, beta 0 and ldc = n");
    if (k <= 0) return gemm_bf16_fallback(dev, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch,
                                          bias);
    size_t off = 0;
    bf_op A = bf_plan(a, ta ? k : m, ta ? m : k, lda, sa, batch, 2, &off);
    bf_op B = bf_plan(b, tb ? n : k, tb ? k : n, ldb, sb, batch, 2, &off);

    /* cuBLASLt's view (column-major): its A is our B, its B our A, its D (n x m) our C */
    cublasLtMatmulDescOpaque_t desc;
    cublasLtMatrixLayoutOpaque_t la, lb, lc;
    MS_CU(cublasLtMatmulDescInit(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t opa = op_of(tb), opb = op_of(ta);
    MS_CU(cublasLtMatmulDescSetAttribute(&desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    MS_CU(cublasLtMatmulDescSetAttribute(&desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (bias) {
        cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS; /* bias (length n = rows of D) added to every column of D */
        MS_CU(cublasLtMatmulDescSetAttribute(&desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        MS_CU(cublasLtMatmulDescSetAttribute(&desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    MS_TRY(lt_layout(&la, CUDA_R_16BF, B.rows, B.cols, B.ldp, B.sp, batch));
    MS_TRY(lt_layout(&lb, CUDA_R_16BF, A.rows, A.cols, A.ldp, A.sp, batch));
    MS_TRY(lt_layout(&lc, CUDA_R_32F, m, n, ldc, sc, batch));
    /* our B and A sit at 256-byte aligned offsets with 16-byte rows and 256-byte batch strides */
    int64_t key[MS_LT_KEY] = {ta, tb, m, n, k, A.ldp, A.sp, B.ldp, B.sp, ldc, batch > 1 ? sc : 0, batch,
                              align_of(NULL, B.ldp * 2, B.sp * 2), align_of(NULL, A.ldp * 2, A.sp * 2),
                              align_of(c, ldc * 4, batch > 1 ? sc * 4 : 0),
                              bias ? 1 + align_of(bias, 0, 0) : 0};
    const ms_lt_plan *plan;
    MS_TRY(lt_plan_for(cx, key, &desc, &la, &lb, &lc, &plan));
    if (!plan->ok)
        return gemm_bf16_fallback(dev, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch, bias);

    void *buf;
    MS_TRY(ms_cuda_bf16_buffer(dev, off, &buf));
    MS_TRY(bf_convert<__nv_bfloat16>(dev, buf, &A));
    MS_TRY(bf_convert<__nv_bfloat16>(dev, buf, &B));
    MS_CU(cublasLtMatmul(cx->lt, &desc, &alpha, (char *)buf + B.off, &la, (char *)buf + A.off, &lb, &beta, c, &lc, c,
                         &lc, &plan->algo, cx->workspace, cx->workspace_bytes, cx->stream));
    return MS_OK;
}

/* The GEMM in the device's precision. */
static ms_status gemm_p(ms_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                        int64_t lda, int64_t sa, const float *b, int64_t ldb, int64_t sb, float beta, float *c,
                        int64_t ldc, int64_t sc, int64_t batch)
{
    if (dev->precision == MS_PREC_BF16)
        return ms_cuda_gemm_bf16(dev, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch, NULL);
    return ms_cuda_gemm(dev, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch);
}

/* ---- the ops ---------------------------------------------------------------------------------------------------- */

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
    return gemm_p(dev, d->trans_a, d->trans_b, d->m, d->n, d->k, d->alpha, a, lda, d->stride_a, b, ldb,
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
                MS_TRY(gemm_p(dev, 0, !d->trans_b, M, K, N, al, dci, ldc, d->stride_c, bi, ldb, d->stride_b,
                                    1.f, da, lda, d->stride_a, bb));
            else /* A stored (K,M): dA += α·op(B)·dCᵀ */
                MS_TRY(gemm_p(dev, d->trans_b, 1, K, M, N, al, bi, ldb, d->stride_b, dci, ldc, d->stride_c,
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
                MS_TRY(gemm_p(dev, !d->trans_a, 0, K, N, M, al, ai, lda, d->stride_a, dci, ldc, d->stride_c,
                                    1.f, db, ldb, d->stride_b, bb));
            else /* B stored (N,K): dB += α·dCᵀ·op(A) */
                MS_TRY(gemm_p(dev, 1, d->trans_a, N, K, M, al, dci, ldc, d->stride_c, ai, lda, d->stride_a,
                                    1.f, db, ldb, d->stride_b, bb));
        }
    }
    return MS_OK;
}

extern "C" ms_status ms_linear_forward_cuda(ms_device *dev, float *y, const float *x, const float *w, const float *b,
                                            int64_t M, int64_t K, int64_t N)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(!y || !x || !w, MS_EINVAL, "linear_forward: NULL argument");
    MS_FAIL_IF(M < 0 || K < 0 || N < 0, MS_EINVAL, "linear_forward: negative size");
    if (M == 0 || N == 0) return MS_OK;
    if (dev->precision == MS_PREC_BF16) /* the bias rides in cuBLASLt's epilogue */
        return ms_cuda_gemm_bf16(dev, 0, 1, M, N, K, 1.f, x, K, 0, w, K, 0, 0.f, y, N, 0, 1, b);
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
    if (dx) MS_TRY(gemm_p(dev, 0, 0, M, K, N, 1.f, dy, N, 0, w, K, 0, 1.f, dx, K, 0, 1)); /* dx += dy·w */
    if (dw) MS_TRY(gemm_p(dev, 1, 0, N, K, M, 1.f, dy, N, 0, x, K, 0, 1.f, dw, K, 0, 1)); /* dw += dyᵀ·x */
    if (db) MS_TRY(ms_colsum(dev, db, rows_sum{dy, N}, 1, M, N, 1));
    return MS_OK;
}
