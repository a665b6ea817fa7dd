/*
 * status.c — what the library tells operators about itself.
 *
 * Owns: the exported status block (include/rekeyguard.h) that
 * rekeyguard-status reads from outside, the one-time notice when a TLS 1.3
 * session is first protected, and rekeyguard's exported queries.
 * Invariants: the counters are relaxed atomics, and counting takes no lock
 * (the calls of a busy unguarded session touch no shared cache line but
 * the slots they read).
 */
#include "status.h"

#include "binding.h"
#include "config.h"

RG_EXPORT struct rekeyguard_status rekeyguard_status = { REKEYGUARD_STATUS_MAGIC, 0, 0, 0 };

void rg_status_count_guarded(void)
{
	__atomic_add_fetch(&rekeyguard_status.guarded, 1, __ATOMIC_RELAXED);
}

#define RG_UNGUARDED_SEEN 256
/* The distinct unguarded sessions seen so far, without a lock: a slot is
 * claimed with a compare-and-swap from NULL, always the first free one, so
 * two threads noting the same new session meet at the same slot and it is
 * counted once. Each thread remembers the last session it noted, so that
 * the calls of a busy unguarded session (an injected QEMU's NBD or VNC
 * connection) touch no shared cache line but the slots they read. */
static gnutls_session_t rg_unguarded_set[RG_UNGUARDED_SEEN];
static RG_THREAD_LOCAL gnutls_session_t rg_unguarded_last;

void rg_status_note_unguarded(gnutls_session_t session)
{
	if (rg_unguarded_last == session)
		return;
	rg_unguarded_last = session;
	for (unsigned i = 0; i < RG_UNGUARDED_SEEN; i++) {
		gnutls_session_t seen = __atomic_load_n(&rg_unguarded_set[i], __ATOMIC_ACQUIRE);
		if (seen == NULL) {
			gnutls_session_t expected = NULL;
			if (__atomic_compare_exchange_n(&rg_unguarded_set[i], &expected, session, false,
							__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
				__atomic_add_fetch(&rekeyguard_status.unguarded, 1, __ATOMIC_RELAXED);
				return;
			}
			seen = expected;   /* another thread claimed it first */
		}
		if (seen == session)
			return;
	}
}

void rg_status_mark_injected(void)
{
	__atomic_store_n(&rekeyguard_status.injected, 1, __ATOMIC_RELAXED);
}

void rg_notice_protected(gnutls_session_t session)
{
	static int noticed;
	if (rg_real.gnutls_protocol_get_version.fn(session) != GNUTLS_TLS1_3)
		return;
	if (__atomic_exchange_n(&noticed, 1, __ATOMIC_ACQ_REL) == 0)
		rg_log(rg_config_get()->notice_level, "guarding TLS 1.3 sessions against the "
		       "key-update race (GnuTLS %s, REKEYGUARD_MODE=%s: %s)", rg_gnutls_version(),
		       rg_mode_name(rg_config_get()->mode),
		       rg_guarding() ? "every call serialised"
				     : "key changes serialised, the rest left to GnuTLS");
}

/* ---- rekeyguard's own API (include/rekeyguard.h) ------------------------ */

RG_EXPORT const char *rekeyguard_version(void)
{
	return REKEYGUARD_VERSION;
}

RG_EXPORT unsigned long rekeyguard_sessions_guarded(void)
{
	return (unsigned long)__atomic_load_n(&rekeyguard_status.guarded, __ATOMIC_RELAXED);
}

RG_EXPORT const char *rekeyguard_active_mode(void)
{
	return rg_mode_name(rg_active());
}
