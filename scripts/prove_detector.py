#!/usr/bin/python3
"""Proves the bench-compare detector: A/A false alarms and planted-regression power.

  scripts/prove_detector.py aa      --runs 20 [--rev R] [--profile short]
  scripts/prove_detector.py planted --runs 10 [--rev R] [--profile short] [--delay sendmsg:3,accept4:12]

aa:      R against itself (one build, both sides): every flag is a false alarm.
planted: R against itself with the NEW side under LD_PRELOAD=build/lib/libuvc_delay_shim.so
         (UVC_DELAY_CALLS=--delay), which busy-waits before the named calls: a regression
         made without touching the library.
Each run is a full `scripts/bench_compare.py --no-history` (JSON in results/compare/proof-aa-<rev>/ or
proof-planted-<rev>-<delay>/).
The tally re-reads each run's Holm-adjusted p-values and median ratios at two settings:
  CI gate   p_holm < 0.01 and >= 10 % worse on a gated metric (what fails `make bench-ci`)
  compare   p_holm < 0.05 and >= 5 % worse (the `make bench-compare` default verdict)
plus "any star" (some metric with p_holm < 0.05, either direction). The summary is printed
and written beside that folder as <folder>.md.
"""
import argparse
import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import ab_stats  # noqa: E402
import strict_json  # noqa: E402

TARGETS = ["rr_conn_per_s", "ipc_handle_pingpong_us", "rr_primary_cpu_ms_per_1k", "ipc_handle_pingpong_cpu_us"]


def flagged(m, alpha, min_effect):
    return (m.get("p_holm") is not None and m["p_holm"] < alpha and m.get("ratio") is not None
            and ab_stats.bad_effect(m["ratio"], m["better"]) >= min_effect)


def tally(kind, files):
    rows, gate_fail, any_star, compare_flag = [], 0, 0, 0
    detected = {t: {"gate": 0, "compare": 0, "effects": []} for t in TARGETS}
    for f in files:
        r = strict_json.load(f)
        ms = {m["name"]: m for m in r["metrics"]}
        g = [m["name"] for m in r["metrics"] if m.get("gated") and flagged(m, 0.01, 0.10)]
        c = [m["name"] for m in r["metrics"] if m.get("gated") and flagged(m, 0.05, 0.05)]
        s = [m["name"] for m in r["metrics"] if m.get("p_holm") is not None and m["p_holm"] < 0.05]
        gate_fail += bool(g)
        compare_flag += bool(c)
        any_star += bool(s)
        for t in TARGETS:
            if t in ms and ms[t].get("ratio"):
                detected[t]["gate"] += t in g
                detected[t]["compare"] += t in c
                detected[t]["effects"].append(ab_stats.bad_effect(ms[t]["ratio"], ms[t]["better"]))
        effects = ", ".join(f"{n} {ab_stats.bad_effect(m['ratio'], m['better']) * 100:+.1f}%{m.get('stars', '')}"
                            for n, m in ms.items() if m.get("ratio"))
        rows.append(f"| {os.path.basename(f)[:15]} | {r['samples_per_side']} | {r['env'].get('loadavg_1m', 0):.1f} | "
                    f"{','.join(g) or '-'} | {','.join(s) or '-'} | {effects} |")
    n = len(files)
    out = [f"## {kind}: {n} runs", "",
           f"- runs failing the CI gate (p_holm < 0.01, >= 10 % worse): **{gate_fail}/{n}**",
           f"- runs with a compare-default regression (p_holm < 0.05, >= 5 % worse): **{compare_flag}/{n}**",
           f"- runs with any star (p_holm < 0.05, either direction): **{any_star}/{n}**"]
    if kind == "planted":
        for t, d in detected.items():
            eff = sorted(d["effects"])
            med = f"{eff[len(eff) // 2] * 100:+.1f} %" if eff else "-"
            out.append(f"- {t}: flagged by the compare default in **{d['compare']}/{n}**, by the CI gate in "
                       f"**{d['gate']}/{n}**; median measured slowdown {med}")
    out += ["", "| run | k | load 1m | CI-gate flags | stars | worse-by per metric (+ = slower) |",
            "|---|---|---|---|---|---|", *rows]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["aa", "planted"])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--profile", default="short")
    ap.add_argument("--delay", default="sendmsg:3,accept4:12", help="UVC_DELAY_CALLS for planted runs")
    ap.add_argument("--shim", default=os.path.join(ROOT, "build", "lib", "libuvc_delay_shim.so"))
    ap.add_argument("--tally-only", action="store_true", help="only summarise the runs already there")
    a = ap.parse_args(argv)
    # one folder per kind, revision and delay: a tally never mixes two series
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=10", a.rev], capture_output=True, text=True)
    if rev.returncode != 0:
        print(f"prove_detector: unknown revision {a.rev}", file=sys.stderr)
        return 2
    name = f"proof-{a.kind}-{rev.stdout.strip()}" + (
        f"-{a.delay.replace(':', '').replace(',', '-')}" if a.kind == "planted" else "")
    out = os.path.join(ROOT, "results", "compare", name)
    os.makedirs(out, exist_ok=True)
    if not a.tally_only:
        cmd = [sys.executable, os.path.join(HERE, "bench_compare.py"), "--base", a.rev, "--new", a.rev,
               "--profile", a.profile, "--no-history", "--no-plot", "--out", out]
        env = dict(os.environ)
        if a.kind == "planted":
            if not os.path.exists(a.shim):
                print(f"prove_detector: no shim at {a.shim} (make build)", file=sys.stderr)
                return 2
            cmd += ["--preload-new", a.shim]
            env["UVC_DELAY_CALLS"] = a.delay
        for i in range(a.runs):
            t0 = time.monotonic()
            rc = subprocess.call(cmd, env=env, stdout=subprocess.DEVNULL)
            print(f"prove_detector {a.kind}: run {i + 1}/{a.runs} exit {rc} in {time.monotonic() - t0:.0f} s",
                  flush=True)
            if rc == 2 and i == 0:
                return 2  # bad usage: every run would fail alike
    files = sorted(glob.glob(os.path.join(out, "*.json")))
    summary = tally(a.kind, files)
    cmdline = f"scripts/prove_detector.py {a.kind} --runs {a.runs} --rev {a.rev} --profile {a.profile}" + (
        f" --delay {a.delay}" if a.kind == "planted" else "")
    with open(out + ".md", "w") as f:
        f.write(f"`{cmdline}`\n\n{summary}\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
