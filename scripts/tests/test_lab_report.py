"""Report rendering, the driver's matrix/profiles and compare.py, from a fixture latest.json."""
import copy
import json
import os

import compare
import driver
import report


def rec(strategy, app, workers, load, rps, p99, jain_c=1.0, jain_r=1.0, fd_p=None, herd=0.0,
        errors=0, **kw):
    r = {"strategy": strategy, "label": kw.pop("label", strategy), "app": app, "workers": workers,
         "load": load, "available": True, "role": "matrix",
         "throughput": {"rps": rps, "requests": int(rps * 2), "errors_total": errors, "timeouts": 0},
         "latency_ms": {"p50": p99 / 4, "p90": p99 / 2, "p99": p99},
         "fairness": {"connections": {"per_worker": [50, 50], "jain": jain_c, "max_min": 1.0, "top_share": 0.5},
                      "requests": {"per_worker": [100, 100], "jain": jain_r, "max_min": 1.0, "top_share": 0.5}},
         "fds": {"per_conn_primary": fd_p, "per_conn_workers": 1.0},
         "herd": {"outside": {"per_conn": herd, "eagain": 0, "accepted": 10, "ctxsw_per_conn": 1 + 10 * herd},
                  "ctxsw_per_conn": 1.0},
         "cpu": {"primary_per_1k": 0.01, "workers_per_1k": 0.05, "total_per_1k": 0.06},
         "startup": {"eaddrinuse": 0, "serving": workers}, "processes": {"orphans": []}}
    r.update(kw)
    return r


def fixture():
    recs = []
    for load in ("keepalive", "close"):
        recs += [
            rec("node-rr", "node", 2, load, 1000, 10, fd_p=0.5),
            rec("proxy", "native", 2, load, 3000, 5, fd_p=2.0),
            rec("shared", "native", 2, load, 8000, 4, herd=0.2, jain_c=0.9),
            rec("exclusive", "native", 2, load, 7000, 4, herd=0.05, jain_c=0.5),
            rec("naive", "native", 2, load, 5000, 3, jain_c=0.5,
                startup={"eaddrinuse": 1, "serving": 1}),
            {"strategy": "rr", "label": "rr", "app": "native", "workers": 2, "load": load,
             "available": False, "reason": "not built", "role": "matrix"},
        ]
    return {"schema": 1, "profile": "quick", "generated_at": "T", "env": {"kernel": "k", "cores": 2},
            "records": recs}


def test_render_writes_report_with_tables_ratios_and_validations(tmp_path):
    doc = fixture()
    summary, vals = report.render(doc, str(tmp_path))
    md = (tmp_path / "REPORT.md").read_text()
    assert "### Throughput (req/s)" in md
    assert "| shared | native | 8,000 (8.00×) |" in md  # ratio to node-rr, same run
    assert md.count("### ") == len(report.TABLES)
    assert "n/a" in md and "not built" in md
    for png in ("rps.png", "p99.png", "per_worker.png", "fds_per_conn.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"]({png})" in md
    by_text = {t.split(" (")[0]: p for t, p, _ in vals}
    assert by_text["naive shows EADDRINUSE"] is True
    assert by_text["proxy ≈ 2 fds per connection in the primary"] is True
    assert by_text["rr Jain ≥ 0.95"] is None  # rr unavailable: not checkable, not a pass
    assert by_text["exclusive herd < shared herd"] is True
    assert by_text["(upper bound, informative) exclusive has fewer worker context switches per connection than shared"] is True
    assert "✔" in summary and "req/s" in summary


def test_validation_fails_when_invariant_broken(tmp_path):
    doc = fixture()
    for r in doc["records"]:
        if r["strategy"] == "proxy":
            r["fds"]["per_conn_primary"] = 0.4
        if r["strategy"] == "exclusive":
            r["herd"]["outside"]["per_conn"] = 0.9
            r["herd"]["outside"]["ctxsw_per_conn"] = 9.0
    _, vals = report.render(doc, str(tmp_path))
    by_text = {t.split(" (")[0]: p for t, p, _ in vals}
    assert by_text["proxy ≈ 2 fds per connection in the primary"] is False
    assert by_text["exclusive herd < shared herd"] is False
    assert "✘" in (tmp_path / "REPORT.md").read_text()


def test_exclusive_without_herd_passes_when_shared_had_none_either(tmp_path):
    doc = fixture()
    for r in doc["records"]:
        if r["strategy"] in ("exclusive", "shared"):
            r["herd"]["outside"]["per_conn"] = 0.0
    _, vals = report.render(doc, str(tmp_path))
    by_text = {t.split(" (")[0]: p for t, p, _ in vals}
    assert by_text["exclusive herd < shared herd"] is True


def test_driver_profiles_and_matrix():
    quick, default, full = (driver.matrix(p) for p in ("quick", "default", "full"))
    assert len(quick) < len(default) < len(full)
    keys = {(c["strategy"], c["app"], c["workers"], c["load"]) for c in default}
    for s in driver.STRATEGIES:
        for w in (2, 4):
            for load in ("keepalive", "close"):
                assert any(k[0] == s and k[2] == w and k[3] == load for k in keys), (s, w, load)
    assert ("node-rr", "native", 2, "close") in keys  # C++ workers under Node's primary too
    assert ("uvc-run", "native", 2, "close") not in keys  # the row is "C++ primary + Node workers"
    assert {(c["strategy"], c["app"]) for c in quick} >= {("node-rr", "node"), ("shared", "native")}
    assert ("exclusive", "node", 2, "close") not in keys  # EPOLLEXCLUSIVE needs our accept loop
    assert ("shared", "node", 4, "keepalive") in keys
    assert all(c["workers"] == 2 for c in quick)
    assert driver.validation_cells("quick") == []
    assert [c["role"] for c in driver.validation_cells("default")] == ["validation-perf", "validation-strace"]
    # budgets: the estimate must keep default within ~7 minutes and quick under 2
    assert len(default) * driver.PROFILES["default"]["est_s"] < 7 * 60
    assert len(quick) * driver.PROFILES["quick"]["est_s"] < 2 * 60


def test_compare_flags_regressions_only(tmp_path):
    base = fixture()
    same = copy.deepcopy(base)
    assert compare.compare(same, base) == []
    worse = copy.deepcopy(base)
    for r in worse["records"]:
        if r["strategy"] == "shared" and r["load"] == "close":
            r["throughput"]["rps"] = 3000  # ratio to node-rr falls by more than half
        if r["strategy"] == "proxy" and r["load"] == "keepalive":
            r["fds"]["per_conn_primary"] = 3.0
    problems = compare.compare(worse, base)
    assert any("shared/native/2/close: req/s" in p for p in problems)
    assert any("proxy/native/2/keepalive: fds/conn primary" in p for p in problems)
    assert len(problems) == 2
    lp, bp = tmp_path / "latest.json", tmp_path / "baseline.json"
    lp.write_text(json.dumps(worse))
    bp.write_text(json.dumps(base))
    assert compare.main(["--latest", str(lp), "--baseline", str(bp)]) == 1
    assert compare.main(["--latest", str(bp), "--baseline", str(bp)]) == 0
    assert compare.main(["--latest", str(lp), "--baseline", str(tmp_path / "none.json")]) == 0
