/* tests/kernels/ref.h — shared helpers for the op tests: central finite differences in double (the references of
 * the op table, also in ref.c, are declared in op_cases.h).
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

/* Directional check of the whole gradient at once: for n_dirs random ±1 directions v, compares Σ grad·v with
 * (L(x+hv) − L(x−hv)) / 2h. Returns the worst |a − fd| / (‖grad ⊙ v‖₂ + 1e-12), so an error confined to a few
 * coordinates that ms_fd_check's probes miss still shows (as √(share of wrong coordinates)). x is restored
 * exactly. Returns -1 when out of memory. */
double ms_fd_directional(ms_loss_fn f, void *ctx, double *x, int64_t n, const float *grad, double h, ms_rng *r,
                         int n_dirs);

#endif
