/* The handler b24 serve runs: one published generation of its source, and one Lua state per
 * thread built from it, so no Lua value ever crosses threads. Each state keeps the handler at
 * stack index 1. */
#ifndef B24_SCRIPT_H
#define B24_SCRIPT_H

#include <lua.h>

/* Where the handler comes from: a Lua file that returns it (path), or, when path is NULL, an
 * entry: require(module)[function](argv) returns it, argv a table 1..argc (any embedded or
 * installed module, for a command that starts serve from C). Everything must outlive the server. */
typedef struct b24_script_source {
    const char *path;
    const char *module, *function;
    int argc;
    char *const *argv;
} b24_script_source;

/* The kinds of handler: a function(request), a table with handle, a router (accept + dispatch). */
enum { B24_HANDLER_FUNCTION = 1, B24_HANDLER_TABLE = 2, B24_HANDLER_ROUTER = 3 };

/* Loads the handler (a file is read again on every call), checks it in a scratch state and
 * publishes it as the next generation; the kind of handler, or -1 (logged) with the running
 * one kept. A reload whose kind does not suit the running server (required) is refused. */
int b24_script_load(const b24_script_source *source, int required);
/* This thread's state with the handler at index 1, (re)built as needed; NULL on failure. */
lua_State *b24_script_state(void);
/* The generation of the script this thread's state is being built from (while
 * b24_script_state loads it), else of the state it has (a reload publishes the next one); 0
 * before any. */
unsigned b24_script_generation(void);
/* Closes every thread's state and lets the published source go. */
void b24_script_close_all(void);

#endif
