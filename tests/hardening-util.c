/*
 * hardening-util.c — helpers shared by the robustness test programs (see
 * hardening-util.h).
 *
 * Invariants: the shim is only ever reached through dlsym(RTLD_DEFAULT);
 * hu_duplex owns its four threads and joins them all before returning
 * (a receiver blocked on a dead stream is woken by the peer's close or by
 * gnutls_bye, and failures stop every thread through one flag).
 */
#include "hardening-util.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------- the shim API */

union hu_fn_ulong {
	void *sym;
	unsigned long (*fn)(void);
};

union hu_fn_str {
	void *sym;
	const char *(*fn)(void);
};

long hu_shim_guarded(void)
{
	union hu_fn_ulong u;

	u.sym = dlsym(RTLD_DEFAULT, "rekeyguard_sessions_guarded");
	return u.sym ? (long)u.fn() : -1;
}

const char *hu_shim_mode(void)
{
	union hu_fn_str u;

	u.sym = dlsym(RTLD_DEFAULT, "rekeyguard_active_mode");
	return u.sym ? u.fn() : "none";
}

const char *hu_defining_object(const char *symbol)
{
	void *p = dlsym(RTLD_DEFAULT, symbol);
	Dl_info info;
	const char *slash;

	if (p == NULL || dladdr(p, &info) == 0 || info.dli_fname == NULL)
		return "?";
	slash = strrchr(info.dli_fname, '/');
	return slash ? slash + 1 : info.dli_fname;
}

void hu_result(const char *name, int pass, const char *fmt, ...)
{
	va_list ap;

	printf("RESULT %s %s ", name, pass ? "PASS" : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf(" shim=%s guarded=%ld gnutls=%s\n", rg_shim_loaded() ? "yes" : "no",
	       hu_shim_guarded(), gnutls_check_version(NULL));
	fflush(stdout);
}

/* ---------------------------------------------------------------- memory */

long hu_rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, resident = 0;

	if (f == NULL)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &resident) != 2)
		resident = -1;
	fclose(f);
	return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

size_t hu_heap_inuse(void)
{
	struct mallinfo2 m = mallinfo2();

	return m.uordblks + m.hblkhd;
}

void hu_trim(void)
{
	malloc_trim(0);
}

/* ---------------------------------------------------------------- duplex */

#define HU_RECORD 16384

struct hu_duplex_run {
	struct rg_pair *pair;
	double deadline;
	int keyupdates;
	atomic_int failed;
	pthread_mutex_t lock;
	int err;
	char why[160];
};

struct hu_endpoint {
	struct hu_duplex_run *run;
	gnutls_session_t session;
	int client;
	uint32_t send_id, recv_id;
	uint64_t seed;
	uint64_t sent, received;
};

static void hu_fail(struct hu_duplex_run *r, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void hu_fail(struct hu_duplex_run *r, int err, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&r->lock);
	if (!atomic_load(&r->failed)) {
		r->err = err;
		va_start(ap, fmt);
		vsnprintf(r->why, sizeof r->why, fmt, ap);
		va_end(ap);
		atomic_store(&r->failed, 1);
	}
	pthread_mutex_unlock(&r->lock);
}

static void *hu_sender(void *arg)
{
	struct hu_endpoint *e = arg;
	struct hu_duplex_run *r = e->run;
	unsigned char *buf = malloc(HU_RECORD);
	double ku_every = e->client ? 0.200 : 0.400;
	double next_ku = rg_now() + (e->client ? 0.050 : 0.100);
	unsigned ku_count = 0;
	const char *who = e->client ? "client" : "server";

	while (buf != NULL && !atomic_load(&r->failed) && rg_now() < r->deadline) {
		size_t len = 1 + rg_rand(&e->seed) % HU_RECORD;
		size_t off = 0;

		rg_pattern_fill(buf, len, e->send_id, e->sent);
		while (off < len) {
			ssize_t n = gnutls_record_send(e->session, buf + off, len - off);

			if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
				continue;
			if (n < 0) {
				hu_fail(r, (int)n, "%s-send:%s", who, gnutls_strerror_name((int)n));
				goto out;
			}
			off += (size_t)n;
		}
		e->sent += len;
		if (r->keyupdates && rg_now() >= next_ku) {
			unsigned flags = e->client && (ku_count & 1) ? GNUTLS_KU_PEER : 0;
			int ret;

			do {
				ret = gnutls_session_key_update(e->session, flags);
			} while (ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED);
			if (ret < 0) {
				hu_fail(r, ret, "%s-key-update:%s", who, gnutls_strerror_name(ret));
				goto out;
			}
			ku_count++;
			next_ku += ku_every;
		}
	}
out:
	free(buf);
	/* Half-close: the peer's receiver sees the end of the stream. */
	{
		int ret;

		do {
			ret = gnutls_bye(e->session, GNUTLS_SHUT_WR);
		} while (ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED);
		if (ret < 0 && !atomic_load(&r->failed))
			hu_fail(r, ret, "%s-bye:%s", who, gnutls_strerror_name(ret));
		if (ret < 0) /* wake the peer's receiver whatever happened */
			shutdown(e->client ? r->pair->fd[0] : r->pair->fd[1], SHUT_WR);
	}
	return NULL;
}

static void *hu_receiver(void *arg)
{
	struct hu_endpoint *e = arg;
	struct hu_duplex_run *r = e->run;
	unsigned char *buf = malloc(2 * HU_RECORD);
	const char *who = e->client ? "client" : "server";

	while (buf != NULL) {
		ssize_t n = gnutls_record_recv(e->session, buf, 2 * HU_RECORD);
		long bad;

		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n == 0)
			break;
		if (n < 0) {
			hu_fail(r, (int)n, "%s-recv:%s", who, gnutls_strerror_name((int)n));
			/* unblock our own sender's peer: nothing more will be read */
			shutdown(e->client ? r->pair->fd[0] : r->pair->fd[1], SHUT_RDWR);
			break;
		}
		bad = rg_pattern_check(buf, (size_t)n, e->recv_id, e->received);
		if (bad >= 0) {
			hu_fail(r, -1, "%s-recv:mismatch-at-%" PRIu64, who,
				e->received + (uint64_t)bad);
			shutdown(e->client ? r->pair->fd[0] : r->pair->fd[1], SHUT_RDWR);
			break;
		}
		e->received += (uint64_t)n;
	}
	free(buf);
	return NULL;
}

int hu_duplex(struct rg_pair *p, double seconds, int keyupdates, char *why, size_t why_len)
{
	struct hu_duplex_run r;
	struct hu_endpoint c, s;
	pthread_t t[4];
	static uint64_t seed_base;

	memset(&r, 0, sizeof r);
	r.pair = p;
	r.deadline = rg_now() + seconds;
	r.keyupdates = keyupdates;
	pthread_mutex_init(&r.lock, NULL);
	if (seed_base == 0)
		seed_base = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
	seed_base += 0x9E3779B97F4A7C15ull;
	memset(&c, 0, sizeof c);
	memset(&s, 0, sizeof s);
	c = (struct hu_endpoint){ &r, p->client, 1, 101, 102, seed_base, 0, 0 };
	s = (struct hu_endpoint){ &r, p->server, 0, 102, 101, seed_base ^ 0x5555, 0, 0 };

	pthread_create(&t[0], NULL, hu_receiver, &c);
	pthread_create(&t[1], NULL, hu_receiver, &s);
	pthread_create(&t[2], NULL, hu_sender, &c);
	pthread_create(&t[3], NULL, hu_sender, &s);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);

	if (!atomic_load(&r.failed) && (c.received != s.sent || s.received != c.sent))
		hu_fail(&r, -1, "lost-bytes:c2s=%" PRIu64 "/%" PRIu64 ",s2c=%" PRIu64 "/%" PRIu64,
			s.received, c.sent, c.received, s.sent);
	if (why_len > 0)
		snprintf(why, why_len, "%s", atomic_load(&r.failed) ? r.why : "ok");
	pthread_mutex_destroy(&r.lock);
	if (atomic_load(&r.failed))
		return r.err < 0 ? r.err : -1;
	return 0;
}

/* ------------------------------------------------------------- exchange */

int hu_send_all(gnutls_session_t s, const unsigned char *buf, size_t len)
{
	size_t off = 0;

	while (off < len) {
		ssize_t n = gnutls_record_send(s, buf + off, len - off);

		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n < 0)
			return (int)n;
		off += (size_t)n;
	}
	return 0;
}

int hu_recv_checked(gnutls_session_t s, unsigned char *buf, size_t len, uint32_t id)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = gnutls_record_recv(s, buf + got, len - got);

		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n == 0)
			return GNUTLS_E_PREMATURE_TERMINATION;
		if (n < 0)
			return (int)n;
		got += (size_t)n;
	}
	return rg_pattern_check(buf, len, id, 0) >= 0 ? -1 : 0;
}

int hu_exchange(struct rg_pair *p, size_t len, uint32_t stream_base)
{
	unsigned char *out = malloc(len), *in = malloc(len);
	int ret = GNUTLS_E_MEMORY_ERROR;

	if (out == NULL || in == NULL)
		goto done;
	rg_pattern_fill(out, len, stream_base, 0);
	ret = hu_send_all(p->client, out, len);
	if (ret == 0)
		ret = hu_recv_checked(p->server, in, len, stream_base);
	rg_pattern_fill(out, len, stream_base + 1, 0);
	if (ret == 0)
		ret = hu_send_all(p->server, out, len);
	if (ret == 0)
		ret = hu_recv_checked(p->client, in, len, stream_base + 1);
done:
	free(out);
	free(in);
	return ret;
}
