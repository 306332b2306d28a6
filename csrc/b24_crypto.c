/* Digests, MACs, constant-time comparison and the hex/base64 codecs. */
#include <pthread.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "b24.h"

/* ---- hex --------------------------------------------------------------------------------- */

size_t b24_hex_encode(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    return 2 * len;
}

static int nibble(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int b24_hex_decode(const char *in, size_t len, unsigned char *out, size_t *outlen, size_t *bad)
{
    if (len % 2) {
        *bad = len;
        return -1;
    }
    for (size_t i = 0; i < len; i += 2) {
        int hi = nibble((unsigned char)in[i]), lo = nibble((unsigned char)in[i + 1]);
        if (hi < 0 || lo < 0) {
            *bad = hi < 0 ? i : i + 1;
            return -1;
        }
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    *outlen = len / 2;
    return 0;
}

/* ---- base64 (RFC 4648 §4 standard with padding, §5 url-safe without) ---------------------- */

static const char STD[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t b24_base64_encode(const unsigned char *in, size_t len, int url, char *out)
{
    const char *abc = url ? URL : STD;
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = abc[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        if (i + 1 < len)
            out[o++] = abc[(v >> 6) & 63];
        if (!url) {
            if (i + 1 >= len)
                out[o++] = '=';
            out[o++] = '=';
        }
    }
    return o;
}

static int sextet(unsigned char c, int url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

int b24_base64_decode(const char *in, size_t len, int url, unsigned char *out, size_t *outlen,
                      const char **why)
{
    size_t pad = 0;
    while (pad < 2 && pad < len && in[len - 1 - pad] == '=')
        pad++;
    size_t data = len - pad;
    if (pad && (len % 4 != 0 || data % 4 != 4 - pad)) {
        *why = "wrong padding";
        return -1;
    }
    if (data % 4 == 1) {
        *why = "truncated input";
        return -1;
    }
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < data; i++) {
        int v = sextet((unsigned char)in[i], url);
        if (v < 0) {
            *why = in[i] == '=' ? "wrong padding" : "character outside the alphabet";
            return -1;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) { /* a canonical encoder leaves the spare bits zero */
        *why = "non-zero trailing bits";
        return -1;
    }
    *outlen = o;
    return 0;
}

/* ---- Lua bindings -------------------------------------------------------------------------- */

/* [-0, +1, m] pushes raw bytes in the requested format ("hex" by default). */
static int push_digest(lua_State *L, const unsigned char *md, size_t len, int fmt_arg)
{
    static const char *const fmts[] = {"hex", "base64", "raw", NULL};
    int fmt = luaL_checkoption(L, fmt_arg, "hex", fmts);
    char out[2 * EVP_MAX_MD_SIZE + 4];
    if (fmt == 0)
        lua_pushlstring(L, out, b24_hex_encode(md, len, out));
    else if (fmt == 1)
        lua_pushlstring(L, out, b24_base64_encode(md, len, 0, out));
    else
        lua_pushlstring(L, (const char *)md, len);
    return 1;
}

/* hmac_sha256(key, data [, "hex"|"base64"|"raw"]) -> string */
static int l_hmac_sha256(lua_State *L)
{
    size_t klen, dlen;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *data = luaL_checklstring(L, 2, &dlen);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    /* HMAC() needs a non-NULL key pointer even for an empty key */
    if (HMAC(EVP_sha256(), klen ? key : "", (int)klen, (const unsigned char *)data, dlen, md,
             &mdlen) == NULL) {
        ERR_clear_error();
        return luaL_error(L, "HMAC-SHA256 failed in OpenSSL");
    }
    return push_digest(L, md, mdlen, 3);
}

/* SHA-256 fetched from the default provider once for every Lua state that has the module open.
 * OpenSSL 3's one-shot SHA256() fetches the algorithm on every call, under the provider store's
 * lock: a router digests the token of every delivery, and with two server threads that fetch
 * was most of libcrypto's share of a request (docs/performance.md). A state takes its hold at
 * its first digest (an idle server loads no provider), and the last state to close
 * frees it (a static alone would leak it once the library is unloaded). NULL when the fetch
 * failed: SHA256() then. */
#define SHA256_HOLD "bitrix24.core sha256" /* the registry's key of a state's hold */
static pthread_mutex_t sha256_lock = PTHREAD_MUTEX_INITIALIZER;
static EVP_MD *sha256_md;
static unsigned sha256_users;

static int sha256_release(lua_State *L)
{
    (void)L;
    pthread_mutex_lock(&sha256_lock);
    if (sha256_users > 0 && --sha256_users == 0) {
        EVP_MD_free(sha256_md);
        sha256_md = NULL;
    }
    pthread_mutex_unlock(&sha256_lock);
    return 0;
}

/* [-0, +0] this state's hold on the fetched SHA-256, released when the state closes (the hold's
 * userdata is made first: a memory error leaves the count as it was) */
static void sha256_hold(lua_State *L)
{
    lua_newuserdatauv(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, sha256_release);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    pthread_mutex_lock(&sha256_lock);
    if (sha256_users++ == 0)
        sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    pthread_mutex_unlock(&sha256_lock);
    lua_setfield(L, LUA_REGISTRYINDEX, SHA256_HOLD);
}

/* sha256(data [, "hex"|"base64"|"raw"]) -> string */
static int l_sha256(lua_State *L)
{
    size_t dlen;
    const char *data = luaL_checklstring(L, 1, &dlen);
    unsigned char md[SHA256_DIGEST_LENGTH];
    unsigned int mdlen = 0;
    lua_getfield(L, LUA_REGISTRYINDEX, SHA256_HOLD);
    if (lua_isnil(L, -1)) /* the first digest of this state: OpenSSL loads its provider now */
        sha256_hold(L);
    lua_pop(L, 1);
    if (sha256_md == NULL || !EVP_Digest(data, dlen, md, &mdlen, sha256_md, NULL))
        SHA256((const unsigned char *)data, dlen, md);
    return push_digest(L, md, sizeof md, 2);
}

/* equal(a, b) -> boolean, in time that depends only on the length when lengths match */
static int l_equal(lua_State *L)
{
    size_t alen, blen;
    const char *a = luaL_checklstring(L, 1, &alen);
    const char *b = luaL_checklstring(L, 2, &blen);
    lua_pushboolean(L, alen == blen && CRYPTO_memcmp(a, b, alen) == 0);
    return 1;
}

static int l_hex_encode(lua_State *L)
{
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t done = 0; done < len;) {
        size_t n = (len - done) < LUAL_BUFFERSIZE / 2 ? (len - done) : LUAL_BUFFERSIZE / 2;
        char *p = luaL_prepbuffer(&b);
        luaL_addsize(&b, b24_hex_encode(s + done, n, p));
        done += n;
    }
    luaL_pushresult(&b);
    return 1;
}

/* hex_decode(s) -> bytes | nil, message */
static int l_hex_decode(lua_State *L)
{
    size_t len, outlen, bad;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char *out = lua_newuserdatauv(L, len / 2 + 1, 0);
    if (b24_hex_decode(s, len, out, &outlen, &bad)) {
        lua_pushnil(L);
        if (bad == len)
            lua_pushliteral(L, "invalid hex: odd number of digits");
        else
            lua_pushfstring(L, "invalid hex: not a hex digit at offset %d", (int)bad);
        return 2;
    }
    lua_pushlstring(L, (const char *)out, outlen);
    return 1;
}

static int alphabet_arg(lua_State *L, int i)
{
    static const char *const names[] = {"std", "url", NULL};
    return luaL_checkoption(L, i, "std", names);
}

/* base64_encode(s [, "std"|"url"]) -> standard padded, or url-safe unpadded */
static int l_base64_encode(lua_State *L)
{
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    int url = alphabet_arg(L, 2);
    if (len > ((size_t)-1) / 2)
        return luaL_error(L, "input too large to base64-encode");
    char *out = lua_newuserdatauv(L, B24_BASE64_ENCODED_LEN(len) + 1, 0);
    lua_pushlstring(L, out, b24_base64_encode(s, len, url, out));
    return 1;
}

/* base64_decode(s [, "std"|"url"]) -> bytes | nil, message; padding optional */
static int l_base64_decode(lua_State *L)
{
    size_t len, outlen;
    const char *s = luaL_checklstring(L, 1, &len);
    int url = alphabet_arg(L, 2);
    const char *why = NULL;
    unsigned char *out = lua_newuserdatauv(L, len / 4 * 3 + 3, 0);
    if (b24_base64_decode(s, len, url, out, &outlen, &why)) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid base64: %s", why);
        return 2;
    }
    lua_pushlstring(L, (const char *)out, outlen);
    return 1;
}

/* random_bytes(n [, "hex"]) -> n bytes from OpenSSL's CSPRNG (1 <= n <= 256), raw or as hex;
 * nil, err when the generator fails (never a weak fallback) */
static int l_random_bytes(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    static const char *const formats[] = {"raw", "hex", NULL};
    int hex = luaL_checkoption(L, 2, "raw", formats) == 1;
    unsigned char buf[256];
    char out[512];
    luaL_argcheck(L, n >= 1 && n <= 256, 1, "1 to 256 bytes expected");
    if (RAND_bytes(buf, (int)n) != 1) {
        ERR_clear_error();
        lua_pushnil(L);
        lua_pushstring(L, "random_bytes: the OpenSSL generator failed");
        return 2;
    }
    if (hex) {
        static const char digits[] = "0123456789abcdef";
        for (lua_Integer i = 0; i < n; i++) {
            out[2 * i] = digits[buf[i] >> 4];
            out[2 * i + 1] = digits[buf[i] & 15];
        }
        lua_pushlstring(L, out, (size_t)n * 2);
    } else {
        lua_pushlstring(L, (const char *)buf, (size_t)n);
    }
    OPENSSL_cleanse(buf, sizeof buf);
    return 1;
}

static const luaL_Reg crypto_funcs[] = {
    {"random_bytes", l_random_bytes},
    {"hmac_sha256", l_hmac_sha256},
    {"sha256", l_sha256},
    {"equal", l_equal},
    {"hex_encode", l_hex_encode},
    {"hex_decode", l_hex_decode},
    {"base64_encode", l_base64_encode},
    {"base64_decode", l_base64_decode},
    {NULL, NULL},
};

void b24_crypto_open(lua_State *L)
{
    luaL_setfuncs(L, crypto_funcs, 0);
}
