#!/usr/bin/env python3
"""RR handoff benchmark: connections/s under a `Connection: close` wrk load, primary CPU seconds
per 1,000 connections, and RR fairness (Jain) — C++ primary + C++ workers, Node primary + Node
workers, C++ primary + Node workers (and the other mixes). Loopback only.

usage: bench/bench_cluster.py [--build build] [--duration 5] [--workers 2] [--connections 50]
                              [--fairness-workers 4] [--cases NAME,...] [--json out.json]
Every record and the --json file are strict JSON (scripts/strict_json.py).
"""
import argparse, json, os, re, signal, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts', 'lab'))
from procfs import cpu_seconds  # noqa: E402  (/proc/PID/stat utime+stime, shared with the lab)
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import strict_json  # noqa: E402


def start(cmd, n):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port, listening = 0, 0
    events = []
    while listening < n:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f'{cmd[0]} exited before listening')
        ev = json.loads(line)
        events.append(ev)
        if ev.get('event') == 'listening' and ev.get('port'):
            listening += 1
            port = ev['port']
    return p, port, events


def wrk(port, duration, conns):
    out = subprocess.run(['wrk', '-t2', f'-c{conns}', f'-d{duration:g}s', '-H', 'Connection: close',
                          f'http://127.0.0.1:{port}/'], capture_output=True, text=True).stdout
    reqs = int(re.search(r'(\d+) requests in', out).group(1))
    rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
    errs = re.search(r'Socket errors: (.*)', out)
    non2xx = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    return reqs, rps, (errs.group(1) if errs else ''), int(non2xx.group(1)) if non2xx else 0


def jain(xs):
    return (sum(xs) ** 2) / (len(xs) * sum(x * x for x in xs)) if xs and any(xs) else 0.0


def run_case(name, cmd, n, args):
    p, port, _ = start(cmd, n)
    try:
        c0 = cpu_seconds(p.pid)
        reqs, rps, errs, non2xx = wrk(port, args.duration, args.connections)
        c1 = cpu_seconds(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        rest = p.communicate(timeout=30)[0]
    stats = None
    for line in rest.splitlines():
        ev = json.loads(line)
        if ev.get('event') == 'stats':
            stats = ev
    rec = {'case': name, 'workers': n, 'connections_per_s': rps, 'requests': reqs,
           'primary_cpu_s': round(c1 - c0, 3),
           'primary_cpu_s_per_1k_conn': round((c1 - c0) / (reqs / 1000.0), 4) if reqs else None,
           'socket_errors': errs, 'non2xx': non2xx}
    if stats:
        per = [w['connections'] for w in stats['workers']]
        rec['per_worker_connections'] = per
        rec['jain'] = round(jain(per), 4)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--build', default=os.path.join(ROOT, 'build'))
    ap.add_argument('--duration', type=float, default=5)
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--connections', type=int, default=50)
    ap.add_argument('--fairness-workers', type=int, default=4)
    ap.add_argument('--profile', default='custom', help='recorded in env: the make bench profile')
    ap.add_argument('--cases', help='comma-separated case names to run (default: all)')
    ap.add_argument('--json')
    args = ap.parse_args()
    cli = os.path.join(args.build, 'bin', 'uvcluster')
    cpp_worker = os.path.join(args.build, 'helpers', 'cluster_http_worker')
    node_worker = os.path.join(ROOT, 'conformance', 'fixtures', 'cluster_http_worker.js')
    node_primary = os.path.join(ROOT, 'bench', 'node', 'lib', 'cluster_primary.js')
    n = args.workers
    cases = [
        ('cpp-primary+cpp-workers', [cli, 'run', '-i', str(n), '--policy', 'rr', '--json', '--', cpp_worker, '0', '127.0.0.1'], n),
        ('node-primary+node-workers', ['node', node_primary, str(n), 'rr', node_worker, '0', '127.0.0.1'], n),
        ('cpp-primary+node-workers', [cli, 'run', '-i', str(n), '--policy', 'rr', '--json', '--', node_worker, '0', '127.0.0.1'], n),
        ('node-primary+cpp-workers', ['node', node_primary, str(n), 'rr', cpp_worker, '0', '127.0.0.1'], n),
        (f'fairness-cpp-primary+cpp-workers-x{args.fairness_workers}',
         [cli, 'run', '-i', str(args.fairness_workers), '--policy', 'rr', '--json', '--', cpp_worker, '0', '127.0.0.1'],
         args.fairness_workers),
    ]
    env = {'profile': args.profile, 'kernel': os.uname().release, 'cores': os.cpu_count(),
           'node': subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip(),
           'duration_s': args.duration, 'wrk_connections': args.connections}
    if args.cases:
        wanted = args.cases.split(',')
        unknown = set(wanted) - {c[0] for c in cases}
        if unknown:
            ap.error(f"unknown case(s): {', '.join(sorted(unknown))}")
        cases = [c for c in cases if c[0] in wanted]
    results = []
    for name, cmd, k in cases:
        rec = run_case(name, cmd, k, args)
        results.append(rec)
        print(strict_json.dumps(rec), flush=True)
    by = {r['case']: r for r in results}
    cpp, node = by.get('cpp-primary+node-workers', {}), by.get('node-primary+node-workers', {})
    summary = {'env': env, 'results': results}
    if cpp.get('primary_cpu_s_per_1k_conn') and node.get('primary_cpu_s_per_1k_conn'):
        summary['cpu_ratio_cpp_vs_node_primary_same_workers'] = round(
            cpp['primary_cpu_s_per_1k_conn'] / node['primary_cpu_s_per_1k_conn'], 3)
    print(strict_json.dumps({k: v for k, v in summary.items() if k != 'results'}), flush=True)
    if args.json:
        strict_json.write(args.json, summary)


if __name__ == '__main__':
    main()
