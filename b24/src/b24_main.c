/* b24: runs Lua handler scripts as a Bitrix24 webhook receiver, and Lua REST scripts. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "b24_host.h"
#include "b24_inbox.h"


static void help(FILE *f)
{
    fputs("b24 " B24_VERSION " - Bitrix24 webhooks and REST from Lua\n"
          "\n"
          "usage:\n"
          "  b24 serve [OPTIONS] SCRIPT.lua   serve the handler SCRIPT returns over HTTP\n"
          "  b24 run SCRIPT.lua [ARGS...]     run a Lua script with bitrix24 preloaded\n"
          "  b24 inbox stats|list|retry|purge look at and repair the durable inbox\n"
          "  b24 call METHOD [JSON | key=value...]  one REST call (B24_WEBHOOK_URL or --webhook)\n"
          "  b24 export METHOD [JSON]        every row of a list method as NDJSON on stdout\n"
          "  b24 emulate [OPTIONS]           a Bitrix24 portal in memory for development and tests\n"
          "  b24 help                          this text\n"
          "  b24 --version                     the version\n"
          "\n"
          "`b24 serve --help` lists the server's options.\n",
          f);
}

/* Lua source text `return PREFIX{ "argv[0]", "argv[1]", … }`, every argument quoted with
 * decimal escapes so any bytes pass through unchanged. NULL when out of memory. */
char *b24_call_chunk(const char *prefix, int argc, char **argv, size_t *len)
{
    size_t cap = strlen(prefix) + 16;
    for (int i = 0; i < argc; i++)
        cap += strlen(argv[i]) * 4 + 4;
    char *out = malloc(cap), *p = out;
    if (out == NULL)
        return NULL;
    p += sprintf(p, "return %s{", prefix);
    for (int i = 0; i < argc; i++) {
        *p++ = '"';
        for (const unsigned char *c = (const unsigned char *)argv[i]; *c; c++) {
            if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                strchr("-_=./:,@+ ", *c))
                *p++ = (char)*c;
            else
                p += sprintf(p, "\\%03u", *c);
        }
        *p++ = '"';
        *p++ = ',';
    }
    *p++ = '}';
    *p = '\0';
    *len = (size_t)(p - out);
    return out;
}

/* The exit status of a script run with `status`, after which L is closed and what the script
 * posted goes out: 1 when it raised (the message printed masked, after `who`) or returned false,
 * the integer it returned, else 0. */
static int finish_run(lua_State *L, int status, const char *who)
{
    int rc = 0;
    if (status != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        char masked[8192];
        b24_mask(m ? m : "?", m ? strlen(m) : 1, masked, sizeof masked);
        fprintf(stderr, "%s: %s\n", who, masked);
        rc = 1;
    } else if (lua_isinteger(L, -1)) {
        rc = (int)lua_tointeger(L, -1);
    } else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
        rc = 1;
    }
    fflush(stdout);
    lua_close(L);
    b24_post_stop(5);
    return rc;
}

/* b24 call|export ARGS…: the embedded b24.cli with the command and its arguments. */
static int cmd_cli(int argc, char **argv)
{
    size_t len;
    char *src = b24_call_chunk("require(\"b24.cli\").main", argc, argv, &len);
    if (src == NULL) {
        fputs("b24: out of memory\n", stderr);
        return 1;
    }
    char who[64];
    snprintf(who, sizeof who, "b24 %s", argv[0]);
    lua_State *L = b24_state_new();
    if (L == NULL) {
        free(src);
        fprintf(stderr, "%s: cannot create a Lua state\n", who);
        return 1;
    }
    int status = b24_state_run_script(L, "b24", src, len, 0);
    free(src);
    return finish_run(L, status, who);
}

/* b24 run SCRIPT [ARGS…]: like `lua SCRIPT ARGS…`; the exit status is the script's own
 * (os.exit), 1 when it raises, else the integer it returns, else 0. */
int b24_cmd_run(int argc, char **argv)
{
    if (argc < 2) {
        fputs("usage: b24 run SCRIPT.lua [ARGS...]\n", stderr);
        return 2;
    }
    const char *path = argv[1];
    size_t len;
    char *src = b24_read_file(path, &len);
    if (src == NULL) {
        fprintf(stderr, "b24 run: cannot read %s: %s\n", path, strerror(errno));
        return 1;
    }
    lua_State *L = b24_state_new();
    if (L == NULL) {
        free(src);
        fputs("b24 run: cannot create a Lua state\n", stderr);
        return 1;
    }
    /* arg as lua.c builds it: arg[0] the script, arg[1..] its arguments */
    lua_createtable(L, argc - 2, 2);
    lua_pushliteral(L, "b24 run");
    lua_rawseti(L, -2, -1);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 1);
    }
    lua_setglobal(L, "arg");
    for (int i = 2; i < argc; i++)
        lua_pushstring(L, argv[i]);
    int status = b24_state_run_script(L, path, src, len, argc - 2);
    free(src);
    return finish_run(L, status, "b24 run");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        help(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return b24_cmd_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0)
        return b24_cmd_run(argc - 1, argv + 1);
    if (strcmp(cmd, "inbox") == 0)
        return b24_cmd_inbox(argc - 1, argv + 1);
    if (strcmp(cmd, "emulate") == 0)
        return b24_cmd_emulate(argc - 1, argv + 1);
    if (strcmp(cmd, "call") == 0 || strcmp(cmd, "export") == 0)
        return cmd_cli(argc - 1, argv + 1);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        help(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("b24 %s (%s)\n", B24_VERSION, LUA_RELEASE);
        return 0;
    }
    fprintf(stderr, "b24: unknown command '%s'\n\n", cmd);
    help(stderr);
    return 2;
}
