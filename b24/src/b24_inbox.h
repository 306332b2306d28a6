/* The durable inbox of b24 serve: deliveries stored in SQLite before the 200, handed to
 * handler threads, retried with backoff, and moved to a dead-letter table in the end. One
 * thread owns the database and batches every write that is waiting into one transaction
 * (group commit), so concurrent requests share an fsync. Keys follow work-queue rules: an
 * add's or delete's key seen (stored, or handled within dedup_ttl) is a duplicate; any other
 * key pending is merged into that row; running, it gets one 'waiting' row (at most one), not
 * claimable until the running one ends. No two rows of a key run at once. */
#ifndef B24_INBOX_H
#define B24_INBOX_H

#include <stddef.h>
#include <stdint.h>

typedef struct b24_inbox b24_inbox;

typedef struct b24_inbox_options {
    int max_attempts;  /* runs before a delivery goes to the dead letters */
    double retry_base; /* seconds before the second run; doubles each time, with jitter */
    double retry_max;  /* cap of one backoff */
    double dedup_ttl;  /* seconds a processed delivery's key is remembered */
    /* PostgreSQL (a fleet): seconds a host's claim lasts without renewal (renewed every third
     * of it; a dead host's runs are taken over after it), and the host's name in its claims
     * (NULL: hostname:pid) */
    double lease;
    const char *owner;
} b24_inbox_options;

/* A delivery a request thread wants stored; done() runs in the inbox thread after the
 * commit (or the failure), with result set. The strings must live until then. */
typedef struct b24_put {
    struct b24_put *next;
    const char *key, *event, *content_type, *body;
    size_t key_len, body_len; /* a key may hold NUL bytes */
    int result;               /* B24_PUT_* */
    void (*done)(struct b24_put *put);
    void *arg;
} b24_put;

/* Stored; a duplicate (an add or delete whose key is known); merged into a pending delivery of
 * its key; stored as the one more run after the running delivery of its key; not stored. */
enum {
    B24_PUT_STORED = 0,
    B24_PUT_DUPLICATE = 1,
    B24_PUT_MERGED = 2,
    B24_PUT_RERUN = 3,
    B24_PUT_FAILED = -1
};

/* A delivery claimed by a handler thread. */
typedef struct b24_job {
    int64_t id;
    int attempt;
    char *key, *event, *content_type, *body;
    size_t key_len, body_len;
} b24_job;

/* A script's operation on the inbox's database (b24.host kv_get, kv_put, inbox_mark,
 * inbox_marks), run by the inbox thread inside its next transaction; done() runs after the
 * commit (or the failure), with result 0 or -1. The strings must live until then. */
enum { B24_OP_KV_GET, B24_OP_KV_PUT, B24_OP_MARK, B24_OP_MARKS, B24_OP_CLAIM };
typedef struct b24_op {
    struct b24_op *next;
    int kind;
    const char *name; /* kv: the name; mark: the object */
    size_t name_len;
    const char *value; /* kv_put */
    size_t value_len;
    double ts; /* mark: the delivery's time (kept: the largest); claim: seconds it lasts */
    const char *const *objects; /* marks: nobjects objects */
    const size_t *object_lens;
    int nobjects;
    double *found;   /* marks: each object's time, NAN when none */
    char *value_out; /* kv_get: malloc'd, NULL when the name has none */
    size_t value_out_len;
    int result; /* claim: 1 held by this host, 0 by another */
    void (*done)(struct b24_op *op);
    void *arg;
} b24_op;

/* Opens (creating) the inbox at path: a PostgreSQL database for a postgresql:// URL (shared by
 * any number of hosts), an in-memory one for ":memory:", else a SQLite file; NULL and a
 * message (a URL's password masked). */
b24_inbox *b24_inbox_open(const char *path, const b24_inbox_options *o, char *err, size_t errlen);
/* Starts the inbox thread; -1 when it cannot. */
int b24_inbox_start(b24_inbox *in);
/* Queues a delivery for the next commit; put->done runs once it is stored or refused. */
void b24_inbox_put(b24_inbox *in, b24_put *put);
/* Queues a script's operation for the next transaction; op->done runs once committed. */
void b24_inbox_op(b24_inbox *in, b24_op *op);
/* Blocks until deliveries are ready: fills up to max jobs and returns how many, or 0 when
 * the inbox stops. */
int b24_inbox_claim(b24_inbox *in, b24_job *jobs, int max);
/* Queues the run's outcome (error NULL: success) for the next commit without waiting for it,
 * and takes over the job's strings. An outcome lost to a crash before its commit means the
 * delivery runs again: at least once. */
void b24_inbox_finish(b24_inbox *in, b24_job *job, const char *error);
/* Hands back a claimed delivery that was not run (the host is stopping). */
void b24_inbox_release(b24_inbox *in, b24_job *job);
/* Whether claims have stopped (the host is stopping). */
int b24_inbox_stopping(b24_inbox *in);
/* Stops handing out deliveries: b24_inbox_claim returns 0 in every waiting thread. */
void b24_inbox_stop_claims(b24_inbox *in);
/* Commits what is queued, then ends the inbox thread; call after the handler threads ended. */
void b24_inbox_stop(b24_inbox *in);
/* Closes the database and frees the inbox (NULL is fine). */
void b24_inbox_close(b24_inbox *in);
/* Deliveries pending or running, as last counted. */
long b24_inbox_depth(b24_inbox *in);

#endif
