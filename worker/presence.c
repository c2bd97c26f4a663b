/*
 * presence: the worker's heartbeat (presence.h).
 */
#include <stdio.h>
#include <stdlib.h>

#include "clock.h"
#include "log.h"
#include "presence.h"

typedef enum {
    PR_BEATING = 0,         /* a row is written every interval */
    PR_LEAVING,             /* stopping: the row's removal is on its way */
    PR_GONE                 /* removed (or the database did not answer) */
} presence_state_t;

/* the loop wakes at least once a second (worker.c's idle tick): a shorter
 * beat would be missed, and the worker seem dead between */
#define BEAT_MIN_MS  1000

typedef struct {
    adl_env_t         *env;
    presence_state_t   state;
    int                running;     /* a query in flight */
    int                row;         /* a row of ours may exist */
    int64_t            next;        /* the next beat, adl_now_ms() */
    uint64_t           session;     /* the connection of the last beat */
} presence_t;

static void
beat_result(void *data, PGresult *res)
{
    presence_t  *p = data;

    p->running = 0;
    if (res == NULL) {
        p->next = 0;                /* again on the next connection */
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
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK) {
        p->row = 0;
    } else if (res != NULL) {
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

static void
presence_settle(void *k, int64_t now)
{
    presence_t            *p = k;
    const adl_settings_t  *s = p->env->settings;
    char                   beat[48], conc[16];
    const char            *params[3];

    if (p->running || !adl_db_connected(p->env->db)) {
        return;
    }
    if (adl_db_session(p->env->db) != p->session) {
        /* a new connection: a beat at once, the row may have gone stale
         * while the database was away */
        p->session = adl_db_session(p->env->db);
        p->next = 0;
    }

    if (p->env->stopping) {
        if (p->state == PR_BEATING && p->row) {
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
             (long long) (s->poll_interval > BEAT_MIN_MS ? s->poll_interval
                                                         : BEAT_MIN_MS));
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
        p->row = 1;
        p->next = now + (s->poll_interval > BEAT_MIN_MS ? s->poll_interval
                                                        : BEAT_MIN_MS);
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
    NULL,                           /* wake: settle sees new connections */
    NULL,                           /* notify */
    NULL,                           /* poll: settle keeps the beat */
    NULL,                           /* tick */
    presence_settle,
    NULL,                           /* hand_back: nothing in flight */
    presence_busy,
    NULL                            /* unrecorded */
};
