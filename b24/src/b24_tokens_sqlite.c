/* The token store's SQLite backend: see b24_tokens_impl.h. A connection of one Lua state, its
 * statements prepared once; every write is one short transaction (BEGIN IMMEDIATE, a busy
 * timeout), never left open across a Lua call: what a read returns stays in SQLite's row until
 * it is pushed. */
#include <stdio.h>
#include <string.h>

#include <sqlite3.h>

#include "b24_tokens_impl.h"

#define BUSY_MS 10000

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
_Static_assert(S_COUNT == STORE_STATEMENTS, "STORE_STATEMENTS is the statements' count");

/* Finalizes the statements and closes the connection; idempotent. */
void b24_tokens_sqlite_close(store *s)
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
int b24_tokens_sqlite_open(store *s, const char *path)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX;
    if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
        snprintf(s->err, sizeof s->err, "cannot open the token store %s: %s", path,
                 s->db ? sqlite3_errmsg(s->db) : "out of memory");
        b24_tokens_sqlite_close(s);
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
        b24_tokens_sqlite_close(s);
        return -1;
    }
    for (int i = 0; i < S_COUNT; i++)
        if (sqlite3_prepare_v3(s->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
            SQLITE_OK) {
            snprintf(s->err, sizeof s->err, "token store statement failed in %s: %s", path,
                     sqlite3_errmsg(s->db));
            b24_tokens_sqlite_close(s);
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

/* The record of key, pushed: a member_id first, else a domain. */
int b24_tokens_sqlite_get(lua_State *L, store *s, const char *key, size_t len)
{
    int order[2] = {S_GET, S_GET_DOMAIN};
    for (int k = 0; k < 2; k++) {
        sqlite3_stmt *st = s->st[order[k]];
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, key, (int)len, SQLITE_STATIC);
        int rc = step(s, order[k], "reading a portal");
        if (rc < 0)
            return -1;
        if (rc == 1) {
            record r;
            row_record(st, &r);
            push_record(L, &r); /* on a raise the row stays until the next call resets it */
            sqlite3_reset(st);
            return 1;
        }
    }
    return 0;
}

/* Every portal's record, pushed in an array ordered by member_id. */
int b24_tokens_sqlite_list(lua_State *L, store *s)
{
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
    return rc < 0 ? -1 : 0;
}

/* put: one upsert; swap: one transaction, with BEGIN IMMEDIATE. */
int b24_tokens_sqlite_write(store *s, const record *r, int partial, long long expect, double now,
                            long long *version)
{
    if (!partial) { /* one statement: atomic by itself */
        sqlite3_stmt *st = s->st[S_PUT];
        sqlite3_reset(st);
        bind_record(st, r, now);
        return run(s, S_PUT, "storing a portal", version) < 0 ? -1 : 1;
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
        rc = run(s, which, "swapping a portal's fields", version);
    if (rc == 0) {
        sqlite3_reset(s->st[S_VERSION]);
        sqlite3_bind_text(s->st[S_VERSION], 1, r->s[F_MEMBER_ID], (int)r->len[F_MEMBER_ID],
                          SQLITE_STATIC);
        if (run(s, S_VERSION, "reading a portal's version", &current) < 0)
            rc = -1;
    }
    rc = end(s, rc, "committing a swap");
    if (rc == 0)
        *version = current;
    return rc;
}

/* The portal and its lease, in one transaction. */
int b24_tokens_sqlite_delete(store *s, const char *member_id, size_t len)
{
    int stmts[2] = {S_DELETE, S_DELETE_LEASE};
    int rc = begin(s, "deleting a portal");
    for (int k = 0; k < 2 && rc == 0; k++) {
        sqlite3_reset(s->st[stmts[k]]);
        sqlite3_bind_text(s->st[stmts[k]], 1, member_id, (int)len, SQLITE_STATIC);
        rc = run(s, stmts[k], "deleting a portal", NULL) < 0 ? -1 : 0;
    }
    return end(s, rc, "committing a delete") < 0 ? -1 : 0;
}

/* The lease taken (or extended), else its holder read, in one transaction committed before it
 * returns. */
int b24_tokens_sqlite_lease(store *s, const char *member_id, size_t len, const char *holder,
                            size_t holder_len, double now, double until, char *held,
                            double *held_until)
{
    sqlite3_stmt *st = s->st[S_LEASE], *q = s->st[S_HOLDER];
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, member_id, (int)len, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, holder, (int)holder_len, SQLITE_STATIC);
    sqlite3_bind_double(st, 3, until);
    sqlite3_bind_double(st, 4, now);
    int rc = begin(s, "taking a lease");
    if (rc == 0)
        rc = run(s, S_LEASE, "taking a lease", NULL);
    if (rc == 0) {
        sqlite3_reset(q);
        sqlite3_bind_text(q, 1, member_id, (int)len, SQLITE_STATIC);
        int got = step(s, S_HOLDER, "reading a lease");
        if (got == 1) {
            const char *h = (const char *)sqlite3_column_text(q, 0);
            snprintf(held, MAX_KEY + 1, "%s", h ? h : "");
            *held_until = sqlite3_column_double(q, 1);
            sqlite3_reset(q);
        } else if (got < 0) {
            rc = -1;
        }
    }
    return end(s, rc, "committing a lease");
}

/* The lease deleted when holder holds it. */
int b24_tokens_sqlite_release(store *s, const char *member_id, size_t len, const char *holder,
                              size_t holder_len)
{
    sqlite3_stmt *st = s->st[S_RELEASE];
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, member_id, (int)len, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, holder, (int)holder_len, SQLITE_STATIC);
    return run(s, S_RELEASE, "releasing a lease", NULL);
}
