/* What the token store's files share (private; the interface is b24_tokens.h): the record and
 * the store userdata, the SQLite store (b24_tokens_sqlite.c), the PostgreSQL store
 * (b24_tokens_pg.c), the process-wide memory store (b24_tokens_memory.c), and pushing a record,
 * which every store's get and list do. The Lua binding (b24_tokens.c) checks the arguments and
 * calls one store; no store calls into the binding or into another. */
#ifndef B24_TOKENS_IMPL_H
#define B24_TOKENS_IMPL_H

#include <stddef.h>

#include <lua.h>

#define MAX_KEY 255

/* the string fields, in the order of the table's columns */
enum {
    F_MEMBER_ID,
    F_DOMAIN,
    F_CLIENT_ID,
    F_CLIENT_ENDPOINT,
    F_SERVER_ENDPOINT,
    F_ACCESS_TOKEN,
    F_REFRESH_TOKEN,
    F_APPLICATION_TOKEN,
    F_SCOPE,
    F_USER_ID,
    NSTR
};
#define F_EXPIRES_AT NSTR /* its bit in a record's mask */

static const char *const names[NSTR] = {
    "member_id",    "domain",        "client_id",         "client_endpoint", "server_endpoint",
    "access_token", "refresh_token", "application_token", "scope",           "user_id"};

/* A record's values, borrowed from Lua strings, a SQLite row or a memory snapshot. */
typedef struct record {
    const char *s[NSTR]; /* NULL: absent */
    size_t len[NSTR];
    unsigned mask; /* the fields a swap was given: bit i for s[i], bit F_EXPIRES_AT */
    int has_expires;
    double expires_at;
    long long version;
    double updated_at;
} record;

struct sqlite3;
struct sqlite3_stmt;
struct pg_conn;
struct pg_result;
#define STORE_STATEMENTS 15 /* b24_tokens_sqlite.c's S_COUNT */

/* The userdata of every store; the memory store's state is process-wide, not in it. */
typedef struct store {
    struct sqlite3 *db; /* the SQLite store's connection; NULL: another store (or closed) */
    struct sqlite3_stmt *st[STORE_STATEMENTS];
    int memory;
    /* the PostgreSQL store: its URL (malloc'd; NULL: not this store, or closed), connection
     * (NULL between a lost one and the next try), the last result (freed by the next call or
     * the close, so a raise while it is pushed leaks nothing), and when a connection may next
     * be tried after a failed one (monotonic seconds), with the backoff that doubles */
    char *url;
    struct pg_conn *conn;
    struct pg_result *res;
    double retry_at, backoff;
    char lost[256]; /* why the last connection failed */
    char err[320];  /* the last failure's message */
} store;

/* Pushes r as a record table: its present fields, version and updated_at. */
static inline void push_record(lua_State *L, const record *r)
{
    lua_createtable(L, 0, NSTR + 3);
    for (int i = 0; i < NSTR; i++)
        if (r->s[i]) {
            lua_pushlstring(L, r->s[i], r->len[i]);
            lua_setfield(L, -2, names[i]);
        }
    if (r->has_expires) {
        lua_pushnumber(L, r->expires_at);
        lua_setfield(L, -2, "expires_at");
    }
    lua_pushinteger(L, (lua_Integer)r->version);
    lua_setfield(L, -2, "version");
    lua_pushnumber(L, r->updated_at);
    lua_setfield(L, -2, "updated_at");
}

/* ---- the SQLite store (b24_tokens_sqlite.c): -1 on failure leaves the message in s->err ---- */

/* Opens path into s: 0, or -1 with the message in s->err. */
int b24_tokens_sqlite_open(store *s, const char *path);
/* Finalizes the statements and closes the connection; idempotent. */
void b24_tokens_sqlite_close(store *s);
/* Pushes the record of key (a member_id, else the latest updated of a domain): 1, 0 with
 * nothing pushed when there is none, -1. */
int b24_tokens_sqlite_get(lua_State *L, store *s, const char *key, size_t len);
/* Pushes every portal's record in an array: 0, or -1 (the partial array stays pushed). */
int b24_tokens_sqlite_list(lua_State *L, store *s);
/* Writes r (put: all fields; swap: the masked ones when the version is expect): 1 with the new
 * version in *version, 0 with the current one (a swap refused), -1. */
int b24_tokens_sqlite_write(store *s, const record *r, int partial, long long expect, double now,
                            long long *version);
/* Deletes the portal of member_id and its lease in one transaction: 0, or -1. */
int b24_tokens_sqlite_delete(store *s, const char *member_id, size_t len);
/* Takes or extends the lease of member_id until `until`: 1 taken; 0 with the holder (into
 * held, MAX_KEY + 1 bytes, NUL-terminated) and its expiry; -1. */
int b24_tokens_sqlite_lease(store *s, const char *member_id, size_t len, const char *holder,
                            size_t holder_len, double now, double until, char *held,
                            double *held_until);
/* Lets go of member_id's lease when holder holds it: 1 released, 0 not held by holder, -1. */
int b24_tokens_sqlite_release(store *s, const char *member_id, size_t len, const char *holder,
                              size_t holder_len);

/* ---- the PostgreSQL store (b24_tokens_pg.c): the same contract as the SQLite store's -------- */

/* Connects to url (a postgresql:// URL) and creates or migrates b24's schema: 0, or -1 with the
 * message in s->err (the URL's password masked). */
int b24_tokens_pg_open(store *s, const char *url);
/* Closes the connection and forgets the URL; idempotent. */
void b24_tokens_pg_close(store *s);
/* As b24_tokens_sqlite_get. */
int b24_tokens_pg_get(lua_State *L, store *s, const char *key, size_t len);
/* As b24_tokens_sqlite_list. */
int b24_tokens_pg_list(lua_State *L, store *s);
/* As b24_tokens_sqlite_write; updated_at is the database server's clock. */
int b24_tokens_pg_write(store *s, const record *r, int partial, long long expect,
                        long long *version);
/* As b24_tokens_sqlite_delete. */
int b24_tokens_pg_delete(store *s, const char *member_id, size_t len);
/* As b24_tokens_sqlite_lease, but until `seconds` from now on the database server's clock, the
 * one clock every host of a fleet compares leases on. */
int b24_tokens_pg_lease(store *s, const char *member_id, size_t len, const char *holder,
                        size_t holder_len, double seconds, char *held, double *held_until);
/* As b24_tokens_sqlite_release. */
int b24_tokens_pg_release(store *s, const char *member_id, size_t len, const char *holder,
                          size_t holder_len);

/* ---- the memory store (b24_tokens_memory.c): -1 on failure sets *err ---------------------- */

/* Pushes the memory store's record of key (or nothing, 0). */
int b24_tokens_memory_get(lua_State *L, const char *key, size_t len);
/* The memory store's portals as an array on the stack. */
void b24_tokens_memory_list(lua_State *L);
/* As b24_tokens_sqlite_write, with *err on failure. */
int b24_tokens_memory_write(const record *r, int partial, long long expect, double now,
                            long long *version, const char **err);
/* Deletes the portal of member_id and its lease. */
void b24_tokens_memory_delete(const char *member_id, size_t len);
/* As b24_tokens_sqlite_lease, with *err on failure. */
int b24_tokens_memory_lease(const char *member_id, size_t len, const char *holder,
                            size_t holder_len, double now, double until, char *held,
                            double *held_until, const char **err);
/* Lets go of member_id's lease when holder holds it: 1 released, else 0. */
int b24_tokens_memory_release(const char *member_id, size_t len, const char *holder,
                              size_t holder_len);

#endif
