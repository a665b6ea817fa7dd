# tests/peer/peer.mk — GnuTLS's own test suite, plain and with the library
# preloaded.  Included from the top Makefile:   include tests/peer/peer.mk
#
#   make check-gnutls-suite        the whole suite both ways (root on first
#                                  run: apt-get source/build-dep;
#                                  ~20 min, ~25 min on a first run)
#   make check-gnutls-suite-quick  a curated subset both ways (~6 min,
#                                  ~12 min on a first run)
#
# Fails unless every test has the same result both ways.  The GnuTLS build
# and the results live in GNUTLS_SUITE_CACHE (default
# /var/cache/rekeyguard-gnutls-suite/<libgnutls30 version>/) and are reused.
# GNUTLS_SUITE_FLAGS passes more options (see tests/peer/gnutls-suite.sh --help).

GNUTLS_SUITE_DIR   := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
GNUTLS_SUITE_JOBS  ?= 2
GNUTLS_SUITE_FLAGS ?=

.PHONY: check-gnutls-suite check-gnutls-suite-quick

check-gnutls-suite: $(LIB)
	$(GNUTLS_SUITE_DIR)/gnutls-suite.sh --lib $(abspath $(LIB)) --jobs $(GNUTLS_SUITE_JOBS) $(GNUTLS_SUITE_FLAGS)

check-gnutls-suite-quick: $(LIB)
	$(GNUTLS_SUITE_DIR)/gnutls-suite.sh --subset --lib $(abspath $(LIB)) --jobs $(GNUTLS_SUITE_JOBS) $(GNUTLS_SUITE_FLAGS)
