/*
 * locks.c — the library's locks: the helpers every lock, unlock and wait
 * goes through, the turns on a session lock, and the fork handlers.
 *
 * Owns: rg_inject_lock, rg_stripe[], rg_fork_generation and the
 * per-thread lock state (locks.h lists what each lock guards and their
 * order). Invariants: the fork prepare handler takes every global lock in
 * the order of locks.h and the child re-creates them; fork cost does not
 * depend on the number of sessions; misuse aborts in debug builds and is
 * logged in release builds (never the host's death there).
 */
#include "locks.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"

pthread_mutex_t rg_inject_lock = PTHREAD_MUTEX_INITIALIZER;
pthread_mutex_t rg_stripe[RG_STRIPES];
unsigned rg_fork_generation;
RG_THREAD_LOCAL struct rg_lock_thread rg_lock_thread;

static pthread_once_t rg_locks_once = PTHREAD_ONCE_INIT;

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

/* A misuse of a lock: abort at the call site in debug builds, log in
 * release builds. */
static void rg_lock_misuse(const char *what, const char *name, const char *caller, int line)
{
	rg_log(RG_LOG_ERROR, "internal: %s (%s) in %s, line %d", what, name, caller, line);
#ifdef REKEYGUARD_DEBUG
	abort();
#endif
}

static void rg_lock_check(int err, const char *op, const char *name, const char *caller,
			  int line)
{
	if (err != 0)
		rg_lock_misuse(strerror(err), op, caller, line);
	(void)name;
}

/* ---- debug bookkeeping -------------------------------------------------- */

#ifdef REKEYGUARD_DEBUG
static unsigned rg_held_index(const struct rg_session *s)
{
	for (unsigned i = 0; i < rg_lock_thread.held_count; i++)
		if (rg_lock_thread.held[i] == s)
			return i;
	return ~0u;
}

static void rg_debug_before_lock(const char *name, const struct rg_session *s,
				 const char *caller, int line)
{
	if (rg_lock_thread.leaf_held != NULL)
		rg_lock_misuse("a lock taken while a leaf lock is held", rg_lock_thread.leaf_held,
			       caller, line);
	if (s != NULL && rg_held_index(s) != ~0u)
		rg_lock_misuse("a session lock this thread already holds (a call on the same "
			       "session from a callback must take the nested path)", name, caller,
			       line);
}

static void rg_debug_locked(struct rg_session *s, const char *caller, int line)
{
	if (rg_lock_thread.held_count == sizeof rg_lock_thread.held / sizeof rg_lock_thread.held[0])
		rg_lock_misuse("too many session locks held by one thread", "session", caller, line);
	else
		rg_lock_thread.held[rg_lock_thread.held_count++] = s;
}

static void rg_debug_unlocked(struct rg_session *s, const char *caller, int line)
{
	unsigned i = rg_held_index(s);
	if (i == ~0u) {
		rg_lock_misuse("unlocking a session lock this thread does not hold", "session",
			       caller, line);
		return;
	}
	memmove(&rg_lock_thread.held[i], &rg_lock_thread.held[i + 1],
		(rg_lock_thread.held_count - i - 1) * sizeof rg_lock_thread.held[0]);
	rg_lock_thread.held_count--;
}
#define RG_DEBUG_BEFORE_LOCK(name, s, caller, line) rg_debug_before_lock(name, s, caller, line)
#define RG_DEBUG_LOCKED(s, caller, line) rg_debug_locked(s, caller, line)
#define RG_DEBUG_UNLOCKED(s, caller, line) rg_debug_unlocked(s, caller, line)
#else
#define RG_DEBUG_BEFORE_LOCK(name, s, caller, line) ((void)0)
#define RG_DEBUG_LOCKED(s, caller, line) ((void)0)
#define RG_DEBUG_UNLOCKED(s, caller, line) ((void)0)
#endif

/* ---- leaf locks ----------------------------------------------------------- */

void rg_leaf_lock_at(pthread_mutex_t *m, const char *name, const char *caller, int line)
{
	RG_DEBUG_BEFORE_LOCK(name, NULL, caller, line);
	rg_lock_check(pthread_mutex_lock(m), "lock", name, caller, line);
#ifdef REKEYGUARD_DEBUG
	rg_lock_thread.leaf_held = name;
#endif
}

void rg_leaf_unlock_at(pthread_mutex_t *m, const char *name, const char *caller, int line)
{
#ifdef REKEYGUARD_DEBUG
	rg_lock_thread.leaf_held = NULL;
#endif
	rg_lock_check(pthread_mutex_unlock(m), "unlock", name, caller, line);
}

/* ---- session locks -------------------------------------------------------- */

void rg_session_locks_init(struct rg_session *s)
{
	rg_mutex_init(&s->lock);
	pthread_cond_init(&s->cond, NULL);
}

void rg_session_locks_destroy(struct rg_session *s)
{
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
}

void rg_session_lock_at(struct rg_session *s, const char *caller, int line)
{
	RG_DEBUG_BEFORE_LOCK("session", s, caller, line);
	rg_lock_check(pthread_mutex_lock(&s->lock), "lock", "session", caller, line);
	RG_DEBUG_LOCKED(s, caller, line);
}

/* Without turns a streaming sender starves the receiver: it releases the
 * lock and takes it again within a few hundred nanoseconds, long before a
 * receiver woken by the release runs (pthread mutexes are not fair), so a
 * return-path message could wait milliseconds behind a stream of records.
 * A thread that comes back from waiting for input with input to deliver
 * (inbound.c rg_wait_for_input) and has to block for the lock is counted
 * in lock_waiters. A thread that takes the lock without blocking while one
 * is counted waits on the condition (which releases the lock to it) until
 * one of them has had it (lock_turns moved) or none is left. Other
 * contention is left alone: threads that both keep the lock busy (full
 * duplex) get it in turn by themselves, and forcing every hand-over costs
 * two context switches each (measured: full-duplex bulk 0.76 of plain when
 * every blocked thread was counted). A thread that holds another session's
 * lock (a GnuTLS callback calling into a second session) never yields: the
 * counted thread might be waiting for that other lock next.
 *
 * Any other thread that has waited RG_TURN_AFTER_NS for the lock is
 * counted from then on: a bulk receiver on GnuTLS's fd transport finds its
 * next record already in the socket and re-takes the lock as fast as a
 * streaming sender does, so without a bound a sender (the destination's
 * return-path messages) or a receiver (full duplex) could starve behind
 * it for milliseconds (measured: return-path p99 5x plain on the fd
 * transport). Ordinary hand-overs take far less than the bound and stay
 * free of forced context switches. */
void rg_session_lock_turn_at(struct rg_session *s, bool may_yield, bool counted,
			     const char *caller, int line)
{
	RG_DEBUG_BEFORE_LOCK("session", s, caller, line);
#ifdef REKEYGUARD_DEBUG
	if (may_yield && rg_lock_thread.held_count != 0)
		rg_lock_misuse("yielding a turn while holding a session lock", "session", caller,
			       line);
#endif
	int err = pthread_mutex_trylock(&s->lock);
	if (err == 0) {
		RG_DEBUG_LOCKED(s, caller, line);
		if (!may_yield || __atomic_load_n(&s->lock_waiters, __ATOMIC_RELAXED) == 0)
			return;
		unsigned long seen = s->lock_turns;
		while (__atomic_load_n(&s->lock_waiters, __ATOMIC_ACQUIRE) != 0 && s->lock_turns == seen)
			rg_session_wait_at(s, caller, line);
		return;
	}
	if (err != EBUSY)
		rg_lock_check(err, "trylock", "session", caller, line);
	if (!counted) {
		/* pthread_mutex_timedlock, not clocklock on CLOCK_MONOTONIC:
		 * valgrind 3.19 (Debian 12) does not intercept clocklock, so
		 * helgrind and drd would not see the lock taken (measured:
		 * "unlocked a not-locked lock" and races in every guarded call
		 * under make check-helgrind). A jump of the wall clock only
		 * changes when this thread is counted, never whether it gets
		 * the lock. */
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += RG_TURN_AFTER_NS;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		err = pthread_mutex_timedlock(&s->lock, &until);
		if (err == 0) {
			RG_DEBUG_LOCKED(s, caller, line);
			return;
		}
		if (err != ETIMEDOUT)
			rg_lock_check(err, "timedlock", "session", caller, line);
	}
	__atomic_add_fetch(&s->lock_waiters, 1, __ATOMIC_RELEASE);
	rg_lock_check(pthread_mutex_lock(&s->lock), "lock", "session", caller, line);
	RG_DEBUG_LOCKED(s, caller, line);
	__atomic_sub_fetch(&s->lock_waiters, 1, __ATOMIC_RELEASE);
	s->lock_turns++;
	rg_session_broadcast(s);
}

void rg_session_unlock_at(struct rg_session *s, const char *caller, int line)
{
	RG_DEBUG_UNLOCKED(s, caller, line);
	rg_lock_check(pthread_mutex_unlock(&s->lock), "unlock", "session", caller, line);
}

void rg_session_wait_at(struct rg_session *s, const char *caller, int line)
{
	s->cond_waiters++;
	rg_lock_check(pthread_cond_wait(&s->cond, &s->lock), "wait", "session", caller, line);
	s->cond_waiters--;
}

void rg_session_broadcast(struct rg_session *s)
{
	if (s->cond_waiters != 0)   /* both under the lock: none can be missed */
		pthread_cond_broadcast(&s->cond);
}

bool rg_session_lock_reset_after_fork(struct rg_session *s)
{
	bool was_free = pthread_mutex_trylock(&s->lock) == 0;
	if (was_free)
		pthread_mutex_unlock(&s->lock);
	rg_session_locks_init(s);
	return was_free;
}

/* ---- fork --------------------------------------------------------------- */

/* Every global lock, in the order of locks.h, so that a fork while another
 * thread holds one cannot leave the child's copy locked. */
static void rg_locks_fork_prepare(void)
{
	pthread_mutex_lock(&rg_inject_lock);
	for (int i = 0; i < RG_STRIPES; i++)
		pthread_mutex_lock(&rg_stripe[i]);
}

static void rg_locks_fork_parent(void)
{
	for (int i = RG_STRIPES - 1; i >= 0; i--)
		pthread_mutex_unlock(&rg_stripe[i]);
	pthread_mutex_unlock(&rg_inject_lock);
}

static void rg_locks_fork_child(void)
{
	for (int i = 0; i < RG_STRIPES; i++)
		rg_mutex_init(&rg_stripe[i]);
	rg_mutex_init(&rg_inject_lock);
	__atomic_add_fetch(&rg_fork_generation, 1, __ATOMIC_RELAXED);
}

static void rg_locks_init(void)
{
	for (int i = 0; i < RG_STRIPES; i++)
		rg_mutex_init(&rg_stripe[i]);
	pthread_atfork(rg_locks_fork_prepare, rg_locks_fork_parent, rg_locks_fork_child);
}

void rg_locks_ensure_init(void)
{
	pthread_once(&rg_locks_once, rg_locks_init);
}
