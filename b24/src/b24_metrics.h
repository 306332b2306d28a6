/* Process-wide counters of b24 serve for /metrics and /healthz (lock-free, relaxed atomics). */
#ifndef B24_METRICS_H
#define B24_METRICS_H

#include <stddef.h>

/* A request answered with status after `seconds`. */
void b24_metrics_request(int status, double seconds);
/* A handler call that raised. */
void b24_metrics_handler_error(void);
/* A reload on SIGHUP, ok or failed. */
void b24_metrics_reload(int ok);
/* Requests being received or handled: delta +1 at the start, -1 at the end. */
void b24_metrics_in_flight(int delta);
/* Requests being received or handled now. */
long b24_metrics_in_flight_now(void);
enum { B24_DELIVERY_STORED, B24_DELIVERY_DUPLICATE, B24_DELIVERY_MERGED, B24_DELIVERY_RERUN };
/* A delivery accepted (one of B24_DELIVERY_*): stored or run, a duplicate or merged answered at
 * once, or one that asked for one more run of its key. */
void b24_metrics_delivery(int result);
/* A handler run on a stored delivery, ok or failed. */
void b24_metrics_handler_run(int ok);
/* A delivery moved to the dead letters. */
void b24_metrics_dead_letter(void);
/* Whether the inbox's database is reachable (PostgreSQL): b24_inbox_up 1 or 0. */
void b24_metrics_inbox_up(int up);
/* Deliveries refused because the inbox could not commit them (answered 503: lost to Bitrix24). */
void b24_metrics_inbox_refused(long n);
/* Turns on the inbox's metrics, with depth() read as a gauge when rendering. */
void b24_metrics_inbox_depth(long (*depth)(void));
/* Turns on the background jobs' metrics: render() gives their lines, malloc'd (b24_jobs.c). */
void b24_metrics_jobs(char *(*render)(size_t *len));
/* Renders the Prometheus text format into a malloc'd string. */
char *b24_metrics_render(size_t *len);

#endif
