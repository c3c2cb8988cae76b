// Shared by the ipc_*.js twins: fork the Node echo child, print one JSON result line.
const {fork} = require('child_process');
exports.child = () => fork(__dirname + '/ipc_echo_child.js');
exports.report = (name, value, unit) => console.log(JSON.stringify({name, value, unit}));
