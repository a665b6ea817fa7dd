/*
 * binding.h — GnuTLS's own definitions of the interposed functions, and
 * what the library decided to do in this process (binding.c).
 */
#ifndef RG_BINDING_H
#define RG_BINDING_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "call.h"
#include "config.h"
#include "symbols.h"

/* Each real function lives in a union with void * so dlsym's result is
 * stored without casting a data pointer to a function pointer. One slot
 * per line of symbols.def. */
#define RG_REAL_SLOT(ret, name, params) union { void *sym; ret (*fn) params; } name;

struct rg_real_table {
#define RG_GUARDED(req, type, name, family, TYPES, ...)                            \
	RG_REAL_SLOT(type, name, (gnutls_session_t RG_UNPAREN TYPES))
#define RG_WRITTEN(req, type, name, params) RG_REAL_SLOT(type, name, params)
#define RG_USED(req, type, name, params) RG_REAL_SLOT(type, name, params)
#include "symbols.def"
#undef RG_GUARDED
#undef RG_WRITTEN
#undef RG_USED
};

extern struct rg_real_table rg_real;

/* Binds rg_real (once) and decides what the library does (REKEYGUARD_MODE
 * and the GnuTLS version): RG_MODE_GUARD (every call serialised, the
 * transport outside the lock), RG_MODE_KEYUPDATE (only the key changes
 * serialised, keyupdate.c) or RG_MODE_OFF (pure pass-through). */
enum rg_mode rg_active(void);
/* rg_active() == RG_MODE_GUARD */
bool rg_guarding(void);
/* Sessions get registry entries and the shim's callbacks (guard or
 * keyupdate). */
bool rg_tracking(void);
/* GnuTLS passes the failing direction's transport pointer to the errno
 * function (gnutls-mirror.h M3). */
bool rg_errno_gets_send_ptr(void);
/* "3.7.9" or "unknown". */
const char *rg_gnutls_version(void);
/* The interposed names (symbols.def), for late loading. */
size_t rg_symbol_count(void);
const char *rg_symbol_name(size_t i);
/* Late loading: bind from the global scope (the library was dlopen()ed
 * with its own local scope, GnuTLS's definitions are the global ones).
 * Called before the first binding. */
void rg_binding_use_global_scope(void);

/* What the exported wrappers need to go straight to GnuTLS without
 * building a call: set by the binding, then read-only. */
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

#endif
