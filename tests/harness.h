/*
 * harness.h — shared helpers for rekeyguard's test programs.
 *
 * Owns: GnuTLS set-up for tests (a self-signed ECDSA certificate made in
 * memory at start-up, client and server credentials, TLS 1.3 priorities),
 * socket and in-memory transports, seeded randomness, byte patterns that
 * let a receiver check every byte, and a watchdog that turns a hang into a
 * named failure.  Test programs link libgnutls normally and never link the
 * shim: the shim is only ever loaded with LD_PRELOAD.
 */
#ifndef REKEYGUARD_TEST_HARNESS_H
#define REKEYGUARD_TEST_HARNESS_H

#include <gnutls/gnutls.h>
#include <stddef.h>
#include <stdint.h>

/* TLS 1.3 only, one cipher. */
#define RG_PRIO_AES128 "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM"
#define RG_PRIO_CHACHA "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"

/* gnutls_global_init, key + self-signed certificate, credentials. Idempotent. */
void rg_init(void);

/* A new session (GNUTLS_CLIENT or GNUTLS_SERVER | extra_flags) with the
 * priority (NULL = RG_PRIO_AES128) and the test credentials. Exits on error. */
gnutls_session_t rg_session_new(int server, unsigned extra_flags, const char *prio);

/* Both ends of one connection. */
struct rg_pair {
	gnutls_session_t client, server;
	int fd[2];              /* fd[0] client side, fd[1] server side, -1 if unused */
};

/* socketpair(AF_UNIX, SOCK_STREAM) with the default fd transport
 * (gnutls_transport_set_int); handshake both ends (one thread per end).
 * Returns 0 or the GnuTLS error of the failed handshake. */
int rg_pair_fd(struct rg_pair *p, unsigned extra_flags, const char *prio);

/* The same over a socketpair but with QEMU-like custom transport callbacks
 * (push with write(2), pull with read(2), errno reported as errno). */
int rg_pair_custom(struct rg_pair *p, unsigned extra_flags, const char *prio);

/* Install those QEMU-like callbacks on one session (ptr carries the fd). */
void rg_transport_set_custom(gnutls_session_t s, int fd);

/* Like rg_pair_fd, but over TCP loopback (127.0.0.1, ephemeral port). */
int rg_pair_tcp(struct rg_pair *p, unsigned extra_flags, const char *prio);

/* gnutls_deinit both and close the fds. */
void rg_pair_close(struct rg_pair *p);

/* Handshake both ends of sessions whose transports are already set.
 * Returns 0 or the first error. */
int rg_handshake_pair(gnutls_session_t client, gnutls_session_t server);

/* Seeded randomness: rg_seed() reads RG_SEED from the environment or picks
 * one from the clock and prints "seed=N" on stderr; rg_rand() is a
 * xorshift64* generator. */
uint64_t rg_seed(void);
uint64_t rg_rand(uint64_t *state);

/* Deterministic stream content: byte at absolute offset `off` of stream `id`. */
void rg_pattern_fill(unsigned char *buf, size_t len, uint32_t id, uint64_t off);
/* Returns -1 if every byte matches, else the index of the first mismatch. */
long rg_pattern_check(const unsigned char *buf, size_t len, uint32_t id, uint64_t off);

/* Watchdog: after `seconds`, print "RESULT <name> FAIL reason=timeout" and
 * _exit(4). rg_watchdog_cancel() disarms. */
void rg_watchdog(const char *name, unsigned seconds);
void rg_watchdog_cancel(void);

/* 1 if librekeyguard is mapped in this process (looks for the exported
 * rekeyguard_version symbol with dlsym(RTLD_DEFAULT)). */
int rg_shim_loaded(void);

/* Monotonic time in seconds. */
double rg_now(void);

#endif
