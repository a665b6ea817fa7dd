/*
 * rg-failmalloc.c — a preload that makes malloc, calloc and realloc fail
 * for calls made directly from one library (librekeyguard by default), so
 * that the shim's allocation-failure fallbacks can be tested in a real
 * process while GnuTLS, libc and the program allocate normally.
 *
 *   LD_PRELOAD="/path/librekeyguard.so /path/rg-failmalloc.so" program
 *
 * It must come after librekeyguard.so: the shim's calls to malloc resolve
 * to the first definition in the global scope after the shim itself, and
 * that is this library (it defines no free: every block comes from glibc's
 * allocator through __libc_malloc and friends, so glibc's free is right).
 *
 * A call fails when its return address lies in an executable segment of
 * the target library (RG_FAILMALLOC_TARGET, a substring of its path,
 * default "librekeyguard"), the function matches, `skip` matching calls
 * have already succeeded, and fewer than `count` have failed (-1: no
 * limit). Arm it from the environment, RG_FAILMALLOC=FN:SKIP[:COUNT] with
 * FN malloc, calloc, realloc or any, or at run time from the program:
 *
 *   void rg_failmalloc_arm(const char *fn, long skip, long count);  "none" disarms
 *   long rg_failmalloc_failed(void);   calls failed so far
 *
 * (look them up with dlsym(RTLD_DEFAULT, ...)). The target's address range
 * is found with dl_iterate_phdr when arming, never inside malloc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <link.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RG_EXPORT __attribute__((visibility("default")))

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);

enum fm_fn { FM_NONE = 0, FM_MALLOC, FM_CALLOC, FM_REALLOC, FM_ANY };

#define FM_RANGES 8
static struct { uintptr_t lo, hi; } fm_range[FM_RANGES];
static int fm_ranges;
static atomic_int fm_armed;		/* enum fm_fn */
static atomic_long fm_skip, fm_count, fm_failed;

static int fm_find_target(struct dl_phdr_info *info, size_t size, void *data)
{
	const char *target = data;

	(void)size;
	if (info->dlpi_name == NULL || strstr(info->dlpi_name, target) == NULL)
		return 0;
	for (int i = 0; i < info->dlpi_phnum && fm_ranges < FM_RANGES; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
			fm_range[fm_ranges].lo = info->dlpi_addr + ph->p_vaddr;
			fm_range[fm_ranges].hi = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
			fm_ranges++;
		}
	}
	return 1;
}

static void fm_locate(void)
{
	const char *target = getenv("RG_FAILMALLOC_TARGET");

	if (fm_ranges == 0)
		dl_iterate_phdr(fm_find_target, (void *)(target && *target ? target : "librekeyguard"));
}

/* Looked up with dlsym by the test programs. */
RG_EXPORT void rg_failmalloc_arm(const char *fn, long skip, long count);
RG_EXPORT long rg_failmalloc_failed(void);

RG_EXPORT void rg_failmalloc_arm(const char *fn, long skip, long count)
{
	enum fm_fn f = FM_NONE;

	fm_locate();
	if (strcmp(fn, "malloc") == 0)
		f = FM_MALLOC;
	else if (strcmp(fn, "calloc") == 0)
		f = FM_CALLOC;
	else if (strcmp(fn, "realloc") == 0)
		f = FM_REALLOC;
	else if (strcmp(fn, "any") == 0)
		f = FM_ANY;
	atomic_store(&fm_skip, skip);
	atomic_store(&fm_count, count);
	atomic_store(&fm_armed, (int)f);
}

RG_EXPORT long rg_failmalloc_failed(void)
{
	return atomic_load(&fm_failed);
}

__attribute__((constructor)) static void fm_init(void)
{
	/* RG_FAILMALLOC=FN:SKIP[:COUNT] */
	const char *spec = getenv("RG_FAILMALLOC");
	char fn[16];
	long skip = 0, count = -1;

	if (spec == NULL || *spec == '\0')
		return;
	size_t n = strcspn(spec, ":");
	if (n >= sizeof fn)
		return;
	memcpy(fn, spec, n);
	fn[n] = '\0';
	if (spec[n] == ':') {
		char *end;
		skip = strtol(spec + n + 1, &end, 10);
		if (*end == ':')
			count = strtol(end + 1, NULL, 10);
	}
	rg_failmalloc_arm(fn, skip, count);
}

static int fm_should_fail(enum fm_fn f, const void *caller)
{
	int armed = atomic_load_explicit(&fm_armed, memory_order_relaxed);
	int in_target = 0;

	if (armed == FM_NONE || (armed != FM_ANY && armed != (int)f))
		return 0;
	for (int i = 0; i < fm_ranges; i++)
		if ((uintptr_t)caller >= fm_range[i].lo && (uintptr_t)caller < fm_range[i].hi)
			in_target = 1;
	if (!in_target)
		return 0;
	if (atomic_fetch_sub(&fm_skip, 1) > 0)
		return 0;
	atomic_store(&fm_skip, 0);
	long count = atomic_load(&fm_count);
	if (count >= 0 && atomic_load(&fm_failed) >= count)
		return 0;
	atomic_fetch_add(&fm_failed, 1);
	return 1;
}

RG_EXPORT void *malloc(size_t size)
{
	if (fm_should_fail(FM_MALLOC, __builtin_return_address(0))) {
		errno = ENOMEM;
		return NULL;
	}
	return __libc_malloc(size);
}

RG_EXPORT void *calloc(size_t n, size_t size)
{
	if (fm_should_fail(FM_CALLOC, __builtin_return_address(0))) {
		errno = ENOMEM;
		return NULL;
	}
	return __libc_calloc(n, size);
}

RG_EXPORT void *realloc(void *p, size_t size)
{
	if (fm_should_fail(FM_REALLOC, __builtin_return_address(0))) {
		errno = ENOMEM;
		return NULL;
	}
	return __libc_realloc(p, size);
}
