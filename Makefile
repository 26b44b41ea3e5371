# SPDX-License-Identifier: Apache-2.0
# A thin front for CMake: `make` builds ./build/loom, `make test` runs every test, `make run`
# starts the platform, `make bench` runs the benchmarks. Each calls scripts/deps.sh first, so a
# fresh Debian 12 machine needs nothing else.

JOBS ?= $(shell nproc)
ARGS ?=
CMAKE_ARGS ?=
LOOM_FUZZ_SECONDS ?= 20

.PHONY: all build deps test test-asan test-unit fuzz bench run format clean

all: build

deps:
	@scripts/deps.sh build

build: deps
	@cmake --preset release $(CMAKE_ARGS) >/dev/null
	@cmake --build --preset release -j $(JOBS)

test: build
	@scripts/deps.sh test
	@ctest --preset release $(ARGS)

test-unit: build
	@ctest --preset release -L unit $(ARGS)

# ASan + UBSan build with clang; also runs each fuzzer briefly over its seed corpus.
test-asan:
	@scripts/deps.sh test
	@cmake --preset asan $(CMAKE_ARGS) -DLOOM_FUZZ_SECONDS=$(LOOM_FUZZ_SECONDS) >/dev/null
	@cmake --build --preset asan -j $(JOBS)
	@ctest --preset asan $(ARGS)

fuzz:
	@cmake --preset asan $(CMAKE_ARGS) -DLOOM_FUZZ_SECONDS=$(LOOM_FUZZ_SECONDS) >/dev/null
	@cmake --build --preset asan -j $(JOBS)
	@ctest --preset asan -L fuzz $(ARGS)

bench: build
	@scripts/deps.sh bench
	@for b in bench/*.sh; do [ $$b = bench/lib.sh ] || { echo "== $$b"; bash $$b || exit 1; }; done

run: build
	./build/loom serve $(ARGS)

format:
	@git ls-files '*.c' '*.h' | xargs clang-format -i

clean:
	rm -rf build build-debug build-asan
