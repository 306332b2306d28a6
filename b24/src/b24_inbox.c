/* The durable inbox: see b24_inbox.h. Everything that touches SQLite runs on the inbox
 * thread; other threads hand it work through three queues under one mutex. The schema and
 * the statements are in b24_inbox_sql.c. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include <sys/stat.h>

#include "b24_clock.h"
#include "b24_dedup.h"
#include "b24_inbox.h"
#include "b24_inbox_sql.h"
#include "b24_log.h"
#include "b24_metrics.h"

#define MAX_CLAIM 256 /* deliveries handed out in one batch */

/* A handler thread waiting for deliveries. */
typedef struct waiter {
    struct waiter *next;
    b24_job *jobs;
    int max, got;
    int state; /* 0 waiting, 1 got jobs, 2 stopping */
    pthread_cond_t cond;
} waiter;

/* A run's outcome, queued for the next batch; the handler thread does not wait for it. */
typedef struct finish {
    struct finish *next;
    b24_job job; /* key and event owned here */
    char *error; /* NULL: success */
    int release; /* never run (the host is stopping): back to pending, attempt not spent */
    int buried;  /* moved to the dead letters by this batch */
} finish;

struct b24_inbox {
    sqlite3 *db;
    sqlite3_stmt *st[S_COUNT];
    b24_inbox_options opt;
    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    pthread_cond_t wake; /* the inbox thread sleeps on this */
    b24_put *puts;       /* queued, newest first */
    finish *finishes;
    b24_op *ops;         /* the script's, queued, newest first */
    waiter *waiters;
    int stopping; /* no more claims; stores and outcomes still go in */
    int closing;  /* the thread ends once the queues are empty */
    atomic_long depth;
    unsigned seed;
};

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
static void recount(b24_inbox *in)
{
    sqlite3_stmt *count;
    if (sqlite3_prepare_v2(in->db, "SELECT count(*) FROM deliveries", -1, &count, NULL) ==
        SQLITE_OK) {
        if (sqlite3_step(count) == SQLITE_ROW)
            atomic_store(&in->depth, (long)sqlite3_column_int64(count, 0));
        sqlite3_finalize(count);
    }
}

/* Opens (creating) the inbox at path and recovers the runs a crash interrupted. */
b24_inbox *b24_inbox_open(const char *path, const b24_inbox_options *o, char *err, size_t errlen)
{
    b24_inbox *in = calloc(1, sizeof *in);
    if (in == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    in->opt = *o;
    in->seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)in;
    pthread_mutex_init(&in->lock, NULL);
    pthread_cond_init(&in->wake, NULL);
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
        b24_inbox_close(in);
        return NULL;
    }
    sqlite3_busy_timeout(in->db, 10000); /* `b24 inbox` may write to the file meanwhile */
    char *msg = NULL;
    if (sqlite3_exec(in->db, b24_inbox_schema, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "cannot prepare the inbox %s: %s", path, msg ? msg : "?");
        sqlite3_free(msg);
        b24_inbox_close(in);
        return NULL;
    }
    for (int i = 0; i < S_COUNT; i++) {
        if (sqlite3_prepare_v2(in->db, b24_inbox_sql[i], -1, &in->st[i], NULL) != SQLITE_OK) {
            snprintf(err, errlen, "inbox statement failed: %s", sqlite3_errmsg(in->db));
            b24_inbox_close(in);
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
        b24_inbox_close(in);
        return NULL;
    }
    recount(in);
    return in;
}

/* Closes the database and frees the inbox. */
void b24_inbox_close(b24_inbox *in)
{
    if (in == NULL)
        return;
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(in->st[i]);
    if (in->db)
        sqlite3_close(in->db);
    pthread_mutex_destroy(&in->lock);
    pthread_cond_destroy(&in->wake);
    free(in);
}

/* Deliveries pending or running, as last counted. */
long b24_inbox_depth(b24_inbox *in)
{
    return atomic_load(&in->depth);
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

static void job_free(b24_job *job)
{
    free(job->key);
    free(job->event);
    free(job->content_type);
    free(job->body);
    job->key = job->event = job->content_type = job->body = NULL;
}

/* Seconds until the next run of a delivery that has run `attempts` times: exponential,
 * capped, with full jitter in [d/2, d] so retries of many deliveries spread out. */
static double backoff(b24_inbox *in, int attempts)
{
    double d = in->opt.retry_base * pow(2.0, attempts > 1 ? attempts - 1 : 0);
    if (d > in->opt.retry_max)
        d = in->opt.retry_max;
    double r = (double)rand_r(&in->seed) / RAND_MAX;
    return d / 2 + r * d / 2;
}

/* The waiting delivery of a finished one's key becomes claimable now. */
static int promote(b24_inbox *in, const b24_job *j, double now)
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
static int run_op(b24_inbox *in, b24_op *op, double now)
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
 * one transaction. Returns when the next pending delivery becomes ready (0: unknown). */
static double run_batch(b24_inbox *in, b24_put *puts, finish *fins, b24_op *ops, int nidle,
                        b24_job *claimed, int *nclaimed, int *failed)
{
    *failed = 0;
    sqlite3_stmt **st = in->st;
    double now = b24_wall_now();
    int ok = step_done(st[S_BEGIN]) == 0;
    long delta = 0;
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
        sqlite3_stmt *s = st[S_INSERT];
        sqlite3_bind_text(s, 1, p->key, key_len, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, p->event, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, p->content_type, -1, SQLITE_STATIC);
        sqlite3_bind_blob(s, 4, p->body, (int)p->body_len, SQLITE_STATIC);
        sqlite3_bind_double(s, 5, now);
        sqlite3_bind_text(s, 6, state, -1, SQLITE_STATIC);
        ok = step_done(s) == 0;
        p->result = running ? B24_PUT_RERUN : B24_PUT_STORED;
        delta++;
    }
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
            sqlite3_bind_double(st[S_RETRY], 2, now + backoff(in, j->attempt));
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
    *nclaimed = 0;
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
                job_free(j);
                break;
            }
            if (claimed_key(claimed, *nclaimed, j->key, j->key_len)) {
                job_free(j); /* two pending rows of one key (a dead letter retried): later */
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
            job_free(&claimed[i]);
        *nclaimed = 0;
        *failed = 1; /* the caller queues the outcomes again */
        return now + 1;
    }
    atomic_fetch_add(&in->depth, delta);
    double next = 0;
    if (sqlite3_step(st[S_NEXT]) == SQLITE_ROW && sqlite3_column_type(st[S_NEXT], 0) != SQLITE_NULL)
        next = sqlite3_column_double(st[S_NEXT], 0);
    sqlite3_reset(st[S_NEXT]);
    return next;
}

static void *inbox_main(void *arg)
{
    b24_inbox *in = arg;
    double next_ready = 0, last_poll = 0, last_prune = 0, last_recount = 0;
    pthread_mutex_lock(&in->lock);
    for (;;) {
        int idle = 0;
        if (!in->stopping)
            for (waiter *w = in->waiters; w; w = w->next)
                idle += w->state == 0;
        double now = b24_wall_now();
        /* claims are due when a retry comes of age, and once a second anyway: `b24 inbox
         * retry` may have made deliveries ready behind this thread's back */
        int due = idle && ((next_ready && next_ready <= now) || now - last_poll >= 1.0);
        if (!in->puts && !in->finishes && !in->ops && !due) {
            if (in->closing)
                break;
            double until = idle ? last_poll + 1.0 : now + 3600;
            if (idle && next_ready && next_ready < until)
                until = next_ready;
            struct timespec ts;
            ts.tv_sec = (time_t)until;
            ts.tv_nsec = (long)((until - floor(until)) * 1e9);
            pthread_cond_timedwait(&in->wake, &in->lock, &ts);
            continue;
        }
        b24_put *puts = in->puts;
        finish *fins = in->finishes;
        b24_op *ops = in->ops;
        in->puts = NULL;
        in->finishes = NULL;
        in->ops = NULL;
        waiter *idle_list[64];
        int nidle = 0, want = 0;
        if (!in->stopping)
            for (waiter *w = in->waiters; w && nidle < 64; w = w->next)
                if (w->state == 0 && want + w->max <= MAX_CLAIM) {
                    idle_list[nidle++] = w;
                    want += w->max;
                }
        pthread_mutex_unlock(&in->lock);

        b24_put *rev = NULL; /* oldest first, so deliveries keep their arrival order */
        while (puts) {
            b24_put *n = puts->next;
            puts->next = rev;
            rev = puts;
            puts = n;
        }
        b24_op *rops = NULL; /* in the order the script made them */
        while (ops) {
            b24_op *n = ops->next;
            ops->next = rops;
            rops = ops;
            ops = n;
        }
        b24_job claimed[MAX_CLAIM];
        int nclaimed = 0;
        int failed;
        next_ready = run_batch(in, rev, fins, rops, want, claimed, &nclaimed, &failed);
        if (now - last_recount >= 1.0) { /* at most once a second */
            recount(in);
            last_recount = now;
        }
        last_poll = now;
        if (now - last_prune > 60) {
            sqlite3_bind_double(in->st[S_PRUNE], 1, now);
            step_done(in->st[S_PRUNE]);
            sqlite3_bind_double(in->st[S_PRUNE_MARKS], 1, now);
            step_done(in->st[S_PRUNE_MARKS]);
            last_prune = now;
        }
        for (b24_put *p = rev; p;) {
            b24_put *n = p->next; /* done() may free p */
            p->done(p);
            p = n;
        }
        for (b24_op *op = rops; op;) {
            b24_op *n = op->next; /* done() may free op */
            op->done(op);
            op = n;
        }

        if (failed) { /* the disk said no: keep the outcomes, try again in a second */
            pthread_mutex_lock(&in->lock);
            finish *last = fins;
            while (last && last->next)
                last = last->next;
            if (last) {
                last->next = in->finishes;
                in->finishes = fins;
            }
            fins = NULL;
            struct timespec ts = b24_clock_after(CLOCK_REALTIME, 1);
            pthread_cond_timedwait(&in->wake, &in->lock, &ts);
            pthread_mutex_unlock(&in->lock);
        }
        for (finish *f = fins; f;) {
            finish *n = f->next;
            if (f->buried) {
                b24_metrics_dead_letter();
                b24_log(B24_ERROR, "delivery moved to the dead letters", "event", f->job.event,
                        "error", f->error, NULL);
            }
            job_free(&f->job);
            free(f->error);
            free(f);
            f = n;
        }
        pthread_mutex_lock(&in->lock);
        int next = 0; /* hand the claimed deliveries out, each thread up to what it asked */
        for (int i = 0; i < nidle; i++) {
            waiter *w = idle_list[i];
            if (w->state != 0 || in->stopping)
                continue;
            while (w->got < w->max && next < nclaimed)
                w->jobs[w->got++] = claimed[next++];
            if (w->got) {
                w->state = 1;
                pthread_cond_signal(&w->cond);
            }
        }
        while (next < nclaimed) { /* stopping meanwhile: back to pending, no attempt spent */
            pthread_mutex_unlock(&in->lock);
            b24_inbox_release(in, &claimed[next++]);
            pthread_mutex_lock(&in->lock);
        }
    }
    pthread_mutex_unlock(&in->lock);
    return NULL;
}

/* Starts the inbox thread, which owns the database from now on. */
int b24_inbox_start(b24_inbox *in)
{
    if (pthread_create(&in->thread, NULL, inbox_main, in) != 0)
        return -1;
    in->started = 1;
    return 0;
}

/* Queues a delivery for the next batch. */
void b24_inbox_put(b24_inbox *in, b24_put *put)
{
    pthread_mutex_lock(&in->lock);
    if (in->closing) {
        pthread_mutex_unlock(&in->lock);
        put->result = B24_PUT_FAILED;
        put->done(put);
        return;
    }
    put->next = in->puts;
    in->puts = put;
    pthread_cond_signal(&in->wake);
    pthread_mutex_unlock(&in->lock);
}

/* Queues a script's operation for the next batch. */
void b24_inbox_op(b24_inbox *in, b24_op *op)
{
    pthread_mutex_lock(&in->lock);
    if (in->closing) {
        pthread_mutex_unlock(&in->lock);
        op->result = -1;
        op->done(op);
        return;
    }
    op->next = in->ops;
    in->ops = op;
    pthread_cond_signal(&in->wake);
    pthread_mutex_unlock(&in->lock);
}

/* Waits for deliveries to run, or for the stop. */
int b24_inbox_claim(b24_inbox *in, b24_job *jobs, int max)
{
    waiter w;
    memset(&w, 0, sizeof w);
    w.jobs = jobs;
    w.max = max < 1 ? 1 : max > MAX_CLAIM ? MAX_CLAIM : max;
    pthread_cond_init(&w.cond, NULL);
    pthread_mutex_lock(&in->lock);
    if (!in->stopping) {
        w.next = in->waiters;
        /* on this stack until unlinked below, before returning */
        // cppcheck-suppress autoVariables
        in->waiters = &w;
        pthread_cond_signal(&in->wake);
        while (w.state == 0 && !in->stopping)
            pthread_cond_wait(&w.cond, &in->lock);
        for (waiter **p = &in->waiters; *p; p = &(*p)->next)
            if (*p == &w) {
                *p = w.next;
                break;
            }
    }
    pthread_mutex_unlock(&in->lock);
    pthread_cond_destroy(&w.cond);
    return w.state == 1 ? w.got : 0;
}

static void queue_outcome(b24_inbox *in, b24_job *job, const char *error, int release);

/* Queues a run's outcome. */
void b24_inbox_finish(b24_inbox *in, b24_job *job, const char *error)
{
    queue_outcome(in, job, error, 0);
}

/* Hands back a claimed delivery that did not run. */
void b24_inbox_release(b24_inbox *in, b24_job *job)
{
    queue_outcome(in, job, NULL, 1);
}

/* Whether claims have stopped. */
int b24_inbox_stopping(b24_inbox *in)
{
    pthread_mutex_lock(&in->lock);
    int stopping = in->stopping;
    pthread_mutex_unlock(&in->lock);
    return stopping;
}

static void queue_outcome(b24_inbox *in, b24_job *job, const char *error, int release)
{
    finish *f = calloc(1, sizeof *f);
    char *err = error ? strdup(error) : NULL;
    if (f == NULL || (error && err == NULL)) {
        /* no memory to record it: the delivery stays 'running' and runs again after a
         * restart, which at-least-once allows */
        b24_log(B24_ERROR, "cannot record a delivery's outcome (out of memory)", "event",
                job->event, NULL);
        free(f);
        free(err);
        job_free(job);
        return;
    }
    free(job->body); /* only the key and event are needed from here */
    free(job->content_type);
    job->body = job->content_type = NULL;
    f->job = *job;
    f->error = err;
    f->release = release;
    memset(job, 0, sizeof *job);
    pthread_mutex_lock(&in->lock);
    f->next = in->finishes;
    in->finishes = f;
    pthread_cond_signal(&in->wake);
    pthread_mutex_unlock(&in->lock);
}

/* Stops handing out deliveries and wakes every waiting thread. */
void b24_inbox_stop_claims(b24_inbox *in)
{
    pthread_mutex_lock(&in->lock);
    in->stopping = 1;
    for (waiter *w = in->waiters; w; w = w->next)
        pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&in->lock);
}

/* Commits what is queued and ends the inbox thread. */
void b24_inbox_stop(b24_inbox *in)
{
    b24_inbox_stop_claims(in);
    pthread_mutex_lock(&in->lock);
    in->closing = 1;
    pthread_cond_signal(&in->wake);
    pthread_mutex_unlock(&in->lock);
    if (in->started)
        pthread_join(in->thread, NULL);
    in->started = 0;
}
