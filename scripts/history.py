#!/usr/bin/python3
"""results/history.jsonl: one line per `make bench` and `make bench-compare` run (revision, time,
profile, environment, tracked metrics; results/schema/history.schema.json), and its trend plots.

usage: scripts/history.py [--history results/history.jsonl] [--out results/history] [--alpha 0.01]

Renders one PNG per tracked metric (<out>/<metric>.png) and prints the change points found.
Points are grouped into series by source (kind + profile: a 2 s CI sample and a 3 s `make bench`
sample are not the same measurement) and change points are searched per series.

Change-point method (documented, deterministic): binary segmentation with a permutation test,
the significance test of E-Divisive means (Matteson & James 2014, as used for MongoDB's
performance CI) with a mean-shift statistic on ranks:
  1. rank-transform the series (one stalled run cannot fake a shift);
  2. for every split t with at least MIN_SEG points each side, T(t) = t(n-t)/n * (mean of the
     ranks before t - mean after t)^2; take the split with the largest T;
  3. permute the series 999 times (fixed seed); p = (1 + #permutations whose max T >= the
     observed) / 1000; the split is a change point when p < alpha (default 0.01);
  4. recurse into both halves (each half tested at the same alpha).
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import strict_json  # noqa: E402

HISTORY = os.path.join(ROOT, "results", "history.jsonl")
MIN_SEG = 3


def tracked_metrics():
    """The metrics the CI gate tracks (bench_compare.METRICS with tracked=True): one plot each."""
    import bench_compare  # here, not at the top: bench_compare imports this module
    return [name for name, (_, _, tracked) in bench_compare.METRICS.items() if tracked]


MICRO = {"BM_IpcPingPong": "ipc_pingpong_us", "BM_IpcHandlePassing": "ipc_handle_pingpong_us"}


# ------------------------------------------------------------------ writing

def git_rev():
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    return rev or "0000000", dirty


def environment():
    import platform
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = None
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"kernel": platform.release(), "cores": os.cpu_count(), "loadavg_1m": load1, "node": node,
            "host": platform.node()}


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def from_compare(result):
    """A bench-compare result -> its history line: the NEW side's medians."""
    metrics, samples = {}, {}
    for m in result["metrics"]:
        metrics[m["name"]] = m.get("new_median")
        if m.get("new_median") is None:
            metrics[m["name"] + "_reason"] = m.get("reason", "not measured")
        samples[m["name"]] = len(m.get("new") or [])
    line = {"schema": 1, "kind": "compare", "rev": result["new"]["rev"], "dirty": bool(result["new"].get("dirty")),
            "base_rev": result["base"]["rev"], "time": result["time"], "profile": result["profile"],
            "env": result.get("env", environment()), "metrics": metrics, "samples": samples}
    if result["new"].get("preload"):
        line["profile"] += "+preload"  # a planted-regression run is not the code's own history
    return line


def from_bench(results_dir, profile, micro=True, lab=True):
    """The tracked metrics of the files one `make bench` run just wrote."""
    metrics = {}
    if micro:
        try:
            for b in strict_json.load(os.path.join(results_dir, "micro.json"))["benchmarks"]:
                if b["name"] in MICRO:
                    metrics[MICRO[b["name"]]] = b["uvcluster_ns_per_op"] / 1e3
        except (OSError, ValueError, KeyError):
            pass
        try:
            for r in strict_json.load(os.path.join(results_dir, "cluster.json"))["results"]:
                if r["case"] == "cpp-primary+cpp-workers":
                    metrics["rr_conn_per_s"] = r["connections_per_s"]
                    if r.get("primary_cpu_s_per_1k_conn") is not None:
                        metrics["rr_primary_cpu_ms_per_1k"] = r["primary_cpu_s_per_1k_conn"] * 1000.0
        except (OSError, ValueError, KeyError):
            pass
    if micro:
        try:  # scripts/limits_ipc_spawn.py: the medians over its interleaved rounds
            for r in strict_json.load(os.path.join(results_dir, "limits_ipc_spawn.json"))["rows"]:
                if (r["item"], r["size"]) == ("ipc", "1mib") and r.get("uvcluster_ns"):
                    metrics["ipc_1mib_ms"] = r["uvcluster_ns"] / 1e6
                if (r["item"], r["size"]) == ("spawn", "1gib") and r.get("uvcluster_ns"):
                    metrics["spawn_true_1gib_us"] = r["uvcluster_ns"] / 1e3
        except (OSError, ValueError, KeyError):
            pass
    if lab:
        try:
            for r in strict_json.load(os.path.join(results_dir, "latest.json"))["records"]:
                if (r.get("label", r["strategy"]) in ("rr", "reuseport") and r["workers"] == 2
                        and r["load"] == "close" and r["app"] == "native"):
                    rps = (r.get("throughput") or {}).get("rps")
                    if rps:
                        metrics[f"lab_{r['strategy']}_close_2w_rps"] = rps
        except (OSError, ValueError, KeyError):
            pass
    rev, dirty = git_rev()
    return {"schema": 1, "kind": "bench", "rev": rev, "dirty": dirty, "time": now(), "profile": profile,
            "env": environment(), "metrics": metrics}


def append(line, path=HISTORY):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    strict_json.append_line(path, line)


def read(path=HISTORY):
    lines = []
    if os.path.exists(path):
        with open(path) as f:
            for ln in f:
                if ln.strip():
                    lines.append(strict_json.json.loads(ln))
    return lines


# ------------------------------------------------------------------ change points

def _max_split(ranks, min_seg):
    n = len(ranks)
    c = np.cumsum(ranks)
    t = np.arange(min_seg, n - min_seg + 1)
    left = c[t - 1] / t
    right = (c[-1] - c[t - 1]) / (n - t)
    stat = t * (n - t) / n * (left - right) ** 2
    i = int(np.argmax(stat))
    return int(t[i]), float(stat[i])


def change_points(values, alpha=0.01, permutations=999, min_seg=MIN_SEG, seed=1):
    """Indices i where a new regime starts (values[i] is the first point after the change)."""
    rng = np.random.default_rng(seed)
    found = []

    def search(lo, hi):
        seg = np.asarray(values[lo:hi], dtype=float)
        if len(seg) < 2 * min_seg:
            return
        ranks = np.argsort(np.argsort(seg, kind="stable"), kind="stable").astype(float)
        t, observed = _max_split(ranks, min_seg)
        if observed <= 0:
            return
        hits = sum(_max_split(rng.permutation(ranks), min_seg)[1] >= observed for _ in range(permutations))
        if (1 + hits) / (1 + permutations) < alpha:
            found.append(lo + t)
            search(lo, lo + t)
            search(lo + t, hi)

    search(0, len(values))
    return sorted(found)


# ------------------------------------------------------------------ plots

def series(lines, metric):
    """{source: [(index in history, time, value, rev)]} for one metric."""
    out = {}
    for i, ln in enumerate(lines):
        v = (ln.get("metrics") or {}).get(metric)
        if isinstance(v, (int, float)):
            out.setdefault(f"{ln['kind']}/{ln['profile']}", []).append((i, ln["time"], float(v), ln["rev"]))
    return out


def render(lines, out_dir, alpha=0.01):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    report = []
    for metric in tracked_metrics():
        ser = series(lines, metric)
        if not ser:
            continue
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for source, pts in sorted(ser.items()):
            xs = [p[0] for p in pts]
            ys = [p[2] for p in pts]
            ax.plot(xs, ys, "o-", ms=4, lw=1, label=source)
            for cp in change_points(ys, alpha=alpha):
                ax.axvline(xs[cp] - 0.5, color="red", ls="--", lw=1)
                before, after = np.median(ys[:cp]), np.median(ys[cp:])
                report.append(f"{metric} [{source}]: change at run {xs[cp]} (rev {pts[cp][3][:10]}, "
                              f"{pts[cp][1]}): median {before:.4g} -> {after:.4g} ({(after / before - 1) * 100:+.1f} %)")
        ax.set_title(f"{metric} (red: change points, permutation p < {alpha})")
        ax.set_xlabel("run (line of results/history.jsonl)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"{metric}.png"), dpi=100)
        plt.close(fig)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", default=HISTORY)
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "history"))
    ap.add_argument("--alpha", type=float, default=0.01)
    a = ap.parse_args(argv)
    lines = read(a.history)
    if not lines:
        print(f"history: {a.history} is empty; run make bench or make bench-compare first")
        return 0
    report = render(lines, a.out, a.alpha)
    print(f"history: {len(lines)} runs; plots in {os.path.relpath(a.out, ROOT)}/")
    print("\n".join(report) if report else "history: no change point")
    return 0


if __name__ == "__main__":
    sys.exit(main())
