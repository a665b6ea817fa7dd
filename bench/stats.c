/*
 * stats.c — the statistics of a benchmark run (see bench.h).
 *
 * Owns: medians and interquartile ranges, per-round paired ratios and
 * differences between two configurations, pooled latency percentiles,
 * and the summary of what happened to one workload under one
 * configuration.
 *
 * Invariants: a paired ratio only ever uses two runs of the same round
 * that both succeeded; percentiles are nearest-rank over every pooled
 * sample, sorted once by bench_results_finish; nothing here prints.
 */
#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int compare_doubles(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Quantile q of sorted v[n] with linear interpolation. */
static double quantile_sorted(const double *v, size_t n, double q)
{
	if (n == 0)
		return NAN;
	double pos = q * (double)(n - 1);
	size_t lo = (size_t)pos;
	double frac = pos - (double)lo;
	return lo + 1 < n ? v[lo] + frac * (v[lo + 1] - v[lo]) : v[lo];
}

/* Nearest-rank percentile of sorted v[n] (for pooled latencies). */
static double percentile_sorted(const double *v, size_t n, double p)
{
	if (n == 0)
		return NAN;
	size_t rank = (size_t)ceil(p * (double)n);
	return v[rank == 0 ? 0 : rank - 1];
}

struct bench_spread bench_spread_of(double *v, int n)
{
	struct bench_spread s = { n, NAN, NAN, NAN };
	if (n == 0)
		return s;
	qsort(v, (size_t)n, sizeof *v, compare_doubles);
	s.median = quantile_sorted(v, (size_t)n, 0.5);
	s.q1 = quantile_sorted(v, (size_t)n, 0.25);
	s.q3 = quantile_sorted(v, (size_t)n, 0.75);
	return s;
}

static double run_metric(const struct bench_run_result *run, enum bench_metric m)
{
	return m == BENCH_METRIC_VALUE ? run->value : run->per_cpu;
}

struct bench_summary bench_summarize_metric(const struct bench_results *r,
					    const struct bench_workload *w, enum bench_config c,
					    enum bench_metric m)
{
	struct bench_summary s;
	double v[BENCH_MAX_ROUNDS];
	memset(&s, 0, sizeof s);
	for (int i = 0; i < r->rounds; i++) {
		const struct bench_run_result *run = &w->cells[c].runs[i];
		switch (run->status) {
		case RUN_OK:
			v[s.ok++] = run_metric(run, m);
			break;
		case RUN_STALL:
			s.stalled++;
			break;
		case RUN_TIMEOUT:
			s.timeouts++;
			break;
		case RUN_ERROR:
			s.errors++;
			break;
		case RUN_SKIPPED:
			s.skipped++;
			break;
		case RUN_NOT_RUN:
			break;
		}
		if (run->status != RUN_OK && run->status != RUN_SKIPPED && s.first_detail == NULL)
			s.first_detail = run->detail;
	}
	s.value = bench_spread_of(v, s.ok);
	return s;
}

struct bench_summary bench_summarize(const struct bench_results *r, const struct bench_workload *w,
				     enum bench_config c)
{
	return bench_summarize_metric(r, w, c, BENCH_METRIC_VALUE);
}

/* Per-round paired ratio x/y (or difference x-y) of two configurations. */
struct bench_spread bench_paired_metric(const struct bench_results *r,
					const struct bench_workload *w, enum bench_config x,
					enum bench_config y, bool difference, enum bench_metric m)
{
	double v[BENCH_MAX_ROUNDS];
	int n = 0;
	for (int i = 0; i < r->rounds; i++) {
		const struct bench_run_result *a = &w->cells[x].runs[i], *b = &w->cells[y].runs[i];
		double av = run_metric(a, m), bv = run_metric(b, m);
		if (a->status == RUN_OK && b->status == RUN_OK && bv > 0)
			v[n++] = difference ? av - bv : av / bv;
	}
	return bench_spread_of(v, n);
}

struct bench_spread bench_paired(const struct bench_results *r, const struct bench_workload *w,
				 enum bench_config x, enum bench_config y, bool difference)
{
	return bench_paired_metric(r, w, x, y, difference, BENCH_METRIC_VALUE);
}

void bench_results_finish(struct bench_results *r)
{
	for (int i = 0; i < r->nworkloads; i++)
		for (int c = 0; c < CFG_COUNT; c++) {
			struct bench_cell *cell = &r->workloads[i].cells[c];
			if (cell->nlatency > 0)
				qsort(cell->latency_ns, cell->nlatency, sizeof *cell->latency_ns,
				      compare_doubles);
		}
}

struct bench_latency bench_latency_of(const struct bench_workload *w, enum bench_config c)
{
	const struct bench_cell *cell = &w->cells[c];
	struct bench_latency l = { cell->nlatency, cell->late, NAN, NAN, NAN };
	if (cell->nlatency == 0)
		return l;
	l.p50 = percentile_sorted(cell->latency_ns, cell->nlatency, 0.50) / 1e6;
	l.p99 = percentile_sorted(cell->latency_ns, cell->nlatency, 0.99) / 1e6;
	l.max = cell->latency_ns[cell->nlatency - 1] / 1e6;
	return l;
}

const struct bench_workload *bench_find_workload(const struct bench_results *r, const char *name)
{
	for (int i = 0; i < r->nworkloads; i++)
		if (strcmp(r->workloads[i].name, name) == 0)
			return &r->workloads[i];
	return NULL;
}

/* "STALL 2/2" etc. when no run succeeded; NULL when some did. */
const char *bench_failure_word(const struct bench_summary *s, char *buf, size_t len)
{
	int ran = s->ok + s->stalled + s->timeouts + s->errors;
	if (s->ok > 0)
		return NULL;
	if (s->stalled > 0)
		snprintf(buf, len, "STALL %d/%d", s->stalled, ran);
	else if (s->timeouts > 0)
		snprintf(buf, len, "TIMEOUT %d/%d", s->timeouts, ran);
	else if (s->errors > 0)
		snprintf(buf, len, "ERROR %d/%d", s->errors, ran);
	else
		snprintf(buf, len, "n/a");
	return buf;
}
