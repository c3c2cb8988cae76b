'use strict';
// The fault lab's worker app: a plain http server answering "ok\n", run unchanged under
// `uvcluster run`, Node's cluster (node_cluster.js) and PM2 cluster mode. Its listen(port)
// goes through whichever primary runs it. Settings come from the environment (PM2 passes it on):
//   CHAOS_PORT      port to listen on (127.0.0.1)
//   CHAOS_DIR       the run's temp dir: <pid>.ready is written there once listening
//   CHAOS_MAXCONN   server.maxConnections (unset: no limit)
//   CHAOS_SLOW_MS   delay before each answer (ms)
// Faults it can play (the lab triggers them):
//   $CHAOS_DIR/crash exists at start-up  -> exit(1) at once (a crash loop while the file exists)
//   SIGUSR2 -> write the frame named by $CHAOS_DIR/ipc-fault (garbage | oversized | nested)
//              raw into its IPC channel to the primary, bypassing process.send's serializer.
const http = require('http');
const fs = require('fs');
const path = require('path');

const dir = process.env.CHAOS_DIR;
if (dir && fs.existsSync(path.join(dir, 'crash'))) process.exit(1);

const slowMs = Number(process.env.CHAOS_SLOW_MS || 0);
const server = http.createServer((req, res) => {
  const answer = () => {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 3 });
    res.end('ok\n');
  };
  if (slowMs > 0) setTimeout(answer, slowMs); else answer();
});
if (process.env.CHAOS_MAXCONN) server.maxConnections = Number(process.env.CHAOS_MAXCONN);
server.on('listening', () => {
  if (dir) fs.writeFileSync(path.join(dir, `${process.pid}.ready`), `${process.pid}\n`);
});
server.listen(Number(process.env.CHAOS_PORT), '127.0.0.1');

function frame(kind) {
  if (kind === 'garbage') return Buffer.from('this is not json\n\u0000\u0001{{{\n');
  if (kind === 'oversized') {
    const b = Buffer.alloc(70 * 1024 * 1024 + 1, 0x61); // 70 MiB line, over any 64 MiB cap
    b[b.length - 1] = 0x0a;
    return b;
  }
  if (kind === 'nested') {  // a cluster queryServer whose address is nested 1e6 levels deep
    const depth = 1000000;
    return Buffer.from('{"cmd":"NODE_CLUSTER","act":"queryServer","seq":999,"address":' +
                       '['.repeat(depth) + ']'.repeat(depth) + ',"port":0,"addressType":4,"fd":-1}\n');
  }
  return Buffer.alloc(0);
}

// Raw write to the (non-blocking) channel fd: retries EAGAIN, gives up on any other error
// (the primary closed the channel) or after 15 s.
function writeRaw(fd, buf) {
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + 15000;
  let off = 0;
  while (off < buf.length && Date.now() < deadline) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN') return `${e.code} after ${off} bytes`;
      Atomics.wait(sleeper, 0, 0, 1);
    }
  }
  return `${off} bytes`;
}

process.on('SIGUSR2', () => {
  if (!dir || !process.channel) return;
  let kind = 'garbage';
  try { kind = fs.readFileSync(path.join(dir, 'ipc-fault'), 'utf8').trim(); } catch (e) { /* default */ }
  const outcome = writeRaw(process.channel.fd, frame(kind));
  process.stderr.write(`chaos app ${process.pid}: wrote ${kind} frame: ${outcome}\n`);
});
