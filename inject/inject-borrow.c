/*
 * inject-borrow.c — borrowing the target's main thread for one library load.
 *
 * Owns: the ptrace conversation with ONE thread (tid == PID); no other
 * thread of the target is ever attached or stopped. The steps:
 *
 *   1. PTRACE_SEIZE, then PTRACE_INTERRUPT until the thread is caught at a
 *      safe point: right after (or blocked in) a waiting syscall such as
 *      ppoll, where it holds none of libc's locks (malloc, the dynamic
 *      loader). Anywhere else it is resumed at once and tried again later.
 *   2. Save its registers (PTRACE_GETREGS) and FP/vector state
 *      (PTRACE_GETREGSET NT_X86_XSTATE), and write a signal frame holding
 *      exactly that state just below its red zone.
 *   3. Call the libc's mmap for one page; the call "returns" into the
 *      sigreturn instruction pair of that libc (__restore_rt), whose frame
 *      is the one above.
 *   4. Write a small trampoline into the page and run it: dlopen(lib,
 *      RTLD_NOW), dlsym(h, "rekeyguard_inject_activate"), call it, store the
 *      results on the stack, tgkill itself a signal nobody handles (SIGURG:
 *      the injector's cue), munmap the page and return into the sigreturn
 *      pair.
 *   5. At that signal the injector reads the results, lets the munmap run,
 *      and when it returns sets the saved registers and FP state back
 *      itself (exactly, including restartable system calls) and detaches.
 *
 * Why the signal frame: if the injector dies at any moment (SIGKILL, OOM,
 * a crash), the kernel detaches it and the thread carries on by itself to
 * the rt_sigreturn, which restores the state saved in step 2. Nothing ever
 * returns to a faulting address, so a dead injector does not kill the
 * target. With the injector alive the restore is done with ptrace, which
 * is exact even for system calls restarted through restart_syscall (a
 * sigreturn turns those into EINTR).
 *
 * Invariants: the injector writes only below the borrowed thread's red zone
 * and into the page it had mapped, and puts the stack bytes back; the page
 * is unmapped again; signals meant for the thread while it is borrowed are
 * delivered to it (its handlers run, as they would at any time); SIGINT,
 * SIGTERM, SIGHUP, SIGQUIT and SIGTSTP to the injector wait until the
 * thread is released. PTRACE_O_TRACESYSGOOD is set so that a syscall-stop
 * left behind by a dying injector resumes without a stray SIGTRAP, and no
 * step ever single-steps (a pending SIGTRAP would kill the target).
 */
#define _GNU_SOURCE
#include "inject.h"

#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/ptrace.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#ifndef NT_PRFPREG
#define NT_PRFPREG 2
#endif

/* Kernel-internal restart codes a syscall-stop can show in rax. */
#define KERNEL_ERESTARTSYS 512
#define KERNEL_ERESTARTNOINTR 513
#define KERNEL_ERESTARTNOHAND 514
#define KERNEL_ERESTART_RESTARTBLOCK 516

#define RG_FP_XSTATE_MAGIC1 0x46505853u
#define RG_FP_XSTATE_MAGIC2 0x46505845u
#define XFEATURE_MASK_XTILE_DATA (1ull << 18)
#define UC_FP_XSTATE 0x1
#define UC_SIGCONTEXT_SS 0x2
#define UC_STRICT_RESTORE_SS 0x4

#define RED_ZONE 128
#define XSTATE_BUF_MAX (64 * 1024)
#define TRAMP_PAGE_SIZE 8192        /* code, data, library path */

/* ------------------------------------------------------------ the trampoline */

/*
 * Copied into the page, never run here. rbx points at the data block
 * (filled by the injector, see struct tramp_data), r12 at the results on
 * the target's stack. Entered with rsp 16-byte aligned, so each call sees
 * the ABI's alignment.
 */
__asm__(
	"	.section .rodata.rekeyguard_trampoline,\"a\"\n"
	"	.balign 64\n"
	"	.globl inj_tramp_start\n"
	"	.hidden inj_tramp_start\n"
	"inj_tramp_start:\n"
	"	cld\n"
	"	lea inj_tramp_data(%rip), %rbx\n"
	"	mov 0x00(%rbx), %r12\n"           /* results */
	"	mov 0x08(%rbx), %rdi\n"           /* library path */
	"	mov $2, %esi\n"                   /* RTLD_NOW */
	"	call *0x10(%rbx)\n"               /* dlopen */
	"	mov %rax, 0x00(%r12)\n"
	"	test %rax, %rax\n"
	"	jz 1f\n"
	"	mov %rax, %rdi\n"
	"	mov 0x18(%rbx), %rsi\n"           /* "rekeyguard_inject_activate" */
	"	call *0x20(%rbx)\n"               /* dlsym */
	"	mov %rax, 0x08(%r12)\n"
	"	test %rax, %rax\n"
	"	jz 2f\n"
	"	call *%rax\n"
	"	mov %rax, 0x10(%r12)\n"
	"	jmp 2f\n"
	"1:	call *0x28(%rbx)\n"               /* dlerror */
	"	mov %rax, 0x18(%r12)\n"
	"2:	movq $1, 0x20(%r12)\n"           /* done */
	"	mov $39, %eax\n"                  /* getpid: its own PID namespace's view */
	"	syscall\n"
	"	mov %rax, %rdi\n"
	"	mov %rax, %rsi\n"                 /* the main thread: tid == tgid */
	"	mov $234, %eax\n"                 /* tgkill(tgid, tid, signal) */
	"	mov 0x38(%rbx), %rdx\n"
	"	syscall\n"
	"	.globl inj_tramp_cue\n"
	"	.hidden inj_tramp_cue\n"
	"inj_tramp_cue:\n"                      /* the injector's stop */
	"	mov 0x40(%rbx), %rsp\n"           /* the frame's return slot */
	"	mov 0x48(%rbx), %rdi\n"           /* this page */
	"	mov 0x50(%rbx), %rsi\n"
	"	jmp *0x58(%rbx)\n"                /* munmap; returns into sigreturn */
	"	.balign 64\n"
	"	.globl inj_tramp_data\n"
	"	.hidden inj_tramp_data\n"
	"inj_tramp_data:\n"
	"	.fill 0x80, 1, 0\n"
	"	.globl inj_tramp_end\n"
	"	.hidden inj_tramp_end\n"
	"inj_tramp_end:\n"
	"	.previous\n");

extern const unsigned char inj_tramp_start[], inj_tramp_cue[], inj_tramp_data[], inj_tramp_end[];

struct tramp_data {                     /* at inj_tramp_data, offsets as above */
	uint64_t results;               /* 0x00 */
	uint64_t path;                  /* 0x08 */
	uint64_t fn_dlopen;             /* 0x10 */
	uint64_t symbol;                /* 0x18 */
	uint64_t fn_dlsym;              /* 0x20 */
	uint64_t fn_dlerror;            /* 0x28 */
	uint64_t spare;                 /* 0x30 */
	uint64_t signo;                 /* 0x38 */
	uint64_t frame;                 /* 0x40 */
	uint64_t page;                  /* 0x48 */
	uint64_t page_len;              /* 0x50 */
	uint64_t fn_munmap;             /* 0x58 */
	char symbol_name[32];           /* 0x60 */
};
_Static_assert(sizeof(struct tramp_data) == 0x80, "trampoline data layout");

struct tramp_results {                  /* on the target's stack */
	uint64_t handle;
	uint64_t activate;
	uint64_t activate_ret;
	uint64_t dlerror;
	uint64_t done;
	uint64_t pad[3];
};

/* ------------------------------------------------------------ the signal frame */

/* The kernel's x86-64 struct ucontext (uapi asm-generic/ucontext.h with
 * the 64-bit struct sigcontext), which rt_sigreturn reads at rsp. */
struct kernel_sigcontext {
	uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
	uint64_t rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags;
	uint16_t cs, gs, fs, ss;
	uint64_t err, trapno, oldmask, cr2;
	uint64_t fpstate;
	uint64_t reserved1[8];
};
struct kernel_ucontext {
	uint64_t uc_flags;
	uint64_t uc_link;
	struct {
		uint64_t ss_sp;
		int32_t ss_flags;
		int32_t pad;
		uint64_t ss_size;
	} uc_stack;
	struct kernel_sigcontext uc_mcontext;
	uint64_t uc_sigmask;
};
_Static_assert(sizeof(struct kernel_sigcontext) == 256, "sigcontext layout");
_Static_assert(sizeof(struct kernel_ucontext) == 304, "ucontext layout");

struct fpx_sw_bytes {                   /* the xsave area's software bytes (464) */
	uint32_t magic1;
	uint32_t extended_size;
	uint64_t xfeatures;
	uint32_t xstate_size;
	uint32_t padding[7];
};

/* Where things go on the borrowed thread's stack (addresses). */
struct stack_layout {
	uint64_t top;                   /* end of what we write: below the red zone */
	uint64_t fpstate;               /* 64-byte aligned */
	uint64_t results;
	uint64_t uc;                    /* rsp at rt_sigreturn */
	uint64_t frame;                 /* = uc - 8: return slot holding the gadget */
	uint64_t call_rsp;              /* the trampoline's stack, 16-byte aligned */
};

/* ------------------------------------------------------------ syscalls */

static const struct {
	long nr;
	const char *name;
	bool safe;
} known_syscalls[] = {
	{ SYS_read, "read", true },
	{ SYS_readv, "readv", true },
	{ SYS_recvfrom, "recvfrom", true },
	{ SYS_recvmsg, "recvmsg", true },
	{ SYS_poll, "poll", true },
	{ SYS_ppoll, "ppoll", true },
	{ SYS_select, "select", true },
	{ SYS_pselect6, "pselect6", true },
	{ SYS_epoll_wait, "epoll_wait", true },
	{ SYS_epoll_pwait, "epoll_pwait", true },
#ifdef SYS_epoll_pwait2
	{ SYS_epoll_pwait2, "epoll_pwait2", true },
#endif
	{ SYS_accept, "accept", true },
	{ SYS_accept4, "accept4", true },
	{ SYS_nanosleep, "nanosleep", true },
	{ SYS_clock_nanosleep, "clock_nanosleep", true },
	{ SYS_pause, "pause", true },
	{ SYS_rt_sigsuspend, "rt_sigsuspend", true },
	{ SYS_rt_sigtimedwait, "rt_sigtimedwait", true },
	{ SYS_wait4, "wait4", true },
	{ SYS_waitid, "waitid", true },
	{ SYS_futex, "futex", false },          /* may be waiting for a lock */
	{ SYS_write, "write", false },
	{ SYS_sendmsg, "sendmsg", false },
	{ SYS_mmap, "mmap", false },
	{ SYS_munmap, "munmap", false },
	{ SYS_mprotect, "mprotect", false },
	{ SYS_openat, "openat", false },
	{ SYS_ioctl, "ioctl", false },
	{ SYS_io_uring_enter, "io_uring_enter", false },
};

const char *inj_syscall_name(long nr)
{
	for (size_t i = 0; i < sizeof known_syscalls / sizeof known_syscalls[0]; i++)
		if (known_syscalls[i].nr == nr)
			return known_syscalls[i].name;
	return NULL;
}

bool inj_syscall_is_safe(long nr)
{
	for (size_t i = 0; i < sizeof known_syscalls / sizeof known_syscalls[0]; i++)
		if (known_syscalls[i].nr == nr)
			return known_syscalls[i].safe;
	return false;
}

/* ------------------------------------------------------------ the conversation */

struct borrow {
	const struct inj_call_plan *plan;
	struct inj_call_result *res;
	pid_t pid;
	int memfd;
	double deadline;
	double t_safe;                  /* caught at the safe point */
	bool caught_at_entry;           /* at a syscall-entry stop, not after it */
	double t_stopped;               /* the current stop began */
	int step;                       /* for plan->test_die_at */

	struct user_regs_struct saved, restore;
	unsigned char *xstate;
	size_t xstate_len;
	int xstate_note;                /* NT_X86_XSTATE or NT_PRFPREG */
	uint64_t sigmask;
	int signo;

	struct stack_layout at;
	unsigned char *stack_saved;     /* original bytes [at.frame, at.top) */
	uint64_t page;
};

static void note(struct borrow *b, const char *fmt, ...)
{
	if (b->res->message[0] != '\0')
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(b->res->message, sizeof b->res->message, fmt, ap);
	va_end(ap);
}

static void alarm_handler(int sig)
{
	(void)sig;
}

/* Tests only: die like an injector killed by the operator or the OOM killer. */
static void maybe_die(struct borrow *b, int step)
{
	b->step = step;
	if (b->plan->test_die_at == step) {
		fprintf(stderr, "rekeyguard-inject: test: dying at step %d\n", step);
		kill(getpid(), SIGKILL);
	}
}

enum stop_kind { STOP_EVENT, STOP_SYSCALL, STOP_SIGNAL, STOP_GONE, STOP_TIMEOUT, STOP_FAILED };

/* Waits for the next stop of the thread, at most until the deadline. */
static enum stop_kind wait_stop(struct borrow *b, int *sig, int *event)
{
	for (;;) {
		double left = b->deadline - inj_now();
		if (left <= 0)
			return STOP_TIMEOUT;
		struct itimerval it = { { 0, 0 }, { (time_t)left, (suseconds_t)((left - (time_t)left) * 1e6) + 1 } };
		setitimer(ITIMER_REAL, &it, NULL);
		int status;
		pid_t r = waitpid(b->pid, &status, __WALL);
		struct itimerval off = { { 0, 0 }, { 0, 0 } };
		setitimer(ITIMER_REAL, &off, NULL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno == ECHILD ? STOP_GONE : STOP_FAILED;
		if (WIFEXITED(status) || WIFSIGNALED(status)) {
			if (WIFSIGNALED(status))
				note(b, "the process was killed by signal %d (%s)", WTERMSIG(status),
				     strsignal(WTERMSIG(status)));
			else
				note(b, "the process exited with status %d", WEXITSTATUS(status));
			return STOP_GONE;
		}
		if (!WIFSTOPPED(status))
			continue;
		b->t_stopped = inj_now();
		b->res->stops++;
		*sig = WSTOPSIG(status);
		*event = status >> 16;
		if (*event == PTRACE_EVENT_STOP)
			return STOP_EVENT;
		if (*sig == (SIGTRAP | 0x80))
			return STOP_SYSCALL;
		return STOP_SIGNAL;
	}
}

/* Resumes the thread; time spent stopped counts once we have it. */
static bool resume(struct borrow *b, int request, int sig)
{
	if (b->t_safe > 0)
		b->res->stopped_ms += (inj_now() - b->t_stopped) * 1e3;
	if (ptrace(request, b->pid, 0, (void *)(long)sig) != 0) {
		note(b, "ptrace resume: %s", strerror(errno));
		return false;
	}
	return true;
}

static bool get_regs(struct borrow *b, struct user_regs_struct *regs)
{
	if (ptrace(PTRACE_GETREGS, b->pid, 0, regs) != 0) {
		note(b, "PTRACE_GETREGS: %s", strerror(errno));
		return false;
	}
	return true;
}

static bool set_regs(struct borrow *b, const struct user_regs_struct *regs)
{
	if (ptrace(PTRACE_SETREGS, b->pid, 0, regs) != 0) {
		note(b, "PTRACE_SETREGS: %s", strerror(errno));
		return false;
	}
	return true;
}

static bool syscall_info(struct borrow *b, struct ptrace_syscall_info *info)
{
	memset(info, 0, sizeof *info);
	long r = ptrace(PTRACE_GET_SYSCALL_INFO, b->pid, (void *)sizeof *info, info);
	if (r <= 0) {
		note(b, "PTRACE_GET_SYSCALL_INFO: %s", strerror(errno));
		return false;
	}
	return true;
}

/* ------------------------------------------------------------ step 1: a safe point */

static void describe_stop(const struct user_regs_struct *r, char *out, size_t len)
{
	long nr = (long)r->orig_rax;
	if (nr < 0) {
		snprintf(out, len, "running (not in a system call)");
		return;
	}
	const char *name = inj_syscall_name(nr);
	if (name != NULL)
		snprintf(out, len, "%s", name);
	else
		snprintf(out, len, "syscall %ld", nr);
}

static bool at_safe_point(struct borrow *b, const struct user_regs_struct *r)
{
	if ((long)r->orig_rax < 0 || !inj_syscall_is_safe((long)r->orig_rax))
		return false;
	/* the loader reads files holding its own lock: never inside ld.so */
	if (r->rip >= b->plan->ld_start && r->rip < b->plan->ld_end)
		return false;
	unsigned char insn[2];
	return proc_mem_read(b->memfd, r->rip - 2, insn, sizeof insn) == 0 && insn[0] == 0x0f &&
	       insn[1] == 0x05;        /* syscall, not int $0x80 */
}

/* Waits that install a temporary signal mask for their duration: at an
 * interrupt stop /proc shows that mask, not the thread's own, and the
 * kernel puts the thread's own back only on the way out of the stop. */
static bool has_temporary_mask(const struct user_regs_struct *r)
{
	switch ((long)r->orig_rax) {
	case SYS_ppoll:
		return r->r10 != 0;
	case SYS_pselect6:
		return r->r9 != 0;
	case SYS_epoll_pwait:
#ifdef SYS_epoll_pwait2
	case SYS_epoll_pwait2:
#endif
		return r->r8 != 0;
	case SYS_rt_sigsuspend:
	case SYS_rt_sigtimedwait:
		return true;
	}
	return false;
}

/* For such a wait: let the thread go on (the kernel restores its mask and
 * restarts the wait) and catch it at the entry of its next waiting system
 * call, normally the same one, before the temporary mask is installed. */
static enum inj_call_outcome settle_at_entry(struct borrow *b)
{
	double limit = inj_now() + b->plan->timeout_ms / 1e3;
	int sig = 0;
	for (;;) {
		b->deadline = limit;
		if (!resume(b, PTRACE_SYSCALL, sig))
			return INJ_CALL_ERROR;
		sig = 0;
		int event;
		enum stop_kind k = wait_stop(b, &sig, &event);
		if (k == STOP_GONE)
			return INJ_CALL_GONE;
		if (k == STOP_TIMEOUT || k == STOP_FAILED) {
			/* nothing was changed: stop it wherever it is and let go */
			ptrace(PTRACE_INTERRUPT, b->pid, 0, 0);
			b->deadline = inj_now() + 2.0;
			while ((k = wait_stop(b, &sig, &event)) == STOP_SIGNAL)
				ptrace(PTRACE_CONT, b->pid, 0, (void *)(long)sig);
			if (k != STOP_GONE)
				ptrace(PTRACE_DETACH, b->pid, 0, 0);
			return INJ_CALL_NOT_SAFE;
		}
		if (k == STOP_EVENT)
			continue;
		if (k == STOP_SIGNAL)
			continue;       /* delivered with the next resume */
		sig = 0;
		struct ptrace_syscall_info info;
		struct user_regs_struct r;
		if (!syscall_info(b, &info) || !get_regs(b, &r))
			return INJ_CALL_ERROR;
		if (info.op != PTRACE_SYSCALL_INFO_ENTRY || !at_safe_point(b, &r))
			continue;
		b->saved = r;
		b->caught_at_entry = true;
		describe_stop(&r, b->res->where, sizeof b->res->where);
		return INJ_CALL_DONE;
	}
}

/* Interrupts the thread until it is at a safe point. On success it is
 * stopped there and b->saved holds its registers. */
static enum inj_call_outcome catch_safe_point(struct borrow *b)
{
	struct inj_call_result *res = b->res;
	double start = inj_now(), backoff = 0.001;
	for (;;) {
		if (ptrace(PTRACE_INTERRUPT, b->pid, 0, 0) != 0) {
			note(b, "PTRACE_INTERRUPT: %s", strerror(errno));
			return errno == ESRCH ? INJ_CALL_GONE : INJ_CALL_ERROR;
		}
		int sig, event;
		b->deadline = inj_now() + 2.0;  /* an interrupt stops a thread at once */
		for (;;) {
			enum stop_kind k = wait_stop(b, &sig, &event);
			if (k == STOP_GONE)
				return INJ_CALL_GONE;
			if (k == STOP_TIMEOUT || k == STOP_FAILED) {
				note(b, "the main thread did not stop within 2 s of PTRACE_INTERRUPT");
				return INJ_CALL_ERROR;
			}
			if (k == STOP_EVENT)
				break;
			/* a signal on its way to the thread: deliver it, wait on */
			if (!resume(b, PTRACE_CONT, k == STOP_SIGNAL ? sig : 0))
				return INJ_CALL_ERROR;
		}
		res->attempts++;
		if (!get_regs(b, &b->saved))
			return INJ_CALL_ERROR;
		describe_stop(&b->saved, res->where, sizeof res->where);
		if (at_safe_point(b, &b->saved)) {
			b->t_safe = b->t_stopped;
			if (!has_temporary_mask(&b->saved))
				return INJ_CALL_DONE;
			return settle_at_entry(b);
		}
		double now = inj_now();
		res->unsafe_ms += (now - b->t_stopped) * 1e3;
		if (now - start > b->plan->timeout_ms / 1e3) {
			ptrace(PTRACE_DETACH, b->pid, 0, 0);
			return INJ_CALL_NOT_SAFE;
		}
		if (!resume(b, PTRACE_CONT, 0))
			return INJ_CALL_ERROR;
		struct timespec ts = { 0, (long)(backoff * 1e9) };
		nanosleep(&ts, NULL);
		if (backoff < 0.02)
			backoff *= 2;
	}
}

/* ------------------------------------------------------------ step 2: state and frame */

/* Size of the standard-format XSAVE area for these features (CPUID 0xd). */
static uint32_t xsave_size_for(uint64_t features)
{
	uint32_t size = 512 + 64;
	for (unsigned i = 2; i < 63; i++) {
		if (!(features & (1ull << i)))
			continue;
		unsigned eax, ebx, ecx, edx;
		__cpuid_count(0xd, i, eax, ebx, ecx, edx);
		if (ebx + eax > size)
			size = ebx + eax;
	}
	return size;
}

static bool save_fp_state(struct borrow *b)
{
	b->xstate = calloc(1, XSTATE_BUF_MAX);
	if (b->xstate == NULL)
		return false;
	struct iovec iov = { b->xstate, XSTATE_BUF_MAX };
	if (ptrace(PTRACE_GETREGSET, b->pid, (void *)NT_X86_XSTATE, &iov) == 0) {
		b->xstate_note = NT_X86_XSTATE;
	} else {
		iov.iov_len = XSTATE_BUF_MAX;
		if (ptrace(PTRACE_GETREGSET, b->pid, (void *)NT_PRFPREG, &iov) != 0) {
			note(b, "PTRACE_GETREGSET (FP state): %s", strerror(errno));
			return false;
		}
		b->xstate_note = NT_PRFPREG;
	}
	b->xstate_len = iov.iov_len;
	return true;
}

/* The FP part of the signal frame: the saved XSAVE image, its software
 * bytes describing the size this task's sigreturn accepts (AMX tile data
 * only if the task uses it), and the trailing magic. Returns its length. */
static size_t build_fpstate(struct borrow *b, unsigned char *out, size_t cap)
{
	if (b->xstate_note != NT_X86_XSTATE || b->xstate_len < 512 + 64) {
		if (cap < 512)
			return 0;
		memcpy(out, b->xstate, 512);   /* FXSAVE only: magic1 0 means FP/SSE */
		memset(out + 464, 0, sizeof(struct fpx_sw_bytes));
		return 512;
	}
	struct fpx_sw_bytes sw;
	memcpy(&sw, b->xstate + 464, sizeof sw);
	uint64_t xstate_bv;
	memcpy(&xstate_bv, b->xstate + 512, sizeof xstate_bv);
	uint64_t features = sw.magic1 == RG_FP_XSTATE_MAGIC1 ? sw.xfeatures : xstate_bv | 3;
	if (!(xstate_bv & XFEATURE_MASK_XTILE_DATA))
		features &= ~XFEATURE_MASK_XTILE_DATA;
	uint32_t size = xsave_size_for(features);
	if (size > b->xstate_len || size + 4 > cap)
		return 0;
	memcpy(out, b->xstate, size);
	sw.magic1 = RG_FP_XSTATE_MAGIC1;
	sw.xfeatures = features;
	sw.xstate_size = size;
	sw.extended_size = size + 4;
	memcpy(out + 464, &sw, sizeof sw);
	xstate_bv &= features;
	memcpy(out + 512, &xstate_bv, sizeof xstate_bv);
	uint32_t magic2 = RG_FP_XSTATE_MAGIC2;
	memcpy(out + size, &magic2, sizeof magic2);
	return size + 4;
}

/* The registers the thread must get back: a system call interrupted with
 * a restart code is set up to run again, as the kernel would on its way
 * back to user space (orig_rax = -1 so that nothing applies it twice). */
static void restart_registers(const struct user_regs_struct *saved, bool at_entry,
			      struct user_regs_struct *out)
{
	*out = *saved;
	long rax = (long)saved->rax;
	if (at_entry) {
		/* about to make the system call: make it again */
		out->rax = saved->orig_rax;
		out->rip -= 2;
	} else if ((long)saved->orig_rax >= 0) {
		if (rax == -KERNEL_ERESTARTSYS || rax == -KERNEL_ERESTARTNOINTR ||
		    rax == -KERNEL_ERESTARTNOHAND) {
			out->rax = saved->orig_rax;
			out->rip -= 2;
		} else if (rax == -KERNEL_ERESTART_RESTARTBLOCK) {
			out->rax = SYS_restart_syscall;
			out->rip -= 2;
		}
	}
	out->orig_rax = (unsigned long long)-1;
}

/* The signal (a default-ignored one) the trampoline sends itself as our
 * cue: not blocked, not handled, not pending in the main thread. */
static bool choose_signal(struct borrow *b)
{
	static const int candidates[] = { SIGURG, SIGWINCH, SIGCHLD };
	uint64_t blocked = 0, caught = 0, pending = 0, shared = 0;
	if (!proc_status_sigset(b->pid, b->pid, "SigBlk", &blocked) ||
	    !proc_status_sigset(b->pid, b->pid, "SigCgt", &caught)) {
		note(b, "cannot read the main thread's signal masks");
		return false;
	}
	proc_status_sigset(b->pid, b->pid, "SigPnd", &pending);
	proc_status_sigset(b->pid, b->pid, "ShdPnd", &shared);
	b->sigmask = blocked;
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
			uint64_t bit = 1ull << (candidates[i] - 1);
			if ((blocked | pending | shared) & bit)
				continue;
			if (pass == 0 && (caught & bit))
				continue;
			b->signo = candidates[i];
			return true;
		}
	}
	note(b, "SIGURG, SIGWINCH and SIGCHLD are all blocked or pending in the main thread");
	return false;
}

/*
 * A thread caught in ppoll, pselect6 or epoll_pwait with a signal mask
 * argument shows that temporary mask until the kernel puts its own back on
 * the way out of the interrupt stop. By the entry of our mmap it has, so
 * the mask is read again there: the frame gets the thread's real mask, and
 * the cue signal is chosen against it.
 */
static bool settle_sigmask(struct borrow *b)
{
	uint64_t now;
	if (!proc_status_sigset(b->pid, b->pid, "SigBlk", &now) || now == b->sigmask)
		return true;
	if (!choose_signal(b))
		return false;
	size_t off = offsetof(struct kernel_ucontext, uc_sigmask);
	if (proc_mem_write(b->memfd, b->at.uc + off, &b->sigmask, sizeof b->sigmask) != 0) {
		note(b, "cannot update the signal frame's mask");
		return false;
	}
	return true;
}

static bool write_frame(struct borrow *b)
{
	static unsigned char fp[XSTATE_BUF_MAX + 64];
	size_t fp_len = build_fpstate(b, fp, sizeof fp);
	if (fp_len == 0) {
		note(b, "cannot build the FP part of the signal frame (%zu bytes of state)",
		     b->xstate_len);
		return false;
	}
	struct stack_layout *at = &b->at;
	at->top = (b->saved.rsp - RED_ZONE - 64) & ~(uint64_t)63;
	at->fpstate = (at->top - fp_len) & ~(uint64_t)63;
	at->results = at->fpstate - sizeof(struct tramp_results);
	at->uc = (at->results - sizeof(struct kernel_ucontext)) & ~(uint64_t)15;
	at->frame = at->uc - 8;
	at->call_rsp = (at->frame - 256) & ~(uint64_t)15;

	size_t len = (size_t)(at->top - at->frame);
	unsigned char *image = calloc(1, len);
	b->stack_saved = malloc(len);
	if (image == NULL || b->stack_saved == NULL) {
		free(image);
		note(b, "out of memory");
		return false;
	}
	if (proc_mem_read(b->memfd, at->frame, b->stack_saved, len) != 0) {
		free(image);
		free(b->stack_saved);
		b->stack_saved = NULL;
		note(b, "cannot read the thread's stack at 0x%" PRIx64, at->frame);
		return false;
	}

	const struct user_regs_struct *r = &b->restore;
	struct kernel_ucontext uc;
	memset(&uc, 0, sizeof uc);
	uc.uc_flags = UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS |
		      (b->xstate_note == NT_X86_XSTATE ? UC_FP_XSTATE : 0);
	/* An invalid mode makes sigreturn leave the alternate signal stack as
	 * it is (the kernel ignores every error there but EFAULT). */
	uc.uc_stack.ss_flags = 3;
	struct kernel_sigcontext *sc = &uc.uc_mcontext;
	sc->r8 = r->r8, sc->r9 = r->r9, sc->r10 = r->r10, sc->r11 = r->r11;
	sc->r12 = r->r12, sc->r13 = r->r13, sc->r14 = r->r14, sc->r15 = r->r15;
	sc->rdi = r->rdi, sc->rsi = r->rsi, sc->rbp = r->rbp, sc->rbx = r->rbx;
	sc->rdx = r->rdx, sc->rax = r->rax, sc->rcx = r->rcx, sc->rsp = r->rsp;
	sc->rip = r->rip, sc->eflags = r->eflags;
	sc->cs = (uint16_t)r->cs, sc->ss = (uint16_t)r->ss;
	sc->fpstate = at->fpstate;
	uc.uc_sigmask = b->sigmask;

	uint64_t gadget = b->plan->sigreturn_gadget;
	memcpy(image, &gadget, sizeof gadget);
	memcpy(image + (at->uc - at->frame), &uc, sizeof uc);
	memcpy(image + (at->fpstate - at->frame), fp, fp_len);
	int err = proc_mem_write(b->memfd, at->frame, image, len);
	free(image);
	if (err != 0) {
		note(b, "cannot write the signal frame: %s", strerror(-err));
		return false;
	}
	return true;
}

/* ------------------------------------------------------------ restore */

/* Puts everything back and detaches. Order matters for a dying injector:
 * FP state, then registers (from then on the thread is whole), then the
 * stack bytes below its red zone. */
static bool restore_and_detach(struct borrow *b)
{
	bool ok = true;
	if (b->xstate != NULL && b->xstate_len > 0) {
		struct iovec iov = { b->xstate, b->xstate_len };
		if (ptrace(PTRACE_SETREGSET, b->pid, (void *)(long)b->xstate_note, &iov) != 0) {
			note(b, "PTRACE_SETREGSET: %s", strerror(errno));
			ok = false;
		}
	}
	if (!set_regs(b, &b->restore))
		ok = false;
	if (b->stack_saved != NULL &&
	    proc_mem_write(b->memfd, b->at.frame, b->stack_saved, (size_t)(b->at.top - b->at.frame)) != 0) {
		note(b, "cannot put the stack bytes back");
		ok = false;
	}
	if (b->t_safe > 0)
		b->res->stopped_ms += (inj_now() - b->t_stopped) * 1e3;
	if (ptrace(PTRACE_DETACH, b->pid, 0, 0) != 0) {
		note(b, "PTRACE_DETACH: %s", strerror(errno));
		ok = false;
	}
	b->res->borrowed_ms = (inj_now() - b->t_safe) * 1e3;
	return ok;
}

/* Gives up in the middle of the library load: the thread finishes it and
 * restores itself through the signal frame. */
static void let_go_mid_call(struct borrow *b)
{
	if (ptrace(PTRACE_INTERRUPT, b->pid, 0, 0) == 0) {
		b->deadline = inj_now() + 1.0;
		int sig = 0, event = 0;
		enum stop_kind k = wait_stop(b, &sig, &event);
		if (k == STOP_EVENT || k == STOP_SYSCALL)
			sig = 0;
		if (k != STOP_GONE && k != STOP_TIMEOUT && k != STOP_FAILED)
			ptrace(PTRACE_DETACH, b->pid, 0, (void *)(long)sig);
	}
	b->res->borrowed_ms = (inj_now() - b->t_safe) * 1e3;
}

/* ------------------------------------------------------------ steps 3 to 5 */

/* Runs the thread with PTRACE_SYSCALL until the exit (or entry) of the
 * system call `nr`; signals meant for the thread are delivered. */
static enum stop_kind run_to_syscall(struct borrow *b, long nr, bool exit, struct ptrace_syscall_info *info)
{
	int sig = 0;
	for (;;) {
		if (!resume(b, PTRACE_SYSCALL, sig))
			return STOP_FAILED;
		sig = 0;
		int event;
		enum stop_kind k = wait_stop(b, &sig, &event);
		if (k == STOP_GONE || k == STOP_TIMEOUT || k == STOP_FAILED)
			return k;
		if (k == STOP_EVENT) {
			sig = 0;
			continue;
		}
		if (k == STOP_SIGNAL)
			continue;       /* deliver it with the next resume */
		sig = 0;
		if (!syscall_info(b, info))
			return STOP_FAILED;
		if (exit && info->op == PTRACE_SYSCALL_INFO_EXIT)
			return STOP_SYSCALL;   /* the exit of the entry we saw */
		if (!exit && info->op == PTRACE_SYSCALL_INFO_ENTRY && (long)info->entry.nr == nr)
			return STOP_SYSCALL;
	}
}

static bool is_fatal_signal(int sig)
{
	return sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE ||
	       sig == SIGABRT || sig == SIGSYS || sig == SIGTRAP;
}

static enum inj_call_outcome borrow_and_call(struct borrow *b)
{
	const struct inj_call_plan *plan = b->plan;
	struct inj_call_result *res = b->res;
	struct ptrace_syscall_info info;

	maybe_die(b, 1);
	restart_registers(&b->saved, b->caught_at_entry, &b->restore);
	if (!save_fp_state(b) || !choose_signal(b) || !write_frame(b)) {
		restore_and_detach(b);
		return INJ_CALL_ERROR;
	}

	/* step 3: mmap(NULL, TRAMP_PAGE_SIZE, PROT_READ|PROT_EXEC, ...) */
	struct user_regs_struct r = b->saved;
	r.rip = plan->fn_mmap;
	r.rsp = b->at.frame;
	r.rdi = 0;
	r.rsi = TRAMP_PAGE_SIZE;
	r.rdx = PROT_READ | PROT_EXEC;
	r.rcx = MAP_PRIVATE | MAP_ANONYMOUS;
	r.r8 = (unsigned long long)-1;
	r.r9 = 0;
	r.rax = 0;
	r.orig_rax = (unsigned long long)-1;
	r.eflags &= ~0x400ull;  /* DF */
	if (!set_regs(b, &r)) {
		restore_and_detach(b);
		return INJ_CALL_ERROR;
	}
	enum stop_kind k = run_to_syscall(b, SYS_mmap, false, &info);
	maybe_die(b, 2);
	if (k == STOP_SYSCALL && !settle_sigmask(b))
		k = STOP_FAILED;
	if (k == STOP_SYSCALL)
		k = run_to_syscall(b, SYS_mmap, true, &info);
	if (k == STOP_GONE)
		return INJ_CALL_GONE;
	if (k != STOP_SYSCALL) {
		note(b, "no answer from the thread while mapping a page");
		let_go_mid_call(b);
		return INJ_CALL_DETACHED;
	}
	maybe_die(b, 3);
	if (info.exit.is_error || info.exit.rval == 0) {
		note(b, "the target could not map an executable page: %s (an LSM forbidding "
		     "execmem, e.g. SELinux without virt_use_execmem, or a seccomp filter)",
		     strerror((int)-info.exit.rval));
		restore_and_detach(b);
		return INJ_CALL_ERROR;
	}
	b->page = (uint64_t)info.exit.rval;

	/* step 4: the trampoline */
	static unsigned char page[TRAMP_PAGE_SIZE];
	size_t code_len = (size_t)(inj_tramp_end - inj_tramp_start);
	size_t data_off = (size_t)(inj_tramp_data - inj_tramp_start);
	size_t path_off = (code_len + 63) & ~(size_t)63;
	size_t path_len = strlen(plan->lib_path) + 1;
	if (path_off + path_len > sizeof page) {
		note(b, "library path too long");
		restore_and_detach(b);
		return INJ_CALL_ERROR;
	}
	memset(page, 0, sizeof page);
	memcpy(page, inj_tramp_start, code_len);
	memcpy(page + path_off, plan->lib_path, path_len);
	struct tramp_data data = {
		.results = b->at.results,
		.path = b->page + path_off,
		.fn_dlopen = plan->fn_dlopen,
		.symbol = b->page + data_off + offsetof(struct tramp_data, symbol_name),
		.fn_dlsym = plan->fn_dlsym,
		.fn_dlerror = plan->fn_dlerror,
		.signo = (uint64_t)b->signo,
		.frame = b->at.frame,
		.page = b->page,
		.page_len = TRAMP_PAGE_SIZE,
		.fn_munmap = plan->fn_munmap,
		.symbol_name = "rekeyguard_inject_activate",
	};
	memcpy(page + data_off, &data, sizeof data);
	struct tramp_results zero = { 0 };
	if (proc_mem_write(b->memfd, b->page, page, path_off + path_len) != 0 ||
	    proc_mem_write(b->memfd, b->at.results, &zero, sizeof zero) != 0) {
		note(b, "cannot write the trampoline into the target");
		restore_and_detach(b);
		return INJ_CALL_ERROR;
	}
	r = b->saved;
	r.rip = b->page;
	r.rsp = b->at.call_rsp;
	r.rax = 0;
	r.orig_rax = (unsigned long long)-1;
	r.eflags &= ~0x400ull;
	if (!set_regs(b, &r)) {
		restore_and_detach(b);
		return INJ_CALL_ERROR;
	}
	uint64_t cue = b->page + (uint64_t)(inj_tramp_cue - inj_tramp_start);
	double t_call = inj_now();
	int sig = 0, event;
	for (;;) {
		if (!resume(b, PTRACE_CONT, sig)) {
			let_go_mid_call(b);
			return INJ_CALL_DETACHED;
		}
		maybe_die(b, 4);
		sig = 0;
		k = wait_stop(b, &sig, &event);
		if (k == STOP_GONE)
			return INJ_CALL_GONE;
		if (k == STOP_TIMEOUT || k == STOP_FAILED) {
			note(b, "the library load did not finish within %u ms; the thread was "
			     "left to finish it and restore itself", plan->timeout_ms);
			let_go_mid_call(b);
			return INJ_CALL_DETACHED;
		}
		if (k == STOP_EVENT || k == STOP_SYSCALL) {
			sig = 0;
			continue;
		}
		struct user_regs_struct now;
		if (!get_regs(b, &now))
			return INJ_CALL_ERROR;
		if (sig == b->signo && now.rip == cue)
			break;
		if (is_fatal_signal(sig)) {
			note(b, "the target got %s at 0x%llx while loading the library; the signal "
			     "was delivered", strsignal(sig), now.rip);
		}
		/* anything else is the thread's own business: deliver it */
	}
	res->call_ms = (inj_now() - t_call) * 1e3;
	maybe_die(b, 5);

	struct tramp_results out;
	if (proc_mem_read(b->memfd, b->at.results, &out, sizeof out) == 0) {
		res->handle = out.handle;
		res->activate_found = out.activate != 0;
		res->activate_ret = (long)out.activate_ret;
		if (out.handle == 0 && out.dlerror != 0)
			proc_mem_read_string(b->memfd, out.dlerror, res->dlerror, sizeof res->dlerror);
	}
	if (plan->verify_threads) {
		struct proc_thread threads[512];
		int n = proc_threads_read(b->pid, threads, 512);
		for (int i = 0; i < n; i++) {
			if (threads[i].tid == b->pid)
				continue;
			res->other_threads++;
			if (threads[i].state == 't' || threads[i].state == 'T')
				res->other_stopped++;
		}
	}

	/* step 5: let the munmap run; at its exit (the wrapper would return
	 * into the sigreturn pair next) put everything back ourselves */
	k = run_to_syscall(b, SYS_munmap, false, &info);
	maybe_die(b, 6);
	if (k == STOP_SYSCALL)
		k = run_to_syscall(b, SYS_munmap, true, &info);
	maybe_die(b, 7);
	if (k == STOP_GONE)
		return INJ_CALL_GONE;
	if (k != STOP_SYSCALL || !get_regs(b, &r) || r.rsp != b->at.frame) {
		note(b, "lost the thread on its way back; it restores itself");
		let_go_mid_call(b);
		return INJ_CALL_DETACHED;
	}
	if (info.exit.is_error)
		note(b, "munmap of the trampoline page failed: %s", strerror((int)-info.exit.rval));
	return restore_and_detach(b) ? INJ_CALL_DONE : INJ_CALL_ERROR;
}

void inj_call(const struct inj_call_plan *plan, struct inj_call_result *res)
{
	memset(res, 0, sizeof *res);
	struct borrow b = { .plan = plan, .res = res, .pid = plan->pid, .memfd = -1 };
	b.deadline = inj_now() + plan->timeout_ms / 1e3;

	struct sigaction sa = { .sa_handler = alarm_handler };   /* no SA_RESTART */
	sigaction(SIGALRM, &sa, NULL);
	sigset_t hold, old;
	sigemptyset(&hold);
	sigaddset(&hold, SIGINT);
	sigaddset(&hold, SIGTERM);
	sigaddset(&hold, SIGHUP);
	sigaddset(&hold, SIGQUIT);
	sigaddset(&hold, SIGTSTP);
	sigaddset(&hold, SIGPIPE);
	sigprocmask(SIG_BLOCK, &hold, &old);

	char path[64];
	snprintf(path, sizeof path, "/proc/%d/mem", (int)plan->pid);
	b.memfd = open(path, O_RDWR | O_CLOEXEC);
	if (b.memfd < 0) {
		res->seize_errno = errno;
		res->outcome = INJ_CALL_PERMISSION;
		note(&b, "open %s: %s", path, strerror(errno));
		goto out;
	}
	if (ptrace(PTRACE_SEIZE, plan->pid, 0, (void *)(long)PTRACE_O_TRACESYSGOOD) != 0) {
		res->seize_errno = errno;
		res->outcome = errno == ESRCH ? INJ_CALL_GONE : INJ_CALL_PERMISSION;
		note(&b, "PTRACE_SEIZE: %s", strerror(errno));
		goto out;
	}
	res->outcome = catch_safe_point(&b);
	if (res->outcome == INJ_CALL_DONE) {
		/* from here on the whole timeout is for the call itself */
		b.deadline = inj_now() + plan->timeout_ms / 1e3;
		res->outcome = borrow_and_call(&b);
	}
out:
	if (b.memfd >= 0)
		close(b.memfd);
	free(b.xstate);
	free(b.stack_saved);
	sigprocmask(SIG_SETMASK, &old, NULL);
}
