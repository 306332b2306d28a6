/* form_decode / form_encode: PHP parse_str and http_build_query for Lua values. */
#include <math.h>
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

/* [-0, +1, m] pushes arr as a Lua table: a sequence when PHP would write a JSON list. */
static void push_array(lua_State *L, const b24_form_array *arr)
{
    luaL_checkstack(L, 4, "form nested too deep");
    if (arr->is_list) {
        lua_createtable(L, (int)arr->count, 0);
        for (uint32_t i = 0; i < arr->count; i++) {
            const b24_form_value *v = &arr->entries[i].value;
            if (v->arr)
                push_array(L, v->arr);
            else
                lua_pushlstring(L, v->str, v->len);
            lua_rawseti(L, -2, (int)i + 1);
        }
        return;
    }
    lua_createtable(L, 0, (int)arr->count);
    for (uint32_t i = 0; i < arr->count; i++) {
        const b24_form_entry *e = &arr->entries[i];
        if (e->key) {
            lua_pushlstring(L, e->key, e->key_len);
        } else {
            char num[24];
            int n = snprintf(num, sizeof num, "%lld", (long long)e->ikey);
            lua_pushlstring(L, num, (size_t)n);
        }
        if (e->value.arr)
            push_array(L, e->value.arr);
        else
            lua_pushlstring(L, e->value.str, e->value.len);
        lua_rawset(L, -3);
    }
}

static size_t limit_field(lua_State *L, int t, const char *name, size_t def, size_t cap)
{
    lua_getfield(L, t, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
        (cap && (size_t)lua_tointeger(L, -1) > cap))
        luaL_error(L, "bad limit '%s' (a whole number from 1%s expected)", name,
                   cap ? " to 1000" : "");
    size_t v = (size_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return v;
}

/* form_decode(s [, limits]) -> table | nil, message, kind */
static int form_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    b24_form_limits lim = {B24_FORM_MAX_DEPTH, B24_FORM_MAX_PAIRS, B24_FORM_MAX_SIZE};
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lim.max_depth = limit_field(L, 2, "max_depth", lim.max_depth, B24_FORM_DEPTH_CAP);
        lim.max_pairs = limit_field(L, 2, "max_pairs", lim.max_pairs, 0);
        lim.max_size = limit_field(L, 2, "max_size", lim.max_size, 0);
    }
    scratch *sc = scratch_acquire(L);
    b24_arena_reset(&sc->arena);
    b24_form_array *root = NULL;
    b24_form_status st = b24_form_parse(s, len, &lim, &sc->arena, &root);
    if (st == B24_FORM_OK) {
        push_array(L, root);
        sc->busy = 0;
        b24_arena_reset(&sc->arena);
        return 1;
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

/* php_url_encode (RFC 1738): alphanumerics and "-._" stay, space is '+', the rest %XX. */
static const char HEX[] = "0123456789ABCDEF";
static const unsigned char KEEP[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

static void url_encode(lua_State *L, char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    grow(L, buf, cap, *len + n * 3);
    char *o = *buf + *len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (KEEP[c]) {
            *o++ = (char)c;
        } else if (c == ' ') {
            *o++ = '+';
        } else {
            *o++ = '%';
            *o++ = HEX[c >> 4];
            *o++ = HEX[c & 15];
        }
    }
    *len = (size_t)(o - *buf);
}

/* Writes the number at idx as PHP would print it (integral floats without ".0") and
 * without losing precision (the shortest of %.15g..%.17g that reads back the same). */
static size_t format_number(lua_State *L, int idx, char *out, size_t size)
{
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx))
        return (size_t)snprintf(out, size, "%lld", (long long)lua_tointeger(L, idx));
#endif
    double d = (double)lua_tonumber(L, idx);
    if (!isfinite(d))
        return 0; /* the caller raises: no number prints as nothing */
    if (d == floor(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0)
        return (size_t)snprintf(out, size, "%lld", (long long)d);
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(out, size, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            break;
    }
    return (size_t)n;
}

typedef struct encoder {
    lua_State *L;
    scratch *s;
    int first;
} encoder;

/* Raises a misuse error; the scratch is released first so later calls keep reusing it. */
static void fail(encoder *e, const char *fmt, const char *a, const char *b)
{
    lua_pushfstring(e->L, fmt, a, b);
    e->s->busy = 0;
    lua_error(e->L);
}

static void encode_value(encoder *e, int idx, int depth);
static const char *prefix_text(encoder *e);

/* Appends "%5B" key "%5D" (or the bare key at the top level) to the prefix. */
static void push_key(encoder *e, int kidx, int depth, lua_Integer seq_index)
{
    scratch *s = e->s;
    char num[40];
    const char *k;
    size_t klen;
    if (seq_index >= 0) {
        klen = (size_t)snprintf(num, sizeof num, "%lld", (long long)seq_index);
        k = num;
    } else if (lua_type(e->L, kidx) == LUA_TNUMBER) {
        klen = format_number(e->L, kidx, num, sizeof num);
        if (klen == 0)
            fail(e, "cannot form-encode a NaN or infinite key in %s%s", prefix_text(e), "");
        k = num;
    } else {
        k = lua_tolstring(e->L, kidx, &klen);
    }
    if (depth > 0) {
        grow(e->L, &s->prefix, &s->prefix_cap, s->prefix_len + 3);
        memcpy(s->prefix + s->prefix_len, "%5B", 3);
        s->prefix_len += 3;
    }
    url_encode(e->L, &s->prefix, &s->prefix_len, &s->prefix_cap, k, klen);
    if (depth > 0) {
        grow(e->L, &s->prefix, &s->prefix_cap, s->prefix_len + 3);
        memcpy(s->prefix + s->prefix_len, "%5D", 3);
        s->prefix_len += 3;
    }
}

typedef struct sort_key {
    int is_num;
    lua_Number num;
    const char *str;
    size_t len;
} sort_key;

static int compare_keys(const void *pa, const void *pb)
{
    const sort_key *a = pa, *b = pb;
    if (a->is_num != b->is_num)
        return a->is_num ? -1 : 1;
    if (a->is_num)
        return (a->num > b->num) - (a->num < b->num);
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->str, b->str, n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

static const char *prefix_text(encoder *e)
{
    scratch *s = e->s;
    grow(e->L, &s->prefix, &s->prefix_cap, s->prefix_len + 1);
    s->prefix[s->prefix_len] = '\0';
    return s->prefix_len ? s->prefix : "(top level)";
}

/* Encodes the table at idx: a sequence as k[0], k[1], …; any other table by its keys in a
 * stable order (numbers first, then strings bytewise) so one table always gives one body. */
static void encode_table(encoder *e, int idx, int depth)
{
    lua_State *L = e->L;
    if (depth >= ENCODE_MAX_DEPTH)
        fail(e, "cannot form-encode: tables nest deeper than 100 levels (a cycle?)%s%s", "", "");
    luaL_checkstack(L, 4, "form nested too deep");
    size_t n = lua_rawlen(L, idx), count = 0, non_seq = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
        int kt = lua_type(L, -1);
        if (kt != LUA_TNUMBER && kt != LUA_TSTRING)
            fail(e, "cannot form-encode a %s key in %s", lua_typename(L, kt), prefix_text(e));
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || (size_t)lua_tointeger(L, -1) > n)
            non_seq++;
    }
    size_t base = e->s->prefix_len;
    if (non_seq == 0 && count == n) {
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, (int)i);
            push_key(e, 0, depth, (lua_Integer)(i - 1));
            encode_value(e, lua_gettop(L), depth + 1);
            e->s->prefix_len = base;
            lua_pop(L, 1);
        }
        return;
    }
    sort_key *keys = b24_arena_alloc(&e->s->arena, sizeof(*keys) * (count ? count : 1));
    if (keys == NULL)
        luaL_error(L, "not enough memory to encode the form");
    size_t k = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        sort_key *sk = &keys[k++];
        sk->is_num = lua_type(L, -1) == LUA_TNUMBER;
        if (sk->is_num)
            sk->num = lua_tonumber(L, -1);
        else
            sk->str = lua_tolstring(L, -1, &sk->len); /* anchored by the table */
    }
    qsort(keys, count, sizeof(*keys), compare_keys);
    for (size_t i = 0; i < count; i++) {
        if (keys[i].is_num)
            lua_pushnumber(L, keys[i].num);
        else
            lua_pushlstring(L, keys[i].str, keys[i].len);
#if LUA_VERSION_NUM >= 503
        if (keys[i].is_num && keys[i].num == floor(keys[i].num) &&
            keys[i].num >= -9223372036854775808.0 && keys[i].num < 9223372036854775808.0) {
            lua_pop(L, 1);
            lua_pushinteger(L, (lua_Integer)keys[i].num);
        }
#endif
        lua_pushvalue(L, -1);
        lua_rawget(L, idx);
        push_key(e, lua_gettop(L) - 1, depth, -1);
        encode_value(e, lua_gettop(L), depth + 1);
        e->s->prefix_len = base;
        lua_pop(L, 2);
    }
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
        len = format_number(L, idx, num, sizeof num);
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

/* form_encode(t) -> string, as PHP http_build_query(t) */
static int form_encode(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    scratch *s = scratch_acquire(L);
    b24_arena_reset(&s->arena);
    s->out_len = s->prefix_len = 0;
    encoder e = {L, s, 1};
    encode_table(&e, 1, 0);
    lua_pushlstring(L, s->out ? s->out : "", s->out_len);
    s->busy = 0;
    b24_arena_reset(&s->arena);
    if (s->out_cap > 64 * 1024) { /* do not pin one huge body's buffer */
        free(s->out);
        s->out = NULL;
        s->out_cap = 0;
    }
    return 1;
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
