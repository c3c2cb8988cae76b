'use strict';
// hello-node: the lab's Node worker, a plain http server answering "hello world\n".
// Modes: --port P (listen on 127.0.0.1:P), --fd N (serve an inherited listening fd),
// or a cluster worker (NODE_UNIQUE_ID set): listen(P) then goes through the primary.
// Counts connections and requests; writes them like hello-native does ($UVC_LAB_STATS or
// $UVC_LAB_STATS_DIR/<pid>.json) on SIGTERM/SIGINT (then exits) and on SIGUSR2.
const http = require('http');
const fs = require('fs');
const path = require('path');

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const port = opt('--port');
const fd = opt('--fd');
const stats = { pid: process.pid, app: 'node', connections: 0, requests: 0, seq: 0 };

function statsPath(suffix) {
  if (suffix === '.json' && process.env.UVC_LAB_STATS) return process.env.UVC_LAB_STATS;
  if (process.env.UVC_LAB_STATS_DIR) return path.join(process.env.UVC_LAB_STATS_DIR, process.pid + suffix);
  return null;
}
function writeAtomically(p, obj) {
  if (!p) { process.stderr.write(JSON.stringify(obj) + '\n'); return; }
  fs.writeFileSync(p + '.tmp', JSON.stringify(obj) + '\n');
  fs.renameSync(p + '.tmp', p);
}
function publish(extra) {
  stats.seq++;
  writeAtomically(statsPath('.json'), Object.assign({}, stats, extra || {}));
}

const body = 'hello world\n';
const server = http.createServer((req, res) => {
  stats.requests++;
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
  res.end(body);
});
server.keepAliveTimeout = 30000;
server.on('connection', () => { stats.connections++; });
server.on('error', (err) => {
  process.stderr.write(`hello-node: listen 127.0.0.1:${port}: ${err.code}\n`);
  publish({ error: err.code || String(err) });
  process.exit(3);
});
server.on('listening', () => {
  const p = statsPath('.ready');
  if (p) writeAtomically(p, { pid: process.pid, port: port ? Number(port) : null });
});

if (fd !== undefined) server.listen({ fd: Number(fd) });
else if (port !== undefined) server.listen(Number(port), '127.0.0.1');
else {
  process.stderr.write('usage: hello-node.js --port P | --fd N\n');
  process.exit(2);
}

const stop = () => {
  publish();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.on('SIGUSR2', () => publish());
