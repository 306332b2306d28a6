/* luaopen_bitrix24_core: the only exported symbol of the C module. */
#include "b24.h"

#if defined(__GNUC__)
#define B24_EXPORT __attribute__((visibility("default")))
#else
#define B24_EXPORT
#endif

B24_EXPORT int luaopen_bitrix24_core(lua_State *L);

/* Builds the module table; safe to call again in the same or another state. */
int luaopen_bitrix24_core(lua_State *L)
{
    lua_newtable(L);
    b24_form_open(L);
    b24_crypto_open(L);
    b24_http_open(L);
    b24_time_open(L);
    b24_logline_open(L);
    b24_json_open(L);
    lua_pushliteral(L, B24_VERSION);
    lua_setfield(L, -2, "_VERSION");
    return 1;
}
