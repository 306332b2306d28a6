/* json_encode: Lua values as JSON text in the scratch's buffer. Tables are arrays (keys exactly
 * 1..n) or objects (string keys, written in bytewise order), numbers by the formatter form_encode
 * shares (b24_json_number.c), strings checked as UTF-8 with only '"', '\\' and control characters
 * escaped; what JSON cannot hold raises with the path to it (a[b][1]). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"

#define TYPE_CDATA 10 /* lua_type of a LuaJIT FFI cdata: int64_t 123LL, uint64_t 123ULL */
#define ENCODE_MAX_DEPTH 64

typedef struct b24_json_entry entry;

/* One string key of a table being written */
struct b24_json_entry {
    const char *str; /* anchored by the table */
    size_t len;
    uint64_t head;            /* the first eight bytes, big-endian: most comparisons end here */
    int key_slot, value_slot; /* stack slots while they fit; 0: look the value up again */
};

/* One step of the path to the value being written, for messages */
typedef struct step {
    const char *key; /* NULL: an array index */
    size_t len;
    lua_Integer index;
} step;

typedef struct encoder {
    lua_State *L;
    b24_json_scratch *s;
    int empty_object, null_index, tostring_index;
    size_t max_depth;
    step *path;
    const void **open; /* the tables on the path: a cycle comes back to one of them */
} encoder;

static char *grow(encoder *e, size_t n)
{
    b24_json_scratch *s = e->s;
    size_t c = s->out_cap ? s->out_cap : 256;
    while (c - s->out_len < n) {
        if (c > SIZE_MAX / 2)
            luaL_error(e->L, "not enough memory to encode JSON");
        c *= 2;
    }
    char *p = realloc(s->out, c);
    if (p == NULL)
        luaL_error(e->L, "not enough memory to encode JSON");
    s->out = p;
    s->out_cap = c;
    return s->out + s->out_len;
}

/* Room for n more bytes of output; where they go */
static inline char *reserve(encoder *e, size_t n)
{
    b24_json_scratch *s = e->s;
    return n <= s->out_cap - s->out_len ? s->out + s->out_len : grow(e, n);
}

static inline void put(encoder *e, const char *text, size_t n)
{
    memcpy(reserve(e, n), text, n);
    e->s->out_len += n;
}

static inline void put_char(encoder *e, char c)
{
    *reserve(e, 1) = c;
    e->s->out_len++;
}

static size_t append(char *buf, size_t n, size_t size, const char *text, size_t len)
{
    if (n + len >= size)
        len = n < size - 1 ? size - 1 - n : 0;
    memcpy(buf + n, text, len);
    return n + len;
}

/* The path to depth as a[b][1] (indexes as Lua counts them); bytes that are not printable
 * UTF-8 as \xNN, long keys cut */
static const char *path_text(const encoder *e, int depth, char *buf, size_t size)
{
    size_t n = 0;
    if (depth == 0)
        return "(top level)";
    for (int d = 0; d < depth; d++) {
        const step *st = &e->path[d];
        char tmp[32];
        if (st->key == NULL) {
            int k = snprintf(tmp, sizeof tmp, "[%lld]", (long long)st->index);
            n = append(buf, n, size, tmp, (size_t)k);
            continue;
        }
        if (d > 0)
            n = append(buf, n, size, "[", 1);
        const unsigned char *p = (const unsigned char *)st->key, *end = p + st->len;
        while (p < end) {
            if (p - (const unsigned char *)st->key >= 40) {
                n = append(buf, n, size, "...", 3);
                break;
            }
            size_t u = *p >= 0x20 && *p != 0x7F ? b24_json_utf8_length(p, end) : 0;
            if (u) {
                n = append(buf, n, size, (const char *)p, u);
                p += u;
            } else {
                int k = snprintf(tmp, sizeof tmp, "\\x%02X", *p++);
                n = append(buf, n, size, tmp, (size_t)k);
            }
        }
        if (d > 0)
            n = append(buf, n, size, "]", 1);
    }
    buf[n] = '\0';
    return buf;
}

/* Raises "cannot JSON-encode <what> at <path>" (json_encode releases the scratch). */
static _Noreturn void fail(encoder *e, int depth, const char *what)
{
    char path[320];
    lua_pushfstring(e->L, "cannot JSON-encode %s at %s", what,
                    path_text(e, depth, path, sizeof path));
    lua_error(e->L);
    abort(); /* lua_error does not return */
}

/* '1': a byte a JSON string cannot hold as it is, or the start of UTF-8 to check */
static const char ESCAPE[257] = "1111111111111111"  /* 0x00 */
                                "1111111111111111"  /* 0x10 */
                                "0010000000000000"  /* 0x20 */
                                "0000000000000000"  /* 0x30 */
                                "0000000000000000"  /* 0x40 */
                                "0000000000001000"  /* 0x50 */
                                "0000000000000000"  /* 0x60 */
                                "0000000000000000"  /* 0x70 */
                                "1111111111111111"  /* 0x80 */
                                "1111111111111111"  /* 0x90 */
                                "1111111111111111"  /* 0xa0 */
                                "1111111111111111"  /* 0xb0 */
                                "1111111111111111"  /* 0xc0 */
                                "1111111111111111"  /* 0xd0 */
                                "1111111111111111"  /* 0xe0 */
                                "1111111111111111"; /* 0xf0 */

static void write_string(encoder *e, const char *str, size_t len, int depth, int is_key)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)str, *end = p + len;
    char *o = reserve(e, len + 2);
    *o++ = '"';
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && ESCAPE[*p] == '0')
            p++;
        memcpy(o, run, (size_t)(p - run));
        o += p - run;
        if (p == end)
            break;
        if (*p >= 0x80) {
            size_t n = *p >= 0xC2 && *p < 0xE0 && p + 1 < end && (p[1] & 0xC0) == 0x80
                           ? 2 /* most non-ASCII text: Cyrillic, Latin accents */
                           : b24_json_utf8_length(p, end);
            if (n == 0) {
                char what[64];
                snprintf(what, sizeof what, "a %s that is not UTF-8 (byte %zu)",
                         is_key ? "key" : "string", (size_t)(p - (const unsigned char *)str) + 1);
                fail(e, depth, what);
            }
            memcpy(o, p, n);
            o += n;
            p += n;
            continue;
        }
        /* an escape: up to five bytes more than the byte it stands for */
        e->s->out_len = (size_t)(o - e->s->out);
        o = reserve(e, (size_t)(end - p) + 7);
        unsigned char c = *p++;
        const char *short_form = c == '"'    ? "\\\""
                                 : c == '\\' ? "\\\\"
                                 : c == '\n' ? "\\n"
                                 : c == '\r' ? "\\r"
                                 : c == '\t' ? "\\t"
                                 : c == '\b' ? "\\b"
                                 : c == '\f' ? "\\f"
                                             : NULL;
        if (short_form) {
            *o++ = short_form[0];
            *o++ = short_form[1];
        } else {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        }
    }
    *o++ = '"';
    e->s->out_len = (size_t)(o - e->s->out);
}

static void encode_value(encoder *e, int idx, int depth);

static int entry_after(const entry *a, const entry *b)
{
    if (a->head != b->head)
        return a->head > b->head;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->str, b->str, n);
    return c ? c > 0 : a->len > b->len;
}

/* Sorts v[0..n) by key bytewise, tmp holding n more: insertion sort in runs of eight, then
 * merges (a table's keys come in hash order; most part at their first eight bytes) */
static void sort_entries(entry *v, entry *tmp, size_t n)
{
    const size_t run = 8;
    for (size_t lo = 0; lo < n; lo += run) {
        size_t hi = lo + run < n ? lo + run : n;
        for (size_t i = lo + 1; i < hi; i++) {
            entry x = v[i];
            size_t j = i;
            for (; j > lo && entry_after(&v[j - 1], &x); j--)
                v[j] = v[j - 1];
            v[j] = x;
        }
    }
    entry *from = v, *to = tmp;
    for (size_t width = run; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n,
                   hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                to[k++] = entry_after(&from[i], &from[j]) ? from[j++] : from[i++];
            while (i < mid)
                to[k++] = from[i++];
            while (j < hi)
                to[k++] = from[j++];
        }
        entry *t = from;
        from = to;
        to = t;
    }
    if (from != v)
        memcpy(v, from, n * sizeof *v);
}

/* Room for n more entries */
static void reserve_entries(encoder *e, size_t n)
{
    b24_json_scratch *s = e->s;
    if (n > s->entries_cap - s->entries_len) {
        size_t cap = s->entries_cap ? s->entries_cap : 64;
        while (cap - s->entries_len < n) {
            if (cap > SIZE_MAX / 2 / sizeof(entry))
                luaL_error(e->L, "not enough memory to encode JSON");
            cap *= 2;
        }
        entry *v = realloc(s->entries, cap * sizeof *v);
        if (v == NULL)
            luaL_error(e->L, "not enough memory to encode JSON");
        s->entries = v;
        s->entries_cap = cap;
    }
}

static entry *new_entry(encoder *e)
{
    reserve_entries(e, 1);
    return &e->s->entries[e->s->entries_len++];
}

/* Writes the table at idx: keys exactly 1..n as an array, string keys as an object in
 * bytewise key order (one table, one text), nothing else. Keys and values stay on the stack
 * while it may grow (LuaJIT caps a C function near 8000 slots); past that a value is looked
 * up again by its key. */
static void encode_table(encoder *e, int idx, int depth)
{
    lua_State *L = e->L;
    b24_json_scratch *s = e->s;
    char what[80];
    if ((size_t)depth >= e->max_depth) {
        snprintf(what, sizeof what, "tables nested deeper than %zu levels", e->max_depth);
        fail(e, depth, what);
    }
    const void *self = lua_topointer(L, idx);
    for (int d = 0; d < depth; d++)
        if (e->open[d] == self)
            fail(e, depth, "a table that contains itself");
    e->open[depth] = self;
    luaL_checkstack(L, 6, "JSON nested too deep");
    int top = lua_gettop(L), slot = top, room = 0, out_of_range = 0;
    size_t n = lua_rawlen(L, idx), ints = 0, strings = 0, base = s->entries_len;
    lua_pushnil(L);
    while (lua_next(L, idx)) { /* [key value] */
        int kt = lua_type(L, -2);
        if (kt == LUA_TNUMBER && lua_isinteger(L, -2)) {
            lua_Integer k = lua_tointeger(L, -2);
            if (k >= 1 && (size_t)k <= n)
                ints++;
            else
                out_of_range = 1;
            lua_pop(L, 1);
            continue;
        }
        if (kt != LUA_TSTRING) {
            snprintf(what, sizeof what, "a %s key", lua_typename(L, kt));
            fail(e, depth, kt == LUA_TNUMBER ? "a number key that is not an integer" : what);
        }
        entry *en = new_entry(e);
        en->str = lua_tolstring(L, -2, &en->len);
        unsigned char first[8] = {0};
        memcpy(first, en->str, en->len < 8 ? en->len : 8);
        en->head = (uint64_t)first[0] << 56 | (uint64_t)first[1] << 48 | (uint64_t)first[2] << 40 |
                   (uint64_t)first[3] << 32 | (uint64_t)first[4] << 24 | (uint64_t)first[5] << 16 |
                   (uint64_t)first[6] << 8 | first[7];
        strings++;
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
    if (strings && (ints || out_of_range))
        fail(e, depth, "a table with both string and integer keys");
    if (!strings && (out_of_range || ints != n))
        fail(e, depth, "a sparse array (integer keys that are not 1..n)");
    if (!strings && n == 0) {
        put(e, e->empty_object ? "{}" : "[]", 2);
    } else if (!strings) {
        put_char(e, '[');
        for (size_t i = 1; i <= n; i++) {
            if (i > 1)
                put_char(e, ',');
            e->path[depth].key = NULL;
            e->path[depth].index = (lua_Integer)i;
            lua_rawgeti(L, idx, B24_JSON_INDEX(i));
            encode_value(e, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        put_char(e, ']');
    } else {
        if (strings > 1) {
            reserve_entries(e, strings);
            sort_entries(s->entries + base, s->entries + base + strings, strings);
        }
        put_char(e, '{');
        for (size_t k = 0; k < strings; k++) {
            entry en = s->entries[base + k]; /* a copy: deeper tables may move the array */
            if (k)
                put_char(e, ',');
            e->path[depth].key = en.str;
            e->path[depth].len = en.len;
            write_string(e, en.str, en.len, depth + 1, 1);
            put_char(e, ':');
            if (en.value_slot) {
                encode_value(e, en.value_slot, depth + 1);
            } else {
                lua_pushlstring(L, en.str, en.len);
                lua_rawget(L, idx);
                encode_value(e, lua_gettop(L), depth + 1);
                lua_pop(L, 1);
            }
        }
        put_char(e, '}');
    }
    s->entries_len = base;
    lua_settop(L, top);
}

/* A LuaJIT int64_t or uint64_t cdata by its own text ("-5LL", "18446744073709551615ULL") */
static void encode_cdata(encoder *e, int idx, int depth)
{
    lua_State *L = e->L;
    size_t len = 0;
    const char *t = NULL;
    if (lua_isfunction(L, e->tostring_index)) {
        lua_pushvalue(L, e->tostring_index);
        lua_pushvalue(L, idx);
        lua_call(L, 1, 1);
        t = lua_tolstring(L, -1, &len);
    }
    size_t digits = t && len && t[0] == '-' ? 1 : 0, end = digits;
    while (t && end < len && t[end] >= '0' && t[end] <= '9')
        end++;
    if (t == NULL || end == digits ||
        !((len - end == 2 && memcmp(t + end, "LL", 2) == 0) ||
          (len - end == 3 && memcmp(t + end, "ULL", 3) == 0)))
        fail(e, depth, "a cdata value (only int64_t and uint64_t numbers)");
    put(e, t, end);
    lua_pop(L, 1);
}

static void encode_value(encoder *e, int idx, int depth)
{
    lua_State *L = e->L;
    char num[32];
    size_t len;
    if (e->null_index && lua_rawequal(L, idx, e->null_index)) {
        put(e, "null", 4);
        return;
    }
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        put(e, "null", 4);
        return;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            put(e, "true", 4);
        else
            put(e, "false", 5);
        return;
    case LUA_TNUMBER: {
        double d = (double)lua_tonumber(L, idx);
        if (d == 0 && signbit(d)) { /* -0.0: form_encode's "0" would read back as the integer 0 */
            put(e, "-0.0", 4);
            return;
        }
        len = b24_json_format_number(L, idx, num);
        if (len == 0)
            fail(e, depth, "a NaN or infinite number");
        put(e, num, len);
        return;
    }
    case LUA_TSTRING: {
        const char *str = lua_tolstring(L, idx, &len);
        write_string(e, str, len, depth, 0);
        return;
    }
    case LUA_TTABLE:
        encode_table(e, idx, depth);
        return;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) { /* json_null, cjson.null */
            put(e, "null", 4);
            return;
        }
        break;
    case TYPE_CDATA:
        encode_cdata(e, idx, depth);
        return;
    default:
        break;
    }
    char what[64];
    snprintf(what, sizeof what, "a %s value", luaL_typename(L, idx));
    fail(e, depth, what);
}

/* [-4, +1] the body of json_encode: the value at 1, the encoder (light userdata) at 2, the
 * null value at 3, tostring at 4 */
static int encode_protected(lua_State *L)
{
    encoder *e = lua_touserdata(L, 2);
    e->L = L;
    e->null_index = lua_isnil(L, 3) ? 0 : 3;
    e->tostring_index = 4;
    e->path = b24_arena_alloc(&e->s->arena, sizeof(step) * (e->max_depth + 1));
    e->open = b24_arena_alloc(&e->s->arena, sizeof(void *) * (e->max_depth + 1));
    if (e->path == NULL || e->open == NULL)
        return luaL_error(L, "not enough memory to encode JSON");
    encode_value(e, 1, 0);
    lua_pushlstring(L, e->s->out, e->s->out_len);
    return 1;
}

/* json_encode(value [, opts]) -> string; raises on what JSON cannot hold */
int b24_json_encode(lua_State *L)
{
    encoder e;
    memset(&e, 0, sizeof e);
    e.max_depth = ENCODE_MAX_DEPTH;
    luaL_checkany(L, 1);
    lua_settop(L, 2);
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "empty");
        const char *empty = lua_tostring(L, -1);
        if (empty && strcmp(empty, "object") == 0)
            e.empty_object = 1;
        else if (!lua_isnil(L, -1) && !(empty && strcmp(empty, "array") == 0))
            luaL_error(L, "bad option 'empty' (\"array\" or \"object\" expected)");
        lua_pop(L, 1);
        e.max_depth = b24_json_limit(L, 2, "max_depth", e.max_depth, B24_FORM_DEPTH_CAP);
        lua_getfield(L, 2, "null"); /* 3 */
    } else {
        lua_pushnil(L);
    }
    lua_pushvalue(L, lua_upvalueindex(2)); /* 4: tostring */
    e.s = b24_json_scratch_acquire(L);
    b24_arena_reset(&e.s->arena);
    e.s->out_len = e.s->entries_len = 0;
    /* every raise inside (misuse, memory, stack) comes back here, so the scratch is released
     * on every path, as lua-cjson frees its buffer before it raises */
    lua_pushcfunction(L, encode_protected);
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, &e);
    lua_pushvalue(L, 3);
    lua_pushvalue(L, 4);
    int status = lua_pcall(L, 4, 1, 0);
    b24_json_scratch_release(e.s);
    return status == LUA_OK ? 1 : lua_error(L);
}
