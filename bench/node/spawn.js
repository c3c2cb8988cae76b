// Node twins of bench_spawn.cpp: the same operation, timed to the same event ('close' /
// the exec callback). Prints one JSON line per benchmark: {"name", "ns_per_op", "iterations"}.
'use strict';
const cp = require('child_process');
const seconds = Number(process.env.UVC_BENCH_SECONDS || 1);

function timed(name, op, done) {
  let n = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(seconds * 1e9));
  const step = () => op(() => {
    n++;
    const now = process.hrtime.bigint();
    if (now < deadline) return step();
    console.log(JSON.stringify({ name, ns_per_op: Number(now - start) / n, iterations: n }));
    done();
  });
  step();
}

const spawnTrue = (cb) => cp.spawn('/bin/true', [], { stdio: 'ignore' }).on('close', cb);
// spawn_true_1gib: the same from a parent with 1 GiB resident (filled, so the pages are
// touched), allocated before the clock starts and dropped after.
let ballast = null;
const benches = [
  ['spawn_true', spawnTrue],
  ['spawn_true_1gib', spawnTrue, () => { ballast = Buffer.alloc(1 << 30, 1); }],
  ['exec_true', (cb) => cp.exec('true', (err) => { if (err) throw err; cb(); })],
  ['exec_file_true', (cb) => cp.execFile('/bin/true', (err) => { if (err) throw err; cb(); })],
];
const only = process.argv[2];
const run = (i) => {
  if (i === benches.length) return;
  const [name, op, setup] = benches[i];
  if (only && only !== name) return run(i + 1);
  if (setup) setup();
  timed(name, op, () => {
    ballast = null;
    run(i + 1);
  });
};
run(0);
