/* The token store's PostgreSQL backend: see b24_tokens_impl.h. The tables are b24_pg.c's
 * (b24_app_portals, b24_app_leases: created or migrated when the store opens), shared by every
 * host of a fleet. One connection per Lua state (a libpq connection is not thread-safe), opened
 * with the store and closed with it; every call is one statement, atomic by itself, so no
 * transaction is ever left open between calls. Times (updated_at, leases) are the database
 * server's clock, extract(epoch from now()), so hosts whose clocks differ agree on a lease.
 *
 * The refresh lock is a row of b24_app_leases with a holder and an expiry, as in the SQLite
 * store, and not a pg_advisory_lock: an advisory lock belongs to a session, not to a holder, so
 * two holders in one Lua state (one connection) would both "hold" it and a refused caller could
 * not be told who holds it until when; a holder that hangs (an OAuth call that never answers)
 * would keep it for as long as its connection lives; and a session lock does not survive a
 * connection pooler. The row is taken with one INSERT ... ON CONFLICT DO UPDATE ... WHERE (row
 * locks make it atomic across hosts), and a dead holder's lease is taken over once it expires.
 *
 * A lost connection: before each call an idle connection whose server closed it (a restart, a
 * failover) is noticed and replaced, with a backoff between failed tries (0.1 s doubling to
 * 5 s: calls in between fail at once with the last reason). A connection lost during a call
 * fails that call with nil, err, except for the calls that can be repeated without a
 * difference (get, list, delete, lease: a lease taken twice by one holder is extended), which
 * are run once more on a new connection. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "b24_clock.h"
#include "b24_pg.h"
#include "b24_tokens_impl.h"

#define TIMEOUT_MS 10000 /* the statement timeout, as the SQLite store's busy timeout */
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0

#define NOW "extract(epoch from now())"
#define COLS                                                                                       \
    "member_id, domain, client_id, client_endpoint, server_endpoint, access_token,"                \
    " refresh_token, application_token, scope, user_id, expires_at, version, updated_at"
#define VALUES "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::float8, 1, " NOW ")"
/* swap: column n takes $n when its bit is set in the mask $12 (bit i: string field i, 1024:
 * expires_at), else keeps its value */
#define SWAP_SET                                                                                   \
    "domain = CASE WHEN $12::integer & 2 <> 0 THEN $2 ELSE domain END, "                           \
    "client_id = CASE WHEN $12::integer & 4 <> 0 THEN $3 ELSE client_id END, "                     \
    "client_endpoint = CASE WHEN $12::integer & 8 <> 0 THEN $4 ELSE client_endpoint END, "         \
    "server_endpoint = CASE WHEN $12::integer & 16 <> 0 THEN $5 ELSE server_endpoint END, "        \
    "access_token = CASE WHEN $12::integer & 32 <> 0 THEN $6 ELSE access_token END, "              \
    "refresh_token = CASE WHEN $12::integer & 64 <> 0 THEN $7 ELSE refresh_token END, "            \
    "application_token = CASE WHEN $12::integer & 128 <> 0 THEN $8 ELSE application_token END, "   \
    "scope = CASE WHEN $12::integer & 256 <> 0 THEN $9 ELSE scope END, "                           \
    "user_id = CASE WHEN $12::integer & 512 <> 0 THEN $10 ELSE user_id END, "                      \
    "expires_at = CASE WHEN $12::integer & 1024 <> 0 THEN $11::float8 ELSE expires_at END, "

enum {
    P_GET,
    P_GET_DOMAIN,
    P_LIST,
    P_PUT,
    P_SWAP,
    P_CREATE,
    P_VERSION,
    P_DELETE,
    P_LEASE,
    P_HOLDER,
    P_RELEASE,
    P_COUNT
};

static const char *const sql[P_COUNT] = {
    [P_GET] = "SELECT " COLS " FROM b24_app_portals WHERE member_id = $1",
    /* the index on lower(domain) finds the candidates; the C collation's lower() then keeps
     * the ASCII case rule of the other stores (a database's locale may fold more) */
    [P_GET_DOMAIN] = "SELECT " COLS " FROM b24_app_portals WHERE lower(domain) = lower($1)"
                     " AND lower(domain COLLATE \"C\") = lower($1 COLLATE \"C\")"
                     " ORDER BY updated_at DESC, member_id COLLATE \"C\" LIMIT 1",
    [P_LIST] = "SELECT " COLS " FROM b24_app_portals ORDER BY member_id COLLATE \"C\"",
    [P_PUT] = "INSERT INTO b24_app_portals (" COLS ") VALUES " VALUES
              " ON CONFLICT (member_id) DO UPDATE SET domain = excluded.domain,"
              " client_id = excluded.client_id, client_endpoint = excluded.client_endpoint,"
              " server_endpoint = excluded.server_endpoint, access_token = excluded.access_token,"
              " refresh_token = excluded.refresh_token,"
              " application_token = excluded.application_token, scope = excluded.scope,"
              " user_id = excluded.user_id, expires_at = excluded.expires_at,"
              " version = b24_app_portals.version + 1, updated_at = excluded.updated_at"
              " RETURNING version",
    /* compare-and-set: a concurrent writer's row is re-checked against the version after its
     * commit (READ COMMITTED's re-evaluation), so of two swaps at one version one wins */
    [P_SWAP] = "UPDATE b24_app_portals SET " SWAP_SET "version = version + 1, updated_at = " NOW
               " WHERE member_id = $1 AND version = $13::bigint RETURNING version",
    [P_CREATE] = "INSERT INTO b24_app_portals (" COLS ") VALUES " VALUES
                 " ON CONFLICT (member_id) DO NOTHING RETURNING version",
    [P_VERSION] = "SELECT version FROM b24_app_portals WHERE member_id = $1",
    [P_DELETE] = "WITH lease AS (DELETE FROM b24_app_leases WHERE member_id = $1)"
                 " DELETE FROM b24_app_portals WHERE member_id = $1",
    [P_LEASE] = "INSERT INTO b24_app_leases (member_id, holder, expires_at)"
                " VALUES ($1, $2, " NOW " + $3::float8)"
                " ON CONFLICT (member_id) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at WHERE b24_app_leases.holder = excluded.holder"
                " OR b24_app_leases.expires_at <= " NOW " RETURNING 1",
    [P_HOLDER] = "SELECT holder, expires_at FROM b24_app_leases WHERE member_id = $1",
    [P_RELEASE] = "DELETE FROM b24_app_leases WHERE member_id = $1 AND holder = $2 RETURNING 1",
};

/* Frees the last call's result. */
static void drop_result(store *s)
{
    PQclear(s->res);
    s->res = NULL;
}

/* Closes the connection and forgets the URL; idempotent. */
void b24_tokens_pg_close(store *s)
{
    drop_result(s);
    if (s->conn)
        PQfinish(s->conn);
    s->conn = NULL;
    free(s->url);
    s->url = NULL;
}

/* A new connection to s->url, with the client encoding b24 checks text against: 0, or -1 with
 * why in s->lost (the URL masked). */
static int connect_store(store *s)
{
    PGconn *c = b24_pg_connect(s->url, TIMEOUT_MS, s->lost, sizeof s->lost);
    if (c && b24_pg_exec(c, "SET client_encoding = 'UTF8'", s->lost, sizeof s->lost) != 0) {
        PQfinish(c);
        c = NULL;
    }
    if (c == NULL)
        return -1;
    s->conn = c;
    return 0;
}

/* Connects to url and creates or migrates the schema. */
int b24_tokens_pg_open(store *s, const char *url)
{
    s->url = strdup(url);
    if (s->url == NULL) {
        snprintf(s->err, sizeof s->err, "token store: out of memory");
        return -1;
    }
    if (connect_store(s) != 0) {
        snprintf(s->err, sizeof s->err, "%s", s->lost);
        b24_tokens_pg_close(s);
        return -1;
    }
    char why[256];
    if (b24_pg_migrate(s->conn, why, sizeof why) != 0) {
        char masked[256];
        b24_pg_mask(url, masked, sizeof masked);
        snprintf(s->err, sizeof s->err, "cannot create the token store's tables in %.100s: %.170s",
                 masked, why);
        b24_tokens_pg_close(s);
        return -1;
    }
    return 0;
}

/* Whether an idle connection was closed under us: anything to read while no statement runs is
 * the server's goodbye (or a notice, consumed), and an end of file marks the connection bad. */
static int stale(PGconn *c)
{
    struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
    for (int i = 0; i < 8 && PQstatus(c) == CONNECTION_OK && poll(&p, 1, 0) > 0; i++) {
        if (!PQconsumeInput(c))
            return 1;
        PGnotify *n;
        while ((n = PQnotifies(c)) != NULL)
            PQfreemem(n);
    }
    return PQstatus(c) != CONNECTION_OK;
}

/* The store's connection, made anew when the last one was lost (no sooner than the backoff
 * allows): 0, or -1 with why in s->lost. */
static int ready(store *s)
{
    drop_result(s);
    if (s->conn && !stale(s->conn))
        return 0;
    if (s->conn) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    double now = b24_now();
    if (now < s->retry_at)
        return -1; /* s->lost still says why the last try failed */
    if (connect_store(s) != 0) {
        s->backoff = s->backoff < BACKOFF_MIN ? BACKOFF_MIN : s->backoff * 2;
        if (s->backoff > BACKOFF_MAX)
            s->backoff = BACKOFF_MAX;
        s->retry_at = now + s->backoff;
        return -1;
    }
    s->backoff = 0;
    s->retry_at = 0;
    return 0;
}

/* Runs statement i with its n text parameters (NULL: SQL NULL): the result in s->res (also
 * returned), or NULL with "what failed: why" in s->err. again: the call can be repeated without
 * a difference, so a connection lost under it is replaced and the statement run once more. */
static PGresult *run(store *s, int i, int n, const char *const *params, int again, const char *what)
{
    for (int attempt = 0;; attempt++) {
        if (ready(s) != 0) {
            snprintf(s->err, sizeof s->err, "token store: %s failed: %s", what, s->lost);
            return NULL;
        }
        s->res = PQexecParams(s->conn, sql[i], n, NULL, params, NULL, NULL, 0);
        ExecStatusType st = s->res ? PQresultStatus(s->res) : PGRES_FATAL_ERROR;
        if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
            return s->res;
        char why[256];
        b24_pg_error(s->conn, why, sizeof why);
        snprintf(s->err, sizeof s->err, "token store: %s failed: %s", what, why);
        drop_result(s);
        if (PQstatus(s->conn) == CONNECTION_OK || !again || attempt > 0)
            return NULL;
    }
}

/* Whether len bytes at p are UTF-8 text without a NUL: what a PostgreSQL text column holds
 * (checked here, since the server's refusal would quote the offending bytes). */
static int is_text(const char *p, size_t len)
{
    const unsigned char *u = (const unsigned char *)p, *end = u + len;
    while (u < end) {
        unsigned c = *u++;
        int more;
        unsigned min;
        if (c == 0)
            return 0;
        if (c < 0x80)
            continue;
        if (c >= 0xc2 && c <= 0xdf)
            more = 1, min = 0x80;
        else if (c >= 0xe0 && c <= 0xef)
            more = 2, min = 0x800, c &= 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            more = 3, min = 0x10000, c &= 0x07;
        else
            return 0;
        if (more == 1)
            c &= 0x1f;
        if (end - u < more)
            return 0;
        for (int k = 0; k < more; k++, u++) {
            if ((*u & 0xc0) != 0x80)
                return 0;
            c = (c << 6) | (*u & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
    }
    return 1;
}

/* -1 with "NAME is not UTF-8 text" in s->err, for a value PostgreSQL cannot store. */
static int not_text(store *s, const char *name)
{
    snprintf(s->err, sizeof s->err,
             "token store: %s is not UTF-8 text (a PostgreSQL store holds no other)", name);
    return -1;
}

/* The record of row k of s->res (COLS); valid until s->res is freed. */
static void row_record(const PGresult *res, int k, record *r)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < NSTR; i++)
        if (!PQgetisnull(res, k, i)) {
            r->s[i] = PQgetvalue(res, k, i);
            r->len[i] = (size_t)PQgetlength(res, k, i);
        }
    r->has_expires = !PQgetisnull(res, k, NSTR);
    r->expires_at = r->has_expires ? strtod(PQgetvalue(res, k, NSTR), NULL) : 0;
    r->version = strtoll(PQgetvalue(res, k, NSTR + 1), NULL, 10);
    r->updated_at = strtod(PQgetvalue(res, k, NSTR + 2), NULL);
}

/* The record of key, pushed: a member_id first, else a domain. */
int b24_tokens_pg_get(lua_State *L, store *s, const char *key, size_t len)
{
    if (!is_text(key, len))
        return 0; /* no stored portal has it */
    const char *params[1] = {key};
    int order[2] = {P_GET, P_GET_DOMAIN};
    for (int k = 0; k < 2; k++) {
        PGresult *res = run(s, order[k], 1, params, 1, "reading a portal");
        if (res == NULL)
            return -1;
        if (PQntuples(res) > 0) {
            record r;
            row_record(res, 0, &r);
            push_record(L, &r); /* on a raise the result is freed by the next call or close */
            drop_result(s);
            return 1;
        }
    }
    drop_result(s);
    return 0;
}

/* Every portal's record, pushed in an array ordered by member_id (bytewise). */
int b24_tokens_pg_list(lua_State *L, store *s)
{
    PGresult *res = run(s, P_LIST, 0, NULL, 1, "listing the portals");
    lua_newtable(L);
    if (res == NULL)
        return -1;
    int n = PQntuples(res);
    for (int k = 0; k < n; k++) {
        record r;
        row_record(res, k, &r);
        push_record(L, &r);
        lua_rawseti(L, -2, k + 1);
    }
    drop_result(s);
    return 0;
}

/* The first column of the result's first row as an integer, in *out. */
static void first_integer(const PGresult *res, long long *out)
{
    *out = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
}

/* put: one upsert; swap: one compare-and-set update (or an insert for version 0), and when it
 * is refused, the version that refused it. */
int b24_tokens_pg_write(store *s, const record *r, int partial, long long expect,
                        long long *version)
{
    for (int i = 0; i < NSTR; i++)
        if (r->s[i] && !is_text(r->s[i], r->len[i]))
            return not_text(s, names[i]);
    char expires[40], mask[16], expect_text[24];
    const char *params[13];
    for (int i = 0; i < NSTR; i++)
        params[i] = r->s[i]; /* Lua strings: NUL-terminated, with no NUL inside (is_text) */
    snprintf(expires, sizeof expires, "%.17g", r->expires_at);
    params[NSTR] = r->has_expires ? expires : NULL;
    snprintf(mask, sizeof mask, "%u", r->mask);
    snprintf(expect_text, sizeof expect_text, "%lld", expect);
    params[11] = mask;
    params[12] = expect_text;
    if (!partial) {
        PGresult *res = run(s, P_PUT, 11, params, 0, "storing a portal");
        if (res == NULL)
            return -1;
        first_integer(res, version);
        drop_result(s);
        return 1;
    }
    const char *what = "swapping a portal's fields";
    PGresult *res =
        expect == 0 ? run(s, P_CREATE, 11, params, 0, what) : run(s, P_SWAP, 13, params, 0, what);
    if (res == NULL)
        return -1;
    if (PQntuples(res) > 0) {
        first_integer(res, version);
        drop_result(s);
        return 1;
    }
    /* refused: the version now (a later statement sees at least the one that refused) */
    res = run(s, P_VERSION, 1, params, 1, "reading a portal's version");
    if (res == NULL)
        return -1;
    *version = 0; /* not stored */
    if (PQntuples(res) > 0)
        first_integer(res, version);
    drop_result(s);
    return 0;
}

/* The portal and its lease, in one statement. */
int b24_tokens_pg_delete(store *s, const char *member_id, size_t len)
{
    if (!is_text(member_id, len))
        return 0; /* never stored */
    const char *params[1] = {member_id};
    if (run(s, P_DELETE, 1, params, 1, "deleting a portal") == NULL)
        return -1;
    drop_result(s);
    return 0;
}

/* The lease taken (or extended), else its holder read; a lease let go between the two is
 * tried for again. */
int b24_tokens_pg_lease(store *s, const char *member_id, size_t len, const char *holder,
                        size_t holder_len, double seconds, char *held, double *held_until)
{
    if (!is_text(member_id, len))
        return not_text(s, "member_id");
    if (!is_text(holder, holder_len))
        return not_text(s, "holder");
    char secs[40];
    snprintf(secs, sizeof secs, "%.17g", seconds);
    const char *params[3] = {member_id, holder, secs};
    for (int tries = 0; tries < 100; tries++) {
        PGresult *res = run(s, P_LEASE, 3, params, 1, "taking a lease");
        if (res == NULL)
            return -1;
        int taken = PQntuples(res) > 0;
        drop_result(s);
        if (taken)
            return 1;
        res = run(s, P_HOLDER, 1, params, 1, "reading a lease");
        if (res == NULL)
            return -1;
        if (PQntuples(res) > 0) {
            snprintf(held, MAX_KEY + 1, "%s", PQgetvalue(res, 0, 0));
            *held_until = strtod(PQgetvalue(res, 0, 1), NULL);
            drop_result(s);
            return 0;
        }
        drop_result(s);
    }
    snprintf(s->err, sizeof s->err,
             "token store: taking a lease failed: it changed hands "
             "100 times in a row");
    return -1;
}

/* The lease deleted when holder holds it. */
int b24_tokens_pg_release(store *s, const char *member_id, size_t len, const char *holder,
                          size_t holder_len)
{
    if (!is_text(member_id, len) || !is_text(holder, holder_len))
        return 0; /* never held */
    const char *params[2] = {member_id, holder};
    PGresult *res = run(s, P_RELEASE, 2, params, 0, "releasing a lease");
    if (res == NULL)
        return -1;
    int released = PQntuples(res) > 0;
    drop_result(s);
    return released;
}
