"""The goal table of bench/rr_limits.py on fixed inputs: each goal's ratio and its same-run bound."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))
import rr_limits  # noqa: E402

SUMMARY = {
    "raw-k1": {"primary_cpu_us_per_conn": 12.0, "workers_cpu_us_per_conn": 22.0, "connections_per_s": 24000},
    "raw-k16": {"primary_cpu_us_per_conn": 8.0, "workers_cpu_us_per_conn": 20.0, "connections_per_s": 27000},
    "rr": {"primary_cpu_us_per_conn": 15.0, "workers_cpu_us_per_conn": 30.0, "connections_per_s": 21000},
    "reuseport": {"primary_cpu_us_per_conn": 0.0, "workers_cpu_us_per_conn": 26.4, "connections_per_s": 30000},
    "node-rr": {"primary_cpu_us_per_conn": 40.0, "workers_cpu_us_per_conn": 30.0, "connections_per_s": 16000},
}


def by_goal(rows):
    return {r["goal"]: r for r in rows}


def test_bounds_are_the_same_ratio_for_the_bare_pair_or_the_workers_without_a_hand_off():
    rows = by_goal(rr_limits.goals(SUMMARY))
    node = rows["primary CPU/conn <= 0.3x Node's primary"]
    assert node["ratio"] == pytest.approx(15.0 / 40.0, abs=1e-3)
    assert node["bound"] == pytest.approx(12.0 / 40.0, abs=1e-3) and node["bound_case"] == "raw-k1"
    workers = rows["workers' total CPU/conn (HTTP included, not the goal's measure) <= 1.2x bare workers"]
    assert workers["bound"] == pytest.approx(26.4 / 22.0, abs=1e-3) and workers["bound_case"] == "reuseport"
    assert rows["rr conn/s >= 0.75x reuseport"]["bound"] == pytest.approx(0.8, abs=1e-3)
    assert rows["rr conn/s >= 0.75x reuseport"]["met"] is False
    assert rows["primary CPU/conn <= 1.2x bare K=1"]["bound"] is None


def test_a_missing_case_gives_no_ratio_and_no_bound():
    rows = by_goal(rr_limits.goals({k: v for k, v in SUMMARY.items() if k not in ("rr-w16", "raw-k16")}))
    w16 = rows["rr window 16 conn/s >= 0.85x reuseport"]
    assert w16["ratio"] is None and w16["met"] is None and w16["bound"] is None
    assert "| - |" in rr_limits.table({}, [w16])


def rounds_of(case, workers_us):
    return [{"case": case, "round": r, "workers_cpu_us_per_conn": us} for r, us in enumerate(workers_us)]


def test_the_workers_overhead_is_the_same_round_difference_to_the_workers_without_a_hand_off():
    rounds = {"raw-k1": rounds_of("raw-k1", [20.0, 30.0, 21.0]),
              "raw-reuseport": rounds_of("raw-reuseport", [16.0, 27.0, 18.0]),
              "rr": rounds_of("rr", [28.0, 40.0, 30.0]),
              "reuseport": rounds_of("reuseport", [24.0, 35.0, 27.0])}
    # Paired by round (4, 3, 3 and 4, 5, 3), not medians subtracted (21 - 18 = 3, 30 - 27 = 3).
    assert rr_limits.handoff_overheads(rounds) == {"raw-k1": 3.0, "rr": 4.0}
    summary = rr_limits.summarize(rounds, {})
    goal = by_goal(rr_limits.goals(summary))["workers' hand-off overhead <= 1.2x bare workers'"]
    assert goal["ratio"] == pytest.approx(4.0 / 3.0, abs=1e-3) and goal["met"] is False
    assert "reuseport" not in rr_limits.handoff_overheads({"reuseport": rounds["reuseport"]})


def test_a_bare_overhead_lost_in_the_noise_gives_no_ratio_but_says_why():
    rounds = {"raw-k1": rounds_of("raw-k1", [16.0]), "raw-reuseport": rounds_of("raw-reuseport", [17.0]),
              "rr": rounds_of("rr", [28.0]), "reuseport": rounds_of("reuseport", [24.0])}
    rows = rr_limits.goals(rr_limits.summarize(rounds, {}))
    goal = by_goal(rows)["workers' hand-off overhead <= 1.2x bare workers'"]
    assert goal["ratio"] is None and goal["met"] is None and "-1.0" in goal["note"]
    assert goal["note"] in rr_limits.table({}, [goal])


def test_a_round_that_failed_for_the_twin_is_not_paired():
    rounds = {"rr": rounds_of("rr", [28.0, 40.0]), "reuseport": rounds_of("reuseport", [24.0])}
    assert rr_limits.handoff_overheads(rounds) == {"rr": 4.0}


def test_the_conn_per_s_estimate_with_the_same_workers_adds_the_bare_hand_off_time_to_reuseport():
    summary = dict(SUMMARY, **{"raw-reuseport": {"connections_per_s": 40000}})
    rows = by_goal(rr_limits.goals(summary))
    # Bare hand-off: 1/24000 - 1/40000 s per connection; added to reuseport's 1/30000.
    expected = (1 / 30000) / (1 / 30000 + 1 / 24000 - 1 / 40000)
    assert rows["rr conn/s >= 0.75x reuseport"]["estimate_same_workers"] == pytest.approx(expected, abs=1e-3)
    assert rows["rr window 16 conn/s >= 0.85x reuseport"]["estimate_same_workers"] == pytest.approx(
        (1 / 30000) / (1 / 30000 + 1 / 27000 - 1 / 40000), abs=1e-3)
    assert "estimate_same_workers" not in rows["primary CPU/conn <= 1.2x bare K=1"]
    assert rr_limits.goals(SUMMARY)[3]["estimate_same_workers"] is None  # no raw-reuseport in the run
