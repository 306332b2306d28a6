/* The deadline of every Lua call b24 serve makes (a handler in the request, a router's accept,
 * the inbox's dispatch, a script's load): a count hook that, once the call's time is up, raises
 * on every tick until the host's protected call has unwound, so a pcall in the script cannot
 * swallow it. Coroutines inherit the hook (lua_newthread copies it), and the script cannot
 * remove it (debug.sethook is refused). Blocking C calls (a REST request) are not interrupted:
 * they keep their own timeouts, and the hook raises at the first Lua instruction after them. */
#ifndef B24_DEADLINE_H
#define B24_DEADLINE_H

#include <lua.h>

/* Installs the hook in a fresh state (before any coroutine is made) and replaces debug.sethook
 * with one that refuses; run outside any deadline. */
void b24_deadline_install(lua_State *L);
/* The kinds of call, each with its limit: a request's (handlers inside it, accept, a script's
 * load) and an inbox handler run's. */
enum { B24_DEADLINE_REQUEST = 0, B24_DEADLINE_HANDLER = 1 };
/* Sets the limit of a kind of call, in seconds (0: none); defaults 30 and 60. */
void b24_deadline_set(int kind, double seconds);
/* This thread's next Lua calls must end within the limit of kind from now. */
void b24_deadline_begin(int kind);
/* Ends this thread's deadline: B24_DEADLINE_MET, or how it expired (then the call failed,
 * whatever it returned). */
int b24_deadline_end(void);
/* Every deadline, of every thread, ends at monotonic time at at the latest (the stop). */
void b24_deadline_cap(double at);

enum { B24_DEADLINE_MET = 0, B24_DEADLINE_EXPIRED = 1, B24_DEADLINE_STOPPED = 2 };

#endif
