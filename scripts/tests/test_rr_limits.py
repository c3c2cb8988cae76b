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
    workers = rows["workers' CPU/conn <= 1.2x bare workers"]
    assert workers["bound"] == pytest.approx(26.4 / 22.0, abs=1e-3) and workers["bound_case"] == "reuseport"
    assert rows["rr conn/s >= 0.75x reuseport"]["bound"] == pytest.approx(0.8, abs=1e-3)
    assert rows["rr conn/s >= 0.75x reuseport"]["met"] is False
    assert rows["primary CPU/conn <= 1.2x bare K=1"]["bound"] is None


def test_a_missing_case_gives_no_ratio_and_no_bound():
    rows = by_goal(rr_limits.goals({k: v for k, v in SUMMARY.items() if k not in ("rr-w16", "raw-k16")}))
    w16 = rows["rr window 16 conn/s >= 0.85x reuseport"]
    assert w16["ratio"] is None and w16["met"] is None and w16["bound"] is None
    assert "| - |" in rr_limits.table({}, [w16])
