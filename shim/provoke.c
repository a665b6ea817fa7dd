/*
 * provoke.c — REKEYGUARD_PROVOKE_REKEY: forced key updates for validation.
 *
 * Owns: counting the records each thread sends per session and starting a
 * TLS 1.3 KeyUpdate (gnutls_session_key_update, optionally with
 * GNUTLS_KU_PEER) right before the send that follows every N records, so
 * that the key-update race shows in seconds instead of after 2^24 records.
 * Works in every mode: with REKEYGUARD_MODE=off it reproduces the crash on
 * an unprotected stack.
 *
 * Invariants: only outermost sends count (GnuTLS calls its own send
 * functions); records are counted per thread and session; at most
 * RG_PROVOKE_PER_SECOND key updates per session per second, however many
 * threads send on it (GnuTLS receivers reject more than 8 per second);
 * only TLS 1.3 sessions; the key update goes through the dispatch the
 * send uses (the guard, or keyupdate mode's), so a guarded session takes
 * its lock as for any other call.
 * Validation only, never for production.
 */
#include "provoke.h"

#include "binding.h"
#include "common.h"
#include "config.h"

#define RG_PROVOKE_PER_SECOND 4
#define RG_PROVOKE_SLOTS 8   /* sessions one thread sends on, tracked at once */
#define RG_PROVOKE_RATE_SLOTS 256

struct rg_provoke_slot {
	gnutls_session_t session;
	uint64_t records;
	bool retry_owed;   /* the last send returned AGAIN/INTERRUPTED */
	bool ku_owed;      /* the last provoked key update did too: retried first */
};

static __thread struct rg_provoke_slot rg_provoke_slots[RG_PROVOKE_SLOTS];
static __thread unsigned rg_provoke_depth;
static __thread unsigned rg_provoke_next_slot;

/* When each session last had a provoked key update, shared by all
 * threads: a session hashes to one slot, compare-and-swap claims it (no
 * lock, so nothing for fork to handle). Sessions sharing a slot share the
 * budget: never more than the limit, sometimes fewer. */
static uint64_t rg_provoke_last_ns[RG_PROVOKE_RATE_SLOTS];

static struct rg_provoke_slot *rg_provoke_slot_of(gnutls_session_t session)
{
	for (unsigned i = 0; i < RG_PROVOKE_SLOTS; i++)
		if (rg_provoke_slots[i].session == session)
			return &rg_provoke_slots[i];
	struct rg_provoke_slot *slot = &rg_provoke_slots[rg_provoke_next_slot++ % RG_PROVOKE_SLOTS];
	slot->session = session;
	slot->records = 0;
	slot->retry_owed = false;
	slot->ku_owed = false;
	return slot;
}

/* True when this thread may start the session's next key update now. */
static bool rg_provoke_claim(gnutls_session_t session, uint64_t now)
{
	uintptr_t h = (uintptr_t)session;
	h ^= h >> 17;
	h *= UINT64_C(0x9e3779b97f4a7c15);
	uint64_t *last = &rg_provoke_last_ns[(h >> 40) % RG_PROVOKE_RATE_SLOTS];
	uint64_t seen = __atomic_load_n(last, __ATOMIC_RELAXED);
	if (seen != 0 && now - seen < 1000000000u / RG_PROVOKE_PER_SECOND)
		return false;
	return __atomic_compare_exchange_n(last, &seen, now, false, __ATOMIC_ACQ_REL,
					   __ATOMIC_RELAXED);
}

/* The key update goes out right before the send that follows the
 * threshold, as GnuTLS's own rekey does (gnutls-mirror.h M15,
 * the KeyUpdate, then the record that triggered it), never as the last
 * record of a burst: a receiver's gnutls_record_recv returns
 * GNUTLS_E_AGAIN after processing a KeyUpdate, and a peer that then waits
 * for readability only (libnbd 1.14 REPLY.START, reached from a paused
 * write) would wait forever for a record that never comes. Never between
 * a send that returned AGAIN/INTERRUPTED and its retry. */
/* A key update, run as the wrapped gnutls_session_key_update would be. */
struct rg_provoke_key_update {
	struct rg_call call;
	unsigned flags;
};

static ssize_t rg_provoke_invoke_key_update(struct rg_call *call)
{
	struct rg_provoke_key_update *ku = (struct rg_provoke_key_update *)call;
	if (rg_real.gnutls_session_key_update.fn == NULL)
		return GNUTLS_E_UNIMPLEMENTED_FEATURE;
	return rg_real.gnutls_session_key_update.fn(call->session, ku->flags);
}

static int rg_provoke_key_update(gnutls_session_t session, unsigned flags,
				 ssize_t (*dispatch)(struct rg_call *))
{
	struct rg_provoke_key_update ku = {
		{ RG_FAMILY_KEY_UPDATE, session, rg_provoke_invoke_key_update }, flags
	};
	return (int)dispatch(&ku.call);
}

static void rg_provoke_before_send(gnutls_session_t session, ssize_t (*dispatch)(struct rg_call *))
{
	const struct rg_config *config = rg_config_get();
	struct rg_provoke_slot *slot = rg_provoke_slot_of(session);
	unsigned flags = config->provoke_peer ? GNUTLS_KU_PEER : 0;
	if (slot->retry_owed)
		return;
	if (slot->ku_owed) {
		/* A non-blocking transport took only part of it: finish that
		 * key update (its retry), as an application would. */
		int ret = rg_provoke_key_update(session, flags, dispatch);
		slot->ku_owed = ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED;
		return;
	}
	if (slot->records < config->provoke_every)
		return;
	if (rg_real.gnutls_protocol_get_version.fn(session) != GNUTLS_TLS1_3)
		return;
	if (!rg_provoke_claim(session, rg_monotonic_ns()))
		return;
	slot->records = 0;
	int ret = rg_provoke_key_update(session, flags, dispatch);
	slot->ku_owed = ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED;
	rg_log(RG_LOG_DEBUG, "provoked key update%s: %d",
	       config->provoke_peer ? " (requesting the peer's)" : "", ret);
}

static void rg_provoke_after_send(gnutls_session_t session, ssize_t sent)
{
	struct rg_provoke_slot *slot = rg_provoke_slot_of(session);
	slot->retry_owed = sent == GNUTLS_E_AGAIN || sent == GNUTLS_E_INTERRUPTED;
	if (sent > 0)
		slot->records += ((uint64_t)sent + 16383) / 16384;
}

ssize_t rg_provoke_send(struct rg_call *call, ssize_t (*dispatch)(struct rg_call *))
{
	if (rg_provoke_depth == 0)
		rg_provoke_before_send(call->session, dispatch);
	rg_provoke_depth++;
	ssize_t ret = dispatch(call);
	rg_provoke_depth--;
	if (rg_provoke_depth == 0)
		rg_provoke_after_send(call->session, ret);
	return ret;
}
