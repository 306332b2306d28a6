/* libFuzzer target for b24_hex_decode / b24_hex_encode: the decoder succeeds exactly when the
 * input has an even length and only hex digits, reports the first bad offset otherwise, and
 * round-trips through the (lower-case) encoder. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"
#include "fuzz.h"

static int is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;

    /* the reference answer */
    size_t first_bad = size;
    for (size_t i = 0; i < size; i++)
        if (!is_hex(data[i])) {
            first_bad = i;
            break;
        }
    int valid = size % 2 == 0 && first_bad == size;

    /* exactly size/2 bytes (at least 1 so malloc(0) is not in play): ASan sees any overrun */
    unsigned char *out = malloc(size / 2 ? size / 2 : 1);
    CHECK(out != NULL);
    size_t outlen = (size_t)-1, bad = (size_t)-1;
    int rc = b24_hex_decode(in, size, out, &outlen, &bad);
    if (!valid) {
        CHECK(rc == -1);
        if (size % 2)
            CHECK(bad == size); /* odd length is reported as offset == len */
        else
            CHECK(bad == first_bad);
    } else {
        CHECK(rc == 0);
        CHECK(outlen == size / 2);
        char *again = malloc(2 * outlen + 1);
        CHECK(again != NULL);
        CHECK(b24_hex_encode(out, outlen, again) == size);
        for (size_t i = 0; i < size; i++)
            CHECK(again[i] == (char)lower(data[i]));
        free(again);
    }
    free(out);

    /* encode any bytes, then decode: the identity */
    char *enc = malloc(2 * size + 1);
    unsigned char *dec = malloc(size ? size : 1);
    CHECK(enc != NULL && dec != NULL);
    size_t elen = b24_hex_encode(data, size, enc);
    CHECK(elen == 2 * size);
    for (size_t i = 0; i < elen; i++)
        CHECK((enc[i] >= '0' && enc[i] <= '9') || (enc[i] >= 'a' && enc[i] <= 'f'));
    size_t dlen = 0;
    CHECK(b24_hex_decode(enc, elen, dec, &dlen, &bad) == 0);
    CHECK(dlen == size);
    CHECK(size == 0 || memcmp(dec, data, size) == 0);
    free(enc);
    free(dec);
    return 0;
}
