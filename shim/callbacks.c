/*
 * callbacks.c — the push/pull/pull_timeout/errno callbacks GnuTLS calls.
 *
 * Owns: what GnuTLS sees as the transport of a tracked session. In guard
 * mode the transport pointer is the entry and all four callbacks are the
 * shim's; in keyupdate mode only the push (and the send pointer) is.
 *
 * Invariants:
 *  - Inside a real call (rg_lock_thread.in_call == s, session lock held)
 *    the callbacks never wait and never release the lock: pull serves
 *    staged bytes (inbound.c) or does a non-blocking recv() on the default
 *    fd transport, else records what GnuTLS wanted (s->want) and reports
 *    EAGAIN; push accepts every byte (a non-blocking sendmsg() first on
 *    the default transport, the rest copied to the queue, outbound.c), so
 *    GnuTLS never sees a push fail with EAGAIN (gnutls-mirror.h M8).
 *  - Outside a guarded call (GnuTLS's own calls the shim does not guard)
 *    they call the application's transport as GnuTLS would.
 */
#include "callbacks.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "app-transport.h"
#include "binding.h"
#include "buffers.h"
#include "config.h"
#include "gnutls-mirror.h"
#include "keyupdate.h"
#include "locks.h"
#include "outbound.h"

/* ---- the callbacks GnuTLS calls --------------------------------------- */

static ssize_t rg_report_again(struct rg_session *s)
{
	s->cb_errno = EAGAIN;
	errno = EAGAIN;
	return -1;
}

/* GnuTLS reads a record piece by piece in one loop (gnutls-mirror.h
 * M1): the next pull of the same loop asks for the rest,
 * right after these bytes. Remember where that would be. */
static ssize_t rg_pull_delivered(struct rg_session *s, void *buf, size_t len, ssize_t n)
{
	s->pull_end = (const unsigned char *)buf + n;
	s->pull_left = len - (size_t)n;
	return n;
}

static ssize_t rg_cb_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	struct rg_session *s = ptr;
	if (rg_lock_thread.in_call != s)        /* outside a guarded call */
		return rg_app_pull(s, buf, len);

	s->at_record_boundary = false;
	if (s->in_off < s->in_len) {
		size_t n = s->in_len - s->in_off < len ? s->in_len - s->in_off : len;
		memcpy(buf, s->in_buf + s->in_off, n);
		s->in_off += n;
		if (s->in_off == s->in_len) {
			/* GnuTLS now holds a whole record and no more. */
			s->at_record_boundary = s->in_whole_record;
			rg_input_release(s);
		}
		return rg_pull_delivered(s, buf, len, (ssize_t)n);
	}
	enum rg_in_result staged = s->in_result;
	s->in_result = RG_IN_NONE;
	if (staged == RG_IN_EOF)
		return 0;
	if (staged == RG_IN_READ_ERROR) {
		s->cb_errno = errno = s->in_errno;
		return -1;
	}
	if (s->app_pull == NULL) {
		ssize_t n = recv(rg_fd_of(s->app_recv_ptr), buf, len, MSG_DONTWAIT);
		if (n >= 0)
			return rg_pull_delivered(s, buf, len, n);
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			s->cb_errno = errno;
			return -1;
		}
	}
	s->want = RG_WANT_READ;
	s->want_len = len;
	s->want_continues = (const unsigned char *)buf == s->pull_end && len == s->pull_left;
	return rg_report_again(s);
}

static int rg_cb_pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
	struct rg_session *s = ptr;
	if (rg_lock_thread.in_call != s)
		return rg_app_pull_timeout(s, ms);
	s->timeout_seen = true;

	if (s->in_off < s->in_len)
		return 1;
	switch (s->in_result) {
	case RG_IN_EOF:
	case RG_IN_READ_ERROR:
		return 1;                 /* readable; pull reports it */
	case RG_IN_READABLE:
		s->in_result = RG_IN_NONE;
		return s->in_wait_ret;
	case RG_IN_WAIT_ERROR:
		s->in_result = RG_IN_NONE;
		s->cb_errno = errno = s->in_errno;
		return -1;
	case RG_IN_NONE:
		break;
	}
	if (s->app_pull_timeout == NULL) {  /* poll() without waiting */
		int r = rg_real.gnutls_system_recv_timeout.fn(s->app_recv_ptr, 0);
		if (r != 0) {
			s->cb_errno = errno;
			return r;
		}
	}
	/* GnuTLS's timeout covers the whole read (gnutls-mirror.h M1); across the shim's retries it is a deadline. */
	unsigned wait_ms = ms;
	if (ms != GNUTLS_INDEFINITE_TIMEOUT) {
		uint64_t now = rg_monotonic_ns();
		if (s->deadline_ns == 0 || s->deadline_ns > now + (uint64_t)ms * 1000000u)
			s->deadline_ns = now + (uint64_t)ms * 1000000u;
		uint64_t left_ms = s->deadline_ns > now ? (s->deadline_ns - now) / 1000000u : 0;
		if (left_ms == 0)
			return 0;
		if (left_ms < wait_ms)
			wait_ms = (unsigned)left_ms;
	}
	s->want = RG_WANT_WAIT;
	s->want_ms = wait_ms;
	return (int)rg_report_again(s);
}

static ssize_t rg_cb_vec_push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int count)
{
	struct rg_session *s = ptr;
	if (rg_lock_thread.in_call != s)
		return rg_app_push(s, iov, count, 0);
	if (s->push_dead_errno != 0) {     /* the transport failed for good */
		s->cb_errno = errno = s->push_dead_errno;
		return -1;
	}

	size_t total = rg_iov_total(iov, count);
	size_t done = 0;
	bool default_transport = s->app_push == NULL && s->app_vec_push == NULL;
	if (default_transport && s->out_queued == s->out_flushed) {
		ssize_t n = rg_app_push(s, iov, count, MSG_DONTWAIT);
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			s->cb_errno = errno;
			return -1;
		}
		done = n > 0 ? (size_t)n : 0;
	}
	if (done < total) {
		struct rg_chunk *reserved = rg_queue_reserve(iov, count, done);
		if (reserved == RG_QUEUE_NO_MEMORY) {
			/* Out of memory: a short write (GnuTLS keeps the rest
			 * and returns GNUTLS_E_AGAIN), or a failed push. */
			rg_log(RG_LOG_ERROR, "out of memory queueing %zu bytes; %s", total - done,
			       done > 0 ? "reporting a short write" : "the push fails");
			s->out_pushed += done;
			if (done > 0)
				return (ssize_t)done;
			s->cb_errno = errno = ENOMEM;
			return -1;
		}
		rg_queue_put(s, reserved, iov, count, done);
	}
	s->out_pushed += total;
	return (ssize_t)total;
}

static int rg_cb_errno(gnutls_transport_ptr_t ptr)
{
	struct rg_session *s = ptr;
	if (rg_lock_thread.in_call == s)
		return s->cb_errno;
	if (s->app_errno != NULL)
		return s->app_errno(s->app_recv_ptr);
	return errno;
}

/* GnuTLS's system_errno, for sessions handed back to GnuTLS. */
static int rg_plain_errno(gnutls_transport_ptr_t ptr)
{
	(void)ptr;
	return errno;
}

/* keyupdate mode: only the push is the shim's (it must drop and take the
 * key-update lock around the application's push); GnuTLS keeps the
 * application's receive pointer, pull, pull_timeout and errno function and
 * calls them itself. The send pointer is the entry. */
static ssize_t rg_cb_keyupdate_push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int count)
{
	struct rg_session *s = ptr;
	rg_keyupdate_before_io();
	rg_ku_thread.errno_set = NULL;
	ssize_t n = rg_app_push(s, iov, count, 0);
	if (n < 0 && s->app_errno != NULL && rg_ku_thread.errno_set != s->session &&
	    rg_errno_gets_send_ptr()) {
		/* GnuTLS asks the errno function about a failed push with the
		 * send pointer (gnutls-mirror.h M3), which GnuTLS has as
		 * the entry: ask it with the application's, and hand GnuTLS the
		 * answer the way gnutls_transport_set_errno does (it wins). */
		int saved = errno;
		int err = s->app_errno(s->app_send_ptr);
		rg_real.gnutls_transport_set_errno.fn(s->session, err);
		errno = saved;
	}
	rg_keyupdate_after_push(s, n);
	return n;
}

void rg_transport_ptrs_changed(struct rg_session *s)
{
	if (rg_active() == RG_MODE_KEYUPDATE)
		rg_real.gnutls_transport_set_ptr2.fn(s->session, s->app_recv_ptr, s);
}

void rg_transport_install(struct rg_session *s)
{
	if (rg_active() == RG_MODE_KEYUPDATE) {
		rg_real.gnutls_transport_set_vec_push_function.fn(s->session, rg_cb_keyupdate_push);
		rg_transport_ptrs_changed(s);
		return;
	}
	rg_real.gnutls_transport_set_pull_function.fn(s->session, rg_cb_pull);
	rg_real.gnutls_transport_set_vec_push_function.fn(s->session, rg_cb_vec_push);
	rg_real.gnutls_transport_set_errno_function.fn(s->session, rg_cb_errno);
	rg_real.gnutls_transport_set_ptr.fn(s->session, s);
	rg_transport_refresh(s);
}

void rg_transport_refresh(struct rg_session *s)
{
	/* GnuTLS refuses a timeout on a custom pull that has no pull_timeout
	 * (gnutls-mirror.h M5): give GnuTLS its own default then,
	 * so that it reports GNUTLS_E_PULL_ERROR itself, as without the shim. */
	if (s->app_pull != NULL && s->app_pull_timeout == NULL)
		rg_real.gnutls_transport_set_pull_timeout_function.fn(
			s->session, rg_real.gnutls_system_recv_timeout.fn);
	else
		rg_real.gnutls_transport_set_pull_timeout_function.fn(s->session, rg_cb_pull_timeout);
}

void rg_transport_release(struct rg_session *s)
{
	rg_real.gnutls_transport_set_errno_function.fn(
		s->session, s->app_errno != NULL ? s->app_errno : rg_plain_errno);
	rg_real.gnutls_transport_set_pull_timeout_function.fn(
		s->session, s->app_pull_timeout != NULL ? s->app_pull_timeout
							: rg_real.gnutls_system_recv_timeout.fn);
	if (s->app_pull != NULL)
		rg_real.gnutls_transport_set_pull_function.fn(s->session, s->app_pull);
	if (s->app_vec_push != NULL)
		rg_real.gnutls_transport_set_vec_push_function.fn(s->session, s->app_vec_push);
	else if (s->app_push != NULL)
		rg_real.gnutls_transport_set_push_function.fn(s->session, s->app_push);
	rg_real.gnutls_transport_set_ptr2.fn(s->session, s->app_recv_ptr, s->app_send_ptr);
	if (rg_active() == RG_MODE_KEYUPDATE)
		rg_real.gnutls_handshake_set_hook_function.fn(
			s->session, s->app_hook != NULL ? s->app_hook_htype : GNUTLS_HANDSHAKE_ANY,
			s->app_hook != NULL ? s->app_hook_when : GNUTLS_HOOK_BOTH, s->app_hook);
}

