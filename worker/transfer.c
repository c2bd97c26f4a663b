/*
 * transfer: the life of one claimed file.
 *
 *   RUNNING ---download ok---> FLUSHING --stored--+
 *      |  \--transient error--> BACKOFF --retry--> RUNNING
 *      \----- any end (failure, deadline, cancel, lease, shutdown) --+
 *                                                                   v
 *   ENDING (outcome recorded) -> CLOSING -> DONE (freed by its owner)
 *
 * All ends go through xfer_end(), which only records the outcome: it may
 * run inside a libcurl callback (a write callback that refused data, an
 * unpause that delivered data).  The loop then closes ended transfers in
 * one place, adl_xfer_settle(), outside every callback:
 * the download is stopped; a storage request that may store the object
 * (PutObject, CompleteMultipartUpload) or create an upload is left to
 * answer, others are stopped; then, at the same time, the multipart upload
 * is aborted and the result written (none on cancel).  When an object may
 * have been stored that no completed row of ours records, the file's row
 * decides whether it is an orphan for the janitor (check_orphan).
 *
 * Storage, chosen at the first byte of a 200 response:
 * - the size is known and above a part (and at most 5 GiB): one PUT
 *   streamed while downloading, through the fill buffer used as a ring
 *   (whichever side is ahead pauses; unpausing is done from the loop,
 *   adl_xfer_settle(), never from inside the other side's callback); no
 *   libcurl low-speed check on it, a watchdog instead (stream_watchdog);
 * - else parts: the fill buffer swaps with the upload buffer each time it
 *   is full; the first full part creates a multipart upload; a download
 *   that ends within the first part is stored with one PUT.
 * While RUNNING or BACKOFF, parts (or the stream) keep uploading.  The
 * data callbacks only copy and record (kick_s3, kick_dl, kick_up,
 * *wake): storage requests start in adl_xfer_settle, the tick, or a
 * request's done() (after libcurl returned); unpauses in adl_xfer_settle.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "adl_sigv4.h"
#include "backoff.h"
#include "clock.h"
#include "log.h"
#include "transfer.h"
#include "upload.h"

#define PROGRESS_EVERY    300     /* ms between progress writes of a job */
#define MAX_REDIRECTS     5L

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
    adl_http_req_t         dl;
    struct curl_slist     *dl_headers;
    char                   dl_errbuf[CURL_ERROR_SIZE];
    int                    attempt;          /* 1-based, all claims */
    int64_t                retry_at;
    int                    paused;
    int                    checked;          /* response status checked */
    int64_t                offset;           /* Range start, this attempt */
    int64_t                received;         /* bytes hashed and kept */
    int64_t                size;             /* announced, or -1 */
    char                   validator[200];   /* for If-Range */
    char                   content_type[200];
    char                   h_retry_after[64];
    char                   h_content_range[128];
    char                   h_etag[200];
    char                   h_last_modified[64];
    char                   h_content_encoding[64];
    int                    encoded;          /* decoded by curl: no Range */
    adl_http_guard_t       guard;            /* the SSRF check's refusal */
    const char            *fail_code;       /* set inside a callback */
    char                   fail_msg[256];
    int                    fail_transient;
    adl_sha256_t           sha;
    char                   sha256[65];

    /* storage: "stream" (one PUT fed through the fill buffer used as a
     * ring, when the size is known and above a part) or parts */
    int                    stream;
    size_t                 ring_head;        /* stream: first byte */
    int                    up_paused;        /* stream: PUT waits for data */
    int                    put_done;         /* stream: PUT answered 2xx */
    int64_t                up_taken;         /* stream: the PUT last took
                                              * bytes, or was unpaused */
    int64_t                starve_since;     /* stream: paused since */
    int64_t                starved_ms;       /* stream: paused, in all */
    int                    no_stream;        /* parts: a stream starved
                                              * long and failed */
    int                    kick_dl, kick_up; /* unpause from the loop */
    int                    kick_s3;          /* start the next storage
                                              * request from the loop */
    int                    stream_stale;     /* the streamed PUT of what
                                              * the origin sent before it
                                              * started over: cancel it */
    adl_buf_t              fill;             /* downloading into */
    adl_buf_t              up;               /* a full part to upload */
    adl_buf_t              xml;              /* CompleteMultipartUpload's
                                              * body, kept for its retries */
    int                    up_busy;          /* up is being uploaded */
    int                    up_stale;         /* ...but for old content */
    adl_s3_req_t           s3;
    int                    s3_tries;
    int64_t                s3_retry_at;
    char                  *upload_id;
    int                    next_part;
    int                    up_part;
    adl_parts_t            parts;

    /* database */
    int                    db_refs;
    int                    progress_busy;
    int64_t                progress_sent;    /* when the last one was sent */
    int                    uncounted;        /* hand-back: attempt not made */
    int64_t                last_report;
    int64_t                reported;

    /* the end */
    int                    abort_tried;      /* AbortMultipartUpload sent */
    int                    abort_done;       /* ...and answered */
    int                    object_maybe;     /* an object may be stored */
    int                    object_stored;    /* ...it was, after the end */
    int                    recorded;         /* the result was answered */
    int                    recorded_stored;  /* ...as completed, by us */
    int                    orphan_checked;
};

static void xfer_end(adl_xfer_t *x, xfer_outcome_t out, const char *code,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void start_download(adl_xfer_t *x);
static void storage_pump(adl_xfer_t *x);
static void write_result(adl_xfer_t *x);
static void end_advance(adl_xfer_t *x);
static int check_orphan(adl_xfer_t *x);
static void stream_start(adl_xfer_t *x);
static void stored(adl_xfer_t *x);
static void storage_done(adl_s3_req_t *r);
static void storage_later(adl_xfer_t *x, adl_s3_req_t *r);
static void stop_download(adl_xfer_t *x);
static void stream_unstarve(adl_xfer_t *x);
static void stream_failed(adl_xfer_t *x, adl_s3_req_t *r);

#define MAX_SINGLE_PUT    (5LL * 1024 * 1024 * 1024)
#define KICK_MIN          (128 * 1024)
#define STREAM_STARVE_MAX (10 * 1000)    /* ms: then parts, after a failure */

#define XLOG(level, x, ...)  adl_log(level, (x)->job->id, (x)->idx, __VA_ARGS__)


/* --- small helpers ------------------------------------------------------- */

static void
trim_copy(char *dst, size_t len, const char *v, size_t vlen)
{
    while (vlen > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }
    while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n'
                        || v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
    {
        vlen--;
    }
    if (vlen >= len) {
        vlen = len - 1;
    }
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
}

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


/* --- the download -------------------------------------------------------- */

static size_t
header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    adl_xfer_t  *x = userp;
    size_t       n = size * nmemb;

#define HDR(name, field)                                                     \
    if (n > sizeof(name) - 1                                                 \
        && strncasecmp(data, name, sizeof(name) - 1) == 0)                   \
    {                                                                        \
        trim_copy(x->field, sizeof(x->field), data + sizeof(name) - 1,       \
                  n - (sizeof(name) - 1));                                   \
        return n;                                                            \
    }

    if (n > 5 && strncmp(data, "HTTP/", 5) == 0) {
        /* a new response (after a redirect or 100): forget the last one */
        x->h_retry_after[0] = '\0';
        x->h_content_range[0] = '\0';
        x->h_etag[0] = '\0';
        x->h_last_modified[0] = '\0';
        x->h_content_encoding[0] = '\0';
        return n;
    }
    HDR("Retry-After:", h_retry_after)
    HDR("Content-Range:", h_content_range)
    HDR("ETag:", h_etag)
    HDR("Last-Modified:", h_last_modified)
    HDR("Content-Encoding:", h_content_encoding)
#undef HDR
    return n;
}

static int
fail_in_callback(adl_xfer_t *x, const char *code, int transient,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int
fail_in_callback(adl_xfer_t *x, const char *code, int transient,
    const char *fmt, ...)
{
    va_list  ap;

    x->fail_code = code;
    x->fail_transient = transient;
    va_start(ap, fmt);
    vsnprintf(x->fail_msg, sizeof(x->fail_msg), fmt, ap);
    va_end(ap);
    return -1;
}

/* Starts over from byte 0: the origin sent the whole body again. */
static void
restart_from_zero(adl_xfer_t *x)
{
    adl_sha256_free(&x->sha);
    memset(&x->sha, 0, sizeof(x->sha));
    adl_sha256_init(&x->sha);
    x->received = 0;
    x->offset = 0;
    x->fill.len = 0;
    x->ring_head = 0;
    if (x->stream) {
        /* the bytes sent cannot be taken back: a new PUT, once the loop
         * cancelled this one (this may run inside a callback) */
        if (x->s3.op == S3_PUT) {
            x->stream_stale = 1;
            x->kick_s3 = 1;
            *x->wake = 1;
        }
        x->stream = 0;
        x->up_paused = 0;
        x->put_done = 0;
        x->kick_up = 0;
        x->starved_ms = 0;
        x->up_taken = adl_now_ms();
    }
    if (x->up_busy) {
        x->up_stale = 1;            /* its part number is reused later */
    } else {
        x->up.len = 0;
        x->up_part = 0;
    }
    x->next_part = 1;
}

/* The final response's status and headers, before its first byte. */
static int
check_response(adl_xfer_t *x)
{
    const adl_settings_t  *s = x->env->settings;
    long                   code = 0;
    curl_off_t             cl = -1;
    char                  *ct = NULL;
    int                    n;
    long long              start, end, total;
    int                    enc;

    x->checked = 1;
    enc = x->h_content_encoding[0] != '\0'
          && strcasecmp(x->h_content_encoding, "identity") != 0;
    curl_easy_getinfo(x->dl.easy, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(x->dl.easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);

    if (code == 206 && x->offset > 0) {
        if (enc) {
            /* a range of the encoded bytes: nothing to do with the
             * decoded ones kept so far; the next attempt starts over */
            x->encoded = 1;
            return fail_in_callback(x, "DOWNLOAD_FAILED", 1, "resume at "
                                    "%lld answered with Content-Encoding "
                                    "%s", (long long) x->offset,
                                    x->h_content_encoding);
        }
        /* the rest of the same file: same start, and the same total when
         * the first answer announced one (else another version of it) */
        n = sscanf(x->h_content_range, "bytes %lld-%lld/%lld", &start, &end,
                   &total);
        if (n < 2 || start != x->offset
            || (x->size >= 0 && (n != 3 || total != x->size)))
        {
            return fail_in_callback(x, "DOWNLOAD_FAILED", 1, "resume at %lld"
                                    " answered with Content-Range \"%s\"",
                                    (long long) x->offset,
                                    x->h_content_range);
        }
        XLOG(ADL_LOG_INFO, x, "resuming at byte %lld", (long long) start);
        return 0;
    }

    if (code != 200 && code != 203) {
        int  transient = code >= 500 || code == 408 || code == 429;

        return fail_in_callback(x, "HTTP_STATUS", transient,
                                "the origin answered HTTP %ld", code);
    }

    if (x->offset > 0) {
        XLOG(ADL_LOG_INFO, x, "origin ignored the Range request: "
             "starting again from byte 0");
        restart_from_zero(x);
    }

    /* a content-encoded answer is decoded (what users download is the
     * file, not its encoding): its Content-Length is the encoded size,
     * so the size is known at the end only, and a Range would count
     * encoded bytes: a later attempt starts over from byte 0 */
    x->encoded = enc;
    x->size = cl >= 0 && !enc ? (int64_t) cl : -1;
    if (s->max_file_size > 0 && x->size > s->max_file_size) {
        return fail_in_callback(x, "TOO_LARGE", 0, "the file is %lld bytes,"
                                " more than the %lld allowed",
                                (long long) x->size,
                                (long long) s->max_file_size);
    }

    curl_easy_getinfo(x->dl.easy, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(x->content_type, sizeof(x->content_type), "%s",
             ct && ct[0] ? ct : "application/octet-stream");

    /* a validator for a later If-Range: a strong ETag, else the date */
    if (x->h_etag[0] && strncmp(x->h_etag, "W/", 2) != 0) {
        snprintf(x->validator, sizeof(x->validator), "%s", x->h_etag);
    } else {
        snprintf(x->validator, sizeof(x->validator), "%s",
                 x->h_last_modified);
    }

    /* a body that fits in one part gets a buffer of its size at once */
    if (x->size > 0 && x->size <= s->part_size && x->fill.cap == 0) {
        adl_buf_reserve(&x->fill, (size_t) x->size, (size_t) s->part_size);
    }

    if (x->size > s->part_size && x->size <= MAX_SINGLE_PUT
        && x->upload_id == NULL && x->received == 0 && !x->no_stream)
    {
        if (adl_buf_reserve(&x->fill, (size_t) s->part_size,
                        (size_t) s->part_size) != 0)
        {
            return fail_in_callback(x, "DOWNLOAD_FAILED", 1,
                                    "out of memory");
        }
        /* the PUT starts from the loop, with the first bytes */
        x->stream = 1;
        x->ring_head = 0;
        x->fill.len = 0;
        x->up_paused = 0;
        x->put_done = 0;
        x->kick_s3 = 1;
        *x->wake = 1;
    }
    return 0;
}

/* stream mode: data for a PUT that waited for it (unpaused from the
 * loop); the time it waited is not the storage's */
static void
stream_unstarve(adl_xfer_t *x)
{
    int64_t  now = adl_now_ms();

    x->up_paused = 0;
    x->starved_ms += now - x->starve_since;
    x->up_taken = now;
    x->kick_up = 1;
    *x->wake = 1;
}

/* stream mode: the PUT's body, taken from the ring */
static size_t
stream_read(char *buf, size_t size, size_t nmemb, void *userp)
{
    adl_xfer_t  *x = userp;
    size_t       want = size * nmemb, n, first, cap = x->fill.cap;

    if (x->fill.len == 0 || x->stream_stale) {
        x->up_paused = 1;
        x->starve_since = adl_now_ms();
        return CURL_READFUNC_PAUSE;
    }
    n = want < x->fill.len ? want : x->fill.len;
    first = cap - x->ring_head < n ? cap - x->ring_head : n;
    memcpy(buf, x->fill.data + x->ring_head, first);
    memcpy(buf + first, x->fill.data, n - first);
    x->ring_head = (x->ring_head + n) % cap;
    x->fill.len -= n;
    x->up_taken = adl_now_ms();

    if (x->paused && cap - x->fill.len >= KICK_MIN) {
        x->paused = 0;
        x->kick_dl = 1;
        *x->wake = 1;
    }
    return n;
}

/* From the loop: the streamed PUT chosen by check_response; a PUT that
 * cannot start fails as a streamed PUT does. */
static void
stream_start(adl_xfer_t *x)
{
    adl_s3_req_t  *r = &x->s3;

    x->up_taken = adl_now_ms();
    r->op = S3_PUT;
    r->key = x->key;
    r->upload_id = NULL;
    r->content_type = x->content_type;
    r->body = NULL;
    r->body_len = (size_t) x->size;
    r->read = stream_read;
    r->read_data = x;
    r->no_speed_check = 1;          /* judged by stream_watchdog */
    r->done = storage_done;
    r->data = x;
    if (adl_s3_start(x->env->s3, r) != 0) {
        r->read = NULL;
        r->no_speed_check = 0;
        r->op = S3_NONE;
        stream_failed(x, r);
        return;
    }
    r->read = NULL;                 /* kept by curl; not for later requests */
    r->no_speed_check = 0;
}

/* stream mode: the downloaded bytes into the ring */
static size_t
stream_write(adl_xfer_t *x, const char *data, size_t n)
{
    size_t  cap = x->fill.cap, tail, first;

    if (cap - x->fill.len < n) {
        x->paused = 1;              /* the PUT is behind */
        return CURL_WRITEFUNC_PAUSE;
    }
    if (adl_sha256_update(&x->sha, data, n) != 0) {
        fail_in_callback(x, "DOWNLOAD_FAILED", 0, "SHA-256 failed");
        return 0;
    }
    tail = (x->ring_head + x->fill.len) % cap;
    first = cap - tail < n ? cap - tail : n;
    memcpy(x->fill.data + tail, data, first);
    memcpy(x->fill.data, data + first, n - first);
    x->fill.len += n;
    x->received += (int64_t) n;

    if (x->up_paused && x->fill.len >= KICK_MIN) {
        stream_unstarve(x);
    }
    return n;
}

static size_t
write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    adl_xfer_t            *x = userp;
    const adl_settings_t  *s = x->env->settings;
    size_t                 n = size * nmemb, part = (size_t) s->part_size;
    size_t                 first;
    adl_buf_t              tmp;

    if (!x->checked && check_response(x) != 0) {
        return 0;
    }
    if (x->state != XF_RUNNING) {
        return 0;
    }
    if (s->max_file_size > 0
        && x->received + (int64_t) n > s->max_file_size)
    {
        fail_in_callback(x, "TOO_LARGE", 0, "the file is larger than the "
                         "%lld bytes allowed", (long long) s->max_file_size);
        return 0;
    }

    if (x->stream) {
        return stream_write(x, data, n);
    }

    if (x->fill.len + n >= part && (x->up.len > 0 || x->up_busy)) {
        x->paused = 1;              /* the part before is still uploading */
        return CURL_WRITEFUNC_PAUSE;
    }

    /* room first, for this part and (when the data completes it) the
     * next one, which is the empty upload buffer: a failure then changes
     * nothing, neither the buffers nor the SHA-256, and the retry resumes
     * from x->received with both right */
    first = x->fill.len + n > part ? part - x->fill.len : n;
    if (adl_buf_reserve(&x->fill, x->fill.len + first, part) != 0
        || (n > first && adl_buf_reserve(&x->up, n - first, part) != 0))
    {
        fail_in_callback(x, "DOWNLOAD_FAILED", 1, "out of memory");
        return 0;
    }
    if (adl_sha256_update(&x->sha, data, n) != 0) {
        fail_in_callback(x, "DOWNLOAD_FAILED", 0, "SHA-256 failed");
        return 0;
    }
    memcpy(x->fill.data + x->fill.len, data, first);
    x->fill.len += first;

    if (x->fill.len == part) {
        /* a whole part: swap it out to upload, go on filling the other */
        tmp = x->up;
        x->up = x->fill;
        x->fill = tmp;
        x->fill.len = 0;
        if (n > first) {
            memcpy(x->fill.data, data + first, n - first);
            x->fill.len = n - first;
        }
        x->kick_s3 = 1;             /* uploaded from the loop */
        *x->wake = 1;
    }

    x->received += (int64_t) n;
    return n;
}

static void
download_done(adl_http_req_t *req, CURLcode rc)
{
    adl_xfer_t  *x = (adl_xfer_t *) ((char *) req
                                     - offsetof(adl_xfer_t, dl));
    const char  *code = "DOWNLOAD_FAILED";
    char         msg[300];
    int          transient = 0;
    int64_t      delay = -1, now = adl_now_ms();

    if (!adl_xfer_active(x)) {
        /* ended meanwhile (its write callback refused the rest) */
        curl_easy_cleanup(x->dl.easy);
        x->dl.easy = NULL;
        curl_slist_free_all(x->dl_headers);
        x->dl_headers = NULL;
        return;
    }
    if (rc == CURLE_OK && x->fail_code == NULL && !x->checked) {
        check_response(x);         /* an empty body */
    }

    if (x->fail_code != NULL) {
        code = x->fail_code;
        transient = x->fail_transient;
        snprintf(msg, sizeof(msg), "%s", x->fail_msg);
        if (strcmp(code, "HTTP_STATUS") == 0) {
            delay = adl_retry_after_ms(x->h_retry_after);
        }

    } else if (rc == CURLE_OK) {
        curl_easy_cleanup(x->dl.easy);
        x->dl.easy = NULL;
        curl_slist_free_all(x->dl_headers);
        x->dl_headers = NULL;
        if (adl_sha256_final_hex(&x->sha, x->sha256) != 0) {
            xfer_end(x, OUT_FAILED, "DOWNLOAD_FAILED", "SHA-256 failed");
            return;
        }
        XLOG(ADL_LOG_DEBUG, x, "downloaded %lld bytes",
             (long long) x->received);
        x->state = XF_FLUSHING;
        if (x->stream) {
            if (x->put_done) {
                stored(x);
            } else if (x->up_paused) {
                stream_unstarve(x); /* the last bytes */
            }
            return;
        }
        storage_pump(x);
        return;

    } else {
        const char  *what = x->dl_errbuf[0] ? x->dl_errbuf
                                            : curl_easy_strerror(rc);

        snprintf(msg, sizeof(msg), "%s", what);
        switch (rc) {
        case CURLE_COULDNT_CONNECT:
            if (x->guard.blocked) {
                code = "BLOCKED_ADDRESS";
                snprintf(msg, sizeof(msg), "%s", x->guard.msg);
                break;
            }
            transient = 1;
            break;
        case CURLE_OPERATION_TIMEDOUT:
            if (now + 100 >= x->job->deadline) {
                code = "TIMEOUT";
                snprintf(msg, sizeof(msg), "the job's deadline passed");
                break;
            }
            transient = 1;
            break;
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_PARTIAL_FILE:
        case CURLE_GOT_NOTHING:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_SSL_CONNECT_ERROR:
            transient = 1;
            break;
        case CURLE_FILESIZE_EXCEEDED:
            code = "TOO_LARGE";
            snprintf(msg, sizeof(msg), "the file is larger than the %lld "
                     "bytes allowed",
                     (long long) x->env->settings->max_file_size);
            break;
        case CURLE_TOO_MANY_REDIRECTS:
            snprintf(msg, sizeof(msg), "too many redirects (more than %ld)",
                     MAX_REDIRECTS);
            break;
        case CURLE_UNSUPPORTED_PROTOCOL:
            snprintf(msg, sizeof(msg), "refused: only http and https are "
                     "allowed (%s)", what);
            break;
        default:
            break;
        }
    }

    curl_easy_cleanup(x->dl.easy);
    x->dl.easy = NULL;
    curl_slist_free_all(x->dl_headers);
    x->dl_headers = NULL;
    x->paused = 0;

    if (transient && x->attempt < x->env->settings->max_attempts) {
        if (delay < 0) {
            delay = adl_backoff_ms(x->env->settings->retry_base, x->attempt);
        }
        if (x->env->stopping) {
            /* shutting down: another worker retries it, it has not failed */
            xfer_end(x, OUT_HAND_BACK, code, "%s; handed back for a retry",
                     msg);
            return;
        }
        if (now + delay < x->job->deadline) {
            XLOG(ADL_LOG_WARN, x, "attempt %d failed: %s; retrying in "
                 "%lld ms", x->attempt, msg, (long long) delay);
            x->state = XF_BACKOFF;
            x->retry_at = now + delay;
            return;
        }
    }
    xfer_end(x, OUT_FAILED, code, "%s", msg);
}

static void
start_download(adl_xfer_t *x)
{
    const adl_settings_t  *s = x->env->settings;
    char                   hdr[320];
    struct curl_slist     *l;
    CURL                  *e;
    int64_t                left = x->job->deadline - adl_now_ms();

    x->checked = 0;
    x->fail_code = NULL;
    x->fail_msg[0] = '\0';
    x->dl_errbuf[0] = '\0';
    x->paused = 0;
    if (x->encoded && x->received > 0) {
        XLOG(ADL_LOG_INFO, x, "the answer was content-encoded (%s): "
             "starting again from byte 0", x->h_content_encoding);
        restart_from_zero(x);
    }
    x->offset = x->received;
    x->state = XF_RUNNING;

    if (x->offset > 0) {
        snprintf(hdr, sizeof(hdr), "Range: bytes=%lld-",
                 (long long) x->offset);
        l = curl_slist_append(x->dl_headers, hdr);
        if (l != NULL) {
            x->dl_headers = l;
        }
        if (x->validator[0]) {
            snprintf(hdr, sizeof(hdr), "If-Range: %s", x->validator);
            l = curl_slist_append(x->dl_headers, hdr);
            if (l != NULL) {
                x->dl_headers = l;
            }
        }
    }

    e = adl_http_origin_easy(s, x->url, x->dl_headers, &x->guard,
                             x->dl_errbuf);
    if (e == NULL) {
        curl_slist_free_all(x->dl_headers);
        x->dl_headers = NULL;
        xfer_end(x, OUT_FAILED, "DOWNLOAD_FAILED", "out of memory");
        return;
    }
    x->dl.easy = e;
    x->dl.done = download_done;

    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, MAX_REDIRECTS);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) (left > 1 ? left : 1));
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME,
                     (long) (s->idle_timeout / 1000));
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "async-dl-worker");
    /* ask for the file as it is, and decode whatever encoding comes all
     * the same (one curl cannot decode fails the file) */
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "identity");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    if (s->max_file_size > 0) {
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                         (curl_off_t) s->max_file_size);
    }

    if (adl_http_start(x->env->origin, &x->dl) != 0) {
        curl_easy_cleanup(e);
        x->dl.easy = NULL;
        curl_slist_free_all(x->dl_headers);
        x->dl_headers = NULL;
        xfer_end(x, OUT_FAILED, "DOWNLOAD_FAILED", "cannot start");
        return;
    }
    XLOG(ADL_LOG_DEBUG, x, "attempt %d: GET %s%s", x->attempt, x->url,
         x->offset ? " (resuming)" : "");
}

static void
stop_download(adl_xfer_t *x)
{
    if (x->dl.easy == NULL) {
        return;
    }
    adl_http_stop(x->env->origin, &x->dl);
    curl_easy_cleanup(x->dl.easy);
    x->dl.easy = NULL;
    curl_slist_free_all(x->dl_headers);
    x->dl_headers = NULL;
}


/* --- storage ------------------------------------------------------------- */

static void storage_done(adl_s3_req_t *r);

/* Starts a storage request; -1 when it could not start (then retried
 * after a backoff, storage_later, or the file fails: STORAGE_FAILED). */
static int
storage_start(adl_xfer_t *x, adl_s3_op_t op, const char *body, size_t len)
{
    adl_s3_req_t  *r = &x->s3;

    r->op = op;
    r->key = x->key;
    r->upload_id = x->upload_id;
    r->content_type = x->content_type[0] ? x->content_type
                                         : "application/octet-stream";
    r->part_number = x->up_part;
    r->body = body;
    r->body_len = len;
    r->done = storage_done;
    r->data = x;

    if (adl_s3_start(x->env->s3, r) != 0) {
        r->op = S3_NONE;
        if (op == S3_PART) {
            x->up_busy = 0;         /* the same part again */
        }
        if (op != S3_ABORT) {
            storage_later(x, r);
        }
        return -1;
    }
    return 0;
}

/* What storage request comes next, if none is running. */
static void
storage_pump(adl_xfer_t *x)
{
    adl_buf_t  tmp;

    if (x->stream || x->s3.http.easy != NULL || x->s3_retry_at != 0) {
        return;
    }
    if (x->state != XF_RUNNING && x->state != XF_BACKOFF
        && x->state != XF_FLUSHING)
    {
        return;
    }

    if (x->up.len > 0 && !x->up_busy) {
        if (x->upload_id == NULL) {
            storage_start(x, S3_CREATE, NULL, 0);
            return;
        }
        if (x->up_part == 0) {      /* a new part; else the same again */
            x->up_part = x->next_part++;
        }
        x->up_busy = 1;
        storage_start(x, S3_PART, x->up.data, x->up.len);
        return;
    }

    if (x->state != XF_FLUSHING || x->up_busy) {
        return;
    }

    if (x->upload_id == NULL) {
        storage_start(x, S3_PUT, x->fill.data, x->fill.len);
        return;
    }
    if (x->fill.len > 0 || x->next_part == 1) {
        tmp = x->up;
        x->up = x->fill;
        x->fill = tmp;
        x->fill.len = 0;
        x->up_part = x->next_part++;
        x->up_busy = 1;
        storage_start(x, S3_PART, x->up.data, x->up.len);
        return;
    }
    /* its own buffer: after a failed Complete, fill must still be empty,
     * or the retry would upload the XML as one more part */
    if (adl_parts_xml(&x->parts, x->next_part - 1, &x->xml) != 0) {
        snprintf(x->s3.error, sizeof(x->s3.error), "out of memory");
        x->s3.transient = 1;
        storage_later(x, &x->s3);
        return;
    }
    storage_start(x, S3_COMPLETE, x->xml.data, x->xml.len);
}

static void
stored(adl_xfer_t *x)
{
    x->size = x->received;
    x->object_maybe = 1;
    XLOG(ADL_LOG_INFO, x, "stored %s (%lld bytes, %s, sha256 %s)",
         x->key, (long long) x->received, x->content_type, x->sha256);
    xfer_end(x, OUT_STORED, NULL, "stored");
}

/* A storage request answered after its transfer ended: what the end needs
 * to know of it. */
static void
storage_done_ending(adl_xfer_t *x, adl_s3_op_t op, adl_s3_req_t *r)
{
    switch (op) {
    case S3_CREATE:
        if (r->ok && x->upload_id == NULL) {
            x->upload_id = strdup(r->new_upload_id);
            if (x->upload_id == NULL) {
                XLOG(ADL_LOG_WARN, x, "out of memory: multipart upload %s "
                     "left unaborted", r->new_upload_id);
            }
        }
        break;
    case S3_PUT:
    case S3_COMPLETE:
        /* stored, or no answer at all: the object may exist */
        if (r->ok || (r->status == 0 && r->reached)) {
            x->object_maybe = 1;
        }
        x->object_stored = r->ok;
        break;
    case S3_ABORT:
        x->abort_done = 1;
        if (!r->ok) {
            XLOG(ADL_LOG_WARN, x, "could not abort the multipart upload %s: "
                 "%s", x->upload_id, r->error);
        }
        break;
    default:
        break;
    }
    end_advance(x);
}

/*
 * Storage trouble backs off as origin trouble does: exponentially from
 * ASYNC_DL_RETRY_BASE with jitter, or as the answer's Retry-After says
 * (503 SlowDown), at most ASYNC_DL_MAX_ATTEMPTS tries of a request in a
 * row, and never past the job's deadline.  -1: give up.
 */
static int64_t
storage_retry_in(adl_xfer_t *x, const adl_s3_req_t *r)
{
    const adl_settings_t  *s = x->env->settings;
    adl_retry_t            p = { s->max_attempts, s->retry_base, 1,
                                 x->job->deadline };

    return adl_retry_next(&p, &x->s3_tries, r->transient, r->retry_after,
                          adl_now_ms());
}

/* A storage request that failed, could not start or could not be
 * recorded (out of memory): the same step again after a backoff, within
 * storage_retry_in's bounds; else the file fails. */
static void
storage_later(adl_xfer_t *x, adl_s3_req_t *r)
{
    int64_t  delay = storage_retry_in(x, r);

    if (delay >= 0) {
        XLOG(ADL_LOG_WARN, x, "storage: %s; retrying in %lld ms", r->error,
             (long long) delay);
        x->s3_retry_at = adl_now_ms() + delay;
        return;
    }
    xfer_end(x, OUT_FAILED, "STORAGE_FAILED", "%s", r->error);
}

/* The streamed PUT failed: what was sent is gone, the file again from
 * byte 0, a new transfer, so an attempt too.  A stream that waited long
 * for its origin goes by parts then: a slow origin does not hold a
 * storage connection open again. */
static void
stream_failed(adl_xfer_t *x, adl_s3_req_t *r)
{
    int64_t  delay = storage_retry_in(x, r);

    if (x->up_paused) {
        /* failed while waiting for the origin: that wait counts too */
        x->starved_ms += adl_now_ms() - x->starve_since;
    }
    if (x->starved_ms > STREAM_STARVE_MAX) {
        x->no_stream = 1;
    }
    stop_download(x);
    restart_from_zero(x);
    if (delay >= 0 && x->attempt < x->env->settings->max_attempts) {
        XLOG(ADL_LOG_WARN, x, "storage: %s; starting again from byte 0 "
             "in %lld ms", r->error, (long long) delay);
        x->state = XF_BACKOFF;
        x->retry_at = adl_now_ms() + delay;
        return;
    }
    xfer_end(x, OUT_FAILED, "STORAGE_FAILED", "%s", r->error);
}

/*
 * The streamed PUT has no low-speed check of libcurl's: it waits for the
 * download whenever the origin is slower than the storage, and libcurl
 * (7.88) counts a paused send as a stalled one.  Judged here instead,
 * from the loop: while it has data to take (or has taken all of it and
 * waits for the answer), nothing taken and no answer for the idle
 * timeout is a stalled storage; the time it waits for data is the
 * origin's, whose own low-speed check covers it.
 */
static void
stream_watchdog(adl_xfer_t *x, int64_t now)
{
    adl_s3_req_t  *r = &x->s3;
    int64_t        idle = x->env->settings->idle_timeout;

    if (!x->stream || r->op != S3_PUT || x->put_done || x->up_paused
        || x->kick_up || x->stream_stale || now - x->up_taken < idle)
    {
        return;
    }
    XLOG(ADL_LOG_INFO, x, "storage: PutObject took nothing and did not "
         "answer for %lld ms (%lld bytes downloaded, %zu waiting)",
         (long long) (now - x->up_taken), (long long) x->received,
         x->fill.len);
    if (x->size >= 0 && x->received >= x->size && x->fill.len == 0) {
        x->object_maybe = 1;        /* all sent: it may store it yet */
    }
    adl_s3_cancel(x->env->s3, r);
    r->op = S3_NONE;
    r->transient = 1;
    r->retry_after[0] = '\0';
    snprintf(r->error, sizeof(r->error), "PutObject: no progress for "
             "%lld ms", (long long) (now - x->up_taken));
    stream_failed(x, r);
}

static void
storage_done(adl_s3_req_t *r)
{
    adl_xfer_t  *x = r->data;
    adl_s3_op_t  op = r->op;

    r->op = S3_NONE;

    if (!adl_xfer_active(x)) {
        storage_done_ending(x, op, r);
        return;
    }
    if (x->stream_stale) {
        x->stream_stale = 0;        /* what it sent is not the file */
        storage_pump(x);
        return;
    }

    if (!r->ok && (op == S3_PUT || op == S3_COMPLETE) && r->reached
        && (r->status == 0 || r->status >= 500))
    {
        x->object_maybe = 1;        /* it may have been stored all the same */
    }

    if (!r->ok && x->stream) {
        stream_failed(x, r);
        return;
    }

    if (!r->ok) {
        if (op == S3_PART) {
            x->up_busy = 0;
            if (x->up_stale) {
                /* a part of what the origin sent before it started over:
                 * dropped, its number is the new content's; room for the
                 * download again */
                x->up_stale = 0;
                x->up.len = 0;
                x->up_part = 0;
                if (x->paused) {
                    x->paused = 0;
                    x->kick_dl = 1;
                    *x->wake = 1;
                }
            }
        }
        storage_later(x, r);
        return;
    }
    x->s3_tries = 0;

    switch (op) {
    case S3_CREATE:
        x->upload_id = strdup(r->new_upload_id);
        if (x->upload_id == NULL) {
            XLOG(ADL_LOG_WARN, x, "out of memory: multipart upload %s left "
                 "unaborted", r->new_upload_id);
            snprintf(r->error, sizeof(r->error), "out of memory");
            r->transient = 1;
            storage_later(x, r);    /* a new upload then */
            return;
        }
        break;

    case S3_PART:
        if (!x->up_stale && adl_parts_set(&x->parts, x->up_part, r->etag) != 0) {
            snprintf(r->error, sizeof(r->error), "out of memory");
            r->transient = 1;
            x->up_busy = 0;         /* the same part again */
            storage_later(x, r);
            return;
        }
        x->up_busy = 0;
        x->up_stale = 0;
        x->up.len = 0;
        x->up_part = 0;
        if (x->paused) {
            /* room for the download again: unpaused from the loop, as an
             * unpause may deliver data (and end the transfer) at once */
            x->paused = 0;
            x->kick_dl = 1;
            *x->wake = 1;
        }
        break;

    case S3_PUT:
        if (x->stream && x->state != XF_FLUSHING) {
            x->put_done = 1;        /* the download's end is on its way */
            x->object_maybe = 1;    /* stored, whatever ends it first */
            return;
        }
        stored(x);
        return;

    case S3_COMPLETE:
        stored(x);
        return;

    default:
        break;
    }
    storage_pump(x);
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
        break;
    case OUT_HAND_BACK:
        XLOG(ADL_LOG_INFO, x, "handed back: %s", x->error);
        break;
    case OUT_DROP:
        XLOG(ADL_LOG_INFO, x, "stopped: %s", x->error);
        break;
    default:
        break;
    }
    x->state = XF_ENDING;
    *x->wake = 1;
}

/* A storage request that may store the object (or has created an upload
 * to abort) is left to answer; what it did decides what is left behind.
 * A streamed PUT can store the object only once it has all of it. */
static int
storage_settles(const adl_xfer_t *x)
{
    switch (x->s3.op) {
    case S3_CREATE:
    case S3_COMPLETE:
        return 1;
    case S3_PUT:
        return !x->stream_stale
               && (!x->stream || (x->size >= 0 && x->received >= x->size));
    default:
        return 0;
    }
}

/* From the loop, outside every callback. */
static void
end_begin(adl_xfer_t *x)
{
    x->state = XF_CLOSING;
    stop_download(x);
    x->s3_retry_at = 0;
    x->kick_dl = x->kick_up = x->kick_s3 = 0;

    if (x->s3.op != S3_NONE) {
        if (storage_settles(x)) {
            XLOG(ADL_LOG_DEBUG, x, "waiting for the storage request under "
                 "way to answer");
            if (x->stream && x->up_paused) {
                /* it has all the bytes: a pending unpause must not be
                 * lost with the kicks cleared above */
                x->up_paused = 0;
                x->up_taken = adl_now_ms();
                adl_http_unpause(&x->s3.http);
            }
        } else {
            adl_s3_cancel(x->env->s3, &x->s3);
            x->s3.op = S3_NONE;
            x->stream_stale = 0;
        }
    }

    /* the result at once, whatever the storage does meanwhile */
    if (x->outcome == OUT_DROP) {
        x->recorded = 1;
    } else {
        write_result(x);
    }
    end_advance(x);
}

/* The next step of a closing transfer, when the last one is over: abort
 * the multipart upload; once the result is answered, delete an object
 * nobody records; then DONE. */
static void
end_advance(adl_xfer_t *x)
{
    if (x->state != XF_CLOSING || x->s3.op != S3_NONE) {
        return;
    }
    if (x->outcome == OUT_DROP && x->object_stored && x->sha256[0] != '\0') {
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
    if (x->upload_id != NULL && x->outcome != OUT_STORED && !x->abort_tried) {
        x->abort_tried = 1;
        if (storage_start(x, S3_ABORT, NULL, 0) == 0) {
            return;
        }
        XLOG(ADL_LOG_WARN, x, "could not abort the multipart upload %s: %s",
             x->upload_id, x->s3.error);
    }
    if (x->db_refs > 0) {
        return;                     /* the result, progress, orphan check */
    }
    if (x->object_maybe && !x->recorded_stored && !x->orphan_checked) {
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
        write_result(x);
        end_advance(x);
        return;
    }
    x->recorded = 1;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        XLOG(ADL_LOG_ERROR, x, "recording the result failed: %s",
             PQresultErrorMessage(res));
    } else if (PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] != 't') {
        XLOG(ADL_LOG_INFO, x, "result not recorded: the file is no longer "
             "ours (canceled, deleted or lease lost)");
    } else if (x->outcome == OUT_STORED) {
        x->recorded_stored = 1;
    }
    end_advance(x);
}

static void
write_result(adl_xfer_t *x)
{
    char         idx[16], size[24], attempts[16];
    const char  *p[12];
    const char  *status;

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
    p[5] = x->outcome == OUT_STORED ? x->content_type : NULL;
    p[6] = x->outcome == OUT_STORED ? x->sha256 : NULL;
    /* (a failed file's key is queued for the janitor by the database,
     * which recorded it at the claim) */
    p[7] = x->outcome == OUT_STORED ? x->key : NULL;
    p[8] = attempts;
    p[9] = x->outcome == OUT_FAILED ? x->error_code : NULL;
    p[10] = x->outcome == OUT_FAILED ? x->error : NULL;
    p[11] = NULL;

    if (adl_db_query(x->env->db, "SELECT async_dl_file_finish($1::uuid, "
                     "$2::integer, $3, $4, $5::bigint, $6, $7, $8, "
                     "$9::integer, $10, $11, $12::timestamptz)", 12, p,
                     finish_result, x) != 0)
    {
        XLOG(ADL_LOG_ERROR, x, "result not recorded (out of memory): the "
             "file is left to its lease");
        return;
    }
    x->db_refs++;
}

void
adl_xfer_free(adl_xfer_t *x)
{
    if (x->upload_id != NULL && !x->abort_done && x->outcome != OUT_STORED) {
        XLOG(ADL_LOG_WARN, x, "exiting: multipart upload %s of %s left "
             "unaborted", x->upload_id, x->key);
    }
    stop_download(x);
    adl_s3_cancel(x->env->s3, &x->s3);
    adl_sha256_free(&x->sha);
    adl_buf_free(&x->fill);
    adl_buf_free(&x->up);
    adl_buf_free(&x->xml);
    adl_parts_free(&x->parts);
    free(x->upload_id);
    free(x->url);
    free(x->key);
    free(x->lease);
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

/* A streamed PUT left to answer after the end (it has every byte, and
 * may store the object) has no low-speed check of libcurl's: bounded here
 * by the idle timeout, as while the transfer ran.  Given up, it may still
 * have stored the object: the orphan check decides. */
static void
settle_watchdog(adl_xfer_t *x, int64_t now)
{
    if (!x->stream || x->s3.op != S3_PUT
        || now - x->up_taken < x->env->settings->idle_timeout)
    {
        return;
    }
    XLOG(ADL_LOG_WARN, x, "storage: PutObject did not answer for %lld ms "
         "after the end: given up", (long long) (now - x->up_taken));
    adl_s3_cancel(x->env->s3, &x->s3);
    x->s3.op = S3_NONE;
    x->object_maybe = 1;
    end_advance(x);
}

void
adl_xfer_tick(adl_xfer_t *x, int64_t now)
{
    const adl_settings_t  *s = x->env->settings;

    if (x->state == XF_CLOSING) {
        settle_watchdog(x, now);
        return;
    }
    if (!adl_xfer_active(x)) {
        return;
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
    if (x->state == XF_BACKOFF && now >= x->retry_at) {
        x->attempt++;
        start_download(x);
        if (!adl_xfer_active(x)) {
            return;
        }
    }
    if (x->s3_retry_at != 0 && now >= x->s3_retry_at) {
        x->s3_retry_at = 0;
        if (x->s3.op == S3_NONE) {
            storage_pump(x);
        }
    }
    stream_watchdog(x, now);
    if (!adl_xfer_active(x)) {
        return;
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

/* From the loop: what the callbacks asked of the storage. */
static void
storage_kick(adl_xfer_t *x)
{
    if (x->stream_stale) {
        adl_s3_cancel(x->env->s3, &x->s3);
        x->s3.op = S3_NONE;
        x->stream_stale = 0;
    }
    if (x->stream) {
        if (x->s3.op == S3_NONE && !x->put_done) {
            stream_start(x);
        }
        return;
    }
    storage_pump(x);
}

int
adl_xfer_settle(adl_xfer_t *x)
{
    int  rounds;

    if (x->state == XF_ENDING) {
        end_begin(x);
    }
    /* unpausing may deliver data at once, which may ask for the other
     * side to be unpaused: a few rounds settle it */
    for (rounds = 0; rounds < 8 && adl_xfer_active(x)
                     && (x->kick_s3 || x->kick_dl || x->kick_up); rounds++)
    {
        if (x->kick_s3) {
            x->kick_s3 = 0;
            storage_kick(x);
            if (!adl_xfer_active(x)) {
                break;
            }
        }
        if (x->kick_dl) {
            x->kick_dl = 0;
            adl_http_unpause(&x->dl);
        }
        if (x->kick_up) {
            x->kick_up = 0;
            adl_http_unpause(&x->s3.http);
        }
    }
    if (x->state == XF_ENDING) {
        end_begin(x);
    }
    return x->state == XF_DONE && x->db_refs == 0 && x->s3.op == S3_NONE;
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
adl_xfer_hand_back(adl_xfer_t *x)
{
    /* an attempt under way is interrupted, not made; one waiting for its
     * retry has already been counted, failed */
    x->uncounted = x->state != XF_BACKOFF;
    xfer_end(x, OUT_HAND_BACK, NULL, "shutting down");
}

adl_xfer_t *
adl_xfer_start(adl_env_t *env, int *wake, adl_job_t *job,
    const adl_claim_t *c)
{
    adl_xfer_t  *x;

    x = calloc(1, sizeof(adl_xfer_t));
    if (x == NULL) {
        return NULL;
    }
    x->env = env;
    x->wake = wake;
    x->job = job;
    x->idx = c->idx;
    x->size = -1;
    x->next_part = 1;
    x->attempt = c->attempts;
    x->last_report = adl_now_ms();
    x->lease_until = c->claimed_at + env->settings->lease;
    x->url = strdup(c->url);
    x->lease = strdup(c->lease);
    x->key = strdup(c->key);
    if (x->url == NULL || x->lease == NULL || x->key == NULL
        || adl_sha256_init(&x->sha) != 0)
    {
        adl_sha256_free(&x->sha);
        free(x->url);
        free(x->key);
        free(x->lease);
        free(x);
        return NULL;
    }

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
    start_download(x);
    return x;
}
