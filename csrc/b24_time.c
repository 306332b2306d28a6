/* now() and sleep() for hosts that bring no clock of their own (nginx brings ngx.now/sleep). */
#include <errno.h>
#include <math.h>
#include <time.h>

#include "b24.h"

/* The one monotonic clock of the project (core.now, b24's b24_now): seconds as a double; only
 * differences between calls mean anything. */
double b24_time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* now() -> monotonic seconds as a float */
static int l_now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)b24_time_now());
    return 1;
}

int (*b24_interrupted)(void) = NULL;

/* sleep(seconds): blocks the calling thread; a signal does not cut it short, unless the host
 * says the call must end (b24 serve signals a thread whose Lua call ran past its deadline) */
static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0 && s <= 1e9, 1, "seconds from 0 to 1e9 expected");
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - floor(s)) * 1e9);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        if (b24_interrupted && b24_interrupted())
            break;
    return 0;
}

static const luaL_Reg time_funcs[] = {
    {"now", l_now},
    {"sleep", l_sleep},
    {NULL, NULL},
};

void b24_time_open(lua_State *L)
{
    luaL_setfuncs(L, time_funcs, 0);
}
