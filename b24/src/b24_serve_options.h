/* The options of b24 serve: defaults, the B24_* environment, the command line; also set one
 * by one from C, by a command that starts the server its own way (b24_serve). */
#ifndef B24_SERVE_OPTIONS_H
#define B24_SERVE_OPTIONS_H

#include <stddef.h>
#include <sys/socket.h>

#include "b24_inbox.h"
#include "b24_script.h"

/* --max-body's ceiling (1 TiB); a delivery kept in the SQLite inbox is held in one row, which
 * SQLite caps at SQLITE_MAX_LENGTH (1,000,000,000 bytes by default) for all its fields: the
 * body gets that less 1 MiB for the key, event and content type. */
#define B24_MAX_BODY_LIMIT (1ull << 40)
#define B24_MAX_BODY_INBOX (1000000000ull - 1024 * 1024)

typedef struct b24_serve_options {
    const char *listen;           /* HOST:PORT, [V6]:PORT or :PORT */
    struct sockaddr_storage addr; /* listen, resolved by b24_serve_options_listen */
    socklen_t addrlen;
    long workers;
    size_t max_body;
    unsigned client_timeout; /* of an idle connection (libmicrohttpd's connection timeout) */
    long max_connections;    /* open at once, all clients together */
    long max_per_ip;         /* open at once from one address; 0 = no limit */
    double drain_timeout;
    b24_script_source handler; /* a script file, or an entry (module, function, argv) */
    const char *inbox;         /* a file, or "memory" */
    int sync;                  /* handlers inside the request, no inbox */
    long handler_threads;
    double handler_timeout; /* of an inbox handler run's Lua */
    long jobs;              /* threads running background jobs (host.job) */
    double request_timeout; /* of the Lua inside a request, and of a script's load */
    b24_inbox_options inbox_opt;
} b24_serve_options;

/* The defaults, then the environment (B24_LISTEN, B24_WORKERS, B24_MAX_BODY, B24_LOG_FORMAT,
 * B24_LOG_LEVEL, B24_INBOX); 0, or 2 with the message printed after `who`. */
int b24_serve_options_init(b24_serve_options *o, const char *who);
/* Sets the option named (its long name, without "--") to value, the log's at once; 0, or -1
 * on a bad value or an unknown name. */
int b24_serve_options_set(b24_serve_options *o, const char *name, const char *value);
/* Resolves o->listen into o->addr; 0, or 2 with the message printed after `who`. */
int b24_serve_options_listen(b24_serve_options *o, const char *who);
/* b24 serve's command line ([OPTIONS] SCRIPT.lua) over the defaults: -1 when the server is to
 * run, else the exit status (0 after --help, 2 on a usage error, printed). */
int b24_serve_options_parse(b24_serve_options *o, int argc, char **argv);

#endif
