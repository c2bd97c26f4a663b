/*
 * janitor: deletes the stored objects of deleted jobs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "janitor.h"
#include "log.h"

#define DELETE_BATCH  32

typedef struct deletion_s  deletion_t;

struct deletion_s {
    adl_s3_req_t    r;              /* first */
    deletion_t     *next;
    adl_janitor_t  *j;
    char           *job_id;
    char           *key;
};

struct adl_janitor_s {
    adl_worker_t  *w;
    int            table;           /* async_dl_deleted_objects exists */
    int            checking;
    int            querying;
    int            pending;         /* something may be waiting */
    deletion_t    *running;
};

adl_janitor_t *
adl_janitor_create(adl_worker_t *w)
{
    adl_janitor_t  *j = calloc(1, sizeof(adl_janitor_t));

    if (j != NULL) {
        j->w = w;
    }
    return j;
}

static void
deletion_free(adl_janitor_t *j, deletion_t *d)
{
    deletion_t  **pp;

    for (pp = &j->running; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    }
    adl_s3_cancel(j->w->s3, &d->r);
    free(d->job_id);
    free(d->key);
    free(d);
}

void
adl_janitor_destroy(adl_janitor_t *j)
{
    if (j == NULL) {
        return;
    }
    while (j->running != NULL) {
        deletion_free(j, j->running);
    }
    free(j);
}

int
adl_janitor_busy(const adl_janitor_t *j)
{
    return j->running != NULL || j->querying || j->checking;
}

static void
requeue_result(void *data, PGresult *res)
{
    (void) data;
    if (res != NULL && PQresultStatus(res) != PGRES_COMMAND_OK) {
        adl_log_error(NULL, -1, "janitor: cannot queue an object again: %s",
                      PQresultErrorMessage(res));
    }
}

static void
deleted(adl_s3_req_t *r)
{
    deletion_t     *d = (deletion_t *) (void *) r;
    adl_janitor_t  *j = d->j;
    const char     *p[2];

    if (r->ok) {
        adl_log_info(d->job_id, -1, "deleted object %s", d->key);
    } else {
        /* queued again: a warning, the error is when we give up */
        adl_log_warn(d->job_id, -1, "deleting object %s failed: %s; will "
                     "try again", d->key, r->error);
        p[0] = d->job_id;
        p[1] = d->key;
        adl_db_query(j->w->db, "INSERT INTO async_dl_deleted_objects "
                     "(job_id, object_key) VALUES ($1::uuid, $2)", 2, p,
                     requeue_result, NULL);
    }
    deletion_free(j, d);
}

static void
taken(void *data, PGresult *res)
{
    adl_janitor_t  *j = data;
    deletion_t     *d;
    int             i, n;

    j->querying = 0;
    if (res == NULL) {
        j->pending = 1;
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "janitor: %s", PQresultErrorMessage(res));
        return;
    }
    n = PQntuples(res);
    for (i = 0; i < n; i++) {
        d = calloc(1, sizeof(deletion_t));
        if (d == NULL
            || (d->job_id = strdup(PQgetvalue(res, i, 0))) == NULL
            || (d->key = strdup(PQgetvalue(res, i, 1))) == NULL)
        {
            if (d != NULL) {
                free(d->job_id);
                free(d);
            }
            adl_log_error(NULL, -1, "janitor: out of memory");
            continue;
        }
        d->j = j;
        d->r.op = S3_DELETE;
        d->r.key = d->key;
        d->r.done = deleted;
        d->r.data = d;
        d->next = j->running;
        j->running = d;
        if (adl_s3_start(j->w->s3, &d->r) != 0) {
            d->r.ok = 0;
            deleted(&d->r);
        }
    }
    if (n == DELETE_BATCH) {
        j->pending = 1;
    }
}

static void
checked(void *data, PGresult *res)
{
    adl_janitor_t  *j = data;

    j->checking = 0;
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK
        && PQntuples(res) == 1)
    {
        j->table = PQgetvalue(res, 0, 0)[0] == 't';
        j->pending = j->table;
    }
}

void
adl_janitor_connected(adl_janitor_t *j)
{
    if (adl_db_query(j->w->db, "SELECT to_regclass("
                     "'async_dl_deleted_objects') IS NOT NULL", 0, NULL,
                     checked, j) == 0)
    {
        j->checking = 1;
    }
}

void
adl_janitor_kick(adl_janitor_t *j)
{
    j->pending = 1;
}

void
adl_janitor_run(adl_janitor_t *j)
{
    if (!j->table || !j->pending || j->querying || j->running != NULL
        || j->w->stopping || !adl_db_connected(j->w->db))
    {
        return;
    }
    j->pending = 0;
    if (adl_db_query(j->w->db, "DELETE FROM async_dl_deleted_objects "
                     "WHERE id IN (SELECT id FROM async_dl_deleted_objects "
                     "ORDER BY id LIMIT 32 FOR UPDATE SKIP LOCKED) "
                     "RETURNING job_id, object_key", 0, NULL, taken, j) == 0)
    {
        j->querying = 1;
    }
}
