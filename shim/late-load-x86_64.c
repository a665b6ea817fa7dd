/*
 * late-load-x86_64.c — late loading into a running process
 * (rekeyguard-inject), x86-64; late-load-stub.c elsewhere.
 *
 * Owns: rekeyguard_inject_activate(), which rekeyguard-inject calls right
 * after it dlopen()ed the library into a process that was started without
 * LD_PRELOAD. Nothing interposes GnuTLS then, so the activation points the
 * GOT slots (JUMP_SLOT and GLOB_DAT relocations) that name an interposed
 * GnuTLS function, in every loaded object except libgnutls and this
 * library, at the shim's wrappers; it also points every `dlopen` slot at a
 * wrapper that patches the objects loaded later.
 *
 * Invariants: one atomic pointer store per slot; a slot in a RELRO segment
 * is made writable for the store and read-only again; the library never
 * forks or execs and is linked -z nodelete, so it can never be unloaded;
 * activating twice patches nothing twice. Sessions that existed before the
 * activation are not in the registry, so the wrappers pass them straight
 * to GnuTLS and never touch them. libgnutls's calls to its own functions
 * keep going straight to GnuTLS, which the nested-call rule does anyway.
 */
#if !defined(__x86_64__)
#error "late loading is implemented for x86-64; the Makefile builds late-load-stub.c elsewhere"
#endif

#include "late-load.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "binding.h"
#include "config.h"
#include "locks.h"
#include "status.h"

#define RG_INJECT_MAX_NAMES 64

struct rg_inject_target {
	const char *name;
	void *wrapper;           /* the shim's exported function */
};

struct rg_inject_state {
	struct rg_inject_target targets[RG_INJECT_MAX_NAMES];
	unsigned count;
	void *self_base;         /* this library's load address */
	unsigned long slots;     /* patched in this pass */
	unsigned objects;
};

#define RG_R_JUMP_SLOT R_X86_64_JUMP_SLOT
#define RG_R_GLOB_DAT R_X86_64_GLOB_DAT

static struct rg_inject_state rg_inject;
static void *(*rg_inject_real_dlopen)(const char *, int);
static bool rg_injected;      /* under rg_inject_lock */

static void *rg_inject_dlopen(const char *file, int mode);

/* The wrappers to install: every interposed name this library defines,
 * plus dlopen. Looked up through this library's own handle. */
static bool rg_inject_collect(struct rg_inject_state *st)
{
	Dl_info self;
	if (dladdr(&rg_inject, &self) == 0 || self.dli_fname == NULL)
		return false;
	st->self_base = self.dli_fbase;
	void *handle = dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD);
	if (handle == NULL)
		return false;
	st->count = 0;
	for (size_t i = 0; i < rg_symbol_count() && st->count < RG_INJECT_MAX_NAMES - 1; i++) {
		const char *name = rg_symbol_name(i);
		void *wrapper = dlsym(handle, name);
		Dl_info info;
		if (wrapper != NULL && dladdr(wrapper, &info) != 0 && info.dli_fbase == st->self_base)
			st->targets[st->count++] = (struct rg_inject_target){ name, wrapper };
	}
	dlclose(handle);   /* only drops the NOLOAD reference */
	union { void *sym; void *(*fn)(const char *, int); } real = { dlsym(RTLD_DEFAULT, "dlopen") };
	union { void *(*fn)(const char *, int); void *sym; } ours = { rg_inject_dlopen };
	rg_inject_real_dlopen = real.fn;
	if (real.sym != NULL)
		st->targets[st->count++] = (struct rg_inject_target){ "dlopen", ours.sym };
	return st->count > 1;
}

static void *rg_inject_wrapper_for(const struct rg_inject_state *st, const char *name)
{
	if (name[0] != 'g' && name[0] != 'd')
		return NULL;
	for (unsigned i = 0; i < st->count; i++)
		if (strcmp(st->targets[i].name, name) == 0)
			return st->targets[i].wrapper;
	return NULL;
}

/* Stores `value` in the slot, making a RELRO page writable meanwhile. */
static bool rg_inject_store(void **slot, void *value, bool relro)
{
	if (__atomic_load_n(slot, __ATOMIC_ACQUIRE) == value)
		return false;
	long page_size = sysconf(_SC_PAGESIZE);
	void *page = (void *)((uintptr_t)slot & ~(uintptr_t)(page_size - 1));
	if (relro && mprotect(page, page_size, PROT_READ | PROT_WRITE) != 0) {
		rg_log(RG_LOG_ERROR, "inject: cannot make a GOT page writable: %m");
		return false;
	}
	__atomic_store_n(slot, value, __ATOMIC_RELEASE);
	if (relro)
		mprotect(page, page_size, PROT_READ);
	return true;
}

/* A d_ptr of the dynamic section: glibc has relocated most of them to
 * absolute addresses, except in read-only dynamic sections (vdso). */
static uintptr_t rg_inject_dynptr(const struct dl_phdr_info *info, uintptr_t ptr)
{
	return ptr < info->dlpi_addr ? ptr + info->dlpi_addr : ptr;
}

static void rg_inject_relocs(struct rg_inject_state *st, const struct dl_phdr_info *info,
			     const ElfW(Rela) *rela, size_t size, const ElfW(Sym) *symtab,
			     const char *strtab, uintptr_t relro_start, uintptr_t relro_end)
{
	unsigned long before = st->slots;
	for (size_t i = 0; i < size / sizeof *rela; i++) {
		unsigned long type = ELF64_R_TYPE(rela[i].r_info);
		if (type != RG_R_JUMP_SLOT && type != RG_R_GLOB_DAT)
			continue;
		const char *name = strtab + symtab[ELF64_R_SYM(rela[i].r_info)].st_name;
		void *wrapper = rg_inject_wrapper_for(st, name);
		if (wrapper == NULL)
			continue;
		uintptr_t slot = info->dlpi_addr + rela[i].r_offset;
		if (rg_inject_store((void **)slot, wrapper, slot >= relro_start && slot < relro_end))
			st->slots++;
	}
	if (st->slots != before)
		st->objects++;
}

static int rg_inject_object(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	struct rg_inject_state *st = data;
	const char *name = info->dlpi_name != NULL ? info->dlpi_name : "";
	if ((void *)info->dlpi_addr == st->self_base || rg_late_load_skips_object(name))
		return 0;

	const ElfW(Dyn) *dyn = NULL;
	uintptr_t relro_start = 0, relro_end = 0;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type == PT_DYNAMIC)
			dyn = (const ElfW(Dyn) *)(info->dlpi_addr + ph->p_vaddr);
		if (ph->p_type == PT_GNU_RELRO) {
			relro_start = info->dlpi_addr + ph->p_vaddr;
			relro_end = relro_start + ph->p_memsz;
		}
	}
	if (dyn == NULL)
		return 0;
	const ElfW(Rela) *jmprel = NULL, *rela = NULL;
	size_t jmprel_size = 0, rela_size = 0;
	const ElfW(Sym) *symtab = NULL;
	const char *strtab = NULL;
	for (; dyn->d_tag != DT_NULL; dyn++) {
		switch (dyn->d_tag) {
		case DT_JMPREL:
			jmprel = (const ElfW(Rela) *)rg_inject_dynptr(info, dyn->d_un.d_ptr);
			break;
		case DT_PLTRELSZ:
			jmprel_size = dyn->d_un.d_val;
			break;
		case DT_RELA:
			rela = (const ElfW(Rela) *)rg_inject_dynptr(info, dyn->d_un.d_ptr);
			break;
		case DT_RELASZ:
			rela_size = dyn->d_un.d_val;
			break;
		case DT_SYMTAB:
			symtab = (const ElfW(Sym) *)rg_inject_dynptr(info, dyn->d_un.d_ptr);
			break;
		case DT_STRTAB:
			strtab = (const char *)rg_inject_dynptr(info, dyn->d_un.d_ptr);
			break;
		}
	}
	if (symtab == NULL || strtab == NULL)
		return 0;
	if (jmprel != NULL)
		rg_inject_relocs(st, info, jmprel, jmprel_size, symtab, strtab, relro_start, relro_end);
	if (rela != NULL)
		rg_inject_relocs(st, info, rela, rela_size, symtab, strtab, relro_start, relro_end);
	return 0;
}

/* Patches every loaded object; returns the number of slots changed. */
static unsigned long rg_inject_pass(void)
{
	rg_leaf_lock(&rg_inject_lock);
	rg_inject.slots = 0;
	rg_inject.objects = 0;
	dl_iterate_phdr(rg_inject_object, &rg_inject);
	unsigned long slots = rg_inject.slots;
	unsigned objects = rg_inject.objects;
	rg_leaf_unlock(&rg_inject_lock);
	if (slots > 0)
		rg_log(RG_LOG_DEBUG, "inject: patched %lu GOT slots in %u objects", slots, objects);
	return slots;
}

static void *rg_inject_dlopen(const char *file, int mode)
{
	void *handle = rg_inject_real_dlopen(file, mode);
	if (handle != NULL)
		rg_inject_pass();
	return handle;
}

RG_EXPORT long rekeyguard_inject_activate(void)
{
	static long result = -1;
	rg_locks_ensure_init();   /* the fork handlers cover rg_inject_lock from now on */
	rg_leaf_lock(&rg_inject_lock);
	bool first = !rg_injected;
	if (first) {
		rg_injected = true;
		rg_binding_use_global_scope();
		rg_status_mark_injected();
		if (!rg_inject_collect(&rg_inject)) {
			rg_leaf_unlock(&rg_inject_lock);
			rg_log(RG_LOG_ERROR, "inject: cannot find this library's own wrappers; nothing patched");
			return -1;
		}
	}
	rg_leaf_unlock(&rg_inject_lock);
	if (!first)
		return result;

	if (!rg_tracking()) {
		rg_log(RG_LOG_WARN, "injected, but guarding is off (GnuTLS %s, REKEYGUARD_MODE=%s); "
		       "nothing patched", rg_gnutls_version(), rg_mode_name(rg_config_get()->mode));
		result = 0;
		return result;
	}
	result = (long)rg_inject_pass();
	rg_log(RG_LOG_WARN, "injected into running process %ld: %ld GOT slots patched "
	       "(GnuTLS %s); TLS sessions created from now on are guarded",
	       (long)getpid(), result, rg_gnutls_version());
	return result;
}
