/*
 * rg-kurace.c — the residual key-update race of GnuTLS 3.8.11 and later.
 *
 * GnuTLS 3.8.11 split key updates into update_sending_key() and
 * update_receiving_key() (lib/tls13/key_update.c), so a KeyUpdate in one
 * direction no longer replaces the epoch the other direction is using.  Both
 * still start with an unlocked epoch_next++ (_gnutls_epoch_bump,
 * lib/constate.h), set up the "next" epoch slot (_gnutls_epoch_dup /
 * _gnutls_epoch_setup_next) and initialise it (_gnutls_epoch_set_keys, which
 * returns early when the slot is already initialised), re-reading
 * epoch_next on the way.  When one thread is inside
 * gnutls_session_key_update() while the other thread's gnutls_record_recv()
 * processes the peer's KeyUpdate, and the two bumps fall within about a
 * microsecond of each other, the session dies (GNUTLS_E_INTERNAL_ERROR,
 * GNUTLS_E_INVALID_REQUEST) or silently keeps an old key in one direction
 * (the peer then sees GNUTLS_E_DECRYPTION_FAILED).  Staggered timers almost
 * never hit that window; this program aligns the two paths on purpose.
 *
 * Shape: two endpoints in this process over a socketpair, TLS 1.3
 * AES-128-GCM, a sender and a receiver thread per endpoint, both streams
 * seeded patterns checked byte for byte.  The main thread conducts: every
 * --period ms it asks B's sender for gnutls_session_key_update(B, 0) and
 * (align=push) A's sender for gnutls_session_key_update(A, 0).  A's
 * receiver processes B's KeyUpdate; its GNUTLS_HANDSHAKE_KEY_UPDATE hook
 * (PRE, incoming) meets A's sender in a bounded spin barrier:
 *
 *   align=push (default)  A's sender meets it inside A's push callback,
 *                         right after A's own KeyUpdate record was written
 *                         (A's hook, POST outgoing, marks that record).  From
 *                         there both threads have about the same work left
 *                         before their epoch bump (gc, HKDF, bump), so a small
 *                         random offset (--jitter-ns) sweeps the window.
 *   align=call            A's receiver signals A's sender, which then calls
 *                         gnutls_session_key_update(A, 0) (works over the
 *                         default fd transport too; needs a wider jitter).
 *
 * The barrier never waits longer than --meet-us: under a serialising shim
 * the other thread cannot get in, the meeting is missed (counted), and the
 * run goes on.  Only B ever uses GNUTLS_KU_PEER (--peer), because two
 * endpoints that request each other's update at once are rejected with
 * GNUTLS_E_ILLEGAL_PARAMETER even with perfect locking.  GnuTLS receivers
 * reject more than 8 KeyUpdates per second (KEY_UPDATES_PER_WINDOW in
 * lib/tls13/key_update.c, 3.7.9 to 3.8.13, counted in windows of 1000 ms);
 * the default period of 200 ms keeps each direction at 5 per second; with
 * --peer A answers every other event twice, so the period becomes 400 ms.
 *
 * Output contract as tests/rg-scenario.c: progress on stderr, the last stdout
 * line is "RESULT kurace PASS|FAIL key=value ...", reason= on FAIL.  Exit
 * status: 0 pass, 1 fail, 2 usage or set-up error, 4 watchdog timeout.  Run
 * with LD_PRELOAD=.../librekeyguard.so to test the shim.
 */
#include "harness.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NAME		"kurace"
#define MAX_RECORD	16384
#define STREAM_AB	1u	/* A -> B */
#define STREAM_BA	2u	/* B -> A */

/* ------------------------------------------------------------- options */

enum align_mode { ALIGN_PUSH, ALIGN_CALL };

static struct options {
	double seconds;
	unsigned period_ms;
	unsigned jitter_ns;
	long center_ns;
	unsigned meet_us;
	unsigned max_record;
	unsigned pace_us;
	unsigned timeout;
	unsigned stall_secs;
	int peer;
	int fd_transport;
	int no_sched;
	enum align_mode align;
	uint64_t seed;
} opt;

static void usage(FILE *out)
{
	fprintf(out,
"usage: rg-kurace [options]\n"
"\n"
"Aligns gnutls_session_key_update() in one thread with the processing of the\n"
"peer's KeyUpdate in the other thread's gnutls_record_recv() on the same\n"
"session (the residual race of GnuTLS 3.8.11+), during full-duplex traffic\n"
"whose every byte is checked.\n"
"\n"
"Options:\n"
"  --seconds N      traffic duration (default 6)\n"
"  --period MS      one aligned key-update pair every MS ms (default 200:\n"
"                   5 KeyUpdates per second per direction; receivers reject\n"
"                   more than 8 per second)\n"
"  --align MODE     push (default): meet in A's push callback right after\n"
"                   A's KeyUpdate record is written; call: A's receiver\n"
"                   signals A's sender to call gnutls_session_key_update\n"
"  --jitter-ns N    random offset between the two threads leaving the\n"
"                   barrier, uniform in [C-N, C+N] ns, > 0: the receiver\n"
"                   leaves later (default N 1200 for push, 6000 for call)\n"
"  --center-ns C    centre of that offset (default 300 for push, 3000 for call)\n"
"  --meet-us N      longest wait at the barrier (default 5000); a missed\n"
"                   meeting is counted, not a failure\n"
"  --peer           B requests A's update (GNUTLS_KU_PEER) on every other\n"
"                   event; only B ever does (default period then 400)\n"
"  --fd             default fd transport (gnutls_transport_set_int) instead\n"
"                   of custom push/pull; implies --align call\n"
"  --max-record N   largest application record (default 16384)\n"
"  --pace-us N      pause after each send, 0..N us (default 100)\n"
"  --stall-secs N   fail when no byte arrives for N s (default 10)\n"
"  --timeout N      watchdog in seconds (default 30 + 5 * seconds)\n"
"  --seed N         seed for sizes, pauses and offsets (or RG_SEED)\n"
"  --no-sched       do not pin A's threads to CPUs 0 and 1 nor lower the\n"
"                   priority (nice 19) of B's threads and the conductor;\n"
"                   that keeps a wake-up of B from preempting A's threads\n"
"                   between the barrier and the epoch bumps\n"
"  --help           this text\n"
"\n"
"The last line on stdout is \"RESULT kurace PASS|FAIL key=value ...\".\n"
"Exit status: 0 pass, 1 fail, 2 usage or set-up error, 4 watchdog timeout.\n");
}

static void usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "rg-kurace: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n(rg-kurace --help for usage)\n");
	printf("RESULT " NAME " FAIL reason=usage\n");
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
	enum { O_SECONDS = 256, O_PERIOD, O_ALIGN, O_JITTER, O_CENTER, O_MEET, O_PEER,
	       O_FD, O_MAX_RECORD, O_PACE, O_STALL, O_TIMEOUT, O_SEED, O_NO_SCHED,
	       O_HELP };
	static const struct option longopts[] = {
		{ "seconds", required_argument, NULL, O_SECONDS },
		{ "period", required_argument, NULL, O_PERIOD },
		{ "align", required_argument, NULL, O_ALIGN },
		{ "jitter-ns", required_argument, NULL, O_JITTER },
		{ "center-ns", required_argument, NULL, O_CENTER },
		{ "meet-us", required_argument, NULL, O_MEET },
		{ "peer", no_argument, NULL, O_PEER },
		{ "fd", no_argument, NULL, O_FD },
		{ "max-record", required_argument, NULL, O_MAX_RECORD },
		{ "pace-us", required_argument, NULL, O_PACE },
		{ "stall-secs", required_argument, NULL, O_STALL },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "seed", required_argument, NULL, O_SEED },
		{ "no-sched", no_argument, NULL, O_NO_SCHED },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 }
	};
	int c, jitter_set = 0, align_set = 0, center_set = 0, period_set = 0;
	const char *seed_arg = NULL;

	opt.seconds = 6;
	opt.period_ms = 200;
	opt.meet_us = 5000;
	opt.max_record = MAX_RECORD;
	opt.pace_us = 100;
	opt.stall_secs = 10;
	opt.align = ALIGN_PUSH;

	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case O_SECONDS: {
			char *end;
			opt.seconds = strtod(optarg, &end);
			if (*end || end == optarg || opt.seconds <= 0 ||
			    opt.seconds > 86400)
				usage_error("--seconds: \"%s\" is not a positive number",
					    optarg);
			break;
		}
		case O_PERIOD:
			opt.period_ms = parse_number("--period", optarg, 20, 60000);
			period_set = 1;
			break;
		case O_ALIGN:
			if (strcmp(optarg, "push") == 0)
				opt.align = ALIGN_PUSH;
			else if (strcmp(optarg, "call") == 0)
				opt.align = ALIGN_CALL;
			else
				usage_error("--align: \"%s\" is not push or call", optarg);
			align_set = 1;
			break;
		case O_JITTER:
			opt.jitter_ns = parse_number("--jitter-ns", optarg, 0, 10000000);
			jitter_set = 1;
			break;
		case O_CENTER: {
			char *end;
			errno = 0;
			opt.center_ns = strtol(optarg, &end, 0);
			if (errno || *end || end == optarg || opt.center_ns < -10000000 ||
			    opt.center_ns > 10000000)
				usage_error("--center-ns: \"%s\" is not a number in [-1e7, 1e7]",
					    optarg);
			center_set = 1;
			break;
		}
		case O_MEET:
			opt.meet_us = parse_number("--meet-us", optarg, 1, 10000000);
			break;
		case O_PEER: opt.peer = 1; break;
		case O_FD: opt.fd_transport = 1; break;
		case O_MAX_RECORD:
			opt.max_record = parse_number("--max-record", optarg, 1, MAX_RECORD);
			break;
		case O_PACE:
			opt.pace_us = parse_number("--pace-us", optarg, 0, 1000000);
			break;
		case O_STALL:
			opt.stall_secs = parse_number("--stall-secs", optarg, 1, 86400);
			break;
		case O_TIMEOUT:
			opt.timeout = parse_number("--timeout", optarg, 1, 864000);
			break;
		case O_SEED: seed_arg = optarg; break;
		case O_NO_SCHED: opt.no_sched = 1; break;
		case 'h':
		case O_HELP:
			usage(stdout);
			exit(0);
		default:
			usage_error("unknown option");
		}
	}
	if (optind != argc)
		usage_error("unexpected argument \"%s\"", argv[optind]);
	if (opt.fd_transport) {
		if (align_set && opt.align == ALIGN_PUSH)
			usage_error("--fd needs --align call (push meets in a custom push callback)");
		opt.align = ALIGN_CALL;
	}
	if (!jitter_set)
		opt.jitter_ns = opt.align == ALIGN_PUSH ? 1200 : 6000;
	if (!center_set)
		opt.center_ns = opt.align == ALIGN_PUSH ? 300 : 3000;
	/* With --peer, A answers B's requests with a second KeyUpdate. */
	if (opt.peer && !period_set)
		opt.period_ms = 400;
	if (!opt.timeout)
		opt.timeout = 30 + (unsigned)(5 * opt.seconds);
	if (seed_arg) {
		parse_number("--seed", seed_arg, 1, ULONG_MAX);
		setenv("RG_SEED", seed_arg, 1);
	}
	opt.seed = rg_seed();
}

/* ------------------------------------------------------------ run state */

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;	/* fail_* */
static atomic_int run_failed;
static char fail_reason[96];
static char fail_detail[160];
static double fail_time, t_start;

static atomic_int stop_sending;		/* senders: finish the stream */
static _Atomic uint64_t progress_bytes;	/* received, both streams */
static _Atomic uint64_t ku_a, ku_b, ku_b_peer;	/* key_update calls made */
static _Atomic uint64_t events;		/* conductor events */
static _Atomic uint64_t met;		/* barrier meetings that happened */
static _Atomic uint64_t missed;		/* ... that timed out */
static _Atomic uint64_t again_count;	/* E_AGAIN / E_INTERRUPTED seen */

static void fail(const char *reason, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&run_lock);
	/* A session invalidated by a failure on its other thread is a
	 * consequence: a later failure with a real cause replaces it. */
	if (!atomic_load(&run_failed) ||
	    (strcmp(fail_reason, "gnutls-error:GNUTLS_E_INVALID_SESSION") == 0 &&
	     strcmp(reason, fail_reason) != 0)) {
		snprintf(fail_reason, sizeof fail_reason, "%s", reason);
		va_start(ap, fmt);
		vsnprintf(fail_detail, sizeof fail_detail, fmt, ap);
		va_end(ap);
		for (char *s = fail_detail; *s; s++)
			if (*s == ' ')
				*s = '_';
		fail_time = rg_now();
		atomic_store(&run_failed, 1);
	}
	pthread_mutex_unlock(&run_lock);
	fprintf(stderr, "rg-kurace: failure: %s\n", reason);
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
	fprintf(stderr, "rg-kurace: %s: %s: %s (%d)\n", who, call,
		gnutls_strerror(ret), ret);
	fail(reason, "%s:%s=%d", who, call, ret);
}

static int failed(void)
{
	return atomic_load_explicit(&run_failed, memory_order_relaxed);
}

/* ----------------------------------------------------------- spinning */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void spin_ns(uint64_t ns)
{
	uint64_t end = now_ns() + ns;

	while (now_ns() < end)
		;
}

static void pause_us(unsigned us)
{
	struct timespec ts = { 0, (long)us * 1000 };

	if (us)
		nanosleep(&ts, NULL);
}

/*
 * The barrier between A's receiver (in its KeyUpdate hook) and A's sender.
 * Generation counters, so a late arrival from a missed meeting never
 * matches the next one.  Each side announces gen and waits at most
 * --meet-us for the other; then the side that drew the positive offset
 * spins that long, so the two leave within [-jitter, jitter] of each other.
 */
static _Atomic uint64_t recv_arrived;	/* generation A's receiver reached */
static _Atomic uint64_t send_arrived;	/* generation A's sender reached */
static _Atomic int64_t offset_ns;	/* > 0: receiver waits, < 0: sender */
static _Atomic uint64_t meet_gen;	/* align=push: event of A's requested
					 * key update, 0 outside it */

static int wait_for(_Atomic uint64_t *other, uint64_t gen)
{
	uint64_t deadline = now_ns() + (uint64_t)opt.meet_us * 1000;

	while (atomic_load_explicit(other, memory_order_acquire) < gen) {
		if (now_ns() > deadline || failed())
			return 0;
	}
	return 1;
}

/* Scheduling help for the alignment (no privileges needed): A's two
 * threads on their own CPUs, everything else at nice 19, so a thread woken
 * by A's KeyUpdate record does not preempt A's threads in the window. */
static void sched_role(int a_thread, int cpu)
{
	if (opt.no_sched)
		return;
	if (a_thread) {
		cpu_set_t set;
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

		if (ncpu >= 2) {
			CPU_ZERO(&set);
			CPU_SET(cpu % (int)ncpu, &set);
			(void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
		}
	} else {
		(void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
	}
}

/* ------------------------------------------------------------ endpoints */

struct endpoint {
	const char *name;		/* "A" or "B" */
	gnutls_session_t session;
	int fd;
	uint32_t send_stream, recv_stream;
	uint64_t sent_total;		/* sender only */
	_Atomic uint64_t final_total;	/* 0 until the sender's last chunk */
	_Atomic uint64_t received;	/* receiver: bytes of recv_stream */
	_Atomic int ku_request;		/* conductor -> sender: flags + 1 */
	int is_a;
};

static struct endpoint ep_a = { .name = "A", .send_stream = STREAM_AB,
				.recv_stream = STREAM_BA, .is_a = 1 };
static struct endpoint ep_b = { .name = "B", .send_stream = STREAM_BA,
				.recv_stream = STREAM_AB };

/* align=call: A's receiver asks A's sender for a key update (generation). */
static _Atomic uint64_t call_request;

/* align=push: set by A's POST hook for its own KeyUpdate, consumed by the
 * next push (the flush of that KeyUpdate record). */
static _Atomic int ku_record_queued;

static uint64_t offset_rng;		/* conductor thread only */

static int64_t draw_offset(void)
{
	uint64_t r = rg_rand(&offset_rng);

	if (opt.jitter_ns == 0)
		return opt.center_ns;
	return opt.center_ns +
	       (int64_t)(r % (2 * (uint64_t)opt.jitter_ns + 1)) - (int64_t)opt.jitter_ns;
}

static int ku_hook(gnutls_session_t session, unsigned htype, unsigned when,
		   unsigned incoming, const gnutls_datum_t *msg)
{
	(void)session;
	(void)msg;
	if (htype != GNUTLS_HANDSHAKE_KEY_UPDATE)
		return 0;
	if (!incoming) {
		if (when == GNUTLS_HOOK_POST && opt.align == ALIGN_PUSH)
			atomic_store(&ku_record_queued, 1);
		return 0;
	}
	if (when != GNUTLS_HOOK_PRE)
		return 0;

	/* A's receiver, about to process B's KeyUpdate of event gen. */
	uint64_t gen = atomic_load(&events);
	int64_t off = atomic_load(&offset_ns);

	if (opt.align == ALIGN_CALL)
		atomic_store(&call_request, gen);
	atomic_store_explicit(&recv_arrived, gen, memory_order_release);
	if (!wait_for(&send_arrived, gen)) {
		atomic_fetch_add(&missed, 1);
		return 0;
	}
	atomic_fetch_add(&met, 1);
	if (off > 0)
		spin_ns((uint64_t)off);
	return 0;
}

/* The sender's half of the barrier (A's sender thread only). */
static void sender_meet(uint64_t gen)
{
	int64_t off = atomic_load(&offset_ns);

	atomic_store_explicit(&send_arrived, gen, memory_order_release);
	if (!wait_for(&recv_arrived, gen))
		return;
	if (off < 0)
		spin_ns((uint64_t)-off);
}

/* A's push: write(2), and after the KeyUpdate record, meet the receiver.
 * B uses the harness's plain write/read callbacks. */
static ssize_t a_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
	ssize_t n = write((int)(intptr_t)ptr, buf, len);

	if (n > 0 && atomic_exchange(&ku_record_queued, 0)) {
		uint64_t gen = atomic_exchange(&meet_gen, 0);
		/* Only the key update the conductor asked for meets; an
		 * automatic reply to B's GNUTLS_KU_PEER does not. */
		if (gen)
			sender_meet(gen);
	}
	return n;
}

static int do_key_update(struct endpoint *ep, unsigned flags)
{
	int ret;

	if (ep->is_a)
		atomic_fetch_add(&ku_a, 1);
	else if (flags & GNUTLS_KU_PEER)
		atomic_fetch_add(&ku_b_peer, 1);
	else
		atomic_fetch_add(&ku_b, 1);
	do {
		ret = gnutls_session_key_update(ep->session, flags);
		if (ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED)
			atomic_fetch_add(&again_count, 1);
	} while (ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED);
	if (ret < 0) {
		char who[32];
		snprintf(who, sizeof who, "%s-sender", ep->name);
		fail_gnutls(who, "gnutls_session_key_update", ret);
		return -1;
	}
	return 0;
}

static void *sender_thread(void *arg)
{
	struct endpoint *ep = arg;
	uint64_t rng = opt.seed * 2654435761u + ep->send_stream;
	unsigned char *buf = malloc(MAX_RECORD);
	uint64_t call_done = 0;
	char who[32];

	snprintf(who, sizeof who, "%s-sender", ep->name);
	sched_role(ep->is_a, 1);
	if (!buf) {
		fail("setup-error", "malloc");
		return NULL;
	}
	while (!failed()) {
		int last = atomic_load(&stop_sending);
		size_t len = 1 + rg_rand(&rng) % opt.max_record;
		size_t off = 0;
		int req, ret;

		/* Key update requests between records. */
		req = atomic_exchange(&ep->ku_request, 0);
		if (req && !last) {
			if (ep->is_a)
				atomic_store(&meet_gen, atomic_load(&events));
			ret = do_key_update(ep, (unsigned)(req - 1));
			atomic_store(&meet_gen, 0);
			if (ret < 0)
				break;
		}
		if (ep->is_a && opt.align == ALIGN_CALL && !last) {
			uint64_t g = atomic_load(&call_request);
			if (g > call_done) {
				call_done = g;
				sender_meet(g);
				if (do_key_update(ep, 0) < 0)
					break;
			}
		}

		if (last)
			atomic_store(&ep->final_total, ep->sent_total + len);
		rg_pattern_fill(buf, len, ep->send_stream, ep->sent_total);
		while (off < len) {
			ssize_t n = gnutls_record_send(ep->session, buf + off, len - off);
			if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
				atomic_fetch_add(&again_count, 1);
				continue;
			}
			if (n < 0) {
				fail_gnutls(who, "gnutls_record_send", (int)n);
				goto out;
			}
			off += (size_t)n;
		}
		ep->sent_total += len;
		if (last)
			break;
		if (opt.pace_us && !(ep->is_a && opt.align == ALIGN_CALL &&
				     atomic_load(&call_request) > call_done))
			pause_us((unsigned)(rg_rand(&rng) % (opt.pace_us + 1)));
	}
out:
	free(buf);
	return NULL;
}

static void *receiver_thread(void *arg)
{
	struct endpoint *ep = arg;
	unsigned char *buf = malloc(2 * MAX_RECORD);
	uint64_t received = 0;
	char who[32];

	snprintf(who, sizeof who, "%s-receiver", ep->name);
	sched_role(ep->is_a, 0);
	if (!buf) {
		fail("setup-error", "malloc");
		return NULL;
	}
	while (!failed()) {
		/* The peer's sender announces the end of our stream. */
		uint64_t fin = atomic_load(ep->is_a ? &ep_b.final_total
						    : &ep_a.final_total);
		ssize_t n;
		long bad;

		if (fin && received >= fin)
			break;
		n = gnutls_record_recv(ep->session, buf, 2 * MAX_RECORD);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
			atomic_fetch_add(&again_count, 1);
			continue;
		}
		if (n == 0) {
			fail("unexpected-eof", "%s:at=%" PRIu64, who, received);
			break;
		}
		if (n < 0) {
			fail_gnutls(who, "gnutls_record_recv", (int)n);
			break;
		}
		bad = rg_pattern_check(buf, (size_t)n, ep->recv_stream, received);
		if (bad >= 0) {
			fail("data-mismatch", "%s:offset=%" PRIu64, who,
			     received + (uint64_t)bad);
			break;
		}
		received += (uint64_t)n;
		atomic_store(&ep->received, received);
		atomic_fetch_add(&progress_bytes, (uint64_t)n);
	}
	free(buf);
	return NULL;
}

/* ------------------------------------------------------------ reporting */

static void print_result(int pass, const char *reason, const char *detail)
{
	double end = pass ? rg_now() : fail_time;

	printf("RESULT " NAME " %s", pass ? "PASS" : "FAIL");
	if (!pass)
		printf(" reason=%s detail=%s last_offset_ns=%" PRId64, reason,
		       detail[0] ? detail : "-", (int64_t)atomic_load(&offset_ns));
	printf(" elapsed=%.3f events=%" PRIu64 " met=%" PRIu64 " missed=%" PRIu64
	       " ku_a=%" PRIu64 " ku_b=%" PRIu64 " ku_b_peer=%" PRIu64
	       " bytes=%" PRIu64 " again=%" PRIu64 " align=%s jitter_ns=%u"
	       " center_ns=%ld transport=%s shim=%s gnutls=%s seed=%" PRIu64 "\n",
	       t_start > 0 ? end - t_start : 0.0, atomic_load(&events),
	       atomic_load(&met), atomic_load(&missed), atomic_load(&ku_a),
	       atomic_load(&ku_b), atomic_load(&ku_b_peer),
	       atomic_load(&progress_bytes), atomic_load(&again_count),
	       opt.align == ALIGN_PUSH ? "push" : "call", opt.jitter_ns,
	       opt.center_ns, opt.fd_transport ? "fd" : "custom",
	       rg_shim_loaded() ? "yes" : "no", gnutls_check_version(NULL),
	       opt.seed);
	fflush(stdout);
}

static void exit_failed(void)
{
	struct timespec grace = { 0, 50 * 1000000L };

	/* The first failure is recorded; give threads a moment so stderr
	 * shows what the others saw, then leave without joining. */
	nanosleep(&grace, NULL);
	pthread_mutex_lock(&run_lock);
	print_result(0, fail_reason, fail_detail);
	fflush(stderr);
	_exit(1);
}

static void setup_error(const char *what, int ret)
{
	printf("RESULT " NAME " FAIL reason=setup-error detail=%s:%s shim=%s seed=%" PRIu64 "\n",
	       what, ret ? gnutls_strerror_name(ret) : "-",
	       rg_shim_loaded() ? "yes" : "no", opt.seed);
	fflush(stdout);
	_exit(2);
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
	struct rg_pair pair = { NULL, NULL, { -1, -1 } };
	pthread_t th[4];
	double next_event, end, last_change;
	uint64_t last_bytes = 0, n_event = 0;
	int ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_options(argc, argv);
	offset_rng = opt.seed ^ UINT64_C(0x9e3779b97f4a7c15);
	rg_watchdog(NAME, opt.timeout);
	rg_init();

	ret = opt.fd_transport ? rg_pair_fd(&pair, 0, RG_PRIO_AES128)
			       : rg_pair_custom(&pair, 0, RG_PRIO_AES128);
	if (ret < 0)
		setup_error("handshake", ret);
	if (gnutls_protocol_get_version(pair.server) != GNUTLS_TLS1_3)
		setup_error("not-tls13", 0);

	/* A is the server, B the client. */
	ep_a.session = pair.server;
	ep_a.fd = pair.fd[1];
	ep_b.session = pair.client;
	ep_b.fd = pair.fd[0];
	if (!opt.fd_transport)
		gnutls_transport_set_push_function(ep_a.session, a_push);
	gnutls_handshake_set_hook_function(ep_a.session, GNUTLS_HANDSHAKE_KEY_UPDATE,
					   GNUTLS_HOOK_BOTH, ku_hook);

	fprintf(stderr, "rg-kurace: GnuTLS %s, align=%s, jitter +-%u ns, "
		"a key-update pair every %u ms for %.1f s\n",
		gnutls_check_version(NULL), opt.align == ALIGN_PUSH ? "push" : "call",
		opt.jitter_ns, opt.period_ms, opt.seconds);

	t_start = rg_now();
	pthread_create(&th[0], NULL, receiver_thread, &ep_a);
	pthread_create(&th[1], NULL, receiver_thread, &ep_b);
	pthread_create(&th[2], NULL, sender_thread, &ep_a);
	pthread_create(&th[3], NULL, sender_thread, &ep_b);

	sched_role(0, 0);
	/* Conductor.  The last event is at least two periods before the end,
	 * so the streams run on past every key change. */
	next_event = t_start + opt.period_ms / 1000.0 * 0.5;
	end = t_start + opt.seconds;
	last_change = t_start;
	while (!failed()) {
		struct timespec ts = { 0, 2 * 1000000L };
		double now = rg_now();
		uint64_t bytes = atomic_load(&progress_bytes);

		if (bytes != last_bytes) {
			last_bytes = bytes;
			last_change = now;
		} else if (now - last_change > opt.stall_secs) {
			fail("stall", "no-data-for-%us", opt.stall_secs);
			break;
		}
		if (now >= end)
			break;
		if (now >= next_event &&
		    now + 2 * opt.period_ms / 1000.0 < end) {
			unsigned bflags = opt.peer && (n_event & 1) ? GNUTLS_KU_PEER : 0;

			atomic_store(&offset_ns, draw_offset());
			atomic_fetch_add(&events, 1);	/* before the requests */
			atomic_store(&ep_b.ku_request, (int)bflags + 1);
			if (opt.align == ALIGN_PUSH)
				atomic_store(&ep_a.ku_request, 1);
			n_event++;
			next_event += opt.period_ms / 1000.0;
		}
		nanosleep(&ts, NULL);
	}
	if (failed())
		exit_failed();

	/* Finish both streams and wait until every byte arrived. */
	atomic_store(&stop_sending, 1);
	last_change = rg_now();
	for (;;) {
		struct timespec ts = { 0, 5 * 1000000L };
		uint64_t fa = atomic_load(&ep_a.final_total);
		uint64_t fb = atomic_load(&ep_b.final_total);
		uint64_t bytes = atomic_load(&progress_bytes);

		if (failed())
			exit_failed();
		if (bytes != last_bytes) {
			last_bytes = bytes;
			last_change = rg_now();
		} else if (rg_now() - last_change > opt.stall_secs) {
			fail("stall", "final-bytes-missing:A-got=%" PRIu64 "/%" PRIu64
			     ":B-got=%" PRIu64 "/%" PRIu64, atomic_load(&ep_a.received),
			     fb, atomic_load(&ep_b.received), fa);
			exit_failed();
		}
		if (fa && fb && bytes >= fa + fb)
			break;
		nanosleep(&ts, NULL);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	if (failed())
		exit_failed();
	rg_watchdog_cancel();
	print_result(1, "", "");
	rg_pair_close(&pair);
	return 0;
}
