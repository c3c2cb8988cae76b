"""The A/B statistics on synthetic samples: known effects are detected, nulls are not flagged,
Holm keeps the family-wise error near alpha."""
import numpy as np
import pytest

import ab_stats


def noisy(rng, k, center, cv=0.05):
    return list(center * (1 + cv * rng.standard_normal(k)))


def test_holm_matches_hand_computation():
    adj = ab_stats.holm([0.01, 0.04, 0.03, None])
    assert adj[:3] == pytest.approx([0.03, 0.06, 0.06]) and adj[3] is None
    # monotone: a larger raw p never gets a smaller adjusted p
    adj = ab_stats.holm([0.001, 0.2, 0.0015])
    assert adj[0] <= adj[2] <= adj[1]


def test_ten_percent_regression_is_detected():
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(50):
        ms = [{"name": "rps", "better": "higher", "base": noisy(rng, 10, 1000), "new": noisy(rng, 10, 900)},
              {"name": "us", "better": "lower", "base": noisy(rng, 10, 20), "new": noisy(rng, 10, 20)}]
        r = ab_stats.analyse(ms, alpha=0.05, min_effect=0.05, bootstrap=200)
        hits += r[0]["verdict"] == "regressed"
    assert hits >= 45  # power >= 90% at 5% noise, k = 10


def test_lower_is_better_direction():
    rng = np.random.default_rng(3)
    ms = [{"name": "us", "better": "lower", "base": noisy(rng, 10, 20, 0.02), "new": noisy(rng, 10, 24, 0.02)}]
    r = ab_stats.analyse(ms)[0]
    assert r["verdict"] == "regressed" and r["ratio"] == pytest.approx(1.2, rel=0.05)
    assert r["improvement"] < 0 and r["stars"] == "***"
    lo, hi = r["ci95"]
    assert lo < r["ratio"] < hi and lo > 1.1


def test_improvement_is_not_a_regression():
    rng = np.random.default_rng(4)
    ms = [{"name": "rps", "better": "higher", "base": noisy(rng, 10, 1000, 0.02), "new": noisy(rng, 10, 1200, 0.02)}]
    assert ab_stats.analyse(ms)[0]["verdict"] == "improved"


def test_significant_but_small_effect_is_no_evidence():
    rng = np.random.default_rng(5)
    ms = [{"name": "rps", "better": "higher", "base": noisy(rng, 30, 1000, 0.005), "new": noisy(rng, 30, 980, 0.005)}]
    r = ab_stats.analyse(ms, min_effect=0.05)[0]
    assert r["p_holm"] < 0.001 and r["verdict"] == "no evidence"


def test_nulls_are_rarely_flagged_family_wise():
    """A/A on synthetic noise with 7 metrics: with Holm, the share of runs flagging ANY metric
    stays near alpha (here <= 2 x alpha over 300 runs), without it it would be ~7 x alpha."""
    rng = np.random.default_rng(11)
    runs, any_flag, any_raw = 300, 0, 0
    for _ in range(runs):
        ms = [{"name": f"m{i}", "better": "higher", "base": noisy(rng, 8, 100, 0.1), "new": noisy(rng, 8, 100, 0.1)}
              for i in range(7)]
        r = ab_stats.analyse(ms, alpha=0.05, min_effect=0.0, bootstrap=50)
        any_flag += any(x["p_holm"] < 0.05 for x in r)
        any_raw += any(x["p"] < 0.05 for x in r)
    assert any_flag / runs <= 0.10
    assert any_raw > any_flag  # the correction is doing something


def test_heavy_tailed_outliers_do_not_flag_a_null():
    """A stalled sample (a neighbour stole the CPU) on one side: medians and ranks shrug it off."""
    rng = np.random.default_rng(12)
    base = noisy(rng, 10, 1000, 0.03)
    new = noisy(rng, 10, 1000, 0.03)
    new[3] = 300.0
    r = ab_stats.analyse([{"name": "rps", "better": "higher", "base": base, "new": new}])[0]
    assert r["verdict"] == "no evidence"
    assert 0.95 < r["ratio"] < 1.05


def test_too_few_samples_is_not_measured():
    r = ab_stats.analyse([{"name": "x", "better": "higher", "base": [1.0], "new": [2.0, 3.0]}])[0]
    assert r["verdict"] == "not measured" and r["p"] is None and r["reason"]


def test_min_samples_for_the_gate():
    # 7 metrics at alpha 0.01: 2/C(14,7) = 0.00058 < 0.01/7 = 0.0014, 2/C(12,6) = 0.0022 is not
    assert ab_stats.min_samples(7, 0.01) == 7
    assert ab_stats.min_samples(1, 0.05) == 4


def instr(base, new, better="lower"):
    return {"name": "rr_primary_instructions", "better": better, "rule": "separation", "base": base, "new": new}


def test_separation_regressed_only_when_every_new_sample_is_3_percent_worse():
    """Fixed inputs, instructions per connection (lower is better), k = 3 per side."""
    base = [4350.0, 4380.0, 4400.0]
    worse = ab_stats.analyse([instr(base, [4532.0, 4600.0, 4700.0])])[0]  # 4532 = 4400 x 1.03
    assert worse["verdict"] == "regressed" and worse["separation"] == pytest.approx(0.03)
    assert worse["p_holm"] is None and worse["stars"] == "" and worse["rule"] == "separation"
    just_short = ab_stats.analyse([instr(base, [4531.0, 4600.0, 4700.0])])[0]
    assert just_short["verdict"] == "no evidence" and 0 < just_short["separation"] < 0.03
    # medians 10 % apart, but one new sample inside the old range: the ranges overlap
    overlap = ab_stats.analyse([instr(base, [4390.0, 4840.0, 4900.0])])[0]
    assert overlap["verdict"] == "no evidence" and overlap["separation"] == 0.0
    assert overlap["ratio"] == pytest.approx(4840 / 4380)


def test_separation_improved_is_the_mirror_and_follows_the_direction():
    before = [5392.0, 5398.0, 5410.0]
    after = [4376.0, 4387.0, 4390.0]  # the rr-trim step: -19 %
    r = ab_stats.analyse([instr(before, after)])[0]
    assert r["verdict"] == "improved" and r["separation"] == pytest.approx(-(5392 / 4390 - 1))
    # higher is better: new all below old by >= 3 % is a regression
    r = ab_stats.analyse([instr([100.0, 101.0, 102.0], [95.0, 96.0, 97.0], better="higher")])[0]
    assert r["verdict"] == "regressed" and r["separation"] == pytest.approx(100 / 97 - 1)
    r = ab_stats.analyse([instr([100.0, 101.0, 102.0], [106.0, 107.0, 108.0], better="higher")])[0]
    assert r["verdict"] == "improved"
    # identical samples (an A/A run of a count that did not move)
    assert ab_stats.analyse([instr(before, list(before))])[0]["verdict"] == "no evidence"


def test_separation_metrics_stay_out_of_the_holm_family():
    """Adding a deterministic metric must not change the others' Holm correction."""
    rng = np.random.default_rng(9)
    stat = [{"name": f"m{i}", "better": "lower", "base": noisy(rng, 8, 10), "new": noisy(rng, 8, 11)} for i in range(3)]
    alone = ab_stats.analyse(stat, bootstrap=50)
    mixed = ab_stats.analyse(stat + [instr([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])], bootstrap=50)
    assert [r["p_holm"] for r in alone] == [r["p_holm"] for r in mixed[:3]]
    assert mixed[3]["p_holm"] is None and mixed[3]["p"] is not None and mixed[3]["verdict"] == "regressed"
    assert ab_stats.analyse([instr([1.0], [])])[0]["verdict"] == "not measured"
