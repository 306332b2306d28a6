/* Our own bridge between the Lua 5.4 C API and the 5.1 API (Lua 5.1, LuaJIT 2.1, OpenResty).
 * The C core is written against 5.3/5.4 names; this header supplies them on 5.1. */
#ifndef B24_COMPAT_H
#define B24_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 502

#define LUA_OK 0

#define lua_rawlen(L, i) lua_objlen((L), (i))

/* 5.1 has no lua_absindex; pseudo-indices (registry, upvalues) stay as they are. */
static inline int b24_compat_absindex(lua_State *L, int i)
{
    return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}
#define lua_absindex(L, i) b24_compat_absindex((L), (i))

static inline void b24_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup, "too many upvalues");
    for (; l->name != NULL; l++) {
        for (int i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#define luaL_setfuncs(L, l, n) b24_compat_setfuncs((L), (l), (n))

static inline void *b24_compat_testudata(lua_State *L, int i, const char *tname)
{
    void *p = lua_touserdata(L, i);
    if (p == NULL || !lua_getmetatable(L, i))
        return NULL;
    luaL_getmetatable(L, tname);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same ? p : NULL;
}
#define luaL_testudata(L, i, t) b24_compat_testudata((L), (i), (t))

#define luaL_newlibtable(L, l) lua_createtable((L), 0, sizeof(l) / sizeof((l)[0]) - 1)
#define luaL_newlib(L, l) (luaL_newlibtable((L), (l)), luaL_setfuncs((L), (l), 0))

/* In 5.1 every number is a lua_Number; "integer" means integral and in lua_Integer range. */
static inline int lua_isinteger(lua_State *L, int i)
{
    if (lua_type(L, i) != LUA_TNUMBER)
        return 0;
    lua_Number n = lua_tonumber(L, i);
    /* range first: casting an out-of-range double is undefined behaviour */
    return n >= -9223372036854775808.0 && n < 9223372036854775808.0 &&
           n == (lua_Number)(lua_Integer)n;
}

static inline void luaL_setmetatable(lua_State *L, const char *tname)
{
    luaL_getmetatable(L, tname);
    lua_setmetatable(L, -2);
}

#define lua_newuserdatauv(L, sz, nuv) lua_newuserdata((L), (sz))

#endif /* LUA_VERSION_NUM < 502 */

#if LUA_VERSION_NUM < 504 && LUA_VERSION_NUM >= 502
#define lua_newuserdatauv(L, sz, nuv) lua_newuserdata((L), (sz))
#endif

/* lua_pushinteger for an int64 that may exceed 2^53 on 5.1: callers only push values
 * that fit (sizes, statuses, counts), so the plain call is enough on every version. */

#endif /* B24_COMPAT_H */
