/* The process-wide deduplication store of b24 serve --sync: see b24_dedup.h. One table of keys
 * under one mutex; a delivery that must wait for the run of its key sleeps on a condition
 * variable in its worker thread, so the work-queue rules hold across every Lua state:
 *   duplicate keys (adds, deletes): a repeat while running or dedup_ttl after is a duplicate;
 *   merge keys (the rest): a repeat while running waits for that run, then runs itself (at most
 *   one waits per key); a repeat while one waits is merged into it, answered at once. */
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "b24_clock.h"
#include "b24_dedup.h"
#include "b24_log.h"
#include "b24_metrics.h"

/* a power of two; with at most dedup_max (100,000) keys kept: short chains */
#define NBUCKETS 65536

enum { IDLE, RUNNING, DONE };

typedef struct entry {
    struct entry *next;
    struct entry *older, *newer; /* the DONE entries, oldest first (the kept keys' order) */
    uint64_t hash;
    size_t key_len;
    int duplicate_kind;
    int state;   /* IDLE (a waiter takes it over), RUNNING, DONE (duplicate kind: until expiry) */
    int waiting; /* a delivery waits for the run going on */
    pthread_t owner;
    double expiry;
    char key[]; /* key_len bytes and a NUL */
} entry;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static entry *buckets[NBUCKETS];
static entry *oldest, *newest; /* the DONE list */
static long done_count;
static long done_max = 1;       /* the largest dedup_max a router gave (store_new) */
static _Thread_local int owned; /* runs this thread began and has not finished */

int b24_dedup_is_duplicate_kind(const char *event)
{
    size_t n = event ? strlen(event) : 0;
    return (n >= 3 && strcmp(event + n - 3, "ADD") == 0) ||
           (n >= 6 && strcmp(event + n - 6, "DELETE") == 0);
}

const char *b24_dedup_object(const char *key, size_t key_len, size_t *len)
{
    const char *first = memchr(key, '|', key_len);
    if (first == NULL)
        return NULL;
    const char *second = memchr(first + 1, '|', key_len - (size_t)(first + 1 - key));
    if (second == NULL)
        return NULL;
    *len = key_len - (size_t)(second + 1 - key);
    return second + 1;
}

static uint64_t hash(const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static entry **bucket_of(uint64_t h)
{
    return &buckets[h & (NBUCKETS - 1)];
}

/* Off the DONE list (e is on it). */
static void unlist(entry *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        newest = e->older;
    e->older = e->newer = NULL;
    done_count--;
}

/* Out of its bucket, off the DONE list when on it, freed. */
static void drop(entry *e)
{
    for (entry **p = bucket_of(e->hash); *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    if (e->state == DONE)
        unlist(e);
    free(e);
}

/* The kept keys past their expiry, and the oldest while more than done_max are kept, dropped:
 * the store holds what the router's dedup_max allows, as its in-memory store does. */
static void prune(double now)
{
    while (oldest && (oldest->expiry <= now || done_count > done_max))
        drop(oldest);
}

/* The entry of key; NULL when none. The hash is compared first, so a chain costs no key
 * comparison but the match's. */
static entry *find(uint64_t h, const char *key, size_t len)
{
    for (entry *e = *bucket_of(h); e; e = e->next)
        if (e->hash == h && e->key_len == len && memcmp(e->key, key, len) == 0)
            return e;
    return NULL;
}

static void take(entry *e)
{
    if (e->state == DONE)
        unlist(e);
    e->state = RUNNING;
    e->owner = pthread_self();
    owned++;
}

/* store:begin(key, dedup, now, ttl) -> "run" | "duplicate" | "merged"; may wait. */
static int store_begin(lua_State *L)
{
    size_t len;
    const char *key = luaL_checklstring(L, 2, &len);
    int duplicate_kind = strcmp(luaL_checkstring(L, 3), "duplicate") == 0;
    const char *outcome = "run";
    uint64_t h = hash(key, len);
    double now = b24_now();
    pthread_mutex_lock(&lock);
    prune(now);
    entry *e = find(h, key, len);
    if (e == NULL) {
        e = malloc(sizeof *e + len + 1);
        if (e == NULL) { /* no memory to remember it: run it, never drop it */
            pthread_mutex_unlock(&lock);
            lua_pushliteral(L, "run");
            return 1;
        }
        memset(e, 0, sizeof *e);
        memcpy(e->key, key, len);
        e->key[len] = '\0';
        e->hash = h;
        e->key_len = len;
        e->duplicate_kind = duplicate_kind;
        entry **bucket = bucket_of(h);
        e->next = *bucket;
        *bucket = e;
        take(e);
    } else if (e->state == DONE && e->expiry <= now) { /* kept past its time: a new delivery */
        e->duplicate_kind = duplicate_kind;
        take(e);
    } else if (duplicate_kind || e->duplicate_kind) {
        if (e->state == RUNNING || e->state == DONE) {
            outcome = "duplicate";
            b24_metrics_delivery(B24_DELIVERY_DUPLICATE);
        } else {
            take(e);
        }
    } else if (e->waiting) {
        outcome = "merged";
        b24_metrics_delivery(B24_DELIVERY_MERGED);
    } else if (e->state == RUNNING) {
        b24_metrics_delivery(B24_DELIVERY_RERUN);
        if (b24_log_enabled(B24_INFO)) {
            size_t olen = 0;
            const char *object = b24_dedup_object(key, len, &olen);
            char id[128];
            snprintf(id, sizeof id, "%.*s", object ? (int)(olen < 120 ? olen : 120) : 1,
                     object ? object : "-");
            b24_log(B24_INFO, "delivery waits for the run of its object, then runs", "id", id,
                    NULL);
        }
        e->waiting = 1;
        while (e->state == RUNNING)
            pthread_cond_wait(&changed, &lock);
        e->waiting = 0;
        take(e);
    } else {
        take(e);
    }
    pthread_mutex_unlock(&lock);
    lua_pushstring(L, outcome);
    return 1;
}

/* Ends e's run (under the lock): remembered dedup_ttl (a duplicate kind that ran ok; the newest
 * of the kept keys), handed to its waiter, or forgotten. */
static void end_run(entry *e, int ok, double ttl)
{
    owned--;
    if (e->waiting) {
        e->state = IDLE;
        pthread_cond_broadcast(&changed);
    } else if (e->duplicate_kind && ok) {
        e->state = DONE;
        e->expiry = b24_now() + ttl;
        e->older = newest;
        e->newer = NULL;
        if (newest)
            newest->newer = e;
        else
            oldest = e;
        newest = e;
        done_count++;
    } else {
        drop(e);
    }
}

/* store:finish(key, dedup, ok, now, ttl) -> false (a waiter runs itself). */
static int store_finish(lua_State *L)
{
    size_t len;
    const char *key = luaL_checklstring(L, 2, &len);
    int ok = lua_toboolean(L, 4);
    double ttl = luaL_optnumber(L, 6, 86400);
    uint64_t h = hash(key, len);
    pthread_mutex_lock(&lock);
    entry *e = find(h, key, len);
    if (e && e->state == RUNNING && pthread_equal(e->owner, pthread_self()))
        end_run(e, ok, ttl);
    pthread_mutex_unlock(&lock);
    lua_pushboolean(L, 0);
    return 1;
}

void b24_dedup_release_thread(void)
{
    if (owned <= 0)
        return;
    pthread_t self = pthread_self();
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < NBUCKETS && owned > 0; i++) {
        entry *e = buckets[i];
        while (e) {
            entry *next = e->next;
            if (e->state == RUNNING && pthread_equal(e->owner, self))
                end_run(e, 0, 0);
            e = next;
        }
    }
    pthread_mutex_unlock(&lock);
}

/* function(dedup_max) -> the store (one table; every call gives an equal one). The store keeps
 * the largest dedup_max given by a router of the process. */
static int store_new(lua_State *L)
{
    lua_Number max = luaL_optnumber(L, 1, 100000);
    pthread_mutex_lock(&lock);
    if (max >= 1 && max <= 1e9 && (long)max > done_max)
        done_max = (long)max;
    pthread_mutex_unlock(&lock);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, store_begin);
    lua_setfield(L, -2, "begin");
    lua_pushcfunction(L, store_finish);
    lua_setfield(L, -2, "finish");
    return 1;
}

int luaopen_b24_dedup(lua_State *L)
{
    lua_pushcfunction(L, store_new);
    return 1;
}
