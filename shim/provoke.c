/*
 * provoke.c — REKEYGUARD_PROVOKE_REKEY: forced key updates for validation.
 *
 * Owns: counting the records each thread sends per session and starting a
 * TLS 1.3 KeyUpdate (gnutls_session_key_update, optionally with
 * GNUTLS_KU_PEER) after every N records, so that the key-update race shows
 * in seconds instead of after 2^24 records. Works in every mode: with
 * REKEYGUARD_MODE=off it reproduces the crash on an unprotected stack.
 *
 * Invariants: only outermost sends count (GnuTLS calls its own send
 * functions); at most RG_PROVOKE_PER_SECOND key updates per session per
 * second (GnuTLS receivers reject more than 8 per second); only TLS 1.3
 * sessions; the key update goes through the shim's own guard, so a
 * guarded session takes its lock as for any other call. Validation only,
 * never for production.
 */
#include "rekeyguard.h"

#define RG_PROVOKE_PER_SECOND 4
#define RG_PROVOKE_SLOTS 8   /* sessions one thread sends on, tracked at once */

struct rg_provoke_slot {
	gnutls_session_t session;
	uint64_t records;
	uint64_t last_ns;
};

static __thread struct rg_provoke_slot rg_provoke_slots[RG_PROVOKE_SLOTS];
static __thread unsigned rg_provoke_depth;
static __thread unsigned rg_provoke_next_slot;

static struct rg_provoke_slot *rg_provoke_slot_of(gnutls_session_t session)
{
	for (unsigned i = 0; i < RG_PROVOKE_SLOTS; i++)
		if (rg_provoke_slots[i].session == session)
			return &rg_provoke_slots[i];
	struct rg_provoke_slot *slot = &rg_provoke_slots[rg_provoke_next_slot++ % RG_PROVOKE_SLOTS];
	slot->session = session;
	slot->records = 0;
	slot->last_ns = 0;
	return slot;
}

static void rg_provoke_after_send(gnutls_session_t session, ssize_t sent)
{
	const struct rg_config *config = rg_config_get();
	struct rg_provoke_slot *slot = rg_provoke_slot_of(session);
	slot->records += ((uint64_t)sent + 16383) / 16384;
	if (slot->records < config->provoke_every)
		return;
	uint64_t now = rg_monotonic_ns();
	if (now - slot->last_ns < 1000000000u / RG_PROVOKE_PER_SECOND)
		return;
	if (rg_real.gnutls_protocol_get_version.fn(session) != GNUTLS_TLS1_3)
		return;
	slot->records = 0;
	slot->last_ns = now;
	int ret = rg_guarded_key_update(session, config->provoke_peer ? GNUTLS_KU_PEER : 0);
	rg_log(RG_LOG_DEBUG, "provoked key update: %d", ret);
}

ssize_t rg_provoke_send(struct rg_call *call, ssize_t (*dispatch)(struct rg_call *))
{
	rg_provoke_depth++;
	ssize_t ret = dispatch(call);
	rg_provoke_depth--;
	if (rg_provoke_depth == 0 && ret > 0)
		rg_provoke_after_send(call->session, ret);
	return ret;
}
