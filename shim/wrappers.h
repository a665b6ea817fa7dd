/*
 * wrappers.h — what wrappers.c and wrappers-short.c share.
 */
#ifndef RG_WRAPPERS_H
#define RG_WRAPPERS_H

#include <stdbool.h>

#include "common.h"

/* Set while the real gnutls_init runs on this thread: GnuTLS sets its
 * default transport through the exported setters, which must reach GnuTLS
 * even if a stale entry exists for the address being handed out. */
extern RG_THREAD_LOCAL bool rg_in_init;

#endif
