/* b24 emulate: `b24 serve` with one worker, no inbox, and the entry
 * require("b24.emulator.command").handler(argv) as its handler. The server's own options are
 * taken here; every other argument goes to the emulator in argv, which checks them (a bad one
 * exits 2 before anything listens) and returns the handler. One worker is enough: the
 * portal's state lives in one Lua state, and its simulated costs are delayed answers
 * ({ delay = s }) the server waits out without holding the thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "b24.h" /* b24_mask */
#include "b24_deadline.h"
#include "b24_emulate.h"
#include "b24_serve.h"
#include "b24_state.h"

#define MODULE "b24.emulator.command"
#define USAGE_PREFIX "b24 emulate: "

/* The server's options b24 emulate takes, by long name. */
static const char *const serve_options[] = {
    "listen", "log-format", "log-level", "client-timeout", "max-body", "request-timeout", NULL};

static void usage(FILE *f)
{
    fputs(
        "usage: b24 emulate [--listen HOST:PORT] [--log-format logfmt|json]\n"
        "                   [--log-level debug|info|warn|error] [--client-timeout SECONDS]\n"
        "                   [--max-body BYTES] [--request-timeout SECONDS] [EMULATOR OPTIONS]\n"
        "A Bitrix24 portal in memory behind incoming-webhook URLs:\n"
        "  http://HOST:PORT/rest/USER_ID/CODE/METHOD.json (listens on 127.0.0.1:8090 by default)\n",
        f);
    /* the emulator's own options, as it documents them */
    lua_State *L = b24_state_new();
    if (L == NULL)
        return;
    if (b24_state_require(L, MODULE) == LUA_OK && lua_getfield(L, -1, "USAGE") == LUA_TSTRING)
        fprintf(f, "%s\n", lua_tostring(L, -1));
    lua_close(L);
}

/* The server option arg names (`--name` or `--name=value`): its long name, or NULL. */
static const char *serve_option(const char *arg)
{
    if (strncmp(arg, "--", 2) != 0)
        return NULL;
    for (int i = 0; serve_options[i]; i++) {
        size_t n = strlen(serve_options[i]);
        if (strncmp(arg + 2, serve_options[i], n) == 0 && (arg[n + 2] == '\0' || arg[n + 2] == '='))
            return serve_options[i];
    }
    return NULL;
}

/* The emulator refused its options (or failed to start): the message masked, a usage error
 * without its traceback; exit status 2. */
static int refused(const char *m)
{
    char masked[4096];
    b24_mask(m ? m : "?", m ? strlen(m) : 1, masked, sizeof masked);
    int usage_error = strncmp(masked, USAGE_PREFIX, strlen(USAGE_PREFIX)) == 0;
    if (usage_error) {
        char *tb = strstr(masked, "\nstack traceback:");
        if (tb)
            *tb = '\0';
    }
    fprintf(stderr, "%s\n", masked);
    if (usage_error)
        fputs("(b24 emulate --help lists the options)\n", stderr);
    return 2;
}

/* Splits argv into the server's options (set in o) and the emulator's (rest); -1 to go on,
 * else the exit status. */
static int take_options(int argc, char **argv, b24_serve_options *o, char **rest, int *nrest)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        const char *name = serve_option(argv[i]);
        if (name == NULL) {
            rest[(*nrest)++] = argv[i];
            continue;
        }
        const char *value = strchr(argv[i], '=');
        if (value) {
            value++;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            fprintf(stderr, USAGE_PREFIX "%s needs a value\n", argv[i]);
            return 2;
        }
        if (b24_serve_options_set(o, name, value) != 0) {
            fprintf(stderr,
                    USAGE_PREFIX "bad value '%s' for --%s\n"
                                 "(b24 emulate --help lists the options)\n",
                    value, name);
            return 2;
        }
    }
    return -1;
}

/* Builds the handler once from the emulator's options, so a bad one is a usage error before
 * anything listens (serve builds it again in each state it makes): -1 to go on, else 2. */
static int check(int nrest, char **rest)
{
    lua_State *L = b24_state_new();
    if (L == NULL)
        return refused("b24 emulate: cannot create a Lua state");
    int rc = -1;
    b24_deadline_install(L);
    b24_deadline_begin(B24_DEADLINE_REQUEST);
    int status = b24_state_call_entry(L, MODULE, "handler", nrest, rest, 1);
    if (b24_deadline_end() != B24_DEADLINE_MET)
        rc = refused("b24 emulate: the emulator's entry ran past its deadline (--request-timeout)");
    else if (status != LUA_OK)
        rc = refused(lua_tostring(L, -1));
    lua_close(L);
    return rc;
}

/* b24 emulate [SERVER OPTIONS] [EMULATOR OPTIONS] */
int b24_cmd_emulate(int argc, char **argv)
{
    b24_serve_options o;
    int rc = b24_serve_options_init(&o, "b24 emulate");
    if (rc)
        return rc;
    const char *env = getenv("B24_LISTEN");
    if (env == NULL || *env == '\0')
        o.listen = "127.0.0.1:8090";
    o.workers = 1;
    o.sync = 1;
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (rest == NULL) {
        fputs("b24 emulate: out of memory\n", stderr);
        return 1;
    }
    int nrest = 0;
    rc = take_options(argc, argv, &o, rest, &nrest);
    b24_deadline_set(B24_DEADLINE_REQUEST, o.request_timeout);
    if (rc < 0)
        rc = b24_serve_options_listen(&o, "b24 emulate") ? 2 : check(nrest, rest);
    if (rc < 0) {
        o.handler = (b24_script_source){NULL, MODULE, "handler", nrest, rest};
        rc = b24_serve(&o);
    }
    free(rest);
    return rc;
}
