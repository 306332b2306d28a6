/* json_decode / json_encode: RFC 8259 for Lua values with every digit of a number kept.
 *
 * json_decode(s [, opts]) -> value | nil, message, kind
 *   Strict: UTF-8 checked, \u escapes with surrogate pairs (a lone surrogate is refused), no
 *   trailing data, no BOM; kind "malformed" with "malformed JSON at byte N: why" (N 1-based). The
 *   form codec's limits, checked by a scan before anything is built: opts.max_depth (64; 1..1000),
 *   opts.max_pairs (10,000 members and elements), opts.max_size (1 MiB) -> "too_deep",
 *   "too_many", "too_large". opts.max_memory (16 * #s + 64 KiB): the Lua memory the value may
 *   take, held while it is built -> "too_large"; "memory" when malloc fails. Integers that fit
 *   in int64 are Lua 5.4 integers ("-0" too: 0), other numbers doubles (correctly rounded); on
 *   LuaJIT every number is a double. A number beyond the doubles is "malformed". null is
 *   opts.null (default json_null, the light userdata NULL: cjson.null); arrays are sequences,
 *   objects tables of string keys (the last of repeated keys wins; {} and [] both {}).
 *   opts.form: the table form_decode(form_encode(value)) gives for the decoded value (PHP reading
 *   the same data posted as a form): scalars as strings (true "1", false "0", numbers as
 *   form_encode writes them, except that integers keep every digit on LuaJIT too), null and
 *   empty containers omitted, keys 0..n-1 (in form_encode's sorted order) making sequences, and
 *   keys holding '[', ']' or NUL read as parse_str reads them (through the form parser itself,
 *   "too_large" past 2 * #s + 4 KiB of form body). The pairs are then the values that are not
 *   null (a repeated key counted each time), the depth is counted in brackets, so 65
 *   containers (holding values or not), and the top level must be an object or an array.
 *
 * json_encode(value [, opts]) -> string; raises "cannot JSON-encode <what> at a[b][1]" (Lua
 *   indexes) for NaN and infinities, functions, userdata, threads, keys other than strings or
 *   1..n, tables mixing both, sparse arrays, cycles, nesting past opts.max_depth (64) and
 *   strings or keys that are not UTF-8. Keys exactly 1..n: an array; string keys: an object,
 *   keys in bytewise order (one table, one text); an empty table [] ({} with opts.empty =
 *   "object"). Lua 5.4 integers exactly; floats integral and below 2^63 as integers (13430.0 ->
 *   13430, as form_encode and the REST API take them), -0.0 as -0.0 (it reads back), others as
 *   the shortest of 15, 16 or 17 significant digits that reads back the same (0.1,
 *   123456789012345.67, 1e+300). LuaJIT int64_t and uint64_t cdata by their own digits.
 *   json_null, cjson.null and opts.null as null. Only '"', '\\' and control characters are
 *   escaped (no "\/"). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"

#define SCRATCH_MT "bitrix24.core.JsonScratch"
#define TYPE_CDATA 10 /* lua_type of a LuaJIT FFI cdata: int64_t 123LL, uint64_t 123ULL */
#define ENCODE_MAX_DEPTH 64
#define KEEP_BYTES (64 * 1024) /* buffers above this are freed after a call */

#ifndef LUA_GCISRUNNING
#define LUA_GCISRUNNING 9 /* LuaJIT 2.1 answers it; Lua 5.1 answers -1 (unknown) */
#endif

#if LUA_VERSION_NUM >= 503
#define SEQ_INDEX(i) ((lua_Integer)(i))
#else
#define SEQ_INDEX(i) ((int)(i))
#endif

typedef struct entry entry;

/* Per-state working memory, reused between calls so a small body costs no malloc. */
typedef struct scratch {
    b24_arena arena;
    char *out; /* the encoder's output */
    size_t out_len, out_cap;
    entry *entries; /* the encoder's object keys: one segment per table being written */
    size_t entries_len, entries_cap;
    void *records; /* the decoder's scan records (b24_json_doc) */
    size_t records_size;
    int busy; /* a finalizer may call us while a call is under way */
} scratch;

static int scratch_gc(lua_State *L)
{
    scratch *s = luaL_checkudata(L, 1, SCRATCH_MT);
    b24_arena_free(&s->arena);
    free(s->out);
    free(s->entries);
    free(s->records);
    s->out = NULL;
    s->entries = NULL;
    s->records = NULL;
    s->out_cap = s->entries_cap = s->records_size = 0;
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

/* Ends a call: the arena back to one small chunk, no huge buffer kept. */
static void scratch_release(scratch *s)
{
    s->busy = 0;
    b24_arena_reset(&s->arena);
    s->out_len = s->entries_len = 0;
    if (s->out_cap > KEEP_BYTES) {
        free(s->out);
        s->out = NULL;
        s->out_cap = 0;
    }
    if (s->entries_cap > KEEP_BYTES / 32) {
        free(s->entries);
        s->entries = NULL;
        s->entries_cap = 0;
    }
    if (s->records_size > KEEP_BYTES) {
        free(s->records);
        s->records = NULL;
        s->records_size = 0;
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

/* ---- decode ------------------------------------------------------------------------------ */

/* A table being filled in form mode */
typedef struct level {
    int is_array, list; /* list: a sequence so far (arrays) or keys "0", "1", … so far (objects) */
    lua_Integer values;
    const char *key; /* the key of the value under way */
    size_t key_len;
    int64_t index;
} level;

typedef struct builder {
    lua_State *L;
    const b24_json_doc *doc;
    b24_arena *arena;
    uint32_t record; /* the next container record */
    char *buf;       /* strings with escapes decode here */
    level *levels;
    size_t depth;
    b24_form_array *tree; /* form mode through the form parser */
    size_t budget, heap;  /* the Lua memory the value may take; the heap when it began */
    unsigned values;      /* values built: the heap is looked at every 64 */
    int watch;            /* whether the budget could be reached at all */
    int over_budget;
} builder;

#define NULL_INDEX 2 /* where decode_protected finds the null value */

static const char *ws(const char *p)
{
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
        p++;
    return p;
}

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
static void count_value(builder *b)
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
static const char *build_value(builder *b, const char *p)
{
    lua_State *L = b->L;
    size_t len;
    const char *s;
    count_value(b);
    switch (*p) {
    case '{':
        luaL_checkstack(L, 3, "JSON nested too deep");
        lua_createtable(L, 0, table_size(b->doc->counts[b->record++]));
        p = ws(p + 1);
        if (*p == '}')
            return p + 1;
        for (;;) {
            s = b24_json_string(p, &p, b->buf, &len);
            lua_pushlstring(L, s, len);
            p = ws(build_value(b, ws(ws(p) + 1)));
            lua_rawset(L, -3);
            if (*p == '}')
                return p + 1;
            p = ws(p + 1);
        }
    case '[':
        luaL_checkstack(L, 3, "JSON nested too deep");
        lua_createtable(L, table_size(b->doc->counts[b->record++]), 0);
        p = ws(p + 1);
        if (*p == ']')
            return p + 1;
        for (size_t i = 1;; i++) {
            p = ws(build_value(b, p));
            lua_rawseti(L, -2, SEQ_INDEX(i));
            if (*p == ']')
                return p + 1;
            p = ws(p + 1);
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

static void push_index_key(lua_State *L, int64_t i)
{
    char num[24];
    lua_pushlstring(L, num, b24_json_format_integer(i, num));
}

/* [-0, +0] the sequence at -2 (n values; a value waits at -1) becomes a map of "0".."n-1" */
static void sequence_to_map(lua_State *L, lua_Integer n)
{
    lua_createtable(L, 0, n < INT_MAX ? (int)n + 1 : INT_MAX);
    for (lua_Integer i = 1; i <= n; i++) {
        push_index_key(L, i - 1);
        lua_rawgeti(L, -4, SEQ_INDEX(i));
        lua_rawset(L, -3);
    }
    lua_replace(L, -3);
}

/* [-0, +0] the map of "0".."n-1" on the top becomes a sequence, as form_decode makes it */
static void map_to_sequence(lua_State *L, lua_Integer n)
{
    lua_createtable(L, n < INT_MAX ? (int)n : INT_MAX, 0);
    for (lua_Integer i = 0; i < n; i++) {
        push_index_key(L, i);
        lua_rawget(L, -3);
        lua_rawseti(L, -2, SEQ_INDEX(i + 1));
    }
    lua_replace(L, -2);
}

/* key is the canonical decimal text of i, as PHP's integer keys are */
static int is_index(const char *key, size_t len, lua_Integer i)
{
    char num[24];
    return len == b24_json_format_integer(i, num) && memcmp(key, num, len) == 0;
}

/* [-1, +0, m] the value on the top into the table below it, under the key pending at l */
static void attach(builder *b, level *l)
{
    lua_State *L = b->L;
    if (l->is_array) {
        if (l->list && l->index == l->values) {
            lua_rawseti(L, -2, SEQ_INDEX(l->index + 1));
            l->values++;
            return;
        }
        if (l->list) { /* a hole before this value: keys "0", "2", … as form_decode gives */
            sequence_to_map(L, l->values);
            l->list = 0;
        }
        push_index_key(L, l->index);
    } else {
        if (l->list && !is_index(l->key, l->key_len, l->values))
            l->list = 0;
        lua_pushlstring(L, l->key, l->key_len);
    }
    lua_insert(L, -2);
    lua_rawset(L, -3);
    l->values++;
}

static int form_open(void *ctx, int is_array, size_t count)
{
    builder *b = ctx;
    count_value(b);
    luaL_checkstack(b->L, 6, "JSON nested too deep");
    int n = count > INT_MAX ? INT_MAX : (int)count;
    lua_createtable(b->L, is_array ? n : 0, is_array ? 0 : n);
    level *l = &b->levels[b->depth++];
    l->is_array = is_array;
    l->list = 1;
    l->values = 0;
    return 0;
}

static int form_key(void *ctx, const char *key, size_t len, int64_t index)
{
    builder *b = ctx;
    level *l = &b->levels[b->depth - 1];
    l->key = key;
    l->key_len = len;
    l->index = index;
    return 0;
}

static int form_scalar(void *ctx, const char *text, size_t len)
{
    builder *b = ctx;
    count_value(b);
    lua_pushlstring(b->L, text, len);
    attach(b, &b->levels[b->depth - 1]);
    return 0;
}

static int form_close(void *ctx)
{
    builder *b = ctx;
    level *l = &b->levels[--b->depth];
    if (l->values == 0 && b->depth > 0) { /* became empty (a duplicate key): PHP omits it */
        lua_pop(b->L, 1);
        return 0;
    }
    if (!l->is_array && l->list && l->values > 0)
        map_to_sequence(b->L, l->values);
    if (b->depth > 0)
        attach(b, &b->levels[b->depth - 1]);
    return 0;
}

/* [-0, +1, m] a form parse tree as form_decode pushes it */
static void push_form_tree(builder *b, const b24_form_array *arr)
{
    lua_State *L = b->L;
    count_value(b);
    luaL_checkstack(L, 4, "form nested too deep");
    lua_createtable(L, arr->is_list ? (int)arr->count : 0, arr->is_list ? 0 : (int)arr->count);
    for (uint32_t i = 0; i < arr->count; i++) {
        const b24_form_entry *e = &arr->entries[i];
        if (!arr->is_list) {
            if (e->key)
                lua_pushlstring(L, e->key, e->key_len);
            else
                push_index_key(L, e->ikey);
        }
        if (e->value.arr) {
            push_form_tree(b, e->value.arr);
        } else {
            count_value(b);
            lua_pushlstring(L, e->value.str, e->value.len);
        }
        if (arr->is_list)
            lua_rawseti(L, -2, SEQ_INDEX(i + 1));
        else
            lua_rawset(L, -3);
    }
}

/* [-2, +1] the builder (light userdata) at 1, the null value at 2: the decoded value */
static int decode_protected(lua_State *L)
{
    static const b24_json_form_sink sink = {form_open, form_key, form_scalar, form_close};
    builder *b = lua_touserdata(L, 1);
    b->L = L;
    b->heap = heap_bytes(L);
    if (b->tree)
        push_form_tree(b, b->tree);
    else if (!b->doc->form)
        build_value(b, ws(b->doc->text));
    else if (b24_json_form_walk(b->doc, b->arena, &sink, b) != B24_JSON_OK)
        return luaL_error(L, "not enough memory to decode the JSON body");
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

static b24_json_status from_form_status(b24_form_status st)
{
    switch (st) {
    case B24_FORM_OK:
        return B24_JSON_OK;
    case B24_FORM_TOO_LARGE:
        return B24_JSON_TOO_LARGE;
    case B24_FORM_TOO_MANY:
        return B24_JSON_TOO_MANY;
    case B24_FORM_TOO_DEEP:
        return B24_JSON_TOO_DEEP;
    default:
        return B24_JSON_NO_MEMORY;
    }
}

/* json_decode(s [, opts]) -> value | nil, message, kind */
static int json_decode(lua_State *L)
{
    size_t len, form_budget = 0;
    const char *s = luaL_checklstring(L, 1, &len);
    b24_json_limits lim = {B24_FORM_MAX_DEPTH, B24_FORM_MAX_PAIRS, B24_FORM_MAX_SIZE};
    int form = 0;
    builder b;
    memset(&b, 0, sizeof b);
    b.budget = len <= (SIZE_MAX - 65536) / 16 ? 16 * len + 65536 : SIZE_MAX;
    lua_settop(L, 2);
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lim.max_depth = limit_field(L, 2, "max_depth", lim.max_depth, B24_FORM_DEPTH_CAP);
        lim.max_pairs = limit_field(L, 2, "max_pairs", lim.max_pairs, 0);
        lim.max_size = limit_field(L, 2, "max_size", lim.max_size, 0);
        b.budget = limit_field(L, 2, "max_memory", b.budget, 0);
        lua_getfield(L, 2, "form");
        form = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, 2, "null"); /* 3 */
    } else {
        lua_pushnil(L);
    }
    if (lua_isnil(L, 3)) {
        lua_pop(L, 1);
        lua_pushlightuserdata(L, NULL); /* json_null, cjson.null */
    }
    scratch *sc = scratch_acquire(L);
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
        b.levels = b24_arena_alloc(&sc->arena, sizeof(level) * (doc.depth + 1));
        if (b.buf == NULL || b.levels == NULL)
            st = B24_JSON_NO_MEMORY;
    }
    if (st == B24_JSON_OK && form && doc.unclean_keys) {
        /* keys that parse_str reads as brackets: re-read the form body itself, bounded so that
         * a prefix repeated for every value cannot blow up */
        char *body;
        size_t body_len;
        form_budget = 2 * len + 4096;
        st = b24_json_form_body(&doc, &sc->arena, form_budget, &body, &body_len);
        if (st == B24_JSON_OK) {
            b24_form_limits fl = {lim.max_depth, lim.max_pairs, form_budget};
            st = from_form_status(b24_form_parse(body, body_len, &fl, &sc->arena, &b.tree));
        }
    }
    if (st == B24_JSON_OK) {
        /* building the value may raise (memory, stack): under pcall, so the scratch is released
         * on every path */
        lua_pushcfunction(L, decode_protected);
        lua_pushlightuserdata(L, &b);
        lua_pushvalue(L, 3);
        /* no body takes more than about 25 bytes of Lua memory per byte of JSON ("[[],[],…]"):
         * below that the budget cannot be reached, and the collector's pacing is left alone */
        b.watch = b.budget / 32 < len;
        int collecting = b.watch && lua_gc(L, LUA_GCISRUNNING, 0) == 1;
        if (collecting)
            lua_gc(L, LUA_GCSTOP, 0);
        int status = lua_pcall(L, 2, 1, 0);
        if (collecting)
            lua_gc(L, LUA_GCRESTART, 0);
        scratch_release(sc);
        if (status == LUA_OK)
            return 1;
        if (!b.over_budget)
            return lua_error(L);
        lua_pop(L, 1);
        return push_refusal(L, B24_JSON_TOO_LARGE, &doc, &lim, len, 0, b.budget);
    }
    scratch_release(sc);
    return push_refusal(L, st, &doc, &lim, len, form_budget, 0);
}

/* ---- encode ------------------------------------------------------------------------------ */

/* One string key of a table being written */
struct entry {
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
    scratch *s;
    int empty_object, null_index, tostring_index;
    size_t max_depth;
    step *path;
    const void **open; /* the tables on the path: a cycle comes back to one of them */
} encoder;

static char *grow(encoder *e, size_t n)
{
    scratch *s = e->s;
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
    scratch *s = e->s;
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
    scratch *s = e->s;
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
    scratch *s = e->s;
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
            lua_rawgeti(L, idx, SEQ_INDEX(i));
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
#if LUA_VERSION_NUM >= 503
        if (lua_isinteger(L, idx)) {
            put(e, num, b24_json_format_integer((int64_t)lua_tointeger(L, idx), num));
            return;
        }
#endif
        double d = (double)lua_tonumber(L, idx);
        if (!isfinite(d))
            fail(e, depth, "a NaN or infinite number");
        if (d == 0 && signbit(d))
            put(e, "-0.0", 4); /* "-0" would read back as the integer 0 */
        else
            put(e, num, b24_json_format_double(d, num));
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
static int json_encode(lua_State *L)
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
        e.max_depth = limit_field(L, 2, "max_depth", e.max_depth, B24_FORM_DEPTH_CAP);
        lua_getfield(L, 2, "null"); /* 3 */
    } else {
        lua_pushnil(L);
    }
    lua_pushvalue(L, lua_upvalueindex(2)); /* 4: tostring */
    e.s = scratch_acquire(L);
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
    scratch_release(e.s);
    return status == LUA_OK ? 1 : lua_error(L);
}

static const luaL_Reg json_funcs[] = {
    {"json_decode", json_decode},
    {"json_encode", json_encode},
    {NULL, NULL},
};

void b24_json_open(lua_State *L)
{
    if (luaL_newmetatable(L, SCRATCH_MT)) {
        lua_pushcfunction(L, scratch_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, SCRATCH_MT);
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    scratch_push(L);
    lua_getglobal(L, "tostring"); /* LuaJIT's int64_t numbers are written from their text */
    luaL_setfuncs(L, json_funcs, 2);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "json_null");
}
