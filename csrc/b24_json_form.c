/* Form mode's value: the tables form_decode(form_encode(v)) gives for a decoded JSON body, built
 * from the walk of the scanned text in form_encode's order (sequences turned into maps at a hole,
 * maps of "0".."n-1" into sequences, containers left empty omitted), or, when keys hold '[',
 * ']' or NUL, from the form parser's reading of the form body itself. */
#include <limits.h>
#include <string.h>

#include "b24.h"

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
        lua_rawgeti(L, -4, B24_JSON_INDEX(i));
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
        lua_rawseti(L, -2, B24_JSON_INDEX(i + 1));
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
static void attach(b24_json_builder *b, b24_json_level *l)
{
    lua_State *L = b->L;
    if (l->is_array) {
        if (l->list && l->index == l->values) {
            lua_rawseti(L, -2, B24_JSON_INDEX(l->index + 1));
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

/* Under only: whether the top-level key just given names another subtree than root[only]. An
 * index is its decimal text, as parse_str reads the name form_encode writes for it. */
static int other_top_key(const b24_json_builder *b, const char *key, size_t len, int64_t index)
{
    char num[24];
    if (index >= 0) {
        len = b24_json_format_integer(index, num);
        key = num;
    }
    return !(len == b->only_len && memcmp(key, b->only, len) == 0);
}

static int form_open(void *ctx, int is_array, size_t count)
{
    b24_json_builder *b = ctx;
    if (b->skip) { /* inside a skipped value: only its nesting is followed */
        b->skip++;
        return 0;
    }
    b24_json_count_value(b);
    luaL_checkstack(b->L, 6, "JSON nested too deep");
    int n = count > INT_MAX ? INT_MAX : (int)count;
    lua_createtable(b->L, is_array ? n : 0, is_array ? 0 : n);
    b24_json_level *l = &b->levels[b->depth++];
    l->is_array = is_array;
    l->list = 1;
    l->values = 0;
    return 0;
}

static int form_key(void *ctx, const char *key, size_t len, int64_t index)
{
    b24_json_builder *b = ctx;
    if (b->skip)
        return 0;
    if (b->only && b->depth == 1 && other_top_key(b, key, len, index)) {
        b->skip = 1; /* the value that follows */
        return 0;
    }
    b24_json_level *l = &b->levels[b->depth - 1];
    l->key = key;
    l->key_len = len;
    l->index = index;
    return 0;
}

static int form_scalar(void *ctx, const char *text, size_t len)
{
    b24_json_builder *b = ctx;
    if (b->skip) {
        if (b->skip == 1) /* the skipped value was this scalar */
            b->skip = 0;
        return 0;
    }
    b24_json_count_value(b);
    lua_pushlstring(b->L, text, len);
    attach(b, &b->levels[b->depth - 1]);
    return 0;
}

static int form_close(void *ctx)
{
    b24_json_builder *b = ctx;
    if (b->skip) {
        if (--b->skip == 1) /* the skipped container ended */
            b->skip = 0;
        return 0;
    }
    b24_json_level *l = &b->levels[--b->depth];
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
static void push_form_tree(b24_json_builder *b, const b24_form_array *arr)
{
    lua_State *L = b->L;
    b24_json_count_value(b);
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
            b24_json_count_value(b);
            lua_pushlstring(L, e->value.str, e->value.len);
        }
        if (arr->is_list)
            lua_rawseti(L, -2, B24_JSON_INDEX(i + 1));
        else
            lua_rawset(L, -3);
    }
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

b24_json_status b24_json_form_tree(const b24_json_doc *doc, const b24_json_limits *lim,
                                   b24_arena *arena, size_t budget, b24_form_array **tree)
{
    char *body;
    size_t body_len;
    b24_json_status st = b24_json_form_body(doc, arena, budget, &body, &body_len);
    if (st != B24_JSON_OK)
        return st;
    b24_form_limits fl = {lim->max_depth, lim->max_pairs, budget, lim->only, lim->only_len};
    return from_form_status(b24_form_parse(body, body_len, &fl, arena, tree));
}

void b24_json_form_push(b24_json_builder *b)
{
    static const b24_json_form_sink sink = {form_open, form_key, form_scalar, form_close};
    if (b->tree)
        push_form_tree(b, b->tree);
    else if (b24_json_form_walk(b->doc, b->arena, &sink, b) != B24_JSON_OK)
        luaL_error(b->L, "not enough memory to decode the JSON body");
}
