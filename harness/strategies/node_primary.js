'use strict';
// node-rr / node-none: Node's own cluster as the reference. Forks N workers running
// harness/apps/hello-node.js (all listen on the same port through the primary).
// usage: node node_primary.js --policy rr|none --workers N --port P [-- worker.js args]
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
const worker = path.join(__dirname, '..', 'apps', 'hello-node.js');

cluster.setupPrimary({ exec: worker, args: ['--port', port] });
for (let i = 0; i < n; i++) cluster.fork();
cluster.on('listening', (w) => {
  process.stdout.write(JSON.stringify({ event: 'listening', pid: w.process.pid }) + '\n');
});
// The runner stops workers itself (so they write their counters); the primary just leaves.
const stop = () => {
  for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM');
  setTimeout(() => process.exit(0), 2000).unref();
  cluster.on('exit', () => { if (Object.keys(cluster.workers).length === 0) process.exit(0); });
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
