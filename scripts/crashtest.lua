-- Crash test of the durable inbox of `b24 serve` (issue 4, point 7), run by lua5.4:
--
--   lua5.4 scripts/crashtest.lua [--bin build/b24] [--events 4000] [--senders 4]
--                                [--kill-after 800] [--handler-threads 4] [--handler-ms 3]
--                                [--json] [--keep]
--
-- Starts `b24 serve --inbox FILE` with a router whose handler works 0..2*handler-ms ms (even IDs)
-- and then appends "id attempt" to a record file (one write(2) per line, append mode), has --senders
-- processes post --events distinct
-- deliveries to it concurrently (keep-alive, luasocket), sends SIGKILL to the host once
-- --kill-after deliveries have been answered 200, restarts it on the same port and file while
-- the senders go on, waits until every sender is done and the inbox is empty, and checks:
--   - every delivery answered 200 was processed at least once (lost = 0);
--   - every delivery answered 200 before the kill was, at the kill, still in the inbox or had
--     its success committed (and so had run);
--   - a delivery processed twice was running at the kill (state 'running' in the file), ran once
--     before it with the attempt the file counted and once after it with the next attempt: a run
--     that finished but whose success was not yet committed (at-least-once);
--   - no delivery whose success had been committed was processed again.
-- Each delivery's event name carries its ID (ONCRASH<id>ADD), because `b24 inbox list` shows
-- event names and not keys. Prints the figures; with --json also one JSON line of them last.
-- Exits 0 when every check holds, 1 otherwise. Polls (files, `b24 inbox stats`) run between
-- events and are bounded by deadlines.
local socket = require "socket"

local function quote(s)
   return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function parse_args(argv)
   local o = {}
   local i = 1
   while i <= #argv do
      local a = argv[i]
      local name = a:match("^%-%-([%w%-]+)$")
      if not name then error("unexpected argument '" .. a .. "'") end
      if name == "json" or name == "keep" then
         o[name] = true
         i = i + 1
      else
         o[name] = argv[i + 1] or error("--" .. name .. " needs a value")
         i = i + 2
      end
   end
   return o
end

local function body_of(id, token)
   return ("event=ONCRASH%dADD&event_handler_id=7&data%%5BFIELDS%%5D%%5BID%%5D=%d&ts=%d"
      .. "&auth%%5Bdomain%%5D=crash.bitrix24.test&auth%%5Bmember_id%%5D=c4a5e0000000000000000000000000"
      .. "&auth%%5Bapplication_token%%5D=%s"):format(id, id, os.time(), token)
end

------------------------------------------------------------------------------------------------
-- a sender: posts deliveries from..to, one line per delivery in its out file: "id 200",
-- "id 200dup", "id <status>" or "id ERR <why>"; "done" at the end.
local function sender(o)
   local port, token = tonumber(o.port), o.token
   local from, to = tonumber(o.from), tonumber(o.to)
   local out = assert(io.open(o.out, "w"))
   local deadline_s = tonumber(o.deadline or 120)
   local conn
   local function connect()
      local deadline = socket.gettime() + deadline_s
      while true do
         local c = socket.tcp()
         c:settimeout(10)
         local ok = c:connect("127.0.0.1", port)
         if ok then
            c:setoption("tcp-nodelay", true)
            return c
         end
         c:close()
         -- the host is down (killed, not yet restarted): nothing was sent, so wait and send then
         if socket.gettime() > deadline then return nil end
         socket.sleep(0.005)
      end
   end
   for id = from, to do
      if not conn then
         conn = connect()
         if not conn then
            out:write(id, " ERR cannot connect\n")
            out:flush()
            goto next
         end
      end
      do
         local body = body_of(id, token)
         local req = "POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            .. "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: " .. #body
            .. "\r\n\r\n" .. body
         local ok, err = conn:send(req)
         local status, len, close
         if ok then
            local line
            line, err = conn:receive("*l")
            status = line and tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
            while line and line ~= "" do
               line, err = conn:receive("*l")
               if line then
                  local n = line:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")
                  if n then len = tonumber(n) end
                  if line:lower():match("^connection:%s*close") then close = true end
               end
            end
            local resp
            if line and status then
               resp, err = conn:receive(len or 0)
            end
            if resp and status then
               local tag = tostring(status)
               if status == 200 and resp:find('"duplicate":true', 1, true) then tag = "200dup" end
               out:write(id, " ", tag, "\n")
            else
               status = nil
            end
         end
         if not status then
            -- sent (maybe in part) and no answer: the host may or may not have stored it
            out:write(id, " ERR ", tostring(err), "\n")
            close = true
         end
         out:flush()
         if close then
            conn:close()
            conn = nil
         end
      end
      ::next::
   end
   if conn then conn:close() end
   out:write("done\n")
   out:close()
end

------------------------------------------------------------------------------------------------
-- the controller

local function sh(cmd)
   local p = assert(io.popen(cmd))
   local s = p:read("a")
   p:close()
   return s
end

local function alive(pid)
   return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

local function free_port()
   local s = assert(socket.bind("127.0.0.1", 0))
   local _, port = s:getsockname()
   s:close()
   return tonumber(port)
end

local function read_file(path)
   local f = io.open(path, "rb")
   if not f then return "" end
   local s = f:read("a")
   f:close()
   return s
end

local function wait_for(what, deadline, fn)
   while true do
      local v = fn()
      if v then return v end
      if socket.gettime() > deadline then error("timed out waiting for " .. what) end
      socket.sleep(0.01)
   end
end

local function main(o)
   local here = arg[0]:match("^(.*)/scripts/[^/]*$") or "."
   local bin = o.bin or (here .. "/build/b24")
   local events = tonumber(o.events or 4000)
   local nsenders = tonumber(o.senders or 4)
   local kill_after = tonumber(o["kill-after"] or math.floor(events / 5))
   local threads = tonumber(o["handler-threads"] or 4)
   local handler_ms = tonumber(o["handler-ms"] or 3)
   local dir = o.dir or sh("mktemp -d"):gsub("%s+$", "")
   local token = "crash0" .. tostring(os.time()) .. tostring(math.random(1e9))
   local inbox = dir .. "/inbox.sqlite"
   local record = dir .. "/record.txt"
   local script = dir .. "/router.lua"
   local port = free_port()
   local t0 = socket.gettime()

   local f = assert(io.open(script, "w"))
   -- for even IDs the handler works a random 0..2*handler-ms ms before it records its run, so
   -- that a kill finds some runs under way and some finished but not yet committed
   f:write(([[
local bitrix24 = require "bitrix24"
local ok, socket = pcall(require, "socket")
local router = bitrix24.router{ token = %q }
local MS = %d
router:on("*", function(event, ctx)
  if MS > 0 and ok and tonumber(event.id) %% 2 == 0 then socket.sleep(math.random(0, 2 * MS) / 1000) end
  local f = assert(io.open(%q, "a"))
  f:write(event.id, " ", ctx.attempt, "\n")
  f:close()
end)
return router
]]):format(token, handler_ms, record))
   f:close()

   local function start(n)
      local log = dir .. "/b24-" .. n .. ".log"
      local cmd = ("env -u LD_PRELOAD %s serve --listen 127.0.0.1:%d --inbox %s --handler-threads %d"
         .. " --retry-base 0.05 --workers 2 --log-level warn %s 2>>%s </dev/null >/dev/null & echo $!")
         :format(quote(bin), port, quote(inbox), threads, quote(script), quote(log))
      local pid = assert(tonumber(sh(cmd):match("%d+")), "no pid")
      wait_for("b24 #" .. n .. " to listen", socket.gettime() + 30, function()
         if not alive(pid) then error("b24 exited at start:\n" .. read_file(log)) end
         local c = socket.tcp()
         c:settimeout(1)
         local ok = c:connect("127.0.0.1", port)
         c:close()
         return ok
      end)
      return pid, log
   end

   local function inbox_cmd(args)
      return sh(("env -u LD_PRELOAD %s inbox %s --inbox %s 2>&1"):format(quote(bin), args, quote(inbox)))
   end

   local pid1, log1 = start(1)

   -- the senders: each its own lua5.4 process with a share of the IDs
   local outs = {}
   local per = math.ceil(events / nsenders)
   for i = 1, nsenders do
      local from, to = (i - 1) * per + 1, math.min(i * per, events)
      outs[i] = dir .. "/sender-" .. i .. ".txt"
      assert(io.open(outs[i], "w")):close()
      os.execute(("lua5.4 %s --sender 1 --port %d --token %s --from %d --to %d --out %s </dev/null >/dev/null 2>&1 &")
         :format(quote(arg[0]), port, quote(token), from, to, quote(outs[i])))
   end

   -- follows the senders' files as they grow
   local results, done = {}, {}
   local ok_count = 0
   local positions = {}
   local function poll_senders()
      for i = 1, nsenders do
         local fh = io.open(outs[i], "rb")
         if fh then
            fh:seek("set", positions[i] or 0)
            local chunk = fh:read("a") or ""
            fh:close()
            local upto = chunk:match("^.*\n") or "" -- whole lines only
            positions[i] = (positions[i] or 0) + #upto
            for line in upto:gmatch("[^\n]+") do
               if line == "done" then
                  done[i] = true
               else
                  local id, what = line:match("^(%d+) (.*)$")
                  results[tonumber(id)] = what
                  if what == "200" then ok_count = ok_count + 1 end
               end
            end
         end
      end
   end

   wait_for(kill_after .. " answers 200 before the kill", socket.gettime() + 120, function()
      poll_senders()
      return ok_count >= kill_after
   end)
   os.execute("kill -KILL " .. pid1)
   wait_for("the killed b24 to be gone", socket.gettime() + 30, function() return not alive(pid1) end)
   local t_kill = socket.gettime()
   poll_senders()
   local ok_before_kill = {}
   for id, what in pairs(results) do
      if what == "200" then ok_before_kill[id] = true end
   end

   -- what the file holds at the kill: rows by delivery ID with their state and attempts
   local at_kill = {}
   local listing = inbox_cmd("list --limit 10000000")
   local n_running, n_pending = 0, 0
   for line in listing:gmatch("[^\n]+") do
      local id = tonumber(line:match('"event":"ONCRASH(%d+)ADD"'))
      local state = line:match('"state":"(%a+)"')
      local attempts = tonumber(line:match('"attempts":(%d+)'))
      if not (id and state and attempts) then error("unexpected `b24 inbox list` line: " .. line) end
      at_kill[id] = { state = state, attempts = attempts }
      if state == "running" then n_running = n_running + 1 else n_pending = n_pending + 1 end
   end
   local pre_kill_record = read_file(record)

   local pid2, log2 = start(2)
   wait_for("every sender to finish", socket.gettime() + 300, function()
      poll_senders()
      for i = 1, nsenders do
         if not done[i] then return false end
      end
      return true
   end)
   wait_for("an empty inbox", socket.gettime() + 120, function()
      local s = inbox_cmd("stats")
      local pending = tonumber(s:match('"pending":(%d+)'))
      local running = tonumber(s:match('"running":(%d+)'))
      return pending == 0 and running == 0
   end)
   os.execute("kill -TERM " .. pid2)
   wait_for("b24 to stop", socket.gettime() + 60, function() return not alive(pid2) end)
   local t_end = socket.gettime()
   local final_stats = inbox_cmd("stats"):gsub("%s+$", "")

   -- the runs, in order; those in pre_kill_record ran before the kill
   local runs = {}
   local function add_runs(text, phase)
      for id, attempt in text:gmatch("(%d+) (%d+)\n") do
         id = tonumber(id)
         runs[id] = runs[id] or {}
         local r = runs[id]
         r[#r + 1] = { attempt = tonumber(attempt), phase = phase }
      end
   end
   local all_record = read_file(record)
   assert(all_record:sub(1, #pre_kill_record) == pre_kill_record, "the record file was rewritten")
   add_runs(pre_kill_record, "before")
   add_runs(all_record:sub(#pre_kill_record + 1), "after")

   local fig = { sent = 0, ok = 0, duplicate_answers = 0, other_status = 0, failed = 0,
                 processed = 0, lost = 0, processed_twice = 0, processed_more = 0,
                 failed_but_processed = 0, ok_before_kill = 0, running_at_kill = n_running,
                 pending_at_kill = n_pending, unexplained = 0, reprocessed_after_commit = 0,
                 not_durable_at_kill = 0, running_recorded_at_kill = 0 }
   local problems = {}
   local function problem(msg)
      if #problems < 20 then problems[#problems + 1] = msg end
   end
   for id = 1, events do
      local what = results[id]
      local r = runs[id]
      fig.sent = fig.sent + 1
      if what == "200" then
         fig.ok = fig.ok + 1
         if not r then
            fig.lost = fig.lost + 1
            problem(("delivery %d was answered 200 and never processed"):format(id))
         end
      elseif what == "200dup" then
         fig.duplicate_answers = fig.duplicate_answers + 1
         problem(("delivery %d was answered as a duplicate, yet each delivery was sent once"):format(id))
      elseif what and what:match("^ERR") then
         fig.failed = fig.failed + 1
         if r then fig.failed_but_processed = fig.failed_but_processed + 1 end
      else
         fig.other_status = fig.other_status + 1
         problem(("delivery %d was answered %s"):format(id, tostring(what)))
      end
      if r then fig.processed = fig.processed + 1 end
      local before = 0
      for _, run in ipairs(r or {}) do
         if run.phase == "before" then before = before + 1 end
      end
      if at_kill[id] and at_kill[id].state == "running" and before > 0 then
         fig.running_recorded_at_kill = fig.running_recorded_at_kill + 1
      end
      if ok_before_kill[id] then
         fig.ok_before_kill = fig.ok_before_kill + 1
         if not at_kill[id] and before == 0 then
            fig.not_durable_at_kill = fig.not_durable_at_kill + 1
            problem(("delivery %d was answered 200 before the kill, yet at the kill it was neither"
               .. " in the inbox nor processed"):format(id))
         end
      end
      if r and #r >= 2 then
         if #r == 2 then
            fig.processed_twice = fig.processed_twice + 1
         else
            fig.processed_more = fig.processed_more + 1
         end
         local row = at_kill[id]
         local explained = #r == 2 and row and row.state == "running"
            and r[1].phase == "before" and r[2].phase == "after"
            and r[1].attempt == row.attempts and r[2].attempt == row.attempts + 1
         if not explained then
            fig.unexplained = fig.unexplained + 1
            local desc = {}
            for _, run in ipairs(r) do desc[#desc + 1] = run.phase .. "#" .. run.attempt end
            problem(("delivery %d ran %d times (%s); at the kill it was %s"):format(id, #r,
               table.concat(desc, ", "), row and (row.state .. " after " .. row.attempts .. " attempts")
               or "not in the inbox (its success was committed)"))
         end
      end
      -- processed before the kill and gone from the file: its success was committed, so it must
      -- never run again
      if before > 0 and not at_kill[id] and #r > before then
         fig.reprocessed_after_commit = fig.reprocessed_after_commit + 1
      end
   end
   for id in pairs(runs) do
      if id < 1 or id > events then problem("a run for unknown delivery " .. id) end
   end

   local elapsed = t_end - t0
   print(("crash test: %d deliveries from %d concurrent senders, b24 killed (SIGKILL) after %d answers 200,"
      .. " restarted on the same inbox")
      :format(events, nsenders, kill_after))
   print(("  sent %d | answered 200 %d (%d before the kill) | other answers %d"
      .. " | failed (no answer: reset/closed by the kill) %d")
      :format(fig.sent, fig.ok, fig.ok_before_kill, fig.other_status + fig.duplicate_answers, fig.failed))
   print(("  at the kill: %d running (%d of them had recorded their run), %d pending in the inbox")
      :format(fig.running_at_kill, fig.running_recorded_at_kill, fig.pending_at_kill))
   print(("  processed %d | lost %d | processed twice %d (all running at the kill, first run not yet committed: %s)")
      :format(fig.processed, fig.lost, fig.processed_twice, fig.unexplained == 0 and "yes" or "NO"))
   print(("  processed again after a committed success %d | failed but processed anyway %d"
      .. " | %.1f s in all, killed at %.1f s")
      :format(fig.reprocessed_after_commit, fig.failed_but_processed, elapsed, t_kill - t0))
   print("  inbox at the end: " .. final_stats)
   for _, p in ipairs(problems) do print("  PROBLEM: " .. p) end
   local pass = fig.lost == 0 and fig.unexplained == 0 and fig.reprocessed_after_commit == 0
      and fig.not_durable_at_kill == 0 and fig.other_status == 0 and fig.duplicate_answers == 0
      and fig.processed_more == 0 and #problems == 0
   print(pass and "crash test passed" or "crash test FAILED")
   if o.json then
      local parts = {}
      for k, v in pairs(fig) do parts[#parts + 1] = ('"%s":%d'):format(k, v) end
      parts[#parts + 1] = '"pass":' .. tostring(pass)
      print("{" .. table.concat(parts, ",") .. "}")
   end
   if o.keep or not pass then
      print("  files kept in " .. dir .. " (" .. log1:match("[^/]*$") .. ", " .. log2:match("[^/]*$")
         .. ", record.txt, sender-*.txt, inbox.sqlite)")
   else
      os.execute("rm -rf " .. quote(dir))
   end
   return pass
end

local o = parse_args({ ... })
if o.sender then
   sender(o)
   os.exit(0)
end
math.randomseed(os.time())
os.exit(main(o) and 0 or 1)
