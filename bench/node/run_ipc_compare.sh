#!/bin/sh
# Runs bench_ipc and its Node twins back to back (the machine drifts; compare within one run).
# usage: bench/node/run_ipc_compare.sh [build-dir]
B=${1:-build}
D=$(dirname "$0")
"$B/bench/bench_ipc" --benchmark_format=json 2>/dev/null | /usr/bin/python3 -c '
import json,sys
for b in json.load(sys.stdin)["benchmarks"]:
    if "items_per_second" in b and "1MiB" not in b["name"]:
        print(json.dumps({"name": b["name"].split("/")[0], "value": b["items_per_second"], "unit": "items/s"}))
    else:
        print(json.dumps({"name": b["name"].split("/")[0], "value": b["real_time"], "unit": b["time_unit"]}))'
for b in pingpong stream big handles; do node "$D/ipc_$b.js"; done
