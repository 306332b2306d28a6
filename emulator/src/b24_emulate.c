/* b24 emulate: `b24 serve` with one worker and the embedded b24.emulator as its script.
 * The host's own options are taken here; every other argument goes to emulator.main(argv),
 * which checks them (a bad one exits 2 before anything listens) and returns the handler.
 * One worker is enough: the portal's state lives in one Lua state, and its simulated costs
 * are delays the host waits out without holding the thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "b24_host.h"

#define SCRIPT_NAME "b24-emulate"

static const char *const host_options[] = {"--listen", "--log-format", "--log-level",
                                           "--client-timeout", "--max-body", NULL};

static void usage(FILE *f)
{
    fputs("usage: b24 emulate [--listen HOST:PORT] [--log-format logfmt|json]\n"
          "                   [--log-level debug|info|warn|error] [--client-timeout SECONDS]\n"
          "                   [--max-body BYTES] [EMULATOR OPTIONS]\n"
          "A Bitrix24 portal in memory behind incoming-webhook URLs:\n"
          "  http://HOST:PORT/rest/USER_ID/CODE/METHOD.json (listens on 127.0.0.1:8090 by default)\n",
          f);
    /* the emulator's own options, as it documents them */
    lua_State *L = b24_state_new();
    if (L == NULL)
        return;
    static const char src[] = "return require('b24.emulator').USAGE";
    if (b24_state_run_script(L, SCRIPT_NAME, src, sizeof src - 1, 0) == LUA_OK && lua_isstring(L, -1))
        fprintf(f, "%s\n", lua_tostring(L, -1));
    lua_close(L);
}

/* Index of a host option named by arg (`--name` or `--name=value`), or -1. */
static int host_option(const char *arg)
{
    for (int i = 0; host_options[i]; i++) {
        size_t n = strlen(host_options[i]);
        if (strncmp(arg, host_options[i], n) == 0 && (arg[n] == '\0' || arg[n] == '='))
            return i;
    }
    return -1;
}

int b24_cmd_emulate(int argc, char **argv)
{
    /* serve argv: serve --workers 1 --sync --listen L [host options…] SCRIPT */
    char **serve = calloc((size_t)argc + 8, sizeof *serve);
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (serve == NULL || rest == NULL) {
        free(serve);
        free(rest);
        fputs("b24 emulate: out of memory\n", stderr);
        return 1;
    }
    int ns = 0, nr = 0, listen = 0;
    serve[ns++] = "serve";
    serve[ns++] = "--workers";
    serve[ns++] = "1";
    serve[ns++] = "--sync";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            free(serve);
            free(rest);
            return 0;
        }
        int h = host_option(argv[i]);
        if (h < 0) {
            rest[nr++] = argv[i];
            continue;
        }
        listen |= h == 0;
        serve[ns++] = argv[i];
        if (strchr(argv[i], '=') == NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "b24 emulate: %s needs a value\n", argv[i]);
                free(serve);
                free(rest);
                return 2;
            }
            serve[ns++] = argv[++i];
        }
    }
    if (!listen) {
        const char *env = getenv("B24_LISTEN");
        serve[ns++] = "--listen";
        serve[ns++] = env && *env ? (char *)env : "127.0.0.1:8090";
    }
    serve[ns++] = SCRIPT_NAME;

    size_t len;
    char *src = b24_call_chunk("require(\"b24.emulator\").main", nr, rest, &len);
    free(rest);
    if (src == NULL) {
        free(serve);
        fputs("b24 emulate: out of memory\n", stderr);
        return 1;
    }
    /* The options are checked here, so a bad one is a usage error before anything listens. */
    lua_State *L = b24_state_new();
    int status = L ? b24_state_run_script(L, SCRIPT_NAME, src, len, 0) : LUA_ERRMEM;
    if (status != LUA_OK) {
        const char *m = L ? lua_tostring(L, -1) : "cannot create a Lua state";
        char masked[4096];
        b24_mask(m ? m : "?", m ? strlen(m) : 1, masked, sizeof masked);
        if (strncmp(masked, "b24 emulate: ", 13) == 0) { /* a usage error: no traceback */
            char *tb = strstr(masked, "\nstack traceback:");
            if (tb)
                *tb = '\0';
        }
        fprintf(stderr, "%s\n", masked);
        if (strncmp(masked, "b24 emulate: ", 13) == 0)
            fputs("(b24 emulate --help lists the options)\n", stderr);
        if (L)
            lua_close(L);
        free(src);
        free(serve);
        return 2;
    }
    lua_close(L);
    b24_script_inline(SCRIPT_NAME, src);
    int rc = b24_cmd_serve(ns, serve);
    b24_script_inline(NULL, NULL);
    free(src);
    free(serve);
    return rc;
}
