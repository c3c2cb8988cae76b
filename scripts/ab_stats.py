"""The statistics of `make bench-compare` / `make bench-ci`, free of I/O so pytest checks them on
synthetic samples (scripts/tests/test_ab_stats.py).

Per metric, from k samples of the old side (A) and k of the new side (B), taken interleaved:
- ratio: median(B) / median(A), the effect size (robust to the odd stalled sample);
- ci95: percentile bootstrap of that ratio (each side resampled on its own, fixed seed);
- p: two-sided Mann-Whitney U (no normality assumed; exact for small samples without ties);
- p_holm: Holm's step-down correction over every metric of the run, so the chance that ANY
  metric of an unchanged revision is flagged stays at alpha (family-wise), not alpha per metric;
- verdict: "regressed" / "improved" only when p_holm < alpha AND the effect, in the metric's
  bad / good direction, is at least min_effect; otherwise "no evidence".
Effect in the bad direction: 1 - ratio for a higher-is-better metric (req/s), ratio - 1 for a
lower-is-better one (µs per round trip).

Deterministic metrics (rule "separation": a count that load barely moves, such as callgrind's
instructions per connection) are measured with few samples, with which Mann-Whitney can never
reach alpha (k = 3 per side: the smallest two-sided p is 2 / C(6, 3) = 0.1). They get their own
verdict and stay out of the Holm family (adding them would only cost the others power):
"regressed" when every new sample is worse than every old one by at least min_separation,
"improved" when every new sample is better than every old one by at least that, else "no
evidence". "By s" is the bad_effect scale: for a lower-is-better count, min(new) >= max(old) x
(1 + s) regresses and min(old) >= max(new) x (1 + s) improves. Their p is reported, uncorrected.
"""
import math

import numpy as np
from scipy import stats as sps


def median_ratio(base, new):
    mb = float(np.median(base))
    return None if mb == 0 else float(np.median(new)) / mb


def bootstrap_ci(base, new, level=0.95, n=4000, seed=1):
    """Percentile bootstrap CI of median(new)/median(base); None when a median can be 0."""
    rng = np.random.default_rng(seed)
    a = np.asarray(base, dtype=float)
    b = np.asarray(new, dtype=float)
    ma = np.median(rng.choice(a, size=(n, a.size), replace=True), axis=1)
    mb = np.median(rng.choice(b, size=(n, b.size), replace=True), axis=1)
    if np.any(ma == 0):
        return None
    r = mb / ma
    lo, hi = np.quantile(r, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def mann_whitney_p(base, new):
    """Two-sided Mann-Whitney U p-value; 1.0 when both samples are constant and equal."""
    a = np.asarray(base, dtype=float)
    b = np.asarray(new, dtype=float)
    if np.all(a == a[0]) and np.all(b == a[0]):
        return 1.0
    return float(sps.mannwhitneyu(a, b, alternative="two-sided", method="auto").pvalue)


def holm(pvalues):
    """Holm-Bonferroni adjusted p-values (same order as given); None entries stay None."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    adjusted = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def bad_effect(ratio, better):
    """How much worse new is than old, as a fraction (negative = better)."""
    return 1.0 - ratio if better == "higher" else ratio - 1.0


def improvement(ratio, better):
    """Node compare.R's "improvement": positive = new is better, as a fraction."""
    return ratio - 1.0 if better == "higher" else 1.0 / ratio - 1.0


def stars(p):
    if p is None:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def verdict(ratio, p_adjusted, better, alpha, min_effect):
    if ratio is None or p_adjusted is None:
        return "not measured"
    if p_adjusted >= alpha:
        return "no evidence"
    worse = bad_effect(ratio, better)
    if worse >= min_effect:
        return "regressed"
    if -worse >= min_effect:
        return "improved"
    return "no evidence"


def separation(base, new, better):
    """How far apart the two sides' ranges are: > 0 when every new sample is worse than every old
    one (by that fraction, min(worse side) / max(better side) - 1), < 0 when every new sample is
    better (minus that fraction), 0 when the ranges overlap or touch."""
    lo_side, hi_side = (base, new) if better == "lower" else (new, base)  # hi_side worse when new is worse
    worse = min(hi_side) / max(lo_side) - 1.0 if max(lo_side) > 0 else None
    better_by = min(lo_side) / max(hi_side) - 1.0 if max(hi_side) > 0 else None
    if worse is not None and worse > 0:
        return worse
    if better_by is not None and better_by > 0:
        return -better_by
    return 0.0


def separation_verdict(gap, min_separation):
    if gap is None:
        return "not measured"
    if gap >= min_separation:
        return "regressed"
    if -gap >= min_separation:
        return "improved"
    return "no evidence"


def min_samples(metrics, alpha):
    """Smallest k per side for which a complete separation can pass Holm at alpha with this many
    metrics (exact two-sided U: p_min = 2 / C(2k, k))."""
    k = 2
    while 2.0 / math.comb(2 * k, k) >= alpha / max(1, metrics):
        k += 1
    return k


def analyse(metrics, alpha=0.05, min_effect=0.05, seed=1, bootstrap=4000, min_separation=0.03):
    """metrics: list of {"name", "better", "base": [...], "new": [...], "rule"?, "reason"?, ...}.
    Returns copies with ratio, ci95, p, p_holm, stars, improvement and verdict filled in
    (strict-JSON-safe); rule "separation" metrics also get "separation" and skip Holm. A given
    "reason" (why a metric was not measured) is kept."""
    out = []
    for m in metrics:
        r = dict(m)
        base, new = list(m.get("base") or []), list(m.get("new") or [])
        measurable = len(base) >= 2 and len(new) >= 2
        r["base_median"] = float(np.median(base)) if base else None
        r["new_median"] = float(np.median(new)) if new else None
        r["ratio"] = median_ratio(base, new) if measurable else None
        r["ci95"] = bootstrap_ci(base, new, n=bootstrap, seed=seed) if measurable and r["ratio"] is not None else None
        r["p"] = mann_whitney_p(base, new) if measurable else None
        if not measurable:
            r.setdefault("reason", f"too few samples (base {len(base)}, new {len(new)})")
        r["rule"] = m.get("rule", "mann-whitney-holm")
        if r["rule"] == "separation":
            r["separation"] = separation(base, new, m["better"]) if measurable else None
        out.append(r)
    family = [r["p"] if r["rule"] != "separation" else None for r in out]
    for r, p in zip(out, holm(family)):
        r["p_holm"] = p
        r["stars"] = stars(p)
        r["improvement"] = improvement(r["ratio"], r["better"]) if r["ratio"] else None
        if r["rule"] == "separation":
            r["min_separation"] = min_separation
            r["verdict"] = separation_verdict(r["separation"], min_separation)
        else:
            r["verdict"] = verdict(r["ratio"], p, r["better"], alpha, min_effect)
    return out
