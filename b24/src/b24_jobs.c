/* Background jobs of b24 serve and host.inbox_put: see b24_jobs.h. The jobs live in a table
 * under one mutex (names, intervals, next times, wakes, running flags, counters); each jobs
 * thread's Lua state holds their functions in its registry (every state loads the same script,
 * so each registers them all). A state's serial is the generation of the script it loaded:
 * once a thread adopts a state of a newer serial (after a reload), the jobs the old script
 * registered and the new one did not are dropped. Each job belongs to one thread (by the order
 * of first registration), so it never overlaps itself, keeps its Lua data, and jobs of
 * distinct threads run at once. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include <lauxlib.h>

#include "b24.h" /* b24_mask */
#include "b24_clock.h"
#include "b24_deadline.h"
#include "b24_dedup.h"
#include "b24_jobs.h"
#include "b24_log.h"
#include "b24_metrics.h"
#include "b24_script.h"
#include "b24_state.h"

#define MAX_JOBS 64
#define MAX_THREADS 16
#define MAX_NAME 128
#define MAX_KEY 1024
#define FUNCTIONS "b24.jobs"     /* registry: name -> fn, in every state */
#define SERIAL "b24.jobs.serial" /* registry: the jobs thread's serial of this state */

typedef struct job {
    char name[MAX_NAME + 1];
    double interval, next_at; /* seconds; monotonic */
    unsigned serial;          /* of the state that registered it */
    int woken, removed, running;
    int thread; /* the jobs thread that runs it, always the same (its Lua data stay its own) */
    unsigned long ok, failed;
    double last_run; /* unix time; 0: never */
} job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake;  /* the jobs threads sleep on this (monotonic clock) */
static pthread_cond_t ready; /* b24_jobs_start waits on this */
static job *jobs[MAX_JOBS];  /* never freed before b24_jobs_stop: pointers stay valid */
static int njobs;
static int serving;         /* under b24 serve */
static atomic_int declared; /* a state registered a job: the thread is needed */
static int nthreads = 1;    /* --jobs */
static int started, stopping, nready;
static unsigned refreshes;      /* reloads: each thread adopts the new state when it moved on */
static unsigned current_serial; /* the newest script generation a jobs thread adopted */
static pthread_t thread_ids[MAX_THREADS];
static __thread int in_jobs_thread;
/* host.inbox_put's inbox */
static b24_inbox *put_inbox;
static size_t put_max_body;
static char put_none[64] = "only under b24 serve";

/* ---- host.job and host.wake ---------------------------------------------------------------- */

static job *find(const char *name)
{
    for (int i = 0; i < njobs; i++)
        if (strcmp(jobs[i]->name, name) == 0)
            return jobs[i];
    return NULL;
}

/* The name's problem, or NULL when it may name a job (and a metrics label as it is). */
static const char *bad_name(const char *name, size_t len)
{
    if (len == 0 || len > MAX_NAME)
        return "a job's name is 1 to 128 characters";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
            return "a job's name is printable ASCII without spaces, '\"' or '\\'";
    }
    return NULL;
}

/* This state's serial: the generation of the script it loaded (kept in its registry). */
static unsigned state_serial(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, SERIAL);
    unsigned serial = (unsigned)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (serial == 0) {
        serial = b24_script_generation();
        lua_pushinteger(L, (lua_Integer)serial);
        lua_setfield(L, LUA_REGISTRYINDEX, SERIAL);
    }
    return serial;
}

/* Adds or updates a job registered by the jobs thread's state of serial; -1 when full. */
static int enrol(const char *name, double interval, unsigned serial)
{
    pthread_mutex_lock(&lock);
    job *j = find(name);
    if (j == NULL && njobs < MAX_JOBS && (j = calloc(1, sizeof *j)) != NULL) {
        snprintf(j->name, sizeof j->name, "%s", name);
        j->removed = 1;
        j->thread = njobs % nthreads; /* spread in the order of first registration */
        jobs[njobs++] = j;
    }
    if (j != NULL) {
        double now = b24_now();
        if (j->removed) /* new, or back after a reload: its first run at once */
            j->next_at = now;
        else if (j->next_at > now + interval) /* a reload shortened its interval */
            j->next_at = now + interval;
        j->removed = 0;
        j->interval = interval;
        j->serial = serial;
        pthread_cond_broadcast(&wake);
    }
    pthread_mutex_unlock(&lock);
    return j ? 0 : -1;
}

/* host.job(name, seconds, fn) */
int b24_jobs_job(lua_State *L)
{
    if (!serving)
        return luaL_error(L, "host.job: only under b24 serve");
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    const char *why = bad_name(name, len);
    if (why)
        return luaL_error(L, "host.job: %s", why);
    double seconds = luaL_checknumber(L, 2);
    if (!(seconds > 0) || !isfinite(seconds))
        return luaL_error(L, "host.job: the interval of job %s must be a number of seconds > 0",
                          name);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    if (lua_getfield(L, LUA_REGISTRYINDEX, FUNCTIONS) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, FUNCTIONS);
    }
    if (lua_getfield(L, -1, name) != LUA_TNIL)
        return luaL_error(L, "host.job: job %s is already registered", name);
    lua_pop(L, 1);
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
    atomic_store(&declared, 1);
    if (in_jobs_thread && enrol(name, seconds, state_serial(L)) != 0)
        return luaL_error(L, "host.job: too many jobs (at most %d)", MAX_JOBS);
    return 0;
}

/* host.wake(name) -> true, or false when no such job */
int b24_jobs_wake(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    pthread_mutex_lock(&lock);
    job *j = find(name);
    int found = j != NULL && !j->removed;
    if (found) {
        j->woken = 1;
        pthread_cond_broadcast(&wake);
    }
    pthread_mutex_unlock(&lock);
    lua_pushboolean(L, found);
    return 1;
}

/* ---- the jobs thread ----------------------------------------------------------------------- */

/* This thread's state (rebuilt when a reload published a new script); when it is the first of
 * a newer serial, the jobs only the old script had are dropped. */
static lua_State *adopt_state(void)
{
    lua_State *L = b24_script_state();
    if (L == NULL)
        return NULL;
    unsigned serial = state_serial(L);
    pthread_mutex_lock(&lock);
    if (serial > current_serial) {
        int first = current_serial == 0;
        current_serial = serial;
        char names[512] = "";
        size_t n = 0;
        for (int i = 0; i < njobs; i++) {
            if (jobs[i]->serial != serial)
                jobs[i]->removed = 1;
            if (!jobs[i]->removed && n < sizeof names)
                n += (size_t)snprintf(names + n, sizeof names - n, "%s%s", n ? "," : "",
                                      jobs[i]->name);
        }
        pthread_mutex_unlock(&lock);
        b24_log(B24_INFO, first ? "jobs ready" : "jobs reloaded", "jobs", names, NULL);
        return L;
    }
    pthread_mutex_unlock(&lock);
    return L;
}

/* [-0, +1] the job's function from the state's registry (nil when it has none) */
static void push_function(lua_State *L, const char *name)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, FUNCTIONS) == LUA_TTABLE)
        lua_getfield(L, -1, name);
    else
        lua_pushnil(L);
    lua_remove(L, -2);
}

/* Runs one job once; its next time and counters are set under the lock. */
static void run(job *j)
{
    lua_State *L = adopt_state();
    char err[2048] = "";
    double next = j->interval;
    int ok = 0;
    if (L == NULL) {
        snprintf(err, sizeof err, "the script failed to load");
    } else {
        lua_settop(L, 1);
        push_function(L, j->name);
        if (!lua_isfunction(L, -1)) { /* the state that registered it did not load */
            lua_settop(L, 1);
            pthread_mutex_lock(&lock);
            j->removed = 1;
            j->running = 0;
            pthread_mutex_unlock(&lock);
            return;
        }
        b24_deadline_begin(B24_DEADLINE_HANDLER);
        int status = b24_state_call(L, 0, 1);
        int deadline = b24_deadline_end();
        if (deadline == B24_DEADLINE_STOPPED) {
            snprintf(err, sizeof err, "cut short: the server stopped (--drain-timeout)");
        } else if (deadline == B24_DEADLINE_EXPIRED) {
            snprintf(err, sizeof err, "timed out (--handler-timeout)");
        } else if (status != LUA_OK) {
            const char *m = lua_tostring(L, -1);
            const char *trace = m ? strstr(m, "\nstack traceback:") : NULL;
            if (trace) /* the traceback at debug; the warning is one line */
                b24_log(B24_DEBUG, "job failure traceback", "job", j->name, "traceback", m, NULL);
            b24_mask(m ? m : "failed without a message",
                     m ? (trace ? (size_t)(trace - m) : strlen(m)) : 24, err, sizeof err);
        } else {
            ok = 1;
            if (lua_type(L, -1) == LUA_TNUMBER) {
                double asked = lua_tonumber(L, -1);
                if (asked >= 0 && isfinite(asked))
                    next = asked;
            }
        }
        lua_settop(L, 1);
    }
    if (!ok)
        b24_log(B24_WARN, "job failed", "job", j->name, "error", err, NULL);
    else
        b24_log(B24_DEBUG, "job ran", "job", j->name, NULL);
    pthread_mutex_lock(&lock);
    if (ok)
        j->ok++;
    else
        j->failed++;
    j->last_run = b24_wall_now();
    j->next_at = b24_now() + next;
    j->running = 0;
    pthread_cond_broadcast(&wake); /* woken while it ran: another thread may take it now */
    pthread_mutex_unlock(&lock);
}

static void *jobs_main(void *arg)
{
    int self = (int)(intptr_t)arg;
    prctl(PR_SET_NAME, "b24-job", 0, 0, 0); /* the name top -H shows */
    in_jobs_thread = 1;
    adopt_state(); /* the first state: its load registers the jobs */
    pthread_mutex_lock(&lock);
    unsigned seen = refreshes;
    nready++;
    pthread_cond_broadcast(&ready);
    while (!stopping) {
        if (seen != refreshes) { /* a reload's state */
            seen = refreshes;
            pthread_mutex_unlock(&lock);
            adopt_state();
            pthread_mutex_lock(&lock);
            continue;
        }
        double now = b24_now(), when = INFINITY;
        job *due = NULL;
        for (int i = 0; i < njobs; i++) {
            job *j = jobs[i];
            double at = j->woken ? now : j->next_at;
            if (j->thread == self && !j->removed && !j->running && at < when)
                when = at, due = j;
        }
        if (due && when <= now) {
            due->woken = 0; /* a wake from now on is one more run after this one */
            due->running = 1;
            pthread_mutex_unlock(&lock);
            run(due);
            pthread_mutex_lock(&lock);
        } else if (due) {
            struct timespec ts = b24_clock_after(CLOCK_MONOTONIC, when - now);
            pthread_cond_timedwait(&wake, &lock, &ts);
        } else {
            pthread_cond_wait(&wake, &lock);
        }
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* The metrics lines of the jobs (malloc'd), for b24_metrics_render. */
static char *render(size_t *len)
{
    pthread_mutex_lock(&lock);
    size_t cap = 512 + (size_t)njobs * 3 * (MAX_NAME + 96), n = 0;
    char *out = malloc(cap);
    if (out != NULL && njobs > 0) {
        n += (size_t)snprintf(out + n, cap - n,
                              "# HELP b24_job_runs_total Runs of background jobs (host.job), by "
                              "outcome.\n# TYPE b24_job_runs_total counter\n");
        for (int i = 0; i < njobs; i++)
            n += (size_t)snprintf(out + n, cap - n,
                                  "b24_job_runs_total{job=\"%s\",outcome=\"ok\"} %lu\n"
                                  "b24_job_runs_total{job=\"%s\",outcome=\"error\"} %lu\n",
                                  jobs[i]->name, jobs[i]->ok, jobs[i]->name, jobs[i]->failed);
        n += (size_t)snprintf(out + n, cap - n,
                              "# HELP b24_job_last_run_seconds When a job's last run ended (unix "
                              "time; 0: never).\n# TYPE b24_job_last_run_seconds gauge\n");
        for (int i = 0; i < njobs; i++)
            n += (size_t)snprintf(out + n, cap - n, "b24_job_last_run_seconds{job=\"%s\"} %.3f\n",
                                  jobs[i]->name, jobs[i]->last_run);
    }
    pthread_mutex_unlock(&lock);
    *len = n;
    return out;
}

/* Under b24 serve from now on, with threads jobs threads. */
void b24_jobs_configure(int threads)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wake, &attr);
    pthread_condattr_destroy(&attr);
    pthread_cond_init(&ready, NULL);
    nthreads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    serving = 1;
    b24_metrics_jobs(render);
}

/* Starts the threads if a job was registered, and waits for their first states. */
int b24_jobs_start(void)
{
    if (!atomic_load(&declared) || started)
        return 0;
    pthread_mutex_lock(&lock);
    nready = 0;
    for (; started < nthreads; started++)
        if (pthread_create(&thread_ids[started], NULL, jobs_main, (void *)(intptr_t)started) != 0)
            break;
    int want = started;
    while (nready < want)
        pthread_cond_wait(&ready, &lock);
    pthread_mutex_unlock(&lock);
    return want == nthreads ? 0 : -1;
}

/* Each jobs thread adopts the new script's state at once. */
int b24_jobs_reloaded(void)
{
    if (!started)
        return b24_jobs_start();
    pthread_mutex_lock(&lock);
    refreshes++;
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    return 0;
}

/* Ends the threads after their runs under way, and forgets the jobs. */
void b24_jobs_stop(void)
{
    pthread_mutex_lock(&lock);
    stopping = 1;
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < started; i++)
        pthread_join(thread_ids[i], NULL);
    started = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < njobs; i++)
        free(jobs[i]);
    njobs = 0;
    pthread_mutex_unlock(&lock);
}

/* ---- host.inbox_put ------------------------------------------------------------------------ */

static pthread_mutex_t put_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t put_cond = PTHREAD_COND_INITIALIZER;

/* The inbox for host.inbox_put, or none and why. */
void b24_jobs_set_inbox(b24_inbox *in, size_t max_body, const char *why)
{
    pthread_mutex_lock(&put_lock);
    put_inbox = in;
    put_max_body = max_body;
    snprintf(put_none, sizeof put_none, "%s", why ? why : "stopping");
    pthread_mutex_unlock(&put_lock);
}

/* The inbox scripts write to, or NULL with why there is none. */
b24_inbox *b24_jobs_inbox(char *why, size_t whylen)
{
    pthread_mutex_lock(&put_lock);
    b24_inbox *in = put_inbox;
    if (in == NULL)
        snprintf(why, whylen, "%s", put_none);
    pthread_mutex_unlock(&put_lock);
    return in;
}

/* On the inbox thread, once the put is committed or refused: wakes the caller. */
static void put_done(b24_put *put)
{
    pthread_mutex_lock(&put_lock);
    *(int *)put->arg = 1;
    pthread_cond_broadcast(&put_cond);
    pthread_mutex_unlock(&put_lock);
}

/* [-0, +0] t[field] as a string (len in *len), or NULL when absent; raises on another type */
static const char *string_field(lua_State *L, const char *field, size_t *len)
{
    lua_getfield(L, 1, field);
    int t = lua_type(L, -1);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return NULL;
    }
    if (t != LUA_TSTRING)
        luaL_error(L, "host.inbox_put: %s must be a string, not a %s", field, lua_typename(L, t));
    const char *s = lua_tolstring(L, -1, len);
    lua_pop(L, 1); /* the table keeps it alive */
    return s;
}

/* The kind an event's name has, as the router names it (bitrix24.event kind). */
static const char *kind_of(const char *event)
{
    size_t n = strlen(event);
    if (n >= 3 && strcmp(event + n - 3, "ADD") == 0)
        return "add";
    if (n >= 6 && strcmp(event + n - 6, "UPDATE") == 0)
        return "update";
    if (n >= 6 && strcmp(event + n - 6, "DELETE") == 0)
        return "delete";
    return "other";
}

/* host.inbox_put{ key, event, body, content_type, kind } -> "stored"|"duplicate"|"merged" | nil,
 * err */
int b24_jobs_inbox_put(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t key_len = 0, event_len = 0, body_len = 0, type_len = 0, kind_len = 0;
    const char *key = string_field(L, "key", &key_len);
    const char *event = string_field(L, "event", &event_len);
    const char *body = string_field(L, "body", &body_len);
    const char *content_type = string_field(L, "content_type", &type_len);
    const char *kind = string_field(L, "kind", &kind_len);
    if (key == NULL || event == NULL || body == NULL)
        return luaL_error(L, "host.inbox_put: key, event and body are required strings");
    if (event_len == 0 || strlen(event) != event_len || event_len > MAX_NAME)
        return luaL_error(L, "host.inbox_put: event must be an event's name (1 to 128 bytes)");
    if (content_type && strlen(content_type) != type_len)
        return luaL_error(L, "host.inbox_put: content_type must not hold NUL bytes");
    if (kind && strcmp(kind, "add") != 0 && strcmp(kind, "update") != 0 &&
        strcmp(kind, "delete") != 0 && strcmp(kind, "other") != 0)
        return luaL_error(L, "host.inbox_put: kind must be add, update, delete or other");
    if (kind && strcmp(kind, kind_of(event)) != 0)
        return luaL_error(L,
                          "host.inbox_put: kind %s does not match event %s, an event of kind %s "
                          "(the inbox deduplicates by the event's name)",
                          kind, event, kind_of(event));
    pthread_mutex_lock(&put_lock);
    b24_inbox *in = put_inbox;
    size_t max_body = put_max_body;
    char none[sizeof put_none];
    memcpy(none, put_none, sizeof none);
    pthread_mutex_unlock(&put_lock);
    if (in == NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "host.inbox_put: no inbox (%s)", none);
        return 2;
    }
    if (key_len == 0 || key_len > MAX_KEY) {
        lua_pushnil(L);
        lua_pushfstring(L, "host.inbox_put: the key is %d bytes (1 to %d)", (int)key_len, MAX_KEY);
        return 2;
    }
    if (body_len > max_body) {
        lua_pushnil(L);
        lua_pushfstring(L, "host.inbox_put: the body is over --max-body (%d bytes)", (int)max_body);
        return 2;
    }
    int done = 0;
    b24_put put;
    memset(&put, 0, sizeof put);
    put.key = key;
    put.key_len = key_len;
    put.event = event;
    put.content_type = content_type ? content_type : "";
    put.body = body;
    put.body_len = body_len;
    put.done = put_done;
    put.arg = &done;
    b24_inbox_put(in, &put);
    pthread_mutex_lock(&put_lock);
    while (!done)
        pthread_cond_wait(&put_cond, &put_lock);
    pthread_mutex_unlock(&put_lock);
    const char *result = NULL;
    switch (put.result) {
    case B24_PUT_STORED:
    case B24_PUT_RERUN:
        result = "stored";
        break;
    case B24_PUT_MERGED:
        result = "merged";
        break;
    case B24_PUT_DUPLICATE:
        result = "duplicate";
        break;
    default:
        lua_pushnil(L);
        lua_pushliteral(L,
                        "host.inbox_put: the inbox is unavailable (stopping, or a write failed)");
        return 2;
    }
    b24_metrics_delivery(put.result == B24_PUT_STORED   ? B24_DELIVERY_STORED
                         : put.result == B24_PUT_RERUN  ? B24_DELIVERY_RERUN
                         : put.result == B24_PUT_MERGED ? B24_DELIVERY_MERGED
                                                        : B24_DELIVERY_DUPLICATE);
    size_t object_len = 0;
    const char *object = b24_dedup_object(key, key_len, &object_len);
    char id[128];
    snprintf(id, sizeof id, "%.*s", object ? (int)(object_len < 120 ? object_len : 120) : 1,
             object ? object : "-");
    b24_log(put.result == B24_PUT_STORED ? B24_DEBUG : B24_INFO, "delivery put by the script",
            "event", event, "id", id, "result", result, NULL);
    lua_pushstring(L, result);
    return 1;
}
