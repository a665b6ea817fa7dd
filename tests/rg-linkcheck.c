/*
 * rg-linkcheck.c — does interposition hold whatever the
 * link mode?
 *
 *   rg-linkcheck call [--seconds S] [--no-keyupdates] [--expect E]
 *        run xyz_check(): compiled into this program (built with -z now,
 *        PIE or not, -fno-plt, ...) or in librg-xyz*.so linked at build time
 *   rg-linkcheck handle [--expect E]
 *        xyz_check_handle(): gnutls_init through dlsym(handle, ...)
 *   rg-linkcheck dlopen LIB local|global|deepbind [--seconds S] ...
 *        dlopen LIB (a librg-xyz*.so) with RTLD_LOCAL, RTLD_GLOBAL or
 *        RTLD_DEEPBIND and run its xyz_check()
 *
 * --expect guarded     the shim is mapped, guarded the sessions, and the
 *                      duplex run with key updates passed (default)
 * --expect unguarded   the run passed and the shim guarded nothing (the
 *                      documented limits: handles, RTLD_DEEPBIND)
 * --expect not-loaded  the run passed and the shim is not mapped at all
 *                      (secure-execution mode ignores LD_PRELOAD paths)
 *
 * This file never names GnuTLS: builds that reach GnuTLS only through a
 * library link nothing but that library and libc. Built with
 * -DRG_LINKCHECK_DLOPEN_ONLY it links no library at all and only has the
 * dlopen mode. Last stdout line:
 * "RESULT linkcheck PASS|FAIL mode=... init_object=... guarded=N shim=yes|no
 * secure=0|1 why=...". Exit 0 pass, 1 fail, 2 usage.
 */
#include "rg-xyz.h"

#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

union xyz_check_fn {
	void *sym;
	int (*fn)(double, int, struct xyz_report *);
};

static int usage(void)
{
	fprintf(stderr, "usage: rg-linkcheck call|handle|dlopen LIB local|global|deepbind "
		"[--seconds S] [--no-keyupdates] [--expect guarded|unguarded|not-loaded]\n");
	printf("RESULT linkcheck FAIL reason=usage\n");
	return 2;
}

int main(int argc, char **argv)
{
	const char *mode, *lib = NULL, *how = NULL, *expect = "guarded";
	double seconds = 1.0;
	int keyupdates = 1, ret, i = 2, pass;
	struct xyz_report report;
	char label[160];

	if (argc < 2)
		return usage();
	signal(SIGPIPE, SIG_IGN);	/* a failed run reports, not dies */
	mode = argv[1];
	if (strcmp(mode, "dlopen") == 0) {
		if (argc < 4)
			return usage();
		lib = argv[2];
		how = argv[3];
		i = 4;
	}
	for (; i < argc; i++) {
		if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--no-keyupdates"))
			keyupdates = 0;
		else if (!strcmp(argv[i], "--expect") && i + 1 < argc)
			expect = argv[++i];
		else
			return usage();
	}

	if (0) {
#ifndef RG_LINKCHECK_DLOPEN_ONLY
	} else if (strcmp(mode, "call") == 0) {
		ret = xyz_check(seconds, keyupdates, &report);
		snprintf(label, sizeof label, "call");
	} else if (strcmp(mode, "handle") == 0) {
		ret = xyz_check_handle(&report);
		snprintf(label, sizeof label, "handle");
#endif
	} else if (strcmp(mode, "dlopen") == 0) {
		int flags = RTLD_NOW;
		union xyz_check_fn check;
		void *h;

		if (!strcmp(how, "local"))
			flags |= RTLD_LOCAL;
		else if (!strcmp(how, "global"))
			flags |= RTLD_GLOBAL;
		else if (!strcmp(how, "deepbind"))
			flags |= RTLD_LOCAL | RTLD_DEEPBIND;
		else
			return usage();
		snprintf(label, sizeof label, "dlopen-%s", how);
		h = dlopen(lib, flags);
		if (h == NULL) {
			printf("RESULT linkcheck FAIL mode=%s reason=dlopen:%s\n", label, dlerror());
			return 1;
		}
		check.sym = dlsym(h, "xyz_check");
		if (check.sym == NULL) {
			printf("RESULT linkcheck FAIL mode=%s reason=no-xyz_check\n", label);
			return 1;
		}
		ret = check.fn(seconds, keyupdates, &report);
	} else {
		return usage();
	}

	int shim = dlsym(RTLD_DEFAULT, "rekeyguard_version") != NULL;
	if (!strcmp(expect, "guarded"))
		pass = ret == 0 && shim && report.guarded > 0;
	else if (!strcmp(expect, "unguarded"))
		pass = ret == 0 && report.guarded <= 0;
	else if (!strcmp(expect, "not-loaded"))
		pass = ret == 0 && !shim;
	else
		return usage();
	for (char *p = report.why; *p; p++)
		if (*p == ' ')
			*p = '_';
	printf("RESULT linkcheck %s mode=%s expect=%s ret=%d init_object=%s guarded=%ld shim=%s "
	       "secure=%lu why=%s\n", pass ? "PASS" : "FAIL", label, expect, ret,
	       report.init_object[0] ? report.init_object : "?", report.guarded,
	       shim ? "yes" : "no", getauxval(AT_SECURE), report.why[0] ? report.why : "-");
	fflush(stdout);
	return pass ? 0 : 1;
}
