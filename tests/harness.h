/* tests/harness.h — the small test harness every C test uses.
 *
 * ms_test_seed(): a fresh seed per run (MS_TEST_SEED=<n> replays one), printed so a failure can be replayed.
 * MS_CHECK(cond, ...) records a failure and goes on; ms_test_done() prints "N passed, N failed" and returns the
 * exit code. ms_compare() reports max-abs, max-rel and NMSE of a float array against a double reference.
 * A test that needs a GPU and finds none returns MS_TEST_SKIP (77), which CTest reports as skipped.
 */
#ifndef MS_TEST_HARNESS_H
#define MS_TEST_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "base/rng.h"
#include "base/status.h"

#define MS_TEST_SKIP 77

static int ms_test_pass_, ms_test_fail_;

static inline uint64_t ms_test_seed(void)
{
    const char *e = getenv("MS_TEST_SEED");
    uint64_t s = e ? strtoull(e, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    printf("seed: %llu (replay with MS_TEST_SEED=%llu)\n", (unsigned long long)s, (unsigned long long)s);
    return s;
}

#define MS_CHECK(cond, ...)                                                                                \
    do {                                                                                                   \
        if (cond) ms_test_pass_++;                                                                         \
        else {                                                                                             \
            ms_test_fail_++;                                                                               \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                    \
            printf(__VA_ARGS__);                                                                           \
            printf("\n");                                                                                  \
        }                                                                                                  \
    } while (0)

/* Check a status; prints ms_errmsg() on failure. */
#define MS_CHECK_OK(expr)                                                                                  \
    do {                                                                                                   \
        ms_status st_ = (expr);                                                                            \
        MS_CHECK(st_ == MS_OK, "%s -> %d (%s): %s", #expr, st_, ms_strerror(st_), ms_errmsg());           \
    } while (0)

static inline int ms_test_done(void)
{
    printf("%d passed, %d failed\n", ms_test_pass_, ms_test_fail_);
    return ms_test_fail_ ? 1 : 0;
}

typedef struct { double max_abs, max_rel, nmse; int64_t worst; } ms_cmp;

/* max_rel is |a-r| / (|r| + floor), floor = 1e-3 * max|r| so tiny reference values do not dominate. */
static inline ms_cmp ms_compare(const float *a, const double *ref, int64_t n)
{
    ms_cmp c = {0, 0, 0, 0};
    double num = 0, den = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) if (fabs(ref[i]) > mx) mx = fabs(ref[i]);
    double floor_ = mx * 1e-3 + 1e-30;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= c.max_abs)) { c.max_abs = d; c.worst = i; }
        double r = d / (fabs(ref[i]) + floor_);
        if (!(r <= c.max_rel)) c.max_rel = r;
        num += d * d;
        den += ref[i] * ref[i];
    }
    c.nmse = den > 0 ? num / den : num;
    if (isnan(c.nmse)) c.max_rel = c.nmse;
    return c;
}

/* Same, float against float. */
static inline ms_cmp ms_compare_f(const float *a, const float *b, int64_t n)
{
    double *r = (double *)malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) r[i] = b[i];
    ms_cmp c = ms_compare(a, r, n);
    free(r);
    return c;
}

static inline void ms_fill_uniform(float *x, int64_t n, ms_rng *r, float lo, float hi)
{
    for (int64_t i = 0; i < n; i++) x[i] = ms_rng_range(r, lo, hi);
}

#endif
