/* kernels/cpu/conv.c — SAM's convolutions (conv.h) as GEMMs on OpenBLAS, NCHW, PyTorch weight layouts.
 *
 * conv_patch (kernel = stride = k): the patches form a matrix P (B·Ho·Wo, Cin·k·k) whose column order
 *   (c, ky, kx) matches w (Cout, Cin·k·k), so y = P·wᵀ is already the NHWC token layout; NCHW output is
 *   w·P_bᵀ per image. Patches do not overlap, so dx is a plain scatter of dP = dy·w.
 * conv2d (stride, padding pad): im2col per image, col (Cin·ks·ks, Ho·Wo), y_b = w·col_b (+ b); a 1x1 conv
 *   with stride 1 and no padding uses x itself as col. Backward: dw += dy_b·col_bᵀ, dcol = wᵀ·dy_b, col2im into dx.
 * conv_transpose2x2: Z_b = wᵀ·x_b with w viewed as (Cin, Cout·4), then Z's rows (o, di, dj) are scattered to
 *   y[o, 2i+di, 2j+dj]; backward gathers dZ from dy and runs the two transposed GEMMs.
 * The GEMMs run at top level, so OpenBLAS uses its own thread pool (the device's n_threads, set by
 * ms_device_init); the gather/scatter loops are OpenMP over disjoint outputs, so results are deterministic.
 * Backward accumulates into dx, dw, db and skips NULL ones.
 */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "conv.h"

static ms_status xalloc(float **p, size_t n, const char *what)
{
    *p = malloc((n ? n : 1) * sizeof(float));
    MS_FAIL_IF(!*p, MS_ENOMEM, "%s: out of memory for %zu floats", what, n);
    return MS_OK;
}

/* db[o] += Σ over the n values of channel o; nhwc: dy is (N, Cout), else (B, Cout, HW). */
static void bias_grad(ms_device *dev, float *db, const float *dy, int64_t B, int64_t Cout, int64_t HW, int nhwc)
{
    #pragma omp parallel for schedule(static) num_threads(dev->n_threads)
    for (int64_t o = 0; o < Cout; o++) {
        double s = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < HW; i++) s += nhwc ? dy[(b * HW + i) * Cout + o] : dy[(b * Cout + o) * HW + i];
        db[o] += (float)s;
    }
}

/* ---- conv_patch -------------------------------------------------------------------------------------- */

/* P[(b,py,px), (c,ky,kx)] = x[b, c, py·k+ky, px·k+kx]; dir 1 scatters P back into x with +=. */
static void patches(ms_device *dev, float *P, float *x, int64_t B, int64_t Cin, int64_t H, int64_t W, int k, int dir)
{
    int64_t Ho = H / k, Wo = W / k, K = Cin * k * k;
    #pragma omp parallel for schedule(static) num_threads(dev->n_threads)
    for (int64_t r = 0; r < B * Ho; r++) {
        int64_t b = r / Ho, py = r % Ho;
        for (int64_t px = 0; px < Wo; px++) {
            float *pr = P + ((b * Ho + py) * Wo + px) * K;
            for (int64_t c = 0; c < Cin; c++)
                for (int ky = 0; ky < k; ky++) {
                    float *xr = x + ((b * Cin + c) * H + py * k + ky) * W + px * k;
                    float *pp = pr + (c * k + ky) * k;
                    if (dir == 0) memcpy(pp, xr, (size_t)k * sizeof(float));
                    else for (int kx = 0; kx < k; kx++) xr[kx] += pp[kx];
                }
        }
    }
}

static ms_status patch_check(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int k)
{
    MS_FAIL_IF(k <= 0 || B < 0 || Cin <= 0 || Cout <= 0 || H < 0 || W < 0 || H % k || W % k, MS_EINVAL,
               "conv_patch: bad shape B=%lld Cin=%lld H=%lld W=%lld Cout=%lld k=%d (H, W must be multiples of k)",
               (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Cout, k);
    return MS_OK;
}

ms_status ms_conv_patch_forward_cpu(ms_device *dev, float *y, const float *x, const float *w, const float *b,
                                    int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int k, int nhwc_out)
{
    MS_TRY(patch_check(B, Cin, H, W, Cout, k));
    ms_status rc = MS_OK;
    int64_t HW = (H / k) * (W / k), K = Cin * k * k, N = B * HW;
    float *P = NULL;
    if ((rc = xalloc(&P, (size_t)(N * K), "conv_patch"))) goto leave;
    patches(dev, P, (float *)x, B, Cin, H, W, k, 0);
    if (nhwc_out) {
        if (b) for (int64_t i = 0; i < N; i++) memcpy(y + i * Cout, b, (size_t)Cout * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)Cout, (int)K, 1.0f, P, (int)K, w, (int)K,
                    b ? 1.0f : 0.0f, y, (int)Cout);
    } else {
        for (int64_t bi = 0; bi < B; bi++) {
            float *yb = y + bi * Cout * HW;
            if (b) for (int64_t o = 0; o < Cout; o++) for (int64_t i = 0; i < HW; i++) yb[o * HW + i] = b[o];
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Cout, (int)HW, (int)K, 1.0f, w, (int)K,
                        P + bi * HW * K, (int)K, b ? 1.0f : 0.0f, yb, (int)HW);
        }
    }
leave:
    free(P);
    return rc;
}

ms_status ms_conv_patch_backward_cpu(ms_device *dev, float *dx, float *dw, float *db, const float *dy, const float *x,
                                     const float *w, int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int k,
                                     int nhwc_out)
{
    MS_TRY(patch_check(B, Cin, H, W, Cout, k));
    ms_status rc = MS_OK;
    int64_t HW = (H / k) * (W / k), K = Cin * k * k, N = B * HW;
    float *P = NULL;
    if (db) bias_grad(dev, db, dy, B, Cout, HW, nhwc_out);
    if (!dx && !dw) return MS_OK;
    if ((rc = xalloc(&P, (size_t)(N * K), "conv_patch_backward"))) goto leave;
    if (dw) {
        patches(dev, P, (float *)x, B, Cin, H, W, k, 0);
        if (nhwc_out)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)Cout, (int)K, (int)N, 1.0f, dy, (int)Cout, P,
                        (int)K, 1.0f, dw, (int)K);
        else
            for (int64_t bi = 0; bi < B; bi++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Cout, (int)K, (int)HW, 1.0f,
                            dy + bi * Cout * HW, (int)HW, P + bi * HW * K, (int)K, 1.0f, dw, (int)K);
    }
    if (dx) {
        /* dP = dy·w, (N, K) */
        if (nhwc_out)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)K, (int)Cout, 1.0f, dy, (int)Cout, w,
                        (int)K, 0.0f, P, (int)K);
        else
            for (int64_t bi = 0; bi < B; bi++)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)HW, (int)K, (int)Cout, 1.0f,
                            dy + bi * Cout * HW, (int)HW, w, (int)K, 0.0f, P + bi * HW * K, (int)K);
        patches(dev, P, dx, B, Cin, H, W, k, 1);
    }
leave:
    free(P);
    return rc;
}

/* ---- conv2d --------------------------------------------------------------------------------------------- */

/* col[(c,ky,kx), (oy,ox)] = x[c, oy·s+ky−pad, ox·s+kx−pad] or 0 (one image); dir 1: x += col2im(col). */
static void im2col(ms_device *dev, float *col, float *x, int64_t Cin, int64_t H, int64_t W, int ks, int pad, int s,
                   int dir)
{
    int64_t Ho = (H + 2 * pad - ks) / s + 1, Wo = (W + 2 * pad - ks) / s + 1;
    if (dir == 0) {
        #pragma omp parallel for schedule(static) num_threads(dev->n_threads)
        for (int64_t r = 0; r < Cin * ks * ks; r++) {
            int64_t c = r / (ks * ks), ky = (r / ks) % ks, kx = r % ks;
            float *cr = col + r * Ho * Wo;
            for (int64_t oy = 0; oy < Ho; oy++) {
                int64_t iy = oy * s + ky - pad;
                float *o = cr + oy * Wo;
                if (iy < 0 || iy >= H) { memset(o, 0, (size_t)Wo * sizeof(float)); continue; }
                const float *xr = x + (c * H + iy) * W;
                for (int64_t ox = 0; ox < Wo; ox++) {
                    int64_t ix = ox * s + kx - pad;
                    o[ox] = (ix >= 0 && ix < W) ? xr[ix] : 0.0f;
                }
            }
        }
    } else {
        /* Parallel over input channels: each thread owns its channel's plane of x. */
        #pragma omp parallel for schedule(static) num_threads(dev->n_threads)
        for (int64_t c = 0; c < Cin; c++)
            for (int64_t ky = 0; ky < ks; ky++)
                for (int64_t kx = 0; kx < ks; kx++) {
                    const float *cr = col + ((c * ks + ky) * ks + kx) * Ho * Wo;
                    for (int64_t oy = 0; oy < Ho; oy++) {
                        int64_t iy = oy * s + ky - pad;
                        if (iy < 0 || iy >= H) continue;
                        float *xr = x + (c * H + iy) * W;
                        const float *o = cr + oy * Wo;
                        for (int64_t ox = 0; ox < Wo; ox++) {
                            int64_t ix = ox * s + kx - pad;
                            if (ix >= 0 && ix < W) xr[ix] += o[ox];
                        }
                    }
                }
    }
}

static ms_status conv2d_check(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int ks, int pad, int s)
{
    MS_FAIL_IF(ks <= 0 || pad < 0 || s <= 0 || B < 0 || Cin <= 0 || Cout <= 0 || H + 2 * pad < ks ||
                   W + 2 * pad < ks,
               MS_EINVAL, "conv2d: bad shape B=%lld Cin=%lld H=%lld W=%lld Cout=%lld ks=%d pad=%d stride=%d",
               (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Cout, ks, pad, s);
    return MS_OK;
}

ms_status ms_conv2d_forward_cpu(ms_device *dev, float *y, const float *x, const float *w, const float *b, int64_t B,
                                int64_t Cin, int64_t H, int64_t W, int64_t Cout, int ks, int pad, int stride)
{
    MS_TRY(conv2d_check(B, Cin, H, W, Cout, ks, pad, stride));
    ms_status rc = MS_OK;
    int64_t Ho = (H + 2 * pad - ks) / stride + 1, Wo = (W + 2 * pad - ks) / stride + 1, HW = Ho * Wo;
    int64_t K = Cin * ks * ks;
    int direct = ks == 1 && pad == 0 && stride == 1; /* x itself is the column matrix */
    float *col = NULL;
    if (!direct && (rc = xalloc(&col, (size_t)(K * HW), "conv2d"))) goto leave;
    for (int64_t bi = 0; bi < B; bi++) {
        const float *cb = x + bi * Cin * H * W;
        float *yb = y + bi * Cout * HW;
        if (!direct) {
            im2col(dev, col, (float *)cb, Cin, H, W, ks, pad, stride, 0);
            cb = col;
        }
        if (b) for (int64_t o = 0; o < Cout; o++) for (int64_t i = 0; i < HW; i++) yb[o * HW + i] = b[o];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Cout, (int)HW, (int)K, 1.0f, w, (int)K, cb,
                    (int)HW, b ? 1.0f : 0.0f, yb, (int)HW);
    }
leave:
    free(col);
    return rc;
}

ms_status ms_conv2d_backward_cpu(ms_device *dev, float *dx, float *dw, float *db, const float *dy, const float *x,
                                 const float *w, int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int ks,
                                 int pad, int stride)
{
    MS_TRY(conv2d_check(B, Cin, H, W, Cout, ks, pad, stride));
    ms_status rc = MS_OK;
    int64_t Ho = (H + 2 * pad - ks) / stride + 1, Wo = (W + 2 * pad - ks) / stride + 1, HW = Ho * Wo;
    int64_t K = Cin * ks * ks;
    int direct = ks == 1 && pad == 0 && stride == 1;
    float *col = NULL;
    if (db) bias_grad(dev, db, dy, B, Cout, HW, 0);
    if (!dx && !dw) return MS_OK;
    if (!direct && (rc = xalloc(&col, (size_t)(K * HW), "conv2d_backward"))) goto leave;
    for (int64_t bi = 0; bi < B; bi++) {
        const float *dyb = dy + bi * Cout * HW;
        if (dw) {
            const float *cb = x + bi * Cin * H * W;
            if (!direct) {
                im2col(dev, col, (float *)cb, Cin, H, W, ks, pad, stride, 0);
                cb = col;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Cout, (int)K, (int)HW, 1.0f, dyb, (int)HW, cb,
                        (int)HW, 1.0f, dw, (int)K);
        }
        if (dx) {
            float *dxb = dx + bi * Cin * H * W;
            if (direct) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)HW, (int)Cout, 1.0f, w, (int)K,
                            dyb, (int)HW, 1.0f, dxb, (int)HW);
            } else {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)HW, (int)Cout, 1.0f, w, (int)K,
                            dyb, (int)HW, 0.0f, col, (int)HW);
                im2col(dev, col, dxb, Cin, H, W, ks, pad, stride, 1);
            }
        }
    }
leave:
    free(col);
    return rc;
}

/* ---- conv_transpose2x2 ------------------------------------------------------------------------------------ */

/* Z (Cout·4, H·W) <-> y (Cout, 2H, 2W) of one image: dir 0 y = Z + b, dir 1 Z = gather(dy). */
static void ct_scatter(ms_device *dev, float *Z, float *y, const float *b, int64_t Cout, int64_t H, int64_t W, int dir)
{
    #pragma omp parallel for schedule(static) num_threads(dev->n_threads)
    for (int64_t r = 0; r < Cout * 4; r++) {
        int64_t o = r / 4, di = (r / 2) % 2, dj = r % 2;
        float *zr = Z + r * H * W;
        float bo = (dir == 0 && b) ? b[o] : 0.0f;
        for (int64_t i = 0; i < H; i++) {
            float *yr = y + (o * 2 * H + 2 * i + di) * 2 * W + dj;
            float *zz = zr + i * W;
            if (dir == 0) for (int64_t j = 0; j < W; j++) yr[2 * j] = zz[j] + bo;
            else for (int64_t j = 0; j < W; j++) zz[j] = yr[2 * j];
        }
    }
}

static ms_status ct_check(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout)
{
    MS_FAIL_IF(B < 0 || Cin <= 0 || Cout <= 0 || H < 0 || W < 0, MS_EINVAL,
               "conv_transpose2x2: bad shape B=%lld Cin=%lld H=%lld W=%lld Cout=%lld", (long long)B, (long long)Cin,
               (long long)H, (long long)W, (long long)Cout);
    return MS_OK;
}

ms_status ms_conv_transpose2x2_forward_cpu(ms_device *dev, float *y, const float *x, const float *w, const float *b,
                                           int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout)
{
    MS_TRY(ct_check(B, Cin, H, W, Cout));
    ms_status rc = MS_OK;
    int64_t HW = H * W, N4 = Cout * 4;
    float *Z = NULL;
    if ((rc = xalloc(&Z, (size_t)(N4 * HW), "conv_transpose2x2"))) goto leave;
    for (int64_t bi = 0; bi < B; bi++) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)N4, (int)HW, (int)Cin, 1.0f, w, (int)N4,
                    x + bi * Cin * HW, (int)HW, 0.0f, Z, (int)HW);
        ct_scatter(dev, Z, y + bi * Cout * 4 * HW, b, Cout, H, W, 0);
    }
leave:
    free(Z);
    return rc;
}

ms_status ms_conv_transpose2x2_backward_cpu(ms_device *dev, float *dx, float *dw, float *db, const float *dy,
                                            const float *x, const float *w, int64_t B, int64_t Cin, int64_t H,
                                            int64_t W, int64_t Cout)
{
    MS_TRY(ct_check(B, Cin, H, W, Cout));
    ms_status rc = MS_OK;
    int64_t HW = H * W, N4 = Cout * 4;
    float *Z = NULL;
    if (db) bias_grad(dev, db, dy, B, Cout, 4 * HW, 0);
    if (!dx && !dw) return MS_OK;
    if ((rc = xalloc(&Z, (size_t)(N4 * HW), "conv_transpose2x2_backward"))) goto leave;
    for (int64_t bi = 0; bi < B; bi++) {
        ct_scatter(dev, Z, (float *)(dy + bi * Cout * 4 * HW), NULL, Cout, H, W, 1);
        if (dx)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Cin, (int)HW, (int)N4, 1.0f, w, (int)N4, Z,
                        (int)HW, 1.0f, dx + bi * Cin * HW, (int)HW);
        if (dw)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Cin, (int)N4, (int)HW, 1.0f, x + bi * Cin * HW,
                        (int)HW, Z, (int)HW, 1.0f, dw, (int)N4);
    }
leave:
    free(Z);
    return rc;
}
