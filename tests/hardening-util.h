/*
 * hardening-util.h — helpers shared by the robustness test programs
 * (rg-hardening, rg-linkcheck and its library librg-xyz.so).
 *
 * Owns: the RESULT line, access to the shim's exported API without
 * linking it (dlsym(RTLD_DEFAULT)), memory figures (RSS and malloc's
 * in-use bytes), and a short multi-threaded duplex run with key updates
 * over an established pair (two threads per endpoint, every byte checked).
 * Like harness.c, nothing here links or names the shim at build time.
 */
#ifndef REKEYGUARD_TEST_HARDENING_UTIL_H
#define REKEYGUARD_TEST_HARDENING_UTIL_H

#include "harness.h"

#include <stddef.h>
#include <stdint.h>

/* "RESULT <name> PASS|FAIL <fmt...> shim=yes|no guarded=N gnutls=V" on
 * stdout, flushed. */
void hu_result(const char *name, int pass, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* rekeyguard_sessions_guarded(), or -1 when the shim is not mapped. */
long hu_shim_guarded(void);
/* rekeyguard_active_mode(), or "none" when the shim is not mapped. */
const char *hu_shim_mode(void);
/* The file name (basename) of the object that defines `symbol` as seen
 * through dlsym(RTLD_DEFAULT), or "?" . */
const char *hu_defining_object(const char *symbol);

/* Resident set size in KiB (/proc/self/statm). */
long hu_rss_kib(void);
/* Bytes malloc has handed out and not taken back (mallinfo2: arenas and
 * mmapped chunks). 0 when the allocator is not glibc's (ASan, valgrind). */
size_t hu_heap_inuse(void);
/* Gives free memory back to the kernel where glibc can (malloc_trim). */
void hu_trim(void);

/* Sends and receives on both ends of an established pair for `seconds`
 * with a sender and a receiver thread per endpoint, checking every byte;
 * with keyupdates, the client calls gnutls_session_key_update every
 * 200 ms (flags 0 and GNUTLS_KU_PEER alternately) and the server every
 * 400 ms (flags 0): each receiver sees about 5 KeyUpdates a second, below
 * GnuTLS's limit of 8. Returns 0, or a negative GnuTLS error (or -1 for a
 * content mismatch) with a description in why. */
int hu_duplex(struct rg_pair *p, double seconds, int keyupdates, char *why, size_t why_len);

/* Blocking helpers: send all of buf (retrying AGAIN/INTERRUPTED);
 * receive exactly len bytes and check them against stream id from
 * offset 0. Return 0, a GnuTLS error, or -1 for a content mismatch. */
int hu_send_all(gnutls_session_t s, const unsigned char *buf, size_t len);
int hu_recv_checked(gnutls_session_t s, unsigned char *buf, size_t len, uint32_t id);

/* One record each way (len bytes, checked) on an established pair,
 * single-threaded, blocking. Returns 0 or the first GnuTLS error. */
int hu_exchange(struct rg_pair *p, size_t len, uint32_t stream_base);

#endif
