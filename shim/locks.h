/*
 * locks.h — every lock of the library, what each guards, their order, and
 * the helpers every lock and unlock goes through (locks.c).
 *
 * The locks (add a new global lock here, to rg_locks_fork_prepare /
 * _parent / _child in locks.c, and to the order below):
 *   rg_inject_lock     guards late loading's GOT patching passes
 *                      (late-load-x86_64.c: activation, and each dlopen
 *                      after it).
 *   rg_stripe[i]       guards the registry's bucket chains b with
 *                      b % RG_STRIPES == i, the increments of an
 *                      entry's refs other than a thread's cached lookup,
 *                      and the lookup cache's pins on listed entries
 *                      (registry.c). Held for a few instructions.
 *   struct rg_session .lock
 *                      the session lock: guards the entry's fields
 *                      (session.h says which) and is held for the whole of
 *                      each real GnuTLS call on that session in guard mode,
 *                      never while the application's transport may block;
 *                      in keyupdate mode only across GnuTLS's key changes
 *                      (keyupdate.c). Taken with turns
 *                      (rg_session_lock_turn) at the start of a guarded
 *                      call and after transport I/O, so that a streaming
 *                      thread cannot starve another.
 *
 * Order: rg_inject_lock and the stripe locks are leaves: while one is
 * held, no other lock of the library is taken (a lookup takes its stripe,
 * takes a reference and releases the stripe before it locks the session).
 * Either may be taken while session locks are held. The fork prepare
 * handler takes rg_inject_lock, then every stripe in index order; session
 * locks are not taken at fork (fork cost does not grow with the number of
 * sessions): an entry whose lock was held is re-created, and poisoned, the
 * first time the child looks it up (registry.c).
 *
 * GnuTLS runs application callbacks while a guarded call holds the session
 * lock (certificate, verify and handshake-hook callbacks,
 * post_client_hello, the ticket and early-data paths). The rule:
 *   - a short call on the same session (transport getters and setters,
 *     check_pending, get_direction, discard_queued, set_timeout, the hook
 *     setter) uses the entry directly without locking it again
 *     (wrappers-short.c rg_short_begin): getters report the application's
 *     transport, setters record into the entry;
 *   - a record, handshake, alert or key-update call on the same session is
 *     a nested call: it goes straight to GnuTLS, its I/O through the
 *     shim's callbacks (queued, staged), and the outermost call does the
 *     waiting afterwards (guard.c);
 *   - a call on another session takes that session's lock as usual. The
 *     thread then holds two session locks; two threads doing so in
 *     opposite orders would deadlock, which needs callbacks of two
 *     sessions calling into each other's sessions (none known). A thread
 *     holding a session lock never yields its turn on another
 *     (rg_session_lock_turn's may_yield);
 *   - a real call whose callback could not wait is never allowed to end as
 *     if the wait had been done: where GnuTLS swallows the "would wait"
 *     (gnutls_session_get_data2's ticket wait), the loop waits and asks
 *     again (guard.c).
 * Debug builds (-DREKEYGUARD_DEBUG: the ASan library of make check-asan)
 * check this at every lock: locking a session lock this thread holds,
 * unlocking one it does not hold, taking any lock while a leaf lock is
 * held, yielding while holding a session lock, or a failing pthread call
 * aborts at the call site with its name and line. Release builds log the
 * misuse once per occurrence and keep the host running.
 */
#ifndef RG_LOCKS_H
#define RG_LOCKS_H

#include <pthread.h>
#include <stdbool.h>

#include "common.h"
#include "session.h"

#define RG_STRIPES 64     /* power of two */

/* A thread blocked this long for a session lock is counted (locks.c). */
#ifndef RG_TURN_AFTER_NS
#define RG_TURN_AFTER_NS 100000L
#endif

extern pthread_mutex_t rg_inject_lock;
extern pthread_mutex_t rg_stripe[RG_STRIPES];

/* Bumped in every forked child (relaxed atomic). */
extern unsigned rg_fork_generation;

/* Initialises the stripe locks and registers the fork handlers, once. */
void rg_locks_ensure_init(void);

/* Per-thread lock state. */
struct rg_lock_thread {
	/* The entry whose real GnuTLS call runs on this thread (guard mode),
	 * its session lock held; NULL outside one. */
	struct rg_session *in_call;
#ifdef REKEYGUARD_DEBUG
	struct rg_session *held[8];   /* session locks held, innermost last */
	unsigned held_count;
	const char *leaf_held;        /* name of the leaf lock held, if any */
#endif
};
extern RG_THREAD_LOCAL struct rg_lock_thread rg_lock_thread;

void rg_leaf_lock_at(pthread_mutex_t *m, const char *name, const char *caller, int line);
void rg_leaf_unlock_at(pthread_mutex_t *m, const char *name, const char *caller, int line);
#define rg_leaf_lock(m) rg_leaf_lock_at((m), #m, __func__, __LINE__)
#define rg_leaf_unlock(m) rg_leaf_unlock_at((m), #m, __func__, __LINE__)

void rg_session_locks_init(struct rg_session *s);
void rg_session_locks_destroy(struct rg_session *s);
void rg_session_lock_at(struct rg_session *s, const char *caller, int line);
/* The session lock taken with turns: a thread coming back with input to
 * deliver (counted) that has to block for it is counted, and a thread
 * that got it at once while one is counted lets it have the lock first,
 * if may_yield (it holds no other session's lock). Returns with the lock
 * held. */
void rg_session_lock_turn_at(struct rg_session *s, bool may_yield, bool counted,
			     const char *caller, int line);
void rg_session_unlock_at(struct rg_session *s, const char *caller, int line);
/* Waits on s->cond; called and returns with the lock held. */
void rg_session_wait_at(struct rg_session *s, const char *caller, int line);
/* Wakes the threads in rg_session_wait; called with the lock held. */
void rg_session_broadcast(struct rg_session *s);
/* In a forked child: true when the lock was free (re-created either way). */
bool rg_session_lock_reset_after_fork(struct rg_session *s);

#define rg_session_lock(s) rg_session_lock_at((s), __func__, __LINE__)
#define rg_session_lock_turn(s, may_yield, counted) \
	rg_session_lock_turn_at((s), (may_yield), (counted), __func__, __LINE__)
#define rg_session_unlock(s) rg_session_unlock_at((s), __func__, __LINE__)
#define rg_session_wait(s) rg_session_wait_at((s), __func__, __LINE__)

#endif
