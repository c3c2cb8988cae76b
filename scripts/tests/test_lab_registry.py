"""The strategy registry (scripts/lab/strategies.py) is the one list of strategies: cell.py,
driver.py, `uvcluster lab`, compare.py's fairness promise and the README all agree with it."""
import os
import re
import subprocess

import pytest

import compare
import driver
import load
import strategies
from strategies import APPS, NAMES, PROMISES, REGISTRY

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("UVC_BUILD_DIR", os.path.join(SRC, "build"))
CLI = os.path.join(BUILD, "bin", "uvcluster")


def test_entries_are_complete():
    assert len(NAMES) == len(set(NAMES)) and NAMES
    for name, s in REGISTRY.items():
        assert s.name == name and callable(s.launch) and s.who_accepts
        assert set(s.apps) <= set(APPS) and s.apps
        assert set(s.rows()) <= set(s.apps)
        assert bool(s.unsupported) == (set(s.apps) != set(APPS)), name  # a reason iff it refuses
        assert set(s.promises) <= set(PROMISES), name


def test_uvcluster_lab_takes_its_list_from_the_registry():
    if not os.access(CLI, os.X_OK):
        pytest.skip("build first: cmake --build build")
    help_text = subprocess.run([CLI, "lab", "--help"], capture_output=True, text=True,
                               timeout=10).stdout
    line = next(l for l in help_text.splitlines() if l.strip().startswith("--strategy"))
    assert line.split()[1:] == NAMES
    for name in NAMES:  # accepted: the next complaint is about --app
        p = subprocess.run([CLI, "lab", "--strategy", name, "--app", "x"], capture_output=True,
                           text=True, timeout=10)
        assert p.returncode == 2 and "--app must be" in p.stderr, (name, p.stderr)
    p = subprocess.run([CLI, "lab", "--strategy", "not-a-strategy"], capture_output=True,
                       text=True, timeout=10)
    assert p.returncode == 2 and "unknown strategy" in p.stderr
    # and no copy of the list is left in the C++ source
    src = open(os.path.join(SRC, "harness/cli/cmd_lab.cpp")).read()
    assert not [n for n in NAMES if f'"{n}"' in src or f" {n} " in src]


def test_strategies_names_is_the_build_input():
    p = subprocess.run(["/usr/bin/python3", os.path.join(SRC, "scripts/lab/strategies.py"), "--names"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 0 and p.stdout.split() == NAMES


def test_driver_and_compare_use_the_registry():
    assert driver.STRATEGIES is NAMES
    rows = {(c["strategy"], c["app"]) for c in driver.matrix("default")}
    for name, s in REGISTRY.items():
        assert {app for n, app in rows if n == name} == set(s.rows()), name
    assert compare.FAIR == strategies.promising("fair")


def test_readme_lists_every_strategy():
    text = open(os.path.join(SRC, "README.md")).read()
    lab = text[text.index("| strategy | who accepts |"):]
    lab = lab[:lab.index("\n\n")]
    first_cells = [row.split("|")[1] for row in lab.splitlines()[2:]]
    listed = [n for cell in first_cells for n in re.findall(r"`([^`]+)`", cell)]
    assert listed == NAMES
    cli_line = re.search(r"only\)\. Strategies: `([^`]+)`", text)  # the `uvcluster lab` section
    assert cli_line and cli_line.group(1).split() == NAMES


def test_perf_usable_needs_perf(monkeypatch):
    """perf_usable() once read `which(perf) and isdir(A) or isdir(B)`: True without perf."""
    monkeypatch.setattr(load.os.path, "isdir", lambda d: d == load.TRACEFS_SYSCALLS[1])
    monkeypatch.setattr(load.shutil, "which", lambda name: None)
    assert load.perf_usable() is False
    monkeypatch.setattr(load.shutil, "which", lambda name: "/usr/bin/perf")
    assert load.perf_usable() is True
    monkeypatch.setattr(load.os.path, "isdir", lambda d: False)
    assert load.perf_usable() is False
