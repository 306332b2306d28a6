/* The inbox on SQLite: one file of one host, owned by the inbox thread (b24_inbox_impl.h). A
 * delivery is pending, running, or waiting (a repeat that arrived while its key ran: claimable
 * once that run ends); the schema and statements are in b24_inbox_sql.c. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include <sys/stat.h>

#include "b24_clock.h"
#include "b24_dedup.h"
#include "b24_inbox_impl.h"
#include "b24_inbox_sql.h"
#include "b24_log.h"

typedef struct sq {
    sqlite3 *db;
    sqlite3_stmt *st[S_COUNT];
    b24_inbox_options opt;
    unsigned seed;
    double last_prune;
    char owner[160]; /* this host's name in host.kv_claim */
} sq;

static void sqlite_close(void *db);

static int step_done(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

static int exists(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_ROW;
}

/* The depth from the table itself: `b24 inbox retry` adds rows behind this process's back. */
static long recount(sq *in)
{
    sqlite3_stmt *count;
    long depth = -1;
    if (sqlite3_prepare_v2(in->db, "SELECT count(*) FROM deliveries", -1, &count, NULL) ==
        SQLITE_OK) {
        if (sqlite3_step(count) == SQLITE_ROW)
            depth = (long)sqlite3_column_int64(count, 0);
        sqlite3_finalize(count);
    }
    return depth;
}

/* Opens (creating) the inbox at path and recovers the runs a crash interrupted. */
static void *sqlite_open(const char *path, const b24_inbox_options *o, char *err, size_t errlen)
{
    sq *in = calloc(1, sizeof *in);
    if (in == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    in->opt = *o;
    snprintf(in->owner, sizeof in->owner, "%s", o->owner ? o->owner : "");
    in->opt.owner = in->owner; /* the caller's string need not outlive the open */
    in->seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)in;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    /* the file, its -wal and -shm hold raw bodies with the application token: 0600. SQLite
     * creates the -wal and -shm with the main file's mode, so the file is made 0600 first */
    mode_t old_mask = umask(077);
    int rc = sqlite3_open_v2(path, &in->db, flags, NULL);
    if (rc == SQLITE_OK && strcmp(path, ":memory:") != 0)
        chmod(path, 0600);
    umask(old_mask);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open the inbox %s: %s", path,
                 in->db ? sqlite3_errmsg(in->db) : "out of memory");
        sqlite_close(in);
        return NULL;
    }
    sqlite3_busy_timeout(in->db, 10000); /* `b24 inbox` may write to the file meanwhile */
    char *msg = NULL;
    if (sqlite3_exec(in->db, b24_inbox_schema, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare the inbox %s: %s", path, msg ? msg : "?");
        sqlite3_free(msg);
        sqlite_close(in);
        return NULL;
    }
    for (int i = 0; i < S_COUNT; i++) {
        if (sqlite3_prepare_v2(in->db, b24_inbox_sql[i], -1, &in->st[i], NULL) != SQLITE_OK) {
            snprintf(err, errlen, "inbox statement failed: %s", sqlite3_errmsg(in->db));
            sqlite_close(in);
            return NULL;
        }
    }
    /* Runs a crash interrupted go again (their attempt was counted when they started),
     * except those out of attempts: a delivery whose run keeps killing the host must end in
     * the dead letters, not in a crash loop. */
    char sql[1024];
    snprintf(sql, sizeof sql,
             "BEGIN IMMEDIATE;"
             "INSERT INTO dead"
             " (key, event, content_type, body, received_at, attempts, last_error, died_at)"
             " SELECT key, event, content_type, body, received_at, attempts,"
             " 'the host stopped during the run', %.6f FROM deliveries"
             " WHERE state = 'running' AND attempts >= %d;"
             "DELETE FROM deliveries WHERE state = 'running' AND attempts >= %d;"
             "UPDATE deliveries SET state = 'pending' WHERE state = 'running';"
             "UPDATE deliveries SET state = 'pending' WHERE state = 'waiting' AND key NOT IN"
             " (SELECT key FROM deliveries WHERE state = 'pending');"
             "COMMIT;",
             b24_wall_now(), o->max_attempts, o->max_attempts);
    if (sqlite3_exec(in->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "cannot recover the inbox %s: %s", path, msg ? msg : "?");
        sqlite3_free(msg);
        sqlite_close(in);
        return NULL;
    }
    return in;
}

/* Closes the database. */
static void sqlite_close(void *db)
{
    sq *in = db;
    if (in == NULL)
        return;
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(in->st[i]);
    if (in->db)
        sqlite3_close(in->db);
    free(in);
}

static char *dup_column(sqlite3_stmt *s, int col, size_t *len)
{
    const void *p = sqlite3_column_blob(s, col);
    size_t n = (size_t)sqlite3_column_bytes(s, col);
    char *d = malloc(n + 1);
    if (d) {
        if (n)
            memcpy(d, p, n);
        d[n] = '\0';
    }
    if (len)
        *len = n;
    return d;
}

/* The waiting delivery of a finished one's key becomes claimable now. */
static int promote(sq *in, const b24_job *j, double now)
{
    sqlite3_bind_text(in->st[S_PROMOTE], 1, j->key, (int)j->key_len, SQLITE_STATIC);
    sqlite3_bind_double(in->st[S_PROMOTE], 2, now);
    return step_done(in->st[S_PROMOTE]);
}

/* Whether a row of claimed[0..n) has key: one run of a key at a time. */
static int claimed_key(const b24_job *claimed, int n, const char *key, size_t len)
{
    for (int i = 0; i < n; i++)
        if (claimed[i].key_len == len && memcmp(claimed[i].key, key, len) == 0)
            return 1;
    return 0;
}

/* A script's operation, inside the batch's transaction: 0, or -1 when SQLite failed. */
static int run_op(sq *in, b24_op *op, double now)
{
    sqlite3_stmt **st = in->st;
    op->result = 0;
    switch (op->kind) {
    case B24_OP_KV_GET: {
        sqlite3_bind_text(st[S_KV_GET], 1, op->name, (int)op->name_len, SQLITE_STATIC);
        int rc = sqlite3_step(st[S_KV_GET]);
        if (rc == SQLITE_ROW) {
            op->value_out = dup_column(st[S_KV_GET], 0, &op->value_out_len);
            if (op->value_out == NULL)
                op->result = -1;
        } else if (rc != SQLITE_DONE) {
            op->result = -1;
        }
        sqlite3_reset(st[S_KV_GET]);
        return op->result;
    }
    case B24_OP_KV_PUT:
        sqlite3_bind_text(st[S_KV_PUT], 1, op->name, (int)op->name_len, SQLITE_STATIC);
        sqlite3_bind_blob(st[S_KV_PUT], 2, op->value, (int)op->value_len, SQLITE_STATIC);
        sqlite3_bind_double(st[S_KV_PUT], 3, now);
        return op->result = step_done(st[S_KV_PUT]);
    case B24_OP_MARK:
        sqlite3_bind_text(st[S_MARK], 1, op->name, (int)op->name_len, SQLITE_STATIC);
        sqlite3_bind_double(st[S_MARK], 2, op->ts);
        sqlite3_bind_double(st[S_MARK], 3, now + in->opt.dedup_ttl);
        return op->result = step_done(st[S_MARK]);
    case B24_OP_CLAIM: {
        sqlite3_stmt *s = st[S_CLAIM_NAME];
        const char *owner = in->owner;
        sqlite3_bind_blob(s, 1, op->name, (int)op->name_len, SQLITE_STATIC);
        sqlite3_bind_blob(s, 2, owner, (int)strlen(owner), SQLITE_STATIC);
        sqlite3_bind_double(s, 3, now);
        sqlite3_bind_double(s, 4, op->ts);
        int rc = sqlite3_step(s);
        op->result = rc == SQLITE_ROW;
        while (rc == SQLITE_ROW)
            rc = sqlite3_step(s);
        sqlite3_reset(s);
        return rc == SQLITE_DONE ? 0 : (op->result = -1);
    }
    default: /* B24_OP_MARKS: reads only */
        for (int i = 0; i < op->nobjects; i++) {
            sqlite3_stmt *s = st[S_MARK_GET];
            sqlite3_bind_text(s, 1, op->objects[i], (int)op->object_lens[i], SQLITE_STATIC);
            sqlite3_bind_double(s, 2, now);
            int rc = sqlite3_step(s);
            op->found[i] = rc == SQLITE_ROW ? sqlite3_column_double(s, 0) : NAN;
            sqlite3_reset(s);
            if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                return op->result = -1;
        }
        return 0;
    }
}

/* One batch: every queued store and outcome, then claims for the idle handler threads, in
 * one transaction. */
static void sqlite_run(void *db, batch *bt)
{
    sq *in = db;
    b24_put *puts = bt->puts;
    finish *fins = bt->fins;
    b24_op *ops = bt->ops;
    int nidle = bt->want;
    b24_job *claimed = bt->claimed;
    int *nclaimed = &bt->nclaimed;
    int *failed = &bt->failed;
    *failed = 0;
    sqlite3_stmt **st = in->st;
    double now = b24_wall_now();
    int ok = step_done(st[S_BEGIN]) == 0;
    long delta = 0;
    int room = bt->room;
    *nclaimed = 0;
    for (finish *f = fins; f && ok; f = f->next) {
        b24_job *j = &f->job;
        if (f->release) {
            sqlite3_bind_int64(st[S_RELEASE], 1, j->id);
            ok = step_done(st[S_RELEASE]) == 0;
        } else if (f->error == NULL) {
            if (b24_dedup_is_duplicate_kind(j->event)) {
                sqlite3_bind_text(st[S_REMEMBER], 1, j->key, (int)j->key_len, SQLITE_STATIC);
                sqlite3_bind_double(st[S_REMEMBER], 2, now + in->opt.dedup_ttl);
                ok = step_done(st[S_REMEMBER]) == 0;
            }
            sqlite3_bind_int64(st[S_DELETE], 1, j->id);
            ok = ok && step_done(st[S_DELETE]) == 0 && promote(in, j, now) == 0;
            delta--;
        } else if (j->attempt >= in->opt.max_attempts) {
            f->buried = 1; /* logged once committed */
            sqlite3_bind_int64(st[S_BURY], 1, j->id);
            sqlite3_bind_text(st[S_BURY], 2, f->error, -1, SQLITE_STATIC);
            sqlite3_bind_double(st[S_BURY], 3, now);
            sqlite3_bind_int64(st[S_DELETE], 1, j->id);
            ok = step_done(st[S_BURY]) == 0 && step_done(st[S_DELETE]) == 0 &&
                 promote(in, j, now) == 0;
            delta--;
        } else {
            sqlite3_bind_int64(st[S_RETRY], 1, j->id);
            sqlite3_bind_double(st[S_RETRY], 2,
                                now + b24_inbox_backoff(&in->opt, &in->seed, j->attempt));
            sqlite3_bind_text(st[S_RETRY], 3, f->error, -1, SQLITE_STATIC);
            /* the retry starts after the waiting delivery of its key arrived: it is that
             * delivery's one more run */
            sqlite3_bind_text(st[S_DROP_WAITING], 1, j->key, (int)j->key_len, SQLITE_STATIC);
            int dropped = 0;
            ok = step_done(st[S_RETRY]) == 0 && step_done(st[S_DROP_WAITING]) == 0;
            if (ok)
                dropped = sqlite3_changes(in->db);
            delta -= dropped;
        }
    }
    for (b24_op *op = ops; op && ok; op = op->next)
        ok = run_op(in, op, now) == 0;
    if (ok && nidle > 0) {
        sqlite3_stmt *s = st[S_READY];
        sqlite3_bind_double(s, 1, now);
        sqlite3_bind_int(s, 2, nidle);
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW && *nclaimed < nidle) {
            b24_job *j = &claimed[*nclaimed];
            j->id = sqlite3_column_int64(s, 0);
            j->attempt = sqlite3_column_int(s, 1) + 1;
            j->key = dup_column(s, 2, &j->key_len);
            j->event = dup_column(s, 3, NULL);
            j->content_type = dup_column(s, 4, NULL);
            j->body = dup_column(s, 5, &j->body_len);
            if (!j->key || !j->event || !j->content_type || !j->body) {
                b24_inbox_job_free(j);
                break;
            }
            if (claimed_key(claimed, *nclaimed, j->key, j->key_len)) {
                b24_inbox_job_free(
                    j); /* two pending rows of one key (a dead letter retried): later */
                continue;
            }
            (*nclaimed)++;
        }
        sqlite3_reset(s);
        for (int i = 0; i < *nclaimed && ok; i++) {
            sqlite3_bind_int64(st[S_CLAIM], 1, claimed[i].id);
            ok = step_done(st[S_CLAIM]) == 0;
        }
    }
    /* the stores last: the ready deliveries claimed above (a retry come of age, the one more run
     * of a key whose run just ended) keep their place before the newer ones */
    nidle -= *nclaimed;
    for (b24_put *p = puts; p && ok; p = p->next) {
        int key_len = (int)p->key_len;
        int duplicate_kind = b24_dedup_is_duplicate_kind(p->event);
        int pending = 0, running = 0, waiting = 0;
        sqlite3_bind_text(st[S_KEY_STATES], 1, p->key, key_len, SQLITE_STATIC);
        while (sqlite3_step(st[S_KEY_STATES]) == SQLITE_ROW) {
            const char *state = (const char *)sqlite3_column_text(st[S_KEY_STATES], 0);
            pending |= state && strcmp(state, "pending") == 0;
            running |= state && strcmp(state, "running") == 0;
            waiting |= state && strcmp(state, "waiting") == 0;
        }
        sqlite3_reset(st[S_KEY_STATES]);
        const char *state = "pending";
        if (duplicate_kind) {
            sqlite3_bind_text(st[S_SEEN], 1, p->key, key_len, SQLITE_STATIC);
            sqlite3_bind_double(st[S_SEEN], 2, now);
            if (pending || running || waiting || exists(st[S_SEEN])) {
                p->result = B24_PUT_DUPLICATE;
                continue;
            }
        } else if (pending || waiting) {
            p->result = B24_PUT_MERGED;
            continue;
        } else if (running) {
            state = "waiting";
        }
        /* claimed at once, after the older ready deliveries above: for an idle handler
         * thread, or an add's or delete's (never merged) into the ready queue */
        int here = !running && (nidle > 0 || (duplicate_kind && room > 0));
        if (here)
            state = "running";
        sqlite3_stmt *s = st[S_INSERT];
        sqlite3_bind_text(s, 1, p->key, key_len, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, p->event, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, p->content_type, -1, SQLITE_STATIC);
        sqlite3_bind_blob(s, 4, p->body, (int)p->body_len, SQLITE_STATIC);
        sqlite3_bind_double(s, 5, now);
        sqlite3_bind_text(s, 6, state, -1, SQLITE_STATIC);
        sqlite3_bind_int(s, 7, here);
        ok = step_done(s) == 0;
        p->result = running ? B24_PUT_RERUN : B24_PUT_STORED;
        delta++;
        if (ok && here &&
            b24_inbox_job_of_put(&claimed[*nclaimed], p, sqlite3_last_insert_rowid(in->db))) {
            (*nclaimed)++;
            if (nidle > 0)
                nidle--;
            else
                room--;
        }
    }
    if (ok)
        ok = step_done(st[S_COMMIT]) == 0;
    if (!ok) {
        for (finish *f = fins; f; f = f->next)
            f->buried = 0;
        b24_log(B24_ERROR, "inbox transaction failed", "error", sqlite3_errmsg(in->db), NULL);
        step_done(st[S_ROLLBACK]);
        for (b24_put *p = puts; p; p = p->next)
            p->result = B24_PUT_FAILED;
        for (b24_op *op = ops; op; op = op->next) {
            op->result = -1;
            free(op->value_out);
            op->value_out = NULL;
        }
        for (int i = 0; i < *nclaimed; i++)
            b24_inbox_job_free(&claimed[i]);
        *nclaimed = 0;
        *failed = 1; /* the caller queues the outcomes again */
        bt->next = now + 1;
        return;
    }
    bt->delta = delta;
    double next = 0;
    if (sqlite3_step(st[S_NEXT]) == SQLITE_ROW && sqlite3_column_type(st[S_NEXT], 0) != SQLITE_NULL)
        next = sqlite3_column_double(st[S_NEXT], 0);
    sqlite3_reset(st[S_NEXT]);
    bt->next = next;
}

/* Once a second: the depth from the table (`b24 inbox retry` adds rows behind this process's
 * back), and once a minute the dedup memory and marks past their TTL go. */
static long sqlite_maintain(void *db, double now)
{
    sq *in = db;
    if (now - in->last_prune > 60) {
        sqlite3_bind_double(in->st[S_PRUNE], 1, now);
        step_done(in->st[S_PRUNE]);
        sqlite3_bind_double(in->st[S_PRUNE_MARKS], 1, now);
        step_done(in->st[S_PRUNE_MARKS]);
        in->last_prune = now;
    }
    return recount(in);
}

const inbox_backend b24_inbox_sqlite = {
    .open = sqlite_open,
    .run = sqlite_run,
    .maintain = sqlite_maintain,
    .listen = NULL,
    .close = sqlite_close,
};
