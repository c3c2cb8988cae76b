"""A section of a markdown report between two marker lines, (re)written in place, so that several
tools can each own a section of make bench's results/REPORT.md. stdlib only."""
import os


def rewrite(report_md, begin, end, lines):
    """Replaces the section between `begin` and `end` (or appends it) with begin + lines + end.
    Returns False, writing nothing, when the report does not exist."""
    if not os.path.exists(report_md):
        return False
    text = open(report_md).read()
    if begin in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1] if end in rest else ""
        text = head.rstrip("\n") + "\n" + tail.lstrip("\n")
    with open(report_md, "w") as f:
        f.write(text.rstrip("\n") + "\n" + "\n".join(["", begin] + lines + [end, ""]))
    return True
