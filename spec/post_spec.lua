-- b24.emulator.post (emulator/src/b24_post.c): its stop at exit. atexit runs the stop once per
-- process, and only after a first post started the thread, so no public path calls it twice or
-- before a start; a small C driver that includes the file calls the static stop directly, the way
-- any second caller would, and `b24 run` covers the public paths around it.
local b24 = require "helpers.b24"

-- The driver: b24_post.c included (its statics in reach), with stand-ins for the program's log
-- and clocks so it links with liblua, libcurl and pthreads only.
local DRIVER = [[
#include "b24_post.c"

#include <stdarg.h>

double b24_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

struct timespec b24_clock_after(clockid_t clock, double seconds)
{
    struct timespec t;
    clock_gettime(clock, &t);
    t.tv_sec += (time_t)seconds;
    t.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

void b24_log(b24_level level, const char *msg, ...)
{
    (void)level;
    fprintf(stderr, "log: %s\n", msg);
}

static void *stop_thread(void *unused)
{
    (void)unused;
    stop_at_exit();
    return NULL;
}

static int post_to(const char *url)
{
    const char *why = NULL;
    int rc = enqueue(url, "a=1", 3, curl_slist_append(NULL, "Expect:"), &why);
    if (rc != 0)
        printf("refused: %s\n", why);
    return rc;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    const char *url = argc > 2 ? argv[2] : "http://127.0.0.1:1/";
    if (strcmp(mode, "never") == 0) { /* no post: no thread to join */
        stop_at_exit();
        stop_at_exit();
    } else if (strcmp(mode, "twice") == 0) { /* the second stop finds it stopped */
        if (post_to(url) != 0)
            return 3;
        stop_at_exit();
        stop_at_exit();
    } else if (strcmp(mode, "together") == 0) { /* two stops at once: one drains and joins */
        for (int i = 0; i < 3; i++)
            if (post_to(url) != 0)
                return 3;
        pthread_t a, b;
        pthread_create(&a, NULL, stop_thread, NULL);
        pthread_create(&b, NULL, stop_thread, NULL);
        pthread_join(a, NULL);
        pthread_join(b, NULL);
    } else {
        return 2;
    }
    post_to(url); /* refused after a stop, and no thread starts again */
    puts("done");
    fflush(stdout);
    return 0; /* exit runs the atexit stop once more where a post registered it */
}
]]

local function cflags()
   local out, code = b24.exec("pkg-config --cflags --libs lua5.4 libcurl")
   if code == 0 then return (out:gsub("\n", " ")) end
   return "-I/usr/include/lua5.4 -llua5.4 -lcurl"
end

describe("b24.emulator.post", function()
   local dir, driver, recorder
   setup(function()
      dir = b24.tmpdir()
      local src = b24.write(dir .. "/post_driver.c", DRIVER)
      driver = dir .. "/post_driver"
      local out, code = b24.exec(("cc -std=c11 -D_DEFAULT_SOURCE -g -Wall -Wextra -I%s -I%s -o %s %s %s -lpthread")
         :format(b24.quote(b24.root .. "/emulator/src"), b24.quote(b24.root .. "/b24/src"),
                 b24.quote(driver), b24.quote(src), cflags()))
      assert(code == 0, "the driver does not build:\n" .. out)
      recorder = b24.start{ script = [[
return function(req)
  require("b24.host").log("info", "recorded", { body = req.body })
  return 200, {}, "ok"
end
]] }
   end)
   teardown(function()
      if recorder then recorder:stop() end
      os.execute("rm -rf " .. b24.quote(dir))
   end)

   local function drive(mode, url)
      -- the watchdog: two joins of one thread hung before the stop was idempotent
      return b24.exec("timeout 20 " .. b24.quote(driver) .. " " .. mode .. " "
         .. b24.quote(url or "http://127.0.0.1:1/"))
   end

   -- how many posts reached path, once every request before a marker has been logged
   local function posts_to(path)
      local marker = "/marker-" .. path:sub(2)
      assert(recorder:request{ path = marker })
      assert(recorder:wait_log("path=" .. marker .. " "))
      local n = 0
      for _, line in ipairs(recorder.lines) do
         if line:find("msg=request method=POST path=" .. path .. " ", 1, true) then n = n + 1 end
      end
      return n
   end

   it("stops twice before any post: nothing to join, later posts refused", function()
      local out, code = drive("never")
      assert.equal(0, code, out)
      assert.matches("refused: stopping\ndone\n", out, 1, true)
   end)

   it("stops twice after a post: the post goes out once, the second stop returns at once", function()
      local out, code = drive("twice", recorder:url("/twice"))
      assert.equal(0, code, out)
      assert.matches("refused: stopping\ndone\n", out, 1, true)
      assert.not_matches("posts dropped", out, 1, true)
      -- the driver has exited (a third stop ran at exit): each post went out once
      assert.equal(1, posts_to("/twice"))
   end)

   it("stops from two threads at once: one drains and joins, the other returns", function()
      local out, code = drive("together", recorder:url("/together"))
      assert.equal(0, code, out)
      assert.matches("refused: stopping\ndone\n", out, 1, true)
      assert.equal(3, posts_to("/together"))
   end)

   it("lets `b24 run` exit at once when the module is loaded and never posts", function()
      local script = b24.write(dir .. "/quiet.lua", [[
local post = require("b24.emulator.post").post
assert(type(post) == "function")
os.exit(0)
]])
      local started = os.time()
      local out, code = b24.exec(b24.quote(b24.bin) .. " run " .. b24.quote(script))
      assert.equal(0, code, out)
      assert.equal("", out)
      assert.is_true(os.time() - started < 5) -- no drain of a queue that never started
   end)
end)
