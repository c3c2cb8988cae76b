#!/usr/bin/python3
"""`make bench-compare BASE=<rev> [NEW=<rev>|worktree]` and `make bench-ci`: is NEW slower than BASE?

Each side is built on its own: a revision is exported with `git archive` into
.bench-compare/src-<sha12>/ (NEW=worktree uses this checkout as it is, uncommitted changes
included) and built with CMake (RelWithDebInfo, ccache) into .bench-compare/build-<sha12>/
(the worktree side reuses ./build when that is a plain RelWithDebInfo build, as after
`make test`; otherwise .bench-compare/build-worktree/). `git archive` rather than `git worktree
add`: same isolation, and nothing is registered in the repository's metadata.
The measuring harness (bench/bench_cluster.py, scripts/lab/cell.py, Node twins) is this
checkout's for both sides, so only the binaries differ. Then the benchmark set runs as A/B pairs
in interleaved ABBA order (round 0: A B, round 1: B A, ...), so a slow minute on the shared
machine hurts both sides alike. k samples per side: --samples, or sized to --budget.

Benchmark set (--set, comma-separated):
  ipc  bench_ipc BM_IpcPingPong (plain message round trip, µs) and BM_IpcHandlePassing
       (round trip carrying a TCP handle over sendmsg, µs)
  ipc-handle  only BM_IpcHandlePassing
       (an IPC sample is one 2 s run of the benchmark, or, in the ci and short profiles, the
       median of five 0.1 s repetitions: see PROFILES)
  big  bench_ipc BM_Ipc1MiB (1 MiB string message round trip, ms, wall and the parent's CPU) and
       bench_spawn spawn_true_1gib (spawn of /bin/true from a parent with 1 GiB resident, µs)
  rr   bench/bench_cluster.py, C++ primary + 2 C++ workers, Connection: close: connections/s
       and the primary's CPU ms per 1,000 connections; in the default and ci profiles also the
       hand-off's CPU per connection over the bare C pair's (bench/rr_limits.py)
  lab  scripts/lab/cell.py, 2 workers, close load: rr and reuseport (native app) req/s, and
       node-rr (Node's own cluster; a control that does not run uvcluster code, not gated)
  instr  bench/rr_instructions.py: the rr primary's user-space instructions per connection under
       valgrind's callgrind (rr_primary_instructions), and over the bare C primary's of the same
       side (rr_primary_instructions_vs_bare, not gated; raw-k1 measured once per side, when the
       revision has raw_rr); in the same invocation its 2 hello-native workers' together (case
       rr-workers, the primary native: rr_workers_instructions, which holds the workers' side of
       the hand-off). Load barely moves the counts: 3 samples per side (in the first rounds),
       judged by separation (below). Without valgrind the unit is skipped with a message.

Per metric (scripts/ab_stats.py): median ratio new/old, 95% bootstrap CI, two-sided
Mann-Whitney U p-value, Holm correction across all metrics of the run, verdict improved /
regressed / no evidence (needs p_holm < --alpha AND an effect >= --min-effect). The instr
metrics are deterministic and few: outside Holm, regressed (improved) when every new sample is
worse (better) than every old one by at least --min-separation (3 %).
Output: results/compare/<time>-<base>-<new>.json (strict JSON, results/schema/compare.schema.json),
a markdown table (printed, and .md beside the JSON) in the style of Node's benchmark/compare.R,
a box plot (.png), and one line appended to results/history.jsonl.

Exit status: 0 nothing gated regressed, 1 a gated metric regressed, 2 bad usage (unknown
revision, unknown set, missing baseline file), a side that does not build, or an internal error (never 1).
(`make` turns any non-zero status of a recipe into its own status 2; call this script directly
when the 1/2 distinction matters.)
"""
import argparse
import fcntl
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import ab_stats  # noqa: E402
import history  # noqa: E402
import strict_json  # noqa: E402

EXIT_OK, EXIT_REGRESSED, EXIT_USAGE = 0, 1, 2
CACHE = os.path.join(ROOT, ".bench-compare")
CI_BASELINE = os.path.join(ROOT, "results", "ci-baseline")
TARGETS = ["uvcluster_cli", "bench_ipc", "bench_spawn", "hello_native", "lab_proxy", "helper_cluster_http_worker"]
OPTIONAL_TARGETS = ["limit_raw_rr"]  # built when the revision has them (the rr-vs-bare metrics need raw_rr)

# Profiles: which units, wrk seconds per rr/lab sample, default k (None = sized to the budget)
# and the budget (s) of sampling the sizing aims at (builds excluded); max_s is a hard stop for
# the whole run, builds included.
# ipc_sample: (seconds per repetition, repetitions) of one bench_ipc sample, whose value is the
# median of the repetitions; None = one run of the benchmark's own 2 s. The noise on a shared
# machine is slow (seconds), so a 2 s run averages little of it away: five 0.1 s repetitions cost
# ~1 s instead of ~4 s with about the same spread, i.e. ~3x the samples in the same time
# (README, "Proving the detector"). Used only when both sides' bench_ipc honours
# UVC_BENCH_MIN_TIME; otherwise both sides take the 2 s sample.
# rr_limits: whether an rr sample also runs the bare pair (the *_vs_bare metrics, ~2 more wrk runs).
# instr_samples: samples per side of the instr unit (callgrind; deterministic metrics, judged by
# separation: see scripts/ab_stats.py), taken in the first rounds; instr_duration: its wrk seconds.
PROFILES = {
    "default": {"set": "ipc,rr,lab,big,instr", "duration": 3, "samples": None, "budget": 600, "max_s": None,
                "max_k": 30, "ipc_sample": None, "rr_limits": True, "instr_samples": 3, "instr_duration": 2},
    "ci": {"set": "ipc,rr,lab,big,instr", "duration": 2, "samples": 8, "budget": 480, "max_s": 690,
           "max_k": 30, "ipc_sample": (0.1, 5), "rr_limits": True, "instr_samples": 3, "instr_duration": 2},
    "short": {"set": "ipc-handle,rr", "duration": 1, "samples": None, "budget": 150, "max_s": None,
              "max_k": 40, "ipc_sample": (0.1, 5), "rr_limits": False, "instr_samples": 3, "instr_duration": 2},
}
LAB_CELLS = [("rr", "native", True), ("reuseport", "native", True), ("node-rr", "node", False)]


class Usage(Exception):
    pass


# ------------------------------------------------------------------ revisions, sources, builds

def git(*args, cwd=ROOT, check=True):
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise Usage(f"git {' '.join(args)}: {p.stderr.strip()}")
    return p


def resolve(spec):
    """spec -> {"spec", "rev", "dirty"}; Usage for a revision this clone does not have."""
    if spec == "worktree":
        rev = git("rev-parse", "HEAD").stdout.strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"spec": spec, "rev": rev, "dirty": dirty}
    p = git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", check=False)
    if p.returncode != 0:
        shallow = git("rev-parse", "--is-shallow-repository", check=False).stdout.strip() == "true"
        hint = " (this clone is shallow: git fetch --unshallow)" if shallow else ""
        raise Usage(f"unknown revision {spec!r}: not a commit in this repository{hint}")
    return {"spec": spec, "rev": p.stdout.strip(), "dirty": False}


def source_dir(side):
    if side["spec"] == "worktree":
        return ROOT
    src = os.path.join(CACHE, f"src-{side['rev'][:12]}")
    if not os.path.isdir(src):
        tmp = src + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        archive = subprocess.Popen(["git", "archive", side["rev"]], cwd=ROOT, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", tmp], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise Usage(f"git archive {side['rev']} failed")
        os.replace(tmp, src)
    return src


def plain_release_build(path):
    """True for a RelWithDebInfo build folder without sanitizers (what each side is built as)."""
    try:
        with open(os.path.join(path, "CMakeCache.txt")) as f:
            cache = f.read()
    except OSError:
        return False
    return ("CMAKE_BUILD_TYPE:STRING=RelWithDebInfo\n" in cache
            and re.search(r"^UVCLUSTER_SANITIZE:STRING=$", cache, re.M) is not None)


def build(side, log):
    """Configures and builds a side; returns its build folder. Usage when it does not build."""
    src = source_dir(side)
    key = "worktree" if side["spec"] == "worktree" else side["rev"][:12]
    out = os.path.join(CACHE, f"build-{key}")
    if side["spec"] == "worktree" and plain_release_build(os.path.join(ROOT, "build")):
        out = os.path.join(ROOT, "build")  # `make test` just built it with the same settings
    # ccache: identical sources in different folders hit the same cache entries.
    env = dict(os.environ, CCACHE_BASEDIR=src, CCACHE_NOHASHDIR="true")
    steps = [["cmake", "--build", out, "-j", str(os.cpu_count() or 2), "--target", *TARGETS]]
    if not os.path.exists(os.path.join(out, "CMakeCache.txt")):  # configure once; builds re-check
        steps.insert(0, ["cmake", "-S", src, "-B", out, "-DCMAKE_BUILD_TYPE=RelWithDebInfo"])
    # One builder per folder: a second bench-compare must not relink binaries another is running.
    lock = open(os.path.join(CACHE, ("checkout-" if out.startswith(ROOT + "/build") else "")
                             + os.path.basename(out) + ".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    for cmd in steps:
        p = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if p.returncode != 0 and "--target" in cmd:  # an older tree names its targets otherwise
            p = subprocess.run(cmd[:cmd.index("--target")], env=env, stdout=log, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            raise Usage(f"{side['spec']} ({side['rev'][:12]}) does not build; see {log.name}")
    for target in OPTIONAL_TARGETS:  # an older revision without it: its metrics are just missing
        subprocess.run(["cmake", "--build", out, "--target", target], env=env, stdout=log, stderr=subprocess.STDOUT)
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    side["build"] = out
    return out


# ------------------------------------------------------------------ the benchmark units

def run_json_lines(cmd, env, timeout):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    docs = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            docs.append(strict_json.json.loads(line))
    return p.returncode, docs, p.stderr


def unit_ipc(build_dir, env, opts, pattern="BM_Ipc(PingPong|HandlePassing)/"):
    exe = os.path.join(build_dir, "bench", "bench_ipc")
    cmd = [exe, "--benchmark_format=json", f"--benchmark_filter={pattern}"]
    if opts["ipc_sample"]:  # short repetitions, their median is the sample (see PROFILES)
        seconds, reps = opts["ipc_sample"]
        env = dict(env, UVC_BENCH_MIN_TIME=str(seconds))
        cmd.append(f"--benchmark_repetitions={reps}")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        return {}
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}
    runs = {}  # metric -> [(wall µs, the parent's CPU µs) per round trip, one per repetition]
    for b in strict_json.json.loads(p.stdout)["benchmarks"]:
        if b.get("error_occurred") or b.get("run_type", "iteration") != "iteration":
            continue
        unit = scale[b.get("time_unit", "ns")]
        for prefix, metric in (("BM_IpcPingPong", "ipc_pingpong"), ("BM_IpcHandlePassing", "ipc_handle_pingpong")):
            if b["name"].startswith(prefix):
                runs.setdefault(metric, []).append((b["real_time"] * unit, b["cpu_time"] * unit))
    out = {}
    for metric, xs in runs.items():
        out[f"{metric}_us"] = statistics.median(x[0] for x in xs)
        out[f"{metric}_cpu_us"] = statistics.median(x[1] for x in xs)
    return out


def unit_big(build_dir, env, opts):
    """bench_ipc BM_Ipc1MiB (a 1 MiB string message there and back: wall and the parent's CPU)
    and bench_spawn spawn_true_1gib (spawn of /bin/true from a parent with 1 GiB resident)."""
    out = {}
    for exe, pattern, min_time in (("bench_ipc", "^BM_Ipc1MiB/", None), ("bench_spawn", "^spawn_true_1gib/", 0.5)):
        cmd = [os.path.join(build_dir, "bench", exe), "--benchmark_format=json", f"--benchmark_filter={pattern}"]
        if min_time:
            cmd.append(f"--benchmark_min_time={min_time}")
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            continue
        scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}  # -> µs
        for b in strict_json.json.loads(p.stdout)["benchmarks"]:
            if b.get("error_occurred"):
                continue
            us, cpu_us = (b[k] * scale[b.get("time_unit", "ns")] for k in ("real_time", "cpu_time"))
            if exe == "bench_ipc":
                out["ipc_1mib_ms"], out["ipc_1mib_cpu_ms"] = us / 1e3, cpu_us / 1e3
            else:
                out["spawn_true_1gib_us"] = us
    return out


def honours_ipc_min_time(build_dir):
    """Whether this build's bench_ipc reads UVC_BENCH_MIN_TIME (older revisions run 2 s always)."""
    try:
        with open(os.path.join(build_dir, "bench", "bench_ipc"), "rb") as f:
            return b"UVC_BENCH_MIN_TIME" in f.read()
    except OSError:
        return False


def unit_rr(build_dir, env, opts):
    duration = opts["duration"]
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_cluster.py"), "--build", build_dir,
           "--cases", "cpp-primary+cpp-workers", "--duration", str(duration)]
    rc, docs, _ = run_json_lines(cmd, env, timeout=duration + 90)
    rec = next((d for d in docs if d.get("case") == "cpp-primary+cpp-workers"), None)
    if rc != 0 or not rec or rec.get("non2xx") or not rec.get("requests"):
        return {}
    out = {"rr_conn_per_s": rec["connections_per_s"]}
    if rec.get("primary_cpu_s_per_1k_conn") is not None:
        out["rr_primary_cpu_ms_per_1k"] = rec["primary_cpu_s_per_1k_conn"] * 1000.0
    if opts["rr_limits"]:
        out.update(unit_rr_limits(build_dir, env, duration))
    return out


def unit_rr_limits(build_dir, env, duration):
    """The rr hand-off's CPU per connection as a multiple of the bare pair's (bench/rr_limits.py,
    raw-k1 and rr back to back in one sample: the ratio cancels most of the machine's load)."""
    script = os.path.join(ROOT, "bench", "rr_limits.py")
    if not os.path.exists(os.path.join(build_dir, "bench", "limits", "raw_rr")) or not os.path.exists(script):
        return {}  # a base revision from before the bare pair
    cmd = [sys.executable, script, "--build", build_dir, "--cases", "raw-k1,rr", "--rounds", "1",
           "--duration", str(duration), "--strace-duration", "0"]
    rc, docs, _ = run_json_lines(cmd, env, timeout=2 * duration + 120)
    by = {d.get("case"): d for d in docs if d.get("round") == 0 and "error" not in d}
    bare, rr = by.get("raw-k1", {}), by.get("rr", {})
    out = {}
    for metric, key in (("rr_primary_cpu_vs_bare", "primary_cpu_us_per_conn"),
                        ("rr_workers_cpu_vs_bare", "workers_cpu_us_per_conn")):
        if rc == 0 and bare.get(key) and rr.get(key) is not None:
            out[metric] = rr[key] / bare[key]
    return out


def unit_lab(build_dir, env, opts):
    duration = opts["duration"]
    out = {}
    for strategy, app, _ in LAB_CELLS:
        cmd = [sys.executable, os.path.join(ROOT, "scripts", "lab", "cell.py"), "--build", build_dir,
               "--strategy", strategy, "--app", app, "--workers", "2", "--load", "close",
               "--duration", str(duration), "--herd-duration", "0", "--json"]
        rc, docs, _ = run_json_lines(cmd, env, timeout=duration + 120)
        rec = docs[-1] if docs else {}
        rps = (rec.get("throughput") or {}).get("rps")
        if rc == 0 and rps and not rec.get("error") and rec.get("available", True):
            out[f"lab_{strategy}_close_2w_rps"] = rps
    return out


INSTR_TOOLS = ["valgrind", "callgrind_control", "callgrind_annotate"]


def instr_skip_reason():
    """Why the instr unit cannot run here (None when it can): it needs valgrind's callgrind."""
    missing = [t for t in INSTR_TOOLS if shutil.which(t) is None]
    return (f"skipped: {', '.join(missing)} not installed (valgrind; scripts/deps.sh installs it)"
            if missing else None)


def unit_instr(build_dir, env, opts):
    """User-space instructions per connection under callgrind (bench/rr_instructions.py, one
    invocation): the rr primary's (case rr), over the bare C primary's (case raw-k1, measured once
    per build: its count repeats within 0.1 %), and the 2 hello-native workers' together (case
    rr-workers: the workers' side of the hand-off plus the HTTP serving, which a hand-off change
    does not move). Nearly load-independent, so a few samples per side and the separation verdict
    (scripts/ab_stats.py) instead of Mann-Whitney."""
    script = os.path.join(ROOT, "bench", "rr_instructions.py")
    bare = opts.setdefault("bare_instructions", {})
    cases = ["rr", "rr-workers"]
    if build_dir not in bare and os.path.exists(os.path.join(build_dir, "bench", "limits", "raw_rr")):
        cases.insert(0, "raw-k1")  # a revision without raw_rr just has no ratio
    cmd = [sys.executable, script, "--build", build_dir, "--cases", ",".join(cases),
           "--duration", str(opts["instr_duration"])]
    _, docs, _ = run_json_lines(cmd, env, timeout=len(cases) * (opts["instr_duration"] + 90))
    # A case's line is printed once it is done: a later case's failure does not void it.
    by = {d.get("case"): d.get("primary_instructions_per_conn") or d.get("workers_instructions_per_conn")
          for d in docs}
    if by.get("raw-k1"):
        bare[build_dir] = by["raw-k1"]
    out = {}
    if by.get("rr"):
        out["rr_primary_instructions"] = float(by["rr"])
        if bare.get(build_dir):
            out["rr_primary_instructions_vs_bare"] = by["rr"] / bare[build_dir]
    if by.get("rr-workers"):
        out["rr_workers_instructions"] = float(by["rr-workers"])
    return out


UNITS = {"ipc": unit_ipc, "rr": unit_rr, "lab": unit_lab, "big": unit_big, "instr": unit_instr,
         "ipc-handle": lambda b, e, o: unit_ipc(b, e, o, "BM_IpcHandlePassing/")}
# name -> (unit label, better, tracked); DETERMINISTIC: the metrics judged by separation
# (scripts/ab_stats.py) from the profile's instr_samples per side, outside the Holm family.
METRICS = {
    "ipc_pingpong_us": ("µs/round trip", "lower", True),
    "ipc_handle_pingpong_us": ("µs/round trip", "lower", True),
    # CPU time of the parent per round trip: scheduling noise on a shared machine moves wall
    # time by tens of percent, CPU time far less (README, "Proving the detector").
    "ipc_pingpong_cpu_us": ("CPU µs/round trip", "lower", True),
    "ipc_handle_pingpong_cpu_us": ("CPU µs/round trip", "lower", True),
    "ipc_1mib_ms": ("ms/round trip", "lower", True),
    "ipc_1mib_cpu_ms": ("CPU ms/round trip", "lower", True),
    "spawn_true_1gib_us": ("µs/spawn", "lower", True),
    "rr_conn_per_s": ("conn/s", "higher", True),
    "rr_primary_cpu_ms_per_1k": ("CPU ms/1k conn", "lower", True),
    # issue 13 §1: the hand-off's CPU per connection over the bare pair's, primary and workers.
    "rr_primary_cpu_vs_bare": ("× bare primary", "lower", True),
    "rr_workers_cpu_vs_bare": ("× bare workers", "lower", True),
    **{f"lab_{s}_close_2w_rps": ("req/s", "higher", tracked) for s, _, tracked in LAB_CELLS},
    # issue 13 §1: the rr primary's user-space instructions per connection (callgrind), and over
    # the bare C primary's of the same side (not gated: a change of raw_rr.c would move it).
    "rr_primary_instructions": ("instructions/conn", "lower", True),
    "rr_primary_instructions_vs_bare": ("× bare primary instructions", "lower", False),
    # issue 13 §1: the 2 hello-native workers' user-space instructions per connection (callgrind).
    "rr_workers_instructions": ("instructions/conn", "lower", True),
}
DETERMINISTIC = {"rr_primary_instructions", "rr_primary_instructions_vs_bare", "rr_workers_instructions"}
FEW_SAMPLE_UNITS = {"instr"}  # the units of the DETERMINISTIC metrics


def unit_metrics(units, rr_limits=True):
    names = []
    for u in units:
        if u == "ipc":
            names += ["ipc_pingpong_us", "ipc_handle_pingpong_us", "ipc_pingpong_cpu_us",
                      "ipc_handle_pingpong_cpu_us"]
        elif u == "ipc-handle":
            names += ["ipc_handle_pingpong_us", "ipc_handle_pingpong_cpu_us"]
        elif u == "rr":
            names += ["rr_conn_per_s", "rr_primary_cpu_ms_per_1k"]
            if rr_limits:
                names += ["rr_primary_cpu_vs_bare", "rr_workers_cpu_vs_bare"]
        elif u == "big":
            names += ["ipc_1mib_ms", "ipc_1mib_cpu_ms", "spawn_true_1gib_us"]
        elif u == "lab":
            names += [f"lab_{s}_close_2w_rps" for s, _, _ in LAB_CELLS]
        elif u == "instr":
            names += [m for m in METRICS if m in DETERMINISTIC]  # its metrics, in METRICS' order
    return names


def skipped_units(units):
    """{unit: why it cannot run on this machine}: a missing tool skips its metrics, it is no failure."""
    reason = instr_skip_reason() if "instr" in units else None
    return {"instr": reason} if reason else {}


def metric_records(names, data, skipped):
    """The per-metric input of ab_stats.analyse: samples, direction, gating, rule, skip reason."""
    skipped_metrics = {n: reason for u, reason in skipped.items() for n in unit_metrics([u])}
    out = []
    for n in names:
        unit, better, tracked = METRICS[n]
        side = data.get(n, {"A": [], "B": []})
        m = {"name": n, "unit": unit, "better": better, "tracked": tracked, "gated": tracked,
             "base": side["A"], "new": side["B"]}
        if n in DETERMINISTIC:
            m["rule"] = "separation"
        if n in skipped_metrics:
            m["reason"] = skipped_metrics[n]
        out.append(m)
    return out


# ------------------------------------------------------------------ running

def fmt_s(s):
    s = max(0, int(s))
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()

    def show(self, text):
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self):
        if self.tty:
            self.stream.write("\n")


def measure(sides, units, opts, samples, budget, max_s, max_k, started, min_k, progress):
    """Runs the ABBA rounds; returns (samples {metric: {"A": [...], "B": [...]}}, order, rounds).
    The few-sample units (FEW_SAMPLE_UNITS) run in the first opts["instr_samples"] rounds only.
    opts["unit_s"] collects the seconds spent in each unit (both sides, all rounds)."""
    data = {m: {"A": [], "B": []} for m in unit_metrics(units, opts["rr_limits"])}
    few = opts.get("instr_samples", 0)
    unit_s = opts.setdefault("unit_s", {})
    order = []
    k = samples
    round_s = None  # the last round's time in the units every round runs
    few_s = 0.0  # and in the few-sample units
    r = 0
    steps_done = 0

    def steps_of(rounds):
        return sum(2 * (min(rounds, few) if u in FEW_SAMPLE_UNITS else rounds) for u in units)

    while True:
        target = k if k is not None else min_k
        if r >= target:
            break
        next_s = None if round_s is None else round_s + (few_s if r < few else 0.0)
        if max_s is not None and next_s is not None and time.monotonic() - started + next_s > max_s and r >= min_k:
            progress.show(f"bench-compare: stopping after {r} rounds (time limit {max_s} s)")
            break
        t0 = time.monotonic()
        few_s = 0.0
        first, second = ("A", "B") if r % 2 == 0 else ("B", "A")
        order += [first, second]
        for u in units:
            if u in FEW_SAMPLE_UNITS and r >= few:
                continue
            t_unit = time.monotonic()
            for label in (first, second):
                side = sides[label]
                total_steps = steps_of(k or target)
                elapsed = time.monotonic() - started
                per_step = (elapsed - sides["build_s"]) / steps_done if steps_done else None
                left = f", ~{fmt_s(per_step * (total_steps - steps_done))} left" if per_step else ""
                progress.show(f"bench-compare: round {r + 1}/{k or '?'} {u:3} {label}  "
                              f"[{steps_done + 1}/{total_steps}] elapsed {fmt_s(elapsed)}{left}")
                try:
                    measured = UNITS[u](side["build"], side["env"], opts)
                except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
                    measured = {}  # a lost sample, not a verdict: the metric just has fewer
                    progress.show(f"bench-compare: {u} {label} sample lost: {e}")
                for name, v in measured.items():
                    data[name][label].append(v)
                steps_done += 1
            unit_s[u] = round(unit_s.get(u, 0.0) + time.monotonic() - t_unit, 1)
            if u in FEW_SAMPLE_UNITS:
                few_s += time.monotonic() - t_unit
        round_s = time.monotonic() - t0 - few_s
        r += 1
        if k is None:  # size k to the budget from the first round's cost, the few-sample rounds apart
            left_s = budget - (time.monotonic() - started - sides["build_s"]) - max(0, few - r) * few_s
            k = max(min_k, min(max_k, int(left_s / round_s) + 1))  # builds excluded
    progress.done()
    return data, order, r


# ------------------------------------------------------------------ reporting

def pct(x):
    return "" if x is None else f"{x * 100:+.2f} %"


def markdown(result):
    s = result["settings"]
    rows = ["| metric | unit | old median | new median | confidence | improvement | accuracy (95% CI) | p (Holm) | verdict |",
            "|---|---|---:|---:|:---:|---:|---:|---:|---|"]
    for m in result["metrics"]:
        acc = ""
        if m.get("ci95") and m.get("ratio"):
            lo = ab_stats.improvement(m["ci95"][0], m["better"])
            hi = ab_stats.improvement(m["ci95"][1], m["better"])
            lo, hi = min(lo, hi), max(lo, hi)
            acc = f"±{(hi - lo) / 2 * 100:.2f} % [{lo * 100:+.1f}, {hi * 100:+.1f}]"
        gate = "" if m.get("gated") else " (not gated)"
        mark = " †" if m.get("rule") == "separation" else ""
        med = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
        p = "" if m.get("p_holm") is None else f"{m['p_holm']:.3g}"
        verdict = m["verdict"] + (f" ({m['reason']})" if m.get("reason") and m["verdict"] == "not measured" else "")
        rows.append(f"| {m['name']}{mark}{gate} | {m['unit']} | {med(m.get('base_median'))} | "
                    f"{med(m.get('new_median'))} | {m.get('stars', '')} | {pct(m.get('improvement'))} | {acc} | "
                    f"{p} | {verdict} |")
    separated = [m for m in result["metrics"] if m.get("rule") == "separation"]
    n = len(result["metrics"]) - len(separated)
    rows += ["",
             f"{result['samples_per_side']} samples per side, interleaved ABBA; Mann-Whitney U, "
             f"Holm-corrected over {n} metrics (stars: * p<0.05, ** p<0.01, *** p<0.001 after "
             f"correction, so the chance of any false star in an unchanged run is about 5 %, not "
             f"{n} x 5 %). Verdict: p_holm < {s['alpha']} and an effect of at least "
             f"{s['min_effect'] * 100:.0f} %. improvement > 0 means new is better."]
    if separated:
        sep = s.get("separation") or {}
        k = sep.get("samples_per_side", max(len(m["base"]) for m in separated))
        min_sep = separated[0].get("min_separation", sep.get("min_separation", 0.03))
        rows.append(f"† deterministic (user-space instructions under callgrind), {k} samples per side, "
                    f"outside Holm: regressed (improved) when every new sample is worse (better) than every "
                    f"old one by at least {min_sep * 100:.0f} %.")
    return "\n".join(rows)


def box_plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ms = [m for m in result["metrics"] if m["base"] and m["new"] and m.get("base_median")]
    if not ms:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(ms)), 4.5))
    pos, data, colors = [], [], []
    for i, m in enumerate(ms):
        for j, side in enumerate(("base", "new")):
            pos.append(i * 3 + j)
            data.append([v / m["base_median"] for v in m[side]])
            colors.append("#8fb3d9" if side == "base" else "#e8a66f")
    bp = ax.boxplot(data, positions=pos, widths=0.8, patch_artist=True, showfliers=True)
    for patch, c in zip(bp["boxes"], colors):
        patch.set_facecolor(c)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks([i * 3 + 0.5 for i in range(len(ms))])
    ax.set_xticklabels([f"{m['name']}\n{m['verdict']}{' ' + m['stars'] if m.get('stars') else ''}" for m in ms],
                       fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("sample / median of old")
    ax.set_title(f"old {result['base']['rev'][:10]} (blue) vs new {result['new']['rev'][:10]}"
                 f"{' +dirty' if result['new'].get('dirty') else ''} (orange), "
                 f"{result['samples_per_side']} samples each", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ main

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench_compare.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="old revision (A): any git revision; with --ci, results/ci-baseline")
    ap.add_argument("--new", default="worktree", help="new revision (B), or 'worktree' (default)")
    ap.add_argument("--ci", action="store_true",
                    help="the CI gate: --base from results/ci-baseline, --profile ci, --alpha 0.01, "
                         "--min-effect 0.10, only tracked metrics gate")
    ap.add_argument("--profile", choices=sorted(PROFILES), help="default: default (ci with --ci)")
    ap.add_argument("--set", help="comma-separated units: ipc,ipc-handle,rr,lab,big,instr (default: the profile's)")
    ap.add_argument("--samples", type=int, help="k samples per side (default: the profile's, or sized to --budget)")
    ap.add_argument("--budget", type=float, help="seconds of sampling (builds excluded) that k aims at when sized automatically")
    ap.add_argument("--duration", type=int, help="wrk seconds per rr/lab sample (default: the profile's)")
    ap.add_argument("--alpha", type=float, help="family-wise significance level (default 0.05; 0.01 with --ci)")
    ap.add_argument("--min-effect", type=float, help="smallest effect that counts (default 0.05; 0.10 with --ci)")
    ap.add_argument("--min-separation", type=float, default=0.03,
                    help="the deterministic metrics' (instr) verdict: regressed / improved when every new sample "
                         "is worse / better than every old one by at least this fraction (default 0.03)")
    ap.add_argument("--preload-new", help="LD_PRELOAD for the NEW side only (a planted regression, e.g. "
                                          "build/lib/libuvc_delay_shim.so with UVC_DELAY_US set)")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "compare"))
    ap.add_argument("--no-history", action="store_true", help="do not append to results/history.jsonl")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--seed", type=int, default=1, help="bootstrap seed")
    a = ap.parse_args(argv)
    prof = PROFILES[a.profile or ("ci" if a.ci else "default")]
    a.profile = a.profile or ("ci" if a.ci else "default")
    if a.ci and not a.base:
        if not os.path.exists(CI_BASELINE):
            raise Usage(f"no CI baseline: {os.path.relpath(CI_BASELINE, ROOT)} is missing")
        with open(CI_BASELINE) as f:
            revs = [ln.split("#")[0].strip() for ln in f if ln.split("#")[0].strip()]
        if not revs:
            raise Usage(f"{os.path.relpath(CI_BASELINE, ROOT)} names no revision")
        a.base = revs[0]
    if not a.base:
        raise Usage("--base REV is required (make bench-compare BASE=<rev> [NEW=<rev>|worktree])")
    a.units = (a.set or prof["set"]).split(",")
    unknown = [u for u in a.units if u not in UNITS]
    if unknown or not a.units:
        raise Usage(f"unknown benchmark set {','.join(unknown)!r}; choose from {','.join(UNITS)}")
    a.duration = a.duration or prof["duration"]
    a.samples = a.samples or prof["samples"]
    a.budget = a.budget or prof["budget"]
    a.max_s = prof["max_s"]
    a.max_k = prof["max_k"]
    a.ipc_sample = prof["ipc_sample"]
    a.rr_limits = prof["rr_limits"]
    a.instr_samples, a.instr_duration = prof["instr_samples"], prof["instr_duration"]
    a.alpha = a.alpha if a.alpha is not None else (0.01 if a.ci else 0.05)
    a.min_effect = a.min_effect if a.min_effect is not None else (0.10 if a.ci else 0.05)
    if (not 0 < a.alpha < 1 or a.min_effect < 0 or a.min_separation < 0
            or (a.samples is not None and a.samples < 2)):
        raise Usage("need 0 < --alpha < 1, --min-effect >= 0, --min-separation >= 0, --samples >= 2")
    if a.preload_new and not os.path.exists(a.preload_new):
        raise Usage(f"--preload-new: no such file {a.preload_new}")
    return a


def main(argv=None):
    try:
        a = parse_args(argv)
        base, new = resolve(a.base), resolve(a.new)
    except Usage as e:
        print(f"bench-compare: {e}", file=sys.stderr)
        return EXIT_USAGE
    started = time.monotonic()
    os.makedirs(CACHE, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    progress = Progress()
    log_path = os.path.join(CACHE, "build.log")
    with open(log_path, "w") as log:
        try:
            for label, side in (("A", base), ("B", new)):
                if label == "B" and new["spec"] != "worktree" and new["rev"] == base["rev"]:
                    new["build"] = base["build"]  # an A/A run: one build serves both sides
                    continue
                progress.show(f"bench-compare: building {label} = {side['spec']} ({side['rev'][:12]}) ...")
                build(side, log)
        except (Usage, subprocess.CalledProcessError) as e:
            progress.done()
            print(f"bench-compare: {e}", file=sys.stderr)
            return EXIT_USAGE
    env_a = dict(os.environ, UVC_BUILD_DIR=base["build"])
    env_b = dict(os.environ, UVC_BUILD_DIR=new["build"])
    if a.preload_new:
        env_b["LD_PRELOAD"] = os.path.abspath(a.preload_new)
        new["preload"] = os.path.abspath(a.preload_new)
        new["preload_env"] = {k: v for k, v in os.environ.items() if k.startswith("UVC_DELAY_")}
    sides = {"A": dict(base, env=env_a), "B": dict(new, env=env_b), "build_s": time.monotonic() - started}
    short_ipc = a.ipc_sample and all(honours_ipc_min_time(side["build"]) for side in (base, new))
    if a.ipc_sample and not short_ipc:
        progress.show("bench-compare: a side's bench_ipc has no UVC_BENCH_MIN_TIME: both take 2 s IPC samples")
    opts = {"duration": a.duration, "ipc_sample": a.ipc_sample if short_ipc else None, "rr_limits": a.rr_limits,
            "instr_samples": a.instr_samples, "instr_duration": a.instr_duration}
    names = unit_metrics(a.units, a.rr_limits)
    skipped = skipped_units(a.units)
    for u, reason in skipped.items():
        progress.show(f"bench-compare: {u} {reason}: {', '.join(unit_metrics([u]))} not measured (not a failure)")
    statistical = [n for n in names if n not in DETERMINISTIC]
    min_k = ab_stats.min_samples(len(statistical), a.alpha)
    if a.samples is not None and a.samples < min_k:
        print(f"bench-compare: note: with {len(statistical)} metrics at alpha {a.alpha}, {a.samples} samples per "
              f"side can never reach significance; at least {min_k} are needed", file=sys.stderr)
    data, order, rounds = measure(sides, [u for u in a.units if u not in skipped], opts, a.samples, a.budget,
                                  a.max_s, a.max_k, started, min_k, progress)
    metrics = metric_records(names, data, skipped)
    gate = [m["name"] for m in metrics if m["gated"]]
    analysed = ab_stats.analyse(metrics, alpha=a.alpha, min_effect=a.min_effect, seed=a.seed,
                                min_separation=a.min_separation)
    regressed = [m["name"] for m in analysed if m["gated"] and m["verdict"] == "regressed"]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    strip = lambda s: {k: v for k, v in s.items() if k not in ("env", "build")}  # noqa: E731
    result = {
        "schema": 1, "kind": "bench-ci" if a.ci else "bench-compare",
        "base": strip(base), "new": strip(new),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "profile": a.profile,
        "env": history.environment(), "order": order, "samples_per_side": rounds,
        "wall_s": round(time.monotonic() - started, 1), "build_s": round(sides["build_s"], 1),
        "unit_s": opts.get("unit_s", {}),
        "settings": {"alpha": a.alpha, "min_effect": a.min_effect, "correction": "holm",
                     "ci": "percentile bootstrap of the median ratio, 4000 resamples",
                     "test": "Mann-Whitney U, two-sided", "gate": gate,
                     "set": a.units, "duration_s": a.duration,
                     "ipc_sample": ({"seconds": opts["ipc_sample"][0], "repetitions": opts["ipc_sample"][1],
                                     "value": "median of the repetitions"} if opts["ipc_sample"] else None),
                     "separation": {"metrics": [n for n in names if n in DETERMINISTIC],
                                    "samples_per_side": a.instr_samples, "min_separation": a.min_separation,
                                    "rule": "regressed (improved) when every new sample is worse (better) than "
                                            "every old one by at least min_separation; outside Holm"}},
        "metrics": analysed, "regressed": regressed,
        "exit_status": EXIT_REGRESSED if regressed else EXIT_OK,
    }
    stem = os.path.join(a.out, f"{stamp}-{base['rev'][:10]}-{new['rev'][:10]}{'-ci' if a.ci else ''}")
    strict_json.write(stem + ".json", result)
    table = markdown(result)
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    png = None if a.no_plot else box_plot(result, stem + ".png")
    if not a.no_history:
        history.append(history.from_compare(result))
    print(f"\nbench-compare: A = {base['spec']} ({base['rev'][:12]}), B = {new['spec']} ({new['rev'][:12]}"
          f"{', dirty' if new['dirty'] else ''}{', LD_PRELOAD ' + os.path.basename(new['preload']) if new.get('preload') else ''})"
          f", profile {a.profile}, {rounds} samples per side, {fmt_s(result['wall_s'])}\n")
    print(table)
    print(f"\nwrote {os.path.relpath(stem, ROOT)}.json .md{' .png' if png else ''}")
    if regressed:
        print(f"bench-compare: REGRESSED ({len(regressed)}): {', '.join(regressed)}")
    else:
        print("bench-compare: no gated metric regressed")
    return result["exit_status"]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # never let a crash read as exit 1 ("regressed")
        print(f"bench-compare: internal error: {e!r}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
