/*
 * binding.c — binding the real GnuTLS functions, and the mode.
 *
 * Owns: rg_real (the next definition of every function in symbols.def,
 * bound once, lazily, under pthread_once — never in a constructor, and
 * never by dlopen'ing GnuTLS) and the decision what the library does in
 * this process (guard, keyupdate or off).
 *
 * Invariants: a symbol that resolves back into this library is treated as
 * missing (no recursion); a missing optional symbol (newer GnuTLS only)
 * makes its wrapper return GNUTLS_E_UNIMPLEMENTED_FEATURE; a missing
 * required symbol turns guarding off with one error line.
 */
#include "binding.h"

#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

#include "buffers.h"
#include "gnutls-mirror.h"

struct rg_real_table rg_real;

static pthread_once_t rg_bind_once = PTHREAD_ONCE_INIT;
static enum rg_mode rg_active_mode = RG_MODE_OFF;
static bool rg_errno_send_ptr;  /* see rg_errno_gets_send_ptr */
static const char *rg_version_string = "unknown";
static bool rg_global_scope;  /* see rg_binding_use_global_scope */

static const struct rg_symbol {
	const char *name;
	size_t offset;
	bool required;
} rg_symbols[] = {
#define RG_SYMBOL_ENTRY(req, name) { #name, offsetof(struct rg_real_table, name), req },
#define RG_GUARDED(req, type, name, ...) RG_SYMBOL_ENTRY(req, name)
#define RG_WRITTEN(req, type, name, params) RG_SYMBOL_ENTRY(req, name)
#define RG_USED(req, type, name, params) RG_SYMBOL_ENTRY(req, name)
#include "symbols.def"
#undef RG_GUARDED
#undef RG_WRITTEN
#undef RG_USED
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
	void *found = dlsym(rg_global_scope ? RTLD_DEFAULT : RTLD_NEXT, sym->name);
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
	rg_buffers_init();
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
	/* gnutls-mirror.h M3 */
	rg_errno_send_ptr = rg_real.gnutls_check_version.fn(RG_GNUTLS_ERRNO_SEND_PTR) != NULL;
	rg_active_mode = config->mode;
	if (config->mode == RG_MODE_AUTO) {
		/* gnutls-mirror.h M14: sending and receiving are safe
		 * together, the key changes of the two directions still are
		 * not (keyupdate.c). */
		bool reworked = rg_real.gnutls_check_version.fn(REKEYGUARD_GNUTLS_REWORKED) != NULL;
		rg_active_mode = reworked ? RG_MODE_KEYUPDATE : RG_MODE_GUARD;
	}
	if (config->mode == RG_MODE_KEYUPDATE &&
	    rg_real.gnutls_check_version.fn(REKEYGUARD_GNUTLS_REWORKED) == NULL)
		rg_log(RG_LOG_WARN, "REKEYGUARD_MODE=keyupdate does not protect GnuTLS %s: before "
		       REKEYGUARD_GNUTLS_REWORKED " every call races a key update "
		       "(REKEYGUARD_MODE=guard or auto does)", rg_version_string);
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

void rg_binding_use_global_scope(void)
{
	rg_global_scope = true;
}
