/*
 * rekeyguard.h — declarations shared by the shim's files.
 *
 *   interpose.c  binding of the real GnuTLS functions and the exported
 *                wrappers (real_<fn> thunk -> guard_<fn> -> exported <fn>)
 *   registry.c   session entries: hash table keyed by gnutls_session_t,
 *                reference counts, entry locks, fork handling
 *   transport.c  the guarded transport: the shim's own push/pull callbacks,
 *                staging buffers, and the outer loop that performs the
 *                application's blocking I/O with the session lock dropped
 *   config.c     environment parsing and logging
 *   keyupdate.c  REKEYGUARD_MODE=keyupdate: only the key changes serialised
 *   provoke.c    forced key updates for validation (REKEYGUARD_PROVOKE_REKEY)
 *   inject.c     late loading into a running process: GOT patching
 *
 * Lock order (the only locks the shim owns):
 *   0. the injection's lock (inject.c, rg_inject_lock): guards its GOT
 *      patching passes (activation, dlopen); held during
 *      dl_iterate_phdr, never with another of these locks.
 *   1. registry stripe locks (registry.c, rg_stripe[]): guard bucket chains
 *      and the reference count increments; held for a few instructions.
 *   2. a session's lock (struct rg_session.lock): guards every field of the
 *      entry and is held for the whole of each real GnuTLS call on that
 *      session, never while the application's transport may block. In
 *      keyupdate mode it is held only across GnuTLS's key changes
 *      (keyupdate.c), never across transport I/O or a callback. Taken
 *      with turns (rg_session_lock_turn) at the start of a call and after
 *      transport I/O, so that a streaming thread cannot starve another.
 * No path holds both 1 and 2: a lookup takes its stripe lock, takes a
 * reference and releases the stripe before locking the session. The fork
 * prepare handler (registry.c) takes 0 and then every 1 in index order;
 * session locks are re-created in the child when first looked up. The set
 * of unguarded sessions is lock-free (registry.c).
 *
 * GnuTLS calling back into the application while a guarded call holds the
 * session lock (certificate, verify and handshake-hook callbacks,
 * post_client_hello, the ticket and early-data paths) — the rule:
 *   - a short call on the same session (transport getters and setters,
 *     check_pending, get_direction, discard_queued, set_timeout, the hook
 *     setter) uses the entry directly without locking it again
 *     (interpose.c rg_short_begin): getters report the application's
 *     transport, setters record into the entry;
 *   - a record, handshake, alert or key-update call on the same session
 *     is a nested call: it goes straight to GnuTLS, its I/O through the
 *     shim's callbacks (queued, staged), and the outermost call does the
 *     waiting afterwards;
 *   - a call on another session takes that session's lock as usual. A
 *     thread then holds two session locks; two threads doing so in
 *     opposite orders would deadlock, which needs callbacks of two
 *     sessions calling into each other's sessions (none known).
 *   - a real call whose callback could not wait is never allowed to end as
 *     if the wait had been done: where GnuTLS swallows the "would wait"
 *     (gnutls_session_get_data2's ticket wait), the loop waits and asks
 *     again (transport.c rg_guard_run).
 */
#ifndef REKEYGUARD_SHIM_H
#define REKEYGUARD_SHIM_H

#include "../include/rekeyguard.h"

#include <gnutls/gnutls.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define RG_EXPORT __attribute__((visibility("default")))
#define RG_PRINTF(a, b) __attribute__((format(printf, a, b)))


/* ---- config.c -------------------------------------------------------- */

enum rg_log_level { RG_LOG_ERROR = 0, RG_LOG_WARN, RG_LOG_INFO, RG_LOG_DEBUG };
enum rg_mode { RG_MODE_AUTO = 0, RG_MODE_GUARD, RG_MODE_KEYUPDATE, RG_MODE_OFF };
#define RG_MODE_COUNT 4
enum rg_notice { RG_NOTICE_AUTO = 0, RG_NOTICE_ON, RG_NOTICE_OFF };

struct rg_config {
	enum rg_mode mode;           /* as configured */
	enum rg_log_level log_level;
	enum rg_log_level notice_level; /* of the one-time notice (REKEYGUARD_NOTICE) */
	uint64_t provoke_every;      /* REKEYGUARD_PROVOKE_REKEY records; 0: off */
	bool provoke_peer;           /* ...:peer, request the peer's update too */
};

/* Parses the environment once (pthread_once); later calls are free. */
const struct rg_config *rg_config_get(void);
/* The same without pthread_once, once rg_active() has returned. */
const struct rg_config *rg_config_value_parsed(void);
const char *rg_mode_name(enum rg_mode mode);
void rg_log(enum rg_log_level level, const char *fmt, ...) RG_PRINTF(2, 3);
bool rg_log_enabled(enum rg_log_level level);

/* ---- interpose.c: the real GnuTLS functions ---------------------------- */

/* Each real function lives in a union with void * so dlsym's result is
 * stored without casting a data pointer to a function pointer. */
#define RG_REAL_SLOT(ret, name, params) union { void *sym; ret (*fn) params; } name

struct rg_real_table {
	RG_REAL_SLOT(int, gnutls_init, (gnutls_session_t *, unsigned int));
	RG_REAL_SLOT(void, gnutls_deinit, (gnutls_session_t));
	RG_REAL_SLOT(ssize_t, gnutls_record_send, (gnutls_session_t, const void *, size_t));
	RG_REAL_SLOT(ssize_t, gnutls_record_send2, (gnutls_session_t, const void *, size_t, size_t, unsigned));
	RG_REAL_SLOT(ssize_t, gnutls_record_send_range, (gnutls_session_t, const void *, size_t, const gnutls_range_st *));
	RG_REAL_SLOT(ssize_t, gnutls_record_send_file, (gnutls_session_t, int, off_t *, size_t));
	RG_REAL_SLOT(ssize_t, gnutls_record_send_early_data, (gnutls_session_t, const void *, size_t));
	RG_REAL_SLOT(ssize_t, gnutls_record_recv, (gnutls_session_t, void *, size_t));
	RG_REAL_SLOT(ssize_t, gnutls_record_recv_seq, (gnutls_session_t, void *, size_t, unsigned char *));
	RG_REAL_SLOT(ssize_t, gnutls_record_recv_packet, (gnutls_session_t, gnutls_packet_t *));
	RG_REAL_SLOT(ssize_t, gnutls_record_recv_early_data, (gnutls_session_t, void *, size_t));
	RG_REAL_SLOT(int, gnutls_record_uncork, (gnutls_session_t, unsigned int));
	RG_REAL_SLOT(size_t, gnutls_record_check_pending, (gnutls_session_t));
	RG_REAL_SLOT(int, gnutls_record_get_direction, (gnutls_session_t));
	RG_REAL_SLOT(size_t, gnutls_record_discard_queued, (gnutls_session_t));
	RG_REAL_SLOT(void, gnutls_record_set_timeout, (gnutls_session_t, unsigned int));
	RG_REAL_SLOT(int, gnutls_handshake, (gnutls_session_t));
	RG_REAL_SLOT(int, gnutls_reauth, (gnutls_session_t, unsigned int));
	RG_REAL_SLOT(int, gnutls_rehandshake, (gnutls_session_t));
	RG_REAL_SLOT(int, gnutls_bye, (gnutls_session_t, gnutls_close_request_t));
	RG_REAL_SLOT(int, gnutls_alert_send, (gnutls_session_t, gnutls_alert_level_t, gnutls_alert_description_t));
	RG_REAL_SLOT(int, gnutls_alert_send_appropriate, (gnutls_session_t, int));
	RG_REAL_SLOT(int, gnutls_session_key_update, (gnutls_session_t, unsigned));
	RG_REAL_SLOT(int, gnutls_handshake_update_receiving_key, (gnutls_session_t));
	RG_REAL_SLOT(void, gnutls_handshake_set_hook_function,
		     (gnutls_session_t, unsigned, int, gnutls_handshake_hook_func));
	RG_REAL_SLOT(int, gnutls_session_ticket_send, (gnutls_session_t, unsigned, unsigned));
	RG_REAL_SLOT(int, gnutls_session_get_data, (gnutls_session_t, void *, size_t *));
	RG_REAL_SLOT(int, gnutls_session_get_data2, (gnutls_session_t, gnutls_datum_t *));
	RG_REAL_SLOT(int, gnutls_heartbeat_ping, (gnutls_session_t, size_t, unsigned int, unsigned int));
	RG_REAL_SLOT(int, gnutls_heartbeat_pong, (gnutls_session_t, unsigned int));
	/* transport setters and getters */
	RG_REAL_SLOT(void, gnutls_transport_set_ptr, (gnutls_session_t, gnutls_transport_ptr_t));
	RG_REAL_SLOT(void, gnutls_transport_set_ptr2, (gnutls_session_t, gnutls_transport_ptr_t, gnutls_transport_ptr_t));
	RG_REAL_SLOT(void, gnutls_transport_set_int2, (gnutls_session_t, int, int));
	RG_REAL_SLOT(gnutls_transport_ptr_t, gnutls_transport_get_ptr, (gnutls_session_t));
	RG_REAL_SLOT(void, gnutls_transport_get_ptr2, (gnutls_session_t, gnutls_transport_ptr_t *, gnutls_transport_ptr_t *));
	RG_REAL_SLOT(int, gnutls_transport_get_int, (gnutls_session_t));
	RG_REAL_SLOT(void, gnutls_transport_get_int2, (gnutls_session_t, int *, int *));
	RG_REAL_SLOT(void, gnutls_transport_set_push_function, (gnutls_session_t, gnutls_push_func));
	RG_REAL_SLOT(void, gnutls_transport_set_vec_push_function, (gnutls_session_t, gnutls_vec_push_func));
	RG_REAL_SLOT(void, gnutls_transport_set_pull_function, (gnutls_session_t, gnutls_pull_func));
	RG_REAL_SLOT(void, gnutls_transport_set_pull_timeout_function, (gnutls_session_t, gnutls_pull_timeout_func));
	RG_REAL_SLOT(void, gnutls_transport_set_errno_function, (gnutls_session_t, gnutls_errno_func));
	RG_REAL_SLOT(void, gnutls_transport_set_errno, (gnutls_session_t, int));
	RG_REAL_SLOT(void, gnutls_transport_set_fastopen, (gnutls_session_t, int, struct sockaddr *, socklen_t, unsigned int));
	/* used by the shim itself, not interposed */
	RG_REAL_SLOT(int, gnutls_system_recv_timeout, (gnutls_transport_ptr_t, unsigned int));
	RG_REAL_SLOT(const char *, gnutls_check_version, (const char *));
	RG_REAL_SLOT(gnutls_protocol_t, gnutls_protocol_get_version, (gnutls_session_t));
};

extern struct rg_real_table rg_real;

/* Binds rg_real (once) and decides what the shim does (REKEYGUARD_MODE
 * and the GnuTLS version): RG_MODE_GUARD (every call serialised, the
 * transport outside the lock), RG_MODE_KEYUPDATE (only the key changes
 * serialised, keyupdate.c) or RG_MODE_OFF (pure pass-through). */
enum rg_mode rg_active(void);
/* rg_active() == RG_MODE_GUARD */
bool rg_guarding(void);
/* Sessions get registry entries and the shim's callbacks (guard or
 * keyupdate). */
bool rg_tracking(void);
/* GnuTLS 3.8.2 and later pass the failing direction's transport pointer
 * to the errno function (before: always the receive pointer). */
bool rg_errno_gets_send_ptr(void);
/* "3.7.9" or "unknown". */
const char *rg_gnutls_version(void);
/* The guarded gnutls_session_key_update, for provoke.c. */
int rg_guarded_key_update(gnutls_session_t session, unsigned flags);
/* The interposed names (rg_symbols), for inject.c. */
size_t rg_symbol_count(void);
const char *rg_symbol_name(size_t i);

/* ---- inject.c ----------------------------------------------------------- */

/* True once rekeyguard_inject_activate ran: the library was dlopen()ed
 * into a running process rather than preloaded. */
bool rg_inject_mode(void);
/* fork handlers for the injection's lock, run by registry.c's (which take
 * it before the stripe locks: see the lock order there). */
void rg_inject_fork_prepare(void);
void rg_inject_fork_parent(void);
void rg_inject_fork_child(void);

/* ---- registry.c ------------------------------------------------------ */

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

/* Calls whose retry after GNUTLS_E_AGAIN completes the earlier call. */
enum rg_family {
	RG_FAMILY_QUICK = 0, /* never does transport I/O worth retrying */
	RG_FAMILY_SEND,
	RG_FAMILY_RECV,
	RG_FAMILY_UNCORK,
	RG_FAMILY_HANDSHAKE,
	RG_FAMILY_BYE,
	RG_FAMILY_ALERT,
	RG_FAMILY_KEY_UPDATE,
	RG_FAMILY_RECV_KEY,  /* gnutls_handshake_update_receiving_key: no I/O */
	RG_FAMILY_TICKET,
	RG_FAMILY_HEARTBEAT,
	RG_FAMILY_SESSION_DATA,
};

#define RG_UNCORK_RECORDS 32

struct rg_chunk {
	struct rg_chunk *next;
	size_t cap, len, off;  /* data[off, len) still to be written */
	bool first;            /* first buffer of one push call */
	unsigned char data[];
};

struct rg_session {
	gnutls_session_t session;
	struct rg_session *next;      /* registry chain */
	unsigned refs;                /* calls in flight (atomic) */
	unsigned generation;          /* fork generation the lock belongs to */
	bool dying;                   /* gnutls_deinit is waiting */
	bool no_signal;               /* GNUTLS_NO_SIGNAL: MSG_NOSIGNAL on sendmsg */
	bool proto_checked;           /* TLS version looked at for the notice */
	bool poisoned;                /* forked mid-call: unusable in this child */

	pthread_mutex_t lock;
	pthread_cond_t cond;          /* reader/flusher hand-over, deinit, turns */
	/* Turns (rg_session_lock_turn): counted threads blocked taking the
	 * lock (atomic), and how many of them got it so far (under the lock). */
	unsigned lock_waiters;
	unsigned long lock_turns;
	unsigned cond_waiters;        /* threads in rg_session_wait (under the lock) */

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

	/* Inbound staging. */
	enum rg_want want;
	bool want_continues;          /* the wanting pull continues a partial read */
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
	unsigned char *in_buf;
	size_t in_cap, in_len, in_off;

	/* Outbound queue: every byte GnuTLS pushed, in order, until written. */
	struct rg_chunk *out_head, *out_tail;
	uint64_t out_queued, out_flushed;  /* byte counters, monotonic */
	uint64_t out_pushed;          /* every byte GnuTLS pushed, monotonic */
	bool flusher_active;
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

struct rg_session *rg_registry_create(gnutls_session_t session, unsigned init_flags);
/* Drops the entry of an address gnutls_init hands out again. */
void rg_registry_drop_stale(gnutls_session_t session);
/* Looks up the entry and takes a reference (a call in flight). NULL for
 * sessions the shim does not guard. */
struct rg_session *rg_registry_lookup_ref(gnutls_session_t session);
/* Drops the reference taken by lookup; called with s->lock held. */
void rg_registry_unref_locked(struct rg_session *s);
/* Removes the entry of a session being deinitialised; NULL if none. */
struct rg_session *rg_registry_remove(gnutls_session_t session);
void rg_registry_destroy(struct rg_session *s);
unsigned long rg_registry_guarded_total(void);
/* For rekeyguard-status: a session used through a wrapper but not guarded,
 * and the injection. */
void rg_registry_note_unguarded(gnutls_session_t session);
void rg_registry_mark_injected(void);
/* Creates the stripe locks and installs the fork handlers (once). */
void rg_registry_ensure_init(void);

void rg_session_lock(struct rg_session *s, const char *caller);
/* The session lock taken with turns: a thread coming back with input to
 * deliver (counted) that has to block for it is counted, and a thread that
 * got it at once while one is counted lets it have the lock first, if
 * may_yield (it holds no other session's lock). Returns with the lock
 * held. */
void rg_session_lock_turn(struct rg_session *s, bool may_yield, bool counted,
			  const char *caller);
void rg_session_unlock(struct rg_session *s, const char *caller);
void rg_session_wait(struct rg_session *s, const char *caller);
void rg_session_broadcast(struct rg_session *s);

/* ---- transport.c ----------------------------------------------------- */

/* One call of a wrapped GnuTLS function; wrappers embed it first in a
 * struct holding their arguments. */
struct rg_call {
	enum rg_family family;
	gnutls_session_t session;
	ssize_t (*invoke)(struct rg_call *call);
};

/* Runs the call: pass-through when not guarded or nested, else the
 * guarded loop. */
ssize_t rg_guard_call(struct rg_call *call);

/* ---- keyupdate.c ------------------------------------------------------- */

/* The hook installed on every tracked session in keyupdate mode. */
int rg_keyupdate_hook(gnutls_session_t session, unsigned htype, unsigned when,
		      unsigned incoming, const gnutls_datum_t *msg);
/* A key update on a tracked session (gnutls_session_key_update: the lock
 * is taken after its last push), or a receive-key change (locked). */
ssize_t rg_keyupdate_run(struct rg_session *s, struct rg_call *call);
ssize_t rg_keyupdate_run_locked(struct rg_session *s, struct rg_call *call);
/* Which key-update lock this thread holds, and inside whose
 * gnutls_session_key_update it is (initial-exec: no __tls_get_addr on the
 * hot path). */
struct rg_keyupdate_thread {
	struct rg_session *held;
	struct rg_session *sending;
	gnutls_session_t errno_set;   /* last gnutls_transport_set_errno */
};
extern __thread struct rg_keyupdate_thread rg_ku_thread
	__attribute__((tls_model("initial-exec")));
void rg_keyupdate_drop(void);
void rg_keyupdate_take_after_push(struct rg_session *s);

/* End of every wrapped call, and before the application's push: drops a
 * key-update lock this thread still holds. */
static inline void rg_keyupdate_call_end(void)
{
	if (__builtin_expect(rg_ku_thread.held != NULL, 0))
		rg_keyupdate_drop();
}
#define rg_keyupdate_before_io rg_keyupdate_call_end

/* After the application's push, inside a key update: take the lock for
 * the key change that follows. */
static inline void rg_keyupdate_after_push(struct rg_session *s, ssize_t ret)
{
	if (__builtin_expect(rg_ku_thread.sending == s, 0) && ret >= 0)
		rg_keyupdate_take_after_push(s);
}

/* What the exported wrappers need to go straight to GnuTLS without
 * building a call: set by the binding (interpose.c), then read-only. */
struct rg_hot {
	bool bound;          /* release-stored once the binding is done */
	bool direct;         /* mode keyupdate or off, no provocation */
};
extern struct rg_hot rg_hot;

/* True when a call of this family goes straight to GnuTLS (then
 * rg_keyupdate_call_end after it). */
static inline bool rg_call_direct(enum rg_family family)
{
	return __atomic_load_n(&rg_hot.bound, __ATOMIC_ACQUIRE) && rg_hot.direct &&
	       family != RG_FAMILY_KEY_UPDATE && family != RG_FAMILY_RECV_KEY;
}

/* ---- provoke.c --------------------------------------------------------- */

/* Runs a send through dispatch and, after every REKEYGUARD_PROVOKE_REKEY
 * records, starts a key update on the session. */
ssize_t rg_provoke_send(struct rg_call *call, ssize_t (*dispatch)(struct rg_call *));

/* Once, from the binding: the per-thread buffer cache's key. */
void rg_transport_init(void);

/* Installs the shim's callbacks on a new guarded session. */
void rg_transport_install(struct rg_session *s);
/* keyupdate mode: a tracked session's entry (GnuTLS's send pointer). */
struct rg_session *rg_transport_keyupdate_entry(gnutls_session_t session);
/* After the application set its transport pointers (keyupdate mode keeps
 * GnuTLS's receive pointer the application's). Called with s->lock. */
void rg_transport_ptrs_changed(struct rg_session *s);
/* Re-installs GnuTLS's view of the transport after the application
 * changed it (pull with or without pull_timeout). Called with s->lock. */
void rg_transport_refresh(struct rg_session *s);
/* Gives the session back to GnuTLS's own transport handling (the shim
 * stops guarding it). Called with s->lock. */
void rg_transport_release(struct rg_session *s);

/* Application errno capture while its transport runs outside the lock:
 * returns true when gnutls_transport_set_errno was taken for the shim. */
bool rg_transport_capture_errno(gnutls_session_t session, int err);
uint64_t rg_monotonic_ns(void);

/* The entry whose lock this thread holds inside a real call, if any. */
struct rg_session *rg_transport_current(void);

/* The one-time notice, once a TLS 1.3 session is protected. */
void rg_notice_protected(gnutls_session_t session);

/* Discards queued bytes no thread is writing; returns how many. */
size_t rg_transport_discard_queued(struct rg_session *s);

#endif
