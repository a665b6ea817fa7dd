# tests/hardening.mk — robustness tests: fork, churn, sanitizers,
# link modes, allocation failure and bad input.
# Included by the top Makefile (`include tests/hardening.mk`, after its
# `all` rule), which defines CC, CFLAGS, WARN, TEST_CFLAGS, SHIM_CFLAGS,
# GNUTLS_LIBS, CHECK_LIBS, LIB, SHIM_COMMON_SRCS, SHIM_HDRS and deps-check.
#
#   make check-hardening       fork, exec, churn, reuse, concurrent sessions,
#                              bad configuration, allocation failure, link
#                              modes; CI sizes (~35 s with the build)
#   make check-hardening-full  the same at full size: 1,000,000 init/deinit
#                              cycles, 10,000 concurrent sessions, 30 forks
#                              (~50 s)
#   make check-asan            librekeyguard-asan.so and the test programs
#                              built with -fsanitize=address,undefined; the
#                              scenarios, the differential test and the
#                              hardening tests must run clean (~25 s)
#   make check-helgrind        the concurrency scenarios under valgrind
#                              helgrind and drd, plain and preloaded: zero
#                              unsuppressed reports with the shim (what they
#                              report without it is printed), plus memcheck
#                              on churn, reuse, concurrent sessions and fork
#                              (~1 min: the scenarios are time-bounded)
#
# Debugging: tests/check_hardening [quick|full|asan|valgrind] runs one
# suite; CK_RUN_CASE=fork etc. picks a test case; CK_FORK=no for gdb.

HARDENING_CFLAGS = $(TEST_CFLAGS)
HARDENING_UTIL   = tests/hardening-util.c tests/hardening-util.h tests/harness.c tests/harness.h
HARDENING_LM     = tests/linkmode
ASAN_FLAGS       = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ASAN_RUNTIME     = $(shell $(CC) -print-file-name=libasan.so)

HARDENING_PROGS = tests/rg-hardening tests/rg-failmalloc.so tests/check_hardening
LINKMODE_PROGS  = $(HARDENING_LM)/rg-linkcheck-pie $(HARDENING_LM)/rg-linkcheck-nopie \
                  $(HARDENING_LM)/rg-linkcheck-now $(HARDENING_LM)/rg-linkcheck-noplt \
                  $(HARDENING_LM)/rg-linkcheck-noplt-now-nopie \
                  $(HARDENING_LM)/librg-xyz.so $(HARDENING_LM)/librg-xyz-now.so \
                  $(HARDENING_LM)/librg-xyz-symbolic.so \
                  $(HARDENING_LM)/rg-linkcheck-lib $(HARDENING_LM)/rg-linkcheck-lib-now \
                  $(HARDENING_LM)/rg-linkcheck-lib-symbolic $(HARDENING_LM)/rg-linkcheck-dl
ASAN_PROGS      = librekeyguard-asan.so tests/asan/rg-scenario tests/asan/rg-differential \
                  tests/asan/rg-hardening

.PHONY: hardening-build check-hardening check-hardening-full check-asan check-helgrind \
        hardening-clean

hardening-build: $(LIB) tests/rg-scenario tests/rg-differential $(HARDENING_PROGS) $(LINKMODE_PROGS)

tests/rg-hardening: tests/rg-hardening.c $(HARDENING_UTIL)
	$(CC) $(HARDENING_CFLAGS) -o $@ tests/rg-hardening.c tests/hardening-util.c \
	    tests/harness.c $(GNUTLS_LIBS) -ldl

tests/rg-failmalloc.so: tests/rg-failmalloc.c
	$(CC) $(CFLAGS) $(WARN) -fPIC -shared -fvisibility=hidden -o $@ $<

tests/check_hardening: tests/check_hardening.c tests/check-runner.c tests/check-runner.h
	$(CC) $(HARDENING_CFLAGS) -o $@ tests/check_hardening.c tests/check-runner.c $(CHECK_LIBS)

# ---- link modes: the same GnuTLS code, linked every way ----------

LM_SRCS = tests/rg-linkcheck.c tests/rg-xyz.c tests/hardening-util.c tests/harness.c
LM_DEPS = $(LM_SRCS) tests/rg-xyz.h tests/hardening-util.h tests/harness.h

$(HARDENING_LM)/rg-linkcheck-pie: $(LM_DEPS)
	@mkdir -p $(HARDENING_LM)
	$(CC) $(HARDENING_CFLAGS) -fPIE -pie -o $@ $(LM_SRCS) $(GNUTLS_LIBS) -ldl
$(HARDENING_LM)/rg-linkcheck-nopie: $(LM_DEPS)
	@mkdir -p $(HARDENING_LM)
	$(CC) $(HARDENING_CFLAGS) -fno-pie -no-pie -o $@ $(LM_SRCS) $(GNUTLS_LIBS) -ldl
$(HARDENING_LM)/rg-linkcheck-now: $(LM_DEPS)
	@mkdir -p $(HARDENING_LM)
	$(CC) $(HARDENING_CFLAGS) -Wl,-z,now -o $@ $(LM_SRCS) $(GNUTLS_LIBS) -ldl
$(HARDENING_LM)/rg-linkcheck-noplt: $(LM_DEPS)
	@mkdir -p $(HARDENING_LM)
	$(CC) $(HARDENING_CFLAGS) -fno-plt -o $@ $(LM_SRCS) $(GNUTLS_LIBS) -ldl
$(HARDENING_LM)/rg-linkcheck-noplt-now-nopie: $(LM_DEPS)
	@mkdir -p $(HARDENING_LM)
	$(CC) $(HARDENING_CFLAGS) -fno-plt -Wl,-z,now -fno-pie -no-pie -o $@ $(LM_SRCS) \
	    $(GNUTLS_LIBS) -ldl

# librg-xyz*.so wrap GnuTLS; rg-linkcheck-lib* link only them (no libgnutls).
XYZ_SRCS = tests/rg-xyz.c tests/hardening-util.c tests/harness.c
$(HARDENING_LM)/librg-xyz.so: $(LM_DEPS)
	@mkdir -p $(HARDENING_LM)
	$(CC) $(HARDENING_CFLAGS) -fPIC -shared -o $@ $(XYZ_SRCS) $(GNUTLS_LIBS) -ldl
$(HARDENING_LM)/librg-xyz-now.so: $(LM_DEPS)
	@mkdir -p $(HARDENING_LM)
	$(CC) $(HARDENING_CFLAGS) -fPIC -shared -fno-plt -Wl,-z,now -o $@ $(XYZ_SRCS) \
	    $(GNUTLS_LIBS) -ldl
$(HARDENING_LM)/librg-xyz-symbolic.so: $(LM_DEPS)
	@mkdir -p $(HARDENING_LM)
	$(CC) $(HARDENING_CFLAGS) -fPIC -shared -Wl,-Bsymbolic -o $@ $(XYZ_SRCS) \
	    $(GNUTLS_LIBS) -ldl
$(HARDENING_LM)/rg-linkcheck-lib: tests/rg-linkcheck.c tests/rg-xyz.h $(HARDENING_LM)/librg-xyz.so
	$(CC) $(HARDENING_CFLAGS) -o $@ tests/rg-linkcheck.c -L$(HARDENING_LM) -l:librg-xyz.so \
	    -Wl,-rpath,'$$ORIGIN'
$(HARDENING_LM)/rg-linkcheck-lib-now: tests/rg-linkcheck.c tests/rg-xyz.h $(HARDENING_LM)/librg-xyz-now.so
	$(CC) $(HARDENING_CFLAGS) -fno-plt -Wl,-z,now -o $@ tests/rg-linkcheck.c \
	    -L$(HARDENING_LM) -l:librg-xyz-now.so -Wl,-rpath,'$$ORIGIN'
$(HARDENING_LM)/rg-linkcheck-lib-symbolic: tests/rg-linkcheck.c tests/rg-xyz.h \
                                           $(HARDENING_LM)/librg-xyz-symbolic.so
	$(CC) $(HARDENING_CFLAGS) -o $@ tests/rg-linkcheck.c -L$(HARDENING_LM) \
	    -l:librg-xyz-symbolic.so -Wl,-rpath,'$$ORIGIN'
$(HARDENING_LM)/rg-linkcheck-dl: tests/rg-linkcheck.c tests/rg-xyz.h
	@mkdir -p $(HARDENING_LM)
	$(CC) $(HARDENING_CFLAGS) -DRG_LINKCHECK_DLOPEN_ONLY -o $@ tests/rg-linkcheck.c -ldl

# ---- sanitizers ------------------------------------------------------------
# The preloaded ASan library needs the ASan runtime first in LD_PRELOAD;
# check_hardening's asan suite sets LD_PRELOAD="$(ASAN_RUNTIME) librekeyguard-asan.so".

librekeyguard-asan.so: $(SHIM_COMMON_SRCS) shim/late-load-x86_64.c shim/late-load-stub.c $(SHIM_HDRS) shim/exports.map
	$(call link_shim,$(CC),$(SHIM_CFLAGS) $(ASAN_FLAGS) -DREKEYGUARD_DEBUG,$@)

tests/asan/rg-scenario: tests/rg-scenario.c tests/harness.c tests/harness.h
	@mkdir -p tests/asan
	$(CC) $(HARDENING_CFLAGS) $(ASAN_FLAGS) -o $@ tests/rg-scenario.c tests/harness.c \
	    $(GNUTLS_LIBS) -ldl
tests/asan/rg-differential: tests/rg-differential.c tests/harness.c tests/harness.h
	@mkdir -p tests/asan
	$(CC) $(HARDENING_CFLAGS) $(ASAN_FLAGS) -o $@ tests/rg-differential.c tests/harness.c \
	    $(GNUTLS_LIBS) -ldl
tests/asan/rg-hardening: tests/rg-hardening.c $(HARDENING_UTIL)
	@mkdir -p tests/asan
	$(CC) $(HARDENING_CFLAGS) $(ASAN_FLAGS) -o $@ tests/rg-hardening.c \
	    tests/hardening-util.c tests/harness.c $(GNUTLS_LIBS) -ldl

hardening-clean:
	rm -f $(HARDENING_PROGS) $(LINKMODE_PROGS) $(ASAN_PROGS)
	rm -rf $(HARDENING_LM) tests/asan

# ---- the suites -------------------------------------------------------------

check-hardening: deps-check
	@$(MAKE) -f $(firstword $(MAKEFILE_LIST)) -s --no-print-directory hardening-build
	cd tests && ./check_hardening quick

check-hardening-full: deps-check
	@$(MAKE) -f $(firstword $(MAKEFILE_LIST)) -s --no-print-directory hardening-build
	cd tests && ./check_hardening full

# ASan needs the runtime of the compiler that built the library (libasan8
# comes with gcc on Debian 12).
check-asan: deps-check
	@$(MAKE) -f $(firstword $(MAKEFILE_LIST)) -s --no-print-directory $(ASAN_PROGS) tests/check_hardening
	cd tests && RG_ASAN_RUNTIME=$(ASAN_RUNTIME) ./check_hardening asan

check-helgrind: deps-check
	@tests/ensure-deps.sh valgrind
	@$(MAKE) -f $(firstword $(MAKEFILE_LIST)) -s --no-print-directory $(LIB) tests/rg-scenario tests/rg-hardening \
	    tests/check_hardening
	cd tests && ./check_hardening valgrind
