/* inject-qmp.c — asks a running QEMU whether a migration is in flight.
 *
 * Thread names show a migration on the source (QEMU up to 9.x:
 * "live_migration", "return path"; QEMU 10: "mig/src/...") and a postcopy
 * destination ("postcopy/listen", "mig/dst/listen"), but an incoming
 * precopy migration runs in the destination's main thread and shows none.
 * So the injector also reads the command line: "-incoming" marks a
 * destination, and a QMP monitor on a unix socket ("-qmp unix:PATH,...",
 * or "-chardev socket,id=ID,path=PATH,server..." with
 * "-mon chardev=ID,mode=control") can be asked "query-migrate".
 *
 * A QMP socket serves one client at a time: while libvirt (or a test
 * harness) holds it, a second connection is queued and gets no greeting.
 * Such a monitor is reported as busy after a short wait, never waited for.
 * Nothing here writes to QEMU except the two read-only QMP commands
 * qmp_capabilities and query-migrate.
 */
#define _GNU_SOURCE
#include "inject.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_CHARDEVS 32

struct chardev {
	char id[64];
	char path[PROC_PATH_MAX];
};

/* Value of KEY=... in a comma-separated QEMU option string, or "" */
static void opt_value(const char *opts, const char *key, char *out, size_t len)
{
	size_t klen = strlen(key);
	out[0] = '\0';
	for (const char *p = opts; p != NULL && *p != '\0'; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
		if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
			const char *v = p + klen + 1;
			size_t n = strcspn(v, ",");
			snprintf(out, len, "%.*s", (int)(n < len ? n : len - 1), v);
			return;
		}
	}
}

static void add_socket(struct inj_qemu_info *info, const char *path)
{
	if (path[0] == '\0' || info->monitors >= INJ_QMP_MAX)
		return;
	snprintf(info->monitor[info->monitors++], PROC_PATH_MAX, "%s", path);
}

/* The QMP unix sockets and "-incoming" from /proc/PID/cmdline. */
static void parse_cmdline(pid_t pid, struct inj_qemu_info *info)
{
	size_t len = 0;
	char *buf = proc_nul_list(pid, "cmdline", &len);
	if (buf == NULL)
		return;
	struct chardev devs[MAX_CHARDEVS];
	int ndevs = 0;
	char qmp_ids[MAX_CHARDEVS][64];
	int nids = 0;
	const char *prev = "";
	for (size_t i = 0; i < len; i += strlen(buf + i) + 1) {
		const char *arg = buf + i;
		const char *opt = prev[0] == '-' && prev[1] == '-' ? prev + 1 : prev;
		if (strcmp(arg, "-incoming") == 0 || strcmp(arg, "--incoming") == 0)
			info->incoming = true;
		if ((strcmp(opt, "-qmp") == 0 || strcmp(opt, "-qmp-pretty") == 0) &&
		    strncmp(arg, "unix:", 5) == 0) {
			char path[PROC_PATH_MAX];
			size_t n = strcspn(arg + 5, ",");
			snprintf(path, sizeof path, "%.*s", (int)(n < sizeof path ? n : sizeof path - 1),
				 arg + 5);
			add_socket(info, path);
		} else if (strcmp(opt, "-chardev") == 0 && strncmp(arg, "socket,", 7) == 0 &&
			   ndevs < MAX_CHARDEVS) {
			char server[16];
			opt_value(arg, "id", devs[ndevs].id, sizeof devs[ndevs].id);
			opt_value(arg, "path", devs[ndevs].path, sizeof devs[ndevs].path);
			opt_value(arg, "server", server, sizeof server);
			bool is_server = strcmp(server, "on") == 0 || strstr(arg, ",server,") != NULL ||
					 (strlen(arg) >= 7 && strcmp(arg + strlen(arg) - 7, ",server") == 0);
			if (is_server && devs[ndevs].id[0] != '\0' && devs[ndevs].path[0] != '\0')
				ndevs++;
		} else if (strcmp(opt, "-mon") == 0 && nids < MAX_CHARDEVS) {
			char mode[32];
			opt_value(arg, "mode", mode, sizeof mode);
			opt_value(arg, "chardev", qmp_ids[nids], sizeof qmp_ids[nids]);
			if (strcmp(mode, "control") == 0 && qmp_ids[nids][0] != '\0')
				nids++;
		}
		prev = arg;
	}
	for (int m = 0; m < nids; m++)
		for (int d = 0; d < ndevs; d++)
			if (strcmp(qmp_ids[m], devs[d].id) == 0)
				add_socket(info, devs[d].path);
	free(buf);
}

/* Connects to the socket PATH as the process sees it (its root, or its
 * working directory for a relative path), whatever the length. */
static int connect_as_process(pid_t pid, const char *path)
{
	char dir[PROC_PATH_MAX + 64];
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	if (path[0] == '/')
		snprintf(dir, sizeof dir, "/proc/%d/root%.*s", (int)pid, (int)(slash - path + 1), path);
	else
		snprintf(dir, sizeof dir, "/proc/%d/cwd/%.*s", (int)pid,
			 slash ? (int)(slash - path + 1) : 0, path);
	int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int n = snprintf(sa.sun_path, sizeof sa.sun_path, "/proc/self/fd/%d/%s", dfd, base);
	int err = 0, fd = -1;
	if (n < 0 || (size_t)n >= sizeof sa.sun_path) {
		err = -ENAMETOOLONG;
	} else {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
			err = -errno;
	}
	close(dfd);
	if (err != 0) {
		if (fd >= 0)
			close(fd);
		return err;
	}
	return fd;
}

/* Reads QMP lines until one contains WANT (or "error"); 0 on success with
 * the line in LINE, -ETIMEDOUT when QEMU sent nothing in time. */
static int read_until(int fd, char *acc, size_t cap, size_t *used, const char *want,
		      double deadline, char *line, size_t linelen)
{
	for (;;) {
		char *nl;
		while ((nl = memchr(acc, '\n', *used)) != NULL) {
			size_t n = (size_t)(nl - acc) + 1;
			snprintf(line, linelen, "%.*s", (int)(n < linelen ? n : linelen - 1), acc);
			memmove(acc, acc + n, *used - n);
			*used -= n;
			if (strstr(line, want) != NULL || strstr(line, "\"error\"") != NULL)
				return 0;
		}
		if (*used == cap)            /* a line longer than we keep: drop it */
			*used = 0;
		int left = (int)((deadline - inj_now()) * 1000);
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 ? -ETIMEDOUT : -errno;
		ssize_t got = read(fd, acc + *used, cap - *used);
		if (got == 0)
			return -ECONNRESET;
		if (got < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		*used += (size_t)got;
	}
}

static bool send_all(int fd, const char *s)
{
	size_t len = strlen(s), off = 0;
	while (off < len) {
		ssize_t w = send(fd, s + off, len - off, MSG_NOSIGNAL);
		if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			struct pollfd p = { .fd = fd, .events = POLLOUT };
			poll(&p, 1, 100);
			continue;
		}
		if (w <= 0)
			return false;
		off += (size_t)w;
	}
	return true;
}

/* query-migrate over one monitor: 1 answered (STATUS set, "none" when QEMU
 * reports no migration), 0 no greeting in time (another client holds it),
 * negative errno when it cannot be reached. */
static int ask_monitor(pid_t pid, const char *path, unsigned timeout_ms, char *status, size_t len)
{
	int fd = connect_as_process(pid, path);
	if (fd < 0)
		return fd;
	char acc[8192], line[8192];
	size_t used = 0;
	double deadline = inj_now() + timeout_ms / 1000.0;
	int rc = read_until(fd, acc, sizeof acc, &used, "\"QMP\"", deadline, line, sizeof line);
	if (rc == -ETIMEDOUT) {
		close(fd);
		return 0;
	}
	if (rc == 0 && send_all(fd, "{\"execute\": \"qmp_capabilities\"}\r\n"))
		rc = read_until(fd, acc, sizeof acc, &used, "\"return\"", deadline, line, sizeof line);
	if (rc == 0 && send_all(fd, "{\"execute\": \"query-migrate\"}\r\n"))
		rc = read_until(fd, acc, sizeof acc, &used, "\"return\"", deadline, line, sizeof line);
	close(fd);
	if (rc != 0)
		return rc == -ETIMEDOUT ? 0 : rc;
	if (strstr(line, "\"error\"") != NULL)
		return -EPROTO;
	/* {"return": {"status": "active", ...}} or {"return": {}} (none yet) */
	const char *s = strstr(line, "\"status\"");
	if (s == NULL) {
		snprintf(status, len, "none");
		return 1;
	}
	s += strlen("\"status\"");
	s += strspn(s, " \t:");
	if (*s == '"')
		s++;
	size_t n = strcspn(s, "\"");
	snprintf(status, len, "%.*s", (int)(n < len ? n : len - 1), s);
	return 1;
}

void inj_qemu_ask(pid_t pid, unsigned timeout_ms, struct inj_qemu_info *info)
{
	memset(info, 0, sizeof *info);
	parse_cmdline(pid, info);
	for (int i = 0; i < info->monitors && info->status[0] == '\0'; i++) {
		int rc = ask_monitor(pid, info->monitor[i], timeout_ms, info->status,
				     sizeof info->status);
		if (rc == 1)
			info->answered = i;
		else if (rc == 0)
			info->busy++;
	}
}

bool inj_migration_status_active(const char *status)
{
	static const char *const idle[] = { "", "none", "completed", "failed", "cancelled" };
	for (size_t i = 0; i < sizeof idle / sizeof idle[0]; i++)
		if (strcmp(status, idle[i]) == 0)
			return false;
	return true;
}
