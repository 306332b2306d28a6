/* Structured logs on stderr: one write(2) per line, so lines from threads never interleave.
 * The line itself is the core's (b24_logline.c): the same format and masking as the library's. */
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "b24.h" /* b24_logline */
#include "b24_log.h"

static int json_format = 0;
static b24_level min_level = B24_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* Sets the format and the lowest level logged; -1 on an unknown name. */
int b24_log_configure(const char *format, const char *level)
{
    if (format) {
        if (strcmp(format, "json") == 0)
            json_format = 1;
        else if (strcmp(format, "logfmt") == 0)
            json_format = 0;
        else
            return -1;
    }
    if (level) {
        int found = -1;
        for (int i = 0; i < 4; i++)
            if (strcmp(level, level_names[i]) == 0)
                found = i;
        if (found < 0)
            return -1;
        min_level = (b24_level)found;
    }
    return 0;
}

/* Whether a line of this level would be written. */
int b24_log_enabled(b24_level level)
{
    return level >= min_level;
}

/* One line: msg and the NULL-terminated key/value pairs, masked, in one write(2). */
void b24_log(b24_level level, const char *msg, ...)
{
    if (level < min_level)
        return;
    b24_logline l;
    b24_logline_begin(&l, json_format, level_names[level], msg);
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (k == NULL)
            break;
        const char *v = va_arg(ap, const char *);
        b24_logline_field(&l, k, v ? v : "", v ? strlen(v) : 0);
    }
    va_end(ap);
    b24_logline_end(&l);
    ssize_t w = write(2, l.buf, l.len);
    (void)w;
}
