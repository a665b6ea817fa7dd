/*
 * wrappers.c — the exported record, handshake, alert and key-update
 * functions, and the session lifecycle.
 *
 * Every wrapped function has three layers (cwrap style): real_<fn> calls
 * GnuTLS's definition (rg_real, binding.c), guard_<fn> holds the logic,
 * and the exported <fn> only forwards. The functions symbols.def lists as
 * RG_GUARDED_n are generated here from that list: guard_<fn> goes
 * straight to GnuTLS when rg_call_direct says so (keyupdate or off mode),
 * else builds a struct rg_call holding the arguments and runs it through
 * rg_guard_call (guard.c). The rest are written out below (lifecycle) and
 * in wrappers-short.c (calls that only look at or record into the entry).
 */
#include "wrappers.h"

#include <stdlib.h>

#include "binding.h"
#include "callbacks.h"
#include "config.h"
#include "guard.h"
#include "keyupdate.h"
#include "locks.h"
#include "registry.h"

RG_THREAD_LOCAL bool rg_in_init;

/* Declared by GnuTLS 3.8.11 and later only. */
int gnutls_handshake_update_receiving_key(gnutls_session_t session);

/* ---- generated from symbols.def: record, handshake, alert and key-update
 * calls ------------------------------------------------------------------ */

/* RG_GUARDED(...) (symbols.h) defines real_<name>, guard_<name> and the
 * exported <name>. */
#define RG_GUARDED(req, type, name, family, TYPES, FIELDS, PARAMS, ARGS, CALL_ARGS)   \
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
#define RG_WRITTEN(req, type, name, params)
#define RG_USED(req, type, name, params)
#include "symbols.def"
#undef RG_GUARDED
#undef RG_WRITTEN
#undef RG_USED

/* gnutls_session_get_data2 is written out: the guarded loop may call the
 * real function again after a wait (guard.c, gnutls-mirror.h M10), and the datum an
 * earlier attempt filled is freed first. GnuTLS allocates with libc's
 * malloc (gnutls-mirror.h M11). */
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

/* ---- lifecycle ------------------------------------------------------------ */

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
	if (rg_lock_thread.in_call == s) {
		/* Deinit from inside a call on the same session (a callback):
		 * the outer call still uses the entry, so it is left behind. */
		rg_log(RG_LOG_WARN, "gnutls_deinit called inside a call on the same session");
		real_gnutls_deinit(session);
		return;
	}
	rg_session_lock(s);
	s->dying = true;
	while (__atomic_load_n(&s->refs, __ATOMIC_ACQUIRE) > 0)
		rg_session_wait(s);
	/* A session forked mid-call: its GnuTLS state is half updated (freeing
	 * it could free memory twice); only the entry goes. */
	if (!s->poisoned)
		real_gnutls_deinit(session);
	rg_registry_retire_locked(s);
	rg_session_unlock(s);
	rg_registry_destroy(s);
}

RG_EXPORT void gnutls_deinit(gnutls_session_t session)
{
	guard_gnutls_deinit(session);
}
