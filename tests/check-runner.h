/*
 * check-runner.h — the child runner shared by the Check suites
 * (check_rekeyguard.c, check_hardening.c).
 *
 * Owns: running a test program as a child process (stdin from /dev/null,
 * stdout and stderr captured, its process group killed at a deadline) with
 * an environment of its own: ours minus LD_PRELOAD and REKEYGUARD_*, plus
 * what the test sets; the RESULT-line convention of the rg-* programs
 * (struct prog); and the small text helpers the suites judge output with.
 * It knows nothing of Check, the shim or where the programs live: each
 * suite fills in `runner` before its first run and passes the LD_PRELOAD
 * value (or NULL) to every run.
 */
#ifndef CHECK_RUNNER_H
#define CHECK_RUNNER_H

#include <stddef.h>

/* What differs between the suites. */
struct runner_config {
	const char *name;		/* prefixes the runner's own errors */
	const char *const *drop_env;	/* prefixes of entries a child does not get
					 * besides LD_PRELOAD= and REKEYGUARD_ */
	const char *const *add_env;	/* "NAME=value" every child gets, before
					 * LD_PRELOAD and the test's own */
	int quote_preload;		/* struct run's cmd shows LD_PRELOAD="..." */
	int kill_leftovers;		/* kill the process group once the child
					 * has exited (grandchildren of a failure) */
	size_t report_tail;		/* stderr lines prog_report shows on failure */
};

/* Defaults: name "check", nothing else dropped or added, tail 10. */
extern struct runner_config runner;

struct run {
	int exited, code;	/* normal exit and its status */
	int signaled, sig;	/* killed by a signal */
	int timed_out;		/* we killed it at the deadline */
	char *out, *err;	/* NUL-terminated */
	size_t nout, nerr;
	double secs;
	char cmd[768];		/* for messages: the command line */
};

/* A program that ends its stdout with "RESULT ... PASS|FAIL ...". */
struct prog {
	struct run r;
	char result[2048];	/* the last RESULT line */
	int pass;		/* RESULT ... PASS and exit 0 */
};

double now(void);
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* For failures of the runner itself (fork, pipe, memory): usable inside
 * and outside tests; inside a test, Check reports the early exit. */
void runner_check(int ok, const char *what);

/* Append n bytes to a growing NUL-terminated buffer. */
void append(char **buf, size_t *len, size_t *cap, const char *data, size_t n);

/* Run argv (argv[0] a path or a name looked up in PATH) with
 * LD_PRELOAD=preload unless NULL and the "NAME=value" entries of extra
 * (NULL-terminated, or NULL); kill its process group after `deadline`
 * seconds. */
void run_prog(struct run *r, const char *const *argv, const char *preload,
	      const char *const *extra, double deadline);
void run_free(struct run *r);

/* "exit N", "killed by SIGx" or "TIMEOUT (...)"; four calls may share a
 * message. */
const char *how_ended(const struct run *r);

/* path ARGS..., then its RESULT line and verdict. */
void prog_run(struct prog *p, const char *path, const char *const *args,
	      const char *preload, const char *const *extra, double deadline);
void prog_report(const char *label, const struct prog *p);
void prog_free(struct prog *p);

/* The last line of s that starts with prefix, copied into buf; 0 if none. */
int last_line(const char *s, const char *prefix, char *buf, size_t n);

/* value of " key=" in a RESULT line, "" if absent */
const char *kv(const char *line, const char *key, char *buf, size_t n);

/* Lines of s starting with prefix that also contain every word in need[]
 * (NULL-terminated, or NULL). */
int count_lines(const char *s, const char *prefix, const char *const *need);

/* Print the last lines of a child's output so the log explains a failure. */
void show_tail(const char *label, const char *text, size_t maxlines);

#endif
