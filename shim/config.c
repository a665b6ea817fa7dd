/*
 * config.c — environment parsing and logging.
 *
 * Owns: REKEYGUARD_MODE, REKEYGUARD_LOG, REKEYGUARD_NOTICE and
 * REKEYGUARD_PROVOKE_REKEY, read once (pthread_once, on the first GnuTLS
 * call, never in a constructor), and rg_log().
 * Invariants: a bad value never stops the host; it produces exactly one
 * stderr line naming the variable, the value, the accepted values and the
 * value used. Log lines are formatted on the stack and written with one
 * write(2); errno is preserved across logging.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static struct rg_config rg_config_value = {
	.mode = RG_MODE_AUTO,
	.log_level = RG_LOG_WARN,
};
static pthread_once_t rg_config_once = PTHREAD_ONCE_INIT;

static const char *const rg_mode_names[] = {
	[RG_MODE_AUTO] = "auto", [RG_MODE_GUARD] = "guard",
	[RG_MODE_KEYUPDATE] = "keyupdate", [RG_MODE_OFF] = "off",
};
static const char *const rg_notice_names[] = {
	[RG_NOTICE_AUTO] = "auto", [RG_NOTICE_ON] = "on", [RG_NOTICE_OFF] = "off",
};
static const char *const rg_level_names[] = {
	[RG_LOG_ERROR] = "error", [RG_LOG_WARN] = "warn",
	[RG_LOG_INFO] = "info", [RG_LOG_DEBUG] = "debug",
};

const char *rg_mode_name(enum rg_mode mode)
{
	return rg_mode_names[mode];
}

/* Index of `value` in `names` (case-insensitive, whole string), or -1. */
static int rg_config_match(const char *value, const char *const *names, int count)
{
	for (int i = 0; i < count; i++)
		if (strcasecmp(value, names[i]) == 0)
			return i;
	return -1;
}

/* At most 40 bytes of value, control bytes as \\xNN, "..." if cut. */
static const char *rg_config_shown(const char *value, char *out, size_t n)
{
	size_t o = 0, i;
	for (i = 0; value[i] != '\0' && i < 40 && o + 5 < n; i++) {
		unsigned char c = (unsigned char)value[i];
		if (c < 0x20 || c == 0x7f)
			o += (size_t)snprintf(out + o, n - o, "\\x%02x", c);
		else
			out[o++] = (char)c;
	}
	out[o] = '\0';
	if (value[i] != '\0' && o + 4 < n)
		strcat(out, "...");
	return out;
}

/* Reads one enumerated variable; reports a bad value once. */
static int rg_config_enum(const char *var, const char *const *names, int count,
			  int fallback)
{
	const char *value = getenv(var);
	if (value == NULL)
		return fallback;
	int found = rg_config_match(value, names, count);
	if (found >= 0)
		return found;

	char accepted[128] = "";
	for (int i = 0; i < count; i++) {
		strcat(accepted, names[i]);
		if (i + 1 < count)
			strcat(accepted, ", ");
	}
	/* Show at most 40 characters of a bad value. */
	char shown[200];
	rg_log(RG_LOG_ERROR, "%s='%s' is not valid (accepted: %s); using %s",
	       var, rg_config_shown(value, shown, sizeof shown), accepted, names[fallback]);
	return fallback;
}

/* REKEYGUARD_PROVOKE_REKEY=N or N:peer, N records from 1 to 2^24. */
static void rg_config_provoke(void)
{
	const char *value = getenv("REKEYGUARD_PROVOKE_REKEY");
	if (value == NULL)
		return;
	char *end = NULL;
	errno = 0;
	unsigned long long every = strtoull(value, &end, 10);
	bool peer = false;
	if (end != value && strcasecmp(end, ":peer") == 0) {
		peer = true;
	} else if (end == value || *end != '\0') {
		every = 0;
	}
	if (value[0] < '0' || value[0] > '9' || errno != 0 || every < 1 || every > (1u << 24)) {
		char shown[200];
		rg_log(RG_LOG_ERROR, "REKEYGUARD_PROVOKE_REKEY='%s' is not valid "
		       "(accepted: a record count from 1 to 16777216, optionally "
		       "followed by :peer); using none", rg_config_shown(value, shown, sizeof shown));
		return;
	}
	rg_config_value.provoke_every = every;
	rg_config_value.provoke_peer = peer;
	rg_log(RG_LOG_WARN, "REKEYGUARD_PROVOKE_REKEY=%llu%s: forcing a TLS 1.3 key update "
	       "every %llu records sent (validation only, not for production)", every,
	       peer ? ":peer" : "", every);
}

/* The one-time "guarding" notice goes where operators look for it (QEMU's
 * log, which is QEMU's stderr) and nowhere else by default: other programs
 * may parse their own stderr (GnuTLS's gnutls-cli-debug.sh test does).
 * auto: on in QEMU system emulators (qemu-system-*, qemu-kvm), else off;
 * off still shows it at REKEYGUARD_LOG=info. */
static bool rg_config_notice(void)
{
	int notice = rg_config_enum("REKEYGUARD_NOTICE", rg_notice_names, 3, RG_NOTICE_AUTO);
	if (notice != RG_NOTICE_AUTO)
		return notice == RG_NOTICE_ON;
	const char *name = program_invocation_short_name;
	return name != NULL && (strncmp(name, "qemu-system-", 12) == 0 ||
				strcmp(name, "qemu-kvm") == 0);
}

static void rg_config_parse(void)
{
	/* REKEYGUARD_LOG first, so that it governs the MODE message too. */
	rg_config_value.log_level = rg_config_enum("REKEYGUARD_LOG", rg_level_names, 4,
						   RG_LOG_WARN);
	rg_config_value.mode = rg_config_enum("REKEYGUARD_MODE", rg_mode_names, RG_MODE_COUNT,
					      RG_MODE_AUTO);
	rg_config_value.notice_level = rg_config_notice() ? RG_LOG_WARN : RG_LOG_INFO;
	rg_config_provoke();
}

const struct rg_config *rg_config_get(void)
{
	pthread_once(&rg_config_once, rg_config_parse);
	return &rg_config_value;
}

const struct rg_config *rg_config_value_parsed(void)
{
	return &rg_config_value;
}

bool rg_log_enabled(enum rg_log_level level)
{
	/* Errors always print: they explain why protection is off. */
	return level == RG_LOG_ERROR || level <= rg_config_value.log_level;
}

void rg_log(enum rg_log_level level, const char *fmt, ...)
{
	if (!rg_log_enabled(level))
		return;
	int saved_errno = errno;
	char line[512];
	int n = snprintf(line, sizeof line, "rekeyguard: ");
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	n += m;
	if (n > (int)sizeof line - 2)
		n = sizeof line - 2;
	line[n++] = '\n';
	ssize_t ignored = write(STDERR_FILENO, line, n);
	(void)ignored;
	errno = saved_errno;
}
