/*
 * check_unit.c — unit tests of the library's internals, next to the
 * black-box suites: the record-header and errno mirrors of GnuTLS, the
 * outbound queue and its flush, the per-thread buffer cache, and the
 * registry's per-thread lookup cache.
 *
 * Compiled together with the shim's own source files (tests/unit/unit.mk),
 * not preloaded, once as released and once with -DREKEYGUARD_DEBUG (the
 * ASan library's flag, check_unit_debug), whose lock helpers must abort
 * on misuse: each test builds a struct rg_session by hand and drives
 * the internal functions directly, over a real socketpair where bytes
 * move. No GnuTLS session is needed. No randomness.
 */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buffers.h"
#include "gnutls-mirror.h"
#include "locks.h"
#include "outbound.h"
#include "registry.h"
#include "session.h"

static struct rg_session *session_new(void)
{
	struct rg_session *s = calloc(1, sizeof *s);
	ck_assert_ptr_nonnull(s);
	rg_session_locks_init(s);
	s->direction_override = -1;
	return s;
}

static void session_free(struct rg_session *s)
{
	for (struct rg_chunk *c = s->out_head, *next; c != NULL; c = next) {
		next = c->next;
		free(c);
	}
	rg_session_locks_destroy(s);
	free(s);
}

/* ---- gnutls-mirror.h ------------------------------------------------------ */

START_TEST(test_tls_body_length)
{
	for (unsigned char type = 20; type <= 24; type++) {
		unsigned char h[5] = { type, 3, 3, 0x01, 0x00 };
		ck_assert_uint_eq(rg_tls_body_length(h), 256);
	}
	unsigned char bad_type[5] = { 25, 3, 3, 0, 1 }, low_type[5] = { 19, 3, 3, 0, 1 };
	unsigned char bad_version[5] = { 23, 2, 3, 0, 1 }, empty[5] = { 23, 3, 3, 0, 0 };
	unsigned char max[5] = { 23, 3, 3, (RG_TLS_MAX_BODY >> 8) & 0xff, RG_TLS_MAX_BODY & 0xff };
	unsigned char over[5] = { 23, 3, 3, ((RG_TLS_MAX_BODY + 1) >> 8) & 0xff,
				  (RG_TLS_MAX_BODY + 1) & 0xff };
	ck_assert_uint_eq(rg_tls_body_length(bad_type), 0);
	ck_assert_uint_eq(rg_tls_body_length(low_type), 0);
	ck_assert_uint_eq(rg_tls_body_length(bad_version), 0);
	ck_assert_uint_eq(rg_tls_body_length(empty), 0);
	ck_assert_uint_eq(rg_tls_body_length(max), RG_TLS_MAX_BODY);
	ck_assert_uint_eq(rg_tls_body_length(over), 0);
}
END_TEST

START_TEST(test_push_error)
{
	ck_assert_int_eq(rg_push_error(EAGAIN), GNUTLS_E_AGAIN);
	ck_assert_int_eq(rg_push_error(EINTR), GNUTLS_E_INTERRUPTED);
	ck_assert_int_eq(rg_push_error(ECONNRESET), GNUTLS_E_PREMATURE_TERMINATION);
	ck_assert_int_eq(rg_push_error(EPIPE), GNUTLS_E_PUSH_ERROR);
}
END_TEST

/* ---- outbound queue ------------------------------------------------------- */

/* A push that records each call's buffers and takes at most `limit`
 * bytes per call, into a socket. */
struct recorder {
	int fd;
	size_t limit;
	int calls;
	int iovcnt[16];
};
static struct recorder rec;

static ssize_t recording_vec_push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int count)
{
	(void)ptr;
	if (rec.calls < 16)
		rec.iovcnt[rec.calls] = count;
	rec.calls++;
	size_t total = 0;
	for (int i = 0; i < count && total < rec.limit; i++) {
		size_t n = iov[i].iov_len < rec.limit - total ? iov[i].iov_len : rec.limit - total;
		ssize_t w = write(rec.fd, iov[i].iov_base, n);
		ck_assert_int_eq(w, (ssize_t)n);
		total += n;
	}
	return (ssize_t)total;
}

static void queue_vector(struct rg_session *s, const giovec_t *iov, int count, size_t skip)
{
	struct rg_chunk *reserved = rg_queue_reserve(iov, count, skip);
	ck_assert_ptr_ne(reserved, RG_QUEUE_NO_MEMORY);
	rg_queue_put(s, reserved, iov, count, skip);
	size_t total = 0;
	for (int i = 0; i < count; i++)
		total += iov[i].iov_len;
	s->out_pushed += total;
}

START_TEST(test_queue_chunks)
{
	struct rg_session *s = session_new();
	char a[10], b[20], c[30];
	memset(a, 'a', sizeof a);
	memset(b, 'b', sizeof b);
	memset(c, 'c', sizeof c);
	giovec_t iov[3] = { { a, sizeof a }, { b, sizeof b }, { c, sizeof c } };
	/* 15 bytes already written: the rest of b (15) and all of c. */
	queue_vector(s, iov, 3, 15);
	ck_assert_uint_eq(s->out_queued, 45);
	ck_assert_ptr_nonnull(s->out_head);
	ck_assert_uint_eq(s->out_head->len, 15);
	ck_assert(s->out_head->first);
	ck_assert_int_eq(memcmp(s->out_head->data, b + 5, 15), 0);
	ck_assert_ptr_nonnull(s->out_head->next);
	ck_assert_uint_eq(s->out_head->next->len, 30);
	ck_assert(!s->out_head->next->first);
	ck_assert_ptr_eq(s->out_tail, s->out_head->next);
	ck_assert_uint_eq(rg_queue_discard(s), 45);
	ck_assert_ptr_null(s->out_head);
	ck_assert_uint_eq(s->out_flushed, s->out_queued);
	session_free(s);
}
END_TEST

START_TEST(test_flush_short_write_then_rest)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct rg_session *s = session_new();
	s->app_vec_push = recording_vec_push;
	rec = (struct recorder){ .fd = sv[0], .limit = 25 };

	char one[40], two[12];
	for (size_t i = 0; i < sizeof one; i++)
		one[i] = (char)i;
	for (size_t i = 0; i < sizeof two; i++)
		two[i] = (char)(100 + i);
	giovec_t first[1] = { { one, sizeof one } }, second[1] = { { two, sizeof two } };
	queue_vector(s, first, 1, 0);    /* two push calls of GnuTLS's */
	queue_vector(s, second, 1, 0);

	rg_session_lock(s);
	/* 25 of the first push's 40 bytes: a short write, as GnuTLS reports. */
	ck_assert_int_eq(rg_flush_until(s, s->out_queued), GNUTLS_E_AGAIN);
	ck_assert_uint_eq(s->out_flushed, 25);
	/* The rest: 15 of the first buffer, then the second push on its own. */
	rec.limit = 1000;
	ck_assert_int_eq(rg_flush_until(s, s->out_queued), 0);
	rg_session_unlock(s);
	ck_assert_uint_eq(s->out_flushed, 52);
	ck_assert_ptr_null(s->out_head);
	ck_assert_int_eq(rec.calls, 3);
	ck_assert_int_eq(rec.iovcnt[0], 1);   /* never both pushes' buffers at once */
	ck_assert_int_eq(rec.iovcnt[1], 1);
	ck_assert_int_eq(rec.iovcnt[2], 1);

	char got[52];
	size_t have = 0;
	while (have < sizeof got) {
		ssize_t n = read(sv[1], got + have, sizeof got - have);
		ck_assert_int_gt(n, 0);
		have += (size_t)n;
	}
	ck_assert_int_eq(memcmp(got, one, sizeof one), 0);
	ck_assert_int_eq(memcmp(got + sizeof one, two, sizeof two), 0);
	close(sv[0]);
	close(sv[1]);
	session_free(s);
}
END_TEST

static ssize_t failing_vec_push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int count)
{
	(void)ptr;
	(void)iov;
	(void)count;
	errno = EPIPE;
	return -1;
}

START_TEST(test_flush_failure_is_for_good)
{
	struct rg_session *s = session_new();
	s->app_vec_push = failing_vec_push;
	char data[8] = "abcdefg";
	giovec_t iov[1] = { { data, sizeof data } };
	queue_vector(s, iov, 1, 0);
	rg_session_lock(s);
	ck_assert_int_eq(rg_flush_until(s, s->out_queued), GNUTLS_E_PUSH_ERROR);
	rg_session_unlock(s);
	ck_assert_int_eq(s->push_dead_errno, EPIPE);
	ck_assert_uint_eq(s->out_flushed, 0);
	session_free(s);
}
END_TEST

/* ---- buffer cache ------------------------------------------------------- */

START_TEST(test_chunk_cache)
{
	struct rg_chunk *c = rg_chunk_get(100);
	ck_assert_ptr_nonnull(c);
	ck_assert_uint_eq(c->cap, RG_CHUNK_SIZE);
	rg_chunk_put(c);
	ck_assert_ptr_eq(rg_chunk_get(RG_CHUNK_SIZE), c);   /* this thread's spare */
	struct rg_chunk *big = rg_chunk_get(RG_CHUNK_SIZE * 2);
	ck_assert_uint_eq(big->cap, RG_CHUNK_SIZE * 2);
	rg_chunk_put(big);                                   /* freed, not cached */
	struct rg_chunk *again = rg_chunk_get(10);
	ck_assert_uint_eq(again->cap, RG_CHUNK_SIZE);
	rg_chunk_put(again);
	rg_chunk_put(c);
}
END_TEST

/* ---- registry lookup cache ------------------------------------------------ */

static struct rg_session *lookup_and_release(gnutls_session_t session)
{
	struct rg_session *s = rg_registry_lookup_ref(session);
	if (s != NULL) {
		rg_session_lock(s);
		rg_registry_unref_locked(s);
		rg_session_unlock(s);
	}
	return s;
}

/* GnuTLS may hand a session's address out again as soon as the old session
 * is freed, before its entry is destroyed: a lookup on this thread, whose
 * cache still names the old entry, must find the new one. */
START_TEST(test_lookup_cache_reused_address)
{
	gnutls_session_t x = (gnutls_session_t)(uintptr_t)0x5000;
	struct rg_session *old = rg_registry_create(x, 0);
	ck_assert_ptr_nonnull(old);
	ck_assert_ptr_eq(lookup_and_release(x), old);   /* fills the cache */
	ck_assert_ptr_eq(lookup_and_release(x), old);   /* from the cache */
	ck_assert_ptr_eq(rg_registry_remove(x), old);
	ck_assert_ptr_null(lookup_and_release(x));      /* removed: not found */
	struct rg_session *fresh = rg_registry_create(x, 0);
	ck_assert_ptr_nonnull(fresh);
	ck_assert_ptr_eq(lookup_and_release(x), fresh);
	rg_registry_destroy(old);
	ck_assert_ptr_eq(lookup_and_release(x), fresh);
	ck_assert_ptr_eq(rg_registry_remove(x), fresh);
	rg_registry_destroy(fresh);
	ck_assert_ptr_null(lookup_and_release(x));
	rg_registry_forget_thread();
}
END_TEST

/* ---- lock misuse: debug builds abort at the call site ---------------------- */

#ifdef REKEYGUARD_DEBUG
START_TEST(test_debug_relock_aborts)
{
	struct rg_session *s = session_new();
	rg_session_lock(s);
	rg_session_lock(s);   /* a session lock this thread holds: abort */
}
END_TEST

START_TEST(test_debug_foreign_unlock_aborts)
{
	struct rg_session *s = session_new();
	rg_session_unlock(s);   /* not held by this thread: abort */
}
END_TEST

START_TEST(test_debug_lock_under_leaf_aborts)
{
	struct rg_session *s = session_new();
	rg_locks_ensure_init();
	rg_leaf_lock(&rg_stripe[0]);
	rg_session_lock(s);   /* nothing may be taken under a leaf lock: abort */
}
END_TEST

START_TEST(test_debug_correct_use_passes)
{
	struct rg_session *a = session_new(), *b = session_new();
	rg_session_lock(a);
	rg_session_lock(b);   /* two sessions: allowed (locks.h) */
	rg_session_unlock(b);
	rg_session_unlock(a);
	rg_session_lock_turn(a, true, false);
	rg_session_unlock(a);
	session_free(a);
	session_free(b);
}
END_TEST
#endif

static Suite *unit_suite(void)
{
	Suite *s = suite_create("rekeyguard-unit");
	TCase *mirror = tcase_create("mirror");
	tcase_add_test(mirror, test_tls_body_length);
	tcase_add_test(mirror, test_push_error);
	suite_add_tcase(s, mirror);
	TCase *queue = tcase_create("queue");
	tcase_set_timeout(queue, 10);
	tcase_add_test(queue, test_queue_chunks);
	tcase_add_test(queue, test_flush_short_write_then_rest);
	tcase_add_test(queue, test_flush_failure_is_for_good);
	suite_add_tcase(s, queue);
	TCase *buffers = tcase_create("buffers");
	tcase_add_test(buffers, test_chunk_cache);
	suite_add_tcase(s, buffers);
	TCase *registry = tcase_create("registry");
	tcase_add_test(registry, test_lookup_cache_reused_address);
	suite_add_tcase(s, registry);
#ifdef REKEYGUARD_DEBUG
	TCase *debug = tcase_create("debug-locks");
	tcase_add_test_raise_signal(debug, test_debug_relock_aborts, SIGABRT);
	tcase_add_test_raise_signal(debug, test_debug_foreign_unlock_aborts, SIGABRT);
	tcase_add_test_raise_signal(debug, test_debug_lock_under_leaf_aborts, SIGABRT);
	tcase_add_test(debug, test_debug_correct_use_passes);
	suite_add_tcase(s, debug);
#endif
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(unit_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
