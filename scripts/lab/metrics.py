"""Metric math of the strategy lab, kept free of I/O so pytest checks it on fixed inputs."""
import math


def jain(xs):
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1.0 = equal, 1/n = one takes all.
    None when there is nothing to compare (no workers or no load at all)."""
    xs = [float(x) for x in xs]
    if not xs:
        return None
    sq = sum(x * x for x in xs)
    if sq == 0:
        return None
    return sum(xs) ** 2 / (len(xs) * sq)


def max_min(xs):
    """Largest over smallest share; inf when some worker got nothing while another got some
    (fairness() writes that as null with a reason: results are strict JSON)."""
    if not xs or max(xs) == 0:
        return None
    lo = min(xs)
    return math.inf if lo == 0 else max(xs) / lo


def top_share(xs):
    total = sum(xs)
    return None if not xs or total == 0 else max(xs) / total


def fairness(xs):
    mm = max_min(xs)
    out = {"per_worker": list(xs), "jain": jain(xs), "max_min": mm, "top_share": top_share(xs)}
    if mm is not None and math.isinf(mm):
        out["max_min"] = None
        out["max_min_reason"] = "a worker served nothing while another served some (unbounded)"
    return out


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a list; None when empty."""
    if not values:
        return None
    s = sorted(values)
    if q <= 0:
        return s[0]
    rank = math.ceil(q / 100.0 * len(s))
    return s[min(len(s), max(1, rank)) - 1]


def fd_delta(idle, samples):
    """Peak minus idle open fds of one process from the samples taken under load."""
    if idle is None or not samples:
        return None
    return max(samples) - idle


def per_connection(delta, connections):
    if delta is None or not connections:
        return None
    return delta / connections


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def per_1k(seconds, requests):
    if seconds is None or not requests:
        return None
    return seconds * 1000.0 / requests


def diff_counts(after, before, key):
    """Per-worker delta of a counter between two snapshots {pid: stats}; missing = 0."""
    return {pid: after.get(pid, {}).get(key, 0) - before.get(pid, {}).get(key, 0) for pid in after}
