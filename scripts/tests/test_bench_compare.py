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
