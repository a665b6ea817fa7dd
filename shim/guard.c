/*
 * guard.c — the guarded loop.
 *
 * Owns: rg_guard_call and its loop: the session lock held for the whole
 * of each real GnuTLS call, released only between real calls, while the
 * loop performs the application's own transport I/O exactly as configured
 * (blocking or not: outbound.c flushes, inbound.c waits and stages), and
 * the retry of a call that ended early.
 *
 * Invariants:
 *  - A call returns only when its own bytes are written, or with the error
 *    the application's transport gave. AGAIN/INTERRUPTED are "owed": the
 *    retry of the same call finishes the write and returns the result the
 *    real call had, without calling GnuTLS again.
 *  - GnuTLS calling itself (a nested call on the session this thread is in
 *    a real call on) goes straight to GnuTLS; only the outermost call
 *    waits (locks.h, the callback rule).
 *  - Sessions the registry does not know (DTLS, older than an injection)
 *    go straight to GnuTLS.
 */
#include "guard.h"

#include "binding.h"
#include "config.h"
#include "gnutls-mirror.h"
#include "inbound.h"
#include "keyupdate.h"
#include "locks.h"
#include "outbound.h"
#include "provoke.h"
#include "registry.h"
#include "status.h"

static void rg_notice_tls13(struct rg_session *s, struct rg_call *call, ssize_t ret)
{
	bool done = (call->family == RG_FAMILY_HANDSHAKE && ret == 0) ||
		    ((call->family == RG_FAMILY_SEND || call->family == RG_FAMILY_RECV) && ret >= 0);
	if (!done)
		return;
	s->proto_checked = true;
	rg_notice_protected(s->session);
}

/* A record gnutls_record_uncork sent (a nested gnutls_record_send). */
static void rg_uncork_note(struct rg_session *s, ssize_t size)
{
	if (s->uncork_count < RG_UNCORK_RECORDS) {
		s->uncork_records[s->uncork_count].end = s->out_pushed;
		s->uncork_records[s->uncork_count].size = size;
	}
	if (s->uncork_count <= RG_UNCORK_RECORDS)
		s->uncork_count++;
}

/* What GnuTLS's uncork retry returns: the sizes of the records completed
 * by this retry (gnutls-mirror.h M6). */
static ssize_t rg_uncork_retry_result(struct rg_session *s, uint64_t written_before,
				      ssize_t whole)
{
	if (s->uncork_count > RG_UNCORK_RECORDS)
		return whole;
	ssize_t total = 0;
	for (unsigned i = 0; i < s->uncork_count; i++)
		if (s->uncork_records[i].end > written_before)
			total += s->uncork_records[i].size;
	return total;
}

/* True when a receive may read the next record before calling GnuTLS:
 * the handshake done, no timeout to honour, GnuTLS holding exactly whole
 * records, none of them undelivered. On either transport: the read is the
 * application's pull, or the recv() GnuTLS's fd transport would make, done
 * outside the lock, so that the lock is held only while GnuTLS decrypts
 * (measured on the fd transport, 10 rounds each: the migration shape's
 * return-path p50 1.41x plain before, 1.28x after; its MSG_PEEK wait was
 * followed by the recv()s under the lock). */
static bool rg_read_ahead_ok(struct rg_session *s)
{
	return s->at_record_boundary && s->proto_checked &&
	       s->record_timeout_ms == 0 && !s->timeout_seen && s->in_len == 0 &&
	       s->in_result == RG_IN_NONE && !s->reader_active &&
	       rg_real.gnutls_record_check_pending.fn(s->session) == 0;
}

static ssize_t rg_guard_run(struct rg_session *s, struct rg_call *call)
{
	struct rg_session *outer = rg_lock_thread.in_call;
	ssize_t ret;

	rg_session_lock_turn(s, rg_lock_thread.in_call == NULL, false);
	s->direction_override = -1;
	s->deadline_ns = 0;

	/* The retry of a call that returned AGAIN/INTERRUPTED while its bytes
	 * were queued: finish writing, then give the real call's result. */
	if (s->owed_valid && s->owed_family == call->family) {
		uint64_t written_before = s->out_pushed - (s->out_queued - s->out_flushed);
		int fr = rg_flush_until(s, s->owed_mark);
		if (fr < 0) {
			ret = fr;
			s->direction_override = 1;
			goto out;
		}
		s->owed_valid = false;
		if (s->owed_complete) {
			ret = s->owed_result;
			if (call->family == RG_FAMILY_UNCORK)
				ret = rg_uncork_retry_result(s, written_before, ret);
			goto out;
		}
	}
	if (call->family == RG_FAMILY_UNCORK)
		s->uncork_count = 0;

	if (s->poisoned || s->dead) {
		/* dead: this call raced the session's gnutls_deinit (registry.c) */
		ret = GNUTLS_E_INVALID_SESSION;
		goto out;
	}
	if (call->family == RG_FAMILY_RECV && rg_read_ahead_ok(s)) {
		/* GnuTLS will ask for the next record's header first: read the
		 * record before the real call instead of after a first real
		 * call that can only say so (one real call per record). */
		s->want = RG_WANT_READ;
		s->want_len = RG_TLS_HEADER;
		s->want_continues = false;
		s->want_bytes = true;
		if (rg_wait_for_input(s, &ret))
			goto out;
	}
	if (s->push_dead_errno != 0 && call->family == RG_FAMILY_SEND) {
		/* GnuTLS refuses sends once a push failed for good
		 * (gnutls-mirror.h M7). */
		ret = GNUTLS_E_INVALID_SESSION;
		goto out;
	}

	for (;;) {
		uint64_t queued_before = s->out_queued;
		s->want = RG_WANT_NONE;
		s->pull_end = NULL;
		s->timeout_seen = false;
		s->call_family = call->family;
		rg_lock_thread.in_call = s;
		ret = call->invoke(call);
		rg_lock_thread.in_call = outer;
		/* A session-data query swallows the wait it asked for: a TLS 1.3
		 * client's gnutls_session_get_data2 waits up to a round trip for
		 * the server's ticket and, on GNUTLS_E_AGAIN or TIMEDOUT, returns
		 * success with an empty placeholder (gnutls-mirror.h M10). Do
		 * the wait it wanted, then ask again; past the deadline the
		 * retry gets GnuTLS's own answer. */
		bool swallowed = call->family == RG_FAMILY_SESSION_DATA && ret >= 0;
		bool wants_input = (ret == GNUTLS_E_AGAIN || swallowed) && s->want != RG_WANT_NONE;

		if (s->out_queued != queued_before) {
			int fr = rg_flush_until(s, s->out_queued);
			if (fr < 0) {
				if (fr == GNUTLS_E_AGAIN || fr == GNUTLS_E_INTERRUPTED) {
					s->owed_valid = true;
					s->owed_family = call->family;
					s->owed_mark = s->out_queued;
					s->owed_complete = !wants_input;
					s->owed_result = ret;
					s->direction_override = 1;
				}
				ret = fr;
				break;
			}
		}
		if (!wants_input)
			break;
		if (rg_wait_for_input(s, &ret) && !(swallowed && ret == GNUTLS_E_TIMEDOUT))
			break;
	}
	if (call->family == RG_FAMILY_RECV && ret <= 0 && ret != GNUTLS_E_AGAIN)
		s->at_record_boundary = false;   /* EOF or an error: no read-ahead */
	if (!s->proto_checked)
		rg_notice_tls13(s, call, ret);
out:
	rg_registry_unref_locked(s);
	rg_session_unlock(s);
	return ret;
}

static ssize_t rg_guard_dispatch(struct rg_call *call)
{
	enum rg_mode mode = rg_active();
	if (mode == RG_MODE_KEYUPDATE)
		return rg_keyupdate_dispatch(call);
	if (mode != RG_MODE_GUARD)
		return call->invoke(call);
	struct rg_session *current = rg_lock_thread.in_call;
	if (current != NULL && current->session == call->session) {
		/* GnuTLS calling itself. Uncork's sends are counted once
		 * (gnutls_record_send calls gnutls_record_send2 in turn). */
		if (call->family == RG_FAMILY_KEY_UPDATE && current->call_family == RG_FAMILY_SEND)
			rg_log(RG_LOG_DEBUG, "GnuTLS's own key update inside a send (automatic "
			       "after 2^24 records, or answering the peer's request)");
		bool note = call->family == RG_FAMILY_SEND &&
			    current->call_family == RG_FAMILY_UNCORK && !current->uncork_sending;
		current->uncork_sending |= note;
		ssize_t ret = call->invoke(call);
		if (note) {
			current->uncork_sending = false;
			if (ret > 0)
				rg_uncork_note(current, ret);
		}
		return ret;
	}
	struct rg_session *s = rg_registry_lookup_ref(call->session);
	if (s == NULL) {
		rg_status_note_unguarded(call->session);
		return call->invoke(call);   /* DTLS, or created before we were */
	}
	return rg_guard_run(s, call);
}

ssize_t rg_guard_call(struct rg_call *call)
{
	/* rg_active() first: it parses the configuration once, so that the
	 * provoke setting can be read without pthread_once. */
	(void)rg_active();
	if (call->family == RG_FAMILY_SEND && rg_config_value_parsed()->provoke_every != 0)
		return rg_provoke_send(call, rg_guard_dispatch);
	return rg_guard_dispatch(call);
}

