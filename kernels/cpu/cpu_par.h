/* kernels/cpu/cpu_par.h — private helpers for the CPU ops: thread counts, fixed chunking for deterministic
 * reductions, and column blocks for parameter-gradient sums.
 *
 * Invariant for the ops that use it: a reduction is split into chunks whose boundaries depend only on the
 * problem size (never on the thread count or on scheduling); each chunk is summed sequentially and the partials
 * are combined in chunk order. Column sums (db, dw, dp) give each column block to one thread, which walks the
 * rows in order. So these results are bitwise reproducible run to run, and even across thread counts (OpenBLAS
 * GEMMs are only promised reproducible for a fixed thread count).
 */
#ifndef MS_CPU_PAR_H
#define MS_CPU_PAR_H

#include <stdint.h>

#include "base/device.h"

/* Below this many elements an elementwise loop runs on one thread (fork/join costs more than it saves). */
#define MS_CPU_PAR_MIN 16384
/* Upper bound on reduction chunks, so the partials fit in a stack array. */
#define MS_CPU_MAX_CHUNKS 256

static inline int ms_cpu_threads(const ms_device *dev) { return dev && dev->n_threads > 0 ? dev->n_threads : 1; }

/* Chunk count for a reduction over n items, at least min_chunk items per chunk; depends on n only. */
static inline int64_t ms_cpu_nchunks(int64_t n, int64_t min_chunk)
{
    int64_t c = (n + min_chunk - 1) / min_chunk;
    if (c > MS_CPU_MAX_CHUNKS) c = MS_CPU_MAX_CHUNKS;
    return c < 1 ? 1 : c;
}

/* [lo, hi) of chunk i when n items are cut into nchunks near-equal pieces. */
static inline void ms_cpu_chunk(int64_t n, int64_t nchunks, int64_t i, int64_t *lo, int64_t *hi)
{
    *lo = n * i / nchunks;
    *hi = n * (i + 1) / nchunks;
}

/* Column-block width for column sums: enough blocks to feed every thread, a multiple of 16 floats
 * (one cache line), at most 256 (the per-block double accumulators live on the stack). */
#define MS_CPU_COLBLOCK_MAX 256
static inline int64_t ms_cpu_colblock(int64_t cols, int n_threads)
{
    int64_t w = (cols + n_threads - 1) / n_threads;
    w = (w + 15) / 16 * 16;
    if (w < 16) w = 16;
    if (w > MS_CPU_COLBLOCK_MAX) w = MS_CPU_COLBLOCK_MAX;
    return w;
}

#endif
