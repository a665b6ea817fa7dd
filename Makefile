# rekeyguard — build, test, demo.  See README.md.
#
#   make            build librekeyguard.so, rekeyguard-status (and rekeyguard-inject on x86-64)
#   make demo       build, then show the race plain and with the shim
#   make check      the Check test suite (installs Debian packages as root)
#   make bench      benchmark (~12 min): bench/results/latest.{md,csv,png}
#   make bench-smoke  the same, tiny, < 30 s (CI)
#   make install    PREFIX=/usr/local DESTDIR= LIBDIR=$(PREFIX)/lib/<multiarch>

CC       ?= cc
CFLAGS   ?= -O2 -g
# -Wmissing-prototypes: every function another file uses is declared in a
# header (the library, the tools, the tests and the benchmark alike).
WARN      = -Wall -Wextra -Werror -Wmissing-prototypes
# The tools (rekeyguard-inject, rekeyguard-status): every non-static
# function is declared in a header (inject/proc.h, inject/elf-object.h, ...).
TOOLS_WARN = $(WARN) -Wmissing-prototypes
# The library: -fvisibility=hidden with exports.map, so only GnuTLS's names
# and rekeyguard_* leave it; -Wmissing-prototypes: every function another
# file uses is declared in that file's header.
SHIM_CFLAGS = $(CFLAGS) $(WARN) -Wmissing-prototypes -fPIC -fvisibility=hidden -D_GNU_SOURCE -pthread
# The release library is one link-time-optimised unit: the per-call path
# crosses a dozen small files (registry, locks, queue, staging), and
# inlining across them is measured at about 50 ns less per call on the
# bench's workload g (a 2-core EPYC VM, GnuTLS 3.7.9). Not for the ASan
# build (tests/hardening.mk), whose reports should name the real frames.
SHIM_LTO  = -flto=auto
GNUTLS_CFLAGS := $(shell pkg-config --cflags gnutls 2>/dev/null)
GNUTLS_LIBS   := $(shell pkg-config --libs gnutls 2>/dev/null || echo -lgnutls)
CHECK_LIBS    := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lm -lrt -lpthread)

PREFIX  ?= /usr/local
MULTIARCH := $(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null)
LIBDIR  ?= $(PREFIX)/lib/$(MULTIARCH)
BINDIR  ?= $(PREFIX)/bin

# The library's files, one concern each (HACKING.md has the map). Late
# loading exists on x86-64 only; elsewhere a stub refuses activation.
SHIM_COMMON_SRCS = $(addprefix shim/,config.c binding.c locks.c registry.c status.c buffers.c \
            app-transport.c outbound.c inbound.c callbacks.c keyupdate.c provoke.c guard.c \
            wrappers.c wrappers-short.c)
SHIM_HDRS = $(wildcard shim/*.h) shim/symbols.def include/rekeyguard.h
shim_srcs = $(SHIM_COMMON_SRCS) $(if $(findstring x86_64,$(1)),shim/late-load-x86_64.c,shim/late-load-stub.c)
LIB       = librekeyguard.so

# Packages the build and the tests need (Debian 12 names).
DEPS_BUILD = gcc make pkg-config libgnutls28-dev
DEPS_CHECK = $(DEPS_BUILD) check gnutls-bin binutils

TEST_CFLAGS = $(CFLAGS) $(WARN) -D_GNU_SOURCE -pthread $(GNUTLS_CFLAGS)
TEST_PROGS  = tests/rg-scenario tests/rg-differential tests/rg-kurace tests/check_rekeyguard
HARNESS     = tests/harness.c tests/harness.h

.PHONY: all demo check tests deps-build deps-check install uninstall clean

# rekeyguard-inject borrows a thread with x86-64 code: built only there.
# The library builds on any Linux architecture (make cross-aarch64).
TARGET_ARCH_TRIPLE := $(shell $(CC) -dumpmachine 2>/dev/null)
INJECTOR := $(if $(findstring x86_64,$(TARGET_ARCH_TRIPLE)),rekeyguard-inject)

all: $(LIB) $(INJECTOR) rekeyguard-status

include tests/hardening.mk

# The one link recipe of every library variant (this one, the ASan one in
# tests/hardening.mk, the cross build): $(call link_shim,CC,FLAGS,OUTPUT).
#   --version-script  only GnuTLS's names and rekeyguard_* are exported
#   -z now, -z relro  no lazy binding: the GOT is read-only after start-up
#   -z nodelete       never unloaded (late loading patches GOTs to point here)
#   -Bsymbolic-functions  the library's own calls to its exported wrappers
#                     stay inside it (never rebound to GnuTLS)
#   -ldl -pthread     dlsym/dladdr; not linked against GnuTLS (bound at run time)
define link_shim
	$(1) $(2) -shared -Wl,--version-script=shim/exports.map \
	    -Wl,-z,now -Wl,-z,relro -Wl,-z,nodelete -Wl,-Bsymbolic-functions -o $(3) \
	    $(call shim_srcs,$(shell $(1) -dumpmachine)) -ldl -pthread
endef

$(LIB): $(SHIM_COMMON_SRCS) shim/late-load-x86_64.c shim/late-load-stub.c $(SHIM_HDRS) shim/exports.map
	$(call link_shim,$(CC),$(SHIM_CFLAGS) $(SHIM_LTO),$@)

# rekeyguard-status reads /proc and the mapped library's ELF symbols only:
# no GnuTLS, nothing x86-specific (it shares inject/proc.c and
# inject/elf-object.c with rekeyguard-inject, not inject-borrow.c).
# _FILE_OFFSET_BITS=64: on 32-bit systems, pread offsets in /proc/PID/mem
# above 2 GiB.
STATUS_SRCS = inject/rekeyguard-status.c inject/proc.c inject/elf-object.c
STATUS_HDRS = inject/proc.h inject/elf-object.h include/rekeyguard.h
define link_status
	$(1) $(CFLAGS) $(TOOLS_WARN) -D_FILE_OFFSET_BITS=64 -Iinclude -o $(2) $(STATUS_SRCS)
endef

rekeyguard-status: $(STATUS_SRCS) $(STATUS_HDRS)
	$(call link_status,$(CC),$@)

# The library and rekeyguard-status cross-built for aarch64 (Debian's
# gcc-aarch64-linux-gnu): proves they build off x86-64 (the shim needs only
# GnuTLS's headers; it does not link against GnuTLS). Output in build/aarch64/.
CROSS_CC ?= aarch64-linux-gnu-gcc
.PHONY: cross-aarch64
cross-aarch64:
	@tests/ensure-deps.sh gcc-aarch64-linux-gnu libgnutls28-dev
	@mkdir -p build/aarch64
	$(call link_shim,$(CROSS_CC),$(SHIM_CFLAGS) $(SHIM_LTO) $(GNUTLS_CFLAGS),build/aarch64/$(LIB))
	$(call link_status,$(CROSS_CC),build/aarch64/rekeyguard-status)
	@readelf -h build/aarch64/$(LIB) | grep -q 'Machine: *AArch64' && \
	    echo "cross-aarch64: build/aarch64/$(LIB) is an AArch64 shared object"
	@readelf -h build/aarch64/rekeyguard-status | grep -q 'Machine: *AArch64' && \
	    echo "cross-aarch64: build/aarch64/rekeyguard-status is an AArch64 program"

deps-build:
	@tests/ensure-deps.sh $(DEPS_BUILD)

deps-check:
	@tests/ensure-deps.sh $(DEPS_CHECK)

tests: $(TEST_PROGS)

tests/rg-scenario: tests/rg-scenario.c $(HARNESS)
	$(CC) $(TEST_CFLAGS) -o $@ tests/rg-scenario.c tests/harness.c $(GNUTLS_LIBS) -ldl

tests/rg-differential: tests/rg-differential.c $(HARNESS)
	$(CC) $(TEST_CFLAGS) -o $@ tests/rg-differential.c tests/harness.c $(GNUTLS_LIBS) -ldl

tests/rg-kurace: tests/rg-kurace.c $(HARNESS)
	$(CC) $(TEST_CFLAGS) -o $@ tests/rg-kurace.c tests/harness.c $(GNUTLS_LIBS) -ldl

tests/check_rekeyguard: tests/check_rekeyguard.c tests/check-runner.c tests/check-runner.h
	$(CC) $(TEST_CFLAGS) -o $@ tests/check_rekeyguard.c tests/check-runner.c $(CHECK_LIBS)

demo: deps-build
	@$(MAKE) -s --no-print-directory $(LIB) tests/rg-scenario
	@tests/demo.sh

# The scenarios, differential and configuration tests, then the hardening
# suite at CI size (fork, churn, link modes, allocation failure, bad input).
check: deps-check
	@$(MAKE) -s --no-print-directory $(LIB) rekeyguard-status tests hardening-build
	cd tests && ./check_rekeyguard
	cd tests && ./check_hardening quick
	@$(MAKE) -s --no-print-directory check-unit
	@$(MAKE) -s --no-print-directory inject-check

install: $(LIB) $(INJECTOR) rekeyguard-status
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(BINDIR)
	install -m 0644 $(LIB) $(DESTDIR)$(LIBDIR)/$(LIB)
	sed -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e "s|@GNUTLS_REWORKED@|$$(sed -n 's/^#define REKEYGUARD_GNUTLS_REWORKED \"\(.*\)\"$$/\1/p' include/rekeyguard.h)|" \
	    run-qemu-with-shim.sh > $(DESTDIR)$(BINDIR)/run-qemu-with-shim
	chmod 0755 $(DESTDIR)$(BINDIR)/run-qemu-with-shim
	install -m 0755 rekeyguard-status $(DESTDIR)$(BINDIR)/rekeyguard-status
	$(if $(INJECTOR),install -m 0755 rekeyguard-inject $(DESTDIR)$(BINDIR)/rekeyguard-inject)

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/$(LIB) $(DESTDIR)$(BINDIR)/run-qemu-with-shim \
	    $(DESTDIR)$(BINDIR)/rekeyguard-status $(DESTDIR)$(BINDIR)/rekeyguard-inject

clean: hardening-clean
	rm -f $(LIB) $(TEST_PROGS) tests/unit/check_unit tests/unit/check_unit_debug tests/*.o rekeyguard-inject rekeyguard-status tests/inject/rg-inject-target
	rm -rf build
# Real QEMU (Debian's qemu-system-x86, TCG): TLS live migration over
# loopback through run-qemu-with-shim.sh, with provoked key updates.
.PHONY: qemu-smoke qemu-soak qemu-bench qemu-libvirt
qemu-smoke: $(LIB)      # precopy+return-path and postcopy, guarded and unprotected
	tests/qemu/smoke.sh
qemu-soak: $(LIB)       # ~72 GB, past two automatic GnuTLS rekeys, 4-7 min
	tests/qemu/smoke.sh --soak
qemu-bench: $(LIB)      # migration throughput and CPU per GB, with and without
	tests/qemu/smoke.sh --bench
qemu-libvirt: $(LIB)    # libvirt examples: schemas, AppArmor syntax, embedded-driver start
	tests/qemu/libvirt-test.sh

include tests/matrix/matrix.mk
include inject/inject.mk
include tests/unit/unit.mk
include bench/bench.mk
include tests/peer/peer.mk
include tests/peer/programs.mk
