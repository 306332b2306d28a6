/* Process-wide counters for /metrics and /healthz, updated with relaxed atomics. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24_metrics.h"
#include "b24_smetrics.h"

static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NBOUNDS (sizeof bounds / sizeof bounds[0])

static atomic_ulong by_status[600];
static atomic_ulong buckets[NBOUNDS + 1];
static atomic_ulong duration_us_sum;
static atomic_ulong handler_errors;
static atomic_ulong reloads_ok, reloads_failed;
static atomic_long in_flight;
static atomic_ulong stored_total, duplicates_total, merged_total, rerun_total;
static atomic_ulong runs_ok, runs_failed, dead_total;
static long (*depth_fn)(void);
static atomic_int inbox_up = 1;
static atomic_ulong inbox_refused;
static char *(*jobs_fn)(size_t *len);

/* A delivery accepted: stored (or run), a duplicate, merged, or one more run asked for. */
void b24_metrics_delivery(int result)
{
    atomic_ulong *c = result == B24_DELIVERY_DUPLICATE ? &duplicates_total
                      : result == B24_DELIVERY_MERGED  ? &merged_total
                      : result == B24_DELIVERY_RERUN   ? &rerun_total
                                                       : &stored_total;
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* A handler run on a stored delivery. */
void b24_metrics_handler_run(int ok)
{
    atomic_fetch_add_explicit(ok ? &runs_ok : &runs_failed, 1, memory_order_relaxed);
}

/* A delivery moved to the dead letters. */
void b24_metrics_dead_letter(void)
{
    atomic_fetch_add_explicit(&dead_total, 1, memory_order_relaxed);
}

/* Turns on the inbox metrics; depth() is read when rendering. */
void b24_metrics_inbox_depth(long (*depth)(void))
{
    depth_fn = depth;
}

/* The inbox's database up or down. */
void b24_metrics_inbox_up(int up)
{
    atomic_store_explicit(&inbox_up, up, memory_order_relaxed);
}

/* Deliveries the inbox could not commit. */
void b24_metrics_inbox_refused(long n)
{
    atomic_fetch_add_explicit(&inbox_refused, (unsigned long)n, memory_order_relaxed);
}

/* Turns on the jobs' metrics; render() is called when rendering. */
void b24_metrics_jobs(char *(*render)(size_t *len))
{
    jobs_fn = render;
}

/* A request answered with status after seconds. */
void b24_metrics_request(int status, double seconds)
{
    if (status >= 100 && status < 600)
        atomic_fetch_add_explicit(&by_status[status], 1, memory_order_relaxed);
    size_t b = 0;
    while (b < NBOUNDS && seconds > bounds[b])
        b++;
    atomic_fetch_add_explicit(&buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&duration_us_sum, (unsigned long)(seconds * 1e6),
                              memory_order_relaxed);
}

/* A handler call that raised. */
void b24_metrics_handler_error(void)
{
    atomic_fetch_add_explicit(&handler_errors, 1, memory_order_relaxed);
}

/* A reload on SIGHUP. */
void b24_metrics_reload(int ok)
{
    atomic_fetch_add_explicit(ok ? &reloads_ok : &reloads_failed, 1, memory_order_relaxed);
}

/* Requests under way: +1 at the start, -1 at the end. */
void b24_metrics_in_flight(int delta)
{
    atomic_fetch_add_explicit(&in_flight, delta, memory_order_relaxed);
}

/* Requests under way now. */
long b24_metrics_in_flight_now(void)
{
    return atomic_load_explicit(&in_flight, memory_order_relaxed);
}

typedef struct out {
    char *buf;
    size_t len, cap;
} out;

static void put(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out *o, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = o->buf ? vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && (size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap ? o->cap * 2 : 4096;
        char *b = realloc(o->buf, cap);
        if (b == NULL)
            return; /* rendered short rather than not at all */
        o->buf = b;
        o->cap = cap;
    }
}

/* The Prometheus text format, malloc'd. */
char *b24_metrics_render(size_t *len)
{
    out o = {NULL, 0, 0};
    put(&o, "# HELP b24_requests_total HTTP requests answered, by status code.\n"
            "# TYPE b24_requests_total counter\n");
    for (int s = 100; s < 600; s++) {
        unsigned long n = atomic_load_explicit(&by_status[s], memory_order_relaxed);
        if (n)
            put(&o, "b24_requests_total{code=\"%d\"} %lu\n", s, n);
    }
    put(&o,
        "# HELP b24_handler_errors_total Handler calls that failed: a request's handler that "
        "raised, and every inbox run counted as b24_handler_runs_total{outcome=\"error\"}.\n"
        "# TYPE b24_handler_errors_total counter\n"
        "b24_handler_errors_total %lu\n",
        atomic_load_explicit(&handler_errors, memory_order_relaxed));
    put(&o,
        "# HELP b24_in_flight_requests Requests being received or handled now.\n"
        "# TYPE b24_in_flight_requests gauge\n"
        "b24_in_flight_requests %ld\n",
        b24_metrics_in_flight_now());
    put(&o,
        "# HELP b24_reloads_total Script reloads on SIGHUP, by result.\n"
        "# TYPE b24_reloads_total counter\n"
        "b24_reloads_total{result=\"ok\"} %lu\n"
        "b24_reloads_total{result=\"failed\"} %lu\n",
        atomic_load_explicit(&reloads_ok, memory_order_relaxed),
        atomic_load_explicit(&reloads_failed, memory_order_relaxed));
    put(&o,
        "# HELP b24_deliveries_total Accepted deliveries: stored (or run at once), duplicates"
        " and merged ones answered at once, and those that asked for one more run.\n"
        "# TYPE b24_deliveries_total counter\n"
        "b24_deliveries_total{result=\"stored\"} %lu\n"
        "b24_deliveries_total{result=\"duplicate\"} %lu\n"
        "b24_deliveries_total{result=\"merged\"} %lu\n"
        "b24_deliveries_total{result=\"rerun\"} %lu\n",
        atomic_load_explicit(&stored_total, memory_order_relaxed),
        atomic_load_explicit(&duplicates_total, memory_order_relaxed),
        atomic_load_explicit(&merged_total, memory_order_relaxed),
        atomic_load_explicit(&rerun_total, memory_order_relaxed));
    if (depth_fn) {
        put(&o,
            "# HELP b24_handler_runs_total Runs of the handlers on stored deliveries.\n"
            "# TYPE b24_handler_runs_total counter\n"
            "b24_handler_runs_total{outcome=\"ok\"} %lu\n"
            "b24_handler_runs_total{outcome=\"error\"} %lu\n",
            atomic_load_explicit(&runs_ok, memory_order_relaxed),
            atomic_load_explicit(&runs_failed, memory_order_relaxed));
        put(&o,
            "# HELP b24_dead_letters_total Deliveries that failed every attempt.\n"
            "# TYPE b24_dead_letters_total counter\n"
            "b24_dead_letters_total %lu\n",
            atomic_load_explicit(&dead_total, memory_order_relaxed));
        put(&o,
            "# HELP b24_inbox_depth Stored deliveries not yet handled.\n"
            "# TYPE b24_inbox_depth gauge\n"
            "b24_inbox_depth %ld\n"
            "# HELP b24_inbox_up Whether the inbox's database is reachable (1) or not (0).\n"
            "# TYPE b24_inbox_up gauge\n"
            "b24_inbox_up %d\n"
            "# HELP b24_inbox_refused_total Deliveries answered 503 because the inbox could not "
            "commit them (Bitrix24 does not send them again).\n"
            "# TYPE b24_inbox_refused_total counter\n"
            "b24_inbox_refused_total %lu\n",
            depth_fn(), atomic_load_explicit(&inbox_up, memory_order_relaxed),
            atomic_load_explicit(&inbox_refused, memory_order_relaxed));
    }
    size_t jobs_len = 0;
    char *jobs_text = jobs_fn ? jobs_fn(&jobs_len) : NULL;
    if (jobs_text)
        put(&o, "%.*s", (int)jobs_len, jobs_text);
    free(jobs_text);
    size_t script_len = 0;
    char *script_text = b24_smetrics_render(&script_len);
    if (script_text)
        put(&o, "%.*s", (int)script_len, script_text);
    free(script_text);
    put(&o, "# HELP b24_request_duration_seconds Time from request start to response queued.\n"
            "# TYPE b24_request_duration_seconds histogram\n");
    unsigned long cumulative = 0;
    for (size_t b = 0; b <= NBOUNDS; b++) {
        cumulative += atomic_load_explicit(&buckets[b], memory_order_relaxed);
        if (b < NBOUNDS)
            put(&o, "b24_request_duration_seconds_bucket{le=\"%g\"} %lu\n", bounds[b], cumulative);
        else
            put(&o, "b24_request_duration_seconds_bucket{le=\"+Inf\"} %lu\n", cumulative);
    }
    put(&o, "b24_request_duration_seconds_sum %.6f\n",
        (double)atomic_load_explicit(&duration_us_sum, memory_order_relaxed) / 1e6);
    put(&o, "b24_request_duration_seconds_count %lu\n", cumulative);
    *len = o.len;
    return o.buf;
}
