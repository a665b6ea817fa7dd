/*
 * harness.c — shared helpers for rekeyguard's test programs (see harness.h).
 *
 * Owns: the one test identity (ECDSA P-256 key and self-signed certificate
 * made in memory once per process), the client and server credentials,
 * session and connection set-up over socketpairs and TCP loopback, the
 * seeded generator, the byte pattern and the watchdog.
 *
 * Invariants: rg_init() runs its work once (pthread_once) and every other
 * helper that needs GnuTLS calls it first; nothing here links or names the
 * shim except rg_shim_loaded(), which only asks the dynamic linker.
 */
#include "harness.h"

#include <gnutls/crypto.h>
#include <gnutls/x509.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- set-up */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static gnutls_certificate_credentials_t server_cred;
static gnutls_certificate_credentials_t client_cred;

static void die_gnutls(const char *what, int ret)
{
	fprintf(stderr, "harness: %s: %s (%s)\n", what,
		gnutls_strerror(ret), gnutls_strerror_name(ret));
	exit(2);
}

#define CHECK_GNUTLS(call)                                                 \
	do {                                                               \
		int check_ret_ = (call);                                   \
		if (check_ret_ < 0)                                        \
			die_gnutls(#call, check_ret_);                     \
	} while (0)

static void init_once_fn(void)
{
	gnutls_x509_privkey_t key;
	gnutls_x509_crt_t crt;
	unsigned char serial[8];
	time_t now = time(NULL);
	const char *dn_err = NULL;

	CHECK_GNUTLS(gnutls_global_init());

	CHECK_GNUTLS(gnutls_x509_privkey_init(&key));
	CHECK_GNUTLS(gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
			GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0));

	CHECK_GNUTLS(gnutls_x509_crt_init(&crt));
	CHECK_GNUTLS(gnutls_x509_crt_set_version(crt, 3));
	CHECK_GNUTLS(gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof serial));
	serial[0] &= 0x7f;	/* positive */
	serial[0] |= 0x01;	/* and not zero */
	CHECK_GNUTLS(gnutls_x509_crt_set_serial(crt, serial, sizeof serial));
	CHECK_GNUTLS(gnutls_x509_crt_set_activation_time(crt, now - 3600));
	CHECK_GNUTLS(gnutls_x509_crt_set_expiration_time(crt, now + 86400 * 30));
	if (gnutls_x509_crt_set_dn(crt, "CN=rekeyguard-test", &dn_err) < 0) {
		fprintf(stderr, "harness: set_dn failed at %s\n",
			dn_err ? dn_err : "?");
		exit(2);
	}
	CHECK_GNUTLS(gnutls_x509_crt_set_subject_alt_name(crt,
			GNUTLS_SAN_DNSNAME, "rekeyguard-test",
			strlen("rekeyguard-test"), GNUTLS_FSAN_SET));
	CHECK_GNUTLS(gnutls_x509_crt_set_key(crt, key));
	CHECK_GNUTLS(gnutls_x509_crt_set_basic_constraints(crt, 0, -1));
	CHECK_GNUTLS(gnutls_x509_crt_set_key_usage(crt,
			GNUTLS_KEY_DIGITAL_SIGNATURE));
	CHECK_GNUTLS(gnutls_x509_crt_set_key_purpose_oid(crt,
			GNUTLS_KP_TLS_WWW_SERVER, 0));
	CHECK_GNUTLS(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0));

	CHECK_GNUTLS(gnutls_certificate_allocate_credentials(&server_cred));
	CHECK_GNUTLS(gnutls_certificate_set_x509_key(server_cred, &crt, 1, key));

	/* The client does not verify: it never calls set_verify_cert and has
	 * no trust store. */
	CHECK_GNUTLS(gnutls_certificate_allocate_credentials(&client_cred));

	gnutls_x509_crt_deinit(crt);
	gnutls_x509_privkey_deinit(key);
}

void rg_init(void)
{
	pthread_once(&init_once, init_once_fn);
}

gnutls_session_t rg_session_new(int server, unsigned extra_flags, const char *prio)
{
	gnutls_session_t s;
	const char *err_pos = NULL;
	int ret;

	rg_init();
	CHECK_GNUTLS(gnutls_init(&s, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) |
				     extra_flags));
	ret = gnutls_priority_set_direct(s, prio ? prio : RG_PRIO_AES128, &err_pos);
	if (ret < 0) {
		fprintf(stderr, "harness: priority \"%s\" rejected near \"%s\": %s\n",
			prio ? prio : RG_PRIO_AES128, err_pos ? err_pos : "?",
			gnutls_strerror(ret));
		exit(2);
	}
	CHECK_GNUTLS(gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE,
			server ? server_cred : client_cred));
	if (!server)
		CHECK_GNUTLS(gnutls_server_name_set(s, GNUTLS_NAME_DNS,
				"rekeyguard-test", strlen("rekeyguard-test")));
	return s;
}

/* ------------------------------------------------------------- handshake */

struct handshake_job {
	gnutls_session_t session;
	int ret;
};

static void *handshake_thread(void *arg)
{
	struct handshake_job *job = arg;
	int ret;

	do {
		ret = gnutls_handshake(job->session);
	} while (ret < 0 && !gnutls_error_is_fatal(ret));
	job->ret = ret;
	return NULL;
}

int rg_handshake_pair(gnutls_session_t client, gnutls_session_t server)
{
	struct handshake_job cj = { client, 0 }, sj = { server, 0 };
	pthread_t ct, st;

	if (pthread_create(&st, NULL, handshake_thread, &sj) != 0) {
		perror("harness: pthread_create");
		exit(2);
	}
	if (pthread_create(&ct, NULL, handshake_thread, &cj) != 0) {
		perror("harness: pthread_create");
		exit(2);
	}
	pthread_join(ct, NULL);
	pthread_join(st, NULL);
	if (cj.ret < 0) {
		fprintf(stderr, "harness: client handshake: %s\n",
			gnutls_strerror_name(cj.ret));
		return cj.ret;
	}
	if (sj.ret < 0) {
		fprintf(stderr, "harness: server handshake: %s\n",
			gnutls_strerror_name(sj.ret));
		return sj.ret;
	}
	return 0;
}

/* ------------------------------------------------------------ transports */

static void make_socketpair(int fd[2])
{
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) < 0) {
		perror("harness: socketpair");
		exit(2);
	}
}

static int pair_over_fds(struct rg_pair *p, unsigned extra_flags,
			 const char *prio, int custom)
{
	p->client = rg_session_new(0, extra_flags, prio);
	p->server = rg_session_new(1, extra_flags, prio);
	if (custom) {
		rg_transport_set_custom(p->client, p->fd[0]);
		rg_transport_set_custom(p->server, p->fd[1]);
	} else {
		gnutls_transport_set_int(p->client, p->fd[0]);
		gnutls_transport_set_int(p->server, p->fd[1]);
	}
	return rg_handshake_pair(p->client, p->server);
}

int rg_pair_fd(struct rg_pair *p, unsigned extra_flags, const char *prio)
{
	make_socketpair(p->fd);
	return pair_over_fds(p, extra_flags, prio, 0);
}

/* QEMU-like callbacks: the transport pointer carries the fd, push and pull
 * are write(2) and read(2), failures report through errno (no errno
 * function, no gnutls_transport_set_errno), as QEMU's qcrypto_tls_session
 * push/pull do. */
static ssize_t custom_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
	return write((int)(intptr_t)ptr, buf, len);
}

static ssize_t custom_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	return read((int)(intptr_t)ptr, buf, len);
}

void rg_transport_set_custom(gnutls_session_t s, int fd)
{
	gnutls_transport_set_ptr(s, (gnutls_transport_ptr_t)(intptr_t)fd);
	gnutls_transport_set_push_function(s, custom_push);
	gnutls_transport_set_pull_function(s, custom_pull);
}

int rg_pair_custom(struct rg_pair *p, unsigned extra_flags, const char *prio)
{
	make_socketpair(p->fd);
	return pair_over_fds(p, extra_flags, prio, 1);
}

int rg_pair_tcp(struct rg_pair *p, unsigned extra_flags, const char *prio)
{
	struct sockaddr_in addr;
	socklen_t alen = sizeof addr;
	int lfd, one = 1;

	memset(&addr, 0, sizeof addr);
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	addr.sin_port = 0;

	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
	    listen(lfd, 1) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0) {
		perror("harness: tcp listen");
		exit(2);
	}
	p->fd[0] = socket(AF_INET, SOCK_STREAM, 0);
	if (p->fd[0] < 0 ||
	    connect(p->fd[0], (struct sockaddr *)&addr, sizeof addr) < 0) {
		perror("harness: tcp connect");
		exit(2);
	}
	p->fd[1] = accept(lfd, NULL, NULL);
	if (p->fd[1] < 0) {
		perror("harness: tcp accept");
		exit(2);
	}
	close(lfd);
	setsockopt(p->fd[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	setsockopt(p->fd[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return pair_over_fds(p, extra_flags, prio, 0);
}

void rg_pair_close(struct rg_pair *p)
{
	if (p->client)
		gnutls_deinit(p->client);
	if (p->server)
		gnutls_deinit(p->server);
	p->client = p->server = NULL;
	for (int i = 0; i < 2; i++) {
		if (p->fd[i] >= 0)
			close(p->fd[i]);
		p->fd[i] = -1;
	}
}

/* ------------------------------------------------------------ randomness */

uint64_t rg_seed(void)
{
	const char *env = getenv("RG_SEED");
	uint64_t seed = 0;

	if (env && *env) {
		char *end;
		errno = 0;
		seed = strtoull(env, &end, 0);
		if (errno || *end) {
			fprintf(stderr, "harness: RG_SEED=\"%s\" is not a number\n", env);
			exit(2);
		}
	} else {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		seed = ((uint64_t)ts.tv_sec * 1000003u) ^ (uint64_t)ts.tv_nsec ^
		       ((uint64_t)getpid() << 32);
		seed %= 1000000000ull;	/* short enough to retype */
	}
	if (seed == 0)
		seed = 1;
	fprintf(stderr, "seed=%" PRIu64 "\n", seed);
	return seed;
}

uint64_t rg_rand(uint64_t *state)
{
	uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ull;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/* --------------------------------------------------------------- pattern */

/* The stream is a sequence of little-endian 64-bit words; word w of stream
 * id is a cheap mix of (id, w), so a lost, repeated or shifted span of
 * bytes, or bytes from the other stream, never matches. */
static inline uint64_t pattern_word(uint32_t id, uint64_t w)
{
	uint64_t v = (w ^ ((uint64_t)id << 40) ^ ((uint64_t)id * 0xD6E8FEB86659FD93ull))
		     * 0x9E3779B97F4A7C15ull;
	return v ^ (v >> 31);
}

static inline unsigned char pattern_byte(uint32_t id, uint64_t off)
{
	return (unsigned char)(pattern_word(id, off >> 3) >> (8 * (off & 7)));
}

void rg_pattern_fill(unsigned char *buf, size_t len, uint32_t id, uint64_t off)
{
	size_t i = 0;

	while (i < len && ((off + i) & 7))
		buf[i] = pattern_byte(id, off + i), i++;
	for (; i + 8 <= len; i += 8) {
		uint64_t v = htole64(pattern_word(id, (off + i) >> 3));
		memcpy(buf + i, &v, 8);
	}
	for (; i < len; i++)
		buf[i] = pattern_byte(id, off + i);
}

long rg_pattern_check(const unsigned char *buf, size_t len, uint32_t id, uint64_t off)
{
	size_t i = 0;

	while (i < len && ((off + i) & 7)) {
		if (buf[i] != pattern_byte(id, off + i))
			return (long)i;
		i++;
	}
	for (; i + 8 <= len; i += 8) {
		uint64_t v = htole64(pattern_word(id, (off + i) >> 3));
		if (memcmp(buf + i, &v, 8) != 0)
			break;	/* find the exact byte below */
	}
	for (; i < len; i++)
		if (buf[i] != pattern_byte(id, off + i))
			return (long)i;
	return -1;
}

/* -------------------------------------------------------------- watchdog */

static pthread_mutex_t watchdog_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watchdog_cond;
static int watchdog_started;
static int watchdog_armed;
static struct timespec watchdog_deadline;	/* CLOCK_MONOTONIC */
static char watchdog_name[64];

static void *watchdog_thread(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&watchdog_lock);
	for (;;) {
		if (!watchdog_armed) {
			pthread_cond_wait(&watchdog_cond, &watchdog_lock);
			continue;
		}
		if (pthread_cond_timedwait(&watchdog_cond, &watchdog_lock,
					   &watchdog_deadline) == ETIMEDOUT &&
		    watchdog_armed) {
			char line[128];
			int n = snprintf(line, sizeof line,
					 "RESULT %s FAIL reason=timeout\n",
					 watchdog_name);
			/* Flush what the program already printed if nobody
			 * holds stdout; never wait for it. */
			if (ftrylockfile(stdout) == 0) {
				fflush_unlocked(stdout);
				funlockfile(stdout);
			}
			if (write(STDOUT_FILENO, line, (size_t)n) < 0)
				_exit(4);
			_exit(4);
		}
	}
	return NULL;
}

void rg_watchdog(const char *name, unsigned seconds)
{
	pthread_mutex_lock(&watchdog_lock);
	if (!watchdog_started) {
		pthread_condattr_t ca;
		pthread_t t;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&watchdog_cond, &ca);
		pthread_condattr_destroy(&ca);
		if (pthread_create(&t, NULL, watchdog_thread, NULL) != 0) {
			perror("harness: watchdog thread");
			exit(2);
		}
		pthread_detach(t);
		watchdog_started = 1;
	}
	snprintf(watchdog_name, sizeof watchdog_name, "%s", name);
	clock_gettime(CLOCK_MONOTONIC, &watchdog_deadline);
	watchdog_deadline.tv_sec += seconds;
	watchdog_armed = 1;
	pthread_cond_signal(&watchdog_cond);
	pthread_mutex_unlock(&watchdog_lock);
}

void rg_watchdog_cancel(void)
{
	pthread_mutex_lock(&watchdog_lock);
	watchdog_armed = 0;
	if (watchdog_started)
		pthread_cond_signal(&watchdog_cond);
	pthread_mutex_unlock(&watchdog_lock);
}

/* ----------------------------------------------------------------- misc */

int rg_shim_loaded(void)
{
	return dlsym(RTLD_DEFAULT, "rekeyguard_version") != NULL;
}

double rg_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
