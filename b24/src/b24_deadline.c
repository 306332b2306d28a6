/* The deadline of the host's Lua calls: see b24_deadline.h.
 *
 * No hook runs while a call is within its time. A count hook makes Lua 5.4's VM stop at every
 * instruction (lvm.c's vmfetch calls luaG_traceexec whenever a count or line hook is set,
 * whatever the count), which made the router's Lua about 10% slower (docs/performance.md).
 * Instead a watchdog thread looks at every thread's deadline a few times a second and signals
 * a thread whose call has run past it. The signal's handler, on that thread, sets a count hook
 * of 1 on the state running there: lua_sethook is the one Lua call meant for a signal handler
 * (ldebug.c; lua.c stops a script on SIGINT the same way). The hook then raises at the next
 * instruction, and again at every one until the host's protected call has unwound; the
 * watchdog signals again while the call lasts, so a signal that lands just as a coroutine
 * returns is repeated on the state that runs next. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include <lauxlib.h>

#include "b24.h" /* b24_interrupted */
#include "b24_clock.h"
#include "b24_deadline.h"

/* The watchdog's longest sleep: a call overruns its deadline by at most about this much. */
#define WATCH_MAX 0.1
/* How long a thread whose call is past its deadline waits for the next signal. */
#define RESIGNAL 0.01

static __thread double deadline; /* monotonic; 0: no call under a deadline on this thread */
static __thread double seconds_given;
static __thread int expired;
static __thread lua_State *volatile running;  /* the state (or coroutine) running the call */
static __thread volatile sig_atomic_t hooked; /* the signal set a hook during this call */
static _Atomic double cap;                    /* 0: no stop under way */
static double limits[2] = {30, 60};

/* A thread that runs calls under deadlines, as the watchdog sees it. */
typedef struct slot {
    pthread_t thread;
    _Atomic double until; /* the call's deadline, 0 between calls */
    struct slot *next;
} slot;

static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t
    watch_wake; /* on the monotonic clock: a wall clock set back waits no longer */
static slot *slots;
static pthread_key_t slot_key;
static pthread_once_t started = PTHREAD_ONCE_INIT;
static int deadline_signal;
static atomic_int watching; /* the condition variable is made */
static __thread slot own;   /* this thread's, listed on its first call under a deadline */
static __thread int listed;

static void hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    if (deadline == 0) { /* a signal for a call that has ended: no hook in the next */
        lua_sethook(L, NULL, 0, 0);
        return;
    }
    double now = b24_now(), stop_at = atomic_load(&cap);
    if (now <= deadline && (stop_at == 0 || now <= stop_at)) {
        lua_sethook(L, NULL, 0, 0);
        return;
    }
    if (!expired)
        expired = stop_at != 0 && now > stop_at ? B24_DEADLINE_STOPPED : B24_DEADLINE_EXPIRED;
    if (expired == B24_DEADLINE_STOPPED)
        luaL_error(L, "b24: the server is stopping; the Lua call was cut short");
    luaL_error(L, "b24: the Lua call ran past its deadline (%f s)", seconds_given);
}

/* Whether this thread's Lua call is past its deadline or the stop's cap: the library's
 * blocking calls (core.sleep, an HTTP transfer) then end early (csrc's b24_interrupted), and the
 * hook raises at the first instruction after them. */
static int interrupted(void)
{
    if (deadline == 0)
        return 0;
    double now = b24_now(), stop_at = atomic_load(&cap);
    return now > deadline || (stop_at != 0 && now > stop_at);
}

/* On the thread whose call ran past its deadline (or any thread, for a signal that came late:
 * then nothing runs under a deadline, or the hook finds the new call in time and goes). */
static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    lua_State *L = running;
    if (L != NULL && deadline != 0) {
        lua_sethook(L, hook, LUA_MASKCOUNT, 1);
        hooked = 1;
    }
    errno = saved;
}

/* The thread is ending: the watchdog forgets it (and never signals a thread that is gone). */
static void slot_unlist(void *p)
{
    slot *s = p;
    pthread_mutex_lock(&slots_lock);
    for (slot **at = &slots; *at; at = &(*at)->next)
        if (*at == s) {
            *at = s->next;
            break;
        }
    pthread_mutex_unlock(&slots_lock);
}

static void *watch(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "b24-deadline", 0, 0, 0); /* the name top -H shows */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&slots_lock);
    for (;;) {
        double now = b24_now(), stop_at = atomic_load(&cap), next = now + WATCH_MAX;
        for (slot *s = slots; s; s = s->next) {
            double until = atomic_load(&s->until);
            if (until == 0)
                continue;
            if (stop_at != 0 && stop_at < until)
                until = stop_at;
            if (now > until) {
                pthread_kill(s->thread, deadline_signal); /* held: the thread cannot end */
                until = now + RESIGNAL;
            }
            if (until < next)
                next = until;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts); /* the condition variable's clock */
        double wait = next - now;
        if (wait < 0.001)
            wait = 0.001;
        ts.tv_sec += (time_t)wait;
        ts.tv_nsec += (long)((wait - (double)(time_t)wait) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&watch_wake, &slots_lock, &ts);
    }
    return NULL;
}

static void start_watchdog(void)
{
    deadline_signal = SIGRTMIN + 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART; /* a read or write the signal lands in goes on */
    sigemptyset(&sa.sa_mask);
    sigaction(deadline_signal, &sa, NULL);
    pthread_key_create(&slot_key, slot_unlist);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&watch_wake, &attr);
    pthread_condattr_destroy(&attr);
    atomic_store(&watching, 1);
    b24_interrupted = interrupted;
    pthread_t t;
    if (pthread_create(&t, NULL, watch, NULL) == 0)
        pthread_detach(t);
}

/* This thread's slot, listed on its first call under a deadline. */
static slot *own_slot(void)
{
    if (listed)
        return &own;
    pthread_once(&started, start_watchdog);
    own.thread = pthread_self();
    atomic_init(&own.until, 0);
    pthread_setspecific(slot_key, &own);
    pthread_mutex_lock(&slots_lock);
    own.next = slots;
    slots = &own;
    pthread_mutex_unlock(&slots_lock);
    listed = 1;
    return &own;
}

static int refuse_sethook(lua_State *L)
{
    return luaL_error(L, "debug.sethook is not available in b24 serve: its hook keeps the "
                         "handler deadline");
}

/* After a pcall, xpcall, coroutine.resume or coroutine.close of the script returns: the state
 * running is L again, and past the deadline it raises again in L, so a loop around a protected
 * call unwinds too (the hook alone would keep firing inside the inner loop, where nearly every
 * instruction runs). */
static int rethrow(lua_State *L, int status, lua_KContext base)
{
    (void)status;
    running = L;
    if (expired && deadline != 0)
        return luaL_error(L, expired == B24_DEADLINE_STOPPED
                                 ? "b24: the server is stopping; the Lua call was cut short"
                                 : "b24: the Lua call ran past its deadline");
    return lua_gettop(L) - (int)base;
}

/* pcall, xpcall, coroutine.resume and coroutine.close (upvalue 1), their results passed on;
 * yields across it as across the original. A coroutine resumed or closed is the state running
 * (what the signal hooks) until it gives control back. */
static int guarded(lua_State *L)
{
    int n = lua_gettop(L);
    if (lua_toboolean(L, lua_upvalueindex(2)) && lua_type(L, 1) == LUA_TTHREAD)
        running = lua_tothread(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_callk(L, n, LUA_MULTRET, 0, rethrow);
    return rethrow(L, LUA_OK, 0);
}

/* [table] the function t[name] replaced by its guarded self (switches: a coroutine's) */
static void guard(lua_State *L, const char *name, int switches)
{
    if (lua_getfield(L, -1, name) == LUA_TFUNCTION) {
        lua_pushboolean(L, switches);
        lua_pushcclosure(L, guarded, 2);
        lua_setfield(L, -2, name);
    } else {
        lua_pop(L, 1);
    }
}

/* coroutine.wrap through the guarded resume and close, as lcorolib.c's auxwrap behaves: an
 * error closes the coroutine and is raised in the caller, a string one with its position. */
static const char WRAP[] = "local create, resume, close, status, error, type = ...\n"
                           "local function finish(co, ok, ...)\n"
                           "  if ok then return ... end\n"
                           "  local err = ...\n"
                           "  if status(co) == 'dead' then\n"
                           "    local closed, why = close(co)\n"
                           "    if not closed then err = why end\n"
                           "  end\n"
                           "  if type(err) == 'string' then error(err, 2) end\n"
                           "  error(err, 0)\n"
                           "end\n"
                           "return function(f)\n"
                           "  local co = create(f)\n"
                           "  return function(...) return finish(co, resume(co, ...)) end\n"
                           "end\n";

/* Installs the guards. */
void b24_deadline_install(lua_State *L)
{
    lua_pushglobaltable(L);
    guard(L, "pcall", 0);
    guard(L, "xpcall", 0);
    lua_pop(L, 1);
    if (lua_getglobal(L, "coroutine") == LUA_TTABLE) {
        guard(L, "resume", 1);
        guard(L, "close", 1);
        if (luaL_loadbufferx(L, WRAP, sizeof WRAP - 1, "=[b24 coroutine.wrap]", "t") == LUA_OK) {
            lua_getfield(L, -2, "create");
            lua_getfield(L, -3, "resume");
            lua_getfield(L, -4, "close");
            lua_getfield(L, -5, "status");
            lua_getglobal(L, "error");
            lua_getglobal(L, "type");
            if (lua_pcall(L, 6, 1, 0) == LUA_OK)
                lua_setfield(L, -2, "wrap");
            else
                lua_pop(L, 1);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    if (lua_getglobal(L, "debug") == LUA_TTABLE) {
        lua_pushcfunction(L, refuse_sethook);
        lua_setfield(L, -2, "sethook");
    }
    lua_pop(L, 1);
}

/* Sets a kind's limit (at start, before any thread runs Lua). */
void b24_deadline_set(int kind, double seconds)
{
    limits[kind] = seconds;
}

/* Starts this thread's deadline. */
void b24_deadline_begin(int kind)
{
    double seconds = limits[kind];
    expired = 0;
    seconds_given = seconds;
    deadline = seconds > 0 ? b24_now() + seconds : 1e300;
}

/* Ends it: met, or how it expired. */
int b24_deadline_end(void)
{
    deadline = 0;
    int how = expired;
    expired = 0;
    return how;
}

/* The host's protected call on L begins: under a deadline, the watchdog watches it. */
void b24_deadline_enter(lua_State *L)
{
    if (deadline == 0)
        return;
    slot *s = own_slot();
    hooked = 0;
    running = L;
    atomic_store(&s->until, deadline);
}

/* It returned: no more signals, and no hook left on L for its next call. */
void b24_deadline_leave(lua_State *L)
{
    if (!listed || atomic_load(&own.until) == 0)
        return;
    atomic_store(&own.until, 0);
    running = NULL; /* a signal sent before the store above does nothing from here */
    if (hooked) {
        lua_sethook(L, NULL, 0, 0);
        hooked = 0;
    }
}

/* Caps every deadline at at (the stop). */
void b24_deadline_cap(double at)
{
    atomic_store(&cap, at);
    if (!atomic_load(&watching)) /* no call has run under a deadline: nothing to watch */
        return;
    pthread_mutex_lock(&slots_lock);
    pthread_cond_signal(&watch_wake);
    pthread_mutex_unlock(&slots_lock);
}
