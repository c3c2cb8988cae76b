// Twin of BM_IpcHandlePassing: a listening net.Server sent to the echo child and back (ACKed
// both ways), for ~2 s.
const net = require('net');
const {child, report} = require('./lib/ipc_common');
const c = child();
const server = net.createServer();
let n = 0, t0;
server.listen(0, '127.0.0.1', () => {
  c.on('message', (m, h) => {
    if (h) h.close();
    if (n === 0) t0 = process.hrtime.bigint();
    const el = Number(process.hrtime.bigint() - t0) / 1e9;
    if (el >= 2) { report('node_ipc_handle_passing', n / el, 'handles/s'); c.disconnect(); server.close(); return; }
    n++;
    c.send({h: 1}, server);
  });
  c.send(0);
});
