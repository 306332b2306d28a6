/* b24 inbox stats|list|retry|purge: look at and repair the durable inbox's file (its tables
 * are b24_inbox.c's) while the server runs or not. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "b24_clock.h"
#include "b24_dedup.h"
#include "b24_inbox_cmd.h"

static void inbox_usage(FILE *f)
{
    fputs("usage: b24 inbox stats [--inbox PATH]\n"
          "       b24 inbox list [--dead] [--limit N] [--inbox PATH]\n"
          "       b24 inbox retry ID | --dead [--inbox PATH]\n"
          "       b24 inbox purge --dead [--inbox PATH]\n"
          "PATH defaults to $B24_INBOX or b24-inbox.sqlite\n",
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

/* Writes s as a JSON string (the file holds only our own text and the handlers' errors). */
static void json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
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
        printf("{\"id\":%lld,\"event\":", (long long)sqlite3_column_int64(s, 0));
        json_string((const char *)sqlite3_column_text(s, 1));
        /* the object the key names (event and ID), never the body with its token */
        size_t len = 0;
        const char *key = (const char *)sqlite3_column_blob(s, 7);
        const char *object =
            key ? b24_dedup_object(key, (size_t)sqlite3_column_bytes(s, 7), &len) : NULL;
        fputs(",\"object\":", stdout);
        if (object) {
            char id[128];
            snprintf(id, sizeof id, "%.*s", (int)(len < 120 ? len : 120), object);
            json_string(id);
        } else {
            fputs("null", stdout);
        }
        printf(",\"state\":\"%s\",\"attempts\":%d,\"received_at\":%.3f,\"%s\":%.3f,\"last_error\":",
               (const char *)sqlite3_column_text(s, 2), sqlite3_column_int(s, 3),
               sqlite3_column_double(s, 4), dead ? "died_at" : "next_at",
               sqlite3_column_double(s, 5));
        if (sqlite3_column_type(s, 6) == SQLITE_NULL)
            fputs("null", stdout);
        else
            json_string((const char *)sqlite3_column_text(s, 6));
        puts("}");
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
