#!/usr/bin/python3
"""Renders results/REPORT.md and PNG plots from a lab latest.json; returns the printed summary
and the validations. usage: report.py [latest.json] [--out DIR]"""
import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import metrics  # noqa: E402

REF = ("node-rr", "node")  # every ratio is to Node's own round-robin cluster from the same run


def get(rec, path):
    cur = rec
    for k in path.split("."):
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def ok(rec):
    return rec.get("available", True) and not rec.get("error") and rec.get("role", "matrix") == "matrix"


def fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return str(v)


# (title, value path or function, digits, ratio to node-rr?, line saying what it shows)
TABLES = [
    ("Throughput (req/s)", "throughput.rps", 0, True,
     "Requests per second from wrk over loopback; ratio = this row / node-rr at the same workers and load."),
    ("Latency p50 (ms)", "latency_ms.p50", 2, True, "Median latency (wrk, closed loop)."),
    ("Latency p99 (ms)", "latency_ms.p99", 2, True,
     "99th percentile; wrk 4 applies its coordinated-omission correction, short runs are noisy."),
    ("Errors + timeouts", lambda r: (get(r, "throughput.errors_total") or 0) + (get(r, "throughput.timeouts") or 0),
     0, False, "Socket errors, non-2xx responses and timeouts reported by wrk (should be 0)."),
    ("fds per connection, primary / nginx", "fds.per_conn_primary", 2, False,
     "(peak − idle open fds of the primary or nginx) / concurrent connections; a proxy pays ≈2."),
    ("fds per connection, workers (sum)", "fds.per_conn_workers", 2, False,
     "(peak − idle) summed over workers / concurrent connections; ≈1 when workers hold the sockets."),
    ("Herd: EAGAIN per accepted connection (perf, outside)", "herd.outside.per_conn", 3, False,
     "Failed accept4 (ret −11) per successful accept4 in every process of the cell, counted by perf "
     "tracepoints on a short extra run of serial Connection: close requests 2 ms apart (workers idle "
     "when a connection arrives) — the same method for every process kind; a lower bound of wasted "
     "wake-ups. A primary that accepts with Debian's libuv 1.44 (proxy, rr, uvc-run) drains until "
     "EAGAIN on every wake-up, so it shows ≈1 EAGAIN per wake-up without any herd; behind a proxy "
     "every client connection is accepted twice (primary, then worker)."),
    ("Herd: EAGAIN per connection (inside C++ workers)", "herd.inside.per_conn", 3, False,
     "The C++ workers' own counters over the main run (native app only)."),
    ("Herd run: voluntary context switches per accepted connection (workers)",
     "herd.outside.ctxsw_per_conn", 2, False,
     "Upper bound of wake-ups during the herd run: it mixes herd wake-ups with every other sleep "
     "(reading the request, writing the answer)."),
    ("Voluntary context switches per connection, main run (workers)", "herd.ctxsw_per_conn", 2, False,
     "Same over the main run (under keep-alive the denominator is the few connections wrk opens)."),
    ("Fairness: Jain over connections", "fairness.connections.jain", 3, False,
     "(Σx)²/(n·Σx²) over connections per worker in the main run; 1 = equal, 1/n = one worker takes all."),
    ("Fairness: Jain over requests", "fairness.requests.jain", 3, False,
     "Same over requests; the meaningful one under keep-alive (few long connections)."),
    ("Fairness: max/min requests", "fairness.requests.max_min", 2, False,
     "Busiest over idlest worker; ∞ when a worker got nothing."),
    ("Fairness: top worker's share of requests", "fairness.requests.top_share", 3, False,
     "Fraction of all requests served by the busiest worker."),
    ("CPU ms per 1,000 requests, primary", lambda r: scale(get(r, "cpu.primary_per_1k"), 1000), 1, True,
     "user+sys of the primary (or proxy / nginx) per 1,000 requests."),
    ("CPU ms per 1,000 requests, workers", lambda r: scale(get(r, "cpu.workers_per_1k"), 1000), 1, True,
     "user+sys of all workers per 1,000 requests."),
]


def scale(v, k):
    return None if v is None else v * k


def value(rec, how):
    return how(rec) if callable(how) else get(rec, how)


def columns(records):
    return sorted({(r["workers"], r["load"]) for r in records if r.get("role", "matrix") == "matrix"},
                  key=lambda c: (c[0], c[1] != "keepalive"))


def rows(records):
    seen = []
    for r in records:
        if r.get("role", "matrix") != "matrix":
            continue
        k = (r.get("label", r["strategy"]), r["app"])
        if k not in seen:
            seen.append(k)
    return seen


def index(records):
    return {(r.get("label", r["strategy"]), r["app"], r["workers"], r["load"]): r
            for r in records if r.get("role", "matrix") == "matrix"}


def table(records, title, how, digits, with_ratio, note):
    cols, idx = columns(records), index(records)
    head = "| strategy | app | " + " | ".join(f"{w}w {load}" for w, load in cols) + " |"
    out = [f"### {title}", "", head, "|---|---|" + "---|" * len(cols)]
    for label, app in rows(records):
        cells = []
        for w, load in cols:
            r = idx.get((label, app, w, load))
            if r is None:
                cells.append("")
            elif not r.get("available", True):
                cells.append("n/a")
            elif r.get("error"):
                cells.append("error")
            else:
                v = value(r, how)
                s = fmt(v, digits)
                ref = idx.get((REF[0], REF[1], w, load))
                if with_ratio and ref is not None and ok(ref) and v is not None:
                    rv = metrics.ratio(v, value(ref, how))
                    if rv is not None:
                        s += f" ({rv:.2f}×)"
                cells.append(s)
        out.append(f"| {label} | {app} | " + " | ".join(cells) + " |")
    out += ["", note, ""]
    return "\n".join(out)


def validations(records):
    """Each: (text, passed or None when it could not be checked, detail)."""
    m = [r for r in records if ok(r)]
    res = []

    def chk(text, sel, pred, detail):
        rs = [r for r in m if sel(r)]
        if not rs:
            res.append((text, None, "no measured cell"))
            return
        bad = [r for r in rs if not pred(r)]
        res.append((text, not bad, "; ".join(detail(r) for r in (bad or rs))[:300]))

    def cell_name(r):
        return f"{r.get('label', r['strategy'])}/{r['app']}/{r['workers']}w/{r['load']}"

    chk("naive shows EADDRINUSE (all workers but one fail to bind)",
        lambda r: r["strategy"] == "naive",
        lambda r: get(r, "startup.eaddrinuse") == r["workers"] - 1 and get(r, "startup.serving") == 1,
        lambda r: f"{cell_name(r)}: {get(r, 'startup.eaddrinuse')} EADDRINUSE, {get(r, 'startup.serving')} serving")
    chk("proxy ≈ 2 fds per connection in the primary (keep-alive, 1.5–2.5)",
        lambda r: r["strategy"] == "proxy" and r["load"] == "keepalive",
        lambda r: (get(r, "fds.per_conn_primary") or 0) >= 1.5 and (get(r, "fds.per_conn_primary") or 0) <= 2.5,
        lambda r: f"{cell_name(r)}: {fmt(get(r, 'fds.per_conn_primary'))}")
    chk("rr Jain ≥ 0.95 (connections under close load; rr and uvc-run)",
        lambda r: r["strategy"] in ("rr", "uvc-run") and r["load"] == "close",
        lambda r: (get(r, "fairness.connections.jain") or 0) >= 0.95,
        lambda r: f"{cell_name(r)}: {fmt(get(r, 'fairness.connections.jain'), 3)}")
    # exclusive vs shared: same app/workers/load, outside herd per connection
    idx = index(m)
    pairs = [(r, idx.get(("shared", r["app"], r["workers"], r["load"]))) for r in m
             if r.get("label") == "exclusive" and r["load"] == "close"]
    lo, hi = "herd.outside.per_conn", "herd.outside.ctxsw_per_conn"
    pairs = [(e, s) for e, s in pairs if s is not None and None not in (get(e, lo), get(s, lo))]
    title = "exclusive herd < shared herd (failed accepts per connection, perf, herd run; none at all passes)"
    if pairs:
        # A run where shared had no herd either (0 vs 0) cannot show "less", only "none".
        good = all(get(e, lo) == 0 or get(e, lo) < get(s, lo) for e, s in pairs)
        res.append((title, good, "; ".join(
            f"{e['workers']}w: {fmt(get(e, lo), 3)} vs {fmt(get(s, lo), 3)}" for e, s in pairs)))
        # EAGAIN is a lower bound (level-triggered epoll puts most losers back to sleep inside the
        # kernel); context switches are the upper bound, reported beside it. Our exclusive waiter
        # thread adds a hand-off switch per connection, so with few workers it can lose here.
        both = [(e, s) for e, s in pairs if get(e, hi) is not None and get(s, hi) is not None]
        if both:
            res.append(("(upper bound, informative) exclusive has fewer worker context switches per "
                        "connection than shared", all(get(e, hi) < get(s, hi) for e, s in both),
                        "; ".join(f"{e['workers']}w: {fmt(get(e, hi))} vs {fmt(get(s, hi))}"
                                  for e, s in both)))
    else:
        res.append((title, None, "no pair measured"))
    chk("no request errors in keep-alive runs of rr, shared, reuseport",
        lambda r: r["strategy"] in ("rr", "shared", "reuseport") and r["load"] == "keepalive",
        lambda r: (get(r, "throughput.errors_total") or 0) + (get(r, "throughput.timeouts") or 0) == 0,
        lambda r: f"{cell_name(r)}: {get(r, 'throughput.errors_total')} errors, {get(r, 'throughput.timeouts')} timeouts")
    # Measurement validation: inside counters vs perf on the same C++ run, and perf's cost.
    v = [r for r in records if r.get("role") == "validation-perf" and not r.get("error")]
    if v:
        r = v[0]
        ins, out = get(r, "herd.inside_during_outside_run.eagain"), get(r, "herd.outside.eagain")
        agree = ins is not None and out is not None and abs(ins - out) <= max(2, 0.05 * max(ins, out))
        res.append(("inside EAGAIN count agrees with perf (same run, C++ shared)", agree,
                    f"inside {ins}, perf {out}, perf overhead on req/s "
                    f"{fmt(scale(get(r, 'herd.outside.overhead'), 100), 1)}%"))
    s = [r for r in records if r.get("role") == "validation-strace" and not r.get("error")]
    if s:
        r = s[0]
        res.append(("strace cross-check ran (observer effect reported, not a pass/fail of the lab)", True,
                    f"strace EAGAIN/conn {fmt(get(r, 'herd.outside.per_conn'), 3)} vs inside "
                    f"{fmt(get(r, 'herd.inside_during_outside_run.per_conn'), 3)}; req/s cost "
                    f"{fmt(scale(get(r, 'herd.outside.overhead'), 100), 1)}%"))
    return res


def mark(passed):
    return "✔" if passed else ("✘" if passed is False else "–")


def plots(records, out_dir):
    """PNG plots; returns the file names written (matplotlib, Agg backend)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    m = [r for r in records if ok(r)]
    if not m:
        return []
    cols = columns(m)
    names = [f"{label}/{app}" for label, app in rows(m)]
    idx = index(m)
    written = []

    def grouped(metric, ylabel, fname, how):
        fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.9), 4.5))
        width = 0.8 / max(1, len(cols))
        for j, (w, load) in enumerate(cols):
            ys = []
            for label, app in rows(m):
                r = idx.get((label, app, w, load))
                ys.append((value(r, how) or 0) if r else 0)
            ax.bar([i + j * width for i in range(len(names))], ys, width, label=f"{w}w {load}")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(metric)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname), dpi=90)
        plt.close(fig)
        written.append(fname)

    grouped("req/s by strategy", "req/s", "rps.png", "throughput.rps")
    grouped("p99 latency by strategy", "ms", "p99.png", "latency_ms.p99")
    grouped("fds per connection (primary + workers)", "fds / connection", "fds_per_conn.png",
            lambda r: (get(r, "fds.per_conn_primary") or 0) + (get(r, "fds.per_conn_workers") or 0))

    # per-worker distribution: connections (close load) at the largest worker count
    wmax = max(w for w, _ in cols)
    sel = [r for r in m if r["workers"] == wmax and r["load"] == "close"]
    if sel:
        fig, ax = plt.subplots(figsize=(max(8, len(sel) * 0.9), 4.5))
        for i, r in enumerate(sel):
            xs = get(r, "fairness.connections.per_worker") or []
            total = sum(xs) or 1
            bottom = 0.0
            for x in xs:
                ax.bar(i, x / total, bottom=bottom, edgecolor="white")
                bottom += x / total
        ax.set_xticks(range(len(sel)))
        ax.set_xticklabels([f"{r.get('label', r['strategy'])}/{r['app']}" for r in sel],
                           rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("share of connections")
        ax.set_title(f"per-worker share of connections ({wmax} workers, Connection: close)")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "per_worker.png"), dpi=90)
        plt.close(fig)
        written.append("per_worker.png")
    return written


def summary_table(records):
    m = [r for r in records if r.get("role", "matrix") == "matrix"]
    lines = [f"{'strategy':<16}{'app':<7}{'w':>2} {'load':<10}{'req/s':>9}{'p99 ms':>9}{'err':>6}"
             f"{'jain':>7}{'fd/c pri':>9}{'eagain/c':>9}{'cpu ms/1k':>10}"]
    for r in m:
        name = r.get("label", r["strategy"])
        if not r.get("available", True):
            lines.append(f"{name:<16}{r['app']:<7}{r['workers']:>2} {r['load']:<10}  n/a: {r.get('reason', '')[:60]}")
            continue
        if r.get("error"):
            lines.append(f"{name:<16}{r['app']:<7}{r['workers']:>2} {r['load']:<10}  error: {r['error'][:60]}")
            continue
        jain = get(r, "fairness.requests.jain" if r["load"] == "keepalive" else "fairness.connections.jain")
        err = (get(r, "throughput.errors_total") or 0) + (get(r, "throughput.timeouts") or 0)
        lines.append(f"{name:<16}{r['app']:<7}{r['workers']:>2} {r['load']:<10}"
                     f"{fmt(get(r, 'throughput.rps'), 0):>9}{fmt(get(r, 'latency_ms.p99')):>9}{err:>6}"
                     f"{fmt(jain, 3):>7}{fmt(get(r, 'fds.per_conn_primary')):>9}"
                     f"{fmt(get(r, 'herd.outside.per_conn'), 3):>9}"
                     f"{fmt(scale(get(r, 'cpu.total_per_1k'), 1000), 1):>10}")
    return "\n".join(lines)


def render(doc, out_dir):
    records = doc.get("records", [])
    os.makedirs(out_dir, exist_ok=True)
    env = doc.get("env", {})
    vals = validations(records)
    pngs = plots(records, out_dir)
    md = [f"# Strategy lab report ({doc.get('profile', '?')} profile, {doc.get('generated_at', '?')})", "",
          "Every cell runs the same worker app behind one strategy on 127.0.0.1, loaded by wrk "
          "(keep-alive, and `Connection: close`, which exercises accept). Ratios are to `node-rr` "
          "(Node's own cluster, round-robin) from the same run, at the same workers and load.", "",
          "Environment: " + ", ".join(f"{k} `{v}`" for k, v in env.items()), ""]
    loads = [get(r, "env.loadavg_1m") for r in records if get(r, "env.loadavg_1m") is not None]
    if loads:
        md += [f"1-minute load average at cell start: {min(loads):.1f}–{max(loads):.1f} on "
               f"{env.get('cores', '?')} cores. Anything above the core count means other work shared "
               "the CPUs with the lab: compare ratios from the same run, not absolute figures.", ""]
    unavailable = [r for r in records if not r.get("available", True)]
    if unavailable:
        md += ["Cells not run (`n/a`):", ""]
        for reason in sorted({r.get("reason", "") for r in unavailable}):
            who = sorted({f"{r.get('label', r['strategy'])}/{r['app']}" for r in unavailable
                          if r.get("reason", "") == reason})
            md.append(f"- {', '.join(who)}: {reason}")
        md.append("")
    launchers = sorted({(r.get("label", r["strategy"]), r.get("launcher")) for r in records if r.get("launcher")})
    if launchers:
        md += ["Launchers: " + "; ".join(f"`{s}` = {l}" for s, l in launchers), ""]
    md += ["Herd: EPOLLEXCLUSIVE only ends the kernel's wake-up walk at an epoll set with a thread "
           "blocked in epoll_wait() on it, so hello-native's `exclusive` and the cluster library's "
           "policy (`exclusive-run`) share one waiter thread on the private set (ExclusiveWaiter); a "
           "set merely polled by the loop (`--exclusive-mode nested`) wakes every worker like "
           "`shared` does.", ""]
    md += ["## Tables", ""]
    for t in TABLES:
        md.append(table(records, *t))
    if pngs:
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    md += ["## Validations", ""]
    for text, passed, detail in vals:
        md.append(f"- {mark(passed)} {text} — {detail}")
    md.append("")
    with open(os.path.join(out_dir, "REPORT.md"), "w") as f:
        f.write("\n".join(md))
    summary = summary_table(records) + "\n\nvalidations:\n" + "\n".join(
        f"  {mark(p)} {t} — {d}" for t, p, d in vals)
    return summary, vals


def main(argv=None):
    ap = argparse.ArgumentParser(description="render the lab report")
    ap.add_argument("latest", nargs="?", default=os.path.join(os.path.dirname(os.path.dirname(HERE)),
                                                              "results", "latest.json"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    doc = json.load(open(a.latest))
    summary, _ = render(doc, a.out or os.path.dirname(os.path.abspath(a.latest)))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
