'use strict';
// Node's own cluster as the fault lab's reference, written the usual way: fork N workers,
// re-fork a worker that dies without being disconnected (after 100 ms, like uvcluster run's
// first backoff step), SIGTERM/SIGINT = disconnect every worker and exit once all are gone
// (SIGKILL what is left after the grace), SIGHUP = rolling reload (a new worker listens, then
// its predecessor is disconnected, one at a time).
// --policy rr (Node's default: the primary accepts and hands connections round-robin) or none
// (cluster.SCHED_NONE: every worker accepts on the one shared listening socket), the like-for-like
// references of `uvcluster run --policy rr` and `--policy none`.
// usage: node node_cluster.js --workers N [--grace MS] [--policy rr|none] -- APP.js
const cluster = require('cluster');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const n = Number(opt('--workers', '2'));
const grace = Number(opt('--grace', '3000'));
const app = args[args.indexOf('--') + 1];
const policy = opt('--policy', 'rr');
if (policy !== 'rr' && policy !== 'none') throw new Error(`--policy rr|none, not ${policy}`);
// Node freezes the policy in the first setupPrimary (or fork): set it before.
cluster.schedulingPolicy = policy === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;
cluster.setupPrimary({ exec: app });

let stopping = false;
const fork = () => cluster.fork();
cluster.on('exit', (worker) => {
  if (stopping) {
    if (Object.keys(cluster.workers).length === 0) process.exit(0);
    return;
  }
  if (!worker.exitedAfterDisconnect) setTimeout(fork, 100);
});
for (let i = 0; i < n; i++) fork();

const drain = () => {
  if (stopping) return;
  stopping = true;
  if (Object.keys(cluster.workers).length === 0) process.exit(0);
  for (const id in cluster.workers) cluster.workers[id].disconnect();
  setTimeout(() => {
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGKILL');
    process.exit(1);
  }, grace).unref();
};
process.on('SIGTERM', drain);
process.on('SIGINT', drain);

let reloading = false;
process.on('SIGHUP', () => {
  if (reloading || stopping) return;
  reloading = true;
  const old = Object.values(cluster.workers);
  const next = () => {
    const w = old.shift();
    if (!w || stopping) { reloading = false; return; }
    const fresh = cluster.fork();
    fresh.once('listening', () => {
      w.once('exit', next);
      w.disconnect();
    });
  };
  next();
});
