/* The durable inbox: see b24_inbox.h. Everything that touches the database runs on the inbox
 * thread; other threads hand it work through three queues under one mutex, and the backend
 * (b24_inbox_impl.h: SQLite or PostgreSQL) runs each batch as one transaction. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "b24_clock.h"
#include "b24_inbox.h"
#include "b24_inbox_impl.h"
#include "b24_log.h"
#include "b24_metrics.h"
#include "b24_pg.h"

/* A handler thread waiting for deliveries. */
typedef struct waiter {
    struct waiter *next;
    b24_job *jobs;
    int max, got;
    int state; /* 0 waiting, 1 got jobs, 2 stopping */
    pthread_cond_t cond;
} waiter;

struct b24_inbox {
    const inbox_backend *be;
    void *db; /* the backend's */
    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    pthread_cond_t wake; /* the inbox thread sleeps on this */
    b24_put *puts;       /* queued, newest first */
    finish *finishes;
    b24_op *ops; /* the script's, queued, newest first */
    waiter *waiters;
    int stopping; /* no more claims; stores and outcomes still go in */
    int closing;  /* the thread ends once the queues are empty */
    int poked;    /* another host stored or freed deliveries: claim now */
    atomic_long depth;
    /* this host's runs not yet taken by a handler thread (a ring, oldest at head) */
    b24_job ready[READY_MAX];
    int head, nready;
};

/* Takes the oldest ready job (lock held). */
static b24_job ready_take(b24_inbox *in)
{
    b24_job j = in->ready[in->head];
    in->head = (in->head + 1) % READY_MAX;
    in->nready--;
    return j;
}

/* Opens (creating) the inbox at path: a PostgreSQL database for a postgresql:// URL, else a
 * SQLite file (or ":memory:"). */
b24_inbox *b24_inbox_open(const char *path, const b24_inbox_options *o, char *err, size_t errlen)
{
    b24_inbox *in = calloc(1, sizeof *in);
    if (in == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    in->be = b24_pg_is_url(path) ? &b24_inbox_pg : &b24_inbox_sqlite;
    in->db = in->be->open(path, o, err, errlen);
    if (in->db == NULL) {
        free(in);
        return NULL;
    }
    pthread_mutex_init(&in->lock, NULL);
    pthread_cond_init(&in->wake, NULL);
    long depth = in->be->maintain(in->db, b24_wall_now());
    atomic_store(&in->depth, depth > 0 ? depth : 0);
    return in;
}

/* Closes the database and frees the inbox. */
void b24_inbox_close(b24_inbox *in)
{
    if (in == NULL)
        return;
    in->be->close(in->db);
    pthread_mutex_destroy(&in->lock);
    pthread_cond_destroy(&in->wake);
    free(in);
}

/* Deliveries pending or running, as last counted. */
long b24_inbox_depth(b24_inbox *in)
{
    return atomic_load(&in->depth);
}

/* Frees a job's strings. */
void b24_inbox_job_free(b24_job *job)
{
    free(job->key);
    free(job->event);
    free(job->content_type);
    free(job->body);
    job->key = job->event = job->content_type = job->body = NULL;
}

/* The job of a store inserted running (id): 1, or 0 when out of memory. */
int b24_inbox_job_of_put(b24_job *j, const b24_put *p, int64_t id)
{
    memset(j, 0, sizeof *j);
    j->id = id;
    j->attempt = 1;
    j->key_len = p->key_len;
    j->body_len = p->body_len;
    if ((j->key = malloc(p->key_len + 1)) != NULL) {
        memcpy(j->key, p->key, p->key_len);
        j->key[p->key_len] = '\0';
    }
    if ((j->body = malloc(p->body_len + 1)) != NULL) {
        memcpy(j->body, p->body, p->body_len);
        j->body[p->body_len] = '\0';
    }
    j->event = strdup(p->event);
    j->content_type = strdup(p->content_type);
    if (!j->key || !j->body || !j->event || !j->content_type) {
        b24_inbox_job_free(j);
        return 0;
    }
    return 1;
}

/* Seconds until the next run of a delivery that has run `attempts` times: exponential,
 * capped, with full jitter in [d/2, d] so retries of many deliveries spread out. */
double b24_inbox_backoff(const b24_inbox_options *o, unsigned *seed, int attempts)
{
    double d = o->retry_base * pow(2.0, attempts > 1 ? attempts - 1 : 0);
    if (d > o->retry_max)
        d = o->retry_max;
    double r = (double)rand_r(seed) / RAND_MAX;
    return d / 2 + r * d / 2;
}

static void *inbox_main(void *arg)
{
    b24_inbox *in = arg;
    prctl(PR_SET_NAME, "b24-inbox", 0, 0, 0); /* the name top -H shows */
    double next_ready = 0, last_poll = 0, last_maintain = 0;
    pthread_mutex_lock(&in->lock);
    for (;;) {
        int idle = 0;
        if (!in->stopping)
            for (waiter *w = in->waiters; w; w = w->next)
                idle += w->state == 0;
        double now = b24_wall_now();
        /* claims are due when a retry comes of age, and once a second anyway: `b24 inbox
         * retry` may have made deliveries ready behind this thread's back */
        int due =
            idle && (in->poked || (next_ready && next_ready <= now) || now - last_poll >= 1.0);
        if (!in->puts && !in->finishes && !in->ops && !due) {
            if (in->closing)
                break;
            if (now - last_maintain >= 1.0) { /* leases are renewed even with nothing to do */
                pthread_mutex_unlock(&in->lock);
                long depth = in->be->maintain(in->db, now);
                if (depth >= 0)
                    atomic_store(&in->depth, depth);
                last_maintain = now;
                pthread_mutex_lock(&in->lock);
                continue;
            }
            double until = idle ? last_poll + 1.0 : last_maintain + 1.0;
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
        in->poked = 0;
        in->puts = NULL;
        in->finishes = NULL;
        in->ops = NULL;
        int want = 0, room = 0;
        if (!in->stopping) {
            for (waiter *w = in->waiters; w; w = w->next)
                if (w->state == 0 && want + w->max <= MAX_CLAIM)
                    want += w->max;
            /* the ready queue only shrinks until the hand-out below */
            room = READY_MAX - in->nready < MAX_CLAIM - want ? READY_MAX - in->nready
                                                             : MAX_CLAIM - want;
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
        batch bt = {
            .puts = rev, .fins = fins, .ops = rops, .want = want, .room = room, .claimed = claimed};
        in->be->run(in->db, &bt);
        next_ready = bt.next;
        nclaimed = bt.nclaimed;
        failed = bt.failed;
        if (!failed) {
            atomic_fetch_add(&in->depth, bt.delta);
        } else {
            long refused = 0;
            for (b24_put *p = rev; p; p = p->next)
                refused++;
            if (refused)
                b24_metrics_inbox_refused(refused);
        }
        if (now - last_maintain >= 1.0) { /* at most once a second */
            long depth = in->be->maintain(in->db, now);
            if (depth >= 0)
                atomic_store(&in->depth, depth);
            last_maintain = now;
        }
        last_poll = now;
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
            b24_inbox_job_free(&f->job);
            free(f->error);
            free(f);
            f = n;
        }
        pthread_mutex_lock(&in->lock);
        /* hand the claimed deliveries out to every waiting thread (those that came during the
         * batch too, having found the ready queue empty), each up to what it asked; the rest
         * wait in the ready queue */
        int next = 0;
        for (waiter *w = in->waiters; w && next < nclaimed && !in->stopping; w = w->next) {
            if (w->state != 0)
                continue;
            while (w->got < w->max && next < nclaimed)
                w->jobs[w->got++] = claimed[next++];
            w->state = 1;
            pthread_cond_signal(&w->cond);
        }
        while (next < nclaimed && !in->stopping && in->nready < READY_MAX) {
            in->ready[(in->head + in->nready) % READY_MAX] = claimed[next++];
            in->nready++;
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

/* From the backend's listener: another host stored or freed deliveries. */
static void poke(void *arg)
{
    b24_inbox *in = arg;
    pthread_mutex_lock(&in->lock);
    in->poked = 1;
    pthread_cond_signal(&in->wake);
    pthread_mutex_unlock(&in->lock);
}

/* Starts the inbox thread, which owns the database from now on. */
int b24_inbox_start(b24_inbox *in)
{
    if (pthread_create(&in->thread, NULL, inbox_main, in) != 0)
        return -1;
    in->started = 1;
    if (in->be->listen && in->be->listen(in->db, poke, in) != 0)
        return -1;
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
    while (!in->stopping && in->nready > 0 && w.got < w.max) /* this host's, waiting */
        jobs[w.got++] = ready_take(in);
    if (w.got > 0) {
        w.state = 1;
    } else if (!in->stopping) {
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
        b24_inbox_job_free(job);
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

/* Stops handing out deliveries, wakes every waiting thread, and hands back the ready queue's
 * runs (pending again, no attempt spent). */
void b24_inbox_stop_claims(b24_inbox *in)
{
    pthread_mutex_lock(&in->lock);
    in->stopping = 1;
    for (waiter *w = in->waiters; w; w = w->next)
        pthread_cond_signal(&w->cond);
    while (in->nready > 0) {
        b24_job j = ready_take(in);
        pthread_mutex_unlock(&in->lock);
        b24_inbox_release(in, &j);
        pthread_mutex_lock(&in->lock);
    }
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
