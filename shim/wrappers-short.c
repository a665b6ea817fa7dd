/*
 * wrappers-short.c — the exported calls that only look at or record into
 * a session's entry: pending counts, direction, queued bytes, the record
 * timeout, the transport setters and getters, set_errno, the handshake
 * hook setter, TCP Fast Open.
 *
 * On a guarded session GnuTLS keeps the shim's callbacks and pointer; the
 * application's choices are recorded in the entry and reported back by
 * the getters. Unguarded sessions go straight to GnuTLS. Each call takes
 * the session lock for a few instructions, or none when made from inside
 * a call on the same session (locks.h, the callback rule).
 */
#include "wrappers.h"

#include <gnutls/socket.h>
#include <stdint.h>

#include "app-transport.h"
#include "binding.h"
#include "callbacks.h"
#include "config.h"
#include "keyupdate.h"
#include "locks.h"
#include "outbound.h"
#include "registry.h"

/* ---- short calls: lock, real call, unlock ------------------------------ */

/* The entry of a guarded session for a short call, locked by this thread;
 * NULL when the call should go straight to GnuTLS (not guarded, or inside
 * gnutls_init).
 *
 * GnuTLS calls back into the application while a guarded call runs with
 * the session lock held by this thread (certificate, handshake-hook and
 * post_client_hello callbacks). A short call made from there on the same
 * session gets the entry without locking it again (*nested): getters
 * report the application's transport, setters record into the entry, as
 * outside a call; GnuTLS keeps the shim's callbacks either way. */
static struct rg_session *rg_short_begin(gnutls_session_t session, bool *nested)
{
	*nested = false;
	if (!rg_tracking() || rg_in_init)
		return NULL;
	struct rg_session *current = rg_lock_thread.in_call;
	if (current != NULL && current->session == session) {
		*nested = true;
		return current;
	}
	struct rg_session *s = rg_registry_lookup_ref(session);
	if (s != NULL && rg_ku_thread.held == s) {
		/* keyupdate mode, inside a key change on this thread */
		rg_registry_unref_locked(s);
		*nested = true;
	} else if (s != NULL) {
		rg_session_lock(s);
	}
	return s;
}

/* The same, for calls whose entry state exists only under the full guard
 * (pending counts, direction, the output queue, timeouts): in keyupdate
 * mode they go straight to GnuTLS. */
static struct rg_session *rg_short_begin_guarded(gnutls_session_t session, bool *nested)
{
	*nested = false;
	if (!rg_guarding())
		return NULL;
	return rg_short_begin(session, nested);
}

static void rg_short_end(struct rg_session *s, bool nested)
{
	if (nested)
		return;
	rg_registry_unref_locked(s);
	rg_session_unlock(s);
}

static size_t real_gnutls_record_check_pending(gnutls_session_t session)
{
	if (rg_real.gnutls_record_check_pending.fn == NULL)
		return 0;
	return rg_real.gnutls_record_check_pending.fn(session);
}

static size_t guard_gnutls_record_check_pending(gnutls_session_t session)
{
	bool nested;
	struct rg_session *s = rg_short_begin_guarded(session, &nested);
	if (s == NULL)
		return real_gnutls_record_check_pending(session);
	size_t pending = real_gnutls_record_check_pending(session);
	rg_short_end(s, nested);
	return pending;
}

RG_EXPORT size_t gnutls_record_check_pending(gnutls_session_t session)
{
	return guard_gnutls_record_check_pending(session);
}

static int real_gnutls_record_get_direction(gnutls_session_t session)
{
	if (rg_real.gnutls_record_get_direction.fn == NULL)
		return 0;
	return rg_real.gnutls_record_get_direction.fn(session);
}

static int guard_gnutls_record_get_direction(gnutls_session_t session)
{
	bool nested;
	struct rg_session *s = rg_short_begin_guarded(session, &nested);
	if (s == NULL)
		return real_gnutls_record_get_direction(session);
	/* 1 when the shim itself returned AGAIN while writing. */
	int direction = s->direction_override >= 0 ? s->direction_override
						   : real_gnutls_record_get_direction(session);
	rg_short_end(s, nested);
	return direction;
}

RG_EXPORT int gnutls_record_get_direction(gnutls_session_t session)
{
	return guard_gnutls_record_get_direction(session);
}

static size_t real_gnutls_record_discard_queued(gnutls_session_t session)
{
	if (rg_real.gnutls_record_discard_queued.fn == NULL)
		return 0;
	return rg_real.gnutls_record_discard_queued.fn(session);
}

static size_t guard_gnutls_record_discard_queued(gnutls_session_t session)
{
	bool nested;
	struct rg_session *s = rg_short_begin_guarded(session, &nested);
	if (s == NULL)
		return real_gnutls_record_discard_queued(session);
	/* GnuTLS's own send buffer is empty under the shim: the bytes it
	 * would discard are in the shim's queue. */
	size_t discarded = real_gnutls_record_discard_queued(session) +
			   rg_queue_discard(s);
	rg_short_end(s, nested);
	return discarded;
}

RG_EXPORT size_t gnutls_record_discard_queued(gnutls_session_t session)
{
	return guard_gnutls_record_discard_queued(session);
}

static void real_gnutls_record_set_timeout(gnutls_session_t session, unsigned int ms)
{
	if (rg_real.gnutls_record_set_timeout.fn != NULL)
		rg_real.gnutls_record_set_timeout.fn(session, ms);
}

static void guard_gnutls_record_set_timeout(gnutls_session_t session, unsigned int ms)
{
	/* Recorded: a receive with a timeout never reads ahead. */
	bool nested;
	struct rg_session *s = rg_short_begin_guarded(session, &nested);
	real_gnutls_record_set_timeout(session, ms);
	if (s != NULL) {
		s->record_timeout_ms = ms;
		rg_short_end(s, nested);
	}
}

RG_EXPORT void gnutls_record_set_timeout(gnutls_session_t session, unsigned int ms)
{
	guard_gnutls_record_set_timeout(session, ms);
}

/* ---- transport setters and getters ---------------------------------------
 * On a guarded session GnuTLS keeps the shim's callbacks and pointer; the
 * application's choices are recorded in the entry and reported back by the
 * getters. Unguarded sessions go straight to GnuTLS. */

#define RG_SETTER(name, PARAMS, ARGS, RECORD)                                      \
	static void real_##name(gnutls_session_t session RG_UNPAREN PARAMS)        \
	{                                                                          \
		if (rg_real.name.fn != NULL)                                       \
			rg_real.name.fn(session RG_UNPAREN ARGS);                  \
	}                                                                          \
	static void guard_##name(gnutls_session_t session RG_UNPAREN PARAMS)       \
	{                                                                          \
		bool nested;                                                       \
		struct rg_session *s = rg_short_begin(session, &nested);           \
		if (s == NULL) {                                                   \
			real_##name(session RG_UNPAREN ARGS);                      \
			return;                                                    \
		}                                                                  \
		RG_UNPAREN RECORD                                                  \
		rg_short_end(s, nested);                                           \
	}                                                                          \
	RG_EXPORT void name(gnutls_session_t session RG_UNPAREN PARAMS)            \
	{                                                                          \
		guard_##name(session RG_UNPAREN ARGS);                             \
	}

#define RG_INT_PTR(fd) ((gnutls_transport_ptr_t)(intptr_t)(fd))

RG_SETTER(gnutls_transport_set_ptr, (, gnutls_transport_ptr_t ptr), (, ptr),
	  (s->app_recv_ptr = s->app_send_ptr = ptr; rg_transport_ptrs_changed(s);))
RG_SETTER(gnutls_transport_set_ptr2,
	  (, gnutls_transport_ptr_t recv_ptr, gnutls_transport_ptr_t send_ptr),
	  (, recv_ptr, send_ptr),
	  (s->app_recv_ptr = recv_ptr; s->app_send_ptr = send_ptr; rg_transport_ptrs_changed(s);))
/* gnutls_transport_set_int is a macro for set_int2 (no symbol of its own). */
RG_SETTER(gnutls_transport_set_int2, (, int recv_fd, int send_fd), (, recv_fd, send_fd),
	  (s->app_recv_ptr = RG_INT_PTR(recv_fd); s->app_send_ptr = RG_INT_PTR(send_fd);
	   rg_transport_ptrs_changed(s);))
RG_SETTER(gnutls_transport_set_push_function, (, gnutls_push_func push_func), (, push_func),
	  (s->app_push = push_func; s->app_vec_push = NULL;))
RG_SETTER(gnutls_transport_set_vec_push_function, (, gnutls_vec_push_func vec_func),
	  (, vec_func), (s->app_vec_push = vec_func; s->app_push = NULL;))
/* In keyupdate mode GnuTLS calls the application's pull, pull_timeout and
 * errno functions itself: recorded, and passed on. */
RG_SETTER(gnutls_transport_set_pull_function, (, gnutls_pull_func pull_func), (, pull_func),
	  (s->app_pull = pull_func;
	   if (rg_active() == RG_MODE_KEYUPDATE) real_gnutls_transport_set_pull_function(session, pull_func);
	   else rg_transport_refresh(s);))
RG_SETTER(gnutls_transport_set_pull_timeout_function, (, gnutls_pull_timeout_func func),
	  (, func),
	  (s->app_pull_timeout = func == rg_real.gnutls_system_recv_timeout.fn ? NULL : func;
	   if (rg_active() == RG_MODE_KEYUPDATE) real_gnutls_transport_set_pull_timeout_function(session, func);
	   else rg_transport_refresh(s);))
RG_SETTER(gnutls_transport_set_errno_function, (, gnutls_errno_func errno_func),
	  (, errno_func), (s->app_errno = errno_func;
	   if (rg_active() == RG_MODE_KEYUPDATE) real_gnutls_transport_set_errno_function(session, errno_func);))

/* The application's handshake hook. In keyupdate mode the shim's own hook
 * stays installed and calls the application's exactly as GnuTLS would;
 * a hook for GNUTLS_HANDSHAKE_CHANGE_CIPHER_SPEC alone (GnuTLS's testing
 * API, not passed to ANY hooks: gnutls-mirror.h M12) goes to GnuTLS itself, and that session's
 * received key updates are then not serialised. */
static void real_gnutls_handshake_set_hook_function(gnutls_session_t session, unsigned htype,
						    int when, gnutls_handshake_hook_func func)
{
	if (rg_real.gnutls_handshake_set_hook_function.fn != NULL)
		rg_real.gnutls_handshake_set_hook_function.fn(session, htype, when, func);
}

static void guard_gnutls_handshake_set_hook_function(gnutls_session_t session, unsigned htype,
						     int when, gnutls_handshake_hook_func func)
{
	bool nested;
	struct rg_session *s = rg_active() == RG_MODE_KEYUPDATE ? rg_short_begin(session, &nested)
								 : NULL;
	if (s == NULL) {
		real_gnutls_handshake_set_hook_function(session, htype, when, func);
		return;
	}
	s->app_hook = func;
	s->app_hook_htype = htype;
	s->app_hook_when = when;
	if (htype == GNUTLS_HANDSHAKE_CHANGE_CIPHER_SPEC && func != NULL) {
		rg_log(RG_LOG_INFO, "a CHANGE_CIPHER_SPEC hook replaces the shim's: this "
		       "session's received key updates are not serialised");
		real_gnutls_handshake_set_hook_function(session, htype, when, func);
	} else {
		real_gnutls_handshake_set_hook_function(session, GNUTLS_HANDSHAKE_ANY,
							GNUTLS_HOOK_BOTH, rg_keyupdate_hook);
	}
	rg_short_end(s, nested);
}

RG_EXPORT void gnutls_handshake_set_hook_function(gnutls_session_t session, unsigned htype,
						  int when, gnutls_handshake_hook_func func)
{
	guard_gnutls_handshake_set_hook_function(session, htype, when, func);
}

static gnutls_transport_ptr_t real_gnutls_transport_get_ptr(gnutls_session_t session)
{
	if (rg_real.gnutls_transport_get_ptr.fn == NULL)
		return NULL;
	return rg_real.gnutls_transport_get_ptr.fn(session);
}

static gnutls_transport_ptr_t guard_gnutls_transport_get_ptr(gnutls_session_t session)
{
	bool nested;
	struct rg_session *s = rg_short_begin(session, &nested);
	if (s == NULL)
		return real_gnutls_transport_get_ptr(session);
	gnutls_transport_ptr_t ptr = s->app_recv_ptr;
	rg_short_end(s, nested);
	return ptr;
}

RG_EXPORT gnutls_transport_ptr_t gnutls_transport_get_ptr(gnutls_session_t session)
{
	return guard_gnutls_transport_get_ptr(session);
}

static void real_gnutls_transport_get_ptr2(gnutls_session_t session,
					   gnutls_transport_ptr_t *recv_ptr,
					   gnutls_transport_ptr_t *send_ptr)
{
	if (rg_real.gnutls_transport_get_ptr2.fn != NULL)
		rg_real.gnutls_transport_get_ptr2.fn(session, recv_ptr, send_ptr);
	else
		*recv_ptr = *send_ptr = NULL;
}

static void guard_gnutls_transport_get_ptr2(gnutls_session_t session,
					    gnutls_transport_ptr_t *recv_ptr,
					    gnutls_transport_ptr_t *send_ptr)
{
	bool nested;
	struct rg_session *s = rg_short_begin(session, &nested);
	if (s == NULL) {
		real_gnutls_transport_get_ptr2(session, recv_ptr, send_ptr);
		return;
	}
	*recv_ptr = s->app_recv_ptr;
	*send_ptr = s->app_send_ptr;
	rg_short_end(s, nested);
}

RG_EXPORT void gnutls_transport_get_ptr2(gnutls_session_t session,
					 gnutls_transport_ptr_t *recv_ptr,
					 gnutls_transport_ptr_t *send_ptr)
{
	guard_gnutls_transport_get_ptr2(session, recv_ptr, send_ptr);
}

RG_EXPORT int gnutls_transport_get_int(gnutls_session_t session)
{
	return (int)(intptr_t)guard_gnutls_transport_get_ptr(session);
}

RG_EXPORT void gnutls_transport_get_int2(gnutls_session_t session, int *recv_fd, int *send_fd)
{
	gnutls_transport_ptr_t recv_ptr, send_ptr;
	guard_gnutls_transport_get_ptr2(session, &recv_ptr, &send_ptr);
	*recv_fd = (int)(intptr_t)recv_ptr;
	*send_fd = (int)(intptr_t)send_ptr;
}

static void real_gnutls_transport_set_errno(gnutls_session_t session, int err)
{
	if (rg_real.gnutls_transport_set_errno.fn != NULL)
		rg_real.gnutls_transport_set_errno.fn(session, err);
}

static void guard_gnutls_transport_set_errno(gnutls_session_t session, int err)
{
	/* From the application's push or pull running outside the lock:
	 * kept for the next real call instead of racing into GnuTLS. */
	if (rg_guarding() && rg_capture_errno(session, err))
		return;
	rg_ku_thread.errno_set = session;   /* keyupdate mode's push looks */
	real_gnutls_transport_set_errno(session, err);
}

RG_EXPORT void gnutls_transport_set_errno(gnutls_session_t session, int err)
{
	guard_gnutls_transport_set_errno(session, err);
}

static void real_gnutls_transport_set_fastopen(gnutls_session_t session, int fd,
					       struct sockaddr *connect_addr,
					       socklen_t connect_addrlen, unsigned int flags)
{
	if (rg_real.gnutls_transport_set_fastopen.fn != NULL)
		rg_real.gnutls_transport_set_fastopen.fn(session, fd, connect_addr,
							 connect_addrlen, flags);
}

static void guard_gnutls_transport_set_fastopen(gnutls_session_t session, int fd,
						struct sockaddr *connect_addr,
						socklen_t connect_addrlen, unsigned int flags)
{
	/* TCP Fast Open brings its own transport: the session is handed back
	 * to GnuTLS and no longer guarded (documented limit). */
	struct rg_session *s = rg_tracking() ? rg_registry_remove(session) : NULL;
	if (s != NULL) {
		rg_session_lock(s);
		while (__atomic_load_n(&s->refs, __ATOMIC_ACQUIRE) > 0)
			rg_session_wait(s);
		rg_transport_release(s);
		rg_registry_retire_locked(s);
		rg_session_unlock(s);
		rg_registry_destroy(s);
		rg_log(RG_LOG_INFO, "a TCP Fast Open session is not guarded");
	}
	real_gnutls_transport_set_fastopen(session, fd, connect_addr, connect_addrlen, flags);
}

RG_EXPORT void gnutls_transport_set_fastopen(gnutls_session_t session, int fd,
					     struct sockaddr *connect_addr,
					     socklen_t connect_addrlen, unsigned int flags)
{
	guard_gnutls_transport_set_fastopen(session, fd, connect_addr, connect_addrlen, flags);
}
