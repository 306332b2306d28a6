/* One thread that calls functions at given monotonic times (b24_now): b24 serve's delayed
 * answers wake their suspended connections from it. */
#ifndef B24_TIMER_H
#define B24_TIMER_H

typedef void (*b24_timer_fn)(void *arg);

/* Starts the thread; -1 when it cannot. */
int b24_timer_start(void);
/* fn(arg) runs on the timer thread at monotonic time `at`; -1 when stopped or out of memory. */
int b24_timer_add(double at, b24_timer_fn fn, void *arg);
/* Fires what is left at once, then ends the thread. */
void b24_timer_stop(void);

#endif
