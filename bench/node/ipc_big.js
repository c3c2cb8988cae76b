// Twin of BM_Ipc1MiB: one 1 MiB string message there and back, for ~2 s.
const {child, report} = require('./lib/ipc_common');
const c = child();
const big = 'x'.repeat(1 << 20);
let n = 0, t0;
c.on('message', () => {
  if (n === 0) t0 = process.hrtime.bigint();
  const el = Number(process.hrtime.bigint() - t0) / 1e9;
  if (el >= 2) { report('node_ipc_1mib', (el / n) * 1e3, 'ms'); c.disconnect(); return; }
  n++;
  c.send(big);
});
c.send(0);
