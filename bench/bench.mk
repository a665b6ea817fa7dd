# bench/bench.mk — rekeyguard's benchmark. Included by the top
# Makefile (`include bench/bench.mk`, after its `all` rule), which defines
# CC, CFLAGS, WARN, GNUTLS_CFLAGS, GNUTLS_LIBS, LIB and deps-build.
#
#   make bench          full run, ~12 min: bench/results/latest.{md,csv,png}
#                       BENCH_ROUNDS=10 BENCH_SECONDS=1 (window per run)
#   make bench-smoke    < 30 s, tiny sizes, one round, no timing assertions
#                       (results under bench/results/tmp/smoke/)
#   make bench-build    just the programs
#
# Configurations differ only by LD_PRELOAD (librekeyguard.so and the two
# baseline locks built here) or the priority string; see bench/bench.h.

ifeq ($(.DEFAULT_GOAL),)
.DEFAULT_GOAL := all
endif

BENCH_ROUNDS  ?= 10
BENCH_SECONDS ?= 1

BENCH_CFLAGS   = $(CFLAGS) $(WARN) -D_GNU_SOURCE -pthread $(GNUTLS_CFLAGS)
BENCH_SRCS     = bench/bench-main.c bench/driver.c bench/stats.c bench/report.c bench/chart.c \
                 bench/workloads.c bench/tls-setup.c
BENCH_PROG     = bench/rg-bench
BENCH_PRELOADS = bench/libnaivelock.so bench/libqemustyle.so
# The top Makefile, for the recursive make that builds after deps-build.
BENCH_TOP_MAKEFILE := $(firstword $(MAKEFILE_LIST))

.PHONY: bench bench-smoke bench-build bench-clean bench-profile bench-offcpu

bench-build: $(LIB) $(BENCH_PROG) $(BENCH_PRELOADS)

$(BENCH_PROG): $(BENCH_SRCS) bench/bench.h
	$(CC) $(BENCH_CFLAGS) -o $@ $(BENCH_SRCS) $(GNUTLS_LIBS) -ldl -lm

# The two baselines are one source: configuration 5 adds QEMU's poll().
bench/libnaivelock.so: bench/baseline-lock.c
	$(CC) $(BENCH_CFLAGS) -fPIC -fvisibility=hidden -shared -o $@ $< -ldl

bench/libqemustyle.so: bench/baseline-lock.c
	$(CC) $(BENCH_CFLAGS) -DBENCH_QEMU_STYLE=1 -fPIC -fvisibility=hidden -shared -o $@ $< -ldl

bench: deps-build
	@tests/ensure-deps.sh gnuplot-nox
	@$(MAKE) -s --no-print-directory -f $(BENCH_TOP_MAKEFILE) bench-build
	$(BENCH_PROG) --rounds $(BENCH_ROUNDS) --seconds $(BENCH_SECONDS)

# No gnuplot needed: the chart is drawn only if gnuplot is installed.
bench-smoke: deps-build
	@$(MAKE) -s --no-print-directory -f $(BENCH_TOP_MAKEFILE) bench-build
	$(BENCH_PROG) --smoke

# Where a guarded call's instructions go: workload g under callgrind
# (bench/profile-call.sh, ~1 min): bench/results/profile-call.md. The
# library is built once more without LTO, for the per-file split.
bench/librekeyguard-nolto.so: $(SHIM_COMMON_SRCS) shim/late-load-x86_64.c shim/late-load-stub.c $(SHIM_HDRS) shim/exports.map
	$(call link_shim,$(CC),$(SHIM_CFLAGS),$@)

# Where each thread waits, plain against rekeyguard: an off-CPU profile
# (perf sched_switch call chains) of the latency workloads, root only
# (bench/offcpu.py, ~1 min per workload): bench/results/offcpu-W.md.
BENCH_OFFCPU_WORKLOADS ?= cf c dl
.PHONY: bench-offcpu
bench-offcpu: deps-build
	@tests/ensure-deps.sh linux-perf python3
	@$(MAKE) -s --no-print-directory -f $(BENCH_TOP_MAKEFILE) bench-build
	for w in $(BENCH_OFFCPU_WORKLOADS); do bench/offcpu.py --workload $$w || exit 1; done

bench-profile: deps-build
	@tests/ensure-deps.sh valgrind
	@$(MAKE) -s --no-print-directory -f $(BENCH_TOP_MAKEFILE) bench-build bench/librekeyguard-nolto.so
	bench/profile-call.sh

bench-clean:
	rm -f $(BENCH_PROG) $(BENCH_PRELOADS) bench/librekeyguard-nolto.so
	rm -rf bench/results/tmp

clean: bench-clean
