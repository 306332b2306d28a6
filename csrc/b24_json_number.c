/* Numbers as JSON and forms read and write them, in one place: the reader of a number in a
 * scanned body (exact int64 or a correctly rounded double, whatever LC_NUMERIC says), and the
 * writers of integers, doubles and Lua numbers that json_encode, form_encode and form mode share,
 * so a number has one text in every codec, with '.' as its decimal point in any locale. */
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"

typedef unsigned char uchar;

static int is_digit(uchar c)
{
    return c >= '0' && c <= '9';
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

size_t b24_json_format_number(lua_State *L, int idx, char *out)
{
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx))
        return b24_json_format_integer((int64_t)lua_tointeger(L, idx), out);
#endif
    double d = (double)lua_tonumber(L, idx);
    return isfinite(d) ? b24_json_format_double(d, out) : 0;
}
