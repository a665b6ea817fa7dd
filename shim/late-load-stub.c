/*
 * late-load-stub.c — late loading on architectures other than x86-64,
 * where rekeyguard-inject does not exist: the library builds and preloads
 * as usual, and activation refuses.
 */
#if defined(__x86_64__)
#error "x86-64 builds late-load-x86_64.c"
#endif

#include "late-load.h"

#include "common.h"
#include "config.h"

RG_EXPORT long rekeyguard_inject_activate(void)
{
	rg_log(RG_LOG_ERROR, "inject: late loading is implemented for x86-64 only; nothing "
	       "patched (start the program with LD_PRELOAD instead)");
	return -1;
}
