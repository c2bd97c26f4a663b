/*
 * janitor: the worker's maintenance, claimed through PostgreSQL like any
 * other work.
 *
 * Deleted objects.  The stored objects of deleted jobs (and the orphans
 * of canceled files and dropped zips, and the multipart uploads paused
 * files kept that nobody will go on with: a row with an upload id) are
 * queued in PostgreSQL; the janitor deletes them (aborts those uploads)
 * from the storage a batch at a time:
 *
 *     IDLE --due, room--> TAKING --rows--> DELETING --all answered--> IDLE
 *            (NOTIFY,        |                  each DeleteObject;
 *             poll, full     +--none/error--> IDLE
 *             batch)
 *
 *   TAKING     async_dl_deleted_take: up to DELETE_BATCH rows that are
 *              due, held for a lease by moving their time past it
 *   DELETING   DeleteObject (AbortMultipartUpload) each
 *   then       the rows of the deleted objects go (async_dl_deleted_done);
 *              those that failed are due again after a backoff
 *              (async_dl_deleted_retry).  These record queries run on
 *              while the next batch is taken.
 *
 * A row leaves the table only once its object is gone: an answer lost on
 * the way (the take, the record) leaves it to come back when its time
 * is due, and deleting an object twice is harmless.
 *
 * Every poll interval it also runs the deadline sweep and compacts the
 * queue counts (two statements any worker may run at any time).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "clock.h"
#include "janitor.h"
#include "log.h"

#define DELETE_BATCH  32

typedef enum {
    JN_IDLE = 0,
    JN_TAKING,
    JN_DELETING
} janitor_state_t;

typedef struct janitor_s   janitor_t;
typedef struct deletion_s  deletion_t;

struct deletion_s {
    adl_s3_req_t    r;              /* first */
    janitor_t      *j;
    char            row[24];
    char            job_id[40];
    char           *key;
    char           *upload_id;      /* a kept upload to abort, or NULL */
    int             running;
    int             ok;
};

typedef struct {
    janitor_t      *j;
    int             ok;             /* done, or retry after delay */
    char           *ids;            /* "{1,2,...}" */
    char            delay[24];
} record_t;

struct janitor_s {
    adl_env_t        *env;
    janitor_state_t   state;
    int               pending;      /* something may be due */
    int               recording;    /* record queries waiting */
    deletion_t       *batch;
    int               nbatch;
    int               running;      /* deletes of the batch in flight */
    int               fails;        /* backoff steps of this failing run */
    int64_t           step_at;      /* the next step not before */
};

static void record_send(record_t *rec);

static void
set_state(janitor_t *j, janitor_state_t state)
{
    j->state = state;
}


/* --- recording the outcomes ------------------------------------------------ */

static void
record_free(record_t *rec)
{
    free(rec->ids);
    free(rec);
}

static void
record_result(void *data, PGresult *res)
{
    record_t   *rec = data;
    janitor_t  *j = rec->j;

    if (res == NULL) {
        record_send(rec);           /* again on the next connection */
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
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
    int          rc;

    if (rec->ok) {
        rc = adl_db_query(rec->j->env->db, "SELECT async_dl_deleted_done("
                          "$1::bigint[])", 1, p, record_result, rec);
    } else {
        rc = adl_db_query(rec->j->env->db, "SELECT async_dl_deleted_retry("
                          "$1::bigint[], $2::bigint)", 2, p, record_result,
                          rec);
    }
    if (rc != 0) {
        adl_log_error(NULL, -1, "janitor: out of memory recording deletions: "
                      "they are done again when due");
        rec->j->recording--;
        record_free(rec);
    }
}

/* Queues one record query for the rows whose outcome is ok. */
static void
record(janitor_t *j, int ok, int64_t delay)
{
    record_t  *rec;
    char      *p;
    int        i, n = 0;

    rec = calloc(1, sizeof(record_t));
    if (rec != NULL) {
        rec->ids = malloc((size_t) j->nbatch * 24 + 3);
    }
    if (rec == NULL || rec->ids == NULL) {
        adl_log_error(NULL, -1, "janitor: out of memory recording deletions: "
                      "they are done again when due");
        if (rec != NULL) {
            record_free(rec);
        }
        return;
    }
    rec->j = j;
    rec->ok = ok;
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

static void
batch_free(janitor_t *j)
{
    int  i;

    for (i = 0; i < j->nbatch; i++) {
        if (j->batch[i].running) {
            adl_s3_cancel(j->env->s3, &j->batch[i].r);
        }
        free(j->batch[i].key);
        free(j->batch[i].upload_id);
    }
    free(j->batch);
    j->batch = NULL;
    j->nbatch = j->running = 0;
}

/* Every delete of the batch ended. */
static void
batch_done(janitor_t *j)
{
    int64_t  delay = 0, now;
    int      i, ok = 0, failed = 0;

    for (i = 0; i < j->nbatch; i++) {
        ok += j->batch[i].ok;
    }
    failed = j->nbatch - ok;
    if (ok > 0) {
        record(j, 1, 0);
    }
    if (failed > 0) {
        /*
         * The storage answered some: it is up, those failed on their own
         * (SlowDown, a reset): try them again soon.  None answered: back
         * off, one step per delay (not per batch, which a long queue
         * makes many in a second: it would put rows off for the maximum
         * long after the storage is back).
         */
        now = adl_now_ms();
        if (ok > 0) {
            j->fails = 0;
        }
        if (j->fails == 0 || now >= j->step_at) {
            j->fails++;
            j->step_at = now + adl_backoff_ms(j->env->settings->retry_base,
                                              j->fails);
        }
        delay = adl_backoff_ms(j->env->settings->retry_base, j->fails);
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
    set_state(j, JN_IDLE);
}


/* --- deleting ----------------------------------------------------------------- */

static void
deleted(adl_s3_req_t *r)
{
    deletion_t  *d = (deletion_t *) (void *) r;
    janitor_t   *j = d->j;

    d->running = 0;
    j->running--;
    d->ok = r->ok;
    if (r->ok && d->upload_id != NULL) {
        adl_log_info(d->job_id, -1, "aborted upload %s of %s", d->upload_id,
                     d->key);
    } else if (r->ok) {
        adl_log_info(d->job_id, -1, "deleted object %s", d->key);
    } else {
        /* due again later: a warning, not an error */
        adl_log_warn(d->job_id, -1, "%s %s failed: %s; will try again",
                     d->upload_id != NULL ? "aborting the upload of"
                                          : "deleting object",
                     d->key, r->error);
    }
}

static void
taken(void *data, PGresult *res)
{
    janitor_t   *j = data;
    deletion_t  *d;
    int          i, n;

    set_state(j, JN_IDLE);
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
    set_state(j, JN_DELETING);
    for (i = 0; i < n; i++) {
        d = &j->batch[i];
        d->j = j;
        snprintf(d->row, sizeof(d->row), "%s", PQgetvalue(res, i, 0));
        snprintf(d->job_id, sizeof(d->job_id), "%s", PQgetvalue(res, i, 1));
        d->key = strdup(PQgetvalue(res, i, 2));
        if (!PQgetisnull(res, i, 3)) {
            d->upload_id = strdup(PQgetvalue(res, i, 3));
            if (d->upload_id == NULL) {
                continue;           /* not ok: due again later */
            }
        }
        if (d->key == NULL) {
            continue;               /* not ok: due again later */
        }
        d->r.op = d->upload_id != NULL ? S3_ABORT : S3_DELETE;
        d->r.key = d->key;
        d->r.upload_id = d->upload_id;
        d->r.done = deleted;
        d->r.data = d;
        if (adl_s3_start(j->env->s3, &d->r) != 0) {
            adl_log_warn(d->job_id, -1, "deleting object %s failed: %s; "
                         "will try again", d->key, d->r.error);
            continue;
        }
        d->running = 1;
        j->running++;
    }
}


/* --- the deadline sweep, the counts ----------------------------------------- */

static void
sweep_result(void *data, PGresult *res)
{
    (void) data;

    if (res == NULL) {
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "deadline sweep failed: %s",
                      PQresultErrorMessage(res));
    } else if (PQntuples(res) == 1 && atoi(PQgetvalue(res, 0, 0)) > 0) {
        adl_log_info(NULL, -1, "deadline sweep: %s file(s) timed out",
                     PQgetvalue(res, 0, 0));
    }
}

static void
compact_result(void *data, PGresult *res)
{
    (void) data;

    if (res != NULL && PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "compacting the queue counts failed: %s",
                      PQresultErrorMessage(res));
    }
}


/* --- the ops -------------------------------------------------------------- */

static void *
janitor_create(adl_env_t *env)
{
    janitor_t  *j = calloc(1, sizeof(janitor_t));

    if (j != NULL) {
        j->env = env;
        j->pending = 1;
    }
    return j;
}

static void
janitor_destroy(void *k)
{
    janitor_t  *j = k;

    batch_free(j);
    free(j);
}

static void
janitor_wake(void *k)
{
    janitor_t  *j = k;

    j->pending = 1;
}

static void
janitor_poll(void *k, int64_t now)
{
    janitor_t  *j = k;

    (void) now;
    adl_db_query(j->env->db, "SELECT async_dl_sweep_deadlines()", 0, NULL,
                 sweep_result, j);
    adl_db_query(j->env->db, "SELECT async_dl_counts_compact()", 0, NULL,
                 compact_result, j);
}

static void
janitor_settle(void *k, int64_t now)
{
    janitor_t   *j = k;
    char         lease[24], limit[16];
    const char  *p[2] = { lease, limit };

    (void) now;
    if (j->state == JN_DELETING && j->running == 0) {
        batch_done(j);
    }
    if (j->state != JN_IDLE || !j->pending || j->env->stopping
        || !adl_db_connected(j->env->db))
    {
        return;
    }
    snprintf(lease, sizeof(lease), "%lld",
             (long long) j->env->settings->lease);
    snprintf(limit, sizeof(limit), "%d", DELETE_BATCH);
    if (adl_db_query(j->env->db, "SELECT o_id, o_job, o_key, o_upload_id FROM "
                     "async_dl_deleted_take($1::bigint, $2::integer)",
                     2, p, taken, j) == 0)
    {
        j->pending = 0;
        set_state(j, JN_TAKING);
    }
}

static int
janitor_busy(const void *k)
{
    const janitor_t  *j = k;

    return j->state != JN_IDLE || j->recording > 0;
}

static const char *const  janitor_channels[] = { "async_dl_deleted", NULL };

const adl_task_ops_t  adl_janitor_ops = {
    "janitor",
    janitor_channels,
    janitor_create,
    janitor_destroy,
    janitor_wake,
    NULL,                           /* notify: wake */
    janitor_poll,
    NULL,                           /* tick */
    janitor_settle,
    NULL,                           /* hand_back: deletes finish or not */
    janitor_busy,
    NULL
};
