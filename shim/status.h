/*
 * status.h — what the library tells operators: the status block
 * rekeyguard-status reads (include/rekeyguard.h), the one-time notice, and
 * rekeyguard's own exported queries (status.c).
 */
#ifndef RG_STATUS_H
#define RG_STATUS_H

#include <gnutls/gnutls.h>

/* A new guarded session. */
void rg_status_count_guarded(void);
/* A session used through a wrapper but not guarded (DTLS, or older than
 * an injection): counted once per distinct session, without a lock. */
void rg_status_note_unguarded(gnutls_session_t session);
/* The library was loaded by rekeyguard-inject. */
void rg_status_mark_injected(void);
/* The one-time notice, once a TLS 1.3 session is protected. */
void rg_notice_protected(gnutls_session_t session);

#endif
