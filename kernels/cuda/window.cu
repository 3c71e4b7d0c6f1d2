/* kernels/cuda/window.cu — SAM's window partition / unpartition with zero padding (contract: kernels/window.h).
 * Each is a pure index map, so every kernel is a gather over its output (one thread per element, channels
 * innermost: coalesced); the backwards are gathers too, each dx element reading its one source (pad slots
 * drop out), so nothing races and results are exact. */
#include "cuda_common.h"

/* (B,H,W,C) → (B·nh·nw, ws, ws, C); forward when !BACK writes out from x, BACK accumulates dx from dout */
__global__ static void part_f32(float *out, const float *x, int64_t B, int64_t H, int64_t W, int64_t C, int ws,
                                int64_t nh, int64_t nw)
{
    MS_GRID_STRIDE(i, B * nh * nw * ws * ws * C) {
        int64_t c = i % C, t = i / C;
        int64_t col = t % ws; t /= ws;
        int64_t row = t % ws; t /= ws;
        int64_t wx = t % nw; t /= nw;
        int64_t wy = t % nh, b = t / nh;
        int64_t h = wy * ws + row, w = wx * ws + col;
        out[i] = (h < H && w < W) ? x[((b * H + h) * W + w) * C + c] : 0.f;
    }
}
/* dx[b,h,w,c] (+)= win[b, h/ws, w/ws, h%ws, w%ws, c] */
__global__ static void unpart_f32(float *dst, const float *win, int64_t B, int64_t H, int64_t W, int64_t C, int ws,
                                  int64_t nh, int64_t nw, int accumulate)
{
    MS_GRID_STRIDE(i, B * H * W * C) {
        int64_t c = i % C, t = i / C;
        int64_t w = t % W; t /= W;
        int64_t h = t % H, b = t / H;
        int64_t src = ((((b * nh + h / ws) * nw + w / ws) * ws + h % ws) * ws + w % ws) * C + c;
        dst[i] = accumulate ? dst[i] + win[src] : win[src];
    }
}
__global__ static void part_bwd_f32(float *dwin, const float *dout, int64_t B, int64_t H, int64_t W, int64_t C,
                                    int ws, int64_t nh, int64_t nw)
{
    /* unpartition backward: dwin (windows) += crop of dout; pad slots get nothing */
    MS_GRID_STRIDE(i, B * nh * nw * ws * ws * C) {
        int64_t c = i % C, t = i / C;
        int64_t col = t % ws; t /= ws;
        int64_t row = t % ws; t /= ws;
        int64_t wx = t % nw; t /= nw;
        int64_t wy = t % nh, b = t / nh;
        int64_t h = wy * ws + row, w = wx * ws + col;
        if (h < H && w < W) dwin[i] += dout[((b * H + h) * W + w) * C + c];
    }
}

static ms_status check(const char *who, int64_t B, int64_t H, int64_t W, int64_t C, int ws)
{
    MS_FAIL_IF(B < 0 || H < 0 || W < 0 || C < 0 || ws <= 0, MS_EINVAL,
               "%s: bad sizes B=%lld H=%lld W=%lld C=%lld ws=%d", who, (long long)B, (long long)H, (long long)W,
               (long long)C, ws);
    return MS_OK;
}
#define GRID(n) ms_cu_blocks(n, 256), 256, 0, ms_cuda_ctx_of(dev)->stream

extern "C" ms_status ms_window_partition_forward_cuda(ms_device *dev, float *out, const float *x, int64_t B,
                                                      int64_t H, int64_t W, int64_t C, int ws)
{
    MS_CU_CTX(dev);
    MS_TRY(check("window_partition_forward", B, H, W, C, ws));
    int64_t nh = (H + ws - 1) / ws, nw = (W + ws - 1) / ws, n = B * nh * nw * ws * ws * C;
    if (!n) return MS_OK;
    part_f32<<<GRID(n)>>>(out, x, B, H, W, C, ws, nh, nw);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_window_partition_backward_cuda(ms_device *dev, float *dx, const float *dout, int64_t B,
                                                       int64_t H, int64_t W, int64_t C, int ws)
{
    MS_CU_CTX(dev);
    MS_TRY(check("window_partition_backward", B, H, W, C, ws));
    int64_t nh = (H + ws - 1) / ws, nw = (W + ws - 1) / ws, n = B * H * W * C;
    if (!n || !dx) return MS_OK;
    unpart_f32<<<GRID(n)>>>(dx, dout, B, H, W, C, ws, nh, nw, 1);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_window_unpartition_forward_cuda(ms_device *dev, float *out, const float *x, int64_t B,
                                                        int64_t H, int64_t W, int64_t C, int ws)
{
    MS_CU_CTX(dev);
    MS_TRY(check("window_unpartition_forward", B, H, W, C, ws));
    int64_t nh = (H + ws - 1) / ws, nw = (W + ws - 1) / ws, n = B * H * W * C;
    if (!n) return MS_OK;
    unpart_f32<<<GRID(n)>>>(out, x, B, H, W, C, ws, nh, nw, 0);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_window_unpartition_backward_cuda(ms_device *dev, float *dx, const float *dout, int64_t B,
                                                         int64_t H, int64_t W, int64_t C, int ws)
{
    MS_CU_CTX(dev);
    MS_TRY(check("window_unpartition_backward", B, H, W, C, ws));
    int64_t nh = (H + ws - 1) / ws, nw = (W + ws - 1) / ws, n = B * nh * nw * ws * ws * C;
    if (!n || !dx) return MS_OK;
    part_bwd_f32<<<GRID(n)>>>(dx, dout, B, H, W, C, ws, nh, nw);
    MS_CU_LAUNCHED();
    return MS_OK;
}
