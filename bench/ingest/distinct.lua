-- bench/ingest: wrk script for the durable mode. POSTs the event body (file in INGEST_BODY)
-- form-encoded, each request with its own data[FIELDS][ID], so that no delivery is a duplicate of
-- another: ID = INGEST_RUN (a number per wrk run), the wrk thread (3 digits), a counter of the
-- thread (10 digits). The router's dedup key of an ADD event is portal|NAME|ID, so each request
-- is a new delivery to verify and store. With INGEST_CHECK=1, every answer is read: the summary
-- line counts 200 {"success":true}, 200 duplicates and anything else.
local path = assert(os.getenv("INGEST_BODY"), "INGEST_BODY is not set")
local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()

local head, tail = body:match("^(.-data%%5BFIELDS%%5D%%5BID%%5D=)%d+(.*)$")
assert(head, "no data[FIELDS][ID] in " .. path)
local run = assert(tonumber(os.getenv("INGEST_RUN") or "1"), "INGEST_RUN is not a number")
local check = os.getenv("INGEST_CHECK") == "1"

local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
   thread:set("tid", #threads)
end

local prefix
local counter = 0
ok, duplicate, other = 0, 0, 0

function init()
   prefix = head .. string.format("%d%03d", run, tid)
end

function request()
   counter = counter + 1
   return wrk.format("POST", "/", headers, prefix .. string.format("%010d", counter) .. tail)
end

if check then
   function response(status, _, answer)
      if status ~= 200 then
         other = other + 1
      elseif answer:find('"duplicate"', 1, true) then
         duplicate = duplicate + 1
      else
         ok = ok + 1
      end
   end
end

function done(summary, latency)
   local e = summary.errors
   io.write(string.format("INGEST requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d "
      .. "connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
   if check then
      local n = { 0, 0, 0 }
      for _, t in ipairs(threads) do
         n[1] = n[1] + t:get("ok")
         n[2] = n[2] + t:get("duplicate")
         n[3] = n[3] + t:get("other")
      end
      io.write(string.format("INGEST_CHECK ok=%d duplicate=%d other=%d\n", n[1], n[2], n[3]))
   end
end
