# inject/inject.mk — rekeyguard-inject and its tests; included by the
# top-level Makefile (uses its CC, CFLAGS, TOOLS_WARN, TEST_CFLAGS, HARNESS,
# GNUTLS_LIBS, LIB and LIBDIR).
#
#   make rekeyguard-inject    the injector (C, no GnuTLS, no gdb)
#   make inject-check         tests/inject/inject-test.sh: real processes, as root
#                             (about 40 s; prints SKIPPED when not root)
#   make inject-qemu-check    the same against a real QEMU: attach, refusal
#                             during a migration, provoked TLS precopy and
#                             postcopy between injected QEMUs (about 2 min)

INJECT_SRCS = inject/rekeyguard-inject.c inject/inject-borrow.c inject/elf-object.c \
              inject/proc.c inject/inject-qmp.c
INJECT_HDRS = inject/inject.h inject/proc.h inject/elf-object.h shim/late-load.h
INJECT_TEST_PROGS = tests/inject/rg-inject-target

rekeyguard-inject: $(INJECT_SRCS) $(INJECT_HDRS)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(TOOLS_WARN) -DRG_INJECT_LIBDIR='"$(LIBDIR)"' $(LDFLAGS) -o $@ $(INJECT_SRCS)

tests/inject/rg-inject-target: tests/inject/rg-inject-target.c $(HARNESS)
	$(CC) $(TEST_CFLAGS) -o $@ tests/inject/rg-inject-target.c tests/harness.c $(GNUTLS_LIBS) -ldl

.PHONY: inject-check inject-qemu-check
inject-check: $(LIB) rekeyguard-inject $(INJECT_TEST_PROGS)
	tests/inject/inject-test.sh

inject-qemu-check: $(LIB) rekeyguard-inject $(INJECT_TEST_PROGS)
	tests/inject/inject-test.sh --qemu --only qemu
