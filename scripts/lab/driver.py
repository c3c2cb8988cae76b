#!/usr/bin/python3
"""The strategy lab's driver: runs the matrix of cells for a profile through cell.py (one
subprocess per cell, so a crash stays in its cell), shows progress, writes results/latest.json,
renders results/REPORT.md + PNGs and prints the summary and validations.

usage: driver.py --build DIR [--profile quick|default|full] [--out DIR] [--dry-run]
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from strategies import NAMES as STRATEGIES, REGISTRY  # noqa: E402

# duration/herd in seconds; est_s is the per-cell wall time used before any cell has run.
PROFILES = {
    "quick": {"workers": [2], "loads": ["keepalive", "close"], "apps": "one", "duration": 1,
              "herd": 1, "connections": 50, "validation": False, "est_s": 3.8},
    "default": {"workers": [2, 4], "loads": ["keepalive", "close"], "apps": "both", "duration": 2,
                "herd": 1, "connections": 50, "validation": True, "est_s": 5.0},
    "full": {"workers": [2, 4], "loads": ["keepalive", "close"], "apps": "both", "duration": 10,
             "herd": 3, "connections": 100, "validation": True, "est_s": 16.0,
             "variants": [("exclusive", "native", ["--turn", "0"], "exclusive-noturn"),
                          ("exclusive", "native", ["--turn", "0", "--rotate", "16"], "exclusive-rot16"),
                          ("exclusive", "native", ["--turn", "0", "--rotate", "0"], "exclusive-norot"),
                          ("exclusive", "native", ["--exclusive-mode", "nested"], "exclusive-nested"),
                          ("exclusive", "native", ["--launcher", "uvcluster"], "exclusive-run"),
                          ("shared", "native", ["--launcher", "harness"], "shared-inherit"),
                          ("shared", "native", ["--accept", "drain"], "shared-drain")]},
}


def apps_for(strategy, which):
    """The apps a profile runs `strategy` with: its matrix rows, or one of them for "one" (Node's
    own cluster with Node workers, the reference of every ratio; the others with C++ workers)."""
    s = REGISTRY[strategy]
    rows = list(s.rows())
    if len(rows) == 1 or which != "one":
        return rows
    return ["node"] if s.reference else ["native"]


def matrix(profile):
    """The cells of a profile, in run order: list of dicts with the cell.py arguments."""
    p = PROFILES[profile]
    cells = []
    for w in p["workers"]:
        for load in p["loads"]:
            for s in STRATEGIES:
                for app in apps_for(s, p["apps"]):
                    cells.append({"strategy": s, "app": app, "workers": w, "load": load,
                                  "extra": [], "label": s})
            for s, app, extra, label in p.get("variants", []):
                cells.append({"strategy": s, "app": app, "workers": w, "load": load,
                              "extra": extra, "label": label})
    return cells


def validation_cells(profile):
    """One C++ configuration measured inside and outside (perf with its overhead, strace)."""
    if not PROFILES[profile]["validation"]:
        return []
    w = max(PROFILES[profile]["workers"])
    base = {"strategy": "shared", "app": "native", "workers": w, "load": "close", "label": "shared"}
    # wrk load so both counters see many EAGAINs (serial arrivals often give 0 = 0), and longer:
    # the overhead is a difference of two noisy rates.
    longer = ["--herd-duration", "2", "--herd-load", "wrk", "--herd-connections", "8"]
    return [dict(base, extra=["--herd-overhead"] + longer, role="validation-perf"),
            dict(base, extra=["--herd-method", "strace", "--herd-overhead"] + longer,
                 role="validation-strace")]


def fmt_s(s):
    s = max(0, int(s))
    return f"{s // 60}m{s % 60:02d}s"


def run_matrix(build, profile, out_dir, log=sys.stderr):
    p = PROFILES[profile]
    cells = matrix(profile) + validation_cells(profile)
    records = []
    t0 = time.monotonic()
    spent, measured = 0.0, 0
    for i, c in enumerate(cells, 1):
        elapsed = time.monotonic() - t0
        per = spent / measured if measured else p["est_s"]
        left = per * (len(cells) - i + 1)
        print(f"[{i}/{len(cells)}] {c['label']:<10} {c['app']:<6} w={c['workers']} {c['load']:<9} "
              f"elapsed {fmt_s(elapsed)}  left ~{fmt_s(left)}", file=log, flush=True)
        cmd = ["/usr/bin/python3", os.path.join(HERE, "cell.py"), "--build", build,
               "--strategy", c["strategy"], "--app", c["app"], "--workers", str(c["workers"]),
               "--load", c["load"], "--duration", str(p["duration"]),
               "--connections", str(p["connections"]), "--herd-duration", str(p["herd"]),
               "--json"] + c["extra"]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=p["duration"] * 3 + p["herd"] * 3 + 60)
            rec = json.loads(out.strip().splitlines()[-1]) if out.strip() else {
                "error": f"cell.py exit {proc.returncode}: {err[-400:]}"}
        except subprocess.TimeoutExpired:
            # SIGTERM first: cell.py then stops the processes it started; SIGKILL would orphan them.
            proc.terminate()
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            rec = {"error": "cell timed out"}
        except ValueError as e:
            rec = {"error": f"bad cell output: {e}"}
        took = time.monotonic() - start
        rec.setdefault("strategy", c["strategy"])
        rec.setdefault("app", c["app"])
        rec.setdefault("workers", c["workers"])
        rec.setdefault("load", c["load"])
        rec["label"] = c["label"]
        rec["role"] = c.get("role", "matrix")
        rec["extra_args"] = c["extra"]
        rec["wall_s"] = took
        if rec.get("available", True):
            spent += took
            measured += 1
        if rec.get("error"):
            print(f"    error: {rec['error'][:300]}", file=log, flush=True)
        elif not rec.get("available", True):
            print(f"    unavailable: {rec.get('reason')}", file=log, flush=True)
        records.append(rec)
    env = next((r["env"] for r in records if "env" in r), {})
    doc = {"schema": 1, "profile": profile,
           "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": time.monotonic() - t0, "env": env, "records": records}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "latest.json")
    sys.path.insert(0, os.path.dirname(HERE))
    import strict_json  # scripts/strict_json.py: non-finite -> null + reason, allow_nan=False
    strict_json.write(path, doc)
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description="strategy lab driver")
    ap.add_argument("--build", required=True)
    ap.add_argument("--profile", choices=list(PROFILES), default=os.environ.get("PROFILE", "default"))
    ap.add_argument("--out", default=os.path.join(SRC, "results"))
    ap.add_argument("--dry-run", action="store_true", help="print the matrix and exit")
    a = ap.parse_args(argv)
    cells = matrix(a.profile) + validation_cells(a.profile)
    if a.dry_run:
        for c in cells:
            print(c["label"], c["app"], c["workers"], c["load"], " ".join(c["extra"]))
        print(f"{len(cells)} cells")
        return 0
    build = os.path.abspath(a.build)
    print(f"lab: profile {a.profile}, {len(cells)} cells, results in {a.out}", file=sys.stderr)
    doc = run_matrix(build, a.profile, a.out)
    import report
    summary, validations = report.render(doc, a.out)
    print(summary)
    print(f"lab: {len(doc['records'])} records in {fmt_s(doc['wall_s'])}; "
          f"{os.path.join(a.out, 'REPORT.md')}")
    sys.path.insert(0, os.path.dirname(HERE))
    import compare
    baseline = compare.baseline_path(a.out, a.profile)
    if os.path.exists(baseline):  # informative only; make bench-ci is the statistical gate
        base = json.load(open(baseline))
        refused = compare.profile_mismatch(doc, base)
        problems = [] if refused else compare.compare(doc, base)
        print(refused or f"lab: vs baseline: {len(problems)} regression(s)" +
              "".join(f"\n  {p}" for p in problems[:20]))
    orphans = [r for r in doc["records"] if r.get("processes", {}).get("orphans")]
    if orphans:
        print(f"lab: ORPHANS left by {len(orphans)} cells", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
