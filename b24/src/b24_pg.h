/* PostgreSQL connections of b24 (the inbox, the token store and `b24 inbox` on a database
 * named by a postgresql:// URL), through libpq.
 *
 * A URL is a libpq connection URI (postgresql://user:password@host:port/db?sslmode=...) or
 * postgres://; its password never appears in a log line or an error (b24_pg_mask). Each
 * connection sets application_name=b24 and a statement timeout, and is checked to be a
 * server of version 13 or later. */
#ifndef B24_PG_H
#define B24_PG_H

#include <stddef.h>

#include <libpq-fe.h>

/* Whether s names a PostgreSQL database (postgresql:// or postgres://). */
int b24_pg_is_url(const char *s);
/* url with its password (and any password= parameter) replaced by "***", into out. */
void b24_pg_mask(const char *url, char *out, size_t outlen);
/* A new connection to url, or NULL with why in err (the URL masked, libpq's message masked).
 * statement_timeout_ms 0: none. */
PGconn *b24_pg_connect(const char *url, int statement_timeout_ms, char *err, size_t errlen);
/* libpq's message of the connection's last error, one line, masked, into out. */
void b24_pg_error(PGconn *c, char *out, size_t outlen);
/* Runs sql (no parameters) and checks its status: 0, or -1 with the message in err. */
int b24_pg_exec(PGconn *c, const char *sql, char *err, size_t errlen);

/* Creates or migrates b24's tables (versioned, table b24_schema) in one transaction under an
 * advisory lock: 0, or -1 and why (a schema newer than this b24 is refused). */
int b24_pg_migrate(PGconn *c, char *err, size_t errlen);

#endif
