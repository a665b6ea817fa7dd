/*
 * late-load.h — late loading (rekeyguard_inject_activate, declared in
 * include/rekeyguard.h; late-load-x86_64.c, late-load-stub.c) and the
 * objects it leaves alone, shared with rekeyguard-inject, which reports
 * the same objects as the library patches.
 */
#ifndef RG_LATE_LOAD_H
#define RG_LATE_LOAD_H

#include <stdbool.h>
#include <string.h>

#include "../include/rekeyguard.h"

/* True for a loaded object whose GOT late loading never patches (by its
 * path or name): GnuTLS itself (its calls to its own functions go straight
 * to GnuTLS, as the nested-call rule wants anyway), the dynamic loader,
 * libc and the vDSO. The library also skips itself (by load address). */
static inline bool rg_late_load_skips_object(const char *path)
{
	const char *base = strrchr(path, '/');
	base = base != NULL ? base + 1 : path;
	return strncmp(base, "libgnutls.so", 12) == 0 || strncmp(base, "ld-linux", 8) == 0 ||
	       strncmp(base, "libc.so", 7) == 0 || strncmp(base, "libc-", 5) == 0 ||
	       strncmp(base, "linux-vdso", 10) == 0;
}

#endif
