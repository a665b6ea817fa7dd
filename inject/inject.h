/*
 * inject.h — rekeyguard-inject's internal interfaces.
 *
 * rekeyguard-inject loads librekeyguard.so into a running process (QEMU)
 * by borrowing its main thread with ptrace for a few milliseconds. The
 * pieces, one file each:
 *
 *   rekeyguard-inject.c  command line, the checks that decide whether a
 *                        process may be touched, the report
 *   proc.c, proc.h       reading /proc/PID (maps, status, threads, memory);
 *                        shared with rekeyguard-status
 *   elf-object.c, .h     reading the ELF files mapped in the target
 *                        (dynamic symbols, GOT relocations, byte search);
 *                        shared with rekeyguard-status
 *   inject-qmp.c         asking QEMU whether a migration is running
 *   inject-borrow.c      the borrowed call itself (ptrace, trampoline,
 *                        signal frame, exact restore)
 *
 * Nothing here links GnuTLS or the library; everything about the target is
 * read from /proc and from the files it has mapped.
 */
#ifndef REKEYGUARD_INJECT_H
#define REKEYGUARD_INJECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "elf-object.h"
#include "proc.h"

/* Seconds on CLOCK_MONOTONIC (rekeyguard-inject.c). */
double inj_now(void);

/* QEMU's own view of a migration (inject-qmp.c): "-incoming" on its
 * command line, and query-migrate over a QMP unix socket it names. */
#define INJ_QMP_MAX 8
struct inj_qemu_info {
	bool incoming;                      /* started as a migration destination */
	int monitors;                       /* QMP unix sockets on the command line */
	char monitor[INJ_QMP_MAX][PROC_PATH_MAX];
	int answered;                       /* index of the one that answered */
	int busy;                           /* no greeting: another client holds it */
	char status[32];                    /* query-migrate's status; "" unknown */
};
void inj_qemu_ask(pid_t pid, unsigned timeout_ms, struct inj_qemu_info *info);
/* true for every status but none, completed, failed, cancelled */
bool inj_migration_status_active(const char *status);

/* ------------------------------------------------------------ the borrowed call */

struct inj_call_plan {
	pid_t pid;
	const char *lib_path;           /* what the target's dlopen gets */
	uint64_t fn_dlopen, fn_dlsym, fn_dlerror, fn_mmap, fn_munmap;
	uint64_t sigreturn_gadget;      /* "mov $15,%rax; syscall" in the target's libc */
	uint64_t ld_start, ld_end;      /* the dynamic loader: never a safe point */
	unsigned timeout_ms;            /* reaching a safe point, and the call */
	bool verify_threads;            /* sample the other threads' states */
	int test_die_at;                /* tests: SIGKILL ourselves at this step */
};

enum inj_call_outcome {
	INJ_CALL_DONE,          /* the call ran; results below */
	INJ_CALL_NOT_SAFE,      /* never caught the thread at a safe point; untouched */
	INJ_CALL_PERMISSION,    /* PTRACE_SEIZE refused */
	INJ_CALL_GONE,          /* the process exited during the injection */
	INJ_CALL_DETACHED,      /* timed out mid-call; the thread finishes and
				 * restores itself (sigreturn) */
	INJ_CALL_ERROR,         /* something failed; the thread was restored */
};

struct inj_call_result {
	enum inj_call_outcome outcome;
	int seize_errno;
	uint64_t handle;                /* dlopen result */
	bool activate_found;
	long activate_ret;
	char dlerror[512];
	char where[64];                 /* where the main thread was caught */
	unsigned attempts;              /* interrupts until a safe point */
	unsigned stops;                 /* ptrace stops of the borrowed thread */
	double borrowed_ms;             /* safe-point stop to detach */
	double call_ms;                 /* of which running the library's load */
	double stopped_ms;              /* of which stopped, waiting for us */
	double unsafe_ms;               /* stops at non-safe points before */
	int other_threads;              /* sampled while borrowed */
	int other_stopped;              /* of which in a ptrace/job stop */
	char message[512];              /* details of an error */
};

void inj_call(const struct inj_call_plan *plan, struct inj_call_result *res);
/* The name of a syscall number we know about (for reports), or NULL. */
const char *inj_syscall_name(long nr);
/* True when a thread caught in this syscall holds no lock of libc's. */
bool inj_syscall_is_safe(long nr);

#endif
