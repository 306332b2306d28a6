/* Background jobs of b24 serve and the inbox for scripts (b24.host.job, .wake, .inbox_put).
 *
 *   host.job(name, seconds, fn)
 *     Registers a background job while the script loads. The script is loaded in every Lua state
 *     the host makes; only the registrations made in the jobs threads' states count (the
 *     others are checked and kept aside), so a script calls it unconditionally at load. name is
 *     1..128 printable ASCII characters without spaces, '"' or '\'; seconds a number > 0; fn a
 *     function. A name registered twice in one state raises. The host runs the jobs in
 *     --jobs threads (2 by default), each with its own Lua state (built like a worker's,
 *     rebuilt after SIGHUP, when the new script's jobs replace the old ones): the first run as
 *     soon as the server starts, then every `seconds` after the end of the previous run, and
 *     as soon as possible after host.wake(name) (wakes during a run coalesce into one more run
 *     after it). Each job belongs to one thread, always the same (so it keeps its Lua data):
 *     the jobs are dealt over the threads in the order of their first registration (job k to
 *     thread k mod --jobs). A job's runs never overlap; jobs of one thread run one after
 *     another, jobs of distinct threads at once. Each run is under the handler deadline
 *     (--handler-timeout) that a script cannot catch; a raise or a deadline is logged (warn
 *     "job failed", masked, with the job's name) and the job runs again at its next time. fn may
 *     return a number >= 0: seconds until its next run (0: at once), else the interval applies.
 *     On SIGTERM the run under way finishes (within --drain-timeout) and no new run starts.
 *     Outside b24 serve (b24 run, ...) it raises "host.job: only under b24 serve".
 *     Metrics: b24_job_runs_total{job, outcome="ok|error"}, b24_job_last_run_seconds{job}
 *     (unix time of the end of the last run).
 *   host.wake(name) -> true | false (no such job)        any state, any thread.
 *   host.inbox_put{ key, event, body, content_type = "", kind = nil }
 *     -> "stored" | "duplicate" | "merged" | nil, err
 *     Commits one delivery to the serve's inbox as an accepted online delivery is committed
 *     (the same dedup/merge rules by key and the event's kind: a repeat of an add's or delete's
 *     key is a duplicate, of any other key pending is merged, running is stored as its one more
 *     run) and returns once the group commit is durable, so the caller may acknowledge its
 *     source afterwards. kind ("add", "update", "delete", "other"), when given, must be the
 *     kind the event's name has (the inbox decides by the name): else it raises. The handler
 *     threads then dispatch it like any other delivery. nil, err: no inbox (--sync, a handler
 *     that is not a router, outside b24 serve), a key over 1 KiB or empty, a body over
 *     --max-body, the inbox unavailable (stopping). Callable from the jobs thread and from
 *     handler threads (it blocks the calling thread until the commit). */
#ifndef B24_JOBS_H
#define B24_JOBS_H

#include <stddef.h>

#include <lua.h>

#include "b24_inbox.h"

/* Under b24 serve, with threads jobs threads (1..16): host.job registers; call before the
 * script first loads. */
void b24_jobs_configure(int threads);
/* The inbox host.inbox_put commits to, at most max_body bytes a body; NULL with why, the reason
 * there is none ("--sync", ...). NULL again before the inbox closes. */
void b24_jobs_set_inbox(b24_inbox *in, size_t max_body, const char *why);
/* The inbox host.inbox_put (and b24_hostdb.c) writes to, or NULL with why there is none. The
 * inbox stays valid while an operation queued on it has not completed. */
b24_inbox *b24_jobs_inbox(char *why, size_t whylen);
/* Starts the jobs threads when a loaded script registered a job and they are not running yet,
 * and waits for their states to be built; -1 when one cannot start. */
int b24_jobs_start(void);
/* After a reload: the jobs threads rebuild their states now (started if the new script has
 * jobs). */
int b24_jobs_reloaded(void);
/* Lets the run under way finish (the stop caps its deadline), starts no new one, ends the
 * thread and forgets the jobs. */
void b24_jobs_stop(void);

/* The Lua functions of b24.host: job, wake, inbox_put. */
int b24_jobs_job(lua_State *L);
int b24_jobs_wake(lua_State *L);
int b24_jobs_inbox_put(lua_State *L);

#endif
