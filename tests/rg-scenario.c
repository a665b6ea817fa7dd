/*
 * rg-scenario.c — the concurrency scenarios (a) to (d).
 *
 *   duplex      (a) full duplex, blocking socketpair, forced KeyUpdates
 *   autorekey   (b) the real automatic rekey after 2^24 records
 *   qemu-shape  (c) bulk one way, a blocked receiver for small messages
 *   tinybuf     (d) both sides send bulk through minimum socket buffers
 *
 * Every scenario runs two GnuTLS endpoints in this process with a sender
 * and a receiver thread per endpoint, exactly the sharing GnuTLS documents
 * as allowed, and checks every byte against rg_pattern.  The program never
 * links the shim; run it with LD_PRELOAD to test the shim.
 *
 * Output contract (parsed by tests/check_rekeyguard.c): progress goes to
 * stderr; the last line on stdout is
 *     RESULT <scenario> PASS|FAIL key=value ...
 * with reason= on FAIL.  Exit status: 0 pass, 1 fail, 2 usage or set-up
 * error, 4 watchdog timeout.  A crash kills the process: that is a fail too.
 *
 * Threads: the main thread only sets up, monitors and reports.  Worker
 * threads report a failure with fail() and stop; the main thread then
 * prints the result and _exit()s without joining, because after a GnuTLS
 * failure other workers may be blocked forever on a dead stream.
 */
#include "harness.h"

#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_RECORD	16384
#define RECV_BUFFER	(2 * MAX_RECORD)
#define SMALL_MESSAGE	64
#define TLS13_REKEY_AT	UINT64_C(0xfffffd)	/* lib/record.c, GnuTLS 3.6-3.8 */

/* ------------------------------------------------------------- options */

enum scenario_id { SC_DUPLEX, SC_AUTOREKEY, SC_QEMU, SC_TINYBUF };

static const char *const scenario_names[] = {
	[SC_DUPLEX] = "duplex",
	[SC_AUTOREKEY] = "autorekey",
	[SC_QEMU] = "qemu-shape",
	[SC_TINYBUF] = "tinybuf",
};

static struct options {
	enum scenario_id id;
	const char *name;
	double seconds;		/* duplex, qemu-shape */
	int quick;
	int keyupdates;		/* qemu-shape, tinybuf: force key updates */
	int no_keyupdates;	/* duplex: baseline without key updates */
	int full;		/* autorekey: no fast-forward */
	int custom;		/* duplex, tinybuf: QEMU-like custom transport */
	int tcp;		/* duplex, tinybuf: TCP loopback, fd transport */
	unsigned record;	/* qemu-shape bulk record size */
	unsigned rekeys;	/* autorekey: threshold crossings per direction */
	unsigned mib;		/* tinybuf: MiB per direction */
	double max_stall_ms;	/* qemu-shape: longest acceptable bulk gap */
	unsigned timeout;	/* watchdog, seconds */
	unsigned stall_secs;	/* no progress at all for this long: fail */
	const char *late_load;	/* dlopen this shim and activate it first */
	uint64_t seed;
} opt;

static void usage(FILE *out)
{
	fprintf(out,
"usage: rg-scenario SCENARIO [options]\n"
"\n"
"Scenarios (a-d):\n"
"  duplex      full duplex over a blocking socketpair, a sender and a receiver\n"
"              thread per endpoint, forced KeyUpdates (client: flags 0 and\n"
"              GNUTLS_KU_PEER alternately every 300 ms from 50 ms; server:\n"
"              flags 0 every 400 ms from 100 ms)\n"
"  autorekey   GnuTLS's own rekey after 2^24 records, small records over an\n"
"              in-memory blocking transport; fast-forwards the sequence\n"
"              numbers while quiesced unless --full\n"
"  qemu-shape  QEMU migration shape over QEMU-like custom push/pull: A streams\n"
"              bulk and blocks in receive; B sends 64 bytes every 200 ms\n"
"  tinybuf     both endpoints send bulk at once through minimum socket buffers\n"
"\n"
"Options:\n"
"  --seconds N       traffic duration for duplex and qemu-shape (default 3)\n"
"  --seed N          seed for record sizes and timing choices (or RG_SEED)\n"
"  --quick           shorter run (CI smoke)\n"
"  --keyupdates      qemu-shape, tinybuf: force KeyUpdates during the run\n"
"  --no-keyupdates   duplex: no forced KeyUpdates (baseline)\n"
"  --full            autorekey: send 2^24 records per crossing for real\n"
"  --rekeys N        autorekey: threshold crossings per direction\n"
"                    (default 10, --quick 4, --full 2)\n"
"  --custom          duplex, tinybuf: QEMU-like custom push/pull transport\n"
"  --tcp             duplex: TCP loopback instead of a socketpair\n"
"  --record N        qemu-shape: bulk record size in bytes (default 16384)\n"
"  --mib N           tinybuf: MiB sent each way (default 64, --quick 8)\n"
"  --max-stall-ms N  qemu-shape: fail when the bulk stream stalls longer\n"
"                    (default 1000)\n"
"  --stall-secs N    fail when no byte arrives anywhere for N s (default 10)\n"
"  --timeout N       watchdog in seconds (default: a multiple of the run)\n"
"  --late-load LIB    load the shim late, as rekeyguard-inject does: open a\n"
"                    session, dlopen LIB, call rekeyguard_inject_activate,\n"
"                    run the scenario, then check the older session still\n"
"                    works and was never guarded\n"
"  --help            this text\n"
"\n"
"The last line on stdout is \"RESULT <scenario> PASS|FAIL key=value ...\".\n"
"Exit status: 0 pass, 1 fail, 2 usage or set-up error, 4 watchdog timeout.\n"
"Run with LD_PRELOAD=.../librekeyguard.so to test the shim.\n");
}

static void usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "rg-scenario: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n(rg-scenario --help for usage)\n");
	printf("RESULT %s FAIL reason=usage\n", opt.name ? opt.name : "unknown");
	exit(2);
}

static unsigned long parse_number(const char *what, const char *s,
				  unsigned long min, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno || *end || end == s || v < min || v > max)
		usage_error("%s: \"%s\" is not a number in [%lu, %lu]",
			    what, s, min, max);
	return v;
}

static void parse_options(int argc, char **argv)
{
	enum { O_SECONDS = 256, O_SEED, O_QUICK, O_KU, O_NO_KU, O_FULL,
	       O_REKEYS, O_CUSTOM, O_TCP, O_RECORD, O_MIB, O_MAX_STALL,
	       O_STALL_SECS, O_TIMEOUT, O_LATE_LOAD, O_HELP };
	static const struct option longopts[] = {
		{ "seconds", required_argument, NULL, O_SECONDS },
		{ "seed", required_argument, NULL, O_SEED },
		{ "quick", no_argument, NULL, O_QUICK },
		{ "keyupdates", no_argument, NULL, O_KU },
		{ "no-keyupdates", no_argument, NULL, O_NO_KU },
		{ "full", no_argument, NULL, O_FULL },
		{ "rekeys", required_argument, NULL, O_REKEYS },
		{ "custom", no_argument, NULL, O_CUSTOM },
		{ "tcp", no_argument, NULL, O_TCP },
		{ "record", required_argument, NULL, O_RECORD },
		{ "mib", required_argument, NULL, O_MIB },
		{ "max-stall-ms", required_argument, NULL, O_MAX_STALL },
		{ "stall-secs", required_argument, NULL, O_STALL_SECS },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "late-load", required_argument, NULL, O_LATE_LOAD },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 }
	};
	int c, seconds_set = 0, rekeys_set = 0, mib_set = 0;
	const char *seed_arg = NULL;

	opt.record = MAX_RECORD;
	opt.max_stall_ms = 1000;
	opt.stall_secs = 10;

	/* The scenario comes first, but accept it anywhere. */
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case O_SECONDS: {
			char *end;
			opt.seconds = strtod(optarg, &end);
			if (*end || end == optarg || opt.seconds <= 0 ||
			    opt.seconds > 86400)
				usage_error("--seconds: \"%s\" is not a positive number",
					    optarg);
			seconds_set = 1;
			break;
		}
		case O_SEED: seed_arg = optarg; break;
		case O_QUICK: opt.quick = 1; break;
		case O_KU: opt.keyupdates = 1; break;
		case O_NO_KU: opt.no_keyupdates = 1; break;
		case O_FULL: opt.full = 1; break;
		case O_REKEYS:
			opt.rekeys = parse_number("--rekeys", optarg, 1, 1000);
			rekeys_set = 1;
			break;
		case O_CUSTOM: opt.custom = 1; break;
		case O_LATE_LOAD: opt.late_load = optarg; break;
		case O_TCP: opt.tcp = 1; break;
		case O_RECORD:
			opt.record = parse_number("--record", optarg, 1, MAX_RECORD);
			break;
		case O_MIB:
			opt.mib = parse_number("--mib", optarg, 1, 1 << 20);
			mib_set = 1;
			break;
		case O_MAX_STALL:
			opt.max_stall_ms = parse_number("--max-stall-ms", optarg,
							1, 3600000);
			break;
		case O_STALL_SECS:
			opt.stall_secs = parse_number("--stall-secs", optarg, 1, 86400);
			break;
		case O_TIMEOUT:
			opt.timeout = parse_number("--timeout", optarg, 1, 864000);
			break;
		case 'h':
		case O_HELP:
			usage(stdout);
			exit(0);
		default:
			usage_error("unknown option");
		}
	}
	if (optind != argc - 1)
		usage_error(optind >= argc ? "no scenario given"
					   : "exactly one scenario expected");
	for (size_t i = 0; i < sizeof scenario_names / sizeof *scenario_names; i++)
		if (strcmp(argv[optind], scenario_names[i]) == 0) {
			opt.id = (enum scenario_id)i;
			opt.name = scenario_names[i];
		}
	if (!opt.name)
		usage_error("unknown scenario \"%s\" (duplex, autorekey, "
			    "qemu-shape, tinybuf)", argv[optind]);
	if (opt.custom && opt.tcp)
		usage_error("--custom and --tcp exclude each other");
	/* Minimum buffers on TCP loopback stall in the kernel (zero-window
	 * probes back off to minutes), with or without GnuTLS. */
	if (opt.tcp && opt.id != SC_DUPLEX)
		usage_error("--tcp is for duplex only");

	if (!seconds_set)
		opt.seconds = opt.quick ? 1.5 : 3;
	if (!rekeys_set)
		opt.rekeys = opt.full ? 2 : opt.quick ? 4 : 10;
	if (!mib_set)
		opt.mib = opt.quick ? 8 : 64;
	if (!opt.timeout) {
		switch (opt.id) {
		case SC_DUPLEX:
		case SC_QEMU:
			opt.timeout = 30 + (unsigned)(5 * opt.seconds);
			break;
		case SC_AUTOREKEY:
			opt.timeout = opt.full ? 300 * opt.rekeys : 60 + 5 * opt.rekeys;
			break;
		case SC_TINYBUF:
			opt.timeout = 30 + opt.mib / 2;
			break;
		}
	}

	if (seed_arg) {
		parse_number("--seed", seed_arg, 1, ULONG_MAX);
		setenv("RG_SEED", seed_arg, 1);
	}
	opt.seed = rg_seed();
}

/* ------------------------------------------------------- run state */

/* run_lock guards everything in this block that is not _Atomic. */
static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t run_cond = PTHREAD_COND_INITIALIZER;
static atomic_int run_failed;
static char fail_reason[96];
static char fail_detail[256];
static double fail_time;
static unsigned threads_done;

static double t_start;				/* traffic start (rg_now) */
static int autorekey_phase = -1;		/* autorekey: phase running */
static double first_ku_time;			/* 0: none yet */
static _Atomic uint64_t progress_bytes;	/* all bytes received, any stream */
static _Atomic uint64_t ku_calls;		/* gnutls_session_key_update calls */
static _Atomic uint64_t ku_peer_calls;		/* ... of which with GNUTLS_KU_PEER */
static _Atomic uint64_t auto_rekeys;		/* autorekey: GnuTLS's own, verified */
static _Atomic uint64_t recv_again;		/* GNUTLS_E_AGAIN/_INTERRUPTED from recv */
static _Atomic uint64_t send_again;		/* ... from send */

/* Extra key=value pairs for the RESULT line, filled by the scenario. */
static char result_extra[512];

static void add_result(const char *fmt, ...)
{
	size_t used = strlen(result_extra);
	va_list ap;

	if (used + 2 >= sizeof result_extra)
		return;
	result_extra[used++] = ' ';
	va_start(ap, fmt);
	vsnprintf(result_extra + used, sizeof result_extra - used, fmt, ap);
	va_end(ap);
}

/* Values in the RESULT line never contain blanks. */
static void no_blanks(char *s)
{
	for (; *s; s++)
		if (*s == ' ' || *s == '\t' || *s == '\n')
			*s = '_';
}

/* A session invalidated by a failure on its other thread is a consequence,
 * not a cause: a later failure with a real cause replaces it. */
static int secondary_reason(const char *reason)
{
	return strcmp(reason, "gnutls-error:GNUTLS_E_INVALID_SESSION") == 0;
}

static void fail_locked(const char *reason, const char *fmt, va_list ap)
{
	if (atomic_load(&run_failed) &&
	    !(secondary_reason(fail_reason) && !secondary_reason(reason)))
		return;
	snprintf(fail_reason, sizeof fail_reason, "%s", reason);
	vsnprintf(fail_detail, sizeof fail_detail, fmt, ap);
	no_blanks(fail_reason);
	no_blanks(fail_detail);
	fail_time = rg_now();
	atomic_store(&run_failed, 1);
	pthread_cond_broadcast(&run_cond);
}

static void fail_locked_fmt(const char *reason, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fail_locked(reason, fmt, ap);
	va_end(ap);
}

/* Record the first failure; workers stop after calling this. */
static void fail(const char *reason, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&run_lock);
	va_start(ap, fmt);
	fail_locked(reason, fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&run_lock);
	fprintf(stderr, "rg-scenario: failure: %s\n", reason);
}

static void fail_gnutls(const char *who, const char *call, int ret)
{
	char reason[80];

	if (ret == GNUTLS_E_DECRYPTION_FAILED)
		snprintf(reason, sizeof reason, "decryption-failed");
	else
		snprintf(reason, sizeof reason, "gnutls-error:%s",
			 gnutls_strerror_name(ret) ? gnutls_strerror_name(ret)
						   : "unknown");
	fail(reason, "%s:%s=%d", who, call, ret);
	fprintf(stderr, "rg-scenario: %s: %s: %s\n", who, call, gnutls_strerror(ret));
}

static int failed(void)
{
	return atomic_load_explicit(&run_failed, memory_order_relaxed);
}

static void note_key_update(unsigned flags)
{
	atomic_fetch_add(&ku_calls, 1);
	if (flags & GNUTLS_KU_PEER)
		atomic_fetch_add(&ku_peer_calls, 1);
	pthread_mutex_lock(&run_lock);
	if (first_ku_time == 0)
		first_ku_time = rg_now();
	pthread_mutex_unlock(&run_lock);
}

static void thread_finished(void)
{
	pthread_mutex_lock(&run_lock);
	threads_done++;
	pthread_cond_broadcast(&run_cond);
	pthread_mutex_unlock(&run_lock);
}

static void print_result(int pass)
{
	uint64_t ku = atomic_load(&ku_calls), kup = atomic_load(&ku_peer_calls);
	uint64_t ar = atomic_load(&auto_rekeys);
	double end = pass ? rg_now() : fail_time;

	printf("RESULT %s %s", opt.name, pass ? "PASS" : "FAIL");
	if (!pass) {
		printf(" reason=%s", fail_reason);
		if (fail_detail[0])
			printf(" detail=%s", fail_detail);
		if (first_ku_time > 0)
			printf(" since_first_ku=%.3f", fail_time - first_ku_time);
		if (autorekey_phase >= 0)
			printf(" phase=%d", autorekey_phase);
	}
	/* keyupdates counts KeyUpdate messages: every call sends one, a
	 * KU_PEER request makes the peer send its own, plus GnuTLS's own. */
	printf(" elapsed=%.3f keyupdates=%" PRIu64 " ku_calls=%" PRIu64
	       " ku_peer=%" PRIu64 " bytes=%" PRIu64 " recv_again=%" PRIu64
	       " send_again=%" PRIu64 "%s shim=%s gnutls=%s seed=%" PRIu64 "\n",
	       t_start > 0 ? end - t_start : 0.0, ku + kup + ar, ku, kup,
	       atomic_load(&progress_bytes), atomic_load(&recv_again),
	       atomic_load(&send_again), result_extra,
	       rg_shim_loaded() ? "yes" : "no", gnutls_check_version(NULL),
	       opt.seed);
	fflush(stdout);
}

/* After a failure: report and leave without joining blocked workers. */
static void exit_failed(void)
{
	struct timespec grace = { 0, 50 * 1000000L };

	/* Let the other threads report a root cause (see secondary_reason). */
	nanosleep(&grace, NULL);
	pthread_mutex_lock(&run_lock);
	print_result(0);
	fflush(stderr);
	_exit(1);
}

static void setup_error(const char *what, int ret)
{
	printf("RESULT %s FAIL reason=setup-error detail=%s:%s shim=%s seed=%" PRIu64 "\n",
	       opt.name, what, ret ? gnutls_strerror_name(ret) : "-",
	       rg_shim_loaded() ? "yes" : "no", opt.seed);
	fflush(stdout);
	_exit(2);
}

/*
 * Wait (main thread only) until done(arg) holds.  done() runs under
 * run_lock.  Fails the run when a worker failed or when no byte has been
 * received anywhere for opt.stall_secs (a hang or deadlock), and exits.
 */
static void monitor_until(int (*done)(void *), void *arg)
{
	uint64_t last_bytes = atomic_load(&progress_bytes);
	double last_change = rg_now(), last_report = last_change;

	pthread_mutex_lock(&run_lock);
	for (;;) {
		struct timespec ts;
		uint64_t bytes;
		double now;

		if (atomic_load(&run_failed)) {
			pthread_mutex_unlock(&run_lock);
			exit_failed();
		}
		if (done(arg))
			break;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 200 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&run_cond, &run_lock, &ts);

		now = rg_now();
		bytes = atomic_load(&progress_bytes);
		if (bytes != last_bytes) {
			last_bytes = bytes;
			last_change = now;
		} else if (now - last_change > opt.stall_secs) {
			fail_locked_fmt("stall", "no-data-for-%us", opt.stall_secs);
			continue;
		}
		if (opt.full && now - last_report >= 5) {
			fprintf(stderr, "rg-scenario: %.0f s, %" PRIu64 " bytes, "
				"%" PRIu64 " key updates\n", now - t_start, bytes,
				atomic_load(&ku_calls));
			last_report = now;
		}
	}
	pthread_mutex_unlock(&run_lock);
}

static int all_threads_done(void *arg)
{
	return threads_done >= *(unsigned *)arg;
}

static void start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
	int err = pthread_create(t, NULL, fn, arg);

	if (err) {
		fprintf(stderr, "rg-scenario: pthread_create: %s\n", strerror(err));
		setup_error("pthread_create", 0);
	}
}

/* --------------------------------------------------- streams and I/O */

/* One direction of one connection. */
struct stream {
	uint32_t id;
	_Atomic uint64_t sent;		/* bytes gnutls_record_send accepted */
	_Atomic uint64_t received;	/* bytes received and checked */
	atomic_int closed;		/* sender finished, `sent` is final */
	atomic_int eof;			/* receiver saw the end cleanly */
};

/* Send all of buf; retry GNUTLS_E_AGAIN/_INTERRUPTED with the same
 * arguments, as GnuTLS requires.  Returns 0, or -1 after fail(). */
static int send_all(gnutls_session_t s, const unsigned char *buf, size_t len,
		    const char *who)
{
	size_t off = 0;

	while (off < len) {
		ssize_t r = gnutls_record_send(s, buf + off, len - off);

		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
			atomic_fetch_add(&send_again, 1);
			if (failed())
				return -1;
			continue;
		}
		if (r < 0) {
			fail_gnutls(who, "gnutls_record_send", (int)r);
			return -1;
		}
		if (r == 0) {
			fail("gnutls-error:send-returned-0", "%s", who);
			return -1;
		}
		off += (size_t)r;
	}
	return 0;
}

static int key_update(gnutls_session_t s, unsigned flags, const char *who)
{
	int r;

	note_key_update(flags);
	do {
		r = gnutls_session_key_update(s, flags);
	} while ((r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) && !failed());
	if (r < 0) {
		fail_gnutls(who, flags ? "gnutls_session_key_update(KU_PEER)"
				       : "gnutls_session_key_update(0)", r);
		return -1;
	}
	return 0;
}

static int close_write(gnutls_session_t s, const char *who)
{
	int r;

	do {
		r = gnutls_bye(s, GNUTLS_SHUT_WR);
	} while ((r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) && !failed());
	if (r < 0) {
		fail_gnutls(who, "gnutls_bye", r);
		return -1;
	}
	return 0;
}

/* Receive once into buf and check the bytes against the stream pattern.
 * Returns bytes (>0), 0 at EOF, -1 after fail(). */
static ssize_t receive_checked(gnutls_session_t s, struct stream *st,
			       unsigned char *buf, size_t size, const char *who)
{
	for (;;) {
		ssize_t r = gnutls_record_recv(s, buf, size);
		uint64_t off;
		long bad;

		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
			atomic_fetch_add(&recv_again, 1);
			if (failed())
				return -1;
			continue;
		}
		if (r < 0) {
			fail_gnutls(who, "gnutls_record_recv", (int)r);
			return -1;
		}
		if (r == 0)
			return 0;
		off = atomic_load_explicit(&st->received, memory_order_relaxed);
		bad = rg_pattern_check(buf, (size_t)r, st->id, off);
		if (bad >= 0) {
			fail("data-mismatch", "%s:stream=%u:offset=%" PRIu64
			     ":record_len=%zd", who, st->id, off + (uint64_t)bad, r);
			return -1;
		}
		atomic_store_explicit(&st->received, off + (uint64_t)r,
				      memory_order_relaxed);
		atomic_fetch_add_explicit(&progress_bytes, (uint64_t)r,
					  memory_order_relaxed);
		return r;
	}
}

/* ------------------------------------------------ generic workers */

struct sender {
	const char *who;
	gnutls_session_t session;
	struct stream *st;
	unsigned min_len, max_len;	/* record sizes, uniform */
	uint64_t rng;
	double duration;		/* > 0: stop after this many seconds */
	uint64_t max_bytes;		/* > 0: stop after this many bytes */
	unsigned period_ms;		/* > 0: pause between records */
	unsigned ku_first_ms;		/* first forced KeyUpdate after this */
	unsigned ku_period_ms;		/* > 0: force a KeyUpdate this often */
	int ku_alternate_peer;		/* alternate flags 0 and GNUTLS_KU_PEER */
	atomic_int *stop;		/* optional: stop when set */
	int no_bye;			/* leave the stream open at the end */
	/* results */
	uint64_t records;
	double t_begin, t_end, max_gap;
	double max_gap_at;		/* when the longest gap ended, from t_begin */
};

struct receiver {
	const char *who;
	gnutls_session_t session;
	struct stream *st;
	atomic_int *on_eof;		/* optional: set at clean EOF */
};

static int stop_requested(struct sender *sd)
{
	return failed() || (sd->stop && atomic_load(sd->stop));
}

/* Sleep up to ms, waking early when the sender should stop. */
static void pause_ms(struct sender *sd, unsigned ms)
{
	double until = rg_now() + ms / 1000.0;

	while (!stop_requested(sd)) {
		double left = until - rg_now();
		struct timespec ts = { 0, 10 * 1000000L };

		if (left <= 0)
			break;
		if (left < 0.010)
			ts.tv_nsec = (long)(left * 1e9);
		nanosleep(&ts, NULL);
	}
}

static void *sender_thread(void *arg)
{
	struct sender *sd = arg;
	unsigned char *buf = malloc(MAX_RECORD);
	uint64_t off = 0;
	double last, next_ku;
	unsigned ku_n = 0;

	if (!buf)
		abort();
	sd->t_begin = last = rg_now();
	next_ku = sd->t_begin + sd->ku_first_ms / 1000.0;
	for (;;) {
		double now = rg_now();
		size_t len;

		if (stop_requested(sd))
			break;
		if (sd->duration > 0 && now - sd->t_begin >= sd->duration)
			break;
		if (sd->max_bytes && off >= sd->max_bytes)
			break;
		if (sd->ku_period_ms && now >= next_ku) {
			unsigned flags = sd->ku_alternate_peer && (ku_n & 1)
					 ? GNUTLS_KU_PEER : 0;
			if (key_update(sd->session, flags, sd->who) < 0)
				break;
			ku_n++;
			next_ku += sd->ku_period_ms / 1000.0;
			if (next_ku < now)
				next_ku = now + sd->ku_period_ms / 1000.0;
		}
		len = sd->min_len;
		if (sd->max_len > sd->min_len)
			len += rg_rand(&sd->rng) % (sd->max_len - sd->min_len + 1);
		if (sd->max_bytes && len > sd->max_bytes - off)
			len = (size_t)(sd->max_bytes - off);
		rg_pattern_fill(buf, len, sd->st->id, off);
		if (send_all(sd->session, buf, len, sd->who) < 0)
			break;
		off += len;
		atomic_store(&sd->st->sent, off);
		sd->records++;
		now = rg_now();
		if (now - last > sd->max_gap) {
			sd->max_gap = now - last;
			sd->max_gap_at = now - sd->t_begin;
		}
		last = now;
		if (sd->period_ms)
			pause_ms(sd, sd->period_ms);
	}
	sd->t_end = last;
	atomic_store(&sd->st->closed, 1);
	if (!failed() && !sd->no_bye)
		close_write(sd->session, sd->who);
	free(buf);
	thread_finished();
	return NULL;
}

static void *receiver_thread(void *arg)
{
	struct receiver *rx = arg;
	unsigned char *buf = malloc(RECV_BUFFER);

	if (!buf)
		abort();
	for (;;) {
		ssize_t r = receive_checked(rx->session, rx->st, buf, RECV_BUFFER,
					    rx->who);
		if (r < 0)
			break;
		if (r == 0) {
			uint64_t got = atomic_load(&rx->st->received);
			uint64_t sent = atomic_load(&rx->st->sent);

			if (!atomic_load(&rx->st->closed) || got != sent) {
				fail("truncated", "%s:stream=%u:received=%" PRIu64
				     ":sent=%" PRIu64 ":closed=%d", rx->who,
				     rx->st->id, got, sent,
				     atomic_load(&rx->st->closed));
				break;
			}
			atomic_store(&rx->st->eof, 1);
			if (rx->on_eof)
				atomic_store(rx->on_eof, 1);
			break;
		}
	}
	free(buf);
	thread_finished();
	return NULL;
}

/* Check that every stream ended cleanly with every byte delivered. */
static void check_streams(struct stream *streams, int n)
{
	for (int i = 0; i < n; i++) {
		uint64_t got = atomic_load(&streams[i].received);
		uint64_t sent = atomic_load(&streams[i].sent);

		if (!atomic_load(&streams[i].eof) || got != sent) {
			fail("truncated", "stream=%u:received=%" PRIu64
			     ":sent=%" PRIu64, streams[i].id, got, sent);
			exit_failed();
		}
	}
}

static uint64_t seed_for(uint32_t who)
{
	uint64_t s = opt.seed ^ (0x9E3779B97F4A7C15ull * (who + 1));

	rg_rand(&s);
	return s;
}

static void make_pair(struct rg_pair *p, int custom, int tcp)
{
	int ret;

	p->client = p->server = NULL;
	p->fd[0] = p->fd[1] = -1;
	if (custom)
		ret = rg_pair_custom(p, 0, NULL);
	else if (tcp)
		ret = rg_pair_tcp(p, 0, NULL);
	else
		ret = rg_pair_fd(p, 0, NULL);
	if (ret < 0)
		setup_error("handshake", ret);
	add_result("transport=%s", custom ? "custom" : tcp ? "tcp-fd" : "fd");
	add_result("cipher=%s",
		   gnutls_cipher_get_name(gnutls_cipher_get(p->client)));
}

/* -------------------------------------------- (a) duplex, (d) tinybuf */

/*
 * Both endpoints stream pattern data to each other at once; a sender and
 * a receiver thread per endpoint.  duplex stops after opt.seconds, tinybuf
 * after opt.mib MiB each way through minimum socket buffers.  Key updates:
 * the client alternates flags 0 and GNUTLS_KU_PEER every 300 ms from 50 ms
 * on, the server uses flags 0 every 400 ms from 100 ms on.  Only the client asks the peer (two
 * crossing KU_PEER requests fail even with perfect locking), and each end
 * receives at most 1/0.3 + 1/0.6 < 8 KeyUpdates per second.
 */
static int run_bidirectional(int tiny)
{
	struct rg_pair p;
	struct stream streams[2] = { { .id = 1 }, { .id = 2 } };
	struct sender send[2];
	struct receiver recv[2];
	pthread_t threads[4];
	unsigned nthreads = 4;
	int keyupdates = tiny ? opt.keyupdates : !opt.no_keyupdates;

	make_pair(&p, opt.custom, opt.tcp);
	if (tiny) {
		int one = 1, v[2][2];
		socklen_t len = sizeof(int);

		for (int i = 0; i < 2; i++) {
			if (setsockopt(p.fd[i], SOL_SOCKET, SO_SNDBUF, &one, sizeof one) < 0 ||
			    setsockopt(p.fd[i], SOL_SOCKET, SO_RCVBUF, &one, sizeof one) < 0) {
				perror("rg-scenario: setsockopt");
				setup_error("setsockopt", 0);
			}
			getsockopt(p.fd[i], SOL_SOCKET, SO_SNDBUF, &v[i][0], &len);
			getsockopt(p.fd[i], SOL_SOCKET, SO_RCVBUF, &v[i][1], &len);
		}
		add_result("sndbuf=%d rcvbuf=%d", v[0][0], v[0][1]);
	}

	memset(send, 0, sizeof send);
	for (int i = 0; i < 2; i++) {
		send[i].who = i == 0 ? "client-send" : "server-send";
		send[i].session = i == 0 ? p.client : p.server;
		send[i].st = &streams[i];
		send[i].min_len = 1;
		send[i].max_len = MAX_RECORD;
		send[i].rng = seed_for((uint32_t)i);
		if (tiny)
			send[i].max_bytes = (uint64_t)opt.mib << 20;
		else
			send[i].duration = opt.seconds;
		if (keyupdates) {
			send[i].ku_first_ms = i == 0 ? 50 : 100;
			send[i].ku_period_ms = i == 0 ? 300 : 400;
			send[i].ku_alternate_peer = i == 0;
		}
		recv[i].who = i == 0 ? "server-recv" : "client-recv";
		recv[i].session = i == 0 ? p.server : p.client;
		recv[i].st = &streams[i];
		recv[i].on_eof = NULL;
	}
	fprintf(stderr, "rg-scenario: %s: %s, %s key updates\n", opt.name,
		tiny ? "fixed amount" : "timed", keyupdates ? "with" : "without");

	t_start = rg_now();
	start_thread(&threads[0], receiver_thread, &recv[0]);
	start_thread(&threads[1], receiver_thread, &recv[1]);
	start_thread(&threads[2], sender_thread, &send[0]);
	start_thread(&threads[3], sender_thread, &send[1]);
	monitor_until(all_threads_done, &nthreads);
	for (int i = 0; i < 4; i++)
		pthread_join(threads[i], NULL);
	check_streams(streams, 2);

	{
		double el = rg_now() - t_start;
		uint64_t total = atomic_load(&progress_bytes);
		add_result("throughput_mbs=%.1f", el > 0 ? total / el / 1e6 : 0.0);
	}
	rg_pair_close(&p);
	return 0;
}

/* --------------------------------------------------- (c) qemu-shape */

/*
 * A (client, the migration source) streams bulk records for opt.seconds
 * from one thread while its other thread sits in a blocking receive for
 * the return path; B (server, the destination) drains the bulk stream and
 * sends a 64-byte message every 200 ms.  With --keyupdates A's bulk
 * sender forces KeyUpdates (flags 0 and KU_PEER alternately, every 300 ms
 * from 50 ms on;
 * B answers KU_PEER on its next small message).
 */
static int run_qemu_shape(void)
{
	struct rg_pair p;
	struct stream streams[2] = { { .id = 1 }, { .id = 2 } };	/* bulk, small */
	struct sender bulk, small;
	struct receiver bulk_rx, small_rx;
	atomic_int bulk_done = 0;
	pthread_t threads[4];
	unsigned nthreads = 4;
	double stall_ms, mbs;

	make_pair(&p, 1, 0);
	memset(&bulk, 0, sizeof bulk);
	memset(&small, 0, sizeof small);

	bulk.who = "A-bulk-send";
	bulk.session = p.client;
	bulk.st = &streams[0];
	bulk.min_len = bulk.max_len = opt.record;
	bulk.rng = seed_for(0);
	bulk.duration = opt.seconds;
	if (opt.keyupdates) {
		bulk.ku_first_ms = 50;
		bulk.ku_period_ms = 300;
		bulk.ku_alternate_peer = 1;
	}

	small.who = "B-small-send";
	small.session = p.server;
	small.st = &streams[1];
	small.min_len = small.max_len = SMALL_MESSAGE;
	small.rng = seed_for(1);
	small.period_ms = 200;
	small.stop = &bulk_done;

	bulk_rx = (struct receiver){ "B-bulk-recv", p.server, &streams[0], &bulk_done };
	small_rx = (struct receiver){ "A-small-recv", p.client, &streams[1], NULL };

	fprintf(stderr, "rg-scenario: qemu-shape: %u-byte records for %.1f s, %s key updates\n",
		opt.record, opt.seconds, opt.keyupdates ? "with" : "without");
	t_start = rg_now();
	start_thread(&threads[0], receiver_thread, &bulk_rx);
	start_thread(&threads[1], receiver_thread, &small_rx);
	start_thread(&threads[2], sender_thread, &small);
	start_thread(&threads[3], sender_thread, &bulk);
	monitor_until(all_threads_done, &nthreads);
	for (int i = 0; i < 4; i++)
		pthread_join(threads[i], NULL);
	check_streams(streams, 2);

	stall_ms = bulk.max_gap * 1000;
	mbs = bulk.t_end > bulk.t_begin
	      ? atomic_load(&streams[0].sent) / (bulk.t_end - bulk.t_begin) / 1e6 : 0;
	add_result("throughput_mbs=%.1f max_stall_ms=%.1f max_stall_at=%.3f record=%u"
		   " small_msgs=%" PRIu64, mbs, stall_ms, bulk.max_gap_at, opt.record,
		   small.records);
	if (stall_ms > opt.max_stall_ms) {
		fail("bulk-stall", "max_stall_ms=%.1f>limit=%.0f", stall_ms,
		     opt.max_stall_ms);
		exit_failed();
	}
	rg_pair_close(&p);
	return 0;
}

/* ---------------------------------------------------- (b) autorekey */

/* A blocking in-memory byte pipe, one per direction. */
struct mem_pipe {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned char *buf;
	size_t cap, head, len;
	int closed;
};

struct mem_end {
	struct mem_pipe *in, *out;
};

static void mem_pipe_init(struct mem_pipe *p, size_t cap)
{
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	p->buf = malloc(cap);
	if (!p->buf)
		abort();
	p->cap = cap;
	p->head = p->len = 0;
	p->closed = 0;
}

static ssize_t mem_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	struct mem_pipe *p = ((struct mem_end *)ptr)->out;
	size_t n, tail, first;

	pthread_mutex_lock(&p->lock);
	while (p->len == p->cap)
		pthread_cond_wait(&p->cond, &p->lock);
	n = len < p->cap - p->len ? len : p->cap - p->len;
	tail = (p->head + p->len) % p->cap;
	first = n < p->cap - tail ? n : p->cap - tail;
	memcpy(p->buf + tail, data, first);
	memcpy(p->buf, (const unsigned char *)data + first, n - first);
	p->len += n;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return (ssize_t)n;
}

static ssize_t mem_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
	struct mem_pipe *p = ((struct mem_end *)ptr)->in;
	size_t n, first;

	pthread_mutex_lock(&p->lock);
	while (p->len == 0 && !p->closed)
		pthread_cond_wait(&p->cond, &p->lock);
	n = len < p->len ? len : p->len;
	first = n < p->cap - p->head ? n : p->cap - p->head;
	memcpy(data, p->buf + p->head, first);
	memcpy((unsigned char *)data + first, p->buf, n - first);
	p->head = (p->head + n) % p->cap;
	p->len -= n;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return (ssize_t)n;
}

/* One phase of one direction: send records [rec_first, rec_first+count),
 * the receiver stops when it has byte_end bytes of the stream in total. */
struct phase_plan {
	uint64_t rec_first, rec_count;
	uint64_t byte_end;
};

#define AR_RECORD_MAX 64	/* "small records": 1..64 bytes */

static unsigned ar_record_len(uint32_t dir, uint64_t idx)
{
	uint64_t z = opt.seed * 0x9E3779B97F4A7C15ull + dir * 0xD1B54A32D192ED03ull + idx;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	z ^= z >> 31;
	return 1 + (unsigned)(z % AR_RECORD_MAX);
}

static struct {
	struct phase_plan plan[2];	/* per direction: 0 client->server */
	unsigned arrived;		/* workers parked at the phase gate */
	unsigned generation;		/* bumped by main to release them */
	int finished;			/* no more phases */
} gate;					/* guarded by run_lock */

/* Worker: park at the gate until main releases the next phase.
 * Returns 0 to run the phase, -1 to stop. */
static int gate_wait(unsigned *gen)
{
	int stop;

	pthread_mutex_lock(&run_lock);
	gate.arrived++;
	pthread_cond_broadcast(&run_cond);
	while (gate.generation == *gen && !atomic_load(&run_failed))
		pthread_cond_wait(&run_cond, &run_lock);
	*gen = gate.generation;
	stop = gate.finished || atomic_load(&run_failed);
	pthread_mutex_unlock(&run_lock);
	return stop ? -1 : 0;
}

static int gate_all_arrived(void *arg)
{
	(void)arg;
	return gate.arrived == 4;
}

static void gate_release(int finished)
{
	pthread_mutex_lock(&run_lock);
	gate.arrived = 0;
	gate.finished = finished;
	gate.generation++;
	pthread_cond_broadcast(&run_cond);
	pthread_mutex_unlock(&run_lock);
}

struct ar_worker {
	const char *who;
	gnutls_session_t session;
	struct stream *st;
	uint32_t dir;
	uint64_t records;
};

static void *ar_sender_thread(void *arg)
{
	struct ar_worker *w = arg;
	unsigned char buf[AR_RECORD_MAX];
	unsigned gen = 0;
	uint64_t off = 0;

	while (gate_wait(&gen) == 0) {
		struct phase_plan plan;

		pthread_mutex_lock(&run_lock);
		plan = gate.plan[w->dir];
		pthread_mutex_unlock(&run_lock);
		for (uint64_t i = 0; i < plan.rec_count && !failed(); i++) {
			unsigned len = ar_record_len(w->dir, plan.rec_first + i);

			rg_pattern_fill(buf, len, w->st->id, off);
			if (send_all(w->session, buf, len, w->who) < 0)
				break;
			off += len;
			w->records++;
			atomic_store_explicit(&w->st->sent, off, memory_order_relaxed);
		}
	}
	thread_finished();
	return NULL;
}

static void *ar_receiver_thread(void *arg)
{
	struct ar_worker *w = arg;
	unsigned char buf[RECV_BUFFER];
	unsigned gen = 0;

	while (gate_wait(&gen) == 0) {
		struct phase_plan plan;
		uint64_t got;

		pthread_mutex_lock(&run_lock);
		plan = gate.plan[w->dir];
		pthread_mutex_unlock(&run_lock);
		while ((got = atomic_load(&w->st->received)) < plan.byte_end) {
			ssize_t r = receive_checked(w->session, w->st, buf,
						    sizeof buf, w->who);
			if (r < 0)
				goto out;
			if (r == 0) {
				fail("truncated", "%s:eof-at=%" PRIu64 ":expected=%"
				     PRIu64, w->who, got, plan.byte_end);
				goto out;
			}
			w->records++;
		}
		if (got > plan.byte_end) {
			fail("data-mismatch", "%s:overrun:received=%" PRIu64
			     ":expected=%" PRIu64, w->who, got, plan.byte_end);
			break;
		}
	}
out:
	thread_finished();
	return NULL;
}

static uint64_t seq_get(gnutls_session_t s, unsigned read)
{
	unsigned char seq[8];
	uint64_t v = 0;
	int ret = gnutls_record_get_state(s, read, NULL, NULL, NULL, seq);

	if (ret < 0) {
		fail_gnutls("main", "gnutls_record_get_state", ret);
		exit_failed();
	}
	for (int i = 0; i < 8; i++)
		v = (v << 8) | seq[i];
	return v;
}

static void seq_set(gnutls_session_t s, unsigned read, uint64_t v)
{
	unsigned char seq[8];
	int ret;

	for (int i = 7; i >= 0; i--, v >>= 8)
		seq[i] = (unsigned char)v;
	ret = gnutls_record_set_state(s, read, seq);
	if (ret < 0) {
		fail_gnutls("main", "gnutls_record_set_state", ret);
		exit_failed();
	}
}

/* What GnuTLS 3.7.9's record layer does to the write sequence number over
 * `count` application records starting at `seq` (lib/record.c): after a
 * record leaves with (seq & 0xffffff) == 0xfffffd the next send first
 * sends a KeyUpdate under the old keys, then restarts at 0 in a new epoch. */
static uint64_t seq_simulate(uint64_t seq, uint64_t count, unsigned *rekeys)
{
	int pending = 0;

	for (uint64_t i = 0; i < count; i++) {
		if (pending) {
			seq = 0;	/* the KeyUpdate record, then a new epoch */
			(*rekeys)++;
			pending = 0;
		}
		seq++;
		if ((seq & UINT64_C(0xffffff)) == TLS13_REKEY_AT)
			pending = 1;
	}
	return seq;
}

static int run_autorekey(void)
{
	struct mem_pipe pipes[2];			/* 0: client->server */
	struct mem_end ends[2] = { { &pipes[1], &pipes[0] },	/* client */
				   { &pipes[0], &pipes[1] } };	/* server */
	gnutls_session_t sess[2];			/* 0 client, 1 server */
	struct stream streams[2] = { { .id = 1 }, { .id = 2 } };
	struct ar_worker workers[4];
	pthread_t threads[4];
	unsigned nthreads = 4;
	unsigned rekeys[2] = { 0, 0 };
	uint64_t rec_next[2] = { 0, 0 }, byte_next[2] = { 0, 0 };
	uint64_t rng = seed_for(7);
	unsigned phases;
	double traffic_time = 0, last_release = 0;
	int ret;

	for (int i = 0; i < 2; i++) {
		mem_pipe_init(&pipes[i], 256 * 1024);
		sess[i] = rg_session_new(i, 0, NULL);
		gnutls_transport_set_ptr(sess[i], &ends[i]);
		gnutls_transport_set_push_function(sess[i], mem_push);
		gnutls_transport_set_pull_function(sess[i], mem_pull);
	}
	ret = rg_handshake_pair(sess[0], sess[1]);
	if (ret < 0)
		setup_error("handshake", ret);
	add_result("transport=memory cipher=%s mode=%s",
		   gnutls_cipher_get_name(gnutls_cipher_get(sess[0])),
		   opt.full ? "full" : "fast-forward");

	for (int d = 0; d < 2; d++) {
		/* direction d: sender sess[d], receiver sess[1-d] */
		workers[2 * d] = (struct ar_worker){ d ? "server-send" : "client-send",
						     sess[d], &streams[d], (uint32_t)d, 0 };
		workers[2 * d + 1] = (struct ar_worker){ d ? "client-recv" : "server-recv",
							 sess[1 - d], &streams[d], (uint32_t)d, 0 };
	}
	t_start = rg_now();
	for (int i = 0; i < 4; i++)
		start_thread(&threads[i], (i & 1) ? ar_receiver_thread : ar_sender_thread,
			     &workers[i]);

	/* Phase 0 is a short warm-up without fast-forward (the client also
	 * consumes the server's session tickets there); then one phase per
	 * crossing (fast-forward: both directions cross 0xfffffd in the same
	 * phase) or one long phase (--full). */
	phases = opt.full ? 2 : 1 + opt.rekeys;
	for (unsigned ph = 0; ph < phases; ph++) {
		uint64_t seq_before[2], count[2];
		double t0;

		monitor_until(gate_all_arrived, NULL);	/* quiesced: all parked */
		for (int d = 0; d < 2; d++) {
			uint64_t bytes = 0;

			if (ph == 0)
				count[d] = 1000;
			else if (opt.full)
				count[d] = (uint64_t)opt.rekeys << 24 | 4096;
			else {
				/* k records below the mark, the KeyUpdate,
				 * then m records in the new epoch */
				uint64_t k = 1 + rg_rand(&rng) % 3000;
				uint64_t m = 1000 + rg_rand(&rng) % 4000;

				seq_set(sess[d], 0, TLS13_REKEY_AT - k);
				seq_set(sess[1 - d], 1, TLS13_REKEY_AT - k);
				count[d] = k + 1 + m;
			}
			seq_before[d] = seq_get(sess[d], 0);
			if (seq_get(sess[1 - d], 1) != seq_before[d]) {
				fail("seq-mismatch", "before-phase=%u:dir=%d", ph, d);
				exit_failed();
			}
			for (uint64_t i = 0; i < count[d]; i++)
				bytes += ar_record_len((uint32_t)d, rec_next[d] + i);
			gate.plan[d] = (struct phase_plan){ rec_next[d], count[d],
							   byte_next[d] + bytes };
			rec_next[d] += count[d];
			byte_next[d] += bytes;
		}
		/* Receivers reject more than 8 KeyUpdates per second, the
		 * automatic ones included: start crossings >= 150 ms apart. */
		if (ph > 0 && !opt.full) {
			double wait = last_release + 0.150 - rg_now();
			if (wait > 0) {
				struct timespec ts = { 0, (long)(wait * 1e9) };
				nanosleep(&ts, NULL);
			}
		}
		t0 = last_release = rg_now();
		pthread_mutex_lock(&run_lock);
		autorekey_phase = (int)ph;
		pthread_mutex_unlock(&run_lock);
		gate_release(0);
		monitor_until(gate_all_arrived, NULL);
		traffic_time += rg_now() - t0;

		for (int d = 0; d < 2; d++) {
			unsigned expect_rekeys = 0;
			uint64_t expect = seq_simulate(seq_before[d], count[d], &expect_rekeys);
			uint64_t w = seq_get(sess[d], 0), r = seq_get(sess[1 - d], 1);

			fprintf(stderr, "rg-scenario: phase %u dir %s: seq %#" PRIx64
				" -> %#" PRIx64 " (%u rekeys)\n", ph,
				d ? "s->c" : "c->s", seq_before[d], w, expect_rekeys);
			if (w != expect || r != w) {
				fail(expect_rekeys ? "no-rekey" : "seq-mismatch",
				     "phase=%u:dir=%d:write_seq=%#" PRIx64
				     ":peer_read_seq=%#" PRIx64 ":expected=%#" PRIx64,
				     ph, d, w, r, expect);
				exit_failed();
			}
			rekeys[d] += expect_rekeys;
			atomic_fetch_add(&auto_rekeys, expect_rekeys);
		}
	}
	gate_release(1);
	monitor_until(all_threads_done, &nthreads);
	for (int i = 0; i < 4; i++)
		pthread_join(threads[i], NULL);

	if (rekeys[0] < opt.rekeys || rekeys[1] < opt.rekeys) {
		fail("no-rekey", "rekeys_c2s=%u:rekeys_s2c=%u:wanted=%u",
		     rekeys[0], rekeys[1], opt.rekeys);
		exit_failed();
	}
	{
		uint64_t recs = workers[0].records + workers[2].records;

		add_result("rekeys_c2s=%u rekeys_s2c=%u records=%" PRIu64
			   " records_per_s=%.0f", rekeys[0], rekeys[1], recs,
			   traffic_time > 0 ? recs / traffic_time : 0.0);
	}
	for (int i = 0; i < 2; i++) {
		gnutls_deinit(sess[i]);
		free(pipes[i].buf);
		pthread_cond_destroy(&pipes[i].cond);
		pthread_mutex_destroy(&pipes[i].lock);
	}
	return 0;
}

/* ------------------------------------------------------------- main */

/* --late-load: the library arrives after a session exists, as when
 * rekeyguard-inject loads it into a running QEMU. */
struct late_load {
	struct rg_pair before;      /* opened before the library came */
	void *handle;
	unsigned long (*guarded)(void);
};

static void late_load_echo(struct rg_pair *p, const char *when)
{
	char out[64] = "late-load", in[64];
	ssize_t n = gnutls_record_send(p->client, out, sizeof out);
	ssize_t m = n == (ssize_t)sizeof out ? gnutls_record_recv(p->server, in, sizeof in) : n;
	if (m != (ssize_t)sizeof out || memcmp(in, out, sizeof out) != 0)
		fail("late-load", "session opened before the library failed %s: %zd/%zd",
		     when, n, m);
}

static void late_load_begin(struct late_load *l)
{
	if (rg_pair_fd(&l->before, 0, NULL) != 0)
		fail("setup-error", "late-load: handshake of the earlier session");
	late_load_echo(&l->before, "before loading");
	l->handle = dlopen(opt.late_load, RTLD_NOW | RTLD_LOCAL);
	if (l->handle == NULL)
		fail("setup-error", "late-load: %s", dlerror());
	long (*activate)(void) = (long (*)(void))dlsym(l->handle, "rekeyguard_inject_activate");
	l->guarded = (unsigned long (*)(void))dlsym(l->handle, "rekeyguard_sessions_guarded");
	if (activate == NULL || l->guarded == NULL)
		fail("setup-error", "late-load: %s lacks the rekeyguard API", opt.late_load);
	long slots = activate();
	add_result("late_load_slots=%ld", slots);
	if (slots <= 0)
		fail("late-load", "rekeyguard_inject_activate patched %ld GOT slots", slots);
}

static void late_load_end(struct late_load *l)
{
	late_load_echo(&l->before, "after loading");
	unsigned long guarded = l->guarded();
	add_result("late_load_guarded=%lu", guarded);
	if (guarded == 0)
		fail("late-load", "no session was guarded after the late load");
	rg_pair_close(&l->before);
}

int main(int argc, char **argv)
{
	parse_options(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	rg_init();
	rg_watchdog(opt.name, opt.timeout);
	fprintf(stderr, "rg-scenario: %s, GnuTLS %s, shim %s, watchdog %u s\n",
		opt.name, gnutls_check_version(NULL),
		rg_shim_loaded() ? "loaded" : "not loaded", opt.timeout);

	struct late_load late;
	if (opt.late_load)
		late_load_begin(&late);

	switch (opt.id) {
	case SC_DUPLEX:
		run_bidirectional(0);
		break;
	case SC_TINYBUF:
		run_bidirectional(1);
		break;
	case SC_QEMU:
		run_qemu_shape();
		break;
	case SC_AUTOREKEY:
		run_autorekey();
		break;
	}
	if (opt.late_load)
		late_load_end(&late);
	rg_watchdog_cancel();
	print_result(1);
	gnutls_global_deinit();
	return 0;
}
