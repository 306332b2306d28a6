/* Handler threads of the durable inbox: each claims stored deliveries and runs the router's
 * dispatch on them in its own Lua state (b24_script_state). */
#ifndef B24_HANDLERS_H
#define B24_HANDLERS_H

#include "b24_inbox.h"

/* Starts n threads on in, a run counting as failed after timeout seconds of Lua; -1 when a
 * thread cannot start. */
int b24_handlers_start(b24_inbox *in, int n, double timeout);
/* Lets the runs under way finish and ends the threads; what is pending stays stored. */
void b24_handlers_stop(void);

#endif
