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


def run_spread(port, duration, connections, addresses, close):
    """`connections` client threads, thread i bound to source address 127.0.0.(2 + i % addresses),
    each sending requests (a new connection per request when `close`) for `duration` s: the load
    of many clients, for strategies that place a connection by its client address (sticky).
    Slower than wrk (Python), so its req/s is not comparable with wrk's; fairness is. Returns a
    wrk-shaped report."""
    import threading
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n"
    lock = threading.Lock()
    lat_us, errors = [], {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    stop_at = time.monotonic() + duration

    def read_response(c, buf):
        while b"\r\n\r\n" not in buf:
            chunk = c.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        head_end = buf.index(b"\r\n\r\n") + 4
        length = 0
        for line in buf[:head_end].split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(buf) < head_end + length:
            chunk = c.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf[head_end + length:]

    def client(i):
        source = (f"127.0.0.{2 + i % addresses}", 0)
        c, buf, mine, errs = None, b"", [], dict.fromkeys(errors, 0)
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                if c is None:
                    c = socket.create_connection((HOST, port), timeout=2, source_address=source)
                c.sendall(head)
                buf = read_response(c, buf)
                mine.append(int((time.monotonic() - t0) * 1e6))
            except socket.timeout:
                errs["timeout"] += 1
            except OSError:
                errs["connect" if c is None else "read"] += 1
            if close or errs["read"] or errs["timeout"]:
                if c is not None:
                    c.close()
                c, buf = None, b""
        if c is not None:
            c.close()
        with lock:
            lat_us.extend(mine)
            for k, v in errs.items():
                errors[k] += v

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat_us.sort()
    pick = (lambda q: lat_us[min(len(lat_us) - 1, int(len(lat_us) * q / 100))]) if lat_us else (lambda q: 0)
    return {"duration_us": int((time.monotonic() - t0) * 1e6), "requests": len(lat_us), "bytes": 0,
            "errors": errors,
            "latency_us": {"min": lat_us[0] if lat_us else 0, "max": lat_us[-1] if lat_us else 0,
                           "mean": sum(lat_us) / len(lat_us) if lat_us else 0.0, "stdev": 0.0,
                           "p": {str(q): pick(q) for q in (50, 90, 99, 99.9)}}}


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
