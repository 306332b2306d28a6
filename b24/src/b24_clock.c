/* Clocks of the b24 program: see b24_clock.h. */
#include <time.h>

#include "b24.h"
#include "b24_clock.h"

static double seconds_of(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Monotonic seconds: the core's clock (csrc/b24_time.c), the one the library uses too. */
double b24_now(void)
{
    return b24_time_now();
}

/* Seconds since the epoch, for times stored in a file. */
double b24_wall_now(void)
{
    return seconds_of(CLOCK_REALTIME);
}

/* The absolute time `seconds` (>= 0) from now on `clock`, normalised. */
struct timespec b24_clock_after(clockid_t clock, double seconds)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    time_t whole = (time_t)seconds;
    ts.tv_sec += whole;
    ts.tv_nsec += (long)((seconds - (double)whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}
