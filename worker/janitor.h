/*
 * janitor: periodic maintenance beside the transfers.  Today: removing
 * from storage the objects of deleted jobs, which the API queues in
 * async_dl_deleted_objects (sql/002_api.sql; bundle.c too, for a zip
 * stored after its job went) and announces on async_dl_deleted.
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

#include "worker.h"

typedef struct adl_janitor_s  adl_janitor_t;

adl_janitor_t *adl_janitor_create(adl_worker_t *w);
void adl_janitor_destroy(adl_janitor_t *j);

/* A new connection: find out whether the table exists. */
void adl_janitor_connected(adl_janitor_t *j);

/* Something may be waiting (NOTIFY, poll). */
void adl_janitor_kick(adl_janitor_t *j);

/* From the loop: start what is due. */
void adl_janitor_run(adl_janitor_t *j);

int adl_janitor_busy(const adl_janitor_t *j);

#endif /* ADL_JANITOR_H */
