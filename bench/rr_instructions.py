#!/usr/bin/python3
"""User-space instructions per connection in the rr primary (issue 13 §1): the primary runs under
valgrind's callgrind (its workers, exec'd, run natively), a `Connection: close` wrk load goes
through it, and callgrind's instruction count (Ir: our code, libuv, libc, libstdc++; not the
kernel) between a zero after a warm-up and a dump after the load is divided by the requests
served. Unlike CPU time it does not move with the machine's load, so a change of a few % in the
primary's user space shows in one run. It says nothing of the kernel's share (most of the
primary's CPU): bench/rr_limits.py measures that.

Cases (bench/rr_cases.py): raw-k1 (the bare C primary, bench/limits/raw_rr.c; its forked workers
run under callgrind too, which only slows them), rr (`uvcluster run --policy rr` with 2
hello-native workers) and, with --base-build DIR, rr-base (DIR's uvcluster and hello-native).
rr-workers, rr-w16-workers, rr-base-workers, rr-w16-base-workers and reuseport-workers count the 2 hello-native workers
instead (each under callgrind, the primary native); raw-k1-workers, raw-k16-workers and
raw-reuseport-workers the bare workers (the whole bare pair under callgrind, the workers counted).
The hand-off's user-space cost in the workers is a case's workers minus the same workers without
a hand-off (rr-workers - reuseport-workers, raw-k1-workers - raw-reuseport-workers): printed as
`hand-off` when both ran.

usage: bench/rr_instructions.py [--build build] [--base-build DIR] [--cases raw-k1,rr-base,rr,...]
                                [--duration 5] [--connections 8] [--json out.json]
Output: one JSON line per case, a table, and --json (strict JSON).
"""
import argparse
import glob
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
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import rr_cases  # noqa: E402
import strict_json  # noqa: E402


def program_total(annotate_output):
    """callgrind_annotate's `N (100.0%)  PROGRAM TOTALS` line -> N."""
    m = re.search(r"^\s*([\d,]+)\s.*PROGRAM TOTALS", annotate_output, re.M)
    return int(m.group(1).replace(",", "")) if m else None


def wrk_requests(port, seconds, connections):
    return rr_cases.wrk(port, seconds, connections, threads=1)[0]


def callgrind_request(pid, zero, by_signal):
    """Zeroes (or dumps) a process's counts: callgrind_control, or for raw_rr's forked workers,
    which it cannot reach, their signal (SIGUSR1 zero, SIGUSR2 dump)."""
    if not by_signal:
        subprocess.run(["callgrind_control", "-z" if zero else "-d", str(pid)], capture_output=True, check=True)
        return
    os.kill(pid, signal.SIGUSR1 if zero else signal.SIGUSR2)


def wait_for_dump(out_dir, pid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dump = sorted(glob.glob(f"{out_dir}/cg.{pid}.*"))
        if dump:
            time.sleep(0.2)  # written by the time callgrind_annotate opens it
            return dump[0]
        time.sleep(0.05)
    return None


def measure(cmd, a, workers=False):
    """Instructions per connection of the primary, or (`workers`) of its workers together."""
    out_dir = tempfile.mkdtemp(prefix="uvc-rr-ir-")
    callgrind = ["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p"]
    forked_workers = workers and "--" not in cmd  # the bare pair's: under callgrind with the primary
    try:
        if workers and not forked_workers:  # uvcluster run ... -- valgrind ... hello-native ...
            split = cmd.index("--") + 1
            c = rr_cases.Case(cmd[:split] + callgrind + cmd[split:])
        else:
            c = rr_cases.Case(callgrind + cmd)
        pids = c.workers if workers else [c.p.pid]
        try:
            wrk_requests(c.port, 1, a.connections)  # warm-up: buffers grown, code paged in
            for pid in pids:
                callgrind_request(pid, True, forked_workers)
            if forked_workers:
                time.sleep(0.5)  # the idle workers take the signal at once; nothing to wait on
            reqs = wrk_requests(c.port, a.duration, a.connections)
            for pid in pids:
                callgrind_request(pid, False, forked_workers)
            dumps = [wait_for_dump(out_dir, pid) for pid in pids]
        finally:
            c.stop()
        totals = []
        for dump in dumps:
            out = subprocess.run(["callgrind_annotate", dump], capture_output=True, text=True).stdout if dump else ""
            totals.append(program_total(out))
        total = sum(totals) if all(totals) else None
        key = "workers_instructions_per_conn" if workers else "primary_instructions_per_conn"
        return {"requests": reqs, key: round(total / reqs) if total and reqs else None}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def add_handoff_overheads(results):
    """`workers_handoff_instructions_per_conn` for each *-workers case whose twin without a
    hand-off (rr_cases.NO_HAND_OFF_TWIN) ran too: its workers' count minus the twin's."""
    for name, twin in rr_cases.NO_HAND_OFF_TWIN.items():
        mine = results.get(name + "-workers", {}).get("workers_instructions_per_conn")
        its = results.get(twin + "-workers", {}).get("workers_instructions_per_conn")
        if mine is not None and its is not None:
            results[name + "-workers"]["workers_handoff_instructions_per_conn"] = mine - its


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--base-build", help="an older build directory: adds the case rr-base")
    ap.add_argument("--cases", default="raw-k1,rr-base,rr")
    ap.add_argument("--duration", type=int, default=5, help="seconds of measured load per case")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    all_cases = rr_cases.cases(a.build, a.base_build)
    for name in ["rr", "rr-w16", "rr-base", "rr-w16-base", "reuseport", "raw-k1", "raw-k16", "raw-reuseport"]:
        if name in all_cases:
            all_cases[name + "-workers"] = all_cases[name]
    names = [n for n in a.cases.split(",") if n in all_cases]
    results = {}
    for name in names:
        r = measure(all_cases[name], a, workers=name.endswith("-workers"))
        r["case"] = name
        results[name] = r
        print(json.dumps(r), flush=True)
    add_handoff_overheads(results)
    print("\n| case | instructions/conn (user space) | of | hand-off (minus the workers without one) |\n|---|---|---|---|")
    for name, r in results.items():
        ir = r.get("primary_instructions_per_conn") or r.get("workers_instructions_per_conn")
        print(f"| {name} | {ir} | {'workers' if name.endswith('-workers') else 'primary'} | "
              f"{r.get('workers_handoff_instructions_per_conn', '-')} |")
    if a.json:
        strict_json.write(a.json, {"cases": results, "duration_s": a.duration, "wrk_connections": a.connections})


if __name__ == "__main__":
    main()
