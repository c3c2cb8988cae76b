# Thin wrapper over CMake/CTest. `make test` and `make bench` install missing deps first.
BUILD   ?= build
JOBS    ?= $(shell nproc)
PROFILE ?= default

.PHONY: all deps build test test-asan test-soak bench bench-compare bench-ci chaos clean

all: build

deps:
	@bash scripts/deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 300

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DUVCLUSTER_SANITIZE=address,undefined >/dev/null
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j $(JOBS) --timeout 600 -LE no-asan

bench: build
	/usr/bin/python3 scripts/bench.py --build $(BUILD) --profile $(PROFILE)

# Fault lab: every fault against uvcluster run (rr/none/reuseport), Node's cluster and PM2.
# results/chaos/latest.json + results/CHAOS.md (PROFILE=quick|default|full).
chaos: build
	/usr/bin/python3 scripts/chaos/chaos.py --build $(BUILD) --profile $(PROFILE)

# A/B regression check (scripts/bench_compare.py): BASE=<rev> [NEW=<rev>|worktree] [SET=ipc,rr,lab,big,instr]
# [SAMPLES=k] [CPROFILE=default|ci|short]. Exit 0 / 1 (regression) / 2 (bad usage); make reports
# any non-zero as 2, call the script directly when the distinction matters.
bench-compare: deps
	@test -n "$(BASE)" || { echo "usage: make bench-compare BASE=<rev> [NEW=<rev>|worktree] [SET=ipc,rr,lab,big,instr] [SAMPLES=k] [CPROFILE=default|ci|short]" >&2; exit 2; }
	/usr/bin/python3 scripts/bench_compare.py --base "$(BASE)" --new "$(or $(NEW),worktree)" \
	  $(if $(SET),--set $(SET)) $(if $(SAMPLES),--samples $(SAMPLES)) $(if $(CPROFILE),--profile $(CPROFILE))

# The CI gate: this checkout against the revision in results/ci-baseline, bounded (< 12 min).
bench-ci: deps
	/usr/bin/python3 scripts/bench_compare.py --ci

# N full `ctest -j2` runs beside a CPU hog; stops at the first failure.
N ?= 20
test-soak: build
	bash scripts/soak.sh $(N) $(BUILD)

clean:
	rm -rf $(BUILD) build-asan
