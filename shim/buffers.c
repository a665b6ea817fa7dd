/*
 * buffers.c — the per-thread buffer cache.
 *
 * Owns: each thread's one spare output chunk and one spare input buffer,
 * and the thread-exit hook that also empties the thread's registry lookup
 * cache (registry.c).
 * Invariants: buffers are held per thread, not per session, so a process
 * with 10,000 idle sessions holds 10,000 small entries and no buffers; a
 * thread's cache is freed when it exits; no lock (each cache is its
 * thread's own; a session's staging buffer is touched by the session
 * lock's holder or its active reader, session.h).
 */
#include "buffers.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "registry.h"

struct rg_buffer_cache {
	struct rg_chunk *chunk;
	unsigned char *input;
	size_t input_cap;
	bool registered;         /* rg_cache_key set for this thread */
};
static RG_THREAD_LOCAL struct rg_buffer_cache rg_cache;
static pthread_key_t rg_cache_key;   /* created by rg_buffers_init */
static bool rg_cache_key_ok;

static void rg_cache_free(void *unused)
{
	(void)unused;
	rg_registry_forget_thread();
	free(rg_cache.chunk);
	free(rg_cache.input);
	memset(&rg_cache, 0, sizeof rg_cache);
}

void rg_buffers_init(void)
{
	rg_cache_key_ok = pthread_key_create(&rg_cache_key, rg_cache_free) == 0;
}

void rg_thread_cache_register(void)
{
	if (!rg_cache.registered && rg_cache_key_ok) {
		pthread_setspecific(rg_cache_key, &rg_cache);
		rg_cache.registered = true;
	}
}

struct rg_chunk *rg_chunk_get(size_t need)
{
	struct rg_chunk *c = rg_cache.chunk;
	if (c != NULL && c->cap >= need) {
		rg_cache.chunk = NULL;
	} else {
		size_t cap = need > RG_CHUNK_SIZE ? need : RG_CHUNK_SIZE;
		c = malloc(sizeof *c + cap);
		if (c == NULL)
			return NULL;
		c->cap = cap;
	}
	c->next = NULL;
	c->len = c->off = 0;
	return c;
}

void rg_chunk_put(struct rg_chunk *c)
{
	c->next = NULL;
	if (rg_cache.chunk == NULL && c->cap == RG_CHUNK_SIZE) {
		rg_cache.chunk = c;
		rg_thread_cache_register();
	} else {
		free(c);
	}
}

void rg_chunk_put_list(struct rg_chunk *list)
{
	for (struct rg_chunk *next; list != NULL; list = next) {
		next = list->next;
		rg_chunk_put(list);
	}
}

bool rg_input_acquire(struct rg_session *s, size_t room)
{
	if (s->in_buf == NULL && rg_cache.input != NULL && rg_cache.input_cap >= room) {
		s->in_buf = rg_cache.input;
		s->in_cap = rg_cache.input_cap;
		rg_cache.input = NULL;
		rg_cache.input_cap = 0;
	}
	if (s->in_cap >= room)
		return true;
	unsigned char *buf = realloc(s->in_buf, room);
	if (buf == NULL)
		return false;
	s->in_buf = buf;
	s->in_cap = room;
	return true;
}

void rg_input_release(struct rg_session *s)
{
	if (s->in_buf == NULL)
		return;
	if (rg_cache.input == NULL) {
		rg_cache.input = s->in_buf;
		rg_cache.input_cap = s->in_cap;
		rg_thread_cache_register();
	} else {
		free(s->in_buf);
	}
	s->in_buf = NULL;
	s->in_cap = s->in_len = s->in_off = 0;
}

