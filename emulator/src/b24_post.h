/* b24.emulator.post: fire-and-forget HTTP POSTs from a thread of their own, the way a portal
 * sends its outgoing events. Preloaded in the b24 program only (b24_main.c). */
#ifndef B24_POST_H
#define B24_POST_H

#include <lua.h>

/* require("b24.emulator.post"): { post = function(url, body [, headers]) -> true | nil, reason } */
int luaopen_b24_emulator_post(lua_State *L);

#endif
