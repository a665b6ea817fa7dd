/*
 * keyupdate.c — REKEYGUARD_MODE=keyupdate: serialise only the key changes.
 *
 * GnuTLS 3.8.11 and later (REKEYGUARD_GNUTLS_REWORKED) make concurrent gnutls_record_send and
 * gnutls_record_recv safe, except for the key changes themselves: both
 * directions bump the shared epoch counter, set up the next epoch and
 * update the traffic secret without a lock (gnutls-mirror.h M13). This mode
 * makes those two critical sections mutually exclusive and leaves every
 * other call to GnuTLS alone.
 *
 * Owns: the handshake hook the shim installs on every tracked session
 * (chained to the application's), and which key-update lock the current
 * thread holds.
 *
 * The lock is the entry's own lock (struct rg_session.lock, unused by the
 * full guard in this mode). It is held:
 *  - receiving: from the shim's GNUTLS_HOOK_PRE of an incoming KeyUpdate
 *    to its GNUTLS_HOOK_POST (between them GnuTLS only changes keys: no
 *    transport I/O, no application callback);
 *  - sending: from the end of the last push inside gnutls_session_key_update
 *    (outer, or GnuTLS's own nested call for the automatic rekey and for a
 *    requested update) until that call returns: its key change follows the
 *    flush of the KeyUpdate message.
 * Invariant: never across a push, a pull or an application callback. The
 * shim's push callback releases it before calling the application's push
 * and takes it again afterwards while the thread is inside a key update,
 * so no blocking I/O ever waits under it and the shim adds no deadlock.
 * Every wrapped call drops a lock its thread still holds when it returns
 * (GnuTLS skips the POST hook when the KeyUpdate fails).
 */
#include "keyupdate.h"

#include "binding.h"
#include "locks.h"
#include "registry.h"
#include "status.h"

RG_THREAD_LOCAL struct rg_keyupdate_thread rg_ku_thread;

struct rg_session *rg_keyupdate_entry(gnutls_session_t session)
{
	gnutls_transport_ptr_t recv_ptr, send_ptr;
	rg_real.gnutls_transport_get_ptr2.fn(session, &recv_ptr, &send_ptr);
	return send_ptr;
}

static void rg_ku_take(struct rg_session *s)
{
	if (rg_ku_thread.held == s)
		return;
	rg_session_lock(s);
	rg_ku_thread.held = s;
}

void rg_keyupdate_drop(void)
{
	struct rg_session *s = rg_ku_thread.held;
	if (s == NULL)
		return;
	rg_ku_thread.held = NULL;
	rg_session_unlock(s);
}

void rg_keyupdate_take_after_push(struct rg_session *s)
{
	rg_ku_take(s);
}

static ssize_t rg_keyupdate_run(struct rg_session *s, struct rg_call *call)
{
	struct rg_session *outer = rg_ku_thread.sending;
	rg_ku_thread.sending = s;
	ssize_t ret = call->invoke(call);
	rg_ku_thread.sending = outer;
	/* A nested key update (inside a send) gives the lock back before the
	 * send goes on to push its record. */
	rg_keyupdate_drop();
	return ret;
}

static ssize_t rg_keyupdate_run_locked(struct rg_session *s, struct rg_call *call)
{
	rg_ku_take(s);
	ssize_t ret = call->invoke(call);
	rg_keyupdate_drop();
	return ret;
}

/* The hook the shim installs: GNUTLS_HANDSHAKE_ANY, GNUTLS_HOOK_BOTH. The
 * application's hook (recorded by the interposed
 * gnutls_handshake_set_hook_function) is called exactly when GnuTLS would
 * have called it (gnutls-mirror.h M12), and always outside the key-update
 * lock. */
static int rg_keyupdate_app_hook(struct rg_session *s, gnutls_session_t session,
				 unsigned htype, unsigned when, unsigned incoming,
				 const gnutls_datum_t *msg)
{
	gnutls_handshake_hook_func hook = s->app_hook;
	if (hook == NULL)
		return 0;
	if ((s->app_hook_htype != htype && s->app_hook_htype != GNUTLS_HANDSHAKE_ANY) ||
	    (s->app_hook_when != (int)when && s->app_hook_when != GNUTLS_HOOK_BOTH))
		return 0;
	return hook(session, htype, when, incoming, msg);
}

int rg_keyupdate_hook(gnutls_session_t session, unsigned htype, unsigned when,
		      unsigned incoming, const gnutls_datum_t *msg)
{
	/* Installed only on tracked sessions, whose send pointer in GnuTLS is
	 * their entry; GnuTLS calls it inside a call on the session, so the
	 * entry outlives it. */
	struct rg_session *s = rg_keyupdate_entry(session);
	if (htype != GNUTLS_HANDSHAKE_KEY_UPDATE || !incoming) {
		if (htype == GNUTLS_HANDSHAKE_FINISHED && when == GNUTLS_HOOK_POST)
			rg_notice_protected(session);
		return rg_keyupdate_app_hook(s, session, htype, when, incoming, msg);
	}
	if (when == GNUTLS_HOOK_POST) {
		rg_keyupdate_drop();
		return rg_keyupdate_app_hook(s, session, htype, when, incoming, msg);
	}
	int ret = rg_keyupdate_app_hook(s, session, htype, when, incoming, msg);
	if (ret >= 0) {
		/* The lookup starts the lock afresh in a forked child. */
		struct rg_session *found = rg_registry_lookup_ref(session);
		if (found != NULL) {
			rg_ku_take(found);
			rg_registry_unref_locked(found);
		}
	}
	return ret;
}

/* keyupdate mode: every call goes straight to GnuTLS; key changes take the
 * session's lock as keyupdate.c describes. */
ssize_t rg_keyupdate_dispatch(struct rg_call *call)
{
	ssize_t ret;
	if (call->family != RG_FAMILY_KEY_UPDATE && call->family != RG_FAMILY_RECV_KEY) {
		ret = call->invoke(call);
		rg_keyupdate_call_end();
		return ret;
	}
	struct rg_session *s = rg_registry_lookup_ref(call->session);
	if (s == NULL) {
		rg_status_note_unguarded(call->session);
		return call->invoke(call);
	}
	if (call->family == RG_FAMILY_KEY_UPDATE)
		ret = rg_keyupdate_run(s, call);
	else
		ret = rg_keyupdate_run_locked(s, call);
	rg_session_lock(s);
	rg_registry_unref_locked(s);
	rg_session_unlock(s);
	return ret;
}
