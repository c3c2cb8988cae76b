// Twin of BM_IpcStream100k: 100k small messages sent, each echoed back; 5 rounds.
const {child, report} = require('./lib/ipc_common');
const c = child();
const N = 100000, ROUNDS = 5;
let got = 0, round = 0, t0;
function go() { for (let i = 0; i < N; i++) c.send({i}); }
c.on('message', () => {
  if (t0 === undefined) { t0 = process.hrtime.bigint(); go(); return; }
  if (++got < N) return;
  got = 0;
  if (++round < ROUNDS) return go();
  const el = Number(process.hrtime.bigint() - t0) / 1e9;
  report('node_ipc_stream100k', (N * ROUNDS) / el, 'msgs/s');
  c.disconnect();
});
c.send(0);
