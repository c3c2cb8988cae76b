#!/usr/bin/python3
"""Big IPC messages and spawn against this machine's limit and Node, from the same run
(issue 13 §2 and §3; part of `make bench`, or alone: scripts/limits_ipc_spawn.py --build build).

Rounds, each running every program once, in this order, so a slow minute on the shared machine
hits all of them alike (interleaved, not one block per program):
  ipc    for 64 KiB, 1 MiB, 16 MiB: bench/limits/raw_ipc (the frame's bytes there and back over a
         bare socketpair, blocking read/write, newline scan of new bytes), then bench_ipc
         BM_Ipc<size> (C++ parent <-> `uvcluster ipc-echo`); then bench/node/ipc_big.js (Node
         parent <-> Node child, all three sizes).
  spawn  at 0 and 1 GiB of parent RSS: bench/limits/raw_spawn (vfork + exec /bin/true + waitpid),
         then bench_spawn spawn_true / spawn_true_1gib, then bench/node/spawn.js (Node's
         child_process.spawn of /bin/true, stdio 'ignore', to 'close').
Each uvcluster figure is bracketed by its limit program, run just before and just after it,
and compared with the mean of the two, so a load that changes during a round moves both sides of the ratio alike;
bench_ipc runs for the same SECONDS as the limit programs (UVC_BENCH_MIN_TIME).
Per figure: the median over rounds of the time per operation; ratios are medians of the
per-round ratios, reported with their spread (min and max over the rounds, and every one).
IPC also gets CPU time per round trip (both processes: raw_ipc's cpu_ns_per_op, bench_ipc's
cpu_ns_per_rt counter): on a shared machine wall time depends on whether the two processes got
a core each, CPU time much less. Goals (issue 13): uvcluster 1 MiB IPC >= 5x faster than Node
and <= 2x the limit; spawn <= 1.3x the vfork limit at 0 and 1 GiB.

Writes results/limits_ipc_spawn.json (strict JSON, results/schema/limits_ipc_spawn.schema.json),
prints the table, and (re)writes a section of results/REPORT.md between markers.
Exit status 0, or 1 when a program failed to give a figure.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import strict_json  # noqa: E402

ROUNDS = {"quick": 1, "default": 3, "full": 5}
SECONDS = {"quick": 0.3, "default": 1.0, "full": 2.0}  # per limit program and Node spawn twin
IPC_SIZES = [("64kib", 64 << 10, "BM_Ipc64KiB"), ("1mib", 1 << 20, "BM_Ipc1MiB"),
             ("16mib", 16 << 20, "BM_Ipc16MiB")]
SPAWN_SIZES = [("0", 0, "spawn_true"), ("1gib", 1024, "spawn_true_1gib")]
GOALS = {"ipc_1mib_node_over_uvcluster_min": 5.0, "ipc_1mib_uvcluster_over_limit_max": 2.0,
         "spawn_uvcluster_over_limit_max": 1.3}
SECTION_BEGIN = "<!-- limits: written by scripts/limits_ipc_spawn.py -->"
SECTION_END = "<!-- /limits -->"


def json_lines(cmd, timeout, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                       stdin=subprocess.DEVNULL, check=False)
    out = [json.loads(ln) for ln in p.stdout.splitlines() if ln.strip().startswith("{")]
    if p.returncode != 0:
        print(f"  {os.path.basename(cmd[0])} {' '.join(cmd[1:3])} failed ({p.returncode}): "
              f"{p.stderr.strip()[-300:]}")
    return out


def google_benchmark(exe, pattern, min_time):
    """(ns per iteration in real time, CPU ns per round trip or None) of the one benchmark
    matching pattern, or (None, None)."""
    env = dict(os.environ, UVC_BENCH_MIN_TIME=str(min_time))  # bench_ipc's MinTime
    p = subprocess.run([exe, "--benchmark_format=json", f"--benchmark_filter={pattern}",
                        f"--benchmark_min_time={min_time}"], capture_output=True, text=True,
                       timeout=600, stdin=subprocess.DEVNULL, check=False, env=env)
    if p.returncode != 0:
        print(f"  {os.path.basename(exe)} {pattern} failed ({p.returncode}): {p.stderr.strip()[-300:]}")
        return None, None
    scale = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}
    for b in json.loads(p.stdout)["benchmarks"]:
        if not b.get("error_occurred"):
            return b["real_time"] * scale[b.get("time_unit", "ns")], b.get("cpu_ns_per_rt")
    return None, None


def node_twin(script, seconds, only=None):
    env = dict(os.environ, UVC_BENCH_SECONDS=str(seconds))
    rows = json_lines(["/usr/bin/node", os.path.join(ROOT, "bench", "node", script)] + ([only] if only else []),
                      600, env)
    out = {}
    for r in rows:
        if "ns_per_op" in r:
            out[r["name"]] = r["ns_per_op"]
        elif r.get("unit") == "ms":
            out[r["name"]] = r["value"] * 1e6
    return out


def measure(build, profile):
    bench, limits = os.path.join(build, "bench"), os.path.join(build, "bench", "limits")
    seconds = SECONDS[profile]
    samples = {}  # figure name -> [ns per op, one per round]

    def add(name, v):
        samples.setdefault(name, []).append(v)

    def limit(kind, label, arg):
        """(ns, CPU ns or None) per operation of one run of the limit program, or (None, None)."""
        for row in json_lines([os.path.join(limits, f"raw_{kind}"), str(arg), str(seconds),
                               f"limit_{kind}_{label}"], 300):
            return row["ns_per_op"], row.get("cpu_ns_per_op")
        return None, None

    def mean(a, b):
        return (a + b) / 2 if a and b else (a or b)

    def limit_then_ours(kind, label, arg, bm):
        """The uvcluster benchmark between two runs of its limit program, back to back."""
        before = limit(kind, label, arg)
        ours, ours_cpu = google_benchmark(os.path.join(bench, f"bench_{kind}"), f"^{bm}/", seconds)
        after = limit(kind, label, arg)
        add(f"limit_{kind}_{label}", mean(before[0], after[0]))
        add(f"uvcluster_{kind}_{label}", ours)
        if kind == "ipc":
            add(f"limit_cpu_{kind}_{label}", mean(before[1], after[1]))
            add(f"uvcluster_cpu_{kind}_{label}", ours_cpu)

    for r in range(ROUNDS[profile]):
        print(f"limits: round {r + 1}/{ROUNDS[profile]} ipc ...", flush=True)
        for label, size, bm in IPC_SIZES:
            limit_then_ours("ipc", label, size, bm)
        for name, ns in node_twin("ipc_big.js", seconds).items():
            add(name, ns)
        print(f"limits: round {r + 1}/{ROUNDS[profile]} spawn ...", flush=True)
        for label, mib, bm in SPAWN_SIZES:
            limit_then_ours("spawn", label, mib, bm)
            for name, ns in node_twin("spawn.js", seconds, bm).items():
                add(f"node_spawn_{label}" if name == bm else name, ns)
    return samples


def med(xs):
    xs = [x for x in xs if x]
    return statistics.median(xs) if xs else None


def ratios(a, b):
    """The per-round ratios a/b (rounds where both gave a figure)."""
    return [x / y for x, y in zip(a, b) if x and y]


def summarize(samples, kind, labels):
    rows = []
    for label in labels:
        lim = samples.get(f"limit_{kind}_{label}", [])
        ours = samples.get(f"uvcluster_{kind}_{label}", [])
        node = samples.get(f"node_{kind}_{label}", [])
        lim_cpu = samples.get(f"limit_cpu_{kind}_{label}", [])
        ours_cpu = samples.get(f"uvcluster_cpu_{kind}_{label}", [])
        per_round = {"uvcluster_over_limit": ratios(ours, lim), "node_over_limit": ratios(node, lim),
                     "uvcluster_over_node": ratios(ours, node)}
        if kind == "ipc":
            per_round["uvcluster_over_limit_cpu"] = ratios(ours_cpu, lim_cpu)
        row = {"item": kind, "size": label, "rounds": len(ours),
               "limit_ns": med(lim), "uvcluster_ns": med(ours), "node_ns": med(node),
               "uvcluster_over_limit": med(per_round["uvcluster_over_limit"]),
               "node_over_limit": med(per_round["node_over_limit"]),
               "uvcluster_over_node": med(per_round["uvcluster_over_node"]),
               "per_round": per_round,
               "spread": {k: ([min(v), max(v)] if v else None) for k, v in per_round.items()},
               "samples": {"limit": lim, "uvcluster": ours, "node": node}}
        if kind == "ipc":
            row.update({"limit_cpu_ns": med(lim_cpu), "uvcluster_cpu_ns": med(ours_cpu),
                        "uvcluster_over_limit_cpu": med(per_round["uvcluster_over_limit_cpu"])})
            row["samples"].update({"limit_cpu": lim_cpu, "uvcluster_cpu": ours_cpu})
        rows.append(row)
    return rows


def human(ns):
    if ns is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def ratio(x):
    return "-" if x is None else f"{x:.2f}×"


def ratio_spread(r, key):
    """The median of the per-round ratios with their range: "1.90× (1.85–2.10)"."""
    spread = r.get("spread", {}).get(key)
    if r.get(key) is None:
        return "-"
    return ratio(r[key]) + (f" ({spread[0]:.2f}–{spread[1]:.2f})" if spread and len(r["per_round"][key]) > 1 else "")


def table(rows):
    L = ["| item | size | limit | uvcluster | Node | uvcluster / limit (min–max) | uvcluster / limit, CPU time "
         "| Node / limit | uvcluster / Node |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = {"0": "0 (small parent)", "1gib": "1 GiB parent RSS"}.get(r["size"], r["size"].replace("kib", " KiB").replace("mib", " MiB"))
        item = "IPC string message, there and back" if r["item"] == "ipc" else "spawn /bin/true to close"
        L.append(f"| {item} | {size} | {human(r['limit_ns'])} | {human(r['uvcluster_ns'])} | {human(r['node_ns'])} "
                 f"| {ratio_spread(r, 'uvcluster_over_limit')} | {ratio_spread(r, 'uvcluster_over_limit_cpu')} "
                 f"| {ratio(r['node_over_limit'])} | {ratio(r['uvcluster_over_node'])} |")
    return "\n".join(L)


def link_in(report_md, doc):
    """(Re)writes this section at the end of REPORT.md, between markers."""
    text = open(report_md).read() if os.path.exists(report_md) else ""
    if SECTION_BEGIN in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        tail = rest.split(SECTION_END, 1)[1] if SECTION_END in rest else ""
        text = head.rstrip("\n") + "\n" + tail.lstrip("\n")
    L = ["", SECTION_BEGIN, "## Big IPC messages and spawn against the limit (`scripts/limits_ipc_spawn.py`)", "",
         f"Profile `{doc['profile']}`, {doc['rounds']} interleaved rounds, {doc['time']}, 1-minute load "
         f"average {doc['loadavg_1m']:.1f} on {doc['cores']} cores (above the core count, other work shared "
         "the CPUs: the ratios, each from programs run back to back, are what to compare). "
         "Limit = bench/limits/raw_ipc.c (bare socketpair, newline scan) and raw_spawn.c (vfork+exec+wait).",
         "", table(doc["rows"]), SECTION_END, ""]
    with open(report_md, "w") as f:
        f.write(text.rstrip("\n") + "\n" + "\n".join(L))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--profile", default="default", choices=sorted(ROUNDS))
    ap.add_argument("--json", default=os.path.join(ROOT, "results", "limits_ipc_spawn.json"))
    ap.add_argument("--report", default=os.path.join(ROOT, "results", "REPORT.md"))
    a = ap.parse_args(argv)
    build = os.path.abspath(a.build)
    samples = measure(build, a.profile)
    rows = summarize(samples, "ipc", [s[0] for s in IPC_SIZES]) + summarize(samples, "spawn", [s[0] for s in SPAWN_SIZES])
    doc = {"schema": 1, "profile": a.profile, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "rounds": ROUNDS[a.profile], "cores": os.cpu_count(), "loadavg_1m": os.getloadavg()[0],
           "goals": GOALS, "rows": rows}
    strict_json.write(a.json, doc)
    print("\nbig IPC messages and spawn against the limit (medians; ratios < 1 mean faster)\n" + table(rows))
    link_in(a.report, doc)
    print(f"wrote {os.path.relpath(a.json, ROOT)}, section in {os.path.relpath(a.report, ROOT)}")
    return 0 if all(r["uvcluster_ns"] and r["limit_ns"] and r["node_ns"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
