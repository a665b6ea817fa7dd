/*
 * bench.h — declarations shared by rekeyguard's benchmark (bench/rg-bench).
 *
 *   bench-main.c  command line: the driver (default) or one worker run
 *   driver.c      the plan: rounds, interleaved configurations, one child
 *                 process per run with the configuration's LD_PRELOAD, hard
 *                 timeouts, CPU-noise checks
 *   stats.c       statistics: medians of paired ratios, pooled latency
 *                 percentiles
 *   report.c      latest.md, latest.csv, latest-runs.csv, the targets
 *   chart.c       the chart's data for chart.gp, and running gnuplot
 *   workloads.c   the measured traffic (runs inside a worker child)
 *   tls-setup.c   credentials, sessions, TCP loopback pairs, the QEMU-like
 *                 custom transport and the in-memory transport
 *   baseline-lock.c  the preloads of configurations 4 and 5 (not linked)
 *   chart.gp      the gnuplot chart, fed by report.c
 *   bench.mk      the make targets (included by the top Makefile)
 *
 * A worker run prints its outcome on stdout as lines the driver parses:
 *   RESULT status=ok|stall|error value=<number> [key=value...]
 *          (per_cpu=: the same work per CPU-second of the whole process,
 *          a cost measure that other load on the machine disturbs less)
 *   LAT <ns> <ns> ...          (latency samples, workload c)
 * Anything else it prints is kept as diagnostics for failed runs.
 *
 * The benchmark links libgnutls normally and never links the shim or the
 * baseline locks: configurations differ only by LD_PRELOAD, exactly as
 * users load them.
 */
#ifndef REKEYGUARD_BENCH_H
#define REKEYGUARD_BENCH_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* TLS 1.3 only, one cipher. */
#define BENCH_PRIO_AES "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM"
#define BENCH_PRIO_CHACHA "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"

#define BENCH_RECORD 16384      /* bulk write size: one full TLS record */
#define BENCH_SMALL 64          /* small record / return-path message */
#define BENCH_TICK_NS 10000000  /* return-path message period: 10 ms */

/* ---- workloads.c ------------------------------------------------------- */

enum bench_transport { BENCH_FD, BENCH_CUSTOM, BENCH_MEMORY };

/* One worker run, from the worker's command line. */
struct bench_run_opts {
	const char *workload;   /* raw, a, b, c, d, e, f, g */
	const char *prio;       /* priority string */
	double warmup;          /* seconds of traffic before the window */
	double seconds;         /* measurement window */
	double stall;           /* no progress for this long: a stall */
	int sessions;           /* workload f */
};

/* Runs the workload and prints its RESULT (and LAT) lines; the process
 * then ends with _exit, so threads stuck in a deadlock do not matter.
 * Returns only on a usage error (unknown workload). */
int bench_worker(const struct bench_run_opts *opts);

/* ---- tls-setup.c ------------------------------------------------------- */

/* gnutls_global_init, an ECDSA key and self-signed certificate made in
 * memory, client and server credentials. Idempotent. */
void bench_tls_init(void);

/* A new client or server session with the priority string. Exits on error. */
gnutls_session_t bench_session_new(bool server, const char *prio);

/* n TCP loopback connections (127.0.0.1, ephemeral port, TCP_NODELAY):
 * client_fd[i] connects to server_fd[i]. */
void bench_tcp_pairs(int n, int *client_fd, int *server_fd);

/* Transport for a session over a connected socket: BENCH_FD is GnuTLS's
 * default (gnutls_transport_set_int); BENCH_CUSTOM is QEMU-like blocking
 * push/pull callbacks over the same fd (and tells the QEMU-style baseline
 * which fd to poll, see bench_announce_poll_fd). */
void bench_transport_set(gnutls_session_t s, enum bench_transport t, int fd);

/* In-memory transport for two sessions driven from one thread: each push
 * appends to the peer's queue, each pull takes from the own queue or fails
 * with EAGAIN (reported through gnutls_transport_set_errno). */
struct bench_memory_pipe;
struct bench_memory_pipe *bench_memory_pipe_new(gnutls_session_t client,
						gnutls_session_t server);

/* Handshakes both ends; for blocking transports runs the server end in a
 * helper thread, for the in-memory transport alternates in this thread.
 * Exits on failure. */
void bench_handshake_threaded(gnutls_session_t client, gnutls_session_t server);
void bench_handshake_alternating(gnutls_session_t client, gnutls_session_t server);

/* The QEMU-style baseline (bench/libqemustyle.so) must poll the fd under a
 * custom transport before each receive, as QEMU polls its own channel; the
 * benchmark tells it which fd through this hook when the library is
 * loaded (looked up with dlsym, no link dependency). */
void bench_announce_poll_fd(gnutls_session_t s, int fd);

/* Which preload is mapped: "rekeyguard", "naivelock", "qemustyle" or
 * "none" (by their exported marker symbols). */
const char *bench_preload_name(void);

/* Monotonic clock. */
uint64_t bench_now_ns(void);

/* ---- driver.c / report.c ----------------------------------------------- */

struct bench_plan_opts {
	int rounds;             /* BENCH_ROUNDS */
	double seconds;         /* BENCH_SECONDS: measurement window per run */
	bool smoke;             /* tiny sizes, one round, results under tmp/ */
	const char *outdir;     /* where latest.md/.csv/.png go */
	const char *tmpdir;     /* scratch: bench/results/tmp (chart data) */
	const char *self;       /* path of this binary, for the children */
	const char *shim;       /* librekeyguard.so */
	const char *naive;      /* bench/libnaivelock.so */
	const char *qemustyle;  /* bench/libqemustyle.so */
	const char *chart;      /* bench/chart.gp */
	const char *configs;    /* --configs: ids to run ("2,2',3"), NULL: all */
	const char *title;      /* --title: first line of latest.md, NULL: default */
	const char *workloads;  /* --workloads: names to run ("cf,dl"), NULL: all */
};

int bench_driver(const struct bench_plan_opts *opts);

#define BENCH_MAX_ROUNDS 100
#define BENCH_MAX_CONFIGS 7
#define BENCH_MAX_WORKLOADS 12

/* Configuration indices (columns of the report). */
enum bench_config {
	CFG_RAW = 0,        /* 1: raw AEAD, no TLS */
	CFG_PLAIN,          /* 2: unguarded GnuTLS, AES-128-GCM */
	CFG_PLAIN_AGAIN,    /* 2': the same again, for the noise floor */
	CFG_SHIM,           /* 3: librekeyguard.so */
	CFG_NAIVE,          /* 4: libnaivelock.so */
	CFG_QEMU,           /* 5: libqemustyle.so */
	CFG_CHACHA,         /* 6: unguarded GnuTLS, CHACHA20-POLY1305 */
	CFG_COUNT
};

enum bench_status { RUN_NOT_RUN = 0, RUN_OK, RUN_STALL, RUN_TIMEOUT, RUN_ERROR, RUN_SKIPPED };

struct bench_run_result {
	enum bench_status status;
	double value;           /* the workload's unit */
	double extra;           /* raw: CHACHA20-POLY1305 MB/s */
	double per_cpu;         /* value's work per CPU-second (0: none) */
	char detail[96];        /* why a run failed */
};

struct bench_cell {         /* one workload under one configuration */
	struct bench_run_result runs[BENCH_MAX_ROUNDS];
	double *latency_ns;     /* pooled over rounds (workload c) */
	size_t nlatency, latency_cap;
	size_t late;            /* messages not delivered when the run ended */
	int failures;           /* stalls, timeouts and errors so far */
};

struct bench_workload {
	const char *name;       /* a, b, c, cf, d, dl, e, f1, f16, f256, g, raw */
	const char *worker;     /* the worker's workload argument */
	const char *title;      /* for the report */
	const char *chart_label; /* x axis of the chart ("\\n" breaks the line) */
	const char *unit;       /* MB/s, records/s, ns/call */
	bool lower_is_better;
	bool latency;           /* LAT lines: tick latencies (c, cf, dl) */
	double seconds_factor;  /* window = BENCH_SECONDS * factor */
	int sessions;
	bool configs[CFG_COUNT];
	struct bench_cell cells[CFG_COUNT];
};

struct bench_results {
	const struct bench_plan_opts *opts;
	struct bench_workload *workloads;
	int nworkloads;
	int rounds;             /* rounds completed */
	double warmup, stall;
	const char *config_ids[CFG_COUNT];
	const char *config_labels[CFG_COUNT];
	time_t started;
	double elapsed;         /* seconds */
	double loadavg_before;  /* 1-minute load average at start */
	double foreign_before;  /* CPUs busy with other processes, sampled */
	double foreign_during;  /* average over the run */
	double foreign_max_round;
};

/* ---- stats.c ------------------------------------------------------------ */

/* Median and quartiles of n values (NAN when n == 0). */
struct bench_spread {
	int n;
	double median, q1, q3;
};

/* Which number of a run a statistic is about. */
enum bench_metric { BENCH_METRIC_VALUE, BENCH_METRIC_PER_CPU };

/* What happened to one workload under one configuration. */
struct bench_summary {
	int ok, stalled, timeouts, errors, skipped;
	struct bench_spread value;   /* over the successful rounds */
	const char *first_detail;    /* of the first failed run */
};

/* Pooled latency percentiles of workload c, in milliseconds. */
struct bench_latency {
	size_t n, late;
	double p50, p99, max;
};

/* Sorts v in place. */
struct bench_spread bench_spread_of(double *v, int n);
struct bench_summary bench_summarize(const struct bench_results *r,
				     const struct bench_workload *w, enum bench_config c);
struct bench_summary bench_summarize_metric(const struct bench_results *r,
					    const struct bench_workload *w, enum bench_config c,
					    enum bench_metric m);
/* Per-round x/y (difference: x - y) over rounds where both succeeded. */
struct bench_spread bench_paired(const struct bench_results *r, const struct bench_workload *w,
				 enum bench_config x, enum bench_config y, bool difference);
struct bench_spread bench_paired_metric(const struct bench_results *r,
					const struct bench_workload *w, enum bench_config x,
					enum bench_config y, bool difference, enum bench_metric m);
/* Sorts every pooled latency sample; call once before the report. */
void bench_results_finish(struct bench_results *r);
struct bench_latency bench_latency_of(const struct bench_workload *w, enum bench_config c);
const struct bench_workload *bench_find_workload(const struct bench_results *r, const char *name);
/* "STALL 2/2", "TIMEOUT 1/1", "ERROR 2/2" into buf when no run succeeded;
 * NULL when some did. */
const char *bench_failure_word(const struct bench_summary *s, char *buf, size_t len);

/* ---- report.c, chart.c ------------------------------------------------------ */

/* Writes latest.md, latest.csv, latest-runs.csv and the chart into
 * opts->outdir; prints the headline table and the targets on stdout. */
void bench_report(const struct bench_results *r);

/* fopen(dir/name, "w"); on failure says so on stderr and returns NULL. */
FILE *bench_open_in(const char *dir, const char *name);

/* Writes the chart's data files and settings into datadir and runs
 * gnuplot on opts->chart to make png; subtitle names the machine. */
void bench_chart(const struct bench_results *r, const char *datadir, const char *png,
		 const char *subtitle);

#endif
