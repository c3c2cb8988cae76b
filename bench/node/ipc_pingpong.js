// Twin of BM_IpcPingPong: small-message round trips/s for ~2 s.
const {child, report} = require('./lib/ipc_common');
const c = child();
const msg = {ping: 1};
let n = 0, t0;
c.on('message', () => {
  if (n === 0) t0 = process.hrtime.bigint();
  const el = Number(process.hrtime.bigint() - t0) / 1e9;
  if (el >= 2) { report('node_ipc_pingpong', n / el, 'roundtrips/s'); c.disconnect(); return; }
  n++;
  c.send(msg);
});
c.send(msg);
