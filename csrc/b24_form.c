/* form_decode / form_encode: PHP parse_str and http_build_query for Lua values. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"

#define SCRATCH_MT "bitrix24.core.FormScratch"
#define ENCODE_MAX_DEPTH 100 /* keep in step with the message in encode_table */

/* Per-state working memory, reused between calls so a small body costs no malloc. */
typedef struct scratch {
    b24_arena arena;
    char *out;
    size_t out_len, out_cap;
    char *prefix;
    size_t prefix_len, prefix_cap;
    int busy; /* a finalizer may call us while a call is under way */
} scratch;

static int scratch_gc(lua_State *L)
{
    scratch *s = luaL_checkudata(L, 1, SCRATCH_MT);
    b24_arena_free(&s->arena);
    free(s->out);
    free(s->prefix);
    s->out = s->prefix = NULL;
    s->out_cap = s->prefix_cap = 0;
    return 0;
}

static scratch *scratch_push(lua_State *L)
{
    scratch *s = lua_newuserdatauv(L, sizeof(*s), 0);
    memset(s, 0, sizeof(*s));
    luaL_setmetatable(L, SCRATCH_MT);
    return s;
}

/* The shared scratch from upvalue 1, or a fresh one pushed on the stack when it is busy. */
static scratch *scratch_acquire(lua_State *L)
{
    scratch *s = lua_touserdata(L, lua_upvalueindex(1));
    if (s->busy)
        s = scratch_push(L);
    s->busy = 1;
    return s;
}

/* ---- decode ------------------------------------------------------------------------------ */

/* form_decode(s [, limits]) -> table | nil, message, kind */
static int form_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    b24_form_limits lim = {B24_FORM_MAX_DEPTH, B24_FORM_MAX_PAIRS, B24_FORM_MAX_SIZE, NULL, 0};
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
        lua_getfield(L, 2, "only"); /* the table holds the string while the call lasts */
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "bad option 'only' (string expected)");
            lim.only = lua_tolstring(L, -1, &lim.only_len);
        }
        lua_pop(L, 1);
    }
    scratch *sc = scratch_acquire(L);
    b24_arena_reset(&sc->arena);
    b24_form_array *root = NULL;
    b24_form_status st = b24_form_parse(s, len, &lim, &sc->arena, &root);
    if (st == B24_FORM_OK) {
        /* building the table may raise (memory, stack): under pcall, so the scratch is
         * released on every path and the next call reuses it; held to max_memory as
         * json_decode's tables are */
        b.tree = root;
        lua_pushnil(L); /* no null in a form */
        int status = b24_json_build(L, &b, len, -1);
        sc->busy = 0;
        b24_arena_reset(&sc->arena);
        if (status == LUA_OK)
            return 1;
        if (!b.over_budget)
            return lua_error(L);
        lua_pushnil(L);
        lua_pushfstring(L, "form body would take more than %d bytes as Lua values (max_memory)",
                        (int)(b.budget > INT_MAX ? INT_MAX : b.budget));
        lua_pushliteral(L, "too_large");
        return 3;
    }
    sc->busy = 0;
    b24_arena_reset(&sc->arena);
    lua_pushnil(L);
    switch (st) {
    case B24_FORM_TOO_LARGE:
        lua_pushfstring(L, "form body of %d bytes is over the limit of %d bytes", (int)len,
                        (int)lim.max_size);
        lua_pushliteral(L, "too_large");
        break;
    case B24_FORM_TOO_MANY:
        lua_pushfstring(L, "form body has more than %d fields", (int)lim.max_pairs);
        lua_pushliteral(L, "too_many");
        break;
    case B24_FORM_TOO_DEEP:
        lua_pushfstring(L, "form field nests deeper than %d levels", (int)lim.max_depth);
        lua_pushliteral(L, "too_deep");
        break;
    default:
        lua_pushliteral(L, "not enough memory to decode the form body");
        lua_pushliteral(L, "memory");
        break;
    }
    return 3;
}

/* ---- encode ------------------------------------------------------------------------------ */

static int grow(lua_State *L, char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    char *p = realloc(*buf, c);
    if (p == NULL)
        return luaL_error(L, "not enough memory to encode the form");
    *buf = p;
    *cap = c;
    return 0;
}

/* php_url_encode (RFC 1738): alphanumerics and "-._" stay, space is '+', the rest %XX.
 * Per byte one word: up to three output characters from the low byte up, and their count
 * in the top byte, so one load and one four-byte
 * store write a byte's encoding; the next store overwrites the spare byte. */
static const uint32_t URLENC[256] = {
    0x03303025, 0x03313025, 0x03323025, 0x03333025, 0x03343025, 0x03353025, 0x03363025, 0x03373025,
    0x03383025, 0x03393025, 0x03413025, 0x03423025, 0x03433025, 0x03443025, 0x03453025, 0x03463025,
    0x03303125, 0x03313125, 0x03323125, 0x03333125, 0x03343125, 0x03353125, 0x03363125, 0x03373125,
    0x03383125, 0x03393125, 0x03413125, 0x03423125, 0x03433125, 0x03443125, 0x03453125, 0x03463125,
    0x0100002b, 0x03313225, 0x03323225, 0x03333225, 0x03343225, 0x03353225, 0x03363225, 0x03373225,
    0x03383225, 0x03393225, 0x03413225, 0x03423225, 0x03433225, 0x0100002d, 0x0100002e, 0x03463225,
    0x01000030, 0x01000031, 0x01000032, 0x01000033, 0x01000034, 0x01000035, 0x01000036, 0x01000037,
    0x01000038, 0x01000039, 0x03413325, 0x03423325, 0x03433325, 0x03443325, 0x03453325, 0x03463325,
    0x03303425, 0x01000041, 0x01000042, 0x01000043, 0x01000044, 0x01000045, 0x01000046, 0x01000047,
    0x01000048, 0x01000049, 0x0100004a, 0x0100004b, 0x0100004c, 0x0100004d, 0x0100004e, 0x0100004f,
    0x01000050, 0x01000051, 0x01000052, 0x01000053, 0x01000054, 0x01000055, 0x01000056, 0x01000057,
    0x01000058, 0x01000059, 0x0100005a, 0x03423525, 0x03433525, 0x03443525, 0x03453525, 0x0100005f,
    0x03303625, 0x01000061, 0x01000062, 0x01000063, 0x01000064, 0x01000065, 0x01000066, 0x01000067,
    0x01000068, 0x01000069, 0x0100006a, 0x0100006b, 0x0100006c, 0x0100006d, 0x0100006e, 0x0100006f,
    0x01000070, 0x01000071, 0x01000072, 0x01000073, 0x01000074, 0x01000075, 0x01000076, 0x01000077,
    0x01000078, 0x01000079, 0x0100007a, 0x03423725, 0x03433725, 0x03443725, 0x03453725, 0x03463725,
    0x03303825, 0x03313825, 0x03323825, 0x03333825, 0x03343825, 0x03353825, 0x03363825, 0x03373825,
    0x03383825, 0x03393825, 0x03413825, 0x03423825, 0x03433825, 0x03443825, 0x03453825, 0x03463825,
    0x03303925, 0x03313925, 0x03323925, 0x03333925, 0x03343925, 0x03353925, 0x03363925, 0x03373925,
    0x03383925, 0x03393925, 0x03413925, 0x03423925, 0x03433925, 0x03443925, 0x03453925, 0x03463925,
    0x03304125, 0x03314125, 0x03324125, 0x03334125, 0x03344125, 0x03354125, 0x03364125, 0x03374125,
    0x03384125, 0x03394125, 0x03414125, 0x03424125, 0x03434125, 0x03444125, 0x03454125, 0x03464125,
    0x03304225, 0x03314225, 0x03324225, 0x03334225, 0x03344225, 0x03354225, 0x03364225, 0x03374225,
    0x03384225, 0x03394225, 0x03414225, 0x03424225, 0x03434225, 0x03444225, 0x03454225, 0x03464225,
    0x03304325, 0x03314325, 0x03324325, 0x03334325, 0x03344325, 0x03354325, 0x03364325, 0x03374325,
    0x03384325, 0x03394325, 0x03414325, 0x03424325, 0x03434325, 0x03444325, 0x03454325, 0x03464325,
    0x03304425, 0x03314425, 0x03324425, 0x03334425, 0x03344425, 0x03354425, 0x03364425, 0x03374425,
    0x03384425, 0x03394425, 0x03414425, 0x03424425, 0x03434425, 0x03444425, 0x03454425, 0x03464425,
    0x03304525, 0x03314525, 0x03324525, 0x03334525, 0x03344525, 0x03354525, 0x03364525, 0x03374525,
    0x03384525, 0x03394525, 0x03414525, 0x03424525, 0x03434525, 0x03444525, 0x03454525, 0x03464525,
    0x03304625, 0x03314625, 0x03324625, 0x03334625, 0x03344625, 0x03354625, 0x03364625, 0x03374625,
    0x03384625, 0x03394625, 0x03414625, 0x03424625, 0x03434625, 0x03444625, 0x03454625, 0x03464625,
};

static void url_encode(lua_State *L, char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    grow(L, buf, cap, *len + n * 3 + 1); /* +1: the last four-byte store */
    char *o = *buf + *len;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = URLENC[(unsigned char)s[i]];
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        char bytes[4] = {(char)v, (char)(v >> 8), (char)(v >> 16), 0};
        memcpy(o, bytes, 4);
#else
        memcpy(o, &v, 4);
#endif
        o += v >> 24;
    }
    *len = (size_t)(o - *buf);
}

typedef struct encoder {
    lua_State *L;
    scratch *s;
    int first;
} encoder;

/* Raises a misuse error (form_encode releases the scratch when it comes back). */
static _Noreturn void fail(encoder *e, const char *fmt, const char *a, const char *b)
{
    lua_pushfstring(e->L, fmt, a, b);
    lua_error(e->L);
    abort(); /* lua_error does not return */
}

static void encode_value(encoder *e, int idx, int depth);

/* The prefix so far, for an error message */
static const char *prefix_text(encoder *e)
{
    scratch *s = e->s;
    grow(e->L, &s->prefix, &s->prefix_cap, s->prefix_len + 1);
    s->prefix[s->prefix_len] = '\0';
    return s->prefix_len ? s->prefix : "(top level)";
}

static void prefix_add(encoder *e, const char *s, size_t n)
{
    scratch *sc = e->s;
    grow(e->L, &sc->prefix, &sc->prefix_cap, sc->prefix_len + n);
    memcpy(sc->prefix + sc->prefix_len, s, n);
    sc->prefix_len += n;
}

/* Appends "%5B" key "%5D" (or the bare key at the top level) to the prefix. */
static void prefix_key(encoder *e, const char *k, size_t klen, int depth)
{
    if (depth > 0)
        prefix_add(e, "%5B", 3);
    url_encode(e->L, &e->s->prefix, &e->s->prefix_len, &e->s->prefix_cap, k, klen);
    if (depth > 0)
        prefix_add(e, "%5D", 3);
}

/* One entry of a table being encoded. */
typedef struct entry {
    int kind; /* 0: integer key, 1: other number, 2: string */
    lua_Integer i;
    lua_Number num;
    const char *str; /* anchored by the table */
    size_t len;
    uint64_t head;            /* the first eight bytes, big-endian: most comparisons end here */
    int key_slot, value_slot; /* stack slots while they fit; 0: look the value up again */
} entry;

static int compare_entries(const entry *a, const entry *b)
{
    if ((a->kind == 2) != (b->kind == 2))
        return a->kind == 2 ? 1 : -1;
    if (a->kind == 0 && b->kind == 0)
        return (a->i > b->i) - (a->i < b->i);
    if (a->kind != 2) {
        lua_Number x = a->kind == 0 ? (lua_Number)a->i : a->num;
        lua_Number y = b->kind == 0 ? (lua_Number)b->i : b->num;
        return (x > y) - (x < y);
    }
    if (a->head != b->head)
        return a->head < b->head ? -1 : 1;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->str, b->str, n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

static int compare_qsort(const void *a, const void *b)
{
    return compare_entries(a, b);
}

/* Insertion sort up to a few dozen keys (what REST params and events hold): no allocation,
 * and most string keys part at their first byte, before any memcmp. */
static void sort_entries(entry *v, size_t n)
{
    if (n > 48) {
        qsort(v, n, sizeof *v, compare_qsort);
        return;
    }
    for (size_t i = 1; i < n; i++) { /* small tables, the common case */
        entry x = v[i];
        size_t j = i;
        for (; j > 0 && compare_entries(&v[j - 1], &x) > 0; j--)
            v[j] = v[j - 1];
        v[j] = x;
    }
}

/* Encodes the table at idx: a sequence as k[0], k[1], …; any other table by its keys in a
 * stable order (numbers first, then strings bytewise) so one table always gives one body.
 * One lua_next pass leaves each key and value on the stack while the stack may grow (5.1
 * and LuaJIT cap a C function's stack near 8000 slots), and past that the value is looked
 * up again by its key. */
static void encode_table(encoder *e, int idx, int depth)
{
    lua_State *L = e->L;
    if (depth >= ENCODE_MAX_DEPTH)
        fail(e, "cannot form-encode: tables nest deeper than 100 levels (a cycle?)%s%s", "", "");
    luaL_checkstack(L, 4, "form nested too deep");
    int top = lua_gettop(L), slot = top, room = 0;
    size_t n = lua_rawlen(L, idx), count = 0, cap = 16, non_seq = 0;
    entry *v = b24_arena_alloc(&e->s->arena, sizeof *v * cap);
    if (v == NULL)
        fail(e, "not enough memory to encode the form%s%s", "", "");
    lua_pushnil(L);
    while (lua_next(L, idx)) { /* [key value] */
        if (count == cap) {
            entry *w = b24_arena_alloc(&e->s->arena, sizeof *w * cap * 2);
            if (w == NULL)
                fail(e, "not enough memory to encode the form%s%s", "", "");
            memcpy(w, v, sizeof *v * cap);
            v = w;
            cap *= 2;
        }
        entry *en = &v[count++];
        int kt = lua_type(L, -2);
        if (kt == LUA_TSTRING) {
            en->kind = 2;
            en->str = lua_tolstring(L, -2, &en->len);
            en->head = 0;
            for (size_t b = 0; b < 8; b++)
                en->head = en->head << 8 | (b < en->len ? (unsigned char)en->str[b] : 0);
            non_seq++;
        } else if (kt == LUA_TNUMBER) {
            if (lua_isinteger(L, -2)) {
                en->kind = 0;
                en->i = lua_tointeger(L, -2);
                if (en->i < 1 || (size_t)en->i > n)
                    non_seq++;
            } else {
                en->kind = 1;
                en->num = lua_tonumber(L, -2);
                non_seq++;
            }
        } else {
            lua_pop(L, 1);
            fail(e, "cannot form-encode a %s key in %s", lua_typename(L, kt), prefix_text(e));
        }
        if (room < 3 && lua_checkstack(L, 64)) /* reserve in steps: one call per 21 entries */
            room = 64;
        if (room >= 3) { /* keep key and value; a copy of the key drives lua_next */
            room -= 2;
            slot += 2;
            en->key_slot = slot - 1;
            en->value_slot = slot;
            lua_pushvalue(L, -2);
        } else {
            en->key_slot = en->value_slot = 0;
            lua_pop(L, 1);
        }
    }
    size_t base = e->s->prefix_len;
    int seq = non_seq == 0 && count == n;
    if (seq) { /* keys are exactly 1..n: place each entry at its index */
        entry *ordered = b24_arena_alloc(&e->s->arena, sizeof *ordered * (n ? n : 1));
        if (ordered == NULL)
            fail(e, "not enough memory to encode the form%s%s", "", "");
        for (size_t k = 0; k < count; k++)
            ordered[v[k].i - 1] = v[k];
        v = ordered;
    } else {
        sort_entries(v, count);
    }
    for (size_t k = 0; k < count; k++) {
        entry *en = &v[k];
        char num[48];
        const char *key = num;
        size_t klen;
        if (seq) {
            klen = b24_json_format_integer((int64_t)k, num);
        } else if (en->kind == 0) {
            klen = b24_json_format_integer((int64_t)en->i, num);
        } else if (en->kind == 1) {
            lua_pushnumber(L, en->num);
            klen = b24_json_format_number(L, -1, num);
            lua_pop(L, 1);
            if (klen == 0)
                fail(e, "cannot form-encode a NaN or infinite key in %s%s", prefix_text(e), "");
        } else {
            key = en->str;
            klen = en->len;
        }
        prefix_key(e, key, klen, depth);
        if (en->value_slot) {
            encode_value(e, en->value_slot, depth + 1);
        } else {
            if (en->kind == 2)
                lua_pushlstring(L, en->str, en->len);
            else if (en->kind == 0)
                lua_pushinteger(L, en->i);
            else
                lua_pushnumber(L, en->num);
            lua_rawget(L, idx);
            encode_value(e, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        e->s->prefix_len = base;
    }
    lua_settop(L, top);
}

static void encode_value(encoder *e, int idx, int depth)
{
    lua_State *L = e->L;
    scratch *s = e->s;
    const char *str;
    size_t len;
    char num[40];
    switch (lua_type(L, idx)) {
    case LUA_TTABLE:
        encode_table(e, idx, depth);
        return;
    case LUA_TSTRING:
        str = lua_tolstring(L, idx, &len);
        break;
    case LUA_TNUMBER:
        len = b24_json_format_number(L, idx, num); /* as json_encode, '.' in any locale */
        if (len == 0)
            fail(e, "cannot form-encode a NaN or infinite number at %s%s", prefix_text(e), "");
        str = num;
        break;
    case LUA_TBOOLEAN:
        str = lua_toboolean(L, idx) ? "1" : "0";
        len = 1;
        break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)
            return; /* cjson.null: PHP omits null */
        /* fallthrough */
    default:
        fail(e, "cannot form-encode a %s value at %s", luaL_typename(L, idx), prefix_text(e));
        return;
    }
    grow(L, &s->out, &s->out_cap, s->out_len + s->prefix_len + 2);
    if (!e->first)
        s->out[s->out_len++] = '&';
    e->first = 0;
    memcpy(s->out + s->out_len, s->prefix, s->prefix_len);
    s->out_len += s->prefix_len;
    s->out[s->out_len++] = '=';
    url_encode(L, &s->out, &s->out_len, &s->out_cap, str, len);
}

/* [-2, +1] the body of form_encode: the table at 1, the scratch (light userdata) at 2 */
static int encode_protected(lua_State *L)
{
    scratch *s = lua_touserdata(L, 2);
    lua_settop(L, 1);
    encoder e = {L, s, 1};
    encode_table(&e, 1, 0);
    lua_pushlstring(L, s->out ? s->out : "", s->out_len);
    return 1;
}

/* form_encode(t) -> string, as PHP http_build_query(t) */
static int form_encode(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    scratch *s = scratch_acquire(L);
    b24_arena_reset(&s->arena);
    s->out_len = s->prefix_len = 0;
    /* every raise inside (misuse, memory, stack) comes back here, so the scratch is released
     * on every path, as lua-cjson frees its buffer before it raises */
    lua_pushcfunction(L, encode_protected);
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, s);
    int status = lua_pcall(L, 2, 1, 0);
    s->busy = 0;
    b24_arena_reset(&s->arena);
    if (s->out_cap > 64 * 1024) { /* do not pin one huge body's buffer */
        free(s->out);
        s->out = NULL;
        s->out_cap = 0;
    }
    return status == LUA_OK ? 1 : lua_error(L);
}

static const luaL_Reg form_funcs[] = {
    {"form_decode", form_decode},
    {"form_encode", form_encode},
    {NULL, NULL},
};

void b24_form_open(lua_State *L)
{
    if (luaL_newmetatable(L, SCRATCH_MT)) {
        lua_pushcfunction(L, scratch_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "bitrix24.core.FormScratch");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    scratch_push(L);
    luaL_setfuncs(L, form_funcs, 1);
}
