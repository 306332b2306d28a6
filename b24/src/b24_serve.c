/* b24 serve: GNU libmicrohttpd with an internal epoll thread pool; one lua_State per thread,
 * created on the thread's first request, so no Lua value ever crosses threads. Each state
 * keeps the script's handler at stack index 1. SIGHUP publishes a new script generation that
 * every thread picks up before its next request; SIGTERM/SIGINT stop accepting, let the
 * requests in flight finish, and exit 0. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <microhttpd.h>

#include "b24_host.h"
#include "b24_inbox.h"

#define DISCARD_MAX ((size_t)16 * 1024 * 1024) /* of an oversized chunked body */

typedef struct options {
    const char *listen;
    long workers;
    size_t max_body;
    unsigned client_timeout;
    double drain_timeout;
    const char *script;
    const char *inbox; /* a file, or "memory" */
    int sync;          /* handlers inside the request, no inbox */
    long handler_threads;
    double handler_timeout;
    b24_inbox_options inbox_opt;
} options;

static options opt;
static double started_at;
static atomic_int stopping;

/* ---- requests --------------------------------------------------------------------------- */

typedef struct header {
    const char *name, *value;
    size_t name_len, value_len;
} header;

#define INLINE_URI 256
#define INLINE_HEADERS 24
#define INLINE_RESPONSE 512

typedef struct request {
    char *uri; /* as sent: path?query; uri_inline unless longer */
    double t0;
    int started, responded, status, too_large;
    double delay; /* from the handler's options */
    int drop;   /* close the connection without an answer */
    size_t discarded;
    /* the durable path */
    int awaiting;
    atomic_int put_done;
    b24_put put;
    char *put_mem; /* key, event, content type and the accepted answer's body */
    const char *accept_body;
    size_t accept_body_len;
    struct MHD_Connection *conn;
    /* a delayed answer (the handler's { delay = s }): queued when the timer resumes us */
    struct MHD_Response *pending;
    int pending_status, delaying;
    atomic_int delay_done;
    char *body;
    size_t body_len, body_cap;
    header *headers;
    size_t nheaders, headers_cap;
    char remote[64];
    char method[24];
    /* what most requests need, without a malloc each */
    char uri_inline[INLINE_URI];
    header headers_inline[INLINE_HEADERS];
    char response_inline[INLINE_RESPONSE]; /* lives until the response has been sent */
} request;

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    request *r = malloc(sizeof *r);
    if (r == NULL)
        return NULL;
    memset(r, 0, offsetof(request, uri_inline));
    size_t len = strlen(uri);
    r->uri = len < INLINE_URI ? memcpy(r->uri_inline, uri, len + 1) : strdup(uri);
    r->headers = r->headers_inline;
    r->headers_cap = INLINE_HEADERS;
    return r;
}

static void request_free(request *r)
{
    if (r->uri != r->uri_inline)
        free(r->uri);
    if (r->headers != r->headers_inline)
        free(r->headers);
    free(r->body);
    free(r->put_mem);
    if (r->pending)
        MHD_destroy_response(r->pending);
    free(r);
}

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      size_t key_len, const char *value, size_t value_len)
{
    request *r = cls;
    if (r->nheaders == r->headers_cap) {
        size_t cap = r->headers_cap * 2;
        header *h = malloc(cap * sizeof *h);
        if (h == NULL)
            return MHD_NO;
        memcpy(h, r->headers, r->nheaders * sizeof *h);
        if (r->headers != r->headers_inline)
            free(r->headers);
        r->headers = h;
        r->headers_cap = cap;
    }
    header *h = &r->headers[r->nheaders++];
    h->name = key;
    h->name_len = key_len;
    h->value = value ? value : "";
    h->value_len = value ? value_len : 0;
    return MHD_YES;
}

static void remote_address(struct MHD_Connection *c, char *out, size_t n)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    out[0] = '\0';
    if (ci == NULL || ci->client_addr == NULL)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out, (socklen_t)n);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out, (socklen_t)n);
}

/* Queues res (and lets it go); once draining, asks keep-alive clients to go elsewhere. */
static enum MHD_Result queue(struct MHD_Connection *c, request *r, int status,
                             struct MHD_Response *res)
{
    if (atomic_load(&stopping))
        MHD_add_response_header(res, "Connection", "close");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, res);
    MHD_destroy_response(res);
    r->responded = 1;
    r->status = status;
    return ok;
}

static enum MHD_Result respond(struct MHD_Connection *c, request *r, int status,
                               const char *type, const char *body, size_t len)
{
    struct MHD_Response *res =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (res == NULL)
        return MHD_NO;
    if (type)
        MHD_add_response_header(res, "Content-Type", type);
    return queue(c, r, status, res);
}

#define JSON "application/json"

static enum MHD_Result respond_error(struct MHD_Connection *c, request *r, int status,
                                     const char *reason)
{
    char body[512];
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\"}", reason);
    return respond(c, r, status, JSON, body, (size_t)n);
}

/* Runs inside lua_pcall: builds the request table, calls the handler, and normalises what it
 * returns to (status, {name, value, name, value, …}, body) of checked types. */
static int dispatch(lua_State *L)
{
    request *r = lua_touserdata(L, 2);
    int accept = lua_toboolean(L, 3); /* a router's accept instead of the handler */
    lua_settop(L, 1);
    int is_table = lua_type(L, 1) == LUA_TTABLE;
    if (is_table) {
        lua_getfield(L, 1, accept ? "accept" : "handle");
        lua_pushvalue(L, 1);
    } else {
        lua_pushvalue(L, 1);
    }
    lua_createtable(L, 0, 6);
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    const char *q = strchr(r->uri, '?');
    if (q) {
        lua_pushlstring(L, r->uri, (size_t)(q - r->uri));
        lua_setfield(L, -2, "path");
        lua_pushstring(L, q + 1);
    } else {
        lua_pushstring(L, r->uri);
        lua_setfield(L, -2, "path");
        lua_pushliteral(L, "");
    }
    lua_setfield(L, -2, "query");
    lua_pushlstring(L, r->body ? r->body : "", r->body_len);
    lua_setfield(L, -2, "body");
    lua_pushstring(L, r->remote);
    lua_setfield(L, -2, "remote_addr");
    lua_createtable(L, 0, (int)r->nheaders);
    for (size_t i = 0; i < r->nheaders; i++) {
        const header *h = &r->headers[i];
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (size_t k = 0; k < h->name_len; k++) {
            char ch = h->name[k];
            luaL_addchar(&b, (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch);
        }
        luaL_pushresult(&b);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, h->value, h->value_len);
        } else { /* a repeated header: joined as RFC 9110 allows */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h->value, h->value_len);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");
    if (accept) { /* the verdict table: status, headers, body, and key + event when accepted */
        lua_call(L, 2, 1);
        if (!lua_istable(L, -1))
            return luaL_error(L, "router:accept returned a %s, not a verdict table", luaL_typename(L, -1));
        lua_getfield(L, 2, "status");
        lua_getfield(L, 2, "headers");
        lua_getfield(L, 2, "body");
        lua_getfield(L, 2, "key");
        lua_getfield(L, 2, "event");
        if (lua_istable(L, -1))
            lua_getfield(L, -1, "name");
        else
            lua_pushnil(L);
        lua_replace(L, -2);
        lua_remove(L, 2); /* [2] status [3] headers [4] body [5] key [6] event name */
        if (!lua_isnil(L, 5) && (lua_type(L, 5) != LUA_TSTRING || lua_type(L, 6) != LUA_TSTRING))
            return luaL_error(L, "router:accept returned a key without an event name");
    } else { /* [5] the options table, if any, read into the request */
        lua_call(L, is_table ? 2 : 1, 4);
        r->delay = 0;
        r->drop = 0;
        if (!lua_isnil(L, 5)) {
            if (!lua_istable(L, 5))
                return luaL_error(L, "handler returned bad options (a table expected, got %s)",
                                  luaL_typename(L, 5));
            lua_getfield(L, 5, "delay");
            if (!lua_isnil(L, -1)) {
                double d = lua_tonumber(L, -1);
                if (!lua_isnumber(L, -1) || !(d >= 0 && d <= 3600))
                    return luaL_error(L, "handler returned a bad delay (seconds from 0 to 3600 expected)");
                r->delay = d;
            }
            lua_getfield(L, 5, "close");
            r->drop = lua_toboolean(L, -1);
            lua_pop(L, 2);
        }
        lua_settop(L, 4);
        lua_settop(L, 6); /* [5] [6] nil: no key, no event */
    }

    /* [2] status [3] headers [4] body */
    if (!lua_isinteger(L, 2) || lua_tointeger(L, 2) < 100 || lua_tointeger(L, 2) > 599)
        return luaL_error(L, "handler returned a bad status (an integer from 100 to 599 expected, "
                             "got %s)", luaL_typename(L, 2));
    lua_newtable(L); /* the flat header list, moved to [3] below */
    int flat = lua_gettop(L);
    if (!lua_isnil(L, 3)) {
        if (!lua_istable(L, 3))
            return luaL_error(L, "handler returned bad headers (a table expected, got %s)",
                              luaL_typename(L, 3));
        int n = 0;
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            size_t nl, vl;
            if (lua_type(L, -2) != LUA_TSTRING ||
                (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
                return luaL_error(L, "handler returned a bad header (string name and value expected)");
            lua_pushvalue(L, -2); /* copies: tolstring must not touch the key lua_next needs */
            const char *name = lua_tolstring(L, -1, &nl);
            lua_pushvalue(L, -2);
            const char *value = lua_tolstring(L, -1, &vl);
            if (nl == 0 || strcspn(name, "\r\n:") != nl || strcspn(value, "\r\n") != vl ||
                strlen(name) != nl || strlen(value) != vl)
                return luaL_error(L, "handler returned a bad header (CR, LF, NUL or ':' in a name)");
            lua_rawseti(L, flat, n + 2); /* the value */
            lua_rawseti(L, flat, n + 1); /* the name */
            n += 2;
            lua_pop(L, 1);
        }
    }
    lua_replace(L, 3);
    if (!lua_isnil(L, 4) && lua_type(L, 4) != LUA_TSTRING) {
        if (lua_type(L, 4) != LUA_TNUMBER)
            return luaL_error(L, "handler returned a bad body (a string expected, got %s)",
                              luaL_typename(L, 4));
        lua_tostring(L, 4); /* converts in place, inside the protected call */
    }
    return 5;
}

/* ---- the durable path: accept, store, answer once committed ------------------------------ */

static b24_inbox *inbox; /* NULL: handlers run inside the request */

static long inbox_depth(void)
{
    return inbox ? b24_inbox_depth(inbox) : 0;
}

/* Runs on the inbox thread once the delivery is committed (or refused): wakes the request. */
static void stored(b24_put *put)
{
    request *r = put->arg;
    atomic_store(&r->put_done, 1);
    MHD_resume_connection(r->conn);
}

/* Keeps what the inbox needs in the request, suspends the connection, queues the delivery;
 * the answer goes out from on_access when stored() resumes the connection. */
static enum MHD_Result store(struct MHD_Connection *c, request *r, lua_State *L,
                             const char *body, size_t blen)
{
    size_t klen, elen;
    const char *key = lua_tolstring(L, 5, &klen);
    const char *event = lua_tolstring(L, 6, &elen);
    const char *ctype = "";
    for (size_t i = 0; i < r->nheaders; i++)
        if (r->headers[i].name_len == 12 && strncasecmp(r->headers[i].name, "content-type", 12) == 0)
            ctype = r->headers[i].value;
    size_t clen = strlen(ctype);
    r->put_mem = malloc(klen + elen + clen + blen + 4);
    if (r->put_mem == NULL) {
        lua_settop(L, 1);
        return respond_error(c, r, 503, "inbox unavailable");
    }
    char *p = r->put_mem;
    r->put.key = memcpy(p, key, klen + 1), p += klen + 1;
    r->put.event = memcpy(p, event, elen + 1), p += elen + 1;
    r->put.content_type = memcpy(p, ctype, clen + 1), p += clen + 1;
    r->accept_body = memcpy(p, body, blen), r->accept_body_len = blen;
    lua_settop(L, 1);
    r->put.body = r->body ? r->body : "";
    r->put.body_len = r->body_len;
    r->put.done = stored;
    r->put.arg = r;
    r->conn = c;
    r->awaiting = 1;
    MHD_suspend_connection(c); /* before the put: stored() may run at once */
    b24_inbox_put(inbox, &r->put);
    return MHD_YES;
}

static enum MHD_Result answer_stored(struct MHD_Connection *c, request *r)
{
    r->awaiting = 0;
    switch (r->put.result) {
    case B24_PUT_STORED:
        b24_metrics_delivery(0);
        return respond(c, r, 200, JSON, r->accept_body, r->accept_body_len);
    case B24_PUT_DUPLICATE:
        b24_metrics_delivery(1);
        return respond(c, r, 200, JSON, "{\"success\":true,\"duplicate\":true}", 33);
    default:
        return respond_error(c, r, 503, "inbox unavailable");
    }
}

/* ---- delayed answers: the connection waits suspended, the thread serves others ----------- */

static void delay_over(void *arg)
{
    request *r = arg;
    atomic_store(&r->delay_done, 1);
    MHD_resume_connection(r->conn);
}

static enum MHD_Result delay(struct MHD_Connection *c, request *r, int status,
                             struct MHD_Response *res)
{
    r->pending = res;
    r->pending_status = status;
    r->conn = c;
    r->delaying = 1;
    MHD_suspend_connection(c); /* before the timer: it may fire at once */
    if (b24_timer_add(b24_now() + r->delay, delay_over, r) != 0) {
        atomic_store(&r->delay_done, 1); /* stopping: answer now */
        MHD_resume_connection(c);
    }
    return MHD_YES;
}

static enum MHD_Result answer_delayed(struct MHD_Connection *c, request *r)
{
    struct MHD_Response *res = r->pending;
    r->pending = NULL;
    r->delaying = 0;
    return queue(c, r, r->pending_status, res);
}

static enum MHD_Result run_handler(struct MHD_Connection *c, request *r)
{
    lua_State *L = b24_script_state();
    if (L == NULL)
        return respond_error(c, r, 500, "internal error");
    MHD_get_connection_values_n(c, MHD_HEADER_KIND, collect_header, r);
    lua_settop(L, 1);
    lua_pushcfunction(L, dispatch);
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, r);
    lua_pushboolean(L, inbox != NULL);
    if (b24_state_call(L, 3, 5) != LUA_OK) {
        b24_metrics_handler_error();
        const char *m = lua_tostring(L, -1);
        b24_log(B24_ERROR, "handler failed", "method", r->method, "path", r->uri, "error",
                m ? m : "?", NULL);
        lua_settop(L, 1);
        return respond_error(c, r, 500, "internal error");
    }
    /* [2] status [3] headers (flat) [4] body [5] key [6] event: checked; nothing here raises */
    int status = (int)lua_tointeger(L, 2);
    size_t blen = 0;
    const char *body = lua_isnil(L, 4) ? "" : lua_tolstring(L, 4, &blen);
    if (inbox && status == 200 && lua_type(L, 5) == LUA_TSTRING)
        return store(c, r, L, body, blen);
    if (r->drop) { /* the handler asked for a dropped connection (a fault injector's "reset") */
        lua_settop(L, 1);
        r->responded = 1;
        return MHD_NO;
    }
    struct MHD_Response *res;
    if (blen <= INLINE_RESPONSE) { /* kept in the request, which outlives the response */
        memcpy(r->response_inline, body, blen);
        res = MHD_create_response_from_buffer(blen, r->response_inline, MHD_RESPMEM_PERSISTENT);
    } else {
        res = MHD_create_response_from_buffer(blen, (void *)body, MHD_RESPMEM_MUST_COPY);
    }
    if (res == NULL) {
        lua_settop(L, 1);
        return respond_error(c, r, 500, "internal error");
    }
    size_t n = lua_rawlen(L, 3);
    for (size_t i = 1; i + 1 <= n; i += 2) {
        lua_rawgeti(L, 3, (lua_Integer)i);
        lua_rawgeti(L, 3, (lua_Integer)i + 1);
        const char *name = lua_tostring(L, -2), *value = lua_tostring(L, -1);
        if (strcasecmp(name, "Content-Length") != 0)
            MHD_add_response_header(res, name, value);
        lua_pop(L, 2);
    }
    lua_settop(L, 1);
    if (r->delay > 0)
        return delay(c, r, status, res);
    return queue(c, r, status, res);
}

static enum MHD_Result serve_healthz(struct MHD_Connection *c, request *r)
{
    char body[320];
    int n = snprintf(body, sizeof body,
                     "{\"status\":\"%s\",\"version\":\"%s\",\"in_flight\":%ld,"
                     "\"uptime_seconds\":%.0f,\"inbox_depth\":%ld}",
                     atomic_load(&stopping) ? "stopping" : "ok", B24_VERSION,
                     b24_metrics_in_flight_now() - 1, b24_now() - started_at,
                     inbox ? b24_inbox_depth(inbox) : 0L);
    return respond(c, r, atomic_load(&stopping) ? 503 : 200, JSON, body, (size_t)n);
}

static enum MHD_Result serve_metrics(struct MHD_Connection *c, request *r)
{
    size_t len = 0;
    char *text = b24_metrics_render(&len);
    if (text == NULL)
        return respond_error(c, r, 500, "internal error");
    enum MHD_Result ok = respond(c, r, 200, "text/plain; version=0.0.4", text, len);
    free(text);
    return ok;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    request *r = *con_cls;
    if (r == NULL || r->uri == NULL)
        return MHD_NO; /* out of memory in on_uri: drop the connection */
    if (r->awaiting)
        return atomic_load(&r->put_done) ? answer_stored(c, r) : MHD_YES;
    if (r->delaying)
        return atomic_load(&r->delay_done) ? answer_delayed(c, r) : MHD_YES;
    if (!r->started) {
        r->started = 1;
        r->t0 = b24_now();
        b24_metrics_in_flight(1);
        snprintf(r->method, sizeof r->method, "%s", method);
        remote_address(c, r->remote, sizeof r->remote);
        size_t plen = strcspn(r->uri, "?");
        int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
        if (get && plen == 8 && memcmp(r->uri, "/healthz", 8) == 0)
            return serve_healthz(c, r);
        if (get && plen == 8 && memcmp(r->uri, "/metrics", 8) == 0)
            return serve_metrics(c, r);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || *end || n > opt.max_body) /* refused before a byte of it is read */
                return respond_error(c, r, 413, "request body too large");
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->responded)
            return MHD_YES;
        if (r->too_large || r->body_len + n > opt.max_body) {
            /* A chunked body that grew too large. libmicrohttpd takes a response only before
             * or after the body, so the rest is discarded, up to a bound past which the
             * connection is simply closed; the 413 goes out when the body ends. */
            r->too_large = 1;
            r->discarded += n;
            if (r->discarded > DISCARD_MAX) {
                b24_log(B24_WARN, "request body far over the limit; connection closed", "method",
                        r->method, "path", r->uri, NULL);
                return MHD_NO;
            }
            return MHD_YES;
        }
        if (r->body_len + n > r->body_cap) {
            size_t cap = r->body_cap ? r->body_cap : 4096;
            while (cap < r->body_len + n)
                cap *= 2;
            char *b = realloc(r->body, cap);
            if (b == NULL)
                return respond_error(c, r, 500, "internal error");
            r->body = b;
            r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload, n);
        r->body_len += n;
        return MHD_YES;
    }
    if (r->responded)
        return MHD_YES;
    if (r->too_large)
        return respond_error(c, r, 413, "request body too large");
    return run_handler(c, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    request *r = *con_cls;
    if (r == NULL)
        return;
    *con_cls = NULL;
    if (r->started) {
        double d = b24_now() - r->t0;
        b24_metrics_in_flight(-1);
        b24_metrics_request(r->status, d);
        int internal = strncmp(r->uri, "/healthz", 8) == 0 || strncmp(r->uri, "/metrics", 8) == 0;
        b24_level level = internal ? B24_DEBUG : r->status >= 500 ? B24_WARN : B24_INFO;
        if (b24_log_enabled(level)) {
            char status[16], ms[32], bytes[32];
            snprintf(status, sizeof status, "%d", r->status);
            snprintf(ms, sizeof ms, "%.3f", d * 1000);
            snprintf(bytes, sizeof bytes, "%zu", r->body_len);
            b24_log(level, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "request" : "request aborted",
                    "method", r->method, "path", r->uri, "status", status, "duration_ms", ms,
                    "bytes_in", bytes, "remote", r->remote, NULL);
        }
    }
    request_free(r);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    b24_log(B24_DEBUG, "libmicrohttpd", "detail", msg, NULL);
}

/* ---- options, start, signals ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fputs("usage: b24 serve [--listen HOST:PORT] [--workers N] [--max-body BYTES]\n"
          "                 [--client-timeout SECONDS] [--drain-timeout SECONDS]\n"
          "                 [--log-format logfmt|json] [--log-level debug|info|warn|error]\n"
          "                 [--inbox PATH|memory] [--sync] [--handler-threads N]\n"
          "                 [--max-attempts N] [--retry-base SECONDS] [--retry-max SECONDS]\n"
          "                 [--dedup-ttl SECONDS] [--handler-timeout SECONDS] SCRIPT.lua\n"
          "environment: B24_LISTEN, B24_WORKERS, B24_MAX_BODY, B24_LOG_FORMAT, B24_LOG_LEVEL,\n"
          "             B24_INBOX\n",
          f);
}

static int parse_seconds(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || v == 0)
        return -1;
    if (*end == 'k' || *end == 'K')
        v *= 1024, end++;
    else if (*end == 'm' || *end == 'M')
        v *= 1024 * 1024, end++;
    if (*end || v > (1ull << 40))
        return -1;
    *out = (size_t)v;
    return 0;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* host:port, [v6]:port or :port → a socket address */
static int resolve_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *port;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':' || (size_t)(close - spec - 1) >= sizeof host)
            return -1;
        memcpy(host, spec + 1, (size_t)(close - spec - 1));
        host[close - spec - 1] = '\0';
        port = close + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host)
            return -1;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        port = colon + 1;
    }
    long p;
    if (parse_long(port, 0, 65535, &p))
        return -1;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo(host[0] ? host : NULL, port, &hints, &ai) || ai == NULL)
        return -1;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

int b24_cmd_serve(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},       {"workers", required_argument, NULL, 'w'},
        {"max-body", required_argument, NULL, 'b'},     {"client-timeout", required_argument, NULL, 't'},
        {"drain-timeout", required_argument, NULL, 'd'}, {"log-format", required_argument, NULL, 'f'},
        {"log-level", required_argument, NULL, 'v'},    {"help", no_argument, NULL, 'h'},
        {"inbox", required_argument, NULL, 'i'},        {"sync", no_argument, NULL, 's'},
        {"handler-threads", required_argument, NULL, 'H'}, {"max-attempts", required_argument, NULL, 'm'},
        {"retry-base", required_argument, NULL, 'r'},   {"retry-max", required_argument, NULL, 'R'},
        {"dedup-ttl", required_argument, NULL, 'T'},    {"handler-timeout", required_argument, NULL, 'o'},
        {NULL, 0, NULL, 0},
    };
    const char *env;
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    opt.listen = (env = getenv("B24_LISTEN")) && *env ? env : "127.0.0.1:8080";
    opt.workers = nproc > 0 ? nproc : 2;
    opt.max_body = 1024 * 1024;
    opt.client_timeout = 30;
    opt.drain_timeout = 30;
    opt.inbox = (env = getenv("B24_INBOX")) && *env ? env : "b24-inbox.sqlite";
    opt.handler_threads = nproc > 0 ? nproc : 2;
    opt.handler_timeout = 60;
    opt.inbox_opt.max_attempts = 10;
    opt.inbox_opt.retry_base = 1;
    opt.inbox_opt.retry_max = 3600;
    opt.inbox_opt.dedup_ttl = 86400;
    double seconds;
    if ((env = getenv("B24_WORKERS")) && *env && parse_long(env, 1, 1024, &opt.workers)) {
        fprintf(stderr, "b24 serve: bad B24_WORKERS '%s' (1 to 1024)\n", env);
        return 2;
    }
    if ((env = getenv("B24_MAX_BODY")) && *env && parse_size(env, &opt.max_body)) {
        fprintf(stderr, "b24 serve: bad B24_MAX_BODY '%s' (bytes, with optional K or M)\n", env);
        return 2;
    }
    const char *log_format = getenv("B24_LOG_FORMAT"), *log_level = getenv("B24_LOG_LEVEL");
    if (b24_log_configure(log_format && *log_format ? log_format : NULL, /* empty = unset */
                          log_level && *log_level ? log_level : NULL)) {
        fprintf(stderr, "b24 serve: bad B24_LOG_FORMAT or B24_LOG_LEVEL\n");
        return 2;
    }
    optind = 1;
    int c;
    long v;
    while ((c = getopt_long(argc, argv, "+l:w:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'l':
            opt.listen = optarg;
            break;
        case 'w':
            if (parse_long(optarg, 1, 1024, &opt.workers))
                goto bad;
            break;
        case 'b':
            if (parse_size(optarg, &opt.max_body))
                goto bad;
            break;
        case 't':
            if (parse_long(optarg, 1, 3600, &v))
                goto bad;
            opt.client_timeout = (unsigned)v;
            break;
        case 'd':
            if (parse_long(optarg, 0, 3600, &v))
                goto bad;
            opt.drain_timeout = (double)v;
            break;
        case 'f':
            if (b24_log_configure(optarg, NULL))
                goto bad;
            break;
        case 'v':
            if (b24_log_configure(NULL, optarg))
                goto bad;
            break;
        case 'i':
            opt.inbox = optarg;
            break;
        case 's':
            opt.sync = 1;
            break;
        case 'H':
            if (parse_long(optarg, 1, 256, &opt.handler_threads))
                goto bad;
            break;
        case 'm':
            if (parse_long(optarg, 1, 1000, &v))
                goto bad;
            opt.inbox_opt.max_attempts = (int)v;
            break;
        case 'r':
            if (parse_seconds(optarg, 0.001, 86400, &opt.inbox_opt.retry_base))
                goto bad;
            break;
        case 'R':
            if (parse_seconds(optarg, 0.001, 7 * 86400, &opt.inbox_opt.retry_max))
                goto bad;
            break;
        case 'T':
            if (parse_seconds(optarg, 0, 365 * 86400, &opt.inbox_opt.dedup_ttl))
                goto bad;
            break;
        case 'o':
            if (parse_seconds(optarg, 0.01, 86400, &seconds))
                goto bad;
            opt.handler_timeout = seconds;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "b24 serve: %s\n", optind >= argc ? "no script given" : "one script only");
        usage(stderr);
        return 2;
    }
    opt.script = argv[optind];
    struct sockaddr_storage addr;
    socklen_t addrlen;
    if (resolve_listen(opt.listen, &addr, &addrlen)) {
        fprintf(stderr, "b24 serve: bad --listen '%s' (HOST:PORT expected)\n", opt.listen);
        return 2;
    }

    /* The script must load before anything listens: a broken deploy fails fast and loudly. */
    int kind = b24_script_load(opt.script, 0);
    if (kind < 0) {
        fprintf(stderr, "b24 serve: %s failed to load (see the log line above)\n", opt.script);
        return 1;
    }

    /* A router (accept + dispatch) gets the durable inbox unless --sync; anything else runs
     * inside the request. */
    if (kind == B24_HANDLER_ROUTER && !opt.sync) {
        char err[512];
        const char *path = strcmp(opt.inbox, "memory") == 0 ? ":memory:" : opt.inbox;
        inbox = b24_inbox_open(path, &opt.inbox_opt, err, sizeof err);
        if (inbox == NULL) {
            fprintf(stderr, "b24 serve: %s\n", err);
            b24_script_close_all();
            return 1;
        }
        b24_metrics_inbox_depth(inbox_depth);
    }

    /* Signals are taken by sigwait in this thread; the server's threads inherit the mask. */
    sigset_t set;
    /* a shell starts background jobs with SIGINT ignored; an ignored signal is discarded
     * before sigwait can take it */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    started_at = b24_now();
    if (inbox && (b24_inbox_start(inbox) || b24_handlers_start(inbox, (int)opt.handler_threads,
                                                               opt.handler_timeout))) {
        fprintf(stderr, "b24 serve: cannot start the inbox threads\n");
        return 1;
    }
    if (b24_timer_start() != 0) {
        fprintf(stderr, "b24 serve: cannot start the timer thread\n");
        return 1;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC |
                     MHD_USE_TURBO | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_CONNECTION_TIMEOUT, opt.client_timeout, MHD_OPTION_URI_LOG_CALLBACK, on_uri,
        NULL, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_logger, NULL, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16 * 1024,
        /* one worker is the polling thread itself: no pool (MHD warns about a pool of 1) */
        opt.workers > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (unsigned)opt.workers,
        MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "b24 serve: cannot listen on %s: %s\n", opt.listen, strerror(errno));
        return 1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    char where[300], workers_s[16];
    char host[256] = "";
    if (addr.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)&addr)->sin_addr, host, sizeof host);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)&addr)->sin6_addr, host, sizeof host);
    snprintf(where, sizeof where, addr.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host,
             di ? (unsigned)di->port : 0u);
    snprintf(workers_s, sizeof workers_s, "%ld", opt.workers);
    b24_log(B24_INFO, "listening", "address", where, "workers", workers_s, "script", opt.script,
            "inbox", inbox ? opt.inbox : "none", "version", B24_VERSION, NULL);

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            b24_script_load(opt.script, kind);
            continue;
        }
        break;
    }

    /* Drain: refuse new connections, finish what is in flight, then stop. */
    atomic_store(&stopping, 1);
    if (inbox) /* a handler thread finishing a run takes no new one; what is pending stays */
        b24_inbox_stop_claims(inbox);
    MHD_socket lsock = MHD_quiesce_daemon(d);
    if (lsock != MHD_INVALID_SOCKET) { /* refuse new connections now, not queue them */
        close(lsock);
        lsock = MHD_INVALID_SOCKET;
    }
    b24_timer_stop(); /* delayed answers go out now; later ones are not delayed */
    char in_flight_s[24];
    snprintf(in_flight_s, sizeof in_flight_s, "%ld", b24_metrics_in_flight_now());
    b24_log(B24_INFO, "stopping", "in_flight", in_flight_s, NULL);
    double deadline = b24_now() + opt.drain_timeout;
    while (b24_metrics_in_flight_now() > 0 && b24_now() < deadline) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    long left = b24_metrics_in_flight_now();
    MHD_stop_daemon(d);
    if (inbox) { /* handler runs under way finish; what is pending stays for the next start */
        b24_handlers_stop();
        b24_inbox_stop(inbox);
        b24_inbox_close(inbox);
        inbox = NULL;
    }
    b24_post_stop(2); /* posts the handlers queued (an emulator's events) get 2 s to go out */
    b24_script_close_all();
    char left_s[24];
    snprintf(left_s, sizeof left_s, "%ld", left);
    b24_log(left ? B24_WARN : B24_INFO, "stopped", "unfinished", left_s, NULL);
    return 0;
bad:
    fprintf(stderr, "b24 serve: bad value '%s' for %s\n", optarg, argv[optind - 1]);
    usage(stderr);
    return 2;
}
