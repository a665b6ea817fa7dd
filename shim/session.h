/*
 * session.h — the registry entry of one guarded gnutls_session_t.
 *
 * Who may touch what (the locks are in locks.h, their order there too):
 *   - `session`, `no_signal`: written once before the entry is published
 *     (registry.c rg_registry_create), read by anyone holding a reference.
 *   - `next`: the registry stripe lock of the entry's bucket.
 *   - `refs`, `lock_waiters`, `pins`, `unlisted`, `dead`: atomics (refs is
 *     incremented under the stripe lock or through a pin, and decremented
 *     under the session lock; unlisted is set under the stripe lock, dead
 *     under the session lock; see registry.c).
 *   - `generation`, `poisoned`: the stripe lock (checked on every lookup;
 *     generation is also read, atomically, by a cached lookup).
 *   - every other field: the session lock (`lock`), except that while
 *     `reader_active` is set only the thread that set it touches the input
 *     buffer fields (in_buf, in_cap), without the lock, and while
 *     `flusher_active` is set only the thread that set it reads the chunks
 *     at out_head, without the lock; nobody frees or reorders those
 *     meanwhile.
 * In keyupdate mode only `app_*` fields, `lock` and `cond` are used.
 */
#ifndef RG_SESSION_H
#define RG_SESSION_H

#include <gnutls/gnutls.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "call.h"

/* Where the application's transport input stands (staged between the
 * application's own I/O outside the lock and the next real GnuTLS call). */
enum rg_in_result {
	RG_IN_NONE = 0,
	RG_IN_READABLE,   /* a wait said data is there; nothing consumed */
	RG_IN_EOF,        /* the application's pull returned 0 */
	RG_IN_READ_ERROR, /* the application's pull returned -1 (in_errno) */
	RG_IN_WAIT_ERROR, /* the application's pull_timeout returned -1 */
};

/* What the current real call asked of the transport and could not get
 * without waiting. */
enum rg_want { RG_WANT_NONE = 0, RG_WANT_READ, RG_WANT_WAIT };

#define RG_UNCORK_RECORDS 32

/* One buffer GnuTLS handed to push (outbound.c). */
struct rg_chunk {
	struct rg_chunk *next;
	size_t cap, len, off;  /* data[off, len) still to be written */
	bool first;            /* first buffer of one push call */
	unsigned char data[];
};

struct rg_session {
	/* Set before publication; then read-only. */
	gnutls_session_t session;
	bool no_signal;               /* GNUTLS_NO_SIGNAL: MSG_NOSIGNAL on sendmsg */

	/* Stripe lock. */
	struct rg_session *next;      /* registry chain */
	unsigned generation;          /* fork generation the lock belongs to */
	bool poisoned;                /* forked mid-call: unusable in this child */

	/* Atomic. */
	unsigned refs;                /* calls in flight */
	unsigned pins;                /* holders of the memory: the registry
	                               * (until removal) and each thread whose
	                               * lookup cache names the entry (registry.c) */
	bool unlisted;                /* removed from the registry: a cached
	                               * lookup must not use it */
	bool dead;                    /* retired, GnuTLS's session gone: a call
	                               * that raced the removal fails (guard.c) */
	unsigned lock_waiters;        /* counted threads blocked taking the lock
	                               * (rg_session_lock_turn) */

	pthread_mutex_t lock;         /* the session lock: guards all below */
	pthread_cond_t cond;          /* reader/flusher hand-over, deinit, turns */
	unsigned long lock_turns;     /* counted waiters that got the lock so far */
	unsigned cond_waiters;        /* threads in rg_session_wait */
	bool dying;                   /* gnutls_deinit is waiting */
	bool proto_checked;           /* TLS version looked at for the notice */

	/* The application's transport, as it configured it. */
	gnutls_pull_func app_pull;            /* NULL: GnuTLS's recv() */
	gnutls_pull_timeout_func app_pull_timeout; /* NULL: gnutls_system_recv_timeout */
	gnutls_push_func app_push;            /* at most one of app_push */
	gnutls_vec_push_func app_vec_push;    /*   and app_vec_push; both NULL: sendmsg() */
	gnutls_errno_func app_errno;          /* NULL: errno */
	gnutls_transport_ptr_t app_recv_ptr, app_send_ptr;
	/* The application's handshake hook (keyupdate mode chains to it). */
	gnutls_handshake_hook_func app_hook;
	unsigned app_hook_htype;
	int app_hook_when;

	/* errno the shim's callbacks report to GnuTLS in a guarded call */
	int cb_errno;

	/* Inbound staging (inbound.c). */
	enum rg_want want;
	bool want_continues;          /* the wanting pull continues a partial read */
	bool want_bytes;              /* read the bytes, even on GnuTLS's own fd
	                               * transport (a read-ahead: guard.c) */
	bool timeout_seen;            /* the real call used pull_timeout */
	bool in_whole_record;         /* the staged bytes are one whole record */
	bool at_record_boundary;      /* GnuTLS consumed exactly whole records */
	unsigned record_timeout_ms;   /* gnutls_record_set_timeout */
	uint64_t deadline_ns;         /* the outer call's timeout, 0: none */
	const unsigned char *pull_end; /* where the last pull's bytes ended, */
	size_t pull_left;             /*   and what GnuTLS still wanted */
	size_t want_len;
	unsigned want_ms;
	bool reader_active;           /* a thread performs input outside the lock */
	enum rg_in_result in_result;
	int in_errno;
	int in_wait_ret;              /* pull_timeout's positive return */
	unsigned char *in_buf;        /* the reader's while reader_active */
	size_t in_cap, in_len, in_off;

	/* Outbound queue (outbound.c): every byte GnuTLS pushed, in order,
	 * until written. */
	struct rg_chunk *out_head, *out_tail;
	uint64_t out_queued, out_flushed;  /* byte counters, monotonic */
	uint64_t out_pushed;          /* every byte GnuTLS pushed, monotonic */
	bool flusher_active;          /* a thread writes out_head's chunks */
	int push_dead_errno;          /* the transport failed for good */

	/* A call that returned AGAIN/INTERRUPTED with its bytes still queued. */
	bool owed_valid;
	bool owed_complete;           /* the real call had finished: replay */
	enum rg_family owed_family;
	ssize_t owed_result;
	uint64_t owed_mark;

	int direction_override;       /* -1: ask GnuTLS */

	/* gnutls_record_uncork sends each corked record with
	 * gnutls_record_send; after AGAIN, its retry returns the sizes of the
	 * records completed by that retry. Ends of those records in the pushed
	 * stream (out_pushed) and their sizes, for the outer uncork call. */
	enum rg_family call_family;   /* of the outer call in progress */
	unsigned uncork_count;        /* > RG_UNCORK_RECORDS: too many to track */
	bool uncork_sending;          /* inside one of uncork's sends */
	struct { uint64_t end; ssize_t size; } uncork_records[RG_UNCORK_RECORDS];
};

#endif
