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
# rekeyguard-status and rekeyguard-inject (the Debian package: /usr/sbin)
SBINDIR ?= $(BINDIR)
# the launcher itself, and its QEMU-named symlink for libvirt's <emulator>
LIBEXECDIR ?= $(PREFIX)/libexec/rekeyguard
MANDIR  ?= $(PREFIX)/share/man
# rekeyguard-selftest's files: its migration driver, certificate maker, guest
PKGLIBDIR ?= $(PREFIX)/lib/rekeyguard

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
DEPS_CHECK = $(DEPS_BUILD) check gnutls-bin binutils prometheus scdoc

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
	$(1) $(CPPFLAGS) $(2) $(LDFLAGS) -shared -Wl,--version-script=shim/exports.map \
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
	$(1) $(CPPFLAGS) $(CFLAGS) $(TOOLS_WARN) -D_FILE_OFFSET_BITS=64 -Iinclude $(LDFLAGS) -o $(2) $(STATUS_SRCS)
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
	tests/man-check.sh

# The launcher's QEMU name on this architecture (libvirt's <emulator>).
QEMU_NAME := qemu-system-$(firstword $(subst -, ,$(TARGET_ARCH_TRIPLE)))

# Man pages: scdoc sources in man/ (NAME.SECTION.scd).
MAN_SRCS  = $(wildcard man/*.scd)
MAN_PAGES = $(MAN_SRCS:.scd=)
.PHONY: man
man: $(MAN_PAGES)
$(MAN_PAGES): %: %.scd
	@tests/ensure-deps.sh scdoc
	scdoc < $< > $@

# rekeyguard-selftest (x86-64 hosts: its guest is a 32-bit x86 kernel):
# make selftest runs it from the tree; make install installs it.
SELFTEST_GUEST = build/selftest-guest.elf
SELFTEST := $(if $(findstring x86_64,$(TARGET_ARCH_TRIPLE)),$(SELFTEST_GUEST))
.PHONY: selftest selftest-build
selftest-build: $(SELFTEST)
$(SELFTEST_GUEST): tests/qemu/build-guest.sh tests/qemu/guest/boot.S tests/qemu/guest/guest.c tests/qemu/guest/guest.ld
	@mkdir -p build
	tests/qemu/build-guest.sh $@
	strip $@        # shipped by make install: no symbols needed
selftest: $(LIB) $(SELFTEST_GUEST)
	@tests/ensure-deps.sh qemu-system-x86 gnutls-bin python3
	selftest/rekeyguard-selftest.sh $(SELFTEST_ARGS)

# Nothing under /etc: the configuration file and the AppArmor include are
# the Debian package's (debian/rules), or the administrator's
# (examples/libvirt/README.md).
install: $(LIB) $(INJECTOR) rekeyguard-status man $(SELFTEST)
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(LIBEXECDIR)
	install -m 0644 $(LIB) $(DESTDIR)$(LIBDIR)/$(LIB)
	sed -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e "s|@GNUTLS_REWORKED@|$$(sed -n 's/^#define REKEYGUARD_GNUTLS_REWORKED \"\(.*\)\"$$/\1/p' include/rekeyguard.h)|" \
	    run-qemu-with-shim.sh > $(DESTDIR)$(LIBEXECDIR)/run-qemu-with-shim
	chmod 0755 $(DESTDIR)$(LIBEXECDIR)/run-qemu-with-shim
	ln -sf run-qemu-with-shim $(DESTDIR)$(LIBEXECDIR)/$(QEMU_NAME)
	ln -sf $$(realpath -m --relative-to=$(BINDIR) $(LIBEXECDIR))/run-qemu-with-shim \
	    $(DESTDIR)$(BINDIR)/run-qemu-with-shim
	install -m 0755 rekeyguard-status $(DESTDIR)$(SBINDIR)/rekeyguard-status
	$(if $(INJECTOR),install -m 0755 rekeyguard-inject $(DESTDIR)$(SBINDIR)/rekeyguard-inject)
	$(if $(SELFTEST),$(MAKE) -s --no-print-directory install-selftest)
	for page in $(MAN_PAGES); do \
	    section=$${page##*.}; \
	    install -d $(DESTDIR)$(MANDIR)/man$$section && \
	    install -m 0644 $$page $(DESTDIR)$(MANDIR)/man$$section/ || exit 1; \
	done

install-selftest: $(SELFTEST_GUEST)
	install -d $(DESTDIR)$(PKGLIBDIR) $(DESTDIR)$(SBINDIR)
	install -m 0755 tests/qemu/migrate.py tests/qemu/mkcerts.sh $(DESTDIR)$(PKGLIBDIR)/
	install -m 0644 $(SELFTEST_GUEST) $(DESTDIR)$(PKGLIBDIR)/guest.elf
	sed -e 's|@PKGLIBDIR@|$(PKGLIBDIR)|' -e 's|@LIBEXECDIR@|$(LIBEXECDIR)|' \
	    selftest/rekeyguard-selftest.sh > $(DESTDIR)$(SBINDIR)/rekeyguard-selftest
	chmod 0755 $(DESTDIR)$(SBINDIR)/rekeyguard-selftest

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/$(LIB) $(DESTDIR)$(BINDIR)/run-qemu-with-shim \
	    $(DESTDIR)$(LIBEXECDIR)/run-qemu-with-shim $(DESTDIR)$(LIBEXECDIR)/$(QEMU_NAME) \
	    $(DESTDIR)$(SBINDIR)/rekeyguard-status $(DESTDIR)$(SBINDIR)/rekeyguard-inject \
	    $(DESTDIR)$(SBINDIR)/rekeyguard-selftest $(DESTDIR)$(PKGLIBDIR)/migrate.py \
	    $(DESTDIR)$(PKGLIBDIR)/mkcerts.sh $(DESTDIR)$(PKGLIBDIR)/guest.elf
	for page in $(notdir $(MAN_PAGES)); do \
	    rm -f $(DESTDIR)$(MANDIR)/man$${page##*.}/$$page; \
	done
	-rmdir $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(PKGLIBDIR) 2>/dev/null

clean: hardening-clean
	rm -f $(LIB) $(TEST_PROGS) tests/unit/check_unit tests/unit/check_unit_debug tests/*.o rekeyguard-inject rekeyguard-status tests/inject/rg-inject-target $(MAN_PAGES)
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
# Two libvirt hosts (network/mount/UTS namespaces, own libvirtd each) on
# this machine: virsh migrate --live --p2p --tls, launcher as <emulator>.
# Root only. The quick form (one precopy each way, ~75 s) runs in CI.
.PHONY: libvirt-migrate libvirt-migrate-quick
libvirt-migrate: $(LIB)          # precopy and postcopy both ways, library off, ~2 min
	tests/qemu/libvirt-migrate.sh
libvirt-migrate-quick: $(LIB)    # one precopy each way, library off once
	tests/qemu/libvirt-migrate.sh --quick

include tests/matrix/matrix.mk
include inject/inject.mk
include tests/unit/unit.mk
include bench/bench.mk
include tests/package/package.mk
include tests/peer/peer.mk
include tests/peer/programs.mk
