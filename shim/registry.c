/*
 * registry.c — the session registry.
 *
 * Owns: one struct rg_session per guarded gnutls_session_t, in a fixed
 * hash table whose chains are guarded by a small array of stripe locks
 * (no global lock on the hot path), the per-session lock helpers, and the
 * fork handlers.
 *
 * Invariants:
 *  - An entry is created right after the real gnutls_init returns and is
 *    removed and freed in gnutls_deinit, under the session's lock, once no
 *    call is in flight on it. An address handed out again by gnutls_init
 *    always gets a fresh entry (a stale one is dropped first).
 *  - refs counts calls in flight; it is incremented under the stripe lock
 *    (so removal cannot race with a lookup) and decremented under the
 *    session's lock (so gnutls_deinit's wait cannot miss the last one).
 *  - fork: prepare takes the RG_STRIPES stripe locks in index order, the
 *    parent releases them, the child re-creates them and bumps
 *    rg_fork_generation; a session lock held by a thread that does not
 *    exist in the child is re-created the first time the child looks the
 *    entry up. Fork cost does not depend on the number of sessions.
 */
#include "rekeyguard.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RG_BUCKETS 4096   /* power of two */
#define RG_STRIPES 64     /* power of two, divides RG_BUCKETS */

static struct rg_session *rg_bucket[RG_BUCKETS];
/* rg_stripe[i] guards the chains of buckets b with b % RG_STRIPES == i. */
static pthread_mutex_t rg_stripe[RG_STRIPES];
static pthread_once_t rg_registry_once = PTHREAD_ONCE_INIT;
static unsigned rg_fork_generation;

/* What rekeyguard-status reads from outside (include/rekeyguard.h). */
RG_EXPORT struct rekeyguard_status rekeyguard_status = { REKEYGUARD_STATUS_MAGIC, 0, 0, 0 };

#define RG_UNGUARDED_SEEN 256
/* The distinct unguarded sessions seen so far, without a lock: a slot is
 * claimed with a compare-and-swap from NULL, always the first free one, so
 * two threads noting the same new session meet at the same slot and it is
 * counted once. Each thread remembers the last session it noted, so that
 * the calls of a busy unguarded session (an injected QEMU's NBD or VNC
 * connection) touch no shared cache line but the slots they read. */
static gnutls_session_t rg_unguarded_set[RG_UNGUARDED_SEEN];
static __thread gnutls_session_t rg_unguarded_last __attribute__((tls_model("initial-exec")));

void rg_registry_note_unguarded(gnutls_session_t session)
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

void rg_registry_mark_injected(void)
{
	__atomic_store_n(&rekeyguard_status.injected, 1, __ATOMIC_RELAXED);
}

static unsigned rg_bucket_of(gnutls_session_t session)
{
	uint64_t h = (uint64_t)(uintptr_t)session;
	h ^= h >> 33;
	h *= UINT64_C(0xff51afd7ed558ccd);
	h ^= h >> 33;
	return (unsigned)h & (RG_BUCKETS - 1);
}

static pthread_mutex_t *rg_stripe_of(unsigned bucket)
{
	return &rg_stripe[bucket & (RG_STRIPES - 1)];
}

/* ---- locks ----------------------------------------------------------- */

static void rg_mutex_init(pthread_mutex_t *m)
{
	pthread_mutexattr_t attr;
	pthread_mutexattr_init(&attr);
#ifdef REKEYGUARD_DEBUG
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
#endif
	pthread_mutex_init(m, &attr);
	pthread_mutexattr_destroy(&attr);
}

static void rg_lock_check(int err, const char *op, const char *caller)
{
	if (err != 0)
		rg_log(RG_LOG_ERROR, "internal: %s failed in %s: %s", op, caller,
		       strerror(err));
}

void rg_session_lock(struct rg_session *s, const char *caller)
{
	rg_lock_check(pthread_mutex_lock(&s->lock), "lock", caller);
}

/* Without turns a streaming sender starves the receiver: it releases the
 * lock and takes it again within a few hundred nanoseconds, long before a
 * receiver woken by the release runs (pthread mutexes are not fair), so a
 * return-path message could wait milliseconds behind a stream of records.
 * A thread that comes back from waiting for input with input to deliver
 * (rg_wait_for_input) and has to block for the lock is counted in
 * lock_waiters. A thread that takes the lock without blocking while one is
 * counted waits on the condition (which releases the lock to it) until one
 * of them has had it (lock_turns moved) or none is left. Other contention
 * is left alone: threads that both keep the lock busy (full duplex) get it
 * in turn by themselves, and forcing every hand-over costs two context
 * switches each (measured: full-duplex bulk 0.76 of plain when every
 * blocked thread was counted). A thread that holds another session's lock
 * (a GnuTLS callback calling into a second session) never yields: the
 * counted thread might be waiting for that other lock next. */
void rg_session_lock_turn(struct rg_session *s, bool may_yield, bool counted, const char *caller)
{
	int err = pthread_mutex_trylock(&s->lock);
	if (err == 0) {
		if (!may_yield || __atomic_load_n(&s->lock_waiters, __ATOMIC_RELAXED) == 0)
			return;
		unsigned long seen = s->lock_turns;
		while (__atomic_load_n(&s->lock_waiters, __ATOMIC_ACQUIRE) != 0 && s->lock_turns == seen)
			rg_session_wait(s, caller);
		return;
	}
	if (err != EBUSY)
		rg_lock_check(err, "trylock", caller);
	if (!counted) {
		rg_session_lock(s, caller);
		return;
	}
	__atomic_add_fetch(&s->lock_waiters, 1, __ATOMIC_RELEASE);
	rg_session_lock(s, caller);
	__atomic_sub_fetch(&s->lock_waiters, 1, __ATOMIC_RELEASE);
	s->lock_turns++;
	rg_session_broadcast(s);
}

void rg_session_unlock(struct rg_session *s, const char *caller)
{
	rg_lock_check(pthread_mutex_unlock(&s->lock), "unlock", caller);
}

void rg_session_wait(struct rg_session *s, const char *caller)
{
	s->cond_waiters++;
	rg_lock_check(pthread_cond_wait(&s->cond, &s->lock), "wait", caller);
	s->cond_waiters--;
}

void rg_session_broadcast(struct rg_session *s)
{
	if (s->cond_waiters != 0)   /* both under the lock: none can be missed */
		pthread_cond_broadcast(&s->cond);
}

static void rg_session_locks_init(struct rg_session *s)
{
	rg_mutex_init(&s->lock);
	pthread_cond_init(&s->cond, NULL);
}

/* ---- fork ------------------------------------------------------------ */

/* Every process-wide lock of the library is taken here, in its order
 * (inject.c's lock, then the stripes in index order), so that a fork while
 * another thread holds one cannot leave the child's copy locked. */
static void rg_fork_prepare(void)
{
	rg_inject_fork_prepare();
	for (int i = 0; i < RG_STRIPES; i++)
		pthread_mutex_lock(&rg_stripe[i]);
}

static void rg_fork_parent(void)
{
	for (int i = RG_STRIPES - 1; i >= 0; i--)
		pthread_mutex_unlock(&rg_stripe[i]);
	rg_inject_fork_parent();
}

static void rg_fork_child(void)
{
	for (int i = 0; i < RG_STRIPES; i++)
		rg_mutex_init(&rg_stripe[i]);
	rg_inject_fork_child();
	__atomic_add_fetch(&rg_fork_generation, 1, __ATOMIC_RELAXED);
}

static void rg_registry_init(void)
{
	for (int i = 0; i < RG_STRIPES; i++)
		rg_mutex_init(&rg_stripe[i]);
	pthread_atfork(rg_fork_prepare, rg_fork_parent, rg_fork_child);
}

void rg_registry_ensure_init(void)
{
	pthread_once(&rg_registry_once, rg_registry_init);
}

/* In a forked child, an entry's lock may be held by a thread that does
 * not exist there: start it afresh. If it was held, a real GnuTLS call was
 * half done on that session and its state cannot be trusted: the child may
 * not use it (poisoned). Sessions whose threads waited outside the lock
 * are consistent and stay usable. Called under the stripe lock. */
static void rg_session_after_fork(struct rg_session *s)
{
	unsigned gen = __atomic_load_n(&rg_fork_generation, __ATOMIC_RELAXED);
	if (s->generation == gen)
		return;
	if (pthread_mutex_trylock(&s->lock) == 0) {
		pthread_mutex_unlock(&s->lock);
	} else {
		s->poisoned = true;
		rg_log(RG_LOG_WARN, "a TLS session was inside a GnuTLS call in another thread "
		       "when the process forked; this child cannot use it");
	}
	rg_session_locks_init(s);
	s->refs = 0;
	s->lock_waiters = 0;          /* the blocked threads are not in the child */
	s->cond_waiters = 0;
	s->reader_active = false;
	s->flusher_active = false;
	s->want = RG_WANT_NONE;
	s->generation = gen;
}

/* ---- entries --------------------------------------------------------- */

struct rg_session *rg_registry_create(gnutls_session_t session, unsigned init_flags)
{
	pthread_once(&rg_registry_once, rg_registry_init);

	struct rg_session *s = calloc(1, sizeof *s);
	if (s == NULL)
		return NULL;
	s->session = session;
	s->no_signal = (init_flags & GNUTLS_NO_SIGNAL) != 0;
	s->app_recv_ptr = s->app_send_ptr = (gnutls_transport_ptr_t)-1;
	s->direction_override = -1;
	s->generation = __atomic_load_n(&rg_fork_generation, __ATOMIC_RELAXED);
	rg_session_locks_init(s);
	__atomic_add_fetch(&rekeyguard_status.guarded, 1, __ATOMIC_RELAXED);

	unsigned b = rg_bucket_of(session);
	pthread_mutex_lock(rg_stripe_of(b));
	s->next = rg_bucket[b];
	rg_bucket[b] = s;
	pthread_mutex_unlock(rg_stripe_of(b));
	return s;
}

void rg_registry_drop_stale(gnutls_session_t session)
{
	/* Its gnutls_deinit went unseen (called through a handle, say). */
	struct rg_session *stale = rg_registry_remove(session);
	if (stale == NULL)
		return;
	rg_log(RG_LOG_DEBUG, "dropping a stale entry for a reused session address");
	if (__atomic_load_n(&stale->refs, __ATOMIC_ACQUIRE) == 0)
		rg_registry_destroy(stale);
}

struct rg_session *rg_registry_lookup_ref(gnutls_session_t session)
{
	pthread_once(&rg_registry_once, rg_registry_init);
	unsigned b = rg_bucket_of(session);
	pthread_mutex_lock(rg_stripe_of(b));
	struct rg_session *s = rg_bucket[b];
	while (s != NULL && s->session != session)
		s = s->next;
	if (s != NULL) {
		rg_session_after_fork(s);
		__atomic_add_fetch(&s->refs, 1, __ATOMIC_ACQ_REL);
	}
	pthread_mutex_unlock(rg_stripe_of(b));
	return s;
}

void rg_registry_unref_locked(struct rg_session *s)
{
	if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0 && s->dying)
		rg_session_broadcast(s);
}

struct rg_session *rg_registry_remove(gnutls_session_t session)
{
	pthread_once(&rg_registry_once, rg_registry_init);
	unsigned b = rg_bucket_of(session);
	pthread_mutex_lock(rg_stripe_of(b));
	struct rg_session **link = &rg_bucket[b];
	while (*link != NULL && (*link)->session != session)
		link = &(*link)->next;
	struct rg_session *s = *link;
	if (s != NULL) {
		rg_session_after_fork(s);
		*link = s->next;
		s->next = NULL;
	}
	pthread_mutex_unlock(rg_stripe_of(b));
	return s;
}

void rg_registry_destroy(struct rg_session *s)
{
	for (struct rg_chunk *c = s->out_head, *next; c != NULL; c = next) {
		next = c->next;
		free(c);
	}
	free(s->in_buf);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s);
}

unsigned long rg_registry_guarded_total(void)
{
	return (unsigned long)__atomic_load_n(&rekeyguard_status.guarded, __ATOMIC_RELAXED);
}
