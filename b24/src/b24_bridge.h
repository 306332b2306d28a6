/* The Lua bridge of b24 serve: one HTTP request as the table a handler receives, and what the
 * handler returns, checked and normalised, without libmicrohttpd in sight.
 *
 * The extension point any handler may use: a 4th result, an options table, with
 *   delay = seconds (a number from 0 to 3600): the answer (status, headers, body as returned)
 *       goes out that many seconds later; the connection waits suspended and holds no worker
 *       thread. When the server stops, answers still waiting go out at once, and a delay asked
 *       for while it stops is not waited out.
 *   close = true: the connection is closed without an answer (the log says "request aborted").
 * Anything else there (a non-table, a bad delay) is a handler error: 500. A router's accept
 * (the durable path) takes no options. */
#ifndef B24_BRIDGE_H
#define B24_BRIDGE_H

#include <stddef.h>

#include <lua.h>

typedef struct b24_header {
    const char *name, *value;
    size_t name_len, value_len;
} b24_header;

/* A request as the handler sees it: req.method, path, query, body, remote_addr, headers. */
typedef struct b24_bridge_request {
    const char *method, *uri, *remote; /* uri as sent: path?query */
    const char *body;
    size_t body_len;
    const b24_header *headers;
    size_t nheaders;
} b24_bridge_request;

/* What the handler's options (its 4th result) asked for. */
typedef struct b24_bridge_options {
    double delay;     /* seconds, 0 for none */
    int close;        /* close the connection without an answer */
    char reason[160]; /* a router's refusal: its reason (masked) for the request's log line */
} b24_bridge_options;

/* Calls the handler at index 1 of L with the request (a router's accept instead when accept)
 * under b24_state_call. LUA_OK leaves, checked: [2] status (an integer 100..599) [3] headers
 * as a flat list name, value, … [4] body (a string or nil) [5] key [6] event name (an
 * accepted delivery of a router, else nil); otherwise the message is on the top. */
int b24_bridge_call(lua_State *L, const b24_bridge_request *req, int accept,
                    b24_bridge_options *options);

#endif
