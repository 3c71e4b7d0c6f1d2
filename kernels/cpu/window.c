/* kernels/cpu/window.c — SAM's window partition / unpartition (window.h, docs/MODEL.md §Image encoder), fp32, OpenMP.
 *
 * Both directions are one permutation of C-wide rows plus zero padding: window row (n, r, c) with
 * n = b·nh·nw + wy·nw + wx maps to image row (b, wy·ws+r, wx·ws+c), or to nothing when that falls beyond H/W
 * (a pad slot). Every routine walks the window rows, so each output row is touched by exactly one iteration:
 * race-free and deterministic at any thread count. Backward accumulates (+=) and pad slots drop out.
 */
#include <string.h>

#include "window.h"

/* The image row of window row `wrow`, or −1 for a pad slot. */
static inline int64_t image_row(int64_t wrow, int64_t H, int64_t W, int ws, int64_t nh, int64_t nw)
{
    int64_t c = wrow % ws, t = wrow / ws;
    int64_t r = t % ws;
    int64_t n = t / ws;
    int64_t wx = n % nw, wy = (n / nw) % nh, b = n / (nw * nh);
    int64_t y = wy * ws + r, x = wx * ws + c;
    if (y >= H || x >= W) return -1;
    return (b * H + y) * W + x;
}

static ms_status check(int64_t B, int64_t H, int64_t W, int64_t C, int ws, const char *what)
{
    MS_FAIL_IF(B < 0 || H < 0 || W < 0 || C < 0 || ws <= 0, MS_EINVAL,
               "%s: bad shape B=%lld H=%lld W=%lld C=%lld ws=%d", what, (long long)B, (long long)H, (long long)W,
               (long long)C, ws);
    return MS_OK;
}

/* mode 0: win = img (partition fwd), 1: img += win (partition bwd), 2: img = win (unpartition fwd),
 * 3: win += img (unpartition bwd). */
static void run(ms_device *dev, float *win, float *img, int64_t B, int64_t H, int64_t W, int64_t C, int ws, int mode)
{
    int64_t nh = (H + ws - 1) / ws, nw = (W + ws - 1) / ws;
    int64_t rows = B * nh * nw * ws * ws;
    #pragma omp parallel for schedule(static) num_threads(dev->n_threads)
    for (int64_t i = 0; i < rows; i++) {
        int64_t src = image_row(i, H, W, ws, nh, nw);
        float *wp = win + i * C;
        if (src < 0) {
            if (mode == 0) memset(wp, 0, (size_t)C * sizeof(float));
            continue;
        }
        float *ip = img + src * C;
        switch (mode) {
        case 0: memcpy(wp, ip, (size_t)C * sizeof(float)); break;
        case 1: for (int64_t k = 0; k < C; k++) ip[k] += wp[k]; break;
        case 2: memcpy(ip, wp, (size_t)C * sizeof(float)); break;
        default: for (int64_t k = 0; k < C; k++) wp[k] += ip[k]; break;
        }
    }
}

ms_status ms_window_partition_forward_cpu(ms_device *dev, float *out, const float *x, int64_t B, int64_t H, int64_t W,
                                          int64_t C, int ws)
{
    MS_TRY(check(B, H, W, C, ws, "window_partition"));
    run(dev, out, (float *)x, B, H, W, C, ws, 0);
    return MS_OK;
}

ms_status ms_window_partition_backward_cpu(ms_device *dev, float *dx, const float *dout, int64_t B, int64_t H,
                                           int64_t W, int64_t C, int ws)
{
    MS_TRY(check(B, H, W, C, ws, "window_partition_backward"));
    if (dx) run(dev, (float *)dout, dx, B, H, W, C, ws, 1);
    return MS_OK;
}

ms_status ms_window_unpartition_forward_cpu(ms_device *dev, float *out, const float *x, int64_t B, int64_t H,
                                            int64_t W, int64_t C, int ws)
{
    MS_TRY(check(B, H, W, C, ws, "window_unpartition"));
    run(dev, (float *)x, out, B, H, W, C, ws, 2);
    return MS_OK;
}

ms_status ms_window_unpartition_backward_cpu(ms_device *dev, float *dx, const float *dout, int64_t B, int64_t H,
                                             int64_t W, int64_t C, int ws)
{
    MS_TRY(check(B, H, W, C, ws, "window_unpartition_backward"));
    if (dx) run(dev, dx, (float *)dout, B, H, W, C, ws, 3);
    return MS_OK;
}
