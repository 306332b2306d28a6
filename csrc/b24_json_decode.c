/* json_decode: the Lua binding (options, the scan, refusals as nil, message, kind) and the
 * building of a plain-mode value from the scanned text, in one pass that sizes every table from
 * the scan's counts, held to the call's memory budget (max_memory) with the collector paused.
 * Form mode's value is built by b24_json_form.c. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "b24.h"

#ifndef LUA_GCISRUNNING
#define LUA_GCISRUNNING 9 /* LuaJIT 2.1 answers it; Lua 5.1 answers -1 (unknown) */
#endif

#define NULL_INDEX 2 /* where decode_protected finds the null value */

static int table_size(uint32_t n)
{
    return n > INT_MAX ? INT_MAX : (int)n;
}

static size_t heap_bytes(lua_State *L)
{
    return (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
}

/* One more value built: every 64, what the Lua heap has grown by (the collector is paused, so
 * that is what the build allocated) is held to the budget, so no shape of body, however small
 * its values, costs more than max_memory. */
void b24_json_count_value(b24_json_builder *b)
{
    if (b->watch && (++b->values & 63) == 0) {
        size_t heap = heap_bytes(b->L);
        if (heap > b->heap && heap - b->heap > b->budget) {
            b->over_budget = 1;
            luaL_error(b->L, "JSON value over its memory budget");
        }
    }
}

/* [-0, +1, m] the value at p (scanned text); returns the end of its text */
static const char *build_value(b24_json_builder *b, const char *p)
{
    lua_State *L = b->L;
    size_t len;
    const char *s;
    b24_json_count_value(b);
    switch (*p) {
    case '{':
        luaL_checkstack(L, 3, "JSON nested too deep");
        lua_createtable(L, 0, table_size(b->doc->counts[b->record++]));
        p = b24_json_skip_ws(p + 1);
        if (*p == '}')
            return p + 1;
        for (;;) {
            s = b24_json_string(p, &p, b->buf, &len);
            lua_pushlstring(L, s, len);
            p = b24_json_skip_ws(build_value(b, b24_json_skip_ws(b24_json_skip_ws(p) + 1)));
            lua_rawset(L, -3);
            if (*p == '}')
                return p + 1;
            p = b24_json_skip_ws(p + 1);
        }
    case '[':
        luaL_checkstack(L, 3, "JSON nested too deep");
        lua_createtable(L, table_size(b->doc->counts[b->record++]), 0);
        p = b24_json_skip_ws(p + 1);
        if (*p == ']')
            return p + 1;
        for (size_t i = 1;; i++) {
            p = b24_json_skip_ws(build_value(b, p));
            lua_rawseti(L, -2, B24_JSON_INDEX(i));
            if (*p == ']')
                return p + 1;
            p = b24_json_skip_ws(p + 1);
        }
    case '"':
        s = b24_json_string(p, &p, b->buf, &len);
        lua_pushlstring(L, s, len);
        return p;
    case 't':
        lua_pushboolean(L, 1);
        return p + 4;
    case 'f':
        lua_pushboolean(L, 0);
        return p + 5;
    case 'n':
        lua_pushvalue(L, NULL_INDEX);
        return p + 4;
    default: {
        int64_t i;
        double d;
        if (b24_json_number(p, &p, &i, &d)) {
#if LUA_VERSION_NUM >= 503
            lua_pushinteger(L, (lua_Integer)i);
#else
            lua_pushnumber(L, (lua_Number)i);
#endif
        } else {
            lua_pushnumber(L, (lua_Number)d);
        }
        return p;
    }
    }
}

/* [-2, +1] the builder (light userdata) at 1, the null value at 2: the decoded value */
static int decode_protected(lua_State *L)
{
    b24_json_builder *b = lua_touserdata(L, 1);
    b->L = L;
    b->heap = heap_bytes(L);
    if (b->tree || b->doc->form)
        b24_json_form_push(b);
    else
        build_value(b, b24_json_skip_ws(b->doc->text));
    return 1;
}

/* nil, message, kind for a refused body */
static int push_refusal(lua_State *L, b24_json_status st, const b24_json_doc *doc,
                        const b24_json_limits *lim, size_t len, size_t form_budget,
                        size_t memory_budget)
{
    char msg[200];
    const char *kind;
    switch (st) {
    case B24_JSON_MALFORMED:
        snprintf(msg, sizeof msg, "malformed JSON at byte %zu: %s", doc->offset + 1, doc->why);
        kind = "malformed";
        break;
    case B24_JSON_TOO_LARGE:
        if (memory_budget)
            snprintf(msg, sizeof msg,
                     "JSON body would take more than %zu bytes as Lua values (max_memory)",
                     memory_budget);
        else if (form_budget)
            snprintf(msg, sizeof msg,
                     "JSON body with '[', ']' or NUL in its keys is over %zu bytes as a form",
                     form_budget);
        else
            snprintf(msg, sizeof msg, "JSON body of %zu bytes is over the limit of %zu bytes", len,
                     lim->max_size);
        kind = "too_large";
        break;
    case B24_JSON_TOO_MANY:
        snprintf(msg, sizeof msg, "JSON body has more than %zu %s", lim->max_pairs,
                 doc->form ? "fields" : "values");
        kind = "too_many";
        break;
    case B24_JSON_TOO_DEEP:
        snprintf(msg, sizeof msg, "JSON body nests deeper than %zu levels", lim->max_depth);
        kind = "too_deep";
        break;
    default:
        snprintf(msg, sizeof msg, "not enough memory to decode the JSON body");
        kind = "memory";
        break;
    }
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, kind);
    return 3;
}

int b24_json_build(lua_State *L, b24_json_builder *b, size_t len, int null_index)
{
    null_index = lua_absindex(L, null_index);
    lua_pushcfunction(L, decode_protected);
    lua_pushlightuserdata(L, b);
    lua_pushvalue(L, null_index);
    /* no body takes more than about 25 bytes of Lua memory per byte of JSON ("[[],[],…]") or of
     * form ("a[]&a[]…"): below that the budget cannot be reached, and the collector's pacing is
     * left alone */
    b->watch = b->budget / 32 < len;
    int collecting = b->watch && lua_gc(L, LUA_GCISRUNNING, 0) == 1;
    if (collecting)
        lua_gc(L, LUA_GCSTOP, 0);
    int status = lua_pcall(L, 2, 1, 0);
    if (collecting)
        lua_gc(L, LUA_GCRESTART, 0);
    return status;
}

int b24_json_decode(lua_State *L)
{
    size_t len, form_budget = 0;
    const char *s = luaL_checklstring(L, 1, &len);
    b24_json_limits lim = {B24_FORM_MAX_DEPTH, B24_FORM_MAX_PAIRS, B24_FORM_MAX_SIZE, NULL, 0};
    int form = 0;
    b24_json_builder b;
    memset(&b, 0, sizeof b);
    b.budget = len <= (SIZE_MAX - 65536) / 16 ? 16 * len + 65536 : SIZE_MAX;
    lua_settop(L, 2);
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lim.max_depth = b24_json_limit(L, 2, "max_depth", lim.max_depth, B24_FORM_DEPTH_CAP);
        lim.max_pairs = b24_json_limit(L, 2, "max_pairs", lim.max_pairs, 0);
        lim.max_size = b24_json_limit(L, 2, "max_size", lim.max_size, 0);
        b.budget = b24_json_limit(L, 2, "max_memory", b.budget, 0);
        lua_getfield(L, 2, "form");
        form = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, 2, "only"); /* the table holds the string while the call lasts */
        if (!lua_isnil(L, -1)) {
            if (!form || lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "bad option 'only' (a string, with form = true, expected)");
            lim.only = lua_tolstring(L, -1, &lim.only_len);
        }
        lua_pop(L, 1);
        lua_getfield(L, 2, "null"); /* 3 */
    } else {
        lua_pushnil(L);
    }
    if (lua_isnil(L, 3)) {
        lua_pop(L, 1);
        lua_pushlightuserdata(L, NULL); /* json_null, cjson.null */
    }
    b24_json_scratch *sc = b24_json_scratch_acquire(L);
    b24_arena_reset(&sc->arena);
    b24_json_doc doc;
    memset(&doc, 0, sizeof doc);
    doc.records = sc->records;
    doc.records_size = sc->records_size;
    b24_json_status st = b24_json_scan(s, len, &lim, form, &sc->arena, &doc);
    sc->records = doc.records; /* the scratch owns it from here on, whatever happens */
    sc->records_size = doc.records_size;
    if (st == B24_JSON_OK) {
        b.doc = &doc;
        b.arena = &sc->arena;
        b.buf = b24_arena_alloc(&sc->arena, doc.longest_escaped + 1);
        b.levels = b24_arena_alloc(&sc->arena, sizeof(b24_json_level) * (doc.depth + 1));
        if (b.buf == NULL || b.levels == NULL)
            st = B24_JSON_NO_MEMORY;
    }
    if (st == B24_JSON_OK && form && doc.unclean_keys) {
        /* keys that parse_str reads as brackets: re-read the form body itself, bounded so that
         * a prefix repeated for every value cannot blow up */
        form_budget = 2 * len + 4096;
        st = b24_json_form_tree(&doc, &lim, &sc->arena, form_budget, &b.tree);
    }
    if (st == B24_JSON_OK) {
        /* building the value may raise (memory, stack): under pcall, so the scratch is released
         * on every path */
        b.only = lim.only;
        b.only_len = lim.only_len;
        int status = b24_json_build(L, &b, len, 3);
        b24_json_scratch_release(sc);
        if (status == LUA_OK)
            return 1;
        if (!b.over_budget)
            return lua_error(L);
        lua_pop(L, 1);
        return push_refusal(L, B24_JSON_TOO_LARGE, &doc, &lim, len, 0, b.budget);
    }
    b24_json_scratch_release(sc);
    return push_refusal(L, st, &doc, &lim, len, form_budget, 0);
}
