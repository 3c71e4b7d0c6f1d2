/* kernels/cpu/activation.c — exact-erf GELU and ReLU (contract: kernels/activation.h).
 * GELU(x) = 0.5·x·(1 + erf(x/√2)); GELU'(x) = Φ(x) + x·φ(x). ReLU'(0) = 0 as in torch.
 * Forward may run in place (y == x): each element is read before it is written. Backward accumulates.
 */
#include "activation.h"

#include <math.h>

#include "cpu/cpu_par.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

ms_status ms_gelu_forward_cpu(ms_device *dev, float *y, const float *x, int64_t n)
{
    MS_FAIL_IF(n < 0, MS_EINVAL, "gelu_forward: negative size %lld", (long long)n);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN / 4)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = 0.5f * v * (1.f + erff(v * INV_SQRT2));
    }
    return MS_OK;
}

ms_status ms_gelu_backward_cpu(ms_device *dev, float *dx, const float *dy, const float *x, int64_t n)
{
    MS_FAIL_IF(n < 0, MS_EINVAL, "gelu_backward: negative size %lld", (long long)n);
    if (!dx) return MS_OK;
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN / 4)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * (1.f + erff(v * INV_SQRT2)), pdf = INV_SQRT_2PI * expf(-0.5f * v * v);
        dx[i] += dy[i] * (cdf + v * pdf);
    }
    return MS_OK;
}

ms_status ms_relu_forward_cpu(ms_device *dev, float *y, const float *x, int64_t n)
{
    MS_FAIL_IF(n < 0, MS_EINVAL, "relu_forward: negative size %lld", (long long)n);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.f ? x[i] : 0.f;
    return MS_OK;
}

ms_status ms_relu_backward_cpu(ms_device *dev, float *dx, const float *dy, const float *x, int64_t n)
{
    MS_FAIL_IF(n < 0, MS_EINVAL, "relu_backward: negative size %lld", (long long)n);
    if (!dx) return MS_OK;
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) dx[i] += x[i] > 0.f ? dy[i] : 0.f;
    return MS_OK;
}
