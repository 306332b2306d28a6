/* Structured logs on stderr, lines from threads never interleaved. The line itself is the
 * core's (b24_logline.c): the same format and masking as the library's.
 *
 * Writing (docs/performance.md, "Logging"): a line is written at once, by the thread that logs
 * it, unless the last write(2) was less than DEFER ago or lines are already queued; then it is
 * queued, and a writer thread (started by the first line) writes what is queued DEFER later in one
 * write(2). So at a few lines a second every line is out before b24_log returns, in order with
 * anything else written to stderr, as before; under load (a line per request, tens of
 * thousands a second) the lines go out in batches (DEFER after the first, or by the thread that
 * queues the FLUSH_AT-th byte), a write(2) every few milliseconds instead of one a line, and the
 * threads never queue on the file's lock in the kernel. Lines stay in order; a
 * kill -9 under load can lose at most the last DEFER of them; exit() writes what is queued. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "b24.h" /* b24_logline */
#include "b24_clock.h"
#include "b24_log.h"

static int json_format = 0;
static b24_level min_level = B24_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* Sets the format and the lowest level logged; -1 on an unknown name. */
int b24_log_configure(const char *format, const char *level)
{
    if (format) {
        if (strcmp(format, "json") == 0)
            json_format = 1;
        else if (strcmp(format, "logfmt") == 0)
            json_format = 0;
        else
            return -1;
    }
    if (level) {
        int found = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(level, level_names[i]) == 0)
                found = i;
        if (found < 0)
            return -1;
        min_level = (b24_level)found;
    }
    return 0;
}

/* Whether a line of this level would be written. */
int b24_log_enabled(b24_level level)
{
    return level >= min_level;
}

/* Two buffers: lines are appended to the filling one while the writer writes the other. A
 * line that does not fit waits until the writer has taken the filling one (backpressure, as a
 * slow stderr gave before: nothing is dropped). */
#define PENDING_MAX (128 * 1024)
#define FLUSH_AT (32 * 1024) /* queued bytes the thread that queues them writes itself */
#define DEFER 0.002          /* seconds a queued line may wait, and the closest two writes come */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t taken; /* the queued lines were taken, or a write ended */
    pthread_cond_t wake;  /* lines were queued: the writer thread waits on this */
    char bufs[2][PENDING_MAX];
    int filling;       /* index of the buffer lines are appended to */
    size_t pending;    /* bytes in it */
    int writing;       /* a write(2) of log lines is under way */
    double last_write; /* when the last one began (b24_now) */
    int started;       /* the writer thread runs */
} out = {PTHREAD_MUTEX_INITIALIZER,
         PTHREAD_COND_INITIALIZER,
         PTHREAD_COND_INITIALIZER,
         {{0}},
         0,
         0,
         0,
         0,
         0};

/* write(2) of all n bytes (a short write or EINTR goes on; any other failure drops the rest,
 * as a failed write(2) of a line did before). */
static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(2, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* (under the lock) Writes the queued lines, once no other write is under way. */
static void write_queued(void)
{
    while (out.writing)
        pthread_cond_wait(&out.taken, &out.lock);
    if (out.pending == 0)
        return;
    int mine = out.filling;
    size_t n = out.pending;
    out.filling = !out.filling;
    out.pending = 0;
    out.writing = 1;
    out.last_write = b24_now();
    pthread_cond_broadcast(&out.taken);
    pthread_mutex_unlock(&out.lock);
    write_all(out.bufs[mine], n);
    pthread_mutex_lock(&out.lock);
    out.writing = 0;
    pthread_cond_broadcast(&out.taken);
}

/* The writer thread: waits for queued lines, lets DEFER pass so more join them, writes. */
static void *writer_main(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all); /* signals are b24 serve's main thread's (sigwait) */
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    prctl(PR_SET_NAME, "b24-log", 0, 0, 0); /* not the name of the thread that started it */
    /* nor its nice value (a handler thread runs nicer, b24_handlers.c): the main thread's,
     * where allowed */
    errno = 0;
    int nice_main = getpriority(PRIO_PROCESS, (id_t)getpid());
    if (errno == 0)
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice_main);
    pthread_mutex_lock(&out.lock);
    for (;;) {
        while (out.pending == 0)
            pthread_cond_wait(&out.wake, &out.lock);
        pthread_mutex_unlock(&out.lock);
        struct timespec ts = {0, (long)(DEFER * 1e9)};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&out.lock);
        write_queued();
    }
    return NULL;
}

/* What is queued is written (at exit, and before an _exit). */
void b24_log_flush(void)
{
    pthread_mutex_lock(&out.lock);
    write_queued();
    pthread_mutex_unlock(&out.lock);
}

/* (under the lock) The writer thread, started once; 0, or -1 when it cannot start. */
static int start_writer(void)
{
    if (out.started)
        return 0;
    pthread_t t;
    if (pthread_create(&t, NULL, writer_main, NULL) != 0)
        return -1;
    pthread_detach(t);
    atexit(b24_log_flush);
    out.started = 1;
    return 0;
}

/* One whole line: written now, or queued for the writer thread (see the top of the file). */
static void emit(const char *line, size_t len)
{
    pthread_mutex_lock(&out.lock);
    double now = b24_now();
    int queue = out.writing || out.pending > 0 || now - out.last_write < DEFER;
    int writer = start_writer() == 0; /* by the first thread that logs: usually the main one */
    if (queue && len <= PENDING_MAX && writer) {
        while (out.pending + len > PENDING_MAX) /* full: wait until the writer takes it */
            pthread_cond_wait(&out.taken, &out.lock);
        memcpy(out.bufs[out.filling] + out.pending, line, len);
        if (out.pending == 0)
            pthread_cond_signal(&out.wake);
        out.pending += len;
        if (out.pending >= FLUSH_AT && !out.writing) /* a heavy load: no thread to wake for it */
            write_queued();
        pthread_mutex_unlock(&out.lock);
        return;
    }
    write_queued(); /* in order: what is queued first (nothing, unless the writer could not start)
                     */
    while (out.writing)
        pthread_cond_wait(&out.taken, &out.lock);
    out.writing = 1;
    out.last_write = now;
    pthread_mutex_unlock(&out.lock);
    write_all(line, len);
    pthread_mutex_lock(&out.lock);
    out.writing = 0;
    pthread_cond_broadcast(&out.taken);
    pthread_mutex_unlock(&out.lock);
}

/* One line: msg and the NULL-terminated key/value pairs, masked, whole. */
void b24_log(b24_level level, const char *msg, ...)
{
    if (level < min_level)
        return;
    b24_logline l;
    b24_logline_begin(&l, json_format, level_names[level], msg);
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (k == NULL)
            break;
        const char *v = va_arg(ap, const char *);
        b24_logline_field(&l, k, v ? v : "", v ? strlen(v) : 0);
    }
    va_end(ap);
    b24_logline_end(&l);
    emit(l.buf, l.len);
}
