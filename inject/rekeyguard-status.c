/*
 * rekeyguard-status.c — is a running QEMU (or any GnuTLS program) protected?
 *
 *   rekeyguard-status [--json | --prometheus] [--output FILE] [--all] [PID...]
 *
 * For each given PID, or each running QEMU process when none is given,
 * reports whether librekeyguard.so is mapped (/proc/PID/maps), which GnuTLS
 * is mapped and its version, whether LD_PRELOAD names the library although
 * it is not mapped (glibc ignores LD_PRELOAD paths with a slash in
 * secure-execution mode, e.g. under SELinux sVirt), and what to do about an
 * unprotected process. For a protected process it reads the library's
 * counters, `struct rekeyguard_status` (include/rekeyguard.h): the symbol
 * from the mapped library's dynamic symbol table (elf-object.c), the
 * words from /proc/PID/mem (proc.c).
 *
 * Owns: the command line, the choice of processes, the state and advice
 * of each, and the report (text, JSON or the Prometheus text format,
 * optionally written to a file atomically). Only reads: it never attaches to,
 * stops or writes to a process, and it builds on any Linux architecture.
 *
 * Invariants: a process whose files cannot be opened as it sees them (its
 * own root or mount namespace) is read through /proc/PID/root and the
 * report says so, or says why not; nothing is guessed. Exit status: 0 all
 * protected or not affected, 1 at least one unprotected, 2 usage error or a
 * PID that cannot be inspected.
 */
#define _GNU_SOURCE
#include "elf-object.h"
#include "proc.h"
#include "rekeyguard.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROGRAM "rekeyguard-status"
/* GnuTLS 3.8.11 reworked key updates: REKEYGUARD_MODE=auto serialises only
 * key changes from this version on (shim/config.c). */
#define GNUTLS_KEYUPDATE_REWORK "3.8.11"

static void usage(void)
{
	fputs("Usage: rekeyguard-status [--json | --prometheus] [--output FILE] [--all] [PID...]\n"
	      "\n"
	      "Reports whether librekeyguard.so protects running processes against the\n"
	      "GnuTLS TLS 1.3 key-update race.\n"
	      "\n"
	      "  PID...    processes to inspect (default: every running QEMU process:\n"
	      "            qemu-system-*, qemu-kvm)\n"
	      "  --all     inspect every process that has libgnutls mapped\n"
	      "  --json    one JSON array on stdout, for scripts\n"
	      "  --prometheus  the Prometheus text format (node_exporter's textfile\n"
	      "            collector): per process rekeyguard_process_protected (labels\n"
	      "            state, mode, gnutls_version, injected), ..._sessions_guarded_total,\n"
	      "            ..._sessions_unguarded, ..._injected; per host\n"
	      "            rekeyguard_processes{state} and rekeyguard_scrape_success\n"
	      "  --output FILE  write the report to FILE atomically (a temporary file\n"
	      "            in the same directory, then rename), e.g.\n"
	      "            /var/lib/prometheus/node-exporter/rekeyguard.prom\n"
	      "  --help    this text\n"
	      "\n"
	      "States: protected (the library is mapped and guarding), unprotected\n"
	      "(GnuTLS without the library, with REKEYGUARD_MODE=off, or with\n"
	      "REKEYGUARD_MODE=keyupdate before GnuTLS 3.8.11: every GnuTLS release\n"
	      "races; 3.8.11 and later only when both directions change keys at\n"
	      "once), not-affected (no GnuTLS mapped), unknown (the process could not be\n"
	      "read; run as root or as its user).\n"
	      "Exit status: 0 all protected or not affected, 1 any unprotected, 2 errors.\n",
	      stdout);
}

/* ------------------------------------------------------------ small strings */

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (p == NULL) {
		fprintf(stderr, PROGRAM ": out of memory\n");
		exit(2);
	}
	return p;
}

static void *xmalloc(size_t n)
{
	return xrealloc(NULL, n);
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	return memcpy(xmalloc(n), s, n);
}

static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *s = NULL;
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0) {
		fprintf(stderr, PROGRAM ": out of memory\n");
		exit(2);
	}
	return s;
}

/* "a" + "; " + "b", either may be empty; frees a. */
static char *join_advice(char *a, const char *b)
{
	char *s = a[0] != '\0' ? xasprintf("%s; %s", a, b) : xstrdup(b);
	free(a);
	return s;
}

static bool all_digits(const char *s)
{
	for (; *s != '\0'; s++)
		if (!isdigit((unsigned char)*s))
			return false;
	return true;
}

/* The PID an argument names, or 0 when no process can have it (no /proc
 * entry is spelt with a leading zero, or is out of range). */
static pid_t parse_pid(const char *arg)
{
	if (arg[0] == '\0' || arg[0] == '0' || !all_digits(arg) || strlen(arg) > 10)
		return 0;
	unsigned long long v = strtoull(arg, NULL, 10);
	return v <= INT_MAX ? (pid_t)v : 0;
}

/* ------------------------------------------------------------ versions */

/* GNU sort -V (gnulib filevercmp), which the shell version of this tool
 * used: the order of one character outside a digit run. */
static int version_char_order(const char *s, size_t pos, size_t len)
{
	if (pos == len)
		return -1;
	unsigned char c = (unsigned char)s[pos];
	if (isdigit(c))
		return 0;
	if (isalpha(c))
		return c;
	if (c == '~')
		return -2;
	return (int)c + UCHAR_MAX + 1;
}

static int verrevcmp(const char *a, size_t alen, const char *b, size_t blen)
{
	size_t i = 0, j = 0;
	while (i < alen || j < blen) {
		int first_diff = 0;
		while ((i < alen && !isdigit((unsigned char)a[i])) ||
		       (j < blen && !isdigit((unsigned char)b[j]))) {
			int ac = version_char_order(a, i, alen), bc = version_char_order(b, j, blen);
			if (ac != bc)
				return ac - bc;
			i++;
			j++;
		}
		while (i < alen && a[i] == '0')
			i++;
		while (j < blen && b[j] == '0')
			j++;
		while (i < alen && j < blen && isdigit((unsigned char)a[i]) &&
		       isdigit((unsigned char)b[j])) {
			if (first_diff == 0)
				first_diff = a[i] - b[j];
			i++;
			j++;
		}
		if (i < alen && isdigit((unsigned char)a[i]))
			return 1;
		if (j < blen && isdigit((unsigned char)b[j]))
			return -1;
		if (first_diff != 0)
			return first_diff;
	}
	return 0;
}

/* Length of s without its file suffixes ((\.[A-Za-z~][A-Za-z0-9~]*)*$). */
static size_t version_prefix_len(const char *s, size_t len)
{
	size_t prefix = 0;
	for (size_t i = 0; i < len;) {
		i++;
		prefix = i;
		while (i + 1 < len && s[i] == '.' &&
		       (isalpha((unsigned char)s[i + 1]) || s[i + 1] == '~'))
			for (i += 2; i < len && (isalnum((unsigned char)s[i]) || s[i] == '~'); i++)
				continue;
	}
	return prefix;
}

static int filevercmp(const char *a, const char *b)
{
	size_t alen = strlen(a), blen = strlen(b);
	if (alen == 0)
		return blen == 0 ? 0 : -1;
	if (blen == 0)
		return 1;
	if (a[0] == '.' || b[0] == '.') {
		if (a[0] != '.' || b[0] != '.')
			return a[0] == '.' ? -1 : 1;
		bool adot = alen == 1, bdot = blen == 1;
		if (adot || bdot)
			return adot && bdot ? 0 : adot ? -1 : 1;
		bool adotdot = alen == 2 && a[1] == '.', bdotdot = blen == 2 && b[1] == '.';
		if (adotdot || bdotdot)
			return adotdot && bdotdot ? 0 : adotdot ? -1 : 1;
	}
	size_t aprefix = version_prefix_len(a, alen), bprefix = version_prefix_len(b, blen);
	int result = verrevcmp(a, aprefix, b, bprefix);
	if (result != 0 || (aprefix == alen && bprefix == blen))
		return result;
	return verrevcmp(a, alen, b, blen);
}

/* True when version a sorts before b (sort -V, ties broken bytewise). */
static bool version_older(const char *a, const char *b)
{
	if (strcmp(a, b) == 0)
		return false;
	int c = filevercmp(a, b);
	return c != 0 ? c < 0 : strcmp(a, b) < 0;
}

/* Standard output of a program (found in PATH; stderr discarded), or NULL
 * when it cannot be run. The caller frees it. */
static char *run_capture(char *const argv[])
{
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) != 0)
		return NULL;
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
	posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
	pid_t child;
	extern char **environ;
	int rc = posix_spawnp(&child, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	if (rc != 0) {
		close(pipefd[0]);
		return NULL;
	}
	size_t cap = 4096, used = 0;
	char *out = xmalloc(cap);
	ssize_t r;
	while ((r = read(pipefd[0], out + used, cap - 1 - used)) != 0) {
		if (r < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		used += (size_t)r;
		if (used == cap - 1) {
			char *bigger = realloc(out, cap * 2);
			if (bigger == NULL)
				break;
			out = bigger;
			cap *= 2;
		}
	}
	out[used] = '\0';
	close(pipefd[0]);
	while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
		continue;
	return out;
}

/* The Debian package's upstream version of an installed file: the package
 * from `dpkg-query -S` (first line, up to the first colon), its
 * `${Version}` without epoch and revision. NULL when no package owns it;
 * "" when the package's version cannot be read. */
static char *dpkg_upstream_version(const char *path)
{
	char *const search[] = { "dpkg-query", "-S", (char *)path, NULL };
	char *owner = run_capture(search);
	if (owner == NULL)
		return NULL;
	owner[strcspn(owner, "\n")] = '\0';
	owner[strcspn(owner, ":")] = '\0';
	if (owner[0] == '\0') {
		free(owner);
		return NULL;
	}
	char *const show[] = { "dpkg-query", "-W", "-f=${Version}", owner, NULL };
	char *ver = run_capture(show);
	free(owner);
	if (ver == NULL)
		return xstrdup("");
	ver[strcspn(ver, "\n")] = '\0';
	const char *colon = strchr(ver, ':');
	char *upstream = xstrdup(colon != NULL ? colon + 1 : ver);
	upstream[strcspn(upstream, "-")] = '\0';
	free(ver);
	return upstream;
}

/* "3.N.N" exactly. */
static bool is_gnutls_version(const char *s, size_t len)
{
	size_t i = 0, dots = 0;
	if (len < 5 || s[0] != '3' || s[1] != '.')
		return false;
	for (i = 2; i < len; i++) {
		if (s[i] == '.') {
			if (++dots > 1 || !isdigit((unsigned char)s[i - 1]))
				return false;
		} else if (!isdigit((unsigned char)s[i])) {
			return false;
		}
	}
	return dots == 1 && isdigit((unsigned char)s[len - 1]);
}

/* The version string GnuTLS embeds (what gnutls_check_version returns):
 * the first run of 4 or more printable characters, as strings(1) finds
 * them, that reads 3.N.N. "" when there is none. */
static char *embedded_gnutls_version(const char *file)
{
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return xstrdup("");
	char buf[1 << 16], run[64];
	size_t run_len = 0;
	bool run_too_long = false;
	char *found = NULL;
	ssize_t r;
	while (found == NULL && (r = read(fd, buf, sizeof buf)) != 0) {
		if (r < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (ssize_t i = 0; i <= r && found == NULL; i++) {
			unsigned char c = i < r ? (unsigned char)buf[i] : 0;
			if (i < r && (c == '\t' || (c >= 0x20 && c <= 0x7e))) {
				if (run_len < sizeof run)
					run[run_len++] = (char)c;
				else
					run_too_long = true;
				continue;
			}
			if (i == r)
				break;          /* the run may go on in the next block */
			if (!run_too_long && run_len >= 4 && is_gnutls_version(run, run_len))
				found = xasprintf("%.*s", (int)run_len, run);
			run_len = 0;
			run_too_long = false;
		}
	}
	if (found == NULL && !run_too_long && run_len >= 4 && is_gnutls_version(run, run_len))
		found = xasprintf("%.*s", (int)run_len, run);
	close(fd);
	return found != NULL ? found : xstrdup("");
}

/* GnuTLS version of a mapped libgnutls (file: the path as this tool can
 * open it): from its Debian package when the process shares our file
 * system, else from the library itself, else "". */
static char *gnutls_version(const char *path, const char *file, bool shared)
{
	if (shared) {
		char *ver = dpkg_upstream_version(path);
		if (ver != NULL)
			return ver;
	}
	return embedded_gnutls_version(file);
}

/* ------------------------------------------------------------ one process */

/* A mapping's path as the maps line's sixth field: up to the first blank
 * (what the shell version of this tool matched). */
static void map_field(const struct proc_map *m, char *out, size_t len)
{
	snprintf(out, len, "%.*s", (int)strcspn(m->path, " \t"), m->path);
}

/* librekeyguard[^/]*\.so somewhere in a path. */
static bool names_shim(const char *path)
{
	static const char stem[] = "librekeyguard";
	for (const char *p = strstr(path, stem); p != NULL; p = strstr(p + 1, stem)) {
		const char *rest = p + sizeof stem - 1;
		size_t seg = strcspn(rest, "/");
		if (memmem(rest, seg, ".so", 3) != NULL)
			return true;
	}
	return false;
}

/* The value of NAME in a NUL-separated environment, or "". */
static const char *environ_value(const char *env, size_t len, const char *name)
{
	size_t name_len = strlen(name);
	for (size_t i = 0; env != NULL && i < len; i += strlen(env + i) + 1)
		if (strncmp(env + i, name, name_len) == 0 && env[i + name_len] == '=')
			return env + i + name_len + 1;
	return "";
}

/* True when the process sees the same file system as this tool (same root
 * directory and mount namespace), so that the paths in its maps name our
 * files. */
static bool same_root(pid_t pid)
{
	char path[64], ours[128], theirs[128];
	struct stat self_st, their_st;
	snprintf(path, sizeof path, "/proc/%d/root/", (int)pid);
	bool self_ok = stat("/proc/self/root/", &self_st) == 0;
	bool their_ok = stat(path, &their_st) == 0;
	if (self_ok != their_ok || (self_ok && (self_st.st_dev != their_st.st_dev ||
						self_st.st_ino != their_st.st_ino)))
		return false;
	snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int)pid);
	ssize_t n = readlink(path, theirs, sizeof theirs - 1);
	if (n <= 0)
		return false;
	theirs[n] = '\0';
	n = readlink("/proc/self/ns/mnt", ours, sizeof ours - 1);
	ours[n > 0 ? n : 0] = '\0';
	return strcmp(ours, theirs) == 0;
}

/* The library's status block in the process, read through the offset-0
 * mapping of the library's file (shim: the path in maps). */
static bool read_counters(pid_t pid, const struct proc_maps *maps, const char *shim,
			  struct rekeyguard_status *out)
{
	const struct proc_map *first = NULL;
	char field[PROC_PATH_MAX];
	for (size_t i = 0; i < maps->n && first == NULL; i++) {
		map_field(&maps->v[i], field, sizeof field);
		if (maps->v[i].offset == 0 && strcmp(field, shim) == 0)
			first = &maps->v[i];
	}
	if (first == NULL)
		return false;
	int fd = proc_map_open(pid, first, NULL);
	if (fd < 0)
		return false;
	struct elf_object elf;
	char err[128];
	uint64_t value = 0;
	bool found = elf_object_open(&elf, fd, 0, err, sizeof err) == 0 &&
		     elf_object_lookup(&elf, "rekeyguard_status", &value);
	uint64_t addr = found ? elf_object_bias(&elf, first->start) + value : 0;
	elf_object_close(&elf);
	close(fd);
	if (!found)
		return false;
	char mem[64];
	snprintf(mem, sizeof mem, "/proc/%d/mem", (int)pid);
	int memfd = open(mem, O_RDONLY | O_CLOEXEC);
	if (memfd < 0)
		return false;
	bool ok = proc_mem_read(memfd, addr, out, sizeof *out) == 0 &&
		  out->magic == REKEYGUARD_STATUS_MAGIC;
	close(memfd);
	return ok;
}

struct report {
	const char *pid;        /* as given */
	char *name;
	const char *state;      /* protected, unprotected, not-affected, unknown */
	char *library, *gnutls, *version, *preload, *advice;
	const char *mode;       /* guard, keyupdate, off (library loaded, switched
	                         * off) or none */
	bool counters_ok;       /* counters read from the library */
	struct rekeyguard_status counters;
};

enum format { FORMAT_TEXT, FORMAT_JSON, FORMAT_PROMETHEUS };

/* What the Prometheus format needs of one report (printed at the end,
 * grouped by metric). */
struct metric_row {
	char *pid, *name, *version;
	const char *state, *mode;
	bool counters_ok;
	struct rekeyguard_status counters;
};

struct output {
	enum format format;
	bool first;
	struct metric_row *rows;
	size_t nrows, cap;
};

static void json_string(const char *s)
{
	putchar('"');
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void report_print(struct output *out, const struct report *r)
{
	if (out->format == FORMAT_PROMETHEUS) {
		if (out->nrows == out->cap) {
			out->cap = out->cap ? out->cap * 2 : 16;
			out->rows = xrealloc(out->rows, out->cap * sizeof *out->rows);
		}
		out->rows[out->nrows++] = (struct metric_row){
			xstrdup(r->pid), xstrdup(r->name), xstrdup(r->version), r->state,
			r->mode != NULL ? r->mode : "none", r->counters_ok, r->counters
		};
	} else if (out->format == FORMAT_JSON) {
		static const char *const keys[] = { "name", "state", "library", "gnutls",
						    "gnutls_version", "ld_preload", "advice" };
		const char *values[] = { r->name, r->state, r->library, r->gnutls, r->version,
					 r->preload, r->advice };
		printf("%s\n  {\"pid\": %s", out->first ? "" : ",", r->pid);
		for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
			printf(", \"%s\": ", keys[i]);
			json_string(values[i]);
		}
		putchar('}');
	} else {
		printf("%s (%s): %s\n", r->pid, r->name, r->state);
		if (r->library[0] != '\0')
			printf("  library: %s\n", r->library);
		if (r->gnutls[0] != '\0')
			printf("  GnuTLS:  %s (%s)\n",
			       r->version[0] != '\0' ? r->version : "unknown version", r->gnutls);
		if (r->preload[0] != '\0')
			printf("  LD_PRELOAD: %s\n", r->preload);
		if (r->advice[0] != '\0')
			printf("  %s: %s\n", strcmp(r->state, "protected") == 0 ? "detail" : "next step",
			       r->advice);
	}
	out->first = false;
}

/* A label value in the Prometheus text format: backslash, double quote
 * and newline escaped. */
static void prom_label(const char *s)
{
	putchar('"');
	for (; *s != '\0'; s++) {
		if (*s == '\\' || *s == '"')
			printf("\\%c", *s);
		else if (*s == '\n')
			fputs("\\n", stdout);
		else
			putchar(*s);
	}
	putchar('"');
}

static void prom_family(const char *name, const char *type, const char *help)
{
	printf("# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void prom_process_labels(const struct metric_row *m)
{
	fputs("{pid=", stdout);
	prom_label(m->pid);
	fputs(",name=", stdout);
	prom_label(m->name);
}

/* One family from the library's counters (the 64-bit word at `offset` in
 * struct rekeyguard_status), a sample per process whose counters were read. */
static void prom_counter_family(const struct output *out, const char *name, const char *type,
				const char *help, size_t offset)
{
	prom_family(name, type, help);
	for (size_t i = 0; i < out->nrows; i++) {
		if (!out->rows[i].counters_ok)
			continue;
		uint64_t v;
		memcpy(&v, (const char *)&out->rows[i].counters + offset, sizeof v);
		fputs(name, stdout);
		prom_process_labels(&out->rows[i]);
		printf("} %" PRIu64 "\n", v);
	}
}

/* Every metric of the Prometheus output, grouped by family (the text
 * format wants each family's samples together). */
static void prometheus_print(const struct output *out, int status)
{
	prom_family("rekeyguard_process_protected", "gauge",
		    "1 when librekeyguard.so guards the process's GnuTLS sessions, else 0 "
		    "(state: protected, unprotected, not-affected, unknown).");
	for (size_t i = 0; i < out->nrows; i++) {
		const struct metric_row *m = &out->rows[i];
		fputs("rekeyguard_process_protected", stdout);
		prom_process_labels(m);
		fputs(",state=", stdout);
		prom_label(m->state);
		fputs(",mode=", stdout);
		prom_label(m->mode);
		fputs(",gnutls_version=", stdout);
		prom_label(m->version);
		fputs(",injected=", stdout);
		prom_label(m->counters_ok && m->counters.injected == 1 ? "1" : "0");
		printf("} %d\n", strcmp(m->state, "protected") == 0);
	}
	prom_counter_family(out, "rekeyguard_process_sessions_guarded_total", "counter",
			    "TLS sessions the library has guarded in the process since it was "
			    "loaded.", offsetof(struct rekeyguard_status, guarded));
	prom_counter_family(out, "rekeyguard_process_sessions_unguarded", "gauge",
			    "Distinct sessions used but not guarded (created before an "
			    "injection, or DTLS), counted up to 256.",
			    offsetof(struct rekeyguard_status, unguarded));
	prom_counter_family(out, "rekeyguard_process_injected", "gauge",
			    "1 when the library was loaded into the running process by "
			    "rekeyguard-inject.", offsetof(struct rekeyguard_status, injected));
	static const char *const states[] = { "protected", "unprotected", "not-affected",
					      "unknown" };
	prom_family("rekeyguard_processes", "gauge",
		    "Inspected processes on this host in each state.");
	for (size_t s = 0; s < sizeof states / sizeof states[0]; s++) {
		size_t n = 0;
		for (size_t i = 0; i < out->nrows; i++)
			n += strcmp(out->rows[i].state, states[s]) == 0;
		printf("rekeyguard_processes{state=\"%s\"} %zu\n", states[s], n);
	}
	prom_family("rekeyguard_scrape_success", "gauge",
		    "1 when every process asked for could be inspected.");
	printf("rekeyguard_scrape_success %d\n", status < 2);
}

static void output_free(struct output *out)
{
	for (size_t i = 0; i < out->nrows; i++) {
		free(out->rows[i].pid);
		free(out->rows[i].name);
		free(out->rows[i].version);
	}
	free(out->rows);
}

/* --output FILE: standard output goes to a temporary file beside FILE,
 * renamed over FILE once complete (node_exporter's textfile collector may
 * read at any moment). Returns the temporary file's name, or NULL after
 * an error message. */
static char *output_to_file_begin(const char *file)
{
	char *tmp = xasprintf("%s.XXXXXX", file);
	int fd = mkstemp(tmp);
	if (fd < 0) {
		fprintf(stderr, PROGRAM ": cannot create a temporary file beside %s: %s\n", file,
			strerror(errno));
		free(tmp);
		return NULL;
	}
	if (fchmod(fd, 0644) != 0 || fflush(stdout) != 0 || dup2(fd, STDOUT_FILENO) < 0) {
		fprintf(stderr, PROGRAM ": cannot write %s: %s\n", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
		free(tmp);
		return NULL;
	}
	close(fd);
	return tmp;
}

static bool output_to_file_end(char *tmp, const char *file)
{
	bool ok = fflush(stdout) == 0 && fsync(STDOUT_FILENO) == 0;
	if (ok && rename(tmp, file) != 0)
		ok = false;
	if (!ok) {
		fprintf(stderr, PROGRAM ": cannot write %s: %s\n", file, strerror(errno));
		unlink(tmp);
	}
	free(tmp);
	return ok;
}

static void report_free(struct report *r)
{
	free(r->name);
	free(r->library);
	free(r->gnutls);
	free(r->version);
	free(r->preload);
	free(r->advice);
}

/* Lower-case copy (REKEYGUARD_MODE is matched without case). */
static char *lower(const char *s)
{
	char *l = xstrdup(s);
	for (char *p = l; *p != '\0'; p++)
		*p = (char)tolower((unsigned char)*p);
	return l;
}

/* The mode REKEYGUARD_MODE (lower case; auto when unset or not valid)
 * makes the library run in: "keyupdate" or "guard" (also when the GnuTLS
 * version could not be read). */
static const char *guard_mode(const char *mode, const char *version)
{
	if (strcmp(mode, "keyupdate") == 0 || strcmp(mode, "guard") == 0)
		return mode;
	return version[0] != '\0' && !version_older(version, GNUTLS_KEYUPDATE_REWORK)
		       ? "keyupdate" : "guard";
}

/* What that mode does, in words. */
static const char *guard_level(const char *mode, const char *version)
{
	bool set = strcmp(mode, "keyupdate") == 0 || strcmp(mode, "guard") == 0;
	if (!set && version[0] == '\0')
		return "guarding, level unknown (the GnuTLS version could not be read)";
	if (strcmp(guard_mode(mode, version), "keyupdate") == 0)
		return "key changes serialised (GnuTLS 3.8.11+ handles the rest)";
	return "every GnuTLS call serialised";
}

static void unprotected_advice(struct report *r, bool shim_mapped)
{
	if (shim_mapped)
		r->advice = xstrdup("the library is loaded but REKEYGUARD_MODE=off; restart without it");
	else if (strstr(r->preload, "librekeyguard") != NULL)
		r->advice = xstrdup("LD_PRELOAD names the library but it is not mapped: "
				    "secure-execution mode (SELinux sVirt, setuid) ignores preload "
				    "paths with a slash; install it in a standard library directory "
				    "and preload it by file name, or set LD_PRELOAD in a wrapper "
				    "labelled qemu_exec_t");
	else if (strncmp(r->name, "qemu", 4) == 0)
		r->advice = xstrdup("restart it through run-qemu-with-shim (or a libvirt "
				    "<emulator> wrapper); for this running QEMU, migrate with "
				    "tls-creds-x509 priority=NORMAL:-AES-256-GCM:-AES-128-GCM:"
				    "-AES-128-CCM (CHACHA20, slower)");
	else
		r->advice = xstrdup("restart it with LD_PRELOAD=librekeyguard.so");
}

/* /proc/PID/comm without its newline, or NULL (no such process). */
static char *process_name(pid_t pid)
{
	size_t len = 0;
	char *name = pid > 0 ? proc_nul_list(pid, "comm", &len) : NULL;
	if (name == NULL)
		return NULL;
	while (len > 0 && name[len - 1] == '\n')
		name[--len] = '\0';
	if (len == 0) {
		free(name);
		return NULL;
	}
	return name;
}

/* Inspects and reports one process; returns its exit status (0, 1, 2). */
static int inspect(struct output *out, const char *pid_arg)
{
	pid_t pid = parse_pid(pid_arg);
	struct report r = { .pid = pid_arg };
	r.name = process_name(pid);
	if (r.name == NULL) {
		fflush(stdout);
		fprintf(stderr, PROGRAM ": no process %s\n", pid_arg);
		return 2;
	}
	r.library = xstrdup("");
	r.gnutls = xstrdup("");
	r.version = xstrdup("");
	r.preload = xstrdup("");

	struct proc_maps maps = { 0 };
	int err = proc_maps_read(pid, &maps);
	if (err != 0 && err != -ESRCH) {        /* -ESRCH: no mappings at all */
		r.state = "unknown";
		r.advice = xasprintf("cannot read /proc/%s/maps (not permitted: another user's "
				     "process, or ptrace restrictions such as "
				     "kernel.yama.ptrace_scope): run as root or as the process's user",
				     pid_arg);
		report_print(out, &r);
		report_free(&r);
		return 2;
	}
	char field[PROC_PATH_MAX];
	bool shim_mapped = false, gnutls_mapped = false;
	for (size_t i = 0; i < maps.n; i++) {
		map_field(&maps.v[i], field, sizeof field);
		if (!shim_mapped && names_shim(field)) {
			free(r.library);
			r.library = xstrdup(field);
			shim_mapped = true;
		}
		if (!gnutls_mapped && strstr(field, "libgnutls.so") != NULL) {
			free(r.gnutls);
			r.gnutls = xstrdup(field);
			gnutls_mapped = true;
		}
	}
	size_t env_len = 0;
	char *env = proc_nul_list(pid, "environ", &env_len);
	free(r.preload);
	r.preload = xstrdup(environ_value(env, env_len, "LD_PRELOAD"));
	char *mode = lower(environ_value(env, env_len, "REKEYGUARD_MODE"));
	free(env);

	/* The process's files as this tool can open them: directly when it
	 * shares our root and mount namespace, else through /proc/PID/root
	 * (a container, a chroot, or this tool running inside one). */
	bool shared = same_root(pid);
	char *unreadable = NULL;
	if (gnutls_mapped) {
		char *file = shared ? xstrdup(r.gnutls) : xasprintf("/proc/%d/root%s", (int)pid, r.gnutls);
		if (faccessat(AT_FDCWD, file, R_OK, AT_EACCESS) == 0) {
			free(r.version);
			r.version = gnutls_version(r.gnutls, file, shared);
		} else {
			int fd = open(file, O_RDONLY | O_CLOEXEC);
			const char *why = fd < 0 ? strerror(errno) : "not readable";
			unreadable = xasprintf("cannot read the process's files (%s: %s): it runs in "
					       "another mount namespace or root (container, chroot) "
					       "that this tool cannot enter, or without permission; run "
					       "rekeyguard-status as root in the host's namespace",
					       file, why);
			if (fd >= 0)
				close(fd);
		}
		free(file);
	}

	int status = 0;
	if (!gnutls_mapped) {
		r.state = "not-affected";
		r.advice = xstrdup("");
	} else if (shim_mapped && strcmp(mode, "keyupdate") == 0 && r.version[0] != '\0' &&
		   version_older(r.version, GNUTLS_KEYUPDATE_REWORK)) {
		/* keyupdate mode serialises only the key changes, which is
		 * enough from 3.8.11 on only (README: What each GnuTLS gets). */
		r.state = "unprotected";
		r.mode = "keyupdate";
		status = 1;
		r.advice = xasprintf("REKEYGUARD_MODE=keyupdate does not protect GnuTLS %s (older than "
				     "%s: every call must be serialised); restart it without "
				     "REKEYGUARD_MODE, or with REKEYGUARD_MODE=guard", r.version,
				     GNUTLS_KEYUPDATE_REWORK);
	} else if (shim_mapped && strcmp(mode, "off") != 0) {
		r.state = "protected";
		const char *level = guard_level(mode, r.version);
		r.mode = guard_mode(mode, r.version);
		r.counters_ok = read_counters(pid, &maps, r.library, &r.counters);
		if (r.counters_ok)
			r.advice = xasprintf("%s; %s; sessions guarded so far: %" PRIu64 "; sessions in "
					     "use but not guarded (created before the injection, or "
					     "DTLS): %" PRIu64, level,
					     r.counters.injected == 1 ? "injected by rekeyguard-inject"
								      : "preloaded",
					     r.counters.guarded, r.counters.unguarded);
		else
			r.advice = xstrdup(level);
	} else {
		r.state = "unprotected";
		r.mode = shim_mapped ? "off" : "none";
		status = 1;
		unprotected_advice(&r, shim_mapped);
	}
	if (unreadable != NULL) {
		r.advice = join_advice(r.advice, unreadable);
		status = 2;
	} else if (!shared && gnutls_mapped) {
		char *where = xasprintf("in another mount namespace or root (container, chroot): "
					"its files were read through /proc/%d/root", (int)pid);
		r.advice = join_advice(r.advice, where);
		free(where);
	}
	report_print(out, &r);
	free(unreadable);
	free(mode);
	proc_maps_free(&maps);
	report_free(&r);
	return status;
}

/* ------------------------------------------------------------ which processes */

struct pid_list {
	char **v;
	size_t n, cap;
};

static void pid_list_add(struct pid_list *l, const char *pid)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = xrealloc(l->v, l->cap * sizeof *l->v);
	}
	l->v[l->n++] = xstrdup(pid);
}

static int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_qemu_name(const char *comm)
{
	return strncmp(comm, "qemu-system-", 12) == 0 || strcmp(comm, "qemu-kvm") == 0 ||
	       strncmp(comm, "qemu-kvm-", 9) == 0;
}

static bool maps_gnutls(pid_t pid)
{
	struct proc_maps maps;
	if (proc_maps_read(pid, &maps) != 0)
		return false;
	bool found = false;
	for (size_t i = 0; i < maps.n && !found; i++)
		found = strstr(maps.v[i].path, "libgnutls.so") != NULL;
	proc_maps_free(&maps);
	return found;
}

/* The running processes to look at when no PID is given, in /proc's name
 * order: every QEMU, or with --all every process with libgnutls mapped. */
static void default_pids(bool all, struct pid_list *out)
{
	DIR *d = opendir("/proc");
	if (d == NULL)
		return;
	struct pid_list names = { 0 };
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (isdigit((unsigned char)e->d_name[0]))
			pid_list_add(&names, e->d_name);
	closedir(d);
	if (names.n > 1)
		qsort(names.v, names.n, sizeof *names.v, compare_names);
	for (size_t i = 0; i < names.n; i++) {
		pid_t pid = parse_pid(names.v[i]);
		size_t len;
		char *comm = pid > 0 ? proc_nul_list(pid, "comm", &len) : NULL;
		if (comm != NULL) {
			comm[strcspn(comm, "\n")] = '\0';
			if (all ? maps_gnutls(pid) : is_qemu_name(comm))
				pid_list_add(out, names.v[i]);
			free(comm);
		}
		free(names.v[i]);
	}
	free(names.v);
}

int main(int argc, char **argv)
{
	struct output out = { .first = true };
	bool all = false;
	const char *output_file = NULL;
	struct pid_list pids = { 0 };
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		if (strcmp(arg, "--json") == 0 || strcmp(arg, "--prometheus") == 0) {
			enum format f = arg[2] == 'j' ? FORMAT_JSON : FORMAT_PROMETHEUS;
			if (out.format != FORMAT_TEXT && out.format != f) {
				fprintf(stderr, PROGRAM ": --json and --prometheus exclude each other "
					"(see --help)\n");
				return 2;
			}
			out.format = f;
		} else if (strcmp(arg, "--output") == 0 || strncmp(arg, "--output=", 9) == 0) {
			if (arg[8] == '=') {
				output_file = arg + 9;
			} else if (i + 1 < argc) {
				output_file = argv[++i];
			} else {
				fprintf(stderr, PROGRAM ": --output needs a FILE (see --help)\n");
				return 2;
			}
			if (output_file[0] == '\0') {
				fprintf(stderr, PROGRAM ": --output needs a FILE (see --help)\n");
				return 2;
			}
		} else if (strcmp(arg, "--all") == 0) {
			all = true;
		} else if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
			usage();
			return 0;
		} else if (arg[0] == '-') {
			fprintf(stderr, PROGRAM ": unknown option '%s' (see --help)\n", arg);
			return 2;
		} else if (!all_digits(arg)) {
			fprintf(stderr, PROGRAM ": '%s' is not a PID (see --help)\n", arg);
			return 2;
		} else {
			pid_list_add(&pids, arg);
		}
	}

	char *tmp = NULL;
	if (output_file != NULL && (tmp = output_to_file_begin(output_file)) == NULL)
		return 2;
	if (out.format == FORMAT_JSON)
		putchar('[');
	if (pids.n == 0)
		default_pids(all, &pids);
	if (pids.n == 0 && out.format == FORMAT_TEXT)
		puts(all ? "no process has libgnutls mapped" : "no QEMU processes found");

	int status = 0;
	for (size_t i = 0; i < pids.n; i++) {
		int s = inspect(&out, pids.v[i]);
		if (s > status)
			status = s;
		free(pids.v[i]);
	}
	free(pids.v);
	if (out.format == FORMAT_JSON)
		fputs("\n]\n", stdout);
	else if (out.format == FORMAT_PROMETHEUS)
		prometheus_print(&out, status);
	output_free(&out);
	if (tmp != NULL)
		return output_to_file_end(tmp, output_file) ? status : 2;
	if (fflush(stdout) != 0)
		return 2;
	return status;
}
