#!/usr/bin/python3
"""One cell of the strategy lab: (strategy, app, workers, load) -> one JSON record.

Starts the strategy's processes, waits until every worker says it listens (a .ready file per
worker in a private stats dir), samples fds/CPU/context switches, drives wrk on 127.0.0.1,
counts failed accepts from outside with perf on a short extra run, stops every process it
started (SIGTERM, then SIGKILL after a grace; by pid only) and checks that none is left.
stdlib only; run by `uvcluster lab` and by driver.py.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics  # noqa: E402

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STRATEGIES = ["naive", "proxy", "shared", "exclusive", "rr", "reuseport", "nginx",
              "node-rr", "node-none", "uvc-run"]
APPS = ["native", "node"]
LOADS = ["keepalive", "close"]
NODE = "/usr/bin/node"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Unavailable(Exception):
    """This cell cannot run in this build/machine; the record says why instead of faking it."""


# ---------------------------------------------------------------- environment facts

def _out(cmd, stderr=False):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stderr if stderr else p.stdout).strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment():
    def first_line(s):
        return s.splitlines()[0] if s else None
    try:
        migrate = open("/proc/sys/net/ipv4/tcp_migrate_req").read().strip()
    except OSError:
        migrate = None
    import resource
    return {
        "kernel": os.uname().release,
        "libuv": _out(["pkg-config", "--modversion", "libuv"]),
        "node": _out([NODE, "--version"]),
        "node_libuv": _out([NODE, "-p", "process.versions.uv"]),
        "wrk": first_line(_out(["wrk", "-v"]) or _out(["wrk", "-v"], stderr=True)),
        "nginx": first_line(_out(["nginx", "-v"], stderr=True)),
        "cores": os.cpu_count(),
        "uv_tcp_single_accept": os.environ.get("UV_TCP_SINGLE_ACCEPT", "unset"),
        "rlimit_nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "tcp_migrate_req": migrate,
        "loadavg_1m": os.getloadavg()[0],  # other work on this machine skews everything
    }


# ---------------------------------------------------------------- /proc sampling

def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_seconds(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads
    except (OSError, IndexError, ValueError):
        return None


def vol_ctxsw(pid):
    """Voluntary context switches summed over the process's threads."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            for line in open(f"/proc/{pid}/task/{tid}/status"):
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
    except OSError:
        return None
    return total


def alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def children_of(pids):
    """Every live descendant of the given pids (scan of /proc; used for nginx workers and the
    orphan check)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), set(pids)
    while frontier:
        nxt = {c for c, p in parent.items() if p in frontier and c not in found}
        found |= nxt
        frontier = nxt
    return {p for p in found if alive(p)}


class Sampler(threading.Thread):
    """Samples the open fds of every watched pid every 100 ms while the load runs."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = list(pids)
        self.samples = {p: [] for p in self.pids}
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            for p in self.pids:
                n = fd_count(p)
                if n is not None:
                    self.samples[p].append(n)
            self.stop_event.wait(0.1)

    def stop(self):
        self.stop_event.set()
        self.join()


# ---------------------------------------------------------------- processes

class Cell:
    def __init__(self, a):
        self.a = a
        self.build = os.path.abspath(a.build)
        self.tmp = tempfile.mkdtemp(prefix="uvc-lab-")
        self.stats_dir = os.path.join(self.tmp, "stats")
        os.mkdir(self.stats_dir)
        self.procs = []          # Popen objects started directly by us
        self.primary_pids = []   # primary / proxy / nginx master
        self.expect_ready = a.workers
        self.notes = []
        self.launcher = None
        self.accept_policy = None
        self.port = free_port()
        self.primary_first = False

    # -- helpers
    def bin(self, name):
        path = os.path.join(self.build, "bin", name)
        if not os.access(path, os.X_OK):
            raise Unavailable(f"{path} not built")
        return path

    def env(self):
        e = dict(os.environ)
        e["UVC_LAB_STATS_DIR"] = self.stats_dir
        e.pop("UVC_LAB_STATS", None)
        return e

    def spawn(self, cmd, pass_fds=(), stdout=subprocess.DEVNULL):
        log = open(os.path.join(self.tmp, f"p{len(self.procs)}.log"), "w")
        p = subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=stdout,
                             stderr=log, pass_fds=pass_fds, close_fds=True)
        log.close()
        self.procs.append(p)
        return p

    def worker_cmd(self, port=None, fd=None, extra=()):
        if self.a.app == "native":
            cmd = [self.bin("hello-native")]
            cmd += ["--port", str(port)] if port is not None else ["--fd", str(fd)]
            cmd += ["--accept", self.a.accept]
            self.accept_policy = self.a.accept
        else:
            cmd = [NODE, os.path.join(SRC, "harness/apps/hello-node.js")]
            cmd += ["--port", str(port)] if port is not None else ["--fd", str(fd)]
            self.accept_policy = "libuv-node (one per wakeup, libuv>=1.45)"
        return cmd + list(extra)

    def listen_socket(self, reuseport=False):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((HOST, self.port))
        s.listen(511)
        return s

    def spawn_inheriting(self, sock, extra=()):
        fd = sock.fileno()
        self.spawn(self.worker_cmd(fd=fd, extra=extra), pass_fds=(fd,))

    # -- strategies
    def launch(self):
        s, app, n = self.a.strategy, self.a.app, self.a.workers
        if s == "naive":
            self.launcher = "harness: every worker binds the port itself"
            for _ in range(n):
                self.spawn(self.worker_cmd(port=self.port))
        elif s == "proxy":
            self.launcher = "lab-proxy (C++ primary, round-robin over per-worker ports)"
            ports = [free_port() for _ in range(n)]
            for p in ports:
                self.spawn(self.worker_cmd(port=p))
            self.wait_ready(n)
            proxy = self.spawn([self.bin("lab-proxy"), "--port", str(self.port),
                                "--upstream", ",".join(map(str, ports))])
            self.primary_pids.append(proxy.pid)
        elif s in ("shared", "exclusive"):
            extra = ()
            if s == "exclusive":
                if app != "native":
                    raise Unavailable("EPOLLEXCLUSIVE needs our own accept loop: C++ workers only")
                flag = "--exclusive" if self.a.exclusive_mode == "thread" else "--exclusive-nested"
                extra = (flag,) + (("--rotate", str(self.a.rotate)) if self.a.rotate else ())
            # exclusive: auto means our own accept loop, whose waiter thread keeps EPOLLEXCLUSIVE
            # exclusive (see hello-native); --launcher uvcluster measures the library's instead.
            run = self.use_uvcluster_run() if s == "shared" else self.a.launcher == "uvcluster"
            if run:
                return self.launch_uvcluster_run("none" if s == "shared" else "exclusive")
            self.launcher = "harness binds one socket; workers inherit it (fork/exec)"
            sock = self.listen_socket()
            for _ in range(n):
                self.spawn_inheriting(sock, extra)
            sock.close()
        elif s == "reuseport":
            if self.use_uvcluster_run():
                return self.launch_uvcluster_run("reuseport")
            self.launcher = "harness binds one SO_REUSEPORT socket per worker; each inherits one"
            for _ in range(n):
                sock = self.listen_socket(reuseport=True)
                self.spawn_inheriting(sock)
                sock.close()
        elif s == "rr":
            return self.launch_uvcluster_run("rr")
        elif s == "uvc-run":
            if app != "node":
                raise Unavailable("uvc-run is the row 'C++ primary + Node workers'")
            return self.launch_uvcluster_run("rr")
        elif s == "nginx":
            self.launch_nginx()
        elif s in ("node-rr", "node-none"):
            self.launcher = "node cluster (harness/strategies/node_primary.js)"
            extra = []
            if app == "native":  # C++ workers under Node's primary (cluster-worker mode)
                extra = ["--native", self.bin("hello-native"), "--accept", self.a.accept]
                self.accept_policy = self.a.accept
            else:
                self.accept_policy = "libuv-node (one per wakeup, libuv>=1.45)"
            p = self.spawn([NODE, os.path.join(SRC, "harness/strategies/node_primary.js"),
                            "--policy", s.split("-")[1], "--workers", str(n),
                            "--port", str(self.port)] + extra)
            self.primary_pids.append(p.pid)
        else:
            raise ValueError(s)

    def use_uvcluster_run(self):
        """rr and uvc-run exist only as `uvcluster run`; shared/exclusive/reuseport use it when
        this build has it (--launcher auto), else the harness hands the sockets out itself."""
        if self.a.strategy in ("rr", "uvc-run") or self.a.launcher == "uvcluster":
            return True
        return self.a.launcher == "auto" and uvcluster_run_available(self.build)

    def launch_uvcluster_run(self, policy):
        """`uvcluster run --policy X --json -- WORKER`: the cluster branch's C++ primary."""
        cli = self.bin("uvcluster")
        if not uvcluster_run_available(self.build):
            raise Unavailable("`uvcluster run` is not in this build (cluster branch not merged yet)")
        if self.a.app == "native":
            worker = [self.bin("hello-native"), "--port", str(self.port), "--accept", self.a.accept]
            self.accept_policy = self.a.accept
        else:
            worker = [NODE, os.path.join(SRC, "harness/apps/hello-node.js"), "--port", str(self.port)]
            self.accept_policy = "libuv-node (one per wakeup, libuv>=1.45)"
        self.launcher = f"uvcluster run --policy {policy}"
        # No restarts: a worker we stop must stay stopped. stdout (JSON events) kept in a log.
        log = open(os.path.join(self.tmp, "run-events.jsonl"), "w")
        p = self.spawn([cli, "run", "-i", str(self.a.workers), "--policy", policy, "--json",
                        "--restart", "never", "--grace", "3000", "--"] + worker, stdout=log)
        log.close()
        self.primary_pids.append(p.pid)
        self.primary_first = True  # its drain disconnects the workers (Node workers then exit)

    def launch_nginx(self):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(nginx, os.X_OK):
            raise Unavailable("nginx not installed")
        self.launcher = "nginx 1 worker, upstream keepalive to per-worker ports"
        ports = [free_port() for _ in range(self.a.workers)]
        for p in ports:
            self.spawn(self.worker_cmd(port=p))
        self.wait_ready(self.a.workers)
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_config(self.tmp, self.port, ports))
        p = self.spawn([nginx, "-p", self.tmp, "-c", conf])
        self.primary_pids.append(p.pid)

    # -- readiness
    def ready_pids(self):
        """Workers that said they listen (primaries such as lab-proxy write a marker too)."""
        return [int(f[:-6]) for f in os.listdir(self.stats_dir)
                if f.endswith(".ready") and int(f[:-6]) not in self.primary_pids]

    def failed_workers(self):
        out = []
        for f in os.listdir(self.stats_dir):
            if f.endswith(".json"):
                try:
                    j = json.load(open(os.path.join(self.stats_dir, f)))
                except (OSError, ValueError):
                    continue
                if j.get("error"):
                    out.append(j)
        return out

    def wait_ready(self, n, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = len(self.ready_pids())
            if self.primary_pids and any(not os.path.exists(os.path.join(self.stats_dir, f"{p}.ready"))
                                         for p in self.primary_pids if self.writes_ready(p)):
                ready = 0
            failed = len(self.failed_workers())
            if ready + failed >= n and ready > 0:
                if self.a.strategy != "naive" or self.all_naive_settled(n):
                    return
            dead = [p for p in self.procs if p.poll() is not None and p.pid in self.primary_pids]
            if dead:
                raise RuntimeError(f"launcher exited early: {self.log_tail()}")
            time.sleep(0.02)
        raise RuntimeError(f"not ready after {timeout}s ({len(self.ready_pids())}/{n}): {self.log_tail()}")

    def writes_ready(self, pid):
        return self.a.strategy == "proxy"  # lab-proxy marks itself ready; nginx/node: port probe

    def all_naive_settled(self, n):
        # naive: failures exit; wait until every spawned worker is either ready or gone.
        return all(p.poll() is not None or p.pid in self.ready_pids() for p in self.procs[:n])

    def wait_port(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"port {self.port} not accepting: {self.log_tail()}")

    def log_tail(self):
        out = []
        for f in sorted(os.listdir(self.tmp)):
            if f.endswith(".log"):
                t = open(os.path.join(self.tmp, f)).read().strip()
                if t:
                    out.append(f"{f}: {t[-300:]}")
        return " | ".join(out)

    # -- worker snapshots (SIGUSR2 -> fresh stats file with a higher seq)
    def snapshot(self, pids, timeout=3.0):
        def read(pid):
            try:
                return json.load(open(os.path.join(self.stats_dir, f"{pid}.json")))
            except (OSError, ValueError):
                return None
        before = {p: (read(p) or {}).get("seq", -1) for p in pids}
        for p in pids:
            try:
                os.kill(p, signal.SIGUSR2)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        snap = {}
        while time.monotonic() < deadline and len(snap) < len(pids):
            for p in pids:
                if p not in snap:
                    j = read(p)
                    if j and j.get("seq", -1) > before[p]:
                        snap[p] = j
            time.sleep(0.01)
        return snap

    # -- stopping
    def all_pids(self):
        pids = {p.pid for p in self.procs} | set(self.ready_pids())
        return pids | children_of(pids)

    def stop(self):
        tracked = self.all_pids()
        workers = [p for p in self.ready_pids() if alive(p)]
        # Workers first, so their final counters are written; then primaries. A cluster primary
        # goes first instead: it drains (disconnects) its workers, and a worker killed under it
        # would only be reported as a crash.
        others = [p for p in tracked if p not in workers]
        order = (others, workers) if self.primary_first else (workers, others)
        for group in order:
            for pid in group:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and any(alive(p) for p in group):
                for p in self.procs:
                    p.poll()  # reap direct children as they exit
                time.sleep(0.02)
        for pid in tracked:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.notes.append(f"pid {pid} needed SIGKILL")
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.05)
        # Exit statuses of what we started (naive's losers exit 3 on purpose), and any sanitizer
        # report in the logs (an ASan build runs the same cells: --build build-asan).
        self.exits = [{"cmd": os.path.basename(p.args[0]) if p.args[0] != NODE else
                       os.path.basename(p.args[1]), "pid": p.pid, "code": p.returncode}
                      for p in self.procs]
        for e in self.exits:
            if e["code"] not in (0, 3, None):
                self.notes.append(f"{e['cmd']} (pid {e['pid']}) exited with {e['code']}")
        for f in sorted(os.listdir(self.tmp)):
            if f.endswith(".log"):
                text = open(os.path.join(self.tmp, f), errors="replace").read()
                for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:", "Assertion"):
                    if marker in text:
                        i = text.index(marker)
                        self.notes.append(f"{f}: {text[max(0, i - 100):i + 300]}")
                        break
        return sorted(p for p in tracked | children_of(tracked) if alive(p))

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


_RUN_AVAILABLE = {}


def uvcluster_run_available(build):
    if build not in _RUN_AVAILABLE:
        cli = os.path.join(build, "bin", "uvcluster")
        try:
            ok = subprocess.run([cli, "run", "--help"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        _RUN_AVAILABLE[build] = ok
    return _RUN_AVAILABLE[build]


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def nginx_config(tmp, port, upstream_ports):
    servers = "\n".join(f"    server {HOST}:{p};" for p in upstream_ports)
    return f"""# generated by scripts/lab/cell.py
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


# ---------------------------------------------------------------- load and herd

def run_wrk(port, duration, connections, close, timeout_extra=15):
    threads = max(1, min(2, connections))
    env = dict(os.environ, WRK_CLOSE="1" if close else "0")
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
           "--timeout", "2s", "-s", os.path.join(SRC, "harness/wrk/report.lua"),
           f"http://{HOST}:{port}/"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       timeout=duration + timeout_extra)
    for line in p.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    raise RuntimeError(f"wrk gave no report: {p.stdout[-300:]} {p.stderr[-300:]}")


def run_serial(port, duration, gap=0.002):
    """Serial Connection: close requests, `gap` s apart, for `duration` s: every worker is idle
    when a connection arrives, the regime where a thundering herd shows (perf-anchors §1.10,
    §2.1). Returns a wrk-shaped report (requests, duration_us, errors)."""
    req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    done = errors = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < duration:
        try:
            with socket.create_connection((HOST, port), timeout=2) as c:
                c.sendall(req)
                while c.recv(4096):
                    pass
            done += 1
        except OSError:
            errors += 1
        time.sleep(gap)
    return {"requests": done, "duration_us": int((time.monotonic() - t0) * 1e6),
            "errors": {"connect": errors}}


def herd_load(port, duration, connections, kind):
    if kind == "serial":
        return run_serial(port, duration)
    return run_wrk(port, duration, connections, close=True)


def perf_usable():
    return shutil.which("perf") is not None and os.path.isdir("/sys/kernel/tracing/events/syscalls") \
        or os.path.isdir("/sys/kernel/debug/tracing/events/syscalls")


def herd_outside(pids, port, duration, connections, method="perf", load="serial"):
    """A short Connection: close run while perf (or strace) counts accept4 results in `pids`.
    Returns counts and the run's wrk report (its req/s shows the observer's cost)."""
    pid_list = ",".join(map(str, pids))
    out = tempfile.NamedTemporaryFile(prefix="uvc-herd-", suffix=".txt", delete=False)
    out.close()
    if method == "perf":
        cmd = ["perf", "stat", "-x,", "-o", out.name,
               "-e", "syscalls:sys_exit_accept4", "--filter", "ret == -11",
               "-e", "syscalls:sys_exit_accept4", "--filter", "ret >= 0",
               "-p", pid_list, "--", "sleep", str(duration + 0.6)]
    else:
        cmd = ["strace", "-f", "-c", "-e", "trace=accept4,accept", "-o", out.name]
        for p in pids:
            cmd += ["-p", str(p)]
    obs = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # attach before the load starts
        report = herd_load(port, duration, connections, load)
        if method == "strace":
            obs.send_signal(signal.SIGINT)
        _, err = obs.communicate(timeout=15)
    finally:
        if obs.poll() is None:
            obs.kill()
            obs.wait()
    text = open(out.name).read()
    os.unlink(out.name)
    res = {"method": method, "load": load, "wrk_rps": rps(report), "requests": report["requests"]}
    if method == "perf":
        counts = []
        for line in text.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and "sys_exit_accept4" in parts[2]:
                counts.append(int(parts[0]) if parts[0].isdigit() else None)
        if len(counts) != 2 or None in counts:
            res["error"] = f"perf output not understood: {text.strip()[-200:]} {err[-200:]}"
            return res
        res["eagain"], res["accepted"] = counts
    else:
        eagain = accepted = 0
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[-1] in ("accept4", "accept"):
                calls = int(parts[3])
                errors = int(parts[4]) if len(parts) == 6 else 0
                eagain += errors  # strace -c lumps every error; accept on loopback only EAGAINs
                accepted += calls - errors
        res["eagain"], res["accepted"] = eagain, accepted
    res["per_conn"] = metrics.ratio(res["eagain"], res["accepted"])
    return res


def rps(report):
    return report["requests"] / (report["duration_us"] / 1e6) if report["duration_us"] else 0.0


# ---------------------------------------------------------------- the cell

def run_cell(a):
    rec = {"schema": 1, "strategy": a.strategy, "app": a.app, "workers": a.workers, "load": a.load,
           "duration_s": a.duration, "connections": a.connections, "env": environment(),
           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cell = Cell(a)
    try:
        try:
            cell.launch()
        except Unavailable as e:
            rec.update(available=False, reason=str(e))
            return rec
        rec["available"] = True
        rec["launcher"] = cell.launcher
        cell.wait_ready(cell.expect_ready)
        cell.wait_port()
        measure(cell, a, rec)
    except Exception as e:  # the record carries the failure; processes are still stopped
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        orphans = cell.stop() if cell.procs else []
        rec.setdefault("processes", {})
        rec["processes"].update(started=len(getattr(cell, "all_pids_seen", cell.procs)),
                                orphans=orphans, exits=getattr(cell, "exits", []))
        rec["notes"] = cell.notes
        final = read_final_stats(cell)
        if rec.get("available") and "fairness" in rec:
            rec["primary_stats"] = final.get("primary")
        cell.cleanup()
    return rec


def read_final_stats(cell):
    out = {}
    for pid in cell.primary_pids:
        try:
            out["primary"] = json.load(open(os.path.join(cell.stats_dir, f"{pid}.json")))
        except (OSError, ValueError):
            pass
    return out


def measure(cell, a, rec):
    workers = sorted(p for p in cell.ready_pids() if alive(p))
    primary_group = sorted(set(cell.primary_pids) | children_of(cell.primary_pids) - set(workers))
    cell.all_pids_seen = set(workers) | set(primary_group) | {p.pid for p in cell.procs}
    failed = cell.failed_workers()
    rec["accept_policy"] = cell.accept_policy
    rec["startup"] = {"requested": a.workers, "serving": len(workers),
                      "eaddrinuse": sum(1 for f in failed if f.get("error") == "EADDRINUSE"),
                      "failures": [f.get("error") for f in failed]}
    rec["pids"] = {"primary": primary_group, "workers": workers}

    every = primary_group + workers
    idle_fd = {p: fd_count(p) for p in every}
    cpu0 = {p: cpu_seconds(p) for p in every}
    cs0 = {p: vol_ctxsw(p) for p in workers}
    s0 = cell.snapshot(workers)

    sampler = Sampler(every)
    sampler.start()
    try:
        report = run_wrk(cell.port, a.duration, a.connections, close=a.load == "close")
    finally:
        sampler.stop()
    cpu1 = {p: cpu_seconds(p) for p in every}
    cs1 = {p: vol_ctxsw(p) for p in workers}
    s1 = cell.snapshot(workers)

    # throughput / latency
    errs = report["errors"]
    lat = report["latency_us"]
    rec["throughput"] = {"rps": rps(report), "requests": report["requests"],
                         "errors": errs, "errors_total": sum(errs.values()) - errs["timeout"],
                         "timeouts": errs["timeout"]}
    rec["latency_ms"] = {k: lat["p"][q] / 1000.0 for k, q in (("p50", "50"), ("p90", "90"), ("p99", "99"))}
    rec["latency_ms"].update(mean=lat["mean"] / 1000.0, max=lat["max"] / 1000.0)

    # fairness over the main run (per-worker deltas; failed naive workers count as 0)
    conns = metrics.diff_counts(s1, s0, "connections")
    reqs = metrics.diff_counts(s1, s0, "requests")
    zeros = [0] * rec["startup"]["eaddrinuse"]
    rec["fairness"] = {"connections": metrics.fairness([conns[p] for p in sorted(conns)] + zeros),
                       "requests": metrics.fairness([reqs[p] for p in sorted(reqs)] + zeros),
                       "snapshots_missing": len(workers) - len(s1)}

    # fds: peak - idle per concurrent connection
    def fd_entry(p):
        return {"pid": p, "idle": idle_fd[p], "peak": max(sampler.samples[p], default=None),
                "delta": metrics.fd_delta(idle_fd[p], sampler.samples[p]),
                "p50": metrics.percentile(sampler.samples[p], 50)}
    prim = [fd_entry(p) for p in primary_group]
    wk = [fd_entry(p) for p in workers]
    prim_delta = sum(e["delta"] or 0 for e in prim) if prim else None
    wk_delta = sum(e["delta"] or 0 for e in wk)
    rec["fds"] = {"primary": prim, "workers": wk,
                  "per_conn_primary": metrics.per_connection(prim_delta, a.connections),
                  "per_conn_workers": metrics.per_connection(wk_delta, a.connections)}

    # CPU per 1,000 requests
    def spent(ps):
        vals = [(cpu1[p] - cpu0[p]) for p in ps if cpu0.get(p) is not None and cpu1.get(p) is not None]
        return sum(vals) if vals else None
    cp, cw = spent(primary_group), spent(workers)
    rec["cpu"] = {"primary_s": cp, "workers_s": cw,
                  "primary_per_1k": metrics.per_1k(cp, report["requests"]),
                  "workers_per_1k": metrics.per_1k(cw, report["requests"]),
                  "total_per_1k": metrics.per_1k((cp or 0) + (cw or 0), report["requests"])}

    # herd: inside counters (C++ workers) over the main run; context switches as upper bound
    accepted = sum(conns.values())
    herd = {"connections_main": accepted}
    if a.app == "native" and all("accept_eagain" in s1.get(p, {}) for p in workers) and workers:
        eag = sum(metrics.diff_counts(s1, s0, "accept_eagain").values())
        herd["inside"] = {"eagain": eag, "accepted": accepted, "per_conn": metrics.ratio(eag, accepted)}
    cs = sum((cs1[p] or 0) - (cs0[p] or 0) for p in workers if cs0.get(p) is not None)
    herd["ctxsw_per_conn"] = metrics.ratio(cs, accepted)
    # outside: a short extra Connection: close run observed by perf (same for every worker kind)
    if a.herd_duration > 0 and workers:
        if a.herd_method == "perf" and not perf_usable():
            herd["outside"] = {"method": "perf", "error": "perf/tracefs not usable here"}
        else:
            if a.herd_overhead:  # unobserved run before the observed one...
                herd["unobserved_rps"] = rps(herd_load(cell.port, a.herd_duration, a.herd_connections,
                                                       a.herd_load))
            h0 = cell.snapshot(workers)
            hcs0 = {p: vol_ctxsw(p) for p in workers}
            # Every process of the cell is observed: in rr-like strategies the primary accepts.
            herd["outside"] = herd_outside(every, cell.port, a.herd_duration, a.herd_connections,
                                           a.herd_method, a.herd_load)
            herd["outside"]["connections"] = a.herd_connections
            hcs1 = {p: vol_ctxsw(p) for p in workers}
            h1 = cell.snapshot(workers)
            # Upper bound of wake-ups in the herd run: workers' voluntary switches per accept.
            hcs = sum((hcs1[p] or 0) - (hcs0[p] or 0) for p in workers if hcs0.get(p) is not None)
            herd["outside"]["ctxsw_per_conn"] = metrics.ratio(hcs, herd["outside"].get("accepted"))
            # Who took the herd run's connections, and who woke: EPOLLEXCLUSIVE's first-waiter
            # effect shows as one worker taking everything while the others stay asleep.
            got = metrics.diff_counts(h1, h0, "connections")
            herd["outside"]["per_worker"] = [got.get(p, 0) for p in workers]
            herd["outside"]["ctxsw_per_worker"] = [(hcs1[p] or 0) - (hcs0[p] or 0) for p in workers]
            if "inside" in herd:
                eag = sum(metrics.diff_counts(h1, h0, "accept_eagain").values())
                acc = sum(metrics.diff_counts(h1, h0, "connections").values())
                herd["inside_during_outside_run"] = {"eagain": eag, "accepted": acc,
                                                     "per_conn": metrics.ratio(eag, acc)}
            if a.herd_overhead:  # ...and one after it: the observed run is compared to their mean
                after = rps(herd_load(cell.port, a.herd_duration, a.herd_connections, a.herd_load))
                herd["unobserved_rps"] = (herd["unobserved_rps"] + after) / 2
            if "unobserved_rps" in herd and herd["outside"].get("wrk_rps"):
                herd["outside"]["overhead"] = 1 - herd["outside"]["wrk_rps"] / herd["unobserved_rps"]
    rec["herd"] = herd


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default=os.environ.get("UVC_BUILD_DIR", os.path.join(SRC, "build")))
    p.add_argument("--strategy", required=True, choices=STRATEGIES)
    p.add_argument("--app", required=True, choices=APPS)
    p.add_argument("--workers", required=True, type=int)
    p.add_argument("--load", required=True, choices=LOADS)
    p.add_argument("--duration", required=True, type=int)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print only the record, one line")
    p.add_argument("--accept", choices=["one", "drain"], default="one",
                   help="hello-native accept policy per wake-up (default one, like Node's libuv)")
    p.add_argument("--rotate", type=int, default=0, help="exclusive: re-register every K accepts")
    p.add_argument("--exclusive-mode", choices=["thread", "nested"], default="thread",
                   help="exclusive via the harness: a thread blocks in epoll_wait on the private "
                        "EPOLLEXCLUSIVE set (thread) or the loop polls that set (nested)")
    p.add_argument("--launcher", choices=["auto", "harness", "uvcluster"], default="auto",
                   help="shared/exclusive/reuseport through `uvcluster run` (auto: when built) "
                        "or the harness (it binds and the workers inherit the sockets)")
    p.add_argument("--herd-duration", type=float, default=1.0, help="extra perf run, 0 = skip")
    p.add_argument("--herd-load", choices=["serial", "wrk"], default="serial",
                   help="herd run: serial connections 2 ms apart (idle workers, default) or wrk "
                        "Connection: close with --herd-connections")
    p.add_argument("--herd-connections", type=int, default=2,
                   help="wrk connections of the herd run: few, so workers are idle when a "
                        "connection arrives (the regime where a herd exists; a saturating load "
                        "keeps every worker busy and measures accept races instead)")
    p.add_argument("--herd-method", choices=["perf", "strace"], default="perf")
    p.add_argument("--herd-overhead", action="store_true",
                   help="also run the herd load unobserved, to report the observer's cost")
    a = p.parse_args(argv)
    if not 1 <= a.workers <= 16:
        p.error("--workers must be 1..16")
    if not 0 < a.duration <= 600:
        p.error("--duration must be in (0, 600] seconds")
    if not 1 <= a.connections <= 2000:
        p.error("--connections must be 1..2000")
    return a


def main(argv=None):
    a = parse_args(argv)
    # SIGTERM (a driver's timeout, a CI cancel) unwinds like Ctrl-C, so run_cell's finally
    # still stops every process this cell started.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    rec = run_cell(a)
    sys.path.insert(0, os.path.join(SRC, "scripts"))
    import strict_json  # scripts/strict_json.py: non-finite -> null + reason, allow_nan=False
    print(strict_json.dumps(rec) if a.json else strict_json.dumps(rec, indent=2))
    return 1 if rec.get("error") or rec.get("processes", {}).get("orphans") else 0


if __name__ == "__main__":
    sys.exit(main())
