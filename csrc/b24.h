/* Internal interface of the bitrix24.core C module: the pure-C codecs (usable without Lua,
 * which is how the fuzz targets drive them) and the registration hooks of each area. */
#ifndef B24_H
#define B24_H

#include <stddef.h>
#include <stdint.h>

#include "b24_compat.h"

/* Everything declared here is internal to the core: hidden from the dynamic symbol table also
 * when a builder (luarocks' builtin type) cannot pass -fvisibility=hidden. The module's entry,
 * declared after the pop, is the one symbol a Lua loader sees. */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define B24_VERSION "0.1.0"

/* ---- arena: bump allocator in malloc'd chunks, freed all at once -------------------------- */
typedef struct b24_arena_chunk b24_arena_chunk;
typedef struct b24_arena {
    b24_arena_chunk *head;
    size_t total; /* bytes handed out by malloc, for the caller's own accounting */
} b24_arena;

void *b24_arena_alloc(b24_arena *a, size_t size);
void b24_arena_reset(b24_arena *a); /* keeps the first chunk for reuse */
void b24_arena_free(b24_arena *a);

/* ---- form (PHP parse_str) parse tree ------------------------------------------------------ */
typedef struct b24_form_array b24_form_array;

typedef struct b24_form_value {
    const char *str; /* the scalar, when arr is NULL */
    size_t len;
    b24_form_array *arr;
} b24_form_value;

typedef struct b24_form_entry {
    const char *key; /* NULL for an integer key that had no text (an append) */
    size_t key_len;
    int64_t ikey;
    int is_int;
    int32_t next; /* next entry in the same hash bucket, -1 at the end */
    uint32_t hash;
    b24_form_value value;
} b24_form_entry;

struct b24_form_array {
    b24_form_entry *entries; /* in insertion order */
    uint32_t count, cap;
    int32_t *buckets; /* NULL while the array is small enough for a linear scan */
    uint32_t nbuckets;
    int64_t next_free; /* PHP's nNextFreeElement; INT64_MIN until an integer key is inserted */
    int is_list;       /* keys are exactly 0..count-1 in insertion order */
};

typedef struct b24_form_limits {
    size_t max_depth, max_pairs, max_size;
    /* only: when set, the pairs whose top-level name (as parse_str reads it) is not these
     * only_len bytes are counted and then skipped, so the tree holds root[only] exactly as the
     * whole parse gives it, at the cost of that subtree alone (a token check's pre-scan) */
    const char *only;
    size_t only_len;
} b24_form_limits;

#define B24_FORM_MAX_DEPTH 64
#define B24_FORM_MAX_PAIRS 10000
#define B24_FORM_MAX_SIZE (1024 * 1024)
#define B24_FORM_DEPTH_CAP 1000 /* a configured depth above this is refused: C recursion */

typedef enum {
    B24_FORM_OK = 0,
    B24_FORM_TOO_LARGE,
    B24_FORM_TOO_MANY,
    B24_FORM_TOO_DEEP,
    B24_FORM_NO_MEMORY
} b24_form_status;

/* Parses s as PHP parse_str does into a tree allocated in arena; *root is set on success. */
b24_form_status b24_form_parse(const char *s, size_t len, const b24_form_limits *limits,
                               b24_arena *arena, b24_form_array **root);

/* ---- JSON (RFC 8259) -----------------------------------------------------------------------
 * In plain C (usable without a Lua state): b24_json_scan (b24_json_scan.c) validates a whole body
 * and applies the limits before anything is built; what it learns (one record per container)
 * lets b24_json_decode.c build Lua tables of the right size in one more pass over text it no
 * longer needs to check, with the readers of b24_json_string.c and b24_json_number.c. Form mode
 * (a JSON body re-read as PHP would read it as a form, see b24_json.c) walks the same text in
 * form_encode's order through b24_json_form_walk (b24_json_walk.c), and b24_json_form.c builds
 * its tables. The Lua side (the contract, the scratch, registration: b24_json.c) comes last. */
typedef struct b24_json_limits {
    size_t max_depth, max_pairs, max_size; /* the form codec's defaults, B24_FORM_MAX_* */
    const char *only; /* form mode: b24_form_limits' only, for the top-level keys */
    size_t only_len;
} b24_json_limits;

typedef enum {
    B24_JSON_OK = 0,
    B24_JSON_MALFORMED,
    B24_JSON_TOO_LARGE,
    B24_JSON_TOO_MANY,
    B24_JSON_TOO_DEEP,
    B24_JSON_NO_MEMORY
} b24_json_status;

/* One container of a form-mode scan, in the order containers open: only those holding a value
 * that is not null somewhere below (the others are skipped as text). Offsets into the body. */
typedef struct b24_json_container {
    uint32_t start; /* its '{' or '[' */
    uint32_t end;   /* just past its '}' or ']' */
    uint32_t count; /* members or elements */
    uint32_t after; /* the record that follows its subtree */
} b24_json_container;

typedef struct b24_json_doc {
    const char *text; /* the body, followed by a NUL (a Lua string's) */
    size_t len;
    uint32_t *counts;               /* plain mode: members or elements of each container */
    b24_json_container *containers; /* form mode */
    size_t ncontainers;             /* counts or containers, in the order containers open */
    void *records;       /* where counts or containers live: the caller's buffer of records_size */
    size_t records_size; /* bytes (or NULL, 0), grown with realloc; the caller frees it */
    size_t members;      /* form mode: the most object members open at once (the walk's stack) */
    size_t depth;        /* the deepest nesting of containers */
    size_t pairs;        /* members and elements; in form mode the values that are not null */
    size_t longest_escaped; /* bytes of the longest string holding an escape: a decode buffer */
    int form;
    int unclean_keys; /* form mode: a key parse_str would read as brackets, a cut or an append */
    size_t offset;    /* B24_JSON_MALFORMED: the offending byte (0-based) and what is wrong */
    const char *why;
} b24_json_doc;

/* Scans text[0..len) (text[len] must be readable and not part of a number: a Lua string's NUL)
 * into doc: its records in doc->records (set it and records_size before the call; the buffer
 * may move, and is the caller's to free on every outcome), the rest in arena. In form mode the
 * pairs are the values that are not null, depth counts as form_decode counts brackets, and the
 * top level must be an object or an array. */
b24_json_status b24_json_scan(const char *text, size_t len, const b24_json_limits *limits, int form,
                              b24_arena *arena, b24_json_doc *doc);

/* Past the JSON whitespace at p, in NUL-terminated text (the scanned body) */
static inline const char *b24_json_skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
        p++;
    return p;
}

/* strings (b24_json_string.c) */
/* The string whose opening quote is at p, in a scanned body: its bytes in place when it holds
 * no escape, else decoded into buf (room for its raw length); *next is past the closing quote. */
const char *b24_json_string(const char *p, const char **next, char *buf, size_t *len);
/* Length of the well-formed UTF-8 sequence at p (before end), 0 when there is none. */
size_t b24_json_utf8_length(const unsigned char *p, const unsigned char *end);
/* The four hex digits at p (before end) as a number, or -1 when they are not four hex digits.
 * Inline, as b24_json_escape: the scan and the string reader run them for every escape. */
static inline long b24_json_hex4(const unsigned char *p, const unsigned char *end)
{
    if (end - p < 4)
        return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned digit = p[i] - (unsigned)'0', letter = (p[i] | 0x20u) - (unsigned)'a';
        if (digit < 10)
            v = v << 4 | (long)digit;
        else if (letter < 6)
            v = v << 4 | (long)(letter + 10);
        else
            return -1;
    }
    return v;
}
/* The code point of the escape whose backslash is at *p (already checked: the scan's), a \u
 * surrogate pair as one; *p is moved past it. */
static inline unsigned long b24_json_escape(const unsigned char **p)
{
    const unsigned char *q = *p;
    if (q[1] == 'u') {
        unsigned long cp = (unsigned long)b24_json_hex4(q + 2, q + 6);
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* the scan checked that a low surrogate follows */
            unsigned long lo = (unsigned long)b24_json_hex4(q + 8, q + 12);
            *p = q + 12;
            return 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        *p = q + 6;
        return cp;
    }
    *p = q + 2;
    switch (q[1]) {
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    default: /* '"', '\\', '/' */
        return q[1];
    }
}

/* numbers (b24_json_number.c): how JSON and forms read and write them */
/* The number at p, in a scanned body: 1 and *i when it is written as an integer that fits in
 * int64, else 0 and *d (correctly rounded); *next is past it. */
int b24_json_number(const char *p, const char **next, int64_t *i, double *d);
/* Decimal text of v (out: 21 bytes or more); returns the length. */
size_t b24_json_format_integer(int64_t v, char *out);
/* A finite double as form_encode writes it (out: 32 bytes or more): integral values below 2^63
 * as integers, others as the shortest of 15, 16 or 17 significant digits that reads back the
 * same, always with '.' as the decimal point. */
size_t b24_json_format_double(double d, char *out);

/* form mode (b24_json_walk.c) */
/* What a JSON body becomes as a form, in http_build_query order: key then scalar, or key then
 * open .. close; null and containers without values produce nothing. Scalars arrive as the text
 * form_encode writes (true "1", false "0"). A nonzero return (a b24_json_status) stops the walk. */
typedef struct b24_json_form_sink {
    int (*open)(void *ctx, int is_array, size_t count);
    int (*key)(void *ctx, const char *key, size_t len, int64_t index); /* index -1: object key */
    int (*scalar)(void *ctx, const char *text, size_t len);
    int (*close)(void *ctx);
} b24_json_form_sink;

b24_json_status b24_json_form_walk(const b24_json_doc *doc, b24_arena *arena,
                                   const b24_json_form_sink *sink, void *ctx);
/* The form body form_encode would write for doc (brackets left unencoded), at most budget
 * bytes (B24_JSON_TOO_LARGE past that), in arena: what form mode re-reads when keys hold
 * brackets or NULs. */
b24_json_status b24_json_form_body(const b24_json_doc *doc, b24_arena *arena, size_t budget,
                                   char **body, size_t *len);

/* The Lua side: json_decode and json_encode (their contract above b24_json.c) */
#if LUA_VERSION_NUM >= 503
#define B24_JSON_INDEX(i) ((lua_Integer)(i)) /* a sequence index for lua_rawseti/lua_rawgeti */
#else
#define B24_JSON_INDEX(i) ((int)(i))
#endif

/* The Lua number at idx as form_encode and json_encode write it (out: 32 bytes or more; in
 * b24_json_number.c): Lua 5.4 integers exactly, floats by b24_json_format_double, whatever
 * LC_NUMERIC says; 0 for NaN and infinities, which both refuse. */
size_t b24_json_format_number(lua_State *L, int idx, char *out);

/* Per-state working memory of both (b24_json.c), reused between calls so a small body costs no
 * malloc; json_decode and json_encode hold it in upvalue 1. */
typedef struct b24_json_scratch {
    b24_arena arena;
    char *out; /* the encoder's output */
    size_t out_len, out_cap;
    struct b24_json_entry *entries; /* the encoder's object keys: a segment per table written */
    size_t entries_len, entries_cap;
    void *records; /* the decoder's scan records (b24_json_doc) */
    size_t records_size;
    int busy; /* a finalizer may call us while a call is under way */
} b24_json_scratch;

/* The shared scratch from upvalue 1, or a fresh one pushed on the stack when it is busy. */
b24_json_scratch *b24_json_scratch_acquire(lua_State *L);
/* Ends a call: the arena back to one small chunk, no huge buffer kept. */
void b24_json_scratch_release(b24_json_scratch *s);
/* The limit opts[name] at t: def when absent, else a whole number from 1 (to cap when cap is
 * not 0); raises otherwise. The one reader of limits for form_decode, json_decode, json_encode. */
size_t b24_json_limit(lua_State *L, int t, const char *name, size_t def, size_t cap);

/* A table being filled in form mode (b24_json_form.c) */
typedef struct b24_json_level {
    int is_array, list; /* list: a sequence so far (arrays) or keys "0", "1", … so far (objects) */
    lua_Integer values;
    const char *key; /* the key of the value under way */
    size_t key_len;
    int64_t index;
} b24_json_level;

/* One json_decode building its value (b24_json_decode.c; form mode in b24_json_form.c) */
typedef struct b24_json_builder {
    lua_State *L;
    const b24_json_doc *doc;
    b24_arena *arena;
    uint32_t record; /* the next container record */
    char *buf;       /* strings with escapes decode here */
    b24_json_level *levels;
    size_t depth;
    b24_form_array *tree; /* form mode through the form parser */
    const char *only;     /* form mode: build root[only] alone (b24_form_limits' only) */
    size_t only_len;
    size_t skip;         /* form mode under only: 1 a value to skip, more inside it */
    size_t budget, heap; /* the Lua memory the value may take; the heap when it began */
    unsigned values;     /* values built: the heap is looked at every 64 */
    int watch;           /* whether the budget could be reached at all */
    int over_budget;
} b24_json_builder;

/* One more value built: raises when the value has grown past its memory budget. */
void b24_json_count_value(b24_json_builder *b);
/* [-0, +1, m] form mode's value for b->doc: b->tree as form_decode pushes it when set, else the
 * walk of the body into tables of form_decode's shape. */
void b24_json_form_push(b24_json_builder *b);
/* The form parse tree of doc's form body (what form mode reads when keys hold brackets or NULs),
 * at most budget bytes of body, under lim, in arena. */
b24_json_status b24_json_form_tree(const b24_json_doc *doc, const b24_json_limits *lim,
                                   b24_arena *arena, size_t budget, b24_form_array **tree);
/* [-0, +1] builds b's value (b->doc's, or b->tree when set) under lua_pcall with the collector
 * paused while the budget is watched, the null value at null_index; returns lua_pcall's status
 * (the error on the stack when not LUA_OK: b->over_budget tells a refusal from a failure). */
int b24_json_build(lua_State *L, b24_json_builder *b, size_t len, int null_index);
int b24_json_decode(lua_State *L); /* json_decode(s [, opts]) -> value | nil, message, kind */
int b24_json_encode(lua_State *L); /* json_encode(value [, opts]) -> string */

/* ---- codecs --------------------------------------------------------------------------------- */
size_t b24_hex_encode(const unsigned char *in, size_t len, char *out); /* out: 2*len bytes */
/* Returns 0 and the decoded length, or -1 with *bad at the offending offset. */
int b24_hex_decode(const char *in, size_t len, unsigned char *out, size_t *outlen, size_t *bad);

#define B24_BASE64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4)
size_t b24_base64_encode(const unsigned char *in, size_t len, int url, char *out);
/* Accepts padded and unpadded input of the chosen alphabet; out needs 3*len/4 + 3 bytes. */
int b24_base64_decode(const char *in, size_t len, int url, unsigned char *out, size_t *outlen,
                      const char **why);

/* ---- log lines and masking (b24_logline.c), shared by the library and the b24 program --- */
/* Copies s into out (size n) with webhook codes, tokens and secrets replaced by "***"; returns
 * the length written (out is always terminated). */
size_t b24_mask(const char *s, size_t len, char *out, size_t n);

typedef struct b24_logline {
    char buf[8192];
    size_t len;
    int json, fields, full; /* full: a piece did not fit, the rest of the line is dropped */
} b24_logline;
/* Starts a line (logfmt, or JSON when json) with the time now, level and msg. */
void b24_logline_begin(b24_logline *l, int json, const char *level, const char *msg);
/* Adds key=value; the value is masked unless the key is one of the host's own numbers. */
void b24_logline_field(b24_logline *l, const char *key, const char *value, size_t len);
void b24_logline_end(b24_logline *l); /* closes the line with "\n" */

/* ---- time (b24_time.c) ------------------------------------------------------------------ */
double b24_time_now(void); /* monotonic seconds: the one clock of the library and of b24 */
/* The host's answer to "must the blocking call under way on this thread end now?" (b24 serve:
 * its Lua call ran past its deadline). core.sleep and every HTTP transfer ask it; NULL outside a
 * host, where nothing ends them early. */
extern int (*b24_interrupted)(void);

/* ---- registration of each area into the module table on the top of the stack ----------- */
void b24_form_open(lua_State *L);
void b24_crypto_open(lua_State *L);
void b24_http_open(lua_State *L);
void b24_time_open(lua_State *L);
void b24_logline_open(lua_State *L);
void b24_json_open(lua_State *L);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

/* The module's entry (b24_core.c); b24 links the core in and preloads it. */
int luaopen_bitrix24_core(lua_State *L);

#endif /* B24_H */
