/*
 * bench-main.c — rg-bench's command line.
 *
 *   rg-bench [--rounds N] [--seconds S] [--smoke] [--out DIR]
 *            [--shim PATH] [--naive PATH] [--qemustyle PATH] [--chart PATH]
 *            [--configs ID,ID,...] [--title TEXT]   (e.g. --configs "2,2',3")
 *            [--workloads W,W,...]                 (e.g. --workloads cf,dl)
 *       The driver: runs every workload under every configuration,
 *       interleaved, and writes DIR/latest.md, latest.csv, latest-runs.csv
 *       and latest.png. Defaults: BENCH_ROUNDS (10) and BENCH_SECONDS (1)
 *       from the environment; paths relative to this binary (bench/..).
 *
 *   rg-bench worker WORKLOAD [--prio aes|chacha] [--warmup S] [--seconds S]
 *            [--stall S] [--sessions N]
 *       One run, as the driver starts it (with LD_PRELOAD chosen by the
 *       driver); prints RESULT/LAT lines. Handy under perf:
 *       LD_PRELOAD=./librekeyguard.so perf record -g bench/rg-bench worker a --seconds 5
 */
#include "bench.h"

#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(void)
{
	fprintf(stderr,
		"usage: rg-bench [--rounds N] [--seconds S] [--smoke] [--out DIR]\n"
		"                [--shim PATH] [--naive PATH] [--qemustyle PATH] [--chart PATH]\n"
		"                [--configs ID,ID,...] [--title TEXT] [--workloads W,W,...]\n"
		"       rg-bench worker raw|a|b|c|cf|d|dl|e|f|g|u [--prio aes|chacha] [--warmup S]\n"
		"                [--seconds S] [--stall S] [--sessions N]\n");
	exit(2);
}

static double number_arg(const char *name, const char *value, double min, double max)
{
	char *end;
	double v = value ? strtod(value, &end) : 0;
	if (value == NULL || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "rg-bench: %s must be a number in [%g, %g], got '%s'\n",
			name, min, max, value ? value : "");
		exit(2);
	}
	return v;
}

/* From the environment, or the default if unset or empty. */
static double env_number(const char *name, double fallback, double min, double max)
{
	const char *v = getenv(name);
	if (v == NULL || *v == '\0')
		return fallback;
	return number_arg(name, v, min, max);
}

static int worker_main(int argc, char **argv)
{
	struct bench_run_opts o = { argv[0], BENCH_PRIO_AES, 0.25, 1.0, 2.0, 1 };

	for (int i = 1; i < argc; i++) {
		const char *value = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(argv[i], "--prio") == 0 && value != NULL) {
			if (strcmp(value, "aes") == 0)
				o.prio = BENCH_PRIO_AES;
			else if (strcmp(value, "chacha") == 0)
				o.prio = BENCH_PRIO_CHACHA;
			else
				o.prio = value;   /* a full priority string */
		} else if (strcmp(argv[i], "--warmup") == 0) {
			o.warmup = number_arg("--warmup", value, 0, 60);
		} else if (strcmp(argv[i], "--seconds") == 0) {
			o.seconds = number_arg("--seconds", value, 0.01, 3600);
		} else if (strcmp(argv[i], "--stall") == 0) {
			o.stall = number_arg("--stall", value, 0.1, 600);
		} else if (strcmp(argv[i], "--sessions") == 0) {
			o.sessions = (int)number_arg("--sessions", value, 1, 4096);
		} else {
			usage();
		}
		i++;
	}
	return bench_worker(&o);
}

/* dir/../rel of this binary's directory. */
static const char *beside_self(const char *self, const char *rel)
{
	char *copy = strdup(self), *path = malloc(PATH_MAX);
	snprintf(path, PATH_MAX, "%s/%s", dirname(copy), rel);
	free(copy);
	return path;
}

int main(int argc, char **argv)
{
	static char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n <= 0)
		snprintf(self, sizeof self, "%s", argv[0]);
	else
		self[n] = '\0';

	if (argc >= 3 && strcmp(argv[1], "worker") == 0)
		return worker_main(argc - 2, argv + 2);

	struct bench_plan_opts o = {
		.rounds = (int)env_number("BENCH_ROUNDS", 10, 1, BENCH_MAX_ROUNDS),
		.seconds = env_number("BENCH_SECONDS", 1.0, 0.05, 600),
		.smoke = false,
		.outdir = NULL,
		.tmpdir = NULL,
		.self = self,
		.shim = beside_self(self, "../librekeyguard.so"),
		.naive = beside_self(self, "libnaivelock.so"),
		.qemustyle = beside_self(self, "libqemustyle.so"),
		.chart = beside_self(self, "chart.gp"),
	};
	for (int i = 1; i < argc; i++) {
		const char *value = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(argv[i], "--smoke") == 0) {
			o.smoke = true;
			continue;
		}
		if (value == NULL)
			usage();
		if (strcmp(argv[i], "--rounds") == 0)
			o.rounds = (int)number_arg("--rounds", value, 1, BENCH_MAX_ROUNDS);
		else if (strcmp(argv[i], "--seconds") == 0)
			o.seconds = number_arg("--seconds", value, 0.05, 600);
		else if (strcmp(argv[i], "--out") == 0)
			o.outdir = value;
		else if (strcmp(argv[i], "--shim") == 0)
			o.shim = value;
		else if (strcmp(argv[i], "--naive") == 0)
			o.naive = value;
		else if (strcmp(argv[i], "--qemustyle") == 0)
			o.qemustyle = value;
		else if (strcmp(argv[i], "--chart") == 0)
			o.chart = value;
		else if (strcmp(argv[i], "--configs") == 0)
			o.configs = value;
		else if (strcmp(argv[i], "--title") == 0)
			o.title = value;
		else if (strcmp(argv[i], "--workloads") == 0)
			o.workloads = value;
		else
			usage();
		i++;
	}
	if (o.smoke) {
		o.rounds = 1;
		o.seconds = 0.15;
	}
	if (o.outdir == NULL)
		o.outdir = beside_self(self, o.smoke ? "results/tmp/smoke" : "results");
	o.tmpdir = beside_self(self, o.smoke ? "results/tmp/smoke" : "results/tmp");
	/* The preloads must be absolute: children run them from any cwd. */
	const char **paths[] = { &o.shim, &o.naive, &o.qemustyle, &o.chart };
	for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
		char *abs = realpath(*paths[i], NULL);
		if (abs == NULL) {
			fprintf(stderr, "rg-bench: %s is missing (run make first)\n", *paths[i]);
			return 2;
		}
		*paths[i] = abs;
	}
	return bench_driver(&o);
}
