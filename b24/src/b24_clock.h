/* Clocks of the b24 program: monotonic seconds for durations and deadlines, wall-clock seconds
 * for what is stored (the inbox), and absolute times for pthread_cond_timedwait. */
#ifndef B24_CLOCK_H
#define B24_CLOCK_H

#include <time.h>

/* Monotonic seconds; only differences between calls mean anything. */
double b24_now(void);
/* Seconds since the epoch (CLOCK_REALTIME), for times stored in a file. */
double b24_wall_now(void);
/* The absolute time `seconds` from now on `clock`, as a timed wait takes it. */
struct timespec b24_clock_after(clockid_t clock, double seconds);

#endif
