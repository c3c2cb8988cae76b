"""Sections that scripts append to make bench's results/REPORT.md (the fault lab, the manager
cost), each between its own markers so each can be rewritten without the others. stdlib only."""
import os


def replace_section(report_md, begin, end, lines):
    """Writes `lines` between the markers `begin` and `end` at the end of report_md, dropping
    the previous copy of that section (so make bench's report and each section appended to it can
    be rewritten independently). False when report_md does not exist."""
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
