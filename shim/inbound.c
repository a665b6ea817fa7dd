/*
 * inbound.c — inbound staging.
 *
 * Owns: s->in_buf and the staged outcome (in_len/in_off, in_result,
 * in_errno, in_wait_ret) between the application's own input, done
 * outside the lock, and the real call that consumes it (callbacks.c).
 * Invariants: only one thread reads at a time (reader_active; while set
 * only it touches in_buf); the application's pull is never asked for more
 * bytes than GnuTLS asked for, so gnutls_record_check_pending needs no
 * correction; when GnuTLS asked for a record header the body is read the
 * same way right after it (gnutls-mirror.h M1), so that one real call
 * consumes one whole record.
 */
#include "inbound.h"

#include <errno.h>
#include <sys/socket.h>

#include "app-transport.h"
#include "buffers.h"
#include "common.h"
#include "config.h"
#include "gnutls-mirror.h"
#include "locks.h"

struct rg_pull_outcome {
	size_t got;      /* bytes read into s->in_buf */
	ssize_t last;    /* the pull that ended the loop: 0 (EOF) or -1 */
	int err;
};

/* The application's pull, called as GnuTLS's read loop calls it
 * (gnutls-mirror.h M1): until `len` bytes are in or a pull returns 0 or
 * -1. When GnuTLS asked for a record header, the body it will ask for next
 * is read the same way, so that one real call consumes the whole record.
 * Runs without the lock; s->in_buf has room for the header and any body. */
static struct rg_pull_outcome rg_pull_like_gnutls(struct rg_session *s, size_t len, bool whole_record)
{
	struct rg_pull_outcome o = { 0, 1, 0 };
	for (;;) {
		while (o.got < len) {
			rg_capture_begin(s);
			errno = 0;
			ssize_t n = rg_app_pull(s, s->in_buf + o.got, len - o.got);
			if (n <= 0) {
				o.last = n;
				o.err = n < 0 ? rg_app_errno(s, errno) : 0;
				rg_capture_end();
				return o;
			}
			rg_capture_end();
			o.got += (size_t)n;
		}
		if (!whole_record || len != RG_TLS_HEADER)
			return o;
		size_t body = rg_tls_body_length(s->in_buf);
		if (body == 0)
			return o;
		len += body;
		whole_record = false;
	}
}

bool rg_wait_for_input(struct rg_session *s, ssize_t *ret)
{
	enum rg_want want = s->want;
	size_t len = s->want_len;
	unsigned ms = s->want_ms;
	bool continues = want == RG_WANT_READ && s->want_continues;
	bool want_bytes = s->want_bytes;
	/* With a timeout GnuTLS polls before every pull: one pull at a time. */
	bool whole_record = !s->timeout_seen;
	s->want = RG_WANT_NONE;
	s->want_bytes = false;

	if (s->reader_active) {          /* another thread is reading: retry after it */
		rg_session_wait(s);
		return false;
	}
	if (s->in_off < s->in_len || s->in_result != RG_IN_NONE)
		return false;                /* something is staged already */

	bool read_bytes = want == RG_WANT_READ && (s->app_pull != NULL || want_bytes);
	size_t room = len == RG_TLS_HEADER ? RG_TLS_HEADER + RG_TLS_MAX_BODY : len;
	if (read_bytes && !rg_input_acquire(s, room)) {
		rg_log(RG_LOG_ERROR, "out of memory staging %zu input bytes; the pull fails", room);
		s->in_result = RG_IN_READ_ERROR;
		s->in_errno = ENOMEM;
		return false;
	}
	s->reader_active = true;
	rg_session_unlock(s);

	struct rg_pull_outcome o = { 0, 1, 0 };
	if (read_bytes) {
		o = rg_pull_like_gnutls(s, len, whole_record);
	} else {
		rg_capture_begin(s);
		errno = 0;
		if (want == RG_WANT_READ) {
			/* Default fd transport: wait as the real recv() would
			 * (blocking mode, SO_RCVTIMEO, SA_RESTART, errors)
			 * without taking the bytes; the next real call reads
			 * them without waiting. */
			unsigned char byte;
			o.last = recv(rg_fd_of(s->app_recv_ptr), &byte, 1, MSG_PEEK);
		} else {
			o.last = rg_app_pull_timeout(s, ms);
		}
		o.err = o.last < 0 ? rg_app_errno(s, errno) : 0;
		rg_capture_end();
	}

	rg_session_lock_turn(s, rg_lock_thread.in_call == NULL, o.got > 0 || o.last > 0);
	s->reader_active = false;
	rg_session_broadcast(s);
	bool timed_out = want == RG_WANT_WAIT ? o.last == 0
			 : s->deadline_ns != 0 && rg_monotonic_ns() >= s->deadline_ns;
	if (timed_out) {
		*ret = GNUTLS_E_TIMEDOUT;
		return true;
	}
	if (o.got > 0) {
		s->in_len = o.got;
		s->in_off = 0;
		s->in_whole_record = len == RG_TLS_HEADER && o.got > RG_TLS_HEADER &&
				     o.got == RG_TLS_HEADER + rg_tls_body_length(s->in_buf);
	} else {
		rg_input_release(s);
	}
	if (o.got == 0 && continues && (o.last == 0 || (o.last < 0 && (o.err == EAGAIN ||
			o.err == EWOULDBLOCK || o.err == EINTR)))) {
		return true;   /* *ret is the real call's GNUTLS_E_AGAIN */
	}
	if (o.last < 0) {
		s->in_result = want == RG_WANT_READ ? RG_IN_READ_ERROR : RG_IN_WAIT_ERROR;
		s->in_errno = o.err;
	} else if (o.last == 0) {
		s->in_result = RG_IN_EOF;
	} else if (!read_bytes) {
		s->in_result = RG_IN_READABLE;
		s->in_wait_ret = want == RG_WANT_READ ? 1 : (int)o.last;
	}
	return false;
}

