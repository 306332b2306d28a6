/* The Lua side of the JSON codec: the contract of json_decode and json_encode (below), the
 * per-state scratch both reuse, their limit options, and their registration into bitrix24.core.
 * json_decode is b24_json_decode.c (form mode's tables: b24_json_form.c), json_encode is
 * b24_json_encode.c; the pure-C scan and readers they stand on are b24_json_scan.c,
 * b24_json_string.c, b24_json_number.c and b24_json_walk.c.
 *
 * json_decode / json_encode: RFC 8259 for Lua values with every digit of a number kept.
 *
 * json_decode(s [, opts]) -> value | nil, message, kind
 *   Strict: UTF-8 checked, \u escapes with surrogate pairs (a lone surrogate is refused), no
 *   trailing data, no BOM; kind "malformed" with "malformed JSON at byte N: why" (N 1-based). The
 *   form codec's limits, checked by a scan before anything is built: opts.max_depth (64; 1..1000),
 *   opts.max_pairs (10,000 members and elements), opts.max_size (1 MiB) -> "too_deep",
 *   "too_many", "too_large". opts.max_memory (16 * #s + 64 KiB): the Lua memory the value may
 *   take, held while it is built -> "too_large"; "memory" when malloc fails. Integers that fit
 *   in int64 are Lua 5.4 integers ("-0" too: 0), other numbers doubles (correctly rounded); on
 *   LuaJIT every number is a double. A number beyond the doubles is "malformed". null is
 *   opts.null (default json_null, the light userdata NULL: cjson.null); arrays are sequences,
 *   objects tables of string keys (the last of repeated keys wins; {} and [] both {}).
 *   opts.form: the table form_decode(form_encode(value)) gives for the decoded value (PHP reading
 *   the same data posted as a form): scalars as strings (true "1", false "0", numbers as
 *   form_encode writes them, except that integers keep every digit on LuaJIT too), null and
 *   empty containers omitted, keys 0..n-1 (in form_encode's sorted order) making sequences, and
 *   keys holding '[', ']' or NUL read as parse_str reads them (through the form parser itself,
 *   "too_large" past 2 * #s + 4 KiB of form body). The pairs are then the values that are not
 *   null (a repeated key counted each time), the depth is counted in brackets, so 65
 *   containers (holding values or not), and the top level must be an object or an array.
 *   opts.only (form mode): build the top-level key only alone (the table holds it or nothing),
 *   exactly as the whole value has it; the rest is scanned and counted but never built.
 *
 * json_encode(value [, opts]) -> string; raises "cannot JSON-encode <what> at a[b][1]" (Lua
 *   indexes) for NaN and infinities, functions, userdata, threads, keys other than strings or
 *   1..n, tables mixing both, sparse arrays, cycles, nesting past opts.max_depth (64) and
 *   strings or keys that are not UTF-8. Keys exactly 1..n: an array; string keys: an object,
 *   keys in bytewise order (one table, one text); an empty table [] ({} with opts.empty =
 *   "object"). Lua 5.4 integers exactly; floats integral and below 2^63 as integers (13430.0 ->
 *   13430, as form_encode and the REST API take them), -0.0 as -0.0 (it reads back), others as
 *   the shortest of 15, 16 or 17 significant digits that reads back the same (0.1,
 *   123456789012345.67, 1e+300). LuaJIT int64_t and uint64_t cdata by their own digits.
 *   json_null, cjson.null and opts.null as null. Only '"', '\\' and control characters are
 *   escaped (no "\/"). */
#include <stdlib.h>
#include <string.h>

#include "b24.h"

#define SCRATCH_MT "bitrix24.core.JsonScratch"
#define KEEP_BYTES (64 * 1024) /* buffers above this are freed after a call */

static int scratch_gc(lua_State *L)
{
    b24_json_scratch *s = luaL_checkudata(L, 1, SCRATCH_MT);
    b24_arena_free(&s->arena);
    free(s->out);
    free(s->entries);
    free(s->records);
    s->out = NULL;
    s->entries = NULL;
    s->records = NULL;
    s->out_cap = s->entries_cap = s->records_size = 0;
    return 0;
}

static b24_json_scratch *scratch_push(lua_State *L)
{
    b24_json_scratch *s = lua_newuserdatauv(L, sizeof(*s), 0);
    memset(s, 0, sizeof(*s));
    luaL_setmetatable(L, SCRATCH_MT);
    return s;
}

/* The shared scratch from upvalue 1, or a fresh one pushed on the stack when it is busy. */
b24_json_scratch *b24_json_scratch_acquire(lua_State *L)
{
    b24_json_scratch *s = lua_touserdata(L, lua_upvalueindex(1));
    if (s->busy)
        s = scratch_push(L);
    s->busy = 1;
    return s;
}

/* Ends a call: the arena back to one small chunk, no huge buffer kept. */
void b24_json_scratch_release(b24_json_scratch *s)
{
    s->busy = 0;
    b24_arena_reset(&s->arena);
    s->out_len = s->entries_len = 0;
    if (s->out_cap > KEEP_BYTES) {
        free(s->out);
        s->out = NULL;
        s->out_cap = 0;
    }
    if (s->entries_cap > KEEP_BYTES / 32) {
        free(s->entries);
        s->entries = NULL;
        s->entries_cap = 0;
    }
    if (s->records_size > KEEP_BYTES) {
        free(s->records);
        s->records = NULL;
        s->records_size = 0;
    }
}

size_t b24_json_limit(lua_State *L, int t, const char *name, size_t def, size_t cap)
{
    lua_getfield(L, t, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
        (cap && (size_t)lua_tointeger(L, -1) > cap))
        luaL_error(L, "bad limit '%s' (a whole number from 1%s expected)", name,
                   cap ? " to 1000" : "");
    size_t v = (size_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return v;
}

static const luaL_Reg json_funcs[] = {
    {"json_decode", b24_json_decode},
    {"json_encode", b24_json_encode},
    {NULL, NULL},
};

void b24_json_open(lua_State *L)
{
    if (luaL_newmetatable(L, SCRATCH_MT)) {
        lua_pushcfunction(L, scratch_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, SCRATCH_MT);
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    scratch_push(L);
    lua_getglobal(L, "tostring"); /* LuaJIT's int64_t numbers are written from their text */
    luaL_setfuncs(L, json_funcs, 2);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "json_null");
}
