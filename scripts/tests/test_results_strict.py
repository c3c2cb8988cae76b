"""Every file under results/ is strict JSON: it validates against its schema (results/schema/)
and parses with Node's JSON.parse (which rejects NaN/Infinity like any strict consumer)."""
import glob
import json
import math
import os
import shutil
import subprocess

import jsonschema
import pytest

import strict_json

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(SRC, "results")
SCHEMA_DIR = os.path.join(RESULTS, "schema")


def schema_for(path):
    """results file -> schema name; None for files that are not records (the schemas themselves)."""
    rel = os.path.relpath(path, RESULTS)
    name = os.path.basename(rel)
    if rel.startswith("schema" + os.sep):
        return None
    if rel.startswith("chaos" + os.sep):
        return "chaos"
    if rel.startswith("compare" + os.sep):
        return "compare"
    if name == "history.jsonl":
        return "history"
    if name in ("latest.json",) or name.startswith("baseline"):
        return "lab"
    if name == "micro.json":
        return "micro"
    if name == "cluster.json":
        return "cluster"
    if name == "rr_limits.json":
        return "rr_limits"
    if name == "managers.json":
        return "managers"
    if name == "limits_ipc_spawn.json":
        return "limits_ipc_spawn"
    raise AssertionError(f"{rel}: a results file without a schema; add one to results/schema/")


def record_files():
    files = glob.glob(os.path.join(RESULTS, "**", "*.json"), recursive=True)
    files += glob.glob(os.path.join(RESULTS, "**", "*.jsonl"), recursive=True)
    return sorted(f for f in files if schema_for(f))


def documents(path):
    if path.endswith(".jsonl"):
        with open(path) as f:
            return [json.loads(line, parse_constant=lambda c: pytest.fail(f"{path}: {c}"))
                    for line in f if line.strip()]
    return [strict_json.load(path)]


def load_schema(name):
    with open(os.path.join(SCHEMA_DIR, f"{name}.schema.json")) as f:
        return json.load(f)


def test_schemas_are_valid_schemas():
    for path in glob.glob(os.path.join(SCHEMA_DIR, "*.schema.json")):
        with open(path) as f:
            jsonschema.Draft202012Validator.check_schema(json.load(f))


@pytest.mark.parametrize("path", record_files(), ids=lambda p: os.path.relpath(p, RESULTS))
def test_results_file_matches_its_schema(path):
    validator = jsonschema.Draft202012Validator(load_schema(schema_for(path)))
    for i, doc in enumerate(documents(path)):
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{path} [{i}]: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


@pytest.mark.parametrize("path", record_files(), ids=lambda p: os.path.relpath(p, RESULTS))
def test_results_file_parses_with_node(path):
    node = shutil.which("node") or pytest.skip("node not installed")
    script = ("const fs=require('fs');const t=fs.readFileSync(process.argv[1],'utf8');"
              "if(process.argv[1].endsWith('.jsonl'))t.split('\\n').filter(l=>l.trim()).forEach(l=>JSON.parse(l));"
              "else JSON.parse(t);")
    p = subprocess.run([node, "-e", script, path], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-500:]


def test_non_finite_becomes_null_with_a_reason():
    doc = {"a": math.inf, "b": [1.0, -math.inf, math.nan], "c": {"d": math.nan}, "e": 2.5}
    out = json.loads(strict_json.dumps(doc))
    assert out["a"] is None and "inf" in out["a_reason"]
    assert out["b"] == [1.0, None, None]
    assert out["c"] == {"d": None, "d_reason": "not finite (nan)"}
    assert out["e"] == 2.5


def test_strict_load_refuses_infinity(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"max_min": Infinity}')
    with pytest.raises(ValueError):
        strict_json.load(str(p))


def test_fairness_of_an_idle_worker_is_null_with_reason():
    import metrics
    f = metrics.fairness([0, 12])
    assert f["max_min"] is None and f["max_min_reason"]
    json.dumps(f, allow_nan=False)
