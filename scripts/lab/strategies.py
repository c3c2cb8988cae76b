#!/usr/bin/python3
"""The lab's strategy registry: every way of sharing a port that the lab measures, each one entry
(name, launcher, the worker apps it runs, what it promises) beside its launcher.

Adding a strategy: write `launch_x(cell)` (start the processes through `cell`, say how in
`cell.launcher`) and add one `Strategy(...)` to REGISTRY. cell.py, driver.py and `uvcluster lab`
(whose list the build generates from this file: `strategies.py --cpp-list OUT`) pick it up.

A launcher starts processes only through `cell.spawn` (so the cell stops them), registers the
processes that are not workers with `cell.add_primary`, and raises Unavailable when this machine
or build cannot run it. It returns once everything is started; the cell then waits for the
workers' .ready markers and for the port. stdlib only.
"""
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable

from load import HOST, free_port

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE = "/usr/bin/node"
APPS = ("native", "node")

# What a strategy can promise. scripts/compare.py checks Jain's index only on the "fair" ones (its
# FAIR set is kept equal to promising("fair") by scripts/tests/test_lab_registry.py); report.py's
# validations check "no-herd" (exclusive's herd below shared's).
PROMISES = {
    "fair": "connections are spread evenly over the workers (Jain's index is checked)",
    "no-herd": "one waiter is woken per connection",
}


class Unavailable(Exception):
    """This cell cannot run in this build/machine; the record says why instead of faking it."""


@dataclass(frozen=True)
class Strategy:
    name: str
    launch: Callable[..., None]   # launch(cell): starts the processes
    who_accepts: str              # one line, for people
    apps: tuple = APPS            # worker apps the launcher can run
    unsupported: str = ""         # the record's reason for any other app
    matrix_apps: tuple = None     # apps the lab's matrix runs (default: apps)
    reference: bool = False       # Node's own cluster: the quick profile runs it with Node workers
    promises: frozenset = field(default_factory=frozenset)
    client_addresses: int = 1     # > 1: the load comes from that many 127.0.0.x (load.run_spread)

    def runs(self, app):
        return app in self.apps

    def rows(self):
        return self.matrix_apps or self.apps


# ---------------------------------------------------------------- launchers

def launch_naive(cell):
    cell.launcher = "harness: every worker binds the port itself"
    cell.workers_may_fail = True  # all but one exit with EADDRINUSE
    for _ in range(cell.a.workers):
        cell.spawn(cell.worker_cmd(port=cell.port))


def launch_proxy(cell):
    cell.launcher = "lab-proxy (C++ primary, round-robin over per-worker ports)"
    ports = [free_port() for _ in range(cell.a.workers)]
    for p in ports:
        cell.spawn(cell.worker_cmd(port=p))
    cell.wait_ready(cell.a.workers)
    proxy = cell.spawn([cell.bin("lab-proxy"), "--port", str(cell.port),
                        "--upstream", ",".join(map(str, ports))])
    cell.add_primary(proxy, marks_ready=True)


def launch_uvcluster_run(cell, policy):
    """`uvcluster run --policy X --json -- WORKER`: the library's C++ primary."""
    cli = cell.bin("uvcluster")
    worker = cell.worker_cmd(port=cell.port)
    cell.launcher = f"uvcluster run --policy {policy}"
    # No restarts: a worker we stop must stay stopped. stdout (JSON events) kept in a log.
    with open(os.path.join(cell.tmp, "run-events.jsonl"), "w") as log:
        p = cell.spawn([cli, "run", "-i", str(cell.a.workers), "--policy", policy, "--json",
                        "--restart", "never", "--grace", "3000", "--"] + worker, stdout=log)
    cell.add_primary(p)
    cell.primary_first = True  # its drain disconnects the workers (Node workers then exit)


def launch_inherited(cell, extra=()):
    cell.launcher = "harness binds one socket; workers inherit it (fork/exec)"
    sock = cell.listen_socket()
    for _ in range(cell.a.workers):
        cell.spawn_inheriting(sock, extra)
    sock.close()


def launch_shared(cell):
    if cell.a.launcher == "harness":
        return launch_inherited(cell)
    return launch_uvcluster_run(cell, "none")


def launch_exclusive(cell):
    # auto means our own accept loop, whose waiter thread keeps EPOLLEXCLUSIVE exclusive (see
    # hello-native); --launcher uvcluster measures the library's instead.
    if cell.a.launcher == "uvcluster":
        return launch_uvcluster_run(cell, "exclusive")
    flag = "--exclusive" if cell.a.exclusive_mode == "thread" else "--exclusive-nested"
    extra = (flag,) + (("--rotate", str(cell.a.rotate)) if cell.a.rotate else ())
    if not cell.a.turn or cell.a.exclusive_mode != "thread":
        return launch_inherited(cell, extra)
    # The accept turn (AcceptTurn): one shared page in a memfd that every worker inherits; the
    # first worker to map it initialises it.
    turn = os.memfd_create("uvcluster-accept-turn")
    try:
        os.ftruncate(turn, 4096)
        cell.launcher = ("harness binds one socket and makes one accept-turn memfd; "
                         "workers inherit both (fork/exec)")
        sock = cell.listen_socket()
        for _ in range(cell.a.workers):
            fd = sock.fileno()
            turn_args = ("--accept-turn-fd", str(turn), "--turn-batch", str(cell.a.turn_batch))
            cell.spawn(cell.worker_cmd(fd=fd, extra=extra + turn_args),
                       pass_fds=(fd, turn))
        sock.close()
    finally:
        os.close(turn)


def launch_reuseport(cell):
    if cell.a.launcher != "harness":
        return launch_uvcluster_run(cell, "reuseport")
    cell.launcher = "harness binds one SO_REUSEPORT socket per worker; each inherits one"
    for _ in range(cell.a.workers):
        sock = cell.listen_socket(reuseport=True)
        cell.spawn_inheriting(sock)
        sock.close()


def launch_rr(cell):
    return launch_uvcluster_run(cell, "rr")


def launch_nginx(cell):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        raise Unavailable("nginx not installed")
    cell.launcher = "nginx 1 worker, upstream keepalive to per-worker ports"
    ports = [free_port() for _ in range(cell.a.workers)]
    for p in ports:
        cell.spawn(cell.worker_cmd(port=p))
    cell.wait_ready(cell.a.workers)
    conf = os.path.join(cell.tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_config(cell.tmp, cell.port, ports))
    cell.add_primary(cell.spawn([nginx, "-p", cell.tmp, "-c", conf]))


def nginx_config(tmp, port, upstream_ports):
    servers = "\n".join(f"    server {HOST}:{p};" for p in upstream_ports)
    return f"""# generated by scripts/lab/strategies.py
daemon off;
master_process on;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  upstream workers {{
{servers}
    keepalive 64;
  }}
  server {{
    listen {HOST}:{port};
    location / {{
      proxy_pass http://workers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def launch_node_cluster(cell, policy):
    cell.launcher = "node cluster (harness/strategies/node_primary.js)"
    extra = []
    if cell.a.app == "native":  # C++ workers under Node's primary (cluster-worker mode)
        extra = ["--native", cell.bin("hello-native"), "--accept", cell.a.accept]
    cell.accept_policy = cell.app_accept_policy()
    p = cell.spawn([NODE, os.path.join(SRC, "harness/strategies/node_primary.js"),
                    "--policy", policy, "--workers", str(cell.a.workers),
                    "--port", str(cell.port)] + extra)
    cell.add_primary(p)


# ---------------------------------------------------------------- the registry (in run order)

FAIR = frozenset({"fair"})
REGISTRY = {s.name: s for s in [
    Strategy("naive", launch_naive,
             "each worker binds the port: all but one fail with EADDRINUSE (recorded)"),
    Strategy("proxy", launch_proxy,
             "the primary (lab-proxy) accepts and pipes bytes to per-worker ports", promises=FAIR),
    Strategy("shared", launch_shared, "every worker accepts on one socket (Node's none)"),
    Strategy("exclusive", launch_exclusive,
             "shared socket, each worker waits with EPOLLEXCLUSIVE", apps=("native",),
             unsupported="EPOLLEXCLUSIVE needs our own accept loop: C++ workers only",
             promises=frozenset({"no-herd"})),
    # rr with Node workers runs, but the matrix's row for it is uvc-run.
    Strategy("rr", launch_rr, "the primary accepts and passes each fd (Node's rr)",
             matrix_apps=("native",), promises=FAIR),
    Strategy("sticky", lambda cell: launch_uvcluster_run(cell, "sticky"),
             "rr pinned by client address; load from 64 addresses (Python client: req/s not wrk's)",
             matrix_apps=("native",), promises=FAIR, client_addresses=64),
    Strategy("reuseport", launch_reuseport,
             "one SO_REUSEPORT socket per worker, the kernel hashes", promises=FAIR),
    Strategy("nginx", launch_nginx,
             "nginx (1 worker) accepts, upstream keepalive to per-worker ports", promises=FAIR),
    Strategy("node-rr", lambda cell: launch_node_cluster(cell, "rr"),
             "Node's own cluster, round-robin: the reference", reference=True, promises=FAIR),
    Strategy("node-none", lambda cell: launch_node_cluster(cell, "none"),
             "Node's own cluster, shared socket", reference=True),
    Strategy("uvc-run", launch_rr, "C++ primary (uvcluster run, rr) with Node workers",
             apps=("node",), unsupported="uvc-run is the row 'C++ primary + Node workers'",
             promises=FAIR),
]}
NAMES = list(REGISTRY)


def promising(promise):
    """Names of the strategies that promise `promise` (a key of PROMISES)."""
    return {s.name for s in REGISTRY.values() if promise in s.promises}


def main(argv):
    if argv == ["--names"]:  # one name a line
        print("\n".join(NAMES))
        return 0
    if len(argv) == 2 and argv[0] == "--cpp-list":  # the build's input for `uvcluster lab`
        text = "// Generated by the build from scripts/lab/strategies.py: do not edit.\n"
        text += "".join(f'"{n}",\n' for n in NAMES)
        with open(argv[1], "w") as f:
            f.write(text)
        return 0
    print("usage: strategies.py --names | --cpp-list OUT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
