/*
 * keyupdate.c — REKEYGUARD_MODE=keyupdate: serialise only the key changes.
 *
 * GnuTLS 3.8.11 and later make concurrent gnutls_record_send and
 * gnutls_record_recv safe, except for the key changes themselves: both
 * directions bump the shared epoch counter, set up the next epoch and
 * update the traffic secret without a lock (GnuTLS 3.8.13
 * lib/tls13/key_update.c gnutls_session_key_update and
 * _gnutls13_recv_key_update; lib/constate.h _gnutls_epoch_bump). This mode
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
#include "rekeyguard.h"

__thread struct rg_keyupdate_thread rg_ku_thread __attribute__((tls_model("initial-exec")));

static void rg_ku_take(struct rg_session *s)
{
	if (rg_ku_thread.held == s)
		return;
	rg_session_lock(s, __func__);
	rg_ku_thread.held = s;
}

void rg_keyupdate_drop(void)
{
	struct rg_session *s = rg_ku_thread.held;
	if (s == NULL)
		return;
	rg_ku_thread.held = NULL;
	rg_session_unlock(s, __func__);
}

void rg_keyupdate_take_after_push(struct rg_session *s)
{
	rg_ku_take(s);
}

ssize_t rg_keyupdate_run(struct rg_session *s, struct rg_call *call)
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

ssize_t rg_keyupdate_run_locked(struct rg_session *s, struct rg_call *call)
{
	rg_ku_take(s);
	ssize_t ret = call->invoke(call);
	rg_keyupdate_drop();
	return ret;
}

/* The hook the shim installs: GNUTLS_HANDSHAKE_ANY, GNUTLS_HOOK_BOTH. The
 * application's hook (recorded by the interposed
 * gnutls_handshake_set_hook_function) is called exactly when GnuTLS would
 * have called it (GnuTLS 3.7.9/3.8.13 lib/handshake.c
 * _gnutls_call_hook_func: type matches or ANY, when matches or BOTH), and
 * always outside the key-update lock. */
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
	struct rg_session *s = rg_transport_keyupdate_entry(session);
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
