// Node twin of `uvcluster run --json` for the RR handoff benchmark: Node's own cluster primary
// forking N workers of EXEC (a .js worker, or a native worker via execPath). Prints the same
// JSON lines the CLI prints for fork/listening, and on SIGTERM disconnects and exits.
// argv: n policy(rr|none) exec [args...]
const cluster = require('cluster');
const [nStr, policy, exec, ...args] = process.argv.slice(2);
cluster.schedulingPolicy = policy === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;
if (!exec.endsWith('.js')) process.execPath = exec;
cluster.setupPrimary({ exec, args, stdio: ['inherit', 2, 'inherit', 'ipc'] });
const line = (o) => process.stdout.write(JSON.stringify(o) + '\n');
cluster.on('fork', (w) => line({ event: 'fork', id: w.id, pid: w.process.pid }));
cluster.on('listening', (w, a) => line({ event: 'listening', id: w.id, pid: w.process.pid, port: a.port }));
let n = +nStr, exited = 0;
cluster.on('exit', () => { if (++exited === n) process.exit(0); });
process.on('SIGTERM', () => cluster.disconnect());
for (let i = 0; i < n; i++) cluster.fork();
