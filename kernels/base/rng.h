/* kernels/base/rng.h — counter-based random numbers.
 *
 * Every random draw is a pure function of (seed, stream, counter): no hidden state, the same numbers on the CPU
 * and on the GPU, and results that do not depend on thread scheduling. ms_rng is a small cursor over one
 * (seed, stream) pair for sequential code. Streams derive from named purposes, e.g.
 * ms_rng_stream(seed, epoch, index) for a sample's augmentation.
 */
#ifndef MS_RNG_H
#define MS_RNG_H

#include <stdint.h>

/* splitmix64 finaliser: a bijective 64-bit mix. */
static inline uint64_t ms_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Stream key from up to three words (seed, a, b). */
static inline uint64_t ms_rng_stream(uint64_t seed, uint64_t a, uint64_t b)
{
    return ms_mix64(ms_mix64(ms_mix64(seed) ^ a) ^ (b * 0xd1342543de82ef95ull));
}

/* The counter-th 64-bit draw of a stream. */
static inline uint64_t ms_rand_u64(uint64_t stream, uint64_t counter)
{
    return ms_mix64(stream ^ ms_mix64(counter + 0x632be59bd9b4e019ull));
}

/* Uniform in [0,1) with 24 random bits (exactly representable as float). */
static inline float ms_rand_uniform(uint64_t stream, uint64_t counter)
{
    return (float)(ms_rand_u64(stream, counter) >> 40) * (1.0f / 16777216.0f);
}

typedef struct ms_rng {
    uint64_t stream;
    uint64_t counter;
} ms_rng;

static inline void ms_rng_init(ms_rng *r, uint64_t seed, uint64_t stream_id)
{
    r->stream = ms_rng_stream(seed, stream_id, 0);
    r->counter = 0;
}
static inline uint64_t ms_rng_u64(ms_rng *r) { return ms_rand_u64(r->stream, r->counter++); }
static inline float ms_rng_uniform(ms_rng *r) { return ms_rand_uniform(r->stream, r->counter++); }
/* Uniform in [lo, hi). */
static inline float ms_rng_range(ms_rng *r, float lo, float hi) { return lo + (hi - lo) * ms_rng_uniform(r); }
/* Unbiased integer in [0, n) (n > 0). */
uint64_t ms_rng_below(ms_rng *r, uint64_t n);
/* Standard normal (Box-Muller, two uniforms per draw). */
float ms_rng_normal(ms_rng *r);

#endif
