/* What the inbox's queue machinery (b24_inbox.c) and its storage backends share (private; the
 * interface is b24_inbox.h). b24_inbox.c owns the thread, the queues of stores, outcomes and
 * script operations, and the waiting handler threads; a backend runs one batch of them as one
 * transaction on its database: SQLite (b24_inbox_sqlite.c, a file of one host) or PostgreSQL
 * (b24_inbox_pg.c, one database shared by a fleet of hosts). */
#ifndef B24_INBOX_IMPL_H
#define B24_INBOX_IMPL_H

#include <stddef.h>

#include "b24_inbox.h"

#define MAX_CLAIM 256 /* deliveries handed out in one batch */

/* A run's outcome, queued for the next batch; the handler thread does not wait for it. */
typedef struct finish {
    struct finish *next;
    b24_job job; /* key and event owned here */
    char *error; /* NULL: success */
    int release; /* never run (the host is stopping): back to pending, attempt not spent */
    int buried;  /* moved to the dead letters by this batch */
} finish;

/* One batch's work and results. */
typedef struct batch {
    b24_put *puts; /* oldest first; each gets its result */
    int nputs;     /* how many (counted by the backend that needs it) */
    finish *fins;  /* each gets buried */
    b24_op *ops;   /* in the order made; each gets its result */
    int want;      /* deliveries the idle handler threads take */
    int room;      /* more runs this host may take for its ready queue (adds' and deletes') */
    b24_job *claimed;
    int nclaimed;
    int failed;  /* the transaction failed: the outcomes are queued again, puts failed */
    long delta;  /* the change of the inbox's depth */
    double next; /* when the next pending delivery is ready (0: unknown) */
} batch;

typedef struct inbox_backend {
    /* The database at path, opened (created, migrated) and recovered; NULL and why. */
    void *(*open)(const char *path, const b24_inbox_options *o, char *err, size_t errlen);
    /* Runs one batch in one transaction (b->failed: rolled back; nothing of it happened). */
    void (*run)(void *db, batch *b);
    /* Housekeeping, called about once a second on the inbox thread: pruning, leases; returns
     * the depth counted from the table, or -1 when it did not count. */
    long (*maintain)(void *db, double now);
    /* Optional: starts waking the inbox (wake(arg)) when another host stored or freed
     * deliveries; 0, or -1. */
    int (*listen)(void *db, void (*wake)(void *arg), void *arg);
    void (*close)(void *db);
} inbox_backend;

/* Claimed deliveries waiting here for a handler thread: a batch's stores may become this host's
 * runs beyond what idle threads take at once (an add's or delete's, never merged), so they cost
 * no claim of their own. */
#define READY_MAX 256

extern const inbox_backend b24_inbox_sqlite;
extern const inbox_backend b24_inbox_pg;

/* Frees a job's strings. */
void b24_inbox_job_free(b24_job *job);
/* The job of a store its batch inserted running (its id): the store's strings copied; 1, or 0
 * when out of memory (the row then stays running until a restart, or its lease runs out). */
int b24_inbox_job_of_put(b24_job *j, const b24_put *p, int64_t id);
/* Seconds until the next run of a delivery that has run `attempts` times: exponential from
 * o->retry_base, capped at o->retry_max, with full jitter in [d/2, d] (seed: the caller's). */
double b24_inbox_backoff(const b24_inbox_options *o, unsigned *seed, int attempts);

#endif
