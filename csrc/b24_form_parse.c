/* PHP parse_str semantics (main/php_variables.c, php_register_variable_ex) in plain C.
 * The tree lives in an arena; keys and values point into one decoded copy of the input.
 * Deliberate differences from PHP: '.' and ' ' in top-level names are kept (PHP turns them
 * into '_'), and exceeding a limit fails the whole parse instead of dropping fields. */
#include <string.h>

#include "b24.h"

#define LINEAR_MAX 8 /* arrays up to this size are searched linearly */

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* php_url_decode: '+' is a space, %XX a byte, any other '%' stays. Returns the length. */
static size_t url_decode(const char *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '+') {
            out[o++] = ' ';
        } else if (c == '%' && i + 2 < len && hexval((unsigned char)in[i + 1]) >= 0 &&
                   hexval((unsigned char)in[i + 2]) >= 0) {
            out[o++] =
                (char)(hexval((unsigned char)in[i + 1]) * 16 + hexval((unsigned char)in[i + 2]));
            i += 2;
        } else {
            out[o++] = c;
        }
    }
    return o;
}

/* ZEND_HANDLE_NUMERIC_STR: "0", or -?[1-9][0-9]* within [-2^63, 2^63-1]. */
static int numeric_key(const char *s, size_t len, int64_t *out)
{
    const char *p = s, *end = s + len;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p == end || *p < '0' || *p > '9')
        return 0;
    if (*p == '0')
        return (end - p == 1 && !neg) ? (*out = 0, 1) : 0;
    if (end - p > 19)
        return 0;
    uint64_t v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > (uint64_t)INT64_MAX + neg) /* PHP takes ZEND_LONG_MIN itself as an integer */
        return 0;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v; /* two's complement, no signed overflow */
    return 1;
}

static uint32_t hash_bytes(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static uint32_t hash_int(int64_t k)
{
    uint64_t x = (uint64_t)k * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(x >> 32);
}

typedef struct key {
    const char *s;
    size_t len;
    int64_t i;
    int is_int;
    uint32_t hash;
} key;

static void make_key(key *k, const char *s, size_t len)
{
    k->s = s;
    k->len = len;
    k->is_int = numeric_key(s, len, &k->i);
    k->hash = k->is_int ? hash_int(k->i) : hash_bytes(s, len);
}

static int same_key(const b24_form_entry *e, const key *k)
{
    if (e->hash != k->hash || e->is_int != k->is_int)
        return 0;
    if (k->is_int)
        return e->ikey == k->i;
    return e->key_len == k->len && memcmp(e->key, k->s, k->len) == 0;
}

static b24_form_array *new_array(b24_arena *a)
{
    b24_form_array *arr = b24_arena_alloc(a, sizeof(*arr));
    if (arr) {
        memset(arr, 0, sizeof(*arr));
        arr->next_free = INT64_MIN;
        arr->is_list = 1;
    }
    return arr;
}

static int rebuild_buckets(b24_arena *a, b24_form_array *arr, uint32_t nbuckets)
{
    int32_t *b = b24_arena_alloc(a, sizeof(int32_t) * nbuckets);
    if (b == NULL)
        return -1;
    for (uint32_t i = 0; i < nbuckets; i++)
        b[i] = -1;
    for (uint32_t i = 0; i < arr->count; i++) {
        uint32_t slot = arr->entries[i].hash & (nbuckets - 1);
        arr->entries[i].next = b[slot];
        b[slot] = (int32_t)i;
    }
    arr->buckets = b;
    arr->nbuckets = nbuckets;
    return 0;
}

static b24_form_entry *find(b24_form_array *arr, const key *k)
{
    if (arr->buckets == NULL) {
        for (uint32_t i = 0; i < arr->count; i++)
            if (same_key(&arr->entries[i], k))
                return &arr->entries[i];
        return NULL;
    }
    for (int32_t i = arr->buckets[k->hash & (arr->nbuckets - 1)]; i >= 0; i = arr->entries[i].next)
        if (same_key(&arr->entries[i], k))
            return &arr->entries[i];
    return NULL;
}

/* Appends a new entry for k (which must be absent); NULL when out of memory. */
static b24_form_entry *insert(b24_arena *a, b24_form_array *arr, const key *k)
{
    if (arr->count == arr->cap) {
        uint32_t cap = arr->cap ? arr->cap * 2 : 4;
        b24_form_entry *e = b24_arena_alloc(a, sizeof(*e) * cap);
        if (e == NULL)
            return NULL;
        if (arr->count)
            memcpy(e, arr->entries, sizeof(*e) * arr->count);
        arr->entries = e;
        arr->cap = cap;
    }
    b24_form_entry *e = &arr->entries[arr->count];
    e->key = k->s;
    e->key_len = k->len;
    e->ikey = k->i;
    e->is_int = k->is_int;
    e->hash = k->hash;
    e->value.str = "";
    e->value.len = 0;
    e->value.arr = NULL;
    if (!(k->is_int && k->i == (int64_t)arr->count))
        arr->is_list = 0;
    if (k->is_int && k->i >= arr->next_free)
        arr->next_free = k->i < INT64_MAX ? k->i + 1 : INT64_MAX;
    arr->count++;
    if (arr->buckets) {
        if (arr->count > arr->nbuckets) {
            if (rebuild_buckets(a, arr, arr->nbuckets * 2))
                return NULL;
        } else {
            uint32_t slot = e->hash & (arr->nbuckets - 1);
            e->next = arr->buckets[slot];
            arr->buckets[slot] = (int32_t)(arr->count - 1);
        }
    } else if (arr->count > LINEAR_MAX) {
        if (rebuild_buckets(a, arr, 32))
            return NULL;
    }
    return e;
}

/* zend_hash_next_index_insert: NULL with *dropped set when PHP would drop the value. */
static b24_form_entry *append(b24_arena *a, b24_form_array *arr, int *dropped)
{
    key k;
    k.s = NULL;
    k.len = 0;
    k.is_int = 1;
    k.i = arr->next_free == INT64_MIN ? 0 : arr->next_free;
    k.hash = hash_int(k.i);
    if (find(arr, &k)) { /* only possible at INT64_MAX */
        *dropped = 1;
        return NULL;
    }
    return insert(a, arr, &k);
}

/* zend_symtable_str_update / find-or-create: the entry for k, created empty when absent. */
static b24_form_entry *lookup(b24_arena *a, b24_form_array *arr, const char *s, size_t len)
{
    key k;
    make_key(&k, s, len);
    b24_form_entry *e = find(arr, &k);
    return e ? e : insert(a, arr, &k);
}

/* Whether a pair whose top-level name is s[0..len) is skipped under limits->only */
static int skipped(const b24_form_limits *limits, const char *s, size_t len)
{
    return limits->only && !(len == limits->only_len && memcmp(s, limits->only, len) == 0);
}

/* Registers one decoded pair. name is NUL-terminated and holds no NUL before it. */
static b24_form_status register_pair(b24_arena *a, b24_form_array *root, char *name,
                                     const char *val, size_t val_len, const b24_form_limits *limits)
{
    while (*name == ' ')
        name++;
    char *ip = strchr(name, '[');
    const char *index = name;
    size_t index_len = ip ? (size_t)(ip - name) : strlen(name);
    if (index_len == 0)
        return B24_FORM_OK; /* an empty name: PHP ignores the pair */
    b24_form_array *cur = root;
    int dropped = 0;

    if (ip) {
        size_t nest = 0;
        for (;;) {
            if (++nest > limits->max_depth)
                return B24_FORM_TOO_DEEP;
            ip++;
            /* PHP reads "[ ]" (one whitespace byte alone in the brackets) as "[]" */
            if ((*ip == ' ' || (*ip >= '\t' && *ip <= '\r')) && ip[1] == ']')
                ip++;
            char *index_s = ip;
            size_t new_len = 0;
            if (*ip == ']') {
                index_s = NULL;
            } else {
                char *close = strchr(ip, ']');
                if (close == NULL) {
                    /* not an index: at the top level the '[' and any later '[' become '_';
                     * deeper down the rest of the name is ignored */
                    if (nest == 1) {
                        index_s[-1] = '_';
                        for (char *p = index_s; *p; p++)
                            if (*p == '[')
                                *p = '_';
                        index_len = strlen(index);
                    }
                    break;
                }
                new_len = (size_t)(close - index_s);
                ip = close;
            }
            b24_form_entry *e;
            if (cur == root && skipped(limits, index, index_len))
                return B24_FORM_OK;
            if (index == NULL) {
                e = append(a, cur, &dropped);
                if (e == NULL)
                    return dropped ? B24_FORM_OK : B24_FORM_NO_MEMORY;
                e->value.arr = new_array(a);
            } else {
                e = lookup(a, cur, index, index_len);
                if (e == NULL)
                    return B24_FORM_NO_MEMORY;
                if (e->value.arr == NULL)
                    e->value.arr = new_array(a); /* a scalar is replaced by an array */
            }
            if (e->value.arr == NULL)
                return B24_FORM_NO_MEMORY;
            cur = e->value.arr;
            index = index_s;
            index_len = new_len;
            ip++;
            if (*ip != '[')
                break;
        }
    }

    b24_form_entry *e;
    if (cur == root && skipped(limits, index, index_len))
        return B24_FORM_OK;
    if (index == NULL) {
        e = append(a, cur, &dropped);
        if (e == NULL)
            return dropped ? B24_FORM_OK : B24_FORM_NO_MEMORY;
    } else {
        e = lookup(a, cur, index, index_len);
        if (e == NULL)
            return B24_FORM_NO_MEMORY;
    }
    e->value.str = val; /* last write wins, an array included */
    e->value.len = val_len;
    e->value.arr = NULL;
    return B24_FORM_OK;
}

b24_form_status b24_form_parse(const char *s, size_t len, const b24_form_limits *limits,
                               b24_arena *arena, b24_form_array **root)
{
    if (len > limits->max_size)
        return B24_FORM_TOO_LARGE;
    /* parse_str reads its argument as a C string: nothing after a raw NUL byte counts */
    const char *nul = memchr(s, '\0', len);
    if (nul)
        len = (size_t)(nul - s);
    /* the pairs are counted before anything is built: a body of too many costs nothing */
    size_t pairs = 0;
    for (size_t pos = 0; pos < len;) {
        const char *amp = memchr(s + pos, '&', len - pos);
        size_t end = amp ? (size_t)(amp - s) : len;
        if (end > pos && ++pairs > limits->max_pairs)
            return B24_FORM_TOO_MANY;
        pos = end + 1;
    }
    b24_form_array *top = new_array(arena);
    /* every pair decodes in place into a copy: output never outruns its input, and the '='
     * or '&' after a segment leaves room for its terminating NUL */
    char *buf = b24_arena_alloc(arena, len + 1);
    if (top == NULL || buf == NULL)
        return B24_FORM_NO_MEMORY;
    size_t pos = 0;
    while (pos < len) {
        const char *amp = memchr(s + pos, '&', len - pos);
        size_t end = amp ? (size_t)(amp - s) : len;
        if (end > pos) { /* php_strtok_r skips empty segments */
            const char *eq = memchr(s + pos, '=', end - pos);
            size_t name_end = eq ? (size_t)(eq - s) : end;
            char *name = buf + pos;
            size_t name_len = url_decode(s + pos, name_end - pos, name);
            name[name_len] = '\0'; /* PHP treats the name as a C string: a %00 cuts it */
            const char *val = "";
            size_t val_len = 0;
            if (eq) {
                char *v = buf + name_end + 1;
                val_len = url_decode(eq + 1, end - name_end - 1, v);
                v[val_len] = '\0';
                val = v;
            }
            b24_form_status st = register_pair(arena, top, name, val, val_len, limits);
            if (st != B24_FORM_OK)
                return st;
        }
        pos = end + 1;
    }
    *root = top;
    return B24_FORM_OK;
}
