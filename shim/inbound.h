/*
 * inbound.h — inbound staging: the application's input, performed with
 * the session lock dropped and staged for the next real call (inbound.c).
 */
#ifndef RG_INBOUND_H
#define RG_INBOUND_H

#include <stdbool.h>
#include <sys/types.h>

#include "session.h"

/* The real call wanted input it could not have without waiting (s->want):
 * wait for it with the lock dropped, exactly as the application's
 * transport waits, and stage the outcome for the next real call. Called
 * and returns with s->lock held. Returns true when the call ends here
 * with *ret: GNUTLS_E_AGAIN where GnuTLS would have ended a partial read
 * (EAGAIN, EINTR or EOF after some bytes of the same read) instead of
 * consuming the outcome, or GNUTLS_E_TIMEDOUT where GnuTLS's timeout ran
 * out (the application's pull_timeout said so, or a pull outlasted the
 * time left; GnuTLS drops that pull's bytes then, and so does the shim). */
bool rg_wait_for_input(struct rg_session *s, ssize_t *ret);

#endif
