"""Metric math of the lab on fixed inputs."""
import math

import pytest

import metrics


def test_jain_equal_is_one():
    assert metrics.jain([5, 5, 5, 5]) == pytest.approx(1.0)


def test_jain_one_takes_all_is_one_over_n():
    assert metrics.jain([0, 0, 0, 400]) == pytest.approx(0.25)
    assert metrics.jain([7, 0]) == pytest.approx(0.5)


def test_jain_known_value():
    # (1+2+3)^2 / (3 * (1+4+9)) = 36/42
    assert metrics.jain([1, 2, 3]) == pytest.approx(36 / 42)


def test_jain_empty_or_idle_is_none():
    assert metrics.jain([]) is None
    assert metrics.jain([0, 0]) is None


def test_max_min_and_top_share():
    assert metrics.max_min([10, 20, 40]) == pytest.approx(4.0)
    assert math.isinf(metrics.max_min([0, 3]))
    assert metrics.max_min([0, 0]) is None
    assert metrics.top_share([1, 1, 2]) == pytest.approx(0.5)
    assert metrics.top_share([]) is None


def test_percentile_nearest_rank():
    xs = list(range(1, 101))  # 1..100
    assert metrics.percentile(xs, 50) == 50
    assert metrics.percentile(xs, 90) == 90
    assert metrics.percentile(xs, 99) == 99
    assert metrics.percentile(xs, 100) == 100
    assert metrics.percentile([3, 1, 2], 0) == 1
    assert metrics.percentile([42], 99) == 42
    assert metrics.percentile([], 50) is None


def test_fd_delta_and_per_connection():
    assert metrics.fd_delta(10, [10, 60, 110, 90]) == 100
    assert metrics.per_connection(100, 50) == pytest.approx(2.0)
    assert metrics.fd_delta(None, [1]) is None
    assert metrics.fd_delta(10, []) is None
    assert metrics.per_connection(5, 0) is None


def test_ratio_per_1k_and_diff_counts():
    assert metrics.ratio(3, 2) == pytest.approx(1.5)
    assert metrics.ratio(3, 0) is None
    assert metrics.per_1k(0.5, 10000) == pytest.approx(0.05)
    before = {1: {"connections": 10}, 2: {"connections": 5}}
    after = {1: {"connections": 15}, 2: {"connections": 5}, 3: {"connections": 4}}
    assert metrics.diff_counts(after, before, "connections") == {1: 5, 2: 0, 3: 4}
