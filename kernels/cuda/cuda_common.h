/* kernels/cuda/cuda_common.h — what every kernels/cuda .cu file shares: the C headers (as extern "C"), the CUDA
 * context behind ms_device.cuda, the one generic check macro, launch helpers and a deterministic column-sum.
 *
 * Invariants: every op runs on ctx->stream (so reusing the scratch buffer between ops is safe: stream order
 * serialises them); nothing here exits or aborts — failures become MS_EDEVICE with "<expr>: <reason> (file:line)".
 * Included only by .cu files (C++); the C side sees kernels/base/cuda_bridge.h.
 */
#ifndef MS_CUDA_COMMON_H
#define MS_CUDA_COMMON_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "base/cuda_bridge.h"
#include "base/device.h"
#include "base/status.h"
#include "ops.h"
}

/* A cuBLASLt algorithm chosen for one bf16 GEMM shape (matmul.cu): the heuristic is asked once per shape. */
#define MS_LT_PLANS 64
#define MS_LT_KEY 16
typedef struct ms_lt_plan {
    int64_t key[MS_LT_KEY];     /* transposes, sizes, leading dimensions, strides, alignments, epilogue */
    int ok;                     /* 0: cuBLASLt offered no algorithm (the GEMM takes the fp32 fallback) */
    cublasLtMatmulAlgo_t algo;
} ms_lt_plan;

/* The state behind dev->cuda (one per ms_device). */
typedef struct ms_cuda_ctx {
    int device;                 /* CUDA ordinal */
    cudaStream_t stream;        /* every op and copy runs here */
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *workspace;            /* cuBLAS / cuBLASLt workspace */
    size_t workspace_bytes;
    void *scratch;              /* grow-only temporaries for ops (partial sums, im2col, rel-pos dots) */
    size_t scratch_bytes;
    void *attn_ws;              /* grow-only: bf16 attention's folded q'/k' and their gradients (attention_bf16.cu),
                                   apart from scratch because the fold ops it calls may take scratch themselves */
    size_t attn_ws_bytes;
    void *bf16;                 /* grow-only bf16 copies of the operands of one GEMM (precision bf16, matmul.cu) */
    size_t bf16_bytes;
    ms_lt_plan lt_plan[MS_LT_PLANS]; /* cuBLASLt algorithms by GEMM shape, filled round-robin */
    int lt_plans, lt_next;
    int tf32;                   /* 1 only when MS_CUDA_TF32=1 was set at init: default is exact fp32 GEMMs */
    int attn_variant;           /* attention kernels: 2 (default) or 1 (MS_KERNEL_ATTENTION=1 at init) */
    int sm_count;
    size_t smem_optin;          /* max dynamic shared memory per block after opt-in */
    int capturing;              /* ms_graph_begin .. ms_graph_end: no synchronisation, no workspace growth */
    uint64_t grows;             /* workspace reallocations: a graph captured before one may hold a freed pointer */
} ms_cuda_ctx;

static inline ms_cuda_ctx *ms_cuda_ctx_of(ms_device *dev) { return (ms_cuda_ctx *)dev->cuda; }

/* Scratch memory on the device, valid until the next call that asks for scratch. Grows (synchronising the
 * stream first, so earlier kernels that still read the old buffer finish) and never shrinks. */
ms_status ms_cuda_scratch(ms_device *dev, size_t bytes, void **out);
/* The same for the bf16 attention's workspace (ctx->attn_ws): valid until the next call of this function. */
ms_status ms_cuda_attn_workspace(ms_device *dev, size_t bytes, void **out);
/* The same for the bf16 operand buffer (its own buffer: an op may hold scratch across its GEMMs). */
ms_status ms_cuda_bf16_buffer(ms_device *dev, size_t bytes, void **out);

/* ---- the generic check: cudaError_t and cublasStatus_t ------------------------------------------------------ */
static inline int ms_cu_failed(cudaError_t e) { return e != cudaSuccess; }
static inline int ms_cu_failed(cublasStatus_t s) { return s != CUBLAS_STATUS_SUCCESS; }
static inline const char *ms_cu_str(cudaError_t e) { return cudaGetErrorString(e); }
static inline const char *ms_cu_str(cublasStatus_t s) { return cublasGetStatusString(s); }

/* Return MS_EDEVICE naming the expression, file and line (functions that hold no resources). */
#define MS_CU(expr)                                                                                        \
    do {                                                                                                   \
        auto ms_cu_e_ = (expr);                                                                            \
        if (ms_cu_failed(ms_cu_e_))                                                                        \
            return ms_error(MS_EDEVICE, "%s: %s (%s:%d)", #expr, ms_cu_str(ms_cu_e_), __FILE__, __LINE__); \
    } while (0)
/* The same for functions with one exit: sets rc and jumps to `label`. */
#define MS_CU_GOTO(expr, rc, label)                                                                        \
    do {                                                                                                   \
        auto ms_cu_e_ = (expr);                                                                            \
        if (ms_cu_failed(ms_cu_e_)) {                                                                      \
            (rc) = ms_error(MS_EDEVICE, "%s: %s (%s:%d)", #expr, ms_cu_str(ms_cu_e_), __FILE__, __LINE__); \
            goto label;                                                                                    \
        }                                                                                                  \
    } while (0)
/* After a launch: the launch error (bad configuration, too much shared memory). */
#define MS_CU_LAUNCHED() MS_CU(cudaGetLastError())

#define MS_CU_CTX(dev)                                                                                     \
    do {                                                                                                   \
        if (!(dev) || (dev)->kind != MS_DEV_CUDA || !(dev)->cuda)                                          \
            return ms_error(MS_EDEVICE, "%s: device is not an initialised CUDA device", __func__);        \
    } while (0)

static inline unsigned ms_cu_blocks(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65535LL * 32) b = 65535LL * 32; /* kernels use grid-stride loops */
    return (unsigned)b;
}

/* A 1-D launch of kern over n elements, 256 threads a block, on the device's stream (needs `dev` in scope). */
#define MS_LAUNCH(kern, n, ...)                                                                            \
    do {                                                                                                   \
        kern<<<ms_cu_blocks(n, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(__VA_ARGS__);                  \
        MS_CU_LAUNCHED();                                                                                  \
    } while (0)
#define MS_GRID_STRIDE(i, n)                                                                               \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* ---- deterministic column sums -------------------------------------------------------------------------------
 * y[a,c] (+)= Σ_r f(a,r,c) for a < A, r < R, c < C without atomics: pass 1 sums fixed row chunks into
 * part (A, n_chunks, C), pass 2 adds the chunks in index order. f is a functor with
 * `__device__ float operator()(int64_t a, int64_t r, int64_t c) const`. */
template <class F>
__global__ void ms_colsum_partial_k(float *part, F f, int64_t A, int64_t R, int64_t C, int64_t rows_per_chunk,
                                    int n_chunks)
{
    __shared__ float red[8][33];
    int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    int chunk = blockIdx.y;
    int64_t a = blockIdx.z;
    int64_t r0 = (int64_t)chunk * rows_per_chunk, r1 = r0 + rows_per_chunk;
    if (r1 > R) r1 = R;
    float s = 0.f;
    if (c < C)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) s += f(a, r, c);
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t = 0.f;
        for (int k = 0; k < 8; k++) t += red[k][threadIdx.x];
        part[((int64_t)a * n_chunks + chunk) * C + c] = t;
    }
}

__global__ static void ms_colsum_final_k(float *y, const float *part, int64_t A, int64_t C, int n_chunks,
                                         int accumulate)
{
    MS_GRID_STRIDE(i, A * C) {
        int64_t a = i / C, c = i % C;
        float t = 0.f;
        for (int k = 0; k < n_chunks; k++) t += part[(a * n_chunks + k) * C + c];
        y[i] = accumulate ? y[i] + t : t;
    }
}

template <class F>
static ms_status ms_colsum(ms_device *dev, float *y, F f, int64_t A, int64_t R, int64_t C, int accumulate)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    if (A <= 0 || C <= 0) return MS_OK;
    int64_t col_tiles = (C + 31) / 32;
    /* enough chunks to fill the GPU, at least 64 rows each, at most 1024 */
    int64_t want = (4 * (int64_t)cx->sm_count * 8) / (A * col_tiles) + 1;
    int64_t n_chunks = R / 64 + 1;
    if (n_chunks > want) n_chunks = want;
    if (n_chunks > 1024) n_chunks = 1024;
    if (n_chunks < 1) n_chunks = 1;
    int64_t rpc = (R + n_chunks - 1) / n_chunks;
    if (rpc < 1) rpc = 1;
    if (A > 65535) return ms_error(MS_EUNSUPPORTED, "column sum: outer size %lld > 65535", (long long)A);
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(A * n_chunks * C) * sizeof(float), &p));
    dim3 grid((unsigned)col_tiles, (unsigned)n_chunks, (unsigned)A);
    ms_colsum_partial_k<<<grid, dim3(32, 8), 0, cx->stream>>>((float *)p, f, A, R, C, rpc, (int)n_chunks);
    MS_CU_LAUNCHED();
    ms_colsum_final_k<<<ms_cu_blocks(A * C, 256), 256, 0, cx->stream>>>(y, (const float *)p, A, C,
                                                                         (int)n_chunks, accumulate);
    MS_CU_LAUNCHED();
    return MS_OK;
}

/* Block-wide sum of one double per thread, in a fixed order (deterministic). blockDim.x == 256. */
__device__ static inline double ms_block_sum_d(double v, double *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}
__device__ static inline float ms_block_sum_f(float v, float *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}
__device__ static inline float ms_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ static inline float ms_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Row-major GEMM on the ctx stream (matmul.cu): C_b = alpha·op(A_b)·op(B_b) + beta·C_b, exact fp32 whatever the
 * device's precision (the convolutions call it directly and stay fp32). */
ms_status ms_cuda_gemm(ms_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                       const float *a, int64_t lda, int64_t sa, const float *b, int64_t ldb, int64_t sb, float beta,
                       float *c, int64_t ldc, int64_t sc, int64_t batch);
/* The same with A and B rounded to bf16 (fp32 accumulation, fp32 C): cuBLASLt on bf16 copies of the operands, or,
 * where it offers no algorithm, cuBLAS fp32 on bf16-rounded fp32 copies (same values, same result up to the order
 * of sums). bias (n floats, or NULL) is added to every row of C in fp32 (the BIAS epilogue); it needs batch 1,
 * beta 0 and ldc == n. */
ms_status ms_cuda_gemm_bf16(ms_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                            const float *a, int64_t lda, int64_t sa, const float *b, int64_t ldb, int64_t sb,
                            float beta, float *c, int64_t ldc, int64_t sc, int64_t batch, const float *bias);

#endif
