/*
 * check_peers.c — the Check suite behind `make check-peers`: real programs
 * that no one on this project wrote, over real TLS on loopback, each once
 * plain and once with librekeyguard.so preloaded (tests/peer/README.md).
 *
 * Owns: running the scripts in tests/peer/ as child processes (through
 * check-runner.c) and judging their RESULT lines:
 *
 *   glib-networking  GIO's GnuTLS backend, full duplex from two threads on
 *                    one GTlsConnection per endpoint (python3-gi), with and
 *                    without a client certificate
 *   nbdkit-nbdcopy   nbdkit --tls=require (memory plugin) and nbdcopy,
 *                    16 requests in flight, a file to the server and back
 *   qemu-nbd         qemu-nbd and qemu-img convert with tls-creds-x509
 *   gnutls-resume    gnutls-cli --resume against gnutls-serv, TLS 1.3:
 *                    every second connection must resume
 *
 * Each scenario runs plain (no LD_PRELOAD: must pass), preloaded in guard
 * mode with REKEYGUARD_PROVOKE_REKEY (must pass, with the same bytes as the
 * plain run: both use one seed), and preloaded with REKEYGUARD_MODE=off
 * plus provocation (the unprotected stack: its failures are counted and
 * printed; asserted only for glib-networking, where at least one of up to
 * six runs must fail: measured, 12 of 13 runs fail on GnuTLS 3.7.9). The scripts load the library into the
 * programs under test themselves (--preload), so it reaches nbdkit and
 * nbdcopy, qemu-nbd and qemu-img, gnutls-serv and gnutls-cli, and they
 * check that it really started in each.
 *
 *   cd tests && ./check_peers          CI size (under 3 minutes)
 *   cd tests && ./check_peers full     more runs, bigger transfers
 *
 * Environment: REKEYGUARD_LIB (default ../librekeyguard.so; copied at start,
 * so a rebuild in place during the run changes nothing), CK_RUN_CASE (e.g.
 * CK_RUN_CASE=nbdkit), CK_VERBOSITY, RG_SEED (seed for every scenario).
 */
#include <check.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check-runner.h"

static char tests_dir[PATH_MAX];
static char peer_dir[PATH_MAX + 8];
static char lib_path[PATH_MAX + 64];	/* our copy of the library */
static char lib_dir[PATH_MAX];
static int full;

struct sizes {
	const char *glib_mb, *nbd_mb, *qemu_mb, *resume_runs;
	int guard_runs, off_runs;
	const char *copy_timeout;	/* per nbdcopy / qemu-img */
};
static const struct sizes ci = { "128", "128", "128", "5", 2, 3, "40" };
static const struct sizes big = { "512", "512", "512", "10", 5, 7, "120" };
#define SZ (full ? &big : &ci)

enum how { PLAIN, GUARD, OFF };
static const char *const how_name[] = { "plain", "guard+provoke", "off+provoke (unprotected)" };

#define PROVOKE "64"
#define GLIB_OFF_RUNS 6

/* tests/peer/NAME.sh ARGS..., plain or with the library (--preload), the
 * given seed; prints the RESULT line. */
static void peer(struct prog *p, const char *name, const char *const *args, enum how how,
		 const char *seed, double deadline)
{
	char path[PATH_MAX + 64];
	const char *argv[32];
	int n = 0;

	snprintf(path, sizeof path, "%s/%s.sh", peer_dir, name);
	for (const char *const *a = args; a && *a && n < 20; a++)
		argv[n++] = *a;
	argv[n++] = "--seed";
	argv[n++] = seed;
	if (how != PLAIN) {
		argv[n++] = "--preload";
		argv[n++] = lib_path;
		argv[n++] = "--mode";
		argv[n++] = how == GUARD ? "guard" : "off";
		argv[n++] = "--provoke";
		argv[n++] = PROVOKE;
	}
	argv[n] = NULL;
	prog_run(p, path, argv, NULL, NULL, deadline);
}

static void report(const char *label, const struct prog *p)
{
	prog_report(label, p);
}

static void new_seed(char *buf, size_t n)
{
	const char *env = getenv("RG_SEED");
	unsigned v;
	int fd;

	if (env && *env) {
		snprintf(buf, n, "%s", env);
		return;
	}
	fd = open("/dev/urandom", O_RDONLY);
	if (fd < 0 || read(fd, &v, sizeof v) != (ssize_t)sizeof v)
		v = (unsigned)getpid() * 2654435761u;
	if (fd >= 0)
		close(fd);
	snprintf(buf, n, "%u", v % 1000000000u);
}

/* A scenario: plain must pass; guard+provoke must pass `guard_runs` times
 * with the plain run's digest (key `digest`, or none); off+provoke runs
 * `off_runs` times (or until its first failure) and its failures are
 * printed. Returns the number of unprotected failures. */
static int scenario(const char *name, const char *label, const char *const *args,
		    const char *digest_key, double deadline, int off_runs, int stop_at_failure)
{
	const struct sizes *sz = SZ;
	struct prog p;
	char seed[32], want[128] = "", got[128], err[512];
	int off_fail = 0;

	new_seed(seed, sizeof seed);
	say("  [%s] seed %s, library %s", label, seed, lib_path);

	peer(&p, name, args, PLAIN, seed, deadline);
	report("plain", &p);
	ck_assert_msg(p.pass, "%s plain (no LD_PRELOAD) must pass: %s: %s", label,
		      how_ended(&p.r), p.result[0] ? p.result : "(no RESULT line)");
	if (digest_key)
		kv(p.result, digest_key, want, sizeof want);
	prog_free(&p);

	for (int i = 0; i < sz->guard_runs; i++) {
		peer(&p, name, args, GUARD, seed, deadline);
		report(how_name[GUARD], &p);
		ck_assert_msg(p.pass, "%s preloaded (%s), run %d of %d: %s: %s\n  rerun: %s",
			      label, how_name[GUARD], i + 1, sz->guard_runs, how_ended(&p.r),
			      p.result[0] ? p.result : "(no RESULT line)", p.r.cmd);
		if (digest_key) {
			kv(p.result, digest_key, got, sizeof got);
			ck_assert_msg(want[0] && !strcmp(want, got),
				      "%s: preloaded %s=%s differs from plain %s=%s (same seed %s)",
				      label, digest_key, got, digest_key, want, seed);
		}
		prog_free(&p);
	}

	int off_done = 0;

	for (int i = 0; i < off_runs && !(stop_at_failure && off_fail); i++, off_done++) {
		peer(&p, name, args, OFF, seed, deadline);
		report(how_name[OFF], &p);
		if (!p.pass) {
			off_fail++;
			snprintf(err, sizeof err, "%s", strstr(p.result, " error=") ?
				 strstr(p.result, " error=") + 7 : how_ended(&p.r));
			say("    unprotected failure %d: %.300s", off_fail, err);
		}
		prog_free(&p);
	}
	say("  [%s] unprotected (REKEYGUARD_MODE=off, provoked key updates): %d of %d runs failed; "
	    "guarded: %d of %d passed", label, off_fail, off_done, sz->guard_runs, sz->guard_runs);
	return off_fail;
}

/* ====================================================== glib-networking */

START_TEST(test_glib)
{
	const char *const plain_args[] = { "--mb", SZ->glib_mb, NULL };
	const char *const cc_args[] = { "--mb", SZ->glib_mb, "--client-cert", NULL };
	/* Measured: 12 of 13 unprotected runs failed ("Decryption has failed",
	 * mostly within a second), so up to GLIB_OFF_RUNS runs, stopping at
	 * the first failure: all passing means the race did not show. */
	int off_fail = scenario("glib-networking",
				_i ? "glib-networking client-cert" : "glib-networking",
				_i ? cc_args : plain_args, NULL, 120, GLIB_OFF_RUNS, 1);

	ck_assert_msg(off_fail > 0,
		      "glib-networking unprotected with provoked key updates passed %d of %d runs: "
		      "the race did not show (is GnuTLS >= 3.8.11, or did provocation stop working?)",
		      GLIB_OFF_RUNS, GLIB_OFF_RUNS);
}
END_TEST

/* ======================================================= nbdkit/nbdcopy */

START_TEST(test_nbdkit)
{
	const char *const args[] = { "--mb", SZ->nbd_mb, "--requests", "16",
				     "--timeout", SZ->copy_timeout, NULL };

	scenario("nbdkit-nbdcopy", "nbdkit+nbdcopy", args, "sha256", 240, SZ->off_runs, 0);
}
END_TEST

/* ============================================================= qemu-nbd */

START_TEST(test_qemu_nbd)
{
	const char *const args[] = { "--mb", SZ->qemu_mb, "--timeout", SZ->copy_timeout, NULL };

	scenario("qemu-nbd", "qemu-nbd+qemu-img", args, "sha256", 240, SZ->off_runs, 0);
}
END_TEST

/* ======================================================== gnutls-resume */

START_TEST(test_resume)
{
	static const char *const sides[] = { "client", "server", "both" };
	const char *const args[] = { "--runs", SZ->resume_runs, "--side", sides[_i], NULL };
	char seed[32], label[64], v[32];
	struct prog p;

	new_seed(seed, sizeof seed);
	snprintf(label, sizeof label, "gnutls-resume, library in %s%s", _i == 2 ? "" : "the ",
		 _i == 2 ? "client and server" : sides[_i]);
	peer(&p, "gnutls-resume", args, PLAIN, seed, 90);
	report("plain", &p);
	say("  [%s] plain: resumed %s of %s", label, kv(p.result, "resumed", v, sizeof v),
	    SZ->resume_runs);
	ck_assert_msg(p.pass, "gnutls-resume plain must resume every time: %s", p.result);
	prog_free(&p);

	/* Guarded, no provocation: resumption is about the handshake. */
	{
		char path[PATH_MAX + 64];
		const char *argv[] = { args[0], args[1], args[2], args[3], "--seed", seed,
				       "--preload", lib_path, "--mode", "guard", NULL };

		snprintf(path, sizeof path, "%s/gnutls-resume.sh", peer_dir);
		prog_run(&p, path, argv, NULL, NULL, 90);
	}
	report("preloaded", &p);
	say("  [%s] preloaded: resumed %s of %s", label, kv(p.result, "resumed", v, sizeof v),
	    SZ->resume_runs);
	ck_assert_msg(p.pass, "%s: every second connection must resume preloaded too: %s\n  rerun: %s",
		      label, p.result[0] ? p.result : how_ended(&p.r), p.r.cmd);
	prog_free(&p);
}
END_TEST

/* ================================================================ suite */

static Suite *peers_suite(void)
{
	Suite *s = suite_create("peers");
	TCase *tc;
	double m = full ? 3 : 1;

	tc = tcase_create("glib-networking");
	tcase_set_timeout(tc, 150 * m);
	tcase_add_loop_test(tc, test_glib, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("nbdkit");
	tcase_set_timeout(tc, 360 * m);
	tcase_add_test(tc, test_nbdkit);
	suite_add_tcase(s, tc);

	tc = tcase_create("qemu-nbd");
	tcase_set_timeout(tc, 240 * m);
	tcase_add_test(tc, test_qemu_nbd);
	suite_add_tcase(s, tc);

	tc = tcase_create("gnutls-resume");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_resume, 0, 3);
	suite_add_tcase(s, tc);
	return s;
}

/* Copy the library: the lead rebuilds it in place. */
static int copy_lib(const char *src)
{
	char buf[65536];
	ssize_t n;
	int in, out;

	snprintf(lib_dir, sizeof lib_dir, "/var/tmp/rg-check-peers.XXXXXX");
	if (!mkdtemp(lib_dir))
		return -1;
	snprintf(lib_path, sizeof lib_path, "%s/librekeyguard.so", lib_dir);
	in = open(src, O_RDONLY);
	out = open(lib_path, O_WRONLY | O_CREAT | O_TRUNC, 0755);
	if (in < 0 || out < 0)
		return -1;
	while ((n = read(in, buf, sizeof buf)) > 0)
		if (write(out, buf, (size_t)n) != n)
			return -1;
	close(in);
	return close(out) == 0 && n == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
	char self[PATH_MAX], guess[PATH_MAX + 32], src[PATH_MAX];
	const char *env = getenv("REKEYGUARD_LIB");
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	struct stat st;
	SRunner *sr;
	int failed;
	double t0 = now();

	full = argc > 1 && !strcmp(argv[1], "full");
	if (argc > 1 && !full) {
		fprintf(stderr, "usage: check_peers [full]\n");
		return 2;
	}
	runner.name = "check_peers";
	runner.report_tail = 8;
	runner.kill_leftovers = 1;
	if (n <= 0)
		return 2;
	self[n] = '\0';
	*strrchr(self, '/') = '\0';
	snprintf(tests_dir, sizeof tests_dir, "%s", self);
	snprintf(peer_dir, sizeof peer_dir, "%s/peer", tests_dir);
	snprintf(guess, sizeof guess, "%s/../librekeyguard.so", tests_dir);
	if (!realpath(env && *env ? env : guess, src) || copy_lib(src) != 0) {
		fprintf(stderr, "check_peers: the library %s: %s (run make first, or set "
			"REKEYGUARD_LIB)\n", env && *env ? env : guess, strerror(errno));
		return 2;
	}
	stat(src, &st);
	signal(SIGPIPE, SIG_IGN);
	printf("check_peers: %s size; library %s (copy of %s, %lld bytes, mtime %lld)\n",
	       full ? "full" : "CI", lib_path, src, (long long)st.st_size, (long long)st.st_mtime);
	fflush(stdout);

	sr = srunner_create(peers_suite());
	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	unlink(lib_path);
	rmdir(lib_dir);
	printf("check_peers: %s in %.0f s\n", failed ? "FAILED" : "all passed", now() - t0);
	return failed ? 1 : 0;
}
