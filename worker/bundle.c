/*
 * bundle: the life of one bundle build.
 *
 *   CLAIMED -> BUILDING: read a range -> zip it -> (part full: upload) ...
 *           -> after the last entry: close the zip, upload what is left,
 *              complete (or one PUT) -> FINISHING -> DONE
 *   any failure, lost lease, shutdown -> (abort the multipart upload)
 *           -> FINISHING (none when the lease was lost) -> DONE
 *
 * The zip goes to the storage through the upload (upload.c); the ranges
 * are read with S3 GETs.  Their answers are only recorded by libcurl's
 * callbacks: build_settle(), from the loop, reads them, runs the upload
 * and pump(), the one place that decides what is read next; ends go
 * through build_end().  Memory: the range being read (READ_CHUNK), the
 * part being filled and the part being uploaded, each at most a part
 * plus a range.
 *
 * Each claim holds the bundle under a lease token of its own (worker id,
 * start, claim number), so a build whose lease ran out and was claimed
 * again, even by this worker, can neither renew nor finish it.  A build
 * that may have stored its zip (a PUT or CompleteMultipartUpload was sent)
 * and then learns that the bundle is not its own any more (the job was
 * deleted meanwhile: renew or finish answer false) queues the zip's key
 * for the janitor when no other build can write that key again: the job
 * is gone, or its bundle failed for good.  Storage trouble is retried with
 * backoff (about a minute) before the attempt fails.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "adl_sigv4.h"
#include "backoff.h"
#include "bundle.h"
#include "claim.h"
#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "upload.h"
#include "zip.h"

#define BUNDLES_AT_ONCE   2         /* per worker process */
#define MAX_ATTEMPTS      3
#define READ_CHUNK        (8 * 1024 * 1024)
#define READ_SLACK        65536     /* more than asked: the length check */

/* storage trouble: 8 tries of a request from 0.5 s doubled, about a
 * minute */
static const adl_retry_t  s3_retry = { 8, 500, 0, 0 };

typedef enum {
    BD_BUILDING = 0,
    BD_ABORTING,
    BD_FINISHING,
    BD_CLEANING,        /* may have stored a zip no job will record */
    BD_DONE
} bundle_state_t;

typedef enum {
    BO_NONE = 0,
    BO_STORED,
    BO_FAILED,          /* retried later when transient */
    BO_HAND_BACK,
    BO_DROP             /* no longer ours: write nothing */
} bundle_outcome_t;

typedef struct {
    char      *name;
    char      *key;
    int64_t    size;
    int64_t    mtime;
} entry_t;

typedef struct bundle_s   bundle_t;
typedef struct bundler_s  bundler_t;

struct bundle_s {
    bundle_t          *next;
    bundler_t     *owner;
    char               job[40];
    char               lease[ADL_CLAIM_TOKEN_MAX];  /* this claim's token */
    char              *key;
    int                attempt;
    int                retrying;           /* failed, to be built again */
    bundle_state_t     state;
    bundle_outcome_t   outcome;
    int                transient;
    char               error[400];

    entry_t           *entries;
    size_t             nentries;
    size_t             cur;             /* entry being read */
    int                header_done;     /* of entries[cur] */
    int64_t            offset;          /* read so far of entries[cur] */

    adl_zip_t         *zip;
    int                closed;          /* the zip is complete in fill */
    adl_sha256_t       sha;
    char               sha256[65];      /* once closed */
    int64_t            size;            /* zip bytes produced */

    adl_s3_req_t       get;             /* reads a range into chunk */
    int                get_answered;    /* its done() came, unread */
    char              *chunk;           /* READ_CHUNK and some */
    int                get_tries;
    int64_t            get_retry_at;

    adl_upload_t       up;              /* the zip into the storage */

    int                db_refs;
    int                renewing;
    int64_t            renewed_at;
};

struct bundler_s {
    adl_claimer_t       claim;          /* first: adl_claimer_wake */
    adl_env_t          *env;
    int                 force_zip64;
    bundle_t           *builds;
    int                 nbuilds;
    int                 stopping;
    int                 wake;           /* a build wants settling */
};

static void pump(bundle_t *b);
static void build_end(bundle_t *b, bundle_outcome_t out, int transient,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void write_result(bundle_t *b);
static void cleanup(bundle_t *b);
static void build_settle(bundle_t *b, int64_t now);

#define BLOG(level, b, ...)  adl_log(level, (b)->job, -1, __VA_ARGS__)


/* --- the zip writer's output ---------------------------------------------- */

static int
zip_out(void *data, const void *p, size_t n)
{
    bundle_t  *b = data;

    if (adl_upload_write(&b->up, p, n) != 0
        || adl_sha256_update(&b->sha, p, n) != 0)
    {
        return -1;
    }
    b->size += (int64_t) n;
    return 0;
}

static int
zip_open(bundle_t *b)
{
    b->zip = adl_zip_open(b->owner->force_zip64, zip_out, b);
    return b->zip != NULL ? 0 : -1;
}


/* --- reading the stored objects back ----------------------------------- */

/* libcurl is done with the read: recorded, read by build_settle */
static void
get_done(adl_s3_req_t *r)
{
    bundle_t  *b = r->data;

    b->get_answered = 1;
    b->owner->wake = 1;
}

static void
get_result(bundle_t *b)
{
    adl_s3_req_t  *r = &b->get;
    entry_t       *e = &b->entries[b->cur];
    int64_t        want = r->range_to - r->range_from + 1, delay;
    char           msg[600];

    r->op = S3_NONE;
    if (!r->ok) {
        snprintf(msg, sizeof(msg), "reading %s: %s", e->key, r->error);
    } else if ((int64_t) r->into_len != want
               || (r->status == 200 && e->size != want))
    {
        snprintf(msg, sizeof(msg), "reading %s: %zu bytes at %lld, expected "
                 "%lld", e->key, r->into_len, (long long) r->range_from,
                 (long long) want);
    } else {
        msg[0] = '\0';
    }

    if (msg[0] != '\0') {
        delay = adl_retry_next(&s3_retry, &b->get_tries, r->transient, NULL,
                               adl_now_ms());
        if (delay >= 0) {
            BLOG(ADL_LOG_WARN, b, "bundle: %s; retrying in %lld ms", msg,
                 (long long) delay);
            b->get_retry_at = adl_now_ms() + delay;
            return;
        }
        build_end(b, BO_FAILED, r->transient, "%s", msg);
        return;
    }
    b->get_tries = 0;

    if (adl_zip_data(b->zip, b->chunk, r->into_len) != 0) {
        build_end(b, BO_FAILED, 0, "zip: %s", adl_zip_error(b->zip));
        return;
    }
    b->offset += (int64_t) r->into_len;
    pump(b);
}

/* The next range of the entry being read; -1 when it could not start. */
static int
get_start(bundle_t *b)
{
    entry_t       *e = &b->entries[b->cur];
    adl_s3_req_t  *r = &b->get;
    int64_t        want;

    if (b->chunk == NULL) {
        b->chunk = malloc(READ_CHUNK + READ_SLACK);
        if (b->chunk == NULL) {
            return -1;
        }
    }
    r->op = S3_GET;
    r->key = e->key;
    r->range_from = b->offset;
    r->range_to = b->offset + READ_CHUNK - 1;
    if (r->range_to > e->size - 1) {
        r->range_to = e->size - 1;
    }
    want = r->range_to - r->range_from + 1;
    r->into = b->chunk;
    r->into_cap = (size_t) want + READ_SLACK;
    r->done = get_done;
    r->data = b;
    if (adl_s3_start(b->owner->env->s3, r) != 0) {
        r->op = S3_NONE;
        return -1;
    }
    return 0;
}


/* --- what comes next ------------------------------------------------------ */

static void
pump(bundle_t *b)
{
    if (b->state != BD_BUILDING) {
        return;
    }

    /* the storage side */
    adl_upload_run(&b->up, adl_now_ms());
    switch (adl_upload_state(&b->up)) {
    case ADL_UP_STORED:
        build_end(b, BO_STORED, 0, "stored");
        return;
    case ADL_UP_FAILED:
        build_end(b, BO_FAILED, b->up.transient, "%s", b->up.error);
        return;
    default:
        break;
    }

    /* the reading side: more zip output only while there is room */
    while (b->state == BD_BUILDING && !b->closed
           && b->get.op == S3_NONE && b->get_retry_at == 0
           && adl_upload_wants(&b->up))
    {
        entry_t  *e;

        if (b->cur == b->nentries) {
            if (adl_zip_close(b->zip) != 0) {
                build_end(b, BO_FAILED, 0, "zip: %s",
                          adl_zip_error(b->zip));
                return;
            }
            if (adl_sha256_final_hex(&b->sha, b->sha256) != 0) {
                build_end(b, BO_FAILED, 1, "SHA-256 failed");
                return;
            }
            b->closed = 1;
            adl_upload_close(&b->up);   /* the rest goes from the loop */
            return;
        }
        e = &b->entries[b->cur];
        if (!b->header_done) {
            if (adl_zip_entry(b->zip, e->name, e->size, e->mtime) != 0) {
                build_end(b, BO_FAILED, 0, "zip: %s",
                          adl_zip_error(b->zip));
                return;
            }
            b->header_done = 1;
            b->offset = 0;
        }
        if (b->offset >= e->size) {
            b->cur++;
            b->header_done = 0;
            continue;
        }
        if (get_start(b) != 0) {
            build_end(b, BO_FAILED, 1, "cannot start reading %s", e->key);
        }
        return;
    }
    /* a full part waits for the upload before: read again when that
     * upload is done */
}


/* From the loop: what the callbacks recorded, and what comes next. */
static void
build_settle(bundle_t *b, int64_t now)
{
    adl_upload_state_t  us;

    if (b->get_answered) {
        b->get_answered = 0;
        get_result(b);
    }
    if (b->state == BD_BUILDING) {
        pump(b);
    }
    if (b->state == BD_ABORTING) {
        adl_upload_run(&b->up, now);
        us = adl_upload_state(&b->up);
        if (us == ADL_UP_STOPPED || us == ADL_UP_STORED) {
            write_result(b);
        }
    }
}


/* --- the end ------------------------------------------------------------- */

static void
build_end(bundle_t *b, bundle_outcome_t out, int transient,
    const char *fmt, ...)
{
    va_list  ap;

    if (b->state != BD_BUILDING) {
        return;
    }
    b->outcome = out;
    b->transient = transient;
    va_start(ap, fmt);
    vsnprintf(b->error, sizeof(b->error), fmt, ap);
    va_end(ap);

    switch (out) {
    case BO_STORED:
        BLOG(ADL_LOG_INFO, b, "bundle stored %s (%zu files, %lld bytes, "
             "sha256 %s)", b->key, b->nentries, (long long) b->size,
             b->sha256);
        adl_metrics.ended[ADL_M_BUNDLES][ADL_M_COMPLETED]++;
        adl_metrics.upload_bytes += (uint64_t) b->size;
        break;
    case BO_FAILED:
        BLOG(ADL_LOG_WARN, b, "bundle failed (attempt %d): %s", b->attempt,
             b->error);
        adl_metrics.ended[ADL_M_BUNDLES][transient
                                         && b->attempt < MAX_ATTEMPTS
                                         ? ADL_M_RETRIED : ADL_M_FAILED]++;
        break;
    case BO_HAND_BACK:
        BLOG(ADL_LOG_INFO, b, "bundle stopped: %s", b->error);
        adl_metrics.ended[ADL_M_BUNDLES][ADL_M_HANDED_BACK]++;
        break;
    default:
        BLOG(ADL_LOG_INFO, b, "bundle stopped: %s", b->error);
        adl_metrics.ended[ADL_M_BUNDLES][ADL_M_DROPPED]++;
        break;
    }

    adl_s3_cancel(b->owner->env->s3, &b->get);
    b->get.op = S3_NONE;
    b->get_answered = 0;
    b->get_retry_at = 0;
    /* no request settles: what the build may have stored is decided by
     * final_sent (cleanup) */
    adl_upload_stop(&b->up, 0);
    if (out == BO_HAND_BACK && adl_upload_state(&b->up) == ADL_UP_STORED) {
        /* its answer, read by stop(): stored before the hand-back */
        b->outcome = BO_STORED;
        BLOG(ADL_LOG_INFO, b, "bundle stored %s as it stopped (%zu files, "
             "%lld bytes, sha256 %s)", b->key, b->nentries,
             (long long) b->size, b->sha256);
    }
    b->state = BD_ABORTING;
    if (adl_upload_state(&b->up) != ADL_UP_ABORTING) {
        write_result(b);
    }                               /* else once the abort answered */
}

static void
finish_result(void *data, PGresult *res)
{
    bundle_t  *b = data;

    b->db_refs--;
    if (res == NULL) {
        write_result(b);            /* again on the next connection */
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        BLOG(ADL_LOG_ERROR, b, "bundle: recording the result failed: %s",
             PQresultErrorMessage(res));
        b->state = BD_DONE;         /* left to the lease */
        return;
    }
    if (PQgetvalue(res, 0, 0)[0] != 't') {
        BLOG(ADL_LOG_INFO, b, "bundle: result not recorded: no longer "
             "ours (job deleted or lease lost)");
        cleanup(b);
        return;
    }
    if (b->outcome == BO_FAILED && !b->retrying) {
        cleanup(b);                 /* failed for good: nobody records it */
        return;
    }
    b->state = BD_DONE;
}

static void
write_result(bundle_t *b)
{
    char         size[24], files[16], retry[24];
    const char  *p[9];

    if (b->outcome == BO_DROP) {
        cleanup(b);
        return;
    }
    b->state = BD_FINISHING;

    snprintf(size, sizeof(size), "%lld", (long long) b->size);
    snprintf(files, sizeof(files), "%zu", b->nentries);
    p[0] = b->job;
    p[1] = b->lease;
    p[2] = b->outcome == BO_STORED ? "completed"
           : b->outcome == BO_HAND_BACK ? "pending" : "failed";
    p[3] = b->outcome == BO_STORED ? b->key : NULL;
    p[4] = b->outcome == BO_STORED ? size : NULL;
    p[5] = b->outcome == BO_STORED ? b->sha256 : NULL;
    p[6] = b->outcome == BO_STORED ? files : NULL;
    p[7] = b->outcome == BO_FAILED ? b->error : NULL;
    p[8] = NULL;
    if (b->outcome == BO_FAILED && b->transient && b->attempt < MAX_ATTEMPTS)
    {
        snprintf(retry, sizeof(retry), "%lld", (long long)
                 adl_backoff_ms(b->owner->env->settings->retry_base,
                                b->attempt));
        p[8] = retry;
        b->retrying = 1;            /* the retry writes the same key */
    }

    if (adl_db_query(b->owner->env->db, "SELECT async_dl_bundle_finish("
                     "$1::uuid, $2, $3, $4, $5::bigint, $6, $7::integer, "
                     "$8, now() + $9::bigint * interval '1 millisecond')",
                     9, p, finish_result, b) != 0)
    {
        b->state = BD_DONE;         /* left to the lease */
        return;
    }
    b->db_refs++;
}

static void
cleanup_result(void *data, PGresult *res)
{
    bundle_t  *b = data;

    b->db_refs--;
    if (res == NULL) {
        cleanup(b);                 /* again on the next connection */
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        BLOG(ADL_LOG_ERROR, b, "bundle: queuing %s for deletion failed: %s",
             b->key, PQresultErrorMessage(res));
    } else if (PQgetvalue(res, 0, 0)[0] == 't') {
        BLOG(ADL_LOG_INFO, b, "bundle: the job is gone or canceled, or its "
             "bundle failed: "
             "%s queued for deletion", b->key);
    }
    b->state = BD_DONE;
}

/*
 * The build may have stored its zip, which no job records: the database
 * decides whether it goes to the janitor's queue (async_dl_bundle_orphan:
 * when no build can write it again) and tells the janitors.
 */
static void
cleanup(bundle_t *b)
{
    const char  *p[2];

    if (!b->up.final_sent) {
        b->state = BD_DONE;         /* no PUT or Complete was ever sent */
        return;
    }
    b->state = BD_CLEANING;
    p[0] = b->job;
    p[1] = b->key;
    if (adl_db_query(b->owner->env->db, "SELECT async_dl_bundle_orphan("
                     "$1::uuid, $2)", 2, p, cleanup_result, b) != 0)
    {
        BLOG(ADL_LOG_ERROR, b, "bundle: out of memory: %s may be left in "
             "the storage", b->key);
        b->state = BD_DONE;
        return;
    }
    b->db_refs++;
}

static void
build_free(bundle_t *b)
{
    size_t  i;

    adl_s3_cancel(b->owner->env->s3, &b->get);
    b->get.op = S3_NONE;
    adl_upload_free(&b->up);
    adl_zip_free(b->zip);               /* closes too: output discarded */
    adl_sha256_free(&b->sha);
    for (i = 0; i < b->nentries; i++) {
        free(b->entries[i].name);
        free(b->entries[i].key);
    }
    free(b->entries);
    free(b->chunk);
    free(b->key);
    adl_log_untrace(b->job);
    free(b);
}


/* --- claims and leases ------------------------------------------------ */

static bundle_t *
build_new(bundler_t *o, PGresult *res)
{
    adl_upload_conf_t      uc;
    bundle_t              *b;
    int                    i, n = PQntuples(res);

    b = calloc(1, sizeof(bundle_t));
    if (b == NULL) {
        return NULL;
    }
    b->owner = o;
    snprintf(b->job, sizeof(b->job), "%s", PQgetvalue(res, 0, 0));
    adl_log_trace(b->job, PQgetvalue(res, 0, 8));     /* until build_free */
    memcpy(b->lease, o->claim.token, sizeof(b->lease));
    b->attempt = atoi(PQgetvalue(res, 0, 1));
    b->renewed_at = adl_now_ms();
    b->entries = calloc((size_t) n, sizeof(entry_t));
    b->key = strdup(PQgetvalue(res, 0, 7));     /* recorded by the claim */
    if (b->entries == NULL || b->key == NULL) {
        goto failed;
    }
    b->nentries = (size_t) n;
    for (i = 0; i < n; i++) {
        entry_t  *e = &b->entries[i];

        e->name = strdup(PQgetvalue(res, i, 3));
        e->key = strdup(PQgetvalue(res, i, 4));
        e->size = strtoll(PQgetvalue(res, i, 5), NULL, 10);
        e->mtime = strtoll(PQgetvalue(res, i, 6), NULL, 10);
        if (e->name == NULL || e->key == NULL) {
            goto failed;
        }
    }
    {
        char  **nm = malloc((size_t) n * sizeof(char *));

        if (nm == NULL) {
            goto failed;
        }
        for (i = 0; i < n; i++) {
            nm[i] = b->entries[i].name;
        }
        if (adl_bundle_names(nm, (size_t) n) != 0) {
            for (i = 0; i < n; i++) {
                b->entries[i].name = nm[i];
            }
            free(nm);
            goto failed;
        }
        for (i = 0; i < n; i++) {
            b->entries[i].name = nm[i];
        }
        free(nm);
    }
    uc.s3 = o->env->s3;
    uc.key = b->key;
    uc.content_type = "application/zip";
    uc.part_size = (size_t) o->env->settings->part_size;
    uc.idle_ms = o->env->settings->idle_timeout;
    uc.retry = s3_retry;
    uc.log_job = b->job;
    uc.log_idx = -1;
    uc.log_what = "bundle: storage";
    uc.wake = &o->wake;
    adl_upload_init(&b->up, &uc);
    if (adl_sha256_init(&b->sha) != 0 || zip_open(b) != 0) {
        goto failed;
    }
    return b;

failed:
    build_free(b);
    return NULL;
}

static void
claim_result(void *data, PGresult *res)
{
    bundler_t  *o = data;
    bundle_t       *b;

    if (adl_claimer_answered(&o->claim, res, "bundle") <= 0) {
        return;
    }
    o->claim.pending = 1;           /* maybe more */

    b = build_new(o, res);
    if (b == NULL) {
        adl_log_error(PQgetvalue(res, 0, 0), -1, "bundle: out of memory: "
                      "left to its lease");
        return;
    }
    b->next = o->builds;
    o->builds = b;
    o->nbuilds++;
    BLOG(ADL_LOG_INFO, b, "bundle claimed (attempt %d): %zu files into %s",
         b->attempt, b->nentries, b->key);
    if (o->stopping) {
        build_end(b, BO_HAND_BACK, 0, "shutting down");
        return;
    }
    pump(b);
}

static void
renew_result(void *data, PGresult *res)
{
    bundle_t  *b = data;

    b->db_refs--;
    b->renewing = 0;
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK
        && PQgetvalue(res, 0, 0)[0] == 'f')
    {
        build_end(b, BO_DROP, 0, "the bundle is no longer ours (job "
                  "deleted or lease lost)");
    }
}

static void *
bundler_create(adl_env_t *env)
{
    bundler_t  *o = calloc(1, sizeof(bundler_t));

    if (o == NULL) {
        return NULL;
    }
    o->env = env;
    o->force_zip64 = env->settings->bundle_zip64;
    adl_claimer_init(&o->claim, 'b');
    return o;
}

static void
bundler_destroy(void *k)
{
    bundler_t  *o = k;
    bundle_t   *b;

    while ((b = o->builds) != NULL) {
        o->builds = b->next;
        build_free(b);
    }
    free(o);
}

static int
bundler_busy(const void *k)
{
    const bundler_t  *o = k;

    return o->builds != NULL || o->claim.claiming;
}

static void
bundler_hand_back(void *k)
{
    bundler_t  *o = k;
    bundle_t   *b;

    o->stopping = 1;
    for (b = o->builds; b != NULL; b = b->next) {
        build_end(b, BO_HAND_BACK, 0, "shutting down");
    }
}

static void
bundler_tick(void *k, int64_t now)
{
    bundler_t             *o = k;
    const adl_settings_t  *s = o->env->settings;
    bundle_t             **pp, *b;
    char                   lease[32], max[16];
    const char            *p[4];

    for (pp = &o->builds; (b = *pp) != NULL; ) {
        if (b->state == BD_DONE && b->db_refs == 0) {
            *pp = b->next;
            o->nbuilds--;
            build_free(b);
            continue;
        }
        pp = &b->next;

        if (b->state == BD_BUILDING && b->get_retry_at != 0
            && now >= b->get_retry_at)
        {
            b->get_retry_at = 0;
        }
        if (b->state == BD_BUILDING || b->state == BD_ABORTING) {
            o->wake = 1;            /* settled after this batch: retries
                                     * when due, the upload's timers */
        }
        if (b->state == BD_BUILDING && !b->renewing
            && now - b->renewed_at >= s->lease / 3
            && adl_db_connected(o->env->db))
        {
            snprintf(lease, sizeof(lease), "%lld milliseconds",
                     (long long) s->lease);
            p[0] = b->job;
            p[1] = b->lease;
            p[2] = lease;
            if (adl_db_query(o->env->db, "SELECT async_dl_bundle_renew("
                             "$1::uuid, $2, $3::interval)", 3, p,
                             renew_result, b) == 0)
            {
                b->renewing = 1;
                b->db_refs++;
                b->renewed_at = now;
            }
        }
    }

    if (o->stopping
        || !adl_claimer_due(&o->claim, o->env, BUNDLES_AT_ONCE - o->nbuilds))
    {
        return;
    }
    snprintf(lease, sizeof(lease), "%lld milliseconds", (long long) s->lease);
    snprintf(max, sizeof(max), "%d", MAX_ATTEMPTS);
    p[0] = adl_claimer_token(&o->claim, o->env);
    p[1] = lease;
    p[2] = max;
    p[3] = s->s3_prefix;            /* the claim names the zip's key */
    /* a claim dies with its connection: on the next one, the finishes
     * queued meanwhile go first (a stored zip is not built again) */
    (void) adl_claimer_send(&o->claim, o->env, "SELECT job_id, attempts, "
                            "idx, name, object_key, size, mtime, zip_key, "
                            "(SELECT j.traceparent FROM async_dl_jobs j "
                            "WHERE j.id = k.job_id) FROM "
                            "async_dl_bundle_claim($1, $2::interval, "
                            "$3::integer, $4) k", 4, p, claim_result, o);
}

static void
bundler_settle(void *k, int64_t now)
{
    bundler_t  *o = k;
    bundle_t   *b;
    int         pass;

    /* a round may ask for another (the zip closed: its last part) */
    for (pass = 0; o->wake && pass < 4; pass++) {
        o->wake = 0;
        for (b = o->builds; b != NULL; b = b->next) {
            build_settle(b, now);
        }
    }
}

static const char *const  bundler_channels[] = {
    "async_dl_lifecycle", NULL
};

const adl_task_ops_t  adl_bundles_ops = {
    "bundles",
    bundler_channels,
    bundler_create,
    bundler_destroy,
    adl_claimer_wake,
    NULL,                           /* notify: wake */
    NULL,                           /* poll: wake */
    bundler_tick,
    bundler_settle,
    bundler_hand_back,
    bundler_busy,
    NULL
};
