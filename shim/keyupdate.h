/*
 * keyupdate.h — REKEYGUARD_MODE=keyupdate: only the key changes
 * serialised (keyupdate.c).
 */
#ifndef RG_KEYUPDATE_H
#define RG_KEYUPDATE_H

#include <gnutls/gnutls.h>
#include <sys/types.h>

#include "call.h"
#include "common.h"
#include "session.h"

/* The hook installed on every tracked session in keyupdate mode. */
int rg_keyupdate_hook(gnutls_session_t session, unsigned htype, unsigned when,
		      unsigned incoming, const gnutls_datum_t *msg);
/* keyupdate mode: runs a wrapped call (straight to GnuTLS; a key update or
 * receive-key change with the session's lock as keyupdate.c describes). */
ssize_t rg_keyupdate_dispatch(struct rg_call *call);
/* A tracked session's entry (GnuTLS's send pointer in keyupdate mode). */
struct rg_session *rg_keyupdate_entry(gnutls_session_t session);

/* Which key-update lock this thread holds, and inside whose
 * gnutls_session_key_update it is. */
struct rg_keyupdate_thread {
	struct rg_session *held;
	struct rg_session *sending;
	gnutls_session_t errno_set;   /* last gnutls_transport_set_errno */
};
extern RG_THREAD_LOCAL struct rg_keyupdate_thread rg_ku_thread;
void rg_keyupdate_drop(void);
void rg_keyupdate_take_after_push(struct rg_session *s);

/* End of every wrapped call, and before the application's push: drops a
 * key-update lock this thread still holds. */
static inline void rg_keyupdate_call_end(void)
{
	if (__builtin_expect(rg_ku_thread.held != NULL, 0))
		rg_keyupdate_drop();
}
#define rg_keyupdate_before_io rg_keyupdate_call_end

/* After the application's push, inside a key update: take the lock for
 * the key change that follows. */
static inline void rg_keyupdate_after_push(struct rg_session *s, ssize_t ret)
{
	if (__builtin_expect(rg_ku_thread.sending == s, 0) && ret >= 0)
		rg_keyupdate_take_after_push(s);
}

#endif
