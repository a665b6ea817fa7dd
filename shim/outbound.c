/*
 * outbound.c — the outbound queue.
 *
 * Owns: the chunks of s->out_head..out_tail and the byte counters
 * out_queued/out_flushed, and the flush that writes them with the session
 * lock dropped. Invariants: one chunk per buffer GnuTLS handed to push, so
 * that a flush gives the application's push the same buffers GnuTLS would
 * have (gnutls-mirror.h M2: short writes depend on it); queued bytes are
 * written in the order GnuTLS pushed them; only one thread writes at a
 * time (flusher_active), and while it does nobody else touches out_head's
 * chunks.
 */
#include "outbound.h"

#include <errno.h>
#include <string.h>

#include "app-transport.h"
#include "buffers.h"
#include "gnutls-mirror.h"
#include "locks.h"

#define RG_MAX_IOV 16

/* How many bytes of buffer i are still to be queued once the first
 * `skip` bytes of the whole vector are written. */
static size_t rg_iov_rest(const giovec_t *iov, int i, size_t skip)
{
	size_t before = rg_iov_total(iov, i);
	size_t len = iov[i].iov_len;
	if (skip <= before)
		return len;
	return skip - before >= len ? 0 : len - (skip - before);
}

struct rg_chunk *rg_queue_reserve(const giovec_t *iov, int count,
					 size_t skip)
{
	struct rg_chunk *list = NULL;
	for (int i = count - 1; i >= 0; i--) {
		size_t rest = rg_iov_rest(iov, i, skip);
		if (rest == 0)
			continue;
		struct rg_chunk *c = rg_chunk_get(rest);
		if (c == NULL) {
			rg_chunk_put_list(list);
			return RG_QUEUE_NO_MEMORY;
		}
		c->next = list;
		list = c;
	}
	return list;
}

void rg_queue_put(struct rg_session *s, struct rg_chunk *reserved,
			 const giovec_t *iov, int count, size_t skip)
{
	bool first = true;
	for (int i = 0; i < count; i++) {
		size_t rest = rg_iov_rest(iov, i, skip);
		if (rest == 0)
			continue;
		struct rg_chunk *c = reserved;
		reserved = c->next;
		c->next = NULL;
		memcpy(c->data, (const unsigned char *)iov[i].iov_base + iov[i].iov_len - rest, rest);
		c->len = rest;
		c->first = first;
		first = false;
		s->out_queued += c->len;
		if (s->out_tail != NULL)
			s->out_tail->next = c;
		else
			s->out_head = c;
		s->out_tail = c;
	}
}

static void rg_queue_consume(struct rg_session *s, size_t n)
{
	s->out_flushed += n;
	while (n > 0 && s->out_head != NULL) {
		struct rg_chunk *c = s->out_head;
		size_t take = c->len - c->off < n ? c->len - c->off : n;
		c->off += take;
		n -= take;
		if (c->off < c->len)
			break;
		s->out_head = c->next;
		if (s->out_head == NULL)
			s->out_tail = NULL;
		rg_chunk_put(c);
	}
}

size_t rg_queue_discard(struct rg_session *s)
{
	if (s->flusher_active)
		return 0;   /* bytes on their way out cannot be taken back */
	size_t n = (size_t)(s->out_queued - s->out_flushed);
	rg_queue_consume(s, n);
	s->owed_valid = false;
	return n;
}

int rg_flush_until(struct rg_session *s, uint64_t mark)
{
	while (s->out_flushed < mark) {
		if (s->flusher_active) {
			rg_session_wait(s);
			continue;
		}
		/* The buffers of one push call at a time, as GnuTLS's own send
		 * buffer would hold them. */
		giovec_t iov[RG_MAX_IOV];
		int count = 0;
		for (struct rg_chunk *c = s->out_head; c != NULL && count < RG_MAX_IOV; c = c->next) {
			if (c->first && count > 0)
				break;
			if (c->len > c->off) {
				iov[count].iov_base = c->data + c->off;
				iov[count].iov_len = c->len - c->off;
				count++;
			}
		}
		size_t total = rg_iov_total(iov, count);
		s->flusher_active = true;
		rg_session_unlock(s);

		rg_capture_begin(s);
		errno = 0;
		ssize_t n = rg_app_push(s, iov, count, 0);
		int err = n < 0 ? rg_app_errno(s, errno) : 0;
		rg_capture_end();

		rg_session_lock_turn(s, rg_lock_thread.in_call == NULL, false);
		s->flusher_active = false;
		rg_session_broadcast(s);
		if (n > 0)
			rg_queue_consume(s, (size_t)n);
		if (n < 0) {
			int gerr = rg_push_error(err);
			if (gerr != GNUTLS_E_AGAIN && gerr != GNUTLS_E_INTERRUPTED)
				s->push_dead_errno = err;
			return gerr;
		}
		if ((size_t)n < total)
			return GNUTLS_E_AGAIN;
	}
	return 0;
}

