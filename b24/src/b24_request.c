/* One HTTP request of b24 serve: see b24_request.h. Each libmicrohttpd thread runs the
 * handler in its own Lua state (b24_script_state); a request that waits (a delayed answer, a
 * delivery being committed) is a suspended connection, so the thread serves others. */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <lua.h>
#include <microhttpd.h>

#include "b24.h" /* B24_VERSION */
#include "b24_bridge.h"
#include "b24_clock.h"
#include "b24_dedup.h"
#include "b24_inbox.h"
#include "b24_log.h"
#include "b24_metrics.h"
#include "b24_request.h"
#include "b24_script.h"
#include "b24_smetrics.h"
#include "b24_timer.h"

#define DISCARD_MAX ((size_t)16 * 1024 * 1024) /* of an oversized chunked body */

#define INLINE_URI 256
#define INLINE_HEADERS 24
#define INLINE_RESPONSE 512

typedef struct request {
    b24_request_context *ctx;
    char *uri; /* as sent: path?query; uri_inline unless longer */
    double t0;
    int started, responded, status, too_large;
    b24_bridge_options options; /* what the handler's 4th result asked for */
    size_t discarded;
    /* the durable path */
    int awaiting, put_armed, linked;
    atomic_int put_done;         /* PUT_WAITING, PUT_DONE, PUT_ANSWERED, PUT_ORPHAN */
    struct request *prev, *next; /* in the list of requests awaiting their commit */
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
    b24_header *headers;
    size_t nheaders, headers_cap;
    char remote[64];
    char method[24];
    /* what most requests need, without a malloc each */
    char uri_inline[INLINE_URI];
    b24_header headers_inline[INLINE_HEADERS];
    char response_inline[INLINE_RESPONSE]; /* lives until the response has been sent */
} request;

/* Each thread keeps the last request it freed, with its body buffer, for its next one: a
 * request's state (about 1.6 KiB, past glibc's per-thread cache) and its body were two mallocs
 * and two frees a request, a visible share of the profile (docs/performance.md). The key's
 * destructor frees a thread's spare when it ends. */
#define SPARE_BODY_MAX ((size_t)64 * 1024) /* a larger body buffer is not kept */

static pthread_key_t spare_key;
static pthread_once_t spare_once = PTHREAD_ONCE_INIT;

static void spare_destroy(void *p)
{
    request *r = p;
    free(r->body);
    free(r);
}

static int spare_ok; /* the key exists (no spares kept when it could not be made) */

static void spare_init(void)
{
    spare_ok = pthread_key_create(&spare_key, spare_destroy) == 0;
}

/* This thread's spare request, taken; NULL when it has none. */
static request *spare_take(void)
{
    pthread_once(&spare_once, spare_init);
    if (!spare_ok)
        return NULL;
    request *r = pthread_getspecific(spare_key);
    if (r)
        pthread_setspecific(spare_key, NULL);
    return r;
}

/* A request begins: its state, with the URI as sent. */
void *b24_request_begin(void *cls, const char *uri, struct MHD_Connection *c)
{
    request *r = spare_take();
    char *body = NULL;
    size_t body_cap = 0;
    if (r) {
        body = r->body;
        body_cap = r->body_cap;
    } else {
        r = malloc(sizeof *r);
        if (r == NULL)
            return NULL;
    }
    memset(r, 0, offsetof(request, uri_inline));
    r->body = body;
    r->body_cap = body_cap;
    r->ctx = cls;
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
    free(r->put_mem);
    if (r->pending)
        MHD_destroy_response(r->pending);
    pthread_once(&spare_once, spare_init);
    if (spare_ok && r->body_cap <= SPARE_BODY_MAX && pthread_getspecific(spare_key) == NULL &&
        pthread_setspecific(spare_key, r) == 0)
        return; /* this thread's next request takes it */
    free(r->body);
    free(r);
}

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      size_t key_len, const char *value, size_t value_len)
{
    request *r = cls;
    if (r->nheaders == r->headers_cap) {
        size_t cap = r->headers_cap * 2;
        b24_header *h = malloc(cap * sizeof *h);
        if (h == NULL)
            return MHD_NO;
        memcpy(h, r->headers, r->nheaders * sizeof *h);
        if (r->headers != r->headers_inline)
            free(r->headers);
        r->headers = h;
        r->headers_cap = cap;
    }
    b24_header *h = &r->headers[r->nheaders++];
    h->name = key;
    h->name_len = key_len;
    h->value = value ? value : "";
    h->value_len = value ? value_len : 0;
    return MHD_YES;
}

static void remote_address(struct MHD_Connection *c, char *out, size_t n)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    out[0] = '\0';
    if (ci == NULL || ci->client_addr == NULL)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)n);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)n);
}

/* Queues res (and lets it go); once draining, asks keep-alive clients to go elsewhere. */
static enum MHD_Result queue(struct MHD_Connection *c, request *r, int status,
                             struct MHD_Response *res)
{
    if (atomic_load(&r->ctx->stopping))
        MHD_add_response_header(res, "Connection", "close");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, res);
    MHD_destroy_response(res);
    r->responded = 1;
    r->status = status;
    return ok;
}

static enum MHD_Result respond(struct MHD_Connection *c, request *r, int status, const char *type,
                               const char *body, size_t len)
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
    if (r->options.reason[0] == '\0') /* the log line says why (the host's own words) */
        snprintf(r->options.reason, sizeof r->options.reason, "%s", reason);
    return respond(c, r, status, JSON, body, (size_t)n);
}

/* ---- the durable path: accept, store, answer once committed ------------------------------ */

/* A stored delivery's request: waiting for the commit; the commit came (the inbox let go of
 * the put); answered 503 before it (the stop); or ended before it (the inbox frees it). */
enum { PUT_WAITING, PUT_DONE, PUT_ANSWERED, PUT_ORPHAN };

/* The requests awaiting their commit, so the stop can answer them before the daemon ends. */
static pthread_mutex_t awaiting_lock = PTHREAD_MUTEX_INITIALIZER;
static request *awaiting_head;
static int awaiting_refused; /* the stop answered them: new deliveries get 503 at once */

static void awaiting_unlink(request *r)
{
    pthread_mutex_lock(&awaiting_lock);
    if (r->linked) {
        if (r->prev)
            r->prev->next = r->next;
        else
            awaiting_head = r->next;
        if (r->next)
            r->next->prev = r->prev;
        r->linked = 0;
    }
    pthread_mutex_unlock(&awaiting_lock);
}

/* Answers 503 now every request still waiting for its commit (which may yet happen: the
 * sender retries and the key deduplicates), and every later one at once. */
void b24_request_answer_awaiting(void)
{
    pthread_mutex_lock(&awaiting_lock);
    awaiting_refused = 1;
    for (request *r = awaiting_head; r; r = r->next) {
        int expected = PUT_WAITING;
        if (atomic_compare_exchange_strong(&r->put_done, &expected, PUT_ANSWERED))
            MHD_resume_connection(r->conn);
    }
    pthread_mutex_unlock(&awaiting_lock);
}

/* Runs on the inbox thread once the delivery is committed (or refused): wakes the request. */
static void stored(b24_put *put)
{
    request *r = put->arg;
    int was = atomic_exchange(&r->put_done, PUT_DONE);
    if (was == PUT_WAITING)
        MHD_resume_connection(r->conn);
    else if (was == PUT_ORPHAN) /* the request ended before the commit */
        request_free(r);
}

/* Keeps what the inbox needs in the request, suspends the connection, queues the delivery;
 * the answer goes out from b24_request_access when stored() resumes the connection. */
static enum MHD_Result store(struct MHD_Connection *c, request *r, lua_State *L, const char *body,
                             size_t blen)
{
    size_t klen, elen;
    const char *key = lua_tolstring(L, 5, &klen);
    const char *event = lua_tolstring(L, 6, &elen);
    const char *ctype = "";
    for (size_t i = 0; i < r->nheaders; i++)
        if (r->headers[i].name_len == 12 &&
            strncasecmp(r->headers[i].name, "content-type", 12) == 0)
            ctype = r->headers[i].value;
    size_t clen = strlen(ctype);
    r->put_mem = malloc(klen + elen + clen + blen + 4);
    if (r->put_mem == NULL) {
        lua_settop(L, 1);
        return respond_error(c, r, 503, "inbox unavailable");
    }
    char *p = r->put_mem;
    r->put.key = memcpy(p, key, klen + 1), p += klen + 1;
    r->put.key_len = klen;
    r->put.event = memcpy(p, event, elen + 1), p += elen + 1;
    r->put.content_type = memcpy(p, ctype, clen + 1), p += clen + 1;
    r->accept_body = memcpy(p, body, blen), r->accept_body_len = blen;
    lua_settop(L, 1);
    r->put.body = r->body ? r->body : "";
    r->put.body_len = r->body_len;
    r->put.done = stored;
    r->put.arg = r;
    r->conn = c;
    pthread_mutex_lock(&awaiting_lock);
    if (awaiting_refused) { /* the stop is past its drain */
        pthread_mutex_unlock(&awaiting_lock);
        return respond_error(c, r, 503, "stopping");
    }
    r->awaiting = r->put_armed = r->linked = 1;
    r->next = awaiting_head;
    if (awaiting_head)
        awaiting_head->prev = r;
    awaiting_head = r;
    MHD_suspend_connection(c); /* before the put: stored() may run at once */
    pthread_mutex_unlock(&awaiting_lock);
    b24_inbox_put(r->ctx->inbox, &r->put);
    return MHD_YES;
}

/* Logs, at info, a delivery that was not stored as a run of its own, with the object its key
 * names (never the body, so never the token). */
static void log_not_run(const request *r, const char *msg)
{
    if (!b24_log_enabled(B24_INFO))
        return;
    size_t len = 0;
    const char *object = b24_dedup_object(r->put.key, r->put.key_len, &len);
    char id[128];
    snprintf(id, sizeof id, "%.*s", object ? (int)(len < 120 ? len : 120) : 1,
             object ? object : "-");
    b24_log(B24_INFO, msg, "event", r->put.event, "id", id, NULL);
}

static enum MHD_Result answer_stored(struct MHD_Connection *c, request *r)
{
    r->awaiting = 0;
    awaiting_unlink(r);
    if (atomic_load(&r->put_done) != PUT_DONE) /* answered by the stop: the outcome is unknown */
        return respond_error(c, r, 503, "stopping");
    switch (r->put.result) {
    case B24_PUT_STORED:
        b24_metrics_delivery(B24_DELIVERY_STORED);
        return respond(c, r, 200, JSON, r->accept_body, r->accept_body_len);
    case B24_PUT_RERUN:
        b24_metrics_delivery(B24_DELIVERY_RERUN);
        log_not_run(r, "delivery arrived while its object's handlers ran: one more run after them");
        return respond(c, r, 200, JSON, r->accept_body, r->accept_body_len);
    case B24_PUT_MERGED:
        b24_metrics_delivery(B24_DELIVERY_MERGED);
        log_not_run(r, "delivery merged into a pending run");
        return respond(c, r, 200, JSON, "{\"success\":true,\"merged\":true}", 30);
    case B24_PUT_DUPLICATE:
        b24_metrics_delivery(B24_DELIVERY_DUPLICATE);
        log_not_run(r, "duplicate delivery");
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
    if (b24_timer_add(b24_now() + r->options.delay, delay_over, r) != 0) {
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
    b24_bridge_request req = {r->method,   r->uri,     r->remote,  r->body,
                              r->body_len, r->headers, r->nheaders};
    b24_inbox *inbox = r->ctx->inbox;
    int called = b24_bridge_call(L, &req, inbox != NULL, &r->options);
    b24_dedup_release_thread(); /* a handler that unwound past router:handle's finish */
    if (called != LUA_OK) {
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
    if (r->options.close) { /* the handler asked for a dropped connection */
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
    if (r->options.delay > 0)
        return delay(c, r, status, res);
    return queue(c, r, status, res);
}

static enum MHD_Result serve_healthz(struct MHD_Connection *c, request *r)
{
    int stopping = atomic_load(&r->ctx->stopping);
    size_t script_len = 0;
    char *script = b24_smetrics_json(&script_len); /* the script's own metrics (host.metric) */
    size_t cap = 320 + script_len;
    char *body = malloc(cap);
    if (body == NULL) {
        free(script);
        return respond_error(c, r, 500, "internal error");
    }
    int n = snprintf(body, cap,
                     "{\"status\":\"%s\",\"version\":\"%s\",\"in_flight\":%ld,"
                     "\"uptime_seconds\":%.0f,\"inbox_depth\":%ld,\"script\":{%.*s}}",
                     stopping ? "stopping" : "ok", B24_VERSION, b24_metrics_in_flight_now() - 1,
                     b24_now() - r->ctx->started_at,
                     r->ctx->inbox ? b24_inbox_depth(r->ctx->inbox) : 0L, (int)script_len,
                     script ? script : "");
    free(script);
    enum MHD_Result ok = respond(c, r, stopping ? 503 : 200, JSON, body, (size_t)n);
    free(body);
    return ok;
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

/* Every step of a request: its start, each piece of its body, its end (the handler runs),
 * and the wake-ups of a suspended one. */
enum MHD_Result b24_request_access(void *cls, struct MHD_Connection *c, const char *url,
                                   const char *method, const char *version, const char *upload,
                                   size_t *upload_size, void **con_cls)
{
    request *r = *con_cls;
    if (r == NULL || r->uri == NULL)
        return MHD_NO; /* out of memory in b24_request_begin: drop the connection */
    if (r->awaiting)
        return atomic_load(&r->put_done) != PUT_WAITING ? answer_stored(c, r) : MHD_YES;
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
            if (errno || *end || n > r->ctx->max_body) /* refused before a byte of it is read */
                return respond_error(c, r, 413, "request body too large");
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->responded)
            return MHD_YES;
        if (r->too_large || r->body_len + n > r->ctx->max_body) {
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

/* v in decimal into out (21 bytes at least); returns the end (the NUL). The request line's
 * numbers are written here, not by snprintf, whose floating-point path was a visible part of a
 * logged request's cost. */
static char *decimal(char *out, unsigned long long v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    while (n > 0)
        *out++ = tmp[--n];
    *out = '\0';
    return out;
}

/* Microseconds as milliseconds with three decimals (1234 -> "1.234"), as "%.3f" of ms. */
static void millis(char *out, unsigned long long us)
{
    unsigned frac = (unsigned)(us % 1000);
    char *p = decimal(out, us / 1000);
    p[0] = '.';
    p[1] = (char)('0' + frac / 100);
    p[2] = (char)('0' + frac / 10 % 10);
    p[3] = (char)('0' + frac % 10);
    p[4] = '\0';
}

/* The request ended, answered or not: counted, logged, freed. */
void b24_request_end(void *cls, struct MHD_Connection *c, void **con_cls,
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
            char status[24], ms[32], bytes[24];
            decimal(status, (unsigned long long)r->status);
            millis(ms, d > 0 ? (unsigned long long)(d * 1e6 + 0.5) : 0);
            decimal(bytes, r->body_len);
            b24_log(level,
                    toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "request" : "request aborted",
                    "method", r->method, "path", r->uri, "status", status, "duration_ms", ms,
                    "bytes_in", bytes, "remote", r->remote, r->options.reason[0] ? "reason" : NULL,
                    r->options.reason, NULL);
        }
    }
    if (r->put_armed) {
        awaiting_unlink(r);
        int s = atomic_load(&r->put_done);
        while (s != PUT_DONE && !atomic_compare_exchange_weak(&r->put_done, &s, PUT_ORPHAN))
            ;
        if (s != PUT_DONE)
            return; /* the inbox still holds the put: stored() frees the request */
    }
    request_free(r);
}
