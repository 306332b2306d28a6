/* The options of b24 serve: see b24_serve_options.h. */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "b24_log.h"
#include "b24_serve_options.h"

static void usage(FILE *f)
{
    fputs("usage: b24 serve [--listen HOST:PORT] [--workers N] [--max-body BYTES]\n"
          "                 [--client-timeout SECONDS] [--drain-timeout SECONDS]\n"
          "                 [--max-connections N] [--max-per-ip N]\n"
          "                 [--log-format logfmt|json] [--log-level debug|info|warn|error]\n"
          "                 [--inbox PATH|memory] [--sync] [--handler-threads N]\n"
          "                 [--max-attempts N] [--retry-base SECONDS] [--retry-max SECONDS]\n"
          "                 [--dedup-ttl SECONDS] [--handler-timeout SECONDS] [--jobs N]\n"
          "                 [--lease SECONDS]\n"
          "                 [--request-timeout SECONDS] SCRIPT.lua\n"
          "environment: B24_LISTEN, B24_WORKERS, B24_MAX_BODY, B24_LOG_FORMAT, B24_LOG_LEVEL,\n"
          "             B24_INBOX\n",
          f);
}

static int parse_seconds(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-' || *s == '+') /* strtoull takes a sign and negates in unsigned */
        return -1;
    unsigned long long v = strtoull(s, &end, 10), unit = 1;
    if (errno || end == s || v == 0)
        return -1;
    if (*end == 'k' || *end == 'K')
        unit = 1024, end++;
    else if (*end == 'm' || *end == 'M')
        unit = 1024 * 1024, end++;
    /* checked before the multiplication, which would wrap (17592186044417M is 2^64 + 1 MiB) */
    if (*end || v > B24_MAX_BODY_LIMIT / unit)
        return -1;
    v *= unit;
    *out = (size_t)v;
    return 0;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* host:port, [v6]:port or :port → a socket address */
static int resolve_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *port;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':' || (size_t)(close - spec - 1) >= sizeof host)
            return -1;
        memcpy(host, spec + 1, (size_t)(close - spec - 1));
        host[close - spec - 1] = '\0';
        port = close + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host)
            return -1;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        port = colon + 1;
    }
    long p;
    if (parse_long(port, 0, 65535, &p))
        return -1;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo(host[0] ? host : NULL, port, &hints, &ai) || ai == NULL)
        return -1;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* The defaults, then the environment. */
int b24_serve_options_init(b24_serve_options *o, const char *who)
{
    const char *env;
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    memset(o, 0, sizeof *o);
    o->listen = (env = getenv("B24_LISTEN")) && *env ? env : "127.0.0.1:8080";
    o->workers = nproc > 0 ? nproc : 2;
    o->max_body = 1024 * 1024;
    o->client_timeout = 30;
    o->max_connections = 4096; /* far above a burst, and above slow clients by the thousand */
    o->max_per_ip = 0;         /* a load balancer makes every client one address */
    o->drain_timeout = 30;
    o->inbox = (env = getenv("B24_INBOX")) && *env ? env : "b24-inbox.sqlite";
    o->handler_threads = nproc > 0 ? nproc : 2;
    o->handler_timeout = 60;
    o->jobs = 2; /* background job threads (host.job), when the script has jobs */
    o->request_timeout = 30;
    o->inbox_opt.max_attempts = 10;
    o->inbox_opt.retry_base = 1;
    o->inbox_opt.retry_max = 3600;
    o->inbox_opt.dedup_ttl = 86400;
    o->inbox_opt.lease = 30;
    if ((env = getenv("B24_WORKERS")) && *env && parse_long(env, 1, 1024, &o->workers)) {
        fprintf(stderr, "%s: bad B24_WORKERS '%s' (1 to 1024)\n", who, env);
        return 2;
    }
    if ((env = getenv("B24_MAX_BODY")) && *env && parse_size(env, &o->max_body)) {
        fprintf(stderr, "%s: bad B24_MAX_BODY '%s' (1 to %llu bytes, with optional K or M)\n", who,
                env, B24_MAX_BODY_LIMIT);
        return 2;
    }
    const char *log_format = getenv("B24_LOG_FORMAT"), *log_level = getenv("B24_LOG_LEVEL");
    if (b24_log_configure(log_format && *log_format ? log_format : NULL, /* empty = unset */
                          log_level && *log_level ? log_level : NULL)) {
        fprintf(stderr, "%s: bad B24_LOG_FORMAT or B24_LOG_LEVEL\n", who);
        return 2;
    }
    return 0;
}

/* One option by its long name. */
int b24_serve_options_set(b24_serve_options *o, const char *name, const char *value)
{
    long v;
    if (strcmp(name, "listen") == 0)
        o->listen = value;
    else if (strcmp(name, "workers") == 0)
        return parse_long(value, 1, 1024, &o->workers);
    else if (strcmp(name, "jobs") == 0)
        return parse_long(value, 1, 16, &o->jobs);
    else if (strcmp(name, "lease") == 0)
        return parse_seconds(value, 0.3, 3600, &o->inbox_opt.lease);
    else if (strcmp(name, "max-body") == 0)
        return parse_size(value, &o->max_body);
    else if (strcmp(name, "client-timeout") == 0) {
        if (parse_long(value, 1, 3600, &v))
            return -1;
        o->client_timeout = (unsigned)v;
    } else if (strcmp(name, "max-connections") == 0)
        return parse_long(value, 1, 1000000, &o->max_connections);
    else if (strcmp(name, "max-per-ip") == 0)
        return parse_long(value, 0, 1000000, &o->max_per_ip);
    else if (strcmp(name, "drain-timeout") == 0) {
        if (parse_long(value, 0, 3600, &v))
            return -1;
        o->drain_timeout = (double)v;
    } else if (strcmp(name, "log-format") == 0)
        return b24_log_configure(value, NULL);
    else if (strcmp(name, "log-level") == 0)
        return b24_log_configure(NULL, value);
    else if (strcmp(name, "inbox") == 0)
        o->inbox = value;
    else if (strcmp(name, "sync") == 0)
        o->sync = 1;
    else if (strcmp(name, "handler-threads") == 0)
        return parse_long(value, 1, 256, &o->handler_threads);
    else if (strcmp(name, "max-attempts") == 0) {
        if (parse_long(value, 1, 1000, &v))
            return -1;
        o->inbox_opt.max_attempts = (int)v;
    } else if (strcmp(name, "retry-base") == 0)
        return parse_seconds(value, 0.001, 86400, &o->inbox_opt.retry_base);
    else if (strcmp(name, "retry-max") == 0)
        return parse_seconds(value, 0.001, 7 * 86400, &o->inbox_opt.retry_max);
    else if (strcmp(name, "dedup-ttl") == 0)
        return parse_seconds(value, 0, 365 * 86400, &o->inbox_opt.dedup_ttl);
    else if (strcmp(name, "handler-timeout") == 0)
        return parse_seconds(value, 0.01, 86400, &o->handler_timeout);
    else if (strcmp(name, "request-timeout") == 0)
        return parse_seconds(value, 0.01, 86400, &o->request_timeout);
    else
        return -1;
    return 0;
}

/* o->listen resolved into o->addr. */
int b24_serve_options_listen(b24_serve_options *o, const char *who)
{
    if (resolve_listen(o->listen, &o->addr, &o->addrlen)) {
        fprintf(stderr, "%s: bad --listen '%s' (HOST:PORT expected)\n", who, o->listen);
        return 2;
    }
    return 0;
}

/* b24 serve [OPTIONS] SCRIPT.lua */
int b24_serve_options_parse(b24_serve_options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"workers", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {"max-body", required_argument, NULL, 0},
        {"client-timeout", required_argument, NULL, 0},
        {"drain-timeout", required_argument, NULL, 0},
        {"max-connections", required_argument, NULL, 0},
        {"max-per-ip", required_argument, NULL, 0},
        {"log-format", required_argument, NULL, 0},
        {"log-level", required_argument, NULL, 0},
        {"inbox", required_argument, NULL, 0},
        {"sync", no_argument, NULL, 0},
        {"handler-threads", required_argument, NULL, 0},
        {"max-attempts", required_argument, NULL, 0},
        {"retry-base", required_argument, NULL, 0},
        {"retry-max", required_argument, NULL, 0},
        {"dedup-ttl", required_argument, NULL, 0},
        {"handler-timeout", required_argument, NULL, 0},
        {"request-timeout", required_argument, NULL, 0},
        {"jobs", required_argument, NULL, 0},
        {"lease", required_argument, NULL, 0},
        {NULL, 0, NULL, 0},
    };
    int rc = b24_serve_options_init(o, "b24 serve");
    if (rc)
        return rc;
    optind = 1;
    int c, i = 0;
    while ((c = getopt_long(argc, argv, "+l:w:h", longopts, &i)) != -1) {
        if (c == 'h') {
            usage(stdout);
            return 0;
        }
        if (c != 'l' && c != 'w' && c != 0) {
            usage(stderr);
            return 2;
        }
        const char *name = c == 'l' ? "listen" : c == 'w' ? "workers" : longopts[i].name;
        if (b24_serve_options_set(o, name, optarg)) {
            if (strcmp(name, "max-body") == 0)
                fprintf(stderr,
                        "b24 serve: bad value '%s' for --max-body (1 to %llu bytes, with "
                        "optional K or M)\n",
                        optarg, B24_MAX_BODY_LIMIT);
            else
                fprintf(stderr, "b24 serve: bad value '%s' for --%s\n", optarg, name);
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "b24 serve: %s\n", optind >= argc ? "no script given" : "one script only");
        usage(stderr);
        return 2;
    }
    o->handler.path = argv[optind];
    rc = b24_serve_options_listen(o, "b24 serve");
    return rc ? rc : -1;
}
