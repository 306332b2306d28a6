/* The handler of b24 serve: one published generation of its source (a script's text, or an
 * entry), and one Lua state per thread built from it, so no Lua value ever crosses threads.
 * Each state keeps the handler at stack index 1. A reload publishes a new generation; every
 * thread rebuilds its state before its next call. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#include "b24_deadline.h"
#include "b24_log.h"
#include "b24_metrics.h"
#include "b24_script.h"
#include "b24_state.h"

/* ---- the script: one published generation, taken by threads when they build a state -------- */

typedef struct script {
    const b24_script_source *source;
    char label[256]; /* the path, or module.function, in messages */
    char *src;       /* the script's text; NULL for an entry */
    size_t len;
    unsigned generation;
    int refs; /* the published pointer counts as one */
} script;

static pthread_mutex_t script_lock = PTHREAD_MUTEX_INITIALIZER;
static script *current;
static atomic_uint generation;

static script *script_take(void)
{
    pthread_mutex_lock(&script_lock);
    script *s = current;
    s->refs++;
    pthread_mutex_unlock(&script_lock);
    return s;
}

static void script_release(script *s)
{
    pthread_mutex_lock(&script_lock);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&script_lock);
    if (last) {
        free(s->src);
        free(s);
    }
}

/* The whole file at path; NULL with errno set on failure. Caller frees. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *more = realloc(buf, cap * 2);
        if (more == NULL) {
            free(buf);
            buf = NULL;
            errno = ENOMEM;
            break;
        }
        buf = more;
        cap *= 2;
    }
    int failed = ferror(f);
    fclose(f);
    if (buf && failed) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    if (buf)
        *len = n;
    return buf;
}

/* [-1, +1] true when the value is a function, or a table whose handle is a function; run
 * under lua_pcall since a router's handle may come from an __index metamethod. */
static int is_handler(lua_State *L)
{
    int kind = lua_type(L, 1) == LUA_TFUNCTION ? B24_HANDLER_FUNCTION : 0;
    if (lua_type(L, 1) == LUA_TTABLE) {
        lua_getfield(L, 1, "accept");
        lua_getfield(L, 1, "dispatch");
        lua_getfield(L, 1, "handle");
        if (lua_type(L, -3) == LUA_TFUNCTION && lua_type(L, -2) == LUA_TFUNCTION)
            kind = B24_HANDLER_ROUTER;
        else if (lua_type(L, -1) == LUA_TFUNCTION)
            kind = B24_HANDLER_TABLE;
    }
    lua_pushinteger(L, kind);
    return 1;
}

/* os.exit in a b24 serve script: the process ends at once, as a kill would (no drain; what was
 * committed stays in the inbox, a request waiting for its commit goes unanswered and its sender
 * retries), after the queued log lines. Lua's os.exit calls exit(3), which runs the process's
 * exit handlers and the libraries' destructors (OpenSSL frees its locks) while the server's
 * other threads still run: a handler thread then crashed on a freed lock, and under the
 * sanitizers the process hung at 100% CPU, deaf to SIGTERM. */
static int serve_exit(lua_State *L)
{
    int code = EXIT_SUCCESS;
    if (lua_isboolean(L, 1))
        code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
    else if (!lua_isnoneornil(L, 1))
        code = (int)luaL_checkinteger(L, 1);
    char code_s[16];
    snprintf(code_s, sizeof code_s, "%d", code);
    b24_log(B24_WARN, "the script called os.exit: the process ends now, without a drain", "code",
            code_s, NULL);
    b24_log_flush();
    fflush(stdout);
    _exit(code);
}

/* Builds the handler in a fresh state, from the script's text (src) or the entry, and checks
 * it: a function handler(request), or a table with a handle method (a router). NULL and the
 * message in err on failure. */
static lua_State *load_state(const script *s, char *err, size_t errlen, int *kind)
{
    const b24_script_source *from = s->source;
    lua_State *L = b24_state_new();
    if (L == NULL) {
        snprintf(err, errlen, "cannot create a Lua state (out of memory)");
        return NULL;
    }
    b24_deadline_install(L); /* the load, like every call, ends in time */
    if (lua_getglobal(L, "os") == LUA_TTABLE) {
        lua_pushcfunction(L, serve_exit);
        lua_setfield(L, -2, "exit");
    }
    lua_pop(L, 1);
    b24_deadline_begin(B24_DEADLINE_REQUEST);
    int status =
        s->src ? b24_state_run_script(L, from->path, s->src, s->len, 0)
               : b24_state_call_entry(L, from->module, from->function, from->argc, from->argv, 1);
    if (status == LUA_OK) {
        lua_pushcfunction(L, is_handler);
        lua_pushvalue(L, -2);
        *kind = b24_state_call(L, 1, 1) == LUA_OK ? (int)lua_tointeger(L, -1) : 0;
        lua_pop(L, 1);
    }
    if (b24_deadline_end() != B24_DEADLINE_MET) {
        snprintf(err, errlen, "%s: the script's load ran past its deadline (--request-timeout)",
                 s->label);
        lua_close(L);
        return NULL;
    }
    if (status != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        snprintf(err, errlen, "%s", m ? m : "(error object is not a string)");
        lua_close(L);
        return NULL;
    }
    if (*kind == 0) {
        if (lua_isnoneornil(L, -1)) /* the usual slip: a router built but not returned */
            snprintf(err, errlen,
                     "%s returned nothing: return a bitrix24.router{...} or a "
                     "function(request)",
                     s->label);
        else
            snprintf(err, errlen,
                     "%s returned a %s value: the script must return a function "
                     "handler(request) or a table with a handle method, such as a "
                     "bitrix24.router{...}",
                     s->label, luaL_typename(L, -1));
        lua_close(L);
        return NULL;
    }
    lua_settop(L, 1); /* [1] = the handler, kept for the state's life */
#if LUA_VERSION_NUM >= 504
    lua_gc(L, LUA_GCGEN, 0, 0); /* a request's tables die young */
#endif
    return L;
}

/* ---- per-thread states -------------------------------------------------------------------- */

typedef struct worker {
    lua_State *L;
    unsigned generation;
    struct worker *next;
} worker;

static __thread worker *this_worker;
static __thread unsigned loading_generation; /* of the script this thread is loading */
static pthread_mutex_t workers_lock = PTHREAD_MUTEX_INITIALIZER;
static worker *workers;

/* The generation of the script this thread is loading now, else of its state (0: none). */
unsigned b24_script_generation(void)
{
    if (loading_generation)
        return loading_generation;
    return this_worker ? this_worker->generation : 0;
}

/* This thread's state, built or rebuilt when the published generation moved on. */
lua_State *b24_script_state(void)
{
    worker *w = this_worker;
    unsigned gen = atomic_load(&generation);
    if (w && w->generation == gen)
        return w->L;
    script *s = script_take();
    char err[2048];
    int kind;
    loading_generation = s->generation;
    lua_State *L = load_state(s, err, sizeof err, &kind);
    loading_generation = 0;
    unsigned sgen = s->generation;
    script_release(s);
    if (L == NULL) {
        b24_log(B24_ERROR, "script failed to load in a worker; keeping the previous one", "error",
                err, NULL);
        if (w)
            w->generation = sgen; /* do not retry on every request */
        return w ? w->L : NULL;
    }
    if (w == NULL) {
        w = calloc(1, sizeof *w);
        if (w == NULL) {
            lua_close(L);
            return NULL;
        }
        pthread_mutex_lock(&workers_lock);
        w->next = workers;
        workers = w;
        pthread_mutex_unlock(&workers_lock);
        this_worker = w;
    } else {
        lua_close(w->L);
    }
    w->L = L;
    w->generation = sgen;
    return L;
}

/* Loads the handler, checks it in a scratch state and publishes it as the next generation;
 * on failure the running one stays. */
int b24_script_load(const b24_script_source *from, int required)
{
    const char *failed =
        current ? "reload failed; keeping the previous script" : "script failed to load";
    script *s = calloc(1, sizeof *s);
    if (s == NULL) {
        b24_log(B24_ERROR, failed, "error", "out of memory", NULL);
        if (current)
            b24_metrics_reload(0);
        return -1;
    }
    s->source = from;
    s->refs = 1;
    if (from->path)
        snprintf(s->label, sizeof s->label, "%s", from->path);
    else
        snprintf(s->label, sizeof s->label, "%s.%s", from->module, from->function);
    if (from->path && (s->src = read_file(from->path, &s->len)) == NULL) {
        b24_log(B24_ERROR, failed, "script", from->path, "error", strerror(errno), NULL);
        free(s);
        if (current)
            b24_metrics_reload(0);
        return -1;
    }
    char err[2048];
    int kind;
    lua_State *L = load_state(s, err, sizeof err, &kind);
    if (L && required && kind != required &&
        (kind == B24_HANDLER_ROUTER) != (required == B24_HANDLER_ROUTER)) {
        snprintf(err, sizeof err,
                 "%s: the running server %s a router with accept and dispatch; "
                 "the new script %s",
                 s->label, required == B24_HANDLER_ROUTER ? "stores deliveries for" : "serves",
                 kind == B24_HANDLER_ROUTER ? "is one (restart to use the inbox)" : "is not");
        lua_close(L);
        L = NULL;
    }
    if (L == NULL) {
        free(s->src);
        free(s);
        if (current) /* counted before the line a reader may wait for */
            b24_metrics_reload(0);
        b24_log(B24_ERROR, failed, "error", err, NULL);
        return -1;
    }
    lua_close(L);
    pthread_mutex_lock(&script_lock);
    script *old = current;
    s->generation = old ? old->generation + 1 : 1;
    current = s;
    pthread_mutex_unlock(&script_lock);
    atomic_store(&generation, s->generation);
    if (old) {
        script_release(old);
        b24_metrics_reload(1);
        b24_log(B24_INFO, "script reloaded", "script", s->label, NULL);
    }
    return kind;
}

/* Closes every thread's state and lets the published source go. */
void b24_script_close_all(void)
{
    pthread_mutex_lock(&workers_lock);
    for (worker *w = workers; w;) {
        worker *next = w->next;
        lua_close(w->L);
        free(w);
        w = next;
    }
    workers = NULL;
    pthread_mutex_unlock(&workers_lock);
    if (current) {
        script_release(current);
        current = NULL;
    }
}
