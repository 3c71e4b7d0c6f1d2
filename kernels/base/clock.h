/* kernels/base/clock.h — the one clock the library and the tools time things with. */
#ifndef MS_CLOCK_H
#define MS_CLOCK_H

/* Seconds on the monotonic clock (for rates, ETAs and intervals; not a date). */
double ms_now_s(void);
/* Seconds since the Unix epoch (for timestamps written into files, e.g. TensorBoard events). */
double ms_wall_s(void);

#endif
