/*
 * outbound.h — the outbound queue: every byte GnuTLS pushed, in order,
 * until the application's transport took it (outbound.c).
 */
#ifndef RG_OUTBOUND_H
#define RG_OUTBOUND_H

#include <stdint.h>

#include "session.h"

/* One empty chunk per buffer of iov with bytes left after the first
 * `skip` bytes of the vector, reserved before any is queued so that
 * running out of memory fails cleanly: RG_QUEUE_NO_MEMORY then. NULL when
 * nothing is left to queue. */
#define RG_QUEUE_NO_MEMORY ((struct rg_chunk *)-1)
struct rg_chunk *rg_queue_reserve(const giovec_t *iov, int count, size_t skip);
/* Queues iov's bytes from offset `skip` on, using the reserved chunks. */
void rg_queue_put(struct rg_session *s, struct rg_chunk *reserved, const giovec_t *iov,
		  int count, size_t skip);
/* Discards queued bytes no thread is writing; returns how many. */
size_t rg_queue_discard(struct rg_session *s);
/* Writes queued bytes until out_flushed reaches mark, with the lock
 * dropped while the application's transport runs. Called and returns with
 * s->lock held. Returns 0 or the GnuTLS error GnuTLS itself would have
 * returned for that write (GNUTLS_E_AGAIN after a short write). */
int rg_flush_until(struct rg_session *s, uint64_t mark);

#endif
