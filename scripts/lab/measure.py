"""What a cell's record says once its processes serve: the environment, throughput and latency
from wrk, fairness from the workers' counters, fds and CPU from /proc, and the herd (inside
counters, context switches, and the outside perf/strace run). stdlib only."""
import os
import resource
import subprocess

import metrics
from load import herd_load, herd_outside, perf_usable, rps, run_spread, run_wrk
from procfs import Sampler, alive, children_of, cpu_seconds, fd_count, vol_ctxsw
from strategies import NODE


def _out(cmd, stderr=False):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stderr if stderr else p.stdout).strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment():
    def first_line(s):
        return s.splitlines()[0] if s else None
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
            migrate = f.read().strip()
    except OSError:
        migrate = None
    return {
        "kernel": os.uname().release,
        "libuv": _out(["pkg-config", "--modversion", "libuv"]),
        "node": _out([NODE, "--version"]),
        "node_libuv": _out([NODE, "-p", "process.versions.uv"]),
        "wrk": first_line(_out(["wrk", "-v"]) or _out(["wrk", "-v"], stderr=True)),
        "nginx": first_line(_out(["nginx", "-v"], stderr=True)),
        "cores": os.cpu_count(),
        "uv_tcp_single_accept": os.environ.get("UV_TCP_SINGLE_ACCEPT", "unset"),
        "rlimit_nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "tcp_migrate_req": migrate,
        "loadavg_1m": os.getloadavg()[0],  # other work on this machine skews everything
    }


def measure(cell, a, rec):
    workers = sorted(p for p in cell.ready_pids() if alive(p))
    primary_group = sorted(set(cell.primary_pids) | children_of(cell.primary_pids) - set(workers))
    cell.all_pids_seen = set(workers) | set(primary_group) | {p.pid for p in cell.procs}
    failed = cell.failed_workers()
    rec["accept_policy"] = cell.accept_policy
    rec["startup"] = {"requested": a.workers, "serving": len(workers),
                      "eaddrinuse": sum(1 for f in failed if f.get("error") == "EADDRINUSE"),
                      "failures": [f.get("error") for f in failed]}
    rec["pids"] = {"primary": primary_group, "workers": workers}

    every = primary_group + workers
    idle_fd = {p: fd_count(p) for p in every}
    cpu0 = {p: cpu_seconds(p) for p in every}
    cs0 = {p: vol_ctxsw(p) for p in workers}
    s0 = cell.snapshot(workers)

    sampler = Sampler(every)
    sampler.start()
    try:
        if cell.strategy.client_addresses > 1:
            report = run_spread(cell.port, a.duration, a.connections, cell.strategy.client_addresses,
                                close=a.load == "close")
        else:
            report = run_wrk(cell.port, a.duration, a.connections, close=a.load == "close")
    finally:
        sampler.stop()
    cpu1 = {p: cpu_seconds(p) for p in every}
    cs1 = {p: vol_ctxsw(p) for p in workers}
    s1 = cell.snapshot(workers)

    # throughput / latency
    errs = report["errors"]
    lat = report["latency_us"]
    rec["throughput"] = {"rps": rps(report), "requests": report["requests"],
                         "errors": errs, "errors_total": sum(errs.values()) - errs["timeout"],
                         "timeouts": errs["timeout"]}
    rec["latency_ms"] = {k: lat["p"][q] / 1000.0 for k, q in (("p50", "50"), ("p90", "90"), ("p99", "99"))}
    rec["latency_ms"].update(mean=lat["mean"] / 1000.0, max=lat["max"] / 1000.0)

    # fairness over the main run (per-worker deltas; failed naive workers count as 0)
    conns = metrics.diff_counts(s1, s0, "connections")
    reqs = metrics.diff_counts(s1, s0, "requests")
    zeros = [0] * rec["startup"]["eaddrinuse"]
    rec["fairness"] = {"connections": metrics.fairness([conns[p] for p in sorted(conns)] + zeros),
                       "requests": metrics.fairness([reqs[p] for p in sorted(reqs)] + zeros),
                       "snapshots_missing": len(workers) - len(s1)}

    # fds: peak - idle per concurrent connection
    def fd_entry(p):
        return {"pid": p, "idle": idle_fd[p], "peak": max(sampler.samples[p], default=None),
                "delta": metrics.fd_delta(idle_fd[p], sampler.samples[p]),
                "p50": metrics.percentile(sampler.samples[p], 50)}
    prim = [fd_entry(p) for p in primary_group]
    wk = [fd_entry(p) for p in workers]
    prim_delta = sum(e["delta"] or 0 for e in prim) if prim else None
    wk_delta = sum(e["delta"] or 0 for e in wk)
    rec["fds"] = {"primary": prim, "workers": wk,
                  "per_conn_primary": metrics.per_connection(prim_delta, a.connections),
                  "per_conn_workers": metrics.per_connection(wk_delta, a.connections)}

    # CPU per 1,000 requests
    def spent(ps):
        vals = [(cpu1[p] - cpu0[p]) for p in ps if cpu0.get(p) is not None and cpu1.get(p) is not None]
        return sum(vals) if vals else None
    cp, cw = spent(primary_group), spent(workers)
    rec["cpu"] = {"primary_s": cp, "workers_s": cw,
                  "primary_per_1k": metrics.per_1k(cp, report["requests"]),
                  "workers_per_1k": metrics.per_1k(cw, report["requests"]),
                  "total_per_1k": metrics.per_1k((cp or 0) + (cw or 0), report["requests"])}

    # herd: inside counters (C++ workers) over the main run; context switches as upper bound
    accepted = sum(conns.values())
    herd = {"connections_main": accepted}
    if a.app == "native" and all("accept_eagain" in s1.get(p, {}) for p in workers) and workers:
        eag = sum(metrics.diff_counts(s1, s0, "accept_eagain").values())
        herd["inside"] = {"eagain": eag, "accepted": accepted, "per_conn": metrics.ratio(eag, accepted)}
    cs = sum((cs1[p] or 0) - (cs0[p] or 0) for p in workers if cs0.get(p) is not None)
    herd["ctxsw_per_conn"] = metrics.ratio(cs, accepted)
    # outside: a short extra Connection: close run observed by perf (same for every worker kind)
    if a.herd_duration > 0 and workers:
        if a.herd_method == "perf" and not perf_usable():
            herd["outside"] = {"method": "perf", "error": "perf/tracefs not usable here"}
        else:
            if a.herd_overhead:  # unobserved run before the observed one...
                herd["unobserved_rps"] = rps(herd_load(cell.port, a.herd_duration, a.herd_connections,
                                                       a.herd_load))
            h0 = cell.snapshot(workers)
            hcs0 = {p: vol_ctxsw(p) for p in workers}
            # Every process of the cell is observed: in rr-like strategies the primary accepts.
            herd["outside"] = herd_outside(every, cell.port, a.herd_duration, a.herd_connections,
                                           a.herd_method, a.herd_load)
            herd["outside"]["connections"] = a.herd_connections
            hcs1 = {p: vol_ctxsw(p) for p in workers}
            h1 = cell.snapshot(workers)
            # Upper bound of wake-ups in the herd run: workers' voluntary switches per accept.
            hcs = sum((hcs1[p] or 0) - (hcs0[p] or 0) for p in workers if hcs0.get(p) is not None)
            herd["outside"]["ctxsw_per_conn"] = metrics.ratio(hcs, herd["outside"].get("accepted"))
            # Who took the herd run's connections, and who woke: EPOLLEXCLUSIVE's first-waiter
            # effect shows as one worker taking everything while the others stay asleep.
            got = metrics.diff_counts(h1, h0, "connections")
            herd["outside"]["per_worker"] = [got.get(p, 0) for p in workers]
            herd["outside"]["ctxsw_per_worker"] = [(hcs1[p] or 0) - (hcs0[p] or 0) for p in workers]
            if "inside" in herd:
                eag = sum(metrics.diff_counts(h1, h0, "accept_eagain").values())
                acc = sum(metrics.diff_counts(h1, h0, "connections").values())
                herd["inside_during_outside_run"] = {"eagain": eag, "accepted": acc,
                                                     "per_conn": metrics.ratio(eag, acc)}
            if a.herd_overhead:  # ...and one after it: the observed run is compared to their mean
                after = rps(herd_load(cell.port, a.herd_duration, a.herd_connections, a.herd_load))
                herd["unobserved_rps"] = (herd["unobserved_rps"] + after) / 2
            if "unobserved_rps" in herd and herd["outside"].get("wrk_rps"):
                herd["outside"]["overhead"] = 1 - herd["outside"]["wrk_rps"] / herd["unobserved_rps"]
    rec["herd"] = herd

