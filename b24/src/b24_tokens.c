/* The application token store of b24.host: see b24_tokens.h. One userdata type for both
 * stores: a SQLite connection of this Lua state (short transactions, a busy timeout), or the
 * process-wide memory store (one sorted array under one mutex, as b24_dedup.c). No Lua call is
 * made under the mutex or inside a transaction that could be left open: what a call reads is
 * copied out first (into a userdata buffer, or kept in SQLite's row until it is pushed). */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <sqlite3.h>

#include "b24_clock.h"
#include "b24_tokens.h"

#define STORE_TYPE "b24.host.TokenStore"
#define CACHE_KEY "b24.host.tokens"
#define MAX_KEY 255
#define MAX_FIELD 4096
#define MAX_PORTALS 100000
#define BUSY_MS 10000

/* the string fields, in the order of the table's columns */
enum {
    F_MEMBER_ID,
    F_DOMAIN,
    F_CLIENT_ID,
    F_CLIENT_ENDPOINT,
    F_SERVER_ENDPOINT,
    F_ACCESS_TOKEN,
    F_REFRESH_TOKEN,
    F_APPLICATION_TOKEN,
    F_SCOPE,
    F_USER_ID,
    NSTR
};
#define F_EXPIRES_AT NSTR /* its bit in a record's mask */

static const char *const names[NSTR] = {
    "member_id",    "domain",        "client_id",         "client_endpoint", "server_endpoint",
    "access_token", "refresh_token", "application_token", "scope",           "user_id"};

/* A record's values, borrowed from Lua strings, a SQLite row or a memory snapshot. */
typedef struct record {
    const char *s[NSTR]; /* NULL: absent */
    size_t len[NSTR];
    unsigned mask; /* the fields a swap was given: bit i for s[i], bit F_EXPIRES_AT */
    int has_expires;
    double expires_at;
    long long version;
    double updated_at;
} record;

/* ---- the SQLite store ------------------------------------------------------------------- */

#define COLS                                                                                       \
    "member_id, domain, client_id, client_endpoint, server_endpoint, access_token,"                \
    " refresh_token, application_token, scope, user_id, expires_at, version, updated_at"
#define VALUES "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1, ?12)"
/* swap: column n takes ?n when its bit is set in the mask ?14 (bit i: string field i, 1024:
 * expires_at), else keeps its value */
#define SWAP_SET                                                                                   \
    "domain = CASE WHEN ?14 & 2 THEN ?2 ELSE domain END, "                                         \
    "client_id = CASE WHEN ?14 & 4 THEN ?3 ELSE client_id END, "                                   \
    "client_endpoint = CASE WHEN ?14 & 8 THEN ?4 ELSE client_endpoint END, "                       \
    "server_endpoint = CASE WHEN ?14 & 16 THEN ?5 ELSE server_endpoint END, "                      \
    "access_token = CASE WHEN ?14 & 32 THEN ?6 ELSE access_token END, "                            \
    "refresh_token = CASE WHEN ?14 & 64 THEN ?7 ELSE refresh_token END, "                          \
    "application_token = CASE WHEN ?14 & 128 THEN ?8 ELSE application_token END, "                 \
    "scope = CASE WHEN ?14 & 256 THEN ?9 ELSE scope END, "                                         \
    "user_id = CASE WHEN ?14 & 512 THEN ?10 ELSE user_id END, "                                    \
    "expires_at = CASE WHEN ?14 & 1024 THEN ?11 ELSE expires_at END, "

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS b24_app_portals ("
    "  member_id TEXT PRIMARY KEY, domain TEXT, client_id TEXT, client_endpoint TEXT,"
    "  server_endpoint TEXT, access_token TEXT, refresh_token TEXT, application_token TEXT,"
    "  scope TEXT, user_id TEXT, expires_at REAL, version INTEGER NOT NULL,"
    "  updated_at REAL NOT NULL);"
    "CREATE INDEX IF NOT EXISTS b24_app_portals_domain ON b24_app_portals(domain COLLATE NOCASE);"
    "CREATE TABLE IF NOT EXISTS b24_app_leases ("
    "  member_id TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL);";

enum {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_GET,
    S_GET_DOMAIN,
    S_LIST,
    S_PUT,
    S_SWAP,
    S_CREATE,
    S_VERSION,
    S_DELETE,
    S_DELETE_LEASE,
    S_LEASE,
    S_HOLDER,
    S_RELEASE,
    S_COUNT
};

static const char *const sql[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_GET] = "SELECT " COLS " FROM b24_app_portals WHERE member_id = ?1",
    [S_GET_DOMAIN] = "SELECT " COLS " FROM b24_app_portals WHERE domain = ?1 COLLATE NOCASE"
                     " ORDER BY updated_at DESC, member_id LIMIT 1",
    [S_LIST] = "SELECT " COLS " FROM b24_app_portals ORDER BY member_id",
    [S_PUT] = "INSERT INTO b24_app_portals (" COLS ") VALUES " VALUES
              " ON CONFLICT(member_id) DO UPDATE SET domain = excluded.domain,"
              " client_id = excluded.client_id, client_endpoint = excluded.client_endpoint,"
              " server_endpoint = excluded.server_endpoint, access_token = excluded.access_token,"
              " refresh_token = excluded.refresh_token,"
              " application_token = excluded.application_token, scope = excluded.scope,"
              " user_id = excluded.user_id, expires_at = excluded.expires_at,"
              " version = version + 1, updated_at = excluded.updated_at RETURNING version",
    [S_SWAP] = "UPDATE b24_app_portals SET " SWAP_SET "version = version + 1, updated_at = ?12"
               " WHERE member_id = ?1 AND version = ?13 RETURNING version",
    [S_CREATE] = "INSERT INTO b24_app_portals (" COLS ") VALUES " VALUES
                 " ON CONFLICT(member_id) DO NOTHING RETURNING version",
    [S_VERSION] = "SELECT version FROM b24_app_portals WHERE member_id = ?1",
    [S_DELETE] = "DELETE FROM b24_app_portals WHERE member_id = ?1",
    [S_DELETE_LEASE] = "DELETE FROM b24_app_leases WHERE member_id = ?1",
    [S_LEASE] = "INSERT INTO b24_app_leases (member_id, holder, expires_at) VALUES (?1, ?2, ?3)"
                " ON CONFLICT(member_id) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at"
                " WHERE holder = excluded.holder OR expires_at <= ?4 RETURNING 1",
    [S_HOLDER] = "SELECT holder, expires_at FROM b24_app_leases WHERE member_id = ?1",
    [S_RELEASE] = "DELETE FROM b24_app_leases WHERE member_id = ?1 AND holder = ?2 RETURNING 1",
};

typedef struct store {
    sqlite3 *db; /* NULL: the memory store (or closed) */
    sqlite3_stmt *st[S_COUNT];
    int memory;
    char err[320]; /* the last failure's message */
} store;

/* Finalizes the statements and closes the connection; idempotent. */
static void store_close(store *s)
{
    for (int i = 0; i < S_COUNT; i++) {
        sqlite3_finalize(s->st[i]);
        s->st[i] = NULL;
    }
    if (s->db)
        sqlite3_close(s->db);
    s->db = NULL;
}

/* Opens path into s: 0, or -1 with the message in s->err. */
static int store_open(store *s, const char *path)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX;
    if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
        snprintf(s->err, sizeof s->err, "cannot open the token store %s: %s", path,
                 s->db ? sqlite3_errmsg(s->db) : "out of memory");
        store_close(s);
        return -1;
    }
    sqlite3_busy_timeout(s->db, BUSY_MS);
    char *msg = NULL;
    /* processes creating one file at once: the switch to WAL takes no busy handler, so a
     * locked file is tried again, for as long as the busy timeout */
    int rc, waited = 0;
    while (((rc = sqlite3_exec(s->db, schema, NULL, NULL, &msg)) & 0xff) == SQLITE_BUSY &&
           waited < BUSY_MS) {
        sqlite3_free(msg);
        msg = NULL;
        waited += sqlite3_sleep(5);
    }
    if (rc != SQLITE_OK) {
        snprintf(s->err, sizeof s->err, "cannot create the token store's tables in %s: %s", path,
                 msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        store_close(s);
        return -1;
    }
    for (int i = 0; i < S_COUNT; i++)
        if (sqlite3_prepare_v3(s->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
            SQLITE_OK) {
            snprintf(s->err, sizeof s->err, "token store statement failed in %s: %s", path,
                     sqlite3_errmsg(s->db));
            store_close(s);
            return -1;
        }
    return 0;
}

/* Records what failed (never a value: SQLite's messages name tables and columns). */
static int fail(store *s, const char *what)
{
    snprintf(s->err, sizeof s->err, "token store: %s failed: %s", what, sqlite3_errmsg(s->db));
    return -1;
}

/* Steps statement i once: 1 with a row (left for the caller, who resets), 0 when done (reset),
 * -1 on failure (reset, message in s->err). */
static int step(store *s, int i, const char *what)
{
    int rc = sqlite3_step(s->st[i]);
    if (rc == SQLITE_ROW)
        return 1;
    if (rc != SQLITE_DONE)
        fail(s, what);
    sqlite3_reset(s->st[i]);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* Runs statement i to its end: its first row's first column in *out (when out), 1 with a row,
 * 0 without, -1 on failure. */
static int run(store *s, int i, const char *what, long long *out)
{
    int rc = step(s, i, what);
    if (rc == 1) {
        if (out)
            *out = sqlite3_column_int64(s->st[i], 0);
        sqlite3_reset(s->st[i]);
    }
    return rc;
}

/* BEGIN IMMEDIATE: the write lock up front (waiting up to the busy timeout), so a transaction
 * never fails half-way on a lock upgrade. 0, or -1. */
static int begin(store *s, const char *what)
{
    return run(s, S_BEGIN, what, NULL) < 0 ? -1 : 0;
}

/* Commits, or rolls back after a failure (rc < 0); rc, or -1 when the commit fails. */
static int end(store *s, int rc, const char *what)
{
    if (rc >= 0 && run(s, S_COMMIT, what, NULL) == 0)
        return rc;
    if (!sqlite3_get_autocommit(s->db)) { /* keeps the first failure's message */
        sqlite3_step(s->st[S_ROLLBACK]);
        sqlite3_reset(s->st[S_ROLLBACK]);
    }
    return -1;
}

/* Binds a string, or NULL for an absent one; the string outlives the statement's step. */
static void bind_text(sqlite3_stmt *st, int n, const char *v, size_t len)
{
    if (v)
        sqlite3_bind_text(st, n, v, (int)len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, n);
}

/* ?1..?10 the strings, ?11 expires_at, ?12 updated_at */
static void bind_record(sqlite3_stmt *st, const record *r, double now)
{
    for (int i = 0; i < NSTR; i++)
        bind_text(st, i + 1, r->s[i], r->len[i]);
    if (r->has_expires)
        sqlite3_bind_double(st, 11, r->expires_at);
    else
        sqlite3_bind_null(st, 11);
    sqlite3_bind_double(st, 12, now);
}

/* The record of a row of COLS; valid until the statement steps or resets. */
static void row_record(sqlite3_stmt *st, record *r)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < NSTR; i++)
        if (sqlite3_column_type(st, i) != SQLITE_NULL) {
            r->s[i] = (const char *)sqlite3_column_text(st, i);
            r->len[i] = (size_t)sqlite3_column_bytes(st, i);
        }
    r->has_expires = sqlite3_column_type(st, NSTR) != SQLITE_NULL;
    r->expires_at = sqlite3_column_double(st, NSTR);
    r->version = sqlite3_column_int64(st, NSTR + 1);
    r->updated_at = sqlite3_column_double(st, NSTR + 2);
}

/* ---- the memory store ------------------------------------------------------------------- */

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
static int mem_write(const record *r, int partial, long long expect, double now, long long *version,
                     const char **err)
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

/* ---- the Lua interface ------------------------------------------------------------------ */

/* The store at argument 1 (raises when it is not one, or is closed). */
static store *check_store(lua_State *L)
{
    store *s = luaL_checkudata(L, 1, STORE_TYPE);
    if (!s->memory && s->db == NULL)
        luaL_error(L, "the token store is closed");
    return s;
}

/* A string argument, strictly (a number is misuse too). */
static const char *check_string(lua_State *L, int arg, size_t *len)
{
    if (lua_type(L, arg) != LUA_TSTRING)
        luaL_typeerror(L, arg, "string");
    return lua_tolstring(L, arg, len);
}

/* nil, err for an empty or oversized key-like string (member_id, domain, holder); 0 when fine */
static int bad_key(lua_State *L, const char *what, size_t len)
{
    if (len > 0 && len <= MAX_KEY)
        return 0;
    lua_pushnil(L);
    if (len == 0)
        lua_pushfstring(L, "token store: %s is empty", what);
    else
        lua_pushfstring(L, "token store: %s is longer than %d bytes", what, MAX_KEY);
    return 2;
}

/* nil, err: a runtime failure's results. */
static int push_failure(lua_State *L, const char *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* Reads the record fields of the table at idx into r, their strings left on the stack (raises
 * on a wrong type). nil, err pushed (2) for an oversized field, else 0. false clears a field
 * (a swap's), like nil in a put. */
static int read_record(lua_State *L, int idx, record *r)
{
    memset(r, 0, sizeof *r);
    luaL_checkstack(L, NSTR + 4, "token store record");
    for (int i = 0; i < NSTR; i++) {
        int t = lua_getfield(L, idx, names[i]);
        if (t == LUA_TNIL) {
            lua_pop(L, 1);
            continue;
        }
        r->mask |= 1u << i;
        if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1))
            continue; /* cleared; the false stays on the stack, harmless */
        if (i == F_USER_ID && t == LUA_TNUMBER) { /* 42 and 42.0 (a JSON decoder's) are "42" */
            lua_Number n = lua_tonumber(L, -1);
            if (!(n == floor(n) && fabs(n) < 9007199254740992.0))
                return luaL_error(L,
                                  "bad record field 'user_id' (an integer or a string expected)");
            lua_pushfstring(L, "%I", (LUA_INTEGER)n);
            lua_replace(L, -2);
        } else if (t != LUA_TSTRING) {
            return luaL_error(L, "bad record field '%s' (string expected, got %s)", names[i],
                              luaL_typename(L, -1));
        }
        r->s[i] = lua_tolstring(L, -1, &r->len[i]);
        size_t max = i == F_MEMBER_ID || i == F_DOMAIN ? MAX_KEY : MAX_FIELD;
        if (r->len[i] > max) {
            lua_pushnil(L);
            lua_pushfstring(L, "token store: %s is longer than %d bytes", names[i], (int)max);
            return 2;
        }
    }
    int t = lua_getfield(L, idx, "expires_at");
    if (t == LUA_TNUMBER) {
        r->has_expires = 1;
        r->expires_at = lua_tonumber(L, -1);
        r->mask |= 1u << F_EXPIRES_AT;
    } else if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
        r->mask |= 1u << F_EXPIRES_AT;
    } else if (t != LUA_TNIL) {
        return luaL_error(L, "bad record field 'expires_at' (number expected, got %s)",
                          luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return 0;
}

/* Pushes r as a record table: its present fields, version and updated_at. */
static void push_record(lua_State *L, const record *r)
{
    lua_createtable(L, 0, NSTR + 3);
    for (int i = 0; i < NSTR; i++)
        if (r->s[i]) {
            lua_pushlstring(L, r->s[i], r->len[i]);
            lua_setfield(L, -2, names[i]);
        }
    if (r->has_expires) {
        lua_pushnumber(L, r->expires_at);
        lua_setfield(L, -2, "expires_at");
    }
    lua_pushinteger(L, (lua_Integer)r->version);
    lua_setfield(L, -2, "version");
    lua_pushnumber(L, r->updated_at);
    lua_setfield(L, -2, "updated_at");
}

/* Pushes the memory store's record of key (or nothing, 0): sized under the lock, copied into a
 * userdata made outside it, then pushed. */
static int mem_get(lua_State *L, const char *key, size_t len)
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

/* store:get(key) -> record | nil | nil, err */
static int tokens_get(lua_State *L)
{
    store *s = check_store(L);
    size_t len;
    const char *key = check_string(L, 2, &len);
    if (len == 0)
        return 0;
    if (len > MAX_KEY)
        return bad_key(L, "key", len);
    if (s->memory) {
        if (mem_get(L, key, len))
            return 1;
        lua_pushnil(L);
        return 1;
    }
    int order[2] = {S_GET, S_GET_DOMAIN};
    for (int k = 0; k < 2; k++) {
        sqlite3_stmt *st = s->st[order[k]];
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, key, (int)len, SQLITE_STATIC);
        int rc = step(s, order[k], "reading a portal");
        if (rc < 0)
            return push_failure(L, s->err);
        if (rc == 1) {
            record r;
            row_record(st, &r);
            push_record(L, &r); /* on a raise the row stays until the next call resets it */
            sqlite3_reset(st);
            return 1;
        }
    }
    lua_pushnil(L);
    return 1;
}

/* The memory store's portals as an array on the stack (copied as mem_get does). */
static void mem_list(lua_State *L)
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

/* store:list() -> { record, ... } | nil, err */
static int tokens_list(lua_State *L)
{
    store *s = check_store(L);
    if (s->memory) {
        mem_list(L);
        return 1;
    }
    sqlite3_stmt *st = s->st[S_LIST];
    sqlite3_reset(st);
    lua_newtable(L);
    lua_Integer n = 0;
    int rc;
    while ((rc = step(s, S_LIST, "listing the portals")) == 1) {
        record r;
        row_record(st, &r);
        push_record(L, &r);
        lua_rawseti(L, -2, ++n);
    }
    if (rc < 0)
        return push_failure(L, s->err);
    return 1;
}

/* Writes r (put: all fields; swap: the masked ones when version expect): pushes the results. */
static int write_record(lua_State *L, store *s, record *r, int partial, long long expect)
{
    double now = b24_wall_now();
    long long version = 0;
    if (s->memory) {
        const char *err = NULL;
        int rc = mem_write(r, partial, expect, now, &version, &err);
        if (rc < 0)
            return push_failure(L, err);
        if (rc == 0) {
            lua_pushboolean(L, 0);
            lua_pushinteger(L, (lua_Integer)version);
            return 2;
        }
        lua_pushinteger(L, (lua_Integer)version);
        return 1;
    }
    if (!partial) { /* one statement: atomic by itself */
        sqlite3_stmt *st = s->st[S_PUT];
        sqlite3_reset(st);
        bind_record(st, r, now);
        if (run(s, S_PUT, "storing a portal", &version) < 0)
            return push_failure(L, s->err);
        lua_pushinteger(L, (lua_Integer)version);
        return 1;
    }
    /* swap: the update (or the creation) and, when refused, the version that refused it */
    int which = expect == 0 ? S_CREATE : S_SWAP;
    sqlite3_stmt *st = s->st[which];
    sqlite3_reset(st);
    bind_record(st, r, now);
    if (which == S_SWAP) {
        sqlite3_bind_int64(st, 13, expect);
        sqlite3_bind_int64(st, 14, (sqlite3_int64)r->mask);
    }
    long long current = 0;
    int rc = begin(s, "swapping a portal's fields");
    if (rc == 0)
        rc = run(s, which, "swapping a portal's fields", &version);
    if (rc == 0) {
        sqlite3_reset(s->st[S_VERSION]);
        sqlite3_bind_text(s->st[S_VERSION], 1, r->s[F_MEMBER_ID], (int)r->len[F_MEMBER_ID],
                          SQLITE_STATIC);
        if (run(s, S_VERSION, "reading a portal's version", &current) < 0)
            rc = -1;
    }
    rc = end(s, rc, "committing a swap");
    if (rc < 0)
        return push_failure(L, s->err);
    if (rc == 0) {
        lua_pushboolean(L, 0);
        lua_pushinteger(L, (lua_Integer)current);
        return 2;
    }
    lua_pushinteger(L, (lua_Integer)version);
    return 1;
}

/* store:put(record) -> version | nil, err */
static int tokens_put(lua_State *L)
{
    store *s = check_store(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    record r;
    int n = read_record(L, 2, &r);
    if (n)
        return n;
    if (r.s[F_MEMBER_ID] == NULL)
        return luaL_error(L, "bad record field 'member_id' (string expected, got %s)",
                          (r.mask & 1u) ? "false" : "nil");
    if ((n = bad_key(L, "member_id", r.len[F_MEMBER_ID])))
        return n;
    return write_record(L, s, &r, 0, -1);
}

/* store:swap(member_id, version, fields) -> new_version | false, current_version | nil, err */
static int tokens_swap(lua_State *L)
{
    store *s = check_store(L);
    size_t len;
    const char *member_id = check_string(L, 2, &len);
    lua_Integer expect = luaL_checkinteger(L, 3);
    luaL_argcheck(L, expect >= 0, 3, "a version (0 or more) expected");
    luaL_checktype(L, 4, LUA_TTABLE);
    record r;
    int n = read_record(L, 4, &r);
    if (n)
        return n;
    if ((n = bad_key(L, "member_id", len)))
        return n;
    r.s[F_MEMBER_ID] = member_id; /* the argument's, whatever fields say */
    r.len[F_MEMBER_ID] = len;
    r.mask &= ~1u;
    return write_record(L, s, &r, 1, (long long)expect);
}

/* store:delete(member_id) -> true | nil, err */
static int tokens_delete(lua_State *L)
{
    store *s = check_store(L);
    size_t len;
    const char *member_id = check_string(L, 2, &len);
    int n = bad_key(L, "member_id", len);
    if (n)
        return n;
    if (s->memory) {
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
        lua_pushboolean(L, 1);
        return 1;
    }
    int stmts[2] = {S_DELETE, S_DELETE_LEASE};
    int rc = begin(s, "deleting a portal");
    for (int k = 0; k < 2 && rc == 0; k++) {
        sqlite3_reset(s->st[stmts[k]]);
        sqlite3_bind_text(s->st[stmts[k]], 1, member_id, (int)len, SQLITE_STATIC);
        rc = run(s, stmts[k], "deleting a portal", NULL) < 0 ? -1 : 0;
    }
    if (end(s, rc, "committing a delete") < 0)
        return push_failure(L, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* The memory store's lease: 1 taken; 0 with the holder (copied into holder, NUL-terminated)
 * and its expiry; -1 with *err. */
static int mem_lease(const char *member_id, size_t len, const char *holder, size_t holder_len,
                     double now, double until, char *held, double *held_until, const char **err)
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

/* store:lease(member_id, holder, seconds) -> true | false, holder_now, expires_at | nil, err */
static int tokens_lease(lua_State *L)
{
    store *s = check_store(L);
    size_t len, holder_len;
    const char *member_id = check_string(L, 2, &len);
    const char *holder = check_string(L, 3, &holder_len);
    double seconds = luaL_checknumber(L, 4);
    luaL_argcheck(L, seconds > 0 && isfinite(seconds), 4, "seconds (more than 0) expected");
    int n = bad_key(L, "member_id", len);
    if (n || (n = bad_key(L, "holder", holder_len)))
        return n;
    double now = b24_wall_now();
    char held[MAX_KEY + 1] = "";
    double held_until = 0;
    int rc;
    if (s->memory) {
        const char *err = NULL;
        rc = mem_lease(member_id, len, holder, holder_len, now, now + seconds, held, &held_until,
                       &err);
        if (rc < 0)
            return push_failure(L, err);
    } else {
        sqlite3_stmt *st = s->st[S_LEASE], *q = s->st[S_HOLDER];
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, member_id, (int)len, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, holder, (int)holder_len, SQLITE_STATIC);
        sqlite3_bind_double(st, 3, now + seconds);
        sqlite3_bind_double(st, 4, now);
        rc = begin(s, "taking a lease");
        if (rc == 0)
            rc = run(s, S_LEASE, "taking a lease", NULL);
        if (rc == 0) {
            sqlite3_reset(q);
            sqlite3_bind_text(q, 1, member_id, (int)len, SQLITE_STATIC);
            int got = step(s, S_HOLDER, "reading a lease");
            if (got == 1) {
                const char *h = (const char *)sqlite3_column_text(q, 0);
                snprintf(held, sizeof held, "%s", h ? h : "");
                held_until = sqlite3_column_double(q, 1);
                sqlite3_reset(q);
            } else if (got < 0) {
                rc = -1;
            }
        }
        if ((rc = end(s, rc, "committing a lease")) < 0)
            return push_failure(L, s->err);
    }
    if (rc == 1) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushstring(L, held);
    lua_pushnumber(L, held_until);
    return 3;
}

/* store:release(member_id, holder) -> true (holder held it) | false | nil, err */
static int tokens_release(lua_State *L)
{
    store *s = check_store(L);
    size_t len, holder_len;
    const char *member_id = check_string(L, 2, &len);
    const char *holder = check_string(L, 3, &holder_len);
    int n = bad_key(L, "member_id", len);
    if (n || (n = bad_key(L, "holder", holder_len)))
        return n;
    int released = 0;
    if (s->memory) {
        pthread_mutex_lock(&mem.lock);
        lease *l = mem_find_lease(member_id, len);
        if (l && l->holder_len == holder_len && memcmp(l->holder, holder, holder_len) == 0) {
            mem_drop_lease(l);
            released = 1;
        }
        pthread_mutex_unlock(&mem.lock);
    } else {
        sqlite3_stmt *st = s->st[S_RELEASE];
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, member_id, (int)len, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, holder, (int)holder_len, SQLITE_STATIC);
        released = run(s, S_RELEASE, "releasing a lease", NULL);
        if (released < 0)
            return push_failure(L, s->err);
    }
    lua_pushboolean(L, released);
    return 1;
}

/* __gc and __close: lets go of the connection; idempotent. */
static int tokens_close(lua_State *L)
{
    store *s = luaL_checkudata(L, 1, STORE_TYPE);
    store_close(s);
    return 0;
}

/* __tostring: which kind of store, never a value in it. */
static int tokens_tostring(lua_State *L)
{
    store *s = luaL_checkudata(L, 1, STORE_TYPE);
    lua_pushstring(L, s->memory ? "b24 token store (memory)" : "b24 token store (SQLite)");
    return 1;
}

static char *configured_path;
static int configured;

/* What tokens() without a path gets; called once, before any state runs a script. */
void b24_tokens_configure(const char *path)
{
    free(configured_path);
    configured_path = path ? copy(path, strlen(path)) : NULL;
    configured = 1;
}

/* b24.host.tokens([path]) -> the store of this state for path (made on the first call). */
int b24_tokens_open(lua_State *L)
{
    static const luaL_Reg methods[] = {{"get", tokens_get},         {"put", tokens_put},
                                       {"swap", tokens_swap},       {"delete", tokens_delete},
                                       {"list", tokens_list},       {"lease", tokens_lease},
                                       {"release", tokens_release}, {NULL, NULL}};
    const char *path;
    if (lua_isnoneornil(L, 1)) {
        if (!configured)
            return luaL_error(L, "b24.host.tokens: no token store: give the path of a SQLite file "
                                 "(or \"memory\"); only b24 serve has one of its own");
        path = configured_path ? configured_path : "memory";
    } else {
        path = check_string(L, 1, NULL);
        luaL_argcheck(L, *path, 1, "a path (or \"memory\") expected");
    }
    int memory = strcmp(path, "memory") == 0;
    lua_settop(L, 1);                                  /* [1] keeps path alive */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, CACHE_KEY); /* [2] path -> store */
    if (lua_getfield(L, 2, path) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    store *s = lua_newuserdatauv(L, sizeof *s, 0); /* before the connection: a raise leaks none */
    memset(s, 0, sizeof *s);
    s->memory = memory;
    if (luaL_newmetatable(L, STORE_TYPE)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, tokens_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, tokens_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, tokens_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_setmetatable(L, -2);
    if (!memory && store_open(s, path) != 0)
        return luaL_error(L, "b24.host.tokens: %s", s->err);
    lua_pushvalue(L, -1);
    lua_setfield(L, 2, path);
    return 1;
}
