/* libFuzzer target for the JSON codec (csrc/b24_json_scan.c and the other csrc/b24_json_*.c).
 *
 * (a) b24_json_scan straight on the input, plain and form mode, under small and default limits,
 *     against a reference validator written here from RFC 8259 (recursive, separate UTF-8 and
 *     number checks): the same verdict, the limits tripped only when the body exceeds them, and
 *     the scan's records equal to the reference's containers (all of them in plain mode, those
 *     holding a value that is not null in form mode, with their subtrees). b24_json_form_body's
 *     text must parse as a form.
 * (b) the Lua path through one long-lived lua_State: json_decode must agree with the scan,
 *     json_encode of what it gives must not raise, decoding that text must give the same value
 *     and encoding it again the same text; form mode must give exactly
 *     form_decode(form_encode(json_decode(s))) whenever both give a table, and refuse what the
 *     composition refuses. The stack stays balanced; a full GC every GC_EVERY inputs keeps the
 *     heap bounded, so a leak of Lua references shows up. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "b24.h"
#include "fuzz.h"
#include "fuzz_lua.h"

int luaopen_bitrix24_core(lua_State *L);

static const b24_json_limits SMALL = {3, 8, 512, NULL, 0};
static const b24_json_limits DEFAULTS = {B24_FORM_MAX_DEPTH, B24_FORM_MAX_PAIRS, B24_FORM_MAX_SIZE,
                                         NULL, 0};

#define GC_EVERY 256
#define LUA_HEAP_SLACK_KB (16 * 1024)
#define MAX_CONTAINERS 100000

/* ---- (a) a reference validator ---------------------------------------------------------- */

typedef struct container {
    size_t start, end, count;
    size_t after; /* index of the next container after its subtree (all containers) */
    int live;     /* holds a scalar that is not null somewhere below */
} container;

typedef struct reference {
    const unsigned char *s;
    size_t len, pos;
    size_t depth, max_depth; /* nesting now, deepest seen */
    size_t values;           /* members and elements */
    size_t leaves;           /* scalars that are not null */
    container *c;
    size_t n;
    int top_container;
} reference;

static void ws(reference *r)
{
    while (r->pos < r->len && strchr(" \t\r\n", r->s[r->pos]) && r->s[r->pos])
        r->pos++;
}

static int utf8_ok(reference *r)
{
    /* decode one code point by the textbook table: U+0080..U+10FFFF, shortest form, no
     * surrogates */
    const unsigned char *p = r->s + r->pos;
    size_t left = r->len - r->pos;
    unsigned long cp;
    size_t n;
    if (p[0] >= 0xF0 && p[0] <= 0xF7)
        n = 4, cp = p[0] & 0x07;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF)
        n = 3, cp = p[0] & 0x0F;
    else if (p[0] >= 0xC0 && p[0] <= 0xDF)
        n = 2, cp = p[0] & 0x1F;
    else
        return 0;
    if (left < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    static const unsigned long min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    r->pos += n;
    return 1;
}

static int hex4(reference *r, unsigned long *v)
{
    if (r->len - r->pos < 4)
        return 0;
    char buf[5];
    memcpy(buf, r->s + r->pos, 4);
    buf[4] = '\0';
    for (int i = 0; i < 4; i++)
        if (!strchr("0123456789abcdefABCDEF", buf[i]) || buf[i] == '\0')
            return 0;
    *v = strtoul(buf, NULL, 16);
    r->pos += 4;
    return 1;
}

static int string_ok(reference *r)
{
    r->pos++; /* the quote */
    for (;;) {
        if (r->pos >= r->len)
            return 0;
        unsigned char c = r->s[r->pos];
        if (c == '"') {
            r->pos++;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c == '\\') {
            if (++r->pos >= r->len)
                return 0;
            c = r->s[r->pos++];
            if (c == 'u') {
                unsigned long v, lo;
                if (!hex4(r, &v))
                    return 0;
                if (v >= 0xDC00 && v <= 0xDFFF)
                    return 0;
                if (v >= 0xD800 && v <= 0xDBFF) {
                    if (r->len - r->pos < 2 || r->s[r->pos] != '\\' || r->s[r->pos + 1] != 'u')
                        return 0;
                    r->pos += 2;
                    if (!hex4(r, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return 0;
                }
            } else if (!memchr("\"\\/bfnrt", c, 8)) {
                return 0;
            }
        } else if (c >= 0x80) {
            if (!utf8_ok(r))
                return 0;
        } else {
            r->pos++;
        }
    }
}

static int digits(reference *r)
{
    size_t start = r->pos;
    while (r->pos < r->len && r->s[r->pos] >= '0' && r->s[r->pos] <= '9')
        r->pos++;
    return r->pos > start;
}

static int number_ok(reference *r)
{
    size_t start = r->pos;
    if (r->s[r->pos] == '-')
        r->pos++;
    if (r->pos < r->len && r->s[r->pos] == '0')
        r->pos++;
    else if (!digits(r))
        return 0;
    if (r->pos < r->len && r->s[r->pos] == '.') {
        r->pos++;
        if (!digits(r))
            return 0;
    }
    if (r->pos < r->len && (r->s[r->pos] == 'e' || r->s[r->pos] == 'E')) {
        r->pos++;
        if (r->pos < r->len && (r->s[r->pos] == '+' || r->s[r->pos] == '-'))
            r->pos++;
        if (!digits(r))
            return 0;
    }
    /* what a double cannot hold is refused */
    size_t n = r->pos - start;
    char *token = malloc(n + 1), *end;
    CHECK(token != NULL);
    memcpy(token, r->s + start, n);
    token[n] = '\0';
    double d = strtod(token, &end);
    CHECK(end == token + n);
    free(token);
    return !isinf(d);
}

static int value_ok(reference *r, int *live);

static int container_ok(reference *r, int *live)
{
    int object = r->s[r->pos] == '{';
    if (r->n >= MAX_CONTAINERS)
        return 0;
    size_t me = r->n++;
    r->c[me].start = r->pos;
    r->c[me].count = 0;
    r->c[me].live = 0;
    if (++r->depth > r->max_depth)
        r->max_depth = r->depth;
    r->pos++;
    ws(r);
    if (r->pos < r->len && r->s[r->pos] == (object ? '}' : ']')) {
        r->pos++;
    } else {
        for (;;) {
            if (object) {
                ws(r);
                if (r->pos >= r->len || r->s[r->pos] != '"' || !string_ok(r))
                    return 0;
                ws(r);
                if (r->pos >= r->len || r->s[r->pos] != ':')
                    return 0;
                r->pos++;
            }
            r->c[me].count++;
            r->values++;
            int child_live = 0;
            if (!value_ok(r, &child_live))
                return 0;
            r->c[me].live |= child_live;
            ws(r);
            if (r->pos < r->len && r->s[r->pos] == ',') {
                r->pos++;
                continue;
            }
            if (r->pos < r->len && r->s[r->pos] == (object ? '}' : ']')) {
                r->pos++;
                break;
            }
            return 0;
        }
    }
    r->depth--;
    r->c[me].end = r->pos;
    r->c[me].after = r->n;
    *live = r->c[me].live;
    return 1;
}

static int value_ok(reference *r, int *live)
{
    ws(r);
    if (r->pos >= r->len)
        return 0;
    unsigned char c = r->s[r->pos];
    *live = 0;
    if (c == '{' || c == '[')
        return container_ok(r, live);
    *live = 1;
    if (c == '"') {
        r->leaves++;
        return string_ok(r);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        r->leaves++;
        return number_ok(r);
    }
    static const char *words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if (r->len - r->pos >= n && memcmp(r->s + r->pos, words[i], n) == 0) {
            r->pos += n;
            *live = i < 2;
            r->leaves += (size_t)(i < 2);
            return 1;
        }
    }
    return 0;
}

static int reference_check(reference *r, const unsigned char *s, size_t len, container *c)
{
    memset(r, 0, sizeof *r);
    r->s = s;
    r->len = len;
    r->c = c;
    ws(r);
    r->top_container = r->pos < len && (s[r->pos] == '{' || s[r->pos] == '[');
    int live;
    if (!value_ok(r, &live))
        return 0;
    ws(r);
    return r->pos == len;
}

/* The scan's records against the reference's containers */
static void compare_records(const b24_json_doc *doc, const reference *r, int form)
{
    if (!form) {
        CHECK(doc->ncontainers == r->n);
        for (size_t i = 0; i < r->n; i++)
            CHECK(doc->counts[i] == r->c[i].count);
        return;
    }
    /* form mode: the live containers in order; after = the next live one past the subtree */
    size_t k = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (!r->c[i].live)
            continue;
        CHECK(k < doc->ncontainers);
        const b24_json_container *x = &doc->containers[k];
        CHECK(x->start == r->c[i].start && x->end == r->c[i].end && x->count == r->c[i].count);
        size_t after = k + 1;
        for (size_t j = i + 1; j < r->c[i].after; j++)
            after += (size_t)r->c[j].live;
        CHECK(x->after == after);
        k++;
    }
    CHECK(k == doc->ncontainers);
}

static void scan_and_check(const char *s, size_t len, const b24_json_limits *lim, int form,
                           const reference *r, int valid)
{
    b24_arena arena;
    memset(&arena, 0, sizeof arena);
    b24_json_doc doc;
    memset(&doc, 0, sizeof doc);
    b24_json_status st = b24_json_scan(s, len, lim, form, &arena, &doc);
    CHECK(st >= B24_JSON_OK && st <= B24_JSON_TOO_DEEP);
    size_t max_depth = lim->max_depth + (form ? 1 : 0);
    size_t pairs = form ? r->leaves : r->values;
    if (form && !r->top_container)
        valid = 0;
    if (len > lim->max_size) {
        CHECK(st == B24_JSON_TOO_LARGE);
    } else if (st == B24_JSON_OK) {
        CHECK(valid);
        CHECK(r->max_depth <= max_depth && pairs <= lim->max_pairs);
        CHECK(doc.pairs == pairs && doc.depth == r->max_depth);
        compare_records(&doc, r, form);
        if (form) { /* the exact path's form body: a form, or too large for its budget */
            char *body;
            size_t blen;
            b24_json_status bs = b24_json_form_body(&doc, &arena, 4 * len + 64, &body, &blen);
            CHECK(bs == B24_JSON_OK || bs == B24_JSON_TOO_LARGE);
            if (bs == B24_JSON_OK) {
                CHECK(blen <= 4 * len + 64 && body[blen] == '\0');
                b24_form_limits fl = {1000, 10000000, blen, NULL, 0};
                b24_form_array *root = NULL;
                b24_form_status fs = b24_form_parse(body, blen, &fl, &arena, &root);
                CHECK(fs == B24_FORM_OK || fs == B24_FORM_TOO_DEEP);
            }
        }
    } else if (st == B24_JSON_MALFORMED) {
        CHECK(!valid);
        CHECK(doc.offset <= len && doc.why != NULL);
    } else if (st == B24_JSON_TOO_DEEP) {
        CHECK(!valid || r->max_depth > max_depth);
    } else if (st == B24_JSON_TOO_MANY) {
        CHECK(!valid || pairs > lim->max_pairs);
    } else {
        CHECK(0); /* too large only past max_size */
    }
    if (valid && len <= lim->max_size && r->max_depth <= max_depth && pairs <= lim->max_pairs)
        CHECK(st == B24_JSON_OK);
    free(doc.records);
    b24_arena_free(&arena);
}

/* ---- (b) the Lua path --------------------------------------------------------------------- */

static lua_State *L;
static unsigned long inputs;
static size_t heap_baseline_kb;

static void lua_init(void)
{
    L = luaL_newstate();
    CHECK(L != NULL);
    luaL_openlibs(L);
    luaL_requiref(L, "bitrix24.core", luaopen_bitrix24_core, 0);
    CHECK(lua_gettop(L) == 1);
    lua_gc(L, LUA_GCCOLLECT, 0);
    heap_baseline_kb = (size_t)lua_gc(L, LUA_GCCOUNT, 0);
}

/* Calls module function fn with nargs arguments pushed; leaves nresults; aborts on a raise. */
static void call(const char *fn, int nargs, int nresults)
{
    lua_getfield(L, 1, fn);
    lua_insert(L, -(nargs + 1));
    if (lua_pcall(L, nargs, nresults, 0) != LUA_OK) {
        fprintf(stderr, "%s raised: %s\n", fn, lua_tostring(L, -1));
        abort();
    }
}

static void push_opts(int form, int max_depth)
{
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, form);
    lua_setfield(L, -2, "form");
    lua_pushinteger(L, max_depth);
    lua_setfield(L, -2, "max_depth");
}

/* json_decode(s [, opts]) -> 3 results on the stack */
static void decode(const char *s, size_t len, int form, int max_depth)
{
    lua_pushlstring(L, s, len);
    push_opts(form, max_depth);
    call("json_decode", 2, 3);
}

static const char *kind_of(b24_json_status st)
{
    static const char *kinds[] = {"ok", "malformed", "too_large", "too_many", "too_deep"};
    return kinds[st];
}

static void lua_checks(const char *s, size_t len, b24_json_status plain, b24_json_status form)
{
    int top = lua_gettop(L);

    /* plain: agrees with the scan; encode, decode, encode is a fixed point */
    decode(s, len, 0, B24_FORM_MAX_DEPTH);
    if (plain != B24_JSON_OK) {
        CHECK(lua_isnil(L, -3));
        CHECK(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), kind_of(plain)) == 0);
    } else if (lua_isnil(L, -3)) { /* only the memory budget refuses what the scan accepted */
        CHECK(strcmp(lua_tostring(L, -1), "too_large") == 0);
    } else {
        lua_pop(L, 2);
        int v = lua_gettop(L);
        lua_pushvalue(L, v);
        call("json_encode", 1, 1);
        int text = lua_gettop(L);
        lua_pushvalue(L, text);
        lua_createtable(L, 0, 1);
        lua_pushinteger(L, 1 << 30);
        lua_setfield(L, -2, "max_memory");
        call("json_decode", 2, 1);
        if (!fuzz_same(L, v, -1)) {
            fprintf(stderr, "json_decode(json_encode(v)) differs from v; encode gave %s\n",
                    lua_tostring(L, text));
            abort();
        }
        call("json_encode", 1, 1);
        CHECK(lua_rawequal(L, -1, text));
    }
    lua_settop(L, top);

    /* form mode against form_decode(form_encode(json_decode(s, {max_depth = 65}))) */
    decode(s, len, 1, B24_FORM_MAX_DEPTH);
    if (form != B24_JSON_OK) {
        CHECK(lua_isnil(L, -3));
        CHECK(strcmp(lua_tostring(L, -1), kind_of(form)) == 0);
        lua_settop(L, top);
        return;
    }
    lua_pop(L, 2);
    int mine = lua_gettop(L);
    if (lua_istable(L, mine)) /* nil when the form body's budget refused it */
        fuzz_only_matches(L, "json_decode", 1, s, len, mine);
    decode(s, len, 0, B24_FORM_MAX_DEPTH + 1);
    lua_pop(L, 2);
    if (lua_istable(L, -1)) {
        call("form_encode", 1, 1);
        lua_createtable(L, 0, 2);
        lua_pushinteger(L, 10000000);
        lua_setfield(L, -2, "max_pairs");
        lua_pushinteger(L, 1 << 30);
        lua_setfield(L, -2, "max_size");
        call("form_decode", 2, 3);
        if (lua_istable(L, -3) && lua_istable(L, mine)) {
            if (!fuzz_same(L, mine, -3)) {
                fprintf(stderr, "form mode differs from form_decode(form_encode(v))\n");
                abort();
            }
        } else if (lua_istable(L, mine)) { /* the composition refused: form mode must too */
            fprintf(stderr, "form mode accepted what form_decode refuses: %s\n",
                    lua_tostring(L, -2));
            abort();
        }
    }
    lua_settop(L, top);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (L == NULL)
        lua_init();
    /* the scan reads one byte past the body, as a Lua string has its NUL */
    char *s = malloc(size + 1);
    container *c = malloc(sizeof *c * MAX_CONTAINERS);
    CHECK(s != NULL && c != NULL);
    memcpy(s, data, size);
    s[size] = '\0';

    reference r;
    int valid = reference_check(&r, (const unsigned char *)s, size, c);
    for (int form = 0; form <= 1; form++) {
        scan_and_check(s, size, &SMALL, form, &r, valid);
        scan_and_check(s, size, &DEFAULTS, form, &r, valid);
    }

    /* the verdicts under the defaults, for the Lua path */
    b24_json_status st[2];
    for (int form = 0; form <= 1; form++) {
        b24_arena arena;
        memset(&arena, 0, sizeof arena);
        b24_json_doc doc;
        memset(&doc, 0, sizeof doc);
        st[form] = b24_json_scan(s, size, &DEFAULTS, form, &arena, &doc);
        free(doc.records);
        b24_arena_free(&arena);
    }
    lua_checks(s, size, st[0], st[1]);
    CHECK(lua_gettop(L) == 1);

    free(c);
    free(s);
    if (++inputs % GC_EVERY == 0) {
        lua_gc(L, LUA_GCCOLLECT, 0);
        CHECK((size_t)lua_gc(L, LUA_GCCOUNT, 0) <= heap_baseline_kb + LUA_HEAP_SLACK_KB);
    }
    return 0;
}
