/*
 * presence: the worker's heartbeat in PostgreSQL (async_dl_workers, schema
 * 18), so that GET {p}health can say how many workers are alive and that
 * files wait with none to take them.  A row is written when the database
 * connection comes up and every ASYNC_DL_POLL_INTERVAL after; a worker
 * counts as alive until three of its intervals pass without one.  A worker
 * that stops removes its row (when the database answers before it exits);
 * rows of workers not seen for a day go.
 */
#ifndef ADL_PRESENCE_H
#define ADL_PRESENCE_H

#include "task.h"

extern const adl_task_ops_t  adl_presence_ops;

#endif /* ADL_PRESENCE_H */
