/* The JSON scan in plain C: checks a whole body against RFC 8259 (UTF-8 included) and applies
 * the limits before anything is built, and records what building needs (a count per container
 * in plain mode; in form mode the containers holding values, with their extents, and whether a
 * key would read as brackets to parse_str). Strings and numbers are read by b24_json_string.c
 * and b24_json_number.c, the form walk is b24_json_walk.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"

typedef unsigned char uchar;

/* What a byte inside a string asks of a scanner, as a digit: 0 nothing (PLAIN), 1 '"', 2 '\\',
 * 3 a control character, 4 the start of UTF-8 to check */
enum { PLAIN = '0', QUOTE, BACKSLASH, CONTROL, HIGH };
static const char STRING_CLASS[257] = "3333333333333333"  /* 0x00 */
                                      "3333333333333333"  /* 0x10 */
                                      "0010000000000000"  /* 0x20 */
                                      "0000000000000000"  /* 0x30 */
                                      "0000000000000000"  /* 0x40 */
                                      "0000000000002000"  /* 0x50 */
                                      "0000000000000000"  /* 0x60 */
                                      "0000000000000000"  /* 0x70 */
                                      "4444444444444444"  /* 0x80 */
                                      "4444444444444444"  /* 0x90 */
                                      "4444444444444444"  /* 0xa0 */
                                      "4444444444444444"  /* 0xb0 */
                                      "4444444444444444"  /* 0xc0 */
                                      "4444444444444444"  /* 0xd0 */
                                      "4444444444444444"  /* 0xe0 */
                                      "4444444444444444"; /* 0xf0 */

static int is_digit(uchar c)
{
    return c >= '0' && c <= '9';
}

static const uchar *skip_ws(const uchar *p, const uchar *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

typedef struct frame {
    uint32_t record, count;
    size_t members; /* form mode: the most members open at once below it */
    uchar object, live;
} frame;

typedef struct scanner {
    const uchar *text, *end;
    const b24_json_limits *limits;
    b24_json_doc *doc;
} scanner;

static b24_json_status malformed(scanner *sc, const uchar *at, const char *why)
{
    sc->doc->offset = (size_t)(at - sc->text);
    sc->doc->why = why;
    return B24_JSON_MALFORMED;
}

/* A decoded key as parse_str would meet it inside a name: whether form_decode could read it
 * as anything but itself ('[' in a top-level name, ']' in an index, a NUL, an empty or
 * one-whitespace index that appends, leading spaces that a top-level name loses). */
static int unclean_key(const uchar *p, const uchar *end, int top)
{
    size_t len = 0;
    uchar first = 0;
    while (p < end) {
        unsigned long b = *p;
        if (b == '\\') {
            b = b24_json_escape(&p);
            if (b >= 0x80)
                b = 0x80; /* a multi-byte character: none of the bytes below */
        } else {
            p++;
        }
        if (len++ == 0)
            first = (uchar)b;
        if (b == 0 || (top && b == '[') || (!top && b == ']'))
            return 1;
    }
    if (len == 0)
        return 1;
    if (top)
        return first == ' ';
    return len == 1 && (first == ' ' || (first >= '\t' && first <= '\r'));
}

/* Checks the string whose quote is at *pp and moves *pp past it; key: 1 for an object key,
 * 2 for a key of the top-level object (form mode looks at keys). */
static b24_json_status scan_string(scanner *sc, const uchar **pp, int key)
{
    const uchar *start = *pp, *p = start + 1, *end = sc->end;
    int escaped = 0;
    for (;;) {
        while (p < end && STRING_CLASS[*p] == PLAIN)
            p++;
        if (p == end)
            return malformed(sc, start, "unterminated string");
        uchar c = *p;
        if (c == '"')
            break;
        if (c == '\\') {
            escaped = 1;
            if (end - p < 2)
                return malformed(sc, start, "unterminated string");
            if (p[1] != 'u') {
                if (!strchr("\"\\/bfnrt", p[1]) || p[1] == '\0')
                    return malformed(sc, p, "unknown escape");
                p += 2;
                continue;
            }
            long cp = b24_json_hex4(p + 2, end);
            if (cp < 0)
                return malformed(sc, p, "\\u needs four hex digits");
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return malformed(sc, p, "\\u escape of a lone low surrogate");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                long lo =
                    end - p >= 12 && p[6] == '\\' && p[7] == 'u' ? b24_json_hex4(p + 8, end) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return malformed(sc, p, "\\u escape of a high surrogate without its pair");
                p += 12;
            } else {
                p += 6;
            }
            continue;
        }
        if (c < 0x20)
            return malformed(sc, p, "control character in a string");
        size_t n = c >= 0xC2 && c < 0xE0 && end - p >= 2 && (p[1] & 0xC0) == 0x80
                       ? 2 /* most non-ASCII text: Cyrillic, Latin accents */
                       : b24_json_utf8_length(p, end);
        if (n == 0)
            return malformed(sc, p, "invalid UTF-8 in a string");
        p += n;
    }
    size_t raw = (size_t)(p - start - 1);
    if (escaped && raw > sc->doc->longest_escaped)
        sc->doc->longest_escaped = raw;
    if (key && sc->doc->form && !sc->doc->unclean_keys)
        sc->doc->unclean_keys = unclean_key(start + 1, p, key == 2);
    *pp = p + 1;
    return B24_JSON_OK;
}

static b24_json_status scan_number(scanner *sc, const uchar **pp)
{
    const uchar *start = *pp, *p = start, *end = sc->end;
    if (*p == '-')
        p++;
    if (p == end || !is_digit(*p))
        return malformed(sc, start, "invalid number");
    const uchar *digits = p;
    if (*p == '0')
        p++;
    else
        while (p < end && is_digit(*p))
            p++;
    int big = p - digits > 300, exponent = 0;
    if (p < end && *p == '.') {
        p++;
        if (p == end || !is_digit(*p))
            return malformed(sc, start, "invalid number");
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        exponent = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p == end || !is_digit(*p))
            return malformed(sc, start, "invalid number");
        while (p < end && is_digit(*p))
            p++;
    }
    if (exponent || big) { /* only these can overflow a double */
        int64_t i;
        double d;
        const char *next;
        if (!b24_json_number((const char *)start, &next, &i, &d) && isinf(d))
            return malformed(sc, start, "number out of range");
    }
    *pp = p;
    return B24_JSON_OK;
}

static b24_json_status open_container(scanner *sc, frame *f, const uchar *p)
{
    b24_json_doc *doc = sc->doc;
    size_t size = doc->form ? sizeof *doc->containers : sizeof *doc->counts;
    if (doc->records_size / size <= doc->ncontainers) { /* realloc: no dead copies behind */
        size_t bytes = doc->records_size > 64 * size ? doc->records_size * 2 : 128 * size;
        void *r = realloc(doc->records, bytes);
        if (r == NULL)
            return B24_JSON_NO_MEMORY;
        doc->records = r;
        doc->records_size = bytes;
    }
    doc->counts = doc->records;
    doc->containers = doc->records;
    f->record = (uint32_t)doc->ncontainers++;
    f->count = 0;
    f->members = 0;
    f->object = *p == '{';
    f->live = 0;
    if (doc->form)
        doc->containers[f->record].start = (uint32_t)(p - sc->text);
    return B24_JSON_OK;
}

/* one more member or element for f */
static b24_json_status count_pair(scanner *sc, frame *f)
{
    f->count++;
    if (!sc->doc->form && ++sc->doc->pairs > sc->limits->max_pairs)
        return B24_JSON_TOO_MANY;
    return B24_JSON_OK;
}

/* after '{' or ',' in an object: the key, the ':' and the space before the value */
static b24_json_status scan_key(scanner *sc, frame *f, const uchar **pp, int top)
{
    const uchar *p = *pp;
    if (p == sc->end || *p != '"')
        return malformed(sc, p, "expected a string key");
    b24_json_status st = scan_string(sc, &p, top ? 2 : 1);
    if (st != B24_JSON_OK)
        return st;
    p = skip_ws(p, sc->end);
    if (p == sc->end || *p != ':')
        return malformed(sc, p, "expected ':'");
    *pp = skip_ws(p + 1, sc->end);
    return count_pair(sc, f);
}

#define CHECK_STATUS(expr)                                                                         \
    do {                                                                                           \
        b24_json_status st_ = (expr);                                                              \
        if (st_ != B24_JSON_OK)                                                                    \
            return st_;                                                                            \
    } while (0)

b24_json_status b24_json_scan(const char *text, size_t len, const b24_json_limits *limits, int form,
                              b24_arena *arena, b24_json_doc *doc)
{
    void *records = doc->records;
    size_t records_size = doc->records_size;
    memset(doc, 0, sizeof *doc);
    doc->records = records;
    doc->records_size = records_size;
    doc->text = text;
    doc->len = len;
    doc->form = form;
    if (len > limits->max_size || len >= UINT32_MAX)
        return B24_JSON_TOO_LARGE;
    /* form_decode counts brackets: the top-level container has none */
    size_t max_depth = limits->max_depth + (form ? 1 : 0), depth = 0;
    frame *stack = b24_arena_alloc(arena, sizeof *stack * (max_depth + 1));
    if (stack == NULL)
        return B24_JSON_NO_MEMORY;
    scanner sc = {(const uchar *)text, (const uchar *)text + len, limits, doc};
    const uchar *p = skip_ws(sc.text, sc.end), *end = sc.end;
    if (form && (p == end || (*p != '{' && *p != '[')))
        return malformed(&sc, p, "a form body must be a JSON object or array");

    for (;;) {
        /* a value starts at p */
        if (p == end)
            return malformed(&sc, p, "unexpected end of input");
        int closing = 0, leaf = 1;
        switch (*p) {
        case '{':
        case '[': {
            if (depth == max_depth)
                return B24_JSON_TOO_DEEP;
            CHECK_STATUS(open_container(&sc, &stack[depth], p));
            frame *f = &stack[depth++];
            if (depth > doc->depth)
                doc->depth = depth;
            p = skip_ws(p + 1, end);
            if (p < end && *p == (f->object ? '}' : ']')) {
                closing = 1;
                break;
            }
            if (f->object)
                CHECK_STATUS(scan_key(&sc, f, &p, depth == 1));
            else
                CHECK_STATUS(count_pair(&sc, f));
            continue;
        }
        case '"':
            CHECK_STATUS(scan_string(&sc, &p, 0));
            break;
        case 't':
        case 'f':
        case 'n': {
            const char *word = *p == 't' ? "true" : *p == 'f' ? "false" : "null";
            size_t n = strlen(word);
            if ((size_t)(end - p) < n || memcmp(p, word, n) != 0)
                return malformed(&sc, p, "expected a value");
            leaf = *p != 'n';
            p += n;
            break;
        }
        default:
            if (*p != '-' && !is_digit(*p))
                return malformed(&sc, p, "expected a value");
            CHECK_STATUS(scan_number(&sc, &p));
            break;
        }
        if (form && !closing && leaf) {
            if (++doc->pairs > limits->max_pairs)
                return B24_JSON_TOO_MANY;
            stack[depth - 1].live = 1;
        }

        /* after a value: close the containers whose brackets follow, then a ',' or the end */
        for (;;) {
            if (closing) {
                frame *f = &stack[--depth];
                if (!form) {
                    doc->counts[f->record] = f->count;
                } else if (!f->live) { /* nothing below it becomes a form field: no records */
                    doc->ncontainers = f->record;
                } else {
                    b24_json_container *r = &doc->containers[f->record];
                    r->end = (uint32_t)(p + 1 - sc.text);
                    r->count = f->count;
                    r->after = (uint32_t)doc->ncontainers;
                    size_t members = f->members + (f->object ? f->count : 0);
                    if (depth == 0)
                        doc->members = members;
                    else if (members > stack[depth - 1].members)
                        stack[depth - 1].members = members;
                    if (depth > 0)
                        stack[depth - 1].live = 1;
                }
                p++;
                closing = 0;
            }
            p = skip_ws(p, end);
            if (depth == 0) {
                if (p != end)
                    return malformed(&sc, p, "trailing data after the value");
                return B24_JSON_OK;
            }
            frame *f = &stack[depth - 1];
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                if (f->object)
                    CHECK_STATUS(scan_key(&sc, f, &p, depth == 1));
                else
                    CHECK_STATUS(count_pair(&sc, f));
                break;
            }
            if (p < end && *p == (f->object ? '}' : ']')) {
                closing = 1;
                continue;
            }
            return malformed(&sc, p, f->object ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
}
