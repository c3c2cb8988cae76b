"""bench_compare's interface: exit 2 on bad usage before any build, the committed CI baseline
names a commit, and a result renders as strict JSON that matches results/schema/compare.schema.json."""
import json
import os

import jsonschema
import numpy as np

import ab_stats
import bench_compare
import strict_json

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_unknown_revision_is_bad_usage(capsys):
    assert bench_compare.main(["--base", "no-such-revision-xyz", "--no-history"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown revision 'no-such-revision-xyz'" in err


def test_unknown_set_and_missing_base_are_bad_usage(capsys):
    assert bench_compare.main(["--base", "HEAD", "--set", "ipc,bogus"]) == 2
    assert bench_compare.main([]) == 2
    assert "--base REV is required" in capsys.readouterr().err


def test_ci_baseline_names_a_commit():
    with open(os.path.join(SRC, "results", "ci-baseline")) as f:
        rev = next(ln.split("#")[0].strip() for ln in f if ln.split("#")[0].strip())
    side = bench_compare.resolve(rev)
    assert len(side["rev"]) == 40


def test_result_is_strict_and_matches_schema(tmp_path):
    rng = np.random.default_rng(1)
    ms = [{"name": n, "unit": u, "better": b, "tracked": t, "gated": t,
           "base": list(100 * (1 + 0.03 * rng.standard_normal(8))),
           "new": list(f * 100 * (1 + 0.03 * rng.standard_normal(8)))}
          for n, u, b, t, f in [("rr_conn_per_s", "conn/s", "higher", True, 0.85),
                                ("ipc_pingpong_us", "µs/round trip", "lower", True, 1.0),
                                ("lab_node-rr_close_2w_rps", "req/s", "higher", False, 1.0)]]
    ms.append({"name": "rr_primary_cpu_ms_per_1k", "unit": "ms", "better": "lower", "tracked": True,
               "gated": True, "base": [], "new": []})
    analysed = ab_stats.analyse(ms, alpha=0.01, min_effect=0.10)
    result = {"schema": 1, "kind": "bench-ci", "base": {"spec": "HEAD", "rev": "a" * 40},
              "new": {"spec": "worktree", "rev": "b" * 40, "dirty": False}, "time": "2026-12-01T12:00:00Z",
              "profile": "ci", "order": ["A", "B", "B", "A"], "samples_per_side": 8,
              "settings": {"alpha": 0.01, "min_effect": 0.10, "correction": "holm", "ci": "bootstrap",
                           "test": "Mann-Whitney U", "gate": ["rr_conn_per_s"]},
              "metrics": analysed, "regressed": ["rr_conn_per_s"], "exit_status": 1}
    assert analysed[0]["verdict"] == "regressed" and analysed[1]["verdict"] == "no evidence"
    assert analysed[3]["verdict"] == "not measured"
    path = tmp_path / "r.json"
    strict_json.write(str(path), result)
    with open(os.path.join(SRC, "results", "schema", "compare.schema.json")) as f:
        jsonschema.validate(strict_json.load(str(path)), json.load(f))
    table = bench_compare.markdown(result)
    assert "| rr_conn_per_s |" in table and "regressed" in table and "(not gated)" in table
    assert bench_compare.box_plot(result, str(tmp_path / "r.png"))


def test_short_ipc_samples_take_the_median_of_their_repetitions():
    """The short profiles' IPC sample: bench_ipc honours UVC_BENCH_MIN_TIME (detected in the
    binary, since older revisions do not) and the sample is the median of the repetitions."""
    build = os.environ.get("UVC_BUILD_DIR", os.path.join(SRC, "build"))
    if not os.path.exists(os.path.join(build, "bench", "bench_ipc")):
        import pytest
        pytest.skip("bench_ipc not built")
    assert bench_compare.honours_ipc_min_time(build)
    assert not bench_compare.honours_ipc_min_time(os.path.join(SRC, "no-such-build"))
    opts = {"duration": 1, "ipc_sample": (0.02, 3), "rr_limits": False}
    out = bench_compare.unit_ipc(build, dict(os.environ), opts, "BM_IpcHandlePassing/")
    assert set(out) == {"ipc_handle_pingpong_us", "ipc_handle_pingpong_cpu_us"}
    assert 0 < out["ipc_handle_pingpong_cpu_us"] and 0 < out["ipc_handle_pingpong_us"]
    assert bench_compare.unit_metrics(["rr"], rr_limits=False) == ["rr_conn_per_s", "rr_primary_cpu_ms_per_1k"]


def test_without_valgrind_the_instr_metrics_are_skipped_not_failed(monkeypatch):
    """The skip path: no valgrind -> the instr unit does not run, its metrics are 'not measured'
    with the reason, and nothing gates on them (exit status stays 0 if nothing else regressed)."""
    monkeypatch.setattr(bench_compare.shutil, "which", lambda tool: None if tool == "valgrind" else "/usr/bin/" + tool)
    skipped = bench_compare.skipped_units(["ipc", "instr"])
    assert list(skipped) == ["instr"] and "valgrind not installed" in skipped["instr"]
    assert bench_compare.skipped_units(["ipc", "rr"]) == {}
    names = bench_compare.unit_metrics(["instr"])
    assert names == ["rr_primary_instructions", "rr_primary_instructions_vs_bare", "rr_workers_instructions"]
    analysed = ab_stats.analyse(bench_compare.metric_records(names, {}, skipped))
    assert [m["verdict"] for m in analysed] == ["not measured"] * 3
    assert all("valgrind not installed" in m["reason"] for m in analysed)
    assert [m["gated"] for m in analysed] == [True, False, True]
    table = bench_compare.markdown({"settings": {"alpha": 0.01, "min_effect": 0.1}, "samples_per_side": 8,
                                    "metrics": analysed})
    assert "not measured (skipped: valgrind not installed" in table


def test_instr_metrics_render_with_their_rule_and_match_the_schema(tmp_path):
    records = bench_compare.metric_records(
        ["rr_conn_per_s", "rr_primary_instructions"],
        {"rr_conn_per_s": {"A": [100.0, 101.0, 99.0, 100.5], "B": [100.0, 99.5, 101.0, 100.2]},
         "rr_primary_instructions": {"A": [5392.0, 5398.0, 5410.0], "B": [4376.0, 4387.0, 4390.0]}}, {})
    analysed = ab_stats.analyse(records, alpha=0.01, min_effect=0.10, bootstrap=100)
    assert analysed[1]["verdict"] == "improved" and analysed[1]["rule"] == "separation"
    result = {"schema": 1, "kind": "bench-ci", "base": {"spec": "f795cc6", "rev": "a" * 40},
              "new": {"spec": "worktree", "rev": "b" * 40}, "time": "2026-12-02T06:00:00Z", "profile": "ci",
              "samples_per_side": 4, "settings": {"alpha": 0.01, "min_effect": 0.10, "correction": "holm", "ci": "b",
                                                  "test": "MW", "separation": {"metrics": ["rr_primary_instructions"],
                                                                               "samples_per_side": 3,
                                                                               "min_separation": 0.03, "rule": "r"}},
              "metrics": analysed, "regressed": [], "exit_status": 0}
    path = tmp_path / "r.json"
    strict_json.write(str(path), result)
    with open(os.path.join(SRC, "results", "schema", "compare.schema.json")) as f:
        schema = json.load(f)
    jsonschema.validate(strict_json.load(str(path)), schema)
    del result["metrics"][1]["separation"]  # a separation metric must say how far apart its sides were
    import pytest
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(result, schema)
    table = bench_compare.markdown(result)
    assert "| rr_primary_instructions † |" in table and "Holm-corrected over 1 metrics" in table
    assert "3 samples per side" in table and "at least 3 %" in table


def test_the_instr_unit_collects_the_workers_count_and_judges_it_by_separation(monkeypatch):
    """The rr workers' instructions (case rr-workers) come from the same rr_instructions.py
    invocation as the primary's, and gate as a deterministic metric: a side whose workers' count
    rose by the old hand-off's ~800 instructions (~11 %) regresses, the primary's unchanged."""
    runs = []

    lines = {"raw-k1": {"case": "raw-k1", "requests": 9000, "primary_instructions_per_conn": 1117},
             "rr": {"case": "rr", "requests": 9000, "primary_instructions_per_conn": 4370},
             "rr-workers": {"case": "rr-workers", "requests": 3000, "workers_instructions_per_conn": 6950}}

    def fake_rr_instructions(cmd, env, timeout):
        cases = cmd[cmd.index("--cases") + 1].split(",")
        runs.append(cases)
        return 0, [lines[c] for c in cases], ""
    monkeypatch.setattr(bench_compare, "run_json_lines", fake_rr_instructions)
    opts = {"instr_duration": 2}
    out = bench_compare.unit_instr("no-build", {}, opts)
    assert runs == [["rr", "rr-workers"]]  # no raw_rr in "no-build": no raw-k1
    assert out == {"rr_primary_instructions": 4370.0, "rr_workers_instructions": 6950.0}
    assert "rr_workers_instructions" in bench_compare.unit_metrics(["instr"])
    assert "rr_workers_instructions" in bench_compare.DETERMINISTIC
    records = bench_compare.metric_records(
        ["rr_primary_instructions", "rr_workers_instructions"],
        {"rr_primary_instructions": {"A": [4365.0, 4370.0, 4372.0], "B": [4360.0, 4371.0, 4375.0]},
         "rr_workers_instructions": {"A": [6800.0, 6950.0, 7100.0], "B": [7600.0, 7750.0, 7900.0]}}, {})
    analysed = ab_stats.analyse(records, alpha=0.01, min_effect=0.10, bootstrap=100)
    workers = analysed[1]
    assert workers["rule"] == "separation" and workers["gated"] and workers["unit"] == "instructions/conn"
    assert workers["verdict"] == "regressed" and analysed[0]["verdict"] == "no evidence"


def test_an_instr_sample_counts_the_rr_primary_and_workers_under_callgrind():
    """One real sample of the instr unit on this build (~20 s): the rr primary's count, its ratio
    to the bare primary's (measured once per build and reused), and the rr workers' count."""
    import pytest
    build = os.environ.get("UVC_BUILD_DIR", os.path.join(SRC, "build"))
    if bench_compare.instr_skip_reason():
        pytest.skip(bench_compare.instr_skip_reason())
    if not os.path.exists(os.path.join(build, "bench", "limits", "raw_rr")):
        pytest.skip("raw_rr not built")
    cache = os.path.join(build, "CMakeCache.txt")
    if os.path.exists(cache) and any(line.startswith("UVCLUSTER_SANITIZE:STRING=") and line.strip().split("=", 1)[1]
                                     for line in open(cache)):
        pytest.skip("a sanitizer build: its binaries do not run under valgrind")
    opts = {"instr_duration": 1}
    out = bench_compare.unit_instr(build, dict(os.environ), opts)
    assert set(out) == {"rr_primary_instructions", "rr_primary_instructions_vs_bare", "rr_workers_instructions"}
    bare = opts["bare_instructions"][build]
    assert 0 < bare < out["rr_primary_instructions"]
    assert out["rr_workers_instructions"] > 0
    assert out["rr_primary_instructions_vs_bare"] == pytest.approx(out["rr_primary_instructions"] / bare)


def test_the_instr_unit_runs_in_the_first_rounds_only(monkeypatch):
    calls = []

    def fake(metric):
        def unit(build_dir, env, opts):
            calls.append((metric, build_dir))
            return {metric: 1.0}
        return unit
    monkeypatch.setitem(bench_compare.UNITS, "ipc-handle", fake("ipc_handle_pingpong_us"))
    monkeypatch.setitem(bench_compare.UNITS, "instr", fake("rr_primary_instructions"))
    sides = {"A": {"build": "a", "env": {}}, "B": {"build": "b", "env": {}}, "build_s": 0.0}
    opts = {"rr_limits": False, "instr_samples": 3}

    class Quiet:
        def show(self, text):
            pass

        def done(self):
            pass
    data, order, rounds = bench_compare.measure(sides, ["ipc-handle", "instr"], opts, 6, 100, 690, 30,
                                                bench_compare.time.monotonic(), 4, Quiet())
    assert rounds == 6 and order[:4] == ["A", "B", "B", "A"]
    assert len(data["ipc_handle_pingpong_us"]["A"]) == 6 and len(data["rr_primary_instructions"]["B"]) == 3
    assert [b for m, b in calls if m == "rr_primary_instructions"] == ["a", "b", "b", "a", "a", "b"]
    assert set(opts["unit_s"]) == {"ipc-handle", "instr"}
