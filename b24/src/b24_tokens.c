/* The application token store of b24.host: see b24_tokens.h. One userdata type for the three
 * stores: a SQLite connection of this Lua state (short transactions, a busy timeout:
 * b24_tokens_sqlite.c), a PostgreSQL connection of this Lua state (one statement a call, a
 * fleet's shared tables: b24_tokens_pg.c), or the process-wide memory store (one sorted array
 * under one mutex, as b24_dedup.c: b24_tokens_memory.c). This file is the Lua binding: it
 * checks the arguments and calls one store (b24_tokens_impl.h). No Lua call is made under the
 * mutex or inside a transaction that could be left open: what a call reads is copied out first
 * (into a userdata buffer), or kept in SQLite's row or libpq's result until it is pushed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "b24_clock.h"
#include "b24_pg.h"
#include "b24_tokens.h"
#include "b24_tokens_impl.h"

#define STORE_TYPE "b24.host.TokenStore"
#define CACHE_KEY "b24.host.tokens"
#define MAX_FIELD 4096

/* The store at argument 1 (raises when it is not one, or is closed). */
static store *check_store(lua_State *L)
{
    store *s = luaL_checkudata(L, 1, STORE_TYPE);
    if (!s->memory && s->db == NULL && s->url == NULL)
        luaL_error(L, "the token store is closed");
    return s;
}

/* A string argument, strictly (a number is misuse too). */
static const char *check_string(lua_State *L, int arg, size_t *len)
{
    if (lua_type(L, arg) != LUA_TSTRING)
        luaL_typeerror(L, arg, "string");
    return lua_tolstring(L, arg, len);
}

/* nil, err for an empty or oversized key-like string (member_id, domain, holder); 0 when fine */
static int bad_key(lua_State *L, const char *what, size_t len)
{
    if (len > 0 && len <= MAX_KEY)
        return 0;
    lua_pushnil(L);
    if (len == 0)
        lua_pushfstring(L, "token store: %s is empty", what);
    else
        lua_pushfstring(L, "token store: %s is longer than %d bytes", what, MAX_KEY);
    return 2;
}

/* nil, err: a runtime failure's results. */
static int push_failure(lua_State *L, const char *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* Reads the record fields of the table at idx into r, their strings left on the stack (raises
 * on a wrong type). nil, err pushed (2) for an oversized field, else 0. false clears a field
 * (a swap's), like nil in a put. */
static int read_record(lua_State *L, int idx, record *r)
{
    memset(r, 0, sizeof *r);
    luaL_checkstack(L, NSTR + 4, "token store record");
    for (int i = 0; i < NSTR; i++) {
        int t = lua_getfield(L, idx, names[i]);
        if (t == LUA_TNIL) {
            lua_pop(L, 1);
            continue;
        }
        r->mask |= 1u << i;
        if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1))
            continue; /* cleared; the false stays on the stack, harmless */
        if (i == F_USER_ID && t == LUA_TNUMBER) { /* 42 and 42.0 (a JSON decoder's) are "42" */
            lua_Number n = lua_tonumber(L, -1);
            if (!(n == floor(n) && fabs(n) < 9007199254740992.0))
                return luaL_error(L,
                                  "bad record field 'user_id' (an integer or a string expected)");
            lua_pushfstring(L, "%I", (LUA_INTEGER)n);
            lua_replace(L, -2);
        } else if (t != LUA_TSTRING) {
            return luaL_error(L, "bad record field '%s' (string expected, got %s)", names[i],
                              luaL_typename(L, -1));
        }
        r->s[i] = lua_tolstring(L, -1, &r->len[i]);
        size_t max = i == F_MEMBER_ID || i == F_DOMAIN ? MAX_KEY : MAX_FIELD;
        if (r->len[i] > max) {
            lua_pushnil(L);
            lua_pushfstring(L, "token store: %s is longer than %d bytes", names[i], (int)max);
            return 2;
        }
    }
    int t = lua_getfield(L, idx, "expires_at");
    if (t == LUA_TNUMBER && !isfinite(lua_tonumber(L, -1))) {
        lua_pushnil(L);
        lua_pushstring(L, "token store: expires_at is not a finite number");
        return 2;
    }
    if (t == LUA_TNUMBER) {
        r->has_expires = 1;
        r->expires_at = lua_tonumber(L, -1);
        r->mask |= 1u << F_EXPIRES_AT;
    } else if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
        r->mask |= 1u << F_EXPIRES_AT;
    } else if (t != LUA_TNIL) {
        return luaL_error(L, "bad record field 'expires_at' (number expected, got %s)",
                          luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return 0;
}

/* store:get(key) -> record | nil | nil, err */
static int tokens_get(lua_State *L)
{
    store *s = check_store(L);
    size_t len;
    const char *key = check_string(L, 2, &len);
    if (len == 0) { /* no portal has an empty member_id or domain */
        lua_pushnil(L);
        return 1;
    }
    if (len > MAX_KEY)
        return bad_key(L, "key", len);
    int rc = s->memory ? b24_tokens_memory_get(L, key, len)
             : s->url  ? b24_tokens_pg_get(L, s, key, len)
                       : b24_tokens_sqlite_get(L, s, key, len);
    if (rc < 0)
        return push_failure(L, s->err);
    if (rc == 0)
        lua_pushnil(L);
    return 1;
}

/* store:list() -> { record, ... } | nil, err */
static int tokens_list(lua_State *L)
{
    store *s = check_store(L);
    if (s->memory) {
        b24_tokens_memory_list(L);
        return 1;
    }
    if ((s->url ? b24_tokens_pg_list(L, s) : b24_tokens_sqlite_list(L, s)) < 0)
        return push_failure(L, s->err);
    return 1;
}

/* Writes r (put: all fields; swap: the masked ones when version expect): pushes the results. */
static int write_record(lua_State *L, store *s, record *r, int partial, long long expect)
{
    double now = b24_wall_now();
    long long version = 0;
    const char *err = s->err;
    int rc = s->memory ? b24_tokens_memory_write(r, partial, expect, now, &version, &err)
             : s->url  ? b24_tokens_pg_write(s, r, partial, expect, &version)
                       : b24_tokens_sqlite_write(s, r, partial, expect, now, &version);
    if (rc < 0)
        return push_failure(L, err);
    if (rc == 0) {
        lua_pushboolean(L, 0);
        lua_pushinteger(L, (lua_Integer)version);
        return 2;
    }
    lua_pushinteger(L, (lua_Integer)version);
    return 1;
}

/* store:put(record) -> version | nil, err */
static int tokens_put(lua_State *L)
{
    store *s = check_store(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    record r;
    int n = read_record(L, 2, &r);
    if (n)
        return n;
    if (r.s[F_MEMBER_ID] == NULL)
        return luaL_error(L, "bad record field 'member_id' (string expected, got %s)",
                          (r.mask & 1u) ? "false" : "nil");
    if ((n = bad_key(L, "member_id", r.len[F_MEMBER_ID])))
        return n;
    return write_record(L, s, &r, 0, -1);
}

/* store:swap(member_id, version, fields) -> new_version | false, current_version | nil, err */
static int tokens_swap(lua_State *L)
{
    store *s = check_store(L);
    size_t len;
    const char *member_id = check_string(L, 2, &len);
    lua_Integer expect = luaL_checkinteger(L, 3);
    luaL_argcheck(L, expect >= 0, 3, "a version (0 or more) expected");
    luaL_checktype(L, 4, LUA_TTABLE);
    record r;
    int n = read_record(L, 4, &r);
    if (n)
        return n;
    if ((n = bad_key(L, "member_id", len)))
        return n;
    r.s[F_MEMBER_ID] = member_id; /* the argument's, whatever fields say */
    r.len[F_MEMBER_ID] = len;
    r.mask &= ~1u;
    return write_record(L, s, &r, 1, (long long)expect);
}

/* store:delete(member_id) -> true | nil, err */
static int tokens_delete(lua_State *L)
{
    store *s = check_store(L);
    size_t len;
    const char *member_id = check_string(L, 2, &len);
    int n = bad_key(L, "member_id", len);
    if (n)
        return n;
    if (s->memory)
        b24_tokens_memory_delete(member_id, len);
    else if ((s->url ? b24_tokens_pg_delete(s, member_id, len)
                     : b24_tokens_sqlite_delete(s, member_id, len)) < 0)
        return push_failure(L, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* store:lease(member_id, holder, seconds) -> true | false, holder_now, expires_at | nil, err */
static int tokens_lease(lua_State *L)
{
    store *s = check_store(L);
    size_t len, holder_len;
    const char *member_id = check_string(L, 2, &len);
    const char *holder = check_string(L, 3, &holder_len);
    double seconds = luaL_checknumber(L, 4);
    luaL_argcheck(L, seconds > 0 && isfinite(seconds), 4, "seconds (more than 0) expected");
    int n = bad_key(L, "member_id", len);
    if (n || (n = bad_key(L, "holder", holder_len)))
        return n;
    double now = b24_wall_now();
    char held[MAX_KEY + 1] = "";
    double held_until = 0;
    const char *err = s->err;
    int rc = s->memory ? b24_tokens_memory_lease(member_id, len, holder, holder_len, now,
                                                 now + seconds, held, &held_until, &err)
             : s->url  ? b24_tokens_pg_lease(s, member_id, len, holder, holder_len, seconds, held,
                                             &held_until)
                       : b24_tokens_sqlite_lease(s, member_id, len, holder, holder_len, now,
                                                 now + seconds, held, &held_until);
    if (rc < 0)
        return push_failure(L, err);
    if (rc == 1) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushstring(L, held);
    lua_pushnumber(L, held_until);
    return 3;
}

/* store:release(member_id, holder) -> true (holder held it) | false | nil, err */
static int tokens_release(lua_State *L)
{
    store *s = check_store(L);
    size_t len, holder_len;
    const char *member_id = check_string(L, 2, &len);
    const char *holder = check_string(L, 3, &holder_len);
    int n = bad_key(L, "member_id", len);
    if (n || (n = bad_key(L, "holder", holder_len)))
        return n;
    int released = s->memory ? b24_tokens_memory_release(member_id, len, holder, holder_len)
                   : s->url  ? b24_tokens_pg_release(s, member_id, len, holder, holder_len)
                             : b24_tokens_sqlite_release(s, member_id, len, holder, holder_len);
    if (released < 0)
        return push_failure(L, s->err);
    lua_pushboolean(L, released);
    return 1;
}

/* __gc and __close: lets go of the connection; idempotent. */
static int tokens_close(lua_State *L)
{
    store *s = luaL_checkudata(L, 1, STORE_TYPE);
    b24_tokens_sqlite_close(s);
    b24_tokens_pg_close(s);
    return 0;
}

/* __tostring: which kind of store, never a value in it. */
static int tokens_tostring(lua_State *L)
{
    store *s = luaL_checkudata(L, 1, STORE_TYPE);
    lua_pushstring(L, s->memory ? "b24 token store (memory)"
                      : s->url  ? "b24 token store (PostgreSQL)"
                                : "b24 token store (SQLite)");
    return 1;
}

static char *configured_path;
static int configured;

/* What tokens() without a path gets (a file, a postgresql:// URL, or NULL: memory); called
 * once, before any state runs a script. */
void b24_tokens_configure(const char *path)
{
    free(configured_path);
    configured_path = path ? strdup(path) : NULL;
    configured = 1;
}

/* b24.host.tokens([path]) -> the store of this state for path (made on the first call). */
int b24_tokens_open(lua_State *L)
{
    static const luaL_Reg methods[] = {{"get", tokens_get},         {"put", tokens_put},
                                       {"swap", tokens_swap},       {"delete", tokens_delete},
                                       {"list", tokens_list},       {"lease", tokens_lease},
                                       {"release", tokens_release}, {NULL, NULL}};
    const char *path;
    if (lua_isnoneornil(L, 1)) {
        if (!configured)
            return luaL_error(L, "b24.host.tokens: no token store: give the path of a SQLite file "
                                 "(or a postgresql:// URL, or \"memory\"); only b24 serve has one "
                                 "of its own");
        path = configured_path ? configured_path : "memory";
    } else {
        path = check_string(L, 1, NULL);
        luaL_argcheck(L, *path, 1, "a path (or a postgresql:// URL, or \"memory\") expected");
    }
    int memory = strcmp(path, "memory") == 0;
    lua_settop(L, 1);                                  /* [1] keeps path alive */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, CACHE_KEY); /* [2] path -> store */
    if (lua_getfield(L, 2, path) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    store *s = lua_newuserdatauv(L, sizeof *s, 0); /* before the connection: a raise leaks none */
    memset(s, 0, sizeof *s);
    s->memory = memory;
    if (luaL_newmetatable(L, STORE_TYPE)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, tokens_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, tokens_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, tokens_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_setmetatable(L, -2);
    if (!memory &&
        (b24_pg_is_url(path) ? b24_tokens_pg_open(s, path) : b24_tokens_sqlite_open(s, path)) != 0)
        return luaL_error(L, "b24.host.tokens: %s", s->err);
    lua_pushvalue(L, -1);
    lua_setfield(L, 2, path);
    return 1;
}
