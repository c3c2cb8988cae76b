#!/usr/bin/python3
"""One cell of the strategy lab: (strategy, app, workers, load) -> one JSON record.

Starts the strategy's processes (its launcher in strategies.py), waits until every worker says it
listens (a .ready file per worker in a private stats dir), measures (measure.py: /proc samples,
wrk on 127.0.0.1, a short extra run where perf counts failed accepts from outside), stops every
process it started (SIGTERM, then SIGKILL after a grace; by pid only) and checks that none is
left. stdlib only; run by `uvcluster lab` and by driver.py.
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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import HOST, free_port  # noqa: E402
from measure import environment, measure  # noqa: E402
from procfs import alive, children_of  # noqa: E402
from strategies import APPS, NAMES, NODE, REGISTRY, SRC, Unavailable  # noqa: E402

LOADS = ["keepalive", "close"]
NODE_ACCEPT_POLICY = "libuv-node (one per wakeup, libuv>=1.45)"


class Cell:
    """The processes of one cell: started through spawn(), stopped (and checked gone) by stop()."""

    def __init__(self, a):
        self.a = a
        self.strategy = REGISTRY[a.strategy]
        self.build = os.path.abspath(a.build)
        self.tmp = tempfile.mkdtemp(prefix="uvc-lab-")
        self.stats_dir = os.path.join(self.tmp, "stats")
        os.mkdir(self.stats_dir)
        self.procs = []          # Popen objects started directly by us
        self.primary_pids = []   # primary / proxy / nginx master
        self.ready_markers = []  # primaries that write a .ready marker of their own (lab-proxy)
        self.expect_ready = a.workers
        self.notes = []
        self.launcher = None
        self.accept_policy = None
        self.port = free_port()
        self.primary_first = False     # stop the primary before the workers
        self.workers_may_fail = False  # wait until each worker is ready or gone (naive)
        self.all_pids_seen = None      # set by measure()
        self.exits = []                # set by stop()

    # -- what launchers use
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
        with open(os.path.join(self.tmp, f"p{len(self.procs)}.log"), "w") as log:
            p = subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=stdout,
                                 stderr=log, pass_fds=pass_fds, close_fds=True)
        self.procs.append(p)
        return p

    def add_primary(self, proc, marks_ready=False):
        """A process of the strategy that is not a worker (a primary, a proxy, nginx's master)."""
        self.primary_pids.append(proc.pid)
        if marks_ready:
            self.ready_markers.append(proc.pid)

    def app_accept_policy(self):
        return self.a.accept if self.a.app == "native" else NODE_ACCEPT_POLICY

    def worker_cmd(self, port=None, fd=None, extra=()):
        if self.a.app == "native":
            cmd = [self.bin("hello-native")]
            cmd += ["--port", str(port)] if port is not None else ["--fd", str(fd)]
            cmd += ["--accept", self.a.accept]
        else:
            cmd = [NODE, os.path.join(SRC, "harness/apps/hello-node.js")]
            cmd += ["--port", str(port)] if port is not None else ["--fd", str(fd)]
        self.accept_policy = self.app_accept_policy()
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

    def launch(self):
        if not self.strategy.runs(self.a.app):
            raise Unavailable(self.strategy.unsupported)
        self.strategy.launch(self)

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
            if any(not os.path.exists(os.path.join(self.stats_dir, f"{p}.ready"))
                   for p in self.ready_markers):
                ready = 0
            failed = len(self.failed_workers())
            if ready + failed >= n and ready > 0:
                if not self.workers_may_fail or self.all_workers_settled(n):
                    return
            dead = [p for p in self.procs if p.poll() is not None and p.pid in self.primary_pids]
            if dead:
                raise RuntimeError(f"launcher exited early: {self.log_tail()}")
            time.sleep(0.02)
        raise RuntimeError(f"not ready after {timeout}s ({len(self.ready_pids())}/{n}): {self.log_tail()}")

    def all_workers_settled(self, n):
        # Failed workers exit: wait until every spawned worker is either ready or gone.
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
        seen = cell.all_pids_seen if cell.all_pids_seen is not None else cell.procs
        rec["processes"].update(started=len(seen), orphans=orphans, exits=cell.exits)
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


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default=os.environ.get("UVC_BUILD_DIR", os.path.join(SRC, "build")))
    p.add_argument("--strategy", required=True, choices=NAMES)
    p.add_argument("--app", required=True, choices=APPS)
    p.add_argument("--workers", required=True, type=int)
    p.add_argument("--load", required=True, choices=LOADS)
    p.add_argument("--duration", required=True, type=int)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print only the record, one line")
    p.add_argument("--accept", choices=["one", "drain"], default="one",
                   help="hello-native accept policy per wake-up (default one, like Node's libuv)")
    p.add_argument("--rotate", type=int, default=1,
                   help="exclusive: re-register every K accepts (default 1: the next wake-up goes to a "
                        "peer, for fairness; 0 = never, EPOLLEXCLUSIVE's own order)")
    p.add_argument("--turn", type=int, choices=[0, 1], default=1,
                   help="exclusive (thread mode): 1 (default) = the workers accept in turn through one "
                        "shared accept turn (an inherited memfd, hello-native --accept-turn-fd), so no "
                        "one finds EAGAIN and a burst is dealt out in turn; 0 = no turn (rotation only)")
    p.add_argument("--turn-batch", type=int, default=4,
                   help="with the turn: a holder accepts up to K of the connections already queued per "
                        "turn (hello-native --turn-batch K; default 4, its default); 1 = one per turn")
    p.add_argument("--exclusive-mode", choices=["thread", "nested"], default="thread",
                   help="exclusive via the harness: a thread blocks in epoll_wait on the private "
                        "EPOLLEXCLUSIVE set (thread) or the loop polls that set (nested)")
    p.add_argument("--launcher", choices=["auto", "harness", "uvcluster"], default="auto",
                   help="shared/exclusive/reuseport through `uvcluster run` or the harness (it "
                        "binds and the workers inherit the sockets); auto: `uvcluster run` for "
                        "shared/reuseport, the harness for exclusive (hello-native's waiter)")
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
