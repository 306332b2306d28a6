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

#define NBUCKETS 4096

enum { IDLE, RUNNING, DONE };

typedef struct entry {
    struct entry *next;
    char *key;
    size_t key_len;
    int duplicate_kind;
    int state;   /* IDLE (a waiter takes it over), RUNNING, DONE (duplicate kind: until expiry) */
    int waiting; /* a delivery waits for the run going on */
    pthread_t owner;
    double expiry;
} entry;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static entry *buckets[NBUCKETS];
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

static size_t hash(const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 1099511628211ULL;
    return (size_t)(h % NBUCKETS);
}

/* The entry of key in its bucket, dropping the expired ones on the way; NULL when none. */
static entry *find(entry **bucket, const char *key, size_t len, double now)
{
    for (entry **p = bucket; *p;) {
        entry *e = *p;
        if (e->state == DONE && e->expiry <= now) {
            *p = e->next;
            free(e->key);
            free(e);
            continue;
        }
        if (e->key_len == len && memcmp(e->key, key, len) == 0)
            return e;
        p = &e->next;
    }
    return NULL;
}

static void drop(entry **bucket, entry *e)
{
    for (entry **p = bucket; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    free(e->key);
    free(e);
}

static void take(entry *e)
{
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
    pthread_mutex_lock(&lock);
    entry **bucket = &buckets[hash(key, len)];
    entry *e = find(bucket, key, len, b24_now());
    if (e == NULL) {
        e = calloc(1, sizeof *e);
        char *copy = malloc(len + 1);
        if (e == NULL || copy == NULL) { /* no memory to remember it: run it, never drop it */
            free(e);
            free(copy);
            pthread_mutex_unlock(&lock);
            lua_pushliteral(L, "run");
            return 1;
        }
        memcpy(copy, key, len);
        copy[len] = '\0';
        e->key = copy;
        e->key_len = len;
        e->duplicate_kind = duplicate_kind;
        e->next = *bucket;
        *bucket = e;
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

/* Ends e's run (under the lock): remembered dedup_ttl (a duplicate kind that ran ok), handed to
 * its waiter, or forgotten. */
static void end_run(entry **bucket, entry *e, int ok, double ttl)
{
    owned--;
    if (e->waiting) {
        e->state = IDLE;
        pthread_cond_broadcast(&changed);
    } else if (e->duplicate_kind && ok) {
        e->state = DONE;
        e->expiry = b24_now() + ttl;
    } else {
        drop(bucket, e);
    }
}

/* store:finish(key, dedup, ok, now, ttl) -> false (a waiter runs itself). */
static int store_finish(lua_State *L)
{
    size_t len;
    const char *key = luaL_checklstring(L, 2, &len);
    int ok = lua_toboolean(L, 4);
    double ttl = luaL_optnumber(L, 6, 86400);
    pthread_mutex_lock(&lock);
    entry **bucket = &buckets[hash(key, len)];
    entry *e = find(bucket, key, len, b24_now());
    if (e && e->state == RUNNING && pthread_equal(e->owner, pthread_self()))
        end_run(bucket, e, ok, ttl);
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
                end_run(&buckets[i], e, 0, 0);
            e = next;
        }
    }
    pthread_mutex_unlock(&lock);
}

/* function(dedup_max) -> the store (one table; every call gives an equal one). */
static int store_new(lua_State *L)
{
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
