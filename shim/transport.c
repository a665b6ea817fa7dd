/*
 * transport.c — the guarded transport.
 *
 * Owns: the push/pull/pull_timeout/errno callbacks the shim installs on
 * every guarded session (GnuTLS's transport pointer is the entry), the
 * inbound staging and outbound queue, and rg_guard_call's loop.
 *
 * Invariants:
 *  - The session lock is held for the whole of each real GnuTLS call and
 *    is never released inside a callback (background.md, lesson 1).
 *  - Inside a real call the callbacks never wait: pull serves staged bytes
 *    or does a non-blocking recv() on the default fd transport, else
 *    records what GnuTLS wanted (s->want) and reports EAGAIN; push accepts
 *    every byte (a non-blocking sendmsg() first on the default transport,
 *    the rest copied to the queue). GnuTLS therefore never sees a push fail
 *    with EAGAIN (GnuTLS 3.7.9 would resend a record after a key update).
 *  - Between real calls, with the lock dropped, the loop performs the
 *    application's own transport I/O exactly as configured (blocking or
 *    not) and stages the result; the next real call consumes it. Only one
 *    thread reads (reader_active) and one writes (flusher_active) at a time.
 *  - The application's pull is never asked for more bytes than GnuTLS asked
 *    for, so gnutls_record_check_pending needs no correction.
 *  - Queued bytes are written in the order GnuTLS pushed them. A call
 *    returns only when its own bytes are written, or with the error the
 *    application's transport gave (AGAIN/INTERRUPTED are "owed": the
 *    retry of the same call finishes the write and returns the result the
 *    real call had, without calling GnuTLS again).
 */
#include "rekeyguard.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#define RG_CHUNK_SIZE (16384 + 1024) /* a full TLS record and its overhead */
#define RG_MAX_IOV 16

/* Per-thread state. initial-exec: a few bytes, no __tls_get_addr call on
 * the hot path (glibc keeps static TLS room for late-loaded libraries). */
struct rg_thread_state {
	struct rg_session *current;   /* lock held by this thread in a real call */
	struct rg_session *capturing; /* its transport runs outside the lock */
	bool captured;
	int captured_errno;
};
static __thread struct rg_thread_state rg_thread
	__attribute__((tls_model("initial-exec")));

struct rg_session *rg_transport_current(void)
{
	return rg_thread.current;
}

uint64_t rg_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int rg_fd_of(gnutls_transport_ptr_t ptr)
{
	return (int)(intptr_t)ptr;
}

static size_t rg_iov_total(const giovec_t *iov, int count)
{
	size_t total = 0;
	for (int i = 0; i < count; i++)
		total += iov[i].iov_len;
	return total;
}

/* ---- the application's transport, called as GnuTLS would ------------- */

static ssize_t rg_app_pull(struct rg_session *s, void *buf, size_t len)
{
	if (s->app_pull != NULL)
		return s->app_pull(s->app_recv_ptr, buf, len);
	return recv(rg_fd_of(s->app_recv_ptr), buf, len, 0);
}

static int rg_app_pull_timeout(struct rg_session *s, unsigned ms)
{
	if (s->app_pull_timeout != NULL)
		return s->app_pull_timeout(s->app_recv_ptr, ms);
	return rg_real.gnutls_system_recv_timeout.fn(s->app_recv_ptr, ms);
}

/* GnuTLS's own emulation of writev over a push function (buffers.c
 * _gnutls_writev_emu): stop at the first short write. */
static ssize_t rg_app_push_emulated(struct rg_session *s, const giovec_t *iov, int count)
{
	size_t total = 0;
	ssize_t ret = 0;
	for (int i = 0; i < count; i++) {
		size_t sent = 0, left = iov[i].iov_len;
		const char *p = iov[i].iov_base;
		do {
			ret = s->app_push(s->app_send_ptr, p, left);
			if (ret > 0) {
				sent += ret;
				left -= ret;
				p += ret;
			}
		} while (ret > 0 && left > 0);
		if (sent > 0)
			ret = sent;
		if (ret == -1)
			break;
		total += ret;
		if ((size_t)ret != iov[i].iov_len)
			break;
	}
	return total > 0 ? (ssize_t)total : ret;
}

static ssize_t rg_app_push(struct rg_session *s, const giovec_t *iov, int count, int flags)
{
	if (s->app_vec_push != NULL)
		return s->app_vec_push(s->app_send_ptr, iov, count);
	if (s->app_push != NULL)
		return rg_app_push_emulated(s, iov, count);
	struct msghdr hdr;
	memset(&hdr, 0, sizeof hdr);
	hdr.msg_iov = (struct iovec *)iov;
	hdr.msg_iovlen = count;
	return sendmsg(rg_fd_of(s->app_send_ptr), &hdr,
		       flags | (s->no_signal ? MSG_NOSIGNAL : 0));
}

/* The errno GnuTLS would have seen after the application's callback
 * failed: gnutls_transport_set_errno wins, else the errno function, else
 * errno (buffers.c get_errno). */
static int rg_app_errno(struct rg_session *s, int saved_errno)
{
	if (rg_thread.captured)
		return rg_thread.captured_errno;
	if (s->app_errno != NULL)
		return s->app_errno(s->app_recv_ptr);
	return saved_errno;
}

static void rg_capture_begin(struct rg_session *s)
{
	rg_thread.capturing = s;
	rg_thread.captured = false;
}

static void rg_capture_end(void)
{
	rg_thread.capturing = NULL;
}

bool rg_transport_capture_errno(gnutls_session_t session, int err)
{
	struct rg_session *s = rg_thread.capturing;
	if (s == NULL || s->session != session)
		return false;
	if (err != 0) {   /* GnuTLS treats 0 as "not set" */
		rg_thread.captured = true;
		rg_thread.captured_errno = err;
	}
	return true;
}

/* buffers.c errno_to_gerr for a stream session. */
static int rg_push_error(int err)
{
	switch (err) {
	case EAGAIN:
		return GNUTLS_E_AGAIN;
	case EINTR:
		return GNUTLS_E_INTERRUPTED;
	case ECONNRESET:
		return GNUTLS_E_PREMATURE_TERMINATION;
	default:
		return GNUTLS_E_PUSH_ERROR;
	}
}

/* ---- outbound queue ----------------------------------------------------
 * One chunk per buffer GnuTLS handed to push, so that a flush gives the
 * application's push the same buffers GnuTLS would have (its writev
 * emulation calls push once per buffer; short writes depend on it). */

/* Each thread keeps one output chunk and one input buffer for its next
 * call, so that buffers are held per thread, not per session: a process
 * with 10,000 idle sessions holds 10,000 small entries and no buffers.
 * Freed when the thread exits. */
struct rg_buffer_cache {
	struct rg_chunk *chunk;
	unsigned char *input;
	size_t input_cap;
	bool registered;         /* rg_cache_key set for this thread */
};
static __thread struct rg_buffer_cache rg_cache __attribute__((tls_model("initial-exec")));
static pthread_key_t rg_cache_key;   /* created by rg_transport_init */
static bool rg_cache_key_ok;

static void rg_cache_free(void *unused)
{
	(void)unused;
	free(rg_cache.chunk);
	free(rg_cache.input);
	memset(&rg_cache, 0, sizeof rg_cache);
}

void rg_transport_init(void)
{
	rg_cache_key_ok = pthread_key_create(&rg_cache_key, rg_cache_free) == 0;
}

/* Arranges for this thread's cache to be freed when it exits. */
static void rg_cache_register(void)
{
	if (!rg_cache.registered && rg_cache_key_ok) {
		pthread_setspecific(rg_cache_key, &rg_cache);
		rg_cache.registered = true;
	}
}

static struct rg_chunk *rg_chunk_get(size_t need)
{
	struct rg_chunk *c = rg_cache.chunk;
	if (c != NULL && c->cap >= need) {
		rg_cache.chunk = NULL;
	} else {
		size_t cap = need > RG_CHUNK_SIZE ? need : RG_CHUNK_SIZE;
		c = malloc(sizeof *c + cap);
		if (c == NULL)
			return NULL;
		c->cap = cap;
	}
	c->next = NULL;
	c->len = c->off = 0;
	return c;
}

static void rg_chunk_put(struct rg_chunk *c)
{
	c->next = NULL;
	if (rg_cache.chunk == NULL && c->cap == RG_CHUNK_SIZE) {
		rg_cache.chunk = c;
		rg_cache_register();
	} else {
		free(c);
	}
}

/* The session's input staging buffer, at least `room` bytes; false when
 * memory is exhausted. */
static bool rg_input_acquire(struct rg_session *s, size_t room)
{
	if (s->in_buf == NULL && rg_cache.input != NULL && rg_cache.input_cap >= room) {
		s->in_buf = rg_cache.input;
		s->in_cap = rg_cache.input_cap;
		rg_cache.input = NULL;
		rg_cache.input_cap = 0;
	}
	if (s->in_cap >= room)
		return true;
	unsigned char *buf = realloc(s->in_buf, room);
	if (buf == NULL)
		return false;
	s->in_buf = buf;
	s->in_cap = room;
	return true;
}

/* Gives the emptied staging buffer back to this thread's cache. */
static void rg_input_release(struct rg_session *s)
{
	if (s->in_buf == NULL)
		return;
	if (rg_cache.input == NULL) {
		rg_cache.input = s->in_buf;
		rg_cache.input_cap = s->in_cap;
		rg_cache_register();
	} else {
		free(s->in_buf);
	}
	s->in_buf = NULL;
	s->in_cap = s->in_len = s->in_off = 0;
}

static void rg_chunk_put_list(struct rg_chunk *list)
{
	for (struct rg_chunk *next; list != NULL; list = next) {
		next = list->next;
		rg_chunk_put(list);
	}
}

/* How many bytes of buffer i are still to be queued once the first
 * `skip` bytes of the whole vector are written. */
static size_t rg_iov_rest(const giovec_t *iov, int i, size_t skip)
{
	size_t before = rg_iov_total(iov, i);
	size_t len = iov[i].iov_len;
	if (skip <= before)
		return len;
	return skip - before >= len ? 0 : len - (skip - before);
}

/* One empty chunk per buffer with bytes left after `skip`, reserved before
 * any of them is queued so that running out of memory fails cleanly. */
static struct rg_chunk *rg_queue_reserve(const giovec_t *iov, int count,
					 size_t skip)
{
	struct rg_chunk *list = NULL;
	for (int i = count - 1; i >= 0; i--) {
		size_t rest = rg_iov_rest(iov, i, skip);
		if (rest == 0)
			continue;
		struct rg_chunk *c = rg_chunk_get(rest);
		if (c == NULL) {
			rg_chunk_put_list(list);
			return (struct rg_chunk *)-1;
		}
		c->next = list;
		list = c;
	}
	return list;
}

/* Queues iov's bytes from offset `skip` on, using the reserved chunks. */
static void rg_queue_put(struct rg_session *s, struct rg_chunk *reserved,
			 const giovec_t *iov, int count, size_t skip)
{
	bool first = true;
	for (int i = 0; i < count; i++) {
		size_t rest = rg_iov_rest(iov, i, skip);
		if (rest == 0)
			continue;
		struct rg_chunk *c = reserved;
		reserved = c->next;
		c->next = NULL;
		memcpy(c->data, (const unsigned char *)iov[i].iov_base + iov[i].iov_len - rest, rest);
		c->len = rest;
		c->first = first;
		first = false;
		s->out_queued += c->len;
		if (s->out_tail != NULL)
			s->out_tail->next = c;
		else
			s->out_head = c;
		s->out_tail = c;
	}
}

static void rg_queue_consume(struct rg_session *s, size_t n)
{
	s->out_flushed += n;
	while (n > 0 && s->out_head != NULL) {
		struct rg_chunk *c = s->out_head;
		size_t take = c->len - c->off < n ? c->len - c->off : n;
		c->off += take;
		n -= take;
		if (c->off < c->len)
			break;
		s->out_head = c->next;
		if (s->out_head == NULL)
			s->out_tail = NULL;
		rg_chunk_put(c);
	}
}

size_t rg_transport_discard_queued(struct rg_session *s)
{
	if (s->flusher_active)
		return 0;   /* bytes on their way out cannot be taken back */
	size_t n = (size_t)(s->out_queued - s->out_flushed);
	rg_queue_consume(s, n);
	s->owed_valid = false;
	return n;
}

/* Writes queued bytes until out_flushed reaches mark, with the lock
 * dropped while the application's transport runs. Called and returns with
 * s->lock held. Returns 0 or the GnuTLS error GnuTLS itself would have
 * returned for that write (GNUTLS_E_AGAIN after a short write). */
static int rg_flush_until(struct rg_session *s, uint64_t mark)
{
	while (s->out_flushed < mark) {
		if (s->flusher_active) {
			rg_session_wait(s, __func__);
			continue;
		}
		/* The buffers of one push call at a time, as GnuTLS's own send
		 * buffer would hold them. */
		giovec_t iov[RG_MAX_IOV];
		int count = 0;
		for (struct rg_chunk *c = s->out_head; c != NULL && count < RG_MAX_IOV; c = c->next) {
			if (c->first && count > 0)
				break;
			if (c->len > c->off) {
				iov[count].iov_base = c->data + c->off;
				iov[count].iov_len = c->len - c->off;
				count++;
			}
		}
		size_t total = rg_iov_total(iov, count);
		s->flusher_active = true;
		rg_session_unlock(s, __func__);

		rg_capture_begin(s);
		errno = 0;
		ssize_t n = rg_app_push(s, iov, count, 0);
		int err = n < 0 ? rg_app_errno(s, errno) : 0;
		rg_capture_end();

		rg_session_lock_turn(s, rg_thread.current == NULL, false, __func__);
		s->flusher_active = false;
		rg_session_broadcast(s);
		if (n > 0)
			rg_queue_consume(s, (size_t)n);
		if (n < 0) {
			int gerr = rg_push_error(err);
			if (gerr != GNUTLS_E_AGAIN && gerr != GNUTLS_E_INTERRUPTED)
				s->push_dead_errno = err;
			return gerr;
		}
		if ((size_t)n < total)
			return GNUTLS_E_AGAIN;
	}
	return 0;
}

/* ---- inbound staging ---------------------------------------------------- */

/* TLS record header: type, version (2 bytes), length (2 bytes). */
#define RG_TLS_HEADER 5
#define RG_TLS_MAX_BODY (16384 + 2048)

/* After GnuTLS asked for a record header, the body length it will ask for
 * next (buffers.c reads exactly header, then packet_size - header); 0 if
 * the header is not one GnuTLS would go on with. */
static size_t rg_tls_body_length(const unsigned char *h)
{
	size_t body = ((size_t)h[3] << 8) | h[4];
	if (h[0] < 20 || h[0] > 24 || h[1] != 3 || body == 0 || body > RG_TLS_MAX_BODY)
		return 0;
	return body;
}

struct rg_pull_outcome {
	size_t got;      /* bytes read into s->in_buf */
	ssize_t last;    /* the pull that ended the loop: 0 (EOF) or -1 */
	int err;
};

/* The application's pull, called as GnuTLS's read loop calls it
 * (_gnutls_stream_read): until `len` bytes are in or a pull returns 0 or
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
			ssize_t n = s->app_pull(s->app_recv_ptr, s->in_buf + o.got, len - o.got);
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

/* The real call wanted input it could not have without waiting: wait for
 * it with the lock dropped, exactly as the application's transport waits,
 * and stage the outcome for the next real call. Called and returns with
 * s->lock held. Returns true when the call ends here with *ret:
 * GNUTLS_E_AGAIN where GnuTLS would have ended a partial read (EAGAIN,
 * EINTR or EOF after some bytes of the same read) instead of consuming the
 * outcome, or GNUTLS_E_TIMEDOUT where GnuTLS's timeout ran out (the
 * application's pull_timeout said so, or a pull outlasted the time left;
 * GnuTLS drops that pull's bytes then, and so does the shim). */
static bool rg_wait_for_input(struct rg_session *s, ssize_t *ret)
{
	enum rg_want want = s->want;
	size_t len = s->want_len;
	unsigned ms = s->want_ms;
	bool continues = want == RG_WANT_READ && s->want_continues;
	/* With a timeout GnuTLS polls before every pull: one pull at a time. */
	bool whole_record = !s->timeout_seen;
	s->want = RG_WANT_NONE;

	if (s->reader_active) {          /* another thread is reading: retry after it */
		rg_session_wait(s, __func__);
		return false;
	}
	if (s->in_off < s->in_len || s->in_result != RG_IN_NONE)
		return false;                /* something is staged already */

	bool read_bytes = want == RG_WANT_READ && s->app_pull != NULL;
	size_t room = len == RG_TLS_HEADER ? RG_TLS_HEADER + RG_TLS_MAX_BODY : len;
	if (read_bytes && !rg_input_acquire(s, room)) {
		rg_log(RG_LOG_ERROR, "out of memory staging %zu input bytes; the pull fails", room);
		s->in_result = RG_IN_READ_ERROR;
		s->in_errno = ENOMEM;
		return false;
	}
	s->reader_active = true;
	rg_session_unlock(s, __func__);

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

	rg_session_lock_turn(s, rg_thread.current == NULL, o.got > 0 || o.last > 0, __func__);
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

/* ---- the callbacks GnuTLS calls --------------------------------------- */

static ssize_t rg_report_again(struct rg_session *s)
{
	s->cb_errno = EAGAIN;
	errno = EAGAIN;
	return -1;
}

/* GnuTLS reads a record piece by piece in one loop (buffers.c
 * _gnutls_stream_read): the next pull of the same loop asks for the rest,
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
	if (rg_thread.current != s)        /* outside a guarded call */
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
	if (rg_thread.current != s)
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
	/* GnuTLS's timeout covers the whole read (buffers.c decrements it
	 * after each pull); across the shim's retries it is a deadline. */
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
	if (rg_thread.current != s)
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
		if (reserved == (struct rg_chunk *)-1) {
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
	if (rg_thread.current == s)
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
		/* GnuTLS 3.8.2+ asks the errno function about a failed push with
		 * the send pointer (lib/buffers.c get_errno), which GnuTLS has as
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

struct rg_session *rg_transport_keyupdate_entry(gnutls_session_t session)
{
	gnutls_transport_ptr_t recv_ptr, send_ptr;
	rg_real.gnutls_transport_get_ptr2.fn(session, &recv_ptr, &send_ptr);
	return send_ptr;
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
	 * (buffers.h NO_TIMEOUT_FUNC_SET): give GnuTLS its own default then,
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

/* ---- the guarded loop ------------------------------------------------- */

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
 * by this retry (record.c gnutls_record_uncork restarts its total). */
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
 * the application's own pull, the handshake done, no timeout to honour,
 * GnuTLS holding exactly whole records, none of them undelivered. */
static bool rg_read_ahead_ok(struct rg_session *s)
{
	return s->app_pull != NULL && s->at_record_boundary && s->proto_checked &&
	       s->record_timeout_ms == 0 && !s->timeout_seen && s->in_len == 0 &&
	       s->in_result == RG_IN_NONE && !s->reader_active &&
	       rg_real.gnutls_record_check_pending.fn(s->session) == 0;
}

static ssize_t rg_guard_run(struct rg_session *s, struct rg_call *call)
{
	struct rg_session *outer = rg_thread.current;
	ssize_t ret;

	rg_session_lock_turn(s, rg_thread.current == NULL, false, __func__);
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

	if (s->poisoned) {
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
		if (rg_wait_for_input(s, &ret))
			goto out;
	}
	if (s->push_dead_errno != 0 && call->family == RG_FAMILY_SEND) {
		/* GnuTLS refuses sends once a push failed for good
		 * (record.c may_not_write). */
		ret = GNUTLS_E_INVALID_SESSION;
		goto out;
	}

	for (;;) {
		uint64_t queued_before = s->out_queued;
		s->want = RG_WANT_NONE;
		s->pull_end = NULL;
		s->timeout_seen = false;
		s->call_family = call->family;
		rg_thread.current = s;
		ret = call->invoke(call);
		rg_thread.current = outer;
		/* A session-data query swallows the wait it asked for: a TLS 1.3
		 * client's gnutls_session_get_data2 waits up to a round trip for
		 * the server's ticket and, on GNUTLS_E_AGAIN or TIMEDOUT, returns
		 * success with an empty placeholder (GnuTLS 3.7.9 lib/session.c
		 * gnutls_session_get_data2). Do the wait it wanted, then ask
		 * again; past the deadline the retry gets GnuTLS's own answer. */
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
	rg_session_unlock(s, __func__);
	return ret;
}

/* keyupdate mode: every call goes straight to GnuTLS; key changes take the
 * session's lock as keyupdate.c describes. */
static ssize_t rg_keyupdate_dispatch(struct rg_call *call)
{
	ssize_t ret;
	if (call->family != RG_FAMILY_KEY_UPDATE && call->family != RG_FAMILY_RECV_KEY) {
		ret = call->invoke(call);
		rg_keyupdate_call_end();
		return ret;
	}
	struct rg_session *s = rg_registry_lookup_ref(call->session);
	if (s == NULL) {
		rg_registry_note_unguarded(call->session);
		return call->invoke(call);
	}
	if (call->family == RG_FAMILY_KEY_UPDATE)
		ret = rg_keyupdate_run(s, call);
	else
		ret = rg_keyupdate_run_locked(s, call);
	rg_session_lock(s, __func__);
	rg_registry_unref_locked(s);
	rg_session_unlock(s, __func__);
	return ret;
}

static ssize_t rg_guard_dispatch(struct rg_call *call)
{
	enum rg_mode mode = rg_active();
	if (mode == RG_MODE_KEYUPDATE)
		return rg_keyupdate_dispatch(call);
	if (mode != RG_MODE_GUARD)
		return call->invoke(call);
	struct rg_session *current = rg_thread.current;
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
		rg_registry_note_unguarded(call->session);
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
