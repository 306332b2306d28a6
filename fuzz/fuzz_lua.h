/* What the Lua-side fuzz targets (form_decode, json_decode) share: exact comparison of decoded
 * values, and the check that a decoder's `only` option builds one top-level field exactly as
 * the whole decode has it (the promise a token's pre-scan stands on). Include after lua.h. */
#ifndef B24_FUZZ_LUA_H
#define B24_FUZZ_LUA_H

#include <string.h>

#include "fuzz.h"

/* Two Lua values are the same: numbers and strings raw-equal, tables with the same keys
 * (integer keys stay integer keys) holding the same values. */
static int fuzz_same(lua_State *L, int a, int b)
{
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    if (lua_type(L, a) != lua_type(L, b))
        return 0;
    if (lua_type(L, a) != LUA_TTABLE)
        return lua_rawequal(L, a, b);
    CHECK(lua_checkstack(L, 6));
    size_t na = 0, nb = 0;
    lua_pushnil(L);
    while (lua_next(L, b)) {
        nb++;
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, a)) {
        na++;
        lua_pushvalue(L, -2);
        lua_rawget(L, b);
        int ok = fuzz_same(L, -2, -1);
        lua_pop(L, 2);
        if (!ok) {
            lua_pop(L, 1);
            return 0;
        }
    }
    return na == nb;
}

/* The PHP key of the Lua key at idx (a sequence's [i] is "i-1"), in num (32 bytes) or in place. */
static const char *fuzz_php_key(lua_State *L, int idx, char *num, size_t *len)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        *len = (size_t)snprintf(num, 32, "%lld", (long long)lua_tointeger(L, idx) - 1);
        return num;
    }
    return lua_tolstring(L, idx, len);
}

/* [-0, +1] t[k] for PHP key k: t["k"], else t[k+1] when k is a small index (a sequence) */
static void fuzz_get_php_key(lua_State *L, int t, const char *k, size_t klen)
{
    t = lua_absindex(L, t);
    lua_pushlstring(L, k, klen);
    lua_rawget(L, t);
    if (lua_isnil(L, -1) && klen > 0 && klen < 16 && k[0] >= '0' && k[0] <= '9') {
        lua_pop(L, 1);
        lua_rawgeti(L, t, (lua_Integer)strtoll(k, NULL, 10) + 1);
    }
}

/* decoder (a field of the module table at 1: "form_decode" or "json_decode") with
 * { form = form, only = k } for the first top-level keys k of whole (s's whole decode) gives a
 * table of k alone, holding exactly what whole holds at k. */
static void fuzz_only_matches(lua_State *L, const char *decoder, int form, const char *s,
                              size_t len, int whole)
{
    whole = lua_absindex(L, whole);
    CHECK(lua_checkstack(L, 10));
    int seen = 0;
    lua_pushnil(L);
    while (seen < 3 && lua_next(L, whole)) {
        seen++;
        char num[32];
        size_t klen;
        const char *k = fuzz_php_key(L, -2, num, &klen);
        int v = lua_gettop(L);
        lua_getfield(L, 1, decoder);
        lua_pushlstring(L, s, len);
        lua_createtable(L, 0, 2);
        lua_pushboolean(L, form);
        lua_setfield(L, -2, "form");
        lua_pushlstring(L, k, klen);
        lua_setfield(L, -2, "only");
        if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
            fprintf(stderr, "%s with only raised: %s\n", decoder, lua_tostring(L, -1));
            abort();
        }
        CHECK(lua_istable(L, -1));
        int o = lua_gettop(L);
        size_t n = 0;
        lua_pushnil(L);
        while (lua_next(L, o)) {
            n++;
            lua_pop(L, 1);
        }
        CHECK(n == 1);
        fuzz_get_php_key(L, o, k, klen);
        CHECK(fuzz_same(L, v, -1));
        lua_settop(L, v - 1); /* the key, for lua_next */
    }
    lua_settop(L, whole);
}

#endif
