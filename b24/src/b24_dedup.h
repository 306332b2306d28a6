/* Deduplication of b24 serve shared by every thread: the rules of a work queue (see
 * docs/api.md, "Deduplication") for --sync, where each worker's Lua state runs router:handle,
 * as the Lua module b24.dedup (a store for bitrix24.router.use_store); and the helpers the
 * inbox path shares (what a repeat of a key means, the object a key names). */
#ifndef B24_DEDUP_H
#define B24_DEDUP_H

#include <stddef.h>

#include <lua.h>

/* Whether a repeat of an event's key is a duplicate (the name ends in ADD or DELETE: an object
 * is created and deleted once); otherwise it is merged or runs once more. */
int b24_dedup_is_duplicate_kind(const char *event);
/* The object part of a default key (portal|NAME|object): its start and length in *len, or NULL
 * for a key that names no object (a body digest, a script's own key). */
const char *b24_dedup_object(const char *key, size_t key_len, size_t *len);
/* Ends, as failed, every run the calling thread began and did not finish (a handler unwound
 * past router:handle); call after each handler call. */
void b24_dedup_release_thread(void);
/* require "b24.dedup": a function(dedup_max) giving the process-wide store. */
int luaopen_b24_dedup(lua_State *L);

#endif
