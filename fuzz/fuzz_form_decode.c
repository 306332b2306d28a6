/* libFuzzer target for the form codec (PHP parse_str / http_build_query).
 *
 * (a) b24_form_parse straight on the input, under small and under default limits: the tree
 *     must satisfy its structural invariants (lists, capacities, hash buckets, PHP integer
 *     keys, next free index, depth) and point only into the arena's decoded copy of the input;
 *     a parse that succeeds under the small limits must give the same tree under the defaults.
 * (b) the Lua path through one long-lived lua_State: form_decode must agree with the C tree,
 *     form_encode of its result must not raise, and decoding that body again must give the
 *     same PHP array (list index i standing for key "i-1"); one more encode/decode is a fixed
 *     point. The stack stays balanced; a full GC every GC_EVERY inputs keeps the Lua heap
 *     bounded, so a leak of Lua references or malloc'd memory shows up. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "b24.h"
#include "fuzz.h"
#include "fuzz_lua.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int luaopen_bitrix24_core(lua_State *L);

/* Mirrors the private chunk header of csrc/b24_arena.c, so pointers can be checked against the
 * arena's memory; the sum of the sizes is checked against arena.total to catch layout drift. */
struct b24_arena_chunk {
    b24_arena_chunk *next;
    size_t size, used;
    max_align_t data[];
};

static const b24_form_limits SMALL = {3, 8, 512, NULL, 0};
static const b24_form_limits DEFAULTS = {B24_FORM_MAX_DEPTH, B24_FORM_MAX_PAIRS, B24_FORM_MAX_SIZE,
                                         NULL, 0};

#define GC_EVERY 256
#define LUA_HEAP_SLACK_KB (16 * 1024)

/* ---- (a) the C tree ------------------------------------------------------------------------ */

typedef struct walk {
    const b24_arena *arena;
    const b24_form_limits *limits;
    size_t input_len;
    const char *lo, *hi;          /* span of every pointer into the decoded buffer */
    const b24_arena_chunk *chunk; /* the chunk holding that buffer */
    size_t entries;
} walk;

static const b24_arena_chunk *chunk_of(const b24_arena *a, const char *p, size_t len)
{
    for (const b24_arena_chunk *c = a->head; c; c = c->next) {
        const char *start = (const char *)c->data;
        if (p >= start && p + len <= start + c->used)
            return c;
    }
    return NULL;
}

/* A key or value pointer: inside the decoded buffer (one chunk, one span of len+1 bytes at
 * most), or an empty string that lives elsewhere (the static ""). */
static void check_pointer(walk *w, const char *p, size_t len, int nul_terminated)
{
    CHECK(p != NULL);
    const b24_arena_chunk *c = chunk_of(w->arena, p, len + (nul_terminated ? 1 : 0));
    if (c == NULL) {
        CHECK(len == 0 && p[0] == '\0');
        return;
    }
    if (nul_terminated)
        CHECK(p[len] == '\0');
    if (w->chunk == NULL)
        w->chunk = c;
    CHECK(w->chunk == c);
    if (w->lo == NULL || p < w->lo)
        w->lo = p;
    if (w->hi == NULL || p + len > w->hi)
        w->hi = p + len;
    CHECK((size_t)(w->hi - w->lo) <= w->input_len + 1);
}

/* ZEND_HANDLE_NUMERIC_STR, written independently of the parser's own: "0" or -?[1-9][0-9]*
 * within [INT64_MIN, INT64_MAX]. PHP takes "-9223372036854775808" as the integer key
 * PHP_INT_MIN (php -r 'parse_str("a[-9223372036854775808]=x&a[]=y",$o);var_dump($o);'
 * gives keys -9223372036854775808 and -9223372036854775807). */
static int canonical_int(const char *s, size_t len, int64_t *out)
{
    char buf[32];
    if (len == 0 || len > 20)
        return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end = NULL;
    long long v = strtoll(buf, &end, 10);
    if (end != buf + len)
        return 0;
    char again[32];
    snprintf(again, sizeof again, "%lld", v);
    if (strcmp(again, buf) != 0) /* "-0", "01", "+1", " 1", out of range */
        return 0;
    *out = v;
    return 1;
}

static int same_key(const b24_form_entry *a, const b24_form_entry *b)
{
    if (a->is_int != b->is_int)
        return 0;
    if (a->is_int)
        return a->ikey == b->ikey;
    return a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0;
}

static void walk_array(walk *w, const b24_form_array *arr, size_t depth)
{
    CHECK(arr != NULL);
    CHECK(depth <= w->limits->max_depth);
    CHECK(arr->count <= arr->cap);
    CHECK(arr->count == 0 || arr->entries != NULL);
    if (depth == 0)
        CHECK(arr->count <= w->limits->max_pairs);
    else
        CHECK(arr->count > 0); /* an array only exists because a write went into it */
    w->entries += arr->count;

    int list = 1;
    int64_t max_int = INT64_MIN;
    int any_int = 0;
    for (uint32_t i = 0; i < arr->count; i++) {
        const b24_form_entry *e = &arr->entries[i];
        if (!(e->is_int && e->ikey == (int64_t)i))
            list = 0;
        if (e->is_int) {
            any_int = 1;
            if (e->ikey > max_int)
                max_int = e->ikey;
        }
        if (e->key == NULL) {
            CHECK(e->is_int); /* an append */
            CHECK(depth > 0);
        } else {
            CHECK(e->key_len > 0);
            check_pointer(w, e->key, e->key_len, 0);
            CHECK(memchr(e->key, '\0', e->key_len) == NULL); /* the name is a C string */
            if (depth == 0) {
                CHECK(e->key[0] != ' ');
                CHECK(memchr(e->key, '[', e->key_len) == NULL);
            } else {
                CHECK(memchr(e->key, ']', e->key_len) == NULL);
            }
            int64_t v = 0;
            int numeric = canonical_int(e->key, e->key_len, &v);
            CHECK(numeric == e->is_int);
            if (numeric)
                CHECK(v == e->ikey);
        }
        if (e->value.arr) {
            walk_array(w, e->value.arr, depth + 1);
        } else {
            check_pointer(w, e->value.str, e->value.len, 1);
        }
    }
    CHECK(arr->is_list == list);
    if (any_int)
        CHECK(arr->next_free == (max_int < INT64_MAX ? max_int + 1 : INT64_MAX));
    else
        CHECK(arr->next_free == INT64_MIN);

    if (arr->count <= 512)
        for (uint32_t i = 0; i < arr->count; i++)
            for (uint32_t j = i + 1; j < arr->count; j++)
                CHECK(!same_key(&arr->entries[i], &arr->entries[j]));

    if (arr->buckets) {
        CHECK(arr->nbuckets > 0 && (arr->nbuckets & (arr->nbuckets - 1)) == 0);
        CHECK(arr->count <= arr->nbuckets);
        /* every entry is reachable from its bucket, and each chain stays in its bucket */
        for (uint32_t i = 0; i < arr->count; i++) {
            uint32_t slot = arr->entries[i].hash & (arr->nbuckets - 1);
            int found = 0;
            size_t steps = 0;
            for (int32_t j = arr->buckets[slot]; j >= 0; j = arr->entries[j].next) {
                CHECK((uint32_t)j < arr->count);
                CHECK((arr->entries[j].hash & (arr->nbuckets - 1)) == slot);
                CHECK(++steps <= arr->count);
                if ((uint32_t)j == i)
                    found = 1;
            }
            CHECK(found);
        }
    }
}

static int same_tree(const b24_form_array *a, const b24_form_array *b)
{
    if (a->count != b->count || a->is_list != b->is_list || a->next_free != b->next_free)
        return 0;
    for (uint32_t i = 0; i < a->count; i++) {
        const b24_form_entry *x = &a->entries[i], *y = &b->entries[i];
        if (!same_key(x, y) || (x->key == NULL) != (y->key == NULL))
            return 0;
        if ((x->value.arr == NULL) != (y->value.arr == NULL))
            return 0;
        if (x->value.arr) {
            if (!same_tree(x->value.arr, y->value.arr))
                return 0;
        } else if (x->value.len != y->value.len ||
                   memcmp(x->value.str, y->value.str, x->value.len) != 0) {
            return 0;
        }
    }
    return 1;
}

static size_t count_pairs(const char *s, size_t len)
{
    size_t pairs = 0, start = 0;
    const char *nul = memchr(s, '\0', len); /* parse_str, and so the parser, stop there */
    if (nul)
        len = (size_t)(nul - s);
    for (size_t i = 0; i <= len; i++)
        if (i == len || s[i] == '&') {
            if (i > start)
                pairs++;
            start = i + 1;
        }
    return pairs;
}

static b24_form_status parse_and_check(const char *s, size_t len, const b24_form_limits *lim,
                                       b24_arena *arena, b24_form_array **root)
{
    memset(arena, 0, sizeof(*arena));
    *root = NULL;
    b24_form_status st = b24_form_parse(s, len, lim, arena, root);
    size_t total = 0;
    for (const b24_arena_chunk *c = arena->head; c; c = c->next) {
        CHECK(c->used <= c->size);
        total += c->size;
    }
    CHECK(total == arena->total);
    CHECK(st >= B24_FORM_OK && st <= B24_FORM_NO_MEMORY);
    CHECK(st != B24_FORM_NO_MEMORY); /* inputs here are tiny */
    if (len > lim->max_size)
        CHECK(st == B24_FORM_TOO_LARGE);
    else
        CHECK(st != B24_FORM_TOO_LARGE);
    size_t pairs = count_pairs(s, len);
    if (st == B24_FORM_TOO_MANY)
        CHECK(pairs > lim->max_pairs);
    if (st != B24_FORM_OK)
        return st;
    CHECK(*root != NULL);
    CHECK(pairs <= lim->max_pairs);
    walk w = {arena, lim, len, NULL, NULL, NULL, 0};
    walk_array(&w, *root, 0);
    CHECK(w.entries <= pairs * (lim->max_depth + 1));
    return st;
}

/* ---- (b) the Lua path ---------------------------------------------------------------------- */

static lua_State *L;
static int base_top; /* the module table sits at index 1 */
static unsigned long inputs;
static size_t heap_baseline_kb;

/* Calls fn (a module field) with nargs arguments already pushed; asserts no error. */
static void call_module(const char *fn, int nargs, int nresults)
{
    lua_getfield(L, 1, fn);
    lua_insert(L, -(nargs + 1));
    if (lua_pcall(L, nargs, nresults, 0) != LUA_OK) {
        fprintf(stderr, "%s raised: %s\n", fn, lua_tostring(L, -1));
        abort();
    }
}

static void push_key_text(const b24_form_entry *e, char *num, size_t size)
{
    if (e->key) {
        lua_pushlstring(L, e->key, e->key_len);
    } else {
        snprintf(num, size, "%lld", (long long)e->ikey);
        lua_pushstring(L, num);
    }
}

/* The Lua table at idx is exactly what push_array must make of arr. */
static void check_lua_tree(int idx, const b24_form_array *arr)
{
    idx = lua_absindex(L, idx);
    CHECK(lua_type(L, idx) == LUA_TTABLE);
    CHECK(lua_checkstack(L, 4));
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        n++;
        lua_pop(L, 1);
    }
    CHECK(n == arr->count);
    char num[32];
    for (uint32_t i = 0; i < arr->count; i++) {
        const b24_form_entry *e = &arr->entries[i];
        if (arr->is_list) {
            lua_rawgeti(L, idx, (lua_Integer)i + 1);
        } else {
            push_key_text(e, num, sizeof num);
            lua_rawget(L, idx);
        }
        if (e->value.arr) {
            check_lua_tree(-1, e->value.arr);
        } else {
            size_t len;
            CHECK(lua_type(L, -1) == LUA_TSTRING);
            const char *s = lua_tolstring(L, -1, &len);
            CHECK(len == e->value.len && memcmp(s, e->value.str, len) == 0);
        }
        lua_pop(L, 1);
    }
}

/* Looks the PHP key (a string) up in a decoded table: a list holds key "i" at index i+1. */
static void get_php_key(int t, const char *k, size_t klen)
{
    lua_pushlstring(L, k, klen);
    lua_rawget(L, t);
    int64_t i;
    if (lua_isnil(L, -1) && canonical_int(k, klen, &i) && i >= 0 && i < ((int64_t)1 << 53)) {
        lua_pop(L, 1);
        lua_rawgeti(L, t, (lua_Integer)i + 1);
    }
}

/* Two decoded tables hold the same PHP array, ignoring order and list/map representation. */
static int same_php_array(int a, int b)
{
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
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
        /* key at -2, value at -1 */
        char num[32];
        const char *k;
        size_t klen;
        if (lua_type(L, -2) == LUA_TNUMBER) {
            klen = (size_t)snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, -2) - 1);
            k = num;
        } else {
            CHECK(lua_type(L, -2) == LUA_TSTRING);
            k = lua_tolstring(L, -2, &klen);
        }
        get_php_key(b, k, klen);
        int ok;
        if (lua_type(L, -2) == LUA_TTABLE)
            ok = lua_type(L, -1) == LUA_TTABLE && same_php_array(-2, -1);
        else
            ok = lua_type(L, -1) == LUA_TSTRING && lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (!ok) {
            lua_pop(L, 1);
            return 0;
        }
    }
    return na == nb;
}

static void lua_init(void)
{
    L = luaL_newstate();
    CHECK(L != NULL);
    luaL_openlibs(L);
    luaL_requiref(L, "bitrix24.core", luaopen_bitrix24_core, 0);
    base_top = lua_gettop(L);
    CHECK(base_top == 1);
    lua_gc(L, LUA_GCCOLLECT, 0);
    heap_baseline_kb = (size_t)lua_gc(L, LUA_GCCOUNT, 0);
}

static const char *kind_of(b24_form_status st)
{
    switch (st) {
    case B24_FORM_TOO_LARGE:
        return "too_large";
    case B24_FORM_TOO_MANY:
        return "too_many";
    case B24_FORM_TOO_DEEP:
        return "too_deep";
    default:
        return "memory";
    }
}

static void push_limits(const b24_form_limits *lim)
{
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)lim->max_depth);
    lua_setfield(L, -2, "max_depth");
    lua_pushinteger(L, (lua_Integer)lim->max_pairs);
    lua_setfield(L, -2, "max_pairs");
    lua_pushinteger(L, (lua_Integer)lim->max_size);
    lua_setfield(L, -2, "max_size");
}

/* form_decode(s [, limits]) leaves 3 results; checks them against the C parse. */
static void lua_decode_matches(const char *s, size_t len, const b24_form_limits *lim,
                               b24_form_status st, const b24_form_array *root)
{
    lua_pushlstring(L, s, len);
    if (lim)
        push_limits(lim);
    call_module("form_decode", lim ? 2 : 1, 3);
    if (st == B24_FORM_OK) {
        CHECK(lua_type(L, -3) == LUA_TTABLE && lua_isnil(L, -2) && lua_isnil(L, -1));
        check_lua_tree(-3, root);
    } else {
        CHECK(lua_isnil(L, -3) && lua_type(L, -2) == LUA_TSTRING);
        CHECK(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), kind_of(st)) == 0);
    }
}

/* only builds each top-level field as the whole decode has it, and nothing for a name the body
 * lacks */
static void only_matches(const char *s, size_t len, int t1)
{
    fuzz_only_matches(L, "form_decode", 0, s, len, t1);
    get_php_key(t1, "\001absent", 7);
    int absent = lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!absent)
        return;
    lua_pushlstring(L, s, len);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "\001absent");
    lua_setfield(L, -2, "only");
    call_module("form_decode", 2, 1);
    CHECK(lua_istable(L, -1));
    lua_pushnil(L);
    CHECK(lua_next(L, -2) == 0);
    lua_settop(L, t1);
}

static void lua_round_trip(const char *s, size_t len, b24_form_status st_small,
                           const b24_form_array *small, b24_form_status st_default,
                           const b24_form_array *deflt)
{
    static const b24_form_limits roomy = {B24_FORM_MAX_DEPTH, 10000000, 1u << 30, NULL, 0};

    lua_decode_matches(s, len, &SMALL, st_small, small);
    lua_pop(L, 3);

    lua_decode_matches(s, len, NULL, st_default, deflt);
    lua_pop(L, 2); /* keep the table (or nil) */
    if (st_default != B24_FORM_OK) {
        lua_pop(L, 1);
        return;
    }
    int t1 = lua_gettop(L);
    only_matches(s, len, t1);

    lua_pushvalue(L, t1);
    call_module("form_encode", 1, 1);
    CHECK(lua_type(L, -1) == LUA_TSTRING);
    int e1 = lua_gettop(L);

    lua_pushvalue(L, e1);
    push_limits(&roomy);
    call_module("form_decode", 2, 1);
    CHECK(lua_type(L, -1) == LUA_TTABLE);
    int t2 = lua_gettop(L);
    if (!same_php_array(t1, t2) || !same_php_array(t2, t1)) {
        fprintf(stderr, "decode(encode(decode(s))) differs from decode(s); encode gave: %s\n",
                lua_tostring(L, e1));
        abort();
    }

    /* one more turn: the encoding of a re-decoded body is a fixed point */
    lua_pushvalue(L, t2);
    call_module("form_encode", 1, 1);
    int e2 = lua_gettop(L);
    lua_pushvalue(L, e2);
    push_limits(&roomy);
    call_module("form_decode", 2, 1);
    CHECK(lua_type(L, -1) == LUA_TTABLE);
    call_module("form_encode", 1, 1);
    if (!lua_rawequal(L, -1, e2)) {
        fprintf(stderr, "form_encode is not a fixed point:\n  %s\n  %s\n", lua_tostring(L, e2),
                lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, t1 - 1);
}

/* ---- libFuzzer entry points ---------------------------------------------------------------- */

/* Adds -dict=<repo>/fuzz/form_decode.dict (found next to the binary's build/fuzz/ directory,
 * or under the working directory) when no dictionary was given: `make fuzz-run` passes none. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    lua_init();
    for (int i = 1; i < *argc; i++)
        if (strncmp((*argv)[i], "-dict=", 6) == 0)
            return 0;
    static char path[4096];
    const char *self = (*argv)[0];
    const char *slash = strrchr(self, '/');
    int n = slash ? snprintf(path, sizeof path, "%.*s/../../fuzz/form_decode.dict",
                             (int)(slash - self), self)
                  : snprintf(path, sizeof path, "../../fuzz/form_decode.dict");
    FILE *f = (n > 0 && (size_t)n < sizeof path) ? fopen(path, "r") : NULL;
    if (f == NULL) {
        snprintf(path, sizeof path, "fuzz/form_decode.dict");
        f = fopen(path, "r");
    }
    if (f == NULL)
        return 0;
    fclose(f);
    static char flag[4096 + 8];
    snprintf(flag, sizeof flag, "-dict=%s", path);
    static char **args;
    args = calloc((size_t)*argc + 2, sizeof(char *));
    if (args == NULL)
        return 0;
    args[0] = (*argv)[0];
    args[1] = flag; /* before the corpus directories; flags may come in any order */
    for (int i = 1; i < *argc; i++)
        args[i + 1] = (*argv)[i];
    *argc += 1;
    *argv = args;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    if (L == NULL)
        lua_init();

    b24_arena small_arena, default_arena;
    b24_form_array *small = NULL, *deflt = NULL;
    b24_form_status st_small = parse_and_check(s, size, &SMALL, &small_arena, &small);
    b24_form_status st_default = parse_and_check(s, size, &DEFAULTS, &default_arena, &deflt);
    if (st_small == B24_FORM_OK) /* the small limits are tighter in every respect */
        CHECK(st_default == B24_FORM_OK && same_tree(small, deflt));
    if (st_default != B24_FORM_OK)
        CHECK(st_small != B24_FORM_OK);

    lua_round_trip(s, size, st_small, small, st_default, deflt);
    CHECK(lua_gettop(L) == base_top);

    b24_arena_free(&small_arena);
    b24_arena_free(&default_arena);

    if (++inputs % GC_EVERY == 0) {
        lua_gc(L, LUA_GCCOLLECT, 0);
        size_t kb = (size_t)lua_gc(L, LUA_GCCOUNT, 0);
        CHECK(kb <= heap_baseline_kb + LUA_HEAP_SLACK_KB);
    }
    return 0;
}
