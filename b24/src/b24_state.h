/* Lua states of the b24 program: the standard libraries, the preloaded C modules and the
 * embedded Lua modules, and every call into Lua under lua_pcall with a traceback (lua.c's
 * msghandler/docall). One state per thread; none is shared. */
#ifndef B24_STATE_H
#define B24_STATE_H

#include <stddef.h>

#include <lauxlib.h>
#include <lua.h>

/* The C modules every new state preloads (package.preload); set once, by main, before any
 * state is made. The array ends with {NULL, NULL} and must outlive every state. */
void b24_state_preload(const luaL_Reg *modules);
/* A fresh state with the standard libraries and every module preloaded; NULL without memory. */
lua_State *b24_state_new(void);
/* lua_pcall with a traceback handler; on error the message (with traceback) is on the stack. */
int b24_state_call(lua_State *L, int nargs, int nresults);
/* Pushes argv[0..argc-1] as a table, argv[i] at index first + i (lua.c's createargtable). */
void b24_state_push_argv(lua_State *L, int argc, char *const *argv, int first);
/* require(module) under b24_state_call: the module, or the message, on the stack. */
int b24_state_require(lua_State *L, const char *module);
/* require(module)[function](argv) under b24_state_call, argv a table 1..argc: nresults
 * results, or the message, on the stack. */
int b24_state_call_entry(lua_State *L, const char *module, const char *function, int argc,
                         char *const *argv, int nresults);
/* Loads a script's text under the chunk name @path and calls it with the nargs values on the
 * stack; its first result, or the message, on the stack. The script's directory goes first
 * on package.path, so it can require its neighbours. */
int b24_state_run_script(lua_State *L, const char *path, const char *src, size_t len, int nargs);
/* As b24_state_run_script, the text read from the file at path. */
int b24_state_run_file(lua_State *L, const char *path, int nargs);

#endif
