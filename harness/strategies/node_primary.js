'use strict';
// node-rr / node-none: Node's own cluster as the reference. Forks N workers running
// harness/apps/hello-node.js, or hello-native with --native (all listen on the same port
// through the primary).
// usage: node node_primary.js --policy rr|none --workers N --port P [--native PATH [--accept one|drain]]
const cluster = require('cluster');
const path = require('path');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const policy = opt('--policy', 'rr');
cluster.schedulingPolicy = policy === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;
const n = Number(opt('--workers', '2'));
const port = opt('--port');
// --native PATH: C++ workers (hello-native in cluster-worker mode). child_process.fork runs
// process.execPath with `exec` as its first argument, so point execPath at the binary.
const native = opt('--native');
if (native) {
  process.execPath = native;
  cluster.setupPrimary({ exec: native, args: ['--port', port, '--accept', opt('--accept', 'one')] });
} else {
  cluster.setupPrimary({ exec: path.join(__dirname, '..', 'apps', 'hello-node.js'), args: ['--port', port] });
}
for (let i = 0; i < n; i++) cluster.fork();
cluster.on('listening', (w) => {
  process.stdout.write(JSON.stringify({ event: 'listening', pid: w.process.pid }) + '\n');
});
// The runner stops workers itself (so they write their counters); the primary just leaves.
const stop = () => {
  if (Object.keys(cluster.workers).length === 0) process.exit(0);
  for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM');
  setTimeout(() => process.exit(0), 2000).unref();
  cluster.on('exit', () => { if (Object.keys(cluster.workers).length === 0) process.exit(0); });
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
