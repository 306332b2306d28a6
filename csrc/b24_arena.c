/* A bump allocator for short-lived trees (the form parser): one free for the whole parse. */
#include <stdlib.h>

#include "b24.h"

struct b24_arena_chunk {
    b24_arena_chunk *next;
    size_t size, used;
    max_align_t data[]; /* aligned storage */
};

#define CHUNK_MIN 4096
#define CHUNK_KEEP (64 * 1024)

void *b24_arena_alloc(b24_arena *a, size_t size)
{
    size = (size + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
    b24_arena_chunk *c = a->head;
    if (c == NULL || c->size - c->used < size) {
        size_t want = c ? c->size * 2 : CHUNK_MIN;
        if (want < size)
            want = size;
        if (want > SIZE_MAX / 2)
            return NULL;
        c = malloc(sizeof(*c) + want);
        if (c == NULL)
            return NULL;
        c->size = want;
        c->used = 0;
        c->next = a->head;
        a->head = c;
        a->total += want;
    }
    void *p = (char *)c->data + c->used;
    c->used += size;
    return p;
}

void b24_arena_reset(b24_arena *a)
{
    b24_arena_chunk *c = a->head;
    if (c == NULL)
        return;
    /* keep the newest (largest) chunk, free the rest */
    b24_arena_chunk *rest = c->next;
    while (rest) {
        b24_arena_chunk *n = rest->next;
        a->total -= rest->size;
        free(rest);
        rest = n;
    }
    c->next = NULL;
    c->used = 0;
    if (c->size > CHUNK_KEEP) { /* one huge body must not pin its memory for good */
        a->total -= c->size;
        free(c);
        a->head = NULL;
    }
}

void b24_arena_free(b24_arena *a)
{
    b24_arena_chunk *c = a->head;
    while (c) {
        b24_arena_chunk *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->total = 0;
}
