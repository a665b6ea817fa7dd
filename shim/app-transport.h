/*
 * app-transport.h — the application's transport, called as GnuTLS would
 * call it (app-transport.c), and the errno capture while it runs outside
 * the session lock.
 */
#ifndef RG_APP_TRANSPORT_H
#define RG_APP_TRANSPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "session.h"

static inline int rg_fd_of(gnutls_transport_ptr_t ptr)
{
	return (int)(intptr_t)ptr;
}

static inline size_t rg_iov_total(const giovec_t *iov, int count)
{
	size_t total = 0;
	for (int i = 0; i < count; i++)
		total += iov[i].iov_len;
	return total;
}

/* The application's pull (or recv() on its fd). */
ssize_t rg_app_pull(struct rg_session *s, void *buf, size_t len);
/* Its pull_timeout (or gnutls_system_recv_timeout). */
int rg_app_pull_timeout(struct rg_session *s, unsigned ms);
/* Its vector push, its push through GnuTLS's writev emulation, or
 * sendmsg() on its fd with `flags`. */
ssize_t rg_app_push(struct rg_session *s, const giovec_t *iov, int count, int flags);
/* The errno GnuTLS would have seen after the application's callback
 * failed (gnutls-mirror.h M3); saved_errno is errno right after it. */
int rg_app_errno(struct rg_session *s, int saved_errno);

/* Around the application's transport outside the lock: its calls to
 * gnutls_transport_set_errno on s are kept for rg_app_errno. */
void rg_capture_begin(struct rg_session *s);
void rg_capture_end(void);
/* From the gnutls_transport_set_errno wrapper: true when the value was
 * taken for the capture in progress on this thread. */
bool rg_capture_errno(gnutls_session_t session, int err);

#endif
