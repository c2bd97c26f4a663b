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
 * Every step ends: each query gets its one answer from db.c (or NULL when
 * the connection went, which also released the lock: the sweep then ends
 * and the next one starts over), each delete its outcome or, past
 * DELETE_TIMEOUT, is stopped and counts as failed.  A job with an object
 * that could not be deleted keeps its row and is tried again later, with
 * backoff, without holding back the jobs behind it.
 *
 * What it does is logged: each sweep that removed or kept something, a
 * lock held elsewhere for long, a sweep running long, a tick that came
 * late (all rate-limited).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "clock.h"
#include "expiry.h"
#include "log.h"

#define JOBS_PER_SWEEP   50
#define DELETES_AT_ONCE  16
#define RETRY_SLOTS      64         /* jobs whose deletes failed, waiting */
#define RETRY_BASE       1000       /* ms, doubled per failed sweep */
#define TICK_LATE        5000       /* ms without a tick */

/* A sweep running longer, or none won for as long, is said, at most that
 * often (50 s with the default poll interval). */
#define REPORT_EVERY(s)    ((s)->poll_interval * 10)
/* A DeleteObject is bounded by curl (connect timeout, nothing received
 * for the idle timeout): past both, it is stopped all the same. */
#define DELETE_TIMEOUT(s)  ((s)->connect_timeout + (s)->idle_timeout + 5000)

typedef enum {
    EX_IDLE = 0,
    EX_LOCKING,
    EX_LISTING,
    EX_DELETING,
    EX_REMOVING,
    EX_UNLOCKING
} expiry_state_t;

static const char  *state_names[] = { "idle", "locking", "listing",
    "deleting", "removing", "unlocking" };

typedef struct {
    char   id[40];
    int    failed;              /* an object could not be deleted */
} ex_job_t;

typedef struct expiry_s  expiry_t;

typedef struct {
    adl_s3_req_t   r;           /* first */
    expiry_t      *e;
    int            job;         /* index in jobs */
    char          *key;
    int            running;
    int64_t        started;
} ex_del_t;

/* A job kept because a delete failed: not tried again before retry_at. */
typedef struct {
    char      id[40];
    int       fails;
    int64_t   retry_at;
    int64_t   seen_at;
} ex_retry_t;

struct expiry_s {
    adl_env_t       *env;
    expiry_state_t   state;
    int64_t          next_at;
    int64_t          started;       /* this sweep */
    int64_t          last_tick;
    int              again;         /* the batch was full */
    int              held;          /* the lock, on session `session` */
    uint64_t         session;

    ex_job_t        *jobs;
    int              njobs;
    ex_del_t        *dels;
    int              ndels;
    int              next_del;
    int              running;
    int              deleted;       /* objects, this sweep */
    int              skipped;       /* jobs waiting for their retry */

    ex_retry_t       retries[RETRY_SLOTS];
    int              nretries;

    int64_t          busy_since;    /* lock held elsewhere since, or 0 */
    int              busy_count;
    char             holder[160];
    int64_t          busy_said;
    int64_t          slow_said;
};

static void deletes_pump(expiry_t *e);
static void unlock(expiry_t *e);

static void
sweep_reset(expiry_t *e)
{
    int  i;

    for (i = 0; i < e->ndels; i++) {
        if (e->dels[i].running) {
            adl_s3_cancel(e->env->s3, &e->dels[i].r);
        }
        free(e->dels[i].key);
    }
    free(e->dels);
    free(e->jobs);
    e->dels = NULL;
    e->jobs = NULL;
    e->ndels = e->njobs = e->next_del = e->running = 0;
    e->deleted = e->skipped = 0;
    e->state = EX_IDLE;
}

/* The lock went with its connection: nothing to unlock any more. */
static int
lock_lost(expiry_t *e)
{
    if (e->held && adl_db_session(e->env->db) != e->session) {
        e->held = 0;
    }
    return !e->held;
}


/* --- jobs waiting for a retry --------------------------------------------- */

static ex_retry_t *
retry_find(expiry_t *e, const char *id)
{
    int  i;

    for (i = 0; i < e->nretries; i++) {
        if (strcmp(e->retries[i].id, id) == 0) {
            return &e->retries[i];
        }
    }
    return NULL;
}

static void
retry_forget(expiry_t *e, const char *id)
{
    ex_retry_t  *r = retry_find(e, id);

    if (r != NULL) {
        *r = e->retries[--e->nretries];
    }
}

/* A job whose objects could not all be deleted: later, with backoff. */
static void
retry_later(expiry_t *e, const char *id, int64_t now)
{
    ex_retry_t  *r = retry_find(e, id);
    int          i;

    if (r == NULL) {
        if (e->nretries < RETRY_SLOTS) {
            r = &e->retries[e->nretries++];
        } else {
            r = &e->retries[0];     /* the one seen longest ago goes */
            for (i = 1; i < RETRY_SLOTS; i++) {
                if (e->retries[i].seen_at < r->seen_at) {
                    r = &e->retries[i];
                }
            }
        }
        memset(r, 0, sizeof(*r));
        snprintf(r->id, sizeof(r->id), "%s", id);
    }
    r->fails++;
    r->seen_at = now;
    r->retry_at = now + adl_backoff_ms(RETRY_BASE, r->fails);
}

/* Jobs that would be listed first but wait: listed beyond the batch. */
static int
retries_waiting(expiry_t *e, int64_t now)
{
    int  i, n = 0;

    for (i = 0; i < e->nretries; i++) {
        n += e->retries[i].retry_at > now;
    }
    return n;
}


/* --- unlock, remove ------------------------------------------------------- */

static void
sweep_done(expiry_t *e)
{
    int  i, kept = 0;

    for (i = 0; i < e->njobs; i++) {
        kept += e->jobs[i].failed;
    }
    if (kept > 0) {
        adl_log_warn(NULL, -1, "expiry: %d expired job(s) kept for a later "
                     "sweep: deleting their objects failed (%d job(s) "
                     "waiting to be tried again)", kept, e->nretries);
    }
    if (e->again) {
        e->next_at = 0;
    }
    sweep_reset(e);
}

static void
unlocked(void *data, PGresult *res)
{
    expiry_t  *e = data;

    if (res != NULL && PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "expiry: releasing the lock failed: %s",
                      PQresultErrorMessage(res));
    }
    /* answered or not, it is gone: with the query or with the session */
    e->held = 0;
    sweep_done(e);
}

static void
unlock(expiry_t *e)
{
    e->state = EX_UNLOCKING;
    if (lock_lost(e)) {
        sweep_done(e);
        return;
    }
    if (adl_db_query(e->env->db, "SELECT async_dl_expiry_unlock()",
                     0, NULL, unlocked, e) != 0)
    {
        /* still held: expiry_tick() unlocks before the next sweep */
        sweep_done(e);
    }
}

static void
removed(void *data, PGresult *res)
{
    expiry_t  *e = data;
    int            n;

    if (res == NULL) {
        /* the connection went: the rows may or may not be gone, a later
         * sweep finds those that are not */
        adl_log_warn(NULL, -1, "expiry: the database connection was lost "
                     "while removing %d expired job(s)", e->njobs);
    } else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "expiry: removing rows failed: %s",
                      PQresultErrorMessage(res));
    } else {
        n = atoi(PQgetvalue(res, 0, 0));
        adl_log_info(NULL, -1, "expiry: removed %d expired job(s), deleted "
                     "%d object(s) in %lld ms%s", n, e->deleted,
                     (long long) (adl_now_ms() - e->started),
                     e->again ? "; more to do" : "");
    }
    unlock(e);
}

static void
remove_rows(expiry_t *e)
{
    char        *ids, *p;
    const char  *param[1];
    int64_t      now = adl_now_ms();
    int          i, n = 0;

    ids = malloc((size_t) e->njobs * 40 + 3);
    if (ids == NULL) {
        adl_log_error(NULL, -1, "expiry: out of memory");
        unlock(e);
        return;
    }
    p = ids;
    *p++ = '{';
    for (i = 0; i < e->njobs; i++) {
        if (e->jobs[i].failed) {
            retry_later(e, e->jobs[i].id, now);
            continue;
        }
        retry_forget(e, e->jobs[i].id);
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
    if (adl_db_query(e->env->db, "SELECT async_dl_expired_delete($1::uuid[])",
                     1, param, removed, e) != 0)
    {
        adl_log_error(NULL, -1, "expiry: out of memory");
        unlock(e);
    }
    free(ids);
}


/* --- deleting the objects ------------------------------------------------- */

static void
deleted(adl_s3_req_t *r)
{
    ex_del_t      *d = (ex_del_t *) (void *) r;
    expiry_t  *e = d->e;

    d->running = 0;
    e->running--;
    if (r->ok) {
        e->deleted++;
        adl_log_debug(e->jobs[d->job].id, -1, "expiry: deleted object %s",
                      d->key);
    } else {
        /* retried by a later sweep: a warning, not an error */
        adl_log_warn(e->jobs[d->job].id, -1, "expiry: deleting object %s "
                     "failed: %s; the job is kept for a later sweep",
                     d->key, r->error);
        e->jobs[d->job].failed = 1;
    }
    deletes_pump(e);
}

static void
deletes_pump(expiry_t *e)
{
    ex_del_t  *d;

    while (e->running < DELETES_AT_ONCE && e->next_del < e->ndels) {
        d = &e->dels[e->next_del++];
        if (e->jobs[d->job].failed) {
            continue;               /* kept anyway: spare the storage */
        }
        d->e = e;
        d->r.op = S3_DELETE;
        d->r.key = d->key;
        d->r.done = deleted;
        d->r.data = d;
        if (adl_s3_start(e->env->s3, &d->r) != 0) {
            adl_log_error(e->jobs[d->job].id, -1, "expiry: cannot delete "
                          "object %s: %s", d->key, d->r.error);
            e->jobs[d->job].failed = 1;
            continue;
        }
        d->running = 1;
        d->started = adl_now_ms();
        e->running++;
    }
    if (e->running == 0 && e->next_del == e->ndels
        && e->state == EX_DELETING)
    {
        remove_rows(e);
    }
}

/* Deletes that take too long are stopped: their jobs are kept. */
static void
deletes_check(expiry_t *e, int64_t now)
{
    const adl_settings_t  *s = e->env->settings;
    ex_del_t              *d;
    int                    i, n = 0;

    for (i = 0; i < e->next_del; i++) {
        d = &e->dels[i];
        if (!d->running || now - d->started < DELETE_TIMEOUT(s)) {
            continue;
        }
        adl_s3_cancel(e->env->s3, &d->r);
        d->running = 0;
        e->running--;
        e->jobs[d->job].failed = 1;
        adl_log_warn(e->jobs[d->job].id, -1, "expiry: deleting object %s "
                     "took more than %lld ms: stopped; the job is kept for a "
                     "later sweep", d->key, (long long) DELETE_TIMEOUT(s));
        n++;
    }
    if (n > 0) {
        deletes_pump(e);
    }
}


/* --- lock, list ----------------------------------------------------------- */

static void
listed(void *data, PGresult *res)
{
    expiry_t  *e = data;
    ex_retry_t    *r;
    int64_t        now = adl_now_ms();
    int            i, n, take = 0;
    const char    *id, *last = NULL;

    if (res == NULL) {
        adl_log_warn(NULL, -1, "expiry: the database connection was lost "
                     "while listing expired jobs");
        unlock(e);                  /* (the lock went with the session) */
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
        adl_log_error(NULL, -1, "expiry: out of memory");
        unlock(e);
        return;
    }
    for (i = 0; i < n; i++) {
        id = PQgetvalue(res, i, 0);
        if (last == NULL || strcmp(last, id) != 0) {
            last = id;
            r = retry_find(e, id);
            if (r != NULL) {
                r->seen_at = now;
            }
            take = e->njobs < JOBS_PER_SWEEP
                   && (r == NULL || r->retry_at <= now);
            if (!take) {
                e->skipped++;
                continue;
            }
            snprintf(e->jobs[e->njobs].id, sizeof(e->jobs[0].id), "%s", id);
            e->njobs++;
        } else if (!take) {
            continue;
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
    /* a full list: more are expired (those waiting for a retry aside) */
    e->again = e->njobs >= JOBS_PER_SWEEP;
    if (e->njobs == 0) {
        adl_log_debug(NULL, -1, "expiry: nothing to remove (%d job(s) "
                      "waiting to be tried again)", e->skipped);
        unlock(e);
        return;
    }
    adl_log_debug(NULL, -1, "expiry: %d expired job(s), %d object(s) to "
                  "delete", e->njobs, e->ndels);
    e->state = EX_DELETING;
    deletes_pump(e);
}

static void
lock_busy(expiry_t *e, const char *holder, int64_t now)
{
    if (e->busy_since == 0) {
        e->busy_since = now;
        e->busy_count = 0;
    }
    e->busy_count++;
    snprintf(e->holder, sizeof(e->holder), "%s",
             holder != NULL && holder[0] ? holder : "another session");
    adl_log_debug(NULL, -1, "expiry: skipped: the sweep lock is held by %s",
                  e->holder);
    if (now - e->busy_since >= REPORT_EVERY(e->env->settings)
        && now - e->busy_said >= REPORT_EVERY(e->env->settings))
    {
        e->busy_said = now;
        adl_log_info(NULL, -1, "expiry: no sweep here for %lld ms (%d "
                     "skipped): the sweep lock is held by %s",
                     (long long) (now - e->busy_since), e->busy_count,
                     e->holder);
    }
}

static void
locked(void *data, PGresult *res)
{
    expiry_t  *e = data;
    int64_t        now = adl_now_ms();
    char           limit[16];
    const char    *p[1];

    if (res == NULL) {
        sweep_reset(e);             /* with its session, the lock is gone */
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "expiry: %s", PQresultErrorMessage(res));
        sweep_reset(e);
        return;
    }
    if (PQgetvalue(res, 0, 0)[0] != 't') {
        lock_busy(e, PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1),
                  now);
        sweep_reset(e);
        return;
    }
    e->held = 1;
    e->session = adl_db_session(e->env->db);
    e->busy_since = 0;

    snprintf(limit, sizeof(limit), "%d",
             JOBS_PER_SWEEP + retries_waiting(e, now));
    p[0] = limit;
    e->state = EX_LISTING;
    if (adl_db_query(e->env->db, "SELECT job_id, object_key FROM "
                     "async_dl_expired($1::integer)", 1, p, listed, e) != 0)
    {
        adl_log_error(NULL, -1, "expiry: out of memory");
        unlock(e);
    }
}


/* --- the ops ------------------------------------------------------------- */

static void *
expiry_create(adl_env_t *env)
{
    expiry_t  *e = calloc(1, sizeof(expiry_t));

    if (e != NULL) {
        e->env = env;
    }
    return e;
}

static void
expiry_destroy(void *k)
{
    expiry_t  *e = k;

    sweep_reset(e);
    free(e);
}

static int
expiry_busy(const void *k)
{
    const expiry_t  *e = k;

    return e->state != EX_IDLE;
}

static void
expiry_tick(void *k, int64_t now)
{
    expiry_t  *e = k;
    int64_t    gap = e->last_tick ? now - e->last_tick : 0;

    e->last_tick = now;
    if (gap > TICK_LATE) {
        adl_log_warn(NULL, -1, "expiry: not run for %lld ms: the worker "
                     "loop's tick came late", (long long) gap);
    }

    if (e->state != EX_IDLE) {
        if (e->state == EX_DELETING) {
            deletes_check(e, now);
        }
        if (e->state != EX_IDLE
            && now - e->started > REPORT_EVERY(e->env->settings)
            && now - e->slow_said >= REPORT_EVERY(e->env->settings))
        {
            e->slow_said = now;
            adl_log_warn(NULL, -1, "expiry: a sweep has been running for "
                         "%lld ms (%s; %d job(s), %d of %d object(s) "
                         "deleted, %d delete(s) running)",
                         (long long) (now - e->started),
                         state_names[e->state], e->njobs, e->deleted,
                         e->ndels, e->running);
        }
        return;
    }
    if (!adl_db_connected(e->env->db)) {
        return;
    }
    if (!lock_lost(e)) {
        /* a lock that could not be released with its sweep */
        e->state = EX_UNLOCKING;
        e->started = now;
        if (adl_db_query(e->env->db, "SELECT async_dl_expiry_unlock()", 0, NULL, unlocked, e) != 0)
        {
            e->state = EX_IDLE;
        }
        return;
    }
    if (e->env->stopping || now < e->next_at) {
        return;
    }
    e->next_at = now + e->env->settings->poll_interval;
    e->again = 0;
    e->started = now;
    e->state = EX_LOCKING;
    /* who holds the lock, when it is not granted: said in the log */
    if (adl_db_query(e->env->db, "SELECT o_ok, o_holder FROM "
                     "async_dl_expiry_lock()", 0, NULL, locked, e) != 0)
    {
        e->state = EX_IDLE;
    }
}

const adl_task_ops_t  adl_expiry_ops = {
    "expiry",
    NULL,                           /* channels */
    expiry_create,
    expiry_destroy,
    NULL,                           /* wake: its own clock, in the tick */
    NULL,                           /* notify */
    NULL,                           /* poll */
    expiry_tick,
    NULL,                           /* settle */
    NULL,                           /* hand_back: a sweep just stops */
    expiry_busy,
    NULL
};
