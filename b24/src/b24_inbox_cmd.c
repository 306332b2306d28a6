/* b24 inbox stats|list|retry|purge: look at and repair the durable inbox while the server runs
 * or not: its SQLite file (the tables of b24_inbox_sql.c), or its PostgreSQL database (the
 * tables of b24_pg.c, shared by a fleet: every change is one statement, so the hosts' claims
 * and burials interleave with it safely). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "b24_clock.h"
#include "b24_dedup.h"
#include "b24_inbox_cmd.h"
#include "b24_pg.h"

static void inbox_usage(FILE *f)
{
    fputs("usage: b24 inbox stats [--inbox PATH]\n"
          "       b24 inbox list [--dead] [--limit N] [--inbox PATH]\n"
          "       b24 inbox retry ID | --dead [--inbox PATH]\n"
          "       b24 inbox purge --dead [--inbox PATH]\n"
          "PATH (a SQLite file or a postgresql:// URL) defaults to $B24_INBOX or "
          "b24-inbox.sqlite\n",
          f);
}

static long long scalar(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s;
    long long v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK) {
        if (sqlite3_step(s) == SQLITE_ROW)
            v = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
    }
    return v;
}

/* Writes the len bytes at s as a JSON string (the inbox holds only our own text and the
 * handlers' errors); a NUL ends it. */
static void json_string(const char *s, size_t len)
{
    putchar('"');
    const unsigned char *p = (const unsigned char *)(s ? s : ""), *end = p + (s ? len : 0);
    for (; p < end && *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", stdout);
        else if (*p == '\t')
            fputs("\\t", stdout);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

/* One line of `b24 inbox list`: a delivery (or dead letter) and the object its key names,
 * never its body (which carries the portal's token). error NULL: none. */
static void list_row(long long id, const char *event, const char *key, size_t key_len,
                     const char *state, int attempts, double received_at, int dead, double at,
                     const char *error, size_t error_len)
{
    printf("{\"id\":%lld,\"event\":", id);
    json_string(event, event ? strlen(event) : 0);
    size_t len = 0;
    const char *object = key ? b24_dedup_object(key, key_len, &len) : NULL;
    fputs(",\"object\":", stdout);
    if (object)
        json_string(object, len < 120 ? len : 120);
    else
        fputs("null", stdout);
    printf(",\"state\":\"%s\",\"attempts\":%d,\"received_at\":%.3f,\"%s\":%.3f,\"last_error\":",
           state, attempts, received_at, dead ? "died_at" : "next_at", at);
    if (error == NULL)
        fputs("null", stdout);
    else
        json_string(error, error_len);
    puts("}");
}

/* b24 inbox list on a SQLite file. */
static int inbox_list(sqlite3 *db, int dead, long limit)
{
    const char *sql =
        dead ? "SELECT id, event, 'dead', attempts, received_at, died_at, last_error, key"
               " FROM dead ORDER BY id LIMIT ?1"
             : "SELECT id, event, state, attempts, received_at, next_at, last_error, key"
               " FROM deliveries ORDER BY id LIMIT ?1";
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(s, 1, limit);
    while (sqlite3_step(s) == SQLITE_ROW) {
        list_row(sqlite3_column_int64(s, 0), (const char *)sqlite3_column_text(s, 1),
                 (const char *)sqlite3_column_blob(s, 7), (size_t)sqlite3_column_bytes(s, 7),
                 (const char *)sqlite3_column_text(s, 2), sqlite3_column_int(s, 3),
                 sqlite3_column_double(s, 4), dead, sqlite3_column_double(s, 5),
                 (const char *)sqlite3_column_text(s, 6), (size_t)sqlite3_column_bytes(s, 6));
    }
    sqlite3_finalize(s);
    return 0;
}

/* Moves dead letters (all, or the one with id) back to the deliveries, ready now. */
static long long inbox_retry(sqlite3 *db, long long id, int all)
{
    char sql[512];
    double now = b24_wall_now();
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return -1;
    snprintf(sql, sizeof sql,
             "INSERT INTO deliveries (key, event, content_type, body, received_at, next_at)"
             " SELECT key, event, content_type, body, received_at, %.6f FROM dead%s",
             now, all ? "" : " WHERE id = ?1");
    sqlite3_stmt *s;
    long long moved = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(s, 1, id);
        if (sqlite3_step(s) == SQLITE_DONE)
            moved = sqlite3_changes(db);
        sqlite3_finalize(s);
    }
    if (moved >= 0) {
        snprintf(sql, sizeof sql, "DELETE FROM dead%s", all ? "" : " WHERE id = ?1");
        if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK) {
            sqlite3_bind_int64(s, 1, id);
            if (sqlite3_step(s) != SQLITE_DONE)
                moved = -1;
            sqlite3_finalize(s);
        }
    }
    if (moved == 0 && !all) { /* not a dead letter: a pending delivery runs now instead */
        if (sqlite3_prepare_v2(
                db, "UPDATE deliveries SET next_at = ?2 WHERE id = ?1 AND state = 'pending'", -1,
                &s, NULL) == SQLITE_OK) {
            sqlite3_bind_int64(s, 1, id);
            sqlite3_bind_double(s, 2, now);
            if (sqlite3_step(s) == SQLITE_DONE)
                moved = sqlite3_changes(db);
            sqlite3_finalize(s);
        }
    }
    sqlite3_exec(db, moved >= 0 ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
    return moved;
}

/* ---- PostgreSQL (b24_pg.c's tables) -------------------------------------------------------- */

#define PG_NOW "extract(epoch from now())::float8" /* the database server's clock: the fleet's */
/* the channel the hosts of a fleet LISTEN on: dead letters moved back are ready at once */
#define PG_WAKE "NOTIFY b24_inbox"

/* Runs sql with its text parameters, asking for binary results (bytes as stored, bytea or
 * text alike; numbers are cast to text in the SQL): the result, or NULL with why on stderr. */
static PGresult *pg_query(PGconn *c, const char *what, const char *sql, int n,
                          const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 1);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return r;
    char why[512];
    b24_pg_error(c, why, sizeof why);
    fprintf(stderr, "b24 inbox %s: %s\n", what, why);
    PQclear(r);
    return NULL;
}

/* Column k of row i of a binary result, as a NUL-terminated copy into buf (numbers cast to
 * text are short). */
static const char *pg_text(const PGresult *r, int i, int k, char *buf, size_t len)
{
    snprintf(buf, len, "%.*s", PQgetlength(r, i, k), PQgetvalue(r, i, k));
    return buf;
}

/* Column k of row i, a number cast to text. */
static double pg_number(const PGresult *r, int i, int k)
{
    char buf[64];
    return strtod(pg_text(r, i, k, buf, sizeof buf), NULL);
}

/* b24 inbox stats on PostgreSQL: one snapshot of the counts (a single statement). */
static int pg_stats(PGconn *c)
{
    PGresult *r =
        pg_query(c, "stats",
                 "SELECT (SELECT count(*) FROM b24_deliveries WHERE state = 'pending')::text,"
                 " (SELECT count(*) FROM b24_deliveries WHERE state = 'running')::text,"
                 " (SELECT count(*) FROM b24_dead)::text, (SELECT count(*) FROM b24_seen)::text,"
                 " coalesce(" PG_NOW " - (SELECT min(received_at) FROM b24_deliveries), 0)::text",
                 0, NULL);
    if (r == NULL)
        return 1;
    printf("{\"pending\":%.0f,\"running\":%.0f,\"dead\":%.0f,\"remembered_keys\":%.0f,"
           "\"oldest_age_seconds\":%.1f}\n",
           pg_number(r, 0, 0), pg_number(r, 0, 1), pg_number(r, 0, 2), pg_number(r, 0, 3),
           pg_number(r, 0, 4));
    PQclear(r);
    return 0;
}

/* b24 inbox list [--dead] on PostgreSQL, in the SQLite inbox's format. */
static int pg_list(PGconn *c, int dead, long limit)
{
    const char *sql =
        dead ? "SELECT id::text, event, 'dead', attempts::text, received_at::text,"
               " died_at::text, last_error, key FROM b24_dead ORDER BY id LIMIT $1::bigint"
             : "SELECT id::text, event, state, attempts::text, received_at::text,"
               " next_at::text, last_error, key FROM b24_deliveries ORDER BY id LIMIT $1::bigint";
    char lim[24];
    snprintf(lim, sizeof lim, "%ld", limit);
    const char *params[1] = {lim};
    PGresult *r = pg_query(c, "list", sql, 1, params);
    if (r == NULL)
        return 1;
    for (int i = 0; i < PQntuples(r); i++) {
        char event[256], state[16];
        int null_error = PQgetisnull(r, i, 6);
        list_row(strtoll(PQgetvalue(r, i, 0), NULL, 10), pg_text(r, i, 1, event, sizeof event),
                 PQgetvalue(r, i, 7), (size_t)PQgetlength(r, i, 7),
                 pg_text(r, i, 2, state, sizeof state), (int)pg_number(r, i, 3), pg_number(r, i, 4),
                 dead, pg_number(r, i, 5), null_error ? NULL : PQgetvalue(r, i, 6),
                 null_error ? 0 : (size_t)PQgetlength(r, i, 6));
    }
    PQclear(r);
    return 0;
}

/* b24 inbox retry ID | --dead on PostgreSQL: the dead letters (all, or ID) moved back as
 * pending deliveries ready now, in one statement. A key that already has a pending delivery
 * keeps that one: the dead letter is merged into it (dropped; the pending one runs, as a
 * repeat arriving now would merge: at most one pending row per key). ID not a dead letter: a
 * pending delivery ID runs now instead. */
static int pg_retry(PGconn *c, long long id, int all)
{
    char id_text[24];
    snprintf(id_text, sizeof id_text, "%lld", id);
    const char *params[1] = {id_text};
    char sql[1024];
    snprintf(sql, sizeof sql,
             "WITH moved AS (DELETE FROM b24_dead%s"
             "  RETURNING id, key, event, content_type, body, received_at),"
             " back AS (INSERT INTO b24_deliveries"
             "  (key, event, content_type, body, received_at, next_at)"
             "  SELECT key, event, content_type, body, received_at, " PG_NOW
             "  FROM moved ORDER BY id"
             "  ON CONFLICT (key) WHERE state = 'pending' DO NOTHING RETURNING 1)"
             " SELECT (SELECT count(*) FROM moved)::text, (SELECT count(*) FROM back)::text",
             all ? "" : " WHERE id = $1::bigint");
    char err[512];
    if (b24_pg_exec(c, "BEGIN", err, sizeof err) != 0) {
        fprintf(stderr, "b24 inbox retry: %s\n", err);
        return 1;
    }
    PGresult *r = pg_query(c, "retry", sql, all ? 0 : 1, params);
    double moved = 0, back = 0;
    if (r) {
        moved = pg_number(r, 0, 0);
        back = pg_number(r, 0, 1);
        PQclear(r);
    }
    if (r && moved == 0 && !all) {
        r = pg_query(c, "retry",
                     "UPDATE b24_deliveries SET next_at = " PG_NOW
                     " WHERE id = $1::bigint AND state = 'pending' RETURNING 1",
                     1, params);
        if (r) {
            back = PQntuples(r);
            PQclear(r);
        }
    }
    if (r == NULL || (back > 0 && b24_pg_exec(c, PG_WAKE, err, sizeof err) != 0) ||
        b24_pg_exec(c, "COMMIT", err, sizeof err) != 0) {
        if (r)
            fprintf(stderr, "b24 inbox retry: %s\n", err);
        b24_pg_exec(c, "ROLLBACK", err, sizeof err);
        return 1;
    }
    if (back == 0 && moved == 0 && !all) {
        fprintf(stderr, "b24 inbox retry: no dead letter or pending delivery %lld\n", id);
        return 1;
    }
    printf("{\"retried\":%.0f,\"merged\":%.0f}\n", back, moved > back ? moved - back : 0);
    return 0;
}

/* b24 inbox purge --dead on PostgreSQL. */
static int pg_purge(PGconn *c)
{
    PGresult *r = pg_query(c, "purge", "DELETE FROM b24_dead", 0, NULL);
    if (r == NULL)
        return 1;
    printf("{\"purged\":%s}\n", PQcmdTuples(r));
    PQclear(r);
    return 0;
}

/* b24 inbox CMD on the PostgreSQL database at url: the exit status. The schema is the hosts'
 * (created by b24 serve): a database without it is no inbox, and is left as it is. */
static int inbox_pg(const char *url, const char *cmd, int dead, long limit, long long id)
{
    char err[1024];
    PGconn *c = b24_pg_connect(url, 30000, err, sizeof err);
    if (c == NULL) {
        fprintf(stderr, "b24 inbox: %s\n", err);
        return 1;
    }
    PGresult *r = pg_query(c, cmd, "SELECT to_regclass('b24_deliveries') IS NOT NULL", 0, NULL);
    if (r == NULL) {
        PQfinish(c);
        return 1;
    }
    int is_inbox = PQgetlength(r, 0, 0) == 1 && PQgetvalue(r, 0, 0)[0] == 1; /* binary bool */
    PQclear(r);
    if (!is_inbox) {
        b24_pg_mask(url, err, sizeof err);
        fprintf(stderr,
                "b24 inbox: %s is not an inbox (no table b24_deliveries: b24 serve "
                "--inbox URL creates it)\n",
                err);
        PQfinish(c);
        return 1;
    }
    int rc;
    if (strcmp(cmd, "stats") == 0)
        rc = pg_stats(c);
    else if (strcmp(cmd, "list") == 0)
        rc = pg_list(c, dead, limit);
    else if (strcmp(cmd, "retry") == 0)
        rc = pg_retry(c, id, dead);
    else
        rc = pg_purge(c);
    PQfinish(c);
    return rc;
}

/* ---- the command ----------------------------------------------------------------------------- */

/* b24 inbox stats|list|retry|purge [--dead] [--limit N] [--inbox PATH] */
int b24_cmd_inbox(int argc, char **argv)
{
    const char *path = getenv("B24_INBOX");
    if (path == NULL || *path == '\0')
        path = "b24-inbox.sqlite";
    int dead = 0;
    long limit = 100;
    const char *cmd = NULL, *id_arg = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--inbox") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (strcmp(argv[i], "--dead") == 0)
            dead = 1;
        else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc)
            limit = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--help") == 0) {
            inbox_usage(stdout);
            return 0;
        } else if (cmd == NULL && argv[i][0] != '-')
            cmd = argv[i];
        else if (id_arg == NULL && argv[i][0] != '-')
            id_arg = argv[i];
        else {
            fprintf(stderr, "b24 inbox: unexpected '%s'\n", argv[i]);
            inbox_usage(stderr);
            return 2;
        }
    }
    long long id = 0;
    if (cmd && strcmp(cmd, "retry") == 0 && !dead) {
        char *end;
        id = id_arg ? strtoll(id_arg, &end, 10) : 0;
        if (id_arg == NULL || *end || id <= 0) {
            fputs("b24 inbox retry: a delivery id or --dead expected\n", stderr);
            return 2;
        }
    }
    int known = cmd && (strcmp(cmd, "stats") == 0 || strcmp(cmd, "list") == 0 ||
                        strcmp(cmd, "retry") == 0 || (strcmp(cmd, "purge") == 0 && dead));
    if (!known || limit < 1 || (id_arg && strcmp(cmd, "retry") != 0)) {
        inbox_usage(stderr);
        return 2;
    }
    if (b24_pg_is_url(path))
        return inbox_pg(path, cmd, dead, limit, id);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
        scalar(db, "SELECT count(*) FROM deliveries") < 0) {
        fprintf(stderr, "b24 inbox: %s is not an inbox (%s)\n", path,
                db ? sqlite3_errmsg(db) : "?");
        sqlite3_close(db);
        return 1;
    }
    sqlite3_busy_timeout(db, 10000);
    int rc = 0;
    if (strcmp(cmd, "stats") == 0) {
        double now = b24_wall_now();
        long long pending = scalar(db, "SELECT count(*) FROM deliveries WHERE state = 'pending'");
        long long running = scalar(db, "SELECT count(*) FROM deliveries WHERE state = 'running'");
        long long dead_n = scalar(db, "SELECT count(*) FROM dead");
        long long seen = scalar(db, "SELECT count(*) FROM seen");
        sqlite3_stmt *s;
        double oldest = 0;
        if (sqlite3_prepare_v2(db, "SELECT min(received_at) FROM deliveries", -1, &s, NULL) ==
            SQLITE_OK) {
            if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
                oldest = now - sqlite3_column_double(s, 0);
            sqlite3_finalize(s);
        }
        printf("{\"pending\":%lld,\"running\":%lld,\"dead\":%lld,\"remembered_keys\":%lld,"
               "\"oldest_age_seconds\":%.1f}\n",
               pending, running, dead_n, seen, oldest);
    } else if (strcmp(cmd, "list") == 0) {
        rc = inbox_list(db, dead, limit) ? 1 : 0;
    } else if (strcmp(cmd, "retry") == 0) {
        long long n = inbox_retry(db, id, dead);
        if (n < 0) {
            fprintf(stderr, "b24 inbox retry: %s\n", sqlite3_errmsg(db));
            rc = 1;
        } else if (n == 0 && !dead) {
            fprintf(stderr, "b24 inbox retry: no dead letter or pending delivery %lld\n", id);
            rc = 1;
        } else {
            printf("{\"retried\":%lld}\n", n);
        }
    } else { /* purge --dead */
        if (sqlite3_exec(db, "DELETE FROM dead", NULL, NULL, NULL) != SQLITE_OK) {
            fprintf(stderr, "b24 inbox purge: %s\n", sqlite3_errmsg(db));
            rc = 1;
        } else {
            printf("{\"purged\":%d}\n", sqlite3_changes(db));
        }
    }
    sqlite3_close(db);
    return rc;
}
