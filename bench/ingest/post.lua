-- bench/ingest: wrk script. POSTs the event body (file in INGEST_BODY) form-encoded, and prints
-- one machine-readable summary line for ingest.sh after wrk's own report.
local path = assert(os.getenv("INGEST_BODY"), "INGEST_BODY is not set")
local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.path = "/"
wrk.body = body
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

function done(summary, latency)
   local e = summary.errors
   io.write(string.format("INGEST requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d "
      .. "connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
