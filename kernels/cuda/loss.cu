/* kernels/cuda/loss.cu — MSE (row-weighted), soft Dice and cross-entropy with ignore (contract: kernels/loss.h;
 * the same formulas as kernels/cpu/loss.c). `loss` is one float in device memory, written by the last kernel.
 * Every sum is deterministic: fixed grids, per-thread double accumulators, fixed-order block trees, and one
 * final block adding the partials in index order. No host round trip (nothing here synchronises).
 * Labels are device data, so they are not validated here (the CPU backend fails on a label >= C): on the GPU a
 * label >= C matches no class in Dice and is ignored like a negative one in cross-entropy.
 */
#include "cuda_common.h"

#define NB 256 /* fixed number of partial-sum blocks */

__global__ static void mse_part(double *part, const float *pred, const float *target, const float *w, int64_t rows,
                                int64_t cols)
{
    __shared__ double sh[256];
    double s = 0, ws = 0;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        double wr = w ? w[r] : 1.0;
        double e = 0;
        if (wr != 0)
            for (int64_t c = threadIdx.x; c < cols; c += 256) {
                double d = (double)pred[r * cols + c] - target[r * cols + c];
                e += d * d;
            }
        s += wr * e / (double)cols;
        if (threadIdx.x == 0) ws += wr;
    }
    s = ms_block_sum_d(s, sh);
    ws = ms_block_sum_d(ws, sh);
    if (threadIdx.x == 0) { part[blockIdx.x] = s; part[NB + blockIdx.x] = ws; }
}
/* out[k] = Σ_i part[k·NB + i] for k < n_sums */
__global__ static void sum_parts(double *out, const double *part, int n_sums)
{
    __shared__ double sh[256];
    for (int k = 0; k < n_sums; k++) {
        double v = ms_block_sum_d(part[k * NB + threadIdx.x], sh);
        if (threadIdx.x == 0) out[k] = v;
    }
}
__global__ static void mse_final(float *loss, const double *sums)
{
    *loss = sums[1] != 0 ? (float)(sums[0] / sums[1]) : 0.f;
}
__global__ static void wsum_k(double *out, const float *w, int64_t rows)
{
    __shared__ double sh[256];
    double s = 0;
    for (int64_t r = threadIdx.x; r < rows; r += 256) s += w ? (double)w[r] : 1.0;
    s = ms_block_sum_d(s, sh);
    if (threadIdx.x == 0) *out = s;
}
__global__ static void mse_bwd(float *dpred, float dloss, const double *ws, const float *pred, const float *target,
                               const float *w, int64_t rows, int64_t cols)
{
    double wsum = *ws;
    if (wsum == 0) return;
    double coef = 2.0 * dloss / ((double)cols * wsum);
    MS_GRID_STRIDE(i, rows * cols) {
        int64_t r = i / cols;
        float k = (float)(coef * (w ? w[r] : 1.0));
        if (k != 0.f) dpred[i] += k * (pred[i] - target[i]);
    }
}

/* one block per (b,c): st = {Σ p·y, Σ p², Σ y²} */
__global__ static void dice_stats(double *st, const float *logits, const int32_t *target, int64_t C, int64_t P)
{
    __shared__ double sh[256];
    int64_t bc = blockIdx.x, b = bc / C, c = bc % C;
    const float *l = logits + bc * P;
    const int32_t *tg = target + b * P;
    double i_ = 0, sp = 0, sy = 0;
    for (int64_t p = threadIdx.x; p < P; p += 256) {
        double pr = 1.0 / (1.0 + exp(-(double)l[p]));
        sp += pr * pr;
        if (tg[p] == c) { i_ += pr; sy += 1; }
    }
    i_ = ms_block_sum_d(i_, sh);
    sp = ms_block_sum_d(sp, sh);
    sy = ms_block_sum_d(sy, sh);
    if (threadIdx.x == 0) { st[3 * bc] = i_; st[3 * bc + 1] = sp; st[3 * bc + 2] = sy; }
}
__global__ static void dice_final(float *loss, const double *st, int64_t BC, float smooth)
{
    __shared__ double sh[256];
    double s = 0;
    for (int64_t bc = threadIdx.x; bc < BC; bc += 256)
        s += 1.0 - (2.0 * st[3 * bc] + smooth) / (st[3 * bc + 1] + st[3 * bc + 2] + smooth);
    s = ms_block_sum_d(s, sh);
    if (threadIdx.x == 0) *loss = (float)(s / (double)BC);
}
__global__ static void dice_bwd(float *dlogits, const double *st, const float *logits, const int32_t *target,
                                int64_t C, int64_t P, double scale, float smooth, int64_t n)
{
    MS_GRID_STRIDE(i, n) {
        int64_t bc = i / P, p = i % P, b = bc / C, c = bc % C;
        double num = 2.0 * st[3 * bc] + smooth, den = st[3 * bc + 1] + st[3 * bc + 2] + smooth;
        double a = scale * 2.0 * num / (den * den), k = scale * 2.0 / den;
        double pr = 1.0 / (1.0 + exp(-(double)logits[i]));
        dlogits[i] += (float)((a * pr - (target[b * P + p] == c ? k : 0.0)) * pr * (1.0 - pr));
    }
}

__device__ static inline double pixel_lse(const float *l, int64_t C, int64_t P)
{
    float mx = -INFINITY;
    for (int64_t c = 0; c < C; c++) mx = fmaxf(mx, l[c * P]);
    double s = 0;
    for (int64_t c = 0; c < C; c++) s += exp((double)l[c * P] - mx);
    return mx + log(s);
}
__global__ static void ce_part(double *part, const float *logits, const int32_t *target, int64_t C, int64_t P,
                               int64_t npix)
{
    __shared__ double sh[256];
    double s = 0, cnt = 0;
    MS_GRID_STRIDE(q, npix) {
        int32_t t = target[q];
        if (t < 0 || t >= C) continue;
        const float *l = logits + (q / P) * C * P + q % P;
        s += pixel_lse(l, C, P) - l[(int64_t)t * P];
        cnt += 1;
    }
    s = ms_block_sum_d(s, sh);
    cnt = ms_block_sum_d(cnt, sh);
    if (threadIdx.x == 0) { part[blockIdx.x] = s; part[NB + blockIdx.x] = cnt; }
}
__global__ static void ce_final(float *loss, const double *sums)
{
    *loss = sums[1] > 0 ? (float)(sums[0] / sums[1]) : 0.f;
}
__global__ static void ce_bwd(float *dlogits, float dloss, const double *sums, const float *logits,
                              const int32_t *target, int64_t C, int64_t P, int64_t npix)
{
    double nv = sums[1];
    if (nv <= 0) return;
    double scale = (double)dloss / nv;
    MS_GRID_STRIDE(q, npix) {
        int32_t t = target[q];
        if (t < 0 || t >= C) continue;
        int64_t off = (q / P) * C * P + q % P;
        const float *l = logits + off;
        double lse = pixel_lse(l, C, P);
        for (int64_t c = 0; c < C; c++)
            dlogits[off + c * P] += (float)(scale * (exp((double)l[c * P] - lse) - (c == t ? 1.0 : 0.0)));
    }
}

extern "C" ms_status ms_mse_loss_forward_cuda(ms_device *dev, float *loss, const float *pred, const float *target,
                                              const float *w, int64_t rows, int64_t cols)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(rows < 0 || cols < 0 || (rows > 0 && cols == 0), MS_EINVAL, "mse_loss_forward: bad size %lld x %lld",
               (long long)rows, (long long)cols);
    MS_FAIL_IF(!loss || (rows && (!pred || !target)), MS_EINVAL, "mse_loss_forward: NULL argument");
    cudaStream_t s = ms_cuda_ctx_of(dev)->stream;
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (2 * NB + 2) * sizeof(double), &p));
    double *part = (double *)p;
    mse_part<<<NB, 256, 0, s>>>(part, pred, target, w, rows, cols);
    MS_CU_LAUNCHED();
    sum_parts<<<1, 256, 0, s>>>(part + 2 * NB, part, 2);
    MS_CU_LAUNCHED();
    mse_final<<<1, 1, 0, s>>>(loss, part + 2 * NB);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_mse_loss_backward_cuda(ms_device *dev, float *dpred, float dloss, const float *pred,
                                               const float *target, const float *w, int64_t rows, int64_t cols)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(rows < 0 || cols < 0 || (rows > 0 && cols == 0), MS_EINVAL, "mse_loss_backward: bad size %lld x %lld",
               (long long)rows, (long long)cols);
    if (!dpred || !rows) return MS_OK;
    MS_FAIL_IF(!pred || !target, MS_EINVAL, "mse_loss_backward: NULL argument");
    cudaStream_t s = ms_cuda_ctx_of(dev)->stream;
    void *p;
    MS_TRY(ms_cuda_scratch(dev, sizeof(double), &p));
    wsum_k<<<1, 256, 0, s>>>((double *)p, w, rows);
    MS_CU_LAUNCHED();
    mse_bwd<<<ms_cu_blocks(rows * cols, 256), 256, 0, s>>>(dpred, dloss, (const double *)p, pred, target, w, rows,
                                                            cols);
    MS_CU_LAUNCHED();
    return MS_OK;
}

static ms_status dice_check(const char *who, const float *logits, const int32_t *target, int64_t B, int64_t C,
                            int64_t P)
{
    MS_FAIL_IF(B < 0 || C < 0 || P < 0, MS_EINVAL, "%s: negative size", who);
    MS_FAIL_IF(B * C * P > 0 && (!logits || !target), MS_EINVAL, "%s: NULL logits or target", who);
    MS_FAIL_IF(B * C > 2147483647LL, MS_EUNSUPPORTED, "%s: B·C too large", who);
    return MS_OK;
}
extern "C" ms_status ms_dice_loss_forward_cuda(ms_device *dev, float *loss, const float *logits,
                                               const int32_t *target, int64_t B, int64_t C, int64_t P, float smooth)
{
    MS_CU_CTX(dev);
    MS_TRY(dice_check("dice_loss_forward", logits, target, B, C, P));
    MS_FAIL_IF(!loss, MS_EINVAL, "dice_loss_forward: NULL loss");
    cudaStream_t s = ms_cuda_ctx_of(dev)->stream;
    if (B * C == 0) {
        MS_CU(cudaMemsetAsync(loss, 0, sizeof(float), s));
        return MS_OK;
    }
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(3 * B * C) * sizeof(double), &p));
    dice_stats<<<(unsigned)(B * C), 256, 0, s>>>((double *)p, logits, target, C, P);
    MS_CU_LAUNCHED();
    dice_final<<<1, 256, 0, s>>>(loss, (const double *)p, B * C, smooth);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_dice_loss_backward_cuda(ms_device *dev, float *dlogits, float dloss, const float *logits,
                                                const int32_t *target, int64_t B, int64_t C, int64_t P, float smooth)
{
    MS_CU_CTX(dev);
    MS_TRY(dice_check("dice_loss_backward", logits, target, B, C, P));
    if (!dlogits || B * C * P == 0) return MS_OK;
    cudaStream_t s = ms_cuda_ctx_of(dev)->stream;
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(3 * B * C) * sizeof(double), &p));
    dice_stats<<<(unsigned)(B * C), 256, 0, s>>>((double *)p, logits, target, C, P);
    MS_CU_LAUNCHED();
    double scale = (double)dloss / (double)(B * C);
    dice_bwd<<<ms_cu_blocks(B * C * P, 256), 256, 0, s>>>(dlogits, (const double *)p, logits, target, C, P, scale,
                                                          smooth, B * C * P);
    MS_CU_LAUNCHED();
    return MS_OK;
}

static ms_status ce_check(const char *who, const float *logits, const int32_t *target, int64_t B, int64_t C, int64_t P)
{
    MS_FAIL_IF(B < 0 || C < 0 || P < 0, MS_EINVAL, "%s: negative size", who);
    MS_FAIL_IF(B * P > 0 && (!logits || !target), MS_EINVAL, "%s: NULL logits or target", who);
    return MS_OK;
}
static ms_status ce_sums(ms_device *dev, double **sums, const float *logits, const int32_t *target, int64_t B,
                         int64_t C, int64_t P)
{
    cudaStream_t s = ms_cuda_ctx_of(dev)->stream;
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (2 * NB + 2) * sizeof(double), &p));
    double *part = (double *)p;
    ce_part<<<NB, 256, 0, s>>>(part, logits, target, C, P, B * P);
    MS_CU_LAUNCHED();
    sum_parts<<<1, 256, 0, s>>>(part + 2 * NB, part, 2);
    MS_CU_LAUNCHED();
    *sums = part + 2 * NB;
    return MS_OK;
}
extern "C" ms_status ms_cross_entropy_forward_cuda(ms_device *dev, float *loss, const float *logits,
                                                   const int32_t *target, int64_t B, int64_t C, int64_t P)
{
    MS_CU_CTX(dev);
    MS_TRY(ce_check("cross_entropy_forward", logits, target, B, C, P));
    MS_FAIL_IF(!loss, MS_EINVAL, "cross_entropy_forward: NULL loss");
    double *sums;
    MS_TRY(ce_sums(dev, &sums, logits, target, B, C, P));
    ce_final<<<1, 1, 0, ms_cuda_ctx_of(dev)->stream>>>(loss, sums);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_cross_entropy_backward_cuda(ms_device *dev, float *dlogits, float dloss, const float *logits,
                                                    const int32_t *target, int64_t B, int64_t C, int64_t P)
{
    MS_CU_CTX(dev);
    MS_TRY(ce_check("cross_entropy_backward", logits, target, B, C, P));
    if (!dlogits || B * P == 0) return MS_OK;
    double *sums;
    MS_TRY(ce_sums(dev, &sums, logits, target, B, C, P));
    ce_bwd<<<ms_cu_blocks(B * P, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(dlogits, dloss, sums, logits, target,
                                                                             C, P, B * P);
    MS_CU_LAUNCHED();
    return MS_OK;
}
