/* Structured logs on stderr: one write(2) per line, so lines from threads never interleave.
 * Every value passes through b24_mask: a webhook code or a token must never reach a log. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "b24_host.h"

static int json_format = 0;
static b24_level min_level = B24_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

int b24_log_configure(const char *format, const char *level)
{
    if (format) {
        if (strcmp(format, "json") == 0)
            json_format = 1;
        else if (strcmp(format, "logfmt") == 0)
            json_format = 0;
        else
            return -1;
    }
    if (level) {
        int found = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(level, level_names[i]) == 0)
                found = i;
        if (found < 0)
            return -1;
        min_level = (b24_level)found;
    }
    return 0;
}

int b24_log_enabled(b24_level level)
{
    return level >= min_level;
}

/* ---- masking -------------------------------------------------------------------------------- */

static int is_value_char(unsigned char c)
{
    return isalnum(c) || c == '_' || c == '-' || c == '.' || c == '~' || c == '+' || c == '/' ||
           c == '=' || c == '%';
}

/* Key words after which a value is a secret: application_token=…, "access_token":"…", … */
static const char *const secret_keys[] = {"token", "secret", "password", "signature", "whsec_",
                                          "bearer ", "authorization", NULL};

size_t b24_mask(const char *s, size_t len, char *out, size_t n)
{
    size_t o = 0;
    if (n == 0)
        return 0;
/* ch is evaluated once, whether or not it still fits (PUT(s[i++]) must always advance) */
#define PUT(ch)                                                                                   \
    do {                                                                                          \
        char put_ = (ch);                                                                         \
        if (o + 1 < n)                                                                            \
            out[o++] = put_;                                                                      \
    } while (0)
    for (size_t i = 0; i < len && o + 1 < n;) { /* stops once out is full */
        /* /rest/<user id>/<code>/ : the incoming-webhook secret */
        if (len - i > 6 && memcmp(s + i, "/rest/", 6) == 0) {
            size_t j = i + 6;
            while (j < len && isdigit((unsigned char)s[j]))
                j++;
            if (j > i + 6 && j < len && s[j] == '/') {
                size_t k = j + 1;
                /* codes are alphanumeric; - and _ too, so no part of an odd one shows */
                while (k < len && (isalnum((unsigned char)s[k]) || s[k] == '_' || s[k] == '-'))
                    k++;
                if (k > j + 1) {
                    for (size_t x = i; x <= j; x++)
                        PUT(s[x]);
                    for (int star = 0; star < 3; star++)
                        PUT('*');
                    i = k;
                    continue;
                }
            }
        }
        int masked = 0;
        unsigned char lc = (unsigned char)(s[i] | 0x20);
        if (lc != 't' && lc != 's' && lc != 'p' && lc != 'w' && lc != 'b' && lc != 'a') {
            PUT(s[i++]); /* no key word starts here */
            continue;
        }
        for (const char *const *key = secret_keys; *key && !masked; key++) {
            size_t kl = strlen(*key);
            if (len - i < kl || strncasecmp(s + i, *key, kl) != 0)
                continue;
            size_t j = i + kl;
            /* skip what joins a key to its value: ]"': = spaces, %5D %3D %22 */
            int assigned = 0; /* a space joins only after ':' or '=' ("key": "value") */
            while (j < len) {
                if (s[j] == ':' || s[j] == '=') {
                    assigned = 1;
                    j++;
                } else if (s[j] == ']' || s[j] == '"' || s[j] == '\'' || (s[j] == ' ' && assigned))
                    j++;
                else if (len - j >= 3 && s[j] == '%' &&
                         (strncasecmp(s + j, "%5D", 3) == 0 || strncasecmp(s + j, "%3D", 3) == 0 ||
                          strncasecmp(s + j, "%22", 3) == 0))
                    j += 3;
                else
                    break;
            }
            size_t k = j;
            while (k < len && is_value_char((unsigned char)s[k]) && s[k] != '"')
                k++;
            /* a value of at least 4 characters right after the key: hide it */
            if (k - j >= 4 && (j > i + kl || (*key)[kl - 1] == '_' || (*key)[kl - 1] == ' ')) {
                for (size_t x = i; x < j; x++)
                    PUT(s[x]);
                for (int star = 0; star < 3; star++)
                        PUT('*');
                i = k;
                masked = 1;
            }
        }
        if (!masked)
            PUT(s[i++]);
    }
#undef PUT
    out[o] = '\0';
    return o;
}

/* ---- lines ---------------------------------------------------------------------------------- */

typedef struct line {
    char buf[8192];
    size_t len;
} line;

static void add(line *l, const char *s, size_t n)
{
    if (n > sizeof l->buf - 2 - l->len)
        n = sizeof l->buf - 2 - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void add_str(line *l, const char *s)
{
    add(l, s, strlen(s));
}

/* Fields the host fills with its own numbers and names; everything else is masked. */
static int trusted(const char *key)
{
    static const char *const keys[] = {"time", "level", "status", "duration_ms", "bytes_in",
                                       "remote", "method", "workers", "address", "version",
                                       "in_flight", "unfinished", NULL};
    for (const char *const *k = keys; *k; k++)
        if (strcmp(*k, key) == 0)
            return 1;
    return 0;
}

static void add_value(line *l, const char *v, int mask)
{
    char masked[4096];
    size_t n;
    if (mask) {
        n = b24_mask(v, strlen(v), masked, sizeof masked);
    } else {
        n = strlen(v);
        if (n >= sizeof masked)
            n = sizeof masked - 1;
        memcpy(masked, v, n);
    }
    int quote = n == 0;
    for (size_t i = 0; i < n && !quote; i++)
        quote = masked[i] == ' ' || masked[i] == '"' || masked[i] == '=' || masked[i] == '\\' ||
                (unsigned char)masked[i] < 0x20;
    if (!json_format && !quote) {
        add(l, masked, n);
        return;
    }
    add(l, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)masked[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            add(l, esc, 2);
        } else if (c == '\n') {
            add(l, "\\n", 2);
        } else if (c == '\t') {
            add(l, "\\t", 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            add(l, esc, 6);
        } else {
            add(l, (const char *)&c, 1);
        }
    }
    add(l, "\"", 1);
}

static void add_field(line *l, const char *key, const char *value, int first)
{
    if (json_format) {
        if (!first)
            add(l, ",", 1);
        add(l, "\"", 1);
        add_str(l, key);
        add(l, "\":", 2);
        add_value(l, value, !trusted(key));
    } else {
        if (!first)
            add(l, " ", 1);
        add_str(l, key);
        add(l, "=", 1);
        add_value(l, value, !trusted(key));
    }
}

void b24_log(b24_level level, const char *msg, ...)
{
    if (level < min_level)
        return;
    line l;
    l.len = 0;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    /* the date and time to the second change once a second: formatted once per thread */
    static __thread time_t cached_sec = -1;
    static __thread char cached[64];
    if (tv.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        cached_sec = tv.tv_sec;
    }
    char ts[80];
    int ms = (int)(tv.tv_usec / 1000);
    size_t tl = strlen(cached);
    memcpy(ts, cached, tl);
    ts[tl] = '.';
    ts[tl + 1] = (char)('0' + ms / 100);
    ts[tl + 2] = (char)('0' + ms / 10 % 10);
    ts[tl + 3] = (char)('0' + ms % 10);
    ts[tl + 4] = 'Z';
    ts[tl + 5] = '\0';
    if (json_format)
        add(&l, "{", 1);
    add_field(&l, "time", ts, 1);
    add_field(&l, "level", level_names[level], 0);
    add_field(&l, "msg", msg, 0);
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (k == NULL)
            break;
        const char *v = va_arg(ap, const char *);
        add_field(&l, k, v ? v : "", 0);
    }
    va_end(ap);
    if (json_format)
        l.buf[l.len++] = '}';
    l.buf[l.len++] = '\n';
    ssize_t w = write(2, l.buf, l.len);
    (void)w;
}
