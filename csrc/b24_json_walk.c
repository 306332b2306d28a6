/* Form mode in plain C: the walk of a scanned body in form_encode's order (object members sorted
 * by key, the last of equal keys winning, null and containers without values left out, scalars
 * as form_encode writes them) into a sink, and the form body itself written through that walk,
 * which form mode re-reads with the form parser when keys hold brackets or NULs. */
#include <stdlib.h>
#include <string.h>

#include "b24.h"

typedef unsigned char uchar;

#define NO_RECORD UINT32_MAX

typedef struct member {
    const char *key;
    uint32_t key_len, value; /* value: its offset */
    uint32_t record;         /* its container record, NO_RECORD when it holds no value */
} member;

typedef struct walker {
    const b24_json_doc *doc;
    b24_arena *arena;
    const b24_json_form_sink *sink;
    void *ctx;
    char *buf;      /* strings with escapes decode here */
    member *stack;  /* the members of the open objects (doc->members at most) */
    size_t members; /* in use */
} walker;

/* The end of the value at p in scanned text (record: its container record, if any) */
static const char *value_end(const walker *w, const char *p, uint32_t record)
{
    if (record != NO_RECORD)
        return w->doc->text + w->doc->containers[record].end;
    if (*p == '"') {
        for (p++; *p != '"'; p++)
            if (*p == '\\')
                p++;
        return p + 1;
    }
    if (*p == '{' || *p == '[') { /* a container without a record: match brackets */
        size_t depth = 0;
        for (;; p++) {
            if (*p == '"') {
                p = value_end(w, p, NO_RECORD) - 1;
            } else if (*p == '{' || *p == '[') {
                depth++;
            } else if ((*p == '}' || *p == ']') && --depth == 0) {
                return p + 1;
            }
        }
    }
    while (*p && !strchr(",]} \t\r\n", *p)) /* a number or a literal */
        p++;
    return p;
}

/* The record of the container at p when it has one (the next in line), else NO_RECORD */
static uint32_t record_at(const walker *w, const char *p, uint32_t *next)
{
    const b24_json_doc *doc = w->doc;
    if ((*p != '{' && *p != '[') || *next >= doc->ncontainers ||
        doc->containers[*next].start != (uint32_t)(p - doc->text))
        return NO_RECORD;
    uint32_t r = *next;
    *next = doc->containers[r].after;
    return r;
}

static int walk_container(walker *w, uint32_t record);

/* The value at p under key (or index): nothing for null and for containers without values */
static int emit(walker *w, const char *p, uint32_t record, const char *key, size_t key_len,
                int64_t index)
{
    const b24_json_form_sink *sink = w->sink;
    char num[32];
    const char *text = num;
    size_t len;
    if (*p == 'n' || ((*p == '{' || *p == '[') && record == NO_RECORD))
        return 0;
    int st = sink->key(w->ctx, key, key_len, index);
    if (st)
        return st;
    switch (*p) {
    case '{':
    case '[':
        return walk_container(w, record);
    case '"':
        text = b24_json_string(p, &p, w->buf, &len);
        break;
    case 't':
    case 'f':
        text = *p == 't' ? "1" : "0";
        len = 1;
        break;
    default: {
        int64_t i;
        double d;
        len = b24_json_number(p, &p, &i, &d) ? b24_json_format_integer(i, num)
                                             : b24_json_format_double(d, num);
        break;
    }
    }
    return sink->scalar(w->ctx, text, len);
}

static int compare_members(const void *a, const void *b)
{
    const member *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return x->value < y->value ? -1 : x->value > y->value; /* equal keys: in body order */
}

static void sort_members(member *m, size_t n)
{
    if (n > 32) {
        qsort(m, n, sizeof *m, compare_members);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        member x = m[i];
        size_t j = i;
        for (; j > 0 && compare_members(&m[j - 1], &x) > 0; j--)
            m[j] = m[j - 1];
        m[j] = x;
    }
}

static int walk_container(walker *w, uint32_t record)
{
    const b24_json_doc *doc = w->doc;
    const b24_json_container *c = &doc->containers[record];
    const char *p = doc->text + c->start;
    int is_array = *p == '[', st = w->sink->open(w->ctx, is_array, c->count);
    uint32_t next = record + 1;
    if (st)
        return st;
    p = b24_json_skip_ws(p + 1);
    if (is_array) {
        for (int64_t i = 0; *p != ']'; i++) {
            uint32_t r = record_at(w, p, &next);
            if ((st = emit(w, p, r, NULL, 0, i)) != 0)
                return st;
            p = b24_json_skip_ws(value_end(w, p, r));
            if (*p == ',')
                p = b24_json_skip_ws(p + 1);
        }
        return w->sink->close(w->ctx);
    }
    /* an object: its members sorted by key as form_encode sorts them, the last of equal keys
     * winning as in any Lua table */
    member *m = w->stack + w->members;
    size_t n = 0;
    w->members += c->count;
    while (*p != '}') {
        size_t len;
        const char *k = b24_json_string(p, &p, w->buf, &len);
        if (k == w->buf) { /* decoded: keep a copy */
            char *copy = b24_arena_alloc(w->arena, len ? len : 1);
            if (copy == NULL)
                return B24_JSON_NO_MEMORY;
            memcpy(copy, k, len);
            k = copy;
        }
        p = b24_json_skip_ws(b24_json_skip_ws(p) + 1);
        m[n].key = k;
        m[n].key_len = (uint32_t)len;
        m[n].value = (uint32_t)(p - doc->text);
        m[n].record = record_at(w, p, &next);
        p = b24_json_skip_ws(value_end(w, p, m[n].record));
        n++;
        if (*p == ',')
            p = b24_json_skip_ws(p + 1);
    }
    sort_members(m, n);
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && m[i].key_len == m[i + 1].key_len &&
            memcmp(m[i].key, m[i + 1].key, m[i].key_len) == 0)
            continue;
        st = emit(w, doc->text + m[i].value, m[i].record, m[i].key, m[i].key_len, -1);
        if (st)
            return st;
    }
    w->members -= c->count;
    return w->sink->close(w->ctx);
}

b24_json_status b24_json_form_walk(const b24_json_doc *doc, b24_arena *arena,
                                   const b24_json_form_sink *sink, void *ctx)
{
    walker w = {doc,
                arena,
                sink,
                ctx,
                b24_arena_alloc(arena, doc->longest_escaped + 1),
                b24_arena_alloc(arena, sizeof(member) * (doc->members ? doc->members : 1)),
                0};
    if (w.buf == NULL || w.stack == NULL)
        return B24_JSON_NO_MEMORY;
    const char *top = b24_json_skip_ws(doc->text);
    if (doc->ncontainers == 0 || doc->containers[0].start != (uint32_t)(top - doc->text)) {
        /* no value anywhere: an empty form */
        int st = sink->open(ctx, *top == '[', 0);
        return (b24_json_status)(st ? st : sink->close(ctx));
    }
    return (b24_json_status)walk_container(&w, 0);
}

/* ---- the form body itself (form mode's exact path for keys with brackets) ------------- */

typedef struct body_writer {
    char *out, *name;
    size_t len, name_len, budget, depth;
    size_t *marks; /* name length at each open container */
} body_writer;

/* Appends s to buf (percent-encoding what would split or re-decode the body) */
static int body_put(body_writer *bw, char *buf, size_t *len, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        uchar c = (uchar)s[i];
        int plain = c != '%' && c != '&' && c != '=' && c != '+' && c != '\0';
        if (*len + (plain ? 1 : 3) > bw->budget)
            return B24_JSON_TOO_LARGE;
        if (plain) {
            buf[(*len)++] = (char)c;
        } else {
            buf[(*len)++] = '%';
            buf[(*len)++] = hex[c >> 4];
            buf[(*len)++] = hex[c & 15];
        }
    }
    return 0;
}

static int body_open(void *ctx, int is_array, size_t count)
{
    body_writer *bw = ctx;
    bw->marks[++bw->depth] = bw->name_len;
    return 0;
}

static int body_key(void *ctx, const char *key, size_t len, int64_t index)
{
    body_writer *bw = ctx;
    char num[24];
    if (key == NULL) {
        len = b24_json_format_integer(index, num);
        key = num;
    }
    bw->name_len = bw->marks[bw->depth];
    if (bw->depth > 1) {
        if (bw->name_len + 1 > bw->budget)
            return B24_JSON_TOO_LARGE;
        bw->name[bw->name_len++] = '[';
    }
    int st = body_put(bw, bw->name, &bw->name_len, key, len);
    if (st || bw->depth <= 1)
        return st;
    if (bw->name_len + 1 > bw->budget)
        return B24_JSON_TOO_LARGE;
    bw->name[bw->name_len++] = ']';
    return 0;
}

static int body_scalar(void *ctx, const char *text, size_t len)
{
    body_writer *bw = ctx;
    if (bw->len + bw->name_len + 2 > bw->budget)
        return B24_JSON_TOO_LARGE;
    if (bw->len)
        bw->out[bw->len++] = '&';
    memcpy(bw->out + bw->len, bw->name, bw->name_len);
    bw->len += bw->name_len;
    bw->out[bw->len++] = '=';
    return body_put(bw, bw->out, &bw->len, text, len);
}

static int body_close(void *ctx)
{
    body_writer *bw = ctx;
    bw->depth--;
    return 0;
}

b24_json_status b24_json_form_body(const b24_json_doc *doc, b24_arena *arena, size_t budget,
                                   char **body, size_t *len)
{
    static const b24_json_form_sink sink = {body_open, body_key, body_scalar, body_close};
    body_writer bw = {b24_arena_alloc(arena, budget + 1),
                      b24_arena_alloc(arena, budget + 1),
                      0,
                      0,
                      budget,
                      0,
                      b24_arena_alloc(arena, sizeof(size_t) * (doc->depth + 2))};
    if (bw.out == NULL || bw.name == NULL || bw.marks == NULL)
        return B24_JSON_NO_MEMORY;
    b24_json_status st = b24_json_form_walk(doc, arena, &sink, &bw);
    bw.out[bw.len] = '\0';
    *body = bw.out;
    *len = bw.len;
    return st;
}
