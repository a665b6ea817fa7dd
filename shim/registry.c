/*
 * registry.c — the session registry.
 *
 * Owns: one struct rg_session per guarded gnutls_session_t, in a fixed
 * hash table whose chains are guarded by a small array of stripe locks
 * (locks.h; no global lock on the hot path).
 *
 * Invariants:
 *  - An entry is created right after the real gnutls_init returns and is
 *    removed and freed in gnutls_deinit, under the session's lock, once no
 *    call is in flight on it. An address handed out again by gnutls_init
 *    always gets a fresh entry (a stale one is dropped first).
 *  - refs counts calls in flight; it is incremented under the stripe lock
 *    (so removal cannot race with a lookup) or through a pin (below), and
 *    decremented under the session's lock (so gnutls_deinit's wait cannot
 *    miss the last one).
 *  - Each thread keeps the entries it looked up last in a small lookup
 *    cache, so that a call on a session it used before takes no stripe
 *    lock (one atomic increment instead of three atomic operations and a
 *    chain walk). A cache slot pins the entry's memory (pins); the
 *    registry holds one pin until it destroys the entry. Removal marks
 *    the entry `unlisted` under its stripe lock, before GnuTLS frees the
 *    session and can hand the address out again (measured: without it
 *    the churn test met an old entry at a new session's address); a
 *    cached entry is used only while listed and of this process's fork
 *    generation, otherwise the lookup takes the stripe lock as before.
 *    Destroying frees the buffers at once and marks the entry `dead`;
 *    the entry itself (a few hundred bytes) is freed with the last pin:
 *    when the threads that cached it look up another session in that
 *    slot, or exit. A call that reaches a dead entry (it raced the
 *    session's own gnutls_deinit, which GnuTLS does not allow either)
 *    fails with GNUTLS_E_INVALID_SESSION instead of touching freed
 *    memory (guard.c).
 *  - fork: the child bumps rg_fork_generation (locks.c); an entry whose
 *    generation is older is brought up to date the first time the child
 *    looks it up, under its stripe lock: a session lock held by a thread
 *    that does not exist in the child is re-created and the entry poisoned.
 */
#include "registry.h"

#include <stdlib.h>

#include "buffers.h"
#include "config.h"
#include "locks.h"
#include "status.h"

#define RG_BUCKETS 4096   /* power of two, a multiple of RG_STRIPES */

static struct rg_session *rg_bucket[RG_BUCKETS];

static unsigned rg_bucket_of(gnutls_session_t session)
{
	uint64_t h = (uint64_t)(uintptr_t)session;
	h ^= h >> 33;
	h *= UINT64_C(0xff51afd7ed558ccd);
	h ^= h >> 33;
	return (unsigned)h & (RG_BUCKETS - 1);
}

/* The stripe lock of a bucket (locks.h). */
static pthread_mutex_t *rg_stripe_of(unsigned bucket)
{
	return &rg_stripe[bucket & (RG_STRIPES - 1)];
}

/* In a forked child, an entry's lock may be held by a thread that does
 * not exist there: start it afresh. If it was held, a real GnuTLS call was
 * half done on that session and its state cannot be trusted: the child may
 * not use it (poisoned). Sessions whose threads waited outside the lock
 * are consistent and stay usable. Called under the stripe lock. */
static void rg_session_after_fork(struct rg_session *s)
{
	unsigned gen = __atomic_load_n(&rg_fork_generation, __ATOMIC_RELAXED);
	if (__atomic_load_n(&s->generation, __ATOMIC_RELAXED) == gen)
		return;
	if (!rg_session_lock_reset_after_fork(s)) {
		s->poisoned = true;
		rg_log(RG_LOG_WARN, "a TLS session was inside a GnuTLS call in another thread "
		       "when the process forked; this child cannot use it");
	}
	s->refs = 0;
	s->lock_waiters = 0;          /* the blocked threads are not in the child */
	s->cond_waiters = 0;
	s->reader_active = false;
	s->flusher_active = false;
	s->want = RG_WANT_NONE;
	__atomic_store_n(&s->generation, gen, __ATOMIC_RELEASE);
}

/* ---- the per-thread lookup cache --------------------------------------- */

#define RG_LOOKUP_SLOTS 8   /* power of two */

struct rg_lookup_slot {
	gnutls_session_t session;
	struct rg_session *entry;   /* pinned; NULL: empty */
};
static RG_THREAD_LOCAL struct rg_lookup_slot rg_lookup_cache[RG_LOOKUP_SLOTS];

static void rg_entry_free(struct rg_session *s)
{
	rg_session_locks_destroy(s);
	free(s);
}

static void rg_entry_unpin(struct rg_session *s)
{
	if (__atomic_sub_fetch(&s->pins, 1, __ATOMIC_ACQ_REL) == 0)
		rg_entry_free(s);
}

static struct rg_lookup_slot *rg_lookup_slot_of(unsigned bucket)
{
	return &rg_lookup_cache[(bucket / RG_STRIPES) & (RG_LOOKUP_SLOTS - 1)];
}

/* Puts a registered entry in its slot; called under its stripe lock (the
 * registry's pin keeps it alive while the slot's pin is taken). An entry
 * whose call is in progress on this thread keeps its slot: its pin may be
 * what keeps it alive. */
static void rg_lookup_cache_fill(struct rg_lookup_slot *slot, struct rg_session *s)
{
	struct rg_session *old = slot->entry;
	if (old == s || (old != NULL && old == rg_lock_thread.in_call))
		return;
	__atomic_add_fetch(&s->pins, 1, __ATOMIC_RELAXED);
	rg_thread_cache_register();
	slot->session = s->session;
	slot->entry = s;
	if (old != NULL)
		rg_entry_unpin(old);
}

void rg_registry_forget_thread(void)
{
	for (unsigned i = 0; i < RG_LOOKUP_SLOTS; i++) {
		struct rg_session *s = rg_lookup_cache[i].entry;
		rg_lookup_cache[i].entry = NULL;
		rg_lookup_cache[i].session = NULL;
		if (s != NULL)
			rg_entry_unpin(s);
	}
}

/* ---- entries --------------------------------------------------------- */

struct rg_session *rg_registry_create(gnutls_session_t session, unsigned init_flags)
{
	rg_locks_ensure_init();

	struct rg_session *s = calloc(1, sizeof *s);
	if (s == NULL)
		return NULL;
	s->session = session;
	s->no_signal = (init_flags & GNUTLS_NO_SIGNAL) != 0;
	s->app_recv_ptr = s->app_send_ptr = (gnutls_transport_ptr_t)-1;
	s->direction_override = -1;
	s->pins = 1;   /* the registry's */
	s->generation = __atomic_load_n(&rg_fork_generation, __ATOMIC_RELAXED);
	rg_session_locks_init(s);
	rg_status_count_guarded();

	unsigned b = rg_bucket_of(session);
	rg_leaf_lock(rg_stripe_of(b));
	s->next = rg_bucket[b];
	rg_bucket[b] = s;
	rg_leaf_unlock(rg_stripe_of(b));
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
	unsigned b = rg_bucket_of(session);
	struct rg_lookup_slot *slot = rg_lookup_slot_of(b);
	struct rg_session *s = slot->entry;
	if (slot->session == session && s != NULL &&
	    !__atomic_load_n(&s->unlisted, __ATOMIC_ACQUIRE) &&
	    __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE) ==
		    __atomic_load_n(&rg_fork_generation, __ATOMIC_RELAXED)) {
		__atomic_add_fetch(&s->refs, 1, __ATOMIC_ACQ_REL);
		return s;
	}
	rg_locks_ensure_init();
	rg_leaf_lock(rg_stripe_of(b));
	s = rg_bucket[b];
	while (s != NULL && s->session != session)
		s = s->next;
	if (s != NULL) {
		rg_session_after_fork(s);
		__atomic_add_fetch(&s->refs, 1, __ATOMIC_ACQ_REL);
		rg_lookup_cache_fill(slot, s);
	}
	rg_leaf_unlock(rg_stripe_of(b));
	return s;
}

void rg_registry_unref_locked(struct rg_session *s)
{
	if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0 && s->dying)
		rg_session_broadcast(s);
}

struct rg_session *rg_registry_remove(gnutls_session_t session)
{
	rg_locks_ensure_init();
	unsigned b = rg_bucket_of(session);
	rg_leaf_lock(rg_stripe_of(b));
	struct rg_session **link = &rg_bucket[b];
	while (*link != NULL && (*link)->session != session)
		link = &(*link)->next;
	struct rg_session *s = *link;
	if (s != NULL) {
		rg_session_after_fork(s);
		*link = s->next;
		s->next = NULL;
		/* Before GnuTLS can free the session and hand its address out
		 * again: a new session there must never meet this entry in a
		 * lookup cache. */
		__atomic_store_n(&s->unlisted, true, __ATOMIC_RELEASE);
	}
	rg_leaf_unlock(rg_stripe_of(b));
	return s;
}

void rg_registry_retire_locked(struct rg_session *s)
{
	__atomic_store_n(&s->dead, true, __ATOMIC_RELEASE);
}

void rg_registry_destroy(struct rg_session *s)
{
	for (struct rg_chunk *c = s->out_head, *next; c != NULL; c = next) {
		next = c->next;
		free(c);
	}
	s->out_head = s->out_tail = NULL;
	free(s->in_buf);
	s->in_buf = NULL;
	__atomic_store_n(&s->unlisted, true, __ATOMIC_RELEASE);
	__atomic_store_n(&s->dead, true, __ATOMIC_RELEASE);
	rg_entry_unpin(s);   /* the registry's */
}
