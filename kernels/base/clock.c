/* kernels/base/clock.c — see clock.h. */
#include "clock.h"

#include <time.h>

static double read_clock(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double ms_now_s(void) { return read_clock(CLOCK_MONOTONIC); }
double ms_wall_s(void) { return read_clock(CLOCK_REALTIME); }
