/*
 * callbacks.h — the transport callbacks the library installs in GnuTLS on
 * every tracked session (callbacks.c).
 */
#ifndef RG_CALLBACKS_H
#define RG_CALLBACKS_H

#include "session.h"

/* Installs the shim's callbacks on a new tracked session. */
void rg_transport_install(struct rg_session *s);
/* After the application set its transport pointers (keyupdate mode keeps
 * GnuTLS's receive pointer the application's). Called with s->lock. */
void rg_transport_ptrs_changed(struct rg_session *s);
/* Re-installs GnuTLS's view of the transport after the application
 * changed it (pull with or without pull_timeout). Called with s->lock. */
void rg_transport_refresh(struct rg_session *s);
/* Gives the session back to GnuTLS's own transport handling (the shim
 * stops guarding it). Called with s->lock. */
void rg_transport_release(struct rg_session *s);

#endif
