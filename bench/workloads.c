/*
 * workloads.c — the measured traffic, run inside one worker child.
 *
 * Owns: the workloads (bench.h), their threads, the monitor that takes the
 * measurement window and detects stalls, and the RESULT/LAT output.
 *
 *   raw  AES-128-GCM (and CHACHA20-POLY1305) AEAD encryption of 16 KiB
 *        records on one core, no TLS, no I/O: the ceiling.
 *   bulk one-way bulk, 16 KiB writes (workloads a, b; f with n sessions)
 *   migration  one-way bulk plus a 64-byte message back every 10 ms on the
 *        same session, sent by a second thread on the receiving end and read
 *        by a thread blocked in gnutls_record_recv on the sending end (c)
 *   duplex  bulk both ways on one session, two threads per end (d)
 *   small  one-way 64-byte records as fast as they go (e)
 *   percall  1-byte send + recv in one thread over memory (g)
 *   unguarded  cheap wrapped calls on DTLS sessions (which the library
 *        does not guard), one session per thread, 1 or 2 threads (u1, u2):
 *        what a process-wide lock on that path would cost
 *
 * Invariants: each traffic thread uses one session and at most one counter
 * (a cache line of its own); the monitor thread only reads counters.
 * Throughput runs also report per_cpu: the same work divided by the CPU
 * time of the whole process in the window, which other load on a shared
 * machine disturbs far less than wall-clock throughput.
 * A run never joins its traffic threads: when the window is over (or the
 * traffic stopped for opts->stall seconds) the monitor prints the result
 * and the process ends with _exit, so a deadlocked configuration is
 * reported instead of hanging.
 */
#include "bench.h"

#include <gnutls/crypto.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- shared run state -------------------------------------------------- */

struct counter {
	_Atomic uint64_t bytes;
} __attribute__((aligned(64)));

enum role { ROLE_BULK_SEND, ROLE_BULK_RECV, ROLE_SMALL_SEND, ROLE_TICK_SEND, ROLE_TICK_RECV,
	    ROLE_MIXED_SEND, ROLE_MIXED_RECV };
/* Thread names (perf, gdb, bench/offcpu.sh), by role. */
static const char *const role_names[] = {
	[ROLE_BULK_SEND] = "bulk-send", [ROLE_BULK_RECV] = "bulk-recv",
	[ROLE_SMALL_SEND] = "small-send", [ROLE_TICK_SEND] = "tick-send",
	[ROLE_TICK_RECV] = "tick-recv", [ROLE_MIXED_SEND] = "mixed-send",
	[ROLE_MIXED_RECV] = "mixed-recv",
};

struct traffic_thread {
	gnutls_session_t session;
	enum role role;
	bool handshake_server;   /* this thread handshakes the session ... */
	bool handshake_client;   /* ... as server or client (one per end) */
	struct counter *counter; /* bytes received (receivers) */
};

/* Return-path latency bookkeeping (migration). */
struct tick_log {
	_Atomic uint64_t *due_ns;     /* by sequence number: when it was due */
	_Atomic uint64_t *latency_ns; /* 0: not received yet */
	size_t cap;
};

static pthread_barrier_t start_barrier;
static struct tick_log ticks;
static _Atomic int traffic_error;             /* first fatal GnuTLS error */
static char traffic_error_where[64];

static void traffic_failed(const char *where, int ret)
{
	int expected = 0;
	if (atomic_compare_exchange_strong(&traffic_error, &expected, ret))
		snprintf(traffic_error_where, sizeof traffic_error_where, "%s", where);
}

/* ---- traffic threads ----------------------------------------------------- */

static void send_all(gnutls_session_t s, const unsigned char *buf, size_t len,
		     const char *where)
{
	while (len > 0) {
		ssize_t n = gnutls_record_send(s, buf, len);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n < 0) {
			traffic_failed(where, (int)n);
			pause();   /* the monitor reports it */
		}
		buf += n;
		len -= (size_t)n;
	}
}

/* One record's data (or GNUTLS_E_AGAIN-free error). */
static ssize_t recv_some(gnutls_session_t s, unsigned char *buf, size_t len, const char *where)
{
	for (;;) {
		ssize_t n = gnutls_record_recv(s, buf, len);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n <= 0) {
			traffic_failed(where, n == 0 ? GNUTLS_E_PREMATURE_TERMINATION : (int)n);
			pause();
		}
		return n;
	}
}

static void run_bulk_send(struct traffic_thread *t, size_t size)
{
	unsigned char *buf = calloc(1, size);
	for (;;)
		send_all(t->session, buf, size, "bulk-send");
}

/* Bulk records, and a 64-byte message carrying its sequence number in
 * place of the next record whenever one is due (every 10 ms on a fixed
 * schedule): one sender per direction, as GnuTLS requires. */
static void run_mixed_send(struct traffic_thread *t)
{
	unsigned char *buf = calloc(1, BENCH_RECORD);
	unsigned char msg[BENCH_SMALL];
	uint64_t start = bench_now_ns();
	uint64_t seq = 0;

	memset(msg, 0, sizeof msg);
	for (;;) {
		uint64_t due = start + seq * BENCH_TICK_NS;
		if (seq < ticks.cap && bench_now_ns() >= due) {
			ticks.due_ns[seq] = due;
			memcpy(msg, &seq, sizeof seq);
			send_all(t->session, msg, sizeof msg, "mixed-send");
			seq++;
		} else {
			send_all(t->session, buf, BENCH_RECORD, "mixed-send");
		}
	}
}

static void run_bulk_recv(struct traffic_thread *t)
{
	unsigned char *buf = malloc(BENCH_RECORD);
	for (;;) {
		ssize_t n = recv_some(t->session, buf, BENCH_RECORD, "bulk-recv");
		atomic_fetch_add_explicit(&t->counter->bytes, (uint64_t)n, memory_order_relaxed);
	}
}

/* A 64-byte message carrying its sequence number; sent when due, every
 * 10 ms on a fixed schedule, so a late send counts against latency. */
static void run_tick_send(struct traffic_thread *t)
{
	unsigned char msg[BENCH_SMALL];
	uint64_t start = bench_now_ns();

	memset(msg, 0, sizeof msg);
	for (uint64_t seq = 0; seq < ticks.cap; seq++) {
		uint64_t due = start + seq * BENCH_TICK_NS;
		struct timespec ts = { (time_t)(due / 1000000000u), (long)(due % 1000000000u) };
		ticks.due_ns[seq] = due;
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
		memcpy(msg, &seq, sizeof seq);
		send_all(t->session, msg, sizeof msg, "tick-send");
	}
	pause();
}

static void tick_arrived(const unsigned char *msg)
{
	uint64_t seq, now = bench_now_ns();
	memcpy(&seq, msg, sizeof seq);
	if (seq < ticks.cap) {
		uint64_t latency = now - ticks.due_ns[seq];
		ticks.latency_ns[seq] = latency ? latency : 1;
	}
}

/* Bulk records and tick messages on one stream (full duplex with a
 * latency probe): gnutls_record_recv returns one record at a time, so a
 * 64-byte return is a tick, anything else bulk (counted). */
static void run_mixed_recv(struct traffic_thread *t)
{
	unsigned char *buf = malloc(BENCH_RECORD);
	for (;;) {
		ssize_t n = recv_some(t->session, buf, BENCH_RECORD, "mixed-recv");
		if (n == BENCH_SMALL)
			tick_arrived(buf);
		else
			atomic_fetch_add_explicit(&t->counter->bytes, (uint64_t)n, memory_order_relaxed);
	}
}

static void run_tick_recv(struct traffic_thread *t)
{
	unsigned char msg[BENCH_SMALL];
	for (;;) {
		size_t got = 0;
		while (got < sizeof msg)
			got += (size_t)recv_some(t->session, msg + got, sizeof msg - got, "tick-recv");
		tick_arrived(msg);
	}
}

static void *traffic_main(void *arg)
{
	struct traffic_thread *t = arg;
	int ret = 0;

	pthread_setname_np(pthread_self(), role_names[t->role]);
	if (t->handshake_client || t->handshake_server) {
		do {
			ret = gnutls_handshake(t->session);
		} while (ret < 0 && !gnutls_error_is_fatal(ret));
		if (ret < 0)
			traffic_failed(t->handshake_client ? "client-handshake" : "server-handshake", ret);
	}
	pthread_barrier_wait(&start_barrier);
	if (ret < 0)
		pause();
	switch (t->role) {
	case ROLE_BULK_SEND:
		run_bulk_send(t, BENCH_RECORD);
		break;
	case ROLE_SMALL_SEND:
		run_bulk_send(t, BENCH_SMALL);
		break;
	case ROLE_BULK_RECV:
		run_bulk_recv(t);
		break;
	case ROLE_TICK_SEND:
		run_tick_send(t);
		break;
	case ROLE_TICK_RECV:
		run_tick_recv(t);
		break;
	case ROLE_MIXED_SEND:
		run_mixed_send(t);
		break;
	case ROLE_MIXED_RECV:
		run_mixed_recv(t);
		break;
	}
	return NULL;
}

/* ---- the traffic plan of one run ---------------------------------------- */

#define MAX_TRACKED 2

struct traffic_plan {
	struct traffic_thread *threads;
	int nthreads;
	struct counter *counters;   /* one per receiving flow */
	int ncounters;
	/* counters whose silence for opts->stall seconds is a stall: each
	 * listed index, or (tracked_sum) their sum */
	int tracked[MAX_TRACKED];
	int ntracked;
	bool tracked_sum;
};

static struct traffic_thread *plan_add(struct traffic_plan *p, gnutls_session_t s,
				       enum role role, struct counter *c)
{
	struct traffic_thread *t = &p->threads[p->nthreads++];
	memset(t, 0, sizeof *t);
	t->session = s;
	t->role = role;
	t->counter = c;
	return t;
}

static void plan_alloc(struct traffic_plan *p, int nthreads, int ncounters)
{
	memset(p, 0, sizeof *p);
	p->threads = calloc((size_t)nthreads, sizeof *p->threads);
	p->counters = aligned_alloc(64, (size_t)ncounters * sizeof *p->counters);
	if (p->threads == NULL || p->counters == NULL) {
		printf("RESULT status=error value=0 detail=out-of-memory\n");
		fflush(stdout);
		_exit(2);
	}
	memset(p->counters, 0, (size_t)ncounters * sizeof *p->counters);
	p->ncounters = ncounters;
}

/* A client (sending end) and server (receiving end) over TCP loopback. */
struct tls_link {
	gnutls_session_t client, server;
};

static void links_open(struct tls_link *links, int n, enum bench_transport transport,
		       const char *prio)
{
	int *cfd = calloc((size_t)n, sizeof *cfd), *sfd = calloc((size_t)n, sizeof *sfd);
	bench_tcp_pairs(n, cfd, sfd);
	for (int i = 0; i < n; i++) {
		links[i].client = bench_session_new(false, prio);
		links[i].server = bench_session_new(true, prio);
		bench_transport_set(links[i].client, transport, cfd[i]);
		bench_transport_set(links[i].server, transport, sfd[i]);
	}
	free(cfd);
	free(sfd);
}

/* ---- the monitor ------------------------------------------------------- */

struct window {
	bool stalled;
	double stalled_after;   /* seconds after start when traffic stopped */
	double seconds;         /* measured window */
	uint64_t bytes;         /* received in the window (all counters) */
	uint64_t flow_bytes[2]; /* of counters 0 and 1 (the two directions of d, dl) */
	double cpu_seconds;     /* CPU time of this process in the window */
	uint64_t end_ns;
};

/* User + system CPU time of the whole process (every thread). */
static double process_cpu_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Counter i's bytes so far. */
static uint64_t counter_bytes(const struct traffic_plan *p, int i)
{
	return atomic_load_explicit(&p->counters[i].bytes, memory_order_relaxed);
}

static uint64_t counters_sum(const struct traffic_plan *p)
{
	uint64_t sum = 0;
	for (int i = 0; i < p->ncounters; i++)
		sum += counter_bytes(p, i);
	return sum;
}

static uint64_t tracked_value(const struct traffic_plan *p, int i)
{
	if (p->tracked_sum)
		return counters_sum(p);
	return counter_bytes(p, p->tracked[i]);
}

static void report_traffic_error_if_any(void)
{
	int err = atomic_load(&traffic_error);
	if (err != 0) {
		printf("RESULT status=error value=0 detail=%s:%s\n", traffic_error_where,
		       gnutls_strerror_name(err));
		fflush(stdout);
		_exit(0);
	}
}

/* Samples the counters every 20 ms from the start of traffic: the window
 * opens after the warm-up and lasts opts->seconds; the run ends once every
 * tracked flow moved again after the window (so a flow that stops right at
 * the end is still caught), or as a stall when a tracked flow did not move
 * for opts->stall seconds. */
static struct window monitor(const struct traffic_plan *p, const struct bench_run_opts *opts)
{
	const uint64_t tick = 20 * 1000 * 1000;
	int ntracked = p->tracked_sum ? 1 : p->ntracked;
	uint64_t start = bench_now_ns();
	uint64_t open_at = start + (uint64_t)(opts->warmup * 1e9);
	uint64_t close_at = open_at + (uint64_t)(opts->seconds * 1e9);
	uint64_t stall_ns = (uint64_t)(opts->stall * 1e9);
	uint64_t last_value[MAX_TRACKED], last_move[MAX_TRACKED];
	uint64_t open_bytes = 0, open_ns = 0, open_flow[2] = { 0, 0 };
	double open_cpu = 0;
	bool opened = false, closed = false;
	struct window w;

	memset(&w, 0, sizeof w);
	for (int i = 0; i < ntracked; i++) {
		last_value[i] = tracked_value(p, i);
		last_move[i] = start;
	}
	for (;;) {
		struct timespec ts = { 0, (long)tick };
		nanosleep(&ts, NULL);
		report_traffic_error_if_any();
		uint64_t now = bench_now_ns();
		bool all_moved_since_close = true;
		for (int i = 0; i < ntracked; i++) {
			uint64_t v = tracked_value(p, i);
			if (v != last_value[i]) {
				last_value[i] = v;
				last_move[i] = now;
			}
			if (now - last_move[i] >= stall_ns) {
				w.stalled = true;
				w.stalled_after = (double)(last_move[i] - start) / 1e9;
				w.end_ns = now;
				return w;
			}
			if (last_move[i] <= close_at)
				all_moved_since_close = false;
		}
		if (!opened && now >= open_at) {
			opened = true;
			open_bytes = counters_sum(p);
			for (int i = 0; i < 2 && i < p->ncounters; i++)
				open_flow[i] = counter_bytes(p, i);
			open_ns = now;
			open_cpu = process_cpu_seconds();
		}
		else if (!closed && now >= close_at) {   /* a later sample than the opening */
			closed = true;
			w.bytes = counters_sum(p) - open_bytes;
			for (int i = 0; i < 2 && i < p->ncounters; i++)
				w.flow_bytes[i] = counter_bytes(p, i) - open_flow[i];
			w.cpu_seconds = process_cpu_seconds() - open_cpu;
			w.seconds = (double)(now - open_ns) / 1e9;
			w.end_ns = now;
		}
		if (closed && all_moved_since_close)
			return w;
	}
}

static void start_threads(struct traffic_plan *p)
{
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_barrier_init(&start_barrier, NULL, (unsigned)p->nthreads + 1);
	for (int i = 0; i < p->nthreads; i++) {
		pthread_t tid;
		if (pthread_create(&tid, &attr, traffic_main, &p->threads[i]) != 0) {
			printf("RESULT status=error value=0 detail=pthread_create:%s\n",
			       strerror(errno));
			fflush(stdout);
			_exit(2);
		}
	}
	pthread_attr_destroy(&attr);
	pthread_barrier_wait(&start_barrier);   /* every handshake is done */
	report_traffic_error_if_any();
}

/* Extra fields every RESULT line carries: which preload was really
 * mapped (the driver checks it), and how many sessions rekeyguard guarded. */
static void print_result_tail(void)
{
	union { void *sym; unsigned long (*fn)(void); } guarded;
	guarded.sym = dlsym(RTLD_DEFAULT, "rekeyguard_sessions_guarded");
	printf(" preload=%s", bench_preload_name());
	if (guarded.sym != NULL)
		printf(" guarded=%lu", guarded.fn());
	printf("\n");
}

static void finish_stalled(const struct window *w)
{
	printf("RESULT status=stall value=0 detail=no-progress-after-%.2fs", w->stalled_after);
	print_result_tail();
	fflush(stdout);
	_exit(0);
}

/* ---- workloads ---------------------------------------------------------- */

/* a, b, f: n sessions, one sender and one receiver thread each. */
static void workload_bulk(const struct bench_run_opts *o, enum bench_transport transport,
			  int n, size_t record)
{
	struct tls_link *links = calloc((size_t)n, sizeof *links);
	struct traffic_plan p;

	links_open(links, n, transport, o->prio);
	plan_alloc(&p, 2 * n, n);
	for (int i = 0; i < n; i++) {
		struct traffic_thread *t;
		t = plan_add(&p, links[i].client, record == BENCH_RECORD ? ROLE_BULK_SEND
									: ROLE_SMALL_SEND, NULL);
		t->handshake_client = true;
		t = plan_add(&p, links[i].server, ROLE_BULK_RECV, &p.counters[i]);
		t->handshake_server = true;
	}
	p.tracked_sum = true;
	start_threads(&p);
	struct window w = monitor(&p, o);
	if (w.stalled)
		finish_stalled(&w);
	if (record == BENCH_RECORD)
		printf("RESULT status=ok value=%.1f unit=MB/s per_cpu=%.1f",
		       (double)w.bytes / w.seconds / 1e6, (double)w.bytes / w.cpu_seconds / 1e6);
	else
		printf("RESULT status=ok value=%.0f unit=records/s per_cpu=%.0f",
		       (double)w.bytes / (double)record / w.seconds,
		       (double)w.bytes / (double)record / w.cpu_seconds);
	print_result_tail();
	fflush(stdout);
	_exit(0);
}

static void ticks_alloc(const struct bench_run_opts *o)
{
	/* Ticks for the whole run, generously: warm-up, window, stall wait. */
	ticks.cap = (size_t)((o->warmup + o->seconds + o->stall + 5.0) * 1e9 / BENCH_TICK_NS);
	ticks.due_ns = calloc(ticks.cap, sizeof *ticks.due_ns);
	ticks.latency_ns = calloc(ticks.cap, sizeof *ticks.latency_ns);
}

/* The two directions of d and dl apart: counter 0 is server to client
 * (the probe's direction in dl), counter 1 client to server. */
static void print_flows(const struct window *w)
{
	printf(" s2c_mbs=%.1f c2s_mbs=%.1f", (double)w->flow_bytes[0] / w->seconds / 1e6,
	       (double)w->flow_bytes[1] / w->seconds / 1e6);
}

/* The RESULT line with the tick latencies: messages due inside the window;
 * one not received by now counts with its age so far (a lower bound of its
 * real latency). duplex: with print_flows. */
static void print_with_latency(const struct bench_run_opts *o, uint64_t start,
			       const struct window *w, bool duplex)
{
	uint64_t open_at = start + (uint64_t)(o->warmup * 1e9);
	uint64_t close_at = open_at + (uint64_t)(o->seconds * 1e9);
	uint64_t now = bench_now_ns();
	size_t n = 0, late = 0;
	uint64_t *lat = malloc(ticks.cap * sizeof *lat);
	for (size_t seq = 0; seq < ticks.cap; seq++) {
		uint64_t due = ticks.due_ns[seq];
		if (due == 0 || due < open_at || due >= close_at)
			continue;
		uint64_t l = ticks.latency_ns[seq];
		if (l == 0) {
			l = now - due;
			late++;
		}
		lat[n++] = l;
	}
	printf("RESULT status=ok value=%.1f unit=MB/s per_cpu=%.1f lat_n=%zu late=%zu",
	       (double)w->bytes / w->seconds / 1e6, (double)w->bytes / w->cpu_seconds / 1e6, n, late);
	if (duplex)
		print_flows(w);
	print_result_tail();
	for (size_t i = 0; i < n; i++)
		printf("%s%llu%s", i % 16 == 0 ? "LAT " : "", (unsigned long long)lat[i],
		       i % 16 == 15 || i + 1 == n ? "\n" : " ");
	fflush(stdout);
	_exit(0);
}

/* c, cf: the migration shape, on QEMU's custom transport or the fd one. */
static void workload_migration(const struct bench_run_opts *o, enum bench_transport transport)
{
	struct tls_link link;
	struct traffic_plan p;
	struct traffic_thread *t;

	ticks_alloc(o);
	links_open(&link, 1, transport, o->prio);
	plan_alloc(&p, 4, 1);
	/* source (client): migration thread sends, return path waits in recv */
	t = plan_add(&p, link.client, ROLE_BULK_SEND, NULL);
	t->handshake_client = true;
	plan_add(&p, link.client, ROLE_TICK_RECV, NULL);
	/* destination (server): reads the bulk, sends a message every 10 ms */
	t = plan_add(&p, link.server, ROLE_BULK_RECV, &p.counters[0]);
	t->handshake_server = true;
	plan_add(&p, link.server, ROLE_TICK_SEND, NULL);
	p.tracked[p.ntracked++] = 0;

	start_threads(&p);
	uint64_t start = bench_now_ns();
	struct window w = monitor(&p, o);
	if (w.stalled)
		finish_stalled(&w);
	print_with_latency(o, start, &w, false);
}

/* d: bulk both ways, a sender and a receiver thread on each end; dl: the
 * same with the server's sender putting a 64-byte message among its bulk
 * records every 10 ms (the latency probe). */
static void workload_duplex(const struct bench_run_opts *o, bool probe)
{
	struct tls_link link;
	struct traffic_plan p;
	struct traffic_thread *t;

	if (probe)
		ticks_alloc(o);
	links_open(&link, 1, BENCH_FD, o->prio);
	plan_alloc(&p, 4, 2);
	t = plan_add(&p, link.client, ROLE_BULK_SEND, NULL);
	t->handshake_client = true;
	plan_add(&p, link.client, probe ? ROLE_MIXED_RECV : ROLE_BULK_RECV, &p.counters[0]);
	t = plan_add(&p, link.server, probe ? ROLE_MIXED_SEND : ROLE_BULK_SEND, NULL);
	t->handshake_server = true;
	plan_add(&p, link.server, ROLE_BULK_RECV, &p.counters[1]);
	p.tracked[p.ntracked++] = 0;
	p.tracked[p.ntracked++] = 1;

	start_threads(&p);
	uint64_t start = bench_now_ns();
	struct window w = monitor(&p, o);
	if (w.stalled)
		finish_stalled(&w);
	if (probe)
		print_with_latency(o, start, &w, true);
	printf("RESULT status=ok value=%.1f unit=MB/s per_cpu=%.1f",
	       (double)w.bytes / w.seconds / 1e6, (double)w.bytes / w.cpu_seconds / 1e6);
	print_flows(&w);
	print_result_tail();
	fflush(stdout);
	_exit(0);
}

/* g: 1-byte send + receive in a tight loop, one thread, in-memory
 * transport; the value is nanoseconds per GnuTLS call (half a pair) of
 * this thread's CPU time, so that time the thread spends descheduled on a
 * busy machine does not count (wall-clock ns are printed as wall_ns). */
static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void workload_percall(const struct bench_run_opts *o)
{
	gnutls_session_t client = bench_session_new(false, o->prio);
	gnutls_session_t server = bench_session_new(true, o->prio);
	unsigned char byte = 'x', buf[16];
	uint64_t pairs = 0;

	bench_memory_pipe_new(client, server);
	bench_handshake_alternating(client, server);

	uint64_t start = bench_now_ns();
	uint64_t open_at = start + (uint64_t)(o->warmup * 1e9);
	uint64_t close_at = open_at + (uint64_t)(o->seconds * 1e9);
	uint64_t now = start, open_ns = 0, open_cpu = 0, open_pairs = 0;
	bool opened = false;
	/* At least one batch inside the window, however slow the machine. */
	while (!opened || now < close_at || pairs == open_pairs) {
		for (int i = 0; i < 1000; i++) {
			ssize_t n = gnutls_record_send(client, &byte, 1);
			ssize_t m = gnutls_record_recv(server, buf, sizeof buf);
			if (n != 1 || m != 1) {
				printf("RESULT status=error value=0 detail=percall:send=%zd,recv=%zd\n",
				       n, m);
				fflush(stdout);
				_exit(0);
			}
		}
		pairs += 1000;
		now = bench_now_ns();
		if (!opened && now >= open_at) {
			opened = true;
			open_ns = now;
			open_cpu = thread_cpu_ns();
			open_pairs = pairs;
		}
	}
	double calls = (double)(2 * (pairs - open_pairs));
	printf("RESULT status=ok value=%.1f unit=ns/call wall_ns=%.1f pairs_total=%llu",
	       (double)(thread_cpu_ns() - open_cpu) / calls, (double)(now - open_ns) / calls,
	       (unsigned long long)pairs);
	print_result_tail();
	fflush(stdout);
	_exit(0);
}

/* u: each thread calls gnutls_record_check_pending and
 * gnutls_record_get_direction on its own DTLS session (no handshake
 * needed) in a loop; the value is the mean over threads of their CPU ns
 * per call. With a process-wide lock on the unguarded path, two threads
 * would contend on it and the per-call cost would grow with threads. */
struct unguarded_thread {
	const struct bench_run_opts *o;
	double ns_per_call;
	bool failed;
};

static void *unguarded_main(void *arg)
{
	struct unguarded_thread *t = arg;
	gnutls_session_t s;
	if (gnutls_init(&s, GNUTLS_CLIENT | GNUTLS_DATAGRAM) < 0) {
		t->failed = true;
		return NULL;
	}
	uint64_t start = bench_now_ns();
	uint64_t open_at = start + (uint64_t)(t->o->warmup * 1e9);
	uint64_t close_at = open_at + (uint64_t)(t->o->seconds * 1e9);
	uint64_t now = start, calls = 0, open_calls = 0, open_cpu = 0;
	bool opened = false;
	size_t sink = 0;
	while (!opened || now < close_at || calls == open_calls) {
		for (int i = 0; i < 1000; i++) {
			sink += gnutls_record_check_pending(s);
			sink += (size_t)gnutls_record_get_direction(s);
		}
		calls += 2000;
		now = bench_now_ns();
		if (!opened && now >= open_at) {
			opened = true;
			open_cpu = thread_cpu_ns();
			open_calls = calls;
		}
	}
	t->ns_per_call = (double)(thread_cpu_ns() - open_cpu) / (double)(calls - open_calls);
	t->failed = sink != 0;   /* a fresh DTLS session has nothing pending, direction 0 */
	gnutls_deinit(s);
	return NULL;
}

static void workload_unguarded(const struct bench_run_opts *o)
{
	enum { MAX_THREADS = 8 };
	int n = o->sessions < 1 ? 1 : o->sessions > MAX_THREADS ? MAX_THREADS : o->sessions;
	struct unguarded_thread t[MAX_THREADS];
	pthread_t tid[MAX_THREADS];
	bench_tls_init();
	for (int i = 0; i < n; i++) {
		t[i] = (struct unguarded_thread){ o, 0, false };
		pthread_create(&tid[i], NULL, unguarded_main, &t[i]);
	}
	double sum = 0;
	bool failed = false;
	for (int i = 0; i < n; i++) {
		pthread_join(tid[i], NULL);
		sum += t[i].ns_per_call;
		failed |= t[i].failed;
	}
	if (failed)
		printf("RESULT status=error value=0 detail=unguarded:dtls-session\n");
	else
		printf("RESULT status=ok value=%.1f unit=ns/call threads=%d", sum / n, n);
	if (!failed)
		print_result_tail();
	fflush(stdout);
	_exit(0);
}

/* raw: AEAD encryption of 16 KiB records in one thread, no TLS. */
static double aead_mbps(gnutls_cipher_algorithm_t alg, double seconds)
{
	gnutls_aead_cipher_hd_t h;
	unsigned char keybuf[32] = { 1 }, nonce[12] = { 0 };
	gnutls_datum_t key = { keybuf, (unsigned)gnutls_cipher_get_key_size(alg) };
	unsigned char *in = calloc(1, BENCH_RECORD), *out = malloc(BENCH_RECORD + 64);
	uint64_t bytes = 0, start, now;
	int ret = gnutls_aead_cipher_init(&h, alg, &key);

	if (ret < 0) {
		printf("RESULT status=error value=0 detail=aead_init:%s\n", gnutls_strerror_name(ret));
		fflush(stdout);
		_exit(0);
	}
	start = now = bench_now_ns();
	while (now - start < (uint64_t)(seconds * 1e9)) {
		for (int i = 0; i < 64; i++) {
			size_t outlen = BENCH_RECORD + 64;
			nonce[0]++;
			gnutls_aead_cipher_encrypt(h, nonce, sizeof nonce, NULL, 0, 16,
						   in, BENCH_RECORD, out, &outlen);
			bytes += BENCH_RECORD;
		}
		now = bench_now_ns();
	}
	gnutls_aead_cipher_deinit(h);
	free(in);
	free(out);
	return (double)bytes / ((double)(now - start) / 1e9) / 1e6;
}

static void workload_raw(const struct bench_run_opts *o)
{
	bench_tls_init();
	aead_mbps(GNUTLS_CIPHER_AES_128_GCM, o->warmup);
	double aes = aead_mbps(GNUTLS_CIPHER_AES_128_GCM, o->seconds / 2);
	double chacha = aead_mbps(GNUTLS_CIPHER_CHACHA20_POLY1305, o->seconds / 2);
	printf("RESULT status=ok value=%.1f unit=MB/s chacha=%.1f", aes, chacha);
	print_result_tail();
	fflush(stdout);
	_exit(0);
}

int bench_worker(const struct bench_run_opts *o)
{
	signal(SIGPIPE, SIG_IGN);
	if (strcmp(o->workload, "raw") == 0)
		workload_raw(o);
	else if (strcmp(o->workload, "a") == 0)
		workload_bulk(o, BENCH_CUSTOM, 1, BENCH_RECORD);
	else if (strcmp(o->workload, "b") == 0)
		workload_bulk(o, BENCH_FD, 1, BENCH_RECORD);
	else if (strcmp(o->workload, "c") == 0)
		workload_migration(o, BENCH_CUSTOM);
	else if (strcmp(o->workload, "cf") == 0)
		workload_migration(o, BENCH_FD);
	else if (strcmp(o->workload, "d") == 0)
		workload_duplex(o, false);
	else if (strcmp(o->workload, "dl") == 0)
		workload_duplex(o, true);
	else if (strcmp(o->workload, "e") == 0)
		workload_bulk(o, BENCH_CUSTOM, 1, BENCH_SMALL);
	else if (strcmp(o->workload, "f") == 0)
		workload_bulk(o, BENCH_FD, o->sessions, BENCH_RECORD);
	else if (strcmp(o->workload, "g") == 0)
		workload_percall(o);
	else if (strcmp(o->workload, "u") == 0)
		workload_unguarded(o);
	fprintf(stderr, "rg-bench: unknown workload '%s'\n", o->workload);
	return 2;
}
