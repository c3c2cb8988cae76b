"""Strict JSON for every results file: no NaN/Infinity (Node's JSON.parse and any strict parser
reject them). A value that cannot be finite becomes null and a sibling "<key>_reason" says why;
writing then uses allow_nan=False so anything missed fails loudly instead of corrupting a file.
"""
import json
import math
import os


def sanitize(obj):
    """A copy of obj where each non-finite float is None, with "<key>_reason" beside it in dicts."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
                out.setdefault(f"{k}_reason", f"not finite ({v})")
            else:
                out[k] = sanitize(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    return obj


def dumps(obj, **kw):
    return json.dumps(sanitize(obj), allow_nan=False, **kw)


def dump(obj, f, **kw):
    json.dump(sanitize(obj), f, allow_nan=False, **kw)


def write(path, obj, indent=1):
    """Atomically writes obj as strict JSON (tmp file + rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        dump(obj, f, indent=indent)
        f.write("\n")
    os.replace(tmp, path)


def append_line(path, obj):
    """Appends obj as one strict JSON line (a JSON Lines file)."""
    with open(path, "a") as f:
        f.write(dumps(obj, separators=(",", ":")) + "\n")


def load(path):
    """Parses like a strict consumer: NaN/Infinity literals are an error."""
    def refuse(token):
        raise ValueError(f"{path}: non-standard JSON literal {token}")
    with open(path) as f:
        return json.load(f, parse_constant=refuse)
