/* One thread that calls functions at given monotonic times: it wakes suspended connections
 * whose handler asked for a delayed answer, so a delay never holds a server thread.
 * A binary min-heap under a mutex; the thread sleeps on a condition variable until the
 * earliest deadline or a new earlier one. */
#include <pthread.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>

#include "b24_clock.h"
#include "b24_timer.h"

typedef struct timer {
    double at;
    unsigned long seq; /* equal deadlines fire in the order they were added */
    b24_timer_fn fn;
    void *arg;
} timer;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake;
static pthread_t thread;
static int running, stopping;
static timer *heap;
static size_t count, cap;
static unsigned long next_seq;

static int before(const timer *a, const timer *b)
{
    return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static void swap(size_t i, size_t j)
{
    timer t = heap[i];
    heap[i] = heap[j];
    heap[j] = t;
}

static void sift_up(size_t i)
{
    while (i > 0 && before(&heap[i], &heap[(i - 1) / 2])) {
        swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void sift_down(size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < count && before(&heap[l], &heap[m]))
            m = l;
        if (r < count && before(&heap[r], &heap[m]))
            m = r;
        if (m == i)
            return;
        swap(i, m);
        i = m;
    }
}

static timer pop(void)
{
    timer t = heap[0];
    heap[0] = heap[--count];
    sift_down(0);
    return t;
}

static void *run(void *unused)
{
    (void)unused;
    prctl(PR_SET_NAME, "b24-timer", 0, 0, 0); /* the name top -H shows */
    pthread_mutex_lock(&lock);
    for (;;) {
        if (count == 0) {
            if (stopping)
                break;
            pthread_cond_wait(&wake, &lock);
            continue;
        }
        double now = b24_now();
        if (heap[0].at > now && !stopping) {
            struct timespec ts = b24_clock_after(CLOCK_MONOTONIC, heap[0].at - now);
            pthread_cond_timedwait(&wake, &lock, &ts);
            continue;
        }
        timer t = pop(); /* due, or everything fires at once when stopping */
        pthread_mutex_unlock(&lock);
        t.fn(t.arg);
        pthread_mutex_lock(&lock);
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Starts the timer thread. */
int b24_timer_start(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wake, &attr);
    pthread_condattr_destroy(&attr);
    stopping = 0;
    if (pthread_create(&thread, NULL, run, NULL) != 0)
        return -1;
    running = 1;
    return 0;
}

/* fn(arg) at monotonic time at, on the timer thread. */
int b24_timer_add(double at, b24_timer_fn fn, void *arg)
{
    pthread_mutex_lock(&lock);
    if (!running || stopping) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    if (count == cap) {
        size_t ncap = cap ? cap * 2 : 64;
        timer *h = realloc(heap, ncap * sizeof *h);
        if (h == NULL) {
            pthread_mutex_unlock(&lock);
            return -1;
        }
        heap = h;
        cap = ncap;
    }
    heap[count] = (timer){at, next_seq++, fn, arg};
    sift_up(count++);
    if (heap[0].seq == next_seq - 1) /* a new earliest deadline */
        pthread_cond_signal(&wake);
    pthread_mutex_unlock(&lock);
    return 0;
}

/* Fires everything still waiting, at once, and ends the thread. */
void b24_timer_stop(void)
{
    pthread_mutex_lock(&lock);
    if (!running) {
        pthread_mutex_unlock(&lock);
        return;
    }
    stopping = 1;
    pthread_cond_signal(&wake);
    pthread_mutex_unlock(&lock);
    pthread_join(thread, NULL);
    pthread_mutex_lock(&lock);
    running = 0;
    free(heap);
    heap = NULL;
    count = cap = 0;
    pthread_mutex_unlock(&lock);
    pthread_cond_destroy(&wake);
}
