#!/usr/bin/env bash
# make test-soak N=20: N full `ctest -j2` runs, each beside a CPU hog (SOAK_HOGS busy loops, 1 by default,
# started here and killed by pid after the run, and bounded by `timeout` in any case), stopping
# at the first failing run. A suite that only passes on a quiet machine fails here.
# usage: scripts/soak.sh [N] [BUILD]
set -uo pipefail
n=${1:-20}
build=${2:-build}
hogs_n=${SOAK_HOGS:-1}  # busy loops beside the suite
cd "$(dirname "$0")/.." || exit 2
[ -d "$build" ] || { echo "test-soak: no build folder $build (make build first)" >&2; exit 2; }
hogs=()
stop_hogs() { for p in "${hogs[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; hogs=(); }
trap 'stop_hogs; exit 130' INT TERM
start=$(date +%s)
for ((i = 1; i <= n; i++)); do
  for ((c = 0; c < hogs_n; c++)); do
    timeout 1800 sh -c 'while :; do :; done' &
    hogs+=($!)
  done
  t0=$(date +%s)
  (cd "$build" && ctest -j2 --timeout 300 --output-on-failure) > "$build/soak-run.log" 2>&1
  rc=$?
  stop_hogs
  summary=$(grep -E "tests passed|tests failed" "$build/soak-run.log" | tail -1)
  echo "test-soak: run $i/$n: $([ $rc -eq 0 ] && echo green || echo RED) in $(( $(date +%s) - t0 )) s ($summary)"
  if [ $rc -ne 0 ]; then
    grep -E "^\s*[0-9]+ - |Failed|\*\*\*" "$build/soak-run.log" | tail -20
    echo "test-soak: stopped at the first failure; full log in $build/soak-run.log"
    exit 1
  fi
done
echo "test-soak: $n/$n green with a CPU hog beside ($(( ($(date +%s) - start) / 60 )) min)"
