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
          "  b24 help                          this text\n"
          "  b24 --version                     the version\n"
          "\n"
          "`b24 serve --help` lists the server's options.\n",
          f);
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
    int rc = 0;
    if (status != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        char masked[8192];
        b24_mask(m ? m : "?", m ? strlen(m) : 1, masked, sizeof masked);
        fprintf(stderr, "b24 run: %s\n", masked);
        rc = 1;
    } else if (lua_isinteger(L, -1)) {
        rc = (int)lua_tointeger(L, -1);
    } else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
        rc = 1;
    }
    lua_close(L);
    return rc;
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
