"""The fault lab's logic on synthetic data (outage and recovery detection, request accounting,
strict JSON), its report on a synthetic document, and a tiny smoke run of one fault against
one manager (loopback, bounded)."""
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(SRC, "scripts", "chaos"))
import analysis  # noqa: E402

BUILD = os.environ.get("UVC_BUILD_DIR", os.path.join(SRC, "build"))
PY = "/usr/bin/python3"


def probes(spec, step=0.1):
    """[(t, ok)] every `step` s from a list of (until_t, ok) segments."""
    out, t = [], 0.0
    for until, ok in spec:
        while t < until - 1e-9:
            out.append((round(t, 2), ok))
            t += step
    return out


def test_healthy_run_has_no_outage_and_zero_recovery():
    series = [30] * 80                      # 8 s of steady load
    r = analysis.recovery(series, probes([(8.0, True)]), 2.0, 4.0, 2.0)
    assert r["permanent_outage"] is False
    assert r["recovery_s"] == 0.0
    assert r["load_recovery_s"] == 0.0
    assert r["longest_gap_s"] <= 0.11


def test_dip_then_recovery_is_timed_from_the_fault_end():
    series = [30] * 20 + [0] * 30 + [30] * 40
    r = analysis.recovery(series, probes([(2.0, True), (5.5, False), (9.0, True)]), 2.0, 4.0, 2.0)
    assert r["permanent_outage"] is False
    assert r["recovery_s"] == pytest.approx(1.5, abs=0.11)
    assert r["load_recovery_s"] == pytest.approx(0.5, abs=0.11)
    assert r["longest_gap_s"] == pytest.approx(3.5, abs=0.11)


def test_service_that_never_comes_back_is_a_permanent_outage():
    series = [30] * 20 + [0] * 60
    r = analysis.recovery(series, probes([(2.0, True), (8.0, False)]), 2.0, 3.0, 2.0)
    assert r["permanent_outage"] is True
    assert "within 2 s after the fault" in r["outage_reason"]
    assert r["recovery_s"] is None and r["recovery_reason"]


def test_service_that_stops_after_a_short_comeback_is_a_permanent_outage():
    # served again right after the fault, then nothing for the rest of the run
    spec = [(2.0, True), (3.0, False), (3.5, True), (9.0, False)]
    r = analysis.recovery([30] * 90, probes(spec), 2.0, 3.0, 2.0)
    assert r["permanent_outage"] is True
    assert "last 2 s" in r["outage_reason"]


def test_a_failure_late_in_the_run_is_not_a_recovery():
    # served at first during the fault, dead from 3.5 s on: no recovery, permanent outage
    r = analysis.recovery([30] * 90, probes([(3.5, True), (9.0, False)]), 2.0, 3.0, 2.0)
    assert r["recovery_s"] is None and r["recovery_reason"]
    assert r["permanent_outage"] is True


def test_outage_is_unknown_when_the_run_is_shorter_than_the_window():
    r = analysis.recovery([30] * 40, probes([(4.0, True)]), 1.0, 3.0, 2.0)
    assert r["permanent_outage"] is None and r["outage_reason"]


def test_wrk_series_is_aligned_on_wall_clock_deciseconds():
    start = 1000.0
    dense = analysis.series_from_wrk({"10000": 5, "10003": 7, "9999": 100, "10050": 1}, start, 1000.5)
    assert dense == [5, 0, 0, 7, 0]


def test_request_accounting_separates_unanswered_requests_and_the_faulted_workers_own():
    wrk = {"requests": 100, "issued": 106, "errors": {"connect": 2, "read": 3, "write": 0,
                                                      "status": 4, "timeout": 0}}
    q = analysis.request_counts([wrk], own=5)
    assert q["unanswered_at_stop"] == 2    # 106 - 1 built up front - 100 answered - 3 read errors
    assert q["ok"] == 96
    assert q["failed"] == 2 + 3 + 4
    assert q["ok"] + q["failed"] == q["sent"]
    assert q["failed_beyond_own"] == q["failed"] - 5
    assert analysis.request_counts([wrk], own=50)["failed_beyond_own"] == 0


def test_strict_replaces_non_finite_values_and_says_why():
    reasons = {}
    doc = analysis.strict({"a": [1.0, math.nan], "b": {"c": math.inf}}, "doc", reasons)
    assert doc == {"a": [1.0, None], "b": {"c": None}}
    assert set(reasons) == {"doc.a[1]", "doc.b.c"}
    json.dumps(doc, allow_nan=False)


def synthetic_record(manager, fault, failed_beyond=0, outage=False, sent=100):
    return {"fault": fault, "manager": manager, "workers": 2, "profile": "quick", "status": "ok",
            "requests": {"sent": sent, "ok": sent - failed_beyond, "failed": failed_beyond,
                         "failed_connect": 0, "failed_inflight": failed_beyond, "unanswered_at_stop": 0,
                         "faulted_workers_own": 0, "failed_beyond_own": failed_beyond},
            "recovery": {"recovery_s": 0.0, "longest_gap_s": 0.1, "permanent_outage": outage,
                         "outage_reason": "x" if outage else None},
            "primary": {"fds_before": 10, "fds_after": 10, "rss_kb_before": 100,
                        "rss_kb_after": 105, "fds_delta_pct": 0.0, "rss_kb_delta_pct": 5.0,
                        "alive_after_fault": True, "exit_code": 0},
            "zombies": 0, "orphans": 0, "fault_detail": {}, "notes": [],
            "series": {"bucket_s": 0.1, "fault_start_s": 1.0, "fault_end_s": 2.0,
                       "ok": [5] * 40, "probes": [[0.5, True]]}}


def test_records_are_checked_and_the_report_states_the_goal_figures(tmp_path):
    recs = [synthetic_record("uvc-rr", "sigstop", failed_beyond=3, outage=True),
            synthetic_record("node-cluster", "sigstop", failed_beyond=1)]
    for r in recs:
        assert analysis.check_record(r) == []
    broken = dict(recs[0])
    del broken["orphans"]
    assert analysis.check_record(broken) == ["missing orphans"]
    doc = {"schema": analysis.SCHEMA, "time": "t", "profile": "quick",
           "settings": {"workers": 2, "conns": 8}, "environment": {}, "managers": ["uvc-rr", "node-cluster"],
           "faults": ["sigstop"], "fault_descriptions": {"sigstop": "stop"}, "duration_s": 1.0,
           "records": recs}
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(doc, allow_nan=False))
    md = tmp_path / "CHAOS.md"
    p = subprocess.run([PY, os.path.join(SRC, "scripts/chaos/report.py"), str(path), "--md", str(md)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    text = md.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| uvc-rr | node-cluster | 1 |"))
    assert "1 sigstop" in row                   # one permanent outage
    assert "sigstop (3 vs 1)" in row            # lost more than Node's cluster
    assert "## sigstop" in text


def chaos_report():
    # By path: another suite's `report` module (the strategy lab's) may be imported already.
    spec = importlib.util.spec_from_file_location("chaos_report", os.path.join(SRC, "scripts", "chaos", "report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def goals_of(recs, managers, faults=("sigstop",)):
    doc = {"schema": analysis.SCHEMA, "time": "t", "profile": "quick",
           "settings": {"workers": 2, "conns": 8}, "environment": {}, "managers": managers,
           "faults": list(faults), "fault_descriptions": {}, "duration_s": 1.0, "records": recs}
    return chaos_report().goals(doc)


def test_each_manager_is_held_to_node_cluster_with_its_own_policy(tmp_path):
    recs = [synthetic_record("uvc-none", "sigstop", failed_beyond=3),
            synthetic_record("node-cluster", "sigstop", failed_beyond=0),
            synthetic_record("node-cluster-none", "sigstop", failed_beyond=5),
            synthetic_record("uvc-reuseport", "sigstop", failed_beyond=6)]
    g = goals_of(recs, ["uvc-none", "uvc-reuseport", "node-cluster", "node-cluster-none"])
    assert g["uvc-none"]["reference"] == "node-cluster-none"
    assert g["uvc-none"]["worse_than_node"] == []                 # 3 ≤ SCHED_NONE's 5
    assert g["uvc-reuseport"]["reference"] == "node-cluster-none"  # workers accept, as in NONE
    assert g["uvc-reuseport"]["worse_than_node"] == [
        "sigstop (60.0 vs 50.0 per 1,000 sent; 6 of 100 vs 5 of 100)"]
    assert g["node-cluster"]["reference"] is None


def test_none_and_reuseport_compare_per_request_sent_rr_by_count(tmp_path):
    # Twice the requests sent and 1.5 times the failures: fewer per request for uvc-none (the
    # workers refuse, wrk reconnects at once), but more for uvc-rr and pm2 whose primary is on
    # the path: their count is compared, a faster manager gets no allowance.
    recs = [synthetic_record("uvc-none", "maxconn-refusals", failed_beyond=150, sent=2000),
            synthetic_record("node-cluster-none", "maxconn-refusals", failed_beyond=100, sent=1000),
            synthetic_record("uvc-rr", "maxconn-refusals", failed_beyond=150, sent=2000),
            synthetic_record("pm2", "maxconn-refusals", failed_beyond=150, sent=2000),
            synthetic_record("node-cluster", "maxconn-refusals", failed_beyond=100, sent=1000)]
    g = goals_of(recs, ["uvc-none", "uvc-rr", "pm2", "node-cluster", "node-cluster-none"],
                 faults=("maxconn-refusals",))
    assert g["uvc-none"]["worse_than_node"] == []
    assert g["uvc-rr"]["worse_than_node"] == ["maxconn-refusals (150 vs 100)"]
    assert g["pm2"]["worse_than_node"] == ["maxconn-refusals (150 vs 100)"]
    assert chaos_report().beyond_own_per_1000_sent({"failed_beyond_own": 1, "sent": 0}) == 0.0


def test_smoke_one_fault_against_one_manager(tmp_path):
    cli = os.path.join(BUILD, "bin", "uvcluster")
    if not (os.access(cli, os.X_OK) and shutil.which("wrk") and os.access("/usr/bin/node", os.X_OK)):
        pytest.skip("needs build/bin/uvcluster, wrk and node")
    out = tmp_path / "chaos.json"
    p = subprocess.run([PY, os.path.join(SRC, "scripts/chaos/chaos.py"), "--build", BUILD,
                        "--profile", "quick", "--faults", "kill-every-2s", "--managers", "uvc-rr",
                        "--out", str(out), "--no-report"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())            # strict JSON: Python's parser takes NaN, so
    json.dumps(doc, allow_nan=False)             # re-encoding without NaN proves there is none
    assert doc["schema"] == analysis.SCHEMA
    (r,) = doc["records"]
    assert r["status"] == "ok", r.get("error")
    assert analysis.check_record(r) == []
    assert r["fault_detail"]["killed"] == 2      # the fault was really played
    assert r["requests"]["ok"] > 0 and r["series"]["probes"]
    assert r["worker_pids_seen"] >= 3            # 2 workers + at least one replacement
    assert r["orphans"] is not None
