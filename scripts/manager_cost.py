#!/usr/bin/python3
"""`make bench`'s manager cost: what the process manager itself (not its workers) costs, as RSS
and CPU time per 1,000 requests, for `uvcluster run` (rr), Node's cluster
(scripts/chaos/node_cluster.js) and PM2 (pm2-runtime from ./node_modules, cluster mode). All three
run the fault lab's app (scripts/chaos/app.js), started and stopped the fault lab's way
(scripts/chaos/chaos.py's Run), with the same workers under the same wrk `Connection: close` load
(every request a new connection: the manager's accept and hand-off path), in the same run: rounds
interleave the managers so machine load hits them alike.

Manager = the primary plus its descendants that are not workers (uvcluster's watchdog included).
Per round and manager: CPU (utime + stime) of the manager over the load / requests × 1000, RSS
(sum of the manager processes after the load) and the primary's peak RSS (VmHWM). The summary is
the median over rounds. Results: results/managers.json (results/schema/managers.schema.json) and a
section at the end of results/REPORT.md. Loads stay on 127.0.0.1 and stop by themselves.
"""
import argparse
import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "scripts", "lab"))
sys.path.insert(0, os.path.join(ROOT, "scripts", "chaos"))
import chaos  # noqa: E402
import strict_json  # noqa: E402
from load import run_wrk  # noqa: E402
from procfs import cpu_seconds  # noqa: E402
from md_section import rewrite  # noqa: E402

MANAGERS = ["uvc-rr", "node-cluster", "pm2"]
# rounds, wrk seconds per measurement, workers, wrk connections
PROFILES = {"quick": (1, 2, 2, 16), "default": (3, 4, 2, 16), "full": (5, 8, 2, 16)}
SECTION_BEGIN = "<!-- manager cost: written by scripts/manager_cost.py -->"
SECTION_END = "<!-- /manager cost -->"


def peak_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def manager_pids(run):
    workers = set(run.workers())
    tree = chaos.descendants(run.primary.pid)
    return [run.primary.pid] + sorted(p for p, st in tree.items() if p not in workers and st[0] != "Z")


def measure(build, manager, seconds, workers, connections):
    """One manager, one round: start, warm up, measure under load, stop. A dict for the record."""
    run = chaos.Run(build, manager, "manager-cost", {"workers": workers}, "custom")
    rec = {"manager": manager, "workers": workers}
    tracker = None
    try:
        run.start_manager()
        tracker = chaos.Tracker(run.primary.pid)
        tracker.start()
        if not run.wait_workers(workers, 60):
            rec["error"] = f"{workers} workers not serving within 60 s: {chaos.tail(os.path.join(run.tmp, 'manager.err'))}"
            return rec
        run_wrk(run.port, 1, connections, close=True)  # warm-up: JIT, pools, first allocations
        pids = manager_pids(run)
        cpu0 = sum(cpu_seconds(p) or 0.0 for p in pids)
        report = run_wrk(run.port, seconds, connections, close=True)
        cpu1 = sum(cpu_seconds(p) or 0.0 for p in pids)
        requests = report["requests"]
        errors = sum(report["errors"].values())
        rec.update(manager_processes=len(pids), requests=requests, errors=errors,
                   rps=requests / (report["duration_us"] / 1e6) if report["duration_us"] else 0.0,
                   cpu_ms=(cpu1 - cpu0) * 1000,
                   cpu_ms_per_1000_requests=(cpu1 - cpu0) * 1e6 / requests if requests else None,
                   rss_kb=sum(chaos.rss_kb(p) or 0 for p in pids),
                   primary_peak_rss_kb=peak_rss_kb(run.primary.pid))
        return rec
    finally:
        if run.primary is not None and tracker is not None:
            _, orphans = run.stop_all(tracker)
            if orphans:
                rec["orphans_killed"] = len(orphans)
        elif run.primary is not None:
            run.primary.kill()
            run.primary.wait()
        shutil.rmtree(run.tmp, ignore_errors=True)


def summarize(records):
    out = {}
    for m in MANAGERS:
        ok = [r for r in records if r["manager"] == m and r.get("cpu_ms_per_1000_requests") is not None]
        if not ok:
            continue
        med = lambda k: statistics.median(r[k] for r in ok)  # noqa: E731
        out[m] = {"rounds": len(ok), "cpu_ms_per_1000_requests": med("cpu_ms_per_1000_requests"),
                  "rss_kb": med("rss_kb"), "rps": med("rps"), "errors": sum(r["errors"] for r in ok)}
    base = out.get("uvc-rr")
    for m, s in out.items():
        if base and m != "uvc-rr":
            s["uvc_cpu_ratio"] = base["cpu_ms_per_1000_requests"] / s["cpu_ms_per_1000_requests"] \
                if s["cpu_ms_per_1000_requests"] else None
            s["uvc_rss_ratio"] = base["rss_kb"] / s["rss_kb"] if s["rss_kb"] else None
    return out


def table(doc):
    L = ["| manager | rounds | manager CPU ms / 1,000 requests | manager RSS MB | uvcluster's CPU / its | "
         "uvcluster's RSS / its | req/s (load) |", "|---|---|---|---|---|---|---|"]
    for m, s in doc["summary"].items():
        def ratio(k):
            return f"{s[k]:.2f}" if s.get(k) is not None else "—"
        L.append(f"| {m} | {s['rounds']} | {s['cpu_ms_per_1000_requests']:.1f} | {s['rss_kb'] / 1024:.1f} "
                 f"| {ratio('uvc_cpu_ratio')} | {ratio('uvc_rss_ratio')} | {s['rps']:.0f} |")
    for m, why in doc["unavailable"].items():
        L.append(f"| {m} | 0 | unavailable: {why} | | | | |")
    return L


def link_in(report_md, doc):
    """(Re)writes this section at the end of make bench's REPORT.md, between markers."""
    e = doc["env"]
    L = ["## Manager cost (scripts/manager_cost.py)", "",
         f"The process manager alone (primary + non-worker helpers), {e['workers']} workers of "
         f"scripts/chaos/app.js, wrk `Connection: close` with {e['connections']} connections for "
         f"{e['seconds']} s per round, {e['rounds']} interleaved rounds (medians), loadavg "
         f"{e['loadavg_1m']:.1f} at the start, code `{e.get('git')}`. Ratios < 1: uvcluster costs less.", ""]
    return rewrite(report_md, SECTION_BEGIN, SECTION_END, L + table(doc))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--profile", default="default", choices=sorted(PROFILES))
    ap.add_argument("--managers", default=",".join(MANAGERS))
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "managers.json"))
    ap.add_argument("--report", default=os.path.join(ROOT, "results", "REPORT.md"))
    a = ap.parse_args(argv)
    build = os.path.abspath(a.build)
    rounds, seconds, workers, connections = PROFILES[a.profile]
    wanted = [m for m in a.managers.split(",") if m]
    bad = [m for m in wanted if m not in MANAGERS]
    if bad:
        print(f"manager_cost.py: unknown manager(s) {bad}; known: {MANAGERS}", file=sys.stderr)
        return 2
    unavailable = {m: why for m in wanted if (why := chaos.manager_available(build, m))}
    managers = [m for m in wanted if m not in unavailable]
    env = dict(chaos.environment(), profile=a.profile, rounds=rounds, seconds=seconds, workers=workers,
               connections=connections, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    records = []
    for r in range(rounds):
        for m in managers:
            print(f"manager cost: round {r + 1}/{rounds} {m} ...", flush=True)
            rec = measure(build, m, seconds, workers, connections)
            rec["round"] = r
            records.append(rec)
    doc = {"env": env, "records": records, "summary": summarize(records), "unavailable": unavailable}
    strict_json.write(a.out, doc)
    print("\n".join(table(doc)))
    print(f"wrote {os.path.relpath(a.out, ROOT)}" + (" and a section of REPORT.md" if link_in(a.report, doc) else ""))
    failed = [r for r in records if "error" in r]
    for r in failed:
        print(f"  {r['manager']} round {r['round']}: {r['error'][:300]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
