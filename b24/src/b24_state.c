/* Lua states of the b24 program: the standard libraries, bitrix24 preloaded (the C core linked
 * in, the Lua layer embedded), and every call into Lua under lua_pcall with a traceback. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include <curl/curl.h>

#include "b24_host.h"

double b24_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

char *b24_read_file(const char *path, size_t *len)
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

/* The message handler of lua.c: a string message gets a traceback, other values their
 * __tostring or a description. */
static int msghandler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int b24_state_call(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return status;
}

/* package.preload loader of an embedded module; upvalue 1 is its index */
static int embedded_loader(lua_State *L)
{
    const b24_embedded *m = &b24_embedded_modules[lua_tointeger(L, lua_upvalueindex(1))];
    char chunk[256];
    snprintf(chunk, sizeof chunk, "@[b24]/%s", m->path);
    if (luaL_loadbufferx(L, (const char *)m->src, m->len, chunk, "t") != LUA_OK)
        return lua_error(L);
    lua_pushstring(L, m->name);
    lua_call(L, 1, 1);
    return 1;
}

/* b24.host.log(level, msg [, fields]): a line in the host's log, masked like every
 * other; fields is a table of string keys and scalar values. */
static int host_log(lua_State *L)
{
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    b24_level level = (b24_level)luaL_checkoption(L, 1, NULL, levels);
    const char *msg = luaL_checkstring(L, 2);
    if (!b24_log_enabled(level))
        return 0;
    const char *kv[2 * 16 + 1] = {NULL};
    int n = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_settop(L, 3);
        luaL_checkstack(L, 2 * 16 + 4, "too many log fields");
        lua_pushnil(L);
        while (n < 2 * 16 && lua_next(L, 3)) {
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
            kv[10], kv[11], kv[12], kv[13], kv[14], kv[15], kv[16], kv[17], kv[18], kv[19],
            kv[20], kv[21], kv[22], kv[23], kv[24], kv[25], kv[26], kv[27], kv[28], kv[29],
            kv[30], kv[31], NULL);
    return 0;
}

/* b24.host.post(url, body [, headers]) → true | nil, reason: queued for a host thread
 * that POSTs it once (b24_post.c); the outcome is only logged. */
static int host_post(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    size_t blen;
    const char *body = luaL_checklstring(L, 2, &blen);
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return luaL_argerror(L, 1, "an http:// or https:// URL expected");
    struct curl_slist *headers = NULL;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_settop(L, 3);
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
                curl_slist_free_all(headers);
                return luaL_argerror(L, 3, "string header names and values expected");
            }
            const char *name = lua_tostring(L, -2), *value = lua_tostring(L, -1);
            if (strpbrk(name, "\r\n:") || strpbrk(value, "\r\n") || !*name) {
                curl_slist_free_all(headers);
                return luaL_argerror(L, 3, "CR, LF or ':' in a header");
            }
            lua_pushfstring(L, "%s: %s", name, value);
            struct curl_slist *h = curl_slist_append(headers, lua_tostring(L, -1));
            lua_pop(L, 2);
            if (h == NULL) {
                curl_slist_free_all(headers);
                return luaL_error(L, "out of memory");
            }
            headers = h;
        }
    }
    /* no "Expect: 100-continue" round trip for larger bodies */
    struct curl_slist *h = curl_slist_append(headers, "Expect:");
    if (h == NULL) {
        curl_slist_free_all(headers);
        return luaL_error(L, "out of memory");
    }
    const char *why = NULL;
    if (b24_post(url, body, blen, h, &why) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* b24.host.isatty(fd) → boolean */
static int host_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)) == 1);
    return 1;
}

static int open_host(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"log", host_log}, {"post", host_post}, {"isatty", host_isatty}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}

/* os.exit inside b24: what the script queued with b24.host.post goes out first (up to
 * 5 s), then the standard os.exit (upvalue 1) ends the process. */
static int exit_after_posts(lua_State *L)
{
    b24_post_stop(5);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static int open_state(lua_State *L)
{
    luaL_openlibs(L);
    lua_getglobal(L, "os");
    lua_getfield(L, -1, "exit");
    lua_pushcclosure(L, exit_after_posts, 1);
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_bitrix24_core);
    lua_setfield(L, -2, "bitrix24.core");
    lua_pushcfunction(L, open_host);
    lua_setfield(L, -2, "b24.host");
    for (int i = 0; b24_embedded_modules[i].name; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, embedded_loader, 1);
        lua_setfield(L, -2, b24_embedded_modules[i].name);
    }
    lua_pop(L, 1);
    return 0;
}

lua_State *b24_state_new(void)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return NULL;
    lua_pushcfunction(L, open_state);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        lua_close(L);
        return NULL;
    }
    return L;
}

/* Prepends the script's directory to package.path so a script can require its neighbours. */
static void add_script_dir(lua_State *L, const char *path)
{
    const char *slash = strrchr(path, '/');
    lua_getglobal(L, "package");
    if (slash)
        lua_pushlstring(L, path, (size_t)(slash - path));
    else
        lua_pushliteral(L, ".");
    lua_pushliteral(L, "/?.lua;");
    lua_getfield(L, -3, "path");
    lua_concat(L, 3);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

int b24_state_run_script(lua_State *L, const char *path, const char *src, size_t len, int nargs)
{
    add_script_dir(L, path);
    lua_pushfstring(L, "@%s", path);
    int status = luaL_loadbufferx(L, src, len, lua_tostring(L, -1), "t");
    lua_remove(L, -2); /* the chunk name */
    if (status != LUA_OK) {
        lua_insert(L, -1 - nargs); /* the message below the arguments */
        lua_pop(L, nargs);
        return status;
    }
    lua_insert(L, -1 - nargs);
    return b24_state_call(L, nargs, 1);
}
