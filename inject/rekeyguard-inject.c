/*
 * rekeyguard-inject.c — load librekeyguard.so into running processes.
 *
 *   rekeyguard-inject [--check] [--force] [--lib PATH] [--timeout MS] PID...
 *
 * Owns: the command line; the checks that decide, without touching the
 * process, whether it may be injected (and --check, which stops there);
 * resolving dlopen and friends in the libc the target really has mapped;
 * and the report: loaded or not, how long the main thread was borrowed,
 * how many GOT slots the library patched, and which GnuTLS functions are
 * now guarded in which object (read back from the target's memory).
 *
 * Invariants: a refused process is never attached; only the main thread is
 * ever attached (inject-borrow.c); the injector never forks anything into
 * the target and never writes outside the borrowed thread's stack and its
 * own temporary page. Exit status: 0 every PID injected (or, with --check,
 * would be), 1 any refused or failed, 2 usage.
 */
#define _GNU_SOURCE
#include "inject.h"
#include "../shim/late-load.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/capability.h>

#ifndef RG_INJECT_LIBDIR
#define RG_INJECT_LIBDIR "/usr/local/lib"
#endif
#define LIB_NAME "librekeyguard.so"
#define DEFAULT_TIMEOUT_MS 5000

double inj_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Thread names (prefixes) QEMU gives a migration in flight
 * (-name ...,debug-threads=on): QEMU up to 9.x, then QEMU 10's
 * "mig/src/..." (main, return, send_N, ...) and "mig/dst/..." (listen,
 * fault, recv_N, ...). */
static const char *const migration_threads[] = {
	"live_migration", "return path", "postcopy/listen", "fault-default", "fault-fast",
	"bg_snapshot", "multifdsend_", "multifdrecv_",
	"mig/src/", "mig/dst/",
};

static struct {
	bool check, force, verify_threads;
	const char *lib;
	unsigned timeout_ms;
	int test_die_at;
} opt = { .timeout_ms = DEFAULT_TIMEOUT_MS };

static void usage(FILE *out)
{
	fprintf(out,
"usage: rekeyguard-inject [--check] [--force] [--lib PATH] [--timeout MS]\n"
"                         [--verify-threads] PID...\n"
"\n"
"Loads librekeyguard.so into running processes (QEMU) that were started\n"
"without it, so that every TLS session they create from now on is guarded\n"
"against the GnuTLS TLS 1.3 key-update race. Sessions that already exist,\n"
"such as a migration in flight, stay unguarded.\n"
"\n"
"Only the main thread is borrowed, for a few milliseconds, while it waits in\n"
"a system call such as ppoll; vCPU and migration threads keep running.\n"
"\n"
"  --check         report what would be done, or why not; touch nothing\n"
"  --force         inject even though a migration seems to be in flight\n"
"  --lib PATH      the library (default: next to this program, in ../lib,\n"
"                  then " RG_INJECT_LIBDIR "/" LIB_NAME ")\n"
"  --timeout MS    give up catching the main thread at a safe point, or\n"
"                  waiting for the library to load, after MS (default %d)\n"
"  --verify-threads  while the thread is borrowed, count the other threads\n"
"                  that are stopped (should be none)\n"
"  --help          this text\n"
"\n"
"Refuses (exit 1, process untouched): a migration in flight (QEMU thread\n"
"names, or QMP query-migrate on a monitor socket named on QEMU's command\n"
"line when no other client holds it), no libgnutls mapped, the library\n"
"already mapped, a library the process's user cannot read, no ptrace\n"
"permission, a process already traced. A QEMU started with -incoming whose\n"
"state cannot be asked gets a warning: an incoming precopy migration shows\n"
"no thread.\n"
"The last line per PID is \"RESULT pid=N status=...\" for scripts.\n",
		DEFAULT_TIMEOUT_MS);
}

/* ------------------------------------------------------------ reporting */

struct report {
	pid_t pid;
	char comm[32];
	int refusals;
	int notes;
	char status[32];
};

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static void refuse(struct report *rep, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("  refused: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	rep->refusals++;
	fflush(stdout);
}

static void remark(struct report *rep, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("  note: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	rep->notes++;
	fflush(stdout);
}

static bool read_small_file(const char *path, char *out, size_t len)
{
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return false;
	size_t n = fread(out, 1, len - 1, f);
	fclose(f);
	out[n] = '\0';
	while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == ' ' || out[n - 1] == '\0'))
		out[--n] = '\0';
	return true;
}

/* Why ptrace is refused, in the words an operator can act on. */
static void explain_ptrace_denied(struct report *rep, int err)
{
	char yama[32] = "", lsm[256] = "", label[256] = "", path[64];
	bool have_yama = read_small_file("/proc/sys/kernel/yama/ptrace_scope", yama, sizeof yama);
	read_small_file("/sys/kernel/security/lsm", lsm, sizeof lsm);
	snprintf(path, sizeof path, "/proc/%d/attr/current", (int)rep->pid);
	read_small_file(path, label, sizeof label);
	const char *yama_meaning = "";
	if (have_yama) {
		switch (atoi(yama)) {
		case 0: yama_meaning = " (classic: same user or CAP_SYS_PTRACE)"; break;
		case 1: yama_meaning = " (restricted: only a parent may attach, or root with CAP_SYS_PTRACE)"; break;
		case 2: yama_meaning = " (admin only: CAP_SYS_PTRACE needed)"; break;
		case 3: yama_meaning = " (no attach at all, not even root; only a reboot lowers it)"; break;
		}
	}
	char causes[1024] = "";
	size_t used = 0;
	if (have_yama)
		used += (size_t)snprintf(causes + used, sizeof causes - used,
					 "Yama's kernel.yama.ptrace_scope=%s%s; ", yama, yama_meaning);
	if (used < sizeof causes)
		used += (size_t)snprintf(causes + used, sizeof causes - used,
					 "the LSM's policy (%s%s)%s%s; ",
					 lsm[0] ? "active: " : "AppArmor or SELinux", lsm,
					 label[0] ? ", the process runs confined as " : "", label);
	if (used >= sizeof causes)
		used = sizeof causes - 1;
	snprintf(causes + used, sizeof causes - used, "or a process of another user and no "
		 "CAP_SYS_PTRACE (run as root)%s", have_yama ? "" : " (Yama is not active here)");
	refuse(rep, "ptrace is not permitted (%s). Likely causes: %s", strerror(err), causes);
}

/* ------------------------------------------------------------ the library */

/* Default library path: next to this program, one directory up (the
 * build tree), ../lib/<multiarch> and ../lib (an install prefix), then
 * the LIBDIR it was built with. */
static const char *default_lib(void)
{
	static char path[PROC_PATH_MAX];
	char exe[PROC_PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n > 0) {
		exe[n] = '\0';
		char *slash = strrchr(exe, '/');
		if (slash != NULL) {
			*slash = '\0';
			const char *tries[] = { "%s/" LIB_NAME, "%s/../" LIB_NAME,
						"%s/../lib/x86_64-linux-gnu/" LIB_NAME, "%s/../lib/" LIB_NAME };
			for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
				snprintf(path, sizeof path, tries[i], exe);
				char real[PATH_MAX];
				if (realpath(path, real) != NULL && access(real, R_OK) == 0) {
					snprintf(path, sizeof path, "%s", real);
					return path;
				}
			}
		}
	}
	snprintf(path, sizeof path, "%s/%s", RG_INJECT_LIBDIR, LIB_NAME);
	return path;
}

static bool capset_effective(uint64_t eff)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];
	if (syscall(SYS_capget, &hdr, data) != 0)
		return false;
	data[0].effective &= (uint32_t)eff;
	data[1].effective &= (uint32_t)(eff >> 32);
	return syscall(SYS_capset, &hdr, data) == 0;
}

/*
 * Can the target's user read the library, as the target sees the file
 * system (its root and mount namespace)? Decided in a child that takes the
 * target's file-system IDs, groups and effective capabilities and asks
 * faccessat(AT_EACCESS) below /proc/PID/root. Returns 0 when readable,
 * else an errno value; sets noexec for a noexec mount.
 */
static int library_access_as_target(pid_t pid, const struct proc_creds *creds, const char *lib,
				    bool *noexec)
{
	char root[64];
	snprintf(root, sizeof root, "/proc/%d/root", (int)pid);
	int rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0)
		return errno;
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) != 0) {
		int e = errno;
		close(rootfd);
		return e;
	}
	pid_t child = fork();
	if (child < 0) {
		int e = errno;
		close(rootfd);
		close(pipefd[0]);
		close(pipefd[1]);
		return e;
	}
	if (child == 0) {
		int answer[2] = { 0, 0 };
		if (geteuid() != 0)
			;       /* not root: we are the process's user already (ptrace said so) */
		else if (setgroups((size_t)creds->ngroups, creds->groups) != 0 ||
		    setresgid(creds->gid[3], creds->gid[3], creds->gid[3]) != 0 ||
		    setresuid(creds->uid[3], creds->uid[3], creds->uid[3]) != 0)
			answer[0] = errno ? errno : EPERM;
		else if (creds->uid[3] == 0 && !capset_effective(creds->cap_eff))
			answer[0] = EPERM;
		else if (faccessat(rootfd, lib + 1, R_OK, AT_EACCESS) != 0)
			answer[0] = errno;
		else {
			int fd = openat(rootfd, lib + 1, O_RDONLY | O_CLOEXEC);
			struct statvfs vfs;
			if (fd < 0)
				answer[0] = errno;
			else if (fstatvfs(fd, &vfs) == 0 && (vfs.f_flag & ST_NOEXEC))
				answer[1] = 1;
		}
		ssize_t w = write(pipefd[1], answer, sizeof answer);
		_exit(w == (ssize_t)sizeof answer ? 0 : 1);
	}
	close(pipefd[1]);
	close(rootfd);
	int answer[2] = { EIO, 0 };
	ssize_t r;
	do
		r = read(pipefd[0], answer, sizeof answer);
	while (r < 0 && errno == EINTR);
	close(pipefd[0]);
	int status;
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	if (r != (ssize_t)sizeof answer)
		return EIO;
	*noexec = answer[1] != 0;
	return answer[0];
}

/* ------------------------------------------------------------ GOT slots */

struct names {
	char **v;
	size_t n;
};

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void names_sort(struct names *set)
{
	if (set->n > 1)
		qsort(set->v, set->n, sizeof *set->v, cmp_str);
}

static bool names_has(const struct names *set, const char *name)
{
	return set->n > 0 && bsearch(&name, set->v, set->n, sizeof *set->v, cmp_str) != NULL;
}

static void names_add_unique(struct names *set, const char *name)
{
	for (size_t i = 0; i < set->n; i++)
		if (strcmp(set->v[i], name) == 0)
			return;
	char **v = realloc(set->v, (set->n + 1) * sizeof *v);
	if (v == NULL)
		return;
	set->v = v;
	set->v[set->n++] = strdup(name);
}

static void names_free(struct names *set)
{
	for (size_t i = 0; i < set->n; i++)
		free(set->v[i]);
	free(set->v);
	set->v = NULL;
	set->n = 0;
}

/* The GnuTLS functions the library defines (its interposed names). */
static bool library_interposed_names(const struct elf_object *lib, struct names *out)
{
	memset(out, 0, sizeof *out);
	for (size_t i = 1; i < lib->nsyms; i++) {
		const Elf64_Sym *s = &lib->syms[i];
		const char *name = lib->strtab + s->st_name;
		if (s->st_shndx != SHN_UNDEF && ELF64_ST_TYPE(s->st_info) == STT_FUNC &&
		    strncmp(name, "gnutls_", 7) == 0)
			names_add_unique(out, name);
	}
	names_sort(out);
	return out->n > 0;
}

struct got_scan {
	unsigned slots, guarded;        /* interposed-name slots, of which pointing at the library */
	unsigned objects, guarded_objects;
	unsigned dlopen_slots, dlopen_watched;
	unsigned self_slots, self_bound;        /* the library's own calls to its wrappers */
	struct names guarded_names, unguarded_names, self_unbound_names;
	char per_object[8192];
};

/* The objects the library's late loading leaves alone (shim/late-load.h),
 * and the library itself. */
static bool skip_object(const char *path)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	return rg_late_load_skips_object(path) || strncmp(base, "librekeyguard", 13) == 0;
}

/*
 * Every GOT slot (JUMP_SLOT, GLOB_DAT) naming an interposed GnuTLS function
 * or dlopen, in every mapped object the library patches. With memfd >= 0 the
 * slot's value is read from the target and counted as guarded when it
 * points into [lib_start, lib_end).
 */
static void scan_got(pid_t pid, const struct proc_maps *maps, const struct names *interposed,
		     int memfd, uint64_t lib_start, uint64_t lib_end, struct got_scan *scan)
{
	memset(scan, 0, sizeof *scan);
	for (size_t i = 0; i < maps->n; i++) {
		const struct proc_map *m = &maps->v[i];
		bool self = memfd >= 0 && m->start == lib_start;
		if (m->offset != 0 || m->path[0] != '/' || (skip_object(m->path) && !self))
			continue;
		bool seen = false;   /* the same file mapped at offset 0 twice */
		for (size_t j = 0; j < i && !seen; j++)
			seen = maps->v[j].offset == 0 && maps->v[j].inode == m->inode &&
			       strcmp(maps->v[j].path, m->path) == 0;
		if (seen)
			continue;
		int fd = proc_map_open(pid, m, NULL);
		if (fd < 0)
			continue;
		struct elf_object elf;
		char err[128];
		if (elf_object_open(&elf, fd, ELF_OBJECT_RELOCS, err, sizeof err) != 0) {
			elf_object_close(&elf);
			close(fd);
			continue;
		}
		uint64_t bias = elf_object_bias(&elf, m->start);
		unsigned slots = 0, guarded = 0;
		for (int table = 0; table < 2; table++) {
			const Elf64_Rela *rel = table ? elf.jmprel : elf.rela;
			size_t n = table ? elf.njmprel : elf.nrela;
			for (size_t r = 0; r < n; r++) {
				unsigned long type = ELF64_R_TYPE(rel[r].r_info);
				size_t sym = ELF64_R_SYM(rel[r].r_info);
				if ((type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT) ||
				    sym == 0 || sym >= elf.nsyms || elf.syms[sym].st_name >= elf.strsz)
					continue;
				const char *name = elf.strtab + elf.syms[sym].st_name;
				bool is_dlopen = strcmp(name, "dlopen") == 0;
				if (!is_dlopen && !names_has(interposed, name))
					continue;
				uint64_t value = 0;
				bool points_in = memfd >= 0 &&
						 proc_mem_read(memfd, bias + rel[r].r_offset, &value, sizeof value) == 0 &&
						 value >= lib_start && value < lib_end;
				if (self) {
					/* loaded RTLD_LOCAL, the library's own references
					 * to its exported names bind to the global scope
					 * (libgnutls) unless it binds them to itself */
					if (!is_dlopen) {
						scan->self_slots++;
						scan->self_bound += points_in;
						if (!points_in)
							names_add_unique(&scan->self_unbound_names, name);
					}
					continue;
				}
				if (is_dlopen) {
					scan->dlopen_slots++;
					scan->dlopen_watched += points_in;
					continue;
				}
				slots++;
				if (points_in) {
					guarded++;
					names_add_unique(&scan->guarded_names, name);
				} else {
					names_add_unique(&scan->unguarded_names, name);
				}
			}
		}
		if (slots > 0) {
			const char *base = strrchr(m->path, '/');
			size_t used = strlen(scan->per_object);
			snprintf(scan->per_object + used, sizeof scan->per_object - used, "%s%s %u/%u",
				 used ? ", " : "", base ? base + 1 : m->path, guarded, slots);
			scan->objects++;
			scan->guarded_objects += guarded > 0;
		}
		scan->slots += slots;
		scan->guarded += guarded;
		elf_object_close(&elf);
		close(fd);
	}
	names_sort(&scan->guarded_names);
	names_sort(&scan->unguarded_names);
	names_sort(&scan->self_unbound_names);
}

static void print_names(const char *label, const struct names *set)
{
	if (set->n == 0)
		return;
	printf("  %s (%zu):", label, set->n);
	size_t col = strlen(label) + 8;
	for (size_t i = 0; i < set->n; i++) {
		size_t len = strlen(set->v[i]) + 1;
		if (col + len > 78) {
			printf("\n   ");
			col = 3;
		}
		printf(" %s", set->v[i]);
		col += len;
	}
	printf("\n");
}

/* ------------------------------------------------------------ one process */

struct target {
	pid_t pid;
	struct proc_maps maps;
	const struct proc_map *libc, *ld, *gnutls, *rekeyguard;
	struct proc_creds creds;
	struct inj_call_plan plan;
	struct stat lib_st;
	bool lib_found;
};

static bool resolve_libc(struct target *t, struct report *rep)
{
	bool via_map_files;
	int fd = proc_map_open(t->pid, t->libc, &via_map_files);
	if (fd < 0) {
		refuse(rep, "cannot open the target's libc %s: %s", t->libc->path, strerror(-fd));
		return false;
	}
	struct elf_object elf;
	char err[128];
	bool ok = elf_object_open(&elf, fd, ELF_OBJECT_X86_64, err, sizeof err) == 0;
	if (!ok)
		refuse(rep, "cannot read the target's libc %s: %s", t->libc->path, err);
	uint64_t bias = ok ? elf_object_bias(&elf, t->libc->start) : 0;
	struct {
		const char *name;
		uint64_t *out;
	} want[] = {
		{ "dlopen", &t->plan.fn_dlopen }, { "dlsym", &t->plan.fn_dlsym },
		{ "dlerror", &t->plan.fn_dlerror }, { "mmap", &t->plan.fn_mmap },
		{ "munmap", &t->plan.fn_munmap },
	};
	for (size_t i = 0; ok && i < sizeof want / sizeof want[0]; i++) {
		uint64_t v;
		if (!elf_object_lookup(&elf, want[i].name, &v)) {
			refuse(rep, "the target's libc %s does not export %s (glibc older than 2.34 "
			       "keeps dlopen in libdl, which this tool does not use)",
			       t->libc->path, want[i].name);
			ok = false;
		} else {
			*want[i].out = bias + v;
		}
	}
	/* __restore_rt: mov $15,%rax; syscall */
	static const unsigned char sigreturn[] = { 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05 };
	uint64_t v;
	if (ok && !elf_object_find_code(&elf, sigreturn, sizeof sigreturn, &v)) {
		refuse(rep, "no rt_sigreturn sequence found in the target's libc");
		ok = false;
	}
	if (ok)
		t->plan.sigreturn_gadget = bias + v;
	if (ok)
		say("  libc: %s%s (read through /proc/%d/%s), dlopen at 0x%" PRIx64 "\n",
		    t->libc->path, t->libc->deleted ? " (deleted or replaced on disk)" : "",
		    (int)t->pid, via_map_files ? "map_files" : "root", t->plan.fn_dlopen);
	elf_object_close(&elf);
	close(fd);
	return ok;
}

/* Everything that can be decided without touching the process. */
static void inspect(struct target *t, struct report *rep, const char *lib)
{
	pid_t pid = t->pid;
	char v[256];
	if (!proc_status_field(pid, 0, "Tgid", v, sizeof v)) {
		refuse(rep, "no such process");
		return;
	}
	if (atoi(v) != pid) {
		refuse(rep, "%d is a thread of process %s, not a process ID", (int)pid, v);
		return;
	}
	if (pid == getpid()) {
		refuse(rep, "that is this injector");
		return;
	}
	if (proc_status_field(pid, 0, "State", v, sizeof v)) {
		if (v[0] == 'Z' || v[0] == 'X') {
			refuse(rep, "the process is exiting (%s)", v);
			return;
		}
		if (v[0] == 'T')
			refuse(rep, "the process is stopped (%s); its main thread could not run the load", v);
	}
	if (proc_status_field(pid, 0, "TracerPid", v, sizeof v) && atoi(v) != 0) {
		char comm[32];
		proc_comm((pid_t)atoi(v), comm, sizeof comm);
		refuse(rep, "the process is already traced by PID %s (%s), e.g. a debugger", v, comm);
	}
	int err = proc_maps_read(pid, &t->maps);
	if (err != 0) {
		if (err == -EACCES || err == -EPERM)
			explain_ptrace_denied(rep, -err);
		else
			refuse(rep, "cannot read /proc/%d/maps: %s", (int)pid, strerror(-err));
		return;
	}
	if (!proc_read_creds(pid, &t->creds)) {
		refuse(rep, "cannot read the process's credentials");
		return;
	}

	t->gnutls = proc_maps_find_object(&t->maps, "libgnutls.so");
	t->libc = proc_maps_find_object(&t->maps, "libc.so.6");
	if (t->libc == NULL)
		t->libc = proc_maps_find_object(&t->maps, "libc-");
	t->ld = proc_maps_find_object(&t->maps, "ld-linux");
	t->rekeyguard = proc_maps_find_object(&t->maps, "librekeyguard");
	char rootlib[PROC_PATH_MAX + 64];
	snprintf(rootlib, sizeof rootlib, "/proc/%d/root%s", (int)pid, lib);
	t->lib_found = stat(rootlib, &t->lib_st) == 0;
	if (t->rekeyguard == NULL && t->lib_found)
		t->rekeyguard = proc_maps_find_inode(&t->maps, t->lib_st.st_dev, t->lib_st.st_ino);

	if (t->gnutls == NULL)
		refuse(rep, "no libgnutls is mapped in the process: nothing to guard");
	else
		say("  libgnutls: %s\n", t->gnutls->path);
	if (t->rekeyguard != NULL) {
		char preload[PROC_PATH_MAX] = "";
		proc_environ_get(pid, "LD_PRELOAD", preload, sizeof preload);
		refuse(rep, "the library is already mapped: %s (%s)", t->rekeyguard->path,
		       strstr(preload, "rekeyguard") ? "preloaded through LD_PRELOAD"
						     : "injected earlier or loaded by the program");
	}
	if (t->libc == NULL)
		refuse(rep, "no glibc libc.so.6 is mapped (a static binary or another libc)");

	/* a migration in flight: its sessions predate us and stay unguarded */
	struct proc_thread threads[1024];
	int n = proc_threads_read(pid, threads, 1024);
	char busy[256] = "";
	bool named = false;
	for (int i = 0; i < n; i++) {
		if (strcmp(threads[i].comm, threads[0].comm) != 0)
			named = true;
		for (size_t j = 0; j < sizeof migration_threads / sizeof migration_threads[0]; j++) {
			if (strncmp(threads[i].comm, migration_threads[j], strlen(migration_threads[j])) == 0 &&
			    strlen(busy) + strlen(threads[i].comm) + sizeof "threads \"\"" < sizeof busy) {
				size_t used = strlen(busy);
				snprintf(busy + used, sizeof busy - used, "%s\"%s\"",
					 used ? ", " : "threads ", threads[i].comm);
				break;
			}
		}
	}
	say("  threads: %d%s\n", n, named || n < 2 ? "" : " (all with the same name: thread names are "
	    "not set, so a migration in flight cannot be seen; QEMU sets them with "
	    "-name ...,debug-threads=on)");
	/* QEMU itself, where a QMP monitor named on its command line answers:
	 * the only way to see an incoming precopy migration, which runs in the
	 * destination's main thread under no thread name of its own */
	struct inj_qemu_info q;
	inj_qemu_ask(pid, opt.timeout_ms < 1000 ? opt.timeout_ms : 1000, &q);
	if (q.status[0] != '\0')
		say("  QEMU (QMP query-migrate on %s): migration status \"%s\"%s\n",
		    q.monitor[q.answered], q.status, q.incoming ? ", started with -incoming" : "");
	else if (q.monitors > 0)
		say("  QEMU: its QMP monitor%s (%s%s) did not answer%s\n", q.monitors > 1 ? "s" : "",
		    q.monitor[0], q.monitors > 1 ? ", ..." : "",
		    q.busy ? ": another client (libvirt, a management tool) holds it" : "");
	if (inj_migration_status_active(q.status) && busy[0] == '\0')
		snprintf(busy, sizeof busy, "QEMU reports migration status \"%s\"%s", q.status,
			 q.incoming ? " on this destination" : "");
	else if (q.incoming && q.status[0] == '\0' && busy[0] == '\0')
		remark(rep, "QEMU was started with -incoming (a migration destination) and its state "
		       "could not be asked: an incoming precopy migration runs in the main thread "
		       "and shows no thread name. If one is in progress (virsh domjobinfo DOMAIN, or "
		       "QMP query-migrate on this QEMU: status \"active\"), its TLS session stays "
		       "unguarded; inject before it starts or after it completes");
	if (busy[0] != '\0') {
		if (opt.force)
			remark(rep, "a migration seems to be in flight (%s); injecting anyway "
			       "(--force): its sessions stay unguarded", busy);
		else
			refuse(rep, "a migration seems to be in flight (%s): its TLS sessions "
			       "already exist and cannot be guarded; inject when it has finished, or "
			       "use --force", busy);
	}

	/* the library, as the target's user and file system see it */
	if (lib[0] != '/') {
		refuse(rep, "the library path must be absolute: %s", lib);
	} else if (!t->lib_found) {
		refuse(rep, "%s does not exist in the process's file system view (/proc/%d/root)",
		       lib, (int)pid);
	} else {
		bool noexec = false;
		int e = library_access_as_target(pid, &t->creds, lib, &noexec);
		if (e != 0)
			refuse(rep, "the process's user (uid %u, gid %u) cannot read %s: %s",
			       (unsigned)t->creds.uid[3], (unsigned)t->creds.gid[3], lib, strerror(e));
		else if (noexec)
			refuse(rep, "%s is on a noexec mount: the process cannot map it", lib);
	}

	/* ptrace permission, probed without stopping anything: opening
	 * /proc/PID/mem passes the same access check as PTRACE_ATTACH */
	char mem[64];
	snprintf(mem, sizeof mem, "/proc/%d/mem", (int)pid);
	int memfd = open(mem, O_RDONLY | O_CLOEXEC);
	if (memfd < 0 && (errno == EACCES || errno == EPERM))
		explain_ptrace_denied(rep, errno);
	if (memfd >= 0)
		close(memfd);

	if (proc_status_field(pid, pid, "x86_Thread_features", v, sizeof v) && strstr(v, "shstk"))
		refuse(rep, "the main thread uses a CET shadow stack: the borrowed call returns through "
		       "addresses the shadow stack does not hold, which would kill the process");
	if (proc_status_field(pid, 0, "Seccomp", v, sizeof v) && atoi(v) == 2)
		remark(rep, "the process runs under a seccomp filter (QEMU -sandbox): the load needs "
		       "openat, mmap, mprotect, munmap, getpid and tgkill; QEMU's sandbox allows them, "
		       "another filter may kill the process (SIGSYS)");
	char env[256];
	if (proc_environ_get(pid, "REKEYGUARD_MODE", env, sizeof env))
		remark(rep, "the process's environment has REKEYGUARD_MODE=%s", env);
	if (proc_environ_get(pid, "REKEYGUARD_PROVOKE_REKEY", env, sizeof env))
		remark(rep, "the process's environment has REKEYGUARD_PROVOKE_REKEY=%s: forced key "
		       "updates (validation only)", env);

	if (rep->refusals == 0)
		resolve_libc(t, rep);
}

static void report_where(pid_t pid)
{
	char path[64], buf[256];
	snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
	if (!read_small_file(path, buf, sizeof buf))
		return;
	if (strcmp(buf, "running") == 0) {
		say("  main thread: running (it will be caught when it next waits)\n");
		return;
	}
	long nr = strtol(buf, NULL, 10);
	const char *name = nr >= 0 ? inj_syscall_name(nr) : NULL;
	if (nr < 0)
		say("  main thread: not in a system call right now\n");
	else
		say("  main thread: in %s%s%ld (%s)\n", name ? name : "syscall ", name ? " = " : "",
		    nr, inj_syscall_is_safe(nr) ? "a safe point" : "not a safe point; will retry");
}

static void finish(struct report *rep, const char *status, const char *extra)
{
	snprintf(rep->status, sizeof rep->status, "%s", status);
	say("RESULT pid=%d status=%s%s%s\n", (int)rep->pid, status, extra[0] ? " " : "", extra);
}

static int process_one(pid_t pid, const char *lib)
{
	struct report rep = { .pid = pid };
	struct target t = { .pid = pid };
	proc_comm(pid, rep.comm, sizeof rep.comm);
	say("rekeyguard-inject: PID %d (%s)\n", (int)pid, rep.comm);
	inspect(&t, &rep, lib);

	if (rep.refusals > 0) {
		finish(&rep, "refused", "");
		proc_maps_free(&t.maps);
		return 1;
	}

	/* what the library would patch, from the relocations */
	int libfd = -1;
	struct elf_object libelf = { .fd = -1 };
	struct names interposed = { 0 };
	char rootlib[PROC_PATH_MAX + 64], err[128];
	snprintf(rootlib, sizeof rootlib, "/proc/%d/root%s", (int)pid, lib);
	libfd = open(rootlib, O_RDONLY | O_CLOEXEC);
	uint64_t activate;
	if (libfd < 0 || elf_object_open(&libelf, libfd, ELF_OBJECT_X86_64, err, sizeof err) != 0 ||
	    !library_interposed_names(&libelf, &interposed) ||
	    !elf_object_lookup(&libelf, "rekeyguard_inject_activate", &activate)) {
		refuse(&rep, "%s is not a rekeyguard library with late loading "
		       "(rekeyguard_inject_activate)", lib);
		finish(&rep, "refused", "");
		elf_object_close(&libelf);
		if (libfd >= 0)
			close(libfd);
		names_free(&interposed);
		proc_maps_free(&t.maps);
		return 1;
	}
	elf_object_close(&libelf);
	close(libfd);

	struct got_scan before;
	scan_got(pid, &t.maps, &interposed, -1, 0, 0, &before);
	if (before.slots == 0)
		remark(&rep, "no loaded object imports an interposed GnuTLS function yet; objects "
		       "loaded later with dlopen are patched then");

	if (opt.check) {
		report_where(pid);
		say("  would load %s and patch %u GnuTLS GOT slots in %u object%s (%s) and %u dlopen "
		    "slots\n", lib, before.slots, before.objects, before.objects == 1 ? "" : "s",
		    before.per_object[0] ? before.per_object : "none", before.dlopen_slots);
		print_names("GnuTLS functions that would be guarded", &before.unguarded_names);
		char extra[64];
		snprintf(extra, sizeof extra, "slots=%u", before.slots);
		finish(&rep, "would-inject", extra);
		names_free(&before.guarded_names);
		names_free(&before.unguarded_names);
		names_free(&interposed);
		proc_maps_free(&t.maps);
		return 0;
	}
	names_free(&before.guarded_names);
	names_free(&before.unguarded_names);

	t.plan.pid = pid;
	t.plan.lib_path = lib;
	t.plan.timeout_ms = opt.timeout_ms;
	t.plan.verify_threads = opt.verify_threads;
	t.plan.test_die_at = opt.test_die_at;
	if (t.ld != NULL) {
		t.plan.ld_start = t.ld->start;
		t.plan.ld_end = proc_maps_object_end(&t.maps, t.ld);
	}
	struct inj_call_result res;
	inj_call(&t.plan, &res);

	int rc = 1;
	char extra[512];
	switch (res.outcome) {
	case INJ_CALL_PERMISSION:
		if (res.seize_errno == EPERM || res.seize_errno == EACCES)
			explain_ptrace_denied(&rep, res.seize_errno);
		else
			refuse(&rep, "%s", res.message);
		finish(&rep, "refused", "");
		break;
	case INJ_CALL_NOT_SAFE:
		refuse(&rep, "the main thread was never caught at a safe point (a waiting system "
		       "call such as ppoll) within %u ms; %u tries, last seen %s; nothing was changed",
		       opt.timeout_ms, res.attempts, res.where);
		finish(&rep, "not-safe", "");
		break;
	case INJ_CALL_GONE:
		say("  failed: the process went away during the injection%s%s\n",
		    res.message[0] ? ": " : "", res.message);
		finish(&rep, "gone", "");
		break;
	case INJ_CALL_ERROR:
		say("  failed: %s; the main thread was restored and released\n", res.message);
		finish(&rep, "failed", "");
		break;
	case INJ_CALL_DETACHED:
	case INJ_CALL_DONE: {
		if (res.outcome == INJ_CALL_DETACHED)
			say("  warning: %s; check later with rekeyguard-inject --check %d "
			    "(\"already mapped\") and the process's log\n", res.message, (int)pid);
		struct proc_maps after = { 0 };
		const struct proc_map *m = NULL;
		uint64_t lib_end = 0;
		if (proc_maps_read(pid, &after) == 0) {
			m = proc_maps_find_inode(&after, t.lib_st.st_dev, t.lib_st.st_ino);
			if (m != NULL)
				lib_end = proc_maps_object_end(&after, m);
		}
		if (res.outcome == INJ_CALL_DONE && res.handle == 0) {
			say("  failed: dlopen in the target: %s%s\n", res.dlerror[0] ? res.dlerror : "(no message)",
			    strstr(res.dlerror, "ermission") ? " (an LSM? AppArmor needs a rule for the "
			    "library in abstractions/libvirt-qemu.d)" : "");
		} else if (res.outcome == INJ_CALL_DONE && !res.activate_found) {
			say("  failed: %s was loaded but has no rekeyguard_inject_activate\n", lib);
		} else {
			say("  %s %s%s\n", m != NULL ? "injected" : "not loaded:", lib,
			    res.outcome == INJ_CALL_DETACHED ? " (load still running when we let go)" : "");
			if (res.outcome == INJ_CALL_DONE)
				say("  rekeyguard_inject_activate: %ld%s\n", res.activate_ret,
				    res.activate_ret > 0 ? " GOT slots patched (GnuTLS functions and dlopen)" :
				    res.activate_ret == 0 ? " (guarding is off: REKEYGUARD_MODE=off, "
				    "or GnuTLS lacks a function the library needs; it passes through)" : " (error; see the process's log)");
			rc = (m != NULL && res.outcome == INJ_CALL_DONE && res.activate_ret >= 0) ? 0 : 1;
		}
		say("  main thread borrowed %.2f ms: caught in %s after %u interrupt%s, library load "
		    "%.2f ms, stopped for the injector %.2f ms (%u stops)%s\n",
		    res.borrowed_ms, res.where, res.attempts, res.attempts == 1 ? "" : "s", res.call_ms,
		    res.stopped_ms, res.stops,
		    res.unsafe_ms > 0 ? "; earlier tries stopped it" : "");
		if (res.unsafe_ms > 0)
			say("    %.2f ms in all at points that were not safe\n", res.unsafe_ms);
		if (opt.verify_threads)
			say("  other threads while borrowed: %d, of which stopped: %d\n", res.other_threads,
			    res.other_stopped);
		struct got_scan scan = { 0 };
		if (m != NULL) {
			char mem[64];
			snprintf(mem, sizeof mem, "/proc/%d/mem", (int)pid);
			int memfd = open(mem, O_RDONLY | O_CLOEXEC);
			scan_got(pid, &after, &interposed, memfd, m->start, lib_end, &scan);
			if (memfd >= 0)
				close(memfd);
			say("  read back from the process: %u of %u GnuTLS GOT slots point at the library "
			    "(%s); dlopen watched in %u of %u slots\n", scan.guarded, scan.slots,
			    scan.per_object[0] ? scan.per_object : "no object imports them",
			    scan.dlopen_watched, scan.dlopen_slots);
			print_names("guarded GnuTLS functions", &scan.guarded_names);
			print_names("NOT guarded", &scan.unguarded_names);
			if (res.activate_ret > 0 && scan.unguarded_names.n > 0)
				rc = 1;
			if (scan.self_slots > scan.self_bound) {
				say("  warning: the library's own calls to its GnuTLS wrappers go straight to "
				    "GnuTLS in a late-loaded copy (link it with -Wl,-Bsymbolic-functions): "
				    "these calls take no session lock:\n");
				print_names("unguarded internal calls", &scan.self_unbound_names);
			}
		}
		snprintf(extra, sizeof extra,
			 "slots=%ld guarded_slots=%u guarded_functions=%zu borrowed_ms=%.3f call_ms=%.3f "
			 "stopped_ms=%.3f unsafe_ms=%.3f attempts=%u stops=%u where=%s other_threads=%d "
			 "other_stopped=%d self_unbound=%u",
			 res.activate_ret, scan.guarded, scan.guarded_names.n, res.borrowed_ms, res.call_ms,
			 res.stopped_ms, res.unsafe_ms, res.attempts, res.stops, res.where,
			 opt.verify_threads ? res.other_threads : -1,
			 opt.verify_threads ? res.other_stopped : -1, scan.self_slots - scan.self_bound);
		finish(&rep, rc == 0 ? "injected" : res.outcome == INJ_CALL_DETACHED ? "detached" : "failed",
		       extra);
		names_free(&scan.guarded_names);
		names_free(&scan.unguarded_names);
		names_free(&scan.self_unbound_names);
		proc_maps_free(&after);
		break;
	}
	}
	names_free(&interposed);
	proc_maps_free(&t.maps);
	return rc;
}

/* ------------------------------------------------------------ main */

static unsigned parse_unsigned(const char *s, const char *what)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v == 0 || v > 600000) {
		fprintf(stderr, "rekeyguard-inject: %s '%s' is not a number from 1 to 600000\n", what, s);
		exit(2);
	}
	return (unsigned)v;
}

int main(int argc, char **argv)
{
	enum { O_CHECK = 256, O_FORCE, O_LIB, O_TIMEOUT, O_VERIFY, O_HELP };
	static const struct option longopts[] = {
		{ "check", no_argument, NULL, O_CHECK },
		{ "force", no_argument, NULL, O_FORCE },
		{ "lib", required_argument, NULL, O_LIB },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "verify-threads", no_argument, NULL, O_VERIFY },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case O_CHECK: opt.check = true; break;
		case O_FORCE: opt.force = true; break;
		case O_LIB: opt.lib = optarg; break;
		case O_TIMEOUT: opt.timeout_ms = parse_unsigned(optarg, "--timeout"); break;
		case O_VERIFY: opt.verify_threads = true; break;
		case 'h':
		case O_HELP: usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	const char *die = getenv("REKEYGUARD_INJECT_TEST_DIE_AT");
	if (die != NULL)
		opt.test_die_at = atoi(die);

	char lib[PROC_PATH_MAX];
	const char *given = opt.lib ? opt.lib : default_lib();
	if (given[0] == '/' || realpath(given, lib) == NULL)
		snprintf(lib, sizeof lib, "%s", given);
	if (lib[0] != '/') {
		fprintf(stderr, "rekeyguard-inject: cannot find %s (use --lib with an absolute path)\n", given);
		return 2;
	}

	for (int i = optind; i < argc; i++) {
		for (const char *p = argv[i]; *p; p++) {
			if (!isdigit((unsigned char)*p)) {
				fprintf(stderr, "rekeyguard-inject: '%s' is not a PID\n", argv[i]);
				return 2;
			}
		}
	}
	int status = 0;
	for (int i = optind; i < argc; i++)
		status |= process_one((pid_t)atoi(argv[i]), lib);
	return status;
}
