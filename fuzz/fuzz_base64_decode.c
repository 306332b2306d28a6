/* libFuzzer target for b24_base64_decode / b24_base64_encode, both alphabets. A reference
 * validator decides whether the input is canonical base64 (padding optional, zero spare
 * bits); the decoder must agree, stay inside its 3*len/4+3 output bound, and on success the
 * canonical encoding of the result must equal the input up to padding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b24.h"
#include "fuzz.h"

static int sextet(unsigned char c, int url)
{
    const char *abc = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                          : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (c == 0)
        return -1;
    const char *p = strchr(abc, c);
    return p ? (int)(p - abc) : -1;
}

/* The reference: 1 when in[0..len) is accepted, with the number of data characters. */
static int reference_valid(const unsigned char *in, size_t len, int url, size_t *data_len)
{
    size_t pad = 0;
    while (pad < len && in[len - 1 - pad] == '=')
        pad++;
    size_t n = len - pad;
    if (pad > 2)
        return 0;
    if (pad && (len % 4 != 0 || n % 4 != 4 - pad))
        return 0;
    if (n % 4 == 1)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (sextet(in[i], url) < 0)
            return 0;
    if (n % 4) { /* the spare low bits of the last character must be zero */
        int last = sextet(in[n - 1], url);
        int spare = n % 4 == 2 ? 4 : 2;
        if (last & ((1 << spare) - 1))
            return 0;
    }
    *data_len = n;
    return 1;
}

static void one_alphabet(const uint8_t *data, size_t size, int url)
{
    const char *in = (const char *)data;
    /* the Lua binding allocates len/4*3+3, which is never more than 3*len/4+3: use the
     * smaller size exactly, so ASan flags a write past either bound */
    size_t bound = size / 4 * 3 + 3;
    unsigned char *out = malloc(bound);
    CHECK(out != NULL);
    size_t outlen = (size_t)-1, n = 0;
    const char *why = NULL;
    int valid = reference_valid(data, size, url, &n);
    int rc = b24_base64_decode(in, size, url, out, &outlen, &why);
    if (!valid) {
        CHECK(rc == -1);
        CHECK(why != NULL && why[0] != '\0');
        free(out);
        return;
    }
    CHECK(rc == 0);
    CHECK(outlen == n * 6 / 8);
    CHECK(outlen <= 3 * size / 4 + 3 && outlen <= bound);

    /* canonical re-encoding equals the input, modulo padding */
    char *enc = malloc(B24_BASE64_ENCODED_LEN(outlen) + 1);
    CHECK(enc != NULL);
    size_t elen = b24_base64_encode(out, outlen, url, enc);
    size_t unpadded = elen;
    while (unpadded && enc[unpadded - 1] == '=')
        unpadded--;
    if (url)
        CHECK(elen == unpadded); /* the url-safe encoder writes no padding */
    else
        CHECK(elen == B24_BASE64_ENCODED_LEN(outlen) && elen % 4 == 0);
    CHECK(unpadded == n);
    CHECK(memcmp(enc, in, n) == 0);
    for (size_t i = n; i < size; i++)
        CHECK(in[i] == '=');

    /* decode(encode(x)) == x */
    unsigned char *again = malloc(elen / 4 * 3 + 3);
    CHECK(again != NULL);
    size_t alen = 0;
    CHECK(b24_base64_decode(enc, elen, url, again, &alen, &why) == 0);
    CHECK(alen == outlen && (outlen == 0 || memcmp(again, out, outlen) == 0));
    free(again);
    free(enc);
    free(out);
}

/* Arbitrary bytes through the encoder and back. */
static void encode_round_trip(const uint8_t *data, size_t size, int url)
{
    size_t cap = B24_BASE64_ENCODED_LEN(size);
    char *enc = malloc(cap ? cap : 1);
    CHECK(enc != NULL);
    size_t elen = b24_base64_encode(data, size, url, enc);
    CHECK(elen <= cap);
    CHECK(url ? elen == (size * 4 + 2) / 3 : elen == cap);
    for (size_t i = 0; i < elen; i++)
        CHECK(sextet((unsigned char)enc[i], url) >= 0 || (!url && enc[i] == '='));
    unsigned char *dec = malloc(elen / 4 * 3 + 3);
    CHECK(dec != NULL);
    size_t dlen = 0;
    const char *why = NULL;
    CHECK(b24_base64_decode(enc, elen, url, dec, &dlen, &why) == 0);
    CHECK(dlen == size && (size == 0 || memcmp(dec, data, size) == 0));
    free(dec);
    free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int url = 0; url <= 1; url++) {
        one_alphabet(data, size, url);
        encode_round_trip(data, size, url);
    }
    return 0;
}
