/* kernels/cuda/conv.cu — SAM's convolutions as cuBLAS GEMMs around gather kernels (contract: kernels/conv.h).
 *
 * conv_patch: patches P (B·Ho·Wo, Cin·k·k), column order (c, ky, kx) = w's, so y_nhwc = P·wᵀ (+ b); NCHW output
 *   goes through a per-image transpose. Backward: dP = dy·w scattered back (patches do not overlap), dw += dyᵀ·P.
 * conv2d: im2col per image, col_b (Ho·Wo, Cin·ks·ks); y_b = w·col_bᵀ, batched over a chunk of images whose
 *   columns fit SCRATCH_MAX; backward dw += dy_b·col_b (sequential per image: no atomics), dcol_b = dy_bᵀ·w,
 *   col2im as a gather into dx (each dx element sums its ks² taps in a fixed order).
 * conv_transpose2x2: Z_b = wᵀ·x_b (w viewed as (Cin, Cout·4)), then y gathers Z; backward gathers dZ from dy.
 * Bias gradients: one block per output channel, fixed-order tree. Everything is deterministic.
 * Scratch: each entry point asks for scratch once, after any helper that itself uses scratch (colsum).
 */
#include "cuda_common.h"

#define SCRATCH_MAX ((int64_t)64 << 20) /* floats of im2col per chunk (256 MB) */

/* ---- kernels ------------------------------------------------------------------------------------------------ */
__global__ static void patch_im2col(float *P, const float *x, int64_t B, int64_t Cin, int64_t H, int64_t W, int k)
{
    int64_t Ho = H / k, Wo = W / k, Kc = Cin * k * k;
    MS_GRID_STRIDE(i, B * Ho * Wo * Kc) {
        int64_t col = i % Kc, row = i / Kc;
        int64_t kx = col % k, ky = (col / k) % k, c = col / (k * k);
        int64_t px = row % Wo, py = (row / Wo) % Ho, b = row / (Wo * Ho);
        P[i] = x[((b * Cin + c) * H + py * k + ky) * W + px * k + kx];
    }
}
__global__ static void patch_col2im(float *dx, const float *dP, int64_t B, int64_t Cin, int64_t H, int64_t W, int k)
{
    int64_t Ho = H / k, Wo = W / k, Kc = Cin * k * k;
    MS_GRID_STRIDE(i, B * Cin * H * W) {
        int64_t w = i % W, h = (i / W) % H, c = (i / (W * H)) % Cin, b = i / (W * H * Cin);
        int64_t row = (b * Ho + h / k) * Wo + w / k, col = (c * k + h % k) * k + w % k;
        dx[i] += dP[row * Kc + col];
    }
}
__global__ static void fill_rows(float *y, const float *b, int64_t rows, int64_t n)
{
    MS_GRID_STRIDE(i, rows * n) y[i] = b[i % n];
}
__global__ static void fill_chan(float *y, const float *b, int64_t B, int64_t C, int64_t HW)
{
    MS_GRID_STRIDE(i, B * C * HW) y[i] = b ? b[(i / HW) % C] : 0.f;
}
/* db[o] += Σ_b Σ_p dy[b,o,p] (NCHW) */
__global__ static void bias_grad_nchw(float *db, const float *dy, int64_t B, int64_t C, int64_t HW)
{
    __shared__ float sh[256];
    int64_t o = blockIdx.x;
    float s = 0.f;
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = threadIdx.x; p < HW; p += 256) s += dy[(b * C + o) * HW + p];
    s = ms_block_sum_f(s, sh);
    if (threadIdx.x == 0) db[o] += s;
}
/* col (nb·Ho·Wo, Cin·ks·ks) of images b0 .. b0+nb */
__global__ static void conv_im2col(float *col, const float *x, int64_t nb, int64_t Cin, int64_t H, int64_t W, int ks,
                                   int pad, int st, int64_t Ho, int64_t Wo)
{
    int64_t Kc = Cin * ks * ks;
    MS_GRID_STRIDE(i, nb * Ho * Wo * Kc) {
        int64_t cc = i % Kc, row = i / Kc;
        int64_t kx = cc % ks, ky = (cc / ks) % ks, c = cc / (ks * ks);
        int64_t ox = row % Wo, oy = (row / Wo) % Ho, b = row / (Wo * Ho);
        int64_t h = oy * st + ky - pad, w = ox * st + kx - pad;
        col[i] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((b * Cin + c) * H + h) * W + w] : 0.f;
    }
}
__global__ static void conv_col2im(float *dx, const float *dcol, int64_t nb, int64_t Cin, int64_t H, int64_t W, int ks,
                                   int pad, int st, int64_t Ho, int64_t Wo)
{
    int64_t Kc = Cin * ks * ks;
    MS_GRID_STRIDE(i, nb * Cin * H * W) {
        int64_t w = i % W, h = (i / W) % H, c = (i / (W * H)) % Cin, b = i / (W * H * Cin);
        float s = 0.f;
        for (int ky = 0; ky < ks; ky++) {
            int64_t ty = h + pad - ky, oy = ty / st;
            if (ty < 0 || ty % st || oy >= Ho) continue;
            for (int kx = 0; kx < ks; kx++) {
                int64_t tx = w + pad - kx, ox = tx / st;
                if (tx < 0 || tx % st || ox >= Wo) continue;
                s += dcol[((b * Ho + oy) * Wo + ox) * Kc + (c * ks + ky) * ks + kx];
            }
        }
        dx[i] += s;
    }
}
/* y[b,o,2i+di,2j+dj] = bias[o] + Z[b, o·4+di·2+dj, i·W+j] */
__global__ static void ct_scatter(float *y, const float *Z, const float *bias, int64_t B, int64_t Cout, int64_t H,
                                  int64_t W)
{
    int64_t W2 = 2 * W, H2 = 2 * H;
    MS_GRID_STRIDE(i, B * Cout * H2 * W2) {
        int64_t x2 = i % W2, y2 = (i / W2) % H2, o = (i / (W2 * H2)) % Cout, b = i / (W2 * H2 * Cout);
        int64_t zr = o * 4 + (y2 & 1) * 2 + (x2 & 1);
        y[i] = (bias ? bias[o] : 0.f) + Z[(b * Cout * 4 + zr) * H * W + (y2 >> 1) * W + (x2 >> 1)];
    }
}
__global__ static void ct_gather(float *dZ, const float *dy, int64_t B, int64_t Cout, int64_t H, int64_t W)
{
    MS_GRID_STRIDE(i, B * Cout * 4 * H * W) {
        int64_t p = i % (H * W), zr = (i / (H * W)) % (Cout * 4), b = i / (H * W * Cout * 4);
        int64_t o = zr / 4, di = (zr / 2) & 1, dj = zr & 1, ii = p / W, jj = p % W;
        dZ[i] = dy[((b * Cout + o) * 2 * H + 2 * ii + di) * 2 * W + 2 * jj + dj];
    }
}

/* ---- conv_patch --------------------------------------------------------------------------------------------- */
static ms_status patch_check(const char *who, int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int k)
{
    MS_FAIL_IF(k <= 0 || B < 0 || Cin <= 0 || Cout <= 0 || H < 0 || W < 0 || H % k || W % k, MS_EINVAL,
               "%s: bad sizes B=%lld Cin=%lld H=%lld W=%lld Cout=%lld k=%d (H, W must be multiples of k)", who,
               (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Cout, k);
    return MS_OK;
}

extern "C" ms_status ms_conv_patch_forward_cuda(ms_device *dev, float *y, const float *x, const float *w,
                                                const float *b, int64_t B, int64_t Cin, int64_t H, int64_t W,
                                                int64_t Cout, int k, int nhwc_out)
{
    MS_CU_CTX(dev);
    MS_TRY(patch_check("conv_patch_forward", B, Cin, H, W, Cout, k));
    int64_t HWo = (H / k) * (W / k), rows = B * HWo, Kc = Cin * k * k;
    if (!rows) return MS_OK;
    MS_FAIL_IF(!y || !x || !w, MS_EINVAL, "conv_patch_forward: NULL argument");
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(rows * Kc + (nhwc_out ? 0 : rows * Cout)) * sizeof(float), &p));
    float *P = (float *)p, *t = nhwc_out ? y : P + rows * Kc;
    MS_LAUNCH(patch_im2col, rows * Kc, P, x, B, Cin, H, W, k);
    if (b) MS_LAUNCH(fill_rows, rows * Cout, t, b, rows, Cout);
    MS_TRY(ms_cuda_gemm(dev, 0, 1, rows, Cout, Kc, 1.f, P, Kc, 0, w, Kc, 0, b ? 1.f : 0.f, t, Cout, 0, 1));
    if (!nhwc_out) MS_TRY(ms_transpose_forward_cuda(dev, y, t, B, HWo, Cout)); /* (B,HWo,Cout) → (B,Cout,HWo) */
    return MS_OK;
}

struct patch_db_term {
    const float *dy;
    int64_t HWo, Cout;
    int nhwc;
    __device__ float operator()(int64_t, int64_t r, int64_t c) const
    {
        return nhwc ? dy[r * Cout + c] : dy[((r / HWo) * Cout + c) * HWo + r % HWo];
    }
};

extern "C" ms_status ms_conv_patch_backward_cuda(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                                 const float *x, const float *w, int64_t B, int64_t Cin, int64_t H,
                                                 int64_t W, int64_t Cout, int k, int nhwc_out)
{
    MS_CU_CTX(dev);
    MS_TRY(patch_check("conv_patch_backward", B, Cin, H, W, Cout, k));
    int64_t HWo = (H / k) * (W / k), rows = B * HWo, Kc = Cin * k * k;
    if (!rows || (!dx && !dw && !db)) return MS_OK;
    MS_FAIL_IF(!dy || (dw && !x) || (dx && !w), MS_EINVAL, "conv_patch_backward: NULL argument");
    if (db) MS_TRY(ms_colsum(dev, db, patch_db_term{dy, HWo, Cout, nhwc_out}, 1, rows, Cout, 1)); /* before scratch */
    if (!dx && !dw) return MS_OK;
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(rows * Kc + (nhwc_out ? 0 : rows * Cout)) * sizeof(float), &p));
    float *P = (float *)p;
    const float *g = dy;
    if (!nhwc_out) {
        float *t = P + rows * Kc;
        MS_TRY(ms_transpose_forward_cuda(dev, t, dy, B, Cout, HWo)); /* (B,Cout,HWo) → (B,HWo,Cout) */
        g = t;
    }
    if (dw) {
        MS_LAUNCH(patch_im2col, rows * Kc, P, x, B, Cin, H, W, k);
        MS_TRY(ms_cuda_gemm(dev, 1, 0, Cout, Kc, rows, 1.f, g, Cout, 0, P, Kc, 0, 1.f, dw, Kc, 0, 1)); /* dyᵀ·P */
    }
    if (dx) {
        MS_TRY(ms_cuda_gemm(dev, 0, 0, rows, Kc, Cout, 1.f, g, Cout, 0, w, Kc, 0, 0.f, P, Kc, 0, 1)); /* dP = dy·w */
        MS_LAUNCH(patch_col2im, B * Cin * H * W, dx, P, B, Cin, H, W, k);
    }
    return MS_OK;
}

/* ---- conv2d ------------------------------------------------------------------------------------------------- */
static ms_status conv_check(const char *who, int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int ks,
                            int pad, int st)
{
    MS_FAIL_IF(ks <= 0 || pad < 0 || st <= 0 || B < 0 || Cin <= 0 || Cout <= 0 || H + 2 * pad < ks ||
                   W + 2 * pad < ks,
               MS_EINVAL, "%s: bad sizes B=%lld Cin=%lld H=%lld W=%lld Cout=%lld ks=%d pad=%d stride=%d", who,
               (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Cout, ks, pad, st);
    return MS_OK;
}
static int64_t chunk_images(int64_t B, int64_t per_image)
{
    int64_t nb = per_image > 0 ? SCRATCH_MAX / per_image : B;
    if (nb < 1) nb = 1;
    return nb > B ? B : nb;
}

extern "C" ms_status ms_conv2d_forward_cuda(ms_device *dev, float *y, const float *x, const float *w, const float *b,
                                            int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int ks, int pad,
                                            int stride)
{
    MS_CU_CTX(dev);
    MS_TRY(conv_check("conv2d_forward", B, Cin, H, W, Cout, ks, pad, stride));
    int64_t Ho = (H + 2 * pad - ks) / stride + 1, Wo = (W + 2 * pad - ks) / stride + 1, HWo = Ho * Wo;
    int64_t Kc = Cin * ks * ks;
    if (!B || !HWo) return MS_OK;
    MS_FAIL_IF(!y || !x || !w, MS_EINVAL, "conv2d_forward: NULL argument");
    int64_t nb = chunk_images(B, HWo * Kc);
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(nb * HWo * Kc) * sizeof(float), &p));
    float *col = (float *)p;
    if (b) MS_LAUNCH(fill_chan, B * Cout * HWo, y, b, B, Cout, HWo);
    for (int64_t b0 = 0; b0 < B; b0 += nb) {
        int64_t n = B - b0 < nb ? B - b0 : nb;
        MS_LAUNCH(conv_im2col, n * HWo * Kc, col, x + b0 * Cin * H * W, n, Cin, H, W, ks, pad, stride, Ho, Wo);
        /* y_b (Cout, HWo) = w (Cout, Kc) · col_bᵀ */
        MS_TRY(ms_cuda_gemm(dev, 0, 1, Cout, HWo, Kc, 1.f, w, Kc, 0, col, Kc, HWo * Kc, b ? 1.f : 0.f,
                            y + b0 * Cout * HWo, HWo, Cout * HWo, n));
    }
    return MS_OK;
}

extern "C" ms_status ms_conv2d_backward_cuda(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                             const float *x, const float *w, int64_t B, int64_t Cin, int64_t H,
                                             int64_t W, int64_t Cout, int ks, int pad, int stride)
{
    MS_CU_CTX(dev);
    MS_TRY(conv_check("conv2d_backward", B, Cin, H, W, Cout, ks, pad, stride));
    int64_t Ho = (H + 2 * pad - ks) / stride + 1, Wo = (W + 2 * pad - ks) / stride + 1, HWo = Ho * Wo;
    int64_t Kc = Cin * ks * ks;
    if (!B || !HWo || (!dx && !dw && !db)) return MS_OK;
    MS_FAIL_IF(!dy || (dw && !x) || (dx && !w), MS_EINVAL, "conv2d_backward: NULL argument");
    if (db) {
        MS_FAIL_IF(Cout > 2147483647LL, MS_EUNSUPPORTED, "conv2d_backward: Cout too large");
        bias_grad_nchw<<<(unsigned)Cout, 256, 0, ms_cuda_ctx_of(dev)->stream>>>(db, dy, B, Cout, HWo);
        MS_CU_LAUNCHED();
    }
    if (!dx && !dw) return MS_OK;
    int64_t nb = chunk_images(B, HWo * Kc);
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(nb * HWo * Kc) * sizeof(float), &p));
    float *col = (float *)p;
    for (int64_t b0 = 0; b0 < B; b0 += nb) {
        int64_t n = B - b0 < nb ? B - b0 : nb;
        const float *dyc = dy + b0 * Cout * HWo;
        if (dw) {
            MS_LAUNCH(conv_im2col, n * HWo * Kc, col, x + b0 * Cin * H * W, n, Cin, H, W, ks, pad, stride, Ho, Wo);
            for (int64_t i = 0; i < n; i++) /* dw (Cout, Kc) += dy_b (Cout, HWo) · col_b (HWo, Kc), in image order */
                MS_TRY(ms_cuda_gemm(dev, 0, 0, Cout, Kc, HWo, 1.f, dyc + i * Cout * HWo, HWo, 0, col + i * HWo * Kc,
                                    Kc, 0, 1.f, dw, Kc, 0, 1));
        }
        if (dx) {
            /* dcol_b (HWo, Kc) = dy_bᵀ · w, then gather into dx */
            MS_TRY(ms_cuda_gemm(dev, 1, 0, HWo, Kc, Cout, 1.f, dyc, HWo, Cout * HWo, w, Kc, 0, 0.f, col, Kc,
                                HWo * Kc, n));
            MS_LAUNCH(conv_col2im, n * Cin * H * W, dx + b0 * Cin * H * W, col, n, Cin, H, W, ks, pad, stride, Ho, Wo);
        }
    }
    return MS_OK;
}

/* ---- conv_transpose2x2 -------------------------------------------------------------------------------------- */
static ms_status ct_check(const char *who, int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout)
{
    MS_FAIL_IF(B < 0 || Cin <= 0 || Cout <= 0 || H < 0 || W < 0, MS_EINVAL,
               "%s: bad sizes B=%lld Cin=%lld H=%lld W=%lld Cout=%lld", who, (long long)B, (long long)Cin,
               (long long)H, (long long)W, (long long)Cout);
    return MS_OK;
}

extern "C" ms_status ms_conv_transpose2x2_forward_cuda(ms_device *dev, float *y, const float *x, const float *w,
                                                       const float *b, int64_t B, int64_t Cin, int64_t H, int64_t W,
                                                       int64_t Cout)
{
    MS_CU_CTX(dev);
    MS_TRY(ct_check("conv_transpose2x2_forward", B, Cin, H, W, Cout));
    int64_t HW = H * W, C4 = 4 * Cout;
    if (!B || !HW) return MS_OK;
    MS_FAIL_IF(!y || !x || !w, MS_EINVAL, "conv_transpose2x2_forward: NULL argument");
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(B * C4 * HW) * sizeof(float), &p));
    float *Z = (float *)p;
    /* Z_b (4Cout, HW) = wᵀ (4Cout, Cin) · x_b (Cin, HW) */
    MS_TRY(ms_cuda_gemm(dev, 1, 0, C4, HW, Cin, 1.f, w, C4, 0, x, HW, Cin * HW, 0.f, Z, HW, C4 * HW, B));
    MS_LAUNCH(ct_scatter, B * Cout * 4 * HW, y, Z, b, B, Cout, H, W);
    return MS_OK;
}

extern "C" ms_status ms_conv_transpose2x2_backward_cuda(ms_device *dev, float *dx, float *dw, float *db,
                                                        const float *dy, const float *x, const float *w, int64_t B,
                                                        int64_t Cin, int64_t H, int64_t W, int64_t Cout)
{
    MS_CU_CTX(dev);
    MS_TRY(ct_check("conv_transpose2x2_backward", B, Cin, H, W, Cout));
    int64_t HW = H * W, C4 = 4 * Cout;
    if (!B || !HW || (!dx && !dw && !db)) return MS_OK;
    MS_FAIL_IF(!dy || (dw && !x) || (dx && !w), MS_EINVAL, "conv_transpose2x2_backward: NULL argument");
    if (db) {
        MS_FAIL_IF(Cout > 2147483647LL, MS_EUNSUPPORTED, "conv_transpose2x2_backward: Cout too large");
        bias_grad_nchw<<<(unsigned)Cout, 256, 0, ms_cuda_ctx_of(dev)->stream>>>(db, dy, B, Cout, 4 * HW);
        MS_CU_LAUNCHED();
    }
    if (!dx && !dw) return MS_OK;
    void *p;
    MS_TRY(ms_cuda_scratch(dev, (size_t)(B * C4 * HW) * sizeof(float), &p));
    float *dZ = (float *)p;
    MS_LAUNCH(ct_gather, B * C4 * HW, dZ, dy, B, Cout, H, W);
    if (dx) /* dx_b (Cin, HW) += w (Cin, 4Cout) · dZ_b */
        MS_TRY(ms_cuda_gemm(dev, 0, 0, Cin, HW, C4, 1.f, w, C4, 0, dZ, HW, C4 * HW, 1.f, dx, HW, Cin * HW, B));
    if (dw) /* dw (Cin, 4Cout) += x_b · dZ_bᵀ, image by image */
        for (int64_t i = 0; i < B; i++)
            MS_TRY(ms_cuda_gemm(dev, 0, 1, Cin, C4, HW, 1.f, x + i * Cin * HW, HW, 0, dZ + i * C4 * HW, HW, 0, 1.f, dw,
                                C4, 0, 1));
    return MS_OK;
}
