/* The deadline of every Lua call b24 serve makes (a handler in the request, a router's accept,
 * the inbox's dispatch, a job, a script's load). A watchdog thread signals a thread whose call
 * ran past its deadline; the signal sets a count hook on the state running there, which raises
 * on every instruction until the host's protected call has unwound, so a pcall in the script
 * cannot swallow it (pcall, xpcall, coroutine.resume, close and wrap are guarded), and the
 * script cannot remove it (debug.sethook is refused). No hook runs while a call is in time.
 * The library's blocking calls (an HTTP transfer, core.sleep) end early once the call is late
 * (b24_interrupted); another module's blocking C call keeps its own timeout, and the hook raises
 * at the first Lua instruction after it. */
#ifndef B24_DEADLINE_H
#define B24_DEADLINE_H

#include <lua.h>

/* Guards a fresh state's protected calls and coroutines, and replaces debug.sethook with one
 * that refuses; run outside any deadline. */
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
/* The host's protected call on L begins and ends (b24_state_call): between the two, under a
 * deadline begun on this thread, the watchdog watches it. */
void b24_deadline_enter(lua_State *L);
void b24_deadline_leave(lua_State *L);
/* Every deadline, of every thread, ends at monotonic time at at the latest (the stop). */
void b24_deadline_cap(double at);

enum { B24_DEADLINE_MET = 0, B24_DEADLINE_EXPIRED = 1, B24_DEADLINE_STOPPED = 2 };

#endif
