"""What the lab reads about a process from /proc: open fds, CPU seconds, voluntary context
switches, liveness and descendants, plus a sampler of fd counts during a load. stdlib only;
also used by bench/bench_cluster.py."""
import os
import threading

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    """/proc/PID/stat after the command name (which may itself contain spaces or ')')."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_seconds(pid):
    try:
        fields = _stat_fields(pid)
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads
    except (OSError, IndexError, ValueError):
        return None


def ctxsw(pid):
    """(voluntary, involuntary) context switches summed over the process's threads."""
    vol = invol = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
    except OSError:
        return None
    return vol, invol


def vol_ctxsw(pid):
    """Voluntary context switches summed over the process's threads."""
    both = ctxsw(pid)
    return None if both is None else both[0]


def alive(pid):
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def children_of(pids):
    """Every live descendant of the given pids (scan of /proc; used for nginx workers and the
    orphan check)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(_stat_fields(d)[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), set(pids)
    while frontier:
        nxt = {c for c, p in parent.items() if p in frontier and c not in found}
        found |= nxt
        frontier = nxt
    return {p for p in found if alive(p)}


class Sampler(threading.Thread):
    """Samples the open fds of every watched pid every 100 ms while the load runs."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = list(pids)
        self.samples = {p: [] for p in self.pids}
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            for p in self.pids:
                n = fd_count(p)
                if n is not None:
                    self.samples[p].append(n)
            self.stop_event.wait(0.1)

    def stop(self):
        self.stop_event.set()
        self.join()
