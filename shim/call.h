/*
 * call.h — one call of a wrapped GnuTLS function, as the wrappers hand it
 * to the guard (guard.c), the key-update serialisation (keyupdate.c) and
 * the provoker (provoke.c). Types only.
 */
#ifndef RG_CALL_H
#define RG_CALL_H

#include <gnutls/gnutls.h>
#include <sys/types.h>

/* Calls whose retry after GNUTLS_E_AGAIN completes the earlier call. */
enum rg_family {
	RG_FAMILY_QUICK = 0, /* never does transport I/O worth retrying */
	RG_FAMILY_SEND,
	RG_FAMILY_RECV,
	RG_FAMILY_UNCORK,
	RG_FAMILY_HANDSHAKE,
	RG_FAMILY_BYE,
	RG_FAMILY_ALERT,
	RG_FAMILY_KEY_UPDATE,
	RG_FAMILY_RECV_KEY,  /* gnutls_handshake_update_receiving_key: no I/O */
	RG_FAMILY_TICKET,
	RG_FAMILY_HEARTBEAT,
	RG_FAMILY_SESSION_DATA,
};

/* Wrappers embed it first in a struct holding their arguments; invoke
 * makes the real GnuTLS call with them. */
struct rg_call {
	enum rg_family family;
	gnutls_session_t session;
	ssize_t (*invoke)(struct rg_call *call);
};

#endif
