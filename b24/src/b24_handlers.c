/* Handler threads of the durable inbox: each claims a stored delivery, runs the router's
 * dispatch on it in its own Lua state, and records the outcome, which the inbox turns into
 * done, a later retry, or a dead letter. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <lauxlib.h>

#include "b24.h" /* b24_mask */
#include "b24_deadline.h"
#include "b24_handlers.h"
#include "b24_inbox.h"
#include "b24_log.h"
#include "b24_metrics.h"
#include "b24_script.h"
#include "b24_state.h"

static b24_inbox *handlers_inbox;
static pthread_t *threads;
static int nthreads;
static double handler_timeout;
/* [router, job] -> ok, err, traceback: router:dispatch({body, headers}, ctx) inside lua_pcall;
 * on success err is the number of handlers the event matched, on failure a string, with the
 * failures' tracebacks (or nil) after it */
static int call_dispatch(lua_State *L)
{
    const b24_job *job = lua_touserdata(L, 2);
    lua_getfield(L, 1, "dispatch");
    lua_pushvalue(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushlstring(L, job->body, job->body_len);
    lua_setfield(L, -2, "body");
    lua_createtable(L, 0, 1);
    lua_pushstring(L, job->content_type);
    lua_setfield(L, -2, "content-type");
    lua_setfield(L, -2, "headers");
    lua_createtable(L, 0, 3); /* ctx */
    lua_pushinteger(L, job->attempt);
    lua_setfield(L, -2, "attempt");
    lua_getglobal(L, "require");
    lua_pushliteral(L, "b24.host");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "log");
    lua_setfield(L, -3, "log");
    lua_pop(L, 1);
    lua_call(L, 3, 2);
    lua_pushnil(L);                                    /* the traceback */
    if (!lua_toboolean(L, -3) && lua_istable(L, -2)) { /* a bitrix24.Error */
        lua_getfield(L, -2, "traceback");
        lua_replace(L, -2);
    }
    if (!lua_toboolean(L, -3) && !lua_isnoneornil(L, -2) && !lua_isstring(L, -2)) {
        luaL_tolstring(L, -2, NULL); /* an error object: its tostring */
        lua_replace(L, -3);
    }
    return 3;
}

#define CLAIM 16 /* deliveries a thread takes at once */

static void run_one(b24_job *job);

/* How much nicer than the process a handler thread runs: the CPU goes to answering and
 * committing deliveries first (a 200 waits for its commit; a run only has to happen soon), so a
 * burst is taken in at the rate the request threads and the inbox thread alone allow, and the
 * handler threads run it down at full speed once the burst is in, or beside it wherever a CPU is
 * idle (docs/performance.md, "The durable path"). Linux gives each thread its own nice value. */
#define HANDLER_NICE 10

/* This thread's nice value raised by HANDLER_NICE (at most 19); left as it is on failure. */
static void lower_priority(void)
{
    id_t tid = (id_t)syscall(SYS_gettid);
    errno = 0;
    int nice_now = getpriority(PRIO_PROCESS, tid);
    if (nice_now == -1 && errno != 0)
        return;
    int want = nice_now + HANDLER_NICE > 19 ? 19 : nice_now + HANDLER_NICE;
    if (setpriority(PRIO_PROCESS, tid, want) != 0)
        b24_log(B24_DEBUG, "handler thread priority unchanged", NULL);
}

static void *handler_main(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "b24-handler", 0, 0, 0); /* the name top -H shows */
    lower_priority();
    b24_job jobs[CLAIM];
    for (;;) {
        memset(jobs, 0, sizeof jobs);
        int n = b24_inbox_claim(handlers_inbox, jobs, CLAIM);
        if (n == 0)
            break;
        for (int i = 0; i < n; i++) {
            if (b24_inbox_stopping(handlers_inbox)) /* finish the run under way, no more */
                b24_inbox_release(handlers_inbox, &jobs[i]);
            else
                run_one(&jobs[i]);
        }
    }
    return NULL;
}

/* Runs router:dispatch on one delivery and queues the outcome. */
static void run_one(b24_job *jobp)
{
    b24_job job = *jobp;
    char err[4096], trace[8192], attempt_s[16], handlers_s[24] = "";
    {
        const char *error = NULL, *traceback = NULL;
        lua_State *L = b24_script_state();
        if (L == NULL) {
            error = "the script failed to load";
        } else {
            lua_settop(L, 1);
            lua_pushcfunction(L, call_dispatch);
            lua_pushvalue(L, 1);
            lua_pushlightuserdata(L, &job);
            b24_deadline_begin(B24_DEADLINE_HANDLER);
            int status = b24_state_call(L, 2, 3);
            int deadline = b24_deadline_end();
            if (deadline == B24_DEADLINE_STOPPED) { /* cut short by the stop: not an attempt */
                lua_settop(L, 1);
                b24_log(B24_WARN, "delivery released: the server stopped during its run", "event",
                        job.event, NULL);
                b24_inbox_release(handlers_inbox, &job);
                return;
            }
            if (deadline == B24_DEADLINE_EXPIRED) {
                lua_settop(L, 1);
                snprintf(err, sizeof err, "handler timed out after %g s (--handler-timeout)",
                         handler_timeout);
                error = err;
            } else if (status != LUA_OK || !lua_toboolean(L, -3)) {
                const char *m = lua_tostring(L, status != LUA_OK ? -1 : -2);
                b24_mask(m ? m : "handler failed without a message", m ? strlen(m) : 32, err,
                         sizeof err);
                error = err;
                const char *t = status == LUA_OK ? lua_tostring(L, -1) : NULL;
                if (t) {
                    b24_mask(t, strlen(t), trace, sizeof trace);
                    traceback = trace;
                }
            } else {
                snprintf(handlers_s, sizeof handlers_s, "%lld", (long long)lua_tointeger(L, -2));
            }
            lua_settop(L, 1);
        }
        snprintf(attempt_s, sizeof attempt_s, "%d", job.attempt);
        b24_metrics_handler_run(error == NULL);
        if (error != NULL) { /* one line an attempt; the tracebacks at debug */
            b24_metrics_handler_error();
            b24_log(B24_WARN, "delivery failed", "event", job.event, "attempt", attempt_s, "error",
                    error, NULL);
            if (traceback)
                b24_log(B24_DEBUG, "delivery failure traceback", "event", job.event, "attempt",
                        attempt_s, "traceback", traceback, NULL);
        } else if (strcmp(handlers_s, "0") == 0) {
            b24_log(B24_INFO, "delivery matched no handler", "event", job.event, "attempt",
                    attempt_s, NULL);
        } else {
            b24_log(B24_INFO, "delivery handled", "event", job.event, "attempt", attempt_s,
                    "handlers", handlers_s, NULL);
        }
        b24_inbox_finish(handlers_inbox, &job, error);
    }
}

/* Starts n handler threads on the inbox. */
int b24_handlers_start(b24_inbox *in, int n, double timeout)
{
    handlers_inbox = in;
    handler_timeout = timeout;
    b24_deadline_set(B24_DEADLINE_HANDLER, timeout);
    threads = calloc((size_t)n, sizeof *threads);
    if (threads == NULL)
        return -1;
    for (nthreads = 0; nthreads < n; nthreads++)
        if (pthread_create(&threads[nthreads], NULL, handler_main, NULL) != 0)
            return -1;
    return 0;
}

/* Ends the handler threads once their runs finish (the stop caps their deadline). */
void b24_handlers_stop(void)
{
    if (handlers_inbox)
        b24_inbox_stop_claims(handlers_inbox);
    for (int i = 0; i < nthreads; i++)
        pthread_join(threads[i], NULL);
    free(threads);
    threads = NULL;
    nthreads = 0;
}
