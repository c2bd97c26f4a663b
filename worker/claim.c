/*
 * claim: the claim loop every kind of claimed work shares (claim.h).
 */
#include <stdio.h>
#include <time.h>

#include "claim.h"
#include "clock.h"
#include "log.h"
#include "metrics.h"

void
adl_claimer_init(adl_claimer_t *c, char kind)
{
    struct timespec  ts;

    c->kind = kind;
    c->claiming = 0;
    c->pending = 1;                 /* whatever was queued before we ran */
    c->sent = 0;
    c->n = 0;
    c->token[0] = '\0';
    clock_gettime(CLOCK_REALTIME, &ts);
    c->started = (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
adl_claimer_wake(void *kind)
{
    adl_claimer_t  *c = kind;

    c->pending = 1;
}

int
adl_claimer_due(const adl_claimer_t *c, const adl_env_t *env, int room)
{
    return c->pending && !c->claiming && room > 0 && !env->stopping
           && adl_db_connected(env->db);
}

const char *
adl_claimer_token(adl_claimer_t *c, const adl_env_t *env)
{
    snprintf(c->token, sizeof(c->token), "%.48s/%c%lld.%u",
             env->settings->worker_id, c->kind, c->started, ++c->n);
    return c->token;
}

int
adl_claimer_send(adl_claimer_t *c, adl_env_t *env, const char *sql,
    int nparams, const char *const *params, adl_db_result_pt cb, void *data)
{
    if (adl_db_query_live(env->db, sql, nparams, params, cb, data) != 0) {
        return -1;
    }
    c->claiming = 1;
    c->pending = 0;
    c->sent = adl_now_ms();
    return 0;
}

int
adl_claimer_answered(adl_claimer_t *c, PGresult *res, const char *what)
{
    int  k = c->kind == 'f' ? ADL_M_FILES
             : c->kind == 'b' ? ADL_M_BUNDLES : ADL_M_CALLBACKS;

    c->claiming = 0;
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK) {
        adl_metrics.claims[k]++;
        adl_metrics.claimed[k] += (uint64_t) PQntuples(res);
        adl_metric_observe(&adl_metrics.claim_seconds,
                           (double) (adl_now_ms() - c->sent) / 1000.0);
    }
    if (res == NULL) {
        c->pending = 1;             /* again on the next connection */
        return -1;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "%s claim failed: %s", what,
                      PQresultErrorMessage(res));
        return -1;                  /* the poll tries again */
    }
    return PQntuples(res);
}
