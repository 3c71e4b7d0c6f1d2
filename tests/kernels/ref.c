/* tests/kernels/ref.c — see ref.h. */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double ms_fd_check(ms_loss_fn f, void *ctx, double *x, int64_t n, const float *grad, int max_probe, double h,
                   ms_rng *r, int64_t *worst_index)
{
    double worst = 0, gmax = 0;
    for (int64_t i = 0; i < n; i++) if (fabs(grad[i]) > gmax) gmax = fabs(grad[i]);
    int probes = n < max_probe ? (int)n : max_probe;
    for (int p = 0; p < probes; p++) {
        int64_t i = n <= max_probe ? p : (int64_t)ms_rng_below(r, (uint64_t)n);
        double x0 = x[i];
        x[i] = x0 + h;
        double lp = f(ctx, x);
        x[i] = x0 - h;
        double lm = f(ctx, x);
        x[i] = x0;
        double fd = (lp - lm) / (2 * h);
        double err = fabs(fd - grad[i]) / (fabs(fd) + 1e-3 * gmax + 1e-12);
        if (!(err <= worst)) { worst = err; if (worst_index) *worst_index = i; }
    }
    return worst;
}

double ms_fd_directional(ms_loss_fn f, void *ctx, double *x, int64_t n, const float *grad, double h, ms_rng *r,
                         int n_dirs)
{
    double worst = 0;
    double *x0 = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    signed char *v = malloc((size_t)(n > 0 ? n : 1));
    if (!x0 || !v) { worst = -1; goto leave; }
    memcpy(x0, x, (size_t)n * sizeof(double));
    for (int d = 0; d < n_dirs; d++) {
        double a = 0, norm = 0;
        for (int64_t i = 0; i < n; i++) {
            v[i] = (ms_rng_u64(r) >> 63) ? 1 : -1;
            a += (double)grad[i] * v[i];
            norm += (double)grad[i] * grad[i];
        }
        for (int64_t i = 0; i < n; i++) x[i] = x0[i] + h * v[i];
        double lp = f(ctx, x);
        for (int64_t i = 0; i < n; i++) x[i] = x0[i] - h * v[i];
        double lm = f(ctx, x);
        memcpy(x, x0, (size_t)n * sizeof(double));
        double err = fabs((lp - lm) / (2 * h) - a) / (sqrt(norm) + 1e-12);
        if (!(err <= worst)) worst = err;
    }
leave:
    free(x0);
    free(v);
    return worst;
}
