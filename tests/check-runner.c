/*
 * check-runner.c — the child runner shared by the Check suites; see
 * check-runner.h.
 */
#include "check-runner.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct runner_config runner = { .name = "check", .report_tail = 10 };

double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

void runner_check(int ok, const char *what)
{
	if (ok)
		return;
	fprintf(stderr, "%s: %s: %s\n", runner.name, what, strerror(errno));
	fflush(stdout);
	exit(2);
}

void append(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t c = *cap ? *cap : 65536;
		while (*len + n + 1 > c)
			c *= 2;
		*buf = realloc(*buf, c);
		runner_check(*buf != NULL, "realloc");
		*cap = c;
	}
	memcpy(*buf + *len, data, n);
	*len += n;
	(*buf)[*len] = '\0';
}

static int starts_with_any(const char *s, const char *const *prefixes)
{
	for (const char *const *p = prefixes; p && *p; p++)
		if (!strncmp(s, *p, strlen(*p)))
			return 1;
	return 0;
}

static int env_dropped(const char *e)
{
	static const char *const always[] = { "LD_PRELOAD=", "REKEYGUARD_", NULL };

	return starts_with_any(e, always) || starts_with_any(e, runner.drop_env);
}

/* The child's environment: ours minus what env_dropped names, then
 * runner.add_env, then LD_PRELOAD=preload if not NULL, then extra. */
static char **child_env(const char *preload, const char *const *extra)
{
	size_t n = 0, k = 0;
	char **env;
	static char pre[3 * PATH_MAX + 16];

	for (char **e = environ; *e; e++)
		n++;
	for (const char *const *x = runner.add_env; x && *x; x++)
		n++;
	for (const char *const *x = extra; x && *x; x++)
		n++;
	env = calloc(n + 2, sizeof *env);
	runner_check(env != NULL, "calloc");
	for (char **e = environ; *e; e++)
		if (!env_dropped(*e))
			env[k++] = *e;
	for (const char *const *x = runner.add_env; x && *x; x++)
		env[k++] = (char *)*x;
	if (preload) {
		snprintf(pre, sizeof pre, "LD_PRELOAD=%s", preload);
		env[k++] = pre;
	}
	for (const char *const *x = extra; x && *x; x++)
		env[k++] = (char *)*x;
	env[k] = NULL;
	return env;
}

static void describe_cmd(struct run *r, const char *const *argv, const char *preload,
			 const char *const *extra)
{
	size_t off = 0;

	r->cmd[0] = '\0';
	for (const char *const *x = extra; x && *x && off < sizeof r->cmd; x++) {
		size_t l = strlen(*x);
		if (l > 60)	/* e.g. a 10000-character garbage value */
			off += (size_t)snprintf(r->cmd + off, sizeof r->cmd - off,
						"%.*s...(%zu chars) ", 40, *x, l);
		else
			off += (size_t)snprintf(r->cmd + off, sizeof r->cmd - off, "%s ", *x);
	}
	if (preload && off < sizeof r->cmd)
		off += (size_t)snprintf(r->cmd + off, sizeof r->cmd - off,
					runner.quote_preload ? "LD_PRELOAD=\"%s\" " : "LD_PRELOAD=%s ",
					preload);
	for (const char *const *a = argv; *a && off < sizeof r->cmd; a++)
		off += (size_t)snprintf(r->cmd + off, sizeof r->cmd - off, "%s%s",
					a == argv ? "" : " ", *a);
}

/* RG_TEST_WRAPPER="strace -f -o /tmp/t" (or "valgrind --tool=drd", "gdb
 * -batch -ex run -ex bt --args", ...): every test program runs under that
 * command, split at spaces. Returns argv unchanged when unset. */
static const char *const *wrap_argv(const char *const *argv, const char **storage,
				    size_t room, char *words, size_t words_room)
{
	const char *w = getenv("RG_TEST_WRAPPER");
	if (w == NULL || *w == '\0' || strlen(w) >= words_room)
		return argv;
	strcpy(words, w);
	size_t n = 0;
	for (char *save = NULL, *tok = strtok_r(words, " ", &save); tok != NULL && n + 1 < room;
	     tok = strtok_r(NULL, " ", &save))
		storage[n++] = tok;
	for (const char *const *a = argv; *a != NULL && n + 1 < room; a++)
		storage[n++] = *a;
	storage[n] = NULL;
	return storage;
}

void run_prog(struct run *r, const char *const *argv, const char *preload,
	      const char *const *extra, double deadline)
{
	const char *wrapped[128];
	char wrapper_words[512];
	argv = wrap_argv(argv, wrapped, sizeof wrapped / sizeof wrapped[0], wrapper_words,
			 sizeof wrapper_words);
	int po[2], pe[2], status = 0;
	size_t cap_out = 0, cap_err = 0;
	char **env = child_env(preload, extra);
	pid_t pid;
	double t0 = now();

	memset(r, 0, sizeof *r);
	describe_cmd(r, argv, preload, extra);
	append(&r->out, &r->nout, &cap_out, "", 0);
	append(&r->err, &r->nerr, &cap_err, "", 0);
	runner_check(pipe2(po, O_CLOEXEC) == 0 && pipe2(pe, O_CLOEXEC) == 0, "pipe");
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	runner_check(pid >= 0, "fork");
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDONLY);

		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (devnull >= 0)
			dup2(devnull, 0);
		dup2(po[1], 1);
		dup2(pe[1], 2);
		signal(SIGPIPE, SIG_DFL);
		execvpe(argv[0], (char *const *)argv, env);
		dprintf(2, "%s: cannot run %s: %s\n", runner.name, argv[0], strerror(errno));
		_exit(127);
	}
	setpgid(pid, pid);	/* also here: no race with the kill below */
	free(env);
	close(po[1]);
	close(pe[1]);

	{
		struct pollfd pfd[2] = { { po[0], POLLIN, 0 }, { pe[0], POLLIN, 0 } };
		int open_fds = 2;
		char buf[65536];

		while (open_fds > 0) {
			double left = t0 + deadline - now();
			int ms = left <= 0 ? 0 : (int)(left * 1000) + 1;
			int n;

			if (left <= 0 && !r->timed_out) {
				r->timed_out = 1;
				kill(-pid, SIGKILL);
				kill(pid, SIGKILL);
			}
			n = poll(pfd, 2, r->timed_out ? 1000 : ms);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0 && r->timed_out)
				break;	/* a grandchild keeps a pipe open */
			for (int i = 0; i < 2; i++) {
				ssize_t got;

				if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
					continue;
				got = read(pfd[i].fd, buf, sizeof buf);
				if (got > 0) {
					if (i == 0)
						append(&r->out, &r->nout, &cap_out, buf, (size_t)got);
					else
						append(&r->err, &r->nerr, &cap_err, buf, (size_t)got);
				} else if (got == 0 || errno != EINTR) {
					close(pfd[i].fd);
					pfd[i].fd = -1;
					open_fds--;
				}
			}
		}
		for (int i = 0; i < 2; i++)
			if (pfd[i].fd >= 0)
				close(pfd[i].fd);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (runner.kill_leftovers)
		kill(-pid, SIGKILL);
	r->secs = now() - t0;
	if (WIFEXITED(status)) {
		r->exited = 1;
		r->code = WEXITSTATUS(status);
	} else if (WIFSIGNALED(status)) {
		r->signaled = 1;
		r->sig = WTERMSIG(status);
	}
}

void run_free(struct run *r)
{
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
}

const char *how_ended(const struct run *r)
{
	static char b[4][96];
	static int slot;
	char *p = b[slot++ & 3];

	if (r->timed_out)
		snprintf(p, 96, "TIMEOUT (killed after %.1f s)", r->secs);
	else if (r->signaled)
		snprintf(p, 96, "killed by SIG%s", sigabbrev_np(r->sig) ? sigabbrev_np(r->sig) : "?");
	else
		snprintf(p, 96, "exit %d", r->code);
	return p;
}

void prog_run(struct prog *p, const char *path, const char *const *args,
	      const char *preload, const char *const *extra, double deadline)
{
	const char *argv[32];
	int n = 0;

	argv[n++] = path;
	for (const char *const *a = args; a && *a && n < 31; a++)
		argv[n++] = *a;
	argv[n] = NULL;
	run_prog(&p->r, argv, preload, extra, deadline);
	last_line(p->r.out, "RESULT ", p->result, sizeof p->result);
	p->pass = p->r.exited && p->r.code == 0 && strstr(p->result, " PASS") != NULL;
}

void prog_report(const char *label, const struct prog *p)
{
	say("  [%s] %s in %.2f s: %s", label, how_ended(&p->r), p->r.secs,
	    p->result[0] ? p->result : "(no RESULT line)");
	if (!p->pass)
		show_tail("stderr", p->r.err, runner.report_tail);
}

void prog_free(struct prog *p)
{
	run_free(&p->r);
}

int last_line(const char *s, const char *prefix, char *buf, size_t n)
{
	const char *found = NULL;
	size_t plen = strlen(prefix);

	for (const char *l = s; l && *l; ) {
		if (!strncmp(l, prefix, plen))
			found = l;
		l = strchr(l, '\n');
		if (l)
			l++;
	}
	if (!found) {
		buf[0] = '\0';
		return 0;
	}
	snprintf(buf, n, "%.*s", (int)strcspn(found, "\n"), found);
	return 1;
}

const char *kv(const char *line, const char *key, char *buf, size_t n)
{
	size_t kl = strlen(key);

	buf[0] = '\0';
	for (const char *p = line; (p = strstr(p, key)); p += kl) {
		if ((p == line || p[-1] == ' ') && p[kl] == '=') {
			snprintf(buf, n, "%.*s", (int)strcspn(p + kl + 1, " \n"), p + kl + 1);
			break;
		}
	}
	return buf;
}

int count_lines(const char *s, const char *prefix, const char *const *need)
{
	int n = 0;
	size_t plen = strlen(prefix);

	for (const char *l = s; l && *l; ) {
		const char *end = strchr(l, '\n');
		size_t len = end ? (size_t)(end - l) : strlen(l);

		if (len >= plen && !strncmp(l, prefix, plen)) {
			int ok = 1;
			for (const char *const *w = need; w && *w && ok; w++)
				ok = memmem(l, len, *w, strlen(*w)) != NULL;
			n += ok;
		}
		l = end ? end + 1 : NULL;
	}
	return n;
}

void show_tail(const char *label, const char *text, size_t maxlines)
{
	const char *p = text + strlen(text);
	size_t lines = 0;

	while (p > text && lines <= maxlines) {
		p--;
		if (*p == '\n' && p[1])
			lines++;
	}
	if (p > text)
		p++;
	if (!*p)
		return;
	say("    %s, last lines:", label);
	while (*p) {
		size_t n = strcspn(p, "\n");
		say("    | %.*s", (int)(n > 300 ? 300 : n), p);
		p += n + (p[n] == '\n');
	}
}
