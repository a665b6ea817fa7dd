/*
 * config.h — the environment, read once, and the one log function
 * (config.c).
 */
#ifndef RG_CONFIG_H
#define RG_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"

enum rg_log_level { RG_LOG_ERROR = 0, RG_LOG_WARN, RG_LOG_INFO, RG_LOG_DEBUG };
enum rg_mode { RG_MODE_AUTO = 0, RG_MODE_GUARD, RG_MODE_KEYUPDATE, RG_MODE_OFF };
#define RG_MODE_COUNT 4
enum rg_notice { RG_NOTICE_AUTO = 0, RG_NOTICE_ON, RG_NOTICE_OFF };

struct rg_config {
	enum rg_mode mode;           /* as configured */
	enum rg_log_level log_level;
	enum rg_log_level notice_level; /* of the one-time notice (REKEYGUARD_NOTICE) */
	uint64_t provoke_every;      /* REKEYGUARD_PROVOKE_REKEY records; 0: off */
	bool provoke_peer;           /* ...:peer, request the peer's update too */
};

/* Parses the environment once (pthread_once); later calls are free. */
const struct rg_config *rg_config_get(void);
/* The same without pthread_once, once rg_active() has returned. */
const struct rg_config *rg_config_value_parsed(void);
const char *rg_mode_name(enum rg_mode mode);
void rg_log(enum rg_log_level level, const char *fmt, ...) RG_PRINTF(2, 3);
bool rg_log_enabled(enum rg_log_level level);

#endif
