/* Metrics a script sets, shown in /metrics and /healthz of b24 serve.
 *
 *   host.metric(name, labels, value [, kind])
 *     Sets the series name{labels} to value (a finite number); value nil removes it. name is a
 *     Prometheus metric name, labels a table of up to 16 label names to strings or numbers
 *     (nil: none), kind "gauge" (the default) or "counter" (one kind per name; a counter's
 *     value is the total the script keeps). At most 256 series, each at most 511 bytes of
 *     name and labels; raises on misuse. Any state, any thread; series outlive reloads.
 * /metrics prints them after the host's own, a "# TYPE" line per name; /healthz under
 * "script": { "name{labels}": value }. */
#ifndef B24_SMETRICS_H
#define B24_SMETRICS_H

#include <stddef.h>

#include <lua.h>

int b24_smetrics_set(lua_State *L);
/* The Prometheus text of the series (malloc'd; NULL when out of memory). */
char *b24_smetrics_render(size_t *len);
/* The series as JSON object members, without the braces (malloc'd). */
char *b24_smetrics_json(size_t *len);

#endif
