/*
 * expiry: removes expired jobs (expires_at is set when a job ends, from
 * ASYNC_DL_TTL_COMPLETED for completed and canceled jobs and
 * ASYNC_DL_TTL_FAILED for failed ones): their objects (files and bundle)
 * are deleted from the storage first, then their rows.  A job still
 * running never has an expires_at; one whose bundle is being built or
 * whose callback is still to deliver waits for those.
 *
 * One worker at a time sweeps: a sweep holds a session advisory lock
 * (pg_try_advisory_lock) on the worker's connection from its first query
 * to its last; the others skip their turn.  Each worker writes its TTLs
 * into async_dl_lifecycle_settings at start (the last one started wins),
 * which the schema reads when a job ends.
 *
 * Every sweep ends (a lost answer, a failed or stuck delete, a lock held
 * elsewhere) and the next one comes a poll interval later, at once when
 * the batch was full.  A job whose objects could not all be deleted is
 * kept and tried again with backoff, without holding back the others.
 * Logged: each sweep's counts (info), jobs kept (warn), no sweep won for
 * ten poll intervals and by whom the lock is held (info), a sweep running
 * that long (warn), a tick that came more than 5 s late (warn).
 */
#ifndef ADL_EXPIRY_H
#define ADL_EXPIRY_H

#include "task.h"

extern const adl_task_ops_t  adl_expiry_ops;

#endif /* ADL_EXPIRY_H */
