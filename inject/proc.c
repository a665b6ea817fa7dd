/*
 * proc.c — what rekeyguard-inject and rekeyguard-status read from /proc/PID.
 *
 * Owns: parsing maps, status, the task list, comm and environ, and access
 * to the target's memory through /proc/PID/mem. Nothing here stops the
 * target, and only proc_mem_write changes it; reading /proc/PID/mem only
 * needs the ptrace access check the caller already passed. No
 * architecture-specific code (proc.h).
 */
#define _GNU_SOURCE
#include "proc.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* ------------------------------------------------------------ maps */

static bool parse_map_line(const char *line, struct proc_map *m)
{
	int path_at = 0;
	unsigned long long start, end, offset, inode;
	memset(m, 0, sizeof *m);
	if (sscanf(line, "%llx-%llx %4s %llx %x:%x %llu %n", &start, &end, m->perms, &offset,
		   &m->dev_major, &m->dev_minor, &inode, &path_at) < 7)
		return false;
	m->start = start;
	m->end = end;
	m->offset = offset;
	m->inode = inode;
	if (path_at > 0) {
		snprintf(m->path, sizeof m->path, "%s", line + path_at);
		size_t len = strlen(m->path);
		while (len > 0 && (m->path[len - 1] == '\n' || m->path[len - 1] == ' '))
			m->path[--len] = '\0';
		const char *tag = " (deleted)";
		size_t tag_len = strlen(tag);
		if (len > tag_len && strcmp(m->path + len - tag_len, tag) == 0) {
			m->path[len - tag_len] = '\0';
			m->deleted = true;
		}
	}
	return true;
}

int proc_maps_read(pid_t pid, struct proc_maps *maps)
{
	char name[64];
	snprintf(name, sizeof name, "/proc/%d/maps", (int)pid);
	FILE *f = fopen(name, "re");
	if (f == NULL)
		return -errno;
	maps->v = NULL;
	maps->n = 0;
	size_t cap = 0;
	char *line = NULL;
	size_t line_cap = 0;
	while (getline(&line, &line_cap, f) > 0) {
		if (maps->n == cap) {
			cap = cap ? cap * 2 : 256;
			struct proc_map *v = realloc(maps->v, cap * sizeof *v);
			if (v == NULL) {
				free(line);
				fclose(f);
				proc_maps_free(maps);
				return -ENOMEM;
			}
			maps->v = v;
		}
		if (parse_map_line(line, &maps->v[maps->n]))
			maps->n++;
	}
	free(line);
	fclose(f);
	return maps->n > 0 ? 0 : -ESRCH;
}

void proc_maps_free(struct proc_maps *maps)
{
	free(maps->v);
	maps->v = NULL;
	maps->n = 0;
}

static const char *base_name(const char *path)
{
	const char *slash = strrchr(path, '/');
	return slash ? slash + 1 : path;
}

const struct proc_map *proc_maps_find_object(const struct proc_maps *maps, const char *prefix)
{
	for (size_t i = 0; i < maps->n; i++) {
		const struct proc_map *m = &maps->v[i];
		if (m->offset == 0 && m->path[0] == '/' &&
		    strncmp(base_name(m->path), prefix, strlen(prefix)) == 0)
			return m;
	}
	return NULL;
}

const struct proc_map *proc_maps_find_inode(const struct proc_maps *maps, uint64_t dev,
					   uint64_t inode)
{
	for (size_t i = 0; i < maps->n; i++) {
		const struct proc_map *m = &maps->v[i];
		if (m->offset == 0 && m->inode == inode && m->inode != 0 &&
		    makedev(m->dev_major, m->dev_minor) == dev)
			return m;
	}
	return NULL;
}

uint64_t proc_maps_object_end(const struct proc_maps *maps, const struct proc_map *first)
{
	uint64_t end = first->end;
	for (size_t i = 0; i < maps->n; i++) {
		const struct proc_map *m = &maps->v[i];
		if (m->inode == first->inode && m->dev_major == first->dev_major &&
		    m->dev_minor == first->dev_minor && m->end > end)
			end = m->end;
	}
	return end;
}

int proc_map_open(pid_t pid, const struct proc_map *m, bool *via_map_files)
{
	bool ignored;
	if (via_map_files == NULL)
		via_map_files = &ignored;
	*via_map_files = true;
	char name[PROC_PATH_MAX + 64];
	snprintf(name, sizeof name, "/proc/%d/map_files/%" PRIx64 "-%" PRIx64, (int)pid,
		 m->start, m->end);
	int fd = open(name, O_RDONLY | O_CLOEXEC);
	if (fd >= 0)
		return fd;
	int saved = errno;
	*via_map_files = false;   /* needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE */
	if (!m->deleted && m->path[0] == '/') {
		snprintf(name, sizeof name, "/proc/%d/root%s", (int)pid, m->path);
		fd = open(name, O_RDONLY | O_CLOEXEC);
		if (fd >= 0)
			return fd;
	}
	return -saved;
}

/* ------------------------------------------------------------ status */

bool proc_status_field(pid_t pid, pid_t tid, const char *key, char *out, size_t len)
{
	char name[96];
	if (tid > 0)
		snprintf(name, sizeof name, "/proc/%d/task/%d/status", (int)pid, (int)tid);
	else
		snprintf(name, sizeof name, "/proc/%d/status", (int)pid);
	FILE *f = fopen(name, "re");
	if (f == NULL)
		return false;
	char line[1024];
	size_t key_len = strlen(key);
	bool found = false;
	while (fgets(line, sizeof line, f) != NULL) {
		if (strncmp(line, key, key_len) == 0 && line[key_len] == ':') {
			const char *v = line + key_len + 1;
			while (*v == ' ' || *v == '\t')
				v++;
			snprintf(out, len, "%s", v);
			size_t n = strlen(out);
			while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == ' '))
				out[--n] = '\0';
			found = true;
			break;
		}
	}
	fclose(f);
	return found;
}

bool proc_status_sigset(pid_t pid, pid_t tid, const char *key, uint64_t *set)
{
	char v[64];
	if (!proc_status_field(pid, tid, key, v, sizeof v))
		return false;
	char *end;
	*set = strtoull(v, &end, 16);
	return end != v;
}

bool proc_read_creds(pid_t pid, struct proc_creds *c)
{
	char v[4096];
	memset(c, 0, sizeof *c);
	unsigned long a[4], b[4];
	if (!proc_status_field(pid, 0, "Uid", v, sizeof v) ||
	    sscanf(v, "%lu %lu %lu %lu", &a[0], &a[1], &a[2], &a[3]) != 4)
		return false;
	if (!proc_status_field(pid, 0, "Gid", v, sizeof v) ||
	    sscanf(v, "%lu %lu %lu %lu", &b[0], &b[1], &b[2], &b[3]) != 4)
		return false;
	for (int i = 0; i < 4; i++) {
		c->uid[i] = (uid_t)a[i];
		c->gid[i] = (gid_t)b[i];
	}
	if (proc_status_field(pid, 0, "Groups", v, sizeof v)) {
		char *p = v, *end;
		while (c->ngroups < (int)(sizeof c->groups / sizeof c->groups[0])) {
			unsigned long g = strtoul(p, &end, 10);
			if (end == p)
				break;
			c->groups[c->ngroups++] = (gid_t)g;
			p = end;
		}
	}
	if (proc_status_field(pid, 0, "CapEff", v, sizeof v))
		c->cap_eff = strtoull(v, NULL, 16);
	return true;
}

/* ------------------------------------------------------------ threads */

int proc_threads_read(pid_t pid, struct proc_thread *out, int max)
{
	char name[64];
	snprintf(name, sizeof name, "/proc/%d/task", (int)pid);
	DIR *d = opendir(name);
	if (d == NULL)
		return -errno;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL && n < max) {
		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		struct proc_thread *t = &out[n];
		t->tid = (pid_t)atoi(e->d_name);
		t->comm[0] = '\0';
		t->state = '?';
		char path[96], buf[512];
		snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)t->tid);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;       /* the thread just ended */
		ssize_t len = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (len <= 0)
			continue;
		buf[len] = '\0';
		char *open_paren = strchr(buf, '('), *close_paren = strrchr(buf, ')');
		if (open_paren == NULL || close_paren == NULL || close_paren < open_paren)
			continue;
		size_t clen = (size_t)(close_paren - open_paren - 1);
		if (clen >= sizeof t->comm)
			clen = sizeof t->comm - 1;
		memcpy(t->comm, open_paren + 1, clen);
		t->comm[clen] = '\0';
		if (close_paren[1] == ' ')
			t->state = close_paren[2];
		n++;
	}
	closedir(d);
	return n;
}

void proc_comm(pid_t pid, char *out, size_t len)
{
	char name[64];
	snprintf(name, sizeof name, "/proc/%d/comm", (int)pid);
	snprintf(out, len, "?");
	FILE *f = fopen(name, "re");
	if (f == NULL)
		return;
	if (fgets(out, (int)len, f) != NULL)
		out[strcspn(out, "\n")] = '\0';
	fclose(f);
}

char *proc_nul_list(pid_t pid, const char *what, size_t *len)
{
	char name[64];
	snprintf(name, sizeof name, "/proc/%d/%s", (int)pid, what);
	int fd = open(name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 1 << 16, used = 0;
	char *buf = malloc(cap + 1);
	ssize_t r;
	while (buf != NULL && (r = read(fd, buf + used, cap - used)) > 0) {
		used += (size_t)r;
		if (used == cap) {
			char *bigger = realloc(buf, cap * 2 + 1);
			if (bigger == NULL)
				break;
			buf = bigger;
			cap *= 2;
		}
	}
	close(fd);
	if (buf == NULL)
		return NULL;
	buf[used] = '\0';
	*len = used;
	return buf;
}

bool proc_environ_get(pid_t pid, const char *key, char *out, size_t len)
{
	size_t used = 0;
	char *buf = proc_nul_list(pid, "environ", &used);
	if (buf == NULL)
		return false;
	bool found = false;
	size_t key_len = strlen(key);
	for (size_t i = 0; i < used; i += strlen(buf + i) + 1) {
		if (strncmp(buf + i, key, key_len) == 0 && buf[i + key_len] == '=') {
			snprintf(out, len, "%s", buf + i + key_len + 1);
			found = true;
			break;
		}
	}
	free(buf);
	return found;
}

/* ------------------------------------------------------------ memory */

int proc_mem_read(int memfd, uint64_t addr, void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t r = pread(memfd, (char *)buf + done, len - done, (off_t)(addr + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		done += (size_t)r;
	}
	return 0;
}

int proc_mem_write(int memfd, uint64_t addr, const void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t r = pwrite(memfd, (const char *)buf + done, len - done,
				   (off_t)(addr + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		done += (size_t)r;
	}
	return 0;
}

int proc_mem_read_string(int memfd, uint64_t addr, char *buf, size_t len)
{
	if (len == 0)
		return -EINVAL;
	/* Read in small pieces so a string near the end of a mapping works. */
	size_t done = 0;
	while (done + 1 < len) {
		size_t chunk = 64 - ((addr + done) & 63);
		if (chunk > len - 1 - done)
			chunk = len - 1 - done;
		ssize_t r = pread(memfd, buf + done, chunk, (off_t)(addr + done));
		if (r <= 0)
			break;
		void *nul = memchr(buf + done, '\0', (size_t)r);
		done += (size_t)r;
		if (nul != NULL)
			return 0;
	}
	buf[done] = '\0';
	return done > 0 ? 0 : -EIO;
}
