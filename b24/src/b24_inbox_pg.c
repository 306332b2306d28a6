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
 * - at most one running row per key (a second unique partial index): a key never runs on two
 *   hosts at once;
 * - a store is inserted running on the host that took it in (its runs from the start, no claim)
 *   when no row of its key is pending or running and one of its handler threads is idle, or
 *   (an add's or delete's, which never merges) its ready queue has room; else pending. So a
 *   delivery costs an insert and a delete, and the claim below only serves what waited;
 * - a pending row is claimable when no row of its key runs (so a repeat that arrived during a
 *   run is that run's one more run), claimed with FOR UPDATE SKIP LOCKED: no two hosts take one;
 *   a claim is made only when pending rows may be claimable (this host stored, retried or
 *   released one, a success found a rerun waiting, another host's NOTIFY, a retry come of age,
 *   and once a second), in a transaction after the batch's;
 * - a running row carries its host (owner) and a lease the host renews every lease/3 while one
 *   of its handler threads has it (a claim whose commit's answer was lost is not renewed); a row
 *   whose lease ran out (its host died) goes back to pending (or to the dead letters when out of
 *   attempts), on whichever host notices first; a host's own rows at its start at once;
 * - a recorded success deletes the row: nothing runs again after it. Retries and dead letters
 *   only touch a row the host still owns.
 * A batch's stores are one statement (arrays in PostgreSQL's binary format), its successes one
 * more. Times are the database server's (extract(epoch from now())), one clock for the fleet. A
 * lost connection fails the batch (its deliveries are answered 503: never a 200 without a commit)
 * and is retried with backoff (0.1 s doubling to 5 s); the log says so once per outage. */
#include <arpa/inet.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
    /* the batch's stores, in one statement (arrays of keys, events, content types, bodies,
     * whether an add's or delete's key ($5), whether to run here ($6): one per idle handler
     * thread's slot; owner $7, lease $8). An add's or delete's key known (handled within the
     * TTL, or stored, pending or running: each state by its partial index) is not inserted; a
     * pending row of the key is merged into. Else the row is inserted running on this host when
     * $6 and no row of its key is pending or running, pending otherwise. The batch's own repeats
     * of a key: its first row of each state is inserted (for an add's or delete's key, its first
     * row at all), the others merged. ON CONFLICT without a target: both partial unique indexes
     * (one pending and one running row per key) are arbiters, so a row of the key inserted
     * meanwhile by another host's uncommitted batch merges this one (that run starts after that
     * commit, so after this change), never two runs of a key at once nor an error that would fail
     * the batch. Back, by the store's place in the arrays (n, from 1): its id, whether it runs
     * here, whether a row of its key runs (a rerun); a store not back was merged or known */
    [P_PUT] = "WITH k AS MATERIALIZED (SELECT u.*, r.x IS NOT NULL AS running,"
              " p.x IS NOT NULL AS pending, sn.x IS NOT NULL AS seen"
              " FROM unnest($1::bytea[], $2::text[], $3::bytea[], $4::bytea[], $5::boolean[],"
              " $6::boolean[]) WITH ORDINALITY AS u(key, event, ct, body, dup, here, n)"
              /* each a probe of one index per store (LIMIT: never a hash of a whole state) */
              " LEFT JOIN LATERAL (SELECT 1 AS x FROM b24_deliveries d WHERE d.key = u.key"
              " AND d.state = 'running' LIMIT 1) r ON true"
              " LEFT JOIN LATERAL (SELECT 1 AS x FROM b24_deliveries d WHERE d.key = u.key"
              " AND d.state = 'pending' LIMIT 1) p ON true"
              " LEFT JOIN LATERAL (SELECT 1 AS x FROM b24_seen WHERE u.dup AND b24_seen.key = u.key"
              " AND until > " NOW " LIMIT 1) sn ON true),"
              " s AS (SELECT k.*, CASE WHEN here AND NOT running AND NOT pending THEN 'running'"
              " ELSE 'pending' END AS st FROM k WHERE NOT (dup AND (running OR pending OR seen))),"
              " f AS (SELECT DISTINCT ON (key, CASE WHEN dup THEN '' ELSE st END) * FROM s"
              " ORDER BY key, CASE WHEN dup THEN '' ELSE st END, n),"
              " ins AS (INSERT INTO b24_deliveries (key, event, content_type, body, received_at,"
              " next_at, state, attempts, owner, lease_until)"
              " SELECT key, event, ct, body, " NOW ", " NOW ", st, CASE WHEN st = 'running' THEN 1"
              " ELSE 0 END, CASE WHEN st = 'running' THEN $7::text END, CASE WHEN st = 'running'"
              " THEN " NOW " + $8::float8 END FROM f ORDER BY n"
              " ON CONFLICT DO NOTHING RETURNING id, key, state)"
              " SELECT f.n, ins.id, ins.state = 'running', f.running FROM f JOIN ins"
              " ON ins.key = f.key AND ins.state = f.st ORDER BY f.n",
    /* the batch's recorded successes ($1): the rows go, the keys of adds and deletes ($2)
     * remembered for the TTL; back: whether a pending row of one of their keys waited for its
     * run (claimable now) */
    [P_SUCCESS] = "WITH d AS (DELETE FROM b24_deliveries WHERE id = ANY($1::bigint[])"
                  " RETURNING id, key),"
                  " s AS (INSERT INTO b24_seen (key, until) SELECT DISTINCT ON (key) key, " NOW
                  " + $3 FROM d WHERE id = ANY($2::bigint[]) ORDER BY key"
                  " ON CONFLICT (key) DO UPDATE SET until = excluded.until)"
                  " SELECT count(*) > 0 FROM d, LATERAL (SELECT 1 FROM b24_deliveries p"
                  " WHERE p.key = d.key AND p.state = 'pending' LIMIT 1) w",
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
    /* deliveries stored pending (here with no idle handler thread, by another host, the rerun of
     * a key, a retry come of age). Sent after the batch's COMMIT as a transaction of its own: the
     * running index is unique, and a row of a candidate's key inserted running by another host
     * after this statement's snapshot fails this statement (a unique violation), not the batch */
    [P_CLAIM] = "WITH c AS (SELECT id FROM b24_deliveries d WHERE state = 'pending'"
                " AND next_at <= " NOW " AND NOT EXISTS (SELECT 1 FROM b24_deliveries r"
                " WHERE r.key = d.key AND r.state = 'running')"
                " ORDER BY next_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                " UPDATE b24_deliveries d SET state = 'running', attempts = d.attempts + 1,"
                " owner = $2, lease_until = " NOW " + $3 FROM c WHERE d.id = c.id"
                " RETURNING d.id, d.attempts, d.key, d.event, d.content_type, d.body",
    /* when the next claimable row is ready (a rerun waits for its key's run to end, and then
     * the host of that run claims it or tells the others) */
    [P_NEXT] = "SELECT next_at - " NOW " FROM b24_deliveries d WHERE state = 'pending'"
               " AND NOT EXISTS (SELECT 1 FROM b24_deliveries r WHERE r.key = d.key"
               " AND r.state = 'running') ORDER BY next_at, id LIMIT 1",
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
    double last_renew;
    double last_take, last_prune, last_count; /* the listener thread's housekeeping */
    atomic_long counted; /* the depth the listener counted last (-1: none since taken) */
    int64_t *running;    /* the ids of the runs this host's handler threads have (leases renewed) */
    int nrunning, caprunning;
    /* when to look for pending rows (P_CLAIM): most deliveries are inserted running on the host
     * that took them in, so a claim is made only when a pending row may be claimable */
    int maybe_pending;   /* this host stored, retried or released a row, or one waited for a run */
    int notify_next;     /* tell the other hosts with the next batch: a row waited for a run */
    double last_scan;    /* the last claim (one a second anyway: `b24 inbox retry`, lost NOTIFYs) */
    double next_at;      /* when the next pending row is ready (from the last claim; 0: unknown) */
    atomic_int notified; /* another host said it stored or freed rows */
    atomic_int backend_pid; /* the inbox connection's server process: its own NOTIFYs ignored */
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

static int plain_on(PGconn *c, const char *q)
{
    PGresult *r = PQexec(c, q);
    int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok ? 0 : -1;
}

static int plain(pg *p, const char *q)
{
    return plain_on(p->c, q);
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
    atomic_store(&p->backend_pid, PQbackendPID(p->c));
    p->maybe_pending = 1; /* what was stored while this connection was away */
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
enum { E_NONE, E_PUT, E_SUCCESS, E_DROPPED, E_KV_GET, E_MARKS, E_CLAIM_NAME, E_CLAIM, E_NEXT };

typedef struct expect {
    int kind;
    void *what; /* the put or the op */
} expect;

typedef struct pipeline {
    pg *p;
    expect *ex;
    int n, cap;
    int failed; /* a send failed: the rest is not sent */
    int notify; /* rows other hosts may claim: NOTIFY them */
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

/* A growable byte buffer: PostgreSQL's binary array format and text id lists. */
typedef struct buf {
    char *p;
    size_t n, cap;
    int failed;
} buf;

static void buf_add(buf *b, const void *data, size_t n)
{
    if (b->failed)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n)
            cap *= 2;
        char *p = cap > INT32_MAX ? NULL : realloc(b->p, cap); /* a parameter's length is an int */
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void buf_int32(buf *b, uint32_t v)
{
    v = htonl(v);
    buf_add(b, &v, 4);
}

/* The header of a one-dimensional array of n elements of type oid, no NULLs (binary format:
 * dimensions, has-nulls, element type, then each dimension's size and lower bound). */
static void array_head(buf *b, uint32_t oid, int n)
{
    buf_int32(b, 1);
    buf_int32(b, 0);
    buf_int32(b, oid);
    buf_int32(b, (uint32_t)n);
    buf_int32(b, 1);
}

/* One element: its length, its bytes. */
static void array_item(buf *b, const void *data, size_t n)
{
    buf_int32(b, (uint32_t)n);
    buf_add(b, data, n);
}

#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_TEXT 25

/* The batch's stores as one statement. Which run here: one per idle handler thread's slot (as
 * a claim in the same batch would take them), and then an add's or delete's into the ready
 * queue's room: such a key is never merged, so running it here early changes nothing but who
 * runs it; an update's stays pending, where a repeat merges into it. Returns the idle slots
 * left (for a claim); *pending: a store left for any host. Each store's result comes back by
 * its place (put_at). */
static int send_puts(pipeline *pl, b24_put **put_at, int n, int idle, int room, const char *lease,
                     int *pending)
{
    pg *p = pl->p;
    buf a[6] = {{0}};
    array_head(&a[0], OID_BYTEA, n);
    array_head(&a[1], OID_TEXT, n);
    array_head(&a[2], OID_BYTEA, n);
    array_head(&a[3], OID_BYTEA, n);
    array_head(&a[4], OID_BOOL, n);
    array_head(&a[5], OID_BOOL, n);
    for (int i = 0; i < n; i++) {
        const b24_put *put = put_at[i];
        char dup = (char)b24_dedup_is_duplicate_kind(put->event), run = 1;
        if (idle > 0)
            idle--;
        else if (dup && room > 0)
            room--;
        else
            run = 0, *pending = 1;
        array_item(&a[0], put->key, put->key_len);
        array_item(&a[1], put->event, strlen(put->event));
        array_item(&a[2], put->content_type, strlen(put->content_type));
        array_item(&a[3], put->body, put->body_len);
        array_item(&a[4], &dup, 1);
        array_item(&a[5], &run, 1);
    }
    const char *v[8];
    int lens[8] = {0}, fmts[8] = {0};
    for (int k = 0; k < 6; k++) {
        pl->failed |= a[k].failed;
        v[k] = a[k].p;
        lens[k] = (int)a[k].n;
        fmts[k] = 1;
    }
    v[6] = p->owner;
    v[7] = lease;
    send_stmt(pl, P_PUT, NULL, 8, v, lens, fmts, 0, E_PUT, put_at);
    for (int k = 0; k < 6; k++)
        free(a[k].p);
    return idle;
}

/* The batch's successes as one statement: ids, and those of adds and deletes (keys kept). */
static void send_successes(pipeline *pl, const buf *ids, const buf *kept)
{
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%.3f", pl->p->opt.dedup_ttl);
    const char *v[3] = {ids->p, kept->p, ttl};
    send_stmt(pl, P_SUCCESS, NULL, 3, v, NULL, NULL, 0, E_SUCCESS, NULL);
}

/* One outcome; a success is added to ids (and kept, an add's or delete's) for one statement. */
static void send_finish(pipeline *pl, finish *f, long *delta, buf *ids, buf *kept)
{
    pg *p = pl->p;
    b24_job *j = &f->job;
    char id[24], num[32];
    snprintf(id, sizeof id, "%lld", (long long)j->id);
    running_remove(p, j->id); /* its outcome goes now: no more renewals */
    if (f->release || f->error)
        p->maybe_pending = pl->notify = 1; /* pending again: for this host or another */
    if (f->release) {
        const char *v[2] = {id, p->owner};
        send_stmt(pl, P_RELEASE_MERGED, NULL, 2, v, NULL, NULL, 0, E_DROPPED, NULL);
        send_stmt(pl, P_RELEASE, NULL, 2, v, NULL, NULL, 0, E_NONE, NULL);
        return;
    }
    if (f->error == NULL) {
        (*delta)--;
        buf_add(ids, ids->n > 1 ? "," : "", ids->n > 1);
        buf_add(ids, id, strlen(id));
        if (b24_dedup_is_duplicate_kind(j->event)) {
            buf_add(kept, kept->n > 1 ? "," : "", kept->n > 1);
            buf_add(kept, id, strlen(id));
        }
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
/* Takes the result that ends a pipeline's segment (PQpipelineSync): 0, or -1. */
static int take_sync(pg *p)
{
    PGresult *r = PQgetResult(p->c);
    int ok = r && PQresultStatus(r) == PGRES_PIPELINE_SYNC;
    PQclear(r);
    return ok ? 0 : -1;
}

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
        b24_put **put_at = e->what;
        for (int row = 0; row < PQntuples(r); row++) {
            long n = atol(PQgetvalue(r, row, 0)); /* from 1 */
            if (n < 1 || n > b->nputs)
                continue;
            b24_put *put = put_at[n - 1];
            b->delta++;
            if (*PQgetvalue(r, row, 3) == 't') {
                put->result = B24_PUT_RERUN; /* claimable once that run ends */
            } else if (*PQgetvalue(r, row, 2) == 't') {
                put->result = B24_PUT_STORED; /* running here: a job for an idle handler thread */
                if (b24_inbox_job_of_put(&b->claimed[b->nclaimed], put,
                                         atoll(PQgetvalue(r, row, 1))))
                    b->nclaimed++; /* else still running here: back when its lease runs out */
            } else {
                put->result = B24_PUT_STORED; /* pending: for whichever host claims first */
                p->maybe_pending = 1;
            }
        }
        break;
    }
    case E_SUCCESS:
        if (PQntuples(r) > 0 && *PQgetvalue(r, 0, 0) == 't')
            p->maybe_pending = p->notify_next = 1; /* a rerun waited for this run */
        break;
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
        p->next_at = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)
                         ? b24_wall_now() + strtod(PQgetvalue(r, 0, 0), NULL)
                         : 0;
        break;
    default:
        break;
    }
    PQclear(r);
    return 0;
}

/* Whether to look for pending rows in this batch. */
static int claim_due(pg *p, double now)
{
    if (atomic_exchange(&p->notified, 0))
        p->maybe_pending = 1;
    return p->maybe_pending || (p->next_at > 0 && p->next_at <= now) || now - p->last_scan >= 1.0;
}

/* The batch in one transaction, then (when due) the claim of pending rows in a second one, all
 * sent as one pipeline: one round trip. */
static void pg_run(void *db, batch *b)
{
    pg *p = db;
    b->nclaimed = 0;
    b->delta = 0;
    b->failed = 0;
    b->next = 0;
    int ok = ensure_up(p) == 0 && PQenterPipelineMode(p->c) == 1;
    pipeline pl = {.p = p};
    int claim_sent = 0, synced2 = 0, capputs = 0;
    b24_put **put_at = NULL; /* the stores by their place in the statement's arrays */
    b->nputs = 0;
    if (ok) {
        char lease[32];
        snprintf(lease, sizeof lease, "%.3f", p->opt.lease);
        double now = b24_wall_now();
        int here = b->want; /* idle handler threads' slots: for stores, then for a claim */
        send_stmt(&pl, -1, "BEGIN", 0, NULL, NULL, NULL, 0, E_NONE, NULL);
        for (b24_put *put = b->puts; put; put = put->next) {
            /* merged or known unless the statement returns it */
            put->result =
                b24_dedup_is_duplicate_kind(put->event) ? B24_PUT_DUPLICATE : B24_PUT_MERGED;
            if (b->nputs == capputs) {
                int cap = capputs ? capputs * 2 : 64;
                b24_put **at = realloc(put_at, sizeof *at * (size_t)cap);
                if (at == NULL) {
                    pl.failed = 1;
                    break;
                }
                put_at = at;
                capputs = cap;
            }
            put_at[b->nputs++] = put;
        }
        if (b->nputs > 0) {
            /* pending: an idle host may take those */
            here = send_puts(&pl, put_at, b->nputs, here, b->room, lease, &pl.notify);
        }
        long delta = 0;
        buf ids = {0}, kept = {0};
        buf_add(&ids, "{", 1);
        buf_add(&kept, "{", 1);
        for (finish *f = b->fins; f; f = f->next)
            send_finish(&pl, f, &delta, &ids, &kept);
        buf_add(&ids, "}", 2); /* with its NUL */
        buf_add(&kept, "}", 2);
        if (ids.failed || kept.failed)
            pl.failed = 1;
        else if (ids.n > 3)
            send_successes(&pl, &ids, &kept);
        free(ids.p);
        free(kept.p);
        for (b24_op *op = b->ops; op; op = op->next)
            send_op(&pl, op);
        int notify = pl.notify || p->notify_next;
        if (notify)
            send_stmt(&pl, -1, "NOTIFY " CHANNEL, 0, NULL, NULL, NULL, 0, E_NONE, NULL);
        send_stmt(&pl, -1, "COMMIT", 0, NULL, NULL, NULL, 0, E_NONE, NULL);
        /* synced even when a send failed: the server then answers what it got, and every
         * result is read, a failure or not, so the connection is clean for the next batch */
        int n1 = pl.n, synced = PQpipelineSync(p->c) == 1;
        ok = !pl.failed && synced;
        if (ok && here > 0 && claim_due(p, now)) { /* a transaction of its own */
            char limit[16];
            snprintf(limit, sizeof limit, "%d", here);
            const char *v[3] = {limit, p->owner, lease};
            send_stmt(&pl, P_CLAIM, NULL, 3, v, NULL, NULL, 1, E_CLAIM, NULL);
            send_stmt(&pl, P_NEXT, NULL, 0, NULL, NULL, NULL, 0, E_NEXT, NULL);
            claim_sent = here;
            synced2 = PQpipelineSync(p->c) == 1;
        }
        b->delta += delta;
        for (int k = 0; k < n1 && synced; k++)
            if (take_result(p, b, &pl.ex[k]) != 0)
                ok = 0;
        if (synced && take_sync(p) != 0)
            ok = 0;
        int claimed_before = b->nclaimed, claim_ok = claim_sent > 0 && !pl.failed && synced2;
        for (int k = n1; k < pl.n && synced2; k++)
            if (take_result(p, b, &pl.ex[k]) != 0)
                claim_ok = 0;
        if (synced2 && take_sync(p) != 0)
            claim_ok = 0;
        if (PQexitPipelineMode(p->c) != 1)
            ok = 0;
        if (ok) {
            p->notify_next = notify ? 0 : p->notify_next;
            if (claim_ok) { /* more may be ready when the claim took all it could */
                p->maybe_pending = b->nclaimed - claimed_before >= claim_sent;
                p->last_scan = now;
            } else if (claim_sent) { /* lost a race for a key (or failed): again next batch */
                for (int i = claimed_before; i < b->nclaimed; i++)
                    b24_inbox_job_free(&b->claimed[i]);
                b->nclaimed = claimed_before;
                check_lost(p, "claim");
                if (!p->down)
                    b24_log(B24_DEBUG, "inbox claim lost a race for a key; again next batch", NULL);
                p->maybe_pending = 1;
            }
        }
    }
    free(pl.ex);
    free(put_at);
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
        p->maybe_pending = 1;
        return;
    }
    b->next = p->next_at;
    if (p->maybe_pending && p->wake) /* claimable rows, maybe: another batch when threads idle */
        p->wake(p->wake_arg);
}

/* ---- leases and housekeeping ---------------------------------------------------------------- */

/* Statement i's text run on connection c (not prepared there); NULL when it failed. */
static PGresult *exec_on(PGconn *c, int i, int n, const char *const *values)
{
    PGresult *r = PQexecParams(c, sql[i], n, NULL, values, NULL, NULL, 0);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        PQclear(r);
        return NULL;
    }
    return r;
}

/* Rows whose host died go back to pending (or to the dead letters), on connection c: own_too
 * also takes this host's own running rows (at its start, from before it). 0, or -1. */
static int take_over(pg *p, PGconn *c, int own_too)
{
    char max[16];
    snprintf(max, sizeof max, "%d", p->opt.max_attempts);
    const char *own = own_too ? p->owner : "";
    const char *v2[2] = {max, own};
    const char *v1[1] = {own};
    if (plain_on(c, "BEGIN") != 0)
        return -1;
    PGresult *bury = exec_on(c, P_EXPIRED_BURY, 2, v2);
    long buried = bury ? atol(PQcmdTuples(bury)) : 0;
    PQclear(bury);
    PGresult *merged = bury ? exec_on(c, P_EXPIRED_MERGED, 1, v1) : NULL;
    PQclear(merged);
    PGresult *back = merged ? exec_on(c, P_EXPIRED_PENDING, 1, v1) : NULL;
    long n = back ? atol(PQcmdTuples(back)) : 0;
    PQclear(back);
    if (back == NULL || (n > 0 && plain_on(c, "NOTIFY " CHANNEL) != 0) ||
        plain_on(c, "COMMIT") != 0) {
        plain_on(c, "ROLLBACK");
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

/* About once a second, on the inbox thread: renew this host's leases (every lease/3); the
 * depth the listener thread last counted (the scans of a shared, churning table, the take-over
 * and the pruning run there, on its own connection, never holding a commit back). */
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
        if (renewed != 0) {
            check_lost(p, "lease");
            return -1;
        }
        p->last_renew = now;
    }
    return atomic_exchange(&p->counted, -1);
}

/* The listener's housekeeping on its connection c: the take-over of dead hosts' runs (every
 * lease/3), the pruning of the dedup memory and marks (every minute), the depth (every 5 s). */
static void housekeeping(pg *p, PGconn *c, double now)
{
    if (now - p->last_take >= p->opt.lease / 3) {
        p->last_take = now;
        take_over(p, c, 0);
    }
    if (now - p->last_prune >= 60) {
        p->last_prune = now;
        PQclear(exec_on(c, P_PRUNE_SEEN, 0, NULL));
        PQclear(exec_on(c, P_PRUNE_MARKS, 0, NULL));
    }
    if (now - p->last_count >= 5) {
        p->last_count = now;
        PGresult *r = exec_on(c, P_COUNT_ROWS, 0, NULL);
        if (r)
            atomic_store(&p->counted, atol(PQgetvalue(r, 0, 0)));
        PQclear(r);
    }
}

/* ---- the listener -----------------------------------------------------------------------------
 */

/* Holds a LISTEN connection and wakes the inbox on each notification; reconnects every second
 * while the database is away. */
static void *listen_main(void *arg)
{
    pg *p = arg;
    prctl(PR_SET_NAME, "b24-pg-listen", 0, 0, 0); /* the name top -H shows */
    PGconn *c = NULL;
    while (!atomic_load(&p->stop)) {
        if (c == NULL || PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            char err[600];
            c = b24_pg_connect(p->url, STATEMENT_TIMEOUT_MS, err, sizeof err);
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
            atomic_store(&p->notified, 1); /* what was stored meanwhile */
            p->wake(p->wake_arg);
        }
        struct pollfd fd = {.fd = PQsocket(c), .events = POLLIN};
        if (poll(&fd, 1, 200) > 0 && !PQconsumeInput(c))
            continue;                  /* reconnects above */
        housekeeping(p, c, b24_now()); /* notifications that came meanwhile are queued */
        int woke = 0, own = atomic_load(&p->backend_pid);
        PGnotify *n;
        while ((n = PQnotifies(c)) != NULL) {
            woke |= n->be_pid != own; /* not this host's own NOTIFY */
            PQfreemem(n);
        }
        if (woke) {
            atomic_store(&p->notified, 1);
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
        prepare(p, why, sizeof why) != 0 || take_over(p, p->c, 1) != 0) {
        if (p->c && PQstatus(p->c) == CONNECTION_OK && why[0] == '\0')
            b24_pg_error(p->c, why, sizeof why);
        snprintf(err, errlen, "cannot open the inbox %s: %s", p->masked, why);
        pg_close(p);
        return NULL;
    }
    atomic_store(&p->backend_pid, PQbackendPID(p->c));
    p->maybe_pending = 1; /* rows left pending before this start, or by other hosts */
    PGresult *count = exec_stmt(p, P_COUNT_ROWS, 0, NULL, NULL, NULL, 0);
    atomic_store(&p->counted, count ? atol(PQgetvalue(count, 0, 0)) : -1);
    PQclear(count);
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
