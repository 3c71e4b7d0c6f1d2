/* kernels/base/rng.c */
#include "rng.h"

#include <math.h>

uint64_t ms_rng_below(ms_rng *r, uint64_t n)
{
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    for (;;) {
        uint64_t x = ms_rng_u64(r);
        if (x < lim) return x % n;
    }
}

float ms_rng_normal(ms_rng *r)
{
    double u1 = ((double)(ms_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(ms_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
