/* One HTTP request of b24 serve through libmicrohttpd: its body collected, /healthz and
 * /metrics answered, the handler run in the thread's Lua state (b24_bridge), and the answer
 * sent now, later (a handler's { delay = s }), or once the durable inbox has committed it. */
#ifndef B24_REQUEST_H
#define B24_REQUEST_H

#include <stdatomic.h>
#include <stddef.h>

#include <microhttpd.h>

#include "b24_inbox.h"

/* What every request of one server shares; the callbacks' cls. */
typedef struct b24_request_context {
    b24_inbox *inbox; /* NULL: handlers answer inside the request */
    size_t max_body;
    double started_at;   /* b24_now() when the server started, for /healthz */
    atomic_int stopping; /* draining: /healthz says so, answers ask clients to close */
} b24_request_context;

/* MHD_OPTION_URI_LOG_CALLBACK: a request begins (its per-connection state). */
void *b24_request_begin(void *cls, const char *uri, struct MHD_Connection *c);
/* The MHD_AccessHandlerCallback: every step of a request until it is answered. */
enum MHD_Result b24_request_access(void *cls, struct MHD_Connection *c, const char *url,
                                   const char *method, const char *version, const char *upload,
                                   size_t *upload_size, void **con_cls);
/* MHD_OPTION_NOTIFY_COMPLETED: the request ended; it is counted, logged and freed. */
void b24_request_end(void *cls, struct MHD_Connection *c, void **con_cls,
                     enum MHD_RequestTerminationCode toe);

/* The stop, past its drain: answers 503 every request still waiting for the inbox's commit,
 * and every later one at once, so no connection is left suspended when the daemon stops. */
void b24_request_answer_awaiting(void);

#endif
