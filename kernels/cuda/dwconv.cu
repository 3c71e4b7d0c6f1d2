/* kernels/cuda/dwconv.cu — depthwise 2-D convolution (contract: kernels/dwconv.h).
 * Forward: one thread an output. dx: one thread an input element, gathering the outputs its taps reach (no
 * atomics). dw / db: one block per (channel, tap) / channel, each thread summing a fixed stride of the B·Ho·Wo
 * products in double, then a fixed-order block sum: deterministic.
 */
#include "cuda_common.h"

__global__ static void dw_fwd(float *y, const float *x, const float *w, const float *b, int64_t B, int64_t C,
                              int64_t H, int64_t W, int ks, int pad, int st, int64_t Ho, int64_t Wo)
{
    MS_GRID_STRIDE(i, B * C * Ho * Wo) {
        int64_t ox = i % Wo, oy = (i / Wo) % Ho, p = i / (Wo * Ho), c = p % C;
        const float *xp = x + p * H * W, *wc = w + c * ks * ks;
        float acc = 0.f;
        for (int ky = 0; ky < ks; ky++) {
            int64_t iy = oy * st + ky - pad;
            if (iy < 0 || iy >= H) continue;
            for (int kx = 0; kx < ks; kx++) {
                int64_t ix = ox * st + kx - pad;
                if (ix >= 0 && ix < W) acc += wc[ky * ks + kx] * xp[iy * W + ix];
            }
        }
        y[i] = acc + (b ? b[c] : 0.f);
    }
}

__global__ static void dw_dx(float *dx, const float *dy, const float *w, int64_t B, int64_t C, int64_t H, int64_t W,
                             int ks, int pad, int st, int64_t Ho, int64_t Wo)
{
    MS_GRID_STRIDE(i, B * C * H * W) {
        int64_t ix = i % W, iy = (i / W) % H, p = i / (W * H), c = p % C;
        const float *dyp = dy + p * Ho * Wo, *wc = w + c * ks * ks;
        float s = 0.f;
        for (int ky = 0; ky < ks; ky++) {
            int64_t ty = iy + pad - ky, oy = ty / st;
            if (ty < 0 || ty % st || oy >= Ho) continue;
            for (int kx = 0; kx < ks; kx++) {
                int64_t tx = ix + pad - kx, ox = tx / st;
                if (tx < 0 || tx % st || ox >= Wo) continue;
                s += dyp[oy * Wo + ox] * wc[ky * ks + kx];
            }
        }
        dx[i] += s;
    }
}

/* grid (C, ks·ks + 1): tap k < ks·ks sums dy·x into dw[c, k]; k == ks·ks sums dy into db[c] */
__global__ static void dw_dwdb(float *dw, float *db, const float *dy, const float *x, int64_t B, int64_t C, int64_t H,
                               int64_t W, int ks, int pad, int st, int64_t Ho, int64_t Wo)
{
    __shared__ double sh[256];
    int64_t c = blockIdx.x;
    int k = blockIdx.y, ky = k / ks, kx = k % ks, bias = k == ks * ks;
    if ((bias && !db) || (!bias && !dw)) return;
    double s = 0;
    for (int64_t j = threadIdx.x; j < B * Ho * Wo; j += blockDim.x) {
        int64_t ox = j % Wo, oy = (j / Wo) % Ho, bi = j / (Wo * Ho);
        float g = dy[((bi * C + c) * Ho + oy) * Wo + ox];
        if (bias) { s += g; continue; }
        int64_t iy = oy * st + ky - pad, ix = ox * st + kx - pad;
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) s += (double)g * x[((bi * C + c) * H + iy) * W + ix];
    }
    s = ms_block_sum_d(s, sh);
    if (threadIdx.x == 0) {
        if (bias) db[c] += (float)s;
        else dw[c * ks * ks + k] += (float)s;
    }
}

static ms_status dw_check(const char *who, int64_t B, int64_t C, int64_t H, int64_t W, int ks, int pad, int s)
{
    MS_FAIL_IF(ks <= 0 || ks > 8 || pad < 0 || s <= 0 || B < 0 || C <= 0 || H + 2 * pad < ks || W + 2 * pad < ks,
               MS_EINVAL, "%s: bad shape (ks 1..8) B=%lld C=%lld H=%lld W=%lld ks=%d pad=%d stride=%d", who,
               (long long)B, (long long)C, (long long)H, (long long)W, ks, pad, s);
    return MS_OK;
}

extern "C" ms_status ms_dwconv2d_forward_cuda(ms_device *dev, float *y, const float *x, const float *w,
                                              const float *b, int64_t B, int64_t C, int64_t H, int64_t W, int ks,
                                              int pad, int stride)
{
    MS_CU_CTX(dev);
    MS_TRY(dw_check("dwconv2d_forward", B, C, H, W, ks, pad, stride));
    int64_t Ho = ms_conv_out_size(H, ks, pad, stride), Wo = ms_conv_out_size(W, ks, pad, stride);
    if (!B) return MS_OK;
    MS_FAIL_IF(!y || !x || !w, MS_EINVAL, "dwconv2d_forward: NULL argument");
    MS_LAUNCH(dw_fwd, B * C * Ho * Wo, y, x, w, b, B, C, H, W, ks, pad, stride, Ho, Wo);
    return MS_OK;
}

extern "C" ms_status ms_dwconv2d_backward_cuda(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                               const float *x, const float *w, int64_t B, int64_t C, int64_t H,
                                               int64_t W, int ks, int pad, int stride)
{
    MS_CU_CTX(dev);
    MS_TRY(dw_check("dwconv2d_backward", B, C, H, W, ks, pad, stride));
    int64_t Ho = ms_conv_out_size(H, ks, pad, stride), Wo = ms_conv_out_size(W, ks, pad, stride);
    if (!B) return MS_OK;
    MS_FAIL_IF(!dy || (dw && !x) || (dx && !w), MS_EINVAL, "dwconv2d_backward: NULL argument");
    if (dx) MS_LAUNCH(dw_dx, B * C * H * W, dx, dy, w, B, C, H, W, ks, pad, stride, Ho, Wo);
    if (dw || db) {
        MS_FAIL_IF(C > 2147483647LL, MS_EUNSUPPORTED, "dwconv2d_backward: C too large");
        dw_dwdb<<<dim3((unsigned)C, (unsigned)(ks * ks + 1)), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(
            dw, db, dy, x, B, C, H, W, ks, pad, stride, Ho, Wo);
        MS_CU_LAUNCHED();
    }
    return MS_OK;
}
