/*
 * rg-inject-target.c — a GnuTLS program for rekeyguard-inject's tests.
 *
 * Shaped like QEMU where it matters: libgnutls is loaded and initialised at
 * start, one TLS session already exists, the main thread then waits in a
 * system call (ppoll by default, as QEMU's main loop does) until a byte
 * arrives on a FIFO, while other threads keep running. That wait is where
 * rekeyguard-inject borrows the main thread. After the wait the program
 * checks that the wait itself was not disturbed (no EINTR where the kernel
 * restarts, every register and vector register intact with --wait asm-*),
 * reports how long a ticking thread was ever held up, and then runs the
 * full-duplex key-update race on NEW sessions: it fails without the
 * library and passes once the library was injected during the wait. The
 * session made before the wait must still work and stay unguarded.
 *
 *   rg-inject-target --go FIFO [--wait MODE] [--seconds S] [--no-tls]
 *                    [--thread-name NAME] [--custom] [--delay S]
 *                    [--hold-loader S]
 *
 * --wait: ppoll (default), ppoll-timeout, ppoll-mask, poll, read, epoll, nanosleep
 * (--delay S, no FIFO), spin (never in a system call), asm-ppoll, asm-read,
 * asm-nanosleep (raw syscall with every preserved register checked).
 * --thread-name: an idle thread with that name (e.g. live_migration).
 * --custom: the race over QEMU-like custom push/pull callbacks.
 * --hold-loader S: a thread holds the dynamic loader's lock for S seconds.
 * --deny-exec-mmap: a seccomp filter makes anonymous PROT_EXEC mmap fail
 * (EPERM), like SELinux without execmem.
 * --no-keyupdates: the race's senders make no key updates themselves (use
 * with REKEYGUARD_PROVOKE_REKEY in the environment: the library makes them).
 *
 * Output: "READY pid=N" on stdout once waiting; then "WAIT ..." and the last
 * line "RESULT rg-inject-target PASS|FAIL key=value ...". Exit status: 0
 * pass, 1 fail, 2 usage or set-up error, 4 watchdog timeout.
 */
#include "../harness.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_RECORD 16384

static struct {
	const char *go;
	const char *wait;
	double seconds;
	double delay;
	int no_tls;
	int custom;
	double hold_loader;
	int deny_exec_mmap;
	int no_keyupdates;
	const char *thread_name;
} opt = { .wait = "ppoll", .seconds = 2.0, .delay = 3.0 };

static char result_extra[1024];

static void add_result(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void add_result(const char *fmt, ...)
{
	size_t used = strlen(result_extra);
	va_list ap;
	va_start(ap, fmt);
	if (used > 0 && used < sizeof result_extra - 1)
		result_extra[used++] = ' ';
	vsnprintf(result_extra + used, sizeof result_extra - used, fmt, ap);
	va_end(ap);
}

static void finish(int pass, const char *reason)
{
	printf("RESULT rg-inject-target %s%s%s %s\n", pass ? "PASS" : "FAIL",
	       reason ? " reason=" : "", reason ? reason : "", result_extra);
	fflush(stdout);
	_exit(pass ? 0 : 1);
}

/* ------------------------------------------------------------ the ticker */

/* Sleeps 200 us at a time and records the longest interval between two
 * ticks while the main thread waits: if the injector stopped every thread,
 * that interval would include the whole pause. */
static atomic_int ticker_window;        /* 1 while the main thread waits */
static atomic_int ticker_stop;
static double ticker_max_gap, ticker_last;
static unsigned long ticker_ticks;

static void *ticker_thread(void *arg)
{
	(void)arg;
	prctl(PR_SET_NAME, "ticker");
	ticker_last = rg_now();
	while (!atomic_load(&ticker_stop)) {
		struct timespec ts = { 0, 200000 };
		nanosleep(&ts, NULL);
		double now = rg_now();
		if (atomic_load(&ticker_window)) {
			if (now - ticker_last > ticker_max_gap)
				ticker_max_gap = now - ticker_last;
			ticker_ticks++;
		}
		ticker_last = now;
	}
	return NULL;
}

/* --deny-exec-mmap: anonymous executable mappings fail with EPERM, as
 * under SELinux without execmem; mapping a library's file still works. */
static void deny_exec_mmap(void)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 6),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mmap, 0, 4),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 2),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[3])),
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, MAP_ANONYMOUS, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
	};
	struct sock_fprog prog = { sizeof filter / sizeof filter[0], filter };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
		perror("rg-inject-target: seccomp");
		exit(2);
	}
}

static void *named_thread(void *arg)
{
	prctl(PR_SET_NAME, (const char *)arg);
	for (;;)
		pause();
	return NULL;
}

/* ------------------------------------------------------------ register check */

/*
 * long rg_syscall_checked(long nr, long a1, long a2, long a3, long a4,
 *                         long a5, uint64_t gpr_out[12], void *vec_out)
 *
 * Loads known patterns into every register the kernel preserves across a
 * system call (rbx, rbp, r12-r15, the six argument registers, and xmm0-15
 * or ymm0-15), makes the system call with the `syscall` instruction, and
 * stores what came back. Whatever borrows this thread in the middle of the
 * call must give every one of them back.
 */
#define CHECK_GPR_PATTERN(i) (0x5a5a000000000000ull | ((uint64_t)(i) << 32) | 0x1234u)
__asm__(
	"	.text\n"
	"	.p2align 4\n"
	"	.globl rg_syscall_checked_impl\n"
	"	.hidden rg_syscall_checked_impl\n"
	"	.type rg_syscall_checked_impl, @function\n"
	"rg_syscall_checked_impl:\n"
	/* rdi nr, rsi a1, rdx a2, rcx a3, r8 a4, r9 a5, 8(%rsp) gpr_out,
	 * 16(%rsp) vec_out, 24(%rsp) use_avx */
	"	push %rbx\n	push %rbp\n	push %r12\n	push %r13\n	push %r14\n	push %r15\n"
	/* now gpr_out at 56(%rsp), vec_out at 64(%rsp), use_avx at 72(%rsp) */
	"	lea rg_vec_pattern(%rip), %rax\n"
	"	cmpq $0, 72(%rsp)\n"
	"	je 1f\n"
	"	vmovdqu 0(%rax), %ymm0\n	vmovdqu 32(%rax), %ymm1\n	vmovdqu 64(%rax), %ymm2\n"
	"	vmovdqu 96(%rax), %ymm3\n	vmovdqu 128(%rax), %ymm4\n	vmovdqu 160(%rax), %ymm5\n"
	"	vmovdqu 192(%rax), %ymm6\n	vmovdqu 224(%rax), %ymm7\n	vmovdqu 256(%rax), %ymm8\n"
	"	vmovdqu 288(%rax), %ymm9\n	vmovdqu 320(%rax), %ymm10\n	vmovdqu 352(%rax), %ymm11\n"
	"	vmovdqu 384(%rax), %ymm12\n	vmovdqu 416(%rax), %ymm13\n	vmovdqu 448(%rax), %ymm14\n"
	"	vmovdqu 480(%rax), %ymm15\n"
	"	jmp 2f\n"
	"1:	movdqu 0(%rax), %xmm0\n	movdqu 32(%rax), %xmm1\n	movdqu 64(%rax), %xmm2\n"
	"	movdqu 96(%rax), %xmm3\n	movdqu 128(%rax), %xmm4\n	movdqu 160(%rax), %xmm5\n"
	"	movdqu 192(%rax), %xmm6\n	movdqu 224(%rax), %xmm7\n	movdqu 256(%rax), %xmm8\n"
	"	movdqu 288(%rax), %xmm9\n	movdqu 320(%rax), %xmm10\n	movdqu 352(%rax), %xmm11\n"
	"	movdqu 384(%rax), %xmm12\n	movdqu 416(%rax), %xmm13\n	movdqu 448(%rax), %xmm14\n"
	"	movdqu 480(%rax), %xmm15\n"
	"2:	mov %rdi, %rax\n"
	"	mov %rsi, %rdi\n	mov %rdx, %rsi\n	mov %rcx, %rdx\n	mov %r8, %r10\n	mov %r9, %r8\n"
	"	movabs $0x5a5a000b00001234, %r9\n"
	"	movabs $0x5a5a000000001234, %rbx\n"
	"	movabs $0x5a5a000100001234, %rbp\n"
	"	movabs $0x5a5a000200001234, %r12\n"
	"	movabs $0x5a5a000300001234, %r13\n"
	"	movabs $0x5a5a000400001234, %r14\n"
	"	movabs $0x5a5a000500001234, %r15\n"
	"	syscall\n"
	"	push %rax\n"
	"	mov 64(%rsp), %rax\n"          /* gpr_out (one more push) */
	"	mov %rbx, 0(%rax)\n	mov %rbp, 8(%rax)\n	mov %r12, 16(%rax)\n	mov %r13, 24(%rax)\n"
	"	mov %r14, 32(%rax)\n	mov %r15, 40(%rax)\n	mov %rdi, 48(%rax)\n	mov %rsi, 56(%rax)\n"
	"	mov %rdx, 64(%rax)\n	mov %r10, 72(%rax)\n	mov %r8, 80(%rax)\n	mov %r9, 88(%rax)\n"
	"	mov 72(%rsp), %rax\n"          /* vec_out */
	"	cmpq $0, 80(%rsp)\n"
	"	je 3f\n"
	"	vmovdqu %ymm0, 0(%rax)\n	vmovdqu %ymm1, 32(%rax)\n	vmovdqu %ymm2, 64(%rax)\n"
	"	vmovdqu %ymm3, 96(%rax)\n	vmovdqu %ymm4, 128(%rax)\n	vmovdqu %ymm5, 160(%rax)\n"
	"	vmovdqu %ymm6, 192(%rax)\n	vmovdqu %ymm7, 224(%rax)\n	vmovdqu %ymm8, 256(%rax)\n"
	"	vmovdqu %ymm9, 288(%rax)\n	vmovdqu %ymm10, 320(%rax)\n	vmovdqu %ymm11, 352(%rax)\n"
	"	vmovdqu %ymm12, 384(%rax)\n	vmovdqu %ymm13, 416(%rax)\n	vmovdqu %ymm14, 448(%rax)\n"
	"	vmovdqu %ymm15, 480(%rax)\n"
	"	vzeroupper\n"
	"	jmp 4f\n"
	"3:	movdqu %xmm0, 0(%rax)\n	movdqu %xmm1, 32(%rax)\n	movdqu %xmm2, 64(%rax)\n"
	"	movdqu %xmm3, 96(%rax)\n	movdqu %xmm4, 128(%rax)\n	movdqu %xmm5, 160(%rax)\n"
	"	movdqu %xmm6, 192(%rax)\n	movdqu %xmm7, 224(%rax)\n	movdqu %xmm8, 256(%rax)\n"
	"	movdqu %xmm9, 288(%rax)\n	movdqu %xmm10, 320(%rax)\n	movdqu %xmm11, 352(%rax)\n"
	"	movdqu %xmm12, 384(%rax)\n	movdqu %xmm13, 416(%rax)\n	movdqu %xmm14, 448(%rax)\n"
	"	movdqu %xmm15, 480(%rax)\n"
	"4:	pop %rax\n"
	"	pop %r15\n	pop %r14\n	pop %r13\n	pop %r12\n	pop %rbp\n	pop %rbx\n"
	"	ret\n"
	"	.size rg_syscall_checked_impl, .-rg_syscall_checked_impl\n"
	"	.section .rodata\n"
	"	.p2align 5\n"
	"rg_vec_pattern:\n"
	"	.rept 512\n"
	"	.byte ((. - rg_vec_pattern) * 7 + 3) & 0xff\n"
	"	.endr\n"
	"	.text\n");

long rg_syscall_checked_impl(long nr, long a1, long a2, long a3, long a4, long a5,
			     uint64_t *gpr_out, unsigned char *vec_out, long use_avx);

/* Compares what came back; returns NULL or a description of the damage. */
static const char *check_registers(const long args[5], const uint64_t gpr[12],
				   const unsigned char vec[512], int use_avx, char *buf, size_t len)
{
	static const char *const names[12] = { "rbx", "rbp", "r12", "r13", "r14", "r15",
						"rdi", "rsi", "rdx", "r10", "r8", "r9" };
	uint64_t expect[12] = {
		CHECK_GPR_PATTERN(0), CHECK_GPR_PATTERN(1), CHECK_GPR_PATTERN(2),
		CHECK_GPR_PATTERN(3), CHECK_GPR_PATTERN(4), CHECK_GPR_PATTERN(5),
		(uint64_t)args[0], (uint64_t)args[1], (uint64_t)args[2], (uint64_t)args[3],
		(uint64_t)args[4], CHECK_GPR_PATTERN(11),
	};
	for (int i = 0; i < 12; i++) {
		if (gpr[i] != expect[i]) {
			snprintf(buf, len, "%s=0x%" PRIx64 "(expected 0x%" PRIx64 ")", names[i], gpr[i],
				 expect[i]);
			return buf;
		}
	}
	for (int r = 0; r < 16; r++) {
		for (int i = 0; i < (use_avx ? 32 : 16); i++) {
			unsigned char want = (unsigned char)((r * 32 + i) * 7 + 3);
			if (vec[r * 32 + i] != want) {
				snprintf(buf, len, "%s%d byte %d=0x%02x(expected 0x%02x)",
					 use_avx ? "ymm" : "xmm", r, i, vec[r * 32 + i], want);
				return buf;
			}
		}
	}
	return NULL;
}

/* ------------------------------------------------------------ the wait */

static int go_fd = -1;
static atomic_int go_seen;

static void *go_reader_thread(void *arg)
{
	(void)arg;
	char byte;
	while (read(go_fd, &byte, 1) < 0 && errno == EINTR)
		;
	atomic_store(&go_seen, 1);
	return NULL;
}

/* --hold-loader S: a thread sits in a dl_iterate_phdr callback for S
 * seconds, holding the dynamic loader's write lock, so a dlopen in the
 * main thread waits that long. */
static int hold_loader_cb(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)info;
	(void)size;
	double s = *(double *)data;
	struct timespec ts = { (time_t)s, (long)((s - (time_t)s) * 1e9) };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
	return 1;
}

static void *hold_loader_thread(void *arg)
{
	prctl(PR_SET_NAME, "hold-loader");
	dl_iterate_phdr(hold_loader_cb, arg);
	return NULL;
}

static int wait_for_go(void)
{
	const char *m = opt.wait;
	int eintr = 0;
	double t0 = rg_now();
	char byte;
	if (strcmp(m, "ppoll") == 0) {
		struct pollfd p = { go_fd, POLLIN, 0 };
		int r = ppoll(&p, 1, NULL, NULL);
		if (r != 1) {
			add_result("wait_errno=%d", errno);
			return -1;
		}
	} else if (strcmp(m, "ppoll-mask") == 0) {
		/* a temporary mask during the wait, as pselect-style loops use */
		struct pollfd p = { go_fd, POLLIN, 0 };
		sigset_t during;
		sigemptyset(&during);
		sigaddset(&during, SIGURG);
		sigaddset(&during, SIGWINCH);
		sigaddset(&during, SIGUSR1);
		int r = ppoll(&p, 1, NULL, &during);
		if (r != 1) {
			add_result("wait_errno=%d", errno);
			return -1;
		}
	} else if (strcmp(m, "ppoll-timeout") == 0) {
		/* a long timeout that must keep counting down, not start over */
		struct pollfd p = { go_fd, POLLIN, 0 };
		struct timespec ts = { 600, 0 };
		int r = ppoll(&p, 1, &ts, NULL);
		if (r != 1) {
			add_result("wait_errno=%d", errno);
			return -1;
		}
	} else if (strcmp(m, "poll") == 0) {
		struct pollfd p = { go_fd, POLLIN, 0 };
		if (poll(&p, 1, -1) != 1) {
			add_result("wait_errno=%d", errno);
			return -1;
		}
	} else if (strcmp(m, "read") == 0) {
		if (read(go_fd, &byte, 1) != 1) {
			add_result("wait_errno=%d", errno);
			return -1;
		}
	} else if (strcmp(m, "epoll") == 0) {
		/* epoll_wait returns EINTR after any ptrace stop (man 7 signal):
		 * the program must retry, as real event loops do */
		int ep = epoll_create1(0);
		struct epoll_event ev = { .events = EPOLLIN };
		epoll_ctl(ep, EPOLL_CTL_ADD, go_fd, &ev);
		for (;;) {
			int r = epoll_wait(ep, &ev, 1, -1);
			if (r == 1)
				break;
			if (r < 0 && errno == EINTR) {
				eintr++;
				continue;
			}
			add_result("wait_errno=%d", errno);
			return -1;
		}
		close(ep);
	} else if (strcmp(m, "nanosleep") == 0) {
		struct timespec ts = { (time_t)opt.delay, (long)((opt.delay - (time_t)opt.delay) * 1e9) };
		int r = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
		if (r != 0) {
			add_result("wait_errno=%d", r);
			return -1;
		}
		if (rg_now() - t0 < opt.delay - 0.001) {
			add_result("slept_s=%.3f", rg_now() - t0);
			return -1;
		}
	} else if (strcmp(m, "spin") == 0) {
		/* never in a system call: no safe point for the injector */
		pthread_t reader;
		pthread_create(&reader, NULL, go_reader_thread, NULL);
		while (!atomic_load(&go_seen))
			__asm__ volatile("pause");
		pthread_join(reader, NULL);
	} else if (strncmp(m, "asm-", 4) == 0) {
		uint64_t gpr[12];
		unsigned char vec[512];
		long args[5] = { 0, 0, 0, 0, 0 }, nr;
		struct pollfd p = { go_fd, POLLIN, 0 };
		struct timespec ts = { (time_t)opt.delay, 0 };
		if (strcmp(m, "asm-ppoll") == 0) {
			nr = SYS_ppoll;
			args[0] = (long)&p, args[1] = 1;
		} else if (strcmp(m, "asm-read") == 0) {
			nr = SYS_read;
			args[0] = go_fd, args[1] = (long)&byte, args[2] = 1;
		} else if (strcmp(m, "asm-nanosleep") == 0) {
			nr = SYS_clock_nanosleep;
			args[0] = CLOCK_MONOTONIC, args[2] = (long)&ts;
		} else {
			fprintf(stderr, "rg-inject-target: unknown --wait %s\n", m);
			exit(2);
		}
		int use_avx = __builtin_cpu_supports("avx");
		long r = rg_syscall_checked_impl(nr, args[0], args[1], args[2], args[3], args[4], gpr,
						 vec, use_avx);
		char buf[160];
		const char *damage = check_registers(args, gpr, vec, use_avx, buf, sizeof buf);
		add_result("regs=%s vec=%s", damage ? "damaged" : "intact", use_avx ? "ymm" : "xmm");
		if (damage != NULL) {
			add_result("damage=%s", damage);
			return -1;
		}
		long want = nr == SYS_clock_nanosleep ? 0 : 1;
		if (r != want) {
			add_result("syscall_ret=%ld", r);
			return -1;
		}
		if (nr == SYS_clock_nanosleep && rg_now() - t0 < opt.delay - 0.001) {
			add_result("slept_s=%.3f", rg_now() - t0);
			return -1;
		}
	} else {
		fprintf(stderr, "rg-inject-target: unknown --wait %s\n", m);
		exit(2);
	}
	if (eintr)
		add_result("eintr=%d", eintr);
	return 0;
}

/* ------------------------------------------------------------ the race */

struct stream {
	uint32_t id;
	atomic_uint_fast64_t total;     /* set before the last record is sent */
	atomic_int done;
};

struct worker {
	const char *who;
	gnutls_session_t session;
	struct stream *st;
	int sender;
	int ku_first_ms, ku_period_ms, ku_alternate;
	uint64_t seed;
	uint64_t bytes, key_updates;
};

static atomic_int failed;
static char fail_reason[256];
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;
static double t_start;

static void worker_fail(const struct worker *w, const char *what, int ret)
{
	pthread_mutex_lock(&fail_lock);
	if (!atomic_load(&failed)) {
		snprintf(fail_reason, sizeof fail_reason, "%s:%s:%s", w->who, what,
			 ret ? gnutls_strerror_name(ret) : "mismatch");
		atomic_store(&failed, 1);
	}
	pthread_mutex_unlock(&fail_lock);
}

static void *sender_thread(void *arg)
{
	struct worker *w = arg;
	unsigned char *buf = malloc(MAX_RECORD);
	uint64_t rng = w->seed, off = 0;
	double next_ku = w->ku_first_ms / 1e3;
	int peer = 0;
	while (!atomic_load(&failed)) {
		double el = rg_now() - t_start;
		size_t len = 1 + rg_rand(&rng) % MAX_RECORD;
		int last = el >= opt.seconds;
		if (last) {
			atomic_store(&w->st->total, off + len);
			atomic_store(&w->st->done, 1);
		}
		rg_pattern_fill(buf, len, w->st->id, off);
		size_t sent = 0;
		while (sent < len) {
			ssize_t r = gnutls_record_send(w->session, buf + sent, len - sent);
			if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
				continue;
			if (r < 0) {
				worker_fail(w, "send", (int)r);
				free(buf);
				return NULL;
			}
			sent += (size_t)r;
		}
		off += len;
		w->bytes = off;
		if (last)
			break;
		if (w->ku_period_ms > 0 && el >= next_ku) {
			int r = gnutls_session_key_update(w->session, peer ? GNUTLS_KU_PEER : 0);
			if (r < 0) {
				worker_fail(w, "key_update", r);
				break;
			}
			w->key_updates++;
			if (w->ku_alternate)
				peer = !peer;
			next_ku += w->ku_period_ms / 1e3;
		}
	}
	free(buf);
	return NULL;
}

static void *receiver_thread(void *arg)
{
	struct worker *w = arg;
	unsigned char *buf = malloc(2 * MAX_RECORD);
	uint64_t off = 0;
	while (!atomic_load(&failed)) {
		if (atomic_load(&w->st->done) && off == atomic_load(&w->st->total))
			break;
		ssize_t r = gnutls_record_recv(w->session, buf, 2 * MAX_RECORD);
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			continue;
		if (r <= 0) {
			worker_fail(w, "recv", r == 0 ? GNUTLS_E_PREMATURE_TERMINATION : (int)r);
			break;
		}
		if (rg_pattern_check(buf, (size_t)r, w->st->id, off) >= 0) {
			worker_fail(w, "data", 0);
			break;
		}
		off += (size_t)r;
		w->bytes = off;
	}
	free(buf);
	return NULL;
}

/* The library, however it came: preloaded (global scope) or injected
 * with dlopen(RTLD_LOCAL), which RTLD_DEFAULT does not see. */
static int find_library_cb(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	if (info->dlpi_name != NULL && strstr(info->dlpi_name, "librekeyguard") != NULL) {
		snprintf(data, 4096, "%s", info->dlpi_name);
		return 1;
	}
	return 0;
}

static void *library_symbol(const char *name)
{
	char path[4096] = "";
	if (!dl_iterate_phdr(find_library_cb, path))
		return NULL;
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL)
		return NULL;
	void *sym = dlsym(h, name);
	dlclose(h);
	return sym;
}

static int library_loaded(void)
{
	return library_symbol("rekeyguard_version") != NULL;
}

static unsigned long sessions_guarded(void)
{
	union {
		void *sym;
		unsigned long (*fn)(void);
	} u = { library_symbol("rekeyguard_sessions_guarded") };
	return u.sym ? u.fn() : 0;
}

static void echo_old(struct rg_pair *p, const char *when)
{
	char out[64] = "made before the library", in[64];
	ssize_t n = gnutls_record_send(p->client, out, sizeof out);
	ssize_t m = n == (ssize_t)sizeof out ? gnutls_record_recv(p->server, in, sizeof in) : n;
	if (m != (ssize_t)sizeof out || memcmp(in, out, sizeof out) != 0) {
		add_result("old_session=%s", when);
		finish(0, "old-session-broken");
	}
}

static void run_race(void)
{
	struct rg_pair p;
	int err = opt.custom ? rg_pair_custom(&p, 0, NULL) : rg_pair_fd(&p, 0, NULL);
	if (err != 0) {
		fprintf(stderr, "rg-inject-target: handshake: %s\n", gnutls_strerror(err));
		finish(0, "handshake");
	}
	struct stream streams[2] = { { .id = 1 }, { .id = 2 } };
	struct worker w[4] = {
		{ "client-send", p.client, &streams[0], 1, 50, 300, 1, 11, 0, 0 },
		{ "server-send", p.server, &streams[1], 1, 100, 400, 0, 22, 0, 0 },
		{ "server-recv", p.server, &streams[0], 0, 0, 0, 0, 0, 0, 0 },
		{ "client-recv", p.client, &streams[1], 0, 0, 0, 0, 0, 0, 0 },
	};
	if (opt.no_keyupdates)
		w[0].ku_period_ms = w[1].ku_period_ms = 0;
	pthread_t th[4];
	int joined[4] = { 0, 0, 0, 0 };
	t_start = rg_now();
	for (int i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, w[i].sender ? sender_thread : receiver_thread, &w[i]);
	/* a failed stream can leave a receiver blocked for ever: poll, then
	 * report without joining */
	for (;;) {
		struct timespec ts = { 0, 20000000 };
		nanosleep(&ts, NULL);
		if (atomic_load(&failed))
			break;
		int running = 0;
		for (int i = 0; i < 4; i++) {
			if (!joined[i] && pthread_tryjoin_np(th[i], NULL) == 0)
				joined[i] = 1;
			running += !joined[i];
		}
		if (running == 0)
			break;
	}
	add_result("key_updates=%" PRIu64 "+%" PRIu64 " bytes=%" PRIu64 "+%" PRIu64,
		   w[0].key_updates, w[1].key_updates, w[2].bytes, w[3].bytes);
	add_result("guarded_sessions=%lu", sessions_guarded());
	if (atomic_load(&failed)) {
		add_result("race=%s", fail_reason);
		finish(0, "race");
	}
}

int main(int argc, char **argv)
{
	enum { O_GO = 256, O_WAIT, O_SECONDS, O_NO_TLS, O_NAME, O_CUSTOM, O_DELAY, O_HOLD, O_DENY, O_NO_KU };
	static const struct option longopts[] = {
		{ "go", required_argument, NULL, O_GO },
		{ "wait", required_argument, NULL, O_WAIT },
		{ "seconds", required_argument, NULL, O_SECONDS },
		{ "delay", required_argument, NULL, O_DELAY },
		{ "no-tls", no_argument, NULL, O_NO_TLS },
		{ "thread-name", required_argument, NULL, O_NAME },
		{ "custom", no_argument, NULL, O_CUSTOM },
		{ "hold-loader", required_argument, NULL, O_HOLD },
		{ "deny-exec-mmap", no_argument, NULL, O_DENY },
		{ "no-keyupdates", no_argument, NULL, O_NO_KU },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case O_GO: opt.go = optarg; break;
		case O_WAIT: opt.wait = optarg; break;
		case O_SECONDS: opt.seconds = atof(optarg); break;
		case O_DELAY: opt.delay = atof(optarg); break;
		case O_NO_TLS: opt.no_tls = 1; break;
		case O_NAME: opt.thread_name = optarg; break;
		case O_CUSTOM: opt.custom = 1; break;
		case O_HOLD: opt.hold_loader = atof(optarg); break;
		case O_DENY: opt.deny_exec_mmap = 1; break;
		case O_NO_KU: opt.no_keyupdates = 1; break;
		default:
			fprintf(stderr, "usage: see the comment at the top of rg-inject-target.c\n");
			return 2;
		}
	}
	int needs_go = strstr(opt.wait, "nanosleep") == NULL;
	if (needs_go && opt.go == NULL) {
		fprintf(stderr, "rg-inject-target: --go FIFO is required for --wait %s\n", opt.wait);
		return 2;
	}
	if (opt.go != NULL && (go_fd = open(opt.go, O_RDWR | O_CLOEXEC)) < 0) {
		perror("rg-inject-target: open --go");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	int preloaded = library_loaded();
	rg_init();
	struct rg_pair old;
	if (!opt.no_tls && rg_pair_fd(&old, 0, NULL) != 0) {
		fprintf(stderr, "rg-inject-target: handshake of the early session failed\n");
		return 2;
	}
	if (!opt.no_tls)
		echo_old(&old, "before");

	pthread_t ticker, named;
	pthread_create(&ticker, NULL, ticker_thread, NULL);
	if (opt.thread_name)
		pthread_create(&named, NULL, named_thread, (void *)opt.thread_name);

	if (opt.deny_exec_mmap)
		deny_exec_mmap();
	if (opt.hold_loader > 0) {
		pthread_t holder;
		pthread_create(&holder, NULL, hold_loader_thread, &opt.hold_loader);
		struct timespec ts = { 0, 50000000 };
		nanosleep(&ts, NULL);   /* let it take the lock */
	}
	atomic_store(&ticker_window, 1);
	printf("READY pid=%d wait=%s\n", (int)getpid(), opt.wait);
	fflush(stdout);
	double t0 = rg_now();
	sigset_t mask_before, mask_after;
	pthread_sigmask(SIG_SETMASK, NULL, &mask_before);
	int wait_ok = wait_for_go() == 0;
	pthread_sigmask(SIG_SETMASK, NULL, &mask_after);
	int mask_same = 1;
	for (int sig = 1; sig < 65; sig++)
		if (sigismember(&mask_before, sig) != sigismember(&mask_after, sig))
			mask_same = 0;
	add_result("sigmask=%s", mask_same ? "intact" : "changed");
	if (!mask_same)
		wait_ok = 0;
	atomic_store(&ticker_window, 0);
	double waited = rg_now() - t0;
	add_result("wait=%s wait_ok=%d waited_s=%.3f ticker_max_gap_ms=%.2f ticker_ticks=%lu "
		   "library=%s", opt.wait, wait_ok, waited, ticker_max_gap * 1e3, ticker_ticks,
		   library_loaded() ? "loaded" : "absent");
	printf("WAIT %s\n", result_extra);
	fflush(stdout);
	if (!wait_ok)
		finish(0, "wait-disturbed");
	atomic_store(&ticker_stop, 1);
	pthread_join(ticker, NULL);
	if (opt.no_tls)
		finish(1, NULL);

	rg_watchdog("rg-inject-target", (unsigned)(opt.seconds * 4 + 20));
	run_race();
	echo_old(&old, "after");
	/* the session made before the library must not have been guarded:
	 * only the race's two sessions count */
	if (!preloaded && library_loaded() && sessions_guarded() != 2)
		finish(0, "old-session-guarded");
	finish(1, NULL);
	return 0;
}
