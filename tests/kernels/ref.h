/* tests/kernels/ref.h — shared helpers for the op tests: central finite differences in double.
 *
 * ms_fd_check: for a scalar function L(x) = Σ g ⊙ f(x) (g a fixed random upstream gradient), compares the
 * analytic gradient `grad` (n) with (L(x+h) − L(x−h)) / 2h on up to max_probe randomly chosen coordinates.
 * The callback evaluates L in double given the (perturbed) input. */
#ifndef MS_TEST_KERNELS_REF_H
#define MS_TEST_KERNELS_REF_H

#include <stdint.h>

#include "base/rng.h"

typedef double (*ms_loss_fn)(void *ctx, const double *x);

/* Returns the worst relative error |a − fd| / (|fd| + floor) over the probed coordinates. */
double ms_fd_check(ms_loss_fn f, void *ctx, double *x, int64_t n, const float *grad, int max_probe, double h,
                   ms_rng *r, int64_t *worst_index);

#endif
