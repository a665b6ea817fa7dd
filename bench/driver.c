/*
 * driver.c — the benchmark plan and its child processes.
 *
 * Owns: the list of workloads and configurations, the interleaved order
 * of runs (every configuration of a workload once per round, the order
 * reversed every other round, so slow drift of the machine hits every
 * configuration alike), one child process per run with the
 * configuration's LD_PRELOAD, hard timeouts, parsing the child's RESULT
 * and LAT lines, and the CPU-noise checks (load average before the start,
 * CPU time used by other processes per round, from /proc/stat minus our
 * own children's CPU time).
 *
 * Invariants: a run's child is always reaped; a child that outlives its
 * deadline is killed (SIGKILL) and reported as a timeout; a configuration
 * that stalled, timed out or failed twice in a workload is not run again
 * in that workload (its later rounds are "skipped"); the driver itself
 * never loads a preload (it does not call GnuTLS session functions).
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* The full plan. Window = BENCH_SECONDS * seconds_factor. */
/* configs last and variadic: WORKLOAD's arguments arrive expanded, and the
 * braces of ALL_TLS hold commas. */
#define WORKLOAD_(lat_, name_, worker_, title_, label_, unit_, lower_, factor_, sessions_, ...) \
	{ .name = name_, .worker = worker_, .title = title_, .chart_label = label_,  \
	  .unit = unit_, .lower_is_better = lower_, .seconds_factor = factor_,       \
	  .sessions = sessions_, .latency = lat_, .configs = __VA_ARGS__ }
#define WORKLOAD(...) WORKLOAD_(false, __VA_ARGS__)
/* A workload that also reports tick latencies (LAT lines). */
#define WORKLOAD_LAT(...) WORKLOAD_(true, __VA_ARGS__)
#define RAW_ONLY  { true, false, false, false, false, false, false }
#define ALL_TLS   { false, true, true, true, true, true, true }
#define NO_CHACHA { false, true, true, true, true, true, false }

static struct bench_workload full_plan[] = {
	WORKLOAD("raw", "raw", "1. raw AEAD, 16 KiB records, one core", "raw",
		 "MB/s", false, 1.0, 1, RAW_ONLY),
	WORKLOAD("a", "a", "a. one-way bulk, 16 KiB writes, QEMU-like custom push/pull",
		 "a. bulk\\ncustom", "MB/s", false, 1.0, 1, ALL_TLS),
	WORKLOAD("b", "b", "b. one-way bulk, 16 KiB writes, default fd transport",
		 "b. bulk\\nfd", "MB/s", false, 1.0, 1, ALL_TLS),
	WORKLOAD_LAT("c", "c", "c. migration shape: bulk + 64 B back every 10 ms, custom transport",
		     "c. migration\\ncustom", "MB/s", false, 1.5, 1, ALL_TLS),
	WORKLOAD_LAT("cf", "cf", "cf. migration shape: bulk + 64 B back every 10 ms, fd transport",
		     "cf. migration\\nfd", "MB/s", false, 1.5, 1, ALL_TLS),
	WORKLOAD("d", "d", "d. full-duplex bulk, fd transport",
		 "d. duplex\\nfd", "MB/s", false, 1.0, 1, ALL_TLS),
	WORKLOAD_LAT("dl", "dl", "dl. full-duplex bulk, a 64 B message among one direction's records every 10 ms, fd transport",
		     "dl. duplex+probe\\nfd", "MB/s", false, 1.5, 1, ALL_TLS),
	WORKLOAD("e", "e", "e. 64-byte records one way, custom transport",
		 "e. 64 B records\\ncustom", "records/s", false, 1.0, 1, ALL_TLS),
	WORKLOAD("f1", "f", "f. 1 session, fd transport",
		 "f. 1 session\\nfd", "MB/s", false, 1.0, 1, ALL_TLS),
	WORKLOAD("f16", "f", "f. 16 sessions, fd transport (aggregate)",
		 "f. 16 sessions\\nfd", "MB/s", false, 1.0, 16, ALL_TLS),
	WORKLOAD("f256", "f", "f. 256 sessions, fd transport (aggregate)",
		 "f. 256 sessions\\nfd", "MB/s", false, 1.0, 256, ALL_TLS),
	WORKLOAD("g", "g", "g. per call: 1-byte send + recv, one thread, in-memory transport",
		 "g", "ns/call", true, 1.0, 1, NO_CHACHA),
	WORKLOAD("u1", "u", "u. per call on an unguarded (DTLS) session, 1 thread",
		 "u. unguarded\\n1 thread", "ns/call", true, 0.5, 1, NO_CHACHA),
	WORKLOAD("u2", "u", "u. per call on unguarded (DTLS) sessions, 2 threads, one each",
		 "u. unguarded\\n2 threads", "ns/call", true, 0.5, 2, NO_CHACHA),
};

/* Order of configurations in even rounds; odd rounds run it backwards.
 * 2' sits next to 2 and 3 next to 2, so the noise floor and the headline
 * ratio come from equally close pairs. */
static const enum bench_config round_order[] = {
	CFG_RAW, CFG_PLAIN_AGAIN, CFG_PLAIN, CFG_SHIM, CFG_NAIVE, CFG_QEMU, CFG_CHACHA,
};
#define ROUND_ORDER_LEN ((int)(sizeof round_order / sizeof round_order[0]))

static const char *const config_ids[CFG_COUNT] = { "1", "2", "2'", "3", "4", "5", "6" };
static const char *const config_labels[CFG_COUNT] = {
	"raw AES-128-GCM AEAD", "plain GnuTLS AES-128-GCM", "plain again (noise)",
	"rekeyguard", "naive per-session lock", "QEMU-style lock + poll",
	"plain GnuTLS CHACHA20-POLY1305",
};

/* ---- CPU accounting ------------------------------------------------------ */

struct cpu_sample {
	double busy;    /* user+nice+system seconds of all CPUs (/proc/stat) */
	double ours;    /* our own and our reaped children's CPU seconds */
	double wall;
};

static struct cpu_sample cpu_sample_take(void)
{
	struct cpu_sample s = { 0, 0, (double)bench_now_ns() / 1e9 };
	unsigned long long user = 0, nice = 0, system = 0;
	FILE *f = fopen("/proc/stat", "r");
	if (f != NULL) {
		if (fscanf(f, "cpu %llu %llu %llu", &user, &nice, &system) != 3)
			user = nice = system = 0;
		fclose(f);
	}
	s.busy = (double)(user + nice + system) / (double)sysconf(_SC_CLK_TCK);
	struct rusage self, children;
	getrusage(RUSAGE_SELF, &self);
	getrusage(RUSAGE_CHILDREN, &children);
	s.ours = (double)(self.ru_utime.tv_sec + self.ru_stime.tv_sec +
			  children.ru_utime.tv_sec + children.ru_stime.tv_sec) +
		 (double)(self.ru_utime.tv_usec + self.ru_stime.tv_usec +
			  children.ru_utime.tv_usec + children.ru_stime.tv_usec) / 1e6;
	return s;
}

/* CPUs kept busy by other processes between two samples (>= 0). */
static double cpu_foreign(const struct cpu_sample *a, const struct cpu_sample *b)
{
	double wall = b->wall - a->wall;
	if (wall <= 0)
		return 0;
	double foreign = ((b->busy - a->busy) - (b->ours - a->ours)) / wall;
	return foreign > 0 ? foreign : 0;
}

static double loadavg_1min(void)
{
	double load = 0;
	FILE *f = fopen("/proc/loadavg", "r");
	if (f != NULL) {
		if (fscanf(f, "%lf", &load) != 1)
			load = 0;
		fclose(f);
	}
	return load;
}

/* ---- one run --------------------------------------------------------------- */

struct run_request {
	const struct bench_plan_opts *opts;
	const struct bench_workload *workload;
	enum bench_config config;
	double warmup, seconds, stall;
};

static const char *config_preload(const struct bench_plan_opts *o, enum bench_config c)
{
	switch (c) {
	case CFG_SHIM:
		return o->shim;
	case CFG_NAIVE:
		return o->naive;
	case CFG_QEMU:
		return o->qemustyle;
	default:
		return NULL;
	}
}

/* What bench_preload_name() in the child must say. */
static const char *config_expected_preload(enum bench_config c)
{
	switch (c) {
	case CFG_SHIM:
		return "rekeyguard";
	case CFG_NAIVE:
		return "naivelock";
	case CFG_QEMU:
		return "qemustyle";
	default:
		return "none";
	}
}

static void child_exec(const struct run_request *q, int out_fd)
{
	char warmup[32], seconds[32], stall[32], sessions[32];
	const char *preload = config_preload(q->opts, q->config);

	snprintf(warmup, sizeof warmup, "%.3f", q->warmup);
	snprintf(seconds, sizeof seconds, "%.3f", q->seconds);
	snprintf(stall, sizeof stall, "%.3f", q->stall);
	snprintf(sessions, sizeof sessions, "%d", q->workload->sessions);
	const char *argv[] = {
		q->opts->self, "worker", q->workload->worker,
		"--prio", q->config == CFG_CHACHA ? "chacha" : "aes",
		"--warmup", warmup, "--seconds", seconds, "--stall", stall,
		"--sessions", sessions, NULL,
	};
	dup2(out_fd, STDOUT_FILENO);
	dup2(out_fd, STDERR_FILENO);
	close(out_fd);
	/* Exactly as users load it; nothing inherited from our environment. */
	if (preload != NULL)
		setenv("LD_PRELOAD", preload, 1);
	else
		unsetenv("LD_PRELOAD");
	execv(argv[0], (char *const *)argv);
	printf("RESULT status=error value=0 detail=exec:%s\n", strerror(errno));
	fflush(stdout);
	_exit(127);
}

/* Copies the value of key= from a RESULT line (up to a space). */
static bool result_field(const char *line, const char *key, char *out, size_t outlen)
{
	size_t klen = strlen(key);
	for (const char *p = line; (p = strstr(p, key)) != NULL; p += klen) {
		if ((p == line || p[-1] == ' ') && p[klen] == '=') {
			p += klen + 1;
			size_t n = strcspn(p, " \n");
			if (n >= outlen)
				n = outlen - 1;
			memcpy(out, p, n);
			out[n] = '\0';
			return true;
		}
	}
	return false;
}

struct run_output {
	struct bench_run_result result;
	bool have_result;
	double *latency;
	size_t nlatency, cap;
	size_t late;
	char last_line[96];
};

static void output_line(struct run_output *out, const struct run_request *q, char *line)
{
	char field[96];

	if (strncmp(line, "LAT ", 4) == 0) {
		for (char *p = line + 4, *end; *p != '\0'; p = end) {
			double v = strtod(p, &end);
			if (end == p)
				break;
			if (out->nlatency == out->cap) {
				out->cap = out->cap ? 2 * out->cap : 1024;
				out->latency = realloc(out->latency, out->cap * sizeof *out->latency);
			}
			out->latency[out->nlatency++] = v;
		}
		return;
	}
	if (strncmp(line, "RESULT ", 7) != 0) {
		snprintf(out->last_line, sizeof out->last_line, "%s", line);
		return;
	}
	struct bench_run_result *r = &out->result;
	out->have_result = true;
	r->status = RUN_ERROR;
	if (result_field(line, "status", field, sizeof field)) {
		if (strcmp(field, "ok") == 0)
			r->status = RUN_OK;
		else if (strcmp(field, "stall") == 0)
			r->status = RUN_STALL;
	}
	if (result_field(line, "value", field, sizeof field))
		r->value = strtod(field, NULL);
	if (result_field(line, "chacha", field, sizeof field))
		r->extra = strtod(field, NULL);
	if (result_field(line, "per_cpu", field, sizeof field))
		r->per_cpu = strtod(field, NULL);
	if (result_field(line, "late", field, sizeof field))
		out->late = strtoul(field, NULL, 10);
	if (result_field(line, "detail", field, sizeof field))
		snprintf(r->detail, sizeof r->detail, "%s", field);
	if (result_field(line, "preload", field, sizeof field) &&
	    strcmp(field, config_expected_preload(q->config)) != 0) {
		r->status = RUN_ERROR;
		snprintf(r->detail, sizeof r->detail, "preload-not-mapped(%.60s)", field);
	}
}

/* Feeds the child's output, split into lines, to output_line. */
struct line_reader {
	char buf[8192];
	size_t len;
};

static void reader_feed(struct line_reader *lr, struct run_output *out,
			const struct run_request *q, const char *data, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (data[i] == '\n' || lr->len == sizeof lr->buf - 1) {
			lr->buf[lr->len] = '\0';
			output_line(out, q, lr->buf);
			lr->len = 0;
			if (data[i] == '\n')
				continue;
		}
		lr->buf[lr->len++] = data[i];
	}
}

static struct run_output run_child(const struct run_request *q)
{
	struct run_output out;
	struct line_reader lr;
	int pipefd[2];

	memset(&out, 0, sizeof out);
	lr.len = 0;
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		out.result.status = RUN_ERROR;
		snprintf(out.result.detail, sizeof out.result.detail, "pipe:%s", strerror(errno));
		return out;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		close(pipefd[0]);
		child_exec(q, pipefd[1]);
	}
	close(pipefd[1]);

	/* Warm-up, window, a stall's wait and generous set-up time (256
	 * handshakes on a busy 2-core machine). */
	double budget = q->warmup + q->seconds + q->stall + 10.0 + q->workload->sessions * 0.05;
	uint64_t deadline = bench_now_ns() + (uint64_t)(budget * 1e9);
	bool timed_out = false;
	for (;;) {
		uint64_t now = bench_now_ns();
		if (now >= deadline) {
			timed_out = true;
			kill(pid, SIGKILL);
			break;
		}
		struct pollfd pfd = { pipefd[0], POLLIN, 0 };
		int ready = poll(&pfd, 1, (int)((deadline - now) / 1000000) + 1);
		if (ready < 0 && errno == EINTR)
			continue;
		if (ready <= 0)
			continue;
		char data[4096];
		ssize_t n = read(pipefd[0], data, sizeof data);
		if (n <= 0)
			break;
		reader_feed(&lr, &out, q, data, (size_t)n);
	}
	if (lr.len > 0) {
		lr.buf[lr.len] = '\0';
		output_line(&out, q, lr.buf);
	}
	close(pipefd[0]);

	int wstatus = 0;
	while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR)
		;
	struct bench_run_result *r = &out.result;
	if (timed_out) {
		r->status = RUN_TIMEOUT;
		snprintf(r->detail, sizeof r->detail, "killed-after-%.0fs", budget);
	} else if (!out.have_result) {
		r->status = RUN_ERROR;
		if (WIFSIGNALED(wstatus))
			snprintf(r->detail, sizeof r->detail, "signal-%d:%.70s", WTERMSIG(wstatus),
				 out.last_line);
		else
			snprintf(r->detail, sizeof r->detail, "exit-%d:%.70s", WEXITSTATUS(wstatus),
				 out.last_line);
	}
	return out;
}

/* ---- the plan ----------------------------------------------------------------- */

static void run_cell(struct bench_results *res, struct bench_workload *w,
		     enum bench_config c, int round)
{
	struct bench_cell *cell = &w->cells[c];
	struct bench_run_result *r = &cell->runs[round];

	if (cell->failures >= 2) {
		r->status = RUN_SKIPPED;
		return;
	}
	struct run_request q = {
		res->opts, w, c, res->warmup, res->opts->seconds * w->seconds_factor, res->stall,
	};
	struct run_output out = run_child(&q);
	*r = out.result;
	if (r->status == RUN_OK) {
		if (cell->nlatency + out.nlatency > cell->latency_cap) {
			cell->latency_cap = 2 * (cell->nlatency + out.nlatency);
			cell->latency_ns = realloc(cell->latency_ns,
						   cell->latency_cap * sizeof *cell->latency_ns);
		}
		memcpy(cell->latency_ns + cell->nlatency, out.latency,
		       out.nlatency * sizeof *out.latency);
		cell->nlatency += out.nlatency;
		cell->late += out.late;
	} else {
		cell->failures++;
	}
	free(out.latency);
}

static const char *status_word(enum bench_status s)
{
	switch (s) {
	case RUN_STALL:
		return "STALL";
	case RUN_TIMEOUT:
		return "TIMEOUT";
	case RUN_ERROR:
		return "ERROR";
	case RUN_SKIPPED:
		return "skip";
	default:
		return "-";
	}
}

static void progress_line(const struct bench_results *res, const struct bench_workload *w,
			  int round, uint64_t start_ns)
{
	char line[512];
	int len = snprintf(line, sizeof line, "[%4.0fs] round %d/%d %-4s",
			   (double)(bench_now_ns() - start_ns) / 1e9, round + 1,
			   res->opts->rounds, w->name);
	for (int c = 0; c < CFG_COUNT && len < (int)sizeof line - 40; c++) {
		if (!w->configs[c])
			continue;
		const struct bench_run_result *r = &w->cells[c].runs[round];
		if (r->status == RUN_OK)
			len += snprintf(line + len, sizeof line - (size_t)len, " %s=%.4g",
					config_ids[c], r->value);
		else
			len += snprintf(line + len, sizeof line - (size_t)len, " %s=%s",
					config_ids[c], status_word(r->status));
	}
	fprintf(stderr, "%s %s\n", line, w->unit);
	for (int c = 0; c < CFG_COUNT; c++) {
		const struct bench_run_result *r = &w->cells[c].runs[round];
		if (w->configs[c] && (r->status == RUN_ERROR || r->status == RUN_TIMEOUT))
			fprintf(stderr, "        %s: %s %s\n", config_ids[c],
				status_word(r->status), r->detail);
	}
}

/* The smoke plan: the same workloads, tiny: fewer sessions in f. */
static void plan_shrink_for_smoke(struct bench_workload *plan, int n)
{
	for (int i = 0; i < n; i++) {
		if (strcmp(plan[i].name, "f16") == 0) {
			plan[i].name = "f4";
			plan[i].title = "f. 4 sessions, fd transport (aggregate)";
			plan[i].chart_label = "f. 4 sessions\\nfd";
			plan[i].sessions = 4;
		} else if (strcmp(plan[i].name, "f256") == 0) {
			plan[i].name = "f16";
			plan[i].title = "f. 16 sessions, fd transport (aggregate)";
			plan[i].chart_label = "f. 16 sessions\\nfd";
			plan[i].sessions = 16;
		}
	}
}

static void warn_if_busy(struct bench_results *res)
{
	struct cpu_sample a = cpu_sample_take();
	struct timespec ts = { res->opts->smoke ? 0 : 1, res->opts->smoke ? 300000000 : 0 };
	nanosleep(&ts, NULL);
	struct cpu_sample b = cpu_sample_take();

	res->loadavg_before = loadavg_1min();
	res->foreign_before = cpu_foreign(&a, &b);
	fprintf(stderr, "rg-bench: load average %.2f, other processes using %.2f of %ld CPUs\n",
		res->loadavg_before, res->foreign_before, sysconf(_SC_NPROCESSORS_ONLN));
	if (res->loadavg_before > 0.5 || res->foreign_before > 0.1)
		fprintf(stderr, "rg-bench: WARNING: the machine is not idle; expect noisy "
			"numbers (the noise floor 2'/2 in the report shows how noisy)\n");
}

int bench_driver(const struct bench_plan_opts *opts)
{
	static struct bench_results res;
	int nworkloads = (int)(sizeof full_plan / sizeof full_plan[0]);

	if (opts->rounds < 1 || opts->rounds > BENCH_MAX_ROUNDS) {
		fprintf(stderr, "rg-bench: rounds must be 1..%d\n", BENCH_MAX_ROUNDS);
		return 2;
	}
	if (opts->workloads != NULL) {
		/* --workloads: only the named rows, in the plan's order */
		int kept = 0;
		char list[128];
		snprintf(list, sizeof list, ",%s,", opts->workloads);
		for (int i = 0; i < nworkloads; i++) {
			char name[16];
			snprintf(name, sizeof name, ",%s,", full_plan[i].name);
			if (strstr(list, name) != NULL)
				full_plan[kept++] = full_plan[i];
		}
		if (kept == 0) {
			fprintf(stderr, "rg-bench: --workloads: none of '%s' is a workload (raw, a, b, "
				"c, cf, d, dl, e, f1, f16, f256, g)\n", opts->workloads);
			return 2;
		}
		nworkloads = kept;
	}
	if (opts->smoke)
		plan_shrink_for_smoke(full_plan, nworkloads);
	res.opts = opts;
	res.workloads = full_plan;
	res.nworkloads = nworkloads;
	res.warmup = opts->smoke ? 0.05 : 0.25;
	res.stall = opts->smoke ? 0.5 : 2.0;
	memcpy(res.config_ids, config_ids, sizeof config_ids);
	memcpy(res.config_labels, config_labels, sizeof config_labels);
	res.started = time(NULL);

	if (opts->configs != NULL) {
		/* --configs: only the named columns (ids as in the report). */
		bool keep[CFG_COUNT] = { false };
		char list[128];
		snprintf(list, sizeof list, "%s", opts->configs);
		for (char *save = NULL, *id = strtok_r(list, ",", &save); id != NULL;
		     id = strtok_r(NULL, ",", &save)) {
			int c = 0;
			while (c < CFG_COUNT && strcmp(config_ids[c], id) != 0)
				c++;
			if (c == CFG_COUNT) {
				fprintf(stderr, "rg-bench: --configs: unknown id '%s' (ids: 1, 2, 2', "
					"3, 4, 5, 6)\n", id);
				return 2;
			}
			keep[c] = true;
		}
		for (int i = 0; i < nworkloads; i++)
			for (int c = 0; c < CFG_COUNT; c++)
				full_plan[i].configs[c] = full_plan[i].configs[c] && keep[c];
	}

	int nruns = 0;
	double run_seconds = 0;
	for (int i = 0; i < nworkloads; i++)
		for (int c = 0; c < CFG_COUNT; c++)
			if (full_plan[i].configs[c]) {
				nruns++;
				run_seconds += res.warmup + 0.1 +
					       opts->seconds * full_plan[i].seconds_factor;
			}
	fprintf(stderr, "rg-bench: %d rounds x %d runs of %.2f s windows, about %.0f s "
		"(progress below; values per configuration id, see the report)\n",
		opts->rounds, nruns, opts->seconds, run_seconds * opts->rounds);
	warn_if_busy(&res);

	uint64_t start_ns = bench_now_ns();
	struct cpu_sample run_start = cpu_sample_take();
	for (int round = 0; round < opts->rounds; round++) {
		struct cpu_sample round_start = cpu_sample_take();
		for (int i = 0; i < nworkloads; i++) {
			struct bench_workload *w = &full_plan[i];
			for (int k = 0; k < ROUND_ORDER_LEN; k++) {
				int pos = round % 2 == 0 ? k : ROUND_ORDER_LEN - 1 - k;
				enum bench_config c = round_order[pos];
				if (w->configs[c])
					run_cell(&res, w, c, round);
			}
			progress_line(&res, w, round, start_ns);
		}
		res.rounds = round + 1;
		struct cpu_sample round_end = cpu_sample_take();
		double foreign = cpu_foreign(&round_start, &round_end);
		if (foreign > res.foreign_max_round)
			res.foreign_max_round = foreign;
		fprintf(stderr, "rg-bench: round %d/%d done; other processes used %.2f CPUs%s\n",
			round + 1, opts->rounds, foreign,
			foreign > 0.25 ? " (WARNING: noisy round)" : "");
	}
	struct cpu_sample run_end = cpu_sample_take();
	res.foreign_during = cpu_foreign(&run_start, &run_end);
	res.elapsed = (double)(bench_now_ns() - start_ns) / 1e9;

	bench_results_finish(&res);
	bench_report(&res);
	return 0;
}
