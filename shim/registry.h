/*
 * registry.h — the entries of guarded sessions, keyed by gnutls_session_t
 * (registry.c).
 */
#ifndef RG_REGISTRY_H
#define RG_REGISTRY_H

#include "session.h"

struct rg_session *rg_registry_create(gnutls_session_t session, unsigned init_flags);
/* Drops the entry of an address gnutls_init hands out again. */
void rg_registry_drop_stale(gnutls_session_t session);
/* Looks up the entry and takes a reference (a call in flight). NULL for
 * sessions the shim does not guard. */
struct rg_session *rg_registry_lookup_ref(gnutls_session_t session);
/* Drops the reference taken by lookup; called with s->lock held. */
void rg_registry_unref_locked(struct rg_session *s);
/* Removes the entry of a session being deinitialised; NULL if none. */
struct rg_session *rg_registry_remove(gnutls_session_t session);
/* Marks a removed entry dead before its lock is released for the last
 * time, so that a cached lookup racing the removal cannot use it. */
void rg_registry_retire_locked(struct rg_session *s);
/* Frees a removed entry's buffers and drops the registry's pin. */
void rg_registry_destroy(struct rg_session *s);
/* Thread exit: drops the pins of this thread's lookup cache. */
void rg_registry_forget_thread(void);

#endif
