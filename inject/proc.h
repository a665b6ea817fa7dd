/*
 * proc.h — reading another process through /proc/PID: its mappings,
 * status, threads, comm, command line and environment, and its memory.
 *
 * Shared by rekeyguard-inject and rekeyguard-status (inject/proc.c). Plain
 * Linux /proc, no architecture-specific code: builds wherever the library
 * does. Functions that open /proc/PID files pass the kernel's own access
 * check (ptrace read mode for maps, environ and mem) and report its
 * failure. Nothing here stops the process; only proc_mem_write changes it.
 */
#ifndef REKEYGUARD_PROC_H
#define REKEYGUARD_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PROC_PATH_MAX 4096

struct proc_map {
	uint64_t start, end, offset;
	unsigned dev_major, dev_minor;
	uint64_t inode;
	char perms[5];
	bool deleted;           /* "(deleted)": replaced on disk since mapped */
	char path[PROC_PATH_MAX];
};

struct proc_maps {
	struct proc_map *v;
	size_t n;
};

/* Reads /proc/PID/maps; returns 0, -ESRCH when it lists no mapping (a
 * kernel thread, a process that just exited), or -errno of the open. */
int proc_maps_read(pid_t pid, struct proc_maps *maps);
void proc_maps_free(struct proc_maps *maps);
/* The lowest mapping of the object whose file name (last path component)
 * starts with `prefix` and has offset 0, or NULL. */
const struct proc_map *proc_maps_find_object(const struct proc_maps *maps, const char *prefix);
/* The lowest offset-0 mapping of the file with this device and inode. */
const struct proc_map *proc_maps_find_inode(const struct proc_maps *maps, uint64_t dev,
					   uint64_t inode);
/* Highest end address of the mappings of the same file as `m`. */
uint64_t proc_maps_object_end(const struct proc_maps *maps, const struct proc_map *m);
/* Opens the file behind a mapping: /proc/PID/map_files/START-END (the very
 * file mapped, even deleted or replaced on disk), else /proc/PID/root/PATH.
 * Returns an fd or -errno. */
int proc_map_open(pid_t pid, const struct proc_map *m, bool *via_map_files);

/* One "Key:\tvalue" line of /proc/PID/status (or task/TID/status when
 * tid > 0); returns false when missing. */
bool proc_status_field(pid_t pid, pid_t tid, const char *key, char *out, size_t len);

struct proc_creds {
	uid_t uid[4];           /* real, effective, saved, fs */
	gid_t gid[4];
	gid_t groups[256];
	int ngroups;
	uint64_t cap_eff;
};
bool proc_read_creds(pid_t pid, struct proc_creds *creds);

/* Signal sets from status (SigBlk, SigCgt, SigIgn, SigPnd, ShdPnd). */
bool proc_status_sigset(pid_t pid, pid_t tid, const char *key, uint64_t *set);

/* Thread IDs and names. */
struct proc_thread {
	pid_t tid;
	char comm[32];
	char state;
};
int proc_threads_read(pid_t pid, struct proc_thread *out, int max);

/* /proc/PID/comm, /proc/PID/environ lookup. */
void proc_comm(pid_t pid, char *out, size_t len);
bool proc_environ_get(pid_t pid, const char *name, char *out, size_t len);
/* A NUL-separated /proc/PID/WHAT file (cmdline, environ), NUL-terminated;
 * *len is its length; NULL when unreadable.  The caller frees it. */
char *proc_nul_list(pid_t pid, const char *what, size_t *len);

/* Target memory through /proc/PID/mem (fd opened by the caller). */
int proc_mem_read(int memfd, uint64_t addr, void *buf, size_t len);
int proc_mem_write(int memfd, uint64_t addr, const void *buf, size_t len);
int proc_mem_read_string(int memfd, uint64_t addr, char *buf, size_t len);

#endif
