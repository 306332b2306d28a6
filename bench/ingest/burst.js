// bench/ingest/burst.js: a burst of distinct deliveries as Bitrix24 fires them on a mass update,
// or as a load balancer forwards them: N requests over C keep-alive connections from one
// address, all connections opened first, then every one sending at once, each request a new
// data[FIELDS][ID] (a new delivery to store). Every answer is read; the ack latency of each
// request is from its write to the end of its answer.
//
//   node bench/ingest/burst.js URL BODY_FILE [TOTAL=10000] [CONNECTIONS=256] [RUN=1]
//
// Prints one line: BURST total= ok= duplicate= other= errors= seconds= rate= p50_ms= p99_ms=
// max_ms= (rate: answers per second from the first write to the last answer). With BURST_DRAIN=1
// (a durable b24 serve) it then polls URL/metrics every 20 ms until b24_handler_runs_total has
// grown by TOTAL since before the burst, and adds drain_seconds= (from the first write) and
// handled_rate= (TOTAL / drain_seconds). Exits 1 when a connection fails or an answer is not
// 200 {"success":true}, or the handling does not end within 600 s.
"use strict";
const net = require("net");
const fs = require("fs");

const [url, bodyFile, totalArg, connsArg, runArg] = process.argv.slice(2);
if (!url || !bodyFile) {
  console.error("usage: node burst.js URL BODY_FILE [TOTAL] [CONNECTIONS] [RUN]");
  process.exit(2);
}
const total = Number(totalArg || 10000);
const conns = Math.min(Number(connsArg || 256), total);
const run = Number(runArg || 1);
const target = new URL(url);
const body = fs.readFileSync(bodyFile, "latin1");
const m = body.match(/^(.*?data%5BFIELDS%5D%5BID%5D=)\d+(.*)$/s);
if (!m) throw new Error("no data[FIELDS][ID] in " + bodyFile);

// The request bytes of delivery i: its own ID (the run, then a counter), so none repeats.
function request(i) {
  const b = m[1] + String(run) + String(i).padStart(9, "0") + m[2];
  return "POST " + (target.pathname || "/") + " HTTP/1.1\r\nHost: " + target.host +
    "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: " + b.length +
    "\r\n\r\n" + b;
}

let next = 0, done = 0, ok = 0, duplicate = 0, other = 0, errors = 0, t0 = 0;
const latencies = new Float64Array(total);
const sockets = [];

const drainWanted = process.env.BURST_DRAIN === "1";
const metricsUrl = new URL("metrics", url).toString();
let handledBefore = 0;

// b24_handler_runs_total of every outcome, from /metrics.
function handled(cb) {
  require("http").get(metricsUrl, (res) => {
    let text = "";
    res.on("data", (d) => { text += d; });
    res.on("end", () => {
      let n = 0;
      for (const line of text.split("\n")) {
        const mm = line.match(/^b24_handler_runs_total\{[^}]*\} (\d+)/);
        if (mm) n += Number(mm[1]);
      }
      cb(n);
    });
  }).on("error", () => cb(-1));
}

let finished = false;
function finish() {
  if (finished) return;
  finished = true;
  const secs = (Number(process.hrtime.bigint()) - t0) / 1e9;
  const sorted = Array.from(latencies.subarray(0, done)).sort((a, b) => a - b);
  const pct = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0);
  const line = `BURST total=${total} ok=${ok} duplicate=${duplicate} other=${other} errors=${errors}` +
    ` seconds=${secs.toFixed(3)} rate=${(done / secs).toFixed(0)} p50_ms=${pct(0.5).toFixed(2)}` +
    ` p99_ms=${pct(0.99).toFixed(2)} max_ms=${(sorted[sorted.length - 1] || 0).toFixed(2)}`;
  for (const s of sockets) s.destroy();
  if (!drainWanted || ok !== total) {
    console.log(line);
    process.exit(ok === total ? 0 : 1);
  }
  const poll = () => handled((n) => {
    const drained = (Number(process.hrtime.bigint()) - t0) / 1e9;
    if (n >= handledBefore + total) {
      console.log(line + ` drain_seconds=${drained.toFixed(3)} handled_rate=${(total / drained).toFixed(0)}`);
      process.exit(0);
    }
    if (drained > 600) {
      console.log(line + " drain_seconds=none handled_rate=0");
      process.exit(1);
    }
    setTimeout(poll, 20);
  });
  poll();
}

// One connection: sends a request, reads its whole answer (Content-Length), sends the next.
function drive(sock) {
  let buf = Buffer.alloc(0), sent = 0;
  const send = () => {
    if (next >= total) { sock.end(); return; }
    const i = next++;
    sent = Number(process.hrtime.bigint());
    sock.busy = true;
    sock.write(request(i));
  };
  sock.on("data", (chunk) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    for (;;) {
      const head = buf.indexOf("\r\n\r\n");
      if (head < 0) return;
      const headers = buf.subarray(0, head).toString("latin1");
      const len = Number((headers.match(/\r\ncontent-length:\s*(\d+)/i) || [])[1] || 0);
      if (buf.length < head + 4 + len) return;
      const status = Number(headers.slice(9, 12));
      const answer = buf.subarray(head + 4, head + 4 + len).toString("latin1");
      buf = buf.subarray(head + 4 + len);
      latencies[done++] = (Number(process.hrtime.bigint()) - sent) / 1e6;
      sock.busy = false;
      if (status !== 200) other++;
      else if (answer.includes('"duplicate"')) duplicate++;
      else ok++;
      if (done === total) return finish();
      send();
    }
  });
  sock.on("error", () => { errors++; });
  // closed with a request unanswered: that delivery's sender would have to retry it
  sock.on("close", () => { if (sock.busy) { errors++; finish(); } });
  return send;
}

let connected = 0;
const starts = [];
function open() {
for (let c = 0; c < conns; c++) {
  const sock = net.connect({ host: target.hostname, port: Number(target.port) }, () => {
    sock.setNoDelay(true);
    if (++connected === conns) { // every connection open: the burst starts on all of them at once
      t0 = Number(process.hrtime.bigint());
      for (const s of starts) s();
    }
  });
  sockets.push(sock);
  starts.push(drive(sock));
}
}
if (drainWanted) handled((n) => { handledBefore = n; open(); });
else open();
setTimeout(() => { console.error("burst.js: no end after 600 s"); finish(); }, 600000).unref();
