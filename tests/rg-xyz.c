/*
 * rg-xyz.c — the GnuTLS-using code of the link-mode test.
 *
 * Built twice: into rg-linkcheck itself (the program calls GnuTLS
 * directly, with the link flags under test), and as librg-xyz*.so, a
 * library that wraps GnuTLS for a program that never links GnuTLS (the
 * program reaches GnuTLS only through this library, linked at build time
 * or dlopen'ed). Either way the code is the same: one connection, a short
 * full-duplex run with key updates, and a report of where gnutls_init
 * resolves from here and how many sessions the shim guarded.
 */
#include "hardening-util.h"
#include "rg-xyz.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

/* The object that this code's own reference to gnutls_init binds to (its
 * GOT or PLT slot, whatever the link flags made of it). */
static const char *xyz_object_of(void *p)
{
	Dl_info info;
	const char *slash;

	if (p == NULL || dladdr(p, &info) == 0 || info.dli_fname == NULL)
		return "?";
	slash = strrchr(info.dli_fname, '/');
	return slash ? slash + 1 : info.dli_fname;
}

XYZ_EXPORT int xyz_check(double seconds, int keyupdates, struct xyz_report *report)
{
	struct rg_pair p = { .fd = { -1, -1 } };
	long before;
	int ret;
	union { int (*fn)(gnutls_session_t *, unsigned); void *p; } init_ref;

	memset(report, 0, sizeof *report);
	init_ref.fn = gnutls_init;
	snprintf(report->init_object, sizeof report->init_object, "%s",
		 xyz_object_of(init_ref.p));
	before = hu_shim_guarded();
	ret = rg_pair_fd(&p, 0, NULL);
	if (ret == 0)
		ret = hu_exchange(&p, 4000, 970);
	if (ret != 0) {
		snprintf(report->why, sizeof report->why, "set-up:%s", gnutls_strerror_name(ret));
		report->guarded = hu_shim_guarded() - before;
		rg_pair_close(&p);
		return ret;
	}
	report->guarded = hu_shim_guarded() - before;
	if (seconds > 0)
		ret = hu_duplex(&p, seconds, keyupdates, report->why, sizeof report->why);
	else
		snprintf(report->why, sizeof report->why, "ok");
	rg_pair_close(&p);
	return ret;
}

/* The same, but gnutls_init is reached through a handle on libgnutls
 * (dlsym(handle, ...)): the documented way around the shim. The sessions
 * get the harness's credentials, taken from template sessions. */
XYZ_EXPORT int xyz_check_handle(struct xyz_report *report)
{
	union { void *sym; int (*fn)(gnutls_session_t *, unsigned); } real_init;
	void *h = dlopen("libgnutls.so.30", RTLD_LAZY | RTLD_NOLOAD);
	struct rg_pair p = { .fd = { -1, -1 } };
	gnutls_session_t tc, ts;
	void *ccred = NULL, *scred = NULL;
	long before;
	int ret;

	memset(report, 0, sizeof *report);
	if (h == NULL || (real_init.sym = dlsym(h, "gnutls_init")) == NULL) {
		snprintf(report->why, sizeof report->why, "no-handle");
		return -1;
	}
	snprintf(report->init_object, sizeof report->init_object, "%s",
		 xyz_object_of(real_init.sym));
	tc = rg_session_new(0, 0, NULL);
	ts = rg_session_new(1, 0, NULL);
	gnutls_credentials_get(tc, GNUTLS_CRD_CERTIFICATE, &ccred);
	gnutls_credentials_get(ts, GNUTLS_CRD_CERTIFICATE, &scred);

	before = hu_shim_guarded();
	ret = real_init.fn(&p.client, GNUTLS_CLIENT);
	if (ret == 0)
		ret = real_init.fn(&p.server, GNUTLS_SERVER);
	if (ret == 0)
		ret = gnutls_priority_set_direct(p.client, RG_PRIO_AES128, NULL);
	if (ret == 0)
		ret = gnutls_priority_set_direct(p.server, RG_PRIO_AES128, NULL);
	if (ret == 0)
		ret = gnutls_credentials_set(p.client, GNUTLS_CRD_CERTIFICATE, ccred);
	if (ret == 0)
		ret = gnutls_credentials_set(p.server, GNUTLS_CRD_CERTIFICATE, scred);
	if (ret == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, p.fd) != 0)
		ret = GNUTLS_E_INTERNAL_ERROR;
	if (ret == 0) {
		gnutls_transport_set_int(p.client, p.fd[0]);
		gnutls_transport_set_int(p.server, p.fd[1]);
		ret = rg_handshake_pair(p.client, p.server);
	}
	if (ret == 0)
		ret = hu_exchange(&p, 4000, 971);
	report->guarded = hu_shim_guarded() - before;
	snprintf(report->why, sizeof report->why, "%s", ret ? gnutls_strerror_name(ret) : "ok");
	rg_pair_close(&p);
	gnutls_deinit(tc);
	gnutls_deinit(ts);
	return ret;
}
