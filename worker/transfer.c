/*
 * transfer: the life of one claimed file.
 *
 *   RUNNING ---download ok---> FLUSHING --stored--+
 *      |  \--transient error--> BACKOFF --retry--> RUNNING
 *      \----- any end (failure, deadline, cancel, lease, shutdown) --+
 *                                                                   v
 *   ENDING (outcome recorded) -> CLOSING -> DONE (freed by its owner)
 *
 * The file comes from the download (download.c, one attempt at a time)
 * and goes to the upload (upload.c).  Inside libcurl's callbacks they
 * only copy and record: the download's bytes go to the upload (all or
 * none, before the SHA-256; no room pauses the download), its end and
 * the storage's answers are recorded and *wake set.  One place acts, from
 * the loop: adl_xfer_settle() (and the tick, for timers) reads the
 * download's end, runs the upload, reacts to its state (STORED, FAILED,
 * REWIND: a streamed PUT failed, the file again from byte 0 after a
 * backoff, as a new attempt) and unpauses the download when the upload
 * has room again.
 *
 * All ends go through xfer_end(), which only records the outcome (it may
 * run inside a callback).  The transfer then closes in adl_xfer_settle():
 * the download stops; the upload stops (a request that may store the
 * object, or has created an upload, answers first; then the multipart
 * upload is aborted); the result is written at once (none on cancel).
 * When an object may have been stored that no completed row of ours
 * records, the file's row decides whether it is an orphan for the janitor
 * (check_orphan).
 *
 * A transfer handed back (its job paused, or the worker shutting down)
 * keeps its multipart upload (adl_upload_keep): once the part under way has answered, the parts
 * stored, the bytes they hold and the SHA-256 state after them (saved as
 * each part's last byte is hashed) are recorded with the hand-back
 * (async_dl_file_checkpoint).  A transfer claimed with such a record
 * takes it up: the upload goes on after those parts, the hash from that
 * state, the download from that byte with Range and If-Range.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "checkpoint.h"
#include "hash.h"
#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "download.h"
#include "transfer.h"
#include "upload.h"

#define PROGRESS_EVERY    300     /* ms between progress writes of a job */
#define XF_MARKS          4       /* hash marks kept: a pause finds the
                                   * parts stored at most that many behind */

typedef enum {
    XF_RUNNING = 0,
    XF_BACKOFF,
    XF_FLUSHING,
    XF_ENDING,          /* outcome recorded; closed by the loop */
    XF_CLOSING,         /* storage settling or aborting, result writing */
    XF_DONE
} xfer_state_t;

typedef enum {
    OUT_NONE = 0,
    OUT_STORED,
    OUT_FAILED,
    OUT_HAND_BACK,
    OUT_DROP            /* canceled, or no longer ours: write nothing */
} xfer_outcome_t;

struct adl_xfer_s {
    adl_env_t             *env;
    int                   *wake;             /* the owner's: settle me */
    adl_job_t             *job;
    int                    idx;
    char                  *url;
    char                  *key;
    char                  *lease;            /* this claim's lease token */
    int64_t                lease_until;      /* ours until then, at least */
    xfer_state_t           state;
    xfer_outcome_t         outcome;
    const char            *error_code;
    char                   error[320];

    /* download: one attempt at a time */
    adl_download_t         dl;
    int                    attempt;          /* 1-based, all claims */
    int64_t                retry_at;
    int                    paused;           /* for want of room or pace */
    int64_t                received;         /* bytes hashed and kept */
    int64_t                pace_t0;          /* the pace counts from here */
    int64_t                pace_taken;       /* bytes taken since then */
    size_t                 pace_want;        /* the bytes held back */
    int64_t                size;             /* announced, or -1 */
    adl_hash_t             sha;
    char                   sha256[65];
    struct {
        int                part;             /* 0: none */
        adl_hash_t         h;
    }                      marks[XF_MARKS];  /* the hash after part n */
    int64_t                resumed_from;     /* a checkpoint's byte, or 0 */
    int                    took_up;          /* ...its upload (gone: a
                                              * new one, once) */
    int                    restart_due;      /* ...the origin said no: tell */
    int                    keep;             /* hand back keeping parts */
    int                    keep_wait;        /* ...after the part under way */
    int                    kept_written;
    char                  *checkpoint;       /* written with the result */
    int                    result_resent;    /* after a lost answer */
    int64_t                report_at;        /* report_resumed's, again */
    int                    report_drop;

    /* storage */
    adl_upload_t           up;

    /* database */
    int                    db_refs;
    int                    progress_busy;
    int64_t                progress_sent;    /* when the last one was sent */
    int                    uncounted;        /* hand-back: attempt not made */
    int64_t                last_report;
    int64_t                reported;

    /* the end */
    int                    recorded;         /* the result was answered */
    int                    recorded_stored;  /* ...as completed, by us */
    int                    orphan_checked;
};

static void xfer_end(adl_xfer_t *x, xfer_outcome_t out, const char *code,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void start_download(adl_xfer_t *x);
static void write_result(adl_xfer_t *x);
static void end_advance(adl_xfer_t *x);
static int check_orphan(adl_xfer_t *x);
static void stop_download(adl_xfer_t *x);
static void report_resumed(adl_xfer_t *x, int64_t from, int drop);

#define XLOG(level, x, ...)  adl_log(level, (x)->job->id, (x)->idx, __VA_ARGS__)


/* --- small helpers ------------------------------------------------------- */

adl_job_t *
adl_xfer_job(const adl_xfer_t *x)
{
    return x->job;
}

int
adl_xfer_idx(const adl_xfer_t *x)
{
    return x->idx;
}

int
adl_xfer_active(const adl_xfer_t *x)
{
    return x->state == XF_RUNNING || x->state == XF_BACKOFF
           || x->state == XF_FLUSHING;
}


/* --- a paused file's stored parts ---------------------------------------- */

/* The hash after part n's last byte, kept for a few parts: the parts
 * stored when a pause comes are at most that many behind the hash. */
static void
mark(adl_xfer_t *x, int part)
{
    x->marks[part % XF_MARKS].part = part;
    x->marks[part % XF_MARKS].h = x->sha;
}

/* The download's bytes into the hash, cut at the parts' ends. */
static void
hash_bytes(adl_xfer_t *x, const char *p, size_t n)
{
    int64_t  part = (int64_t) x->up.c.part_size, left;
    size_t   take;

    while (n > 0) {
        left = part - x->received % part;
        take = (int64_t) n < left ? n : (size_t) left;
        adl_hash_update(&x->sha, p, take);
        x->received += (int64_t) take;
        p += take;
        n -= take;
        if (x->received % part == 0) {
            mark(x, (int) (x->received / part));
        }
    }
}

/* Handed back (a pause, a shutdown), the upload settled: the record of
 * the parts it kept goes with the result (none: the file starts again
 * from byte 0). */
static void
keep_parts(adl_xfer_t *x)
{
    adl_upload_t        *u = &x->up;
    adl_checkpoint_t     c;
    int                  n = u->stored_parts;
    char                 state[ADL_HASH_STATE_LEN + 1];

    if (!u->keep) {
        return;                     /* failed: aborted, not kept */
    }
    if (u->upload_id == NULL || n == 0 || x->marks[n % XF_MARKS].part != n
        || adl_hash_save(&x->marks[n % XF_MARKS].h, state) != 0)
    {
        XLOG(ADL_LOG_INFO, x, "handed back: no part stored to keep");
        adl_upload_drop_kept(&x->up);
        return;
    }
    if (x->dl.validator[0] == '\0' || x->dl.encoded
        || (x->size >= 0 && (int64_t) n * (int64_t) u->c.part_size >= x->size))
    {
        /* the rest could not be checked to be the same file's (no ETag or
         * date for If-Range), a Range would count encoded bytes, or there
         * is no rest to ask for */
        XLOG(ADL_LOG_INFO, x, "handed back: the %d part(s) stored are not kept "
             "(%s)", n, x->dl.validator[0] == '\0'
                       ? "the origin gave no ETag or Last-Modified"
                       : x->dl.encoded ? "the answer was content-encoded"
                                       : "they hold the whole file");
        adl_upload_drop_kept(&x->up);
        return;
    }
    memset(&c, 0, sizeof(c));
    c.key = x->key;
    c.upload_id = u->upload_id;
    c.nparts = n;
    c.offset = (int64_t) n * (int64_t) u->c.part_size;
    c.hash = state;
    c.size = x->size;
    c.validator = x->dl.validator;
    c.content_type = x->dl.content_type;
    x->checkpoint = adl_checkpoint_text(&c, &u->parts);
    if (x->checkpoint == NULL) {
        XLOG(ADL_LOG_WARN, x, "handed back: the stored parts cannot be recorded "
             "(out of memory, or an ETag or header that is not UTF-8): the "
             "file starts again from byte 0");
        adl_upload_drop_kept(&x->up);
        return;
    }
    XLOG(ADL_LOG_INFO, x, "handed back keeping %d part(s), %lld bytes, of "
         "upload %s", n, (long long) c.offset, u->upload_id);
}

static void
resumed_result(void *data, PGresult *res)
{
    adl_xfer_t  *x = data;

    x->db_refs--;
    if (res == NULL) {
        /* lost with its connection: again on the next one (the function
         * is safe to run twice); else the row would keep naming an upload
         * that is this transfer's now */
        report_resumed(x, x->report_at, x->report_drop);
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        XLOG(ADL_LOG_ERROR, x, "recording the resume failed: %s",
             PQresultErrorMessage(res));
    }
    if (!adl_xfer_active(x)) {
        end_advance(x);
    }
}

/* The file's row learns where this transfer went on from (0: the origin
 * sent the whole file again), or, drop, that its record was of no use. */
static void
report_resumed(adl_xfer_t *x, int64_t from, int drop)
{
    char         idx[16], at[24];
    const char  *p[5];

    x->report_at = from;
    x->report_drop = drop;
    snprintf(idx, sizeof(idx), "%d", x->idx);
    snprintf(at, sizeof(at), "%lld", (long long) from);
    p[0] = x->job->id;
    p[1] = idx;
    p[2] = x->lease;
    p[3] = at;
    p[4] = drop ? "true" : "false";
    if (adl_db_query(x->env->db, "SELECT async_dl_file_resumed($1::uuid, "
                     "$2::integer, $3, $4::bigint, $5::boolean)", 5, p,
                     resumed_result, x) == 0)
    {
        x->db_refs++;
    }
}

/* Claimed with the record of a paused file's stored parts: the upload,
 * the hash and the download go on after them. */
static void
take_up(adl_xfer_t *x, const char *text)
{
    adl_checkpoint_t  c;
    int64_t           part = (int64_t) x->up.c.part_size;

    if (adl_checkpoint_parse(&c, text) != 0
        || strcmp(c.key, x->key) != 0
        || c.offset != (int64_t) c.nparts * part
        || adl_hash_restore(&x->sha, c.hash, c.offset) != 0
        || adl_upload_resume(&x->up, c.upload_id, c.etags, c.nparts) != 0)
    {
        adl_hash_init(&x->sha);
        XLOG(ADL_LOG_WARN, x, "the record of the stored parts cannot be "
             "taken up (another key or part size, or malformed): from "
             "byte 0");
        report_resumed(x, 0, 1);
        adl_checkpoint_free(&c);
        return;
    }
    x->received = c.offset;
    mark(x, c.nparts);                          /* paused again at once */
    x->size = c.size;
    x->dl.size = c.size;
    snprintf(x->dl.validator, sizeof(x->dl.validator), "%s", c.validator);
    snprintf(x->dl.content_type, sizeof(x->dl.content_type), "%s",
             c.content_type);
    x->resumed_from = c.offset;
    x->took_up = 1;
    XLOG(ADL_LOG_INFO, x, "resuming after %d stored part(s) of upload %s: "
         "from byte %lld", c.nparts, c.upload_id, (long long) c.offset);
    report_resumed(x, c.offset, 0);
    adl_checkpoint_free(&c);
}


/* --- the download -------------------------------------------------------- */

/* Starts over from byte 0: the origin sends the whole body again, or the
 * streamed PUT failed.  May run inside a libcurl callback. */
static void
restart_from_zero(adl_xfer_t *x)
{
    adl_hash_init(&x->sha);
    memset(x->marks, 0, sizeof(x->marks));
    x->received = 0;
    adl_upload_restart(&x->up);
    if (x->resumed_from > 0) {
        x->resumed_from = 0;
        x->restart_due = 1;         /* told from the loop */
    }
}

/* The download's final response, before its first byte: the file from
 * byte `from`.  Inside a libcurl callback: nothing starts here. */
static int
dl_head(void *data, int64_t from)
{
    adl_xfer_t  *x = data;

    if (from > 0) {
        return 0;                   /* the rest, where it was */
    }
    if (x->received > 0 || x->up.written > 0
        || adl_upload_state(&x->up) == ADL_UP_STREAMING)
    {
        restart_from_zero(x);       /* a streamed PUT of another size too */
    }
    x->size = x->dl.size;
    /* a buffer of its size, or the streamed PUT */
    return adl_upload_expect(&x->up, x->size);
}

/*
 * ASYNC_DL_MAX_TRANSFER_RATE: may this attempt take n more bytes now?  It
 * may have rate x (now - start) bytes, and a tenth of a second ahead (the
 * loop's tick, which lets a paced download go on).  pace_taken counts the
 * bytes taken by this attempt, whatever x->received does (a restart from
 * byte 0).  libcurl's own limit cannot do this: it reads whatever the
 * socket holds before it checks.
 */
static int
pace_allows(adl_xfer_t *x, size_t n, int64_t now)
{
    int64_t  rate = x->env->settings->max_transfer_rate;
    double   allowed, credit, most;

    if (rate <= 0) {
        return 1;
    }
    /* in double: rate x milliseconds could pass int64_t */
    allowed = (double) rate * (double) (now - x->pace_t0 + 100) / 1000.0;
    credit = allowed - (double) x->pace_taken;
    most = (double) rate * 0.2 > (double) n ? (double) rate * 0.2 : (double) n;
    if (credit > most) {
        /* time it did not use (connecting, a storage that was behind)
         * buys no burst: the pace's start moves up, leaving a fifth of a
         * second's bytes (or this piece) of credit */
        x->pace_t0 += (int64_t) ((credit - most) * 1000.0 / (double) rate);
        allowed = (double) rate * (double) (now - x->pace_t0 + 100) / 1000.0;
    }
    return (double) x->pace_taken + (double) n <= allowed;
}

/* The download's bytes, inside its write callback. */
static size_t
dl_body(void *data, const char *p, size_t n)
{
    adl_xfer_t  *x = data;

    if (x->state != XF_RUNNING) {
        return 0;
    }
    if (!pace_allows(x, n, adl_now_ms())) {
        x->paused = 1;              /* ahead of its pace: the tick resumes */
        x->pace_want = n;           /* libcurl hands the same bytes again */
        return CURL_WRITEFUNC_PAUSE;
    }
    x->pace_want = 0;
    if (!adl_upload_takes(&x->up, n)) {
        x->paused = 1;              /* the storage is behind */
        return CURL_WRITEFUNC_PAUSE;
    }
    /* the upload takes all of it or nothing, and before the SHA-256 is
     * updated: when it fails, neither has changed, and the retry resumes
     * from x->received with both right */
    if (adl_upload_write(&x->up, p, n) != 0) {
        adl_download_fail(&x->dl, "DOWNLOAD_FAILED", 1, "out of memory");
        return 0;
    }
    hash_bytes(x, p, n);
    x->pace_taken += (int64_t) n;
    adl_metrics.download_bytes += n;
    return n;
}

static void
pause_result(void *data, PGresult *res)
{
    adl_xfer_t  *x = data;

    x->db_refs--;
    if (res != NULL && PQresultStatus(res) != PGRES_TUPLES_OK) {
        XLOG(ADL_LOG_ERROR, x, "pausing the origin host failed: %s",
             PQresultErrorMessage(res));
    }
    if (!adl_xfer_active(x)) {
        end_advance(x);
    }
}

/* The origin asked to wait (429 or 503 with Retry-After): every worker
 * leaves its host's other files alone that long (async_dl_host_pause).
 * Lost with the connection: each file that meets the answer pauses it. */
static void
pause_host(adl_xfer_t *x, int64_t delay)
{
    char         ms[24], reason[32];
    const char  *p[3];

    snprintf(ms, sizeof(ms), "%lld", (long long) delay);
    snprintf(reason, sizeof(reason), "HTTP %ld", x->dl.http_code);
    p[0] = x->url;
    p[1] = ms;
    p[2] = reason;
    if (adl_db_query(x->env->db, "SELECT async_dl_host_pause($1, now() + "
                     "$2::bigint * interval '1 millisecond', $3)", 3, p,
                     pause_result, x) == 0)
    {
        x->db_refs++;
        XLOG(ADL_LOG_INFO, x, "the origin answered HTTP %ld with "
             "Retry-After: its host is paused for %lld ms",
             x->dl.http_code, (long long) delay);
    }
}

/* From the loop: the attempt ended (download.c recorded how). */
static void
download_ended(adl_xfer_t *x)
{
    const adl_settings_t  *s = x->env->settings;
    adl_download_t        *d = &x->dl;
    int64_t                delay = d->retry_after, now = adl_now_ms();

    d->ended = 0;
    x->paused = 0;
    if (d->ok
        || (adl_upload_state(&x->up) == ADL_UP_STORED && x->size >= 0
            && x->received == x->size))
    {
        /* (a failure after the last byte, which the streamed PUT has
         * stored already: the file is whole) */
        adl_hash_final_hex(&x->sha, x->sha256);
        XLOG(ADL_LOG_DEBUG, x, "downloaded %lld bytes",
             (long long) x->received);
        x->state = XF_FLUSHING;
        adl_upload_close(&x->up);   /* the rest is sent from the loop */
        return;
    }

    if (delay >= 0 && (d->http_code == 429 || d->http_code == 503)) {
        pause_host(x, delay);
    }
    if (d->transient && x->attempt < s->max_attempts
        && adl_upload_state(&x->up) != ADL_UP_STORED)
    {
        if (delay < 0) {
            delay = adl_backoff_ms(s->retry_base, x->attempt);
        }
        if (x->env->stopping) {
            /* shutting down: another worker retries it, it has not failed */
            xfer_end(x, OUT_HAND_BACK, d->code, "%s; handed back for a "
                     "retry", d->msg);
            return;
        }
        if (now + delay < x->job->deadline) {
            XLOG(ADL_LOG_WARN, x, "attempt %d failed: %s; retrying in "
                 "%lld ms", x->attempt, d->msg, (long long) delay);
            adl_metric_retry(d->code);
            x->state = XF_BACKOFF;
            x->retry_at = now + delay;
            return;
        }
    }
    xfer_end(x, OUT_FAILED, d->code, "%s", d->msg);
}

static void
start_download(adl_xfer_t *x)
{
    x->paused = 0;
    if (x->dl.encoded && x->received > 0) {
        XLOG(ADL_LOG_INFO, x, "the answer was content-encoded (%s): "
             "starting again from byte 0", x->dl.h_content_encoding);
        restart_from_zero(x);
    }
    x->state = XF_RUNNING;
    x->pace_t0 = adl_now_ms();
    x->pace_taken = 0;
    x->pace_want = 0;
    if (adl_download_start(&x->dl, x->received) != 0) {
        return;                     /* ended at once: retried, as a failure */
    }
    XLOG(ADL_LOG_DEBUG, x, "attempt %d: GET %s%s", x->attempt, x->url,
         x->received ? " (resuming)" : "");
}

static void
stop_download(adl_xfer_t *x)
{
    adl_download_stop(&x->dl);
    x->paused = 0;
}


/* --- storage ------------------------------------------------------------- */

static void
stored(adl_xfer_t *x)
{
    x->size = x->received;
    XLOG(ADL_LOG_INFO, x, "stored %s (%lld bytes, %s, sha256 %s)",
         x->key, (long long) x->received, x->dl.content_type, x->sha256);
    xfer_end(x, OUT_STORED, NULL, "stored");
}

/* The streamed PUT failed: what was sent is gone, the file again from
 * byte 0, a new transfer, so an attempt too (the upload's retry policy
 * says when, or that it gives up). */
static void
rewind_upload(adl_xfer_t *x)
{
    int64_t  delay = x->up.rewind_in;

    stop_download(x);
    restart_from_zero(x);
    if (delay >= 0 && x->attempt < x->env->settings->max_attempts) {
        XLOG(ADL_LOG_WARN, x, "storage: %s; starting again from byte 0 "
             "in %lld ms", x->up.error, (long long) delay);
        adl_metric_retry("STORAGE_FAILED");
        x->state = XF_BACKOFF;
        x->retry_at = adl_now_ms() + delay;
        return;
    }
    xfer_end(x, OUT_FAILED, "STORAGE_FAILED", "%s", x->up.error);
}

/* What the upload's state asks of a running transfer. */
static void
upload_react(adl_xfer_t *x)
{
    switch (adl_upload_state(&x->up)) {
    case ADL_UP_STORED:
        if (x->state == XF_FLUSHING) {
            stored(x);
        }                           /* else the download's end is coming */
        break;
    case ADL_UP_REWIND:
        rewind_upload(x);
        break;
    case ADL_UP_FAILED:
        if (x->up.gone && x->took_up) {
            /* the upload taken up from a hand-back is gone (a bucket rule
             * aborted it while the file waited): once, a new upload, the
             * file from byte 0 */
            x->took_up = 0;
            XLOG(ADL_LOG_WARN, x, "storage: %s: the kept upload is gone; "
                 "starting again from byte 0 in a new upload", x->up.error);
            stop_download(x);
            adl_upload_forget(&x->up);
            restart_from_zero(x);
            start_download(x);
            break;
        }
        xfer_end(x, OUT_FAILED, "STORAGE_FAILED", "%s", x->up.error);
        break;
    default:
        break;
    }
}


/* --- the end ------------------------------------------------------------- */

/* Records how the transfer ends.  Safe anywhere, also inside a libcurl
 * callback: nothing is stopped or freed here; the loop closes the
 * transfer (adl_xfer_settle). */
static void
xfer_end(adl_xfer_t *x, xfer_outcome_t out, const char *code,
    const char *fmt, ...)
{
    va_list  ap;

    if (!adl_xfer_active(x)) {
        return;                     /* already ending */
    }
    x->outcome = out;
    x->error_code = code;
    va_start(ap, fmt);
    vsnprintf(x->error, sizeof(x->error), fmt, ap);
    va_end(ap);

    switch (out) {
    case OUT_FAILED:
        XLOG(ADL_LOG_WARN, x, "failed %s: %s", code, x->error);
        adl_metrics.ended[ADL_M_FILES][ADL_M_FAILED]++;
        break;
    case OUT_HAND_BACK:
        /* paused or shutting down: the parts stored are kept for the
         * worker that takes the file up */
        x->keep = 1;
        XLOG(ADL_LOG_INFO, x, "handed back: %s", x->error);
        adl_metrics.ended[ADL_M_FILES][ADL_M_HANDED_BACK]++;
        break;
    case OUT_DROP:
        XLOG(ADL_LOG_INFO, x, "stopped: %s", x->error);
        adl_metrics.ended[ADL_M_FILES][ADL_M_DROPPED]++;
        break;
    default:
        adl_metrics.ended[ADL_M_FILES][ADL_M_COMPLETED]++;
        adl_metrics.upload_bytes += (uint64_t) x->received;
        break;
    }
    x->state = XF_ENDING;
    *x->wake = 1;
}

/* From the loop, outside every callback: the download stops; a storage
 * request that may store the object (or has created an upload to abort)
 * is left to answer, then the upload is aborted; the result is written at
 * once, whatever the storage does meanwhile. */
static void
end_begin(adl_xfer_t *x)
{
    const adl_settings_t  *s = x->env->settings;
    int64_t                wait;

    x->state = XF_CLOSING;
    stop_download(x);
    x->paused = 0;
    if (x->keep) {
        /* the checkpoint and the result once the upload settled (a pause
         * waits for the part under way, as long as a lease or the
         * storage's idle timeout, whichever is longer) */
        wait = s->lease > s->idle_timeout ? s->lease : s->idle_timeout;
        adl_upload_keep(&x->up, x->keep_wait ? wait : 0);
    } else {
        adl_upload_stop(&x->up, 1);
        if (x->outcome == OUT_DROP) {
            x->recorded = 1;
        } else {
            write_result(x);
        }
    }
    end_advance(x);
}

/* The next step of a closing transfer, when the storage has settled:
 * once the result is answered, delete an object nobody records; then
 * DONE. */
static void
end_advance(adl_xfer_t *x)
{
    adl_upload_state_t  us = adl_upload_state(&x->up);

    if (x->state != XF_CLOSING || us == ADL_UP_SETTLING
        || us == ADL_UP_ABORTING)
    {
        return;
    }
    if (x->keep && !x->kept_written) {
        x->kept_written = 1;
        if (us == ADL_UP_STORED && x->sha256[0] != '\0') {
            /* all of it was stored as the hand-back came (a shutdown
             * while the upload finished): the file is complete */
            x->outcome = OUT_STORED;
            x->size = x->received;
            XLOG(ADL_LOG_INFO, x, "stored %s as it was handed back: "
                 "recorded as completed", x->key);
        } else {
            keep_parts(x);
        }
        write_result(x);
    }
    if (x->outcome == OUT_DROP && us == ADL_UP_STORED
        && x->sha256[0] != '\0')
    {
        /* the whole file was stored after all: recorded if the file is
         * still ours (its lease ran out while the database was away, and
         * nobody claimed it since); if not, the orphan check decides */
        x->outcome = OUT_STORED;
        x->size = x->received;
        x->recorded = 0;
        XLOG(ADL_LOG_INFO, x, "stored %s as the transfer stopped: "
             "recording it if the file is still ours", x->key);
        write_result(x);
    }
    if (x->db_refs > 0) {
        return;                     /* the result, progress, orphan check */
    }
    if (x->up.maybe_stored && !x->recorded_stored && !x->orphan_checked) {
        x->orphan_checked = 1;
        if (check_orphan(x) == 0) {
            return;
        }
    }
    x->state = XF_DONE;
    *x->wake = 1;
}

/*
 * An object may be stored but no completed row of ours records it.  The
 * database decides (async_dl_file_orphan): when nobody will store the file
 * again (the job or file is gone, canceled or failed) it queues the key
 * for the janitor, which deletes it with retries; when the file is
 * pending, or another claim holds or completed it, the key is the same and
 * the object is theirs.
 */
static void
orphan_result(void *data, PGresult *res)
{
    adl_xfer_t  *x = data;
    const char  *st;

    x->db_refs--;
    if (res == NULL) {
        /* the connection failed under the query: again on the next one */
        if (check_orphan(x) == 0) {
            return;
        }
    } else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        XLOG(ADL_LOG_ERROR, x, "checking the file for an orphan object "
             "failed: %s", PQresultErrorMessage(res));
    } else if (!PQgetisnull(res, 0, 0)) {
        st = PQgetvalue(res, 0, 0);
        XLOG(ADL_LOG_INFO, x, "the file is %s: %s queued for deletion", st,
             x->key);
    }
    end_advance(x);
}

static int
check_orphan(adl_xfer_t *x)
{
    char         idx[16];
    const char  *p[3];

    snprintf(idx, sizeof(idx), "%d", x->idx);
    p[0] = x->job->id;
    p[1] = idx;
    p[2] = x->key;
    if (adl_db_query(x->env->db, "SELECT async_dl_file_orphan($1::uuid, "
                     "$2::integer, $3)", 3, p, orphan_result, x) != 0)
    {
        return -1;
    }
    x->db_refs++;
    return 0;
}

static void
finish_result(void *data, PGresult *res)
{
    adl_xfer_t  *x = data;

    x->db_refs--;
    if (res == NULL) {
        /* the connection failed under the query: try it again on the
         * next one (the function is safe to run twice) */
        x->result_resent = 1;
        write_result(x);
        end_advance(x);
        return;
    }
    x->recorded = 1;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        XLOG(ADL_LOG_ERROR, x, "recording the result failed: %s",
             PQresultErrorMessage(res));
        if (!x->result_resent) {
            /* (sent again after a lost answer, the first may have
             * recorded the upload: the row's, then) */
            adl_upload_drop_kept(&x->up);   /* nobody will go on with it */
        }
    } else if (PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] != 't') {
        XLOG(ADL_LOG_INFO, x, "result not recorded: the file is no longer "
             "ours (canceled, deleted or lease lost)");
        if (!x->result_resent) {
            /* (sent again after a lost answer: a checkpoint it had
             * recorded says true; but another worker may have taken that
             * upload up since, so a "no" then leaves it, at worst to the
             * bucket's lifecycle rule) */
            adl_upload_drop_kept(&x->up);
        }
    } else if (x->outcome == OUT_STORED) {
        x->recorded_stored = 1;
    }
    end_advance(x);
}

static void
write_result(adl_xfer_t *x)
{
    char         idx[16], size[24], attempts[16], retry[24];
    const char  *p[13];
    const char  *status;
    int64_t      now = adl_now_ms();

    status = x->outcome == OUT_STORED ? "completed"
             : x->outcome == OUT_HAND_BACK ? "pending" : "failed";

    snprintf(idx, sizeof(idx), "%d", x->idx);
    snprintf(size, sizeof(size), "%lld", (long long) x->received);
    /* a hand-back that interrupted an attempt (shutdown) does not count
     * it: the claim counted it, the hand-back sets the number back */
    snprintf(attempts, sizeof(attempts), "%d",
             x->outcome == OUT_HAND_BACK && x->uncounted ? x->attempt - 1
                                                         : x->attempt);

    p[0] = x->job->id;
    p[1] = idx;
    p[2] = x->lease;
    p[3] = status;
    p[4] = x->outcome == OUT_STORED ? size : NULL;
    p[5] = x->outcome == OUT_STORED ? x->dl.content_type : NULL;
    p[6] = x->outcome == OUT_STORED ? x->sha256 : NULL;
    /* (a failed file's key is queued for the janitor by the database,
     * which recorded it at the claim) */
    p[7] = x->outcome == OUT_STORED ? x->key : NULL;
    p[8] = attempts;
    p[9] = x->outcome == OUT_FAILED ? x->error_code : NULL;
    p[10] = x->outcome == OUT_FAILED ? x->error : NULL;
    /* handed back while backing off (a shutdown): the next worker waits
     * as long as this one would have (an origin's Retry-After) */
    p[11] = NULL;
    if (x->outcome == OUT_HAND_BACK && x->retry_at > now) {
        snprintf(retry, sizeof(retry), "%lld",
                 (long long) (x->retry_at - now));
        p[11] = retry;              /* ms from the database's now() */
    }

    /* a paused file's stored parts are recorded first, in the same
     * statement: a connection lost under it loses both or neither */
    p[12] = x->checkpoint;
#define FINISH_CALL                                                           \
    "SELECT async_dl_file_finish($1::uuid, $2::integer, $3, $4, "             \
    "$5::bigint, $6, $7, $8, $9::integer, $10, $11, "                         \
    "now() + $12::bigint * interval '1 millisecond')"

    if (adl_db_query(x->env->db, x->checkpoint == NULL
                     ? FINISH_CALL
                     : FINISH_CALL " OR k.c FROM (SELECT "
                       "async_dl_file_checkpoint($1::uuid, $2::integer, $3, "
                       "$13::jsonb) AS c OFFSET 0) k",
                     x->checkpoint == NULL ? 12 : 13, p,
                     finish_result, x) != 0)
    {
        XLOG(ADL_LOG_ERROR, x, "result not recorded (out of memory): the "
             "file is left to its lease");
        return;
    }
    x->db_refs++;
}

#undef FINISH_CALL

void
adl_xfer_free(adl_xfer_t *x)
{
    if (x->keep && x->checkpoint != NULL && !x->recorded
        && x->up.upload_id != NULL)
    {
        XLOG(ADL_LOG_WARN, x, "exiting: the parts kept in upload %s were not "
             "recorded: left to the bucket's lifecycle rule",
             x->up.upload_id);
    }
    stop_download(x);
    adl_upload_free(&x->up);
    free(x->url);
    free(x->key);
    free(x->lease);
    free(x->checkpoint);
    free(x);
}

int
adl_xfer_recorded(const adl_xfer_t *x)
{
    return x->recorded;
}


/* --- progress and lease -------------------------------------------------- */

static void
progress_result(void *data, PGresult *res)
{
    adl_xfer_t  *x = data;

    x->db_refs--;
    x->progress_busy = 0;

    if (!adl_xfer_active(x)) {
        end_advance(x);
        return;
    }
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK
        && PQntuples(res) == 1)
    {
        if (PQgetisnull(res, 0, 0)) {
            /* renewed, but the job is paused: this worker missed the
             * notification (its connection was down) */
            x->lease_until = x->progress_sent + x->env->settings->lease;
            if (adl_xfer_pause(x)) {
                XLOG(ADL_LOG_INFO, x, "the job is paused");
            }
            return;
        }
        if (PQgetvalue(res, 0, 0)[0] == 'f') {
            xfer_end(x, OUT_DROP, NULL, "the file is no longer ours "
                     "(canceled, deleted or lease lost)");
            return;
        }
        /* renewed from before the query was sent: the lease runs until
         * then at least, whatever the two clocks say */
        x->lease_until = x->progress_sent + x->env->settings->lease;
    }
    if (res != NULL && PQresultStatus(res) != PGRES_TUPLES_OK) {
        XLOG(ADL_LOG_ERROR, x, "progress: %s", PQresultErrorMessage(res));
    }
}

static void
report_progress(adl_xfer_t *x, int64_t now)
{
    const adl_settings_t  *s = x->env->settings;
    char                   idx[16], lease[32], bytes[24], size[24];
    char                   attempts[16];
    const char            *p[7];

    snprintf(idx, sizeof(idx), "%d", x->idx);
    snprintf(lease, sizeof(lease), "%lld milliseconds", (long long) s->lease);
    snprintf(bytes, sizeof(bytes), "%lld", (long long) x->received);
    snprintf(size, sizeof(size), "%lld", (long long) x->size);
    snprintf(attempts, sizeof(attempts), "%d", x->attempt);
    p[0] = x->job->id;
    p[1] = idx;
    p[2] = x->lease;
    p[3] = lease;
    p[4] = bytes;
    p[5] = x->size >= 0 ? size : NULL;
    p[6] = attempts;

    if (adl_db_query(x->env->db, "SELECT async_dl_file_progress($1::uuid, "
                     "$2::integer, $3, $4::interval, $5::bigint, $6::bigint, "
                     "$7::integer)", 7, p, progress_result, x) != 0)
    {
        return;
    }
    x->db_refs++;
    x->progress_busy = 1;
    x->progress_sent = now;
    x->last_report = now;
    x->reported = x->received;
    x->job->last_progress = now;
}


/* --- the worker's entry points ------------------------------------------- */

void
adl_xfer_tick(adl_xfer_t *x, int64_t now)
{
    const adl_settings_t  *s = x->env->settings;

    if (x->state == XF_CLOSING) {
        adl_upload_run(&x->up, now);    /* a settling request's time */
        end_advance(x);
        if (x->state == XF_CLOSING && x->keep && !x->kept_written
            && !x->progress_busy && now - x->progress_sent >= s->lease / 3)
        {
            /* a hand-back waits for its part under way: the lease must
             * outlast it, or the row goes back pending without the parts */
            report_progress(x, now);
        }
        return;
    }
    if (!adl_xfer_active(x)) {
        return;
    }
    if (x->dl.ended) {
        download_ended(x);          /* a wake lost: not expected */
        if (!adl_xfer_active(x)) {
            return;
        }
    }
    if (now >= x->job->deadline) {
        xfer_end(x, OUT_FAILED, "TIMEOUT", "the job's deadline passed");
        return;
    }
    if (now >= x->lease_until) {
        /* not renewed in time (the database is unreachable or slow): the
         * file may be claimed again, by this worker too; stop before a
         * second transfer of it can start */
        xfer_end(x, OUT_DROP, NULL, "lease lost: not renewed for %lld ms",
                 (long long) (now - x->lease_until + s->lease));
        return;
    }
    if (x->state == XF_BACKOFF && x->env->stopping
        && x->retry_at - now > s->shutdown_grace)
    {
        /* its retry comes after the shutdown's grace: another worker takes
         * it after the same wait, rather than this one holding the
         * shutdown up for nothing */
        adl_xfer_hand_back(x, "shutting down");
        return;
    }
    if (x->state == XF_BACKOFF && now >= x->retry_at) {
        x->attempt++;
        start_download(x);
        if (!adl_xfer_active(x)) {
            return;
        }
    }
    adl_upload_run(&x->up, now);        /* retries when due, the watchdog */
    upload_react(x);
    if (!adl_xfer_active(x)) {
        return;
    }
    if (x->paused) {
        *x->wake = 1;                   /* room, maybe: settle unpauses */
    }

    if (!x->progress_busy && adl_db_connected(x->env->db)
        && ((x->received != x->reported
             && now - x->job->last_progress >= PROGRESS_EVERY
             && now - x->last_report >= PROGRESS_EVERY)
            || now - x->last_report >= s->lease / 3))
    {
        report_progress(x, now);
    }
}

int
adl_xfer_settle(adl_xfer_t *x)
{
    int      rounds;

    if (x->state == XF_ENDING) {
        end_begin(x);
    }
    if (x->restart_due) {
        x->restart_due = 0;
        report_resumed(x, 0, 0);
    }
    /* the upload's answers and next requests; then the download, when
     * the upload has room again: an unpause may deliver data at once,
     * which may give a waiting PUT its data: a few rounds settle it */
    for (rounds = 0; rounds < 8 && adl_xfer_active(x); rounds++) {
        adl_upload_run(&x->up, adl_now_ms());   /* its answers first */
        if (x->dl.ended) {
            download_ended(x);
        }
        upload_react(x);
        if (!adl_xfer_active(x) || !x->paused
            || !adl_download_running(&x->dl)
            || adl_upload_room(&x->up) < ADL_UPLOAD_KICK
            || !pace_allows(x, x->pace_want, adl_now_ms()))
        {
            break;
        }
        x->paused = 0;
        adl_download_unpause(&x->dl);
    }
    if (x->state == XF_ENDING) {
        end_begin(x);
    }
    if (x->state == XF_CLOSING) {
        adl_upload_run(&x->up, adl_now_ms());
        end_advance(x);
    }
    return x->state == XF_DONE && x->db_refs == 0
           && adl_upload_idle(&x->up);
}

void
adl_xfer_cancel(adl_xfer_t *x)
{
    xfer_end(x, OUT_DROP, NULL, "the job was canceled");
}

void
adl_xfer_lease_lost(adl_xfer_t *x)
{
    xfer_end(x, OUT_DROP, NULL, "lease lost: the file was claimed again");
}

void
adl_xfer_hand_back(adl_xfer_t *x, const char *why)
{
    /* an attempt under way is interrupted, not made; one waiting for its
     * retry has already been counted, failed */
    x->uncounted = x->state != XF_BACKOFF;
    xfer_end(x, OUT_HAND_BACK, NULL, "%s", why);
}

int
adl_xfer_pause(adl_xfer_t *x)
{
    if (x->state == XF_FLUSHING) {
        return 0;
    }
    adl_xfer_hand_back(x, "the job was paused");
    /* a pause waits for the part under way (at most until the shutdown's
     * grace ends, if one began: adl_xfer_shutdown) */
    x->keep_wait = 1;
    return 1;
}

void
adl_xfer_shutdown(adl_xfer_t *x)
{
    if (adl_xfer_active(x)) {
        adl_xfer_hand_back(x, "shutting down");
        return;
    }
    x->keep_wait = 0;               /* (a pause whose end has not begun) */
    if (x->state == XF_CLOSING && x->keep) {
        adl_upload_keep_now(&x->up);
    }
}

adl_xfer_t *
adl_xfer_start(adl_env_t *env, int *wake, adl_job_t *job,
    const adl_claim_t *c)
{
    adl_xfer_t           *x;
    adl_download_conf_t   dc;
    adl_upload_conf_t     uc;

    x = calloc(1, sizeof(adl_xfer_t));
    if (x == NULL) {
        return NULL;
    }
    x->env = env;
    x->wake = wake;
    x->job = job;
    x->idx = c->idx;
    x->size = -1;
    x->attempt = c->attempts;
    x->last_report = adl_now_ms();
    x->lease_until = c->claimed_at + env->settings->lease;
    x->url = strdup(c->url);
    x->lease = strdup(c->lease);
    x->key = strdup(c->key);
    adl_hash_init(&x->sha);
    if (x->url == NULL || x->lease == NULL || x->key == NULL) {
        free(x->url);
        free(x->key);
        free(x->lease);
        free(x);
        return NULL;
    }

    dc.settings = env->settings;
    dc.origin = env->origin;
    dc.url = x->url;
    dc.log_job = job->id;
    dc.log_idx = c->idx;
    dc.traceparent = job->traceparent;
    dc.deadline = job->deadline;
    dc.head = dl_head;
    dc.body = dl_body;
    dc.data = x;
    dc.wake = wake;
    adl_download_init(&x->dl, &dc);
    uc.s3 = env->s3;
    uc.key = x->key;
    uc.content_type = x->dl.content_type;
    uc.part_size = (size_t) env->settings->part_size;
    uc.idle_ms = env->settings->idle_timeout;
    uc.retry.max_tries = env->settings->max_attempts;
    uc.retry.base_ms = env->settings->retry_base;
    uc.retry.retry_after = 1;
    uc.retry.deadline = job->deadline;
    uc.log_job = job->id;
    uc.log_idx = c->idx;
    uc.log_what = "storage";
    uc.wake = wake;
    adl_upload_init(&x->up, &uc);
    x->up.no_stream = !env->settings->stream_put;

    XLOG(ADL_LOG_INFO, x, "claimed (attempt %d) %s", x->attempt, x->url);

    if (env->stopping) {
        /* the claim answered after SIGTERM: not started, not counted */
        x->state = XF_RUNNING;
        x->uncounted = 1;
        xfer_end(x, OUT_HAND_BACK, NULL, "shutting down: not started");
        return x;
    }
    if (adl_now_ms() >= job->deadline) {
        x->state = XF_RUNNING;
        xfer_end(x, OUT_FAILED, "TIMEOUT", "the job's deadline passed");
        return x;
    }
    if (c->resume != NULL) {
        take_up(x, c->resume);
    }
    start_download(x);
    return x;
}
