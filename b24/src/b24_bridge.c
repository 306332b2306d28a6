/* The Lua bridge of b24 serve: see b24_bridge.h. */
#include <string.h>

#include <lauxlib.h>

#include "b24.h" /* b24_mask */
#include "b24_bridge.h"
#include "b24_deadline.h"
#include "b24_state.h"

typedef struct call {
    const b24_bridge_request *r;
    int accept; /* a router's accept instead of the handler */
    b24_bridge_options *options;
} call;

/* Runs inside lua_pcall: builds the request table, calls the handler, and normalises what it
 * returns to (status, {name, value, name, value, …}, body) of checked types. */
static int dispatch(lua_State *L)
{
    const call *in = lua_touserdata(L, 2);
    const b24_bridge_request *r = in->r;
    int accept = in->accept;
    lua_settop(L, 1);
    int is_table = lua_type(L, 1) == LUA_TTABLE;
    if (is_table) {
        lua_getfield(L, 1, accept ? "accept" : "handle");
        lua_pushvalue(L, 1);
    } else {
        lua_pushvalue(L, 1);
    }
    lua_createtable(L, 0, 6);
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    const char *q = strchr(r->uri, '?');
    if (q) {
        lua_pushlstring(L, r->uri, (size_t)(q - r->uri));
        lua_setfield(L, -2, "path");
        lua_pushstring(L, q + 1);
    } else {
        lua_pushstring(L, r->uri);
        lua_setfield(L, -2, "path");
        lua_pushliteral(L, "");
    }
    lua_setfield(L, -2, "query");
    lua_pushlstring(L, r->body ? r->body : "", r->body_len);
    lua_setfield(L, -2, "body");
    lua_pushstring(L, r->remote);
    lua_setfield(L, -2, "remote_addr");
    lua_createtable(L, 0, (int)r->nheaders);
    for (size_t i = 0; i < r->nheaders; i++) {
        const b24_header *h = &r->headers[i];
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (size_t k = 0; k < h->name_len; k++) {
            char ch = h->name[k];
            luaL_addchar(&b, (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch);
        }
        luaL_pushresult(&b);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, h->value, h->value_len);
        } else { /* a repeated header: joined as RFC 9110 allows */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h->value, h->value_len);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");
    if (accept) { /* the verdict table: status, headers, body, and key + event when accepted */
        lua_call(L, 2, 1);
        if (!lua_istable(L, -1))
            return luaL_error(L, "router:accept returned a %s, not a verdict table",
                              luaL_typename(L, -1));
        b24_bridge_options *o = in->options;
        o->reason[0] = '\0';
        lua_getfield(L, 2, "err"); /* a refusal's reason, for the log line */
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "description");
            size_t dlen;
            const char *d = lua_tolstring(L, -1, &dlen);
            if (d)
                b24_mask(d, dlen, o->reason, sizeof o->reason);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        lua_getfield(L, 2, "status");
        lua_getfield(L, 2, "headers");
        lua_getfield(L, 2, "body");
        lua_getfield(L, 2, "key");
        lua_getfield(L, 2, "event");
        if (lua_istable(L, -1))
            lua_getfield(L, -1, "name");
        else
            lua_pushnil(L);
        lua_replace(L, -2);
        lua_remove(L, 2); /* [2] status [3] headers [4] body [5] key [6] event name */
        if (!lua_isnil(L, 5) && (lua_type(L, 5) != LUA_TSTRING || lua_type(L, 6) != LUA_TSTRING))
            return luaL_error(L, "router:accept returned a key without an event name");
    } else { /* [5] the options table, if any, read into the request */
        lua_call(L, is_table ? 2 : 1, 4);
        b24_bridge_options *o = in->options;
        o->delay = 0;
        o->close = 0;
        o->reason[0] = '\0';
        if (!lua_isnil(L, 5)) {
            if (!lua_istable(L, 5))
                return luaL_error(L, "handler returned bad options (a table expected, got %s)",
                                  luaL_typename(L, 5));
            lua_getfield(L, 5, "delay");
            if (!lua_isnil(L, -1)) {
                double d = lua_tonumber(L, -1);
                if (!lua_isnumber(L, -1) || !(d >= 0 && d <= 3600))
                    return luaL_error(
                        L, "handler returned a bad delay (seconds from 0 to 3600 expected)");
                o->delay = d;
            }
            lua_getfield(L, 5, "close");
            o->close = lua_toboolean(L, -1);
            lua_pop(L, 2);
        }
        lua_settop(L, 4);
        lua_settop(L, 6); /* [5] [6] nil: no key, no event */
    }

    /* [2] status [3] headers [4] body */
    /* a float with an integral value (403.0, as a JSON decoder may give) is that integer */
    int integral = 0;
    lua_Integer status = lua_tointegerx(L, 2, &integral);
    if (lua_type(L, 2) != LUA_TNUMBER || !integral || status < 100 || status > 599)
        return luaL_error(L,
                          "handler returned a bad status (an integer from 100 to 599 expected, "
                          "got %s)",
                          lua_type(L, 2) == LUA_TNUMBER ? luaL_tolstring(L, 2, NULL)
                                                        : luaL_typename(L, 2));
    lua_newtable(L); /* the flat header list, moved to [3] below */
    int flat = lua_gettop(L);
    if (!lua_isnil(L, 3)) {
        if (!lua_istable(L, 3))
            return luaL_error(L, "handler returned bad headers (a table expected, got %s)",
                              luaL_typename(L, 3));
        int n = 0;
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            size_t nl, vl;
            if (lua_type(L, -2) != LUA_TSTRING ||
                (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
                return luaL_error(L,
                                  "handler returned a bad header (string name and value expected)");
            lua_pushvalue(L, -2); /* copies: tolstring must not touch the key lua_next needs */
            const char *name = lua_tolstring(L, -1, &nl);
            lua_pushvalue(L, -2);
            const char *value = lua_tolstring(L, -1, &vl);
            if (nl == 0 || strcspn(name, "\r\n:") != nl || strcspn(value, "\r\n") != vl ||
                strlen(name) != nl || strlen(value) != vl)
                return luaL_error(L,
                                  "handler returned a bad header (CR, LF, NUL or ':' in a name)");
            lua_rawseti(L, flat, n + 2); /* the value */
            lua_rawseti(L, flat, n + 1); /* the name */
            n += 2;
            lua_pop(L, 1);
        }
    }
    lua_replace(L, 3);
    if (!lua_isnil(L, 4) && lua_type(L, 4) != LUA_TSTRING) {
        if (lua_type(L, 4) != LUA_TNUMBER)
            return luaL_error(L, "handler returned a bad body (a string expected, got %s)",
                              luaL_typename(L, 4));
        lua_tostring(L, 4); /* converts in place, inside the protected call */
    }
    return 5;
}

/* The handler called with the request, its results checked, under b24_state_call and the
 * request's deadline. */
int b24_bridge_call(lua_State *L, const b24_bridge_request *req, int accept,
                    b24_bridge_options *options)
{
    call k = {req, accept, options};
    lua_settop(L, 1);
    lua_pushcfunction(L, dispatch);
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, &k);
    b24_deadline_begin(B24_DEADLINE_REQUEST);
    int status = b24_state_call(L, 2, 5);
    if (b24_deadline_end() != B24_DEADLINE_MET && status == LUA_OK) {
        /* it caught the deadline's error and still returned in time: a failure all the same */
        lua_settop(L, 1);
        lua_pushliteral(L, "b24: the Lua call ran past its deadline");
        status = LUA_ERRRUN;
    }
    return status;
}
