/* kernels/cpu/matmul.c — batched GEMM and the linear layer on OpenBLAS (contract: kernels/matmul.h).
 *
 * Every product is one cblas_sgemm per batch item. Batches either run in an OpenMP loop (one single-threaded
 * sgemm per item: the OpenMP build of OpenBLAS runs serially inside a parallel region) or in order with a
 * threaded sgemm; the choice depends only on shapes and dev->n_threads. An output shared by all batch items
 * (stride 0, e.g. the gradient of a broadcast matrix) is always accumulated in batch order, so results are
 * deterministic. Backward accumulates (beta = 1) and skips NULL gradients.
 *
 * bf16 (dev->precision == MS_PREC_BF16) is emulated: each GEMM's two operands (A and B; x, w and dy of the linear
 * layer) are rounded to bf16 into a copy of the span the GEMM reads, then the same fp32 sgemm runs. Products of two
 * bf16 values are exact in fp32, so this is what a tensor-core GEMM with fp32 accumulation computes, up to the order
 * of the sums; the CPU is thus the reference for the CUDA bf16 path (docs/PRECISION.md). The beta·C term, the bias
 * and the bias gradient stay fp32. The fp32 path is untouched by this.
 */
#include "matmul.h"

#include <cblas.h>
#include <stdlib.h>

#include "base/tensor.h"
#include "cpu/cpu_par.h"

ms_matmul_desc ms_matmul_plain(int64_t m, int64_t n, int64_t k)
{
    ms_matmul_desc d = {0};
    d.m = m; d.n = n; d.k = k;
    d.lda = k; d.ldb = n; d.ldc = n;
    d.batch = 1;
    d.stride_a = m * k; d.stride_b = k * n; d.stride_c = m * n;
    d.alpha = 1.f; d.beta = 0.f;
    return d;
}

/* One batched sgemm: C_i = alpha·op(A_i)·op(B_i) + beta·C_i, sizes as cblas (row-major). */
typedef struct gemm_job {
    int ta, tb;
    int64_t m, n, k;
    float alpha, beta;
    const float *a; int64_t lda, sa;
    const float *b; int64_t ldb, sb;
    float *c; int64_t ldc, sc;
    int64_t batch;
} gemm_job;

static void gemm_one(const gemm_job *g, int64_t i)
{
    const float *a = g->a + i * g->sa, *b = g->b + i * g->sb;
    float *c = g->c + i * g->sc;
    if (g->k == 0) { /* C = beta·C; BLAS may reject lda for K = 0 */
        for (int64_t r = 0; r < g->m; r++)
            for (int64_t j = 0; j < g->n; j++) c[r * g->ldc + j] = g->beta == 0.f ? 0.f : g->beta * c[r * g->ldc + j];
        return;
    }
    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans,
                (blasint)g->m, (blasint)g->n, (blasint)g->k, g->alpha, a, (blasint)g->lda, b, (blasint)g->ldb,
                g->beta, c, (blasint)g->ldc);
}

static void gemm_run(const ms_device *dev, const gemm_job *g)
{
    if (g->m == 0 || g->n == 0 || g->batch == 0) return;
    int nt = ms_cpu_threads(dev);
    double work = (double)g->m * (double)g->n * (double)(g->k > 0 ? g->k : 1);
    /* Parallel over the batch only when items are independent outputs and either there are enough of them
     * to feed every thread or each is too small for a threaded sgemm to pay off. */
    int over_batch = g->batch > 1 && g->sc != 0 && nt > 1 && (g->batch >= nt || work < 262144.0);
    if (over_batch) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < g->batch; i++) gemm_one(g, i);
    } else {
        for (int64_t i = 0; i < g->batch; i++) gemm_one(g, i);
    }
}

/* ---- bf16 emulation ---------------------------------------------------------------------------------------------
 * A copy of the elements an operand spans (stored rows x cols with leading dimension ld, `batch` items `stride`
 * apart), rounded to bf16. *out stays NULL when the operand spans nothing (the GEMM then does not read it). */
static ms_status bf16_span(const ms_device *dev, const float *src, int64_t rows, int64_t cols, int64_t ld,
                           int64_t stride, int64_t batch, float **out)
{
    *out = NULL;
    if (rows <= 0 || cols <= 0 || batch <= 0) return MS_OK;
    int64_t n = (batch - 1) * stride + (rows - 1) * ld + cols;
    float *dst = malloc((size_t)n * sizeof(float));
    MS_FAIL_IF(!dst, MS_ENOMEM, "matmul: out of memory for a bf16 operand copy (%lld floats)", (long long)n);
    const int64_t chunk = 1 << 16, nc = (n + chunk - 1) / chunk;
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t c = 0; c < nc; c++) {
        int64_t o = c * chunk;
        ms_bf16_round_copy(dst + o, src + o, n - o < chunk ? n - o : chunk);
    }
    *out = dst;
    return MS_OK;
}

/* gemm_run in the device's precision: in bf16 on rounded copies of A and B. */
static ms_status gemm_run_prec(const ms_device *dev, gemm_job g)
{
    if (dev->precision != MS_PREC_BF16 || g.m == 0 || g.n == 0 || g.k == 0 || g.batch == 0) {
        gemm_run(dev, &g); /* fp32, or nothing is multiplied (K = 0 scales C only) */
        return MS_OK;
    }
    float *ra = NULL, *rb = NULL;
    ms_status rc = bf16_span(dev, g.a, g.ta ? g.k : g.m, g.ta ? g.m : g.k, g.lda, g.sa, g.batch, &ra);
    if (!rc) rc = bf16_span(dev, g.b, g.tb ? g.n : g.k, g.tb ? g.k : g.n, g.ldb, g.sb, g.batch, &rb);
    if (!rc) {
        g.a = ra;
        g.b = rb;
        gemm_run(dev, &g);
    }
    free(ra);
    free(rb);
    return rc;
}

/* Stored shape of an operand: op(X) is (r, c); stored (c, r) when transposed. */
static int ld_ok(int trans, int64_t r, int64_t c, int64_t ld) { return ld >= ((trans ? r : c) > 1 ? (trans ? r : c) : 1); }

static ms_status check_desc(const ms_matmul_desc *d, const char *who)
{
    MS_FAIL_IF(!d, MS_EINVAL, "%s: NULL descriptor", who);
    MS_FAIL_IF(d->m < 0 || d->n < 0 || d->k < 0 || d->batch < 0, MS_EINVAL,
               "%s: negative size (m=%lld n=%lld k=%lld batch=%lld)", who, (long long)d->m, (long long)d->n,
               (long long)d->k, (long long)d->batch);
    MS_FAIL_IF(d->m > INT32_MAX || d->n > INT32_MAX || d->k > INT32_MAX || d->lda > INT32_MAX ||
                   d->ldb > INT32_MAX || d->ldc > INT32_MAX,
               MS_EINVAL, "%s: size exceeds the 32-bit BLAS interface", who);
    MS_FAIL_IF(!ld_ok(d->trans_a, d->m, d->k, d->lda), MS_EINVAL, "%s: lda=%lld too small (trans_a=%d m=%lld k=%lld)",
               who, (long long)d->lda, d->trans_a, (long long)d->m, (long long)d->k);
    MS_FAIL_IF(!ld_ok(d->trans_b, d->k, d->n, d->ldb), MS_EINVAL, "%s: ldb=%lld too small (trans_b=%d k=%lld n=%lld)",
               who, (long long)d->ldb, d->trans_b, (long long)d->k, (long long)d->n);
    MS_FAIL_IF(d->ldc < (d->n > 1 ? d->n : 1), MS_EINVAL, "%s: ldc=%lld < n=%lld", who, (long long)d->ldc,
               (long long)d->n);
    MS_FAIL_IF(d->stride_a < 0 || d->stride_b < 0 || d->stride_c < 0, MS_EINVAL, "%s: negative batch stride", who);
    return MS_OK;
}

ms_status ms_matmul_forward_cpu(ms_device *dev, float *c, const float *a, const float *b, const ms_matmul_desc *d)
{
    MS_TRY(check_desc(d, "matmul_forward"));
    /* Every batch item would overwrite the same C: almost surely a caller bug. */
    MS_FAIL_IF(d->batch > 1 && d->stride_c == 0, MS_EINVAL, "matmul_forward: stride_c = 0 with batch %lld",
               (long long)d->batch);
    gemm_job g = {d->trans_a, d->trans_b, d->m, d->n, d->k, d->alpha, d->beta,
                  a, d->lda, d->stride_a, b, d->ldb, d->stride_b, c, d->ldc, d->stride_c, d->batch};
    return gemm_run_prec(dev, g);
}

/* C = alpha·op(A)·op(B):  d op(A) = alpha·dC·op(B)ᵀ (M,K),  d op(B) = alpha·op(A)ᵀ·dC (K,N).
 * A transposed operand's gradient is written transposed: dA stored (K,M) = alpha·op(B)·dCᵀ, etc. */
ms_status ms_matmul_backward_cpu(ms_device *dev, float *da, float *db, const float *dc, const float *a,
                                 const float *b, const ms_matmul_desc *d)
{
    MS_TRY(check_desc(d, "matmul_backward"));
    if (da) {
        gemm_job g;
        if (!d->trans_a) /* dA (M,K) += alpha · dC (M,N) · op(B)ᵀ */
            g = (gemm_job){0, !d->trans_b, d->m, d->k, d->n, d->alpha, 1.f, dc, d->ldc, d->stride_c,
                           b, d->ldb, d->stride_b, da, d->lda, d->stride_a, d->batch};
        else             /* dA (K,M) += alpha · op(B) (K,N) · dCᵀ */
            g = (gemm_job){d->trans_b, 1, d->k, d->m, d->n, d->alpha, 1.f, b, d->ldb, d->stride_b,
                           dc, d->ldc, d->stride_c, da, d->lda, d->stride_a, d->batch};
        MS_TRY(gemm_run_prec(dev, g));
    }
    if (db) {
        gemm_job g;
        if (!d->trans_b) /* dB (K,N) += alpha · op(A)ᵀ (K,M) · dC (M,N) */
            g = (gemm_job){!d->trans_a, 0, d->k, d->n, d->m, d->alpha, 1.f, a, d->lda, d->stride_a,
                           dc, d->ldc, d->stride_c, db, d->ldb, d->stride_b, d->batch};
        else             /* dB (N,K) += alpha · dCᵀ (N,M) · op(A) (M,K) */
            g = (gemm_job){1, d->trans_a, d->n, d->k, d->m, d->alpha, 1.f, dc, d->ldc, d->stride_c,
                           a, d->lda, d->stride_a, db, d->ldb, d->stride_b, d->batch};
        MS_TRY(gemm_run_prec(dev, g));
    }
    return MS_OK;
}

static ms_status check_linear(int64_t M, int64_t K, int64_t N, const char *who)
{
    MS_FAIL_IF(M < 0 || K < 0 || N < 0, MS_EINVAL, "%s: negative size (M=%lld K=%lld N=%lld)", who, (long long)M,
               (long long)K, (long long)N);
    MS_FAIL_IF(M > INT32_MAX || K > INT32_MAX || N > INT32_MAX, MS_EINVAL, "%s: size exceeds the 32-bit BLAS interface",
               who);
    return MS_OK;
}

ms_status ms_linear_forward_cpu(ms_device *dev, float *y, const float *x, const float *w, const float *b, int64_t M,
                                int64_t K, int64_t N)
{
    MS_TRY(check_linear(M, K, N, "linear_forward"));
    int nt = ms_cpu_threads(dev);
    if (b) { /* y starts as the bias rows, then sgemm adds x·wᵀ with beta = 1 */
#pragma omp parallel for num_threads(nt) schedule(static) if (M * N >= MS_CPU_PAR_MIN)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) y[i * N + j] = b[j];
    }
    gemm_job g = {0, 1, M, N, K, 1.f, b ? 1.f : 0.f, x, K, 0, w, K, 0, y, N, 0, 1};
    return gemm_run_prec(dev, g);
}

ms_status ms_linear_backward_cpu(ms_device *dev, float *dx, float *dw, float *db, const float *dy, const float *x,
                                 const float *w, int64_t M, int64_t K, int64_t N)
{
    MS_TRY(check_linear(M, K, N, "linear_backward"));
    if (dx) { /* dX (M,K) += dY (M,N) · W (N,K) */
        gemm_job g = {0, 0, M, K, N, 1.f, 1.f, dy, N, 0, w, K, 0, dx, K, 0, 1};
        MS_TRY(gemm_run_prec(dev, g));
    }
    if (dw) { /* dW (N,K) += dYᵀ (N,M) · X (M,K) */
        gemm_job g = {1, 0, N, K, M, 1.f, 1.f, dy, N, 0, x, K, 0, dw, K, 0, 1};
        MS_TRY(gemm_run_prec(dev, g));
    }
    if (db && N > 0) { /* db += Σ_rows dY: one column block per thread, rows in order (deterministic) */
        int nt = ms_cpu_threads(dev);
        int64_t bw = ms_cpu_colblock(N, nt), nblk = (N + bw - 1) / bw;
#pragma omp parallel for num_threads(nt) schedule(static) if (M * N >= MS_CPU_PAR_MIN)
        for (int64_t blk = 0; blk < nblk; blk++) {
            double acc[MS_CPU_COLBLOCK_MAX] = {0};
            int64_t j0 = blk * bw, j1 = j0 + bw < N ? j0 + bw : N;
            for (int64_t i = 0; i < M; i++) {
                const float *r = dy + i * N;
                for (int64_t j = j0; j < j1; j++) acc[j - j0] += r[j];
            }
            for (int64_t j = j0; j < j1; j++) db[j] += (float)acc[j - j0];
        }
    }
    return MS_OK;
}
