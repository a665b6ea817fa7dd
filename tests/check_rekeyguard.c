/*
 * check_rekeyguard.c — the Check suite behind `make check`.
 *
 * Owns: running the test programs as child processes, each scenario once
 * without and once with LD_PRELOAD=librekeyguard.so, exactly as users load
 * the shim, and judging what they print.  This program never links the
 * shim or GnuTLS; every child gets its own environment (the parent's minus
 * LD_PRELOAD and REKEYGUARD_*, plus what the test sets), so nothing leaks
 * from the shell that runs `make check`.
 *
 *   cd tests && ./check_rekeyguard
 *
 * Environment:
 *   REKEYGUARD_LIB    the library to preload (default: ../librekeyguard.so
 *                     next to this program's directory, made absolute)
 *   CK_VERBOSITY      silent|minimal|normal|verbose (Check's own; default
 *                     normal: one summary line plus failures)
 *   CK_RUN_CASE       run one test case only, e.g. CK_RUN_CASE=differential
 *   CK_DEFAULT_TIMEOUT / CK_TIMEOUT_MULTIPLIER   Check's timeout knobs
 *   RG_SEED           passed through to rg-scenario for reproducible runs
 *
 * Debugging: `CK_FORK=no gdb --args ./check_rekeyguard` runs the tests in
 * this process so that breakpoints work (the children it spawns still run
 * separately: to debug one, run the command line it prints, e.g.
 * `LD_PRELOAD=$PWD/../librekeyguard.so gdb --args ./rg-scenario duplex`).
 * With CK_FORK=no the tcase timeouts do not apply and the first failed
 * assertion ends the run; the per-child deadlines (check-runner.c) still do.
 *
 * Every tcase has a timeout, so a deadlock fails with the test's name, and
 * every child has a deadline after which it (and its process group) is
 * killed and reported as a timeout of that scenario.  Each test prints what
 * it measured on stdout (plain failure counts, throughput, transcript
 * differences) so that it shows in CI logs.
 */
#include <check.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check-runner.h"

/* -------------------------------------------------------------- settings */

static char tests_dir[PATH_MAX];	/* where this program and rg-* live */
static char lib_path[PATH_MAX];		/* absolute path of the shim */
static char scenario_path[PATH_MAX + 32];
static char differential_path[PATH_MAX + 32];
static char kurace_path[PATH_MAX + 32];

#define DUPLEX_PLAIN_RUNS	3
#define DUPLEX_SECONDS		"2"
#define QEMU_ROUNDS		5
#define QEMU_SECONDS		"2"
#define QEMU_MIN_RATIO		0.90
#define QEMU_MAX_STALL_MS	1000.0

/* ------------------------------------------------------------- scenarios */

/* rg-scenario ARGS, plain or with the shim preloaded. */
static void scenario(struct prog *s, int preload, const char *const *extra,
		     const char *const *args, double deadline)
{
	prog_run(s, scenario_path, args, preload ? lib_path : NULL, extra, deadline);
}

/* A preloaded scenario must have had the shim mapped. */
static void assert_shim_seen(const struct prog *s)
{
	char v[64];

	kv(s->result, "shim", v, sizeof v);
	ck_assert_msg(v[0] && strcmp(v, "no") != 0,
		      "%s: the RESULT line says shim=%s: LD_PRELOAD did not take (%s)",
		      s->r.cmd, v[0] ? v : "(missing)", s->result);
}

/* GnuTLS older than 3.8.11 has the race (GnuTLS issue 1717; from 3.8.11
 * on only the key changes race). */
static int gnutls_is_affected(const char *result)
{
	char v[64];
	int a = 0, b = 0, c = 0;

	kv(result, "gnutls", v, sizeof v);
	if (sscanf(v, "%d.%d.%d", &a, &b, &c) < 2)
		return 1;
	return a < 3 || (a == 3 && (b < 8 || (b == 8 && c < 11)));
}

/* ================================================================ build */

START_TEST(test_build_no_gnutls_needed)
{
	const char *argv[] = { "readelf", "-d", lib_path, NULL };
	struct run r;
	int needed;

	run_prog(&r, argv, NULL, NULL, 30);
	ck_assert_msg(r.exited && r.code == 0, "readelf -d %s: %s\n%s", lib_path,
		      how_ended(&r), r.err);
	needed = count_lines(r.out, " 0x", (const char *const[]){ "(NEEDED)", NULL });
	say("  [build] %s has %d NEEDED entries:", lib_path, needed);
	for (const char *l = r.out; l && *l; ) {
		const char *end = strchr(l, '\n');
		int len = end ? (int)(end - l) : (int)strlen(l);
		if (memmem(l, (size_t)len, "(NEEDED)", 8))
			say("    %.*s", len, l);
		l = end ? end + 1 : NULL;
	}
	ck_assert_msg(count_lines(r.out, " 0x", (const char *const[]){ "(NEEDED)", "libgnutls", NULL }) == 0,
		      "%s must not have libgnutls as NEEDED:\n%s", lib_path, r.out);
	run_free(&r);
}
END_TEST

START_TEST(test_build_exports)
{
	const char *argv[] = { "nm", "-D", "--defined-only", lib_path, NULL };
	static const char *const api[] = { "rekeyguard_version",
		"rekeyguard_sessions_guarded", "rekeyguard_active_mode", NULL };
	struct run r;
	int total = 0, bad = 0, gnutls = 0;
	char badlist[2048] = "";

	run_prog(&r, argv, NULL, NULL, 30);
	ck_assert_msg(r.exited && r.code == 0, "nm -D %s: %s\n%s", lib_path, how_ended(&r), r.err);
	for (const char *l = r.out; l && *l; ) {
		const char *end = strchr(l, '\n');
		char line[512], type = 0, name[400] = "";

		snprintf(line, sizeof line, "%.*s", end ? (int)(end - l) : (int)strlen(l), l);
		l = end ? end + 1 : NULL;
		/* "0000000000001234 T name" (also "name@@VERSION") */
		if (sscanf(line, "%*s %c %399s", &type, name) != 2)
			continue;
		name[strcspn(name, "@")] = '\0';
		total++;
		if (!strncmp(name, "gnutls_", 7)) {
			gnutls++;
			continue;
		}
		if (!strncmp(name, "rekeyguard_", 11))
			continue;
		/* a symbol-version node defined by the version script */
		if (type == 'A' && !strncmp(name, "REKEYGUARD", 10))
			continue;
		bad++;
		if (strlen(badlist) + strlen(name) + 3 < sizeof badlist)
			strcat(strcat(badlist, " "), name);
	}
	say("  [build] %d dynamic symbols defined: %d gnutls_*, %d others not allowed%s%s",
	    total, gnutls, bad, bad ? ":" : "", badlist);
	ck_assert_msg(bad == 0, "%s exports symbols other than gnutls_* and rekeyguard_*:%s",
		      lib_path, badlist);
	ck_assert_msg(gnutls > 0, "%s exports no gnutls_* wrapper at all", lib_path);
	for (const char *const *a = api; *a; a++)
		ck_assert_msg(count_lines(r.out, "", (const char *const[]){ *a, NULL }) > 0,
			      "%s does not export %s", lib_path, *a);
	run_free(&r);
}
END_TEST

/* ============================================================ (a) duplex */

START_TEST(test_duplex_plain)
{
	const char *args[] = { "duplex", "--seconds", DUPLEX_SECONDS, NULL };
	struct prog s[DUPLEX_PLAIN_RUNS];
	int failed = 0, affected = 1;
	char reasons[512] = "";

	for (int i = 0; i < DUPLEX_PLAIN_RUNS; i++) {
		char v[128];

		scenario(&s[i], 0, NULL, args, 60);
		prog_report("duplex plain", &s[i]);
		if (!s[i].pass) {
			failed++;
			kv(s[i].result, "reason", v, sizeof v);
			if (s[i].r.signaled)
				snprintf(v, sizeof v, "SIG%s", sigabbrev_np(s[i].r.sig));
			if (strlen(reasons) + strlen(v) + 3 < sizeof reasons)
				strcat(strcat(reasons, " "), v[0] ? v : "?");
		}
		if (s[i].result[0])
			affected = gnutls_is_affected(s[i].result);
		ck_assert_msg(!s[i].r.timed_out && !(s[i].r.exited && s[i].r.code == 2),
			      "plain duplex run could not run properly: %s", how_ended(&s[i].r));
	}
	say("  [duplex plain] %d of %d plain runs failed:%s", failed, DUPLEX_PLAIN_RUNS,
	    failed ? reasons : " (none)");
	/* Measured on the 2-core CI machine (GnuTLS 3.7.9): 20 of 20 plain runs
	 * (10 fd, 10 custom transport) failed with GNUTLS_E_DECRYPTION_FAILED
	 * at the first key update (the first one comes 50 ms into the run;
	 * median failure 1 ms after it, at most 0.36 s).  So the plain failure
	 * is an assertion, on GnuTLS versions that have the race. */
	if (affected)
		ck_assert_msg(failed == DUPLEX_PLAIN_RUNS,
			      "only %d of %d plain duplex runs failed: the reproducer no longer "
			      "shows the race, so the preloaded passes prove nothing",
			      failed, DUPLEX_PLAIN_RUNS);
	for (int i = 0; i < DUPLEX_PLAIN_RUNS; i++)
		run_free(&s[i].r);
}
END_TEST

/* loop index: 0-4 fd transport, 5-9 custom transport */
START_TEST(test_duplex_preloaded)
{
	const char *fd_args[] = { "duplex", "--seconds", DUPLEX_SECONDS, NULL };
	const char *custom_args[] = { "duplex", "--seconds", DUPLEX_SECONDS, "--custom", NULL };
	struct prog s;
	char label[64];

	snprintf(label, sizeof label, "duplex preloaded %s #%d", _i < 5 ? "fd" : "custom",
		 _i % 5 + 1);
	scenario(&s, 1, NULL, _i < 5 ? fd_args : custom_args, 60);
	prog_report(label, &s);
	ck_assert_msg(s.pass, "%s: %s: %s", s.r.cmd, how_ended(&s.r), s.result);
	assert_shim_seen(&s);
	run_free(&s.r);
}
END_TEST

/* ============================================ the aligned key changes */

/* rg-kurace: one thread's gnutls_session_key_update meets the other's
 * processing of the peer's KeyUpdate (the race GnuTLS 3.8.11+ kept).
 * Measured (Debian 12 host, trixie and sid chroots, 20 runs each): plain
 * GnuTLS 3.7.9, 3.8.9 and 3.8.13 failed 20 of 20, so the plain failure is
 * asserted; the library's default mode passes. */
#define KURACE_PLAIN_RUNS 3
#define KURACE_SECONDS "3"

START_TEST(test_kurace_plain)
{
	const char *args[] = { "--seconds", KURACE_SECONDS, NULL };
	int failed = 0;

	for (int i = 0; i < KURACE_PLAIN_RUNS; i++) {
		struct prog s;
		prog_run(&s, kurace_path, args, NULL, NULL, 60);
		prog_report("kurace plain", &s);
		ck_assert_msg(!s.r.timed_out && !(s.r.exited && s.r.code == 2),
			      "plain kurace run could not run properly: %s", how_ended(&s.r));
		failed += !s.pass;
		prog_free(&s);
	}
	say("  [kurace plain] %d of %d plain runs failed", failed, KURACE_PLAIN_RUNS);
	ck_assert_msg(failed == KURACE_PLAIN_RUNS,
		      "only %d of %d plain kurace runs failed: the reproducer no longer aligns "
		      "the key changes, so the preloaded passes prove nothing",
		      failed, KURACE_PLAIN_RUNS);
}
END_TEST

START_TEST(test_kurace_preloaded)
{
	const char *args[] = { "--seconds", KURACE_SECONDS, NULL };
	struct prog s;

	prog_run(&s, kurace_path, args, lib_path, NULL, 60);
	prog_report("kurace preloaded (default mode)", &s);
	ck_assert_msg(s.pass, "%s: %s: %s", s.r.cmd, how_ended(&s.r), s.result);
	assert_shim_seen(&s);
	prog_free(&s);
}
END_TEST

/* ========================================================= (b) autorekey */

START_TEST(test_autorekey_plain)
{
	const char *args[] = { "autorekey", "--quick", NULL };
	struct prog s;

	scenario(&s, 0, NULL, args, 120);
	prog_report("autorekey plain", &s);
	say("  [autorekey plain] %s (reported, not asserted)", s.pass ? "passed" : "FAILED");
	ck_assert_msg(!s.r.timed_out, "plain autorekey hung: %s", s.r.cmd);
	run_free(&s.r);
}
END_TEST

START_TEST(test_autorekey_preloaded)
{
	/* --quick: 4 rekeys per direction (the issue wants at least 2), paced
	 * 150 ms apart: GnuTLS's automatic rekeys count toward the peer's limit
	 * of 8 received KeyUpdates per second. */
	const char *args[] = { "autorekey", "--quick", NULL };
	struct prog s;
	char label[48], c2s[32], s2c[32];

	snprintf(label, sizeof label, "autorekey preloaded #%d", _i + 1);
	scenario(&s, 1, NULL, args, 120);
	prog_report(label, &s);
	ck_assert_msg(s.pass, "%s: %s: %s", s.r.cmd, how_ended(&s.r), s.result);
	assert_shim_seen(&s);
	kv(s.result, "rekeys_c2s", c2s, sizeof c2s);
	kv(s.result, "rekeys_s2c", s2c, sizeof s2c);
	ck_assert_msg(atoi(c2s) >= 2 && atoi(s2c) >= 2,
		      "autorekey crossed 2^24 records only %s/%s times", c2s, s2c);
	run_free(&s.r);
}
END_TEST

/* ======================================================== (c) qemu-shape */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static const char *const qemu_names[3] = { "plain", "preloaded", "preloaded+keyupdates" };

/* One round: plain, preloaded, preloaded with key updates, back to back. */
static void qemu_round(int round, double tp[3], double stall[3])
{
	const char *plain_args[] = { "qemu-shape", "--seconds", QEMU_SECONDS, NULL };
	const char *ku_args[] = { "qemu-shape", "--seconds", QEMU_SECONDS, "--keyupdates", NULL };
	char v[64];

	for (int k = 0; k < 3; k++) {
		struct prog s;
		char label[64];

		snprintf(label, sizeof label, "qemu-shape %s round %d", qemu_names[k], round + 1);
		scenario(&s, k > 0, NULL, k == 2 ? ku_args : plain_args, 60);
		prog_report(label, &s);
		ck_assert_msg(s.pass, "%s must pass: %s: %s", s.r.cmd, how_ended(&s.r), s.result);
		if (k > 0)
			assert_shim_seen(&s);
		tp[k] = atof(kv(s.result, "throughput_mbs", v, sizeof v));
		stall[k] = atof(kv(s.result, "max_stall_ms", v, sizeof v));
		ck_assert_msg(tp[k] > 0, "%s: no throughput_mbs in %s", s.r.cmd, s.result);
		if (k > 0)
			ck_assert_msg(stall[k] < QEMU_MAX_STALL_MS,
				      "%s: the bulk stream stalled %.1f ms (limit %.0f)",
				      s.r.cmd, stall[k], QEMU_MAX_STALL_MS);
		run_free(&s.r);
	}
}

/* Two estimates of preloaded/plain for each preloaded variant: the ratio of
 * the medians, and the median of the per-round ratios (each preloaded run
 * against the plain run just before it, which saw the same background
 * load).  A real slowdown lowers both; a burst of load on this 2-core
 * machine rarely fools both.  Returns the worse variant's better estimate. */
static double qemu_judge(double tp[][3], double stall[][3], int rounds)
{
	double med[3], worst_ratio = 1e9;

	for (int k = 0; k < 3; k++) {
		double worst = 0, ratios[2 * QEMU_ROUNDS], tpk[2 * QEMU_ROUNDS], paired, best;

		for (int i = 0; i < rounds; i++) {
			worst = stall[i][k] > worst ? stall[i][k] : worst;
			ratios[i] = tp[i][k] / tp[i][0];
			tpk[i] = tp[i][k];
		}
		med[k] = median(tpk, rounds);
		paired = median(ratios, rounds);
		best = paired > med[k] / med[0] ? paired : med[k] / med[0];
		say("  [qemu-shape] %-22s %d rounds: median %7.1f MB/s, %5.1f%% of plain by "
		    "medians, %5.1f%% by paired rounds, worst stall %.1f ms", qemu_names[k],
		    rounds, med[k], 100.0 * med[k] / med[0], 100.0 * paired, worst);
		if (k > 0 && best < worst_ratio)
			worst_ratio = best;
	}
	return worst_ratio;
}

START_TEST(test_qemu_shape)
{
	double tp[2 * QEMU_ROUNDS][3], stall[2 * QEMU_ROUNDS][3], ratio;
	int rounds = 0;

	for (; rounds < QEMU_ROUNDS; rounds++)
		qemu_round(rounds, tp[rounds], stall[rounds]);
	ratio = qemu_judge(tp, stall, rounds);
	if (ratio < QEMU_MIN_RATIO) {
		/* Other work on this machine can eat a batch; measure as much
		 * again and judge all rounds together. */
		say("  [qemu-shape] %.1f%% < %.0f%%: %d more rounds", 100.0 * ratio,
		    100.0 * QEMU_MIN_RATIO, QEMU_ROUNDS);
		for (; rounds < 2 * QEMU_ROUNDS; rounds++)
			qemu_round(rounds, tp[rounds], stall[rounds]);
		ratio = qemu_judge(tp, stall, rounds);
	}
	ck_assert_msg(ratio >= QEMU_MIN_RATIO,
		      "preloaded qemu-shape keeps only %.1f%% of the plain throughput "
		      "(need %.0f%%; per-variant figures above)", 100.0 * ratio,
		      100.0 * QEMU_MIN_RATIO);
}
END_TEST

START_TEST(test_qemu_shape_plain_keyupdates)
{
	const char *args[] = { "qemu-shape", "--seconds", QEMU_SECONDS, "--keyupdates", NULL };
	struct prog s;

	scenario(&s, 0, NULL, args, 60);
	prog_report("qemu-shape plain+keyupdates", &s);
	say("  [qemu-shape plain+keyupdates] %s (reported, not asserted)",
	    s.pass ? "passed" : s.r.signaled ? "CRASHED" : "FAILED");
	ck_assert_msg(!s.r.timed_out, "plain qemu-shape with key updates hung: %s", s.r.cmd);
	run_free(&s.r);
}
END_TEST

/* =========================================================== (d) tinybuf */

START_TEST(test_tinybuf)
{
	static const char *const a0[] = { "tinybuf", NULL };
	static const char *const a1[] = { "tinybuf", "--keyupdates", NULL };
	static const struct {
		const char *label;
		int preload;
		const char *const *args;
	} runs[] = {
		{ "tinybuf plain", 0, a0 },
		{ "tinybuf preloaded", 1, a0 },
		{ "tinybuf preloaded+keyupdates", 1, a1 },
	};
	struct prog s;

	scenario(&s, runs[_i].preload, NULL, runs[_i].args, 90);
	prog_report(runs[_i].label, &s);
	ck_assert_msg(!s.r.timed_out, "%s deadlocked: %s", runs[_i].label, s.r.cmd);
	ck_assert_msg(s.pass, "%s: %s: %s", s.r.cmd, how_ended(&s.r), s.result);
	if (runs[_i].preload)
		assert_shim_seen(&s);
	run_free(&s.r);
}
END_TEST

/* ====================================================== (e) differential */

#define MAX_CASES 64
static char *diff_cases[MAX_CASES];
static int n_diff_cases;

static void load_differential_cases(void)
{
	const char *argv[] = { differential_path, "--list", NULL };
	struct run r;

	run_prog(&r, argv, NULL, NULL, 30);
	if (!r.exited || r.code != 0) {
		fprintf(stderr, "check_rekeyguard: %s --list: %s\n%s", differential_path,
			how_ended(&r), r.err);
	} else {
		for (char *l = strtok(r.out, "\n"); l && n_diff_cases < MAX_CASES;
		     l = strtok(NULL, "\n"))
			if (*l)
				diff_cases[n_diff_cases++] = strdup(l);
	}
	run_free(&r);
}

/* Show where two transcripts part: the first differing line with context,
 * and how many lines differ in all (position by position). */
static void show_transcript_diff(const char *a, const char *b, const char *la,
				 const char *lb)
{
	int line = 1, ndiff = 0, first = 0;
	const char *pa = a, *pb = b, *fa = NULL, *fb = NULL;

	while (*pa || *pb) {
		size_t na = strcspn(pa, "\n"), nb = strcspn(pb, "\n");
		if (na != nb || memcmp(pa, pb, na)) {
			ndiff++;
			if (!first) {
				first = line;
				fa = pa, fb = pb;
			}
		}
		pa += na + (pa[na] == '\n');
		pb += nb + (pb[nb] == '\n');
		line++;
	}
	if (!first)
		return;
	say("    transcripts differ first at line %d (%d lines differ position by position)",
	    first, ndiff);
	for (int side = 0; side < 2; side++) {
		const char *text = side ? b : a, *at = side ? fb : fa, *p = at;
		int back = 0;

		/* three lines of context before */
		while (p > text && back < 4) {
			p--;
			if (*p == '\n' && p != at - 1)
				back++;
		}
		if (p > text)
			p++;
		say("    --- %s, from line %d ---", side ? lb : la, first - (back > 3 ? 3 : back));
		for (int i = 0; i < 16 && *p; i++) {
			size_t n = strcspn(p, "\n");
			say("    %s %.*s", p >= at ? (side ? "+" : "-") : " ", (int)n, p);
			p += n + (p[n] == '\n');
		}
	}
}

struct diff_pair {
	struct run plain, pre;
	int same;
};

static void differential(struct diff_pair *d, const char *casename,
			 const char *const *extra_pre)
{
	const char *argv[] = { differential_path, casename, NULL };
	const char *argv_all[] = { differential_path, NULL };
	const char *const *av = casename ? argv : argv_all;

	/* rg-differential's own watchdog ends a hung case after 20 s */
	double deadline = casename ? 60 : 120;

	run_prog(&d->plain, av, NULL, NULL, deadline);
	run_prog(&d->pre, av, lib_path, extra_pre, deadline);
	d->same = d->plain.nout == d->pre.nout && !memcmp(d->plain.out, d->pre.out, d->plain.nout);
}

static void differential_assert(struct diff_pair *d, const char *what)
{
	say("  [%s] plain: %s in %.2f s, %zu bytes; preloaded: %s in %.2f s, %zu bytes; "
	    "transcripts %s", what, how_ended(&d->plain), d->plain.secs, d->plain.nout,
	    how_ended(&d->pre), d->pre.secs, d->pre.nout, d->same ? "identical" : "DIFFER");
	if (!d->same)
		show_transcript_diff(d->plain.out, d->pre.out, "plain", "preloaded");
	if (!(d->plain.exited && d->plain.code == 0))
		show_tail("plain stderr", d->plain.err, 10);
	if (!(d->pre.exited && d->pre.code == 0))
		show_tail("preloaded stderr", d->pre.err, 10);
	ck_assert_msg(d->plain.exited && d->plain.code == 0,
		      "%s: %s (the expectations inside rg-differential fail even without the shim)",
		      d->plain.cmd, how_ended(&d->plain));
	ck_assert_msg(d->same, "%s: transcript differs from the plain run", d->pre.cmd);
	ck_assert_msg(d->pre.exited && d->pre.code == 0, "%s: %s", d->pre.cmd,
		      how_ended(&d->pre));
}

START_TEST(test_differential)
{
	struct diff_pair d;
	char what[96];

	ck_assert_msg(n_diff_cases > 0, "%s --list gave no cases", differential_path);
	snprintf(what, sizeof what, "differential %s", diff_cases[_i]);
	differential(&d, diff_cases[_i], NULL);
	differential_assert(&d, what);
	ck_assert_msg(strstr(d.pre.err, "shim_loaded=1"), "%s: the shim was not loaded:\n%s",
		      d.pre.cmd, d.pre.err);
	run_free(&d.plain);
	run_free(&d.pre);
}
END_TEST

/* ================================================ (f) pass-through, config */


START_TEST(test_mode_off_passthrough)
{
	const char *const off[] = { "REKEYGUARD_MODE=off", NULL };
	struct diff_pair d;
	char line[512], v[64];

	differential(&d, NULL, off);
	differential_assert(&d, "REKEYGUARD_MODE=off, all differential cases");
	ck_assert_msg(last_line(d.pre.err, "shim_loaded=1", line, sizeof line),
		      "MODE=off: the shim was not loaded:\n%s", d.pre.err);
	say("  [MODE=off] %s", line);
	kv(line, "shim_sessions_guarded", v, sizeof v);
	ck_assert_msg(!strcmp(v, "0"), "MODE=off guarded %s sessions (want 0)", v);
	kv(line, "shim_active_mode", v, sizeof v);
	ck_assert_msg(!strcmp(v, "off"), "MODE=off: rekeyguard_active_mode() = %s", v);
	ck_assert_msg(count_lines(d.pre.err, "rekeyguard:", NULL) == 0,
		      "MODE=off printed rekeyguard lines:\n%s", d.pre.err);
	run_free(&d.plain);
	run_free(&d.pre);
}
END_TEST

/* The one-time notice: once per process with REKEYGUARD_NOTICE=on (as in
 * QEMU, where auto turns it on); silent by default in other programs,
 * which may parse their own stderr; REKEYGUARD_NOTICE=off still shows it
 * at REKEYGUARD_LOG=info. */
static const struct notice_case {
	const char *env[3];
	int want;
} notice_cases[] = {
	{ { "REKEYGUARD_NOTICE=on", NULL }, 1 },
	{ { NULL }, 0 },
	{ { "REKEYGUARD_NOTICE=off", NULL }, 0 },
	{ { "REKEYGUARD_NOTICE=off", "REKEYGUARD_LOG=info", NULL }, 1 },
};

START_TEST(test_notice_once)
{
	/* push-errors opens four connections (eight sessions) */
	const struct notice_case *nc = &notice_cases[_i];
	struct diff_pair d;
	char line[512], v[64], what[128];
	int plain_n, pre_n, all_n;

	snprintf(what, sizeof what, "notice: differential push-errors %s %s",
		 nc->env[0] ? nc->env[0] : "(default: not QEMU)", nc->env[1] ? nc->env[1] : "");
	differential(&d, "push-errors", nc->env);
	differential_assert(&d, what);
	plain_n = count_lines(d.plain.err, "rekeyguard: guarding", NULL);
	pre_n = count_lines(d.pre.err, "rekeyguard: guarding", NULL);
	all_n = count_lines(d.pre.err, "rekeyguard:", NULL);
	last_line(d.pre.err, "shim_loaded=1", line, sizeof line);
	kv(line, "shim_sessions_guarded", v, sizeof v);
	say("  [notice] plain: %d \"rekeyguard: guarding\" lines; preloaded: %d (want %d); %s",
	    plain_n, pre_n, nc->want, line);
	ck_assert_msg(plain_n == 0, "plain run printed the notice");
	ck_assert_msg(pre_n == nc->want, "the preloaded run printed the notice %d times (want %d):\n%s",
		      pre_n, nc->want, d.pre.err);
	ck_assert_msg(all_n == pre_n, "the preloaded run printed other rekeyguard lines:\n%s",
		      d.pre.err);
	ck_assert_msg(atol(v) >= 8, "rekeyguard_sessions_guarded() = %s after 8 sessions", v);
	if (nc->want) {
		char notice[512];
		last_line(d.pre.err, "rekeyguard: guarding", notice, sizeof notice);
		say("  [notice] %s", notice);
		ck_assert_msg(strstr(notice, "3.") != NULL,
			      "the notice does not name the GnuTLS version: %s", notice);
	}
	run_free(&d.plain);
	run_free(&d.pre);
}
END_TEST

/* LD_PRELOAD into programs that never touch GnuTLS changes nothing. */
START_TEST(test_preload_non_gnutls)
{
	static const char *const t0[] = { "/bin/true", NULL };
	static const char *const t1[] = { "sh", "-c", "echo hi", NULL };
	static const char *const t2[] = { "sh", "-c", "echo out; echo err >&2; exit 3", NULL };
	static const char *const *const cmds[] = { t0, t1, t2 };
	const char *const *argv = cmds[_i];
	struct run a, b;

	run_prog(&a, argv, NULL, NULL, 30);
	run_prog(&b, argv, lib_path, NULL, 30);
	say("  [non-GnuTLS] %s: plain %s, out \"%.40s\", err \"%.40s\"; preloaded %s, "
	    "out \"%.40s\", err \"%.40s\"", argv[argv[1] ? 2 : 0], how_ended(&a), a.out, a.err,
	    how_ended(&b), b.out, b.err);
	ck_assert_msg(a.exited && b.exited && a.code == b.code,
		      "%s: exit status differs: plain %s, preloaded %s", b.cmd, how_ended(&a),
		      how_ended(&b));
	ck_assert_msg(!strcmp(a.out, b.out), "%s: stdout differs: \"%s\" vs \"%s\"", b.cmd,
		      a.out, b.out);
	ck_assert_msg(!strcmp(a.err, b.err), "%s: stderr differs: \"%s\" vs \"%s\"", b.cmd,
		      a.err, b.err);
	run_free(&a);
	run_free(&b);
}
END_TEST

static char long_value[10000 + 32];

struct bad_config {
	const char *var;
	const char *value;	/* NULL: long_value */
	int valid;		/* accepted without a complaint */
	const char *mode;	/* expected rekeyguard_active_mode(), NULL: any */
};

static const struct bad_config bad_configs[] = {
	{ "REKEYGUARD_MODE", "", 0, "guard" },
	{ "REKEYGUARD_MODE", "bogus", 0, "guard" },
	{ "REKEYGUARD_MODE", NULL, 0, "guard" },
	{ "REKEYGUARD_MODE", "guard extra", 0, "guard" },
	{ "REKEYGUARD_LOG", "", 0, "guard" },
	{ "REKEYGUARD_LOG", "bogus", 0, "guard" },
	{ "REKEYGUARD_LOG", NULL, 0, "guard" },
	{ "REKEYGUARD_LOG", "warn extra", 0, "guard" },
	{ "REKEYGUARD_NOTICE", "bogus", 0, "guard" },
	{ "REKEYGUARD_NOTICE", "", 0, "guard" },
	/* case-insensitive values are valid */
	{ "REKEYGUARD_MODE", "GUARD", 1, "guard" },
	{ "REKEYGUARD_MODE", "Off", 1, "off" },
	{ "REKEYGUARD_MODE", "AUTO", 1, "guard" },
	{ "REKEYGUARD_LOG", "DEBUG", 1, "guard" },
	{ "REKEYGUARD_LOG", "Error", 1, "guard" },
	{ "REKEYGUARD_NOTICE", "ON", 1, "guard" },
	{ "REKEYGUARD_NOTICE", "off", 1, "guard" },
};
#define N_BAD_CONFIGS ((int)(sizeof bad_configs / sizeof bad_configs[0]))

START_TEST(test_bad_config)
{
	const struct bad_config *bc = &bad_configs[_i];
	char assignment[sizeof long_value + 64], line[512], v[64];
	const char *value = bc->value ? bc->value : long_value;
	const char *const extra[] = { assignment, NULL };
	const char *const words[] = { bc->var, "accepted", NULL };
	struct diff_pair d;
	int complaints, lines;

	snprintf(assignment, sizeof assignment, "%s=%s", bc->var, value);
	differential(&d, "push-errors", extra);
	complaints = count_lines(d.pre.err, "rekeyguard:", words);
	lines = count_lines(d.pre.err, "rekeyguard:", NULL);
	last_line(d.pre.err, "shim_loaded=1", line, sizeof line);
	say("  [config] %s=\"%.20s%s\" (%zu chars): %s, transcript %s, %d complaint line(s), "
	    "%d rekeyguard: line(s); %s", bc->var, value, strlen(value) > 20 ? "..." : "",
	    strlen(value), how_ended(&d.pre), d.same ? "identical" : "DIFFERS", complaints,
	    lines, line);
	for (const char *l = d.pre.err; l && *l; ) {
		const char *end = strchr(l, '\n');
		int len = end ? (int)(end - l) : (int)strlen(l);

		if (len > 11 && !strncmp(l, "rekeyguard:", 11) &&
		    memmem(l, (size_t)len, "accepted", 8))
			say("    %.*s%s", len > 300 ? 300 : len, l, len > 300 ? "..." : "");
		l = end ? end + 1 : NULL;
	}
	differential_assert(&d, "config");
	if (bc->valid)
		ck_assert_msg(complaints == 0, "%s=%s is valid but got a complaint:\n%.2000s",
			      bc->var, value, d.pre.err);
	else
		ck_assert_msg(complaints == 1,
			      "%s=\"%.40s\": want exactly one stderr line starting \"rekeyguard:\" "
			      "naming %s and containing \"accepted\", got %d:\n%.2000s",
			      bc->var, value, bc->var, complaints, d.pre.err);
	kv(line, "shim_active_mode", v, sizeof v);
	if (bc->mode)
		ck_assert_msg(!strcmp(v, bc->mode), "%s=\"%.40s\": active mode %s, want %s",
			      bc->var, value, v, bc->mode);
	run_free(&d.plain);
	run_free(&d.pre);
}
END_TEST

/* A garbage value still guards: the race scenario passes preloaded. */
START_TEST(test_bad_config_still_guards)
{
	const char *const extra[] = { "REKEYGUARD_MODE=bogus", "REKEYGUARD_LOG=bogus", NULL };
	const char *args[] = { "duplex", "--seconds", "1", NULL };
	const char *const w_mode[] = { "REKEYGUARD_MODE", "accepted", NULL };
	const char *const w_log[] = { "REKEYGUARD_LOG", "accepted", NULL };
	struct prog s;

	scenario(&s, 1, extra, args, 60);
	prog_report("duplex, MODE=bogus LOG=bogus", &s);
	ck_assert_msg(s.pass, "%s: %s: %s", s.r.cmd, how_ended(&s.r), s.result);
	ck_assert_msg(count_lines(s.r.err, "rekeyguard:", w_mode) == 1 &&
		      count_lines(s.r.err, "rekeyguard:", w_log) == 1,
		      "want one complaint per variable:\n%.2000s", s.r.err);
	run_free(&s.r);
}
END_TEST

/* ================================================================= suite */

/* Late loading, as rekeyguard-inject does it: the program opens a session,
 * then dlopen()s the library and calls rekeyguard_inject_activate, which
 * patches the GOT. Races with forced key updates must pass, the earlier
 * session must keep working, and the notice must say so. */
START_TEST(test_late_load)
{
	const char *const a0[] = { "duplex", "--seconds", DUPLEX_SECONDS, "--late-load", lib_path, NULL };
	const char *const a1[] = { "qemu-shape", "--keyupdates", "--seconds", QEMU_SECONDS,
				   "--late-load", lib_path, NULL };
	const char *const *args[] = { a0, a1 };
	struct prog s;
	char label[64];

	snprintf(label, sizeof label, "%s late-loaded", args[_i][0]);
	scenario(&s, 0, NULL, args[_i], 90);
	prog_report(label, &s);
	ck_assert_msg(s.pass, "%s: %s: %s", s.r.cmd, how_ended(&s.r), s.result);
	ck_assert_msg(strstr(s.r.err, "rekeyguard: injected into running process") != NULL,
		      "%s: no injection notice on stderr", s.r.cmd);
	ck_assert_msg(strstr(s.result, "late_load_guarded=0") == NULL, "%s: nothing guarded", s.r.cmd);
	run_free(&s.r);
}
END_TEST

/* rekeyguard-status against real processes (tests/status-test.sh starts
 * them: plain, preloaded, a preload that cannot load, MODE=off). */
START_TEST(test_status_tool)
{
	char script[PATH_MAX + 32];
	snprintf(script, sizeof script, "%s/status-test.sh", tests_dir);
	const char *const argv[] = { script, NULL };
	struct run r;

	run_prog(&r, argv, NULL, NULL, 90);
	say("  [status] %s in %.1f s", how_ended(&r), r.secs);
	show_tail("status-test", r.out, 40);
	ck_assert_msg(r.exited && r.code == 0, "%s: %s\n%s", r.cmd, how_ended(&r), r.out);
	run_free(&r);
}
END_TEST

static Suite *rekeyguard_suite(void)
{
	Suite *s = suite_create("rekeyguard");
	TCase *tc;

	tc = tcase_create("build");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_build_no_gnutls_needed);
	tcase_add_test(tc, test_build_exports);
	suite_add_tcase(s, tc);

	tc = tcase_create("duplex");
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_duplex_plain);
	tcase_add_loop_test(tc, test_duplex_preloaded, 0, 10);
	suite_add_tcase(s, tc);

	tc = tcase_create("autorekey");
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_autorekey_plain);
	tcase_add_loop_test(tc, test_autorekey_preloaded, 0, 3);
	suite_add_tcase(s, tc);

	tc = tcase_create("qemu-shape");
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_qemu_shape);
	tcase_add_test(tc, test_qemu_shape_plain_keyupdates);
	suite_add_tcase(s, tc);

	tc = tcase_create("tinybuf");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_tinybuf, 0, 3);
	suite_add_tcase(s, tc);

	tc = tcase_create("differential");
	tcase_set_timeout(tc, 150);
	if (n_diff_cases > 0)
		tcase_add_loop_test(tc, test_differential, 0, n_diff_cases);
	else
		tcase_add_loop_test(tc, test_differential, 0, 1);	/* fails: no cases */
	suite_add_tcase(s, tc);

	tc = tcase_create("kurace");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_kurace_plain);
	tcase_add_loop_test(tc, test_kurace_preloaded, 0, 3);
	suite_add_tcase(s, tc);

	tc = tcase_create("passthrough");
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_mode_off_passthrough);
	tcase_add_loop_test(tc, test_notice_once, 0, (int)(sizeof notice_cases / sizeof notice_cases[0]));
	tcase_add_loop_test(tc, test_preload_non_gnutls, 0, 3);
	suite_add_tcase(s, tc);

	tc = tcase_create("config");
	tcase_set_timeout(tc, 150);
	tcase_add_loop_test(tc, test_bad_config, 0, N_BAD_CONFIGS);
	tcase_add_test(tc, test_bad_config_still_guards);
	suite_add_tcase(s, tc);

	tc = tcase_create("late-load");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_late_load, 0, 2);
	suite_add_tcase(s, tc);

	tc = tcase_create("status");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_status_tool);
	suite_add_tcase(s, tc);
	return s;
}

static int locate(void)
{
	char self[PATH_MAX], guess[PATH_MAX + 32];
	const char *env = getenv("REKEYGUARD_LIB");
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);

	if (n <= 0) {
		perror("check_rekeyguard: /proc/self/exe");
		return -1;
	}
	self[n] = '\0';
	*strrchr(self, '/') = '\0';
	snprintf(tests_dir, sizeof tests_dir, "%s", self);
	snprintf(scenario_path, sizeof scenario_path, "%s/rg-scenario", tests_dir);
	snprintf(differential_path, sizeof differential_path, "%s/rg-differential", tests_dir);
	snprintf(kurace_path, sizeof kurace_path, "%s/rg-kurace", tests_dir);
	snprintf(guess, sizeof guess, "%s/../librekeyguard.so", tests_dir);
	if (!realpath(env && *env ? env : guess, lib_path)) {
		fprintf(stderr, "check_rekeyguard: the shim %s: %s (run make first, or set "
			"REKEYGUARD_LIB)\n", env && *env ? env : guess, strerror(errno));
		return -1;
	}
	for (const char *p = scenario_path; p; p = p == scenario_path ? differential_path : NULL)
		if (access(p, X_OK) != 0) {
			fprintf(stderr, "check_rekeyguard: %s: %s (run make tests)\n", p,
				strerror(errno));
			return -1;
		}
	return 0;
}

int main(void)
{
	SRunner *sr;
	int failed;
	double t0 = now();

	runner.name = "check_rekeyguard";
	runner.report_tail = 8;
	if (locate() != 0)
		return 2;
	memset(long_value, 'x', 10000);
	long_value[10000] = '\0';
	signal(SIGPIPE, SIG_IGN);	/* a child closing a pipe early must not kill us */
	printf("check_rekeyguard: shim %s\n  programs in %s\n", lib_path, tests_dir);
	fflush(stdout);
	load_differential_cases();

	sr = srunner_create(rekeyguard_suite());
	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	printf("check_rekeyguard: %s in %.0f s\n", failed ? "FAILED" : "all passed", now() - t0);
	return failed ? 1 : 0;
}
