// Node echo child for the ipc_*.js twins: every message (and handle) goes straight back.
// A received net.Server is a listening server in this process too: close our copy once it has
// been sent back, and leave when the parent disconnects.
process.on('message', (m, h) => {
  if (h) process.send(m, h, () => h.close && h.close());
  else process.send(m);
});
process.on('disconnect', () => process.exit(0));
