/*
 * buffers.h — the per-thread buffer cache: output chunks and input
 * staging buffers (buffers.c).
 */
#ifndef RG_BUFFERS_H
#define RG_BUFFERS_H

#include <stdbool.h>
#include <stddef.h>

#include "session.h"

#define RG_CHUNK_SIZE (16384 + 1024) /* a full TLS record and its overhead */

/* Once, from the binding: the key that frees a thread's cache. */
void rg_buffers_init(void);
/* Arranges for this thread's caches (buffers, registry lookups) to be
 * freed when it exits. */
void rg_thread_cache_register(void);
/* An empty chunk of at least `need` bytes; NULL when memory is exhausted. */
struct rg_chunk *rg_chunk_get(size_t need);
void rg_chunk_put(struct rg_chunk *c);
void rg_chunk_put_list(struct rg_chunk *list);
/* The session's input staging buffer, at least `room` bytes; false when
 * memory is exhausted. */
bool rg_input_acquire(struct rg_session *s, size_t room);
/* Gives the emptied staging buffer back to this thread's cache. */
void rg_input_release(struct rg_session *s);

#endif
