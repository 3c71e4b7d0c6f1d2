/* tests/reference/counter_init.h — deterministic "random" weights shared by the C tests and the PyTorch reference
 * (tests/reference/counter_init.py implements the same formula), so full-size models need no weight files.
 *
 * For a tensor named NAME with numel elements, element i is
 *   u = (ms_rand_u64(stream, i) >> 40) / 2^24            stream = ms_rng_stream(seed, fnv1a64(NAME), 0)
 *   value = center + scale · (2u − 1)
 * with (center, scale) chosen by ms_counter_init_scale() from the name and shape (see the .c file). */
#ifndef MS_COUNTER_INIT_H
#define MS_COUNTER_INIT_H

#include <stdint.h>

uint64_t ms_fnv1a64(const char *s);
/* Fills dst (numel floats) for tensor `name` of the given shape. */
void ms_counter_init(float *dst, const char *name, const int64_t *shape, int ndim, uint64_t seed);
/* The (center, scale) used for a tensor. */
void ms_counter_init_scale(const char *name, const int64_t *shape, int ndim, float *center, float *scale);

#endif
