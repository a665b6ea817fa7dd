/*
 * provoke.h — forced key updates for validation, REKEYGUARD_PROVOKE_REKEY
 * (provoke.c).
 */
#ifndef RG_PROVOKE_H
#define RG_PROVOKE_H

#include "call.h"

/* Runs a send through dispatch and, after every REKEYGUARD_PROVOKE_REKEY
 * records, first starts a key update on the session through dispatch as
 * well (so a guarded session takes its lock as for any other call). */
ssize_t rg_provoke_send(struct rg_call *call, ssize_t (*dispatch)(struct rg_call *));

#endif
