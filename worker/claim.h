/*
 * claim: the claim loop every kind of claimed work shares.
 *
 * One claim query at a time per kind; "pending" says a claim may find
 * something (set by a NOTIFY, the poll, a new connection, or a full
 * answer), so an idle worker sends no claims.  A claim is a live query
 * (adl_db_query_live): it dies with its connection, so on the next one
 * the results queued meanwhile are written before anything is claimed
 * again.  Each claim carries a token naming this worker, the kind and the
 * claim (worker/b1732...42.7), which the rows it takes record as their
 * lease: only that claim's holder can renew, finish or give them back.
 */
#ifndef ADL_CLAIM_H
#define ADL_CLAIM_H

#include "task.h"

#define ADL_CLAIM_TOKEN_MAX  96

typedef struct {
    char       kind;                    /* the token's letter */
    int        claiming;                /* a claim query is running */
    int        pending;                 /* a claim may find something */
    int64_t    sent;                    /* adl_now_ms() of the last one */
    long long  started;                 /* ms since the epoch, at start */
    unsigned   n;
    char       token[ADL_CLAIM_TOKEN_MAX];     /* of the claim running */
} adl_claimer_t;

void adl_claimer_init(adl_claimer_t *c, char kind);

/* May a claim be sent now, with room for that many more? */
int adl_claimer_due(const adl_claimer_t *c, const adl_env_t *env, int room);

/* The ops' wake of a kind whose first member is its adl_claimer_t: a
 * claim may find something. */
void adl_claimer_wake(void *kind);

/* A new token, in c->token, for the claim about to be sent. */
const char *adl_claimer_token(adl_claimer_t *c, const adl_env_t *env);

/* Sends the claim as a live query; 0 when sent. */
int adl_claimer_send(adl_claimer_t *c, adl_env_t *env, const char *sql,
    int nparams, const char *const *params, adl_db_result_pt cb, void *data);

/* The claim answered: its rows (>= 0), or -1 when it found nothing to
 * take (connection lost: pending again; an error: logged as "WHAT claim
 * failed", the poll tries again). */
int adl_claimer_answered(adl_claimer_t *c, PGresult *res, const char *what);

#endif /* ADL_CLAIM_H */
