/*
 * common.h — what every file of the library uses: the export and format
 * attributes, and the monotonic clock. No state.
 */
#ifndef RG_COMMON_H
#define RG_COMMON_H

#include <stdint.h>
#include <time.h>

#include "../include/rekeyguard.h"

/* Only GnuTLS's names and rekeyguard_* leave the library (exports.map;
 * everything is built -fvisibility=hidden). */
#define RG_EXPORT __attribute__((visibility("default")))
#define RG_PRINTF(a, b) __attribute__((format(printf, a, b)))
/* Per-thread state: initial-exec, a few bytes, no __tls_get_addr call on
 * the hot path (glibc keeps static TLS room for late-loaded libraries). */
#define RG_THREAD_LOCAL __thread __attribute__((tls_model("initial-exec")))

static inline uint64_t rg_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
