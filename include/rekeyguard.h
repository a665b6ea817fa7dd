/*
 * rekeyguard.h — librekeyguard's public interface.
 *
 * librekeyguard.so is normally loaded with LD_PRELOAD and needs nothing
 * from the program. This header declares what the library exports besides
 * GnuTLS's own names: a few queries a program (or a test) may dlsym, the
 * activation rekeyguard-inject calls after loading the library into a
 * running process, and the status block rekeyguard-status reads from
 * outside through /proc/PID/mem. Nothing here needs GnuTLS's headers.
 */
#ifndef REKEYGUARD_H
#define REKEYGUARD_H

#include <stdint.h>

#define REKEYGUARD_VERSION "0.1.0"

/* The first GnuTLS release whose key-update rework makes sending and
 * receiving on one session from two threads safe (merge request 1990);
 * only the key changes of the two directions still race there.
 * REKEYGUARD_MODE=auto guards every call below it and serialises only the
 * key changes from it on; rekeyguard-status reports the same rule. */
#define REKEYGUARD_GNUTLS_REWORKED "3.8.11"

/* "0.1.0". */
const char *rekeyguard_version(void);
/* Sessions guarded since the library was loaded. */
unsigned long rekeyguard_sessions_guarded(void);
/* What the library does in this process: "guard", "keyupdate" or "off"
 * (REKEYGUARD_MODE=auto resolved against the GnuTLS version). */
const char *rekeyguard_active_mode(void);
/* Called by rekeyguard-inject right after it dlopen()ed the library into a
 * process started without it: patches the GOT slots naming an interposed
 * GnuTLS function. Returns the number of slots patched, 0 when guarding is
 * off, -1 on failure (x86-64 only; elsewhere always -1). Idempotent. */
long rekeyguard_inject_activate(void);

/* The status block, exported as the data symbol `rekeyguard_status`. Its
 * layout is fixed: rekeyguard-status finds the symbol in the mapped
 * library's ELF symbol table and reads these four words. Fields are
 * updated with relaxed atomics; a reader may see them in any order. */
#define REKEYGUARD_STATUS_MAGIC UINT64_C(0x64726175474b6552) /* "ReKGuard" */

struct rekeyguard_status {
	uint64_t magic;      /* REKEYGUARD_STATUS_MAGIC */
	uint64_t guarded;    /* sessions guarded since load */
	uint64_t unguarded;  /* distinct sessions used through a wrapper the
	                      * library does not guard (older than an
	                      * injection, or DTLS), counted up to 256 */
	uint64_t injected;   /* 1 when loaded by rekeyguard-inject */
};

extern struct rekeyguard_status rekeyguard_status;

#endif
