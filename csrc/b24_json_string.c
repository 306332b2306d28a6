/* JSON strings in plain C: the UTF-8 check (which the scan and the encoder share) and the reader
 * that gives a string of a scanned body its bytes, in place when it holds no escape, else decoded
 * through b24_json_escape (inline in b24.h, as the scan checks escapes with the same pieces). */
#include <string.h>

#include "b24.h"

typedef unsigned char uchar;

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
            o += put_utf8(b24_json_escape(&q), o);
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
