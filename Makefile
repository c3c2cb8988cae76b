# Thin wrapper over CMake/CTest. `make test` and `make bench` install missing deps first.
BUILD   ?= build
JOBS    ?= $(shell nproc)
PROFILE ?= default

.PHONY: all deps build test test-asan bench chaos clean

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

clean:
	rm -rf $(BUILD) build-asan
