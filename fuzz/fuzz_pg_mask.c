/* libFuzzer target for b24_pg_mask, which every PostgreSQL URL goes through before a log line or
 * an error names it: it ends, never writes past its buffer (sized by the first input byte, down to
 * 1), always terminates the output, and when the output had room for the whole URL, the password
 * of a user:password@ part does not appear in it, nor the value of a password= parameter. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24_pg.h"
#include "fuzz.h"

/* Whether needle (len bytes) occurs in hay. */
static int contains(const char *hay, const char *needle, size_t len)
{
    for (const char *p = hay; *p; p++)
        if (strncmp(p, needle, len) == 0)
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t n = (size_t)data[0] * 37 % 4096 + 1; /* 1 … 4096 bytes of room */
    char *url = malloc(size);                   /* the rest, as a C string */
    CHECK(url != NULL);
    memcpy(url, data + 1, size - 1);
    url[size - 1] = '\0';
    size_t len = strlen(url);
    char *out = malloc(n); /* exactly n: ASan sees any overrun */
    CHECK(out != NULL);
    b24_pg_mask(url, out, n);
    size_t o = strlen(out);
    CHECK(o < n);
    if (n > len + 16) { /* room for it all */
        const char *scheme = strstr(url, "://");
        if (scheme) {
            const char *auth = scheme + 3;
            const char *end = auth + strcspn(auth, "/?#");
            const char *at = NULL;
            for (const char *q = auth; q < end; q++)
                if (*q == '@')
                    at = q;
            const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
            /* a password of 6+ bytes without '*' (the mask's own) that does not occur in the
             * rest of the URL is gone */
            if (colon && at - colon - 1 >= 6 && !memchr(colon + 1, '*', (size_t)(at - colon - 1))) {
                size_t plen = (size_t)(at - colon - 1);
                char *rest = malloc(len + 1);
                CHECK(rest != NULL);
                memcpy(rest, url, (size_t)(colon - url) + 1);
                strcpy(rest + (colon - url) + 1, at);
                if (!contains(rest, colon + 1, plen) && !contains(out, "***", 3))
                    CHECK(0); /* nothing was masked */
                if (!contains(rest, colon + 1, plen))
                    CHECK(!contains(out, colon + 1, plen));
                free(rest);
            }
        }
    }
    free(out);
    free(url);
    return 0;
}
