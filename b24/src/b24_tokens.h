/* The application token store of b24.host (issue 15): each installed portal's OAuth tokens, and
 * the refresh lease that makes a refresh single-flight per portal across threads, processes and
 * (on PostgreSQL) the hosts of a fleet.
 *
 * local store = require("b24.host").tokens([path])
 *   path: a SQLite file (WAL mode), created if missing, with the tables b24_app_portals and
 *     b24_app_leases (CREATE IF NOT EXISTS); a postgresql:// (or postgres://) URL: a
 *     PostgreSQL database, b24's schema created or migrated (b24_pg.h), shared by every host
 *     (times, updated_at and leases, are then the database server's clock); "memory": the
 *     process-wide memory store.
 *   no path: under `b24 serve` (and `b24 emulate`), the serve's --inbox file or URL (B24_INBOX,
 *     b24-inbox.sqlite by default; also for a handler that is no router), through a
 *     connection of its own beside the inbox's; the process-wide memory store with
 *     --inbox memory or --sync; elsewhere (`b24 run`) it raises.
 *   Opening a file that cannot be opened, or a database that cannot be reached, raises too
 *   (the URL's password masked). One store (one connection) per Lua state and path: a second
 *   call in the same state gives the same store; the connection closes with the state. A
 *   PostgreSQL connection lost is made anew on a later call (a backoff of 0.1 s to 5 s between
 *   failed tries); a read, delete or lease whose connection was lost under it is run once more,
 *   a put, swap or release answers nil, err (it may have been applied).
 *
 * store:get(key) -> record | nil
 *   key: a member_id, else a domain (ASCII case ignored; the latest updated of that domain).
 * store:put(record) -> version | nil, err
 *   upsert by record.member_id; every field is replaced (absent = nil); version: the previous
 *   one + 1, 1 for a new portal.
 * store:swap(member_id, version, fields) -> new_version | false, current_version
 *   compare-and-set in one transaction: applies the fields given (false clears one, absent
 *   keeps it) only when the stored version is `version`; version 0 creates a portal not stored
 *   yet, and current_version is 0 for a portal not stored.
 * store:delete(member_id) -> true
 *   the portal and its lease.
 * store:list() -> { record, ... }
 *   every portal, ordered by member_id (bytewise).
 * store:lease(member_id, holder, seconds) -> true | false, holder_now, expires_at
 *   taken when none is held, the one held expired, or holder holds it (then extended to now +
 *   seconds); committed before it returns; the wall clock (unix seconds, fractional; PostgreSQL:
 * the server's). store:release(member_id, holder) -> true | false true when holder held it (and let
 * go).
 *
 * Record: member_id, domain, client_id, client_endpoint, server_endpoint, access_token,
 * refresh_token, application_token, scope, user_id (strings; user_id may be given as an
 * integer), expires_at (number, unix seconds), version (integer) and updated_at (number, unix
 * seconds): the last two read-only, set by the store. Unknown keys are ignored, so
 * put(get(key)) works.
 *
 * Errors: misuse raises (a wrong argument type, a non-string member_id, seconds not > 0).
 * nil, err for a SQLite failure after the busy timeout (10 s): what failed and SQLite's
 * message; for an empty member_id or holder; a member_id, domain, key or holder over 255 bytes;
 * another field over 4 KiB; beyond 100,000 portals (or leases) in the memory store; on
 * PostgreSQL, for a database error or one unreachable, and for a value that is not UTF-8 text
 * (or holds a NUL), which a text column cannot store. No message
 * and no log line carries a field's value. Every write is one short transaction; none is held
 * between calls. */
#ifndef B24_TOKENS_H
#define B24_TOKENS_H

#include <lua.h>

/* What store a script's tokens() without a path gets: the SQLite file or postgresql:// URL at
 * path, or the process-wide memory store when path is NULL. Called by b24 serve before its script
 * loads. */
void b24_tokens_configure(const char *path);
/* b24.host.tokens([path]) -> the store (raises when none can be had). */
int b24_tokens_open(lua_State *L);

#endif
