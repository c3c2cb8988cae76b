"""Comments and docs point at files inside the repository: the facts the code relies on live in
docs/ (protocol.md, perf-notes.md), not in notes outside it."""
import os
import subprocess

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Spelled in pieces so that this file does not itself name the notes it forbids.
OUTSIDE = ("node-" + "protocol.md", "perf-" + "anchors", "../" + "shared/", "shared/" + "reference/")


def test_no_reference_to_files_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=SRC, capture_output=True, text=True,
                           check=True).stdout.split()
    me = os.path.relpath(os.path.abspath(__file__), SRC)
    hits = []
    for f in files:
        if f == me:
            continue
        try:
            with open(os.path.join(SRC, f), errors="replace") as fh:
                text = fh.read()
        except (OSError, IsADirectoryError):
            continue
        hits += [f"{f}: {w}" for w in OUTSIDE if w in text]
    assert hits == []


def test_docs_named_by_comments_exist():
    for doc in ("docs/protocol.md", "docs/perf-notes.md"):
        assert os.path.isfile(os.path.join(SRC, doc)), doc
