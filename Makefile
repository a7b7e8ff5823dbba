# Short commands over CMake.  Everything lands under build/.
BUILD      ?= build
ASAN_BUILD ?= build/asan
TSAN_BUILD ?= build/tsan
PREFIX     ?= /usr/local
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_TYPE ?= RelWithDebInfo
DEB_DIR    ?= build/deb

FUZZ_BUILD ?= build/fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = body router token config conninfo

.PHONY: all deps configure run test test-plain test-asan test-tsan bench-lib bench install deb clean fuzz

all: configure
	cmake --build $(BUILD) -j $(JOBS)

deps:
	@scripts/deps.sh

configure: deps
	@test -f $(BUILD)/CMakeCache.txt || \
	  cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(CMAKE_TYPE) -DCMAKE_INSTALL_PREFIX=$(PREFIX)

# pgtx-shop in the foreground: the embedded cluster in ./.pgtx unless
# DATABASE_URL or ARGS say otherwise (make run ARGS="--listen 0.0.0.0:8080").
# exec: Ctrl-C reaches the service, which stops itself and its cluster.
run: all
	exec $(BUILD)/pgtx-shop $(ARGS)

# All tests, twice: a plain build and one under ASan+UBSan, each against a
# throw-away PostgreSQL cluster (or PGTX_TEST_DSN when set).
test: test-plain test-asan

test-plain: all
	scripts/with-pg.sh ctest --test-dir $(BUILD) --output-on-failure

test-asan: deps
	@test -f $(ASAN_BUILD)/CMakeCache.txt || \
	  cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DPGTX_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  scripts/with-pg.sh ctest --test-dir $(ASAN_BUILD) --output-on-failure

# The threaded tests once more under ThreadSanitizer (clang): the pool's
# locking is the core of the library, so data races are checked, not hoped.
test-tsan: deps
	@test -f $(TSAN_BUILD)/CMakeCache.txt || \
	  cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang \
	    -DCMAKE_C_FLAGS=-fsanitize=thread -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread \
	    -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread
	cmake --build $(TSAN_BUILD) -j $(JOBS)
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  scripts/with-pg.sh ctest --test-dir $(TSAN_BUILD) --output-on-failure -R '^(pool|pool_clock|runner|concurrency|shop_app|strategy|batch)$$'

# libFuzzer (clang, with ASan+UBSan) over every parser of outside input,
# FUZZ_SECONDS per target, each over a copy of its fuzz/corpus/ folder; a
# crash fails and leaves its input in FUZZ_BUILD.  Every build replays the
# corpora as tests (fuzz_replay_*), without libFuzzer.
fuzz: deps
	@test -f $(FUZZ_BUILD)/CMakeCache.txt || \
	  cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
	    -DPGTX_FUZZ=ON -DPGTX_TESTS=OFF \
	    "-DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
	    -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS))
	fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

bench-lib: all
	scripts/with-pg.sh $(BUILD)/bench-lib --seconds 2 --rounds 7

# pgtx-shop over HTTP against pgbench running the same SQL, on the service's
# own embedded cluster (fsync on): one table in bench/results/shop-bench.txt.
# The service runs under every strategy, with write combining off and on.
# make bench BENCH_ARGS="--quick --results build/bench-smoke" is a
# 2-second-per-run smoke test that leaves the recorded run alone.
bench: all
	python3 bench/shop_bench.py --build $(BUILD) --strategies all $(BENCH_ARGS)

# Library, header, pgtx.pc, both programs and the manual pages under
# PREFIX (any folder: the programs find libpgtx through $ORIGIN, pgtx.pc its
# prefix through its own folder).  DESTDIR=/staging is honoured too.
install: configure
	cmake --build $(BUILD) -j $(JOBS)
	cmake --install $(BUILD) --prefix $(PREFIX)

# The Debian packages in $(DEB_DIR), built from a copy of the tree and
# checked with lintian (scripts/package.sh; installs the packaging tools).
deb: deps
	scripts/package.sh $(DEB_DIR)

clean:
	rm -rf $(BUILD)
