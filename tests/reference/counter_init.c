/* tests/reference/counter_init.c — see counter_init.h. Keep in sync with counter_init.py. */
#include "counter_init.h"

#include <math.h>
#include <string.h>

#include "base/path.h"
#include "base/rng.h"

uint64_t ms_fnv1a64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) { h ^= (unsigned char)*s; h *= 0x100000001b3ull; }
    return h;
}

void ms_counter_init_scale(const char *name, const int64_t *shape, int ndim, float *center, float *scale)
{
    *center = 0.f;
    if (ndim == 1 && ms_str_ends_with(name, ".weight")) { *center = 1.f; *scale = 0.2f; return; } /* norm gammas */
    if (ndim == 1) { *scale = 0.1f; return; }                                              /* biases */
    if (strstr(name, "rel_pos") || strstr(name, "pos_embed") || strstr(name, "gaussian")) { *scale = 0.5f; return; }
    if (strstr(name, "embed") || strstr(name, "token")) { *scale = 1.f; return; }            /* embeddings, tokens */
    int64_t fan_in = 1;
    for (int i = 1; i < ndim; i++) fan_in *= shape[i];
    if (strstr(name, "output_upscaling") && ndim == 4) fan_in = shape[1] * shape[2] * shape[3]; /* ConvTranspose */
    *scale = (float)(1.0 / sqrt((double)fan_in));
}

void ms_counter_init(float *dst, const char *name, const int64_t *shape, int ndim, uint64_t seed)
{
    float c, s;
    ms_counter_init_scale(name, shape, ndim, &c, &s);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    uint64_t stream = ms_rng_stream(seed, ms_fnv1a64(name), 0);
    for (int64_t i = 0; i < n; i++) {
        float u = (float)(ms_rand_u64(stream, (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
        dst[i] = c + s * (2.f * u - 1.f);
    }
}
