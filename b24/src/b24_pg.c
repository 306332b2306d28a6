/* PostgreSQL connections: see b24_pg.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "b24.h" /* b24_mask */
#include "b24_pg.h"

/* Whether s names a PostgreSQL database. */
int b24_pg_is_url(const char *s)
{
    return s != NULL &&
           (strncmp(s, "postgresql://", 13) == 0 || strncmp(s, "postgres://", 11) == 0);
}

/* The URL with the password of its user part and of a password= parameter masked. */
void b24_pg_mask(const char *url, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    size_t n = 0;
    const char *p = url;
    const char *scheme_end = strstr(url, "://");
    const char *at = NULL, *colon = NULL;
    if (scheme_end) {
        const char *auth = scheme_end + 3;
        const char *end = auth + strcspn(auth, "/?#");
        for (const char *q = auth; q < end; q++)
            if (*q == '@')
                at = q; /* the last @ before the host */
        if (at)
            colon = memchr(auth, ':', (size_t)(at - auth));
    }
    while (*p && n + 1 < outlen) {
        if (colon && p == colon + 1) { /* user:PASSWORD@ */
            const char *mask = "***";
            while (*mask && n + 1 < outlen)
                out[n++] = *mask++;
            p = at;
            continue;
        }
        if ((p == url || p[-1] == '?' || p[-1] == '&') && strncasecmp(p, "password=", 9) == 0) {
            const char *mask = "password=***";
            while (*mask && n + 1 < outlen)
                out[n++] = *mask++;
            p += strcspn(p, "&#");
            continue;
        }
        out[n++] = *p++;
    }
    out[n] = '\0';
}

/* libpq's message, first line, with anything like a password masked (b24_mask). */
void b24_pg_error(PGconn *c, char *out, size_t outlen)
{
    const char *m = c ? PQerrorMessage(c) : "out of memory";
    if (m == NULL || *m == '\0')
        m = "unknown error";
    size_t len = strcspn(m, "\n");
    b24_mask(m, len, out, outlen);
}

/* libpq prints a server's notices (NOTICE: relation exists, skipping) on stderr: not here. */
static void no_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* A new connection, or NULL and why. */
PGconn *b24_pg_connect(const char *url, int statement_timeout_ms, char *err, size_t errlen)
{
    char masked[512];
    b24_pg_mask(url, masked, sizeof masked);
    /* keepalives and a TCP user timeout: a network partition that never closes the socket
     * ends a call within about 30 s instead of the system's minutes */
    const char *keys[] = {"dbname",           "application_name", "connect_timeout",
                          "keepalives",       "keepalives_idle",  "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout", NULL};
    const char *values[] = {url, "b24", "10", "1", "10", "5", "3", "30000", NULL};
    PGconn *c = PQconnectdbParams(keys, values, 1); /* dbname holds the URL: expanded */
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        char why[512];
        b24_pg_error(c, why, sizeof why);
        snprintf(err, errlen, "cannot connect to %s: %s", masked, why);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, no_notice, NULL);
    if (PQserverVersion(c) < 130000) {
        snprintf(err, errlen, "%s is PostgreSQL %d; 13 or later is needed", masked,
                 PQserverVersion(c) / 10000);
        PQfinish(c);
        return NULL;
    }
    char sql[96];
    snprintf(sql, sizeof sql, "SET statement_timeout = %d", statement_timeout_ms);
    char why[512];
    if (b24_pg_exec(c, sql, why, sizeof why) != 0 ||
        b24_pg_exec(c, "SET synchronous_commit = on", why, sizeof why) != 0) {
        snprintf(err, errlen, "cannot set up the connection to %s: %s", masked, why);
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Runs sql and checks it. */
int b24_pg_exec(PGconn *c, const char *sql, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        b24_pg_error(c, err, errlen);
    PQclear(r);
    return ok ? 0 : -1;
}

/* The schema, one entry per version: migrating to version i + 1 runs migrations[i]. Times are
 * unix seconds of the database server's clock (extract(epoch from now())), so every host of a
 * fleet compares leases and retries on one clock. The inbox has no 'waiting' state here: at
 * most one pending row per key (a unique index: ON CONFLICT merges), and a pending row whose
 * key runs is not claimable until that run ends — the same rules as the SQLite inbox. Keys,
 * content types, bodies, errors, kv names and mark objects are bytea: a script's bytes are
 * stored as given, whatever the database's encoding. */
static const char *const migrations[] = {
    /* 1: the inbox, its dead letters and dedup memory, the script's kv and marks, tokens */
    "CREATE TABLE b24_deliveries ("
    "  id bigserial PRIMARY KEY,"
    "  key bytea NOT NULL," /* bytes as the router or the script made them */
    "  event text NOT NULL,"
    "  content_type bytea NOT NULL,"
    "  body bytea NOT NULL,"
    "  received_at double precision NOT NULL,"
    "  state text NOT NULL DEFAULT 'pending'," /* pending | running */
    "  attempts integer NOT NULL DEFAULT 0,"
    "  next_at double precision NOT NULL,"
    "  last_error bytea,"
    "  owner text," /* the host running it */
    "  lease_until double precision);"
    "CREATE UNIQUE INDEX b24_deliveries_pending ON b24_deliveries(key) WHERE state = 'pending';"
    "CREATE INDEX b24_deliveries_running ON b24_deliveries(key) WHERE state = 'running';"
    "CREATE INDEX b24_deliveries_ready ON b24_deliveries(next_at, id) WHERE state = 'pending';"
    "CREATE TABLE b24_dead ("
    "  id bigserial PRIMARY KEY,"
    "  key bytea NOT NULL,"
    "  event text NOT NULL,"
    "  content_type bytea NOT NULL,"
    "  body bytea NOT NULL,"
    "  received_at double precision NOT NULL,"
    "  attempts integer NOT NULL,"
    "  last_error bytea,"
    "  died_at double precision NOT NULL);"
    "CREATE TABLE b24_seen (key bytea PRIMARY KEY, until double precision NOT NULL);"
    "CREATE TABLE b24_kv (name bytea PRIMARY KEY, value bytea NOT NULL,"
    "  updated_at double precision NOT NULL);"
    "CREATE TABLE b24_marks (object bytea PRIMARY KEY, ts double precision NOT NULL,"
    "  until double precision NOT NULL);"
    "CREATE TABLE b24_app_portals ("
    "  member_id text PRIMARY KEY, domain text, client_id text, client_endpoint text,"
    "  server_endpoint text, access_token text, refresh_token text, application_token text,"
    "  scope text, user_id text, expires_at double precision, version bigint NOT NULL,"
    "  updated_at double precision NOT NULL);"
    "CREATE INDEX b24_app_portals_domain ON b24_app_portals(lower(domain));"
    "CREATE TABLE b24_app_leases ("
    "  member_id text PRIMARY KEY, holder text NOT NULL, expires_at double precision NOT NULL);",
    /* 2: the deliveries' table churns (each row inserted, claimed, deleted within seconds):
     * vacuumed after every 1,000 dead rows, not 20% of the table, so claims and counts do not
     * wade through dead index entries; room in each page for the lease renewals' HOT updates */
    "ALTER TABLE b24_deliveries SET (autovacuum_vacuum_scale_factor = 0,"
    "  autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0,"
    "  autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000,"
    "  fillfactor = 70);"
    "ALTER TABLE b24_seen SET (autovacuum_vacuum_scale_factor = 0.05);",
    /* 3: a delivery is inserted running on the host that took it in when its key has no row
     * (b24_inbox_pg.c): one running row per key is now the unique index's to keep, so that two
     * hosts inserting one key at once merge instead of running it twice at the same time */
    "DROP INDEX b24_deliveries_running;"
    "CREATE UNIQUE INDEX b24_deliveries_running ON b24_deliveries(key) WHERE state = 'running';",
};
#define NMIGRATIONS (int)(sizeof migrations / sizeof migrations[0])
#define MIGRATION_LOCK 0x62323401 /* pg_advisory_xact_lock: one host migrates at a time */

/* Creates or migrates the schema to the newest version, in one transaction under an advisory
 * lock (hosts starting together wait for each other). */
int b24_pg_migrate(PGconn *c, char *err, size_t errlen)
{
    char sql[160];
    if (b24_pg_exec(c, "BEGIN", err, errlen) != 0)
        return -1;
    snprintf(sql, sizeof sql, "SELECT pg_advisory_xact_lock(%d)", MIGRATION_LOCK);
    if (b24_pg_exec(c, sql, err, errlen) != 0 ||
        b24_pg_exec(c, "CREATE TABLE IF NOT EXISTS b24_schema (version integer NOT NULL)", err,
                    errlen) != 0)
        goto fail;
    PGresult *r = PQexec(c, "SELECT max(version) FROM b24_schema");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        PQclear(r);
        b24_pg_error(c, err, errlen);
        goto fail;
    }
    int version = PQgetisnull(r, 0, 0) ? 0 : atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (version > NMIGRATIONS) {
        snprintf(err, errlen,
                 "the database's b24 schema is version %d, newer than this b24 knows (%d): "
                 "upgrade b24",
                 version, NMIGRATIONS);
        goto fail;
    }
    for (int v = version; v < NMIGRATIONS; v++) {
        if (b24_pg_exec(c, migrations[v], err, errlen) != 0)
            goto fail;
        snprintf(sql, sizeof sql, "INSERT INTO b24_schema (version) VALUES (%d)", v + 1);
        if (b24_pg_exec(c, sql, err, errlen) != 0)
            goto fail;
    }
    return b24_pg_exec(c, "COMMIT", err, errlen);
fail:;
    char ignore[8];
    b24_pg_exec(c, "ROLLBACK", ignore, sizeof ignore);
    return -1;
}
