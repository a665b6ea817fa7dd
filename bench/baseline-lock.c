/*
 * baseline-lock.c — the two lock-based alternatives the benchmark compares
 * rekeyguard with, as LD_PRELOAD libraries. Benchmark baselines, not
 * products: they only show what the straightforward designs cost.
 *
 *   libnaivelock.so  (configuration 4) a recursive mutex per session held
 *                    across each whole GnuTLS call — the design taken
 *                    literally. It deadlocks as soon as a thread waits in
 *                    gnutls_record_recv while another must send.
 *   libqemustyle.so  (configuration 5, built with -DBENCH_QEMU_STYLE=1)
 *                    the same mutex, plus QEMU upstream's fix for that
 *                    deadlock: before each outermost receive, and only when
 *                    GnuTLS holds no buffered data, wait with poll() for
 *                    the socket to become readable, without the lock.
 *
 * Where the QEMU-style library polls: on GnuTLS's default transport the fd
 * given to gnutls_transport_set_int2 (gnutls_transport_set_int is a macro
 * for it). A custom push/pull transport hides its fd, as QEMU's QIOChannel
 * does; QEMU polls its own channel, so the application announces the fd
 * with bench_qemustyle_set_poll_fd(session, fd) — the benchmark does. A
 * session with no known fd is not polled (it behaves like the naive lock).
 *
 * Invariants: real GnuTLS functions are bound lazily under pthread_once
 * with dlsym(RTLD_NEXT); the session table is read without locks (entries
 * are only ever prepended and never freed: a deinitialised session's entry
 * stays, with its session cleared — a few dozen bytes per session, fine for
 * a benchmark); the newest entry for an address wins, so an address reused
 * by a later gnutls_init starts fresh. Only the outermost call on a thread
 * polls (nested GnuTLS calls through the PLT run with the lock held).
 */
#include <gnutls/gnutls.h>

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef BENCH_QEMU_STYLE
#define BENCH_QEMU_STYLE 0
#endif

#define BASELINE_EXPORT __attribute__((visibility("default")))

/* ---- the real functions -------------------------------------------------- */

#define REAL_SLOT(ret, name, params) union { void *sym; ret (*fn) params; } name

static struct {
	REAL_SLOT(int, gnutls_init, (gnutls_session_t *, unsigned int));
	REAL_SLOT(void, gnutls_deinit, (gnutls_session_t));
	REAL_SLOT(int, gnutls_handshake, (gnutls_session_t));
	REAL_SLOT(ssize_t, gnutls_record_send, (gnutls_session_t, const void *, size_t));
	REAL_SLOT(ssize_t, gnutls_record_send2, (gnutls_session_t, const void *, size_t, size_t, unsigned));
	REAL_SLOT(ssize_t, gnutls_record_recv, (gnutls_session_t, void *, size_t));
	REAL_SLOT(ssize_t, gnutls_record_recv_seq, (gnutls_session_t, void *, size_t, unsigned char *));
	REAL_SLOT(int, gnutls_record_uncork, (gnutls_session_t, unsigned int));
	REAL_SLOT(size_t, gnutls_record_check_pending, (gnutls_session_t));
	REAL_SLOT(int, gnutls_bye, (gnutls_session_t, gnutls_close_request_t));
	REAL_SLOT(int, gnutls_alert_send, (gnutls_session_t, gnutls_alert_level_t, gnutls_alert_description_t));
	REAL_SLOT(int, gnutls_session_key_update, (gnutls_session_t, unsigned));
	REAL_SLOT(void, gnutls_transport_set_int2, (gnutls_session_t, int, int));
} real;

static pthread_once_t bind_once = PTHREAD_ONCE_INIT;

static void bind_real(void)
{
	static const struct { const char *name; void **slot; } table[] = {
		{ "gnutls_init", &real.gnutls_init.sym },
		{ "gnutls_deinit", &real.gnutls_deinit.sym },
		{ "gnutls_handshake", &real.gnutls_handshake.sym },
		{ "gnutls_record_send", &real.gnutls_record_send.sym },
		{ "gnutls_record_send2", &real.gnutls_record_send2.sym },
		{ "gnutls_record_recv", &real.gnutls_record_recv.sym },
		{ "gnutls_record_recv_seq", &real.gnutls_record_recv_seq.sym },
		{ "gnutls_record_uncork", &real.gnutls_record_uncork.sym },
		{ "gnutls_record_check_pending", &real.gnutls_record_check_pending.sym },
		{ "gnutls_bye", &real.gnutls_bye.sym },
		{ "gnutls_alert_send", &real.gnutls_alert_send.sym },
		{ "gnutls_session_key_update", &real.gnutls_session_key_update.sym },
		{ "gnutls_transport_set_int2", &real.gnutls_transport_set_int2.sym },
	};
	for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
		*table[i].slot = dlsym(RTLD_NEXT, table[i].name);
		if (*table[i].slot == NULL) {
			/* A benchmark baseline: failing loudly beats a wrong number. */
			fprintf(stderr, "baseline-lock: %s not found\n", table[i].name);
			_exit(3);
		}
	}
}

static inline void ensure_bound(void)
{
	pthread_once(&bind_once, bind_real);
}

/* ---- session table ------------------------------------------------------- */

struct entry {
	_Atomic(gnutls_session_t) session;   /* NULL after gnutls_deinit */
	struct entry *next;                  /* immutable once published */
	pthread_mutex_t lock;                /* recursive */
	_Atomic int poll_fd;                 /* QEMU style: -1 not known */
};

#define BUCKETS 4096
static _Atomic(struct entry *) buckets[BUCKETS];
static pthread_mutex_t insert_lock = PTHREAD_MUTEX_INITIALIZER; /* guards prepends */

/* Outermost-call depth of this thread (GnuTLS calls itself via the PLT). */
static __thread unsigned call_depth __attribute__((tls_model("initial-exec")));

static inline size_t bucket_of(gnutls_session_t s)
{
	return (size_t)(((uintptr_t)s >> 4) * 0x9E3779B97F4A7C15ull >> 52) % BUCKETS;
}

static struct entry *entry_lookup(gnutls_session_t s)
{
	struct entry *e = atomic_load_explicit(&buckets[bucket_of(s)], memory_order_acquire);
	for (; e != NULL; e = e->next)
		if (atomic_load_explicit(&e->session, memory_order_relaxed) == s)
			return e;
	return NULL;
}

static void entry_create(gnutls_session_t s)
{
	struct entry *e = calloc(1, sizeof *e);
	pthread_mutexattr_t attr;

	if (e == NULL)
		return;   /* unguarded; a benchmark would notice nothing worse */
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&e->lock, &attr);
	pthread_mutexattr_destroy(&attr);
	atomic_init(&e->session, s);
	atomic_init(&e->poll_fd, -1);
	size_t b = bucket_of(s);
	pthread_mutex_lock(&insert_lock);
	e->next = atomic_load_explicit(&buckets[b], memory_order_relaxed);
	atomic_store_explicit(&buckets[b], e, memory_order_release);
	pthread_mutex_unlock(&insert_lock);
}

/* ---- the call wrapper ------------------------------------------------------ */

static inline struct entry *call_begin(gnutls_session_t s)
{
	ensure_bound();
	struct entry *e = entry_lookup(s);
	if (e != NULL)
		pthread_mutex_lock(&e->lock);
	call_depth++;
	return e;
}

static inline void call_end(struct entry *e)
{
	call_depth--;
	if (e != NULL)
		pthread_mutex_unlock(&e->lock);
}

/* QEMU style: wait, without the lock, until a receive will find data —
 * unless GnuTLS already holds some, or this is a nested call. */
static void wait_readable(gnutls_session_t s)
{
	if (!BENCH_QEMU_STYLE || call_depth > 0)
		return;
	ensure_bound();
	struct entry *e = entry_lookup(s);
	if (e == NULL)
		return;
	int fd = atomic_load_explicit(&e->poll_fd, memory_order_relaxed);
	if (fd < 0)
		return;
	pthread_mutex_lock(&e->lock);
	size_t pending = real.gnutls_record_check_pending.fn(s);
	pthread_mutex_unlock(&e->lock);
	if (pending > 0)
		return;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	while (poll(&pfd, 1, -1) < 0 && errno == EINTR)
		;
}

#define LOCKED_CALL(ret_type, session, call)                   \
	do {                                                   \
		struct entry *e_ = call_begin(session);        \
		ret_type r_ = (call);                          \
		call_end(e_);                                  \
		return r_;                                     \
	} while (0)

/* ---- exported wrappers -------------------------------------------------- */

BASELINE_EXPORT int gnutls_init(gnutls_session_t *session, unsigned int flags)
{
	ensure_bound();
	int ret = real.gnutls_init.fn(session, flags);
	if (ret >= 0)
		entry_create(*session);
	return ret;
}

BASELINE_EXPORT void gnutls_deinit(gnutls_session_t session)
{
	ensure_bound();
	struct entry *e = entry_lookup(session);
	if (e != NULL) {
		pthread_mutex_lock(&e->lock);
		atomic_store(&e->session, NULL);
		pthread_mutex_unlock(&e->lock);
	}
	real.gnutls_deinit.fn(session);
}

BASELINE_EXPORT int gnutls_handshake(gnutls_session_t session)
{
	LOCKED_CALL(int, session, real.gnutls_handshake.fn(session));
}

BASELINE_EXPORT ssize_t gnutls_record_send(gnutls_session_t session, const void *data, size_t len)
{
	LOCKED_CALL(ssize_t, session, real.gnutls_record_send.fn(session, data, len));
}

BASELINE_EXPORT ssize_t gnutls_record_send2(gnutls_session_t session, const void *data, size_t len,
					    size_t pad, unsigned flags)
{
	LOCKED_CALL(ssize_t, session, real.gnutls_record_send2.fn(session, data, len, pad, flags));
}

BASELINE_EXPORT ssize_t gnutls_record_recv(gnutls_session_t session, void *data, size_t len)
{
	wait_readable(session);
	LOCKED_CALL(ssize_t, session, real.gnutls_record_recv.fn(session, data, len));
}

BASELINE_EXPORT ssize_t gnutls_record_recv_seq(gnutls_session_t session, void *data, size_t len,
					       unsigned char *seq)
{
	wait_readable(session);
	LOCKED_CALL(ssize_t, session, real.gnutls_record_recv_seq.fn(session, data, len, seq));
}

BASELINE_EXPORT int gnutls_record_uncork(gnutls_session_t session, unsigned int flags)
{
	LOCKED_CALL(int, session, real.gnutls_record_uncork.fn(session, flags));
}

BASELINE_EXPORT size_t gnutls_record_check_pending(gnutls_session_t session)
{
	LOCKED_CALL(size_t, session, real.gnutls_record_check_pending.fn(session));
}

BASELINE_EXPORT int gnutls_bye(gnutls_session_t session, gnutls_close_request_t how)
{
	LOCKED_CALL(int, session, real.gnutls_bye.fn(session, how));
}

BASELINE_EXPORT int gnutls_alert_send(gnutls_session_t session, gnutls_alert_level_t level,
				      gnutls_alert_description_t desc)
{
	LOCKED_CALL(int, session, real.gnutls_alert_send.fn(session, level, desc));
}

BASELINE_EXPORT int gnutls_session_key_update(gnutls_session_t session, unsigned flags)
{
	LOCKED_CALL(int, session, real.gnutls_session_key_update.fn(session, flags));
}

/* Remembers the fd of GnuTLS's default transport for the QEMU-style poll. */
BASELINE_EXPORT void gnutls_transport_set_int2(gnutls_session_t session, int recv_fd, int send_fd)
{
	ensure_bound();
	struct entry *e = entry_lookup(session);
	if (e != NULL)
		atomic_store(&e->poll_fd, recv_fd);
	real.gnutls_transport_set_int2.fn(session, recv_fd, send_fd);
}

/* ---- markers ------------------------------------------------------------- */

#if BENCH_QEMU_STYLE
/* The application's announcement of the fd behind its custom transport. */
BASELINE_EXPORT void bench_qemustyle_set_poll_fd(gnutls_session_t session, int fd);
BASELINE_EXPORT void bench_qemustyle_set_poll_fd(gnutls_session_t session, int fd)
{
	ensure_bound();
	struct entry *e = entry_lookup(session);
	if (e != NULL)
		atomic_store(&e->poll_fd, fd);
}
#else
/* Lets the benchmark check that this library is really mapped. */
BASELINE_EXPORT int bench_naivelock_loaded(void);
BASELINE_EXPORT int bench_naivelock_loaded(void)
{
	return 1;
}
#endif
