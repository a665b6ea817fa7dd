/*
 * guard.h — the guarded loop (guard.c).
 */
#ifndef RG_GUARD_H
#define RG_GUARD_H

#include "call.h"

/* Runs a wrapped call: pass-through when not tracked, nested or
 * unguarded; the key-update serialisation in keyupdate mode; else the
 * guarded loop. */
ssize_t rg_guard_call(struct rg_call *call);

#endif
