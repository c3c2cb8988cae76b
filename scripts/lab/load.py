"""Load generation for the lab, all on 127.0.0.1 and bounded in time: wrk (with the JSON report
of harness/wrk/report.lua), serial Connection: close requests, and the herd run observed from
outside by perf (tracepoint counters) or strace. stdlib only."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import metrics

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"
TRACEFS_SYSCALLS = ("/sys/kernel/tracing/events/syscalls",
                    "/sys/kernel/debug/tracing/events/syscalls")


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


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
    when a connection arrives, the regime where a thundering herd shows (docs/perf-notes.md,
    "Herd"). Returns a wrk-shaped report (requests, duration_us, errors)."""
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


def rps(report):
    return report["requests"] / (report["duration_us"] / 1e6) if report["duration_us"] else 0.0


def perf_usable():
    """perf is installed and the syscall tracepoints it counts are visible in tracefs."""
    return shutil.which("perf") is not None and any(os.path.isdir(d) for d in TRACEFS_SYSCALLS)


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
    with open(out.name) as f:
        text = f.read()
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
