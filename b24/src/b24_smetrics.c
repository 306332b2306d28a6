/* Metrics a script sets (host.metric): see b24_smetrics.h. A fixed table of series under one
 * mutex; each series is its rendered name-and-labels text and a value. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "b24_smetrics.h"

#define MAX_SERIES 256
#define MAX_SERIES_TEXT 512 /* name{labels} */
#define MAX_NAME 128

typedef struct series {
    char text[MAX_SERIES_TEXT];
    size_t name_len; /* text[0..name_len) is the metric's name */
    int counter;
    double value;
} series;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static series table[MAX_SERIES];
static int nseries;

/* Whether s[0..len) is a metric's (colon 1) or a label's (colon 0) name. */
static int good_name(const char *s, size_t len, int colon)
{
    if (len == 0 || len > MAX_NAME)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

/* Appends to out[*n..cap) (0, or -1 when it does not fit). */
static int append(char *out, size_t *n, size_t cap, const char *s, size_t len)
{
    if (*n + len >= cap)
        return -1;
    memcpy(out + *n, s, len);
    *n += len;
    out[*n] = '\0';
    return 0;
}

/* [-0, +0] the labels table at idx rendered as {k="v",...} (sorted by key) after the name */
static int render_labels(lua_State *L, int idx, char *out, size_t *n, size_t cap)
{
    const char *keys[16];
    int nkeys = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING || nkeys == 16) {
            lua_pop(L, 2);
            return luaL_error(L, "host.metric: at most 16 labels, each named by a string");
        }
        size_t klen;
        const char *k = lua_tolstring(L, -2, &klen);
        if (!good_name(k, klen, 0) || (klen >= 2 && k[0] == '_' && k[1] == '_')) {
            lua_pop(L, 2);
            return luaL_error(L, "host.metric: a label's name is [a-zA-Z_][a-zA-Z0-9_]*");
        }
        int t = lua_type(L, -1);
        if (t != LUA_TSTRING && t != LUA_TNUMBER) {
            lua_pop(L, 2);
            return luaL_error(L, "host.metric: label %s must be a string or a number", k);
        }
        int at = nkeys++;
        while (at > 0 && strcmp(keys[at - 1], k) > 0) {
            keys[at] = keys[at - 1];
            at--;
        }
        keys[at] = k; /* the table keeps the key alive */
        lua_pop(L, 1);
    }
    if (nkeys == 0)
        return 0;
    int bad = append(out, n, cap, "{", 1);
    for (int i = 0; i < nkeys && !bad; i++) {
        lua_getfield(L, idx, keys[i]);
        size_t vlen;
        const char *v = lua_tolstring(L, -1, &vlen);
        bad = (i && append(out, n, cap, ",", 1)) || append(out, n, cap, keys[i], strlen(keys[i])) ||
              append(out, n, cap, "=\"", 2);
        for (size_t j = 0; j < vlen && !bad; j++) { /* the text format's escapes */
            char c = v[j];
            bad = c == '\\'   ? append(out, n, cap, "\\\\", 2)
                  : c == '"'  ? append(out, n, cap, "\\\"", 2)
                  : c == '\n' ? append(out, n, cap, "\\n", 2)
                              : append(out, n, cap, &c, 1);
        }
        bad = bad || append(out, n, cap, "\"", 1);
        lua_pop(L, 1);
    }
    bad = bad || append(out, n, cap, "}", 1);
    if (bad)
        return luaL_error(L, "host.metric: name and labels over %d bytes", MAX_SERIES_TEXT - 1);
    return 0;
}

/* host.metric(name, labels, value [, "counter"|"gauge"]) */
int b24_smetrics_set(lua_State *L)
{
    size_t name_len;
    const char *name = luaL_checklstring(L, 1, &name_len);
    if (!good_name(name, name_len, 1))
        return luaL_error(L,
                          "host.metric: a metric's name is [a-zA-Z_:][a-zA-Z0-9_:]*, at most "
                          "%d bytes",
                          MAX_NAME);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    int remove = lua_isnoneornil(L, 3);
    double value = remove ? 0 : luaL_checknumber(L, 3);
    if (!remove && !isfinite(value))
        return luaL_error(L, "host.metric: the value must be a finite number");
    const char *kind = luaL_optstring(L, 4, "gauge");
    int counter = strcmp(kind, "counter") == 0;
    if (!counter && strcmp(kind, "gauge") != 0)
        return luaL_error(L, "host.metric: the kind is \"counter\" or \"gauge\"");
    char text[MAX_SERIES_TEXT];
    size_t n = 0;
    append(text, &n, sizeof text, name, name_len);
    if (lua_istable(L, 2))
        render_labels(L, 2, text, &n, sizeof text);
    pthread_mutex_lock(&lock);
    int at = -1;
    for (int i = 0; i < nseries && at < 0; i++)
        if (strcmp(table[i].text, text) == 0)
            at = i;
    for (int i = 0; i < nseries && at < 0 && !remove; i++) /* one kind per name */
        if (table[i].name_len == name_len && memcmp(table[i].text, name, name_len) == 0 &&
            table[i].counter != counter) {
            pthread_mutex_unlock(&lock);
            return luaL_error(L, "host.metric: %s is a %s already", name,
                              counter ? "gauge" : "counter");
        }
    if (remove) {
        if (at >= 0)
            table[at] = table[--nseries];
    } else if (at < 0 && nseries == MAX_SERIES) {
        pthread_mutex_unlock(&lock);
        return luaL_error(L, "host.metric: at most %d series", MAX_SERIES);
    } else {
        if (at < 0) {
            at = nseries++;
            memcpy(table[at].text, text, n + 1);
            table[at].name_len = name_len;
            table[at].counter = counter;
        }
        table[at].value = value;
    }
    pthread_mutex_unlock(&lock);
    return 0;
}

/* The series for /metrics (grouped by name, one # TYPE line each), malloc'd. */
char *b24_smetrics_render(size_t *len)
{
    pthread_mutex_lock(&lock);
    size_t cap = 64 + (size_t)nseries * (MAX_SERIES_TEXT + MAX_NAME + 64), n = 0;
    char *out = malloc(cap);
    char *done = calloc((size_t)nseries + 1, 1);
    if (out == NULL || done == NULL) {
        pthread_mutex_unlock(&lock);
        free(out);
        free(done);
        *len = 0;
        return NULL;
    }
    for (int i = 0; i < nseries; i++) {
        if (done[i])
            continue;
        const series *s = &table[i];
        n += (size_t)snprintf(out + n, cap - n, "# TYPE %.*s %s\n", (int)s->name_len, s->text,
                              s->counter ? "counter" : "gauge");
        for (int j = i; j < nseries; j++) {
            const series *t = &table[j];
            if (done[j] || t->name_len != s->name_len || memcmp(t->text, s->text, s->name_len) != 0)
                continue;
            done[j] = 1;
            n += (size_t)snprintf(out + n, cap - n, "%s %.17g\n", t->text, t->value);
        }
    }
    pthread_mutex_unlock(&lock);
    free(done);
    *len = n;
    return out;
}

/* The series as a JSON object's members ("name{labels}": value, ...) for /healthz, malloc'd. */
char *b24_smetrics_json(size_t *len)
{
    pthread_mutex_lock(&lock);
    size_t cap = 16 + (size_t)nseries * (6 * MAX_SERIES_TEXT + 40), n = 0;
    char *out = malloc(cap);
    if (out != NULL) {
        for (int i = 0; i < nseries; i++) {
            n += (size_t)snprintf(out + n, cap - n, "%s\"", i ? "," : "");
            for (const unsigned char *c = (const unsigned char *)table[i].text; *c; c++)
                n += (size_t)snprintf(out + n, cap - n,
                                      *c == '"' || *c == '\\' ? "\\%c"
                                      : *c < 0x20             ? "\\u%04x"
                                                              : "%c",
                                      *c);
            n += (size_t)snprintf(out + n, cap - n, "\":%.17g", table[i].value);
        }
    }
    pthread_mutex_unlock(&lock);
    *len = n;
    return out;
}
