#!/usr/bin/python3
"""Compares results/latest.json (lab records) against the baseline of the same profile with
tolerances: results/baseline.json for the default profile, results/baseline-<profile>.json for
the others. A run and a baseline of different profiles are not compared: one line says so and
the exit status is 2 (a quick run is not a regression of a default one).
Exit 1 when something regressed, 0 otherwise (also when there is no baseline: nothing to compare).
This is a single-run sanity check with wide tolerances; statistically sound A/B comparison is
`make bench-compare` (scripts/bench_compare.py).
Throughput and CPU are compared as same-run ratios to node-rr (absolute numbers drift on a
shared 2-core machine); counts (fds per connection, herd, fairness) directly.

usage: compare.py [--latest F] [--baseline F] [--update-baseline]
"""
import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lab"))
import report  # noqa: E402

# (name, value path, kind, tolerance, applies): kind "ratio_drop" = same-run ratio to node-rr may fall
# by at most tol (relative); "abs_rise"/"abs_drop" = value may move the wrong way by tol.
# Which cells a check applies to: fds only under keep-alive (under Connection: close the count
# depends on how many sockets are mid-close when sampled); fairness only where a strategy
# promises it (shared sockets are unfair by nature and vary run to run). Tolerances are wide
# because a 2-core machine shared with other work moves same-run ratios by tens of percent.
FAIR = {"rr", "uvc-run", "node-rr", "proxy", "nginx", "reuseport", "sticky"}
CHECKS = [
    ("req/s vs node-rr", "throughput.rps", "ratio_drop", 0.50, lambda r: True),
    ("fds/conn primary", "fds.per_conn_primary", "abs_rise", 0.5, lambda r: r["load"] == "keepalive"),
    ("fds/conn workers", "fds.per_conn_workers", "abs_rise", 0.5, lambda r: r["load"] == "keepalive"),
    ("herd EAGAIN/conn", "herd.outside.per_conn", "abs_rise", 0.5, lambda r: True),
    ("Jain requests", "fairness.requests.jain", "abs_drop", 0.15, lambda r: r["strategy"] in FAIR),
]


def key(r):
    return (r.get("label", r["strategy"]), r["app"], r["workers"], r["load"])


def ref_ratio(idx, r, path):
    ref = idx.get((report.REF[0], report.REF[1], r["workers"], r["load"]))
    if ref is None or not report.ok(ref):
        return None
    v, rv = report.get(r, path), report.get(ref, path)
    return None if v is None or not rv else v / rv


def baseline_path(results_dir, profile):
    """The baseline a run of `profile` is compared with."""
    name = "baseline.json" if profile == "default" else f"baseline-{profile}.json"
    return os.path.join(results_dir, name)


def profile_mismatch(latest, baseline):
    """One line explaining why these two runs are not comparable, or None."""
    lp, bp = latest.get("profile"), baseline.get("profile")
    if lp == bp:
        return None
    return (f"compare: refused: the run is profile {lp!r} but the baseline is profile {bp!r}; "
            f"compare runs of one profile (make bench PROFILE={bp}, or record a {lp!r} baseline "
            f"with scripts/compare.py --update-baseline)")


def compare(latest, baseline):
    """Returns a list of regression messages (empty = fine)."""
    li = {key(r): r for r in latest["records"] if report.ok(r)}
    bi = {key(r): r for r in baseline["records"] if report.ok(r)}
    problems = []
    for k, r in li.items():
        b = bi.get(k)
        if b is None:
            continue
        for name, path, kind, tol, applies in CHECKS:
            if not applies(r):
                continue
            if kind == "ratio_drop":
                now, was = ref_ratio(li, r, path), ref_ratio(bi, b, path)
                if now is not None and was and now < was * (1 - tol):
                    problems.append(f"{'/'.join(map(str, k))}: {name} {now:.2f} < {was:.2f} −{tol:.0%}")
                continue
            now, was = report.get(r, path), report.get(b, path)
            if now is None or was is None:
                continue
            if kind == "abs_rise" and now > was + tol:
                problems.append(f"{'/'.join(map(str, k))}: {name} {now:.3f} > {was:.3f} + {tol}")
            if kind == "abs_drop" and now < was - tol:
                problems.append(f"{'/'.join(map(str, k))}: {name} {now:.3f} < {was:.3f} − {tol}")
    return problems


def main(argv=None):
    root = os.path.dirname(HERE)
    ap = argparse.ArgumentParser(description="lab regression check")
    ap.add_argument("--latest", default=os.path.join(root, "results", "latest.json"))
    ap.add_argument("--baseline", help="default: the baseline of the latest run's profile")
    ap.add_argument("--update-baseline", action="store_true",
                    help="copy --latest to the baseline of its profile")
    a = ap.parse_args(argv)
    latest = json.load(open(a.latest))
    baseline = a.baseline or baseline_path(os.path.dirname(os.path.abspath(a.latest)),
                                           latest.get("profile", "default"))
    if a.update_baseline:
        shutil.copyfile(a.latest, baseline)
        print(f"compare: baseline updated from {a.latest} ({baseline})")
        return 0
    if not os.path.exists(baseline):
        print(f"compare: no baseline at {baseline}; nothing to compare")
        return 0
    base = json.load(open(baseline))
    refused = profile_mismatch(latest, base)
    if refused:
        print(refused)
        return 2
    problems = compare(latest, base)
    for p in problems:
        print(f"REGRESSION {p}")
    print(f"compare: {len(problems)} regression(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
