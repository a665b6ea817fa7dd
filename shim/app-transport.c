/*
 * app-transport.c — the application's transport, called as GnuTLS would.
 *
 * Owns: the calls of the application's pull, pull_timeout, push, vector
 * push and errno function (or GnuTLS's defaults on its fd), and the
 * per-thread capture of gnutls_transport_set_errno while they run outside
 * the session lock. Invariants: the calls are made exactly as GnuTLS makes
 * them (gnutls-mirror.h M2, M3); no lock is taken here.
 */
#include "app-transport.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "binding.h"

/* The capture in progress on this thread. */
struct rg_capture {
	struct rg_session *capturing; /* its transport runs outside the lock */
	bool captured;
	int captured_errno;
};
static RG_THREAD_LOCAL struct rg_capture rg_capture;

/* ---- the application's transport, called as GnuTLS would ------------- */

ssize_t rg_app_pull(struct rg_session *s, void *buf, size_t len)
{
	if (s->app_pull != NULL)
		return s->app_pull(s->app_recv_ptr, buf, len);
	return recv(rg_fd_of(s->app_recv_ptr), buf, len, 0);
}

int rg_app_pull_timeout(struct rg_session *s, unsigned ms)
{
	if (s->app_pull_timeout != NULL)
		return s->app_pull_timeout(s->app_recv_ptr, ms);
	return rg_real.gnutls_system_recv_timeout.fn(s->app_recv_ptr, ms);
}

/* GnuTLS's own emulation of writev over a push function (gnutls-mirror.h
 * M2): stop at the first short write. */
static ssize_t rg_app_push_emulated(struct rg_session *s, const giovec_t *iov, int count)
{
	size_t total = 0;
	ssize_t ret = 0;
	for (int i = 0; i < count; i++) {
		size_t sent = 0, left = iov[i].iov_len;
		const char *p = iov[i].iov_base;
		do {
			ret = s->app_push(s->app_send_ptr, p, left);
			if (ret > 0) {
				sent += ret;
				left -= ret;
				p += ret;
			}
		} while (ret > 0 && left > 0);
		if (sent > 0)
			ret = sent;
		if (ret == -1)
			break;
		total += ret;
		if ((size_t)ret != iov[i].iov_len)
			break;
	}
	return total > 0 ? (ssize_t)total : ret;
}

ssize_t rg_app_push(struct rg_session *s, const giovec_t *iov, int count, int flags)
{
	if (s->app_vec_push != NULL)
		return s->app_vec_push(s->app_send_ptr, iov, count);
	if (s->app_push != NULL)
		return rg_app_push_emulated(s, iov, count);
	struct msghdr hdr;
	memset(&hdr, 0, sizeof hdr);
	hdr.msg_iov = (struct iovec *)iov;
	hdr.msg_iovlen = count;
	return sendmsg(rg_fd_of(s->app_send_ptr), &hdr,
		       flags | (s->no_signal ? MSG_NOSIGNAL : 0));
}

/* The errno GnuTLS would have seen after the application's callback
 * failed: gnutls_transport_set_errno wins, else the errno function, else
 * errno (gnutls-mirror.h M3). */
int rg_app_errno(struct rg_session *s, int saved_errno)
{
	if (rg_capture.captured)
		return rg_capture.captured_errno;
	if (s->app_errno != NULL)
		return s->app_errno(s->app_recv_ptr);
	return saved_errno;
}

void rg_capture_begin(struct rg_session *s)
{
	rg_capture.capturing = s;
	rg_capture.captured = false;
}

void rg_capture_end(void)
{
	rg_capture.capturing = NULL;
}

bool rg_capture_errno(gnutls_session_t session, int err)
{
	struct rg_session *s = rg_capture.capturing;
	if (s == NULL || s->session != session)
		return false;
	if (err != 0) {   /* GnuTLS treats 0 as "not set" */
		rg_capture.captured = true;
		rg_capture.captured_errno = err;
	}
	return true;
}

