/* kernels/cpu/softmax.c — row softmax over the last dim (contract: kernels/softmax.h).
 * Forward subtracts the row max before exp (no overflow) and sums in double; a row of all −inf gives NaN,
 * as in torch. Backward from the saved output: dx += y ⊙ (dy − Σ dy⊙y). One row per iteration.
 */
#include "softmax.h"

#include <math.h>

#include "cpu/cpu_par.h"

ms_status ms_softmax_forward_cpu(ms_device *dev, float *y, const float *x, int64_t rows, int64_t cols)
{
    MS_FAIL_IF(rows < 0 || cols < 0, MS_EINVAL, "softmax_forward: negative size");
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (rows * cols >= MS_CPU_PAR_MIN / 4)
    for (int64_t i = 0; i < rows; i++) {
        const float *xr = x + i * cols;
        float *yr = y + i * cols;
        float mx = -INFINITY;
        for (int64_t j = 0; j < cols; j++) mx = xr[j] > mx ? xr[j] : mx;
        double s = 0;
        for (int64_t j = 0; j < cols; j++) { float e = expf(xr[j] - mx); yr[j] = e; s += e; }
        float inv = (float)(1.0 / s);
        for (int64_t j = 0; j < cols; j++) yr[j] *= inv;
    }
    return MS_OK;
}

ms_status ms_softmax_backward_cpu(ms_device *dev, float *dx, const float *dy, const float *y, int64_t rows,
                                  int64_t cols)
{
    MS_FAIL_IF(rows < 0 || cols < 0, MS_EINVAL, "softmax_backward: negative size");
    if (!dx) return MS_OK;
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (rows * cols >= MS_CPU_PAR_MIN / 4)
    for (int64_t i = 0; i < rows; i++) {
        const float *gr = dy + i * cols, *yr = y + i * cols;
        float *dr = dx + i * cols;
        double s = 0;
        for (int64_t j = 0; j < cols; j++) s += (double)gr[j] * yr[j];
        float sf = (float)s;
        for (int64_t j = 0; j < cols; j++) dr[j] += yr[j] * (gr[j] - sf);
    }
    return MS_OK;
}
