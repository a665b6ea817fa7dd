# tests/peer/programs.mk — real programs over TLS, plain and preloaded
# (tests/peer/README.md, "Real programs").  Included by the top Makefile,
# which defines CC, TEST_CFLAGS, CHECK_LIBS and LIB.
#
#   make check-peers       glib-networking, nbdkit+nbdcopy, qemu-nbd+qemu-img,
#                          gnutls-cli --resume against gnutls-serv: each plain,
#                          preloaded with provoked key updates, and unprotected
#                          (REKEYGUARD_MODE=off) with them; CI size, < 3 min
#   make check-peers-full  the same with more runs and 512 MiB transfers
#
# Installs the Debian packages it needs as root (tests/ensure-deps.sh).

PEER_DEPS = gnutls-bin glib-networking python3-gi gir1.2-glib-2.0 nbdkit libnbd-bin \
            qemu-utils check bc iproute2 util-linux

.PHONY: check-peers check-peers-full peer-deps

peer-deps:
	@tests/ensure-deps.sh $(PEER_DEPS)

tests/check_peers: tests/check_peers.c tests/check-runner.c tests/check-runner.h
	$(CC) $(TEST_CFLAGS) -o $@ tests/check_peers.c tests/check-runner.c $(CHECK_LIBS)

check-peers: peer-deps
	@$(MAKE) -s --no-print-directory $(LIB) tests/check_peers
	cd tests && ./check_peers

check-peers-full: peer-deps
	@$(MAKE) -s --no-print-directory $(LIB) tests/check_peers
	cd tests && ./check_peers full
