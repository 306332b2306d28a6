/* b24.emulator.post: fire-and-forget HTTP POSTs from a thread of their own, in the order
 * queued. The emulator delivers its outgoing events through it, the way a portal does: once,
 * after the change, never retried, a failure only logged. The thread starts with the first
 * post; one libcurl handle keeps its connections alive between posts. At the process's exit
 * (atexit) what is queued gets a few seconds to go out; the rest is dropped and logged. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <lauxlib.h>

#include "b24_clock.h"
#include "b24_log.h"
#include "b24_post.h"

#define QUEUE_MAX 10000
#define CONNECT_TIMEOUT_MS 5000L
#define TIMEOUT_MS 10000L
#define EXIT_SECONDS 5.0 /* what is queued at exit gets this long */

typedef struct post {
    struct post *next;
    char *url;
    char *body;
    size_t body_len;
    struct curl_slist *headers;
} post;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER, idle = PTHREAD_COND_INITIALIZER;
static post *head, *tail;
static size_t queued;
static int stopping, busy;
static pthread_t thread;
/* The post thread's life, under lock. Only the first stop drains and joins: a second one (or a
 * stop before any post) must not join a thread that is gone or never was, which is undefined
 * (glibc dereferences a null thread). */
static enum { THREAD_NONE, THREAD_RUNNING, THREAD_STOPPING, THREAD_STOPPED } state = THREAD_NONE;

static void post_free(post *p)
{
    free(p->url);
    free(p->body);
    curl_slist_free_all(p->headers);
    free(p);
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/* The URL as logged: its origin only, since a path or query may carry a secret. */
static void origin(const char *url, char *out, size_t n)
{
    const char *host = strstr(url, "://");
    host = host ? host + 3 : url;
    size_t len = (size_t)(host - url) + strcspn(host, "/?#");
    snprintf(out, n, "%.*s%s", (int)len, url, url[len] ? "/..." : "");
}

static void deliver(CURL *c, post *p)
{
    char where[300];
    origin(p->url, where, sizeof where);
    curl_easy_setopt(c, CURLOPT_URL, p->url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, p->body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)p->body_len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, p->headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    char status[16] = "";
    CURLcode rc = curl_easy_perform(c);
    long code = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    snprintf(status, sizeof status, "%ld", code);
    if (rc != CURLE_OK)
        b24_log(B24_WARN, "post failed; not retried", "url", where, "error", curl_easy_strerror(rc),
                NULL);
    else if (code < 200 || code > 299)
        b24_log(B24_WARN, "post refused; not retried", "url", where, "status", status, NULL);
    else
        b24_log(B24_DEBUG, "posted", "url", where, "status", status, NULL);
}

static void *run(void *unused)
{
    (void)unused;
    CURL *c = curl_easy_init();
    pthread_mutex_lock(&lock);
    for (;;) {
        while (head == NULL && !stopping) {
            pthread_cond_broadcast(&idle);
            pthread_cond_wait(&more, &lock);
        }
        if (head == NULL)
            break;
        post *p = head;
        head = p->next;
        if (head == NULL)
            tail = NULL;
        queued--;
        busy = 1;
        pthread_mutex_unlock(&lock);
        if (c)
            deliver(c, p);
        else
            b24_log(B24_WARN, "post failed; not retried", "error", "no curl handle", NULL);
        post_free(p);
        pthread_mutex_lock(&lock);
        busy = 0;
    }
    pthread_cond_broadcast(&idle);
    pthread_mutex_unlock(&lock);
    if (c)
        curl_easy_cleanup(c);
    return NULL;
}

static void stop_at_exit(void);

/* Queues a copy of the post; 0, or -1 with a reason in *why. Takes ownership of headers. */
static int enqueue(const char *url, const char *body, size_t body_len, struct curl_slist *headers,
                   const char **why)
{
    post *p = calloc(1, sizeof *p);
    if (p)
        p->headers = headers;
    if (p == NULL || (p->url = strdup(url)) == NULL || (p->body = malloc(body_len + 1)) == NULL) {
        if (p)
            post_free(p);
        else
            curl_slist_free_all(headers);
        *why = "out of memory";
        return -1;
    }
    memcpy(p->body, body, body_len);
    p->body[body_len] = '\0';
    p->body_len = body_len;
    pthread_mutex_lock(&lock);
    if (stopping || queued >= QUEUE_MAX) {
        pthread_mutex_unlock(&lock);
        post_free(p);
        *why = stopping ? "stopping" : "queue full";
        return -1;
    }
    if (state == THREAD_NONE) {
        curl_global_init(CURL_GLOBAL_DEFAULT); /* reference counted; the core did it already */
        /* the thread takes no signal, whatever the caller's mask: a host's signals (SIGHUP's
         * reload) go to the thread that waits for them, never here */
        sigset_t all, caller;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &caller);
        int started = pthread_create(&thread, NULL, run, NULL);
        pthread_sigmask(SIG_SETMASK, &caller, NULL);
        if (started != 0) {
            pthread_mutex_unlock(&lock);
            post_free(p);
            *why = "cannot start the post thread";
            return -1;
        }
        state = THREAD_RUNNING;
        atexit(stop_at_exit);
    }
    if (tail)
        tail->next = p;
    else
        head = p;
    tail = p;
    queued++;
    pthread_cond_signal(&more);
    pthread_mutex_unlock(&lock);
    return 0;
}

/* At exit: waits up to EXIT_SECONDS for the queue to empty, then ends the thread; what is
 * left is dropped (and logged). Later posts are refused ("stopping"). Idempotent: only the call
 * that finds the thread running drains and joins it; a second call, or one before any post,
 * returns at once. atexit runs it once per process today; the guard is what keeps any other
 * caller (a second exit path, a test) from joining a thread that is gone or never was. */
static void stop_at_exit(void)
{
    pthread_mutex_lock(&lock);
    if (state != THREAD_RUNNING) {
        stopping = 1; /* no thread will start after a stop */
        if (state == THREAD_NONE)
            state = THREAD_STOPPED;
        pthread_mutex_unlock(&lock);
        return;
    }
    state = THREAD_STOPPING;
    double deadline = b24_now() + EXIT_SECONDS;
    while ((head || busy) && b24_now() < deadline) {
        struct timespec ts = b24_clock_after(CLOCK_REALTIME, 0.05);
        pthread_cond_timedwait(&idle, &lock, &ts);
    }
    size_t dropped = queued;
    while (head) {
        post *p = head;
        head = p->next;
        post_free(p);
    }
    tail = NULL;
    queued = 0;
    stopping = 1;
    pthread_cond_signal(&more);
    pthread_mutex_unlock(&lock);
    pthread_join(thread, NULL);
    pthread_mutex_lock(&lock);
    state = THREAD_STOPPED;
    pthread_mutex_unlock(&lock);
    if (dropped) {
        char n[24];
        snprintf(n, sizeof n, "%zu", dropped);
        b24_log(B24_WARN, "posts dropped at exit", "count", n, NULL);
    }
}

/* post(url, body [, headers]) → true | nil, reason: queued for the post thread, which POSTs
 * it once; the outcome is only logged. */
static int l_post(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    size_t blen;
    const char *body = luaL_checklstring(L, 2, &blen);
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return luaL_argerror(L, 1, "an http:// or https:// URL expected");
    struct curl_slist *headers = NULL;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_settop(L, 3);
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
                curl_slist_free_all(headers);
                return luaL_argerror(L, 3, "string header names and values expected");
            }
            const char *name = lua_tostring(L, -2), *value = lua_tostring(L, -1);
            if (strpbrk(name, "\r\n:") || strpbrk(value, "\r\n") || !*name) {
                curl_slist_free_all(headers);
                return luaL_argerror(L, 3, "CR, LF or ':' in a header");
            }
            lua_pushfstring(L, "%s: %s", name, value);
            struct curl_slist *h = curl_slist_append(headers, lua_tostring(L, -1));
            lua_pop(L, 2);
            if (h == NULL) {
                curl_slist_free_all(headers);
                return luaL_error(L, "out of memory");
            }
            headers = h;
        }
    }
    /* no "Expect: 100-continue" round trip for larger bodies */
    struct curl_slist *h = curl_slist_append(headers, "Expect:");
    if (h == NULL) {
        curl_slist_free_all(headers);
        return luaL_error(L, "out of memory");
    }
    const char *why = NULL;
    if (enqueue(url, body, blen, h, &why) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* require("b24.emulator.post") */
int luaopen_b24_emulator_post(lua_State *L)
{
    static const luaL_Reg funcs[] = {{"post", l_post}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}
