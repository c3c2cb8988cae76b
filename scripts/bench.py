#!/usr/bin/python3
"""`make bench`: micro-benchmarks beside their Node twins, then the strategy lab.

Micro-benchmarks: every build/bench/bench_* (Google Benchmark) and every bench/node/*.js twin
(bench/node/lib/ holds the twins' helpers). A twin prints JSON
lines {"name", "ns_per_op"} or {"name", "value", "unit"}; it pairs with the Google benchmark
whose name matches once case, "_" and a "BM_"/"node_" prefix are ignored. A rate twin ("x/s") is
compared per item (items_per_second), a time twin per iteration. The table shows uvcluster/Node
time per operation from this same run (absolute times drift on a shared machine; the ratio is
what we track).
Results: results/micro.json; then the cluster RR handoff benchmark (results/cluster.json); then
scripts/lab/driver.py runs the strategy lab (results/latest.json, results/REPORT.md); then
bench/rr_limits.py, the RR hand-off beside its bare limit (results/rr_limits.json, a section of
results/REPORT.md); big IPC messages and spawn against their bench/limits programs and Node
(scripts/limits_ipc_spawn.py: results/limits_ipc_spawn.json and a section of REPORT.md);
scripts/manager_cost.py, the manager's own RSS and CPU per 1,000 requests for uvcluster run, Node's
cluster and PM2 (results/managers.json, a section of REPORT.md); then the fault lab,
scripts/chaos/chaos.py (results/chaos/latest.json, results/CHAOS.md).
Every run appends its tracked metrics to results/history.jsonl (scripts/history.py).
All results files are strict JSON (scripts/strict_json.py, schemas in results/schema/).
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import history  # noqa: E402
import strict_json  # noqa: E402
PROFILES = {  # Google Benchmark min time (s), Node twin seconds, RR handoff wrk seconds
    "quick": (0.2, 0.3, 2),
    "default": (0.5, 1.0, 3),
    "full": (2.0, 3.0, 10),
}
# bench/rr_limits.py (the RR hand-off beside its bare limit): rounds, seconds per round, strace s.
# 5 rounds by default: the workers' hand-off overhead is a same-round difference of two CPU
# figures that scatter by +-20 % per round, and its median over 3 moved 0.7x-7.8x between runs.
RR_LIMITS = {"quick": (1, 1, 1), "default": (5, 3, 2), "full": (7, 5, 3)}


TIME_UNITS = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}


def base_name(name):
    """'spawn_true/real_time' or 'x/iterations:3/real_time' -> 'spawn_true'."""
    return name.split("/")[0]


def twin_key(name):
    """BM_IpcPingPong, node_ipc_pingpong -> ipcpingpong."""
    key = name.lower()
    for prefix in ("bm_", "node_"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return "".join(c for c in key if c.isalnum())


def is_twin(script):
    return script.endswith(".js")


def run_google_benchmark(exe, min_time):
    out = subprocess.run([exe, "--benchmark_format=json", f"--benchmark_min_time={min_time}"],
                         capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        print(f"  {os.path.basename(exe)} failed ({out.returncode}): {out.stderr.strip()[-300:]}")
        return []
    rows = []
    for b in json.loads(out.stdout)["benchmarks"]:
        if b.get("error_occurred"):
            print(f"  {b['name']}: {b.get('error_message')}")
            continue
        scale = TIME_UNITS[b.get("time_unit", "ns")]
        counters = {k: v for k, v in b.items() if k not in (
            "name", "run_name", "run_type", "repetitions", "repetition_index", "threads", "iterations",
            "real_time", "cpu_time", "time_unit", "family_index", "per_family_instance_index",
            "aggregate_name", "label")}
        rows.append({"name": base_name(b["name"]), "ns_per_op": b["real_time"] * scale,
                     "iterations": b["iterations"], "counters": counters})
    return rows


def run_node_twin(script, seconds):
    env = dict(os.environ, UVC_BENCH_SECONDS=str(seconds))
    out = subprocess.run(["/usr/bin/node", script], capture_output=True, text=True, env=env,
                         stdin=subprocess.DEVNULL, timeout=600, check=False)
    if out.returncode != 0:
        print(f"  {os.path.basename(script)} failed ({out.returncode}): {out.stderr.strip()[-300:]}")
    rows = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        unit = r.get("unit", "")
        if "ns_per_op" not in r and unit.endswith("/s") and r.get("value"):
            r["ns_per_op"] = 1e9 / r["value"]  # a rate twin: time per item
            r["rate"] = True
        elif "ns_per_op" not in r and unit in TIME_UNITS and r.get("value") is not None:
            r["ns_per_op"] = r["value"] * TIME_UNITS[unit]
        if "ns_per_op" in r:
            rows.append(r)
    return rows


def human(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def micro(build, profile):
    min_time, node_seconds, _ = PROFILES[profile]
    bench_dir = os.path.join(build, "bench")
    ours = []
    for exe in sorted(os.listdir(bench_dir)) if os.path.isdir(bench_dir) else []:
        path = os.path.join(bench_dir, exe)
        if exe.startswith("bench_") and os.access(path, os.X_OK) and os.path.isfile(path):
            print(f"micro: {exe} ...", flush=True)
            ours += run_google_benchmark(path, min_time)
    theirs = {}
    node_dir = os.path.join(ROOT, "bench", "node")
    for script in sorted(os.listdir(node_dir)) if os.path.isdir(node_dir) else []:
        if is_twin(script):
            print(f"micro: node {script} ...", flush=True)
            for r in run_node_twin(os.path.join(node_dir, script), node_seconds):
                theirs[twin_key(r["name"])] = r
    rows = []
    for r in ours:
        twin = theirs.get(twin_key(r["name"]))
        if twin and twin.get("rate") and r["counters"].get("items_per_second"):
            r["ns_per_op"] = 1e9 / r["counters"]["items_per_second"]  # per item, like the twin
        ratio = r["ns_per_op"] / twin["ns_per_op"] if twin else None
        rows.append({"name": r["name"], "uvcluster_ns_per_op": r["ns_per_op"],
                     "node_ns_per_op": twin["ns_per_op"] if twin else None,
                     "ratio_uvcluster_over_node": ratio, "counters": r["counters"]})
    print("\nmicro-benchmarks (time per operation; ratio < 1 means uvcluster is faster)")
    print(f"{'benchmark':34} {'uvcluster':>12} {'node':>12} {'uvc/node':>9}")
    for r in rows:
        node = human(r["node_ns_per_op"]) if r["node_ns_per_op"] else "-"
        ratio = f"{r['ratio_uvcluster_over_node']:.2f}" if r["ratio_uvcluster_over_node"] else "-"
        extra = " ".join(f"{k}={v:.0f}" for k, v in r["counters"].items() if isinstance(v, (int, float)))
        print(f"{r['name']:34} {human(r['uvcluster_ns_per_op']):>12} {node:>12} {ratio:>9}  {extra}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--profile", default="default", choices=sorted(PROFILES))
    ap.add_argument("--skip-micro", action="store_true")
    ap.add_argument("--skip-lab", action="store_true")
    ap.add_argument("--skip-chaos", action="store_true")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    started = time.time()
    status = 0
    if not args.skip_micro:
        rows = micro(build, args.profile)
        record = {"profile": args.profile, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "kernel": platform.release(), "cores": os.cpu_count(),
                  "node": subprocess.run(["/usr/bin/node", "--version"], capture_output=True, text=True).stdout.strip(),
                  "benchmarks": rows}
        strict_json.write(os.path.join(ROOT, "results", "micro.json"), record)
        print("wrote results/micro.json")
    if not args.skip_micro:
        # Cluster RR handoff: C++/Node primaries and workers under a Connection: close load.
        print("\ncluster RR handoff (bench/bench_cluster.py) ...", flush=True)
        status |= subprocess.call([sys.executable, os.path.join(ROOT, "bench", "bench_cluster.py"),
                                   "--build", build, "--duration", str(PROFILES[args.profile][2]),
                                   "--profile", args.profile,
                                   "--json", os.path.join(ROOT, "results", "cluster.json")])
    driver = os.path.join(ROOT, "scripts", "lab", "driver.py")
    if not args.skip_lab and os.path.exists(driver):
        status |= subprocess.call([sys.executable, driver, "--build", build, "--profile", args.profile])
    ran_lab = not args.skip_lab and os.path.exists(driver)
    if not args.skip_micro:
        # After the lab, whose REPORT.md gets this section: results/rr_limits.json.
        rounds, seconds, strace_s = RR_LIMITS[args.profile]
        print("\nRR hand-off vs its physical limit (bench/rr_limits.py) ...", flush=True)
        status |= subprocess.call([sys.executable, os.path.join(ROOT, "bench", "rr_limits.py"),
                                   "--build", build, "--rounds", str(rounds), "--duration", str(seconds),
                                   "--strace-duration", str(strace_s),
                                   "--json", os.path.join(ROOT, "results", "rr_limits.json"),
                                   "--report-md", os.path.join(ROOT, "results", "REPORT.md")])
        # Big IPC messages and spawn beside their bench/limits programs and Node, interleaved
        # (results/limits_ipc_spawn.json; a section of REPORT.md, so after the lab wrote it).
        print("\nbig IPC messages and spawn against the limit (scripts/limits_ipc_spawn.py) ...", flush=True)
        status |= subprocess.call([sys.executable, os.path.join(ROOT, "scripts", "limits_ipc_spawn.py"),
                                   "--build", build, "--profile", args.profile])
    if ran_lab:
        # The manager alone (uvcluster run vs Node's cluster vs PM2): results/managers.json and a
        # section of REPORT.md (written by the lab just now).
        print("\nmanager cost (scripts/manager_cost.py) ...", flush=True)
        status |= subprocess.call([sys.executable, os.path.join(ROOT, "scripts", "manager_cost.py"),
                                   "--build", build, "--profile", args.profile])
    history.append(history.from_bench(os.path.join(ROOT, "results"), args.profile,
                                      micro=not args.skip_micro, lab=ran_lab))
    print("appended the tracked metrics to results/history.jsonl (scripts/history.py plots them)")
    # Fault lab (scripts/chaos/, `make chaos`): results/chaos/latest.json, results/CHAOS.md and
    # a section linking it at the end of results/REPORT.md.
    chaos = os.path.join(ROOT, "scripts", "chaos", "chaos.py")
    if not args.skip_chaos and os.path.exists(chaos):
        status |= subprocess.call([sys.executable, chaos, "--build", build, "--profile", args.profile])
    print(f"make bench: done in {time.time() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
