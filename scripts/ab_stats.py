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


def min_samples(metrics, alpha):
    """Smallest k per side for which a complete separation can pass Holm at alpha with this many
    metrics (exact two-sided U: p_min = 2 / C(2k, k))."""
    k = 2
    while 2.0 / math.comb(2 * k, k) >= alpha / max(1, metrics):
        k += 1
    return k


def analyse(metrics, alpha=0.05, min_effect=0.05, seed=1, bootstrap=4000):
    """metrics: list of {"name", "better", "base": [...], "new": [...], ...}. Returns copies with
    ratio, ci95, p, p_holm, stars, improvement and verdict filled in (strict-JSON-safe)."""
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
            r["reason"] = f"too few samples (base {len(base)}, new {len(new)})"
        out.append(r)
    for r, p in zip(out, holm([r["p"] for r in out])):
        r["p_holm"] = p
        r["stars"] = stars(p)
        r["improvement"] = improvement(r["ratio"], r["better"]) if r["ratio"] else None
        r["verdict"] = verdict(r["ratio"], p, r["better"], alpha, min_effect)
    return out
