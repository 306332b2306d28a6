/* The token store's memory backend: see b24_tokens_impl.h. One process-wide store shared by
 * every thread and Lua state: the portals in one array sorted by member_id and the leases in
 * another, under one mutex (as b24_dedup.c). No Lua call is made under the mutex: what a read
 * returns is sized under it, copied under it into a userdata made outside it, then pushed. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "b24_tokens_impl.h"

#define MAX_PORTALS 100000

typedef struct portal {
    char *s[NSTR];
    size_t len[NSTR];
    int has_expires;
    double expires_at;
    long long version;
    double updated_at;
} portal;

typedef struct lease {
    char *member_id, *holder;
    size_t len, holder_len;
    double expires_at;
} lease;

static struct {
    pthread_mutex_t lock;
    portal **portals; /* sorted by member_id, bytewise */
    size_t n, cap;
    lease *leases;
    size_t nleases, lease_cap;
} mem = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, NULL, 0, 0};

/* memcmp order, a prefix first: SQLite's BINARY collation */
static int compare(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

/* The position of member_id in mem.portals, or where it goes (*found 0). */
static size_t mem_find(const char *key, size_t len, int *found)
{
    size_t lo = 0, hi = mem.n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const portal *p = mem.portals[mid];
        int c = compare(p->s[F_MEMBER_ID], p->len[F_MEMBER_ID], key, len);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = 0;
    return lo;
}

/* The portal of a member_id, else the latest updated of a domain; NULL when none. */
static const portal *mem_lookup(const char *key, size_t len)
{
    int found;
    size_t i = mem_find(key, len, &found);
    if (found)
        return mem.portals[i];
    const portal *best = NULL;
    for (i = 0; i < mem.n; i++) {
        const portal *p = mem.portals[i];
        if (p->s[F_DOMAIN] && p->len[F_DOMAIN] == len &&
            strncasecmp(p->s[F_DOMAIN], key, len) == 0 &&
            (best == NULL || p->updated_at > best->updated_at))
            best = p;
    }
    return best;
}

/* A snapshot of a portal: this head, then the strings' bytes. */
typedef struct snap_head {
    size_t len[NSTR]; /* SIZE_MAX: absent */
    int has_expires;
    double expires_at;
    long long version;
    double updated_at;
} snap_head;

/* The bytes p's snapshot takes. */
static size_t snap_size(const portal *p)
{
    size_t n = sizeof(snap_head);
    for (int i = 0; i < NSTR; i++)
        n += p->s[i] ? p->len[i] : 0;
    return n;
}

/* Writes p's snapshot at buf (snap_size(p) bytes); the bytes written. */
static size_t snap_write(const portal *p, char *buf)
{
    snap_head h;
    memset(&h, 0, sizeof h);
    size_t n = sizeof h;
    for (int i = 0; i < NSTR; i++) {
        h.len[i] = p->s[i] ? p->len[i] : SIZE_MAX;
        if (p->s[i]) {
            memcpy(buf + n, p->s[i], p->len[i]);
            n += p->len[i];
        }
    }
    h.has_expires = p->has_expires;
    h.expires_at = p->expires_at;
    h.version = p->version;
    h.updated_at = p->updated_at;
    memcpy(buf, &h, sizeof h);
    return n;
}

/* The record of the snapshot at buf (borrowing its bytes); the snapshot's size. */
static size_t snap_read(const char *buf, record *r)
{
    snap_head h;
    memcpy(&h, buf, sizeof h);
    memset(r, 0, sizeof *r);
    size_t n = sizeof h;
    for (int i = 0; i < NSTR; i++)
        if (h.len[i] != SIZE_MAX) {
            r->s[i] = buf + n;
            r->len[i] = h.len[i];
            n += h.len[i];
        }
    r->has_expires = h.has_expires;
    r->expires_at = h.expires_at;
    r->version = h.version;
    r->updated_at = h.updated_at;
    return n;
}

/* A NUL-terminated copy of len bytes; NULL without memory. */
static char *copy(const char *s, size_t len)
{
    char *c = malloc(len + 1);
    if (c) {
        memcpy(c, s, len);
        c[len] = '\0';
    }
    return c;
}

/* Frees a portal of the memory store and its strings. */
static void portal_free(portal *p)
{
    for (int i = 0; i < NSTR; i++)
        free(p->s[i]);
    free(p);
}

/* Writes r (all fields, or the masked ones when partial) into the portal of r's member_id,
 * made when missing: when expect >= 0 only if its version is expect (0: missing). 1 with the
 * new version in *version, 0 with the current one (a swap refused), -1 with *err. */
int b24_tokens_memory_write(const record *r, int partial, long long expect, double now,
                            long long *version, const char **err)
{
    pthread_mutex_lock(&mem.lock);
    int found, rc = 1;
    size_t at = mem_find(r->s[F_MEMBER_ID], r->len[F_MEMBER_ID], &found);
    portal *p = found ? mem.portals[at] : NULL;
    char *fresh[NSTR] = {NULL};
    int replace[NSTR] = {0};
    if (expect >= 0 && (p ? p->version : 0) != expect) {
        *version = p ? p->version : 0;
        rc = 0;
        goto out;
    }
    if (p == NULL && mem.n >= MAX_PORTALS) {
        *err = "token store: the memory store holds 100000 portals, its most";
        rc = -1;
        goto out;
    }
    for (int i = 0; i < NSTR; i++) {
        replace[i] = p == NULL || !partial || (r->mask & (1u << i));
        if (replace[i] && r->s[i] && (fresh[i] = copy(r->s[i], r->len[i])) == NULL)
            goto oom;
    }
    if (p == NULL) {
        if (mem.n == mem.cap) {
            size_t cap = mem.cap ? mem.cap * 2 : 64;
            portal **grown = realloc(mem.portals, cap * sizeof *grown);
            if (grown == NULL)
                goto oom;
            mem.portals = grown;
            mem.cap = cap;
        }
        if ((p = calloc(1, sizeof *p)) == NULL)
            goto oom;
        memmove(mem.portals + at + 1, mem.portals + at, (mem.n - at) * sizeof *mem.portals);
        mem.portals[at] = p;
        mem.n++;
    }
    for (int i = 0; i < NSTR; i++)
        if (replace[i]) {
            free(p->s[i]);
            p->s[i] = fresh[i];
            p->len[i] = r->len[i];
        }
    if (!partial || (r->mask & (1u << F_EXPIRES_AT)) || p->version == 0) {
        p->has_expires = r->has_expires;
        p->expires_at = r->expires_at;
    }
    *version = ++p->version;
    p->updated_at = now;
    goto out;
oom:
    for (int i = 0; i < NSTR; i++)
        free(fresh[i]);
    *err = "token store: out of memory";
    rc = -1;
out:
    pthread_mutex_unlock(&mem.lock);
    return rc;
}

/* The memory store's lease of member_id (under the lock), or NULL. */
static lease *mem_find_lease(const char *member_id, size_t len)
{
    for (size_t i = 0; i < mem.nleases; i++)
        if (mem.leases[i].len == len && memcmp(mem.leases[i].member_id, member_id, len) == 0)
            return &mem.leases[i];
    return NULL;
}

/* Removes a lease (under the lock): the last one takes its place. */
static void mem_drop_lease(lease *l)
{
    free(l->member_id);
    free(l->holder);
    *l = mem.leases[--mem.nleases];
}

/* Pushes the memory store's record of key (or nothing, 0): sized under the lock, copied into a
 * userdata made outside it, then pushed. */
int b24_tokens_memory_get(lua_State *L, const char *key, size_t len)
{
    for (;;) {
        pthread_mutex_lock(&mem.lock);
        const portal *p = mem_lookup(key, len);
        size_t size = p ? snap_size(p) : 0;
        pthread_mutex_unlock(&mem.lock);
        if (p == NULL)
            return 0;
        char *buf = lua_newuserdatauv(L, size, 0);
        pthread_mutex_lock(&mem.lock);
        p = mem_lookup(key, len);
        int fits = p && snap_size(p) <= size;
        if (fits)
            snap_write(p, buf);
        pthread_mutex_unlock(&mem.lock);
        if (p == NULL) {
            lua_pop(L, 1);
            return 0;
        }
        if (fits) {
            record r;
            snap_read(buf, &r);
            push_record(L, &r);
            lua_remove(L, -2);
            return 1;
        }
        lua_pop(L, 1); /* it grew meanwhile: again */
    }
}

/* The memory store's portals as an array on the stack (copied as b24_tokens_memory_get does). */
void b24_tokens_memory_list(lua_State *L)
{
    for (;;) {
        pthread_mutex_lock(&mem.lock);
        size_t size = 0, n = mem.n;
        for (size_t i = 0; i < mem.n; i++)
            size += snap_size(mem.portals[i]);
        pthread_mutex_unlock(&mem.lock);
        char *buf = lua_newuserdatauv(L, size ? size : 1, 0);
        pthread_mutex_lock(&mem.lock);
        size_t need = 0;
        for (size_t i = 0; i < mem.n; i++)
            need += snap_size(mem.portals[i]);
        int fits = need <= size;
        if (fits) {
            n = mem.n;
            for (size_t i = 0, at = 0; i < n; i++)
                at += snap_write(mem.portals[i], buf + at);
        }
        pthread_mutex_unlock(&mem.lock);
        if (fits) {
            lua_createtable(L, n > INT32_MAX ? 0 : (int)n, 0);
            size_t at = 0;
            for (size_t i = 0; i < n; i++) {
                record r;
                at += snap_read(buf + at, &r);
                push_record(L, &r);
                lua_rawseti(L, -2, (lua_Integer)i + 1);
            }
            lua_remove(L, -2);
            return;
        }
        lua_pop(L, 1);
    }
}

/* The portal of member_id and its lease, under the lock. */
void b24_tokens_memory_delete(const char *member_id, size_t len)
{
    pthread_mutex_lock(&mem.lock);
    int found;
    size_t at = mem_find(member_id, len, &found);
    if (found) {
        portal_free(mem.portals[at]);
        memmove(mem.portals + at, mem.portals + at + 1, (mem.n - at - 1) * sizeof *mem.portals);
        mem.n--;
    }
    lease *l = mem_find_lease(member_id, len);
    if (l)
        mem_drop_lease(l);
    pthread_mutex_unlock(&mem.lock);
}

/* The memory store's lease: 1 taken; 0 with the holder (copied into holder, NUL-terminated)
 * and its expiry; -1 with *err. */
int b24_tokens_memory_lease(const char *member_id, size_t len, const char *holder,
                            size_t holder_len, double now, double until, char *held,
                            double *held_until, const char **err)
{
    int rc = 1;
    pthread_mutex_lock(&mem.lock);
    lease *l = mem_find_lease(member_id, len);
    if (l && l->expires_at > now &&
        !(l->holder_len == holder_len && memcmp(l->holder, holder, holder_len) == 0)) {
        memcpy(held, l->holder, l->holder_len + 1);
        *held_until = l->expires_at;
        rc = 0;
    } else if (l) {
        char *h = copy(holder, holder_len);
        if (h) {
            free(l->holder);
            l->holder = h;
            l->holder_len = holder_len;
            l->expires_at = until;
        } else {
            *err = "token store: out of memory";
            rc = -1;
        }
    } else {
        for (size_t i = mem.nleases; mem.nleases >= MAX_PORTALS && i-- > 0;)
            if (mem.leases[i].expires_at <= now)
                mem_drop_lease(&mem.leases[i]);
        if (mem.nleases >= MAX_PORTALS) {
            *err = "token store: the memory store holds 100000 leases, its most";
            rc = -1;
        } else if (mem.nleases == mem.lease_cap) {
            size_t cap = mem.lease_cap ? mem.lease_cap * 2 : 64;
            lease *grown = realloc(mem.leases, cap * sizeof *grown);
            if (grown) {
                mem.leases = grown;
                mem.lease_cap = cap;
            }
        }
        if (rc == 1) {
            lease fresh = {copy(member_id, len), copy(holder, holder_len), len, holder_len, until};
            if (mem.nleases < mem.lease_cap && fresh.member_id && fresh.holder) {
                mem.leases[mem.nleases++] = fresh;
            } else {
                free(fresh.member_id);
                free(fresh.holder);
                *err = "token store: out of memory";
                rc = -1;
            }
        }
    }
    pthread_mutex_unlock(&mem.lock);
    return rc;
}

/* The lease dropped when holder holds it, under the lock. */
int b24_tokens_memory_release(const char *member_id, size_t len, const char *holder,
                              size_t holder_len)
{
    int released = 0;
    pthread_mutex_lock(&mem.lock);
    lease *l = mem_find_lease(member_id, len);
    if (l && l->holder_len == holder_len && memcmp(l->holder, holder, holder_len) == 0) {
        mem_drop_lease(l);
        released = 1;
    }
    pthread_mutex_unlock(&mem.lock);
    return released;
}
