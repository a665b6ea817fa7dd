/*
 * chart.c — the benchmark's chart (see bench.h and bench/chart.gp).
 *
 * Owns: the data files and the settings file (vars.gp) that chart.gp
 * reads, and running gnuplot. Values come from stats.c only, so the chart
 * shows exactly the numbers of latest.md.
 *
 *   tput.dat     index k = configuration k of chart_tput_configs; rows
 *                "x ratio label q1 q3" per throughput workload (ratio 0 and
 *                label STALL etc. when it failed; q1..q3 the interquartile
 *                range of the paired ratios)
 *   latency.dat  rows "x p50 p99 label" per configuration of workload c
 *   percall.dat  rows "x ns label" per configuration of workload g
 *
 * Invariants: a configuration that failed in every round gets no bar and
 * its failure word instead; a missing gnuplot is reported, not fatal.
 */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const enum bench_config chart_tput_configs[] = {
	CFG_PLAIN_AGAIN, CFG_SHIM, CFG_NAIVE, CFG_QEMU, CFG_CHACHA,
};
#define CHART_TPUT_N ((int)(sizeof chart_tput_configs / sizeof chart_tput_configs[0]))

/* The word drawn instead of (or above) a bar: "STALL" when every round
 * failed, "STALL_2/3" when some did ('_' keeps gnuplot's column whole),
 * "-" for none. */
static void chart_failure_label(const struct bench_summary *s, char *buf, size_t len)
{
	char word[32];
	int failed = s->stalled + s->timeouts + s->errors;
	if (bench_failure_word(s, word, sizeof word) != NULL) {
		word[strcspn(word, " ")] = '\0';
		snprintf(buf, len, "%s", word);
	} else if (failed > 0) {
		snprintf(buf, len, "%s_%d/%d", s->stalled ? "STALL" : s->timeouts ? "TIMEOUT" : "ERROR",
			 failed % 1000, (failed + s->ok) % 1000);
	} else {
		snprintf(buf, len, "-");
	}
}

static bool chart_write(const struct bench_results *r, const char *dir, const char *png,
			const char *subtitle)
{
	FILE *f;
	const double group = 0.84, width = group / CHART_TPUT_N;
	double tput_max = 1.0, latency_max = 0.1, percall_max = 1.0;
	int ncat = 0;

	if ((f = bench_open_in(dir, "tput.dat")) == NULL)
		return false;
	for (int k = 0; k < CHART_TPUT_N; k++) {
		enum bench_config c = chart_tput_configs[k];
		fprintf(f, "# %s %s\n", r->config_ids[c], r->config_labels[c]);
		ncat = 0;
		for (int i = 0; i < r->nworkloads; i++) {
			const struct bench_workload *w = &r->workloads[i];
			if (w->lower_is_better || !w->configs[c])
				continue;
			double x = ncat++ + (k - (CHART_TPUT_N - 1) / 2.0) * width;
			struct bench_summary s = bench_summarize(r, w, c);
			struct bench_spread ratio = bench_paired(r, w, c, CFG_PLAIN, false);
			char label[32];
			chart_failure_label(&s, label, sizeof label);
			double y = s.ok > 0 && ratio.n > 0 ? ratio.median : 0.0;
			if (y > tput_max)
				tput_max = y;
			/* the interquartile range of the paired ratios, as an error bar */
			double q1 = y > 0 && ratio.n >= 4 ? ratio.q1 : y;
			double q3 = y > 0 && ratio.n >= 4 ? ratio.q3 : y;
			fprintf(f, "%.4f %.4f %s %.4f %.4f\n", x, y, label, q1, q3);
		}
		fprintf(f, "\n\n");
	}
	fclose(f);

	const struct bench_workload *c = bench_find_workload(r, "c");
	if ((f = bench_open_in(dir, "latency.dat")) == NULL)
		return false;
	for (int k = CFG_PLAIN, x = 0; c != NULL && k < CFG_COUNT; k++) {
		struct bench_summary s = bench_summarize(r, c, (enum bench_config)k);
		struct bench_latency l = bench_latency_of(c, (enum bench_config)k);
		char label[32];
		chart_failure_label(&s, label, sizeof label);
		if (s.ok && l.p99 > latency_max)
			latency_max = l.p99;
		fprintf(f, "%d %.4f %.4f %s \"%s\"\n", x++, s.ok ? l.p50 : 0.0, s.ok ? l.p99 : 0.0,
			label, r->config_ids[k]);
	}
	fclose(f);

	const struct bench_workload *g = bench_find_workload(r, "g");
	if ((f = bench_open_in(dir, "percall.dat")) == NULL)
		return false;
	double plain_ns = 0;
	for (int k = CFG_PLAIN, x = 0; g != NULL && k < CFG_COUNT; k++) {
		if (!g->configs[k])
			continue;
		struct bench_summary s = bench_summarize(r, g, (enum bench_config)k);
		struct bench_spread d = bench_paired(r, g, (enum bench_config)k, CFG_PLAIN, true);
		char label[32];
		if (k == CFG_PLAIN)
			plain_ns = s.value.median;
		chart_failure_label(&s, label, sizeof label);
		if (strcmp(label, "-") == 0 && k != CFG_PLAIN)
			snprintf(label, sizeof label, "%+.0f", d.median);
		if (s.ok && s.value.median > percall_max)
			percall_max = s.value.median;
		fprintf(f, "%d %.2f %s \"%s\"\n", x++, s.ok ? s.value.median : 0.0, label,
			r->config_ids[k]);
	}
	fclose(f);

	if ((f = bench_open_in(dir, "vars.gp")) == NULL)
		return false;
	fprintf(f, "datadir = '%s'\noutput = '%s'\nncat = %d\nbarwidth = %.4f\nntput = %d\n",
		dir, png, ncat, width, CHART_TPUT_N);
	fprintf(f, "plain_ns = %.2f\n", plain_ns);
	fprintf(f, "tput_ymax = %.3f\nlatency_ymax = %.4f\npercall_ymax = %.1f\n",
		tput_max * 1.15 > 1.3 ? tput_max * 1.15 : 1.3, latency_max * 20,
		(percall_max > plain_ns + 100 ? percall_max : plain_ns + 100) * 1.2);
	fprintf(f, "plain_p99 = %.4f\n", c != NULL ? bench_latency_of(c, CFG_PLAIN).p99 : 0.0);
	fprintf(f, "subtitle = '%s'\n", subtitle);
	fprintf(f, "array tput_title[%d]\n", CHART_TPUT_N);
	for (int k = 0; k < CHART_TPUT_N; k++)
		fprintf(f, "tput_title[%d] = \"%s %s\"\n", k + 1, r->config_ids[chart_tput_configs[k]],
			r->config_labels[chart_tput_configs[k]]);
	fprintf(f, "set xtics (");
	ncat = 0;
	for (int i = 0; i < r->nworkloads; i++) {
		const struct bench_workload *w = &r->workloads[i];
		if (w->lower_is_better || !w->configs[CFG_SHIM])
			continue;
		fprintf(f, "%s\"%s\" %d", ncat ? ", " : "", w->chart_label, ncat);
		ncat++;
	}
	fprintf(f, ")\n");
	fclose(f);
	return true;
}

static void chart_render(const struct bench_results *r, const char *dir)
{
	char cmd[8192];
	snprintf(cmd, sizeof cmd, "gnuplot -e \"load '%s/vars.gp'\" '%s'", dir, r->opts->chart);
	if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
		fprintf(stderr, "rg-bench: gnuplot not installed; no chart "
			"(tests/ensure-deps.sh gnuplot-nox)\n");
		return;
	}
	if (system(cmd) != 0)
		fprintf(stderr, "rg-bench: gnuplot failed: %s\n", cmd);
}

void bench_chart(const struct bench_results *r, const char *datadir, const char *png,
		 const char *subtitle)
{
	if (chart_write(r, datadir, png, subtitle))
		chart_render(r, datadir);
}
