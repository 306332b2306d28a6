/* libFuzzer target for b24_mask, which scans every logged value (URLs, error messages) for
 * webhook codes and secrets: it ends, never writes past its buffer (sized by the first input
 * byte, down to 1), always terminates the output, never grows it past the input plus what the
 * masks add, and hides the code of any /rest/<digits>/<code>/ it copies whole. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t n = (size_t)data[0] * 37 % 8192 + 1; /* 1 … 8192 bytes of room */
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    char *out = malloc(n); /* exactly n: ASan sees any overrun */
    CHECK(out != NULL);
    size_t o = b24_mask(in, len, out, n);
    CHECK(o < n);
    CHECK(out[o] == '\0');
    CHECK(o <= len + 3 * (len / 4 + 1)); /* each mask replaces >= 1 byte by "***" */
    /* a whole-masked URL: the output holds no run "/rest/<digits>/<alnum>" of the input's
     * secret-looking code when it had room for all of the input */
    if (n > 4 * len + 16) {
        const char *p = out;
        while ((p = strstr(p, "/rest/")) != NULL) {
            const char *q = p + 6;
            while (*q >= '0' && *q <= '9')
                q++;
            if (q > p + 6 && *q == '/')
                CHECK(q[1] == '*' ||
                      !((q[1] >= 'a' && q[1] <= 'z') || (q[1] >= 'A' && q[1] <= 'Z') ||
                        (q[1] >= '0' && q[1] <= '9')));
            p += 6;
        }
    }
    free(out);
    return 0;
}
