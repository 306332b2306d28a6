/* One rule for secrets and one writer for log lines, shared by every part of the project: the
 * library (core.mask, core.log_line), the b24 program (its C logger) and the emulator. A log
 * line is logfmt or JSON, its values masked: a webhook code or a token must never reach a log. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include "b24.h"

/* ---- masking -------------------------------------------------------------------------------- */

static int is_value_char(unsigned char c)
{
    return isalnum(c) || c == '_' || c == '-' || c == '.' || c == '~' || c == '+' || c == '/' ||
           c == '=' || c == '%';
}

/* Key words after which a value is a secret: application_token=…, "access_token":"…", … */
static const char *const secret_keys[] = {"token",  "secret",  "password",      "signature",
                                          "whsec_", "bearer ", "authorization", NULL};

size_t b24_mask(const char *s, size_t len, char *out, size_t n)
{
    size_t o = 0;
    if (n == 0)
        return 0;
/* ch is evaluated once, whether or not it still fits (PUT(s[i++]) must always advance) */
#define PUT(ch)                                                                                    \
    do {                                                                                           \
        char put_ = (ch);                                                                          \
        if (o + 1 < n)                                                                             \
            out[o++] = put_;                                                                       \
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

/* Room kept at the end of a line for what closes it: '"' of a cut string, '}' and '\n'. */
#define CLOSING 3

/* Appends n bytes, or nothing and marks the line full when they do not fit: a line is cut
 * between whole pieces (an escape is one piece), never inside one. */
static int add(b24_logline *l, const char *s, size_t n)
{
    if (l->full || l->len + n + CLOSING > sizeof l->buf) {
        l->full = 1;
        return 0;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    return 1;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 when it is not one. */
static size_t utf8_length(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2, cp = s[0] & 0x1f;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3, cp = s[0] & 0x0f;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4, cp = s[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    /* overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8 */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* A quoted string: JSON escapes, and a byte that is no part of valid UTF-8 written as the
 * text \xNN, so a JSON line is always valid JSON. When the line fills up, the string is
 * closed where it was cut. */
static void add_quoted(b24_logline *l, const char *v, size_t n)
{
    if (!add(l, "\"", 1))
        return;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)v[i];
        char esc[8];
        size_t step = 1;
        int ok;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            ok = add(l, esc, 2);
        } else if (c == '\n') {
            ok = add(l, "\\n", 2);
        } else if (c == '\t') {
            ok = add(l, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            ok = add(l, esc, 6);
        } else if (c < 0x80) {
            ok = add(l, v + i, 1);
        } else if ((step = utf8_length((const unsigned char *)v + i, n - i)) > 0) {
            ok = add(l, v + i, step);
        } else {
            step = 1;
            snprintf(esc, sizeof esc, "\\\\x%02x", c);
            ok = add(l, esc, 5);
        }
        if (!ok)
            break;
        i += step;
    }
    /* CLOSING keeps room for this quote even on a full line */
    l->buf[l->len++] = '"';
}

/* A key as a bare word: what is not a letter, digit, '_', '.' or '-' becomes '_'. */
static void add_key(b24_logline *l, const char *key)
{
    char clean[128];
    size_t n = 0;
    for (; n < sizeof clean && key[n]; n++) {
        unsigned char c = (unsigned char)key[n];
        clean[n] = (char)(isalnum(c) || c == '_' || c == '.' || c == '-' ? c : '_');
    }
    add(l, clean, n);
}

/* Fields a host fills with its own numbers and names; every other value is masked. */
static int trusted(const char *key)
{
    static const char *const keys[] = {
        "time",    "level",   "status",  "duration_ms", "bytes_in",   "remote", "method",
        "workers", "address", "version", "in_flight",   "unfinished", NULL};
    for (const char *const *k = keys; *k; k++)
        if (strcmp(*k, key) == 0)
            return 1;
    return 0;
}

static void add_value(b24_logline *l, const char *v, size_t len, int mask)
{
    char masked[4096];
    size_t n;
    if (mask) {
        n = b24_mask(v, len, masked, sizeof masked);
    } else {
        n = len < sizeof masked ? len : sizeof masked - 1;
        memcpy(masked, v, n);
    }
    int quote = l->json || n == 0;
    for (size_t i = 0; i < n && !quote; i++)
        quote = masked[i] == ' ' || masked[i] == '"' || masked[i] == '=' || masked[i] == '\\' ||
                (unsigned char)masked[i] < 0x20 || masked[i] == 0x7f;
    if (quote)
        add_quoted(l, masked, n);
    else
        add(l, masked, n);
}

/* A field named like a secret (app_token, client_secret, …) is hidden whole. One pass over the
 * key, comparing a word only where its first letter is: strcasestr per word (five a field, nine
 * fields a request line) was a visible part of a logged request's cost (docs/performance.md). */
static int secret_key(const char *key)
{
    static const char *const words[] = {"token",     "secret",        "password",
                                        "signature", "authorization", NULL};
    static const size_t lens[] = {5, 6, 8, 9, 13};
    for (const char *p = key; *p; p++) {
        char c = (char)tolower((unsigned char)*p);
        if (c != 't' && c != 's' && c != 'p' && c != 'a')
            continue;
        for (int i = 0; words[i]; i++)
            if (words[i][0] == c && strncasecmp(p, words[i], lens[i]) == 0)
                return 1;
    }
    return 0;
}

void b24_logline_field(b24_logline *l, const char *key, const char *value, size_t len)
{
    if (len > 0 && secret_key(key)) {
        value = "***";
        len = 3;
    }
    /* a field goes whole or not at all: the key only with room for an empty value after it */
    size_t keylen = strlen(key);
    if (l->full || l->len + keylen + 8 + CLOSING > sizeof l->buf) {
        l->full = 1;
        return;
    }
    int first = l->fields++ == 0;
    if (l->json) {
        add(l, first ? "\"" : ",\"", first ? 1 : 2);
        add_key(l, key);
        add(l, "\":", 2);
    } else {
        if (!first)
            add(l, " ", 1);
        add_key(l, key);
        add(l, "=", 1);
    }
    add_value(l, value, len, !trusted(key));
}

void b24_logline_begin(b24_logline *l, int json, const char *level, const char *msg)
{
    l->len = 0;
    l->fields = 0;
    l->full = 0;
    l->json = json;
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
    if (json)
        add(l, "{", 1);
    b24_logline_field(l, "time", ts, tl + 5);
    b24_logline_field(l, "level", level, strlen(level));
    b24_logline_field(l, "msg", msg, strlen(msg));
}

void b24_logline_end(b24_logline *l)
{
    if (l->json)
        l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
}

/* ---- Lua ------------------------------------------------------------------------------------ */

/* mask(s) -> s with webhook codes, tokens and secrets replaced by "***" */
static int l_mask(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    /* a mask puts "***" for at least one byte, at most once per four bytes of input */
    size_t cap = len + 3 * (len / 4 + 1) + 1;
    char *out = lua_newuserdata(L, cap);
    size_t n = b24_mask(s, len, out, cap);
    lua_pushlstring(L, out, n);
    return 1;
}

/* Pushes the text of the value at idx as tostring would give it. */
static const char *push_text(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
    case LUA_TNUMBER:
        lua_pushvalue(L, idx);
        break;
    case LUA_TBOOLEAN:
        lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
        break;
    case LUA_TNIL:
        lua_pushliteral(L, "nil");
        break;
    default: /* tables with __tostring (a bitrix24.Error), functions, … */
        lua_getglobal(L, "tostring");
        lua_pushvalue(L, idx);
        lua_call(L, 1, 1);
        if (!lua_isstring(L, -1)) {
            lua_pop(L, 1);
            lua_pushliteral(L, "?");
        }
    }
    return lua_tostring(L, -1);
}

static int by_key(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* log_line(format, level, msg [, fields]) -> one line ending in "\n": format "logfmt" or "json",
 * the time now, then level, msg and the fields in key order, every value but the host's own
 * numbers masked. Keys and values are converted with tostring; up to 64 fields are written. */
static int l_log_line(lua_State *L)
{
    static const char *const formats[] = {"logfmt", "json", NULL};
    int json = luaL_checkoption(L, 1, "logfmt", formats);
    const char *level = luaL_checkstring(L, 2);
    const char *msg = push_text(L, 3);
    b24_logline *l = lua_newuserdata(L, sizeof *l);
    b24_logline_begin(l, json, level, msg);
    if (lua_type(L, 4) == LUA_TTABLE) {
        const char *keys[64];
        int n = 0;
        lua_newtable(L); /* key text -> value text, so keys sort as strings */
        int texts = lua_gettop(L);
        lua_pushnil(L);
        while (n < 64 && lua_next(L, 4)) {
            const char *k = push_text(L, -2);
            push_text(L, -2);
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -2);
            lua_rawset(L, texts);
            keys[n++] = k; /* anchored in texts */
            lua_pop(L, 3);
        }
        if (n > 1) /* cppcheck reads keys[] as unset when the loop never ran */
            qsort(keys, (size_t)n, sizeof keys[0], by_key);
        for (int i = 0; i < n; i++) {
            lua_getfield(L, texts, keys[i]);
            size_t vlen;
            const char *v = lua_tolstring(L, -1, &vlen);
            b24_logline_field(l, keys[i], v, vlen);
            lua_pop(L, 1);
        }
    }
    b24_logline_end(l);
    lua_pushlstring(L, l->buf, l->len);
    return 1;
}

static const luaL_Reg log_funcs[] = {
    {"mask", l_mask},
    {"log_line", l_log_line},
    {NULL, NULL},
};

void b24_logline_open(lua_State *L)
{
    luaL_setfuncs(L, log_funcs, 0);
}
