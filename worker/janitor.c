/*
 * janitor: deletes the stored objects of deleted jobs, a batch at a time:
 *
 *   TAKING     up to DELETE_BATCH rows that are due (deleted_at <= now()),
 *              held for a lease by moving their deleted_at past it
 *   DELETING   DeleteObject each
 *   RECORDING  the rows of the deleted objects removed; those that failed
 *              due again after a backoff
 *
 * A row leaves the table only once its object is gone: an answer lost on
 * the way (the take, the record) leaves it to come back when its time
 * is due, and deleting an object twice is harmless.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "janitor.h"
#include "log.h"

#define DELETE_BATCH  32

typedef struct deletion_s  deletion_t;

struct deletion_s {
    adl_s3_req_t    r;              /* first */
    adl_janitor_t  *j;
    char            row[24];
    char            job_id[40];
    char           *key;
    int             running;
    int             ok;
};

typedef struct {
    adl_janitor_t  *j;
    char           *sql;
    char           *ids;            /* "{1,2,...}" */
    char            delay[24];
} record_t;

struct adl_janitor_s {
    adl_worker_t  *w;
    int            table;           /* async_dl_deleted_objects exists */
    int            checking;
    int            taking;
    int            recording;       /* record queries waiting */
    int            pending;         /* something may be waiting */
    deletion_t    *batch;
    int            nbatch;
    int            running;
    int            fails;           /* passes in a row with a failure */
};

static void record_send(record_t *rec);

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
batch_free(adl_janitor_t *j)
{
    int  i;

    for (i = 0; i < j->nbatch; i++) {
        if (j->batch[i].running) {
            adl_s3_cancel(j->w->s3, &j->batch[i].r);
        }
        free(j->batch[i].key);
    }
    free(j->batch);
    j->batch = NULL;
    j->nbatch = j->running = 0;
}

void
adl_janitor_destroy(adl_janitor_t *j)
{
    if (j == NULL) {
        return;
    }
    batch_free(j);
    free(j);
}

int
adl_janitor_busy(const adl_janitor_t *j)
{
    return j->batch != NULL || j->taking || j->recording || j->checking;
}


/* --- recording the outcomes ------------------------------------------------ */

static void
record_free(record_t *rec)
{
    free(rec->sql);
    free(rec->ids);
    free(rec);
}

static void
record_result(void *data, PGresult *res)
{
    record_t       *rec = data;
    adl_janitor_t  *j = rec->j;

    if (res == NULL) {
        record_send(rec);           /* again on the next connection */
        return;
    }
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        /* the rows come back when due: deleted again, harmlessly */
        adl_log_error(NULL, -1, "janitor: %s", PQresultErrorMessage(res));
    }
    j->recording--;
    record_free(rec);
}

static void
record_send(record_t *rec)
{
    const char  *p[2] = { rec->ids, rec->delay };

    if (adl_db_query(rec->j->w->db, rec->sql, rec->delay[0] ? 2 : 1, p,
                     record_result, rec) != 0)
    {
        adl_log_error(NULL, -1, "janitor: out of memory recording deletions: "
                      "they are done again when due");
        rec->j->recording--;
        record_free(rec);
    }
}

/* Queues one record query for the rows whose outcome is ok. */
static void
record(adl_janitor_t *j, int ok, int64_t delay)
{
    record_t  *rec;
    char      *p;
    int        i, n = 0;

    rec = calloc(1, sizeof(record_t));
    if (rec == NULL) {
        adl_log_error(NULL, -1, "janitor: out of memory recording deletions: "
                      "they are done again when due");
        return;
    }
    rec->j = j;
    rec->ids = malloc((size_t) j->nbatch * 24 + 3);
    rec->sql = strdup(ok ? "DELETE FROM async_dl_deleted_objects "
                           "WHERE id = ANY ($1::bigint[])"
                         : "UPDATE async_dl_deleted_objects SET deleted_at "
                           "= now() + $2::bigint * interval '1 millisecond' "
                           "WHERE id = ANY ($1::bigint[])");
    if (rec->ids == NULL || rec->sql == NULL) {
        adl_log_error(NULL, -1, "janitor: out of memory recording deletions: "
                      "they are done again when due");
        record_free(rec);
        return;
    }
    p = rec->ids;
    *p++ = '{';
    for (i = 0; i < j->nbatch; i++) {
        if (j->batch[i].ok == ok) {
            p += sprintf(p, "%s%s", n++ ? "," : "", j->batch[i].row);
        }
    }
    *p++ = '}';
    *p = '\0';
    if (!ok) {
        snprintf(rec->delay, sizeof(rec->delay), "%lld", (long long) delay);
    }
    j->recording++;
    record_send(rec);
}

/* Every delete of the batch ended. */
static void
batch_done(adl_janitor_t *j)
{
    int64_t  delay = 0;
    int      i, ok = 0, failed = 0;

    for (i = 0; i < j->nbatch; i++) {
        ok += j->batch[i].ok;
    }
    failed = j->nbatch - ok;
    if (ok > 0) {
        record(j, 1, 0);
    }
    if (failed > 0) {
        j->fails++;
        delay = adl_backoff_ms(j->w->settings->retry_base, j->fails);
        adl_log_warn(NULL, -1, "janitor: %d of %d object(s) not deleted: "
                     "tried again in %lld ms", failed, j->nbatch,
                     (long long) delay);
        record(j, 0, delay);
    } else {
        j->fails = 0;
        if (j->nbatch == DELETE_BATCH) {
            j->pending = 1;         /* maybe more */
        }
    }
    batch_free(j);
}


/* --- deleting ----------------------------------------------------------------- */

static void
deleted(adl_s3_req_t *r)
{
    deletion_t     *d = (deletion_t *) (void *) r;
    adl_janitor_t  *j = d->j;

    d->running = 0;
    j->running--;
    d->ok = r->ok;
    if (r->ok) {
        adl_log_info(d->job_id, -1, "deleted object %s", d->key);
    } else {
        /* due again later: a warning, not an error */
        adl_log_warn(d->job_id, -1, "deleting object %s failed: %s; will "
                     "try again", d->key, r->error);
    }
    if (j->running == 0) {
        batch_done(j);
    }
}

static void
taken(void *data, PGresult *res)
{
    adl_janitor_t  *j = data;
    deletion_t     *d;
    int             i, n;

    j->taking = 0;
    if (res == NULL) {
        /* taken or not, the rows come back when their lease ends */
        j->pending = 1;
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "janitor: %s", PQresultErrorMessage(res));
        return;
    }
    n = PQntuples(res);
    if (n == 0) {
        return;
    }
    j->batch = calloc((size_t) n, sizeof(deletion_t));
    if (j->batch == NULL) {
        adl_log_error(NULL, -1, "janitor: out of memory: the objects are "
                      "deleted when their lease ends");
        return;
    }
    j->nbatch = n;
    for (i = 0; i < n; i++) {
        d = &j->batch[i];
        d->j = j;
        snprintf(d->row, sizeof(d->row), "%s", PQgetvalue(res, i, 0));
        snprintf(d->job_id, sizeof(d->job_id), "%s", PQgetvalue(res, i, 1));
        d->key = strdup(PQgetvalue(res, i, 2));
        if (d->key == NULL) {
            continue;               /* not ok: due again later */
        }
        d->r.op = S3_DELETE;
        d->r.key = d->key;
        d->r.done = deleted;
        d->r.data = d;
        if (adl_s3_start(j->w->s3, &d->r) != 0) {
            adl_log_warn(d->job_id, -1, "deleting object %s failed: %s; "
                         "will try again", d->key, d->r.error);
            continue;
        }
        d->running = 1;
        j->running++;
    }
    if (j->running == 0) {
        batch_done(j);
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
    char         lease[24], limit[16];
    const char  *p[2] = { lease, limit };

    if (!j->table || !j->pending || j->taking || j->batch != NULL
        || j->w->stopping || !adl_db_connected(j->w->db))
    {
        return;
    }
    j->pending = 0;
    snprintf(lease, sizeof(lease), "%lld", (long long) j->w->settings->lease);
    snprintf(limit, sizeof(limit), "%d", DELETE_BATCH);
    if (adl_db_query(j->w->db, "UPDATE async_dl_deleted_objects SET "
                     "deleted_at = now() + $1::bigint * interval "
                     "'1 millisecond' WHERE id IN (SELECT id FROM "
                     "async_dl_deleted_objects WHERE deleted_at <= now() "
                     "ORDER BY id LIMIT $2::integer FOR UPDATE SKIP LOCKED) "
                     "RETURNING id, job_id, object_key", 2, p, taken, j)
        == 0)
    {
        j->taking = 1;
    }
}
