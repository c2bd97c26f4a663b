/*
 * task: what every kind of claimed work looks like to the loop.
 *
 * The worker runs six kinds of work: files (transfers), bundles (zips
 * of a job's files), callbacks (a job's final document POSTed to its
 * callback_url), expiry (stored objects past their time), the janitor
 * (deleted objects, the deadline sweep, the queue counts) and presence
 * (the worker's heartbeat).  Each kind
 * owns its own lists and claims from PostgreSQL by itself; the loop
 * (worker.c) knows a kind only through its ops below, and a kind knows
 * the rest of the process only through the services in adl_env_t.  No
 * kind calls another: what one needs of another goes through the
 * database (a NOTIFY wakes the other, in this worker or any).
 *
 * When the loop calls what:
 *
 *   wake        something may be claimable: a new database connection
 *               (what was queued meanwhile), every poll interval (the
 *               safety net for a lost NOTIFY), a NOTIFY on one of the
 *               kind's channels (unless it has notify)
 *   notify      a NOTIFY on one of the kind's channels, when the payload
 *               matters
 *   poll        every poll interval, when connected and not stopping,
 *               after wake: periodic work of the kind's own
 *   tick        every tick (100 ms while any kind is busy, else 1 s):
 *               deadlines, leases, retries, progress
 *   settle      after every epoll batch, outside every libcurl callback:
 *               act on what callbacks recorded (ends, next requests,
 *               unpausing), free what is done, claim when there is room
 *   hand_back   the shutdown grace is over: give back what is in flight
 *   busy        something in flight or a claim running: the loop may not
 *               exit, and ticks fast
 *   unrecorded  at a forced exit: results not written (for the log)
 */
#ifndef ADL_TASK_H
#define ADL_TASK_H

#include <stdint.h>

#include "db.h"
#include "http.h"
#include "s3.h"
#include "settings.h"

/* The services a kind may use. */
typedef struct {
    const adl_settings_t  *settings;
    adl_db_t              *db;
    adl_http_t            *origin;      /* downloads, callbacks */
    adl_s3_t              *s3;          /* every storage request */
    int                    stopping;    /* SIGTERM seen: claim nothing */
} adl_env_t;

typedef struct {
    const char          *name;
    const char *const   *channels;      /* NULL-terminated; may be NULL */

    void   *(*create)(adl_env_t *env);
    void    (*destroy)(void *k);        /* at exit, whatever the state */

    void    (*wake)(void *k);
    void    (*notify)(void *k, const char *channel, const char *payload);
    void    (*poll)(void *k, int64_t now);
    void    (*tick)(void *k, int64_t now);
    void    (*settle)(void *k, int64_t now);
    void    (*hand_back)(void *k);
    int     (*busy)(const void *k);
    int     (*unrecorded)(const void *k);
} adl_task_ops_t;

#endif /* ADL_TASK_H */
