/*
 * tls-setup.c — GnuTLS set-up for the benchmark (see bench.h).
 *
 * Owns: the one benchmark identity (ECDSA P-256 key, self-signed
 * certificate, made in memory once per process), the credentials, TCP
 * loopback connections, the QEMU-like custom transport, the in-memory
 * transport, handshakes, and the lookups of the preloads' marker symbols.
 *
 * Invariants: bench_tls_init() runs its work once; nothing here links or
 * names a preload library except through dlsym(RTLD_DEFAULT, ...).
 * Any set-up failure exits the worker with a RESULT status=error line, so
 * the driver reports it instead of a missing number.
 */
#include "bench.h"

#include <gnutls/x509.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static gnutls_certificate_credentials_t server_cred, client_cred;

static void setup_failed(const char *what, const char *why)
{
	printf("RESULT status=error value=0 detail=%s:%s\n", what, why);
	fflush(stdout);
	_exit(2);
}

#define CHECK_GNUTLS(call)                                                 \
	do {                                                               \
		int check_ret_ = (call);                                   \
		if (check_ret_ < 0)                                        \
			setup_failed(#call, gnutls_strerror_name(check_ret_)); \
	} while (0)

uint64_t bench_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void init_once_fn(void)
{
	gnutls_x509_privkey_t key;
	gnutls_x509_crt_t crt;
	unsigned char serial[8] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08 };
	time_t now = time(NULL);

	CHECK_GNUTLS(gnutls_global_init());
	CHECK_GNUTLS(gnutls_x509_privkey_init(&key));
	CHECK_GNUTLS(gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
			GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0));
	CHECK_GNUTLS(gnutls_x509_crt_init(&crt));
	CHECK_GNUTLS(gnutls_x509_crt_set_version(crt, 3));
	CHECK_GNUTLS(gnutls_x509_crt_set_serial(crt, serial, sizeof serial));
	CHECK_GNUTLS(gnutls_x509_crt_set_activation_time(crt, now - 3600));
	CHECK_GNUTLS(gnutls_x509_crt_set_expiration_time(crt, now + 86400));
	CHECK_GNUTLS(gnutls_x509_crt_set_dn(crt, "CN=rekeyguard-bench", NULL));
	CHECK_GNUTLS(gnutls_x509_crt_set_key(crt, key));
	CHECK_GNUTLS(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE));
	CHECK_GNUTLS(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0));

	CHECK_GNUTLS(gnutls_certificate_allocate_credentials(&server_cred));
	CHECK_GNUTLS(gnutls_certificate_set_x509_key(server_cred, &crt, 1, key));
	/* The client does not verify the certificate (no trust store). */
	CHECK_GNUTLS(gnutls_certificate_allocate_credentials(&client_cred));

	gnutls_x509_crt_deinit(crt);
	gnutls_x509_privkey_deinit(key);
}

void bench_tls_init(void)
{
	pthread_once(&init_once, init_once_fn);
}

gnutls_session_t bench_session_new(bool server, const char *prio)
{
	gnutls_session_t s;

	bench_tls_init();
	CHECK_GNUTLS(gnutls_init(&s, server ? GNUTLS_SERVER : GNUTLS_CLIENT));
	CHECK_GNUTLS(gnutls_priority_set_direct(s, prio, NULL));
	CHECK_GNUTLS(gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE,
					    server ? server_cred : client_cred));
	return s;
}

/* ---- TCP loopback ------------------------------------------------------ */

static void set_nodelay(int fd)
{
	int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
		setup_failed("setsockopt(TCP_NODELAY)", strerror(errno));
}

void bench_tcp_pairs(int n, int *client_fd, int *server_fd)
{
	struct sockaddr_in addr;
	socklen_t len = sizeof addr;
	int one = 1;
	int lfd = socket(AF_INET, SOCK_STREAM, 0);

	if (lfd < 0)
		setup_failed("socket", strerror(errno));
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	memset(&addr, 0, sizeof addr);
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
	    listen(lfd, n < 128 ? 128 : n) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&addr, &len) < 0)
		setup_failed("bind/listen", strerror(errno));
	/* Connect and accept one at a time so client_fd[i] pairs server_fd[i]. */
	for (int i = 0; i < n; i++) {
		client_fd[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (client_fd[i] < 0 ||
		    connect(client_fd[i], (struct sockaddr *)&addr, sizeof addr) < 0)
			setup_failed("connect", strerror(errno));
		server_fd[i] = accept(lfd, NULL, NULL);
		if (server_fd[i] < 0)
			setup_failed("accept", strerror(errno));
		set_nodelay(client_fd[i]);
		set_nodelay(server_fd[i]);
	}
	close(lfd);
}

/* ---- the QEMU-like custom transport -------------------------------------
 * Blocking send/recv on the fd carried in the transport pointer; errors
 * are reported through errno, as QEMU's QIOChannel callbacks do. */

static ssize_t custom_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
	return send((int)(intptr_t)ptr, buf, len, MSG_NOSIGNAL);
}

static ssize_t custom_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	return recv((int)(intptr_t)ptr, buf, len, 0);
}

void bench_announce_poll_fd(gnutls_session_t s, int fd)
{
	union { void *sym; void (*fn)(gnutls_session_t, int); } hook;

	hook.sym = dlsym(RTLD_DEFAULT, "bench_qemustyle_set_poll_fd");
	if (hook.sym != NULL)
		hook.fn(s, fd);
}

void bench_transport_set(gnutls_session_t s, enum bench_transport t, int fd)
{
	switch (t) {
	case BENCH_FD:
		gnutls_transport_set_int(s, fd);
		break;
	case BENCH_CUSTOM:
		gnutls_transport_set_ptr(s, (gnutls_transport_ptr_t)(intptr_t)fd);
		gnutls_transport_set_push_function(s, custom_push);
		gnutls_transport_set_pull_function(s, custom_pull);
		bench_announce_poll_fd(s, fd);
		break;
	case BENCH_MEMORY:
		setup_failed("bench_transport_set", "use bench_memory_pipe_new");
	}
}

/* ---- in-memory transport ----------------------------------------------- */

struct memory_queue {
	unsigned char *data;
	size_t head, tail, cap;   /* bytes [head, tail) are queued */
};

struct memory_end {
	gnutls_session_t session;
	struct memory_queue *in, *out;
};

struct bench_memory_pipe {
	struct memory_queue to_client, to_server;
	struct memory_end client, server;
};

static ssize_t memory_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
	struct memory_end *end = ptr;
	struct memory_queue *q = end->out;

	if (q->head == q->tail)
		q->head = q->tail = 0;
	if (q->tail + len > q->cap) {
		/* Compact, then grow. */
		memmove(q->data, q->data + q->head, q->tail - q->head);
		q->tail -= q->head;
		q->head = 0;
		while (q->tail + len > q->cap) {
			q->cap *= 2;
			q->data = realloc(q->data, q->cap);
			if (q->data == NULL)
				setup_failed("memory_push", "out of memory");
		}
	}
	memcpy(q->data + q->tail, buf, len);
	q->tail += len;
	return (ssize_t)len;
}

static ssize_t memory_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	struct memory_end *end = ptr;
	struct memory_queue *q = end->in;
	size_t avail = q->tail - q->head;

	if (avail == 0) {
		gnutls_transport_set_errno(end->session, EAGAIN);
		return -1;
	}
	if (len > avail)
		len = avail;
	memcpy(buf, q->data + q->head, len);
	q->head += len;
	return (ssize_t)len;
}

static void memory_queue_init(struct memory_queue *q)
{
	q->cap = 64 * 1024;
	q->head = q->tail = 0;
	q->data = malloc(q->cap);
	if (q->data == NULL)
		setup_failed("memory_queue_init", "out of memory");
}

static void memory_end_attach(struct memory_end *end, gnutls_session_t s,
			      struct memory_queue *in, struct memory_queue *out)
{
	end->session = s;
	end->in = in;
	end->out = out;
	gnutls_transport_set_ptr(s, end);
	gnutls_transport_set_push_function(s, memory_push);
	gnutls_transport_set_pull_function(s, memory_pull);
}

struct bench_memory_pipe *bench_memory_pipe_new(gnutls_session_t client,
						gnutls_session_t server)
{
	struct bench_memory_pipe *p = calloc(1, sizeof *p);

	if (p == NULL)
		setup_failed("bench_memory_pipe_new", "out of memory");
	memory_queue_init(&p->to_client);
	memory_queue_init(&p->to_server);
	memory_end_attach(&p->client, client, &p->to_client, &p->to_server);
	memory_end_attach(&p->server, server, &p->to_server, &p->to_client);
	return p;
}

/* ---- handshakes -------------------------------------------------------- */

static int handshake_blocking(gnutls_session_t s)
{
	int ret;
	do {
		ret = gnutls_handshake(s);
	} while (ret < 0 && !gnutls_error_is_fatal(ret));
	return ret;
}

static void *server_handshake_thread(void *arg)
{
	gnutls_session_t s = arg;
	return (void *)(intptr_t)handshake_blocking(s);
}

void bench_handshake_threaded(gnutls_session_t client, gnutls_session_t server)
{
	pthread_t t;
	void *server_ret;
	int ret;

	if (pthread_create(&t, NULL, server_handshake_thread, server) != 0)
		setup_failed("pthread_create", strerror(errno));
	ret = handshake_blocking(client);
	pthread_join(t, &server_ret);
	if (ret < 0)
		setup_failed("client handshake", gnutls_strerror_name(ret));
	if ((intptr_t)server_ret < 0)
		setup_failed("server handshake", gnutls_strerror_name((int)(intptr_t)server_ret));
}

void bench_handshake_alternating(gnutls_session_t client, gnutls_session_t server)
{
	int cret = GNUTLS_E_AGAIN, sret = GNUTLS_E_AGAIN;

	for (int i = 0; i < 1000 && (cret < 0 || sret < 0); i++) {
		if (cret < 0)
			cret = gnutls_handshake(client);
		if (sret < 0)
			sret = gnutls_handshake(server);
		if (cret < 0 && gnutls_error_is_fatal(cret))
			setup_failed("client handshake", gnutls_strerror_name(cret));
		if (sret < 0 && gnutls_error_is_fatal(sret))
			setup_failed("server handshake", gnutls_strerror_name(sret));
	}
	if (cret < 0 || sret < 0)
		setup_failed("handshake", "did not finish");
}

/* ---- which preload is mapped ------------------------------------------- */

const char *bench_preload_name(void)
{
	if (dlsym(RTLD_DEFAULT, "rekeyguard_version") != NULL)
		return "rekeyguard";
	if (dlsym(RTLD_DEFAULT, "bench_naivelock_loaded") != NULL)
		return "naivelock";
	if (dlsym(RTLD_DEFAULT, "bench_qemustyle_set_poll_fd") != NULL)
		return "qemustyle";
	return "none";
}
