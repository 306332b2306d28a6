/* b24: runs Lua handler scripts as a Bitrix24 webhook receiver, and Lua REST scripts.
 * The one place that opens everything (as LuaSocket's luasocket.c): the table of commands,
 * and the table of C modules preloaded into every Lua state. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "b24.h" /* B24_VERSION, b24_mask */
#include "b24_dedup.h"
#include "b24_emulate.h"
#include "b24_hostlib.h"
#include "b24_inbox_cmd.h"
#include "b24_post.h"
#include "b24_serve.h"
#include "b24_state.h"

/* The C modules of every Lua state; the Lua modules are embedded (b24_embedded.h). */
static const luaL_Reg preloads[] = {
    {"bitrix24.core", luaopen_bitrix24_core},
    {"b24.host", luaopen_b24_host},
    {"b24.dedup", luaopen_b24_dedup},
    {"b24.emulator.post", luaopen_b24_emulator_post},
    {NULL, NULL},
};

static void help(FILE *f)
{
    fputs(
        "b24 " B24_VERSION " - Bitrix24 webhooks and REST from Lua\n"
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

/* The exit status of a script run with `status`, after which L is closed: 1 when it raised
 * (the message printed masked, after `who`) or returned false, the integer it returned,
 * else 0. */
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
    return rc;
}

/* b24 call|export ARGS…: require("b24.cli").main{ "call"|"export", ARGS… }. */
static int cmd_cli(int argc, char **argv)
{
    char who[64];
    snprintf(who, sizeof who, "b24 %s", argv[0]);
    lua_State *L = b24_state_new();
    if (L == NULL) {
        fprintf(stderr, "%s: cannot create a Lua state\n", who);
        return 1;
    }
    return finish_run(L, b24_state_call_entry(L, "b24.cli", "main", argc, argv, 1), who);
}

/* b24 run SCRIPT [ARGS…]: like `lua SCRIPT ARGS…`; the exit status is the script's own
 * (os.exit), 1 when it raises, else the integer it returns, else 0. */
static int cmd_run(int argc, char **argv)
{
    if (argc < 2) {
        fputs("usage: b24 run SCRIPT.lua [ARGS...]\n", stderr);
        return 2;
    }
    lua_State *L = b24_state_new();
    if (L == NULL) {
        fputs("b24 run: cannot create a Lua state\n", stderr);
        return 1;
    }
    /* arg as lua.c builds it: arg[-1] the interpreter, arg[0] the script, arg[1..] its
     * arguments, which are also the chunk's ... */
    b24_state_push_argv(L, argc - 1, argv + 1, 0);
    lua_pushliteral(L, "b24 run");
    lua_rawseti(L, -2, -1);
    lua_setglobal(L, "arg");
    for (int i = 2; i < argc; i++)
        lua_pushstring(L, argv[i]);
    return finish_run(L, b24_state_run_file(L, argv[1], argc - 2), "b24 run");
}

static const struct command {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the command's name */
} commands[] = {
    {"serve", b24_cmd_serve},
    {"run", cmd_run},
    {"inbox", b24_cmd_inbox},
    {"call", cmd_cli},
    {"export", cmd_cli},
    {"emulate", b24_cmd_emulate},
    {NULL, NULL},
};

int main(int argc, char **argv)
{
    b24_state_preload(preloads);
    if (argc < 2) {
        help(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    for (const struct command *c = commands; c->name; c++)
        if (strcmp(cmd, c->name) == 0)
            return c->run(argc - 1, argv + 1);
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
