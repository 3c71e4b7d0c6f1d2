/* kernels/cpu/dwconv.c — depthwise 2-D convolution (contract: kernels/dwconv.h) as direct loops: a 3x3 depthwise
 * conv does 9 multiply-adds an output, too few for a GEMM to pay for its im2col.
 * Forward and dx: one (image, channel) plane per iteration, OpenMP over planes (each thread owns its planes of y /
 * dx). dw and db: one channel per iteration, summing its images in order, in double. Results are deterministic
 * and independent of the thread count.
 */
#include "dwconv.h"

#include "cpu/cpu_par.h"

static ms_status dw_check(const char *who, int64_t B, int64_t C, int64_t H, int64_t W, int ks, int pad, int s)
{
    MS_FAIL_IF(ks <= 0 || ks > 8 || pad < 0 || s <= 0 || B < 0 || C <= 0 || H + 2 * pad < ks || W + 2 * pad < ks,
               MS_EINVAL, "%s: bad shape (ks 1..8) B=%lld C=%lld H=%lld W=%lld ks=%d pad=%d stride=%d", who,
               (long long)B, (long long)C, (long long)H, (long long)W, ks, pad, s);
    return MS_OK;
}

ms_status ms_dwconv2d_forward_cpu(ms_device *dev, float *y, const float *x, const float *w, const float *b, int64_t B,
                                  int64_t C, int64_t H, int64_t W, int ks, int pad, int stride)
{
    MS_TRY(dw_check("dwconv2d_forward", B, C, H, W, ks, pad, stride));
    int64_t Ho = ms_conv_out_size(H, ks, pad, stride), Wo = ms_conv_out_size(W, ks, pad, stride);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (B * C * Ho * Wo * ks * ks >= MS_CPU_PAR_MIN)
    for (int64_t p = 0; p < B * C; p++) {
        const float *xp = x + p * H * W, *wc = w + (p % C) * ks * ks;
        float *yp = y + p * Ho * Wo, bias = b ? b[p % C] : 0.f;
        for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++) {
                float acc = 0.f;
                for (int ky = 0; ky < ks; ky++) {
                    int64_t iy = oy * stride + ky - pad;
                    if (iy < 0 || iy >= H) continue;
                    for (int kx = 0; kx < ks; kx++) {
                        int64_t ix = ox * stride + kx - pad;
                        if (ix >= 0 && ix < W) acc += wc[ky * ks + kx] * xp[iy * W + ix];
                    }
                }
                yp[oy * Wo + ox] = acc + bias;
            }
    }
    return MS_OK;
}

ms_status ms_dwconv2d_backward_cpu(ms_device *dev, float *dx, float *dw, float *db, const float *dy, const float *x,
                                   const float *w, int64_t B, int64_t C, int64_t H, int64_t W, int ks, int pad,
                                   int stride)
{
    MS_TRY(dw_check("dwconv2d_backward", B, C, H, W, ks, pad, stride));
    int64_t Ho = ms_conv_out_size(H, ks, pad, stride), Wo = ms_conv_out_size(W, ks, pad, stride);
    int nt = ms_cpu_threads(dev);
    int par = B * C * Ho * Wo * ks * ks >= MS_CPU_PAR_MIN;
    if (dx) {
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
        for (int64_t p = 0; p < B * C; p++) {
            const float *dyp = dy + p * Ho * Wo, *wc = w + (p % C) * ks * ks;
            float *dxp = dx + p * H * W;
            for (int64_t oy = 0; oy < Ho; oy++)
                for (int ky = 0; ky < ks; ky++) {
                    int64_t iy = oy * stride + ky - pad;
                    if (iy < 0 || iy >= H) continue;
                    for (int64_t ox = 0; ox < Wo; ox++) {
                        float g = dyp[oy * Wo + ox];
                        for (int kx = 0; kx < ks; kx++) {
                            int64_t ix = ox * stride + kx - pad;
                            if (ix >= 0 && ix < W) dxp[iy * W + ix] += g * wc[ky * ks + kx];
                        }
                    }
                }
        }
    }
    if (!dw && !db) return MS_OK;
    MS_FAIL_IF(dw && !x, MS_EINVAL, "dwconv2d_backward: dw needs x");
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
    for (int64_t c = 0; c < C; c++) {
        double sb = 0, sw[64] = {0}; /* ks·ks ≤ 64: dw_check */
        for (int64_t bi = 0; bi < B; bi++) {
            const float *dyp = dy + (bi * C + c) * Ho * Wo, *xp = x ? x + (bi * C + c) * H * W : NULL;
            for (int64_t oy = 0; oy < Ho; oy++)
                for (int64_t ox = 0; ox < Wo; ox++) {
                    double g = dyp[oy * Wo + ox];
                    sb += g;
                    if (!dw) continue;
                    for (int ky = 0; ky < ks; ky++) {
                        int64_t iy = oy * stride + ky - pad;
                        if (iy < 0 || iy >= H) continue;
                        for (int kx = 0; kx < ks; kx++) {
                            int64_t ix = ox * stride + kx - pad;
                            if (ix >= 0 && ix < W) sw[ky * ks + kx] += g * xp[iy * W + ix];
                        }
                    }
                }
        }
        if (db) db[c] += (float)sb;
        if (dw)
            for (int k = 0; k < ks * ks; k++) dw[c * ks * ks + k] += (float)sw[k];
    }
    return MS_OK;
}
