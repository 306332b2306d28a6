/* Lua states of the b24 program: see b24_state.h. */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "b24_deadline.h"
#include "b24_embedded.h"
#include "b24_state.h"

static const luaL_Reg *preloads;

/* The C modules every new state preloads; set once, by main. */
void b24_state_preload(const luaL_Reg *modules)
{
    preloads = modules;
}

/* The message handler of lua.c: a string message gets a traceback, other values their
 * __tostring or a description. */
static int msghandler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* lua_pcall with a traceback handler (lua.c's docall). */
int b24_state_call(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    b24_deadline_enter(L);
    int status = lua_pcall(L, nargs, nresults, base);
    b24_deadline_leave(L);
    lua_remove(L, base);
    return status;
}

/* package.preload loader of an embedded module; upvalue 1 is its index */
static int embedded_loader(lua_State *L)
{
    const b24_embedded *m = &b24_embedded_modules[lua_tointeger(L, lua_upvalueindex(1))];
    char chunk[256];
    snprintf(chunk, sizeof chunk, "@[b24]/%s", m->path);
    if (luaL_loadbufferx(L, (const char *)m->src, m->len, chunk, "t") != LUA_OK)
        return lua_error(L);
    lua_pushstring(L, m->name);
    lua_call(L, 1, 1);
    return 1;
}

static int open_state(lua_State *L)
{
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *m = preloads; m && m->name; m++) {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
    }
    for (int i = 0; b24_embedded_modules[i].name; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, embedded_loader, 1);
        lua_setfield(L, -2, b24_embedded_modules[i].name);
    }
    lua_pop(L, 1);
    /* the library logs through b24's logger (its format, level and masking): injected with
     * bitrix24.log.use, so the library itself never looks for the program */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "bitrix24.log");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "use");
    lua_getglobal(L, "require");
    lua_pushliteral(L, "b24.host");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "log");
    lua_getfield(L, -2, "once"); /* what is said once is said once per process, not per state */
    lua_remove(L, -3);
    lua_call(L, 2, 0);
    lua_pop(L, 1);
    /* routers deduplicate in one process-wide store (b24.dedup), whichever thread's state
     * runs them: injected with bitrix24.router.use_store, as the logger is */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "bitrix24.router");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "use_store");
    lua_getglobal(L, "require");
    lua_pushliteral(L, "b24.dedup");
    lua_call(L, 1, 1);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
    return 0;
}

/* A fresh state with the standard libraries and every module preloaded. */
lua_State *b24_state_new(void)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return NULL;
    lua_pushcfunction(L, open_state);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        lua_close(L);
        return NULL;
    }
    return L;
}

/* argv as a table, argv[i] at first + i (lua.c's createargtable). */
void b24_state_push_argv(lua_State *L, int argc, char *const *argv, int first)
{
    lua_createtable(L, argc, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, first + i);
    }
}

typedef struct entry {
    const char *module, *function;
    int argc;
    char *const *argv;
} entry;

/* [entry] -> results of require(module)[function](argv), inside the protected call */
static int call_entry(lua_State *L)
{
    const entry *e = lua_touserdata(L, 1);
    lua_settop(L, 0);
    lua_getglobal(L, "require");
    lua_pushstring(L, e->module);
    lua_call(L, 1, 1);
    if (e->function == NULL) /* the module itself */
        return 1;
    lua_getfield(L, 1, e->function);
    if (!lua_isfunction(L, -1))
        return luaL_error(L, "%s.%s is not a function", e->module, e->function);
    b24_state_push_argv(L, e->argc, e->argv, 1);
    lua_call(L, 1, LUA_MULTRET);
    return lua_gettop(L) - 1;
}

/* require(module) under b24_state_call. */
int b24_state_require(lua_State *L, const char *module)
{
    entry e = {module, NULL, 0, NULL};
    lua_pushcfunction(L, call_entry);
    lua_pushlightuserdata(L, &e);
    return b24_state_call(L, 1, 1);
}

/* require(module)[function](argv) under b24_state_call. */
int b24_state_call_entry(lua_State *L, const char *module, const char *function, int argc,
                         char *const *argv, int nresults)
{
    entry e = {module, function, argc, argv};
    lua_pushcfunction(L, call_entry);
    lua_pushlightuserdata(L, &e);
    return b24_state_call(L, 1, nresults);
}

/* Prepends the script's directory to package.path so a script can require its neighbours. */
static void add_script_dir(lua_State *L, const char *path)
{
    const char *slash = strrchr(path, '/');
    lua_getglobal(L, "package");
    if (slash)
        lua_pushlstring(L, path, (size_t)(slash - path));
    else
        lua_pushliteral(L, ".");
    lua_pushliteral(L, "/?.lua;");
    lua_getfield(L, -3, "path");
    lua_concat(L, 3);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

/* The chunk loaded (status) below the nargs arguments, called; or its message alone. */
static int call_loaded(lua_State *L, int status, int nargs)
{
    if (status != LUA_OK) {
        lua_insert(L, -1 - nargs); /* the message below the arguments */
        lua_pop(L, nargs);
        return status;
    }
    lua_insert(L, -1 - nargs);
    return b24_state_call(L, nargs, 1);
}

/* Loads a script's text as @path and calls it with nargs arguments. */
int b24_state_run_script(lua_State *L, const char *path, const char *src, size_t len, int nargs)
{
    add_script_dir(L, path);
    lua_pushfstring(L, "@%s", path);
    int status = luaL_loadbufferx(L, src, len, lua_tostring(L, -1), "t");
    lua_remove(L, -2); /* the chunk name */
    return call_loaded(L, status, nargs);
}

/* Loads the file at path (as lua.c does) and calls it with nargs arguments. */
int b24_state_run_file(lua_State *L, const char *path, int nargs)
{
    add_script_dir(L, path);
    return call_loaded(L, luaL_loadfilex(L, path, "t"), nargs);
}
