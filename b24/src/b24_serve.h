/* b24 serve: the HTTP server that runs a Lua handler (a script, or an entry of an embedded
 * module) for every request, with the durable inbox for a router. */
#ifndef B24_SERVE_H
#define B24_SERVE_H

#include "b24_serve_options.h"

/* Serves until SIGTERM or SIGINT (SIGHUP reloads the handler); the exit status. */
int b24_serve(const b24_serve_options *o);
/* b24 serve [OPTIONS] SCRIPT.lua: the exit status. */
int b24_cmd_serve(int argc, char **argv);

#endif
