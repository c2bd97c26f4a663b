/*
 * presence: the worker's heartbeat (presence.h).
 */
#include <stdio.h>
#include <stdlib.h>

#include "clock.h"
#include "log.h"
#include "presence.h"

typedef enum {
    PR_ABSENT = 0,          /* no row written on this connection yet */
    PR_PRESENT,             /* beating */
    PR_LEAVING,             /* stopping: the row's removal is on its way */
    PR_GONE                 /* removed (or the database did not answer) */
} presence_state_t;

typedef struct {
    adl_env_t         *env;
    presence_state_t   state;
    int                running;     /* a query in flight */
    int64_t            next;        /* the next beat, adl_now_ms() */
} presence_t;

static void
beat_result(void *data, PGresult *res)
{
    presence_t  *p = data;

    p->running = 0;
    if (res == NULL) {
        p->state = PR_ABSENT;       /* again on the next connection */
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_warn(NULL, -1, "heartbeat failed: %s",
                     PQresultErrorMessage(res));
    }
}

static void
gone_result(void *data, PGresult *res)
{
    presence_t  *p = data;

    p->running = 0;
    p->state = PR_GONE;
    if (res != NULL && PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_warn(NULL, -1, "removing the heartbeat failed: %s",
                     PQresultErrorMessage(res));
    }
}

static void *
presence_create(adl_env_t *env)
{
    presence_t  *p = calloc(1, sizeof(presence_t));

    if (p != NULL) {
        p->env = env;
    }
    return p;
}

static void
presence_destroy(void *k)
{
    free(k);
}

/* a new database connection: a row at once */
static void
presence_wake(void *k)
{
    presence_t  *p = k;

    if (p->state == PR_ABSENT) {
        p->next = 0;
    }
}

static void
presence_settle(void *k, int64_t now)
{
    presence_t            *p = k;
    const adl_settings_t  *s = p->env->settings;
    char                   beat[32], conc[16];
    const char            *params[3];

    if (p->running || !adl_db_connected(p->env->db)) {
        return;
    }

    if (p->env->stopping) {
        if (p->state == PR_PRESENT) {
            params[0] = s->worker_id;
            if (adl_db_query_live(p->env->db, "SELECT "
                                  "async_dl_worker_gone($1)", 1, params,
                                  gone_result, p) == 0)
            {
                p->running = 1;
                p->state = PR_LEAVING;
            }
        }
        return;
    }

    if (now < p->next) {
        return;
    }

    snprintf(beat, sizeof(beat), "%lld milliseconds",
             (long long) s->poll_interval);
    snprintf(conc, sizeof(conc), "%lld", (long long) s->concurrency);
    params[0] = s->worker_id;
    params[1] = beat;
    params[2] = conc;
    /* live: a beat lost with its connection is sent again on the next */
    if (adl_db_query_live(p->env->db, "SELECT async_dl_worker_beat($1, "
                          "$2::interval, $3::integer)", 3, params,
                          beat_result, p) == 0)
    {
        p->running = 1;
        p->state = PR_PRESENT;
        p->next = now + s->poll_interval;
    }
}

/* the row's removal is waited for (a live query: a lost connection
 * answers it at once) */
static int
presence_busy(const void *k)
{
    const presence_t  *p = k;

    return p->state == PR_LEAVING;
}

const adl_task_ops_t  adl_presence_ops = {
    "presence",
    NULL,                           /* channels */
    presence_create,
    presence_destroy,
    presence_wake,
    NULL,                           /* notify */
    NULL,                           /* poll: settle keeps the beat */
    NULL,                           /* tick */
    presence_settle,
    NULL,                           /* hand_back: nothing in flight */
    presence_busy,
    NULL                            /* unrecorded */
};
