/* The inbox on PostgreSQL: one database shared by a fleet of `b24 serve` hosts (b24_inbox_impl.h,
 * the schema in b24_pg.c). Each host's inbox thread owns one connection and runs each batch of
 * stores, outcomes, script operations and claims as one transaction (group commit, with
 * synchronous_commit on: durable before the 200); a listener thread holds a second connection
 * that LISTENs, so a host wakes when another stored or freed deliveries.
 *
 * The rules are the SQLite inbox's, kept by the database across hosts:
 * - at most one pending row per key (a unique partial index): a repeat of an update's key merges
 *   by ON CONFLICT DO NOTHING; an add's or delete's key seen (stored, or handled within the
 *   dedup TTL: b24_seen) is a duplicate;
 * - a pending row is claimable when no row of its key runs (so a repeat that arrived during a
 *   run is that run's one more run), claimed with FOR UPDATE SKIP LOCKED: no two hosts take one;
 * - a running row carries its host (owner) and a lease the host renews every lease/3 while one
 *   of its handler threads has it (a claim whose commit's answer was lost is not renewed); a row
 *   whose lease ran out (its host died) goes back to pending (or to the dead letters when out of
 *   attempts), on whichever host notices first; a host's own rows at its start at once;
 * - a recorded success deletes the row: nothing runs again after it. Retries and dead letters
 *   only touch a row the host still owns.
 * Times are the database server's (extract(epoch from now())), one clock for the fleet. A lost
 * connection fails the batch (its deliveries are answered 503: never a 200 without a commit) and
 * is retried with backoff (0.1 s doubling to 5 s); the log says so once per outage. */
#include <arpa/inet.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "b24_clock.h"
#include "b24_dedup.h"
#include "b24_inbox_impl.h"
#include "b24_log.h"
#include "b24_metrics.h"
#include "b24_pg.h"

#define NOW "extract(epoch from now())"
#define STATEMENT_TIMEOUT_MS 30000
#define CHANNEL "b24_inbox"

enum {
    P_PUT,
    P_SUCCESS,
    P_BURY,
    P_DROP_PENDING,
    P_RETRY,
    P_RELEASE_MERGED,
    P_RELEASE,
    P_CLAIM,
    P_NEXT,
    P_KV_GET,
    P_KV_PUT,
    P_MARK,
    P_MARKS,
    P_CLAIM_NAME,
    P_RENEW,
    P_EXPIRED_BURY,
    P_EXPIRED_MERGED,
    P_EXPIRED_PENDING,
    P_PRUNE_SEEN,
    P_PRUNE_MARKS,
    P_COUNT_ROWS,
    P_COUNT
};

static const char *const sql[P_COUNT] = {
    /* a store: an add's or delete's key ($5) known (handled within the TTL, or stored: each
     * state by its partial index) is not
     * inserted; a pending row of the key is merged into (ON CONFLICT); a row back: stored, its
     * value the rows of the key running (so a rerun) */
    [P_PUT] = "INSERT INTO b24_deliveries (key, event, content_type, body, received_at, next_at)"
              " SELECT $1::bytea, $2::text, $3::bytea, $4::bytea, " NOW ", " NOW
              " WHERE NOT ($5::boolean AND (EXISTS (SELECT 1 FROM b24_seen WHERE key = $1::bytea"
              " AND until > " NOW ") OR EXISTS (SELECT 1 FROM b24_deliveries"
              " WHERE key = $1::bytea AND state = 'pending') OR EXISTS (SELECT 1 FROM"
              " b24_deliveries WHERE key = $1::bytea AND state = 'running')))"
              " ON CONFLICT (key) WHERE state = 'pending' DO NOTHING"
              " RETURNING (SELECT count(*) FROM b24_deliveries r"
              " WHERE r.key = $1::bytea AND r.state = 'running')",
    /* a recorded success: the row goes, an add's or delete's key ($3) is remembered */
    [P_SUCCESS] = "WITH d AS (DELETE FROM b24_deliveries WHERE id = $1 RETURNING key)"
                  " INSERT INTO b24_seen (key, until) SELECT key, " NOW " + $2 FROM d"
                  " WHERE $3::boolean ON CONFLICT (key) DO UPDATE SET until = excluded.until",
    [P_BURY] = "WITH d AS (DELETE FROM b24_deliveries WHERE id = $1 AND owner = $3 RETURNING *)"
               " INSERT INTO b24_dead (key, event, content_type, body, received_at, attempts,"
               " last_error, died_at) SELECT key, event, content_type, body, received_at,"
               " attempts, $2, " NOW " FROM d",
    /* a retry is the one more run of a repeat that arrived during the run: that row goes */
    [P_DROP_PENDING] = "DELETE FROM b24_deliveries d WHERE key = $1 AND state = 'pending'"
                       " AND EXISTS (SELECT 1 FROM b24_deliveries r WHERE r.id = $2"
                       " AND r.owner = $3)",
    [P_RETRY] = "UPDATE b24_deliveries SET state = 'pending', next_at = " NOW " + $2,"
                " last_error = $3, owner = NULL, lease_until = NULL WHERE id = $1 AND owner = $4",
    /* a run not made (stopping): a pending repeat covers it, else it is pending again */
    [P_RELEASE_MERGED] = "DELETE FROM b24_deliveries d WHERE id = $1 AND owner = $2 AND EXISTS"
                         " (SELECT 1 FROM b24_deliveries p WHERE p.key = d.key"
                         " AND p.state = 'pending')",
    [P_RELEASE] = "UPDATE b24_deliveries SET state = 'pending', attempts = attempts - 1,"
                  " owner = NULL, lease_until = NULL WHERE id = $1 AND owner = $2",
    [P_CLAIM] = "WITH c AS (SELECT id FROM b24_deliveries d WHERE state = 'pending'"
                " AND next_at <= " NOW " AND NOT EXISTS (SELECT 1 FROM b24_deliveries r"
                " WHERE r.key = d.key AND r.state = 'running')"
                " ORDER BY next_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                " UPDATE b24_deliveries d SET state = 'running', attempts = d.attempts + 1,"
                " owner = $2, lease_until = " NOW " + $3 FROM c WHERE d.id = c.id"
                " RETURNING d.id, d.attempts, d.key, d.event, d.content_type, d.body",
    [P_NEXT] = "SELECT min(next_at) - " NOW " FROM b24_deliveries WHERE state = 'pending'",
    [P_KV_GET] = "SELECT value FROM b24_kv WHERE name = $1",
    [P_KV_PUT] = "INSERT INTO b24_kv (name, value, updated_at) VALUES ($1, $2, " NOW ")"
                 " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                 " updated_at = excluded.updated_at",
    [P_MARK] = "INSERT INTO b24_marks (object, ts, until) VALUES ($1, $2, " NOW " + $3)"
               " ON CONFLICT (object) DO UPDATE SET ts = greatest(b24_marks.ts, excluded.ts),"
               " until = excluded.until",
    [P_MARKS] = "SELECT object, ts FROM b24_marks WHERE object = ANY($1::bytea[]) AND until > " NOW,
    /* a named claim (host.kv_claim): its holder in value, its end in updated_at */
    [P_CLAIM_NAME] = "INSERT INTO b24_kv (name, value, updated_at) VALUES ($1, $2, " NOW " + $3)"
                     " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                     " updated_at = excluded.updated_at WHERE b24_kv.updated_at < " NOW
                     " OR b24_kv.value = excluded.value RETURNING 1",
    /* only the runs this host has: a claim whose commit's answer was lost is left to expire */
    [P_RENEW] = "UPDATE b24_deliveries SET lease_until = " NOW " + $2"
                " WHERE owner = $1 AND state = 'running' AND id = ANY($3::bigint[])",
    /* rows whose host died (lease out; or this host's own, from before its start: $3) */
    [P_EXPIRED_BURY] = "WITH d AS (DELETE FROM b24_deliveries WHERE state = 'running'"
                       " AND (lease_until < " NOW " OR owner = $2) AND attempts >= $1"
                       " RETURNING *) INSERT INTO b24_dead (key, event, content_type, body,"
                       " received_at, attempts, last_error, died_at) SELECT key, event,"
                       " content_type, body, received_at, attempts,"
                       " 'the host stopped during the run', " NOW " FROM d",
    [P_EXPIRED_MERGED] = "DELETE FROM b24_deliveries d WHERE state = 'running'"
                         " AND (lease_until < " NOW " OR owner = $1) AND EXISTS"
                         " (SELECT 1 FROM b24_deliveries p WHERE p.key = d.key"
                         " AND p.state = 'pending')",
    [P_EXPIRED_PENDING] = "UPDATE b24_deliveries SET state = 'pending', owner = NULL,"
                          " lease_until = NULL WHERE state = 'running'"
                          " AND (lease_until < " NOW " OR owner = $1)",
    [P_PRUNE_SEEN] = "DELETE FROM b24_seen WHERE until <= " NOW,
    [P_PRUNE_MARKS] = "DELETE FROM b24_marks WHERE until <= " NOW,
    [P_COUNT_ROWS] = "SELECT count(*) FROM b24_deliveries",
};

typedef struct pg {
    PGconn *c;
    char *url; /* holds the password: never logged */
    char masked[512];
    b24_inbox_options opt;
    unsigned seed;
    char owner[160];
    int down; /* the connection was lost; retried from retry_at */
    double retry_at, retry_wait;
    double last_renew, last_prune, last_count;
    int64_t *running; /* the ids of the runs this host's handler threads have (leases renewed) */
    int nrunning, caprunning;
    /* the listener */
    pthread_t listener;
    int listening;
    atomic_int stop;
    void (*wake)(void *arg);
    void *wake_arg;
} pg;

/* ---- statements ---------------------------------------------------------------------------- */

/* Prepares every statement on a new connection: 0, or -1 with why. */
static int prepare(pg *p, char *err, size_t errlen)
{
    for (int i = 0; i < P_COUNT; i++) {
        char name[16];
        snprintf(name, sizeof name, "b24_%d", i);
        PGresult *r = PQprepare(p->c, name, sql[i], 0, NULL);
        int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (!ok) {
            b24_pg_error(p->c, err, errlen);
            return -1;
        }
    }
    return 0;
}

/* Runs statement i with n text parameters (lens[k] < 0: a C string; formats: binary where
 * given) and returns its result, or NULL when it failed (the result cleared). */
static PGresult *exec_stmt(pg *p, int i, int n, const char *const *values, const int *lens,
                           const int *formats, int binary_result)
{
    char name[16];
    snprintf(name, sizeof name, "b24_%d", i);
    PGresult *r = PQexecPrepared(p->c, name, n, values, lens, formats, binary_result);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        PQclear(r);
        return NULL;
    }
    return r;
}

/* Runs statement i for its effect: 0, or -1. */
static int run_stmt(pg *p, int i, int n, const char *const *values)
{
    PGresult *r = exec_stmt(p, i, n, values, NULL, NULL, 0);
    PQclear(r);
    return r ? 0 : -1;
}

static int plain(pg *p, const char *q)
{
    PGresult *r = PQexec(p->c, q);
    int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok ? 0 : -1;
}

/* ---- connection ---------------------------------------------------------------------------- */

/* (Re)connects: 0, or -1 with why. */
static int connect_db(pg *p, char *err, size_t errlen)
{
    if (p->c)
        PQfinish(p->c);
    p->c = b24_pg_connect(p->url, STATEMENT_TIMEOUT_MS, err, errlen);
    if (p->c == NULL)
        return -1;
    if (prepare(p, err, errlen) != 0) {
        PQfinish(p->c);
        p->c = NULL;
        return -1;
    }
    return 0;
}

/* The connection is usable, reconnecting once its backoff is over: 0, or -1 (still down). */
static int ensure_up(pg *p)
{
    if (!p->down)
        return 0;
    double now = b24_now();
    if (now < p->retry_at)
        return -1;
    char err[600];
    if (connect_db(p, err, sizeof err) != 0) {
        p->retry_wait = p->retry_wait < 0.1 ? 0.1 : p->retry_wait * 2 > 5 ? 5 : p->retry_wait * 2;
        p->retry_at = now + p->retry_wait;
        b24_log(B24_DEBUG, "inbox database still unreachable", "error", err, NULL);
        return -1;
    }
    p->down = 0;
    p->retry_wait = 0;
    b24_metrics_inbox_up(1);
    b24_log(B24_WARN, "inbox database reachable again", "inbox", p->masked, NULL);
    return 0;
}

/* After a failed statement: whether the connection is gone (then marked down and logged). */
static void check_lost(pg *p, const char *what)
{
    if (p->c && PQstatus(p->c) == CONNECTION_OK)
        return;
    if (!p->down) {
        char err[512];
        b24_pg_error(p->c, err, sizeof err);
        b24_log(B24_ERROR,
                "inbox database unreachable: deliveries are answered 503 (Bitrix24 does not send "
                "them again) until it is back",
                "inbox", p->masked, "during", what, "error", err, NULL);
        b24_metrics_inbox_up(0);
    }
    p->down = 1;
    p->retry_wait = 0.1;
    p->retry_at = b24_now() + p->retry_wait;
}

/* ---- the runs this host has ------------------------------------------------------------------ */

static void running_add(pg *p, int64_t id)
{
    if (p->nrunning == p->caprunning) {
        int cap = p->caprunning ? p->caprunning * 2 : 256;
        int64_t *r = realloc(p->running, sizeof *r * (size_t)cap);
        if (r == NULL)
            return; /* not renewed: the run's lease may run out, and it runs again elsewhere */
        p->running = r;
        p->caprunning = cap;
    }
    p->running[p->nrunning++] = id;
}

static void running_remove(pg *p, int64_t id)
{
    for (int i = 0; i < p->nrunning; i++)
        if (p->running[i] == id) {
            p->running[i] = p->running[--p->nrunning];
            return;
        }
}

/* The ids as an array literal {1,2,3}, malloc'd. */
static char *running_array(const pg *p)
{
    size_t cap = 3 + (size_t)p->nrunning * 21;
    char *out = malloc(cap);
    if (out == NULL)
        return NULL;
    size_t n = 0;
    out[n++] = '{';
    for (int i = 0; i < p->nrunning; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%lld", i ? "," : "", (long long)p->running[i]);
    snprintf(out + n, cap - n, "}");
    return out;
}

/* ---- one batch ----------------------------------------------------------------------------- */
/* A batch is one pipeline (libpq's pipeline mode): BEGIN, one statement per store, outcome and
 * script operation, the claim, NOTIFY, COMMIT, all sent at once and their results read in order,
 * so a batch costs one round trip to the server (and its one commit) whatever its size. No
 * statement depends on another's result inside the batch. */

static int64_t get_int8(const char *v)
{
    uint32_t hi, lo;
    memcpy(&hi, v, 4);
    memcpy(&lo, v + 4, 4);
    return (int64_t)(((uint64_t)ntohl(hi) << 32) | ntohl(lo));
}

static int32_t get_int4(const char *v)
{
    uint32_t x;
    memcpy(&x, v, 4);
    return (int32_t)ntohl(x);
}

static char *dup_value(const PGresult *r, int row, int col, size_t *len)
{
    size_t n = (size_t)PQgetlength(r, row, col);
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, PQgetvalue(r, row, col), n);
        d[n] = '\0';
    }
    if (len)
        *len = n;
    return d;
}

/* What a pipelined statement's result is for. */
enum { E_NONE, E_PUT, E_DROPPED, E_KV_GET, E_MARKS, E_CLAIM_NAME, E_CLAIM, E_NEXT };

typedef struct expect {
    int kind;
    void *what; /* the put or the op */
} expect;

typedef struct pipeline {
    pg *p;
    expect *ex;
    int n, cap;
    int failed; /* a send failed: the rest is not sent */
} pipeline;

/* Sends statement i (or the SQL text when i < 0) with its parameters, expecting kind. */
static void send_stmt(pipeline *pl, int i, const char *text, int n, const char *const *values,
                      const int *lens, const int *formats, int binary, int kind, void *what)
{
    if (pl->failed)
        return;
    if (pl->n == pl->cap) {
        int cap = pl->cap ? pl->cap * 2 : 64;
        expect *ex = realloc(pl->ex, sizeof *ex * (size_t)cap);
        if (ex == NULL) {
            pl->failed = 1;
            return;
        }
        pl->ex = ex;
        pl->cap = cap;
    }
    int ok;
    if (i < 0) {
        ok = PQsendQueryParams(pl->p->c, text, 0, NULL, NULL, NULL, NULL, 0);
    } else {
        char name[16];
        snprintf(name, sizeof name, "b24_%d", i);
        ok = PQsendQueryPrepared(pl->p->c, name, n, values, lens, formats, binary);
    }
    if (!ok) {
        pl->failed = 1;
        return;
    }
    pl->ex[pl->n].kind = kind;
    pl->ex[pl->n].what = what;
    pl->n++;
}

/* One store: one statement that checks an add's or delete's key and inserts. */
static void send_put(pipeline *pl, b24_put *put)
{
    const char *v[5] = {put->key, put->event, put->content_type, put->body,
                        b24_dedup_is_duplicate_kind(put->event) ? "t" : "f"};
    const int lens[5] = {(int)put->key_len, 0, (int)strlen(put->content_type), (int)put->body_len,
                         0};
    const int fmts[5] = {1, 0, 1, 1, 0}; /* bytea in binary: the bytes as they are */
    send_stmt(pl, P_PUT, NULL, 5, v, lens, fmts, 0, E_PUT, put);
}

/* One outcome. */
static void send_finish(pipeline *pl, finish *f, long *delta)
{
    pg *p = pl->p;
    b24_job *j = &f->job;
    char id[24], num[32];
    snprintf(id, sizeof id, "%lld", (long long)j->id);
    running_remove(p, j->id); /* its outcome goes now: no more renewals */
    if (f->release) {
        const char *v[2] = {id, p->owner};
        send_stmt(pl, P_RELEASE_MERGED, NULL, 2, v, NULL, NULL, 0, E_DROPPED, NULL);
        send_stmt(pl, P_RELEASE, NULL, 2, v, NULL, NULL, 0, E_NONE, NULL);
        return;
    }
    if (f->error == NULL) {
        snprintf(num, sizeof num, "%.3f", p->opt.dedup_ttl);
        const char *v[3] = {id, num, b24_dedup_is_duplicate_kind(j->event) ? "t" : "f"};
        (*delta)--;
        send_stmt(pl, P_SUCCESS, NULL, 3, v, NULL, NULL, 0, E_NONE, NULL);
        return;
    }
    if (j->attempt >= p->opt.max_attempts) {
        f->buried = 1; /* logged once committed */
        const char *v[3] = {id, f->error, p->owner};
        const int lens[3] = {0, (int)strlen(f->error), 0};
        const int fmts[3] = {0, 1, 0};
        (*delta)--;
        send_stmt(pl, P_BURY, NULL, 3, v, lens, fmts, 0, E_NONE, NULL);
        return;
    }
    const char *dv[3] = {j->key, id, p->owner};
    const int dlens[3] = {(int)j->key_len, 0, 0};
    const int dfmts[3] = {1, 0, 0};
    send_stmt(pl, P_DROP_PENDING, NULL, 3, dv, dlens, dfmts, 0, E_DROPPED, NULL);
    snprintf(num, sizeof num, "%.3f", b24_inbox_backoff(&p->opt, &p->seed, j->attempt));
    const char *v[4] = {id, num, f->error, p->owner};
    const int lens[4] = {0, 0, (int)strlen(f->error), 0};
    const int fmts[4] = {0, 0, 1, 0};
    send_stmt(pl, P_RETRY, NULL, 4, v, lens, fmts, 0, E_NONE, NULL);
}

/* The array literal {"\\x6162",...} of the objects as bytea (hex), malloc'd. */
static char *bytea_array(const b24_op *op)
{
    static const char hex[] = "0123456789abcdef";
    size_t cap = 3;
    for (int i = 0; i < op->nobjects; i++)
        cap += 6 + 2 * op->object_lens[i];
    char *out = malloc(cap), *w = out;
    if (out == NULL)
        return NULL;
    *w++ = '{';
    for (int i = 0; i < op->nobjects; i++) {
        if (i)
            *w++ = ',';
        memcpy(w, "\"\\\\x", 4); /* "\\x: the array's escape of the backslash */
        w += 4;
        for (size_t k = 0; k < op->object_lens[i]; k++) {
            unsigned char ch = (unsigned char)op->objects[i][k];
            *w++ = hex[ch >> 4];
            *w++ = hex[ch & 15];
        }
        *w++ = '"';
    }
    *w++ = '}';
    *w = '\0';
    return out;
}

/* A script's operation. */
static void send_op(pipeline *pl, b24_op *op)
{
    pg *p = pl->p;
    op->result = 0;
    char num[40], ttl[32];
    switch (op->kind) {
    case B24_OP_KV_GET: {
        const char *v[1] = {op->name};
        const int lens[1] = {(int)op->name_len};
        const int fmts[1] = {1};
        send_stmt(pl, P_KV_GET, NULL, 1, v, lens, fmts, 1, E_KV_GET, op);
        return;
    }
    case B24_OP_KV_PUT: {
        const char *v[2] = {op->name, op->value};
        const int lens[2] = {(int)op->name_len, (int)op->value_len};
        const int fmts[2] = {1, 1};
        send_stmt(pl, P_KV_PUT, NULL, 2, v, lens, fmts, 0, E_NONE, op);
        return;
    }
    case B24_OP_MARK: {
        snprintf(num, sizeof num, "%.17g", op->ts);
        snprintf(ttl, sizeof ttl, "%.3f", p->opt.dedup_ttl);
        const char *v[3] = {op->name, num, ttl};
        const int lens[3] = {(int)op->name_len, 0, 0};
        const int fmts[3] = {1, 0, 0};
        send_stmt(pl, P_MARK, NULL, 3, v, lens, fmts, 0, E_NONE, op);
        return;
    }
    case B24_OP_CLAIM: {
        snprintf(num, sizeof num, "%.3f", op->ts);
        const char *v[3] = {op->name, p->owner, num};
        const int lens[3] = {(int)op->name_len, (int)strlen(p->owner), 0};
        const int fmts[3] = {1, 1, 0};
        send_stmt(pl, P_CLAIM_NAME, NULL, 3, v, lens, fmts, 0, E_CLAIM_NAME, op);
        return;
    }
    default: { /* B24_OP_MARKS */
        for (int i = 0; i < op->nobjects; i++)
            op->found[i] = NAN;
        char *arr = bytea_array(op);
        if (arr == NULL) {
            pl->failed = 1;
            return;
        }
        const char *v[1] = {arr};
        send_stmt(pl, P_MARKS, NULL, 1, v, NULL, NULL, 1, E_MARKS, op);
        free(arr);
        return;
    }
    }
}

/* Takes one expected result: 0, or -1 (the statement failed or was skipped). */
static int take_result(pg *p, batch *b, const expect *e)
{
    PGresult *r = PQgetResult(p->c);
    if (r == NULL)
        return -1;
    PGresult *extra;
    while ((extra = PQgetResult(p->c)) != NULL) /* the NULL that ends each result */
        PQclear(extra);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        PQclear(r);
        return -1;
    }
    switch (e->kind) {
    case E_PUT: {
        b24_put *put = e->what;
        if (PQntuples(r) == 0) /* known (an add's key), or a pending row of the key: merged */
            put->result =
                b24_dedup_is_duplicate_kind(put->event) ? B24_PUT_DUPLICATE : B24_PUT_MERGED;
        else
            put->result = atol(PQgetvalue(r, 0, 0)) > 0 ? B24_PUT_RERUN : B24_PUT_STORED;
        if (put->result == B24_PUT_STORED || put->result == B24_PUT_RERUN)
            b->delta++;
        break;
    }
    case E_DROPPED:
        b->delta -= atol(PQcmdTuples(r));
        break;
    case E_KV_GET: {
        b24_op *op = e->what;
        if (PQntuples(r) > 0 && (op->value_out = dup_value(r, 0, 0, &op->value_out_len)) == NULL)
            op->result = -1;
        break;
    }
    case E_CLAIM_NAME:
        ((b24_op *)e->what)->result = PQntuples(r) > 0;
        break;
    case E_MARKS: {
        b24_op *op = e->what;
        for (int row = 0; row < PQntuples(r); row++) { /* binary: the bytes, a float8 */
            const char *obj = PQgetvalue(r, row, 0);
            size_t olen = (size_t)PQgetlength(r, row, 0);
            uint64_t bits = (uint64_t)get_int8(PQgetvalue(r, row, 1));
            double ts;
            memcpy(&ts, &bits, sizeof ts);
            for (int i = 0; i < op->nobjects; i++)
                if (op->object_lens[i] == olen && memcmp(op->objects[i], obj, olen) == 0)
                    op->found[i] = ts;
        }
        break;
    }
    case E_CLAIM:
        for (int i = 0; i < PQntuples(r) && b->nclaimed < b->want; i++) {
            b24_job *j = &b->claimed[b->nclaimed];
            memset(j, 0, sizeof *j);
            j->id = get_int8(PQgetvalue(r, i, 0));
            j->attempt = get_int4(PQgetvalue(r, i, 1));
            j->key = dup_value(r, i, 2, &j->key_len);
            j->event = dup_value(r, i, 3, NULL);
            j->content_type = dup_value(r, i, 4, NULL);
            j->body = dup_value(r, i, 5, &j->body_len);
            if (!j->key || !j->event || !j->content_type || !j->body) {
                b24_inbox_job_free(j); /* still claimed: back when its lease runs out */
                continue;
            }
            b->nclaimed++;
        }
        break;
    case E_NEXT:
        if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
            b->next = b24_wall_now() + strtod(PQgetvalue(r, 0, 0), NULL);
        break;
    default:
        break;
    }
    PQclear(r);
    return 0;
}

/* The batch in one transaction, sent as one pipeline. */
static void pg_run(void *db, batch *b)
{
    pg *p = db;
    b->nclaimed = 0;
    b->delta = 0;
    b->failed = 0;
    b->next = 0;
    int ok = ensure_up(p) == 0 && PQenterPipelineMode(p->c) == 1;
    pipeline pl = {.p = p};
    int sent = 0, commit_at = -1;
    if (ok) {
        int notify = 0;
        send_stmt(&pl, -1, "BEGIN", 0, NULL, NULL, NULL, 0, E_NONE, NULL);
        for (b24_put *put = b->puts; put; put = put->next) {
            send_put(&pl, put);
            notify = 1;
        }
        long delta = 0;
        for (finish *f = b->fins; f; f = f->next) {
            send_finish(&pl, f, &delta);
            notify = 1; /* a pending row of its key may be claimable now, on any host */
        }
        for (b24_op *op = b->ops; op; op = op->next)
            send_op(&pl, op);
        if (b->want > 0) {
            char limit[16], lease[32];
            snprintf(limit, sizeof limit, "%d", b->want);
            snprintf(lease, sizeof lease, "%.3f", p->opt.lease);
            const char *v[3] = {limit, p->owner, lease};
            send_stmt(&pl, P_CLAIM, NULL, 3, v, NULL, NULL, 1, E_CLAIM, NULL);
        }
        if (notify)
            send_stmt(&pl, -1, "NOTIFY " CHANNEL, 0, NULL, NULL, NULL, 0, E_NONE, NULL);
        commit_at = pl.n;
        send_stmt(&pl, -1, "COMMIT", 0, NULL, NULL, NULL, 0, E_NONE, NULL);
        send_stmt(&pl, P_NEXT, NULL, 0, NULL, NULL, NULL, 0, E_NEXT, NULL);
        sent = pl.n;
        /* synced even when a send failed: the server then answers what it got, and every
         * result is read, a failure or not, so the connection is clean for the next batch */
        int synced = PQpipelineSync(p->c) == 1;
        ok = !pl.failed && synced;
        b->delta += delta;
        for (int k = 0; k < sent && synced; k++) {
            int bad = take_result(p, b, &pl.ex[k]) != 0;
            if (bad && k <= commit_at) /* up to the COMMIT; the NEXT after it may fail */
                ok = 0;
        }
        if (synced) {
            PGresult *r = PQgetResult(p->c); /* PGRES_PIPELINE_SYNC */
            if (r == NULL || PQresultStatus(r) != PGRES_PIPELINE_SYNC)
                ok = 0;
            PQclear(r);
        }
        if (PQexitPipelineMode(p->c) != 1)
            ok = 0;
    }
    free(pl.ex);
    for (int i = 0; ok && i < b->nclaimed; i++) /* committed: this host's runs now */
        running_add(p, b->claimed[i].id);
    if (!ok) {
        if (!p->down) { /* a statement failed with the connection up: say why */
            char err[512];
            b24_pg_error(p->c, err, sizeof err);
            check_lost(p, "batch");
            if (!p->down) {
                b24_log(B24_ERROR, "inbox transaction failed", "error", err, NULL);
                plain(p, "ROLLBACK");
            }
        }
        for (finish *f = b->fins; f; f = f->next)
            f->buried = 0;
        for (b24_put *put = b->puts; put; put = put->next)
            put->result = B24_PUT_FAILED;
        for (b24_op *op = b->ops; op; op = op->next) {
            op->result = -1;
            free(op->value_out);
            op->value_out = NULL;
        }
        for (int i = 0; i < b->nclaimed; i++)
            b24_inbox_job_free(&b->claimed[i]);
        b->nclaimed = 0;
        b->delta = 0;
        b->failed = 1;
        b->next = b24_wall_now() + 1;
    }
}

/* ---- leases and housekeeping ---------------------------------------------------------------- */

/* Rows whose host died go back to pending (or to the dead letters): own_too also takes this
 * host's own running rows (at its start, from before it). 0, or -1. */
static int take_over(pg *p, int own_too)
{
    char max[16];
    snprintf(max, sizeof max, "%d", p->opt.max_attempts);
    const char *own = own_too ? p->owner : "";
    const char *v2[2] = {max, own};
    const char *v1[1] = {own};
    if (plain(p, "BEGIN") != 0)
        return -1;
    PGresult *bury = exec_stmt(p, P_EXPIRED_BURY, 2, v2, NULL, NULL, 0);
    long buried = bury ? atol(PQcmdTuples(bury)) : 0;
    PQclear(bury);
    PGresult *merged = bury ? exec_stmt(p, P_EXPIRED_MERGED, 1, v1, NULL, NULL, 0) : NULL;
    PQclear(merged);
    PGresult *back = merged ? exec_stmt(p, P_EXPIRED_PENDING, 1, v1, NULL, NULL, 0) : NULL;
    long n = back ? atol(PQcmdTuples(back)) : 0;
    PQclear(back);
    if (back == NULL || (n > 0 && plain(p, "NOTIFY " CHANNEL) != 0) || plain(p, "COMMIT") != 0) {
        plain(p, "ROLLBACK");
        return -1;
    }
    for (long i = 0; i < buried; i++)
        b24_metrics_dead_letter();
    if (n > 0 || buried > 0) {
        char ns[24], bs[24];
        snprintf(ns, sizeof ns, "%ld", n);
        snprintf(bs, sizeof bs, "%ld", buried);
        b24_log(B24_WARN, "inbox: runs of a stopped host taken over", "pending_again", ns,
                "dead_letters", bs, NULL);
    }
    return 0;
}

/* About once a second: renew this host's leases (every lease/3), take over rows of dead hosts,
 * prune the dedup memory and marks once a minute; the depth. */
static long pg_maintain(void *db, double now)
{
    pg *p = db;
    if (ensure_up(p) != 0)
        return -1;
    if (now - p->last_renew >= p->opt.lease / 3) {
        char lease[32];
        snprintf(lease, sizeof lease, "%.3f", p->opt.lease);
        char *ids = running_array(p);
        const char *v[3] = {p->owner, lease, ids ? ids : "{}"};
        int renewed = run_stmt(p, P_RENEW, 3, v);
        free(ids);
        if (renewed != 0 || take_over(p, 0) != 0) {
            check_lost(p, "lease");
            return -1;
        }
        p->last_renew = now;
    }
    if (now - p->last_prune > 60) {
        if (run_stmt(p, P_PRUNE_SEEN, 0, NULL) != 0 || run_stmt(p, P_PRUNE_MARKS, 0, NULL) != 0) {
            check_lost(p, "prune");
            return -1;
        }
        p->last_prune = now;
    }
    if (now - p->last_count < 5) /* a count of a shared, churning table: every 5 s */
        return -1;
    p->last_count = now;
    PGresult *r = exec_stmt(p, P_COUNT_ROWS, 0, NULL, NULL, NULL, 0);
    if (r == NULL) {
        check_lost(p, "count");
        return -1;
    }
    long depth = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    return depth;
}

/* ---- the listener -----------------------------------------------------------------------------
 */

/* Holds a LISTEN connection and wakes the inbox on each notification; reconnects every second
 * while the database is away. */
static void *listen_main(void *arg)
{
    pg *p = arg;
    PGconn *c = NULL;
    while (!atomic_load(&p->stop)) {
        if (c == NULL || PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            char err[600];
            c = b24_pg_connect(p->url, 0, err, sizeof err);
            PGresult *r = c ? PQexec(c, "LISTEN " CHANNEL) : NULL;
            int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
            PQclear(r);
            if (!ok) {
                PQfinish(c);
                c = NULL;
                for (int i = 0; i < 10 && !atomic_load(&p->stop); i++)
                    usleep(100000);
                continue;
            }
            p->wake(p->wake_arg); /* what was stored meanwhile */
        }
        struct pollfd fd = {.fd = PQsocket(c), .events = POLLIN};
        if (poll(&fd, 1, 200) > 0) {
            if (!PQconsumeInput(c))
                continue; /* reconnects above */
            int woke = 0;
            PGnotify *n;
            while ((n = PQnotifies(c)) != NULL) {
                woke = 1;
                PQfreemem(n);
            }
            if (woke)
                p->wake(p->wake_arg);
        }
    }
    PQfinish(c);
    return NULL;
}

static int pg_listen(void *db, void (*wake)(void *arg), void *arg)
{
    pg *p = db;
    p->wake = wake;
    p->wake_arg = arg;
    if (pthread_create(&p->listener, NULL, listen_main, p) != 0)
        return -1;
    p->listening = 1;
    return 0;
}

/* ---- open and close ----------------------------------------------------------------------- */

static void pg_close(void *db)
{
    pg *p = db;
    if (p == NULL)
        return;
    if (p->listening) {
        atomic_store(&p->stop, 1);
        pthread_join(p->listener, NULL);
    }
    PQfinish(p->c);
    free(p->running);
    if (p->url) {
        memset(p->url, 0, strlen(p->url));
        free(p->url);
    }
    free(p);
}

static void *pg_open(const char *path, const b24_inbox_options *o, char *err, size_t errlen)
{
    pg *p = calloc(1, sizeof *p);
    if (p == NULL || (p->url = strdup(path)) == NULL) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->opt = *o;
    if (!(p->opt.lease > 0))
        p->opt.lease = 30;
    p->seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)p;
    b24_pg_mask(path, p->masked, sizeof p->masked);
    if (o->owner && *o->owner)
        snprintf(p->owner, sizeof p->owner, "%s", o->owner);
    else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(p->owner, sizeof p->owner, "%s:%ld", host, (long)getpid());
    }
    char why[600] = "";
    p->c = b24_pg_connect(p->url, STATEMENT_TIMEOUT_MS, why, sizeof why);
    if (p->c == NULL || b24_pg_migrate(p->c, why, sizeof why) != 0 ||
        prepare(p, why, sizeof why) != 0 || take_over(p, 1) != 0) {
        if (p->c && PQstatus(p->c) == CONNECTION_OK && why[0] == '\0')
            b24_pg_error(p->c, why, sizeof why);
        snprintf(err, errlen, "cannot open the inbox %s: %s", p->masked, why);
        pg_close(p);
        return NULL;
    }
    b24_metrics_inbox_up(1);
    return p;
}

const inbox_backend b24_inbox_pg = {
    .open = pg_open,
    .run = pg_run,
    .maintain = pg_maintain,
    .listen = pg_listen,
    .close = pg_close,
};
