// Node echo child for the ipc_*.js twins: every message (and handle) goes straight back.
process.on('message', (m, h) => { if (h) process.send(m, h); else process.send(m); });
