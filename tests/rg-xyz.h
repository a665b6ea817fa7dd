/*
 * rg-xyz.h — the interface of librg-xyz.so, the library through which
 * rg-linkcheck reaches GnuTLS in the link-mode tests (see rg-xyz.c).
 */
#ifndef REKEYGUARD_TEST_RG_XYZ_H
#define REKEYGUARD_TEST_RG_XYZ_H

#define XYZ_EXPORT __attribute__((visibility("default")))

struct xyz_report {
	long guarded;		/* sessions the shim guarded during the check */
	char init_object[64];	/* where gnutls_init resolved from the caller */
	char why[160];		/* "ok" or what failed */
};

/* One connection, a record each way, then `seconds` of full duplex with
 * (if keyupdates) forced key updates. 0 or a GnuTLS error. */
int xyz_check(double seconds, int keyupdates, struct xyz_report *report);

/* One connection whose sessions come from gnutls_init reached through a
 * dlopen handle on libgnutls (bypassing any preloaded interposer). */
int xyz_check_handle(struct xyz_report *report);

#endif
