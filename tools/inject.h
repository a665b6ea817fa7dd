/*
 * inject.h — rekeyguard-inject's internal interfaces.
 *
 * rekeyguard-inject loads librekeyguard.so into a running process (QEMU)
 * by borrowing its main thread with ptrace for a few milliseconds. The
 * pieces, one file each:
 *
 *   rekeyguard-inject.c  command line, the checks that decide whether a
 *                        process may be touched, the report
 *   inject-proc.c        reading /proc/PID (maps, status, threads, memory)
 *   inject-elf.c         reading the ELF files mapped in the target
 *                        (dynamic symbols, GOT relocations, byte search)
 *   inject-borrow.c      the borrowed call itself (ptrace, trampoline,
 *                        signal frame, exact restore)
 *
 * Nothing here links GnuTLS or the library; everything about the target is
 * read from /proc and from the files it has mapped.
 */
#ifndef REKEYGUARD_INJECT_H
#define REKEYGUARD_INJECT_H

#include <elf.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define INJ_PATH_MAX 4096

/* ------------------------------------------------------------ /proc */

struct inj_map {
	uint64_t start, end, offset;
	unsigned dev_major, dev_minor;
	uint64_t inode;
	char perms[5];
	bool deleted;           /* "(deleted)": replaced on disk since mapped */
	char path[INJ_PATH_MAX];
};

struct inj_maps {
	struct inj_map *v;
	size_t n;
};

/* Reads /proc/PID/maps; returns 0 or -errno. */
int inj_maps_read(pid_t pid, struct inj_maps *maps);
void inj_maps_free(struct inj_maps *maps);
/* The lowest mapping of the object whose file name (last path component)
 * starts with `prefix` and has offset 0, or NULL. */
const struct inj_map *inj_maps_find_object(const struct inj_maps *maps, const char *prefix);
/* The lowest offset-0 mapping of the file with this device and inode. */
const struct inj_map *inj_maps_find_inode(const struct inj_maps *maps, uint64_t dev,
					  uint64_t inode);
/* Highest end address of the mappings of the same file as `m`. */
uint64_t inj_maps_object_end(const struct inj_maps *maps, const struct inj_map *m);
/* Opens the file behind a mapping: /proc/PID/map_files/START-END (the very
 * file mapped, even deleted or replaced on disk), else /proc/PID/root/PATH.
 * Returns an fd or -errno. */
int inj_map_open(pid_t pid, const struct inj_map *m, bool *via_map_files);

/* One "Key:\tvalue" line of /proc/PID/status (or task/TID/status when
 * tid > 0); returns false when missing. */
bool inj_status_field(pid_t pid, pid_t tid, const char *key, char *out, size_t len);

struct inj_creds {
	uid_t uid[4];           /* real, effective, saved, fs */
	gid_t gid[4];
	gid_t groups[256];
	int ngroups;
	uint64_t cap_eff;
};
bool inj_read_creds(pid_t pid, struct inj_creds *creds);

/* Signal sets from status (SigBlk, SigCgt, SigIgn, SigPnd, ShdPnd). */
bool inj_status_sigset(pid_t pid, pid_t tid, const char *key, uint64_t *set);

/* Thread IDs and names. */
struct inj_thread {
	pid_t tid;
	char comm[32];
	char state;
};
int inj_threads_read(pid_t pid, struct inj_thread *out, int max);

/* /proc/PID/comm, /proc/PID/environ lookup. */
void inj_comm(pid_t pid, char *out, size_t len);
bool inj_environ_get(pid_t pid, const char *name, char *out, size_t len);
/* A NUL-separated /proc/PID/WHAT file (cmdline, environ), NUL-terminated;
 * *len is its length; NULL when unreadable.  The caller frees it. */
char *inj_proc_nul_list(pid_t pid, const char *what, size_t *len);

/* QEMU's own view of a migration (inject-qmp.c): "-incoming" on its
 * command line, and query-migrate over a QMP unix socket it names. */
#define INJ_QMP_MAX 8
struct inj_qemu_info {
	bool incoming;                      /* started as a migration destination */
	int monitors;                       /* QMP unix sockets on the command line */
	char monitor[INJ_QMP_MAX][INJ_PATH_MAX];
	int answered;                       /* index of the one that answered */
	int busy;                           /* no greeting: another client holds it */
	char status[32];                    /* query-migrate's status; "" unknown */
};
void inj_qemu_ask(pid_t pid, unsigned timeout_ms, struct inj_qemu_info *info);
/* true for every status but none, completed, failed, cancelled */
bool inj_migration_status_active(const char *status);

/* Target memory through /proc/PID/mem (fd opened by the caller). */
int inj_mem_read(int memfd, uint64_t addr, void *buf, size_t len);
int inj_mem_write(int memfd, uint64_t addr, const void *buf, size_t len);
int inj_mem_read_string(int memfd, uint64_t addr, char *buf, size_t len);

/* Seconds on CLOCK_MONOTONIC. */
double inj_now(void);

/* ------------------------------------------------------------ ELF */

struct inj_elf {
	int fd;
	Elf64_Ehdr eh;
	Elf64_Phdr *ph;
	uint64_t base_vaddr;            /* lowest PT_LOAD p_vaddr, page aligned */
	Elf64_Sym *syms;
	size_t nsyms;
	char *strtab;
	size_t strsz;
	uint16_t *versym;               /* may be NULL */
	Elf64_Rela *rela, *jmprel;      /* without the leading RELATIVE ones */
	size_t nrela, njmprel;
};

/* Parses an ELF64 x86-64 object from an open fd (the fd is kept). With
 * relocs, the GOT relocations are read too. Returns 0 or -1 with err. */
int inj_elf_open(struct inj_elf *elf, int fd, bool relocs, char *err, size_t errlen);
void inj_elf_close(struct inj_elf *elf);
/* A defined dynamic symbol, the default version preferred; its st_value. */
bool inj_elf_lookup(const struct inj_elf *elf, const char *name, uint64_t *value);
/* The first occurrence of a byte string in an executable segment: vaddr. */
bool inj_elf_find_code(const struct inj_elf *elf, const void *bytes, size_t len,
		       uint64_t *vaddr);
/* Load bias of an object whose offset-0 mapping starts at map_start. */
uint64_t inj_elf_bias(const struct inj_elf *elf, uint64_t map_start);

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
