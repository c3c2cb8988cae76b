#!/usr/bin/python3
"""`make chaos`: the fault lab. Every fault runs against every manager with the same Node app
(scripts/chaos/app.js) and the same load (wrk on 127.0.0.1, "Connection: close", bounded):

  managers: uvc-rr, uvc-none, uvc-reuseport (`uvcluster run --policy X`), node-cluster and
            node-cluster-none (scripts/chaos/node_cluster.js, Node's cluster module with
            SCHED_RR / SCHED_NONE: the references of uvc-rr and uvc-none; Node 20 has no
            reuseport counterpart; its workers accept for themselves as under SCHED_NONE, so
            uvc-reuseport is compared with node-cluster-none)
            and pm2 (`pm2-runtime` with an
            ecosystem file: cluster mode, N instances, kill_timeout = the grace; PM2_HOME in
            the run's temp dir; installed into node_modules/ by scripts/deps.sh).

One run = start the manager, wait until N workers listen, a short load to warm up, the
primary's fds and RSS at rest, start wrk (and a fresh-connection probe), let it run `warm`
seconds, play the fault, keep the load on for `observe` seconds, the primary at rest again,
stop everything this run started (by pid) and count what was left. Results: results/chaos/latest.json (strict JSON) and, through
scripts/chaos/report.py, results/CHAOS.md with a table and a plot per fault.

usage: chaos.py [--build build] [--profile quick|default|full] [--faults a,b] [--managers a,b]
                [--out results/chaos/latest.json] [--no-report]
"""
import argparse
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))
import analysis  # noqa: E402
from procfs import fd_count  # noqa: E402  (shared with the strategy lab)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "scripts", "chaos")
NODE = "/usr/bin/node"
HOST = "127.0.0.1"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
MANAGERS = ["uvc-rr", "uvc-none", "uvc-reuseport", "node-cluster", "node-cluster-none", "pm2"]
FAULTS = ["kill-every-2s", "sigstop", "crash-loop", "fd-exhaust-workers", "fd-exhaust-primary",
          "maxconn-refusals", "slowloris", "ipc-garbage", "ipc-oversized", "ipc-nested",
          "sigterm-drain", "sighup-reload", "primary-sigkill"]
# Per profile: the managers (quick leaves out uvc-none and pm2, the slowest to start), workers,
# wrk connections, warm-up, observation after the fault, the outage window N, and the fault
# windows (seconds).
PROFILES = {
    "quick": dict(managers=["uvc-rr", "uvc-reuseport", "node-cluster"], workers=2, conns=8, warm=0.8, observe=1.5, outage_after=1.0, kills=2,
                  stop=2.2, crash=1.5, fd=1.0, idle_conns=150, maxconn=2.0, burst_conns=40,
                  slowloris=1.5, slow_conns=100, ipc=1.5),
    "default": dict(managers=MANAGERS, workers=4, conns=16, warm=1.0, observe=2.0, outage_after=1.5, kills=3,
                    stop=3.0, crash=2.5, fd=1.5, idle_conns=300, maxconn=2.0, burst_conns=60,
                    slowloris=2.0, slow_conns=200, ipc=2.0),
    "full": dict(managers=MANAGERS, workers=4, conns=16, warm=2.0, observe=5.0, outage_after=3.0, kills=5,
                 stop=10.0, crash=6.0, fd=4.0, idle_conns=600, maxconn=6.0, burst_conns=60,
                 slowloris=6.0, slow_conns=400, ipc=4.0),
}
GRACE_MS = 3000
WRK_TIMEOUT_S = 2
WRK_MAX_S = 90  # wrk's -d: an upper bound only, the run stops it with SIGINT
PREWARM_S = 0.6


# ---------------------------------------------------------------- /proc

def proc_stat(pid):
    """(state, ppid, starttime) or None."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return f[0], int(f[1]), int(f[19])
    except (OSError, IndexError, ValueError):
        return None


def process_table():
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = proc_stat(int(d))
            if s:
                table[int(d)] = s
    return table


def descendants(root):
    """{pid: (state, ppid, starttime)} of every descendant of root, zombies included."""
    table = process_table()
    found, frontier = {}, {root}
    while frontier:
        nxt = {p for p, s in table.items() if s[1] in frontier and p not in found}
        for p in nxt:
            found[p] = table[p]
        frontier = nxt
    return found


def rss_kb(pid):
    try:
        return int(open(f"/proc/{pid}/statm").read().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return None


def alive(pid, starttime=None):
    s = proc_stat(pid)
    return bool(s) and s[0] != "Z" and (starttime is None or s[2] == starttime)


def established_inodes(port):
    """Socket inodes of ESTABLISHED TCP connections whose local port is `port` (ss, through
    netlink with a filter: /proc/net/tcp would also list every TIME_WAIT socket of the load)."""
    try:
        out = subprocess.run(["ss", "-Htne", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(re.findall(r"\bino:(\d+)", out))


def socket_inodes(pid):
    """Inodes of the sockets in process `pid`'s fd table."""
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[8:-1])
    except OSError:
        pass
    return out


def held_connections(pid, port, primary=None):
    """Client connections on `port` that only process `pid` holds open: they die with it. A
    connection the primary holds too (an rr hand-off the worker has not accepted yet) is not
    the worker's own: whether it is lost with the worker is the manager's doing."""
    held = socket_inodes(pid) & established_inodes(port)
    if primary is not None:
        held -= socket_inodes(primary)
    return len(held)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_refuses(port):
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return False
    except OSError:
        return True


# ---------------------------------------------------------------- one run

class Tracker(threading.Thread):
    """Every 100 ms: the primary's descendants (every pid ever seen, with its start time, for
    the orphan count); at_rest() reads the primary's open fds and RSS."""

    def __init__(self, primary):
        super().__init__(daemon=True)
        self.primary = primary
        self.seen = {}        # pid -> starttime
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def poll(self):
        d = descendants(self.primary)
        with self.lock:
            for p, s in d.items():
                self.seen.setdefault(p, s[2])

    def run(self):
        while not self.stop_event.is_set():
            self.poll()
            self.stop_event.wait(0.1)

    def stop(self):
        self.stop_event.set()
        self.join()

    def at_rest(self, n=3, every=0.1):
        """Median fds and RSS of the primary over n samples taken now, 100 ms apart (read here,
        not from the thread's series: on a loaded machine its 100 ms polls fall behind)."""
        pts = []
        for i in range(n):
            if i:
                time.sleep(every)
            fds, rss = fd_count(self.primary), rss_kb(self.primary)
            if fds is not None:
                pts.append((fds, rss))
        if not pts:
            return None, None
        fds = sorted(p[0] for p in pts)
        rss = sorted(p[1] for p in pts if p[1] is not None)
        return fds[len(fds) // 2], (rss[len(rss) // 2] if rss else None)


class Probe(threading.Thread):
    """One fresh connection and GET at a time (1 s timeout), every 100 ms: whether a new
    client is served, independently of wrk's connections (which hang with their request)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.samples = []  # (epoch, ok)
        self.stop_event = threading.Event()

    def once(self):
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as s:
                s.settimeout(1.0)
                s.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def run(self):
        while not self.stop_event.is_set():
            t = time.time()
            self.samples.append((t, self.once()))
            self.stop_event.wait(max(0.0, 0.1 - (time.time() - t)))

    def stop(self):
        self.stop_event.set()
        self.join()


class Clients:
    """For faults that end the service (drain, primary SIGKILL): `n` threads, each one request
    per fresh connection in a loop, telling apart a refused connect (the listener is gone: by
    design) from a request the service had taken (connect succeeded) and never answered."""

    def __init__(self, port, n=8):
        self.port = port
        self.counts = {"sent": 0, "ok": 0, "refused": 0, "lost": 0}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(n)]

    def one(self):
        try:
            s = socket.create_connection((HOST, self.port), timeout=1.0)
        except OSError:
            return "refused"
        try:
            s.settimeout(2.0)
            s.sendall(b"GET / HTTP/1.1\r\nHost: drain\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return "ok" if data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok\n") else "lost"
        except OSError:
            return "lost"
        finally:
            s.close()

    def loop(self):
        while not self.stop_event.is_set():
            outcome = self.one()
            with self.lock:
                self.counts["sent"] += 1
                self.counts[outcome] += 1
            if outcome == "refused":
                self.stop_event.wait(0.01)  # no busy loop against a closed port

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join()
        return dict(self.counts)


class Run:
    def __init__(self, build, manager, fault, prof, profile):
        self.build, self.manager, self.fault, self.p = build, manager, fault, prof
        self.profile = profile
        self.tmp = tempfile.mkdtemp(prefix=f"uvc-chaos-{fault}-{manager}-")
        self.port = free_port()
        self.primary = None
        self.wrks = []
        self.notes = []
        self.detail = {}
        self.extra_env = {}
        self.sockets = []
        self.probe = None
        self.clients = None
        self.prewarm = None

    # -- processes
    def env(self):
        e = dict(os.environ, CHAOS_DIR=self.tmp, CHAOS_PORT=str(self.port),
                 PM2_HOME=os.path.join(self.tmp, "pm2"))
        e.update(self.extra_env)
        return e

    def start_manager(self):
        n = str(self.p["workers"])
        app = os.path.join(HERE, "app.js")
        m = self.manager
        if m.startswith("uvc-"):
            cli = os.path.join(self.build, "bin", "uvcluster")
            cmd = [cli, "run", "-i", n, "--policy", m[4:], "--json", "--grace", str(GRACE_MS),
                   "--", NODE, app]
        elif m in ("node-cluster", "node-cluster-none"):
            cmd = [NODE, os.path.join(HERE, "node_cluster.js"), "--workers", n,
                   "--grace", str(GRACE_MS), "--policy", "none" if m.endswith("-none") else "rr",
                   "--", app]
        elif m == "pm2":
            # pm2-runtime takes the kill timeout only from an ecosystem file.
            eco = os.path.join(self.tmp, "ecosystem.json")
            with open(eco, "w") as f:
                json.dump({"apps": [{"name": "chaos", "script": app, "instances": int(n),
                                     "exec_mode": "cluster", "kill_timeout": GRACE_MS}]}, f)
            cmd = [NODE, pm2_bin("pm2-runtime"), "start", eco]
        else:
            raise ValueError(m)
        out = open(os.path.join(self.tmp, "manager.out"), "w")
        err = open(os.path.join(self.tmp, "manager.err"), "w")
        self.primary = subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=err, close_fds=True, start_new_session=True)
        out.close()
        err.close()

    def workers(self):
        """Live workers that said they listen (a <pid>.ready file) and belong to our primary."""
        d = descendants(self.primary.pid)
        out = []
        for f in os.listdir(self.tmp):
            if f.endswith(".ready"):
                pid = int(f[:-6])
                if pid in d and d[pid][0] != "Z":
                    out.append(pid)
        return sorted(out)

    def wait_workers(self, n, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.workers()) >= n:
                return True
            if self.primary.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def start_wrk(self, seconds, conns, threads=2, keep=True):
        cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s",  # whole seconds only
               f"--timeout", f"{WRK_TIMEOUT_S}s", "-s", os.path.join(HERE, "series.lua"),
               f"http://{HOST}:{self.port}/"]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, close_fds=True)
        if keep:
            self.wrks.append(p)
        return p

    def stop_load(self):
        """SIGINT the main wrk: it stops and prints its report (with the done() hook)."""
        if self.wrks and self.wrks[0].poll() is None:
            self.wrks[0].send_signal(signal.SIGINT)

    def stop_load_when_port_refuses(self, deadline):
        """For faults that end the service: stop the load the moment a connect is refused, so
        that failures counted are those of requests the service had taken (plus the refusals
        of at most one 5 ms poll), not a flood of refused connects."""
        while time.time() < deadline:
            if port_refuses(self.port):
                self.stop_load()
                return time.time()
            time.sleep(0.005)
        self.stop_load()
        return None

    def finish_wrk(self, p, timeout):
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            self.notes.append("wrk overran its duration and was killed")
        for line in out.splitlines():
            if line.startswith("CHAOSJSON "):
                return json.loads(line[len("CHAOSJSON "):])
        self.notes.append(f"wrk printed no report (exit {p.returncode})")
        return None

    def stop_all(self, tracker):
        """SIGTERM the primary (if still there), SIGKILL after the grace, then every process
        ever seen under it that is still alive is an orphan: counted and SIGKILLed by pid."""
        exit_code = self.primary.poll()
        if exit_code is None:
            tracker.poll()
            self.primary.send_signal(signal.SIGTERM)
            try:
                exit_code = self.primary.wait(GRACE_MS / 1000 + 3)
            except subprocess.TimeoutExpired:
                self.notes.append("primary still alive after SIGTERM + grace: SIGKILLed")
                self.primary.kill()
                exit_code = self.primary.wait()
        tracker.stop()
        # Workers of a gone primary need a moment to see the disconnect and leave.
        deadline = time.time() + 2.0
        left = {}
        while True:
            left = {p: st for p, st in tracker.seen.items() if alive(p, st)}
            if not left or time.time() > deadline:
                break
            time.sleep(0.1)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        for s in self.sockets:
            s.close()
        return exit_code, sorted(left)

    # -- the whole run
    def execute(self):
        record = {"fault": self.fault, "manager": self.manager, "workers": self.p["workers"],
                  "profile": self.profile, "status": "ok", "requests": {}, "recovery": {},
                  "primary": {}, "zombies": None, "orphans": None, "fault_detail": self.detail,
                  "notes": self.notes, "series": {}}
        fault = FAULT_PLAYERS[self.fault]
        self.extra_env.update(getattr(fault, "env", {}))
        started = time.time()
        self.start_manager()
        tracker = Tracker(self.primary.pid)
        tracker.start()
        try:
            if not self.wait_workers(self.p["workers"], 40):
                raise RuntimeError(f"{len(self.workers())} of {self.p['workers']} workers listening "
                                   f"after 40 s (primary exit {self.primary.poll()}): "
                                   + tail(os.path.join(self.tmp, "manager.err")))
            record["startup_s"] = round(time.time() - started, 2)
            # A short load first, so that one-time growth (Node's JIT, malloc arenas, buffers)
            # is behind us; then the primary's fds and RSS at rest before the fault's load,
            # compared with the same at rest after it.
            prewarm = self.prewarm = self.start_wrk(WRK_MAX_S, self.p["conns"], keep=False)
            time.sleep(PREWARM_S)
            prewarm.send_signal(signal.SIGINT)
            prewarm.communicate(timeout=15)
            time.sleep(0.4)
            record["primary"]["fds_before"], record["primary"]["rss_kb_before"] = tracker.at_rest()
            wrk_start = time.time()
            wrk = self.start_wrk(WRK_MAX_S, self.p["conns"])
            probe = self.probe = Probe(self.port)
            probe.start()
            clients = self.clients = Clients(self.port) if fault.ends_service else None
            if clients:
                clients.start()
            time.sleep(self.p["warm"])
            t0 = time.time()
            t1 = fault(self, t0)  # plays the fault; returns when it ended
            if not fault.ends_service:  # (those stop the load themselves once the port refuses)
                sleep_until(t1 + self.p["observe"])
            self.stop_load()
            report = self.finish_wrk(wrk, 15)
            if clients:
                clients_counts = clients.stop()
            wrk_end = time.time()
            probe.stop()
            reports = [report] + [self.finish_wrk(w, 15) for w in self.wrks[1:]]
            if any(r is None for r in reports):
                raise RuntimeError("a wrk run gave no report")
            time.sleep(0.5)  # the last connections close and the primary settles
            primary_alive = self.primary.poll() is None
            record["primary"]["fds_after"], record["primary"]["rss_kb_after"] = (
                tracker.at_rest() if primary_alive else (None, None))
            record["primary"]["alive_after_fault"] = primary_alive
            own = self.detail.get("own_connections", 0)
            record["requests"] = analysis.request_counts(reports, own)
            if clients:
                # wrk cannot tell a refused connect from a reset one: the drain clients can.
                c = clients_counts
                record["requests"] = {"sent": c["sent"], "ok": c["ok"], "failed": c["lost"],
                                      "failed_connect": c["refused"], "failed_inflight": c["lost"],
                                      "unanswered_at_stop": 0, "faulted_workers_own": 0,
                                      "failed_beyond_own": c["lost"],
                                      "counted_by": "drain clients (refused connects excluded)"}
            record["wrk"] = [{k: r.get(k) for k in ("requests", "issued", "errors")} for r in reports]
            record["latency_us"] = report["latency_us"]
            series = analysis.series_from_wrk(report["ok_per_ds"], wrk_start, wrk_end)
            t0_rel, t1_rel = t0 - wrk_start, t1 - wrk_start
            record["series"] = {"bucket_s": analysis.BUCKET_S, "fault_start_s": round(t0_rel, 2),
                                "fault_end_s": round(t1_rel, 2), "ok": series,
                                "probes": [[round(t - wrk_start, 2), ok] for t, ok in probe.samples]}
            if fault.ends_service:
                record["recovery"] = {"recovery_s": None, "permanent_outage": None,
                                      "recovery_reason": "the fault stops the service on purpose",
                                      "outage_reason": "the fault stops the service on purpose",
                                      "longest_gap_s": None}
            else:
                record["recovery"] = analysis.recovery(
                    series, [(t - wrk_start, ok) for t, ok in probe.samples], t0_rel, t1_rel,
                    self.p["outage_after"])
            if primary_alive:
                zombies_first = {p for p, s in descendants(self.primary.pid).items() if s[0] == "Z"}
                time.sleep(0.3)
                record["zombies"] = len(zombies_first & {p for p, s in descendants(
                    self.primary.pid).items() if s[0] == "Z"})
                record["workers_at_end"] = len(self.workers())
            else:
                record["zombies"] = 0  # a dead primary's zombies are reaped by init
                record["workers_at_end"] = 0
        except Exception as e:  # a run that cannot be measured says why; the suite goes on
            record["status"] = "error"
            record["error"] = f"{type(e).__name__}: {e}"
        finally:
            if self.probe:
                self.probe.stop()
            if self.clients:
                self.clients.stop()
            for w in self.wrks + ([self.prewarm] if self.prewarm else []):
                if w.poll() is None:
                    w.kill()
                    w.wait()
            stopping = time.time()
            exit_code, orphans = self.stop_all(tracker)
            record["stop_s"] = round(time.time() - stopping, 2)
            shutil.rmtree(self.tmp, ignore_errors=True)
        record["primary"]["exit_code"] = exit_code
        record["orphans"] = len(orphans)
        if orphans:
            self.notes.append(f"orphans killed by pid: {orphans}")
        record["worker_pids_seen"] = len(tracker.seen)
        for k in ("fds", "rss_kb"):
            record["primary"][f"{k}_delta_pct"] = analysis.delta_pct(
                record["primary"].get(f"{k}_before"), record["primary"].get(f"{k}_after"))
        return record


def tail(path, n=300):
    try:
        return open(path, errors="replace").read()[-n:].strip()
    except OSError:
        return ""


def pm2_bin(name):
    return os.path.join(ROOT, "node_modules", "pm2", "bin", name)


# ---------------------------------------------------------------- faults
# A fault is a function (run, t0) -> t1 (when it ended), with .env (app settings for the whole
# run) and .ends_service (drain and primary SIGKILL: no recovery to wait for).

def fault(env=None, ends_service=False):
    def wrap(fn):
        fn.env = env or {}
        fn.ends_service = ends_service
        return fn
    return wrap


def pick_worker(run, exclude=()):
    ws = [w for w in run.workers() if w not in exclude]
    if not ws:
        raise RuntimeError("no live worker to fault")
    return ws[0]


def add_own(run, pid):
    run.detail["own_connections"] = (run.detail.get("own_connections", 0)
                                     + held_connections(pid, run.port, run.primary.pid))


def wait_stopped(pid, timeout=2.0):
    """Until `pid` is in the stopped state (a SIGSTOP is delivered asynchronously)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = proc_stat(pid)
        if not s or s[0] in ("T", "t", "Z", "X"):
            return
        time.sleep(0.001)


def freeze_count_kill(run, pid):
    """SIGKILL a worker and count the connections it held at that moment: SIGSTOP it first so
    that its fd table cannot change while it is read (a worker of this load holds a connection
    for well under a millisecond, so a count taken while it runs misses most of them)."""
    os.kill(pid, signal.SIGSTOP)
    wait_stopped(pid)
    add_own(run, pid)
    os.kill(pid, signal.SIGKILL)


def sleep_until(t):
    d = t - time.time()
    if d > 0:
        time.sleep(d)


@fault()
def kill_every_2s(run, t0):
    """SIGKILL one worker every 2 s."""
    killed = []
    for i in range(run.p["kills"]):
        sleep_until(t0 + 2.0 * i)
        w = pick_worker(run, killed)
        freeze_count_kill(run, w)
        killed.append(w)
    run.detail["killed"] = len(killed)
    return time.time()


@fault()
def sigstop(run, t0):
    """SIGSTOP one worker, SIGCONT it after the window."""
    w = pick_worker(run)
    os.kill(w, signal.SIGSTOP)
    sleep_until(t0 + run.p["stop"])
    add_own(run, w)  # what it holds after the stop: accepted or handed to it, never answered
    os.kill(w, signal.SIGCONT)
    return time.time()


@fault()
def crash_loop(run, t0):
    """While a flag file exists every new worker exits(1) at start-up; one worker is
    SIGKILLed so that its replacements crash-loop; the flag goes after the window."""
    flag = os.path.join(run.tmp, "crash")
    open(flag, "w").close()
    w = pick_worker(run)
    freeze_count_kill(run, w)
    seen_before = set(run.workers())
    sleep_until(t0 + run.p["crash"])
    os.unlink(flag)
    t1 = time.time()
    # How long until the cluster is back to N listening workers (capacity, not service).
    deadline = t1 + run.p["observe"]
    while time.time() < deadline and len(run.workers()) < run.p["workers"]:
        time.sleep(0.05)
    back = len(run.workers()) >= run.p["workers"]
    run.detail["workers_back_s"] = round(time.time() - t1, 2) if back else None
    if not back:
        run.notes.append("fewer workers than configured at the end of the observation "
                         "(the manager gave up restarting, or its backoff is longer)")
    run.detail["restarted_workers"] = len(set(run.workers()) - seen_before)
    return t1


def limit_nofile(run, pid, margin):
    """Soft RLIMIT_NOFILE of `pid` := its open fds + margin (the hard limit stays, so the
    soft one can be restored). Returns (new soft limit, previous soft limit) or None."""
    n = fd_count(pid)
    if n is None:
        return None
    try:
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (n + margin, hard))
    except OSError as e:
        run.notes.append(f"prlimit {pid}: {e}")
        return None
    return n + margin, soft


def restore_nofile(run, pid, soft):
    try:
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        return True
    except OSError as e:
        run.notes.append(f"prlimit {pid}: {e}")
        return False


def open_idle(run, count, budget_s=2.0):
    """`count` idle client connections (connect only, nothing sent); returns how many the
    kernel completed within the budget."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((HOST, run.port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            continue
        socks.append(s)
    run.sockets.extend(socks)
    deadline = time.time() + budget_s
    done = 0
    pending = list(socks)
    while pending and time.time() < deadline:
        still = []
        for s in pending:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            try:
                s.getpeername()
                done += 1
            except OSError:
                if err == 0:
                    still.append(s)
        pending = still
        time.sleep(0.05)
    return done


def close_idle(run):
    for s in run.sockets:
        s.close()
    run.sockets = []


@fault()
def fd_exhaust_workers(run, t0):
    """Every worker's soft RLIMIT_NOFILE set to its open fds + 32 (prlimit, kept to the end of
    the run), then idle connections opened and held for the window, then closed."""
    limits = {w: limit_nofile(run, w, 32) for w in run.workers()}
    run.detail["limits"] = {w: (v[0] if v else None) for w, v in limits.items()}
    run.detail["idle_connected"] = open_idle(run, run.p["idle_conns"])
    sleep_until(t0 + run.p["fd"])
    close_idle(run)
    return time.time()


@fault()
def fd_exhaust_primary(run, t0):
    """The primary's soft RLIMIT_NOFILE set to its open fds + 8 for the window, under the load
    plus idle connections; then the idle connections are closed and the limit restored: does
    it serve again (a hand-off that never ends would keep it wedged)?"""
    limited = limit_nofile(run, run.primary.pid, 8)
    run.detail["limit"] = limited[0] if limited else None
    run.detail["idle_connected"] = open_idle(run, run.p["idle_conns"])
    sleep_until(t0 + run.p["fd"])
    close_idle(run)
    if limited:
        run.detail["limit_restored"] = restore_nofile(run, run.primary.pid, limited[1])
    return time.time()


@fault(env={"CHAOS_MAXCONN": "10", "CHAOS_SLOW_MS": "100"})
def maxconn_refusals(run, t0):
    """Workers run with server.maxConnections = 10 and a 100 ms handler for the whole run; a
    burst of extra wrk connections during the window makes them refuse."""
    seconds = int(math.ceil(run.p["maxconn"]))
    burst = run.start_wrk(seconds, run.p["burst_conns"], threads=1)
    burst.wait(seconds + 15)
    return time.time()


@fault()
def slowloris(run, t0):
    """Slow clients beside the normal load: each sends a request line, then one header byte
    every 0.5 s, never finishing the request."""
    socks = []
    for _ in range(run.p["slow_conns"]):
        try:
            s = socket.create_connection((HOST, run.port), timeout=1)
            s.setblocking(False)
            s.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            break
    run.sockets.extend(socks)
    run.detail["slow_connected"] = len(socks)
    while time.time() < t0 + run.p["slowloris"]:
        for s in socks:
            try:
                s.send(b"X")
            except OSError:
                pass
        time.sleep(0.5)
    close_idle(run)
    return time.time()


def ipc_fault(kind):
    def play(run, t0):
        with open(os.path.join(run.tmp, "ipc-fault"), "w") as f:
            f.write(kind)
        w = pick_worker(run)
        add_own(run, w)
        os.kill(w, signal.SIGUSR2)
        sleep_until(t0 + run.p["ipc"])
        run.detail["faulted_worker_alive"] = alive(w)
        return time.time()
    play.__doc__ = (f"One worker writes a {kind} frame raw into its IPC channel to the primary "
                    "(every manager here speaks Node's IPC, PM2 included: its God daemon is a "
                    "Node cluster primary).")
    return fault()(play)


@fault(ends_service=True)
def sigterm_drain(run, t0):
    """SIGTERM to the primary under load (pm2-runtime: its container stop, also SIGTERM). The
    load stops when the port refuses; failed = requests the service had taken but did not
    answer. Detail: time to the primary's exit and its status."""
    run.primary.send_signal(signal.SIGTERM)
    refused = run.stop_load_when_port_refuses(t0 + GRACE_MS / 1000 + 1.0)
    run.detail["port_closed_s"] = round(refused - t0, 3) if refused else None
    try:
        code = run.primary.wait(max(0.1, t0 + GRACE_MS / 1000 + 1.0 - time.time()))
        run.detail["exit_s"] = round(time.time() - t0, 2)
        run.detail["exit_code"] = code
    except subprocess.TimeoutExpired:
        run.detail["exit_s"] = None
        run.notes.append("primary did not exit within the grace + 1 s")
    return time.time()


@fault()
def sighup_reload(run, t0):
    """Rolling reload under load: SIGHUP to uvcluster run and to node_cluster.js, `pm2 reload`
    (against the run's PM2_HOME) for PM2. Done when no worker from before is left and N new
    ones listen."""
    old = set(run.workers())
    cli = None
    if run.manager == "pm2":
        cli = subprocess.Popen([NODE, pm2_bin("pm2"), "reload", "chaos"], env=run.env(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    else:
        run.primary.send_signal(signal.SIGHUP)
    deadline = t0 + 20
    while time.time() < deadline:
        now = set(run.workers())
        if not (now & old) and len(now) >= run.p["workers"]:
            break
        time.sleep(0.05)
    done = time.time()
    if cli:
        try:
            run.detail["pm2_cli_exit"] = cli.wait(max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.wait()
            run.notes.append("pm2 reload CLI did not return: killed")
    run.detail["reload_s"] = round(done - t0, 2) if done < deadline else None
    if done >= deadline:
        run.notes.append("reload not finished within 20 s")
    return done


@fault(ends_service=True)
def primary_sigkill(run, t0):
    """SIGKILL the primary under load: how fast the port is free and whether the workers leave
    (those still alive at the end are the run's orphans). The load stops when the port refuses."""
    workers = run.workers()
    run.primary.kill()
    run.primary.wait()
    refused = run.stop_load_when_port_refuses(t0 + 2.0)
    run.detail["port_free_s"] = round(refused - t0, 3) if refused else None
    sleep_until(t0 + 2.0)
    run.detail["workers_alive_2s_after"] = sum(alive(w) for w in workers)
    return time.time()


FAULT_PLAYERS = {
    "kill-every-2s": kill_every_2s, "sigstop": sigstop, "crash-loop": crash_loop,
    "fd-exhaust-workers": fd_exhaust_workers, "fd-exhaust-primary": fd_exhaust_primary,
    "maxconn-refusals": maxconn_refusals, "slowloris": slowloris,
    "ipc-garbage": ipc_fault("garbage"), "ipc-oversized": ipc_fault("oversized"),
    "ipc-nested": ipc_fault("nested"), "sigterm-drain": sigterm_drain,
    "sighup-reload": sighup_reload, "primary-sigkill": primary_sigkill,
}
assert list(FAULT_PLAYERS) == FAULTS


# ---------------------------------------------------------------- suite

def manager_available(build, manager):
    if manager.startswith("uvc-"):
        cli = os.path.join(build, "bin", "uvcluster")
        return None if os.access(cli, os.X_OK) else f"{cli} not built"
    if manager == "pm2":
        return None if os.path.exists(pm2_bin("pm2-runtime")) else \
            "node_modules/pm2 missing (run scripts/deps.sh)"
    return None


def git_describe():
    try:
        return subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment():
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    try:
        migrate = open("/proc/sys/net/ipv4/tcp_migrate_req").read().strip()
    except OSError:
        migrate = None
    pm2_version = None
    try:
        pm2_version = json.load(open(os.path.join(ROOT, "node_modules", "pm2", "package.json")))["version"]
    except (OSError, ValueError, KeyError):
        pass
    return {"kernel": os.uname().release, "cores": os.cpu_count(), "node": out([NODE, "--version"]),
            "pm2": pm2_version, "git": git_describe(), "tcp_migrate_req": migrate,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def run_all(build, faults, managers, prof, profile, records):
    """Every fault against every manager, one run at a time (appends to records)."""
    for f in faults:
        for m in managers:
            why = manager_available(build, m)
            if why:
                records.append({"fault": f, "manager": m, "workers": prof["workers"],
                                "profile": profile, "status": "unavailable", "error": why})
                continue
            t = time.time()
            r = Run(build, m, f, prof, profile).execute()
            r["run_s"] = round(time.time() - t, 1)
            records.append(r)
            rq, rec = r.get("requests", {}), r.get("recovery", {})
            print(f"chaos {f:20} {m:14} {r['status']:6} sent={rq.get('sent')} "
                  f"failed={rq.get('failed')} beyond_own={rq.get('failed_beyond_own')} "
                  f"recover={rec.get('recovery_s')} outage={rec.get('permanent_outage')} "
                  f"orphans={r.get('orphans')} ({r['run_s']} s)"
                  + (f" error: {r.get('error')}" if r["status"] != "ok" else ""), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--profile", default="default", choices=sorted(PROFILES))
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--managers", default=None, help="default: the profile's")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "chaos", "latest.json"))
    ap.add_argument("--no-report", action="store_true")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    faults = [f for f in a.faults.split(",") if f]
    managers = [m for m in (a.managers.split(",") if a.managers else PROFILES[a.profile]["managers"]) if m]
    for f in faults:
        if f not in FAULTS:
            ap.error(f"unknown fault {f} (one of {', '.join(FAULTS)})")
    for m in managers:
        if m not in MANAGERS:
            ap.error(f"unknown manager {m} (one of {', '.join(MANAGERS)})")
    if not shutil.which("wrk"):
        print("chaos: wrk is not installed (scripts/deps.sh)", file=sys.stderr)
        return 1
    prof = PROFILES[a.profile]
    started = time.time()
    records = []
    interrupted = []

    def interrupt(signum, _frame):
        # Raised in the main thread: the run in progress stops what it started (its finally).
        interrupted.append(signum)
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        run_all(build, faults, managers, prof, a.profile, records)
    except KeyboardInterrupt:  # the run in progress stopped what it started (its finally)
        print(f"chaos: interrupted by signal {interrupted[0] if interrupted else 'SIGINT'}; "
              "nothing written", file=sys.stderr)
        return 130
    reasons = {}
    doc = analysis.strict({"schema": analysis.SCHEMA, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "profile": a.profile, "settings": prof, "environment": environment(),
                           "managers": managers, "faults": faults,
                           "fault_descriptions": {f: " ".join((FAULT_PLAYERS[f].__doc__ or "").split())
                                                  for f in faults},
                           "duration_s": round(time.time() - started, 1), "records": records},
                          "doc", reasons)
    doc["non_finite"] = reasons
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(doc, fh, indent=1, allow_nan=False)
    print(f"chaos: wrote {os.path.relpath(a.out, ROOT)} ({doc['duration_s']} s)")
    if not a.no_report:
        # results/CHAOS.md for the default output; CHAOS.md beside any other --out
        default_out = os.path.abspath(a.out) == os.path.join(ROOT, "results", "chaos", "latest.json")
        md = os.path.join(ROOT, "results", "CHAOS.md") if default_out else \
            os.path.join(os.path.dirname(os.path.abspath(a.out)), "CHAOS.md")
        return subprocess.call([sys.executable, os.path.join(HERE, "report.py"), a.out, "--md", md])
    return 0


if __name__ == "__main__":
    sys.exit(main())
