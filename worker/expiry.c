/*
 * expiry: one sweep at a time:
 *
 *   IDLE -> LOCKING (pg_try_advisory_lock; not ours: IDLE)
 *        -> LISTING (async_dl_expired: jobs and their object keys)
 *        -> DELETING (DeleteObject each key, a few at once)
 *        -> REMOVING (async_dl_expired_delete: the jobs whose objects
 *                     are all gone)
 *        -> UNLOCKING -> IDLE (at once again when the batch was full)
 *
 * A lost connection releases the lock with the session: the sweep then
 * ends without removing rows (its deletes were harmless) and the next one
 * starts over.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expiry.h"
#include "log.h"

#define EXPIRY_LOCK      "7021786468426065272"   /* "async-ex" */
#define JOBS_PER_SWEEP   50
#define DELETES_AT_ONCE  16

typedef enum {
    EX_IDLE = 0,
    EX_LOCKING,
    EX_LISTING,
    EX_DELETING,
    EX_REMOVING,
    EX_UNLOCKING
} expiry_state_t;

typedef struct {
    char   id[40];
    int    failed;              /* an object could not be deleted */
} ex_job_t;

typedef struct {
    adl_s3_req_t   r;           /* first */
    adl_expiry_t  *e;
    int            job;         /* index in jobs */
    char          *key;
    int            running;
} ex_del_t;

struct adl_expiry_s {
    adl_worker_t    *w;
    expiry_state_t   state;
    int64_t          next_at;
    int              again;         /* the batch was full */
    int              lost;          /* the connection went away */

    ex_job_t        *jobs;
    int              njobs;
    ex_del_t        *dels;
    int              ndels;
    int              next_del;
    int              running;
};

static void deletes_pump(adl_expiry_t *e);

static void
sweep_reset(adl_expiry_t *e)
{
    int  i;

    for (i = 0; i < e->ndels; i++) {
        if (e->dels[i].running) {
            adl_s3_cancel(e->w->s3, &e->dels[i].r);
        }
        free(e->dels[i].key);
    }
    free(e->dels);
    free(e->jobs);
    e->dels = NULL;
    e->jobs = NULL;
    e->ndels = e->njobs = e->next_del = e->running = 0;
    e->state = EX_IDLE;
    e->lost = 0;
}


/* --- unlock, remove ------------------------------------------------------- */

static void
unlocked(void *data, PGresult *res)
{
    adl_expiry_t  *e = data;

    (void) res;
    sweep_reset(e);
    if (e->again) {
        e->next_at = 0;
    }
}

static void
unlock(adl_expiry_t *e)
{
    e->state = EX_UNLOCKING;
    if (e->lost || adl_db_query(e->w->db, "SELECT pg_advisory_unlock("
                                EXPIRY_LOCK ")", 0, NULL, unlocked, e) != 0)
    {
        sweep_reset(e);
    }
}

static void
removed(void *data, PGresult *res)
{
    adl_expiry_t  *e = data;

    if (res == NULL) {
        e->lost = 1;
    } else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "expiry: removing rows failed: %s",
                      PQresultErrorMessage(res));
    } else if (atoi(PQgetvalue(res, 0, 0)) > 0) {
        adl_log_info(NULL, -1, "expiry: removed %s expired job(s)",
                     PQgetvalue(res, 0, 0));
    }
    unlock(e);
}

static void
remove_rows(adl_expiry_t *e)
{
    char        *ids, *p;
    const char  *param[1];
    int          i, n = 0;

    if (e->lost) {
        unlock(e);
        return;
    }
    ids = malloc((size_t) e->njobs * 40 + 3);
    if (ids == NULL) {
        unlock(e);
        return;
    }
    p = ids;
    *p++ = '{';
    for (i = 0; i < e->njobs; i++) {
        if (e->jobs[i].failed) {
            continue;
        }
        p += sprintf(p, "%s%s", n++ ? "," : "", e->jobs[i].id);
    }
    *p++ = '}';
    *p = '\0';
    if (n == 0) {
        free(ids);
        unlock(e);
        return;
    }
    param[0] = ids;
    e->state = EX_REMOVING;
    if (adl_db_query(e->w->db, "SELECT async_dl_expired_delete($1::uuid[])",
                     1, param, removed, e) != 0)
    {
        unlock(e);
    }
    free(ids);
}


/* --- deleting the objects ------------------------------------------------- */

static void
deleted(adl_s3_req_t *r)
{
    ex_del_t      *d = (ex_del_t *) (void *) r;
    adl_expiry_t  *e = d->e;

    d->running = 0;
    e->running--;
    if (r->ok) {
        adl_log_info(e->jobs[d->job].id, -1, "expiry: deleted object %s",
                     d->key);
    } else {
        /* retried by the next sweep: a warning, not an error */
        adl_log_warn(e->jobs[d->job].id, -1, "expiry: deleting object %s "
                     "failed: %s; the job is kept for the next sweep",
                     d->key, r->error);
        e->jobs[d->job].failed = 1;
    }
    deletes_pump(e);
}

static void
deletes_pump(adl_expiry_t *e)
{
    ex_del_t  *d;

    while (e->running < DELETES_AT_ONCE && e->next_del < e->ndels) {
        d = &e->dels[e->next_del++];
        d->e = e;
        d->r.op = S3_DELETE;
        d->r.key = d->key;
        d->r.done = deleted;
        d->r.data = d;
        if (adl_s3_start(e->w->s3, &d->r) != 0) {
            adl_log_error(e->jobs[d->job].id, -1, "expiry: cannot delete "
                          "object %s: %s", d->key, d->r.error);
            e->jobs[d->job].failed = 1;
            continue;
        }
        d->running = 1;
        e->running++;
    }
    if (e->running == 0 && e->next_del == e->ndels
        && e->state == EX_DELETING)
    {
        remove_rows(e);
    }
}


/* --- lock, list ----------------------------------------------------------- */

static void
listed(void *data, PGresult *res)
{
    adl_expiry_t  *e = data;
    int            i, n;

    if (res == NULL) {
        sweep_reset(e);             /* the lock went with the session */
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "expiry: listing failed: %s",
                      PQresultErrorMessage(res));
        unlock(e);
        return;
    }
    n = PQntuples(res);
    e->jobs = calloc((size_t) n + 1, sizeof(ex_job_t));
    e->dels = calloc((size_t) n + 1, sizeof(ex_del_t));
    if (e->jobs == NULL || e->dels == NULL) {
        unlock(e);
        return;
    }
    for (i = 0; i < n; i++) {
        const char  *id = PQgetvalue(res, i, 0);

        if (e->njobs == 0 || strcmp(e->jobs[e->njobs - 1].id, id) != 0) {
            snprintf(e->jobs[e->njobs].id, sizeof(e->jobs[0].id), "%s", id);
            e->njobs++;
        }
        if (PQgetisnull(res, i, 1)) {
            continue;
        }
        e->dels[e->ndels].key = strdup(PQgetvalue(res, i, 1));
        e->dels[e->ndels].job = e->njobs - 1;
        if (e->dels[e->ndels].key == NULL) {
            e->jobs[e->njobs - 1].failed = 1;
            continue;
        }
        e->ndels++;
    }
    e->again = e->njobs >= JOBS_PER_SWEEP;
    if (e->njobs == 0) {
        unlock(e);
        return;
    }
    adl_log_info(NULL, -1, "expiry: %d expired job(s), %d object(s) to "
                 "delete", e->njobs, e->ndels);
    e->state = EX_DELETING;
    deletes_pump(e);
}

static void
locked(void *data, PGresult *res)
{
    adl_expiry_t  *e = data;
    char           limit[16];
    const char    *p[1];

    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (res != NULL) {
            adl_log_error(NULL, -1, "expiry: %s",
                          PQresultErrorMessage(res));
        }
        sweep_reset(e);
        return;
    }
    if (PQgetvalue(res, 0, 0)[0] != 't') {
        sweep_reset(e);             /* another worker is sweeping */
        return;
    }
    snprintf(limit, sizeof(limit), "%d", JOBS_PER_SWEEP);
    p[0] = limit;
    e->state = EX_LISTING;
    if (adl_db_query(e->w->db, "SELECT job_id, object_key FROM "
                     "async_dl_expired($1::integer)", 1, p, listed, e) != 0)
    {
        unlock(e);
    }
}


/* --- the TTLs ------------------------------------------------------------- */

int
adl_expiry_store_ttls(PGconn *conn, const adl_settings_t *s)
{
    char         c[24], f[24];
    const char  *p[2] = { c, f };
    PGresult    *res;
    int          rc = 0;

    snprintf(c, sizeof(c), "%lld", (long long) s->ttl_completed);
    snprintf(f, sizeof(f), "%lld", (long long) s->ttl_failed);
    res = PQexecParams(conn, "INSERT INTO async_dl_lifecycle_settings "
                       "(id, ttl_completed, ttl_failed) VALUES (true, "
                       "$1::bigint * interval '1 millisecond', $2::bigint * "
                       "interval '1 millisecond') ON CONFLICT (id) DO UPDATE "
                       "SET ttl_completed = EXCLUDED.ttl_completed, "
                       "ttl_failed = EXCLUDED.ttl_failed, updated_at = now()",
                       2, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        adl_log_error(NULL, -1, "expiry: storing the TTLs failed: %s",
                      PQresultErrorMessage(res));
        rc = -1;
    }
    PQclear(res);
    return rc;
}


/* --- the worker's entry points -------------------------------------------- */

adl_expiry_t *
adl_expiry_create(adl_worker_t *w)
{
    adl_expiry_t  *e = calloc(1, sizeof(adl_expiry_t));

    if (e != NULL) {
        e->w = w;
    }
    return e;
}

void
adl_expiry_destroy(adl_expiry_t *e)
{
    if (e == NULL) {
        return;
    }
    sweep_reset(e);
    free(e);
}

int
adl_expiry_busy(const adl_expiry_t *e)
{
    return e->state != EX_IDLE;
}

void
adl_expiry_tick(adl_expiry_t *e, int64_t now)
{
    if (!adl_db_connected(e->w->db)) {
        return;
    }
    if (e->state != EX_IDLE || e->w->stopping || now < e->next_at) {
        return;
    }
    e->next_at = now + e->w->settings->poll_interval;
    e->again = 0;
    e->state = EX_LOCKING;
    if (adl_db_query(e->w->db, "SELECT pg_try_advisory_lock(" EXPIRY_LOCK
                     ")", 0, NULL, locked, e) != 0)
    {
        e->state = EX_IDLE;
    }
}
