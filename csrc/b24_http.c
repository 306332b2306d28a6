/* The libcurl session object: one easy handle per session, so its connection cache gives
 * keep-alive across requests; request_many runs several requests at once on a multi handle the
 * session keeps, with its own connection cache and a pool of easy handles. No Lua code runs
 * inside curl_easy_perform or curl_multi_perform: the callbacks only append to buffers owned by
 * the userdata, so no Lua error can longjmp across libcurl, and a raise anywhere else leaves
 * nothing behind that __gc cannot free.
 * One piece of some 670 lines: the session's options, the request and request_many share the
 * transfer struct, its callbacks and the session's lifetime (close, __gc), none of which should
 * be visible outside this file. */
#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "b24.h"

#define HTTP_MT "bitrix24.core.Http"
#define DEFAULT_MAX_RESPONSE (64 * 1024 * 1024)
#define DEFAULT_USER_AGENT "bitrix24-lua/" B24_VERSION

typedef struct buffer {
    char *data;
    size_t len, cap;
} buffer;

/* One easy handle and what its transfer writes. */
typedef struct transfer {
    CURL *curl;
    struct curl_slist *req_headers; /* of the request under way; freed by the next one or gc */
    buffer body, head;
    size_t max_response;
    int too_large;
    CURLcode rc; /* of a transfer on the multi handle */
    char errbuf[CURL_ERROR_SIZE];
} transfer;

#define MANY_MAX 64 /* requests in one request_many */

typedef struct session {
    CURL *curl; /* == one.curl; NULL once closed */
    transfer one;
    CURLM *multi;            /* request_many's, created on first use */
    transfer many[MANY_MAX]; /* its easy handles, created as needed */
    size_t max_response;
    long connect_timeout_ms, timeout_ms;
    int verify, follow_redirects, http2, compressed;
    long max_redirects;
    char *ca_file, *proxy, *user_agent;
} session;

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_status = CURLE_OK;

static void global_init(void)
{
    global_status = curl_global_init(CURL_GLOBAL_DEFAULT); /* never cleaned up: shared by states */
}

static int buffer_append(buffer *b, const char *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (d == NULL)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void buffer_release(buffer *b, size_t keep)
{
    b->len = 0;
    if (b->cap > keep) { /* do not pin one large response's memory for the session's life */
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    transfer *s = ud;
    size_t bytes = size * n;
    if (s->body.len + bytes > s->max_response) {
        s->too_large = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    return buffer_append(&s->body, p, bytes) ? 0 : bytes;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    transfer *s = ud;
    size_t bytes = size * n;
    if (bytes >= 5 && memcmp(p, "HTTP/", 5) == 0)
        s->head.len = 0; /* a new response (after 100 Continue or a redirect) */
    if (s->head.len + bytes > 256 * 1024)
        return 0; /* headers beyond any sane size */
    return buffer_append(&s->head, p, bytes) ? 0 : bytes;
}

static session *check_session(lua_State *L, int i)
{
    session *s = luaL_checkudata(L, i, HTTP_MT);
    if (s->curl == NULL)
        luaL_error(L, "attempt to use a closed http session");
    return s;
}

/* ---- options ------------------------------------------------------------------------------ */

static long opt_ms(lua_State *L, int t, const char *name, long def)
{
    lua_getfield(L, t, name);
    long v = def;
    if (!lua_isnil(L, -1)) {
        lua_Number n = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || !(n > 0 && n <= 86400)) /* NaN fails too */
            luaL_error(L, "bad option '%s' (seconds from 0 to 86400 expected)", name);
        v = (long)(lua_tonumber(L, -1) * 1000);
        if (v < 1)
            v = 1;
    }
    lua_pop(L, 1);
    return v;
}

static int opt_bool(lua_State *L, int t, const char *name, int def)
{
    lua_getfield(L, t, name);
    int v = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isboolean(L, -1))
            luaL_error(L, "bad option '%s' (boolean expected)", name);
        v = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

/* strdup of an optional string field; stored at *dst before anything else can raise */
static void opt_string(lua_State *L, int t, const char *name, char **dst)
{
    lua_getfield(L, t, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad option '%s' (string expected)", name);
        size_t len;
        const char *v = lua_tolstring(L, -1, &len);
        if (strlen(v) != len)
            luaL_error(L, "bad option '%s' (embedded zero byte)", name);
        *dst = strdup(v);
        if (*dst == NULL)
            luaL_error(L, "not enough memory");
    }
    lua_pop(L, 1);
}

static const char *const known_options[] = {
    "connect_timeout", "timeout",          "ca_file",       "verify", "max_response", "user_agent",
    "proxy",           "follow_redirects", "max_redirects", "http2",  "compressed",   NULL,
};

/* http([opts]) -> session */
static int l_http(lua_State *L)
{
    pthread_once(&global_once, global_init);
    if (global_status != CURLE_OK)
        return luaL_error(L, "libcurl failed to initialise: %s", curl_easy_strerror(global_status));
    int has_opts = !lua_isnoneornil(L, 1);
    if (has_opts) {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 1)) {
            lua_pop(L, 1);
            int ok = 0;
            if (lua_type(L, -1) == LUA_TSTRING)
                for (const char *const *o = known_options; *o; o++)
                    ok |= strcmp(*o, lua_tostring(L, -1)) == 0;
            if (!ok)
                return luaL_error(L, "unknown http option '%s'",
                                  lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
        }
    }
    /* the userdata first, zeroed with its metatable, so a later raise leaks nothing */
    session *s = lua_newuserdatauv(L, sizeof(*s), 0);
    memset(s, 0, sizeof(*s));
    luaL_setmetatable(L, HTTP_MT);
    s->connect_timeout_ms = 5000;
    s->timeout_ms = 65000;
    s->verify = 1;
    s->http2 = 1;
    s->compressed = 1;
    s->max_redirects = 5;
    s->max_response = DEFAULT_MAX_RESPONSE;
    if (has_opts) {
        s->connect_timeout_ms = opt_ms(L, 1, "connect_timeout", s->connect_timeout_ms);
        s->timeout_ms = opt_ms(L, 1, "timeout", s->timeout_ms);
        s->verify = opt_bool(L, 1, "verify", 1);
        s->follow_redirects = opt_bool(L, 1, "follow_redirects", 0);
        s->http2 = opt_bool(L, 1, "http2", 1);
        s->compressed = opt_bool(L, 1, "compressed", 1);
        lua_getfield(L, 1, "max_response");
        if (!lua_isnil(L, -1)) {
            lua_Number n = lua_tonumber(L, -1);
            /* the range first, NaN failing it: casting NaN or a huge value is undefined */
            if (lua_type(L, -1) != LUA_TNUMBER || !(n >= 1 && n <= 1e15) ||
                n != (lua_Number)(long long)n)
                return luaL_error(L, "bad option 'max_response' (a positive byte count expected)");
            s->max_response = (size_t)n;
        }
        lua_getfield(L, 1, "max_redirects");
        if (!lua_isnil(L, -1)) {
            lua_Number n = lua_tonumber(L, -1);
            if (lua_type(L, -1) != LUA_TNUMBER || !(n >= 0 && n <= 50) || n != (lua_Number)(long)n)
                return luaL_error(L, "bad option 'max_redirects' (0 to 50 expected)");
            s->max_redirects = (long)n;
        }
        lua_pop(L, 2);
        opt_string(L, 1, "ca_file", &s->ca_file);
        opt_string(L, 1, "proxy", &s->proxy);
        opt_string(L, 1, "user_agent", &s->user_agent);
    }
    s->one.curl = curl_easy_init();
    if (s->one.curl == NULL)
        return luaL_error(L, "libcurl could not create a handle");
    s->curl = s->one.curl;
    return 1;
}

/* ---- request ------------------------------------------------------------------------------ */

static int has_crlf(const char *p, size_t n)
{
    return memchr(p, '\r', n) != NULL || memchr(p, '\n', n) != NULL || memchr(p, '\0', n) != NULL;
}

/* Builds s->req_headers from the table at t: { ["Name"] = "value", … }. Raises on misuse. */
static void build_headers(lua_State *L, transfer *s, int t)
{
    s->req_headers = curl_slist_append(NULL, "Expect:"); /* no 100-continue round trip */
    if (s->req_headers == NULL)
        luaL_error(L, "not enough memory");
    if (lua_isnil(L, t))
        return;
    if (!lua_istable(L, t))
        luaL_error(L, "bad request field 'headers' (table expected)");
    luaL_Buffer b;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (lua_type(L, -2) != LUA_TSTRING ||
            (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
            luaL_error(L, "bad request header (string name and string value expected)");
        size_t nlen, vlen;
        const char *name = lua_tolstring(L, -2, &nlen);
        lua_pushvalue(L, -1);
        const char *value = lua_tolstring(L, -1, &vlen);
        if (nlen == 0 || has_crlf(name, nlen) || has_crlf(value, vlen) || memchr(name, ':', nlen))
            luaL_error(L, "bad request header (empty name, ':' in the name, or CR/LF/NUL)");
        luaL_buffinit(L, &b);
        luaL_addlstring(&b, name, nlen);
        luaL_addlstring(&b, vlen ? ": " : ";", vlen ? 2 : 1); /* "Name;" sends an empty value */
        luaL_addlstring(&b, value, vlen);
        luaL_pushresult(&b);
        struct curl_slist *n = curl_slist_append(s->req_headers, lua_tostring(L, -1));
        if (n == NULL)
            luaL_error(L, "not enough memory");
        s->req_headers = n;
        lua_pop(L, 3);
    }
}

static const char *classify(CURLcode rc, int too_large)
{
    if (too_large)
        return "too_large";
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "dns";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    case CURLE_SEND_ERROR:
        return "send";
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
        return "recv";
    case CURLE_FILESIZE_EXCEEDED:
        return "too_large";
    default:
        return "request"; /* a malformed URL, an unsupported scheme, too many redirects, … */
    }
}

/* Pushes the response headers as { ["lower-case-name"] = value }, repeats joined by ", ". */
static void push_headers(lua_State *L, const buffer *h)
{
    lua_newtable(L);
    if (h->data == NULL)
        return;
    const char *p = h->data, *end = h->data + h->len;
    const char *eol = memchr(p, '\n', (size_t)(end - p)); /* skip the status line */
    p = eol ? eol + 1 : end;
    while (p < end) {
        eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(line_end - p));
        if (colon && colon > p) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (const char *c = p; c < colon; c++)
                luaL_addchar(&b, (char)tolower((unsigned char)*c));
            luaL_pushresult(&b);
            const char *v = colon + 1, *ve = line_end;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            lua_pushvalue(L, -1);
            lua_rawget(L, -3);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                lua_pushlstring(L, v, (size_t)(ve - v));
            } else {
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, v, (size_t)(ve - v));
                lua_concat(L, 3);
            }
            lua_rawset(L, -3);
        }
        p = eol ? eol + 1 : end;
    }
}

/* libcurl's progress callback: non-zero ends the transfer (CURLE_ABORTED_BY_CALLBACK) when the
 * host says the call must end; called at least once a second, waiting included. */
static int on_progress(void *p, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)p, (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    return b24_interrupted && b24_interrupted();
}

static void setopt_common(session *s, transfer *t)
{
    CURL *c = t->curl;
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, s->verify ? 1L : 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, s->verify ? 2L : 0L);
    if (s->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, s->ca_file);
    if (s->proxy)
        curl_easy_setopt(c, CURLOPT_PROXY, s->proxy);
    curl_easy_setopt(c, CURLOPT_USERAGENT, s->user_agent ? s->user_agent : DEFAULT_USER_AGENT);
    if (s->compressed)
        curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
    if (s->http2 && (curl_version_info(CURLVERSION_NOW)->features & CURL_VERSION_HTTP2))
        curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    else
        curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    if (s->follow_redirects) {
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, s->max_redirects);
    }
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)s->max_response);
}

/* Sets up t for the request table at index `req` (validated; raises on misuse). The body is
 * used in place: the caller keeps the request table on the stack until the transfer ends. */
static void prepare(lua_State *L, session *s, transfer *t, int req)
{
    int top = lua_gettop(L);
    lua_getfield(L, req, "url");     /* top+1 */
    lua_getfield(L, req, "method");  /* top+2 */
    lua_getfield(L, req, "body");    /* top+3 */
    lua_getfield(L, req, "headers"); /* top+4 */
    size_t url_len, body_len = 0;
    /* before tolstring, which would turn a number into one */
    if (lua_type(L, top + 1) != LUA_TSTRING)
        luaL_error(L, "bad request field 'url' (string expected)");
    const char *url = lua_tolstring(L, top + 1, &url_len);
    if (strlen(url) != url_len)
        luaL_error(L, "bad request field 'url' (embedded zero byte)");
    if (!lua_isnil(L, top + 2) && lua_type(L, top + 2) != LUA_TSTRING)
        luaL_error(L, "bad request field 'method' (string expected)");
    const char *method = lua_isnil(L, top + 2) ? "GET" : lua_tostring(L, top + 2);
    if (*method == '\0' || strlen(method) > 32)
        luaL_error(L, "bad request field 'method' (upper-case token expected)");
    for (const char *m = method; *m; m++)
        if (!isupper((unsigned char)*m))
            luaL_error(L, "bad request field 'method' (upper-case token expected)");
    const char *body = NULL;
    if (!lua_isnil(L, top + 3)) {
        if (lua_type(L, top + 3) != LUA_TSTRING)
            luaL_error(L, "bad request field 'body' (string expected)");
        body = lua_tolstring(L, top + 3, &body_len); /* anchored by the request table */
        if (strcmp(method, "HEAD") == 0)
            luaL_error(L, "bad request field 'body' (a HEAD request has no body)");
    }
    long timeout_ms = opt_ms(L, req, "timeout", s->timeout_ms);
    long connect_ms = opt_ms(L, req, "connect_timeout", s->connect_timeout_ms);
    /* fresh: a connection of its own, closed after. On a reused connection that dies before
     * any answer, libcurl silently sends the request again: a write must not risk that. */
    int fresh = opt_bool(L, req, "fresh", 0);

    curl_slist_free_all(t->req_headers);
    t->req_headers = NULL;
    build_headers(L, t, top + 4);

    CURL *c = t->curl;
    curl_easy_reset(c); /* keeps the connection cache, DNS cache and TLS sessions */
    t->max_response = s->max_response;
    setopt_common(s, t);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, t->req_headers);
    if (fresh) {
        curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
    }
    if (strcmp(method, "GET") == 0 && body == NULL) {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (body || strcmp(method, "POST") == 0) {
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
        }
    }
    t->errbuf[0] = '\0';
    t->too_large = 0;
    t->body.len = 0;
    t->head.len = 0;
    lua_settop(L, top);
}

/* After a transfer: pushes the response table (1 value), or nil, message, kind, sent (4). */
static int push_result(lua_State *L, transfer *t, CURLcode rc)
{
    CURL *c = t->curl;
    if (rc != CURLE_OK) {
        /* Could any of the request have reached the server? Not while the transfer never got
         * as far as sending: libcurl sets the pretransfer time once a connection (fresh or
         * reused) is ready to send, and leaves it 0 after DNS, connect, TLS or URL errors. */
        curl_off_t pretransfer = 0;
        curl_easy_getinfo(c, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
        int never_sent = pretransfer == 0;
        lua_pushnil(L);
        if (t->too_large) {
            char limit[32];
            snprintf(limit, sizeof limit, "%zu", t->max_response);
            lua_pushfstring(L, "response larger than the limit of %s bytes", limit);
        } else
            lua_pushstring(L, t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc));
        lua_pushstring(L, classify(rc, t->too_large));
        lua_pushboolean(L, !never_sent); /* false: nothing can have reached the server */
        buffer_release(&t->body, 1 << 20);
        return 4;
    }
    long status = 0, version = 0, connects = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(c, CURLINFO_HTTP_VERSION, &version);
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &connects);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    push_headers(L, &t->head);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, t->body.data ? t->body.data : "", t->body.len);
    lua_setfield(L, -2, "body");
    lua_pushstring(L, version == CURL_HTTP_VERSION_2_0   ? "2"
                      : version == CURL_HTTP_VERSION_1_0 ? "1.0"
                                                         : "1.1");
    lua_setfield(L, -2, "http_version");
    lua_pushboolean(L, connects == 0);
    lua_setfield(L, -2, "reused");
    buffer_release(&t->body, 1 << 20);
    buffer_release(&t->head, 64 * 1024);
    return 1;
}

/* session:request{ url, method = "GET", headers = {}, body = "", timeout, connect_timeout, fresh }
 *   -> { status, headers, body, http_version, reused } | nil, message, kind, sent */
static int l_request(lua_State *L)
{
    session *s = check_session(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    prepare(L, s, &s->one, 2);
    CURLcode rc = curl_easy_perform(s->one.curl);
    return push_result(L, &s->one, rc);
}

/* session:request_many{ req, req, … } -> { res | { error, kind, sent }, … } in the same order:
 * the requests run at once on the session's multi handle (at most MANY_MAX). */
static int l_request_many(lua_State *L)
{
    session *s = check_session(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    size_t n = (size_t)lua_rawlen(L, 2);
    if (n > MANY_MAX)
        return luaL_error(L, "request_many: at most %d requests at once", MANY_MAX);
    if (s->multi == NULL && (s->multi = curl_multi_init()) == NULL)
        return luaL_error(L, "libcurl could not create a multi handle");
    for (size_t i = 0; i < n; i++) { /* every request checked and set up before any runs */
        transfer *t = &s->many[i];
        if (t->curl == NULL && (t->curl = curl_easy_init()) == NULL)
            return luaL_error(L, "libcurl could not create a handle");
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        if (!lua_istable(L, -1))
            return luaL_error(L, "request_many: request %d is not a table", (int)i + 1);
        prepare(L, s, t, lua_gettop(L));
        lua_pop(L, 1); /* its strings stay anchored by the list at index 2 */
        curl_easy_setopt(t->curl, CURLOPT_PRIVATE, (void *)t);
        t->rc = CURLE_OK;
    }
    for (size_t i = 0; i < n; i++)
        curl_multi_add_handle(s->multi, s->many[i].curl);
    int running = 0;
    CURLMcode mc = curl_multi_perform(s->multi, &running);
    while (mc == CURLM_OK && running > 0) {
        mc = curl_multi_poll(s->multi, NULL, 0, 1000, NULL);
        if (mc == CURLM_OK)
            mc = curl_multi_perform(s->multi, &running);
    }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        transfer *t = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        if (t)
            t->rc = msg->data.result;
    }
    for (size_t i = 0; i < n; i++) {
        curl_multi_remove_handle(s->multi, s->many[i].curl);
        if (mc != CURLM_OK && s->many[i].rc == CURLE_OK) /* the multi loop itself failed */
            s->many[i].rc = CURLE_RECV_ERROR;
    }
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        int got = push_result(L, &s->many[i], s->many[i].rc);
        if (got == 4) { /* nil, message, kind, sent -> { error, kind, sent } */
            lua_createtable(L, 0, 3);
            lua_insert(L, -4);
            lua_setfield(L, -4, "sent");
            lua_setfield(L, -3, "kind");
            lua_setfield(L, -2, "error");
            lua_remove(L, -2); /* the nil */
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static void transfer_free(transfer *t)
{
    if (t->curl) {
        curl_easy_cleanup(t->curl);
        t->curl = NULL;
    }
    curl_slist_free_all(t->req_headers);
    t->req_headers = NULL;
    free(t->body.data);
    free(t->head.data);
    memset(&t->body, 0, sizeof t->body);
    memset(&t->head, 0, sizeof t->head);
}

/* Shared by close, __gc and __close: idempotent, leaves a closed session behind. */
static int l_close(lua_State *L)
{
    session *s = luaL_checkudata(L, 1, HTTP_MT);
    s->curl = NULL;
    transfer_free(&s->one);
    for (size_t i = 0; i < MANY_MAX; i++)
        transfer_free(&s->many[i]); /* removed from the multi handle after every run */
    if (s->multi) {
        curl_multi_cleanup(s->multi);
        s->multi = NULL;
    }
    free(s->ca_file);
    free(s->proxy);
    free(s->user_agent);
    s->ca_file = s->proxy = s->user_agent = NULL;
    return 0;
}

static int l_tostring(lua_State *L)
{
    session *s = luaL_checkudata(L, 1, HTTP_MT);
    lua_pushfstring(L, "bitrix24.core.Http (%s)", s->curl ? "open" : "closed");
    return 1;
}

/* http_features() -> { version, ssl, http2 } of the libcurl in use */
static int l_features(lua_State *L)
{
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, v->version);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, v->ssl_version ? v->ssl_version : "");
    lua_setfield(L, -2, "ssl");
    lua_pushboolean(L, (v->features & CURL_VERSION_HTTP2) != 0);
    lua_setfield(L, -2, "http2");
    return 1;
}

static const luaL_Reg session_methods[] = {
    {"request", l_request},
    {"request_many", l_request_many},
    {"close", l_close},
    {NULL, NULL},
};

static const luaL_Reg http_funcs[] = {
    {"http", l_http},
    {"http_features", l_features},
    {NULL, NULL},
};

void b24_http_open(lua_State *L)
{
    if (luaL_newmetatable(L, HTTP_MT)) {
        luaL_newlib(L, session_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, HTTP_MT);
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    luaL_setfuncs(L, http_funcs, 0);
    lua_pushinteger(L, MANY_MAX); /* core.http_many_max: what one request_many takes */
    lua_setfield(L, -2, "http_many_max");
}
