/* JSON (RFC 8259) in plain C: the scan that validates a body and applies the limits before
 * anything is built, the readers of strings and numbers for text the scan accepted, number
 * text, and the walk of a body in form_encode's order (form mode). */
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"

typedef unsigned char uchar;

#define NO_RECORD UINT32_MAX

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

size_t b24_json_utf8_length(const uchar *p, const uchar *end)
{
    uchar c = p[0];
    if (c < 0x80)
        return 1;
    if (c < 0xC2) /* a continuation byte, or an overlong two-byte form */
        return 0;
    if (c < 0xE0)
        return end - p >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c < 0xF0) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0)) /* overlong, surrogate */
            return 0;
        return 3;
    }
    if (c < 0xF5) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90)) /* overlong, > U+10FFFF */
            return 0;
        return 4;
    }
    return 0;
}

/* The four hex digits at p (before end), or -1 */
static inline long hex4(const uchar *p, const uchar *end)
{
    if (end - p < 4)
        return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned digit = p[i] - (unsigned)'0', letter = (p[i] | 0x20u) - (unsigned)'a';
        if (digit < 10)
            v = v << 4 | (long)digit;
        else if (letter < 6)
            v = v << 4 | (long)(letter + 10);
        else
            return -1;
    }
    return v;
}

/* UTF-8 of cp into out; returns the length */
static inline size_t put_utf8(unsigned long cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The escape at p (a backslash, already checked): its code point, and *p moved past it */
static inline unsigned long read_escape(const uchar **p)
{
    const uchar *q = *p;
    if (q[1] == 'u') {
        unsigned long cp = (unsigned long)hex4(q + 2, q + 6);
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* the scan checked that a low surrogate follows */
            unsigned long lo = (unsigned long)hex4(q + 8, q + 12);
            *p = q + 12;
            return 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        *p = q + 6;
        return cp;
    }
    switch (q[1]) {
    case 'b':
        *p = q + 2;
        return '\b';
    case 'f':
        *p = q + 2;
        return '\f';
    case 'n':
        *p = q + 2;
        return '\n';
    case 'r':
        *p = q + 2;
        return '\r';
    case 't':
        *p = q + 2;
        return '\t';
    default: /* '"', '\\', '/' */
        *p = q + 2;
        return q[1];
    }
}

const char *b24_json_string(const char *p, const char **next, char *buf, size_t *len)
{
    const uchar *start = (const uchar *)p + 1, *q = start;
    while (*q != '"' && *q != '\\') /* the scan found the closing quote */
        q++;
    if (*q == '"') {
        *len = (size_t)(q - start);
        *next = (const char *)q + 1;
        return (const char *)start;
    }
    char *o = buf;
    memcpy(o, start, (size_t)(q - start));
    o += q - start;
    for (;;) {
        if (*q == '"')
            break;
        if (*q == '\\') {
            o += put_utf8(read_escape(&q), o);
            continue;
        }
        const uchar *run = q;
        while (*q != '"' && *q != '\\')
            q++;
        memcpy(o, run, (size_t)(q - run));
        o += q - run;
    }
    *len = (size_t)(o - buf);
    *next = (const char *)q + 1;
    return buf;
}

/* strtod in the C locale whatever LC_NUMERIC says, as Lua's own tonumber does */
static double parse_double(const char *s)
{
    const char *point = localeconv()->decimal_point;
    if (point[0] == '.' && point[1] == '\0')
        return strtod(s, NULL);
    locale_t c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (c == (locale_t)0)
        return strtod(s, NULL);
    locale_t old = uselocale(c);
    double d = strtod(s, NULL);
    uselocale(old);
    freelocale(c);
    return d;
}

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

int b24_json_number(const char *s, const char **next, int64_t *iv, double *dv)
{
    const uchar *p = (const uchar *)s;
    int neg = *p == '-';
    p += neg;
    uint64_t m = 0;
    int held = 0, exact = 1, fraction = 0;
    long exp10 = 0;
    for (; is_digit(*p); p++) {
        if (m == 0 && *p == '0')
            continue;
        if (held < 19) {
            m = m * 10 + (uint64_t)(*p - '0');
            held++;
        } else {
            exact = 0;
            exp10++;
        }
    }
    if (*p == '.') {
        fraction = 1;
        for (p++; is_digit(*p); p++) {
            if (held < 19 && (m != 0 || *p != '0')) {
                m = m * 10 + (uint64_t)(*p - '0');
                held++;
                exp10--;
            } else if (m == 0) {
                exp10--; /* a leading zero of the fraction */
            } else if (*p != '0') {
                exact = 0;
            }
        }
    }
    if (*p == 'e' || *p == 'E') {
        fraction = 1;
        p++;
        int eneg = *p == '-';
        if (*p == '-' || *p == '+')
            p++;
        long e = 0;
        for (; is_digit(*p); p++)
            if (e < 100000)
                e = e * 10 + (*p - '0');
        exp10 += eneg ? -e : e;
    }
    *next = (const char *)p;
    if (!fraction && exact && m <= (uint64_t)INT64_MAX + (uint64_t)neg) {
        *iv = !neg ? (int64_t)m : m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m;
        return 1;
    }
    if (m == 0) {
        *dv = neg ? -0.0 : 0.0;
    } else if (exact && m <= (UINT64_C(1) << 53) && exp10 >= -22 && exp10 <= 22) {
        /* both operands exact, one rounding: correctly rounded (Clinger's fast path) */
        double d = (double)m;
        d = exp10 < 0 ? d / POW10[-exp10] : d * POW10[exp10];
        *dv = neg ? -d : d;
    } else {
        *dv = parse_double(s);
    }
    return 0;
}

size_t b24_json_format_integer(int64_t v, char *out)
{
    static const char pairs[] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    char tmp[24];
    size_t n = 0, len = 0;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    while (u >= 100) {
        unsigned d = (unsigned)(u % 100) * 2;
        u /= 100;
        tmp[n++] = pairs[d + 1];
        tmp[n++] = pairs[d];
    }
    if (u >= 10) {
        tmp[n++] = pairs[u * 2 + 1];
        tmp[n++] = pairs[u * 2];
    } else {
        tmp[n++] = (char)('0' + u);
    }
    if (v < 0)
        out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    return len;
}

/* %g writes the locale's decimal point: make it '.' (it may be more than one byte) */
static size_t c_decimal_point(char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (is_digit((uchar)s[i]) || s[i] == '-' || s[i] == '+' || s[i] == 'e')
            continue;
        size_t j = i;
        while (j < n && !is_digit((uchar)s[j]))
            j++;
        s[i] = '.';
        memmove(s + i + 1, s + j, n - j + 1);
        return n - (j - i - 1);
    }
    return n;
}

size_t b24_json_format_double(double d, char *out)
{
    if (d == floor(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0)
        return b24_json_format_integer((int64_t)d, out);
    size_t n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = c_decimal_point(out, (size_t)snprintf(out, 32, "%.*g", prec, d));
        int64_t i;
        double back;
        const char *next;
        if (!b24_json_number(out, &next, &i, &back) && back == d) /* has '.' or 'e': a double */
            break;
    }
    return n;
}

/* ---- the scan ------------------------------------------------------------------------------ */

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
            b = read_escape(&p);
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
            long cp = hex4(p + 2, end);
            if (cp < 0)
                return malformed(sc, p, "\\u needs four hex digits");
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return malformed(sc, p, "\\u escape of a lone low surrogate");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                long lo = end - p >= 12 && p[6] == '\\' && p[7] == 'u' ? hex4(p + 8, end) : -1;
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

/* ---- form mode: the body in form_encode's order ---------------------------------------- */

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

static const char *ws(const char *p)
{
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
        p++;
    return p;
}

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
    p = ws(p + 1);
    if (is_array) {
        for (int64_t i = 0; *p != ']'; i++) {
            uint32_t r = record_at(w, p, &next);
            if ((st = emit(w, p, r, NULL, 0, i)) != 0)
                return st;
            p = ws(value_end(w, p, r));
            if (*p == ',')
                p = ws(p + 1);
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
        p = ws(ws(p) + 1);
        m[n].key = k;
        m[n].key_len = (uint32_t)len;
        m[n].value = (uint32_t)(p - doc->text);
        m[n].record = record_at(w, p, &next);
        p = ws(value_end(w, p, m[n].record));
        n++;
        if (*p == ',')
            p = ws(p + 1);
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
    const char *top = ws(doc->text);
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
