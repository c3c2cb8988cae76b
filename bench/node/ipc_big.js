// Twin of BM_Ipc64KiB / BM_Ipc1MiB / BM_Ipc16MiB: one string message of that many characters
// there and back, repeated for ~2 s per size (at least 3 round trips).
const {child, report} = require('./lib/ipc_common');
const c = child();
const sizes = [['node_ipc_64kib', 64 << 10], ['node_ipc_1mib', 1 << 20], ['node_ipc_16mib', 16 << 20]];
let current = -1, big, n, t0;
const next = () => {
  if (++current === sizes.length) return c.disconnect();
  big = 'x'.repeat(sizes[current][1]);
  n = -1;  // the first echo of each size is a warm-up
  c.send(big);
};
c.on('message', (m) => {
  if (current < 0) return next();  // the child is up
  if (n === -1) t0 = process.hrtime.bigint();
  n++;
  const el = Number(process.hrtime.bigint() - t0) / 1e9;
  if (n >= 3 && el >= 2) {
    report(sizes[current][0], (el / n) * 1e3, 'ms');
    return next();
  }
  c.send(big);
});
c.send(0);
