"""Pure parts of the fault lab: what a success series says about recovery and outages, the
request accounting, and the strict-JSON record check. No processes here (tested quickly by
scripts/tests/test_chaos.py)."""
import math

BUCKET_S = 0.1          # the wrk script counts successes per 100 ms
RECOVERED_FRACTION = 0.5  # "recovered" = back to half the pre-fault success rate over 1 s
SCHEMA = "uvcluster-chaos/1"


def series_from_wrk(ok_per_ds, start_s, end_s):
    """wrk's {epoch_decisecond: count} -> a dense list of counts per 100 ms from start_s to
    end_s (epoch seconds)."""
    first = int(math.floor(start_s * 10))
    n = max(0, int(math.ceil(end_s * 10)) - first)
    dense = [0] * n
    for k, v in ok_per_ds.items():
        i = int(k) - first
        if 0 <= i < n:
            dense[i] += int(v)
    return dense


def _index(t_rel):
    return int(round(t_rel / BUCKET_S))


def baseline_rate(series, t0_rel, skip_s=0.3):
    """Successful responses per second before the fault (skipping wrk's first buckets)."""
    lo, hi = _index(skip_s), _index(t0_rel)
    if hi - lo < 3:
        return None
    return sum(series[lo:hi]) / ((hi - lo) * BUCKET_S)


def recovery(series, probes, t0_rel, t1_rel, outage_after_s, steady_s=1.0):
    """What a run says after a fault that ran from t0_rel to t1_rel (seconds since the load
    started). `probes` = [(t_rel, ok)]: one fresh connection and request at a time, 1 s timeout
    (wrk cannot tell: it never reconnects a connection whose request hangs, so a few hung
    connections would look like an outage of the whole service).

    - recovery_s: from the fault's end to the first successful probe after the last failed one,
      when the run goes on for steady_s after it (0 when no probe failed, also 0 when the last
      failure was during the fault); None with a reason otherwise.
    - longest_gap_s: the longest stretch without a successful probe from the fault's start on.
    - permanent_outage: no successful probe within outage_after_s after the fault ends, or none
      in the run's last outage_after_s (the service stopped for good before the run ended).
    - load_recovery_s: from the fault's end until one second of wrk's series holds
      RECOVERED_FRACTION of the pre-fault rate.
    """
    out = {"recovery_s": None, "recovery_reason": None, "longest_gap_s": None,
           "permanent_outage": None, "outage_reason": None, "load_recovery_s": None,
           "probes": len(probes), "probes_failed_after_fault_start": None}
    after = [(t, ok) for t, ok in probes if t >= t0_rel]
    out["probes_failed_after_fault_start"] = sum(1 for _, ok in after if not ok)
    end = len(series) * BUCKET_S
    # longest stretch without a successful probe (to the next success, or the run's end)
    last_ok, best = t0_rel, 0.0
    for t, ok in after:
        if ok:
            best = max(best, t - last_ok)
            last_ok = t
    best = max(best, end - last_ok)
    out["longest_gap_s"] = round(best, 2)
    if t1_rel + outage_after_s > end:
        out["outage_reason"] = "the run ends less than the outage window after the fault"
    else:
        after_fault = any(ok for t, ok in after if t1_rel <= t <= t1_rel + outage_after_s)
        at_end = any(ok for t, ok in after if t >= end - outage_after_s)
        out["permanent_outage"] = not (after_fault and at_end)
        if not after_fault:
            out["outage_reason"] = f"no successful probe within {outage_after_s:g} s after the fault"
        elif not at_end:
            out["outage_reason"] = f"no successful probe in the run's last {outage_after_s:g} s"
    # steady again: the first success after the last failed probe, if the run goes on for
    # steady_s after it (no failure since, by construction)
    failures = [t for t, ok in after if not ok]
    if not failures:
        out["recovery_s"] = 0.0
    else:
        back = next((t for t, ok in after if ok and t > failures[-1]), None)
        if back is not None and end - back >= steady_s:
            out["recovery_s"] = round(max(0.0, back - t1_rel), 2)
        else:
            out["recovery_reason"] = (f"probes did not succeed for {steady_s:g} s in a row "
                                      "after the last failure before the run ended")
    rate = baseline_rate(series, t0_rel)
    if rate:
        i1, window = _index(t1_rel), _index(1.0)
        need = RECOVERED_FRACTION * rate * window * BUCKET_S
        for i in range(i1, len(series) - window + 1):
            if sum(series[i:i + window]) >= need:
                out["load_recovery_s"] = round((i - i1) * BUCKET_S, 2)
                break
    return out


def request_counts(wrk_reports, own):
    """Totals over the run's wrk processes. wrk counts a response with a non-2xx/3xx status in
    both `requests` and errors.status; connect/read/write/timeout errors are requests that got
    no response (a refused connect shows up as a read or write error). A request that never got
    any answer is in no wrk counter (wrk never gives up on a hung connection), so
    unanswered_at_stop = issued - answered - read/write errors (the wrk script counts issued
    requests; wrk builds one up front, hence the - 1): at most one per wrk connection, either
    in flight when the load stopped or hung. The probes, not this, detect hung service.
    `own` = connections the faulted worker(s) held when faulted (they die with the worker
    whatever the manager does)."""
    ok = sent = connect = inflight = unanswered = 0
    for r in wrk_reports:
        e = r["errors"]
        unanswered += max(0, r.get("issued", 0) - 1 - r["requests"] - e["read"] - e["write"])
        sent += r["requests"] + e["connect"] + e["read"] + e["write"] + e["timeout"]
        ok += r["requests"] - e["status"]
        connect += e["connect"]
        inflight += e["read"] + e["write"] + e["timeout"] + e["status"]
    failed = connect + inflight
    return {"sent": sent, "ok": ok, "failed": failed, "failed_connect": connect,
            "failed_inflight": inflight, "unanswered_at_stop": unanswered,
            "faulted_workers_own": own, "failed_beyond_own": max(0, failed - own)}


def delta_pct(before, after):
    if before is None or after is None or before == 0:
        return None
    return round(100.0 * (after - before) / before, 2)


def strict(value, path="record", reasons=None):
    """A copy of value with every non-finite float replaced by None; each replacement is noted
    in reasons (path -> why) so the JSON says what was not measurable instead of NaN."""
    if reasons is None:
        reasons = {}
    if isinstance(value, float) and not math.isfinite(value):
        reasons[path] = f"non-finite value {value!r}"
        return None
    if isinstance(value, dict):
        return {k: strict(v, f"{path}.{k}", reasons) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v, f"{path}[{i}]", reasons) for i, v in enumerate(value)]
    return value


RECORD_KEYS = {
    "fault": str, "manager": str, "workers": int, "status": str, "requests": dict,
    "recovery": dict, "primary": dict, "zombies": (int, type(None)),
    "orphans": (int, type(None)), "fault_detail": dict, "notes": list, "series": dict,
}
REQUEST_KEYS = ("sent", "ok", "failed", "failed_connect", "failed_inflight",
                "faulted_workers_own", "failed_beyond_own")


def check_record(r):
    """Problems with one record (empty list = well-formed)."""
    problems = []
    for k, t in RECORD_KEYS.items():
        if k not in r:
            problems.append(f"missing {k}")
        elif not isinstance(r[k], t):
            problems.append(f"{k} has type {type(r[k]).__name__}")
    if problems or r["status"] != "ok":
        return problems
    for k in REQUEST_KEYS:
        if not isinstance(r["requests"].get(k), int):
            problems.append(f"requests.{k} missing")
    rq = r["requests"]
    if not problems and rq["ok"] + rq["failed"] > rq["sent"] + 0:
        problems.append("ok + failed > sent")
    for k in ("fds_before", "fds_after", "rss_kb_before", "rss_kb_after"):
        if k not in r["primary"]:
            problems.append(f"primary.{k} missing")
    return problems
