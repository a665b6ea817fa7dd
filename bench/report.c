/*
 * report.c — the written results of a benchmark run.
 *
 * Owns: the headline table (each configuration against plain GnuTLS,
 * beside the noise floor), the CPU-cost table, the cost targets
 * (reported, never asserted), the machine description, latest.md,
 * latest.csv and latest-runs.csv. Numbers come from stats.c; the chart is
 * chart.c's.
 *
 * Invariants: every headline ratio is printed next to the noise
 * floor of the same run (plain GnuTLS 2' against plain GnuTLS 2); a
 * configuration that stalled, timed out or failed in every round it ran
 * is shown by that word, never as a number.
 */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

/* ---- helpers for text ------------------------------------------------------- */

static void format_value(char *buf, size_t len, double v, const char *unit)
{
	if (isnan(v))
		snprintf(buf, len, "n/a");
	else if (strcmp(unit, "ms") == 0)
		snprintf(buf, len, "%.2f", v);
	else if (v >= 100)
		snprintf(buf, len, "%.0f", v);
	else
		snprintf(buf, len, "%.1f", v);
}

/* "0.98 ±0.02" (median, half the interquartile range). */
static void format_ratio(char *buf, size_t len, const struct bench_spread *s)
{
	if (s->n == 0)
		snprintf(buf, len, "n/a");
	else if (s->n < 4)
		snprintf(buf, len, "%.2f", s->median);
	else
		snprintf(buf, len, "%.2f ±%.2f", s->median, (s->q3 - s->q1) / 2);
}

/* A cell's text: its median, with what happened in the rounds that
 * failed ("27.7, STALL 2/3"), or only the failure word. */
static void format_cell(char *buf, size_t len, const struct bench_summary *s, const char *unit)
{
	char word[32], value[32];
	if (bench_failure_word(s, word, sizeof word) != NULL) {
		snprintf(buf, len, "**%s**", word);
		return;
	}
	format_value(value, sizeof value, s->value.median, unit);
	int ran = (s->ok + s->stalled + s->timeouts + s->errors) % 1000;
	if (s->stalled > 0)
		snprintf(buf, len, "%.24s, **STALL %d/%d**", value, s->stalled % 1000, ran);
	else if (s->timeouts > 0)
		snprintf(buf, len, "%.24s, **TIMEOUT %d/%d**", value, s->timeouts % 1000, ran);
	else if (s->errors > 0)
		snprintf(buf, len, "%.24s, **ERROR %d/%d**", value, s->errors % 1000, ran);
	else
		snprintf(buf, len, "%s", value);
}

/* ---- machine description -------------------------------------------------- */

struct machine {
	char host[128], kernel[160], cpu[128], commit[64], date[64];
	long cpus;
	const char *gnutls;
};

static void read_cpu_model(char *out, size_t len)
{
	char line[256];
	FILE *f = fopen("/proc/cpuinfo", "r");
	snprintf(out, len, "unknown CPU");
	if (f == NULL)
		return;
	while (fgets(line, sizeof line, f) != NULL) {
		if (strncmp(line, "model name", 10) == 0) {
			char *p = strchr(line, ':');
			if (p != NULL) {
				p += strspn(p + 1, " ") + 1;
				p[strcspn(p, "\n")] = '\0';
				snprintf(out, len, "%s", p);
			}
			break;
		}
	}
	fclose(f);
}

/* The git commit of the tree the library was built from, if any. */
static void read_commit(const char *self, char *out, size_t len)
{
	char cmd[4096 + 160], line[64] = "", dirty[8] = "";
	snprintf(cmd, sizeof cmd, "cd \"$(dirname '%s')\" && git rev-parse --short HEAD 2>/dev/null", self);
	FILE *p = popen(cmd, "r");
	if (p != NULL) {
		if (fgets(line, sizeof line, p) == NULL)
			line[0] = '\0';
		pclose(p);
	}
	line[strcspn(line, "\n")] = '\0';
	snprintf(cmd, sizeof cmd, "cd \"$(dirname '%s')\" && git status --porcelain ../shim 2>/dev/null | head -1", self);
	p = popen(cmd, "r");
	if (p != NULL) {
		if (fgets(dirty, sizeof dirty, p) == NULL)
			dirty[0] = '\0';
		pclose(p);
	}
	if (line[0] == '\0')
		snprintf(out, len, "unknown");
	else
		snprintf(out, len, "%s%s", line, dirty[0] ? " + uncommitted shim/ changes" : "");
}

static struct machine machine_describe(const struct bench_results *r)
{
	struct machine m;
	struct utsname u;
	struct tm tm;

	memset(&m, 0, sizeof m);
	if (uname(&u) == 0) {
		snprintf(m.host, sizeof m.host, "%s", u.nodename);
		snprintf(m.kernel, sizeof m.kernel, "%.64s %.64s", u.sysname, u.release);
	}
	read_cpu_model(m.cpu, sizeof m.cpu);
	read_commit(r->opts->self, m.commit, sizeof m.commit);
	m.cpus = sysconf(_SC_NPROCESSORS_ONLN);
	m.gnutls = gnutls_check_version(NULL);
	gmtime_r(&r->started, &tm);
	strftime(m.date, sizeof m.date, "%Y-%m-%d %H:%M UTC", &tm);
	return m;
}

/* ---- the table ------------------------------------------------------------ */

static const enum bench_config table_configs[] = { CFG_SHIM, CFG_NAIVE, CFG_QEMU, CFG_CHACHA };

/* One row of the headline table: the values of 2, 3, 4, 5, 6 and the
 * ratios to 2, with the noise floor 2'/2 after 3/2. */
struct row {
	char label[128];
	char plain[48];
	char value[CFG_COUNT][48];
	char ratio[CFG_COUNT][48];
	char noise[48];
};

static void row_print(FILE *f, const struct row *row)
{
	fprintf(f, "| %s | %s |", row->label, row->plain);
	for (size_t i = 0; i < sizeof table_configs / sizeof table_configs[0]; i++) {
		enum bench_config c = table_configs[i];
		if (c == CFG_SHIM)
			fprintf(f, " %s | **%s** | %s |", row->value[c], row->ratio[c], row->noise);
		else
			fprintf(f, " %s | %s |", row->value[c], row->ratio[c]);
	}
	fprintf(f, "\n");
}

static void row_throughput(const struct bench_results *r, const struct bench_workload *w,
			   enum bench_metric m, struct row *row)
{
	struct bench_summary plain = bench_summarize_metric(r, w, CFG_PLAIN, m);
	struct bench_spread noise = bench_paired_metric(r, w, CFG_PLAIN_AGAIN, CFG_PLAIN, false, m);

	memset(row, 0, sizeof *row);
	snprintf(row->label, sizeof row->label, "%s (%s%s)", w->title, w->unit,
		 m == BENCH_METRIC_PER_CPU ? " per CPU-second" : "");
	format_cell(row->plain, sizeof row->plain, &plain, w->unit);
	format_ratio(row->noise, sizeof row->noise, &noise);
	for (size_t i = 0; i < sizeof table_configs / sizeof table_configs[0]; i++) {
		enum bench_config c = table_configs[i];
		if (!w->configs[c]) {
			snprintf(row->value[c], sizeof row->value[c], "—");
			snprintf(row->ratio[c], sizeof row->ratio[c], "—");
			continue;
		}
		struct bench_summary s = bench_summarize_metric(r, w, c, m);
		struct bench_spread ratio = bench_paired_metric(r, w, c, CFG_PLAIN, false, m);
		format_cell(row->value[c], sizeof row->value[c], &s, w->unit);
		if (s.ok == 0)
			snprintf(row->ratio[c], sizeof row->ratio[c], "—");
		else
			format_ratio(row->ratio[c], sizeof row->ratio[c], &ratio);
	}
}

/* A latency percentile row for workload c (pooled samples; the ratio is
 * of the pooled percentiles, not bench_paired). */
static void row_latency(const struct bench_results *r, const struct bench_workload *w,
			const char *which, struct row *row)
{
	struct bench_latency base = bench_latency_of(w, CFG_PLAIN), again = bench_latency_of(w, CFG_PLAIN_AGAIN);
#define PICK(l) (strcmp(which, "p50") == 0 ? (l).p50 : strcmp(which, "p99") == 0 ? (l).p99 : (l).max)
	memset(row, 0, sizeof *row);
	snprintf(row->label, sizeof row->label, "%s. %s latency %s (ms)", w->name,
		 strcmp(w->name, "dl") == 0 ? "probe" : "return-path", which);
	format_value(row->plain, sizeof row->plain, PICK(base), "ms");
	snprintf(row->noise, sizeof row->noise, "%.2f", PICK(again) / PICK(base));
	for (size_t i = 0; i < sizeof table_configs / sizeof table_configs[0]; i++) {
		enum bench_config c = table_configs[i];
		struct bench_summary s = bench_summarize(r, w, c);
		char word[32];
		if (bench_failure_word(&s, word, sizeof word) != NULL) {
			snprintf(row->value[c], sizeof row->value[c], "**%s**", word);
			snprintf(row->ratio[c], sizeof row->ratio[c], "—");
			continue;
		}
		struct bench_latency l = bench_latency_of(w, c);
		format_value(row->value[c], sizeof row->value[c], PICK(l), "ms");
		snprintf(row->ratio[c], sizeof row->ratio[c], "%.2f", PICK(l) / PICK(base));
	}
#undef PICK
}

/* Messages of a latency workload: pooled count, and how many had not
 * arrived when their run ended. */
static void row_delivered(const struct bench_workload *w, struct row *row)
{
	memset(row, 0, sizeof *row);
	snprintf(row->label, sizeof row->label, "%s. messages due (not delivered by the end)", w->name);
	snprintf(row->plain, sizeof row->plain, "%zu (%zu)", w->cells[CFG_PLAIN].nlatency,
		 w->cells[CFG_PLAIN].late);
	snprintf(row->noise, sizeof row->noise, "—");
	for (size_t i = 0; i < sizeof table_configs / sizeof table_configs[0]; i++) {
		enum bench_config c = table_configs[i];
		if (w->configs[c])
			snprintf(row->value[c], sizeof row->value[c], "%zu (%zu)", w->cells[c].nlatency,
				 w->cells[c].late);
		else
			snprintf(row->value[c], sizeof row->value[c], "—");
		snprintf(row->ratio[c], sizeof row->ratio[c], "—");
	}
}

/* g's overhead row: paired differences to 2 in ns per call. */
static void row_overhead(const struct bench_results *r, const struct bench_workload *w,
			 struct row *row)
{
	struct bench_spread noise = bench_paired(r, w, CFG_PLAIN_AGAIN, CFG_PLAIN, true);
	memset(row, 0, sizeof *row);
	snprintf(row->label, sizeof row->label, "g. added per call vs 2 (ns, paired difference)");
	snprintf(row->plain, sizeof row->plain, "0");
	snprintf(row->noise, sizeof row->noise, "%+.0f", noise.median);
	for (size_t i = 0; i < sizeof table_configs / sizeof table_configs[0]; i++) {
		enum bench_config c = table_configs[i];
		struct bench_spread d = bench_paired(r, w, c, CFG_PLAIN, true);
		snprintf(row->ratio[c], sizeof row->ratio[c], "—");
		if (!w->configs[c] || d.n == 0)
			snprintf(row->value[c], sizeof row->value[c], "—");
		else
			snprintf(row->value[c], sizeof row->value[c], "%+.0f", d.median);
	}
}

static void table_header(FILE *f)
{
	fprintf(f, "| workload | 2 plain AES | 3 rekeyguard | **3/2** | noise 2'/2 | "
		   "4 naive lock | 4/2 | 5 QEMU-style | 5/2 | 6 CHACHA20 | 6/2 |\n");
	fprintf(f, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
}

/* Work per CPU-second of the benchmark process, for every throughput
 * workload. */
static void table_per_cpu_print(FILE *f, const struct bench_results *r)
{
	struct row row;
	table_header(f);
	for (int i = 0; i < r->nworkloads; i++) {
		const struct bench_workload *w = &r->workloads[i];
		if (strcmp(w->name, "raw") == 0 || w->lower_is_better)
			continue;
		row_throughput(r, w, BENCH_METRIC_PER_CPU, &row);
		row_print(f, &row);
	}
}

static void table_print(FILE *f, const struct bench_results *r)
{
	struct row row;
	table_header(f);
	for (int i = 0; i < r->nworkloads; i++) {
		const struct bench_workload *w = &r->workloads[i];
		if (strcmp(w->name, "raw") == 0)
			continue;
		row_throughput(r, w, BENCH_METRIC_VALUE, &row);
		row_print(f, &row);
		if (w->latency) {
			static const char *const which[] = { "p50", "p99", "max" };
			for (int k = 0; k < 3; k++) {
				row_latency(r, w, which[k], &row);
				row_print(f, &row);
			}
			row_delivered(w, &row);
			row_print(f, &row);
		}
		if (strcmp(w->name, "g") == 0) {
			row_overhead(r, w, &row);
			row_print(f, &row);
		}
	}
}

/* ---- targets ---------------------------------------------------------------- */

struct target_line {
	FILE *f;
	int met, missed;
};

static void target(struct target_line *t, bool known, bool met, const char *what,
		   const char *fmt, ...)
{
	char measured[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(measured, sizeof measured, fmt, ap);
	va_end(ap);
	const char *verdict = !known ? "not measured" : met ? "met" : "**missed**";
	if (known)
		met ? t->met++ : t->missed++;
	fprintf(t->f, "| %s | %s | %s |\n", what, measured, verdict);
}

/* 3 against 5 in one workload: "no worse" = paired 3/5 >= 0.97 for
 * throughput (<= 1.03 for ns/call), or 5 failing where 3 does not. */
static bool shim_not_worse_than_qemu(const struct bench_results *r, const struct bench_workload *w,
				     char *note, size_t len)
{
	struct bench_summary s3 = bench_summarize(r, w, CFG_SHIM), s5 = bench_summarize(r, w, CFG_QEMU);
	if (s3.ok == 0) {
		snprintf(note, len, "%s: 3 failed", w->name);
		return s5.ok == 0;
	}
	if (s5.ok == 0) {
		snprintf(note, len, "%s: 5 failed, 3 ran", w->name);
		return true;
	}
	struct bench_spread ratio = bench_paired(r, w, CFG_SHIM, CFG_QEMU, false);
	snprintf(note, len, "%s %.2f", w->name, ratio.median);
	return w->lower_is_better ? ratio.median <= 1.03 : ratio.median >= 0.97;
}

static void targets_print(FILE *f, const struct bench_results *r)
{
	struct target_line t = { f, 0, 0 };
	/* Throughput targets: the rows and the least ratio each must reach. */
	static const struct { const char *name; double min; } ratio_rows[] = {
		{ "a", 0.97 }, { "b", 0.97 }, { "c", 0.97 }, { "cf", 0.97 }, { "d", 0.97 },
		{ "dl", 0.97 }, { "e", 0.95 }, { "f1", 0.97 }, { "f16", 0.97 }, { "f256", 0.97 },
	};

	fprintf(f, "| target | measured (median of paired ratios ± half IQR; noise = 2'/2) | verdict |\n");
	fprintf(f, "|---|---|---|\n");
	for (size_t i = 0; i < sizeof ratio_rows / sizeof ratio_rows[0]; i++) {
		const struct bench_workload *w = bench_find_workload(r, ratio_rows[i].name);
		if (w == NULL)
			continue;
		struct bench_spread ratio = bench_paired(r, w, CFG_SHIM, CFG_PLAIN, false);
		struct bench_spread noise = bench_paired(r, w, CFG_PLAIN_AGAIN, CFG_PLAIN, false);
		struct bench_spread cpu = bench_paired_metric(r, w, CFG_SHIM, CFG_PLAIN, false, BENCH_METRIC_PER_CPU);
		struct bench_spread cpu_noise = bench_paired_metric(r, w, CFG_PLAIN_AGAIN, CFG_PLAIN, false,
							BENCH_METRIC_PER_CPU);
		char what[64], a[48], b[48], c[48], d[48];
		snprintf(what, sizeof what, "3/2 >= %.2f on %s", ratio_rows[i].min, w->name);
		format_ratio(a, sizeof a, &ratio);
		format_ratio(b, sizeof b, &noise);
		format_ratio(c, sizeof c, &cpu);
		format_ratio(d, sizeof d, &cpu_noise);
		target(&t, ratio.n > 0, ratio.median >= ratio_rows[i].min, what,
		       "%s (noise %s); per CPU-second %s (noise %s)", a, b, c, d);
	}
	const struct bench_workload *a = bench_find_workload(r, "a");
	if (a != NULL) {
		struct bench_spread ratio = bench_paired(r, a, CFG_SHIM, CFG_CHACHA, false);
		target(&t, ratio.n > 0, ratio.median >= 3.0, "3 >= 3x 6 on a", "3/6 = %.2f",
		       ratio.median);
	}
	const struct bench_workload *c = bench_find_workload(r, "c");
	for (int i = 0; i < r->nworkloads; i++) {
		const struct bench_workload *w = &r->workloads[i];
		if (!w->latency)
			continue;
		struct bench_latency l2 = bench_latency_of(w, CFG_PLAIN), l3 = bench_latency_of(w, CFG_SHIM);
		struct bench_latency l2b = bench_latency_of(w, CFG_PLAIN_AGAIN);
		char what[64];
		snprintf(what, sizeof what, "small-message p99 under 3 <= 1.5x under 2 on %s", w->name);
		target(&t, l3.n > 0 && l2.n > 0, l3.p99 <= 1.5 * l2.p99, what,
		       "%.2f ms vs %.2f ms = %.2fx (noise 2'/2 %.2fx)", l3.p99, l2.p99,
		       l3.p99 / l2.p99, l2b.p99 / l2.p99);
		snprintf(what, sizeof what, "small-message p50 under 3 <= 1.2x under 2 on %s", w->name);
		target(&t, l3.n > 0 && l2.n > 0, l3.p50 <= 1.2 * l2.p50, what,
		       "%.3f ms vs %.3f ms = %.2fx (noise 2'/2 %.2fx)", l3.p50, l2.p50,
		       l3.p50 / l2.p50, l2b.p50 / l2.p50);
	}
	const struct bench_workload *g = bench_find_workload(r, "g");
	if (g != NULL) {
		struct bench_spread d = bench_paired(r, g, CFG_SHIM, CFG_PLAIN, true);
		struct bench_spread noise = bench_paired(r, g, CFG_PLAIN_AGAIN, CFG_PLAIN, true);
		target(&t, d.n > 0, d.median <= 40, "per-call overhead <= 40 ns",
		       "%+.0f ns/call (IQR %+.0f to %+.0f; noise 2'-2 %+.0f)", d.median, d.q1, d.q3,
		       noise.median);
	}
	const struct bench_workload *u1 = bench_find_workload(r, "u1");
	const struct bench_workload *u2 = bench_find_workload(r, "u2");
	if (u1 != NULL && u2 != NULL) {
		/* No process-wide lock on the unguarded path: a second thread on
		 * its own session costs what it costs plain GnuTLS. */
		struct bench_summary p1 = bench_summarize(r, u1, CFG_PLAIN), p2 = bench_summarize(r, u2, CFG_PLAIN);
		struct bench_summary s1 = bench_summarize(r, u1, CFG_SHIM), s2 = bench_summarize(r, u2, CFG_SHIM);
		bool have = p1.ok && p2.ok && s1.ok && s2.ok;
		double plain_scale = have ? p2.value.median / p1.value.median : 0;
		double shim_scale = have ? s2.value.median / s1.value.median : 0;
		target(&t, have, shim_scale <= 1.25 * plain_scale,
		       "unguarded sessions: 2 threads scale as plain (no process-wide lock)",
		       "per call 1 -> 2 threads: 3 %.1f -> %.1f ns (x%.2f), 2 %.1f -> %.1f ns (x%.2f)",
		       have ? s1.value.median : 0, have ? s2.value.median : 0, shim_scale,
		       have ? p1.value.median : 0, have ? p2.value.median : 0, plain_scale);
	}
	char notes[512] = "", note[64];
	bool all = true;
	for (int i = 0; i <= r->nworkloads; i++) {
		bool ok;
		if (i < r->nworkloads) {
			const struct bench_workload *w = &r->workloads[i];
			if (!w->configs[CFG_SHIM] || !w->configs[CFG_QEMU])
				continue;
			ok = shim_not_worse_than_qemu(r, w, note, sizeof note);
		} else if (c != NULL) {
			/* and the return-path p99 of c (pooled, lower is better) */
			struct bench_latency l3 = bench_latency_of(c, CFG_SHIM);
			struct bench_latency l5 = bench_latency_of(c, CFG_QEMU);
			snprintf(note, sizeof note, "c p99 %.2f", l3.p99 / l5.p99);
			ok = !(l3.p99 > 1.03 * l5.p99);
		} else {
			continue;
		}
		all = all && ok;
		size_t used = strlen(notes);
		snprintf(notes + used, sizeof notes - used, "%s%s%s%s", used ? ", " : "",
			 ok ? "" : "**", note, ok ? "" : "**");
	}
	target(&t, true, all, "3 no worse than 5 anywhere (3/5 >= 0.97; ns and latency <= 1.03)",
	       "3/5: %s", notes);
	fprintf(f, "\n%d met, %d missed.\n", t.met, t.missed);
}

/* ---- latest.md ---------------------------------------------------------------- */

static size_t c_late_total(const struct bench_results *r)
{
	const struct bench_workload *c = bench_find_workload(r, "c");
	size_t late = 0;
	for (int k = 0; c != NULL && k < CFG_COUNT; k++)
		late += c->cells[k].late;
	return late;
}

static void markdown_write(FILE *f, const struct bench_results *r, const struct machine *m)
{
	const struct bench_workload *raw = bench_find_workload(r, "raw");
	const struct bench_workload *c = bench_find_workload(r, "c");

	fprintf(f, "# %s%s\n\n", r->opts->title != NULL ? r->opts->title : "rekeyguard benchmark",
		r->opts->smoke ? " (SMOKE RUN: tiny sizes, not a measurement)" : "");
	fprintf(f, "%s · %s · %s, %ld CPUs · %s · GnuTLS %s · rekeyguard commit %s\n\n",
		m->date, m->host, m->cpu, m->cpus, m->kernel, m->gnutls, m->commit);
	fprintf(f, "%d round%s; each run measures a %.2f s window (c: %.2f s) after %.2f s of "
		   "warm-up; a run whose traffic stops for %.1f s is a stall. Took %.0f s.\n\n",
		r->rounds, r->rounds == 1 ? "" : "s", r->opts->seconds,
		r->opts->seconds * (c != NULL ? c->seconds_factor : 1), r->warmup, r->stall, r->elapsed);
	fprintf(f, "Machine noise: load average %.2f at the start; other processes used %.2f "
		   "CPUs on average during the run (worst round %.2f)%s.\n\n",
		r->loadavg_before, r->foreign_during, r->foreign_max_round,
		r->foreign_during > 0.1 || r->foreign_max_round > 0.25
			? " — **not a quiet machine; read ratios against the noise floor**"
			: " — quiet");
	if (raw != NULL) {
		struct bench_summary s = bench_summarize(r, raw, CFG_RAW);
		double v[BENCH_MAX_ROUNDS];
		int n = 0;
		for (int i = 0; i < r->rounds; i++)
			if (raw->cells[CFG_RAW].runs[i].status == RUN_OK)
				v[n++] = raw->cells[CFG_RAW].runs[i].extra;
		struct bench_spread chacha = bench_spread_of(v, n);
		fprintf(f, "**1. Ceiling** (raw AEAD encryption of 16 KiB records, one core, no TLS): "
			   "AES-128-GCM %.0f MB/s, CHACHA20-POLY1305 %.0f MB/s (%.1fx).\n\n",
			s.value.median, chacha.median, s.value.median / chacha.median);
	}
	fprintf(f, "## Headline: each configuration against plain GnuTLS AES-128-GCM (2)\n\n");
	fprintf(f, "Ratios are the median over rounds of the ratio of two runs of the same "
		   "round (± half the interquartile range). *noise 2'/2* is plain GnuTLS "
		   "against itself in the same rounds: a ratio inside that spread is no "
		   "measurable difference. Latency rows pool every small message of every "
		   "round. Failed runs are named (STALL = traffic stopped; TIMEOUT = the "
		   "child was killed).\n\n");
	table_print(f, r);
	fprintf(f, "\n## Targets (reported, not asserted)\n\n");
	targets_print(f, r);
	fprintf(f, "\n## CPU cost: work per CPU-second of the benchmark process\n\n"
		   "The same runs, divided by the CPU time all threads of the child used in "
		   "the window (user + system), so the cost of protection shows even when "
		   "other load on the machine steals CPU time from the run. A configuration "
		   "that waits instead of working (4, 5) can look cheap here while its "
		   "throughput above is poor.\n\n");
	table_per_cpu_print(f, r);
	fprintf(f, "\n## Configurations\n\n"
		   "Every TLS run is the same binary (`bench/rg-bench worker ...`) started as "
		   "a child process; only `LD_PRELOAD` (2–5) or the priority string (6) differs.\n\n"
		   "1. raw `gnutls_aead_cipher_encrypt`, AES-128-GCM, 16 KiB, one thread (no TLS)\n"
		   "2. plain GnuTLS, TLS 1.3 AES-128-GCM, no preload (unsafe baseline); 2' is the "
		   "same again, for the noise floor\n"
		   "3. `LD_PRELOAD=librekeyguard.so`\n"
		   "4. `LD_PRELOAD=bench/libnaivelock.so`: a recursive mutex per session held "
		   "across each whole GnuTLS call\n"
		   "5. `LD_PRELOAD=bench/libqemustyle.so`: that mutex, plus QEMU upstream's poll() "
		   "for readability before each receive, without the lock (for the custom "
		   "transport the benchmark announces the fd to poll, as QEMU polls its own "
		   "channel; the in-memory transport of g has no fd and is not polled)\n"
		   "6. plain GnuTLS with CHACHA20-POLY1305 instead of AES (the cipher workaround)\n");
	fprintf(f, "\n## Workloads\n\n"
		   "TLS 1.3 over TCP loopback (127.0.0.1, TCP_NODELAY), both ends in one child "
		   "process, one thread per direction and end; ECDSA P-256 certificate.\n\n"
		   "- a, c, e use a QEMU-like custom transport (blocking send/recv in push/pull "
		   "callbacks); b, cf, d, dl, f GnuTLS's default fd transport.\n"
		   "- c: the source's migration thread sends 16 KiB records while its "
		   "return-path thread waits in `gnutls_record_recv` on the same session; the "
		   "destination sends a 64-byte message every 10 ms from a second thread. "
		   "Latency = from when the message was due (fixed schedule) to when the "
		   "source read it; a message not delivered when the run ends counts with "
		   "its age then (%zu such, all configurations). Percentiles pool %zu messages "
		   "per configuration (config 2). cf: the same on the fd transport.\n"
		   "- d: a sender and a receiver thread on each end of one session. dl: the "
		   "same, and the server's sender puts a 64-byte message among its bulk records "
		   "whenever one is due (every 10 ms); latency as in c, the client's receiver "
		   "tells the messages from the bulk by size (one record per receive).\n"
		   "- f: one sender and one receiver thread per session; aggregate throughput.\n"
		   "- g: one thread, client and server sessions over an in-memory transport "
		   "(pull fails with EAGAIN when empty); ns of the thread's CPU time per GnuTLS "
		   "call = half a send+recv pair.\n", c_late_total(r),
		c != NULL ? c->cells[CFG_PLAIN].nlatency : 0);
	if (r->opts->smoke)
		fprintf(f, "\n## Reproduce\n\n    make bench-smoke\n");
	else
		fprintf(f, "\n## Reproduce\n\n    make bench BENCH_ROUNDS=%d BENCH_SECONDS=%g\n"
			   "    make bench BENCH_ROUNDS=20     # more rounds, tighter medians\n",
			r->opts->rounds, r->opts->seconds);
	fprintf(f, "\nPer-run values: `latest-runs.csv`; summary: `latest.csv`; chart: "
		   "`latest.png`.\n");
}

/* ---- latest.csv and latest-runs.csv ---------------------------------------- */

static const char *status_name(enum bench_status s)
{
	static const char *const names[] = { "not-run", "ok", "stall", "timeout", "error", "skipped" };
	return names[s];
}

/* A number, or an empty field for "not applicable". */
static void csv_number(FILE *f, double v)
{
	if (isnan(v) || isinf(v))
		fprintf(f, ",");
	else
		fprintf(f, ",%.6g", v);
}

static void csv_summary_line(FILE *f, const struct bench_results *r, const struct bench_workload *w,
			     const char *metric, const char *unit, enum bench_config c,
			     double value, const struct bench_spread *ratio, const struct bench_spread *noise)
{
	struct bench_summary s = bench_summarize(r, w, c);
	fprintf(f, "%s,\"%s\",%s,%s,%s,\"%s\"", w->name, w->title, metric, unit,
		r->config_ids[c], r->config_labels[c]);
	csv_number(f, value);
	csv_number(f, ratio->median);
	csv_number(f, ratio->q1);
	csv_number(f, ratio->q3);
	fprintf(f, ",%d", ratio->n);
	csv_number(f, noise->median);
	csv_number(f, noise->q1);
	csv_number(f, noise->q3);
	fprintf(f, ",%d,%d,%d,%d,%d\n", s.ok, s.stalled, s.timeouts, s.errors, s.skipped);
}

static void csv_write(FILE *f, const struct bench_results *r)
{
	fprintf(f, "workload,title,metric,unit,config,config_label,median,ratio_to_2,ratio_q1,"
		   "ratio_q3,paired_rounds,noise_2p_over_2,noise_q1,noise_q3,rounds_ok,"
		   "rounds_stalled,rounds_timeout,rounds_error,rounds_skipped\n");
	for (int i = 0; i < r->nworkloads; i++) {
		const struct bench_workload *w = &r->workloads[i];
		bool diff = w->lower_is_better;   /* g: differences in ns */
		struct bench_spread none = { 0, NAN, NAN, NAN };
		struct bench_spread noise = bench_paired(r, w, CFG_PLAIN_AGAIN, CFG_PLAIN, false);
		for (int c = 0; c < CFG_COUNT; c++) {
			if (!w->configs[c])
				continue;
			struct bench_summary s = bench_summarize(r, w, c);
			struct bench_spread ratio = c == CFG_RAW ? none : bench_paired(r, w, c, CFG_PLAIN, false);
			csv_summary_line(f, r, w, "value", w->unit, c, s.value.median, &ratio,
					 c == CFG_RAW ? &none : &noise);
			if (diff) {
				struct bench_spread d = bench_paired(r, w, c, CFG_PLAIN, true);
				struct bench_spread dn = bench_paired(r, w, CFG_PLAIN_AGAIN, CFG_PLAIN, true);
				csv_summary_line(f, r, w, "added_vs_2", w->unit, c, d.median, &none, &dn);
			}
			if (c == CFG_RAW) {
				double v[BENCH_MAX_ROUNDS];
				int n = 0;
				for (int k = 0; k < r->rounds; k++)
					if (w->cells[c].runs[k].status == RUN_OK)
						v[n++] = w->cells[c].runs[k].extra;
				struct bench_spread chacha = bench_spread_of(v, n);
				csv_summary_line(f, r, w, "chacha20_poly1305", w->unit, c, chacha.median,
						 &none, &none);
			}
			if (w->latency) {
				struct bench_latency l = bench_latency_of(w, c), base = bench_latency_of(w, CFG_PLAIN);
				struct bench_latency again = bench_latency_of(w, CFG_PLAIN_AGAIN);
				struct bench_spread rp = { 1, l.p50 / base.p50, NAN, NAN };
				struct bench_spread np = { 1, again.p50 / base.p50, NAN, NAN };
				csv_summary_line(f, r, w, "latency_p50", "ms", c, l.p50, &rp, &np);
				rp.median = l.p99 / base.p99;
				np.median = again.p99 / base.p99;
				csv_summary_line(f, r, w, "latency_p99", "ms", c, l.p99, &rp, &np);
				rp.median = l.max / base.max;
				np.median = again.max / base.max;
				csv_summary_line(f, r, w, "latency_max", "ms", c, l.max, &rp, &np);
			}
		}
	}
}

static void csv_runs_write(FILE *f, const struct bench_results *r)
{
	fprintf(f, "workload,config,round,status,value,detail\n");
	for (int i = 0; i < r->nworkloads; i++) {
		const struct bench_workload *w = &r->workloads[i];
		for (int c = 0; c < CFG_COUNT; c++) {
			if (!w->configs[c])
				continue;
			for (int k = 0; k < r->rounds; k++) {
				const struct bench_run_result *run = &w->cells[c].runs[k];
				fprintf(f, "%s,%s,%d,%s,%.6g,%s\n", w->name, r->config_ids[c], k + 1,
					status_name(run->status), run->value, run->detail);
			}
		}
	}
}

/* ---- entry point ------------------------------------------------------------ */

FILE *bench_open_in(const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	if (f == NULL)
		fprintf(stderr, "rg-bench: cannot write %s: %s\n", path, strerror(errno));
	return f;
}

static void make_dirs(const char *path)
{
	char buf[4096];
	snprintf(buf, sizeof buf, "%s", path);
	for (char *p = buf + 1; *p != '\0'; p++) {
		if (*p == '/') {
			*p = '\0';
			mkdir(buf, 0755);
			*p = '/';
		}
	}
	mkdir(buf, 0755);
}

void bench_report(const struct bench_results *r)
{
	struct machine m = machine_describe(r);
	char datadir[4096], png[4096], subtitle[512];
	FILE *f;

	make_dirs(r->opts->outdir);
	snprintf(datadir, sizeof datadir, "%s/chart-data", r->opts->tmpdir);
	make_dirs(datadir);

	if ((f = bench_open_in(r->opts->outdir, "latest.md")) != NULL) {
		markdown_write(f, r, &m);
		fclose(f);
	}
	if ((f = bench_open_in(r->opts->outdir, "latest.csv")) != NULL) {
		csv_write(f, r);
		fclose(f);
	}
	if ((f = bench_open_in(r->opts->outdir, "latest-runs.csv")) != NULL) {
		csv_runs_write(f, r);
		fclose(f);
	}
	snprintf(png, sizeof png, "%s/latest.png", r->opts->outdir);
	snprintf(subtitle, sizeof subtitle, "%s%s · GnuTLS %s · %s, %ld CPUs · %d rounds · "
		 "other load %.2f CPUs", r->opts->smoke ? "SMOKE RUN · " : "", m.date, m.gnutls,
		 m.cpu, m.cpus, r->rounds, r->foreign_during);
	bench_chart(r, datadir, png, subtitle);

	printf("\n");
	table_print(stdout, r);
	printf("\nTargets:\n");
	targets_print(stdout, r);
	printf("\nWritten: %s/latest.md, latest.csv, latest-runs.csv, latest.png\n", r->opts->outdir);
}
