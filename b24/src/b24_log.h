/* The b24 program's log: one line per call on stderr, logfmt or JSON, secrets masked. */
#ifndef B24_LOG_H
#define B24_LOG_H

typedef enum { B24_DEBUG, B24_INFO, B24_WARN, B24_ERROR } b24_level;

/* Sets the format (logfmt, json) and the lowest level logged; NULL keeps one; -1 on an
 * unknown name. */
int b24_log_configure(const char *format, const char *level);
/* Whether a line of this level would be written. */
int b24_log_enabled(b24_level level);
/* Logs msg with key/value string pairs, terminated by NULL. Values are masked. */
void b24_log(b24_level level, const char *msg, ...);
/* Writes the lines queued for the writer thread now (before an _exit). */
void b24_log_flush(void);

#endif
