/* b24.host: the b24 program's services to Lua scripts (its log, isatty). */
#ifndef B24_HOSTLIB_H
#define B24_HOSTLIB_H

#include <lua.h>

/* require("b24.host"): { log = function(level, msg [, fields]), isatty = function(fd) } */
int luaopen_b24_host(lua_State *L);

#endif
