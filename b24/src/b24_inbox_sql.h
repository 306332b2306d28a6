/* The inbox's SQLite schema and statements (b24_inbox_sql.c), prepared once by the inbox
 * thread (b24_inbox.c), indexed by the names below. */
#ifndef B24_INBOX_SQL_H
#define B24_INBOX_SQL_H

enum b24_inbox_statement {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_SEEN,
    S_KEY_STATES,
    S_INSERT,
    S_PROMOTE,
    S_DROP_WAITING,
    S_DELETE,
    S_REMEMBER,
    S_RETRY,
    S_BURY,
    S_READY,
    S_CLAIM,
    S_RELEASE,
    S_NEXT,
    S_PRUNE,
    S_PRUNE_MARKS,
    S_KV_GET,
    S_KV_PUT,
    S_MARK,
    S_MARK_GET,
    S_CLAIM_NAME,
    S_COUNT
};

/* Creates the tables (idempotent), in WAL mode with synchronous=FULL. */
extern const char b24_inbox_schema[];
/* The statements, b24_inbox_sql[S_…]. */
extern const char *const b24_inbox_sql[S_COUNT];

#endif
