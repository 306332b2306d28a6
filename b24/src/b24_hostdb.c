/* A script's durable values and delivery marks in the inbox's database: see b24_hostdb.h.
 * Each call hands one b24_op to the inbox thread (b24_inbox_op), which runs it inside its next
 * group commit; the blocking calls wait for that commit on one condition variable. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "b24_hostdb.h"
#include "b24_inbox.h"
#include "b24_jobs.h"

#define MAX_NAME 256        /* a kv name */
#define MAX_VALUE (1 << 20) /* a kv value */
#define MAX_OBJECT 1024     /* a mark's object */
#define MAX_OBJECTS 10000   /* objects of one host.inbox_marks */

static pthread_mutex_t wait_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wait_cond = PTHREAD_COND_INITIALIZER;

/* On the inbox thread, once a blocking op is committed or failed: wakes its caller. */
static void op_done(b24_op *op)
{
    pthread_mutex_lock(&wait_lock);
    *(int *)op->arg = 1;
    pthread_cond_broadcast(&wait_cond);
    pthread_mutex_unlock(&wait_lock);
}

/* Runs op on in and waits for its commit: op->result. */
static int run_blocking(b24_inbox *in, b24_op *op)
{
    int done = 0;
    op->done = op_done;
    /* on this stack until op_done set it, which is before this returns */
    // cppcheck-suppress autoVariables
    op->arg = &done;
    b24_inbox_op(in, op);
    pthread_mutex_lock(&wait_lock);
    while (!done)
        pthread_cond_wait(&wait_cond, &wait_lock);
    pthread_mutex_unlock(&wait_lock);
    return op->result;
}

/* [-0, +2] nil and why there is no inbox; NULL when there is one (returned in *in) */
static int no_inbox(lua_State *L, const char *fn, b24_inbox **in)
{
    char why[64];
    *in = b24_jobs_inbox(why, sizeof why);
    if (*in != NULL)
        return 0;
    lua_pushnil(L);
    lua_pushfstring(L, "host.%s: no inbox (%s)", fn, why);
    return 2;
}

static int failed(lua_State *L, const char *fn)
{
    lua_pushnil(L);
    lua_pushfstring(L, "host.%s: the inbox is unavailable (stopping, or a write failed)", fn);
    return 2;
}

/* [-0, +0] argument arg as a name of 1..max bytes, or raises */
static const char *check_name(lua_State *L, int arg, size_t max, const char *fn, size_t *len)
{
    const char *s = luaL_checklstring(L, arg, len);
    if (*len == 0 || *len > max)
        luaL_error(L, "host.%s: a name or object is 1 to %d bytes", fn, (int)max);
    return s;
}

/* host.kv_get(name) -> value | nil (none) | nil, err */
int b24_hostdb_kv_get(lua_State *L)
{
    size_t len;
    const char *name = check_name(L, 1, MAX_NAME, "kv_get", &len);
    b24_inbox *in;
    if (no_inbox(L, "kv_get", &in))
        return 2;
    b24_op op = {.kind = B24_OP_KV_GET, .name = name, .name_len = len};
    if (run_blocking(in, &op) != 0)
        return failed(L, "kv_get");
    if (op.value_out == NULL) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, op.value_out, op.value_out_len);
    free(op.value_out);
    return 1;
}

/* host.kv_put(name, value) -> true | nil, err; durable when it returns */
int b24_hostdb_kv_put(lua_State *L)
{
    size_t len, vlen;
    const char *name = check_name(L, 1, MAX_NAME, "kv_put", &len);
    const char *value = luaL_checklstring(L, 2, &vlen);
    if (vlen > MAX_VALUE)
        return luaL_error(L, "host.kv_put: a value is at most %d bytes", MAX_VALUE);
    b24_inbox *in;
    if (no_inbox(L, "kv_put", &in))
        return 2;
    b24_op op = {
        .kind = B24_OP_KV_PUT, .name = name, .name_len = len, .value = value, .value_len = vlen};
    if (run_blocking(in, &op) != 0)
        return failed(L, "kv_put");
    lua_pushboolean(L, 1);
    return 1;
}

/* host.kv_claim(name, seconds) -> true (this host holds it until seconds from now) | false
 * (another host holds it) | nil, err */
int b24_hostdb_kv_claim(lua_State *L)
{
    size_t len;
    const char *name = check_name(L, 1, MAX_NAME - 6, "kv_claim", &len);
    double seconds = luaL_checknumber(L, 2);
    if (!(seconds > 0 && seconds <= 86400))
        return luaL_error(L, "host.kv_claim: seconds must be > 0 and at most 86400");
    b24_inbox *in;
    if (no_inbox(L, "kv_claim", &in))
        return 2;
    char full[MAX_NAME + 1];
    memcpy(full, "claim:", 6); /* apart from the names of host.kv_put */
    memcpy(full + 6, name, len);
    b24_op op = {.kind = B24_OP_CLAIM, .name = full, .name_len = len + 6, .ts = seconds};
    int got = run_blocking(in, &op);
    if (got < 0)
        return failed(L, "kv_claim");
    lua_pushboolean(L, got == 1);
    return 1;
}

/* On the inbox thread: a mark is nobody's to wait for; it frees itself. */
static void mark_done(b24_op *op)
{
    free(op);
}

/* host.inbox_mark(object, ts) -> true | nil, err; queued, never waits */
int b24_hostdb_inbox_mark(lua_State *L)
{
    size_t len;
    const char *object = check_name(L, 1, MAX_OBJECT, "inbox_mark", &len);
    double ts = luaL_checknumber(L, 2);
    if (!isfinite(ts))
        return luaL_error(L, "host.inbox_mark: the time must be a finite number");
    b24_inbox *in;
    if (no_inbox(L, "inbox_mark", &in))
        return 2;
    b24_op *op = calloc(1, sizeof *op + len); /* the object's copy follows the op */
    if (op == NULL)
        return luaL_error(L, "host.inbox_mark: out of memory");
    char *copy = (char *)(op + 1);
    memcpy(copy, object, len);
    op->kind = B24_OP_MARK;
    op->name = copy;
    op->name_len = len;
    op->ts = ts;
    op->done = mark_done;
    b24_inbox_op(in, op);
    lua_pushboolean(L, 1);
    return 1;
}

/* host.inbox_marks(objects) -> { [object] = ts } (only the objects with a mark) | nil, err */
int b24_hostdb_inbox_marks(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    if (n > MAX_OBJECTS)
        return luaL_error(L, "host.inbox_marks: at most %d objects a call", MAX_OBJECTS);
    /* the strings stay referenced by the table (argument 1) until we return */
    const char **objects = lua_newuserdatauv(L, sizeof *objects * (size_t)(n ? n : 1), 0);
    size_t *lens = lua_newuserdatauv(L, sizeof *lens * (size_t)(n ? n : 1), 0);
    double *found = lua_newuserdatauv(L, sizeof *found * (size_t)(n ? n : 1), 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "host.inbox_marks: object %d is not a string", (int)i);
        objects[i - 1] = lua_tolstring(L, -1, &lens[i - 1]);
        lua_pop(L, 1);
        if (lens[i - 1] == 0 || lens[i - 1] > MAX_OBJECT)
            return luaL_error(L, "host.inbox_marks: object %d is not 1 to %d bytes", (int)i,
                              MAX_OBJECT);
    }
    b24_inbox *in;
    if (no_inbox(L, "inbox_marks", &in))
        return 2;
    lua_createtable(L, 0, 0);
    if (n == 0)
        return 1;
    b24_op op = {.kind = B24_OP_MARKS,
                 .objects = objects,
                 .object_lens = lens,
                 .nobjects = (int)n,
                 .found = found};
    if (run_blocking(in, &op) != 0)
        return failed(L, "inbox_marks");
    for (lua_Integer i = 0; i < n; i++) {
        if (isnan(found[i]))
            continue;
        lua_pushlstring(L, objects[i], lens[i]);
        lua_pushnumber(L, found[i]);
        lua_rawset(L, -3);
    }
    return 1;
}
