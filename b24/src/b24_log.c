/* Structured logs on stderr, lines from threads never interleaved. The line itself is the
 * core's (b24_logline.c): the same format and masking as the library's.
 *
 * Writing is combined (docs/performance.md, "Logging"): a thread appends its line to a shared
 * buffer under a mutex; if no thread is writing, it becomes the writer and write(2)s the buffer
 * until it is empty, otherwise it returns at once and the writer under way takes its line with
 * the next write. So a line is on its way before b24_log returns (no thread of its own to wait
 * for, nothing to flush at exit), a burst from many threads goes out in few write(2)s, and the
 * threads never queue on the file's lock in the kernel, which is what one write(2) per line
 * cost under load (measured: 0.4x the requests/s of --log-level warn with two workers). */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "b24.h" /* b24_logline */
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
#define PENDING_MAX (64 * 1024)

static struct {
    pthread_mutex_t lock;
    pthread_cond_t taken; /* the writer took the filling buffer: there is room again */
    char bufs[2][PENDING_MAX];
    int filling;    /* index of the buffer lines are appended to */
    size_t pending; /* bytes in it */
    int writing;    /* a thread is the writer */
} out = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {{0}}, 0, 0, 0};

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

/* Queues one whole line, and writes every queued line unless another thread is writing. */
static void emit(const char *line, size_t len)
{
    pthread_mutex_lock(&out.lock);
    while (out.pending + len > PENDING_MAX && out.pending > 0) {
        if (!out.writing) /* nobody to take it: this thread writes what is queued first */
            break;
        pthread_cond_wait(&out.taken, &out.lock);
    }
    if (out.pending + len > PENDING_MAX) { /* a line larger than the buffer, or none taking it */
        if (out.writing || out.pending > 0) {
            /* write the queue, then this line, as the writer, in order */
            while (out.writing)
                pthread_cond_wait(&out.taken, &out.lock);
        }
        out.writing = 1;
        int mine = out.filling;
        size_t n = out.pending;
        out.filling = !out.filling;
        out.pending = 0;
        pthread_mutex_unlock(&out.lock);
        write_all(out.bufs[mine], n);
        write_all(line, len);
        pthread_mutex_lock(&out.lock);
        out.writing = 0;
        pthread_cond_broadcast(&out.taken);
        if (out.pending == 0) {
            pthread_mutex_unlock(&out.lock);
            return;
        }
        line = NULL, len = 0; /* lines queued meanwhile: write them below */
    }
    if (len) {
        memcpy(out.bufs[out.filling] + out.pending, line, len);
        out.pending += len;
    }
    if (out.writing) { /* the writer under way takes it with its next write */
        pthread_mutex_unlock(&out.lock);
        return;
    }
    out.writing = 1;
    while (out.pending > 0) {
        int mine = out.filling;
        size_t n = out.pending;
        out.filling = !out.filling;
        out.pending = 0;
        pthread_cond_broadcast(&out.taken);
        pthread_mutex_unlock(&out.lock);
        write_all(out.bufs[mine], n);
        pthread_mutex_lock(&out.lock);
    }
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
