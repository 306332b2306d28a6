/* The inbox's SQLite schema and statements: see b24_inbox_sql.h. A delivery is pending,
 * running, or waiting (a repeat that arrived while its key ran: claimable once that run ends);
 * `seen` keeps the keys of adds and deletes for the dedup TTL; `kv` and `marks` are the script's
 * (host.kv_put, host.inbox_mark: b24_inbox.h b24_op). */
#include "b24_inbox_sql.h"

const char b24_inbox_schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS deliveries ("
    "  id INTEGER PRIMARY KEY,"
    "  key TEXT NOT NULL,"
    "  event TEXT NOT NULL,"
    "  content_type TEXT NOT NULL,"
    "  body BLOB NOT NULL,"
    "  received_at REAL NOT NULL,"
    "  state TEXT NOT NULL DEFAULT 'pending'," /* pending | running | waiting */
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  next_at REAL NOT NULL,"
    "  last_error TEXT);"
    "CREATE INDEX IF NOT EXISTS deliveries_key ON deliveries(key);"
    "CREATE INDEX IF NOT EXISTS deliveries_ready ON deliveries(state, next_at);"
    "CREATE TABLE IF NOT EXISTS dead ("
    "  id INTEGER PRIMARY KEY,"
    "  key TEXT NOT NULL,"
    "  event TEXT NOT NULL,"
    "  content_type TEXT NOT NULL,"
    "  body BLOB NOT NULL,"
    "  received_at REAL NOT NULL,"
    "  attempts INTEGER NOT NULL,"
    "  last_error TEXT,"
    "  died_at REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, until REAL NOT NULL);"
    /* a script's durable values (host.kv_put: reconciliation checkpoints) */
    "CREATE TABLE IF NOT EXISTS kv (name TEXT PRIMARY KEY, value BLOB NOT NULL,"
    "  updated_at REAL NOT NULL);"
    /* the newest time of a handled delivery per object (host.inbox_mark), for the dedup TTL */
    "CREATE TABLE IF NOT EXISTS marks (object TEXT PRIMARY KEY, ts REAL NOT NULL,"
    "  until REAL NOT NULL);";

const char *const b24_inbox_sql[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_SEEN] = "SELECT 1 FROM seen WHERE key = ?1 AND until > ?2",
    [S_KEY_STATES] = "SELECT state FROM deliveries WHERE key = ?1",
    /* state 'running' with attempts 1: a run of this batch's claims from the start */
    [S_INSERT] = "INSERT INTO deliveries (key, event, content_type, body, received_at, next_at,"
                 " state, attempts) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
    /* in its arrival order among the ready deliveries */
    [S_PROMOTE] = "UPDATE deliveries SET state = 'pending', next_at = min(received_at, ?2)"
                  " WHERE key = ?1 AND state = 'waiting'",
    [S_DROP_WAITING] = "DELETE FROM deliveries WHERE key = ?1 AND state = 'waiting'",
    [S_DELETE] = "DELETE FROM deliveries WHERE id = ?1",
    [S_REMEMBER] = "INSERT OR REPLACE INTO seen (key, until) VALUES (?1, ?2)",
    [S_RETRY] =
        "UPDATE deliveries SET state = 'pending', next_at = ?2, last_error = ?3 WHERE id = ?1",
    [S_BURY] = "INSERT INTO dead"
               " (key, event, content_type, body, received_at, attempts, last_error, died_at)"
               " SELECT key, event, content_type, body, received_at, attempts, ?2, ?3"
               " FROM deliveries WHERE id = ?1",
    [S_READY] = "SELECT id, attempts, key, event, content_type, body FROM deliveries d"
                " WHERE state = 'pending' AND next_at <= ?1 AND NOT EXISTS (SELECT 1 FROM"
                " deliveries r WHERE r.key = d.key AND r.state = 'running')"
                " ORDER BY next_at, id LIMIT ?2",
    [S_CLAIM] = "UPDATE deliveries SET state = 'running', attempts = attempts + 1 WHERE id = ?1",
    [S_RELEASE] = "UPDATE deliveries SET state = 'pending', attempts = attempts - 1 WHERE id = ?1",
    [S_NEXT] = "SELECT min(next_at) FROM deliveries WHERE state = 'pending'",
    [S_PRUNE] = "DELETE FROM seen WHERE until <= ?1",
    [S_PRUNE_MARKS] = "DELETE FROM marks WHERE until <= ?1",
    [S_KV_GET] = "SELECT value FROM kv WHERE name = ?1",
    [S_KV_PUT] = "INSERT INTO kv (name, value, updated_at) VALUES (?1, ?2, ?3)"
                 " ON CONFLICT(name) DO UPDATE SET value = excluded.value,"
                 " updated_at = excluded.updated_at",
    [S_MARK] =
        "INSERT INTO marks (object, ts, until) VALUES (?1, ?2, ?3)"
        " ON CONFLICT(object) DO UPDATE SET ts = max(ts, excluded.ts), until = excluded.until",
    [S_MARK_GET] = "SELECT ts FROM marks WHERE object = ?1 AND until > ?2",
    /* a named claim (host.kv_claim): its holder in value, its end in updated_at */
    [S_CLAIM_NAME] = "INSERT INTO kv (name, value, updated_at) VALUES (?1, ?2, ?3 + ?4)"
                     " ON CONFLICT(name) DO UPDATE SET value = excluded.value,"
                     " updated_at = excluded.updated_at WHERE kv.updated_at < ?3"
                     " OR kv.value = excluded.value RETURNING 1",
};
