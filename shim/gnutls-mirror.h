/*
 * gnutls-mirror.h — every piece of GnuTLS behaviour the library mirrors,
 * in one place, so that a new GnuTLS release can be checked against it.
 *
 * Checked against GnuTLS 3.7.9 (Debian 12), 3.8.9 (Debian 13) and 3.8.13
 * (sid). Code elsewhere cites the entry as "gnutls-mirror.h Mn".
 *
 * M1  lib/buffers.c _gnutls_stream_read: a record is read as exactly the
 *     5-byte header, then packet_size - header, each piece by a loop of
 *     pulls that continues right after the bytes delivered; the timeout
 *     is decremented across those pulls. Here: RG_TLS_HEADER,
 *     rg_tls_body_length; inbound.c rg_pull_like_gnutls, callbacks.c
 *     rg_pull_delivered and rg_cb_pull_timeout's deadline.
 * M2  lib/buffers.c _gnutls_writev_emu: writev over a push function calls
 *     push once per buffer and stops at the first short write. Here:
 *     app-transport.c rg_app_push_emulated, and the queue keeping one
 *     chunk per buffer (outbound.c).
 * M3  lib/buffers.c get_errno: gnutls_transport_set_errno wins, else the
 *     errno function, else errno; from 3.8.2 on ("lib: Use correct
 *     transport getting error number") the errno function gets the send
 *     pointer after a failed push. Here: app-transport.c rg_app_errno,
 *     callbacks.c rg_cb_keyupdate_push, RG_GNUTLS_ERRNO_SEND_PTR.
 * M4  lib/buffers.c errno_to_gerr (stream sessions). Here: rg_push_error.
 * M5  lib/buffers.h NO_TIMEOUT_FUNC_SET: a timeout on a custom pull
 *     without pull_timeout gives GNUTLS_E_PULL_ERROR. Here: callbacks.c
 *     rg_transport_refresh.
 * M6  lib/record.c gnutls_record_uncork: after GNUTLS_E_AGAIN its retry
 *     restarts the total and returns the sizes of the records completed
 *     by that retry. Here: guard.c rg_uncork_retry_result.
 * M7  lib/record.c may_not_write: sends are refused once a push failed
 *     for good. Here: guard.c (push_dead_errno).
 * M8  3.7.9 lib/record.c: a push that fails with EAGAIN after a key
 *     update makes GnuTLS resend the record under the new key; so the
 *     shim's push never fails with EAGAIN inside a real call
 *     (callbacks.c rg_cb_vec_push queues instead).
 * M9  3.7.9 lib/record.c gnutls_record_send_early_data: early data is
 *     only buffered, sent by the handshake; recv_early_data takes what
 *     the handshake received: no transport I/O (RG_FAMILY_QUICK).
 * M10 3.7.9 lib/session.c gnutls_session_get_data2: a TLS 1.3 client
 *     waits up to a round trip for the ticket and, on GNUTLS_E_AGAIN or
 *     TIMEDOUT, returns success with an empty placeholder. Here: guard.c
 *     (the swallowed wait), wrappers.c (get_data2 asked again).
 * M11 lib/global.c gnutls_global_set_mem_functions: since 3.3.0 GnuTLS
 *     allocates with libc's malloc; a datum it filled is freed with free()
 *     (wrappers.c rg_invoke_gnutls_session_get_data2).
 * M12 lib/handshake.c _gnutls_call_hook_func (3.7.9, 3.8.13): a hook runs
 *     when the type matches or is ANY and `when` matches or is BOTH;
 *     CHANGE_CIPHER_SPEC is not passed to ANY hooks. Here: keyupdate.c
 *     rg_keyupdate_app_hook, wrappers-short.c's hook setter.
 * M13 3.8.13 lib/tls13/key_update.c gnutls_session_key_update and
 *     _gnutls13_recv_key_update, lib/constate.h _gnutls_epoch_bump: key
 *     changes update the traffic secrets without a lock. Here: keyupdate.c.
 * M14 REKEYGUARD_GNUTLS_REWORKED (include/rekeyguard.h): from 3.8.11 on
 *     sending and receiving are safe together. Here: binding.c (auto).
 * M15 lib/record.c RECORD_SEND_KEY_UPDATE_1: GnuTLS's own rekey threshold;
 *     the provoker counts records the same way (provoke.c).
 */
#ifndef RG_GNUTLS_MIRROR_H
#define RG_GNUTLS_MIRROR_H

#include <errno.h>
#include <gnutls/gnutls.h>
#include <stddef.h>

/* M1: TLS record header: type, version (2 bytes), length (2 bytes). */
#define RG_TLS_HEADER 5
#define RG_TLS_MAX_BODY (16384 + 2048)

/* M3: the first release passing the send pointer to the errno function. */
#define RG_GNUTLS_ERRNO_SEND_PTR "3.8.2"

/* M1: after GnuTLS asked for a record header, the body length it will ask
 * for next; 0 if the header is not one GnuTLS would go on with. */
static inline size_t rg_tls_body_length(const unsigned char *h)
{
	size_t body = ((size_t)h[3] << 8) | h[4];
	if (h[0] < 20 || h[0] > 24 || h[1] != 3 || body == 0 || body > RG_TLS_MAX_BODY)
		return 0;
	return body;
}

/* M4: errno_to_gerr for a stream session. */
static inline int rg_push_error(int err)
{
	switch (err) {
	case EAGAIN:
		return GNUTLS_E_AGAIN;
	case EINTR:
		return GNUTLS_E_INTERRUPTED;
	case ECONNRESET:
		return GNUTLS_E_PREMATURE_TERMINATION;
	default:
		return GNUTLS_E_PUSH_ERROR;
	}
}

#endif
