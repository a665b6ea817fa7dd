/*
 * interpose.c — symbol lookup and the exported wrappers.
 *
 * Owns: rg_real (the next definition of every interposed GnuTLS function,
 * bound once, lazily, under pthread_once — never in a constructor, and
 * never by dlopen'ing GnuTLS), the guard/pass-through decision, and the
 * exported functions.
 *
 * Every wrapped function has three layers (cwrap style): real_<fn> calls
 * the next definition, guard_<fn> holds the logic, and the exported <fn>
 * only forwards. The record/handshake functions share one shape, generated
 * by RG_GUARDED_n below; lifecycle and transport functions are written out.
 *
 * Invariants: a symbol that resolves back into this library is treated as
 * missing (no recursion); a missing optional symbol (newer GnuTLS only)
 * makes its wrapper return GNUTLS_E_UNIMPLEMENTED_FEATURE; a missing
 * required symbol turns guarding off with one error line.
 */
#include "rekeyguard.h"

#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

struct rg_real_table rg_real;

static pthread_once_t rg_bind_once = PTHREAD_ONCE_INIT;
static enum rg_mode rg_active_mode = RG_MODE_OFF;
static bool rg_errno_send_ptr;  /* see rg_errno_gets_send_ptr */
static const char *rg_version_string = "unknown";

#define RG_SYM(name, required) { #name, offsetof(struct rg_real_table, name), required }
static const struct rg_symbol {
	const char *name;
	size_t offset;
	bool required;
} rg_symbols[] = {
	RG_SYM(gnutls_init, true),
	RG_SYM(gnutls_deinit, true),
	RG_SYM(gnutls_record_send, true),
	RG_SYM(gnutls_record_send2, false),
	RG_SYM(gnutls_record_send_range, false),
	RG_SYM(gnutls_record_send_file, false),
	RG_SYM(gnutls_record_send_early_data, false),
	RG_SYM(gnutls_record_recv, true),
	RG_SYM(gnutls_record_recv_seq, true),
	RG_SYM(gnutls_record_recv_packet, false),
	RG_SYM(gnutls_record_recv_early_data, false),
	RG_SYM(gnutls_record_uncork, true),
	RG_SYM(gnutls_record_check_pending, true),
	RG_SYM(gnutls_record_get_direction, true),
	RG_SYM(gnutls_record_discard_queued, false),
	RG_SYM(gnutls_record_set_timeout, true),
	RG_SYM(gnutls_handshake, true),
	RG_SYM(gnutls_reauth, false),
	RG_SYM(gnutls_rehandshake, true),
	RG_SYM(gnutls_bye, true),
	RG_SYM(gnutls_alert_send, true),
	RG_SYM(gnutls_alert_send_appropriate, true),
	RG_SYM(gnutls_session_key_update, false),
	RG_SYM(gnutls_handshake_update_receiving_key, false),
	RG_SYM(gnutls_handshake_set_hook_function, true),
	RG_SYM(gnutls_session_ticket_send, false),
	RG_SYM(gnutls_session_get_data, true),
	RG_SYM(gnutls_session_get_data2, true),
	RG_SYM(gnutls_heartbeat_ping, false),
	RG_SYM(gnutls_heartbeat_pong, false),
	RG_SYM(gnutls_transport_set_ptr, true),
	RG_SYM(gnutls_transport_set_ptr2, true),
	RG_SYM(gnutls_transport_set_int2, true),
	RG_SYM(gnutls_transport_get_ptr, true),
	RG_SYM(gnutls_transport_get_ptr2, true),
	RG_SYM(gnutls_transport_get_int, true),
	RG_SYM(gnutls_transport_get_int2, true),
	RG_SYM(gnutls_transport_set_push_function, true),
	RG_SYM(gnutls_transport_set_vec_push_function, true),
	RG_SYM(gnutls_transport_set_pull_function, true),
	RG_SYM(gnutls_transport_set_pull_timeout_function, true),
	RG_SYM(gnutls_transport_set_errno_function, true),
	RG_SYM(gnutls_transport_set_errno, true),
	RG_SYM(gnutls_transport_set_fastopen, false),
	RG_SYM(gnutls_system_recv_timeout, true),
	RG_SYM(gnutls_check_version, true),
	RG_SYM(gnutls_protocol_get_version, true),
};

size_t rg_symbol_count(void)
{
	return sizeof rg_symbols / sizeof rg_symbols[0];
}

const char *rg_symbol_name(size_t i)
{
	return rg_symbols[i].name;
}

/* Binds one symbol; false if it is missing or resolves back to us.
 * Preloaded, the next definition after this library is GnuTLS's; injected
 * (dlopen'ed with its own local scope), GnuTLS's is the global one. */
static bool rg_bind_symbol(const struct rg_symbol *sym, const Dl_info *self)
{
	void **slot = (void **)((char *)&rg_real + sym->offset);
	void *found = dlsym(rg_inject_mode() ? RTLD_DEFAULT : RTLD_NEXT, sym->name);
	if (found == NULL) {
		/* GnuTLS loaded with RTLD_LOCAL (a dlopen'ed plugin): not in the
		 * global scope, but loaded; never load it ourselves. */
		void *h = dlopen("libgnutls.so.30", RTLD_LAZY | RTLD_NOLOAD);
		if (h != NULL) {
			found = dlsym(h, sym->name);
			dlclose(h);
		}
	}
	Dl_info info;
	if (found != NULL && dladdr(found, &info) != 0 && info.dli_fbase == self->dli_fbase) {
		rg_log(RG_LOG_ERROR, "%s resolves to rekeyguard itself; passing through",
		       sym->name);
		found = NULL;
	}
	*slot = found;
	return found != NULL;
}

static void rg_bind(void)
{
	const struct rg_config *config = rg_config_get();
	rg_transport_init();
	Dl_info self;
	memset(&self, 0, sizeof self);
	dladdr(&rg_real, &self);

	const char *missing = NULL;
	for (size_t i = 0; i < sizeof rg_symbols / sizeof rg_symbols[0]; i++) {
		if (!rg_bind_symbol(&rg_symbols[i], &self) && rg_symbols[i].required && missing == NULL)
			missing = rg_symbols[i].name;
	}
	if (rg_real.gnutls_check_version.fn != NULL) {
		const char *v = rg_real.gnutls_check_version.fn(NULL);
		if (v != NULL)
			rg_version_string = v;
	}

	if (missing != NULL) {
		/* GnuTLS not loaded at all: stay silent, as in any other
		 * program; loaded but odd: say why protection is off. */
		if (rg_real.gnutls_init.fn != NULL)
			rg_log(RG_LOG_ERROR, "GnuTLS %s lacks %s; protection is off",
			       rg_version_string, missing);
		rg_active_mode = RG_MODE_OFF;
		return;
	}
	/* GnuTLS 3.8.2 "lib: Use correct transport getting error number". */
	rg_errno_send_ptr = rg_real.gnutls_check_version.fn("3.8.2") != NULL;
	rg_active_mode = config->mode;
	if (config->mode == RG_MODE_AUTO) {
		/* GnuTLS 3.8.11 reworked key updates (merge request 1990):
		 * sending and receiving are safe together, the key changes of
		 * the two directions still are not (keyupdate.c). */
		bool reworked = rg_real.gnutls_check_version.fn("3.8.11") != NULL;
		rg_active_mode = reworked ? RG_MODE_KEYUPDATE : RG_MODE_GUARD;
	}
	if (config->mode == RG_MODE_KEYUPDATE && rg_real.gnutls_check_version.fn("3.8.11") == NULL)
		rg_log(RG_LOG_WARN, "REKEYGUARD_MODE=keyupdate does not protect GnuTLS %s: before "
		       "3.8.11 every call races a key update (REKEYGUARD_MODE=guard or auto does)",
		       rg_version_string);
	rg_log(RG_LOG_DEBUG, "GnuTLS %s, REKEYGUARD_MODE=%s: %s", rg_version_string,
	       rg_mode_name(config->mode), rg_mode_name(rg_active_mode));
}

struct rg_hot rg_hot;

static void rg_bind_once_run(void)
{
	rg_bind();
	rg_hot.direct = rg_active_mode != RG_MODE_GUARD && rg_config_get()->provoke_every == 0;
	/* Released last: rg_call_direct and rg_active read the rest after it. */
	__atomic_store_n(&rg_hot.bound, true, __ATOMIC_RELEASE);
}

enum rg_mode rg_active(void)
{
	if (__builtin_expect(!__atomic_load_n(&rg_hot.bound, __ATOMIC_ACQUIRE), 0))
		pthread_once(&rg_bind_once, rg_bind_once_run);
	return rg_active_mode;
}

bool rg_tracking(void)
{
	enum rg_mode mode = rg_active();
	return mode == RG_MODE_GUARD || mode == RG_MODE_KEYUPDATE;
}

bool rg_guarding(void)
{
	return rg_active() == RG_MODE_GUARD;
}

bool rg_errno_gets_send_ptr(void)
{
	return rg_errno_send_ptr;
}

const char *rg_gnutls_version(void)
{
	return rg_version_string;
}

/* ---- record, handshake and alert functions ----------------------------- */

/* RG_GUARDED_n(type, name, family, n argument type/name pairs after the
 * session) defines real_<name>, guard_<name> and the exported <name>.
 * The lists are passed in parentheses and unwrapped by RG_UNPAREN. */
#define RG_UNPAREN(...) __VA_ARGS__
#define RG_GUARDED_BODY(type, name, family, FIELDS, PARAMS, ARGS, CALL_ARGS)       \
	struct rg_args_##name { struct rg_call call; RG_UNPAREN FIELDS };          \
	static type real_##name(gnutls_session_t session RG_UNPAREN PARAMS)       \
	{                                                                          \
		if (rg_real.name.fn == NULL)                                       \
			return GNUTLS_E_UNIMPLEMENTED_FEATURE;                     \
		return rg_real.name.fn(session RG_UNPAREN ARGS);                   \
	}                                                                          \
	static ssize_t rg_invoke_##name(struct rg_call *call)                      \
	{                                                                          \
		struct rg_args_##name *a = (struct rg_args_##name *)call;          \
		(void)a;                                                           \
		return real_##name(call->session RG_UNPAREN CALL_ARGS);            \
	}                                                                          \
	static type guard_##name(gnutls_session_t session RG_UNPAREN PARAMS)      \
	{                                                                          \
		if (rg_call_direct(family)) {                                      \
			type ret = real_##name(session RG_UNPAREN ARGS);           \
			rg_keyupdate_call_end();                                   \
			return ret;                                                \
		}                                                                  \
		struct rg_args_##name a = { { family, session, rg_invoke_##name }  \
					    RG_UNPAREN ARGS };                     \
		return (type)rg_guard_call(&a.call);                               \
	}                                                                          \
	RG_EXPORT type name(gnutls_session_t session RG_UNPAREN PARAMS)            \
	{                                                                          \
		return guard_##name(session RG_UNPAREN ARGS);                      \
	}

#define RG_GUARDED_0(type, name, family)                                          \
	RG_GUARDED_BODY(type, name, family, (), (), (), ())
#define RG_GUARDED_1(type, name, family, T1, a1)                                  \
	RG_GUARDED_BODY(type, name, family, (T1 a1;), (, T1 a1), (, a1), (, a->a1))
#define RG_GUARDED_2(type, name, family, T1, a1, T2, a2)                          \
	RG_GUARDED_BODY(type, name, family, (T1 a1; T2 a2;), (, T1 a1, T2 a2),     \
			(, a1, a2), (, a->a1, a->a2))
#define RG_GUARDED_3(type, name, family, T1, a1, T2, a2, T3, a3)                  \
	RG_GUARDED_BODY(type, name, family, (T1 a1; T2 a2; T3 a3;),                \
			(, T1 a1, T2 a2, T3 a3), (, a1, a2, a3), (, a->a1, a->a2, a->a3))
#define RG_GUARDED_4(type, name, family, T1, a1, T2, a2, T3, a3, T4, a4)          \
	RG_GUARDED_BODY(type, name, family, (T1 a1; T2 a2; T3 a3; T4 a4;),         \
			(, T1 a1, T2 a2, T3 a3, T4 a4), (, a1, a2, a3, a4),           \
			(, a->a1, a->a2, a->a3, a->a4))

/* Records: a retried send completes the earlier send (owed result). */
RG_GUARDED_2(ssize_t, gnutls_record_send, RG_FAMILY_SEND, const void *, data, size_t, data_size)
RG_GUARDED_4(ssize_t, gnutls_record_send2, RG_FAMILY_SEND, const void *, data, size_t, data_size,
	     size_t, pad, unsigned, flags)
RG_GUARDED_3(ssize_t, gnutls_record_send_range, RG_FAMILY_SEND, const void *, data,
	     size_t, data_size, const gnutls_range_st *, range)
RG_GUARDED_3(ssize_t, gnutls_record_send_file, RG_FAMILY_SEND, int, fd, off_t *, offset,
	     size_t, count)
/* Early data is only buffered here (sent by the handshake, taken from
 * what the handshake received: GnuTLS 3.7.9 lib/record.c): no transport
 * I/O, no read-ahead. */
RG_GUARDED_2(ssize_t, gnutls_record_send_early_data, RG_FAMILY_QUICK, const void *, data,
	     size_t, length)
RG_GUARDED_2(ssize_t, gnutls_record_recv, RG_FAMILY_RECV, void *, data, size_t, data_size)
RG_GUARDED_3(ssize_t, gnutls_record_recv_seq, RG_FAMILY_RECV, void *, data, size_t, data_size,
	     unsigned char *, seq)
RG_GUARDED_1(ssize_t, gnutls_record_recv_packet, RG_FAMILY_RECV, gnutls_packet_t *, packet)
RG_GUARDED_2(ssize_t, gnutls_record_recv_early_data, RG_FAMILY_QUICK, void *, data,
	     size_t, data_size)
RG_GUARDED_1(int, gnutls_record_uncork, RG_FAMILY_UNCORK, unsigned int, flags)
/* Handshakes (initial, TLS 1.2 renegotiation, TLS 1.3 post-handshake auth). */
RG_GUARDED_0(int, gnutls_handshake, RG_FAMILY_HANDSHAKE)
RG_GUARDED_1(int, gnutls_reauth, RG_FAMILY_HANDSHAKE, unsigned int, flags)
RG_GUARDED_0(int, gnutls_rehandshake, RG_FAMILY_HANDSHAKE)
/* Closing and alerts. */
RG_GUARDED_1(int, gnutls_bye, RG_FAMILY_BYE, gnutls_close_request_t, how)
RG_GUARDED_2(int, gnutls_alert_send, RG_FAMILY_ALERT, gnutls_alert_level_t, level,
	     gnutls_alert_description_t, desc)
RG_GUARDED_1(int, gnutls_alert_send_appropriate, RG_FAMILY_ALERT, int, err)
/* Key changes and post-handshake messages. */
RG_GUARDED_1(int, gnutls_session_key_update, RG_FAMILY_KEY_UPDATE, unsigned, flags)
/* GnuTLS 3.8.11 and later: a receive-side key change without a message. */
RG_GUARDED_0(int, gnutls_handshake_update_receiving_key, RG_FAMILY_RECV_KEY)
RG_GUARDED_2(int, gnutls_session_ticket_send, RG_FAMILY_TICKET, unsigned, nr, unsigned, flags)

/* For provoke.c: the guarded key update, reached without the dynamic
 * linker (when injected, the exported name would bind to GnuTLS). */
int rg_guarded_key_update(gnutls_session_t session, unsigned flags)
{
	return guard_gnutls_session_key_update(session, flags);
}
/* TLS 1.3 clients may wait for a session ticket here. */
RG_GUARDED_2(int, gnutls_session_get_data, RG_FAMILY_SESSION_DATA, void *, session_data,
	     size_t *, session_data_size)

/* gnutls_session_get_data2 is written out: the guarded loop may call the
 * real function again after a wait (see rg_guard_run), and the datum an
 * earlier attempt filled is freed first. GnuTLS allocates with libc's
 * malloc (its allocator cannot be replaced since 3.3.0, lib/global.c
 * gnutls_global_set_mem_functions). */
struct rg_args_gnutls_session_get_data2 {
	struct rg_call call;
	gnutls_datum_t *data;
	bool filled;                  /* an earlier attempt set *data */
};

static int real_gnutls_session_get_data2(gnutls_session_t session, gnutls_datum_t *data)
{
	if (rg_real.gnutls_session_get_data2.fn == NULL)
		return GNUTLS_E_UNIMPLEMENTED_FEATURE;
	return rg_real.gnutls_session_get_data2.fn(session, data);
}

static ssize_t rg_invoke_gnutls_session_get_data2(struct rg_call *call)
{
	struct rg_args_gnutls_session_get_data2 *a = (struct rg_args_gnutls_session_get_data2 *)call;
	if (a->filled) {
		free(a->data->data);
		a->data->data = NULL;
		a->data->size = 0;
	}
	int ret = real_gnutls_session_get_data2(call->session, a->data);
	a->filled = ret >= 0;
	return ret;
}

static int guard_gnutls_session_get_data2(gnutls_session_t session, gnutls_datum_t *data)
{
	struct rg_args_gnutls_session_get_data2 a = {
		{ RG_FAMILY_SESSION_DATA, session, rg_invoke_gnutls_session_get_data2 }, data, false
	};
	return (int)rg_guard_call(&a.call);
}

RG_EXPORT int gnutls_session_get_data2(gnutls_session_t session, gnutls_datum_t *data)
{
	return guard_gnutls_session_get_data2(session, data);
}

RG_GUARDED_3(int, gnutls_heartbeat_ping, RG_FAMILY_HEARTBEAT, size_t, data_size,
	     unsigned int, max_tries, unsigned int, flags)
RG_GUARDED_1(int, gnutls_heartbeat_pong, RG_FAMILY_HEARTBEAT, unsigned int, flags)

/* ---- short calls: lock, real call, unlock ------------------------------ */

/* Set while the real gnutls_init runs on this thread: GnuTLS sets its
 * default transport through the exported setters, which must reach GnuTLS
 * even if a stale entry exists for the address being handed out. */
static __thread bool rg_in_init __attribute__((tls_model("initial-exec")));

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
	struct rg_session *current = rg_transport_current();
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
		rg_session_lock(s, __func__);
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
	rg_session_unlock(s, __func__);
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
			   rg_transport_discard_queued(s);
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

/* ---- lifecycle ----------------------------------------------------------- */

static int real_gnutls_init(gnutls_session_t *session, unsigned int flags)
{
	if (rg_real.gnutls_init.fn == NULL)
		return GNUTLS_E_UNIMPLEMENTED_FEATURE;
	return rg_real.gnutls_init.fn(session, flags);
}

static int guard_gnutls_init(gnutls_session_t *session, unsigned int flags)
{
	bool guard = rg_tracking();
	rg_in_init = true;
	int ret = real_gnutls_init(session, flags);
	rg_in_init = false;
	if (ret < 0 || !guard)
		return ret;
	/* An address handed out again always starts fresh. */
	rg_registry_drop_stale(*session);
	/* DTLS has no TLS 1.3 key update in GnuTLS: left alone. */
	if (flags & GNUTLS_DATAGRAM)
		return ret;
	struct rg_session *s = rg_registry_create(*session, flags);
	if (s == NULL) {
		rg_log(RG_LOG_ERROR, "out of memory: a new session is not guarded");
		return ret;
	}
	rg_transport_install(s);
	if (rg_active() == RG_MODE_KEYUPDATE)
		rg_real.gnutls_handshake_set_hook_function.fn(*session, GNUTLS_HANDSHAKE_ANY,
							      GNUTLS_HOOK_BOTH, rg_keyupdate_hook);
	return ret;
}

RG_EXPORT int gnutls_init(gnutls_session_t *session, unsigned int flags)
{
	return guard_gnutls_init(session, flags);
}

static void real_gnutls_deinit(gnutls_session_t session)
{
	if (rg_real.gnutls_deinit.fn != NULL)
		rg_real.gnutls_deinit.fn(session);
}

static void guard_gnutls_deinit(gnutls_session_t session)
{
	struct rg_session *s = rg_tracking() ? rg_registry_remove(session) : NULL;
	if (s == NULL) {
		real_gnutls_deinit(session);
		return;
	}
	if (rg_transport_current() == s) {
		/* Deinit from inside a call on the same session (a callback):
		 * the outer call still uses the entry, so it is left behind. */
		rg_log(RG_LOG_WARN, "gnutls_deinit called inside a call on the same session");
		real_gnutls_deinit(session);
		return;
	}
	rg_session_lock(s, __func__);
	s->dying = true;
	while (__atomic_load_n(&s->refs, __ATOMIC_ACQUIRE) > 0)
		rg_session_wait(s, __func__);
	/* A session forked mid-call: its GnuTLS state is half updated (freeing
	 * it could free memory twice); only the entry goes. */
	if (!s->poisoned)
		real_gnutls_deinit(session);
	rg_session_unlock(s, __func__);
	rg_registry_destroy(s);
}

RG_EXPORT void gnutls_deinit(gnutls_session_t session)
{
	guard_gnutls_deinit(session);
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
 * API, not passed to ANY hooks) goes to GnuTLS itself, and that session's
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
	if (rg_guarding() && rg_transport_capture_errno(session, err))
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
		rg_session_lock(s, __func__);
		while (__atomic_load_n(&s->refs, __ATOMIC_ACQUIRE) > 0)
			rg_session_wait(s, __func__);
		rg_transport_release(s);
		rg_session_unlock(s, __func__);
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

/* ---- rekeyguard's own API ----------------------------------------------- */

RG_EXPORT const char *rekeyguard_version(void)
{
	return REKEYGUARD_VERSION;
}

RG_EXPORT unsigned long rekeyguard_sessions_guarded(void)
{
	return rg_registry_guarded_total();
}

RG_EXPORT const char *rekeyguard_active_mode(void)
{
	return rg_mode_name(rg_active());
}
