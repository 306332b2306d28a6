/* The handler script of b24 serve: one published generation of its text, and one Lua
 * state per thread built from it, so no Lua value ever crosses threads. Each state keeps the
 * script's handler at stack index 1. A reload publishes a new generation; every thread
 * rebuilds its state before its next call. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "b24_host.h"

static const char *script_path = "?";
static int current_kind;

/* ---- the script: one published generation, taken by threads when they build a state -------- */

typedef struct script {
    char *src;
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

/* Loads src into a fresh state and checks what it returns: a function handler(request), or a
 * table with a handle method (a router). NULL and the message in err on failure. */
static lua_State *load_state(const char *src, size_t len, char *err, size_t errlen, int *kind)
{
    lua_State *L = b24_state_new();
    if (L == NULL) {
        snprintf(err, errlen, "cannot create a Lua state (out of memory)");
        return NULL;
    }
    if (b24_state_run_script(L, script_path, src, len, 0) != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        snprintf(err, errlen, "%s", m ? m : "(error object is not a string)");
        lua_close(L);
        return NULL;
    }
    lua_pushcfunction(L, is_handler);
    lua_pushvalue(L, -2);
    *kind = b24_state_call(L, 1, 1) == LUA_OK ? (int)lua_tointeger(L, -1) : 0;
    lua_pop(L, 1);
    if (*kind == 0) {
        snprintf(err, errlen,
                 "%s: the script must return a function handler(request) or a table with a "
                 "handle method, not a %s value",
                 script_path, luaL_typename(L, -1));
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
static pthread_mutex_t workers_lock = PTHREAD_MUTEX_INITIALIZER;
static worker *workers;

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
    lua_State *L = load_state(s->src, s->len, err, sizeof err, &kind);
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

/* A script given as text under a name (b24 emulate): loads of that name take the text. */
static const char *inline_name, *inline_src;

void b24_script_inline(const char *name, const char *src)
{
    inline_name = name;
    inline_src = src;
}

/* Loads the script file, checks it in a scratch state and publishes it as the next
 * generation; on failure the running one stays. */
int b24_script_load(const char *path, int required)
{
    const char *failed = current ? "reload failed; keeping the previous script"
                                 : "script failed to load";
    script_path = path;
    size_t len;
    char *src;
    if (inline_name && strcmp(path, inline_name) == 0) {
        len = strlen(inline_src);
        src = malloc(len + 1);
        if (src)
            memcpy(src, inline_src, len + 1);
        else
            errno = ENOMEM;
    } else {
        src = b24_read_file(path, &len);
    }
    if (src == NULL) {
        b24_log(B24_ERROR, failed, "script", path, "error", strerror(errno), NULL);
        if (current)
            b24_metrics_reload(0);
        return -1;
    }
    char err[2048];
    int kind;
    lua_State *L = load_state(src, len, err, sizeof err, &kind);
    if (L && required && kind != required && (kind == B24_HANDLER_ROUTER) != (required == B24_HANDLER_ROUTER)) {
        snprintf(err, sizeof err, "%s: the running server %s a router with accept and dispatch; "
                 "the new script %s", path, required == B24_HANDLER_ROUTER ? "stores deliveries for" : "serves",
                 kind == B24_HANDLER_ROUTER ? "is one (restart to use the inbox)" : "is not");
        lua_close(L);
        L = NULL;
    }
    if (L == NULL) {
        free(src);
        b24_log(B24_ERROR, failed, "error", err, NULL);
        if (current)
            b24_metrics_reload(0);
        return -1;
    }
    lua_close(L);
    script *s = calloc(1, sizeof *s);
    if (s == NULL) {
        free(src);
        b24_metrics_reload(0);
        return -1;
    }
    s->src = src;
    s->len = len;
    s->refs = 1;
    pthread_mutex_lock(&script_lock);
    script *old = current;
    s->generation = old ? old->generation + 1 : 1;
    current = s;
    current_kind = kind;
    pthread_mutex_unlock(&script_lock);
    atomic_store(&generation, s->generation);
    if (old) {
        script_release(old);
        b24_metrics_reload(1);
        b24_log(B24_INFO, "script reloaded", "script", path, NULL);
    }
    return kind;
}


int b24_script_kind(void)
{
    return current_kind;
}

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
