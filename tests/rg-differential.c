/*
 * rg-differential.c — scenario (e): what a single-threaded program sees
 * from GnuTLS must not change when librekeyguard.so is preloaded.
 *
 *   rg-differential [--strict-callbacks] [CASE...]   run the cases (all
 *                                 when none is named)
 *   rg-differential --list        print the case names
 *
 * Owns: a set of self-contained cases, each one or more connections whose
 * two ends live in this one thread over a socketpair: a poll()-driven
 * non-blocking event loop on the default fd transport, custom push / vec_push
 * / pull / pull_timeout callbacks whose errno reaches GnuTLS through errno,
 * an errno function or gnutls_transport_set_errno, scripted transport faults
 * (EINTR, EAGAIN, EIO, EPIPE, ECONNRESET, short writes, EOF), record and
 * handshake timeouts, the transport getters, GNUTLS_NO_SIGNAL, and key
 * updates.
 *
 * Output: a TRANSCRIPT on stdout, one line per observable event: every
 * GnuTLS call and its result, gnutls_record_get_direction after each
 * GNUTLS_E_AGAIN / GNUTLS_E_INTERRUPTED, gnutls_record_check_pending after
 * each receive, received bytes as length + FNV-1a hash (content checked
 * against rg_pattern_*), the bytes left unread in the receiving socket
 * after each send and receive (FIONREAD: read-ahead or a late flush shows
 * there), poll() readiness, and every call of our transport callbacks with
 * its arguments, result and errno (successful pushes are summed between
 * two other events unless --strict-callbacks).  The transcript holds no
 * pointers, file descriptor numbers, times or random bytes, so a plain run
 * and a preloaded run must produce byte-identical transcripts
 * (check_rekeyguard compares them).  Until the first application data has
 * passed, callback lines hide byte counts ("~", "full", "part"): handshake
 * record sizes vary with the per-process certificate's ECDSA signatures.
 *
 * Invariants: single-threaded (the harness watchdog thread only ever prints
 * a timeout), deterministic, SIGPIPE blocked so that a SIGPIPE raised by a
 * send is observed as pending instead of killing us.  The program also
 * asserts the values the cases exist for (a timeout really is
 * GNUTLS_E_TIMEDOUT, ...): a transcript that is identical but wrong still
 * fails.  Exit 0 when every expectation held, 1 otherwise, 2 on bad usage.
 * stderr (never part of the transcript) ends with one line
 * "shim_loaded=0" or "shim_loaded=1 shim_version=... shim_active_mode=...
 * shim_sessions_guarded=N".
 */
#include "harness.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ transcript */

static int case_failures;	/* expectations failed in the current case */
static int total_failures;
static const char *current_case = "-";

/* --strict-callbacks: one line per push/vec_push call. By default the
 * successful pushes between two other transcript lines are reported as one
 * "pushed N" line: how GnuTLS (or a shim) splits a flight of records into
 * push calls, and how many iovecs a vec_push gets, is not a result the
 * application can act on; what reaches the peer, and when, is (recv and
 * poll lines show it). Failed and scripted pushes always get their own line. */
static int strict_callbacks;
static struct {
	char who[8];
	int quiet;
	uint64_t bytes;
} pushed;

static void flush_pushed(void)
{
	if (!pushed.bytes)
		return;
	if (pushed.quiet)
		printf("  %s pushed ~\n", pushed.who);
	else
		printf("  %s pushed %" PRIu64 "\n", pushed.who, pushed.bytes);
	pushed.bytes = 0;
}

static void T(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void T(const char *fmt, ...)
{
	va_list ap;
	int saved = errno;

	flush_pushed();
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	errno = saved;
}

#define EXPECT(cond, ...) expect_((cond), __LINE__, #cond, __VA_ARGS__)
static int expect_(int ok, int line, const char *cond, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int expect_(int ok, int line, const char *cond, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	if (ok)
		return 1;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	case_failures++;
	T("!! EXPECTATION FAILED (rg-differential.c:%d): %s", line, msg);
	fprintf(stderr, "rg-differential: case %s: expectation failed at line %d: %s [%s]\n",
		current_case, line, msg, cond);
	return 0;
}

/* GnuTLS result as text: a count, or the error's symbolic name. */
static const char *rcs(ssize_t rc)
{
	static char buf[4][64];
	static int slot;
	char *b = buf[slot++ & 3];

	if (rc >= 0) {
		snprintf(b, 64, "%zd", rc);
	} else {
		const char *n = gnutls_strerror_name((int)rc);
		if (n)
			snprintf(b, 64, "%s", n);
		else
			snprintf(b, 64, "E%zd", rc);
	}
	return b;
}

static const char *errname(int err)
{
	const char *n = err ? strerrorname_np(err) : "0";
	return n ? n : "E?";
}

static uint32_t fnv1a(uint32_t h, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 16777619u;
	}
	return h;
}
#define FNV_INIT 2166136261u

/* ------------------------------------------------------------- endpoints */

enum errmode { EM_GLOBAL, EM_FUNC, EM_SET };
enum step_kind { ST_PASS = 0, ST_FAIL, ST_SHORT, ST_EOF, ST_TIMEOUT, ST_NEAR, ST_SLOW };

struct step {
	int kind;
	int err;	/* ST_FAIL */
	size_t n;	/* ST_SHORT: at most n bytes; ST_NEAR, ST_SLOW: microseconds */
};

#define MAX_STEPS 8
struct script {
	struct step s[MAX_STEPS];
	int n, i;
};

struct ep;
#define CTX_MAGIC 0x52474458u
struct ctx {			/* what we hand GnuTLS as transport pointer */
	uint32_t magic;
	char name[8];
	struct ep *ep;
};

struct ep {
	char name[4];		/* "C" or "S" */
	gnutls_session_t s;
	int fd;
	int errmode;
	int cb_errno;		/* EM_FUNC: the errno our errno function reports */
	struct ctx rctx, sctx;
	struct script push, pull, tmo;
	int quiet;		/* hide byte counts in callback lines */
	struct ep *peer;
	uint32_t tx_id, rx_id;
	uint64_t tx_off, rx_off;
	uint32_t rx_hash;
	size_t send_pending;	/* length of a send that got AGAIN/INTERRUPTED */
	unsigned cb_calls;
};

#define MAX_CTX 16
static struct ctx *ctx_list[MAX_CTX];
static int ctx_count;

static void ctx_register(struct ctx *c, struct ep *e, const char *name)
{
	c->magic = CTX_MAGIC;
	snprintf(c->name, sizeof c->name, "%s", name);
	c->ep = e;
	for (int i = 0; i < ctx_count; i++)
		if (ctx_list[i] == c)
			return;
	if (ctx_count < MAX_CTX)
		ctx_list[ctx_count++] = c;
}

static void ctx_unregister(struct ctx *c)
{
	for (int i = 0; i < ctx_count; i++)
		if (ctx_list[i] == c) {
			ctx_list[i] = ctx_list[--ctx_count];
			return;
		}
}

/* The callbacks only accept transport pointers we set. */
static struct ctx *ctx_of(gnutls_transport_ptr_t p, const char *cb)
{
	for (int i = 0; i < ctx_count; i++)
		if ((void *)ctx_list[i] == p && ctx_list[i]->magic == CTX_MAGIC)
			return ctx_list[i];
	EXPECT(0, "%s callback got a transport pointer that was never set", cb);
	return NULL;
}

static void script_add(struct script *sc, int kind, int err, size_t n)
{
	if (sc->n < MAX_STEPS)
		sc->s[sc->n++] = (struct step){ kind, err, n };
}

static struct step script_next(struct script *sc)
{
	if (sc->i < sc->n)
		return sc->s[sc->i++];
	sc->i = sc->n = 0;
	return (struct step){ ST_PASS, 0, 0 };
}

/* Report a failed callback's errno the way this endpoint is configured to,
 * and leave a misleading global errno where GnuTLS must not look at it. */
static ssize_t report(struct ep *e, ssize_t r, int err)
{
	if (r >= 0)
		return r;
	switch (e->errmode) {
	case EM_FUNC:
		e->cb_errno = err;
		errno = EDOM;
		break;
	case EM_SET:
		gnutls_transport_set_errno(e->s, err);
		errno = EDOM;
		break;
	default:
		errno = err;
	}
	return r;
}

static const char *len_s(struct ep *e, size_t len)
{
	static char b[2][32];
	static int slot;
	char *p = b[slot++ & 1];

	if (e->quiet)
		return "~";
	snprintf(p, 32, "%zu", len);
	return p;
}

static void cb_log(struct ep *e, const char *who, const char *what,
		   size_t asked, ssize_t r, int err)
{
	e->cb_calls++;
	if (r < 0)
		T("  %s %s(%s) = -1 %s", who, what, len_s(e, asked), errname(err));
	else if (!e->quiet || r == 0)
		T("  %s %s(%s) = %zd", who, what, len_s(e, asked), r);
	else
		T("  %s %s(~) = %s", who, what, (size_t)r == asked ? "full" : "part");
}

static void push_log(struct ctx *c, const char *what, int kind, size_t asked,
		     ssize_t r, int err)
{
	struct ep *e = c->ep;

	if (strict_callbacks || kind != ST_PASS) {
		cb_log(e, c->name, what, asked, r, err);
		return;
	}
	e->cb_calls++;
	if (r < 0) {
		T("  %s push = -1 %s", c->name, errname(err));
		return;
	}
	if (pushed.bytes && strcmp(pushed.who, c->name))
		flush_pushed();
	snprintf(pushed.who, sizeof pushed.who, "%s", c->name);
	pushed.quiet = e->quiet;
	pushed.bytes += (uint64_t)r;
}

static ssize_t cb_pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
	struct ctx *c = ctx_of(p, "pull");
	struct step st;
	ssize_t r;
	int err = 0;

	if (!c) {
		errno = EBADF;
		return -1;
	}
	st = script_next(&c->ep->pull);
	switch (st.kind) {
	case ST_FAIL:
		r = -1, err = st.err;
		break;
	case ST_EOF:
		r = 0;
		break;
	case ST_SHORT:
		len = len < st.n ? len : st.n;
		/* fall through */
	case ST_SLOW:
		if (st.kind == ST_SLOW) {
			struct timespec ts = { (time_t)(st.n / 1000000), (long)(st.n % 1000000) * 1000 };
			while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
				;
		}
		/* fall through */
	default:
		r = read(c->ep->fd, buf, len);
		err = r < 0 ? errno : 0;
	}
	cb_log(c->ep, c->name, st.kind == ST_PASS ? "pull" : st.kind == ST_SHORT ? "pull[short]" :
	       st.kind == ST_SLOW ? "pull[slow]" : "pull[fault]", len, r, err);
	return report(c->ep, r, err);
}

static ssize_t cb_push(gnutls_transport_ptr_t p, const void *buf, size_t len)
{
	struct ctx *c = ctx_of(p, "push");
	struct step st;
	ssize_t r;
	int err = 0;

	if (!c) {
		errno = EBADF;
		return -1;
	}
	st = script_next(&c->ep->push);
	switch (st.kind) {
	case ST_FAIL:
		r = -1, err = st.err;
		break;
	case ST_SHORT:
		r = write(c->ep->fd, buf, len < st.n ? len : st.n);
		err = r < 0 ? errno : 0;
		break;
	default:
		r = write(c->ep->fd, buf, len);
		err = r < 0 ? errno : 0;
	}
	push_log(c, st.kind == ST_PASS ? "push" :
		 st.kind == ST_SHORT ? "push[short]" : "push[fault]", st.kind, len, r, err);
	return report(c->ep, r, err);
}

static ssize_t cb_vec_push(gnutls_transport_ptr_t p, const giovec_t *iov, int cnt)
{
	struct ctx *c = ctx_of(p, "vec_push");
	struct iovec v[64];
	struct step st;
	size_t total = 0, lim;
	ssize_t r;
	int err = 0, n = 0;
	char what[48];

	if (!c) {
		errno = EBADF;
		return -1;
	}
	for (int i = 0; i < cnt; i++)
		total += iov[i].iov_len;
	st = script_next(&c->ep->push);
	lim = st.kind == ST_SHORT ? st.n : total;
	for (int i = 0; i < cnt && i < 64 && lim > 0; i++, n++) {
		v[n].iov_base = iov[i].iov_base;
		v[n].iov_len = iov[i].iov_len < lim ? iov[i].iov_len : lim;
		lim -= v[n].iov_len;
	}
	if (st.kind == ST_FAIL) {
		r = -1, err = st.err;
	} else {
		r = writev(c->ep->fd, v, n);
		err = r < 0 ? errno : 0;
	}
	if (strict_callbacks)
		snprintf(what, sizeof what, "vec_push%s[iov=%d]",
			 st.kind == ST_PASS ? "" : st.kind == ST_SHORT ? "[short]" : "[fault]",
			 cnt);
	else
		snprintf(what, sizeof what, "vec_push%s",
			 st.kind == ST_PASS ? "" : st.kind == ST_SHORT ? "[short]" : "[fault]");
	push_log(c, what, st.kind, total, r, err);
	return report(c->ep, r, err);
}

static int cb_pull_timeout(gnutls_transport_ptr_t p, unsigned int ms)
{
	struct ctx *c = ctx_of(p, "pull_timeout");
	struct step st;
	struct pollfd pfd;
	int r, err = 0;
	const char *ms_s = ms == GNUTLS_INDEFINITE_TIMEOUT ? "indefinite" :
			   ms == 0 ? "0" : "finite";

	if (!c) {
		errno = EBADF;
		return -1;
	}
	c->ep->cb_calls++;
	st = script_next(&c->ep->tmo);
	if (st.kind == ST_FAIL) {
		r = -1, err = st.err;
	} else if (st.kind == ST_TIMEOUT) {
		r = 0;
	} else if (st.kind == ST_NEAR) {
		/* time out like poll() would, ending st.n microseconds
		 * short of or past the full ms: leaves GnuTLS's deadline
		 * less than a millisecond away */
		long us = (long)ms * 1000 + (long)st.n - 1000;
		struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		r = 0;
	} else {
		pfd.fd = c->ep->fd;
		pfd.events = POLLIN;
		pfd.revents = 0;
		do
			r = poll(&pfd, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int)ms);
		while (r < 0 && errno == EINTR);
		err = r < 0 ? errno : 0;
	}
	if (r < 0)
		T("  %s pull_timeout(%s)%s = -1 %s", c->name, ms_s,
		  st.kind == ST_PASS ? "" : "[fault]", errname(err));
	else
		T("  %s pull_timeout(%s)%s = %d", c->name, ms_s,
		  st.kind == ST_PASS ? "" : "[fault]", r);
	return (int)report(c->ep, r, err);
}

static int cb_errno(gnutls_transport_ptr_t p)
{
	struct ctx *c = ctx_of(p, "errno");

	if (!c)
		return EIO;
	c->ep->cb_calls++;
	T("  %s errno_func() = %s", c->name, errname(c->ep->cb_errno));
	return c->ep->cb_errno;
}

/* ----------------------------------------------------------- connections */

enum transport {
	TR_FD,		/* gnutls_transport_set_int: GnuTLS's own send/recv */
	TR_PUSH,	/* push + pull */
	TR_PUSH_TMO,	/* push + pull + pull_timeout */
	TR_VEC,		/* vec_push + pull + pull_timeout */
};

struct conn {
	struct ep c, s;
	int fd[2];
};

struct conn_opts {
	int transport;
	int errmode;
	unsigned cflags, sflags;
	int bufsize;		/* SO_SNDBUF/SO_RCVBUF; 0 = default */
	int blocking;		/* sockets left blocking */
	int split_ptr;		/* gnutls_transport_set_ptr2 with two contexts */
};

static void set_nonblock(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);

	fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK));
}

static void ep_setup(struct ep *e, const char *name, int server, int fd,
		     const struct conn_opts *o)
{
	memset(e, 0, sizeof *e);
	snprintf(e->name, sizeof e->name, "%s", name);
	e->fd = fd;
	e->errmode = o->errmode;
	e->quiet = 1;
	e->tx_id = server ? 2 : 1;
	e->rx_id = server ? 1 : 2;
	e->rx_hash = FNV_INIT;
	e->s = rg_session_new(server, server ? o->sflags : o->cflags, NULL);
	if (o->transport == TR_FD) {
		gnutls_transport_set_int(e->s, fd);
		return;
	}
	if (o->split_ptr) {
		char rn[8], sn[8];
		snprintf(rn, sizeof rn, "%s.r", name);
		snprintf(sn, sizeof sn, "%s.s", name);
		ctx_register(&e->rctx, e, rn);
		ctx_register(&e->sctx, e, sn);
		gnutls_transport_set_ptr2(e->s, &e->rctx, &e->sctx);
	} else {
		ctx_register(&e->rctx, e, name);
		gnutls_transport_set_ptr(e->s, &e->rctx);
	}
	if (o->transport == TR_VEC)
		gnutls_transport_set_vec_push_function(e->s, cb_vec_push);
	else
		gnutls_transport_set_push_function(e->s, cb_push);
	gnutls_transport_set_pull_function(e->s, cb_pull);
	if (o->transport != TR_PUSH)
		gnutls_transport_set_pull_timeout_function(e->s, cb_pull_timeout);
	if (o->errmode == EM_FUNC)
		gnutls_transport_set_errno_function(e->s, cb_errno);
}

static const char *tr_name(int t)
{
	switch (t) {
	case TR_FD: return "fd";
	case TR_PUSH: return "push+pull";
	case TR_PUSH_TMO: return "push+pull+pull_timeout";
	default: return "vec_push+pull+pull_timeout";
	}
}

static const char *em_name(int m)
{
	return m == EM_FUNC ? "errno_function" : m == EM_SET ? "set_errno" : "errno";
}

static void conn_open(struct conn *k, const struct conn_opts *o)
{
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, k->fd) < 0) {
		perror("rg-differential: socketpair");
		exit(2);
	}
	for (int i = 0; i < 2; i++) {
		if (o->bufsize > 0) {
			setsockopt(k->fd[i], SOL_SOCKET, SO_SNDBUF, &o->bufsize, sizeof o->bufsize);
			setsockopt(k->fd[i], SOL_SOCKET, SO_RCVBUF, &o->bufsize, sizeof o->bufsize);
		}
		if (!o->blocking)
			set_nonblock(k->fd[i], 1);
	}
	ep_setup(&k->c, "C", 0, k->fd[0], o);
	ep_setup(&k->s, "S", 1, k->fd[1], o);
	k->c.peer = &k->s;
	k->s.peer = &k->c;
	T("connection: transport=%s errno=%s%s%s%s%s%s bufsize=%s sockets=%s",
	  tr_name(o->transport), o->transport == TR_FD ? "-" : em_name(o->errmode),
	  o->split_ptr ? " ptr2" : "",
	  (o->cflags | o->sflags) & GNUTLS_NONBLOCK ? " GNUTLS_NONBLOCK" : "",
	  (o->cflags | o->sflags) & GNUTLS_NO_SIGNAL ? " GNUTLS_NO_SIGNAL" : "",
	  o->cflags & GNUTLS_NO_SIGNAL ? "(C)" : "",
	  o->sflags & GNUTLS_NO_SIGNAL ? "(S)" : "",
	  o->bufsize ? "small" : "default", o->blocking ? "blocking" : "non-blocking");
}

static void conn_close(struct conn *k)
{
	gnutls_deinit(k->c.s);
	gnutls_deinit(k->s.s);
	ctx_unregister(&k->c.rctx);
	ctx_unregister(&k->c.sctx);
	ctx_unregister(&k->s.rctx);
	ctx_unregister(&k->s.sctx);
	for (int i = 0; i < 2; i++)
		if (k->fd[i] >= 0)
			close(k->fd[i]);
	k->fd[0] = k->fd[1] = -1;
}

/* ------------------------------------------------------------ operations */

static int is_again(ssize_t rc)
{
	return rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED;
}

static int log_dir(struct ep *e)
{
	int d = gnutls_record_get_direction(e->s);
	return d;
}

/* Bytes waiting unread in a socket's receive queue: shows when the
 * application's transport was written or read (read-ahead, late or early
 * flushes), which the application could see with FIONREAD itself. */
static const char *sock_s(struct ep *e)
{
	static char b[4][24];
	static int slot;
	char *p = b[slot++ & 3];
	int n = 0;

	if (!e || e->fd < 0 || ioctl(e->fd, FIONREAD, &n) < 0)
		snprintf(p, 24, "-");
	else if (e->quiet)
		snprintf(p, 24, "~");
	else
		snprintf(p, 24, "%d", n);
	return p;
}

static unsigned char txbuf[65536];

/* gnutls_record_send of the next `len` stream bytes; after AGAIN/INTERRUPTED
 * the caller retries, with the same arguments or (retry_null) NULL/0. */
static ssize_t do_send(struct ep *e, size_t len, int retry_null)
{
	ssize_t rc;
	int retry = e->send_pending != 0;

	if (retry)
		len = e->send_pending;
	if (len > sizeof txbuf)
		len = sizeof txbuf;
	if (retry && retry_null) {
		rc = gnutls_record_send(e->s, NULL, 0);
	} else {
		rg_pattern_fill(txbuf, len, e->tx_id, e->tx_off);
		rc = gnutls_record_send(e->s, txbuf, len);
	}
	if (is_again(rc)) {
		T("%s send(%s)%s = %s dir=%d peer_sock=%s", e->name,
		  retry && retry_null ? "NULL,0" : len_s(&(struct ep){ .quiet = 0 }, len),
		  retry ? " retry" : "", rcs(rc), log_dir(e), sock_s(e->peer));
		e->send_pending = len;
		return rc;
	}
	T("%s send(%s)%s = %s peer_sock=%s", e->name,
	  retry && retry_null ? "NULL,0" : len_s(&(struct ep){ .quiet = 0 }, len),
	  retry ? " retry" : "", rcs(rc), sock_s(e->peer));
	e->send_pending = 0;
	if (rc > 0) {
		EXPECT((size_t)rc <= len && (len < 16384 ? (size_t)rc == len : rc == 16384),
		       "%s send(%zu) returned %zd", e->name, len, rc);
		e->tx_off += (uint64_t)rc;
	}
	return rc;
}

static unsigned char rxbuf[65536];

static ssize_t do_recv(struct ep *e, size_t buflen)
{
	ssize_t rc = gnutls_record_recv(e->s, rxbuf, buflen);
	size_t pending;

	if (is_again(rc)) {
		int d = log_dir(e);
		pending = gnutls_record_check_pending(e->s);
		T("%s recv(%zu) = %s dir=%d pending=%zu sock=%s", e->name, buflen, rcs(rc), d,
		  pending, sock_s(e));
		return rc;
	}
	pending = gnutls_record_check_pending(e->s);
	if (rc > 0) {
		long bad = rg_pattern_check(rxbuf, (size_t)rc, e->rx_id, e->rx_off);
		uint32_t h = fnv1a(FNV_INIT, rxbuf, (size_t)rc);

		e->rx_hash = fnv1a(e->rx_hash, rxbuf, (size_t)rc);
		T("%s recv(%zu) = %zd hash=%08x pending=%zu sock=%s", e->name, buflen, rc, h,
		  pending, sock_s(e));
		EXPECT(bad < 0, "%s received a wrong byte at stream offset %" PRIu64,
		       e->name, e->rx_off + (uint64_t)(bad < 0 ? 0 : bad));
		e->rx_off += (uint64_t)rc;
	} else {
		T("%s recv(%zu) = %s pending=%zu sock=%s", e->name, buflen, rcs(rc), pending,
		  sock_s(e));
	}
	return rc;
}

static const char *pollbits(short ev)
{
	static char b[4][32];
	static int slot;
	char *p = b[slot++ & 3];

	snprintf(p, 32, "%s%s%s%s%s", ev & POLLIN ? "in" : "",
		 ev & POLLOUT ? (ev & POLLIN ? "+out" : "out") : "",
		 ev & POLLERR ? "+err" : "", ev & POLLHUP ? "+hup" : "",
		 ev & POLLNVAL ? "+nval" : "");
	if (!*p)
		snprintf(p, 32, "-");
	return p;
}

/* Wait on a set of (endpoint, events); returns revents per entry; logs. */
struct waiter {
	struct ep *e;
	short events, revents;
};

static int wait_for(struct waiter *w, int n)
{
	struct pollfd pfd[8];
	char line[256];
	size_t off = 0;
	int r;

	for (int i = 0; i < n; i++) {
		pfd[i].fd = w[i].e->fd;
		pfd[i].events = w[i].events;
		pfd[i].revents = 0;
		off += (size_t)snprintf(line + off, sizeof line - off, " %s(%s)",
					w[i].e->name, pollbits(w[i].events));
	}
	do
		r = poll(pfd, (nfds_t)n, 3000);
	while (r < 0 && errno == EINTR);
	off += (size_t)snprintf(line + off, sizeof line - off, " ->");
	for (int i = 0; i < n; i++) {
		w[i].revents = pfd[i].revents;
		if (pfd[i].revents)
			off += (size_t)snprintf(line + off, sizeof line - off, " %s(%s)",
						w[i].e->name, pollbits(pfd[i].revents));
	}
	if (r == 0)
		snprintf(line + off, sizeof line - off, " timeout");
	T("poll%s", line);
	EXPECT(r > 0, "poll timed out after 3 s: the event loop would hang");
	return r;
}

/* ------------------------------------------------------------ event loop */

static short dir_events(struct ep *e)
{
	return gnutls_record_get_direction(e->s) ? POLLOUT : POLLIN;
}

/* Handshake both ends, non-blocking, driven by poll. */
static int handshake_loop(struct conn *k)
{
	struct ep *ep[2] = { &k->c, &k->s };
	int done[2] = { 0, 0 }, waiting[2] = { 0, 0 };
	short ev[2] = { 0, 0 };

	for (int iter = 0; iter < 200; iter++) {
		int ran = 0;

		for (int i = 0; i < 2; i++) {
			int rc;

			if (done[i] || waiting[i])
				continue;
			ran = 1;
			rc = gnutls_handshake(ep[i]->s);
			if (is_again(rc)) {
				ev[i] = dir_events(ep[i]);
				T("%s handshake = %s dir=%d", ep[i]->name, rcs(rc),
				  ev[i] == POLLOUT);
				waiting[i] = rc == GNUTLS_E_AGAIN;
				continue;
			}
			T("%s handshake = %s", ep[i]->name, rcs(rc));
			if (rc < 0) {
				EXPECT(0, "%s handshake failed: %s", ep[i]->name, rcs(rc));
				return rc;
			}
			done[i] = 1;
		}
		if (done[0] && done[1]) {
			T("handshake done: %s %s",
			  gnutls_protocol_get_name(gnutls_protocol_get_version(k->c.s)),
			  gnutls_cipher_get_name(gnutls_cipher_get(k->c.s)));
			return 0;
		}
		if (!ran) {
			struct waiter w[2];
			int n = 0, map[2];

			for (int i = 0; i < 2; i++)
				if (waiting[i]) {
					w[n] = (struct waiter){ ep[i], ev[i], 0 };
					map[n++] = i;
				}
			if (wait_for(w, n) <= 0)
				return GNUTLS_E_TIMEDOUT;
			for (int j = 0; j < n; j++)
				if (w[j].revents)
					waiting[map[j]] = 0;
		}
	}
	EXPECT(0, "handshake did not finish in 200 rounds");
	return GNUTLS_E_INTERNAL_ERROR;
}

/* One direction of bulk transfer. */
struct flow {
	struct ep *tx, *rx;
	uint64_t total, sent, rcvd;
	size_t chunk, rbuf;
	int retry;		/* 0: same arguments, 1: NULL/0, 2: alternate */
	short tx_wait, rx_wait;	/* poll events awaited, 0 when runnable */
	unsigned retries, tx_again, rx_again;
};

static void flow_init(struct flow *f, struct ep *tx, struct ep *rx,
		      uint64_t total, size_t chunk, size_t rbuf, int retry)
{
	memset(f, 0, sizeof *f);
	f->tx = tx, f->rx = rx, f->total = total;
	f->chunk = chunk, f->rbuf = rbuf, f->retry = retry;
	T("flow %s->%s: %" PRIu64 " bytes, send(%zu), recv(%zu), retry %s",
	  tx->name, rx->name, total, chunk, rbuf,
	  retry == 0 ? "with the same arguments" : retry == 1 ? "with NULL,0" : "alternating");
}

/* Run flows until every byte arrived. Returns 0 or the first hard error. */
static int run_flows(struct flow *f, int n)
{
	for (int iter = 0; iter < 20000; iter++) {
		int ran = 0, done = 1;

		for (int i = 0; i < n; i++) {
			struct flow *fl = &f[i];
			ssize_t rc;

			if (fl->sent < fl->total || fl->tx->send_pending) {
				done = 0;
				if (!fl->tx_wait) {
					uint64_t left = fl->total - fl->sent;
					int null = fl->retry == 1 ||
						   (fl->retry == 2 && (fl->retries & 1));
					ran = 1;
					if (fl->tx->send_pending)
						fl->retries++;
					rc = do_send(fl->tx, left < fl->chunk ? left : fl->chunk, null);
					if (rc > 0) {
						fl->sent += (uint64_t)rc;
					} else if (rc == GNUTLS_E_AGAIN) {
						fl->tx_again++;
						fl->tx_wait = dir_events(fl->tx);
					} else if (rc != GNUTLS_E_INTERRUPTED) {
						EXPECT(0, "%s send failed: %s", fl->tx->name, rcs(rc));
						return (int)rc;
					}
				}
			}
			if (fl->rcvd < fl->total) {
				done = 0;
				if (!fl->rx_wait) {
					ran = 1;
					rc = do_recv(fl->rx, fl->rbuf);
					if (rc > 0) {
						fl->rcvd += (uint64_t)rc;
					} else if (rc == GNUTLS_E_AGAIN) {
						fl->rx_again++;
						fl->rx_wait = dir_events(fl->rx);
					} else if (rc != GNUTLS_E_INTERRUPTED) {
						EXPECT(0, "%s recv failed: %s", fl->rx->name, rcs(rc));
						return rc == 0 ? GNUTLS_E_PREMATURE_TERMINATION : (int)rc;
					}
				}
			}
		}
		if (done) {
			for (int i = 0; i < n; i++) {
				T("flow %s->%s done: %" PRIu64 " bytes, stream hash=%08x, "
				  "send AGAIN %u, recv AGAIN %u", f[i].tx->name, f[i].rx->name,
				  f[i].rcvd, f[i].rx->rx_hash, f[i].tx_again, f[i].rx_again);
				EXPECT(f[i].rcvd == f[i].total, "flow %s->%s: %" PRIu64 " of %" PRIu64,
				       f[i].tx->name, f[i].rx->name, f[i].rcvd, f[i].total);
			}
			return 0;
		}
		if (!ran) {
			struct waiter w[8];
			short *slot[8];
			int nw = 0;

			for (int i = 0; i < n; i++) {
				if (f[i].tx_wait) {
					w[nw] = (struct waiter){ f[i].tx, f[i].tx_wait, 0 };
					slot[nw++] = &f[i].tx_wait;
				}
				if (f[i].rx_wait) {
					w[nw] = (struct waiter){ f[i].rx, f[i].rx_wait, 0 };
					slot[nw++] = &f[i].rx_wait;
				}
			}
			if (wait_for(w, nw) <= 0)
				return GNUTLS_E_TIMEDOUT;
			for (int j = 0; j < nw; j++)
				if (w[j].revents)
					*slot[j] = 0;
		}
	}
	EXPECT(0, "flows did not finish in 20000 rounds");
	return GNUTLS_E_INTERNAL_ERROR;
}

static int transfer(struct ep *tx, struct ep *rx, uint64_t total, size_t chunk,
		    size_t rbuf, int retry)
{
	struct flow f;

	flow_init(&f, tx, rx, total, chunk, rbuf, retry);
	return run_flows(&f, 1);
}

/* After the handshake: one small message each way so that everything the
 * handshake left in flight (with a ticket-issuing server, NewSessionTicket
 * records whose sizes vary) has been consumed; from then on callback lines
 * show byte counts. */
static int settle(struct conn *k)
{
	struct flow f[2];
	int rc;

	T("settle: 64 bytes each way");
	flow_init(&f[0], &k->s, &k->c, 64, 64, 4096, 0);
	flow_init(&f[1], &k->c, &k->s, 64, 64, 4096, 0);
	rc = run_flows(f, 2);
	k->c.quiet = k->s.quiet = 0;
	return rc;
}

static int open_ready(struct conn *k, const struct conn_opts *o)
{
	int rc;

	conn_open(k, o);
	if (o->blocking) {
		set_nonblock(k->fd[0], 1);
		set_nonblock(k->fd[1], 1);
	}
	rc = handshake_loop(k);
	if (rc == 0)
		rc = settle(k);
	if (o->blocking) {
		set_nonblock(k->fd[0], 0);
		set_nonblock(k->fd[1], 0);
	}
	return rc;
}

#define expect_rc(got, want, what) expect_rc_((got), (want), (what), __LINE__)
static void expect_rc_(ssize_t got, ssize_t want, const char *what, int line)
{
	expect_(got == want, line, "got == want", "%s returned %s, expected %s", what,
		rcs(got), rcs(want));
}

/* Drain (log) every pending SIGPIPE; returns how many were pending. */
static int sigpipe_pending(void)
{
	sigset_t set, pend;
	struct timespec zero = { 0, 0 };
	int n = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	for (;;) {
		sigpending(&pend);
		if (!sigismember(&pend, SIGPIPE))
			break;
		if (sigtimedwait(&set, NULL, &zero) == SIGPIPE)
			n++;
		else
			break;
	}
	return n;
}

/* ================================================================= cases */

/* fd transport, non-blocking socketpair with small buffers, poll loop. */
static void case_fd_loop(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_FD, .bufsize = 4096 };
	struct flow f[2];
	ssize_t rc;

	if (open_ready(&k, &o))
		goto out;

	T("-- nothing to read: recv must say AGAIN, direction 0");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_AGAIN, "recv with no data");
	EXPECT(gnutls_record_get_direction(k.s.s) == 0, "direction after a read AGAIN");

	T("-- one 16 KiB record through a small socket buffer: send AGAIN, retried with the same arguments");
	rc = do_send(&k.c, 16384, 0);
	expect_rc(rc, GNUTLS_E_AGAIN, "16 KiB send into a small socket buffer");
	EXPECT(gnutls_record_get_direction(k.c.s) == 1, "direction after a send AGAIN");
	{
		struct flow g;
		flow_init(&g, &k.c, &k.s, 16384, 16384, 100, 0);
		g.sent = 0;	/* do_send below completes the pending one */
		/* read the record with a 100-byte buffer: check_pending shows the rest */
		if (run_flows(&g, 1))
			goto out;
	}

	T("-- a 20000-byte send returns one record's worth; retry with NULL,0");
	rc = do_send(&k.c, 20000, 1);
	expect_rc(rc, GNUTLS_E_AGAIN, "20000-byte send into a small socket buffer");
	{
		struct flow g;
		flow_init(&g, &k.c, &k.s, 16384, 20000, 16384, 1);
		if (run_flows(&g, 1))
			goto out;
	}

	T("-- partial reads: a 16 KiB record read 100 bytes at a time");
	{
		struct flow g;
		flow_init(&g, &k.s, &k.c, 16384, 16384, 100, 2);
		if (run_flows(&g, 1))
			goto out;
	}
	T("-- check_pending counts down");
	rc = do_send(&k.s, 1000, 0);
	while (rc == GNUTLS_E_AGAIN) {
		struct waiter w = { &k.s, POLLOUT, 0 };
		wait_for(&w, 1);
		rc = do_send(&k.s, 1000, 0);
	}
	expect_rc(rc, 1000, "1000-byte send");
	rc = do_recv(&k.c, 300);
	expect_rc(rc, 300, "recv(300) of a 1000-byte record");
	EXPECT(gnutls_record_check_pending(k.c.s) == 700, "check_pending after 300 of 1000");
	rc = do_recv(&k.c, 300);
	rc = do_recv(&k.c, 1000);
	expect_rc(rc, 400, "recv of the last 400");
	EXPECT(gnutls_record_check_pending(k.c.s) == 0, "check_pending at the end of a record");

	T("-- full duplex bulk, 256 KiB each way, alternating retry styles");
	flow_init(&f[0], &k.c, &k.s, 262144, 16384, 16384, 2);
	flow_init(&f[1], &k.s, &k.c, 262144, 5000, 3000, 1);
	if (run_flows(f, 2))
		goto out;

	T("-- gnutls_bye, then the server reads EOF (0), twice");
	rc = gnutls_bye(k.c.s, GNUTLS_SHUT_WR);
	T("C bye(SHUT_WR) = %s", rcs(rc));
	expect_rc(rc, 0, "bye(SHUT_WR)");
	for (int i = 0; i < 400; i++) {
		rc = do_recv(&k.s, 16384);
		if (rc == 0)
			break;
		if (rc == GNUTLS_E_AGAIN) {
			struct waiter w = { &k.s, POLLIN, 0 };
			if (wait_for(&w, 1) <= 0)
				break;
		} else if (rc < 0) {
			break;
		}
	}
	expect_rc(rc, 0, "recv after close_notify");
	rc = do_recv(&k.s, 16384);
	expect_rc(rc, 0, "recv after EOF");
	T("-- half-closed: the server can still send, then says bye");
	rc = do_send(&k.s, 500, 0);
	expect_rc(rc, 500, "send after receiving close_notify");
	rc = do_recv(&k.c, 4096);
	expect_rc(rc, 500, "recv on the half-closed side");
	rc = gnutls_bye(k.s.s, GNUTLS_SHUT_RDWR);
	T("S bye(SHUT_RDWR) = %s", rcs(rc));
	expect_rc(rc, 0, "bye(SHUT_RDWR) after the peer's close_notify");
	rc = do_recv(&k.c, 4096);
	expect_rc(rc, 0, "recv after the server's close_notify");
out:
	conn_close(&k);
}

/* The same loop with GNUTLS_NONBLOCK (timeouts never apply) and
 * GNUTLS_NO_SIGNAL, default socket buffers. */
static void case_fd_nonblock_flag(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_FD,
			       .cflags = GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL,
			       .sflags = GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL };
	struct flow f[2];
	ssize_t rc;

	if (open_ready(&k, &o))
		goto out;
	gnutls_record_set_timeout(k.s.s, 50);
	T("S record_set_timeout(50) with GNUTLS_NONBLOCK: ignored");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_AGAIN, "recv with GNUTLS_NONBLOCK and a timeout");
	flow_init(&f[0], &k.c, &k.s, 1 << 20, 16384, 16384, 0);
	flow_init(&f[1], &k.s, &k.c, 1 << 20, 16384, 7000, 1);
	run_flows(f, 2);
out:
	conn_close(&k);
}

/* EPIPE on the fd transport: with and without GNUTLS_NO_SIGNAL. */
static void sigpipe_check(unsigned flags, int want_signal)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_FD, .cflags = flags };
	ssize_t rc;
	int n;

	if (open_ready(&k, &o))
		goto out;
	n = sigpipe_pending();
	T("sigpipe pending before = %d", n);
	T("-- the server's socket is closed; the client sends");
	close(k.fd[1]);
	k.fd[1] = -1;
	rc = do_send(&k.c, 100, 0);
	expect_rc(rc, GNUTLS_E_PUSH_ERROR, "send to a closed peer");
	n = sigpipe_pending();
	T("sigpipe pending after = %d", n);
	EXPECT(n == want_signal, "SIGPIPE %s expected", want_signal ? "was" : "was not");
	rc = do_send(&k.c, 100, 0);
	T("(second send after the error)");
	sigpipe_pending();
out:
	conn_close(&k);
}

static void case_fd_sigpipe(void)
{
	sigpipe_check(0, 1);
}

static void case_fd_nosignal(void)
{
	sigpipe_check(GNUTLS_NO_SIGNAL, 0);
}

/* The peer vanishes without close_notify: PREMATURE_TERMINATION. */
static void case_fd_premature(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_FD, .bufsize = 4096 };
	ssize_t rc;

	if (open_ready(&k, &o))
		goto out;
	T("-- peer closes between records");
	close(k.fd[0]);
	k.fd[0] = -1;
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_PREMATURE_TERMINATION, "recv at EOF without close_notify");
	rc = do_recv(&k.s, 4096);
	T("(recv again after that)");
	conn_close(&k);

	T("-- peer shuts down in the middle of a record");
	if (open_ready(&k, &o))
		goto out;
	rc = do_send(&k.c, 16384, 0);
	expect_rc(rc, GNUTLS_E_AGAIN, "16 KiB send into a small buffer");
	shutdown(k.fd[0], SHUT_WR);
	T("C socket shutdown(SHUT_WR)");
	for (int i = 0; i < 10; i++) {
		rc = do_recv(&k.s, 16384);
		if (rc != GNUTLS_E_AGAIN)
			break;
		{
			struct waiter w = { &k.s, POLLIN, 0 };
			if (wait_for(&w, 1) <= 0)
				break;
		}
	}
	EXPECT(rc == GNUTLS_E_PREMATURE_TERMINATION || rc == GNUTLS_E_UNEXPECTED_PACKET_LENGTH,
	       "recv of a truncated record returned %s", rcs(rc));
out:
	conn_close(&k);
}

/* The custom-transport event loop used by the next four cases. */
static void custom_loop(int transport, int errmode, int split)
{
	struct conn k;
	struct conn_opts o = { .transport = transport, .errmode = errmode,
			       .bufsize = 4096, .split_ptr = split };
	struct flow f[2];
	ssize_t rc;

	if (open_ready(&k, &o))
		goto out;
	T("-- nothing to read");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_AGAIN, "recv with no data");
	T("-- a 16 KiB record through a small buffer, read with 100-byte buffers");
	{
		struct flow g;
		flow_init(&g, &k.c, &k.s, 16384, 16384, 100, 0);
		if (run_flows(&g, 1))
			goto out;
	}
	T("-- full duplex bulk, 128 KiB each way");
	flow_init(&f[0], &k.c, &k.s, 131072, 16384, 16384, 2);
	flow_init(&f[1], &k.s, &k.c, 131072, 3000, 5000, 1);
	if (run_flows(f, 2))
		goto out;
	T("-- bye and EOF");
	rc = gnutls_bye(k.c.s, GNUTLS_SHUT_WR);
	T("C bye(SHUT_WR) = %s", rcs(rc));
	expect_rc(rc, 0, "bye(SHUT_WR)");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 0, "recv after close_notify");
out:
	conn_close(&k);
}

static void case_custom_errno_global(void)
{
	custom_loop(TR_PUSH, EM_GLOBAL, 0);
}

static void case_custom_errno_func(void)
{
	custom_loop(TR_PUSH_TMO, EM_FUNC, 0);
}

static void case_custom_set_errno(void)
{
	custom_loop(TR_PUSH_TMO, EM_SET, 1);
}

static void case_custom_vec_push(void)
{
	custom_loop(TR_VEC, EM_FUNC, 0);
}

/* Scripted push failures. Each fatal one gets a fresh connection. */
static void push_errors(int transport, int errmode)
{
	struct conn k;
	struct conn_opts o = { .transport = transport, .errmode = errmode };
	ssize_t rc;
	int vec = transport == TR_VEC;
	static const struct {
		int err;
		ssize_t want;
	} fatal[] = {
		{ EPIPE, GNUTLS_E_PUSH_ERROR },
		{ ECONNRESET, GNUTLS_E_PREMATURE_TERMINATION },
		{ EIO, GNUTLS_E_PUSH_ERROR },
	};

	if (open_ready(&k, &o))
		goto out;
	T("-- push fails with EAGAIN, retried with the same arguments");
	script_add(&k.c.push, ST_FAIL, EAGAIN, 0);
	rc = do_send(&k.c, 1000, 0);
	expect_rc(rc, GNUTLS_E_AGAIN, "send whose push failed with EAGAIN");
	EXPECT(gnutls_record_get_direction(k.c.s) == 1, "direction 1 after push EAGAIN");
	rc = do_send(&k.c, 1000, 0);
	expect_rc(rc, 1000, "retried send");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv");

	T("-- push fails with EINTR, retried with NULL,0");
	script_add(&k.c.push, ST_FAIL, EINTR, 0);
	rc = do_send(&k.c, 1000, 1);
	expect_rc(rc, GNUTLS_E_INTERRUPTED, "send whose push failed with EINTR");
	rc = do_send(&k.c, 1000, 1);
	expect_rc(rc, 1000, "retried send");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv");

	/* A push function gets called again after a short write (GnuTLS loops
	 * until it fails or all is written); a vec_push function does not: the
	 * short write itself ends the call with GNUTLS_E_AGAIN. Any error after
	 * a short write in the same call also becomes GNUTLS_E_AGAIN. */
	T("-- push writes 100 bytes, then EAGAIN");
	script_add(&k.c.push, ST_SHORT, 0, 100);
	if (!vec)
		script_add(&k.c.push, ST_FAIL, EAGAIN, 0);
	rc = do_send(&k.c, 1000, 0);
	expect_rc(rc, GNUTLS_E_AGAIN, "send after a short push and EAGAIN");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_AGAIN, "recv of a partial record");
	rc = do_send(&k.c, 1000, 0);
	expect_rc(rc, 1000, "retried send");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv");

	T("-- push writes 100 bytes, then the rest");
	script_add(&k.c.push, ST_SHORT, 0, 100);
	rc = do_send(&k.c, 1000, 0);
	if (vec) {
		expect_rc(rc, GNUTLS_E_AGAIN, "send after a short vec_push");
		rc = do_send(&k.c, 1000, 0);
	}
	expect_rc(rc, 1000, "send after a short push");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv");

	T("-- push writes 1 byte, then EINTR; then 10 bytes, then EAGAIN; retried with NULL,0");
	script_add(&k.c.push, ST_SHORT, 0, 1);
	if (!vec)
		script_add(&k.c.push, ST_FAIL, EINTR, 0);
	rc = do_send(&k.c, 2000, 1);
	expect_rc(rc, GNUTLS_E_AGAIN, "send after 1 byte and EINTR");
	if (vec) {
		script_add(&k.c.push, ST_FAIL, EINTR, 0);
		rc = do_send(&k.c, 2000, 1);
		expect_rc(rc, GNUTLS_E_INTERRUPTED, "vec_push EINTR on the retry");
	}
	script_add(&k.c.push, ST_SHORT, 0, 10);
	if (!vec)
		script_add(&k.c.push, ST_FAIL, EAGAIN, 0);
	rc = do_send(&k.c, 2000, 1);
	expect_rc(rc, GNUTLS_E_AGAIN, "retry after 10 bytes and EAGAIN");
	rc = do_send(&k.c, 2000, 1);
	expect_rc(rc, 2000, "second retry");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 2000, "recv");

	T("-- bye whose push fails with EAGAIN, then EINTR");
	script_add(&k.c.push, ST_FAIL, EAGAIN, 0);
	script_add(&k.c.push, ST_FAIL, EINTR, 0);
	rc = gnutls_bye(k.c.s, GNUTLS_SHUT_WR);
	T("C bye(SHUT_WR) = %s dir=%d", rcs(rc), gnutls_record_get_direction(k.c.s));
	expect_rc(rc, GNUTLS_E_AGAIN, "bye whose push failed with EAGAIN");
	rc = gnutls_bye(k.c.s, GNUTLS_SHUT_WR);
	T("C bye(SHUT_WR) = %s dir=%d", rcs(rc), gnutls_record_get_direction(k.c.s));
	expect_rc(rc, GNUTLS_E_INTERRUPTED, "bye whose push failed with EINTR");
	rc = gnutls_bye(k.c.s, GNUTLS_SHUT_WR);
	T("C bye(SHUT_WR) = %s", rcs(rc));
	expect_rc(rc, 0, "retried bye");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 0, "recv of close_notify");
	conn_close(&k);

	for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++) {
		T("-- push fails with %s", errname(fatal[i].err));
		if (open_ready(&k, &o))
			goto out;
		script_add(&k.c.push, ST_FAIL, fatal[i].err, 0);
		rc = do_send(&k.c, 1000, 0);
		expect_rc(rc, fatal[i].want, "send whose push failed");
		rc = do_send(&k.c, 1000, 0);
		T("(send again after the error)");
		conn_close(&k);
	}
	return;
out:
	conn_close(&k);
}

static void case_push_errors(void)
{
	push_errors(TR_PUSH, EM_GLOBAL);
}

static void case_push_errors_errno_func(void)
{
	push_errors(TR_VEC, EM_FUNC);
}

static void case_push_errors_set_errno(void)
{
	push_errors(TR_PUSH_TMO, EM_SET);
}

/* Scripted pull failures. */
static void pull_errors(int transport, int errmode)
{
	struct conn k;
	struct conn_opts o = { .transport = transport, .errmode = errmode };
	ssize_t rc;

	if (open_ready(&k, &o))
		goto out;
	T("-- pull fails with EINTR");
	rc = do_send(&k.c, 1000, 0);
	script_add(&k.s.pull, ST_FAIL, EINTR, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_INTERRUPTED, "recv whose pull failed with EINTR");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "retried recv");

	T("-- pull fails with EAGAIN with data waiting");
	rc = do_send(&k.c, 1000, 0);
	script_add(&k.s.pull, ST_FAIL, EAGAIN, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_AGAIN, "recv whose pull failed with EAGAIN");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "retried recv");

	T("-- pull returns the header byte by byte, EINTR in the body");
	rc = do_send(&k.c, 1000, 0);
	for (int i = 0; i < 5; i++)
		script_add(&k.s.pull, ST_SHORT, 0, 1);
	script_add(&k.s.pull, ST_SHORT, 0, 7);
	script_add(&k.s.pull, ST_FAIL, EINTR, 0);
	rc = do_recv(&k.s, 4096);
	/* bytes were read in this call, so EINTR becomes AGAIN */
	expect_rc(rc, GNUTLS_E_AGAIN, "recv interrupted in the body");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "retried recv");
	conn_close(&k);

	T("-- pull fails with EIO");
	if (open_ready(&k, &o))
		goto out;
	rc = do_send(&k.c, 1000, 0);
	script_add(&k.s.pull, ST_FAIL, EIO, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_PULL_ERROR, "recv whose pull failed with EIO");
	rc = do_recv(&k.s, 4096);
	T("(recv again after the error)");
	conn_close(&k);

	T("-- pull fails with ECONNRESET");
	if (open_ready(&k, &o))
		goto out;
	script_add(&k.s.pull, ST_FAIL, ECONNRESET, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_PULL_ERROR, "recv whose pull failed with ECONNRESET");
	conn_close(&k);

	T("-- pull returns 0 (EOF) before a record header");
	if (open_ready(&k, &o))
		goto out;
	script_add(&k.s.pull, ST_EOF, 0, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_PREMATURE_TERMINATION, "recv at EOF before a header");
	conn_close(&k);

	T("-- pull returns 0 (EOF) inside a record header");
	if (open_ready(&k, &o))
		goto out;
	rc = do_send(&k.c, 1000, 0);
	script_add(&k.s.pull, ST_SHORT, 0, 3);
	script_add(&k.s.pull, ST_EOF, 0, 0);
	script_add(&k.s.pull, ST_EOF, 0, 0);
	/* 3 bytes then EOF in one call: a short read, AGAIN */
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_AGAIN, "recv of 3 header bytes then EOF");
	rc = do_recv(&k.s, 4096);
	EXPECT(rc < 0 && gnutls_error_is_fatal((int)rc),
	       "recv at EOF inside a header returned %s", rcs(rc));
	conn_close(&k);

	T("-- pull returns 0 (EOF) inside a record body");
	if (open_ready(&k, &o))
		goto out;
	rc = do_send(&k.c, 1000, 0);
	script_add(&k.s.pull, ST_PASS, 0, 0);
	script_add(&k.s.pull, ST_SHORT, 0, 200);
	script_add(&k.s.pull, ST_EOF, 0, 0);
	script_add(&k.s.pull, ST_EOF, 0, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_AGAIN, "recv of a header, 200 body bytes, then EOF");
	rc = do_recv(&k.s, 4096);
	EXPECT(rc < 0 && gnutls_error_is_fatal((int)rc),
	       "recv at EOF inside a body returned %s", rcs(rc));
	conn_close(&k);

	T("-- close_notify, then recv: 0; pull is not called again after EOF");
	if (open_ready(&k, &o))
		goto out;
	rc = gnutls_bye(k.c.s, GNUTLS_SHUT_WR);
	T("C bye(SHUT_WR) = %s", rcs(rc));
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 0, "recv of close_notify");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 0, "recv after close_notify");
out:
	conn_close(&k);
}

static void case_pull_errors(void)
{
	pull_errors(TR_PUSH, EM_GLOBAL);
}

static void case_pull_errors_errno_func(void)
{
	pull_errors(TR_PUSH_TMO, EM_FUNC);
}

static void case_pull_errors_set_errno(void)
{
	pull_errors(TR_VEC, EM_SET);
}

/* Record timeouts. */
static void case_timeout_record(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_PUSH_TMO, .errmode = EM_FUNC, .blocking = 1 };
	ssize_t rc;

	if (open_ready(&k, &o))
		goto out;
	T("-- custom pull_timeout, blocking socket: record_set_timeout(100), no data");
	gnutls_record_set_timeout(k.s.s, 100);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_TIMEDOUT, "recv with a timeout and no data");
	T("-- the session still works after a timeout");
	rc = do_send(&k.c, 1000, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv after a timeout");
	T("-- pull_timeout says 'no data' at once");
	script_add(&k.s.tmo, ST_TIMEOUT, 0, 0);
	rc = do_send(&k.c, 1000, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_TIMEDOUT, "recv whose pull_timeout returned 0");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv after that");
	T("-- pull_timeout fails with EINTR");
	script_add(&k.s.tmo, ST_FAIL, EINTR, 0);
	rc = do_send(&k.c, 1000, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_INTERRUPTED, "recv whose pull_timeout failed with EINTR");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv after that");
	T("-- record_set_timeout(GNUTLS_INDEFINITE_TIMEOUT) with data");
	gnutls_record_set_timeout(k.s.s, GNUTLS_INDEFINITE_TIMEOUT);
	rc = do_send(&k.c, 1000, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv with an indefinite timeout");
	T("-- record_set_timeout(0): no pull_timeout calls");
	gnutls_record_set_timeout(k.s.s, 0);
	rc = do_send(&k.c, 1000, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv without a timeout");
	T("-- pull_timeout fails with EIO (GnuTLS maps a pull_timeout error like a push error)");
	gnutls_record_set_timeout(k.s.s, 100);
	script_add(&k.s.tmo, ST_FAIL, EIO, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_PUSH_ERROR, "recv whose pull_timeout failed with EIO");
	conn_close(&k);

	T("-- default fd transport, blocking socket: record_set_timeout(100)");
	{
		struct conn_opts of = { .transport = TR_FD, .blocking = 1 };
		if (open_ready(&k, &of))
			goto out;
		gnutls_record_set_timeout(k.s.s, 100);
		rc = do_recv(&k.s, 4096);
		expect_rc(rc, GNUTLS_E_TIMEDOUT, "fd recv with a timeout and no data");
		rc = do_send(&k.c, 3000, 0);
		rc = do_recv(&k.s, 4096);
		expect_rc(rc, 3000, "fd recv after a timeout");
		T("-- default fd transport, non-blocking socket, timeout 100: GnuTLS polls, then TIMEDOUT");
		set_nonblock(k.fd[1], 1);
		rc = do_recv(&k.s, 4096);
		expect_rc(rc, GNUTLS_E_TIMEDOUT, "fd recv (non-blocking socket) with a timeout");
	}
out:
	conn_close(&k);
}

/* GnuTLS counts the time a pull takes (not the pull_timeout wait) against
 * the record timeout, across the header and body pulls of one record. */
static void case_timeout_slow_pull(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_PUSH_TMO, .errmode = EM_FUNC, .blocking = 1 };
	ssize_t rc;

	T("-- record_set_timeout(100), the header pull takes 150 ms");
	if (open_ready(&k, &o))
		goto out;
	gnutls_record_set_timeout(k.s.s, 100);
	rc = do_send(&k.c, 1000, 0);
	script_add(&k.s.pull, ST_SLOW, 0, 150000);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_TIMEDOUT, "recv whose header pull outlasted the timeout");
	conn_close(&k);

	T("-- record_set_timeout(100), header pull 30 ms, body pull 90 ms");
	if (open_ready(&k, &o))
		goto out;
	gnutls_record_set_timeout(k.s.s, 100);
	rc = do_send(&k.c, 1000, 0);
	script_add(&k.s.pull, ST_SLOW, 0, 30000);
	script_add(&k.s.pull, ST_SLOW, 0, 90000);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_TIMEDOUT, "recv whose pulls together outlasted the timeout");
	conn_close(&k);

	T("-- the same without a timeout: slow pulls just deliver");
	if (open_ready(&k, &o))
		goto out;
	rc = do_send(&k.c, 1000, 0);
	script_add(&k.s.pull, ST_SLOW, 0, 30000);
	script_add(&k.s.pull, ST_SLOW, 0, 90000);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv with slow pulls and no timeout");
out:
	conn_close(&k);
}

/* A replaced pull without a pull_timeout plus a timeout: PULL_ERROR
 * (NO_TIMEOUT_FUNC_SET in lib/buffers.h). */
static void case_timeout_nofunc(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_PUSH, .errmode = EM_GLOBAL };
	ssize_t rc;

	if (open_ready(&k, &o))
		goto out;
	T("-- custom pull, no pull_timeout, record_set_timeout(100)");
	gnutls_record_set_timeout(k.s.s, 100);
	rc = do_send(&k.c, 1000, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_PULL_ERROR, "recv with a timeout but no pull_timeout function");
	rc = do_recv(&k.s, 4096);
	T("(recv again after the error)");
	conn_close(&k);

	T("-- the same with GNUTLS_NONBLOCK: the timeout is ignored");
	o.cflags = o.sflags = GNUTLS_NONBLOCK;
	if (open_ready(&k, &o))
		goto out;
	gnutls_record_set_timeout(k.s.s, 100);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, GNUTLS_E_AGAIN, "recv with GNUTLS_NONBLOCK");
	rc = do_send(&k.c, 1000, 0);
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 1000, "recv with GNUTLS_NONBLOCK and data");
	conn_close(&k);

	T("-- handshake timeout with a custom pull and no pull_timeout");
	o.cflags = o.sflags = 0;
	conn_open(&k, &o);
	gnutls_handshake_set_timeout(k.c.s, 100);
	rc = gnutls_handshake(k.c.s);
	T("C handshake = %s", rcs(rc));
	expect_rc(rc, GNUTLS_E_PULL_ERROR, "handshake with a timeout but no pull_timeout");
out:
	conn_close(&k);
}

/* Handshake timeouts: the peer never answers. */
static void case_timeout_handshake(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_FD, .blocking = 1 };
	int rc;

	T("-- fd transport, blocking: client handshake_set_timeout(200), silent server");
	conn_open(&k, &o);
	gnutls_handshake_set_timeout(k.c.s, 200);
	rc = gnutls_handshake(k.c.s);
	T("C handshake = %s", rcs(rc));
	expect_rc(rc, GNUTLS_E_TIMEDOUT, "client handshake against a silent server");
	conn_close(&k);

	T("-- fd transport, blocking: server handshake_set_timeout(200), silent client");
	conn_open(&k, &o);
	gnutls_handshake_set_timeout(k.s.s, 200);
	rc = gnutls_handshake(k.s.s);
	T("S handshake = %s", rcs(rc));
	expect_rc(rc, GNUTLS_E_TIMEDOUT, "server handshake against a silent client");
	conn_close(&k);

	T("-- custom pull_timeout that waits out (almost) all the time left, 20 times");
	/* Whatever GnuTLS does on a later call, the first call already waited
	 * for the whole handshake timeout: it must return GNUTLS_E_TIMEDOUT.
	 * The socket is non-blocking so that a pull made after the wait shows
	 * up as a result (AGAIN) instead of a hang. */
	o.transport = TR_PUSH_TMO;
	o.errmode = EM_FUNC;
	o.blocking = 0;
	for (int i = 0; i < 20; i++) {
		conn_open(&k, &o);
		gnutls_handshake_set_timeout(k.c.s, 30);
		script_add(&k.c.tmo, ST_NEAR, 0, (size_t)(i * 100));
		rc = gnutls_handshake(k.c.s);
		if (is_again(rc))
			T("C handshake = %s dir=%d", rcs(rc), gnutls_record_get_direction(k.c.s));
		else
			T("C handshake = %s", rcs(rc));
		expect_rc(rc, GNUTLS_E_TIMEDOUT, "handshake whose pull_timeout waited out the timeout");
		conn_close(&k);
	}

	T("-- custom pull_timeout: client handshake_set_timeout(200), silent server");
	o.blocking = 1;
	conn_open(&k, &o);
	gnutls_handshake_set_timeout(k.c.s, 200);
	rc = gnutls_handshake(k.c.s);
	T("C handshake = %s", rcs(rc));
	expect_rc(rc, GNUTLS_E_TIMEDOUT, "client handshake (custom) against a silent server");
	conn_close(&k);

	T("-- custom pull_timeout, GNUTLS_NONBLOCK: a generous handshake timeout, both ends in the loop");
	o.blocking = 0;
	o.cflags = o.sflags = GNUTLS_NONBLOCK;
	conn_open(&k, &o);
	gnutls_handshake_set_timeout(k.c.s, 10000);
	gnutls_handshake_set_timeout(k.s.s, 10000);
	rc = handshake_loop(&k);
	expect_rc(rc, 0, "handshake with a timeout");
	conn_close(&k);
}

/* Getters return what was set, before and after traffic. */
static void case_transport_getters(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_FD };
	gnutls_transport_ptr_t r, s;
	int ri, si;
	static int tag_a, tag_b;

	conn_open(&k, &o);
#define SHOW(what, ok) T("%s: %s", what, (ok) ? "as set" : "DIFFERENT"), \
		EXPECT(ok, "%s does not return what was set", what)
	SHOW("C get_int after set_int", gnutls_transport_get_int(k.c.s) == k.fd[0]);
	gnutls_transport_get_int2(k.c.s, &ri, &si);
	SHOW("C get_int2 after set_int", ri == k.fd[0] && si == k.fd[0]);
	SHOW("C get_ptr after set_int",
	     gnutls_transport_get_ptr(k.c.s) == (gnutls_transport_ptr_t)(long)k.fd[0]);
	if (handshake_loop(&k) == 0 && settle(&k) == 0) {
		SHOW("C get_int after traffic", gnutls_transport_get_int(k.c.s) == k.fd[0]);
		SHOW("S get_int after traffic", gnutls_transport_get_int(k.s.s) == k.fd[1]);
		gnutls_transport_get_int2(k.s.s, &ri, &si);
		SHOW("S get_int2 after traffic", ri == k.fd[1] && si == k.fd[1]);
		gnutls_transport_get_ptr2(k.s.s, &r, &s);
		SHOW("S get_ptr2 after traffic",
		     r == (gnutls_transport_ptr_t)(long)k.fd[1] &&
		     s == (gnutls_transport_ptr_t)(long)k.fd[1]);
	}
	T("-- set_int2 with two descriptors (send side a dup)");
	{
		int d = dup(k.fd[1]);
		gnutls_transport_set_int2(k.s.s, k.fd[1], d);
		gnutls_transport_get_int2(k.s.s, &ri, &si);
		SHOW("S get_int2 after set_int2", ri == k.fd[1] && si == d);
		SHOW("S get_int after set_int2 (the receive side)",
		     gnutls_transport_get_int(k.s.s) == k.fd[1]);
		do_send(&k.s, 777, 0);
		do_recv(&k.c, 4096);
		do_send(&k.c, 555, 0);
		do_recv(&k.s, 4096);
		gnutls_transport_get_int2(k.s.s, &ri, &si);
		SHOW("S get_int2 after traffic over set_int2", ri == k.fd[1] && si == d);
		gnutls_transport_set_int(k.s.s, k.fd[1]);
		close(d);
	}
	conn_close(&k);

	T("-- custom transport with set_ptr2 (two contexts)");
	{
		struct conn_opts oc = { .transport = TR_PUSH_TMO, .errmode = EM_FUNC,
					.split_ptr = 1 };
		conn_open(&k, &oc);
		gnutls_transport_get_ptr2(k.c.s, &r, &s);
		SHOW("C get_ptr2 after set_ptr2", r == &k.c.rctx && s == &k.c.sctx);
		SHOW("C get_ptr after set_ptr2", gnutls_transport_get_ptr(k.c.s) == &k.c.rctx);
		if (handshake_loop(&k) == 0 && settle(&k) == 0) {
			gnutls_transport_get_ptr2(k.c.s, &r, &s);
			SHOW("C get_ptr2 after traffic", r == &k.c.rctx && s == &k.c.sctx);
			SHOW("S get_ptr after traffic",
			     gnutls_transport_get_ptr(k.s.s) == &k.s.rctx);
		}
		T("-- set_ptr to an unrelated value and back");
		gnutls_transport_set_ptr(k.c.s, &tag_a);
		SHOW("C get_ptr after set_ptr(a)", gnutls_transport_get_ptr(k.c.s) == &tag_a);
		gnutls_transport_set_ptr2(k.c.s, &tag_a, &tag_b);
		gnutls_transport_get_ptr2(k.c.s, &r, &s);
		SHOW("C get_ptr2 after set_ptr2(a,b)", r == &tag_a && s == &tag_b);
		gnutls_transport_set_ptr2(k.c.s, &k.c.rctx, &k.c.sctx);
		do_send(&k.c, 1234, 0);
		do_recv(&k.s, 4096);
		do_send(&k.s, 4321, 0);
		do_recv(&k.c, 8192);
		gnutls_transport_get_ptr2(k.c.s, &r, &s);
		SHOW("C get_ptr2 after restoring", r == &k.c.rctx && s == &k.c.sctx);
	}
#undef SHOW
	conn_close(&k);
}

/* Forced key updates in the single-threaded loop. */
static void keyupdate(int transport, int errmode)
{
	struct conn k;
	struct conn_opts o = { .transport = transport, .errmode = errmode, .bufsize = 4096 };
	struct flow f[2];
	int rc;

	if (open_ready(&k, &o))
		goto out;
	flow_init(&f[0], &k.c, &k.s, 65536, 16384, 16384, 0);
	flow_init(&f[1], &k.s, &k.c, 65536, 16384, 16384, 0);
	if (run_flows(f, 2))
		goto out;
	T("-- C key_update(0)");
	rc = gnutls_session_key_update(k.c.s, 0);
	T("C key_update(0) = %s", rcs(rc));
	expect_rc(rc, 0, "key_update(0)");
	flow_init(&f[0], &k.c, &k.s, 65536, 16384, 16384, 1);
	flow_init(&f[1], &k.s, &k.c, 65536, 16384, 16384, 0);
	if (run_flows(f, 2))
		goto out;
	T("-- C key_update(GNUTLS_KU_PEER): S answers with its own update on its next send");
	rc = gnutls_session_key_update(k.c.s, GNUTLS_KU_PEER);
	T("C key_update(KU_PEER) = %s", rcs(rc));
	expect_rc(rc, 0, "key_update(GNUTLS_KU_PEER)");
	flow_init(&f[0], &k.c, &k.s, 65536, 16384, 16384, 0);
	flow_init(&f[1], &k.s, &k.c, 65536, 16384, 1000, 2);
	if (run_flows(f, 2))
		goto out;
	T("-- S key_update(0) while C has half-read the previous record");
	rc = do_send(&k.s, 5000, 0);
	expect_rc(rc, 5000, "S send(5000)");
	rc = do_recv(&k.c, 1000);
	expect_rc(rc, 1000, "partial read before the update");
	rc = gnutls_session_key_update(k.s.s, 0);
	T("S key_update(0) = %s", rcs(rc));
	expect_rc(rc, 0, "S key_update(0)");
	rc = do_recv(&k.c, 4096);
	expect_rc(rc, 4000, "the rest of the old-key record");
	if (transfer(&k.s, &k.c, 20000, 10000, 4096, 0))
		goto out;
	T("-- bye");
	rc = gnutls_bye(k.c.s, GNUTLS_SHUT_WR);
	T("C bye(SHUT_WR) = %s", rcs(rc));
	rc = (int)do_recv(&k.s, 4096);
	expect_rc(rc, 0, "recv of close_notify after key updates");
out:
	conn_close(&k);
}

static void case_keyupdate_fd(void)
{
	keyupdate(TR_FD, EM_GLOBAL);
}

static void case_keyupdate_custom(void)
{
	keyupdate(TR_PUSH_TMO, EM_FUNC);
}

/* ------------------------------------------- tickets and resumption */

/* One server ticket key for every resumption case (GnuTLS servers send
 * TLS 1.3 tickets only once a key is set). */
static gnutls_datum_t ticket_key;

/* Every ticket is seen once here: accept it. */
static int anti_replay_add(void *ptr, time_t expires, const gnutls_datum_t *key,
			   const gnutls_datum_t *data)
{
	(void)ptr, (void)expires, (void)key, (void)data;
	return 0;
}

static void enable_tickets(struct ep *server, unsigned early_size)
{
	if (ticket_key.data == NULL && gnutls_session_ticket_key_generate(&ticket_key) < 0) {
		EXPECT(0, "gnutls_session_ticket_key_generate failed");
		return;
	}
	EXPECT(gnutls_session_ticket_enable_server(server->s, &ticket_key) == 0,
	       "gnutls_session_ticket_enable_server failed");
	if (early_size) {
		/* GnuTLS servers take early data only with anti-replay on. */
		static gnutls_anti_replay_t anti_replay;
		if (anti_replay == NULL) {
			EXPECT(gnutls_anti_replay_init(&anti_replay) == 0,
			       "gnutls_anti_replay_init failed");
			gnutls_anti_replay_set_add_function(anti_replay, anti_replay_add);
		}
		gnutls_anti_replay_enable(server->s, anti_replay);
		EXPECT(gnutls_record_set_max_early_data_size(server->s, early_size) == 0,
		       "gnutls_record_set_max_early_data_size failed");
	}
}

/* gnutls_session_get_data2 as a TLS 1.3 client calls it after the
 * handshake: it may wait (pull_timeout) for the server's ticket. */
static int get_session_data(struct ep *e, gnutls_datum_t *data, const char *when)
{
	int rc = gnutls_session_get_data2(e->s, data);
	unsigned flags = gnutls_session_get_flags(e->s);

	T("%s get_data2 (%s) = %s %s ticket_flag=%d", e->name, when, rcs(rc),
	  rc < 0 ? "-" : data->size > 4 ? "session-data" : "empty-placeholder",
	  !!(flags & GNUTLS_SFLAGS_SESSION_TICKET));
	return rc;
}

/* Resumption with the ticket the first connection received; with
 * early_size, early data sent before the second handshake. */
static void resume(int transport, int errmode, unsigned early_size)
{
	struct conn k;
	struct conn_opts o = { .transport = transport, .errmode = errmode,
			       .sflags = early_size ? GNUTLS_ENABLE_EARLY_DATA : 0 };
	gnutls_datum_t data = { NULL, 0 };
	static const char early[] = "early data from the client";
	int rc;

	conn_open(&k, &o);
	enable_tickets(&k.s, early_size);
	rc = handshake_loop(&k);
	if (rc == 0)
		rc = get_session_data(&k.c, &data, "after the handshake");
	EXPECT(rc == 0 && data.size > 4,
	       "the client has no session data after a TLS 1.3 handshake with tickets");
	if (rc == 0 && settle(&k) == 0) {
		gnutls_datum_t again = { NULL, 0 };
		if (get_session_data(&k.c, &again, "after traffic") == 0)
			gnutls_free(again.data);
	}
	conn_close(&k);
	if (data.size <= 4)
		goto out;

	T("-- second connection, resuming%s", early_size ? ", with early data" : "");
	conn_open(&k, &o);
	enable_tickets(&k.s, early_size);
	rc = gnutls_session_set_data(k.c.s, data.data, data.size);
	T("C set_data = %s", rcs(rc));
	if (early_size) {
		T("C max_early_data_size = %zu", gnutls_record_get_max_early_data_size(k.c.s));
		EXPECT(gnutls_record_get_max_early_data_size(k.c.s) == early_size,
		       "the ticket does not carry the server's max_early_data_size");
		ssize_t n = gnutls_record_send_early_data(k.c.s, early, sizeof early);
		T("C send_early_data(%zu) = %s", sizeof early, rcs(n));
	}
	rc = handshake_loop(&k);
	if (rc == 0) {
		int cr = gnutls_session_is_resumed(k.c.s), sr = gnutls_session_is_resumed(k.s.s);
		T("resumed: C=%d S=%d", cr, sr);
		EXPECT(cr && sr, "the second connection was not resumed");
	}
	if (rc == 0 && early_size) {
		unsigned sf = gnutls_session_get_flags(k.s.s), cf = gnutls_session_get_flags(k.c.s);
		char buf[256];
		ssize_t n = gnutls_record_recv_early_data(k.s.s, buf, sizeof buf);
		T("S early data flag=%d C early data flag=%d S recv_early_data = %s%s",
		  !!(sf & GNUTLS_SFLAGS_EARLY_DATA), !!(cf & GNUTLS_SFLAGS_EARLY_DATA), rcs(n),
		  n == (ssize_t)sizeof early && !memcmp(buf, early, sizeof early) ? " (as sent)" : "");
		EXPECT(n == (ssize_t)sizeof early && !memcmp(buf, early, sizeof early),
		       "the server did not receive the early data");
	}
	if (rc == 0)
		settle(&k);
	conn_close(&k);
out:
	gnutls_free(data.data);
}

static void case_resume_fd(void)
{
	resume(TR_FD, EM_GLOBAL, 0);
}

static void case_resume_custom(void)
{
	resume(TR_PUSH_TMO, EM_FUNC, 0);
}

static void case_early_data(void)
{
	resume(TR_PUSH_TMO, EM_FUNC, 1024);
}

/* A server that sends no ticket: the client's get_data2 waits out its
 * round-trip estimate and returns the empty placeholder, both ways. */
static void case_no_ticket(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_PUSH_TMO, .errmode = EM_FUNC };
	gnutls_datum_t data = { NULL, 0 };

	conn_open(&k, &o);
	if (handshake_loop(&k) == 0 && get_session_data(&k.c, &data, "no ticket sent") == 0) {
		EXPECT(data.size == 4, "session data without a ticket");
		gnutls_free(data.data);
		settle(&k);
	}
	conn_close(&k);
}

/* GnuTLS calls the application back in the middle of a call (handshake
 * hooks, post_client_hello); programs call GnuTLS on the same session
 * from there (glib-networking reads its connection object through
 * gnutls_transport_get_ptr). */
static struct conn *callback_conn;
static int callback_calls, callback_wrong;

static void callback_check(gnutls_session_t session, const char *where)
{
	struct conn *k = callback_conn;
	struct ep *e = session == k->c.s ? &k->c : &k->s;
	gnutls_transport_ptr_t r, s;
	int ok;

	gnutls_transport_get_ptr2(session, &r, &s);
	ok = gnutls_transport_get_ptr(session) == (void *)&e->rctx && r == &e->rctx &&
	     s == &e->rctx && gnutls_session_get_ptr(session) == (void *)e;
	callback_calls++;
	if (!ok) {
		callback_wrong++;
		T("%s %s: transport getters DIFFERENT", e->name, where);
	}
	/* A setter from inside the call: same pointer again, must not
	 * disturb the call in progress. */
	gnutls_transport_set_ptr(session, &e->rctx);
	(void)gnutls_record_check_pending(session);
}

static int callback_hook(gnutls_session_t session, unsigned htype, unsigned when,
			 unsigned incoming, const gnutls_datum_t *msg)
{
	(void)msg;
	char where[96];
	snprintf(where, sizeof where, "hook %s %s %s", gnutls_handshake_description_get_name(htype),
		 when == GNUTLS_HOOK_PRE ? "pre" : "post", incoming ? "in" : "out");
	callback_check(session, where);
	return 0;
}

static int callback_client_hello(gnutls_session_t session)
{
	callback_check(session, "post_client_hello");
	return 0;
}

static void case_callbacks(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_PUSH_TMO, .errmode = EM_FUNC };

	conn_open(&k, &o);
	callback_conn = &k;
	callback_calls = callback_wrong = 0;
	gnutls_session_set_ptr(k.c.s, &k.c);
	gnutls_session_set_ptr(k.s.s, &k.s);
	gnutls_handshake_set_hook_function(k.c.s, GNUTLS_HANDSHAKE_ANY, GNUTLS_HOOK_BOTH,
					   callback_hook);
	gnutls_handshake_set_hook_function(k.s.s, GNUTLS_HANDSHAKE_ANY, GNUTLS_HOOK_BOTH,
					   callback_hook);
	gnutls_handshake_set_post_client_hello_function(k.s.s, callback_client_hello);
	if (handshake_loop(&k) == 0 && settle(&k) == 0) {
		int rc = gnutls_session_key_update(k.c.s, GNUTLS_KU_PEER);
		T("C key_update(KU_PEER) = %s", rcs(rc));
		transfer(&k.c, &k.s, 20000, 10000, 4096, 0);
		transfer(&k.s, &k.c, 20000, 10000, 4096, 0);
	}
	T("callbacks: %d calls, %d saw different transport values", callback_calls,
	  callback_wrong);
	EXPECT(callback_calls > 0 && callback_wrong == 0,
	       "inside callbacks the transport getters did not return what was set");
	conn_close(&k);
}

/* Less common record calls: send2, recv_seq, cork/uncork (uncork calls
 * gnutls_record_send itself), session_ticket_send, discard_queued. */
static void case_misc_api(void)
{
	struct conn k;
	struct conn_opts o = { .transport = TR_FD, .bufsize = 4096 };
	unsigned char seq[8];
	ssize_t rc;

	if (open_ready(&k, &o))
		goto out;
	T("-- gnutls_record_send2 and gnutls_record_recv_seq");
	rg_pattern_fill(txbuf, 1000, k.c.tx_id, k.c.tx_off);
	rc = gnutls_record_send2(k.c.s, txbuf, 1000, 0, 0);
	T("C send2(1000, pad 0) = %s", rcs(rc));
	expect_rc(rc, 1000, "send2");
	if (rc > 0)
		k.c.tx_off += (uint64_t)rc;
	rc = gnutls_record_recv_seq(k.s.s, rxbuf, 4096, seq);
	T("S recv_seq(4096) = %s seq=%02x%02x%02x%02x%02x%02x%02x%02x", rcs(rc), seq[0], seq[1],
	  seq[2], seq[3], seq[4], seq[5], seq[6], seq[7]);
	expect_rc(rc, 1000, "recv_seq");
	if (rc > 0) {
		EXPECT(rg_pattern_check(rxbuf, (size_t)rc, k.s.rx_id, k.s.rx_off) < 0,
		       "recv_seq data");
		k.s.rx_off += (uint64_t)rc;
	}

	T("-- cork three small sends, uncork: one record");
	gnutls_record_cork(k.c.s);
	for (int i = 0; i < 3; i++)
		do_send(&k.c, 1000, 0);
	T("C check_corked = %zu", gnutls_record_check_corked(k.c.s));
	rc = gnutls_record_uncork(k.c.s, 0);
	T("C uncork(0) = %s", rcs(rc));
	expect_rc(rc, 3000, "uncork");
	rc = do_recv(&k.s, 4096);
	expect_rc(rc, 3000, "recv of the uncorked record");

	T("-- cork 30000 bytes, uncork into a small socket buffer: AGAIN, retried");
	gnutls_record_cork(k.c.s);
	for (int i = 0; i < 3; i++)
		do_send(&k.c, 10000, 0);
	rc = gnutls_record_uncork(k.c.s, 0);
	T("C uncork(0) = %s", rcs(rc));
	for (int i = 0; i < 200 && is_again(rc); i++) {
		struct waiter w[2] = { { &k.c, POLLOUT, 0 }, { &k.s, POLLIN, 0 } };
		ssize_t r2;
		T("C direction = %d", gnutls_record_get_direction(k.c.s));
		do
			r2 = do_recv(&k.s, 16384);
		while (r2 > 0);
		wait_for(w, 2);
		rc = gnutls_record_uncork(k.c.s, 0);
		T("C uncork(0) = %s", rcs(rc));
	}
	EXPECT(rc > 0, "uncork of 30000 corked bytes returned %s", rcs(rc));
	while (k.s.rx_off < k.c.tx_off) {
		rc = do_recv(&k.s, 16384);
		if (rc == GNUTLS_E_AGAIN) {
			struct waiter w = { &k.s, POLLIN, 0 };
			if (wait_for(&w, 1) <= 0)
				break;
		} else if (rc <= 0) {
			break;
		}
	}
	EXPECT(k.s.rx_off == k.c.tx_off, "received %" PRIu64 " of %" PRIu64,
	       k.s.rx_off, k.c.tx_off);

	T("-- gnutls_session_ticket_send from the server");
	rc = gnutls_session_ticket_send(k.s.s, 1, 0);
	T("S session_ticket_send(1) = %s", rcs(rc));
	rc = do_recv(&k.c, 4096);
	rc = do_send(&k.s, 100, 0);
	rc = do_recv(&k.c, 4096);
	expect_rc(rc, 100, "recv after a ticket");

	T("-- gnutls_record_discard_queued after a send that got AGAIN");
	rc = do_send(&k.c, 16384, 0);
	expect_rc(rc, GNUTLS_E_AGAIN, "16 KiB send into a small buffer");
	T("C discard_queued = %zu", gnutls_record_discard_queued(k.c.s));
	k.c.send_pending = 0;
out:
	conn_close(&k);
}

/* ------------------------------------------------------------------ main */

struct case_def {
	const char *name;
	void (*fn)(void);
	const char *what;
};

static const struct case_def cases[] = {
	{ "fd-loop", case_fd_loop,
	  "fd transport, poll loop, small buffers: AGAIN, retries, check_pending, bye, EOF" },
	{ "fd-nonblock-flag", case_fd_nonblock_flag,
	  "GNUTLS_NONBLOCK|GNUTLS_NO_SIGNAL, 1 MiB each way, timeout ignored" },
	{ "fd-sigpipe", case_fd_sigpipe, "EPIPE without GNUTLS_NO_SIGNAL: SIGPIPE raised" },
	{ "fd-nosignal", case_fd_nosignal, "EPIPE with GNUTLS_NO_SIGNAL: no SIGPIPE" },
	{ "fd-premature", case_fd_premature, "peer closes without close_notify" },
	{ "custom-errno", case_custom_errno_global, "push+pull, errno through errno" },
	{ "custom-errno-func", case_custom_errno_func,
	  "push+pull+pull_timeout, errno through an errno function" },
	{ "custom-set-errno", case_custom_set_errno,
	  "push+pull+pull_timeout, errno through gnutls_transport_set_errno, set_ptr2" },
	{ "custom-vec-push", case_custom_vec_push, "vec_push+pull+pull_timeout, errno function" },
	{ "push-errors", case_push_errors,
	  "push EAGAIN/EINTR/short/EPIPE/ECONNRESET/EIO, errno" },
	{ "push-errors-errno-func", case_push_errors_errno_func,
	  "the same through vec_push and an errno function" },
	{ "push-errors-set-errno", case_push_errors_set_errno,
	  "the same through push and gnutls_transport_set_errno" },
	{ "pull-errors", case_pull_errors, "pull EINTR/EAGAIN/EIO/ECONNRESET/EOF, errno" },
	{ "pull-errors-errno-func", case_pull_errors_errno_func,
	  "the same with an errno function" },
	{ "pull-errors-set-errno", case_pull_errors_set_errno,
	  "the same with gnutls_transport_set_errno" },
	{ "timeout-record", case_timeout_record,
	  "record_set_timeout with pull_timeout and the fd transport: TIMEDOUT" },
	{ "timeout-slow-pull", case_timeout_slow_pull,
	  "time spent in pull counts against the record timeout: TIMEDOUT" },
	{ "timeout-nofunc", case_timeout_nofunc,
	  "custom pull without pull_timeout plus a timeout: PULL_ERROR" },
	{ "timeout-handshake", case_timeout_handshake, "handshake_set_timeout: TIMEDOUT" },
	{ "transport-getters", case_transport_getters,
	  "get_ptr/get_ptr2/get_int/get_int2 return what was set" },
	{ "misc-api", case_misc_api,
	  "send2, recv_seq, cork/uncork, session_ticket_send, discard_queued" },
	{ "keyupdate-fd", case_keyupdate_fd, "forced key updates, fd transport, poll loop" },
	{ "resume-fd", case_resume_fd,
	  "TLS 1.3 ticket after the handshake (get_data2), resumption, fd transport" },
	{ "resume-custom", case_resume_custom,
	  "the same over push+pull+pull_timeout" },
	{ "no-ticket", case_no_ticket,
	  "get_data2 waits for a ticket that never comes: empty placeholder" },
	{ "early-data", case_early_data, "resumption with 0-RTT early data" },
	{ "callbacks", case_callbacks,
	  "handshake hooks and post_client_hello call transport getters/setters" },
	{ "keyupdate-custom", case_keyupdate_custom,
	  "forced key updates, custom transport, errno function" },
};
#define NCASES (sizeof cases / sizeof cases[0])

static void usage(FILE *f)
{
	fprintf(f,
		"usage: rg-differential [--strict-callbacks] [CASE...]\n"
		"       rg-differential --list | --help\n"
		"Runs the cases (all when none is named) single-threaded and prints a\n"
		"transcript of every GnuTLS call, result and transport callback on\n"
		"stdout; the transcript must be identical with and without\n"
		"LD_PRELOAD=librekeyguard.so. Exit 0 if every expectation held, 1 if\n"
		"not, 2 on bad usage. --strict-callbacks logs every push call instead\n"
		"of the bytes pushed between two other events. Cases:\n");
	for (size_t i = 0; i < NCASES; i++)
		fprintf(f, "  %-24s %s\n", cases[i].name, cases[i].what);
}

static void shim_report(void)
{
	const char *(*version)(void);
	const char *(*mode)(void);
	unsigned long (*guarded)(void);
	void *p;

	if (!rg_shim_loaded()) {
		fprintf(stderr, "shim_loaded=0\n");
		return;
	}
	p = dlsym(RTLD_DEFAULT, "rekeyguard_version");
	memcpy(&version, &p, sizeof p);
	p = dlsym(RTLD_DEFAULT, "rekeyguard_active_mode");
	memcpy(&mode, &p, sizeof p);
	p = dlsym(RTLD_DEFAULT, "rekeyguard_sessions_guarded");
	memcpy(&guarded, &p, sizeof p);
	fprintf(stderr, "shim_loaded=1 shim_version=%s shim_active_mode=%s shim_sessions_guarded=%s%lu\n",
		version ? version() : "?", mode ? mode() : "?",
		guarded ? "" : "?", guarded ? guarded() : 0ul);
}

int main(int argc, char **argv)
{
	int run[NCASES];
	int any = 0;
	sigset_t set;

	memset(run, 0, sizeof run);
	for (int i = 1; i < argc; i++) {
		size_t j;

		if (!strcmp(argv[i], "--strict-callbacks")) {
			strict_callbacks = 1;
			continue;
		}
		if (!strcmp(argv[i], "--list")) {
			for (j = 0; j < NCASES; j++)
				printf("%s\n", cases[j].name);
			return 0;
		}
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		}
		for (j = 0; j < NCASES; j++)
			if (!strcmp(argv[i], cases[j].name))
				break;
		if (j == NCASES) {
			fprintf(stderr, "rg-differential: unknown case \"%s\"\n", argv[i]);
			usage(stderr);
			return 2;
		}
		run[j] = 1;
		any = 1;
	}
	if (!any)
		for (size_t j = 0; j < NCASES; j++)
			run[j] = 1;

	setvbuf(stdout, NULL, _IOLBF, 0);
	/* SIGPIPE stays pending instead of killing us; cases look at it. */
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	sigprocmask(SIG_BLOCK, &set, NULL);
	rg_init();

	T("rg-differential transcript v1");
	for (size_t j = 0; j < NCASES; j++) {
		double t0;
		int n;

		if (!run[j])
			continue;
		current_case = cases[j].name;
		case_failures = 0;
		rg_watchdog(cases[j].name, 20);
		t0 = rg_now();
		T("== case %s: %s", cases[j].name, cases[j].what);
		cases[j].fn();
		n = sigpipe_pending();
		if (n)
			T("sigpipe pending at the end of the case = %d", n);
		T("== end %s: %s", cases[j].name, case_failures ? "FAILED" : "ok");
		fprintf(stderr, "rg-differential: %s %s (%.2f s)\n", cases[j].name,
			case_failures ? "FAILED" : "ok", rg_now() - t0);
		total_failures += case_failures;
		rg_watchdog_cancel();
	}
	flush_pushed();
	fflush(stdout);
	shim_report();
	return total_failures ? 1 : 0;
}
