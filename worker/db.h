/*
 * db: the worker's one PostgreSQL connection, non-blocking, in the event
 * loop.  It LISTENs on the channels its owner names and carries every
 * query too, one at a time from a FIFO: claims, progress (lease renewal),
 * finish, the deadline sweep.  Each queued query gets exactly one
 * callback: with its result, or with NULL when the connection failed
 * (then db reconnects with backoff, LISTENs again and reports it, so the
 * worker claims what was queued meanwhile).
 */
#ifndef ADL_DB_H
#define ADL_DB_H

#include <libpq-fe.h>
#include <stdint.h>

#include "settings.h"

typedef struct adl_db_s  adl_db_t;

/* res is NULL when the query could not run (connection lost). */
typedef void (*adl_db_result_pt)(void *data, PGresult *res);

typedef struct {
    const char *const  *channels;       /* to LISTEN on; NULL-terminated */
    void  (*connected)(void *data);
    void  (*notify)(void *data, const char *channel, const char *payload);
    void  *data;
} adl_db_handlers_t;

/* Blocking connect for start-up work (migrations); logs failures. */
PGconn *adl_db_connect_blocking(const adl_settings_t *s);

/* ev_tag: the epoll data.u64 its socket is registered with. */
adl_db_t *adl_db_create(const adl_settings_t *s, int epfd, uint64_t ev_tag,
    const adl_db_handlers_t *h);
void adl_db_destroy(adl_db_t *db);

/* Starts connecting (again): looks the host names up on a thread first,
 * never on the loop.  The loop calls it from adl_db_tick. */
void adl_db_tick(adl_db_t *db, int64_t now);

/* epoll readiness on the connection's socket. */
void adl_db_event(adl_db_t *db, uint32_t events);

int adl_db_connected(const adl_db_t *db);
int adl_db_idle(const adl_db_t *db);    /* nothing queued or running */

/* Which connection this is: changes with every new one, so that session
 * state (an advisory lock) is known to be gone when it changed. */
uint64_t adl_db_session(const adl_db_t *db);

/* Queues a query: copies sql and params.  -1 on allocation failure
 * (then cb is not called). */
int adl_db_query(adl_db_t *db, const char *sql, int nparams,
    const char *const *params, adl_db_result_pt cb, void *data);

/* The same for a query that must not outlive its connection: when the
 * connection fails before it ran, its callback gets NULL at once instead
 * of it waiting for the next connection.  A claim is one: queued before
 * an outage, it would run after the results queued during it. */
int adl_db_query_live(adl_db_t *db, const char *sql, int nparams,
    const char *const *params, adl_db_result_pt cb, void *data);

#endif /* ADL_DB_H */
