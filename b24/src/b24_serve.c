/* b24 serve: GNU libmicrohttpd with an internal epoll thread pool; one lua_State per thread,
 * created on the thread's first request, so no Lua value ever crosses threads (b24_script.c).
 * SIGHUP publishes a new generation of the handler that every thread picks up before its next
 * request; SIGTERM/SIGINT stop accepting, let the requests in flight finish within
 * --drain-timeout (any Lua still running then is cut short), and exit 0.
 * This file is the sequence of steps; a request's life is b24_request.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "b24.h" /* B24_VERSION */
#include "b24_clock.h"
#include "b24_deadline.h"
#include "b24_handlers.h"
#include "b24_inbox.h"
#include "b24_jobs.h"
#include "b24_pg.h"
#include "b24_log.h"
#include "b24_metrics.h"
#include "b24_request.h"
#include "b24_script.h"
#include "b24_serve.h"
#include "b24_timer.h"
#include "b24_tokens.h"

static b24_request_context ctx; /* what every request shares */

static const char *handler_name(const b24_serve_options *o)
{
    return o->handler.path ? o->handler.path : o->handler.module;
}

static long inbox_depth(void)
{
    return ctx.inbox ? b24_inbox_depth(ctx.inbox) : 0;
}

/* A router (accept + dispatch) gets the durable inbox unless --sync; anything else runs
 * inside the request. 0, -1 when the inbox does not open, 2 when --max-body does not fit it. */
static int open_inbox(const b24_serve_options *o, int kind)
{
    if (kind != B24_HANDLER_ROUTER || o->sync) {
        b24_jobs_set_inbox(NULL, 0, o->sync ? "--sync" : "the script is not a router");
        return 0;
    }
    if (o->max_body > B24_MAX_BODY_INBOX) { /* refused up front, not at the first big body */
        fprintf(stderr,
                "b24 serve: --max-body %zu is over what the inbox stores in one row "
                "(%llu bytes); lower it, or use --sync\n",
                o->max_body, B24_MAX_BODY_INBOX);
        return 2;
    }
    char err[1024];
    const char *path = strcmp(o->inbox, "memory") == 0 ? ":memory:" : o->inbox;
    /* a fleet host's name in its claims: stable across its restarts (hostname and port), so a
     * restarted host takes its own interrupted runs back at once; with port 0 the pid */
    char owner[160], host[64] = "host";
    gethostname(host, sizeof host - 1);
    const char *port = strrchr(o->listen, ':');
    if (port && strcmp(port, ":0") != 0 && port[1] != '\0')
        snprintf(owner, sizeof owner, "%s%s", host, port);
    else
        snprintf(owner, sizeof owner, "%s:pid%ld", host, (long)getpid());
    b24_inbox_options io = o->inbox_opt;
    if (io.owner == NULL)
        io.owner = owner;
    ctx.inbox = b24_inbox_open(path, &io, err, sizeof err);
    if (ctx.inbox == NULL) {
        fprintf(stderr, "b24 serve: %s\n", err);
        return -1;
    }
    b24_metrics_inbox_depth(inbox_depth);
    b24_jobs_set_inbox(ctx.inbox, o->max_body, NULL);
    return 0;
}

/* Signals are taken by sigwait in this thread; the server's threads inherit the mask. */
static void take_signals(sigset_t *set)
{
    /* a shell starts background jobs with SIGINT ignored; an ignored signal is discarded
     * before sigwait can take it */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* The inbox thread and the handler threads (with an inbox), and the timer of delayed answers. */
static int start_threads(const b24_serve_options *o)
{
    if (ctx.inbox && (b24_inbox_start(ctx.inbox) ||
                      b24_handlers_start(ctx.inbox, (int)o->handler_threads, o->handler_timeout))) {
        fprintf(stderr, "b24 serve: cannot start the inbox threads\n");
        return -1;
    }
    if (b24_timer_start() != 0) {
        fprintf(stderr, "b24 serve: cannot start the timer thread\n");
        return -1;
    }
    if (b24_jobs_start() != 0) { /* when the script registered a job (host.job) */
        fprintf(stderr, "b24 serve: cannot start the jobs thread\n");
        return -1;
    }
    return 0;
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    b24_log(B24_DEBUG, "libmicrohttpd", "detail", msg, NULL);
}

/* ---- the read deadlines -------------------------------------------------------------------
 * libmicrohttpd's connection timeout is an idle one: a client sending a byte a second is never
 * idle and holds its connection forever. So each connection is tracked from its accept, and
 * again from the end of each request, until its request's headers are in (the first call of
 * the access handler), and then until its body is in (the access handler's last call): a
 * watchdog thread shuts down the socket of one still sending headers after --client-timeout,
 * or still sending its body after --client-timeout plus a second for each KiB received (a slow
 * link keeps going, a trickle does not), and libmicrohttpd then closes it as a client gone.
 * The socket is closed by libmicrohttpd only after the "closed" notification, which takes the
 * lock the watchdog holds, so a descriptor shut down is never one reused. */
enum { READ_NONE, READ_HEADERS, READ_BODY };

typedef struct tracked {
    struct tracked *prev, *next;
    int fd;
    int reading;    /* READ_*: what the connection is waiting for from its client */
    double since;   /* the accept, the end of the last request, or the headers' arrival */
    size_t body_in; /* bytes of the body received so far */
} tracked;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    tracked head; /* a ring */
    double timeout;
    int stop;
    pthread_t thread;
    int started;
} hd = {PTHREAD_MUTEX_INITIALIZER,
        PTHREAD_COND_INITIALIZER,
        {&hd.head, &hd.head, -1, 0, 0, 0},
        30,
        0,
        0,
        0};

static void header_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        tracked *t = calloc(1, sizeof *t);
        if (t == NULL || ci == NULL) {
            free(t);
            return;
        }
        t->fd = (int)ci->connect_fd;
        t->reading = READ_HEADERS;
        t->since = b24_now();
        pthread_mutex_lock(&hd.lock);
        t->prev = &hd.head;
        t->next = hd.head.next;
        hd.head.next->prev = t;
        hd.head.next = t;
        pthread_mutex_unlock(&hd.lock);
        *socket_context = t;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        tracked *t = *socket_context;
        pthread_mutex_lock(&hd.lock);
        t->prev->next = t->next;
        t->next->prev = t->prev;
        pthread_mutex_unlock(&hd.lock);
        free(t);
        *socket_context = NULL;
    }
}

/* What the connection now waits for (a new phase starts its clock), or, with READ_BODY while
 * the body is read, more bytes of it (body_more). */
static void read_state(struct MHD_Connection *c, int reading, size_t body_more)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    tracked *t = ci ? (tracked *)ci->socket_context : NULL;
    if (t == NULL)
        return;
    pthread_mutex_lock(&hd.lock);
    if (body_more && t->reading == READ_BODY) {
        t->body_in += body_more;
    } else {
        t->reading = reading;
        t->since = b24_now();
        t->body_in = 0;
    }
    pthread_mutex_unlock(&hd.lock);
}

/* Every call of the access handler: the first says the headers are in, the next ones bring
 * the body, and the one with no data after them says it is all in. */
static enum MHD_Result access_tracked(void *cls, struct MHD_Connection *c, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    if (*con_cls == NULL)
        read_state(c, READ_BODY, 0);
    else if (*upload_data_size > 0)
        read_state(c, READ_BODY, *upload_data_size);
    else
        read_state(c, READ_NONE, 0);
    return b24_request_access(cls, c, url, method, version, upload_data, upload_data_size, con_cls);
}

/* A request done: the connection's next request has its headers' deadline from now. */
static void request_done(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    b24_request_end(cls, c, con_cls, toe);
    read_state(c, READ_HEADERS, 0);
}

static void *header_watchdog(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "b24-headers", 0, 0, 0); /* the name top -H shows */
    pthread_mutex_lock(&hd.lock);
    while (!hd.stop) {
        double now = b24_now();
        for (tracked *t = hd.head.next; t != &hd.head; t = t->next) {
            double allowed = hd.timeout + (t->reading == READ_BODY ? (double)t->body_in / 1024 : 0);
            if (t->reading != READ_NONE && now - t->since > allowed) {
                b24_log(B24_DEBUG,
                        t->reading == READ_BODY
                            ? "connection cut: its body came too slowly (--client-timeout "
                              "plus a second a KiB)"
                            : "connection cut: its headers took too long (--client-timeout)",
                        NULL);
                t->reading = READ_NONE; /* once */
                shutdown(t->fd, SHUT_RDWR);
            }
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&hd.wake, &hd.lock, &ts);
    }
    pthread_mutex_unlock(&hd.lock);
    return NULL;
}

static int header_watchdog_start(double timeout)
{
    hd.timeout = timeout;
    hd.started = pthread_create(&hd.thread, NULL, header_watchdog, NULL) == 0;
    return hd.started ? 0 : -1;
}

static void header_watchdog_stop(void)
{
    if (!hd.started)
        return;
    pthread_mutex_lock(&hd.lock);
    hd.stop = 1;
    pthread_cond_signal(&hd.wake);
    pthread_mutex_unlock(&hd.lock);
    pthread_join(hd.thread, NULL);
    hd.started = 0;
}

/* The open-file limit raised to its hard limit, so --max-connections can be met; the
 * connection limit that fits it, 64 descriptors kept for the inbox, logs and the like. */
static unsigned connection_limit(const b24_serve_options *o)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return (unsigned)o->max_connections;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= (rlim_t)o->max_connections + 64)
        return (unsigned)o->max_connections;
    unsigned fit =
        rl.rlim_cur > 64 + (rlim_t)o->workers ? (unsigned)(rl.rlim_cur - 64) : (unsigned)o->workers;
    char want_s[24], fit_s[24];
    snprintf(want_s, sizeof want_s, "%ld", o->max_connections);
    snprintf(fit_s, sizeof fit_s, "%u", fit);
    b24_log(B24_WARN, "--max-connections lowered to fit the open-file limit (ulimit -n)",
            "max_connections", want_s, "lowered_to", fit_s, NULL);
    return fit;
}

/* The daemon listening on o->addr, and the "listening" line with the port it got. */
static struct MHD_Daemon *start_daemon(const b24_serve_options *o)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_TURBO |
                     MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
    if (o->addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (header_watchdog_start((double)o->client_timeout) != 0) {
        fprintf(stderr, "b24 serve: cannot start the header watchdog thread\n");
        return NULL;
    }
    unsigned limit = connection_limit(o);
    if (limit < (unsigned)o->workers) /* each worker of the pool takes its share */
        limit = (unsigned)o->workers;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, access_tracked, &ctx, MHD_OPTION_SOCK_ADDR,
        (const struct sockaddr *)&o->addr, MHD_OPTION_CONNECTION_TIMEOUT, o->client_timeout,
        MHD_OPTION_URI_LOG_CALLBACK, b24_request_begin, &ctx, MHD_OPTION_NOTIFY_COMPLETED,
        request_done, &ctx, MHD_OPTION_NOTIFY_CONNECTION, header_notify, NULL,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)16 * 1024, MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)o->max_per_ip,
        /* one worker is the polling thread itself: no pool (MHD warns about a pool of 1) */
        o->workers > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (unsigned)o->workers,
        MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "b24 serve: cannot listen on %s: %s\n", o->listen, strerror(errno));
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    char where[300], workers_s[16];
    char host[256] = "";
    if (o->addr.ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)&o->addr)->sin_addr, host,
                  sizeof host);
    else
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)&o->addr)->sin6_addr, host,
                  sizeof host);
    snprintf(where, sizeof where, o->addr.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host,
             di ? (unsigned)di->port : 0u);
    snprintf(workers_s, sizeof workers_s, "%ld", o->workers);
    char inbox[512];
    b24_pg_mask(o->inbox, inbox, sizeof inbox); /* a postgresql:// URL's password */
    b24_log(B24_INFO, "listening", "address", where, "workers", workers_s, "script",
            handler_name(o), "inbox", ctx.inbox ? inbox : "none", "version", B24_VERSION, NULL);
    return d;
}

/* Until SIGTERM or SIGINT; SIGHUP reloads the handler (one of the same kind). */
static void wait_for_stop(const sigset_t *set, const b24_serve_options *o, int kind)
{
    for (;;) {
        int sig = 0;
        if (sigwait(set, &sig) != 0)
            continue;
        if (sig != SIGHUP)
            return;
        if (b24_script_load(&o->handler, kind) >= 0 && b24_jobs_reloaded() != 0)
            b24_log(B24_ERROR, "cannot start the jobs thread", NULL);
    }
}

static void wait_in_flight(double until)
{
    while (b24_metrics_in_flight_now() > 0 && b24_now() < until) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Drain: refuse new connections, answer what waits, finish what is in flight within
 * --drain-timeout, then stop. Lua still running then (a handler in a request, an inbox run)
 * is cut short by its deadline's hook; an inbox run so cut goes back to pending without
 * spending an attempt; requests still waiting for the inbox's commit are answered 503, so no
 * connection is left suspended (libmicrohttpd aborts on that) and no 200 is lost. */
static void stop(struct MHD_Daemon *d, const b24_serve_options *o)
{
    atomic_store(&ctx.stopping, 1);
    double drained = b24_now() + o->drain_timeout;
    b24_deadline_cap(drained);
    if (ctx.inbox) /* a handler thread finishing a run takes no new one; what is pending stays */
        b24_inbox_stop_claims(ctx.inbox);
    MHD_socket lsock = MHD_quiesce_daemon(d);
    if (lsock != MHD_INVALID_SOCKET) /* refuse new connections now, not queue them */
        close(lsock);
    b24_timer_stop(); /* delayed answers go out now; later ones are not delayed */
    char in_flight_s[24];
    snprintf(in_flight_s, sizeof in_flight_s, "%ld", b24_metrics_in_flight_now());
    b24_log(B24_INFO, "stopping", "in_flight", in_flight_s, NULL);
    b24_jobs_stop(); /* the run under way ends (by the cap at the latest); no new one starts */
    wait_in_flight(drained);
    long left = b24_metrics_in_flight_now();
    /* what still waits for a commit is answered 503; the Lua cut short at the drain's end
     * unwinds within a hook tick; both answers go out before the daemon stops */
    b24_request_answer_awaiting();
    wait_in_flight(b24_now() + 5);
    MHD_stop_daemon(d);
    header_watchdog_stop();
    if (ctx.inbox) { /* runs under way end by the cap; claimed ones go back to pending */
        b24_handlers_stop();
        b24_inbox_stop(ctx.inbox);
        b24_jobs_set_inbox(NULL, 0, "stopping");
        b24_inbox_close(ctx.inbox);
        ctx.inbox = NULL;
    }
    b24_script_close_all();
    char left_s[24];
    snprintf(left_s, sizeof left_s, "%ld", left);
    b24_log(left ? B24_WARN : B24_INFO, "stopped", "unfinished", left_s, NULL);
}

/* Serves until SIGTERM or SIGINT, in seven steps. */
int b24_serve(const b24_serve_options *o)
{
    /* 1. Signals are blocked first: a thread the script starts while it loads (a post at load
     * time) inherits the mask, so a SIGHUP can never fall on it and end the process. */
    sigset_t set;
    take_signals(&set);
    /* 2. The handler loads before anything listens: a broken deploy fails fast and loudly.
     * Every Lua call from here on has a deadline (b24_deadline.h). */
    b24_deadline_set(B24_DEADLINE_REQUEST, o->request_timeout);
    b24_deadline_set(B24_DEADLINE_HANDLER, o->handler_timeout);
    /* b24.host.tokens() without a path: the inbox's file, or memory (b24_tokens.h) */
    b24_tokens_configure(o->sync || strcmp(o->inbox, "memory") == 0 ? NULL : o->inbox);
    b24_jobs_configure((int)o->jobs); /* host.job registers from the first load on */
    int kind = b24_script_load(&o->handler, 0);
    if (kind < 0) {
        fprintf(stderr, "b24 serve: %s failed to load (see the log line above)\n", handler_name(o));
        return 1;
    }
    /* 3. The durable inbox, for a router. */
    int rc = open_inbox(o, kind);
    if (rc != 0) {
        b24_script_close_all();
        return rc < 0 ? 1 : rc;
    }
    /* 4. The threads of the inbox and of delayed answers. */
    ctx.max_body = o->max_body;
    ctx.started_at = b24_now();
    if (start_threads(o) != 0)
        return 1;
    /* 5. Listen. */
    struct MHD_Daemon *d = start_daemon(o);
    if (d == NULL)
        return 1;
    /* 6. Serve until told to stop, reloading on SIGHUP. */
    wait_for_stop(&set, o, kind);
    /* 7. Drain and stop. */
    stop(d, o);
    return 0;
}

/* b24 serve [OPTIONS] SCRIPT.lua */
int b24_cmd_serve(int argc, char **argv)
{
    b24_serve_options o;
    int rc = b24_serve_options_parse(&o, argc, argv);
    return rc >= 0 ? rc : b24_serve(&o);
}
