/*
 * janitor: periodic maintenance beside the transfers: removing from
 * storage the objects nobody records any more (of deleted jobs, canceled
 * files, dropped zips), which PostgreSQL queues in async_dl_deleted_objects
 * and announces on async_dl_deleted; and, every poll interval, the
 * deadline sweep and the compaction of the queue counts.
 *
 * A row's deleted_at is when it is due: rows are taken under SKIP LOCKED
 * and held for a lease (ASYNC_DL_LEASE) by moving deleted_at past it, so
 * each is handled by one worker at a time; a row is removed only once its
 * object is gone.  A failed storage delete makes its row due again after
 * a backoff (ASYNC_DL_RETRY_BASE, doubled for each pass in a row that
 * failed); a lost answer or a dead worker leaves it to its lease.
 */
#ifndef ADL_JANITOR_H
#define ADL_JANITOR_H

#include "task.h"

extern const adl_task_ops_t  adl_janitor_ops;

#endif /* ADL_JANITOR_H */
