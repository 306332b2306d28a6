/* The deadline of the host's Lua calls: see b24_deadline.h. */
#include <stdatomic.h>

#include <lauxlib.h>

#include "b24_clock.h"
#include "b24_deadline.h"

/* VM instructions between two looks at the clock: about 5-20 us of Lua, so a call overruns
 * its deadline by that much, and the clock costs well under 1% (docs/architecture.md). */
#define TICK 1000

static __thread double deadline; /* monotonic; 0: no call under a deadline on this thread */
static __thread double seconds_given;
static __thread int expired;
static _Atomic double cap; /* 0: no stop under way */
static double limits[2] = {30, 60};

/* The count hook of every coroutine of the state; raises only under a deadline (that is,
 * inside the host's lua_pcall), and again on every tick until the call has unwound. */
static void hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    if (deadline == 0)
        return;
    double now = b24_now(), stop_at = atomic_load(&cap);
    if (now <= deadline && (stop_at == 0 || now <= stop_at))
        return;
    if (!expired)
        expired = stop_at != 0 && now > stop_at ? B24_DEADLINE_STOPPED : B24_DEADLINE_EXPIRED;
    if (expired == B24_DEADLINE_STOPPED)
        luaL_error(L, "b24: the server is stopping; the Lua call was cut short");
    luaL_error(L, "b24: the Lua call ran past its deadline (%f s)", seconds_given);
}

static int refuse_sethook(lua_State *L)
{
    return luaL_error(L, "debug.sethook is not available in b24 serve: its hook keeps the "
                         "handler deadline");
}

/* After a pcall, xpcall or coroutine.resume of the script returns: past the deadline, it
 * raises again in the caller, so a loop around a protected call unwinds too (the hook alone
 * would keep firing inside the inner loop, where nearly every instruction runs). */
static int rethrow(lua_State *L, int status, lua_KContext base)
{
    (void)status;
    if (expired && deadline != 0)
        return luaL_error(L, expired == B24_DEADLINE_STOPPED
                                 ? "b24: the server is stopping; the Lua call was cut short"
                                 : "b24: the Lua call ran past its deadline");
    return lua_gettop(L) - (int)base;
}

/* pcall, xpcall and coroutine.resume (upvalue 1), their results passed on; yields across it
 * as across the original. */
static int guarded(lua_State *L)
{
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_callk(L, n, LUA_MULTRET, 0, rethrow);
    return rethrow(L, LUA_OK, 0);
}

/* [table] the function t[name] replaced by its guarded self */
static void guard(lua_State *L, const char *name)
{
    if (lua_getfield(L, -1, name) == LUA_TFUNCTION) {
        lua_pushcclosure(L, guarded, 1);
        lua_setfield(L, -2, name);
    } else {
        lua_pop(L, 1);
    }
}

/* Installs the hook and guards it. */
void b24_deadline_install(lua_State *L)
{
    lua_sethook(L, hook, LUA_MASKCOUNT, TICK);
    lua_pushglobaltable(L);
    guard(L, "pcall");
    guard(L, "xpcall");
    lua_pop(L, 1);
    if (lua_getglobal(L, "coroutine") == LUA_TTABLE)
        guard(L, "resume");
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

/* Caps every deadline at at (the stop). */
void b24_deadline_cap(double at)
{
    atomic_store(&cap, at);
}
