# tests/matrix/matrix.mk — GnuTLS version matrix.
# Included from the top Makefile:   include tests/matrix/matrix.mk
#
#   make matrix          host (Debian 12, GnuTLS 3.7.9) + Debian 13 (trixie,
#                        3.8.9) + Debian sid (3.8.11+) chroots: guard-mode
#                        scenarios and differential, auto-mode decision,
#                        plain failure rate (MATRIX_RUNS per race scenario)
#   make matrix-quick    the same with short runs (3 plain, 1 guarded)
#   make matrix-chroots  only create (or reuse) the chroots
#   make matrix-clean    delete the chroots and results
#
# Needs root: debootstrap, chroot and mounts.  Packages come only from
# Debian's archive (MATRIX_MIRROR, default http://deb.debian.org/debian).
# Chroots and results live in MATRIX_CACHE and are reused.

MATRIX_DIR        := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
MATRIX_CACHE      ?= /var/cache/rekeyguard-matrix
MATRIX_TARGETS    ?= host trixie sid
MATRIX_RUNS       ?= 10
MATRIX_GUARD_RUNS ?= 3
export MATRIX_CACHE

.PHONY: matrix matrix-quick matrix-chroots matrix-clean

matrix:
	$(MATRIX_DIR)/matrix.sh --runs $(MATRIX_RUNS) --guard-runs $(MATRIX_GUARD_RUNS) $(MATRIX_TARGETS)

matrix-quick:
	$(MATRIX_DIR)/matrix.sh --quick $(MATRIX_TARGETS)

matrix-chroots:
	@for t in $(filter-out host,$(MATRIX_TARGETS)); do \
	    $(MATRIX_DIR)/chroot.sh create $$t || exit 1; done

matrix-clean:
	@for t in $(filter-out host,$(MATRIX_TARGETS)); do \
	    $(MATRIX_DIR)/chroot.sh remove $$t; done
	rm -rf $(MATRIX_CACHE)/results $(MATRIX_CACHE)/host-build

# The benchmark inside one chroot: plain GnuTLS against the library's
# default mode (BENCH_SUITE=sid measures keyupdate mode on 3.8.13).
BENCH_SUITE ?= sid
.PHONY: bench-matrix bench-matrix-smoke
bench-matrix:
	$(MATRIX_DIR)/bench-target.sh $(BENCH_SUITE) --rounds $(BENCH_ROUNDS) --seconds $(BENCH_SECONDS)
bench-matrix-smoke:
	$(MATRIX_DIR)/bench-target.sh $(BENCH_SUITE) --smoke

# The residual key-update race (tests/rg-kurace.c) per GnuTLS: KURACE_RUNS
# plain runs and as many with the library in its default mode.
KURACE_RUNS    ?= 20
KURACE_TARGETS ?= host trixie sid
.PHONY: kurace
kurace:
	@for t in $(KURACE_TARGETS); do \
	    $(MATRIX_DIR)/kurace.sh --runs $(KURACE_RUNS) --mode auto $$t || exit 1; done

# GnuTLS's own test suite (tests/peer/gnutls-suite.sh) against each chroot's
# GnuTLS: built from its Debian source inside the chroot, run plain and with
# the library (built there from this tree) preloaded in guard mode; fails
# unless the results are the same.  Summaries are copied to
# /var/cache/rekeyguard-gnutls-suite/SUITE-results/{full,subset}/.
# The first run per suite builds GnuTLS (~6 min); the full suite takes
# ~20 min per suite, the subset (-quick) ~6 min.
MATRIX_SUITE_TARGETS ?= trixie sid
.PHONY: matrix-gnutls-suite matrix-gnutls-suite-quick
matrix-gnutls-suite:
	@rc=0; for t in $(MATRIX_SUITE_TARGETS); do \
	    $(MATRIX_DIR)/gnutls-suite-target.sh $$t || rc=1; done; exit $$rc
matrix-gnutls-suite-quick:
	@rc=0; for t in $(MATRIX_SUITE_TARGETS); do \
	    $(MATRIX_DIR)/gnutls-suite-target.sh $$t --subset || rc=1; done; exit $$rc

# Real QEMU per distribution (tests/matrix/qemu-matrix.sh): the TLS
# migration smoke test (guarded precopy + postcopy QEMU_MATRIX_GUARDED times,
# QEMU_MATRIX_UNPROTECTED runs with REKEYGUARD_MODE=off) and the injector's
# QEMU test, on the host (QEMU 7.2, GnuTLS 3.7.9), trixie (QEMU 10.0, 3.8.9)
# and sid (3.8.13); prints the support table.  About 5 min per target.
QEMU_MATRIX_TARGETS     ?= host trixie sid
QEMU_MATRIX_GUARDED     ?= 2
QEMU_MATRIX_UNPROTECTED ?= 4
.PHONY: qemu-matrix qemu-matrix-quick
qemu-matrix:
	$(MATRIX_DIR)/qemu-matrix.sh --guarded-runs $(QEMU_MATRIX_GUARDED) \
	    --unprotected-runs $(QEMU_MATRIX_UNPROTECTED) $(QEMU_MATRIX_TARGETS)
qemu-matrix-quick:
	$(MATRIX_DIR)/qemu-matrix.sh --quick --guarded-runs 1 --unprotected-runs 2 $(QEMU_MATRIX_TARGETS)
