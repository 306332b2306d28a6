/* A script's durable values and delivery marks, kept in b24 serve's inbox database (the
 * tables kv and marks), for reconciliation (bitrix24.reconcile) and other background work.
 *
 *   host.kv_get(name) -> value | nil
 *   host.kv_put(name, value) -> true
 *     A durable string per name (1..256 bytes; a value up to 1 MiB): kv_put returns once the
 *     inbox's group commit that holds it is durable; kv_get reads it in the inbox's thread.
 *   host.kv_claim(name, seconds) -> true | false
 *     A named claim shared by every host on the inbox's database (a fleet on PostgreSQL): true
 *     when this host holds it for the next `seconds` (taken when free or run out, or renewed
 *     when this host held it), false while another host holds it. One reconciliation pass of a
 *     fleet runs where the claim is held. Names are apart from kv_put's.
 *   host.inbox_mark(object, ts) -> true
 *     Records that a delivery about object (1..1024 bytes; "portal|crm.lead|42") with time ts
 *     (a number; the event's ts) was handled; the newest ts per object is kept for --dedup-ttl
 *     seconds after its last mark. Queued into the next commit without waiting: a mark lost to
 *     a crash only makes reconciliation deliver that object once more.
 *   host.inbox_marks(objects) -> { [object] = ts }
 *     The marks of up to 10,000 objects (those without one are absent).
 * Each returns nil, err when there is no inbox (--sync, a script that is not a router, outside
 * b24 serve) or it is unavailable (stopping, a failed write); bad arguments raise. */
#ifndef B24_HOSTDB_H
#define B24_HOSTDB_H

#include <lua.h>

int b24_hostdb_kv_get(lua_State *L);
int b24_hostdb_kv_put(lua_State *L);
int b24_hostdb_inbox_mark(lua_State *L);
int b24_hostdb_inbox_marks(lua_State *L);
int b24_hostdb_kv_claim(lua_State *L);

#endif
