/*
 * janitor: periodic maintenance beside the transfers.  Today: removing
 * from storage the objects of deleted jobs, which the API queues in
 * async_dl_deleted_objects (sql/002_api.sql) and announces on
 * async_dl_deleted.  Rows are taken with DELETE ... RETURNING under SKIP
 * LOCKED, so each is handled by one worker; a failed storage delete puts
 * its row back for a later pass.
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
