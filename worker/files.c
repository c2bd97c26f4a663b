/*
 * files: the transfer kind (files.h).
 *
 * The transfers are an array of pointers, at most ASYNC_DL_CONCURRENCY of
 * them (those ending included), plus ASYNC_DL_NEWCOMER_SLOTS for owners
 * with nothing downloading: a claim asks for no more than the room left,
 * and the array is grown before a transfer starts, so starting never fails
 * for want of a slot.  Transfers tell files through `wake`
 * that something is to be done from the loop; files then settles every
 * transfer once and frees those done.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "claim.h"
#include "clock.h"
#include "files.h"
#include "log.h"
#include "metrics.h"
#include "transfer.h"

typedef struct {
    adl_claimer_t   claim;          /* first: adl_claimer_wake */
    adl_env_t      *env;
    int             claim_limit;    /* rows asked for by the claim running */
    int             short_claim;    /* the last claim got less than asked */
    /* the last job created by an owner with nothing downloading
     * (async_dl_jobs "<id> idle") since the last claim, or "" */
    char            newcomer[40];
    char            claiming_newcomer[40];  /* of the claim running */
    adl_job_t      *jobs;
    adl_xfer_t    **xs;
    int             n;
    int             cap;
    int             wake;           /* a transfer wants settling */
} files_t;


/* --- jobs ---------------------------------------------------------------- */

static adl_job_t *
job_get(files_t *f, const char *id, int64_t remaining_ms,
    const char *traceparent)
{
    adl_job_t  *j;

    for (j = f->jobs; j != NULL; j = j->next) {
        if (strcmp(j->id, id) == 0) {
            return j;
        }
    }
    j = calloc(1, sizeof(adl_job_t));
    if (j == NULL) {
        return NULL;
    }
    snprintf(j->id, sizeof(j->id), "%s", id);
    snprintf(j->traceparent, sizeof(j->traceparent), "%s", traceparent);
    j->deadline = adl_now_ms() + remaining_ms;
    j->next = f->jobs;
    f->jobs = j;
    adl_log_trace(j->id, j->traceparent);
    return j;
}

static void
job_unref(files_t *f, adl_job_t *job)
{
    adl_job_t  **pp;

    if (--job->refs > 0) {
        return;
    }
    for (pp = &f->jobs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == job) {
            *pp = job->next;
            adl_log_untrace(job->id);
            free(job);
            return;
        }
    }
}


/* --- transfers ----------------------------------------------------------- */

static int
room_for_one(files_t *f)
{
    adl_xfer_t  **xs;
    int           cap;

    if (f->n < f->cap) {
        return 0;
    }
    cap = f->cap ? f->cap * 2 : 16;
    xs = realloc(f->xs, (size_t) cap * sizeof(adl_xfer_t *));
    if (xs == NULL) {
        return -1;
    }
    f->xs = xs;
    f->cap = cap;
    return 0;
}

static void
start(files_t *f, const adl_claim_t *c, int64_t remaining_ms)
{
    adl_job_t   *job;
    adl_xfer_t  *x;

    if (room_for_one(f) != 0
        || (job = job_get(f, c->job_id, remaining_ms, c->traceparent))
           == NULL)
    {
        adl_log_error(c->job_id, c->idx, "out of memory: file left to "
                      "its lease");
        return;
    }
    job->refs++;
    x = adl_xfer_start(f->env, &f->wake, job, c);
    if (x == NULL) {
        adl_log_error(c->job_id, c->idx, "out of memory: file left to "
                      "its lease");
        job_unref(f, job);
        return;
    }
    f->xs[f->n++] = x;
    adl_metrics.transfers = f->n;
}

static void
claim_result(void *data, PGresult *res)
{
    files_t      *f = data;
    adl_claim_t   c;
    int           i, k, n;

    n = adl_claimer_answered(&f->claim, res, "file");
    if (n < 0 && f->newcomer[0] == '\0') {
        /* failed or lost with its connection: the newcomer still waits */
        memcpy(f->newcomer, f->claiming_newcomer, sizeof(f->newcomer));
    }
    for (i = 0; i < n; i++) {
        c.job_id = PQgetvalue(res, i, 0);
        c.idx = atoi(PQgetvalue(res, i, 1));
        c.url = PQgetvalue(res, i, 2);
        c.attempts = atoi(PQgetvalue(res, i, 4));
        c.lease = PQgetvalue(res, i, 6);
        c.key = PQgetvalue(res, i, 3);
        c.claimed_at = f->claim.sent;
        c.traceparent = PQgetvalue(res, i, 7);
        c.resume = PQgetisnull(res, i, 9) ? NULL : PQgetvalue(res, i, 9);
        if (!PQgetisnull(res, i, 8)) {
            adl_metric_observe(&adl_metrics.pickup_seconds,
                               strtod(PQgetvalue(res, i, 8), NULL));
        }

        /* ours again: the lease ran out while the database was away.  The
         * old transfer stops at its lease's end, before this answer can
         * arrive; if it has not, it stops now, before the new one starts */
        for (k = 0; k < f->n; k++) {
            if (adl_xfer_active(f->xs[k]) && adl_xfer_idx(f->xs[k]) == c.idx
                && strcmp(adl_xfer_job(f->xs[k])->id, c.job_id) == 0)
            {
                adl_xfer_lease_lost(f->xs[k]);
            }
        }
        start(f, &c, strtoll(PQgetvalue(res, i, 5), NULL, 10));
    }
    if (n >= f->claim_limit) {
        f->claim.pending = 1;
    }
    f->short_claim = n >= 0 && n < f->claim_limit;
}

/* what a claim's rows give: the claim's columns, and of the job (looked
 * up by key: the claim's row estimate would make a join read the table)
 * its trace context and age, the pickup, on the file's first claim only:
 * the subqueries see the rows as they were before the claim (the claim is
 * a function called by this statement), when a file never claimed had no
 * started_at (a file handed back keeps its own) */
#define CLAIM_COLUMNS                                                       \
    "SELECT c.job_id, c.idx, c.url, c.write_key, c.attempts, "              \
    "greatest(0, extract(epoch FROM least(c.deadline, clock_timestamp() "   \
    "+ interval '10 years') - clock_timestamp()) * 1000)::bigint, "         \
    "c.lease, (SELECT j.traceparent FROM async_dl_jobs j "                  \
    "WHERE j.id = c.job_id), (SELECT extract(epoch FROM "                   \
    "clock_timestamp() - j.created_at) FROM async_dl_jobs j JOIN "          \
    "async_dl_files f ON f.job_id = j.id AND f.idx = c.idx WHERE j.id = "   \
    "c.job_id AND f.started_at IS NULL), (SELECT f.resume::text FROM "      \
    "async_dl_files f WHERE f.job_id = c.job_id AND f.idx = c.idx) FROM "

static void
maybe_claim(files_t *f)
{
    const adl_settings_t  *s = f->env->settings;
    char                   limit[16], lease[32], max[16], host[16],
                           owner[16];
    const char            *p[7];
    int                    room = (int) s->concurrency - f->n;
    int                    batch = (int) s->concurrency / 4;
    int                    rc;

    if (room <= 0) {
        /* every slot taken: a newcomer's job may still start in one of
         * the slots beyond them, claimed for owners with nothing
         * downloading only, unless another worker took it first */
        room = (int) (s->concurrency + s->newcomer_slots) - f->n;
        if (f->newcomer[0] == '\0' || room <= 0) {
            return;
        }

    } else if (f->n > 0 && room < (batch > 0 ? batch : 1)
               && f->newcomer[0] == '\0')
    {
        /* when busy, refill in batches rather than one file at a time;
         * but a newcomer's job is claimed for as soon as one slot is free
         * (the fair pick gives it the slot) rather than after a batch of
         * another owner's backlog ends */
        return;
    }
    if (!adl_claimer_due(&f->claim, f->env, room)) {
        return;
    }

    snprintf(limit, sizeof(limit), "%d", room);
    snprintf(lease, sizeof(lease), "%lld milliseconds", (long long) s->lease);
    snprintf(max, sizeof(max), "%lld", (long long) s->max_attempts);
    snprintf(host, sizeof(host), "%lld", (long long) s->per_host_concurrency);
    snprintf(owner, sizeof(owner), "%lld",
             (long long) s->per_owner_concurrency);
    p[0] = s->worker_id;
    p[1] = limit;
    p[2] = lease;
    p[3] = max;
    p[4] = s->s3_prefix;
    p[5] = host;
    p[6] = owner;
    /* the claim names and records the key each transfer writes to; it
     * dies with its connection, so that on the next one the results
     * queued meanwhile (an object stored after its lease ran out) are
     * written before any claim can take those files again */
    if (f->n >= (int) s->concurrency) {
        p[6] = f->newcomer;
        rc = adl_claimer_send(&f->claim, f->env, CLAIM_COLUMNS
                              "async_dl_claim_newcomer($7::uuid, $1, "
                              "$2::integer, $3::interval, $4::integer, $5, "
                              "$6::integer) c", 7, p, claim_result,
                              f);
    } else {
        rc = adl_claimer_send(&f->claim, f->env, CLAIM_COLUMNS
                              "async_dl_claim($1, $2::integer, "
                              "$3::interval, $4::integer, $5, $6::integer, "
                              "$7::integer) c", 7, p, claim_result,
                              f);
    }
    if (rc == 0) {
        f->claim_limit = room;
        memcpy(f->claiming_newcomer, f->newcomer, sizeof(f->newcomer));
        f->newcomer[0] = '\0';
    }
}


/* --- the ops ------------------------------------------------------------- */

static void *
files_create(adl_env_t *env)
{
    files_t  *f = calloc(1, sizeof(files_t));

    if (f != NULL) {
        f->env = env;
        adl_claimer_init(&f->claim, 'f');
    }
    return f;
}

static void
files_destroy(void *k)
{
    files_t    *f = k;
    adl_job_t  *j;
    int         i;

    for (i = 0; i < f->n; i++) {
        adl_xfer_free(f->xs[i]);
    }
    free(f->xs);
    while ((j = f->jobs) != NULL) {
        f->jobs = j->next;
        free(j);
    }
    free(f);
}

static void
files_notify(void *k, const char *channel, const char *payload)
{
    files_t     *f = k;
    const char  *p;
    int          i, n = 0, pause;

    if (strcmp(channel, "async_dl_jobs") == 0) {
        f->claim.pending = 1;
        p = strchr(payload, ' ');
        if (p != NULL && strcmp(p + 1, "idle") == 0
            && (size_t) (p - payload) < sizeof(f->newcomer))
        {
            memcpy(f->newcomer, payload, (size_t) (p - payload));
            f->newcomer[p - payload] = '\0';
        }
        return;
    }
    /* async_dl_cancel: the job was canceled or deleted; async_dl_pause:
     * paused (its files wait in the database for the resume) */
    pause = strcmp(channel, "async_dl_pause") == 0;
    for (i = 0; i < f->n; i++) {
        if (adl_xfer_active(f->xs[i])
            && strcmp(adl_xfer_job(f->xs[i])->id, payload) == 0)
        {
            if (!pause) {
                adl_xfer_cancel(f->xs[i]);
                n++;
            } else {
                n += adl_xfer_pause(f->xs[i]);
            }
        }
    }
    if (n > 0) {
        adl_log_info(payload, -1, "%s: stopped %d transfer(s)",
                     pause ? "paused" : "canceled", n);
    }
}

static void
files_tick(void *k, int64_t now)
{
    files_t  *f = k;
    int       i;

    for (i = 0; i < f->n; i++) {
        adl_xfer_tick(f->xs[i], now);
    }
}

static void
files_settle(void *k, int64_t now)
{
    files_t     *f = k;
    adl_xfer_t  *x;
    adl_job_t   *job;
    int          i, pass, ended = 0;

    (void) now;
    /* transfers end here, never inside a libcurl callback.  What a pass
     * leaves to do (an unpause that asked for more) waits for the next
     * batch or tick */
    for (pass = 0; f->wake && pass < 2; pass++) {
        f->wake = 0;
        for (i = 0; i < f->n; ) {
            x = f->xs[i];
            if (!adl_xfer_settle(x)) {
                i++;
                continue;
            }
            job = adl_xfer_job(x);
            adl_xfer_free(x);
            job_unref(f, job);
            f->xs[i] = f->xs[--f->n];
            ended++;
        }
    }
    adl_metrics.transfers = f->n;       /* the gauge is the array */
    /* a claim that came back short may have been held back by a host's or
     * an owner's limit (or a paused host), which a file that ended may have
     * freed: ask again (in batches, as any refill) */
    if (ended > 0 && f->short_claim) {
        f->claim.pending = 1;
    }
    maybe_claim(f);
}

static void
files_hand_back(void *k)
{
    files_t  *f = k;
    int       i;

    for (i = 0; i < f->n; i++) {
        adl_xfer_shutdown(f->xs[i]);
    }
}

static int
files_busy(const void *k)
{
    const files_t  *f = k;

    return f->n + f->claim.claiming;
}

static int
files_unrecorded(const void *k)
{
    const files_t  *f = k;
    int             i, n = 0;

    for (i = 0; i < f->n; i++) {
        n += !adl_xfer_recorded(f->xs[i]);
    }
    return n;
}

static const char *const  files_channels[] = {
    "async_dl_jobs", "async_dl_cancel", "async_dl_pause", NULL
};

const adl_task_ops_t  adl_files_ops = {
    "files",
    files_channels,
    files_create,
    files_destroy,
    adl_claimer_wake,
    files_notify,
    NULL,                           /* poll: wake */
    files_tick,
    files_settle,
    files_hand_back,
    files_busy,
    files_unrecorded
};
