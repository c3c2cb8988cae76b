"""What bench/rr_limits.py and bench/rr_instructions.py share: the cases (command lines of a
primary and its 2 workers), starting one and reading its workers' pids from its `listening`
lines, stopping it with the per-worker connection counts, and a `Connection: close` wrk load on
127.0.0.1.

Cases: raw-k1, raw-k16, raw-noack (the bare C pair bench/limits/raw_rr.c with its own bare
workers: K=1, K=16 in flight, no ack), raw-reuseport (the same bare workers, no hand-off: each
accepts on its own SO_REUSEPORT listener), rr and rr-w16 (`uvcluster run --policy rr`, K=1 and
`--rr-window 16`), reuseport (`--policy reuseport`), node-rr (Node's own rr primary), all but
raw-* with 2 hello-native workers; with a base build, rr-base and rr-w16-base (its uvcluster and
hello-native, K=1 and --rr-window 16).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts", "lab"))
from procfs import alive, cpu_seconds, ctxsw  # noqa: E402

WORKERS = 2

# Each case's workers without the hand-off: its workers' CPU minus this case's is the hand-off's
# cost in the workers (the HTTP serving cancels out).
NO_HAND_OFF_TWIN = {"raw-k1": "raw-reuseport", "raw-k16": "raw-reuseport", "raw-noack": "raw-reuseport",
                    "rr": "reuseport", "rr-w16": "reuseport", "rr-base": "reuseport", "rr-w16-base": "reuseport",
                    "node-rr": "reuseport"}


def cases(build, base=None):
    cli = os.path.join(build, "bin", "uvcluster")
    hello = os.path.join(build, "bin", "hello-native")
    raw = os.path.join(build, "bench", "limits", "raw_rr")
    node_primary = os.path.join(ROOT, "bench", "node", "lib", "cluster_primary.js")
    run = [cli, "run", "-i", str(WORKERS), "--json", "--restart", "never"]
    worker = ["--", hello, "--port", "0"]
    out = {
        "raw-k1": [raw, "--workers", str(WORKERS), "--window", "1"],
        "raw-k16": [raw, "--workers", str(WORKERS), "--window", "16"],
        "raw-noack": [raw, "--workers", str(WORKERS), "--no-ack"],
        "raw-reuseport": [raw, "--workers", str(WORKERS), "--reuseport"],
        "rr": run + ["--policy", "rr"] + worker,
        "rr-w16": run + ["--policy", "rr", "--rr-window", "16"] + worker,
        "reuseport": run + ["--policy", "reuseport"] + worker,
        "node-rr": ["/usr/bin/node", node_primary, str(WORKERS), "rr", hello, "--port", "0"],
    }
    if base:
        base_run = [os.path.join(base, "bin", "uvcluster"), "run", "-i", str(WORKERS), "--json", "--restart", "never",
                    "--policy", "rr"]
        base_worker = ["--", os.path.join(base, "bin", "hello-native"), "--port", "0"]
        out["rr-base"] = base_run + base_worker
        out["rr-w16-base"] = base_run + ["--rr-window", "16"] + base_worker
    return out


class Case:
    """One started primary and its workers (pids from its `listening` lines)."""

    def __init__(self, cmd):
        self.log = tempfile.TemporaryFile()
        self.stats_dir = tempfile.mkdtemp(prefix="uvc-rr-limits-")  # hello-native's counters
        env = dict(os.environ, UVC_LAB_STATS_DIR=self.stats_dir)
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
                                  text=True, env=env)
        self.port, self.workers = 0, []
        deadline = time.monotonic() + 20
        while len(self.workers) < WORKERS:
            line = self.p.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{cmd[0]} did not listen")
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "listening":
                self.port, self.workers = ev["port"], self.workers + [ev["pid"]]

    def cpu(self):
        return cpu_seconds(self.p.pid), sum(cpu_seconds(w) or 0 for w in self.workers)

    def workers_context_switches(self):
        """(voluntary, involuntary) context switches of the workers together."""
        both = [ctxsw(w) or (0, 0) for w in self.workers]
        return sum(v for v, _ in both), sum(i for _, i in both)

    def stop(self):
        """SIGTERM to the primary (it stops its workers); the per-worker connection counts."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            out = self.p.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            self.p.kill()
            out = self.p.communicate()[0]
        for w in self.workers:  # by pid, only ours, only if the primary left them
            if alive(w):
                os.kill(w, signal.SIGKILL)
        per = {}
        for line in (out or "").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "stats" and isinstance(ev.get("workers"), list):  # raw_rr
                per = {w["pid"]: w["connections"] for w in ev["workers"]}
        for w in self.workers:  # hello-native writes PID.json when it stops
            try:
                per[w] = json.load(open(os.path.join(self.stats_dir, f"{w}.json")))["connections"]
            except (OSError, ValueError, KeyError):
                pass
        shutil.rmtree(self.stats_dir, ignore_errors=True)
        return [per.get(w, 0) for w in self.workers]


def wrk(port, duration, conns, threads=2):
    """A `Connection: close` load of whole seconds: (requests, requests/s, p99 ms or None,
    wrk's socket-errors line or "")."""
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "-H",
                          "Connection: close", "--latency", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)] if p99 else None
    errors = re.search(r"Socket errors: (.*)", out)
    return reqs, rps, p99_ms, errors.group(1) if errors else ""
