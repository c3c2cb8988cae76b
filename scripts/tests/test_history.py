"""History lines and change points on synthetic series."""
import json

import numpy as np

import bench_compare
import history


def test_change_point_found_where_the_mean_moves():
    rng = np.random.default_rng(2)
    ys = list(1000 + 30 * rng.standard_normal(12)) + list(880 + 30 * rng.standard_normal(12))
    assert history.change_points(ys) == [12]


def test_flat_noisy_series_has_no_change_point():
    rng = np.random.default_rng(3)
    false = sum(bool(history.change_points(list(100 + 5 * rng.standard_normal(20)), permutations=199, seed=s))
                for s in range(20))
    assert false <= 2  # alpha 0.01 per test, a few tests per series


def test_one_outlier_is_not_a_change():
    rng = np.random.default_rng(4)
    ys = list(100 + 3 * rng.standard_normal(21))
    ys[10] = 20.0  # a run that a neighbour starved
    assert history.change_points(ys) == []


def test_compare_result_becomes_a_history_line(tmp_path):
    result = {"time": "2026-12-01T12:00:00Z", "profile": "ci", "env": {"cores": 2},
              "base": {"spec": "HEAD~1", "rev": "a" * 40}, "new": {"spec": "worktree", "rev": "b" * 40, "dirty": True},
              "metrics": [{"name": "rr_conn_per_s", "new_median": 7000.0, "new": [1.0, 2.0]},
                          {"name": "ipc_pingpong_us", "new_median": None, "new": [], "reason": "too few samples"}]}
    line = history.from_compare(result)
    path = tmp_path / "h.jsonl"
    history.append(line, str(path))
    history.append(line, str(path))
    back = history.read(str(path))
    assert len(back) == 2 and back[0]["metrics"]["rr_conn_per_s"] == 7000.0
    assert back[0]["metrics"]["ipc_pingpong_us"] is None and back[0]["metrics"]["ipc_pingpong_us_reason"]
    json.loads(path.read_text().splitlines()[0])
    assert history.render(back, str(tmp_path / "plots")) == []
    assert (tmp_path / "plots" / "rr_conn_per_s.png").exists()


def test_every_metric_the_gate_tracks_gets_a_trend_plot(tmp_path):
    tracked = [name for name, (_, _, is_tracked) in bench_compare.METRICS.items() if is_tracked]
    line = {"kind": "compare", "profile": "ci", "time": "2026-12-01T12:00:00Z", "rev": "a" * 40,
            "metrics": {name: 1.0 for name in tracked}}
    assert history.render([line, line], str(tmp_path / "plots")) == []
    assert sorted(p.stem for p in (tmp_path / "plots").glob("*.png")) == sorted(tracked)
