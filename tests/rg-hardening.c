/*
 * rg-hardening.c — robustness tests: fork, exec, churn, address
 * reuse, concurrency, probing and allocation failure.
 *
 *   fork        fork while other threads are inside guarded calls: one
 *               blocked in a receive (outside the session lock under the
 *               shim), one inside gnutls_handshake in a slow certificate
 *               verify callback (holding the session lock), two streaming;
 *               plus a fork from inside that callback. Every child uses
 *               GnuTLS (new sessions, threads, key updates) and the
 *               callback's child execs `rg-hardening helper`. Under the
 *               shim a child also talks on an inherited session whose
 *               reader was blocked in the parent and deinitialises
 *               sessions whose locks were held (never safe plain: those
 *               threads are inside GnuTLS; see fork_child_work).
 *   fork-cost   fork() time with few and with many sessions
 *   fork-locks  fork while other threads keep taking the library's
 *               process-wide locks (unguarded DTLS sessions; the
 *               injection's lock): no child may hang
 *   exec        helpers exec'd (fork+exec, posix_spawn, system, popen) by a
 *               process whose threads are busy in guarded calls
 *   helper      what exec runs: one connection, a record each way and a
 *               key update; reports whether the shim guarded it
 *   churn       gnutls_init/gnutls_deinit cycles across threads (some
 *               sessions deinitialised by another thread), checking that
 *               each new session starts fresh; malloc's in-use bytes and RSS
 *               before and after
 *   reuse       addresses handed out again after a gnutls_deinit the shim
 *               never saw (real gnutls_deinit reached through a handle)
 *   concurrent  many sessions alive at once over in-memory transports,
 *               handshaken, a record each way on each from several threads;
 *               memory per session
 *   probe       one connection with key updates; optionally sets a huge
 *               REKEYGUARD_* value first (setenv: the 1 MB case)
 *   oom CASE    allocation failure inside the shim (needs rg-failmalloc.so
 *               after librekeyguard.so in LD_PRELOAD): init, push,
 *               push-concurrent, pull; sweep fails each of the shim's
 *               allocations in turn (one per child process) while two
 *               connections are set up and used
 *
 * Output contract (as rg-scenario): progress on stderr; the last stdout
 * line is "RESULT <test> PASS|FAIL key=value ... shim=yes|no guarded=N
 * gnutls=V". Exit 0 pass, 1 fail, 2 usage/set-up error, 4 watchdog.
 * Run it plain and with LD_PRELOAD=librekeyguard.so; check_hardening does.
 */
#include "hardening-util.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char *test_name = "rg-hardening";
static int quick;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	for (char *p = why; *p; p++)
		if (*p == ' ')
			*p = '_';
	fprintf(stderr, "rg-hardening: %s: %s\n", test_name, why);
	hu_result(test_name, 0, "reason=%s", why);
	exit(1);
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "rg-hardening: %s: ", test_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void start(pthread_t *t, void *(*fn)(void *), void *arg)
{
	int err = pthread_create(t, NULL, fn, arg);

	if (err != 0) {
		fprintf(stderr, "rg-hardening: pthread_create: %s\n", strerror(err));
		exit(2);
	}
}

static void make_socketpair(int fd[2])
{
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) < 0) {
		perror("rg-hardening: socketpair");
		exit(2);
	}
}

static double median(double *v, int n)
{
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
			double t = v[j];
			v[j] = v[j - 1];
			v[j - 1] = t;
		}
	return n ? v[n / 2] : 0;
}

/* ======================================================= fork */

/*
 * Pairs the parent keeps busy while it forks:
 *   A  custom transport; the client's reader thread sits in a gated pull
 *      (the gate stays shut in the parent), i.e. outside the session lock
 *      under the shim. Children open the gate in their copy and talk on A.
 *   B  default fd transport; the client's reader blocks in recv().
 *   C  handshake whose client verify callback blocks: the handshaking
 *      thread holds C.client's session lock inside the real call.
 *   D  bulk client -> server, a sender and a receiver thread.
 */
static struct rg_pair fa = { .fd = { -1, -1 } }, fb = { .fd = { -1, -1 } },
	fc = { .fd = { -1, -1 } }, fdp = { .fd = { -1, -1 } };
static atomic_int gate_open = 1;		/* A.client's pull */
static atomic_int a_reader_parked;
static atomic_int verify_entered, verify_release, cb_fork_done;
static int cb_fork_status = -1;
static atomic_int bulk_stop;
static uint64_t bulk_sent, bulk_received;
static int bulk_err, a_reader_err, b_reader_err;
static int hc_ret = 1, hs_ret = 1;
static char self_exe[4096] = "/proc/self/exe";	/* resolved in main (valgrind) */
static int deinit_busy;		/* --deinit-busy: the child deinits D too */

static ssize_t gated_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	while (!atomic_load(&gate_open)) {
		atomic_store(&a_reader_parked, 1);
		usleep(1000);
	}
	return read((int)(intptr_t)ptr, buf, len);
}

#define FORK_MSG 2000

static void *a_reader(void *arg)
{
	unsigned char buf[FORK_MSG];

	(void)arg;
	/* Parked in the gated pull until the parent opens the gate at the end;
	 * then receives the parent's message. */
	a_reader_err = hu_recv_checked(fa.client, buf, sizeof buf, 900);
	return NULL;
}

static void *b_reader(void *arg)
{
	unsigned char buf[FORK_MSG];

	(void)arg;
	b_reader_err = hu_recv_checked(fb.client, buf, sizeof buf, 901);
	return NULL;
}

static void *bulk_sender(void *arg)
{
	unsigned char *buf = malloc(16384);

	(void)arg;
	while (!atomic_load(&bulk_stop)) {
		rg_pattern_fill(buf, 16384, 902, bulk_sent);
		int ret = hu_send_all(fdp.client, buf, 16384);
		if (ret < 0) {
			bulk_err = ret;
			break;
		}
		bulk_sent += 16384;
	}
	int ret;
	do {
		ret = gnutls_bye(fdp.client, GNUTLS_SHUT_WR);
	} while (ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED);
	free(buf);
	return NULL;
}

static void *bulk_receiver(void *arg)
{
	unsigned char *buf = malloc(32768);

	(void)arg;
	for (;;) {
		ssize_t n = gnutls_record_recv(fdp.server, buf, 32768);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n <= 0) {
			if (n < 0)
				bulk_err = (int)n;
			break;
		}
		if (rg_pattern_check(buf, (size_t)n, 902, bulk_received) >= 0) {
			bulk_err = -1;
			break;
		}
		bulk_received += (uint64_t)n;
	}
	free(buf);
	return NULL;
}

static void *handshake_loop(void *arg)
{
	gnutls_session_t s = arg == &hc_ret ? fc.client : fc.server;
	int ret;

	do {
		ret = gnutls_handshake(s);
	} while (ret < 0 && !gnutls_error_is_fatal(ret));
	*(int *)arg = ret;
	return NULL;
}

/* Everything a child does; returns its exit status (0: all good). Runs in
 * a single-threaded child of a multi-threaded parent, as programs that
 * fork without exec do. in_callback: forked by the thread that is inside
 * C.client's handshake (and holds its session lock). */
static int fork_child_work(int in_callback, int round)
{
	long guarded0 = hu_shim_guarded();
	int shim = rg_shim_loaded();
	unsigned char buf[FORK_MSG];
	int ret, step = 0;
	char why[160];

#define CHILD_STEP(cond, ...)                                                  \
	do {                                                                   \
		step++;                                                        \
		if (!(cond)) {                                                 \
			fprintf(stderr, "rg-hardening: fork child %d%s: step %d: ", \
				round, in_callback ? " (in callback)" : "", step); \
			fprintf(stderr, __VA_ARGS__);                          \
			fputc('\n', stderr);                                   \
			return 10 + step;                                      \
		}                                                              \
	} while (0)

	alarm(30);	/* a deadlock kills the child with SIGALRM */

	/* Inherited sessions: only where their state is consistent. Under the
	 * shim, A's and B's readers and C's server wait outside GnuTLS (the
	 * lock dropped, between real calls) and C's client is at a defined
	 * point (its verify callback); plain, A's and B's readers are inside
	 * gnutls_record_recv, so their sessions are mid-call in the child and
	 * must not be touched. D's threads may be inside a real call either
	 * way: the child only reads its state, unless --deinit-busy. */
	if (shim) {
		/* 1. C: its lock was held by a parent thread inside
		 * gnutls_handshake (or, in_callback, by this very thread). */
		(void)gnutls_record_check_pending(fc.client);
		(void)gnutls_record_get_direction(fc.client);
		if (!in_callback)
			gnutls_deinit(fc.client);
		(void)gnutls_record_check_pending(fc.server);
		gnutls_deinit(fc.server);
		CHILD_STEP(1, "C");

		/* 2. A: its reader thread (absent here) was parked in the pull. */
		atomic_store(&gate_open, 1);
		rg_pattern_fill(buf, sizeof buf, 910, 0);
		ret = hu_send_all(fa.server, buf, sizeof buf);
		if (ret == 0)
			ret = hu_recv_checked(fa.client, buf, sizeof buf, 910);
		CHILD_STEP(ret == 0, "A server->client: %s", gnutls_strerror_name(ret));
		do {
			ret = gnutls_session_key_update(fa.client, GNUTLS_KU_PEER);
		} while (ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED);
		CHILD_STEP(ret == 0, "A key update: %s", gnutls_strerror_name(ret));
		rg_pattern_fill(buf, sizeof buf, 911, 0);
		ret = hu_send_all(fa.client, buf, sizeof buf);
		if (ret == 0)
			ret = hu_recv_checked(fa.server, buf, sizeof buf, 911);
		CHILD_STEP(ret == 0, "A client->server after key update: %s",
			   gnutls_strerror_name(ret));
		rg_pattern_fill(buf, sizeof buf, 912, 0);
		ret = hu_send_all(fa.server, buf, sizeof buf);
		if (ret == 0)
			ret = hu_recv_checked(fa.client, buf, sizeof buf, 912);
		CHILD_STEP(ret == 0, "A server->client after the peer's update: %s",
			   gnutls_strerror_name(ret));

		/* 3. B: its reader waited in recv(MSG_PEEK) outside the lock. */
		(void)gnutls_record_check_pending(fb.client);
		CHILD_STEP(gnutls_transport_get_int(fb.client) == fb.fd[0], "B transport_get_int");
		gnutls_deinit(fb.client);
		gnutls_deinit(fb.server);
	} else {
		step += 8;
	}
	/* D: its threads may have been inside a real call; the lock (if the
	 * shim's) must not deadlock the child. */
	(void)gnutls_record_check_pending(fdp.client);
	(void)gnutls_record_get_direction(fdp.server);
	if (deinit_busy) {
		gnutls_deinit(fdp.client);
		gnutls_deinit(fdp.server);
	}
	CHILD_STEP(1, "D");

	/* 4. New connections, threads and (guarded only) key updates. */
	{
		struct rg_pair e = { .fd = { -1, -1 } }, f = { .fd = { -1, -1 } };

		ret = rg_pair_fd(&e, 0, NULL);
		CHILD_STEP(ret == 0, "new fd pair handshake: %s", gnutls_strerror_name(ret));
		ret = hu_duplex(&e, 0.3, shim, why, sizeof why);
		CHILD_STEP(ret == 0, "duplex on a new pair: %s", why);
		rg_pair_close(&e);
		ret = rg_pair_custom(&f, 0, NULL);
		CHILD_STEP(ret == 0, "new custom pair handshake: %s", gnutls_strerror_name(ret));
		ret = hu_exchange(&f, 5000, 920);
		CHILD_STEP(ret == 0, "exchange on a new custom pair: %s", gnutls_strerror_name(ret));
		rg_pair_close(&f);
	}
	CHILD_STEP(!shim || hu_shim_guarded() >= guarded0 + 4,
		   "sessions guarded %ld -> %ld (want +4)", guarded0, hu_shim_guarded());
#undef CHILD_STEP
	return 0;
}

static int slow_verify(gnutls_session_t session)
{
	(void)session;
	atomic_store(&verify_entered, 1);

	/* Fork from inside the guarded call: the child works, then replaces
	 * itself with `rg-hardening helper` (an exec'd helper). */
	pid_t pid = fork();
	if (pid == 0) {
		int code = fork_child_work(1, 0);
		if (code != 0)
			_exit(code);
		fflush(NULL);
		execl(self_exe, "rg-hardening", "helper", "--quiet", (char *)NULL);
		_exit(127);
	}
	if (pid > 0) {
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		cb_fork_status = status;
	}
	atomic_store(&cb_fork_done, 1);

	while (!atomic_load(&verify_release))
		usleep(1000);
	return 0;
}

static const char *describe_status(int status, char *buf, size_t n)
{
	if (WIFEXITED(status))
		snprintf(buf, n, "exit-%d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, n, "SIG%s", sigabbrev_np(WTERMSIG(status)) ?
			 sigabbrev_np(WTERMSIG(status)) : "?");
	else
		snprintf(buf, n, "status-%d", status);
	return buf;
}

static int wait_flag(atomic_int *flag, double seconds)
{
	double end = rg_now() + seconds;

	while (!atomic_load(flag)) {
		if (rg_now() > end)
			return 0;
		usleep(1000);
	}
	return 1;
}

static int run_fork(int forks)
{
	pthread_t ra, rb, hc, hs, sd, rd;
	int ret, failed_children = 0;
	char first_failure[128] = "none", st[48];
	unsigned char buf[FORK_MSG];

	rg_watchdog("fork", 300);
	rg_init();

	/* A: custom transport, the client's pull gated. */
	if ((ret = rg_pair_custom(&fa, 0, NULL)) != 0)
		die("pair A handshake: %s", gnutls_strerror_name(ret));
	gnutls_transport_set_pull_function(fa.client, gated_pull);
	atomic_store(&gate_open, 0);
	start(&ra, a_reader, NULL);

	/* B: fd transport, reader blocked in recv. */
	if ((ret = rg_pair_fd(&fb, 0, NULL)) != 0)
		die("pair B handshake: %s", gnutls_strerror_name(ret));
	start(&rb, b_reader, NULL);

	/* D: bulk traffic. */
	if ((ret = rg_pair_fd(&fdp, 0, NULL)) != 0)
		die("pair D handshake: %s", gnutls_strerror_name(ret));
	start(&sd, bulk_sender, NULL);
	start(&rd, bulk_receiver, NULL);

	/* C: the client's handshake stops in the verify callback. */
	fc.client = rg_session_new(0, 0, NULL);
	fc.server = rg_session_new(1, 0, NULL);
	make_socketpair(fc.fd);
	gnutls_transport_set_int(fc.client, fc.fd[0]);
	gnutls_transport_set_int(fc.server, fc.fd[1]);
	gnutls_session_set_verify_function(fc.client, slow_verify);
	start(&hs, handshake_loop, &hs_ret);
	start(&hc, handshake_loop, &hc_ret);

	if (!wait_flag(&a_reader_parked, 30))
		die("A's reader never reached its pull");
	if (!wait_flag(&cb_fork_done, 90))
		die("the verify callback was never called");
	if (!WIFEXITED(cb_fork_status) || WEXITSTATUS(cb_fork_status) != 0) {
		failed_children++;
		snprintf(first_failure, sizeof first_failure, "in-callback:%s",
			 describe_status(cb_fork_status, st, sizeof st));
	}
	usleep(50 * 1000);	/* B's reader is in recv by now */

	double t0 = rg_now();
	for (int i = 1; i <= forks; i++) {
		int status;
		pid_t pid;

		fflush(NULL);
		pid = fork();
		if (pid < 0)
			die("fork: %s", strerror(errno));
		if (pid == 0)
			_exit(fork_child_work(0, i));
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			if (failed_children++ == 0)
				snprintf(first_failure, sizeof first_failure, "child-%d:%s", i,
					 describe_status(status, st, sizeof st));
		}
		usleep((useconds_t)(1000 + (rg_rand(&(uint64_t){ (uint64_t)i * 7919 }) % 20000)));
	}
	double fork_secs = rg_now() - t0;

	/* The parent goes on: C's handshake finishes, A's and B's readers get
	 * their messages, D stops cleanly. */
	atomic_store(&verify_release, 1);
	pthread_join(hc, NULL);
	pthread_join(hs, NULL);
	if (hc_ret < 0 || hs_ret < 0)
		die("C handshake after the forks: client %s, server %s",
		    gnutls_strerror_name(hc_ret), gnutls_strerror_name(hs_ret));
	if ((ret = hu_exchange(&fc, 3000, 930)) != 0)
		die("C exchange: %s", gnutls_strerror_name(ret));

	atomic_store(&gate_open, 1);
	rg_pattern_fill(buf, sizeof buf, 900, 0);
	if ((ret = hu_send_all(fa.server, buf, sizeof buf)) != 0)
		die("A send: %s", gnutls_strerror_name(ret));
	pthread_join(ra, NULL);
	if (a_reader_err != 0)
		die("A reader after the forks: %s", gnutls_strerror_name(a_reader_err));

	rg_pattern_fill(buf, sizeof buf, 901, 0);
	if ((ret = hu_send_all(fb.server, buf, sizeof buf)) != 0)
		die("B send: %s", gnutls_strerror_name(ret));
	pthread_join(rb, NULL);
	if (b_reader_err != 0)
		die("B reader after the forks: %s", gnutls_strerror_name(b_reader_err));

	atomic_store(&bulk_stop, 1);
	pthread_join(sd, NULL);
	pthread_join(rd, NULL);
	if (bulk_err != 0 || bulk_received != bulk_sent)
		die("D bulk: err %s, %" PRIu64 " of %" PRIu64 " bytes",
		    gnutls_strerror_name(bulk_err), bulk_received, bulk_sent);

	rg_pair_close(&fa);
	rg_pair_close(&fb);
	rg_pair_close(&fc);
	rg_pair_close(&fdp);
	rg_watchdog_cancel();
	hu_result("fork", failed_children == 0,
		  "children=%d failed=%d first_failure=%s inherited_sessions_used=%s "
		  "fork_loop_s=%.2f bulk_mib=%.1f", forks + 1, failed_children, first_failure,
		  rg_shim_loaded() ? "yes" : "no", fork_secs, (double)bulk_received / 1048576.0);
	return failed_children == 0 ? 0 : 1;
}

/* ================================================== fork-cost */

static int run_fork_cost(const char *counts, int forks)
{
	gnutls_session_t *sessions = NULL;
	size_t have = 0, cap = 0;
	char line[1024] = "";
	size_t used = 0;

	rg_init();
	for (const char *p = counts; *p; ) {
		char *end;
		unsigned long want = strtoul(p, &end, 10);
		double t_fork[256], t_wait[256];

		if (end == p || want > 1000000 || forks > 256)
			die("bad --sessions list or --forks");
		if (want > cap) {
			cap = want;
			sessions = realloc(sessions, cap * sizeof *sessions);
			if (sessions == NULL)
				die("out of memory");
		}
		while (have < want) {
			if (gnutls_init(&sessions[have], GNUTLS_CLIENT) < 0)
				die("gnutls_init failed at %zu", have);
			gnutls_transport_set_int(sessions[have], 1000 + (int)have);
			have++;
		}
		for (int i = 0; i < forks; i++) {
			int status;
			double t0 = rg_now();
			pid_t pid = fork();

			if (pid == 0)
				_exit(0);
			double t1 = rg_now();
			if (pid < 0)
				die("fork: %s", strerror(errno));
			waitpid(pid, &status, 0);
			t_fork[i] = (t1 - t0) * 1e6;
			t_wait[i] = (rg_now() - t0) * 1e6;
		}
		used += (size_t)snprintf(line + used, sizeof line - used,
					 "%sfork_us_%lu=%.1f fork_wait_us_%lu=%.1f rss_kib_%lu=%ld",
					 used ? " " : "", want, median(t_fork, forks), want,
					 median(t_wait, forks), want, hu_rss_kib());
		p = *end == ',' ? end + 1 : end;
	}
	for (size_t i = 0; i < have; i++)
		gnutls_deinit(sessions[i]);
	free(sessions);
	hu_result("fork-cost", 1, "forks=%d %s", forks, line);
	return 0;
}

/* ======================================================= exec */

static int spawn_and_wait(const char *what, char *const argv[], char *const envp[],
			  int expect_code, char *fail, size_t fail_len)
{
	pid_t pid;
	int status;
	char st[48];

	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		snprintf(fail, fail_len, "%s:fork:%s", what, strerror(errno));
		return -1;
	}
	if (pid == 0) {
		execve(argv[0], argv, envp);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != expect_code) {
		snprintf(fail, fail_len, "%s:%s", what, describe_status(status, st, sizeof st));
		return -1;
	}
	return 0;
}

struct exec_traffic {
	struct rg_pair pair;
	int ret;
	char why[160];
};

static void *exec_traffic_thread(void *arg)
{
	struct exec_traffic *t = arg;

	t->ret = hu_duplex(&t->pair, quick ? 1.5 : 3.0, rg_shim_loaded(), t->why, sizeof t->why);
	return NULL;
}

static int run_exec(void)
{
	struct exec_traffic traffic;
	pthread_t tt;
	int rounds = 0, failures = 0, helpers_guarded = 0, helpers_plain = 0;
	char first_failure[160] = "none";
	double end;
	int shim = rg_shim_loaded();

	rg_watchdog("exec", 120);
	memset(&traffic, 0, sizeof traffic);
	if (rg_pair_fd(&traffic.pair, 0, NULL) != 0)
		die("traffic pair handshake");
	start(&tt, exec_traffic_thread, &traffic);
	end = rg_now() + (quick ? 1.0 : 2.5);

	/* An environment without LD_PRELOAD, for the helper that must not
	 * get the shim. */
	size_t n = 0;
	for (char **e = environ; *e; e++)
		n++;
	char **no_preload = calloc(n + 1, sizeof *no_preload);
	size_t k = 0;
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "LD_PRELOAD=", 11) != 0)
			no_preload[k++] = *e;

	while (rg_now() < end) {
		char fail[160] = "";
		char *sh_argv[] = { "/bin/sh", "-c", "exit 7", NULL };
		char *helper_argv[] = { self_exe, "helper", "--quiet", NULL };
		char *helper_plain_argv[] = { self_exe, "helper", "--quiet", "--expect-plain", NULL };
		char *true_argv[] = { "/bin/true", NULL };
		pid_t pid;
		int status, bad = 0;

		rounds++;
		bad |= spawn_and_wait("sh", sh_argv, environ, 7, fail, sizeof fail);
		if (!bad)
			bad |= spawn_and_wait("helper", helper_argv, environ, 0, fail, sizeof fail);
		if (!bad) {
			helpers_guarded += shim;
			bad |= spawn_and_wait("helper-without-preload", helper_plain_argv, no_preload,
					      0, fail, sizeof fail);
			helpers_plain++;
		}
		if (!bad) {
			if (posix_spawn(&pid, true_argv[0], NULL, NULL, true_argv, environ) != 0 ||
			    waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
			    WEXITSTATUS(status) != 0) {
				snprintf(fail, sizeof fail, "posix_spawn");
				bad = 1;
			}
		}
		if (!bad) {
			status = system("exit 3");
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 3) {
				snprintf(fail, sizeof fail, "system:%d", status);
				bad = 1;
			}
		}
		if (!bad) {
			FILE *p = popen("echo popen-ok", "r");
			char got[64] = "";
			if (p == NULL || fgets(got, sizeof got, p) == NULL ||
			    strcmp(got, "popen-ok\n") != 0 || pclose(p) != 0) {
				snprintf(fail, sizeof fail, "popen");
				bad = 1;
			}
		}
		if (bad && failures++ == 0)
			snprintf(first_failure, sizeof first_failure, "%s", fail);
	}
	pthread_join(tt, NULL);
	free(no_preload);
	rg_pair_close(&traffic.pair);
	rg_watchdog_cancel();
	if (traffic.ret != 0)
		die("traffic during the spawns failed: %s", traffic.why);
	hu_result("exec", failures == 0, "rounds=%d failed=%d first_failure=%s "
		  "helpers_with_shim=%d helpers_without=%d", rounds, failures, first_failure,
		  helpers_guarded, helpers_plain);
	return failures == 0 ? 0 : 1;
}

/* What `exec` and the fork callback child run. */
static int run_helper(int expect_plain, int quiet)
{
	struct rg_pair p = { .fd = { -1, -1 } };
	int ret;

	rg_watchdog("helper", 60);
	if ((ret = rg_pair_fd(&p, 0, NULL)) != 0)
		die("handshake: %s", gnutls_strerror_name(ret));
	if ((ret = hu_exchange(&p, 3000, 940)) != 0)
		die("exchange: %s", gnutls_strerror_name(ret));
	do {
		ret = gnutls_session_key_update(p.client, GNUTLS_KU_PEER);
	} while (ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED);
	if (ret < 0)
		die("key update: %s", gnutls_strerror_name(ret));
	if ((ret = hu_exchange(&p, 3000, 942)) != 0)
		die("exchange after the key update: %s", gnutls_strerror_name(ret));
	rg_pair_close(&p);
	/* With LD_PRELOAD inherited the helper is guarded; without, it is not. */
	int ok = expect_plain ? !rg_shim_loaded()
			      : (!getenv("LD_PRELOAD") || !strstr(getenv("LD_PRELOAD"), "rekeyguard") ||
				 hu_shim_guarded() >= 2);
	if (!quiet || !ok)
		hu_result("helper", ok, "expect_plain=%d", expect_plain);
	return ok ? 0 : 1;
}

/* ====================================================== churn */

#define RING 64
static _Atomic(uintptr_t) freed_ring[RING];	/* addresses other threads freed */
static atomic_uint freed_next;

struct churn_thread {
	int index;
	unsigned long cycles;
	int handoff;		/* producer (1), consumer (2) or alone (0) */
	unsigned long reused_own, reused_other, stale, handed;
	char fail[128];
};

/* The producer -> consumer hand-off: sessions made in one thread and
 * deinitialised in another. */
#define HANDOFF_CAP 64
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	gnutls_session_t q[HANDOFF_CAP];
	uintptr_t tag[HANDOFF_CAP];
	unsigned head, tail;
	int producers_done;
} handoff = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, { 0 }, { 0 }, 0, 0, 0 };

static int churn_one(struct churn_thread *t, unsigned long i, uintptr_t *last,
		     gnutls_session_t *out, uintptr_t *out_tag)
{
	gnutls_session_t s;
	unsigned flags = GNUTLS_CLIENT;
	uintptr_t tag = ((uintptr_t)t->index << 40) | (i << 1) | 1;

	if (i % 16 == 5)
		flags |= GNUTLS_DATAGRAM;	/* not guarded: an entry must not stick */
	if (i % 3 == 1)
		flags = (flags & ~GNUTLS_CLIENT) | GNUTLS_SERVER | GNUTLS_NONBLOCK;
	if (gnutls_init(&s, flags) < 0) {
		snprintf(t->fail, sizeof t->fail, "gnutls_init-failed-at-%lu", i);
		return -1;
	}
	if ((uintptr_t)s == *last)
		t->reused_own++;
	for (unsigned r = 0; r < RING; r++)
		if (atomic_load_explicit(&freed_ring[r], memory_order_relaxed) == (uintptr_t)s) {
			t->reused_other++;
			break;
		}
	/* A new session starts from GnuTLS's defaults, whatever lived at this
	 * address before. */
	if (gnutls_transport_get_ptr(s) != (gnutls_transport_ptr_t)-1) {
		t->stale++;
		snprintf(t->fail, sizeof t->fail, "stale-transport-ptr-at-cycle-%lu", i);
	}
	gnutls_transport_set_ptr(s, (gnutls_transport_ptr_t)tag);
	if (gnutls_transport_get_ptr(s) != (gnutls_transport_ptr_t)tag) {
		snprintf(t->fail, sizeof t->fail, "transport-ptr-not-kept-at-cycle-%lu", i);
		t->stale++;
	}
	*last = (uintptr_t)s;
	if (out != NULL) {
		*out = s;
		*out_tag = tag;
		return 0;
	}
	gnutls_deinit(s);
	return 0;
}

static void *churn_thread_main(void *arg)
{
	struct churn_thread *t = arg;
	uintptr_t last = 0;

	for (unsigned long i = 0; i < t->cycles && !t->fail[0]; i++) {
		if (t->handoff == 1 && i % 2 == 0) {
			gnutls_session_t s;
			uintptr_t tag;

			if (churn_one(t, i, &last, &s, &tag) < 0)
				break;
			pthread_mutex_lock(&handoff.lock);
			while (handoff.tail - handoff.head == HANDOFF_CAP)
				pthread_cond_wait(&handoff.cond, &handoff.lock);
			handoff.q[handoff.tail % HANDOFF_CAP] = s;
			handoff.tag[handoff.tail % HANDOFF_CAP] = tag;
			handoff.tail++;
			pthread_cond_broadcast(&handoff.cond);
			pthread_mutex_unlock(&handoff.lock);
			t->handed++;
			continue;
		}
		if (t->handoff == 2) {
			/* deinit what the producer made, then churn here */
			gnutls_session_t s = NULL;
			uintptr_t tag = 0;

			pthread_mutex_lock(&handoff.lock);
			if (handoff.tail != handoff.head) {
				s = handoff.q[handoff.head % HANDOFF_CAP];
				tag = handoff.tag[handoff.head % HANDOFF_CAP];
				handoff.head++;
				pthread_cond_broadcast(&handoff.cond);
			}
			pthread_mutex_unlock(&handoff.lock);
			if (s != NULL) {
				if (gnutls_transport_get_ptr(s) != (gnutls_transport_ptr_t)tag)
					snprintf(t->fail, sizeof t->fail, "handed-session-lost-its-transport");
				gnutls_deinit(s);
				atomic_store_explicit(&freed_ring[atomic_fetch_add(&freed_next, 1) % RING],
						      (uintptr_t)s, memory_order_relaxed);
				t->handed++;
			}
		}
		if (churn_one(t, i, &last, NULL, NULL) < 0)
			break;
	}
	if (t->handoff == 2) {
		/* drain what is left */
		pthread_mutex_lock(&handoff.lock);
		for (;;) {
			while (handoff.tail != handoff.head) {
				gnutls_deinit(handoff.q[handoff.head % HANDOFF_CAP]);
				handoff.head++;
				t->handed++;
				pthread_cond_broadcast(&handoff.cond);
			}
			if (handoff.producers_done)
				break;
			pthread_cond_wait(&handoff.cond, &handoff.lock);
		}
		pthread_mutex_unlock(&handoff.lock);
	}
	if (t->handoff == 1) {
		pthread_mutex_lock(&handoff.lock);
		handoff.producers_done = 1;
		pthread_cond_broadcast(&handoff.cond);
		pthread_mutex_unlock(&handoff.lock);
	}
	return NULL;
}

static int churn_round(unsigned long cycles, int nthreads, struct churn_thread *ts)
{
	pthread_t tid[64];

	handoff.head = handoff.tail = 0;
	handoff.producers_done = 0;
	for (int i = 0; i < nthreads; i++) {
		memset(&ts[i], 0, sizeof ts[i]);
		ts[i].index = i;
		ts[i].cycles = cycles / (unsigned long)nthreads;
		/* threads 0 and 1 hand sessions over; the others churn alone */
		ts[i].handoff = nthreads >= 2 && i < 2 ? i + 1 : 0;
		start(&tid[i], churn_thread_main, &ts[i]);
	}
	for (int i = 0; i < nthreads; i++)
		pthread_join(tid[i], NULL);
	for (int i = 0; i < nthreads; i++)
		if (ts[i].fail[0])
			return i;
	return -1;
}

static int run_churn(unsigned long cycles, int nthreads, size_t max_growth)
{
	struct churn_thread ts[64];
	unsigned long reused_own = 0, reused_other = 0, handed = 0;
	long g0, g1;
	int bad;

	if (nthreads < 1 || nthreads > 64)
		die("--threads must be 1..64");
	rg_watchdog("churn", 600);
	rg_init();
	/* Warm up: per-thread caches, arenas, GnuTLS's lazy state. */
	if ((bad = churn_round(20000, nthreads, ts)) >= 0)
		die("warm-up: thread %d: %s", bad, ts[bad].fail);
	size_t heap0 = hu_heap_inuse();
	long rss0 = hu_rss_kib();
	g0 = hu_shim_guarded();
	double t0 = rg_now();

	if ((bad = churn_round(cycles, nthreads, ts)) >= 0)
		die("thread %d: %s", bad, ts[bad].fail);
	double secs = rg_now() - t0;
	g1 = hu_shim_guarded();
	size_t heap1 = hu_heap_inuse();
	long rss1 = hu_rss_kib();
	for (int i = 0; i < nthreads; i++) {
		reused_own += ts[i].reused_own;
		reused_other += ts[i].reused_other;
		handed += ts[i].handed;
	}
	long growth = (long)heap1 - (long)heap0;
	int heap_known = heap0 != 0;
	int ok = !heap_known || growth < (long)max_growth;
	/* With glibc's allocator addresses must have been handed out again,
	 * or the test proved nothing (ASan's quarantine delays reuse). */
	ok = ok && (!heap_known || reused_own + reused_other > cycles / 10);
	rg_watchdog_cancel();
	hu_result("churn", ok, "cycles=%lu threads=%d secs=%.2f cycles_per_s=%.0f "
		  "heap_growth_bytes=%ld heap_known=%d rss_kib_before=%ld rss_kib_after=%ld "
		  "rss_growth_kib=%ld reused_same_thread=%lu reused_cross_thread=%lu handed_off=%lu "
		  "guarded_delta=%ld", cycles, nthreads, secs, (double)cycles / secs, growth,
		  heap_known, rss0, rss1, rss1 - rss0, reused_own, reused_other, handed,
		  g0 >= 0 ? g1 - g0 : -1);
	return ok ? 0 : 1;
}

/* ====================================================== reuse */

/* gnutls_deinit reached through libgnutls's own handle: the shim never
 * sees it, so its entry goes stale, and gnutls_init may hand the address
 * out again. The new session must start fresh, TLS and DTLS alike. */
static int run_reuse(unsigned long cycles)
{
	union { void *sym; void (*fn)(gnutls_session_t); } real_deinit;
	union { void *sym; gnutls_transport_ptr_t (*fn)(gnutls_session_t); } real_get_ptr;
	void *h = dlopen("libgnutls.so.30", RTLD_LAZY | RTLD_NOLOAD);
	unsigned long same = 0, dtls_same = 0, bad_tls = 0, bad_dtls = 0;
	char first_bad[128] = "none";

	rg_watchdog("reuse", 300);
	rg_init();
	if (h == NULL)
		die("libgnutls.so.30 is not loaded?");
	real_deinit.sym = dlsym(h, "gnutls_deinit");
	real_get_ptr.sym = dlsym(h, "gnutls_transport_get_ptr");
	if (real_deinit.sym == NULL || real_get_ptr.sym == NULL)
		die("dlsym through the handle failed");
	size_t heap0 = hu_heap_inuse();

	for (unsigned long i = 0; i < cycles; i++) {
		gnutls_session_t a, b;
		int dtls = i % 2 == 1;
		gnutls_transport_ptr_t tag = (gnutls_transport_ptr_t)(uintptr_t)(0x1000 + 2 * i);

		if (gnutls_init(&a, GNUTLS_CLIENT) < 0)
			die("gnutls_init");
		gnutls_transport_set_ptr(a, (gnutls_transport_ptr_t)(uintptr_t)0xdead);
		real_deinit.fn(a);	/* behind the shim's back */
		if (gnutls_init(&b, GNUTLS_CLIENT | (dtls ? GNUTLS_DATAGRAM : 0)) < 0)
			die("gnutls_init (2)");
		if (b == a) {
			same++;
			dtls_same += dtls;
		}
		/* What the application sees, and what GnuTLS itself holds. */
		gnutls_transport_ptr_t seen0 = gnutls_transport_get_ptr(b);
		gnutls_transport_set_ptr(b, tag);
		gnutls_transport_ptr_t seen1 = gnutls_transport_get_ptr(b);
		gnutls_transport_ptr_t inside = real_get_ptr.fn(b);
		/* A guarded TLS session keeps the shim's entry as GnuTLS's pointer;
		 * an unguarded (DTLS) one must hold the application's. */
		int ok = seen0 == (gnutls_transport_ptr_t)-1 && seen1 == tag &&
			 (!dtls || inside == tag || !rg_shim_loaded() ||
			  strcmp(hu_shim_mode(), "guard") != 0);
		if (!rg_shim_loaded())
			ok = ok && inside == tag;
		if (!ok) {
			if (dtls)
				bad_dtls++;
			else
				bad_tls++;
			if (bad_tls + bad_dtls == 1)
				snprintf(first_bad, sizeof first_bad,
					 "cycle-%lu-%s-reused=%d-seen0=%p-seen1_ok=%d-gnutls_holds_tag=%d",
					 i, dtls ? "dtls" : "tls", b == a, seen0, seen1 == tag,
					 inside == tag);
		}
		gnutls_deinit(b);
	}
	long growth = (long)hu_heap_inuse() - (long)heap0;
	rg_watchdog_cancel();
	/* glibc hands the address straight back; ASan's quarantine does not. */
	int ok = bad_tls == 0 && bad_dtls == 0 && (heap0 == 0 || same > cycles / 4);
	hu_result("reuse", ok, "cycles=%lu address_reused=%lu dtls_at_stale_address=%lu "
		  "bad_tls=%lu bad_dtls=%lu first_bad=%s heap_growth_bytes=%ld",
		  cycles, same, dtls_same, bad_tls, bad_dtls, first_bad, growth);
	return ok ? 0 : 1;
}

/* ================================================= concurrent */

/* One direction of an in-memory connection: bytes pushed and not yet
 * pulled; the buffer is freed whenever it drains. Non-blocking: an empty
 * pipe reports EAGAIN. */
struct mpipe {
	unsigned char *buf;
	size_t len, off, cap;
};

static ssize_t mpipe_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	struct mpipe *p = ptr;

	if (p->len + len > p->cap) {
		size_t cap = p->cap ? p->cap : 4096;
		while (cap < p->len + len)
			cap *= 2;
		unsigned char *nb = realloc(p->buf, cap);
		if (nb == NULL) {
			errno = ENOMEM;
			return -1;
		}
		p->buf = nb;
		p->cap = cap;
	}
	memcpy(p->buf + p->len, data, len);
	p->len += len;
	return (ssize_t)len;
}

static ssize_t mpipe_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
	struct mpipe *p = ptr;
	size_t n = p->len - p->off;

	if (n == 0) {
		errno = EAGAIN;
		return -1;
	}
	if (n > len)
		n = len;
	memcpy(data, p->buf + p->off, n);
	p->off += n;
	if (p->off == p->len) {
		free(p->buf);
		p->buf = NULL;
		p->len = p->off = p->cap = 0;
	}
	return (ssize_t)n;
}

struct mpair {
	gnutls_session_t client, server;
	struct mpipe c2s, s2c;
};

static void mpair_setup(struct mpair *m)
{
	m->client = rg_session_new(0, GNUTLS_NONBLOCK, NULL);
	m->server = rg_session_new(1, GNUTLS_NONBLOCK, NULL);
	gnutls_transport_set_ptr2(m->client, &m->s2c, &m->c2s);
	gnutls_transport_set_ptr2(m->server, &m->c2s, &m->s2c);
	gnutls_transport_set_push_function(m->client, mpipe_push);
	gnutls_transport_set_push_function(m->server, mpipe_push);
	gnutls_transport_set_pull_function(m->client, mpipe_pull);
	gnutls_transport_set_pull_function(m->server, mpipe_pull);
}

static int mpair_handshake(struct mpair *m)
{
	int cret = GNUTLS_E_AGAIN, sret = GNUTLS_E_AGAIN;

	for (int rounds = 0; rounds < 100 && (cret != 0 || sret != 0); rounds++) {
		if (cret != 0)
			cret = gnutls_handshake(m->client);
		if (cret < 0 && gnutls_error_is_fatal(cret))
			return cret;
		if (sret != 0)
			sret = gnutls_handshake(m->server);
		if (sret < 0 && gnutls_error_is_fatal(sret))
			return sret;
	}
	return cret != 0 ? cret : sret;
}

/* Sends len bytes of stream id on from and receives them on to. */
static int mpair_transfer(gnutls_session_t from, gnutls_session_t to, size_t len, uint32_t id,
			  unsigned char *buf)
{
	size_t off = 0, got = 0;

	rg_pattern_fill(buf, len, id, 0);
	while (off < len) {
		ssize_t n = gnutls_record_send(from, buf + off, len - off);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n < 0)
			return (int)n;
		off += (size_t)n;
	}
	memset(buf, 0, len);
	for (int spins = 0; got < len; spins++) {
		ssize_t n = gnutls_record_recv(to, buf + got, len - got);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
			if (spins > 1000)
				return GNUTLS_E_AGAIN;
			continue;
		}
		if (n <= 0)
			return n == 0 ? GNUTLS_E_PREMATURE_TERMINATION : (int)n;
		got += (size_t)n;
	}
	return rg_pattern_check(buf, len, id, 0) >= 0 ? -1 : 0;
}

struct conc_thread {
	struct mpair *pairs;
	size_t npairs, first, step, record;
	int err;
	size_t err_pair;
};

static void *conc_thread_main(void *arg)
{
	struct conc_thread *t = arg;
	unsigned char *buf = malloc(t->record);

	for (size_t i = t->first; i < t->npairs && buf != NULL; i += t->step) {
		struct mpair *m = &t->pairs[i];
		int ret = mpair_transfer(m->client, m->server, t->record, (uint32_t)(2 * i), buf);
		if (ret == 0)
			ret = mpair_transfer(m->server, m->client, t->record, (uint32_t)(2 * i + 1), buf);
		if (ret != 0) {
			t->err = ret;
			t->err_pair = i;
			break;
		}
	}
	free(buf);
	return NULL;
}

static int run_concurrent(size_t sessions, int nthreads, size_t record)
{
	size_t npairs = sessions / 2;
	struct mpair *pairs;
	struct conc_thread ts[64];
	pthread_t tid[64];
	int ret;

	if (nthreads < 1 || nthreads > 64 || npairs == 0 || record == 0 || record > 16384)
		die("bad sizes");
	rg_watchdog("concurrent", 1200);
	rg_init();
	/* GnuTLS's lazy global state, before the baseline. */
	{
		struct mpair warm;
		memset(&warm, 0, sizeof warm);
		mpair_setup(&warm);
		if ((ret = mpair_handshake(&warm)) != 0)
			die("warm-up handshake: %s", gnutls_strerror_name(ret));
		gnutls_deinit(warm.client);
		gnutls_deinit(warm.server);
	}
	pairs = calloc(npairs, sizeof *pairs);
	if (pairs == NULL)
		die("out of memory");
	hu_trim();
	size_t heap0 = hu_heap_inuse();
	long rss0 = hu_rss_kib();

	double t0 = rg_now();
	for (size_t i = 0; i < npairs; i++) {
		mpair_setup(&pairs[i]);
		if ((ret = mpair_handshake(&pairs[i])) != 0)
			die("handshake of pair %zu: %s", i, gnutls_strerror_name(ret));
	}
	double t_handshake = rg_now() - t0;
	size_t heap1 = hu_heap_inuse();
	long rss1 = hu_rss_kib();

	t0 = rg_now();
	for (int i = 0; i < nthreads; i++) {
		ts[i] = (struct conc_thread){ pairs, npairs, (size_t)i, (size_t)nthreads, record, 0, 0 };
		start(&tid[i], conc_thread_main, &ts[i]);
	}
	for (int i = 0; i < nthreads; i++)
		pthread_join(tid[i], NULL);
	double t_traffic = rg_now() - t0;
	for (int i = 0; i < nthreads; i++)
		if (ts[i].err != 0)
			die("pair %zu: %s", ts[i].err_pair, gnutls_strerror_name(ts[i].err));
	size_t heap2 = hu_heap_inuse();
	long rss2 = hu_rss_kib();

	for (size_t i = 0; i < npairs; i++) {
		gnutls_deinit(pairs[i].client);
		gnutls_deinit(pairs[i].server);
	}
	free(pairs);
	size_t heap3 = hu_heap_inuse();
	hu_trim();
	long rss3 = hu_rss_kib();
	rg_watchdog_cancel();

	double n = (double)(2 * npairs);
	hu_result("concurrent", 1, "sessions=%zu threads=%d record=%zu handshake_s=%.2f "
		  "traffic_s=%.2f heap_per_session_after_handshake=%.0f "
		  "heap_per_session_after_traffic=%.0f rss_per_session_after_traffic=%.0f "
		  "heap_left_after_deinit=%ld rss_kib=%ld,%ld,%ld,%ld heap_known=%d",
		  2 * npairs, nthreads, record, t_handshake, t_traffic,
		  ((double)heap1 - (double)heap0) / n, ((double)heap2 - (double)heap0) / n,
		  ((double)rss2 - (double)rss0) * 1024.0 / n, (long)heap3 - (long)heap0,
		  rss0, rss1, rss2, rss3, heap0 != 0);
	return 0;
}

/* ====================================================== probe */

static int run_probe(const char *var, size_t size, int fill, const char *prefix,
		     const char *suffix, double seconds)
{
	struct rg_pair p = { .fd = { -1, -1 } };
	char why[160];
	int ret;

	if (var != NULL) {
		size_t pl = strlen(prefix), sl = strlen(suffix);
		char *value;

		if (size < pl + sl)
			die("--size is smaller than prefix + suffix");
		value = malloc(size + 1);
		if (value == NULL)
			die("out of memory");
		memcpy(value, prefix, pl);
		memset(value + pl, fill, size - pl - sl);
		memcpy(value + size - sl, suffix, sl);
		value[size] = '\0';
		if (setenv(var, value, 1) != 0)
			die("setenv: %s", strerror(errno));
		free(value);
	}
	rg_watchdog("probe", 120);
	if ((ret = rg_pair_fd(&p, 0, NULL)) != 0)
		die("handshake: %s", gnutls_strerror_name(ret));
	if ((ret = hu_exchange(&p, 4000, 950)) != 0)
		die("exchange: %s", gnutls_strerror_name(ret));
	/* Key updates only where the shim guards: the plain stack races. */
	int guarded = strcmp(hu_shim_mode(), "guard") == 0;
	if (seconds > 0 && (ret = hu_duplex(&p, seconds, guarded, why, sizeof why)) != 0)
		die("duplex: %s", why);
	rg_pair_close(&p);
	rg_watchdog_cancel();
	hu_result("probe", 1, "mode=%s env_size=%zu", hu_shim_mode(),
		  var && getenv(var) ? strlen(getenv(var)) : 0);
	return 0;
}

/* ======================================================== oom */

union fm_arm { void *sym; void (*fn)(const char *, long, long); };
union fm_count { void *sym; long (*fn)(void); };

static union fm_arm fm_arm;
static union fm_count fm_failed;

static void oom_arm(const char *which, long skip, long count)
{
	fm_arm.fn(which, skip, count);
}

static int oom_expect(const char *what, long got, long want)
{
	if (got == want)
		return 1;
	die("%s: got %ld (%s), want %ld (%s)", what, got,
	    got < 0 ? gnutls_strerror_name((int)got) : "-", want,
	    want < 0 ? gnutls_strerror_name((int)want) : "-");
}

static atomic_int push_gate_closed, push_parked;

static ssize_t gated_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
	while (atomic_load(&push_gate_closed)) {
		atomic_store(&push_parked, 1);
		usleep(1000);
	}
	return write((int)(intptr_t)ptr, buf, len);
}

struct sender_job {
	gnutls_session_t s;
	size_t len;
	uint32_t id;
	int ret;
};

static void *sender_job_main(void *arg)
{
	struct sender_job *j = arg;
	unsigned char buf[4096];

	rg_pattern_fill(buf, j->len, j->id, 0);
	j->ret = hu_send_all(j->s, buf, j->len);
	return NULL;
}

/* A fresh guarded pair still works after a failure. */
static void oom_recovers(const char *label)
{
	struct rg_pair p = { .fd = { -1, -1 } };
	int ret;

	oom_arm("none", 0, 0);
	if ((ret = rg_pair_fd(&p, 0, NULL)) != 0)
		die("%s: a new pair after the failure: handshake %s", label, gnutls_strerror_name(ret));
	if ((ret = hu_exchange(&p, 3000, 960)) != 0)
		die("%s: a new pair after the failure: %s", label, gnutls_strerror_name(ret));
	rg_pair_close(&p);
}

/* Handshake both ends; a failing end shuts its socket down so that the
 * other end sees the end of the stream instead of waiting forever. */
struct hs_job {
	gnutls_session_t s;
	int fd;
	int ret;
};

static void *hs_job_main(void *arg)
{
	struct hs_job *j = arg;

	do {
		j->ret = gnutls_handshake(j->s);
	} while (j->ret < 0 && !gnutls_error_is_fatal(j->ret));
	if (j->ret < 0)
		shutdown(j->fd, SHUT_RDWR);
	return NULL;
}

/* One allocation of the shim fails (the n-th, counting from 0) while two
 * connections are set up and used. Any GnuTLS error is acceptable; a
 * crash, an abort or a hang is not. Returns 0, or 3 when no allocation
 * failed (n is past the last one). */
static int oom_sweep_child(long n)
{
	char outcome[256] = "";
	size_t used = 0;

	alarm(30);
	oom_arm("any", n, 1);
	for (int custom = 0; custom < 2; custom++) {
		struct rg_pair p = { .fd = { -1, -1 } };
		struct hs_job c, s;
		pthread_t tc, ts;
		int ret;

		p.client = rg_session_new(0, 0, NULL);
		p.server = rg_session_new(1, 0, NULL);
		make_socketpair(p.fd);
		if (custom) {
			rg_transport_set_custom(p.client, p.fd[0]);
			rg_transport_set_custom(p.server, p.fd[1]);
		} else {
			gnutls_transport_set_int(p.client, p.fd[0]);
			gnutls_transport_set_int(p.server, p.fd[1]);
		}
		c = (struct hs_job){ p.client, p.fd[0], 0 };
		s = (struct hs_job){ p.server, p.fd[1], 0 };
		start(&tc, hs_job_main, &c);
		start(&ts, hs_job_main, &s);
		pthread_join(tc, NULL);
		pthread_join(ts, NULL);
		ret = c.ret < 0 ? c.ret : s.ret;
		if (ret == 0)
			ret = hu_exchange(&p, 3000, 980);
		used += (size_t)snprintf(outcome + used, sizeof outcome - used, " %s:%s",
					 custom ? "custom" : "fd", ret ? gnutls_strerror_name(ret) : "ok");
		rg_pair_close(&p);
	}
	long failed = fm_failed.fn();
	fprintf(stderr, "rg-hardening: oom-sweep: allocation %ld failed=%ld%s\n", n, failed, outcome);
	return failed == 0 ? 3 : 0;
}

static int run_oom_sweep(long max)
{
	long n, crashes = 0;
	char first[128] = "none", st[48];

	for (n = 0; n <= max; n++) {
		int status;
		pid_t pid;

		fflush(NULL);
		pid = fork();
		if (pid == 0)
			_exit(oom_sweep_child(n));
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
			break;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			if (crashes++ == 0)
				snprintf(first, sizeof first, "allocation-%ld:%s", n,
					 describe_status(status, st, sizeof st));
		}
	}
	rg_watchdog_cancel();
	hu_result(test_name, crashes == 0 && n > 0, "case=sweep allocations=%ld crashed=%ld first=%s",
		  n, crashes, first);
	return crashes == 0 && n > 0 ? 0 : 1;
}

static int run_oom(const char *which_case)
{
	long g0;
	int ret;

	fm_arm.sym = dlsym(RTLD_DEFAULT, "rg_failmalloc_arm");
	fm_failed.sym = dlsym(RTLD_DEFAULT, "rg_failmalloc_failed");
	if (fm_arm.sym == NULL || fm_failed.sym == NULL || !rg_shim_loaded()) {
		fprintf(stderr, "rg-hardening: oom needs LD_PRELOAD=\"librekeyguard.so "
			"rg-failmalloc.so\"\n");
		hu_result(test_name, 0, "reason=setup:failmalloc-or-shim-not-preloaded");
		return 2;
	}
	rg_watchdog("oom", 300);
	rg_init();
	g0 = hu_shim_guarded();
	if (strcmp(which_case, "sweep") == 0)
		return run_oom_sweep(200);

	if (strcmp(which_case, "init") == 0) {
		/* Both sessions' entries fail: they work unguarded, one error
		 * line each. */
		struct rg_pair p = { .fd = { -1, -1 } };

		oom_arm("calloc", 0, -1);
		p.client = rg_session_new(0, 0, NULL);
		p.server = rg_session_new(1, 0, NULL);
		oom_arm("none", 0, 0);
		oom_expect("shim allocations failed", fm_failed.fn(), 2);
		oom_expect("sessions guarded", hu_shim_guarded() - g0, 0);
		make_socketpair(p.fd);
		gnutls_transport_set_int(p.client, p.fd[0]);
		gnutls_transport_set_int(p.server, p.fd[1]);
		if ((ret = rg_handshake_pair(p.client, p.server)) != 0)
			die("unguarded handshake: %s", gnutls_strerror_name(ret));
		if ((ret = hu_exchange(&p, 3000, 961)) != 0)
			die("unguarded exchange: %s", gnutls_strerror_name(ret));
		rg_pair_close(&p);
		oom_recovers("init");
		oom_expect("sessions guarded after recovery", hu_shim_guarded() - g0, 2);
	} else if (strcmp(which_case, "push") == 0) {
		/* With the application's own push every record goes through
		 * the queue: the first one needs a chunk. (The default fd
		 * transport writes directly and needs none.) */
		gnutls_session_t c = rg_session_new(0, 0, NULL);
		int fd[2];

		make_socketpair(fd);
		rg_transport_set_custom(c, fd[0]);
		oom_arm("malloc", 0, -1);
		ret = gnutls_handshake(c);
		oom_arm("none", 0, 0);
		oom_expect("gnutls_handshake", ret, GNUTLS_E_PUSH_ERROR);
		if (fm_failed.fn() < 1)
			die("no shim allocation failed");
		gnutls_deinit(c);
		close(fd[0]);
		close(fd[1]);
		oom_recovers("push");
	} else if (strcmp(which_case, "push-concurrent") == 0) {
		/* Thread A's record waits in the queue (the application's push
		 * is parked); B's record needs a new chunk and gets none. */
		struct rg_pair p = { .fd = { -1, -1 } };
		struct sender_job a = { 0 };
		unsigned char buf[4096];
		pthread_t ta;

		if ((ret = rg_pair_custom(&p, 0, NULL)) != 0)
			die("handshake: %s", gnutls_strerror_name(ret));
		gnutls_transport_set_push_function(p.client, gated_push);
		atomic_store(&push_gate_closed, 1);
		a = (struct sender_job){ p.client, 1000, 962, 1 };
		start(&ta, sender_job_main, &a);
		if (!wait_flag(&push_parked, 30))
			die("A's push never started");
		oom_arm("malloc", 0, -1);
		rg_pattern_fill(buf, 1000, 963, 0);
		ssize_t n = gnutls_record_send(p.client, buf, 1000);
		oom_arm("none", 0, 0);
		atomic_store(&push_gate_closed, 0);
		pthread_join(ta, NULL);
		oom_expect("B's gnutls_record_send", (long)n, GNUTLS_E_PUSH_ERROR);
		oom_expect("A's send", a.ret, 0);
		if ((ret = hu_recv_checked(p.server, buf, 1000, 962)) != 0)
			die("A's record at the peer: %s", gnutls_strerror_name(ret));
		/* GnuTLS marks the session unwritable after a failed push. */
		n = gnutls_record_send(p.client, buf, 100);
		note("send after the failure: %zd (%s)", n, gnutls_strerror_name((int)n));
		if (n >= 0)
			die("a send after a failed push succeeded (%zd)", n);
		/* Reading still works. */
		rg_pattern_fill(buf, 1000, 964, 0);
		if ((ret = hu_send_all(p.server, buf, 1000)) != 0 ||
		    (ret = hu_recv_checked(p.client, buf, 1000, 964)) != 0)
			die("server->client after the failure: %s", gnutls_strerror_name(ret));
		rg_pair_close(&p);
		oom_recovers("push-concurrent");
	} else if (strcmp(which_case, "pull") == 0) {
		/* A custom pull stages input in a buffer the shim allocates on
		 * the first wait: the ClientHello goes out, the wait fails. */
		gnutls_session_t c = rg_session_new(0, 0, NULL);
		int fd[2];

		make_socketpair(fd);
		rg_transport_set_custom(c, fd[0]);
		oom_arm("realloc", 0, -1);
		ret = gnutls_handshake(c);
		oom_arm("none", 0, 0);
		oom_expect("gnutls_handshake", ret, GNUTLS_E_PULL_ERROR);
		if (fm_failed.fn() < 1)
			die("no shim allocation failed");
		gnutls_deinit(c);
		close(fd[0]);
		close(fd[1]);
		oom_recovers("pull");
	} else {
		fprintf(stderr, "rg-hardening: oom CASE: init, push, push-concurrent, pull or sweep\n");
		return 2;
	}
	rg_watchdog_cancel();
	hu_result(test_name, 1, "case=%s shim_allocations_failed=%ld", which_case, fm_failed.fn());
	return 0;
}

/* ================================================================ fork-locks */

/* The library's process-wide locks and fork: threads keep running the
 * code that takes them (calls on unguarded DTLS sessions; the injection's
 * activation, when the library is loaded) while the main thread forks;
 * each child must make the same kind of calls at once (on a DTLS session
 * of its own) and exit. A child still there after 5 s is
 * stuck on a lock copied locked: killed and counted. */

static atomic_int locks_stop;
static gnutls_session_t locks_dtls[8];

static void *locks_unguarded_thread(void *arg)
{
	(void)arg;
	unsigned char byte = 0;
	for (unsigned i = 0; !atomic_load(&locks_stop); i++)
		(void)gnutls_record_send(locks_dtls[i % 8], &byte, 1);
	return NULL;
}

static long (*locks_activate)(void);

/* rekeyguard_inject_activate again and again: after the first, each call
 * only takes and releases the injection's lock. (Not dlopen: glibc 2.36's
 * own loader lock is copied locked into a child forked during a dlopen.) */
static void *locks_inject_thread(void *arg)
{
	(void)arg;
	while (!atomic_load(&locks_stop))
		(void)locks_activate();
	return NULL;
}

static int run_fork_locks(int forks)
{
	rg_watchdog("fork-locks", 300);
	for (int i = 0; i < 8; i++)
		if (gnutls_init(&locks_dtls[i], GNUTLS_CLIENT | GNUTLS_DATAGRAM) < 0)
			die("fork-locks: gnutls_init (DTLS) failed");
	/* RG_FORK_LOCKS=unguarded leaves the injection out (to see one lock) */
	const char *which = getenv("RG_FORK_LOCKS");
	if (which == NULL || strcmp(which, "unguarded") != 0)
		locks_activate = (long (*)(void))dlsym(RTLD_DEFAULT, "rekeyguard_inject_activate");
	long patched = locks_activate != NULL ? locks_activate() : -2;
	pthread_t t[2];
	int nthreads = 0;
	start(&t[nthreads++], locks_unguarded_thread, NULL);
	if (locks_activate != NULL)
		start(&t[nthreads++], locks_inject_thread, NULL);
	usleep(20000);

	int stuck = 0, failed = 0, first_bad = -1;
	double t0 = rg_now();
	for (int i = 0; i < forks; i++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork-locks: fork: %s", strerror(errno));
		if (pid == 0) {
			alarm(5);
			/* A session of its own: GnuTLS's per-session locks held by
			 * the parent's thread are GnuTLS's business (and unsafe to
			 * inherit with or without the library). */
			gnutls_session_t own;
			unsigned char byte = 0;
			if (gnutls_init(&own, GNUTLS_CLIENT | GNUTLS_DATAGRAM) < 0)
				_exit(3);
			(void)gnutls_record_send(own, &byte, 1);
			gnutls_deinit(own);
			if (locks_activate != NULL)
				(void)locks_activate();
			_exit(0);
		}
		int status = 0;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
			stuck++;
		} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			failed++;
		} else {
			continue;
		}
		if (first_bad < 0)
			first_bad = i;
		if (stuck + failed >= 3) {   /* each stuck child costs 5 s: enough */
			forks = i + 1;
			break;
		}
	}
	double took = rg_now() - t0;
	atomic_store(&locks_stop, 1);
	for (int i = 0; i < nthreads; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < 8; i++)
		gnutls_deinit(locks_dtls[i]);
	rg_watchdog_cancel();
	hu_result("fork-locks", stuck == 0 && failed == 0,
		  "forks=%d stuck=%d failed=%d first_bad=%d inject_activate=%s patched=%ld took_s=%.2f",
		  forks, stuck, failed, first_bad, locks_activate != NULL ? "yes" : "absent", patched,
		  took);
	return stuck == 0 && failed == 0 ? 0 : 1;
}

/* ================================================================ main */

static void usage(FILE *out)
{
	fprintf(out,
"usage: rg-hardening TEST [options]\n"
"  fork [--forks N] [--deinit-busy] fork while threads are inside guarded calls\n"
"  fork-cost [--sessions A,B,..] [--forks N]   fork() time by session count\n"
"  fork-locks [--forks N]           fork while other threads hold the library's global locks\n"
"  exec                             helpers exec'd by a busy process\n"
"  helper [--expect-plain] [--quiet]  one connection (what exec runs)\n"
"  churn [--cycles N] [--threads T] [--max-growth BYTES]\n"
"  reuse [--cycles N]               addresses reused after an unseen deinit\n"
"  concurrent [--sessions N] [--threads T] [--record BYTES]\n"
"  probe [--setenv VAR --size N [--fill C] [--prefix P] [--suffix S]] [--seconds S]\n"
"  oom init|push|push-concurrent|pull|sweep   (LD_PRELOAD=\"librekeyguard.so rg-failmalloc.so\")\n"
"  --quick                          CI sizes\n"
"The last stdout line is \"RESULT <test> PASS|FAIL ...\". Exit 0 pass, 1 fail,\n"
"2 usage, 4 watchdog timeout.\n");
}

int main(int argc, char **argv)
{
	const char *counts = "10,10000", *var = NULL, *prefix = "", *suffix = "";
	unsigned long cycles = 0, sessions = 0, size = 0, record = 4096, forks = 0;
	unsigned long max_growth = 1 << 20;
	int threads = 4, fill = 'x', expect_plain = 0, quiet = 0;
	double seconds = 0.3;

	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	test_name = argv[1];
	signal(SIGPIPE, SIG_IGN);
	{
		/* Under valgrind, exec'ing /proc/self/exe would run the tool. */
		ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
		if (n > 0)
			self_exe[n] = '\0';
		else
			snprintf(self_exe, sizeof self_exe, "/proc/self/exe");
	}
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NUM(name, dst) \
		if (!strcmp(a, name) && v) { dst = strtoul(v, NULL, 0); i++; continue; }
		NUM("--cycles", cycles)
		NUM("--sessions-count", sessions)
		NUM("--size", size)
		NUM("--record", record)
		NUM("--forks", forks)
		NUM("--max-growth", max_growth)
#undef NUM
		if (!strcmp(a, "--sessions") && v) {
			if (!strcmp(test_name, "fork-cost"))
				counts = v;
			else
				sessions = strtoul(v, NULL, 0);
			i++;
		} else if (!strcmp(a, "--threads") && v) {
			threads = atoi(v);
			i++;
		} else if (!strcmp(a, "--setenv") && v) {
			var = v;
			i++;
		} else if (!strcmp(a, "--fill") && v) {
			fill = v[0];
			i++;
		} else if (!strcmp(a, "--prefix") && v) {
			prefix = v;
			i++;
		} else if (!strcmp(a, "--suffix") && v) {
			suffix = v;
			i++;
		} else if (!strcmp(a, "--seconds") && v) {
			seconds = atof(v);
			i++;
		} else if (!strcmp(a, "--quick")) {
			quick = 1;
		} else if (!strcmp(a, "--expect-plain")) {
			expect_plain = 1;
		} else if (!strcmp(a, "--quiet")) {
			quiet = 1;
		} else if (!strcmp(a, "--deinit-busy")) {
			deinit_busy = 1;
		} else if (!strcmp(test_name, "oom") && a[0] != '-') {
			var = a;	/* the case */
		} else {
			fprintf(stderr, "rg-hardening: unknown option %s\n", a);
			usage(stderr);
			return 2;
		}
	}

	if (!strcmp(test_name, "fork"))
		return run_fork(forks ? (int)forks : quick ? 8 : 30);
	if (!strcmp(test_name, "fork-cost"))
		return run_fork_cost(counts, forks ? (int)forks : 31);
	if (!strcmp(test_name, "fork-locks"))
		return run_fork_locks(forks ? (int)forks : quick ? 200 : 1000);
	if (!strcmp(test_name, "exec"))
		return run_exec();
	if (!strcmp(test_name, "helper"))
		return run_helper(expect_plain, quiet);
	if (!strcmp(test_name, "churn"))
		return run_churn(cycles ? cycles : quick ? 100000 : 1000000, threads, max_growth);
	if (!strcmp(test_name, "reuse"))
		return run_reuse(cycles ? cycles : quick ? 20000 : 200000);
	if (!strcmp(test_name, "concurrent"))
		return run_concurrent(sessions ? sessions : quick ? 1000 : 10000, threads, record);
	if (!strcmp(test_name, "probe"))
		return run_probe(var, size, fill, prefix, suffix, seconds);
	if (!strcmp(test_name, "oom")) {
		test_name = var ? var : "oom";
		static char name[64];
		snprintf(name, sizeof name, "oom-%s", var ? var : "?");
		test_name = name;
		return run_oom(var ? var : "");
	}
	fprintf(stderr, "rg-hardening: unknown test %s\n", test_name);
	usage(stderr);
	return 2;
}
