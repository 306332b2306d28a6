/* Internal interface of the b24 program: logging, Lua states, metrics, the server. */
#ifndef B24_HOST_H
#define B24_HOST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "b24.h" /* B24_VERSION */

/* ---- log: one line per call on stderr, logfmt or JSON, secrets masked ------------------- */
typedef enum { B24_DEBUG, B24_INFO, B24_WARN, B24_ERROR } b24_level;

int b24_log_configure(const char *format, const char *level); /* -1 on an unknown name */
int b24_log_enabled(b24_level level);
/* Logs msg with key/value string pairs, terminated by NULL. Values are masked. */
void b24_log(b24_level level, const char *msg, ...);

/* ---- Lua states ------------------------------------------------------------------------- */
/* A fresh state with the standard libraries and bitrix24 (C core and Lua layer) preloaded. */
lua_State *b24_state_new(void);
/* lua_pcall with a traceback handler; on error the message (with traceback) is on the stack. */
int b24_state_call(lua_State *L, int nargs, int nresults);
/* Loads and runs a script's text; on success its first result is on the stack. */
int b24_state_run_script(lua_State *L, const char *path, const char *src, size_t len, int nargs);
/* Reads a whole file; NULL with errno set on failure. Caller frees. */
char *b24_read_file(const char *path, size_t *len);
double b24_now(void);

/* ---- metrics (process-wide, lock-free) ------------------------------------------------- */
void b24_metrics_request(int status, double seconds);
void b24_metrics_handler_error(void);
void b24_metrics_reload(int ok);
void b24_metrics_in_flight(int delta);
long b24_metrics_in_flight_now(void);
void b24_metrics_delivery(int duplicate);
void b24_metrics_handler_run(int ok);
void b24_metrics_dead_letter(void);
void b24_metrics_inbox_depth(long (*depth)(void)); /* a gauge read when rendering */
/* Renders the Prometheus text format into a malloc'd string. */
char *b24_metrics_render(size_t *len);

/* ---- the handler script (b24_script.c) -------------------------------------------------- */
enum { B24_HANDLER_FUNCTION = 1, B24_HANDLER_TABLE = 2, B24_HANDLER_ROUTER = 3 };
/* Loads path and publishes it; the kind of handler it returns, or -1 (logged). A reload
 * whose kind does not suit the running server (required) is refused. */
int b24_script_load(const char *path, int required);
/* This thread's state with the handler at index 1, (re)built as needed; NULL on failure. */
lua_State *b24_script_state(void);
int b24_script_kind(void);
/* Makes loads of `name` take src instead of reading a file (both must outlive the server). */
void b24_script_inline(const char *name, const char *src);
void b24_script_close_all(void);

/* ---- handler threads of the inbox (b24_handlers.c) --------------------------------------- */
struct b24_inbox;
int b24_handlers_start(struct b24_inbox *in, int n, double timeout);
void b24_handlers_stop(void);

/* ---- timers (b24_timer.c): fn(arg) runs on the timer thread at monotonic time `at` ------ */
typedef void (*b24_timer_fn)(void *arg);
int b24_timer_start(void);
int b24_timer_add(double at, b24_timer_fn fn, void *arg); /* -1 when stopped or out of memory */
void b24_timer_stop(void); /* fires what is left at once, then ends the thread */

/* ---- fire-and-forget posts (b24_post.c), behind b24.host.post ------------------------ */
struct curl_slist;
int b24_post(const char *url, const char *body, size_t body_len, struct curl_slist *headers,
             const char **why);
void b24_post_stop(double seconds); /* waits that long for the queue, drops the rest */

/* ---- commands --------------------------------------------------------------------------- */
int b24_cmd_serve(int argc, char **argv);
int b24_cmd_run(int argc, char **argv);
int b24_cmd_emulate(int argc, char **argv);
/* `return PREFIX{ "arg", … }` as Lua source (malloc'd) */
char *b24_call_chunk(const char *prefix, int argc, char **argv, size_t *len);

/* Embedded Lua modules of the bitrix24 rock (generated from lua/ by scripts/embed.lua). */
typedef struct b24_embedded {
    const char *name;
    const char *path;
    const unsigned char *src;
    size_t len;
} b24_embedded;
extern const b24_embedded b24_embedded_modules[];

int luaopen_bitrix24_core(lua_State *L);

#endif
