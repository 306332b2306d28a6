/* b24.host: the b24 program's services to Lua scripts: a line in its log, once per process,
 * isatty. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#include "b24_hostdb.h"
#include "b24_hostlib.h"
#include "b24_jobs.h"
#include "b24_log.h"
#include "b24_smetrics.h"
#include "b24_tokens.h"

#define MAX_FIELDS 16

/* b24.host.log(level, msg [, fields]): a line in the host's log, masked like every
 * other; fields is a table of string keys and scalar values. */
static int host_log(lua_State *L)
{
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    b24_level level = (b24_level)luaL_checkoption(L, 1, NULL, levels);
    const char *msg = luaL_checkstring(L, 2);
    if (!b24_log_enabled(level))
        return 0;
    const char *kv[2 * MAX_FIELDS + 1] = {NULL};
    int n = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_settop(L, 3);
        luaL_checkstack(L, 2 * MAX_FIELDS + 4, "too many log fields");
        lua_pushnil(L);
        while (n < 2 * MAX_FIELDS && lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                return luaL_error(L, "bad log field (string keys expected)");
            int t = lua_type(L, -1);
            if (t == LUA_TBOOLEAN) {
                lua_pushstring(L, lua_toboolean(L, -1) ? "true" : "false");
                lua_replace(L, -2);
            } else if (t != LUA_TSTRING && t != LUA_TNUMBER) {
                lua_pushstring(L, luaL_typename(L, -1));
                lua_replace(L, -2);
            }
            kv[n++] = lua_tostring(L, -2);
            kv[n++] = lua_tostring(L, -1); /* stays on the stack, below the next key */
            lua_pushvalue(L, -2);
        }
    }
    kv[n] = NULL;
    /* fields in key order, so one call always gives one line */
    for (int i = 2; i < n; i += 2)
        for (int j = i; j >= 2 && strcmp(kv[j - 2], kv[j]) > 0; j -= 2) {
            const char *k = kv[j], *v = kv[j + 1];
            kv[j] = kv[j - 2], kv[j + 1] = kv[j - 1];
            kv[j - 2] = k, kv[j - 1] = v;
        }
    /* up to 16 fields, passed positionally; unused ones are NULL and end the list */
    b24_log(level, msg, kv[0], kv[1], kv[2], kv[3], kv[4], kv[5], kv[6], kv[7], kv[8], kv[9],
            kv[10], kv[11], kv[12], kv[13], kv[14], kv[15], kv[16], kv[17], kv[18], kv[19], kv[20],
            kv[21], kv[22], kv[23], kv[24], kv[25], kv[26], kv[27], kv[28], kv[29], kv[30], kv[31],
            NULL);
    return 0;
}

/* The keys once has seen, process-wide: every thread's state loads the script, and a warning
 * of the load is one line, not one per thread. At most ONCE_MAX keys (then none is new). */
#define ONCE_MAX 1024
static pthread_mutex_t once_lock = PTHREAD_MUTEX_INITIALIZER;
static char *once_keys[ONCE_MAX];
static size_t once_lens[ONCE_MAX];
static size_t once_count;

/* b24.host.once(key) → true the first time this process is given key, false after */
static int host_once(lua_State *L)
{
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    int first = 0;
    pthread_mutex_lock(&once_lock);
    size_t i = 0;
    while (i < once_count && !(once_lens[i] == len && memcmp(once_keys[i], key, len) == 0))
        i++;
    if (i == once_count && once_count < ONCE_MAX) {
        char *copy = malloc(len + 1);
        if (copy) {
            memcpy(copy, key, len + 1);
            once_keys[once_count] = copy;
            once_lens[once_count++] = len;
            first = 1;
        }
    }
    pthread_mutex_unlock(&once_lock);
    lua_pushboolean(L, first);
    return 1;
}

/* b24.host.isatty(fd) → boolean */
static int host_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)) == 1);
    return 1;
}

/* require("b24.host") */
int luaopen_b24_host(lua_State *L)
{
    static const luaL_Reg funcs[] = {{"log", host_log},
                                     {"once", host_once},
                                     {"isatty", host_isatty},
                                     {"tokens", b24_tokens_open},
                                     {"job", b24_jobs_job},
                                     {"wake", b24_jobs_wake},
                                     {"inbox_put", b24_jobs_inbox_put},
                                     {"kv_get", b24_hostdb_kv_get},
                                     {"kv_put", b24_hostdb_kv_put},
                                     {"kv_claim", b24_hostdb_kv_claim},
                                     {"inbox_mark", b24_hostdb_inbox_mark},
                                     {"inbox_marks", b24_hostdb_inbox_marks},
                                     {"metric", b24_smetrics_set},
                                     {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}
