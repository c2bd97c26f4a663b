/*
 * upload: one object into the storage (the life is drawn in upload.h).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "parts.h"
#include "upload.h"

#define MAX_SINGLE_PUT    (5LL * 1024 * 1024 * 1024)
#define STREAM_STARVE_MAX (10 * 1000)    /* ms: then parts, after a failure */

#define ULOG(level, u, ...)  adl_log(level, (u)->c.log_job, (u)->c.log_idx, \
                                     __VA_ARGS__)

static void next_request(adl_upload_t *u);
static void after_stop(adl_upload_t *u);


/* --- state ---------------------------------------------------------------- */

static void
set_state(adl_upload_t *u, adl_upload_state_t st)
{
    u->state = st;
    *u->c.wake = 1;
}

static int
up_free(const adl_upload_t *u)
{
    return u->up.len == 0 && !u->up_busy;
}

static int
taking(const adl_upload_t *u)
{
    return u->state == ADL_UP_FILLING || u->state == ADL_UP_STREAMING;
}

void
adl_upload_init(adl_upload_t *u, const adl_upload_conf_t *c)
{
    memset(u, 0, sizeof(*u));
    u->c = *c;
    u->next_part = 1;
    u->state = ADL_UP_FILLING;
}

void
adl_upload_free(adl_upload_t *u)
{
    if (u->upload_id != NULL && !u->abort_done && !u->keep
        && u->state != ADL_UP_STORED)
    {
        ULOG(ADL_LOG_WARN, u, "exiting: multipart upload %s of %s left "
             "unaborted", u->upload_id, u->c.key);
    }
    adl_s3_cancel(u->c.s3, &u->req);
    u->req.op = S3_NONE;
    adl_buf_free(&u->fill);
    adl_buf_free(&u->up);
    adl_buf_free(&u->xml);
    adl_parts_free(&u->parts);
    free(u->upload_id);
    u->upload_id = NULL;
}

void
adl_upload_keep(adl_upload_t *u, int64_t wait_ms)
{
    /* a failed upload is not worth keeping: its part may not be there */
    u->keep = u->state != ADL_UP_FAILED;
    u->keep_wait = wait_ms;
    u->keep_until = adl_now_ms() + wait_ms;
    adl_upload_stop(u, 1);
}

/* A keep waiting for its part under way: that part is cancelled, the
 * parts before it kept.  (An answer in is read first, by run().) */
static int
keep_waiting(adl_upload_t *u)
{
    return u->keep && u->state == ADL_UP_SETTLING && u->req.op == S3_PART
           && !u->answered;
}

static void
keep_cut(adl_upload_t *u)
{
    adl_s3_cancel(u->c.s3, &u->req);
    u->req.op = S3_NONE;
    u->up_busy = 0;
    after_stop(u);
}

/* ...once its time is up */
static void
keep_due(adl_upload_t *u, int64_t now)
{
    if (!keep_waiting(u) || now < u->keep_until) {
        return;
    }
    ULOG(ADL_LOG_WARN, u, "%s: the part under way did not answer within "
         "%lld ms of the stop: cancelled, the parts before it kept",
         u->c.log_what, (long long) u->keep_wait);
    keep_cut(u);
}

void
adl_upload_keep_now(adl_upload_t *u)
{
    if (!keep_waiting(u)) {
        return;
    }
    ULOG(ADL_LOG_INFO, u, "%s: the part under way is not waited for "
         "(shutting down): cancelled, the parts before it kept",
         u->c.log_what);
    keep_cut(u);
}

void
adl_upload_drop_kept(adl_upload_t *u)
{
    if (u->keep && u->state == ADL_UP_STOPPED && u->upload_id != NULL) {
        u->keep = 0;
        after_stop(u);
    }
}

void
adl_upload_forget(adl_upload_t *u)
{
    adl_upload_conf_t  c = u->c;
    int                no_stream = u->no_stream;

    if (u->state != ADL_UP_FAILED || !u->gone) {
        return;
    }
    u->abort_done = 1;              /* nothing left to abort */
    adl_upload_free(u);
    adl_upload_init(u, &c);
    u->no_stream = no_stream;
}

int
adl_upload_resume(adl_upload_t *u, const char *upload_id,
    const char *const *etags, int n)
{
    int  i;

    if (u->upload_id != NULL || u->written != 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (adl_parts_set(&u->parts, i + 1, etags[i]) != 0) {
            return -1;
        }
    }
    u->upload_id = strdup(upload_id);
    if (u->upload_id == NULL) {
        return -1;
    }
    u->next_part = n + 1;
    u->stored_parts = n;
    u->written = (int64_t) n * (int64_t) u->c.part_size;
    return 0;
}

adl_upload_state_t
adl_upload_state(const adl_upload_t *u)
{
    return u->state;
}

int
adl_upload_idle(const adl_upload_t *u)
{
    return u->req.op == S3_NONE;
}


/* --- data in -------------------------------------------------------------- */

int
adl_upload_expect(adl_upload_t *u, int64_t size)
{
    size_t  part = u->c.part_size;

    if (u->state != ADL_UP_FILLING || u->written != 0) {
        return 0;
    }
    if (size > 0 && (size_t) size <= part && u->fill.cap == 0) {
        /* a buffer of its size at once (or later, growing) */
        (void) adl_buf_reserve(&u->fill, (size_t) size, part);
        return 0;
    }
    if (size <= (int64_t) part || size > MAX_SINGLE_PUT
        || u->upload_id != NULL || u->next_part != 1 || u->no_stream
        || !up_free(u)
        || (u->req.op != S3_NONE && !(u->req_stream && u->req_gen != u->gen)))
    {
        /* parts: a request of the data before a restart (but a streamed
         * PUT, which run() cancels) may yet create an upload */
        return 0;
    }
    if (adl_buf_reserve(&u->fill, part, part) != 0) {
        return -1;
    }
    /* the PUT starts from the loop (adl_upload_run), with the first bytes */
    u->body_len = size;
    u->ring_head = 0;
    u->fill.len = 0;
    u->starved = 0;
    u->starved_ms = 0;
    set_state(u, ADL_UP_STREAMING);
    return 0;
}

size_t
adl_upload_room(const adl_upload_t *u)
{
    size_t  part = u->c.part_size;

    if (u->state == ADL_UP_STREAMING) {
        return u->closed ? 0 : u->fill.cap - u->fill.len;
    }
    if (u->state != ADL_UP_FILLING) {
        return 0;
    }
    if (up_free(u)) {
        return SIZE_MAX;            /* a full part goes to the other buffer */
    }
    return u->fill.len + 1 < part ? part - 1 - u->fill.len : 0;
}

int
adl_upload_takes(adl_upload_t *u, size_t n)
{
    if (adl_upload_room(u) >= n) {
        return 1;
    }
    u->room_wanted = 1;
    return 0;
}

int
adl_upload_wants(const adl_upload_t *u)
{
    return u->state == ADL_UP_FILLING && u->fill.len < u->c.part_size;
}

/* The whole part at the head of fill goes to up (free): fill keeps what
 * is past it.  -1 when out of memory, nothing changed. */
static int
cut(adl_upload_t *u)
{
    size_t  part = u->c.part_size, tail = u->fill.len - part;

    if (tail > 0 && adl_buf_reserve(&u->up, tail, tail > part ? tail : part) != 0)
    {
        return -1;
    }
    if (tail > 0) {
        memcpy(u->up.data, u->fill.data + part, tail);
    }
    adl_buf_swap(&u->fill, &u->up);
    u->up.len = part;
    u->fill.len = tail;
    u->up_part = u->next_part++;
    u->up_gen = u->gen;
    *u->c.wake = 1;
    return 0;
}

static int
ring_write(adl_upload_t *u, const char *p, size_t n)
{
    size_t  cap = u->fill.cap, tail, first;

    if (cap - u->fill.len < n) {
        return -1;
    }
    tail = (u->ring_head + u->fill.len) % cap;
    first = cap - tail < n ? cap - tail : n;
    memcpy(u->fill.data + tail, p, first);
    memcpy(u->fill.data, p + first, n - first);
    u->fill.len += n;
    u->written += (int64_t) n;
    if (u->starved && u->fill.len >= ADL_UPLOAD_KICK) {
        *u->c.wake = 1;             /* unpaused from the loop */
    }
    return 0;
}

int
adl_upload_write(adl_upload_t *u, const void *data, size_t n)
{
    const char  *p = data;
    size_t       part = u->c.part_size, first, rest, need;

    if (u->closed || !taking(u)) {
        return -1;
    }
    if (u->state == ADL_UP_STREAMING) {
        return ring_write(u, p, n);
    }

    if (up_free(u) && u->fill.len < part && u->fill.len + n >= part) {
        /* it completes a part: room first, in this buffer and the other
         * one (the next part), so a failure changes nothing */
        first = part - u->fill.len;
        rest = n - first;
        if (adl_buf_reserve(&u->fill, part, part) != 0
            || adl_buf_reserve(&u->up, rest, rest > part ? rest : part) != 0)
        {
            return -1;
        }
        memcpy(u->fill.data + u->fill.len, p, first);
        adl_buf_swap(&u->fill, &u->up);
        u->up.len = part;
        if (rest > 0) {
            memcpy(u->fill.data, p + first, rest);
        }
        u->fill.len = rest;
        u->up_part = u->next_part++;
        u->up_gen = u->gen;
        u->written += (int64_t) n;
        *u->c.wake = 1;             /* sent from the loop */
        return 0;
    }

    /* past a part only while the part before is under way (a producer
     * that cannot pause); cut when that one is done */
    need = u->fill.len + n;
    if (adl_buf_reserve(&u->fill, need, need <= part ? part : SIZE_MAX) != 0) {
        return -1;
    }
    memcpy(u->fill.data + u->fill.len, p, n);
    u->fill.len = need;
    u->written += (int64_t) n;
    return 0;
}

void
adl_upload_close(adl_upload_t *u)
{
    if (u->closed || !taking(u)) {
        return;
    }
    u->closed = 1;
    if (u->state == ADL_UP_FILLING) {
        set_state(u, ADL_UP_CLOSING);
        return;
    }
    *u->c.wake = 1;                 /* a starved PUT gets the last bytes */
}

void
adl_upload_restart(adl_upload_t *u)
{
    if (u->state != ADL_UP_FILLING && u->state != ADL_UP_STREAMING
        && u->state != ADL_UP_REWIND)
    {
        return;                     /* closed: a PUT may be sending fill */
    }
    u->gen++;
    u->written = 0;
    u->closed = 0;
    u->fill.len = 0;
    u->ring_head = 0;
    u->starved = 0;
    u->starved_ms = 0;
    u->body_len = 0;
    u->room_wanted = 0;
    if (!u->up_busy) {
        u->up.len = 0;              /* not sent: dropped */
        u->up_part = 0;
    }                               /* else dropped when it answers */
    u->next_part = 1;
    u->stored_parts = 0;
    u->retry_at = 0;                /* tries go on counting: the backoff
                                     * grows across restarts */
    /* a streamed PUT of the old data under way is cancelled by run() */
    set_state(u, ADL_UP_FILLING);
}


/* --- the streamed PUT ----------------------------------------------------- */

/* libcurl's read callback: the PUT's body, taken from the ring */
static size_t
stream_read(char *buf, size_t size, size_t nmemb, void *userp)
{
    adl_upload_t  *u = userp;
    size_t         want = size * nmemb, n, first, cap = u->fill.cap;

    if (u->fill.len == 0 || u->req_gen != u->gen) {
        u->starved = 1;
        u->starve_since = adl_now_ms();
        return CURL_READFUNC_PAUSE;
    }
    n = want < u->fill.len ? want : u->fill.len;
    first = cap - u->ring_head < n ? cap - u->ring_head : n;
    memcpy(buf, u->fill.data + u->ring_head, first);
    memcpy(buf + first, u->fill.data, n - first);
    u->ring_head = (u->ring_head + n) % cap;
    u->fill.len -= n;
    u->taken_at = adl_now_ms();
    if (u->room_wanted && cap - u->fill.len >= ADL_UPLOAD_KICK) {
        u->room_wanted = 0;
        *u->c.wake = 1;             /* the writer is unpaused from the loop */
    }
    return n;
}

/* The streamed PUT failed (or could not start): what was sent is gone.
 * The owner starts the data again after rewind_in ms (-1: it gives up).
 * A stream that waited long for its data goes by parts then: a slow
 * source does not hold a storage connection open again. */
static void
stream_failed(adl_upload_t *u, int64_t now)
{
    u->rewind_in = adl_retry_next(&u->c.retry, &u->tries, u->transient,
                                  u->req.retry_after, now);
    if (u->starved) {
        u->starved_ms += now - u->starve_since;  /* that wait counts too */
        u->starved = 0;
    }
    if (u->starved_ms > STREAM_STARVE_MAX) {
        u->no_stream = 1;
    }
    set_state(u, ADL_UP_REWIND);
}

static void request_done(adl_s3_req_t *r);

static void
stream_start(adl_upload_t *u, int64_t now)
{
    adl_s3_req_t  *r = &u->req;

    r->op = S3_PUT;
    r->key = u->c.key;
    r->upload_id = NULL;
    r->content_type = u->c.content_type;
    r->part_number = 0;
    r->body = NULL;
    r->body_len = (size_t) u->body_len;
    r->read = stream_read;
    r->read_data = u;
    r->no_speed_check = 1;          /* judged by watchdog() */
    r->done = request_done;
    r->data = u;
    u->req_gen = u->gen;
    u->req_stream = 1;
    u->taken_at = now;
    u->starved = 0;
    u->final_sent = 1;
    if (adl_s3_start(u->c.s3, r) != 0) {
        r->op = S3_NONE;
        snprintf(u->error, sizeof(u->error), "%s", r->error);
        u->transient = 1;
        r->retry_after[0] = '\0';
        stream_failed(u, now);
    }
    r->read = NULL;                 /* kept by curl; not for later requests */
    r->no_speed_check = 0;
}

/*
 * The streamed PUT has no low-speed check of libcurl's: it waits for its
 * data whenever the source is slower than the storage, and libcurl (7.88)
 * counts a paused send as a stalled one.  Judged here instead: while it
 * has data to take (or has taken all of it and waits for the answer),
 * nothing taken and no answer for the idle time is a stalled storage; the
 * time it waits for data is the source's, whose own checks cover it.
 */
static void
watchdog(adl_upload_t *u, int64_t now)
{
    adl_s3_req_t  *r = &u->req;
    int64_t        idle = now - u->taken_at;

    if (r->op != S3_PUT || !u->req_stream || u->answered
        || u->req_gen != u->gen || idle < u->c.idle_ms)
    {
        return;
    }
    if (u->state == ADL_UP_SETTLING) {
        /* it has every byte and may store the object: given up, the
         * owner's orphan check decides */
        ULOG(ADL_LOG_WARN, u, "%s: PutObject did not answer for %lld ms "
             "after the end: given up", u->c.log_what, (long long) idle);
        adl_s3_cancel(u->c.s3, r);
        r->op = S3_NONE;
        u->maybe_stored = 1;
        set_state(u, ADL_UP_STOPPED);
        return;
    }
    if (u->state != ADL_UP_STREAMING || u->starved) {
        return;
    }
    ULOG(ADL_LOG_INFO, u, "%s: PutObject took nothing and did not answer "
         "for %lld ms (%lld bytes downloaded, %zu waiting)", u->c.log_what,
         (long long) idle, (long long) u->written, u->fill.len);
    if (u->written >= u->body_len && u->fill.len == 0) {
        u->maybe_stored = 1;        /* all sent: it may store it yet */
    }
    adl_s3_cancel(u->c.s3, r);
    r->op = S3_NONE;
    r->retry_after[0] = '\0';
    u->transient = 1;
    snprintf(u->error, sizeof(u->error), "PutObject: no progress for %lld "
             "ms", (long long) idle);
    stream_failed(u, now);
}

/* A PUT that waited for data gets it (the last bytes, or enough). */
static void
unstarve(adl_upload_t *u, int64_t now)
{
    if (u->req.op != S3_PUT || !u->req_stream || !u->starved
        || u->req_gen != u->gen
        || u->fill.len == 0
        || (u->fill.len < ADL_UPLOAD_KICK && !u->closed))
    {
        return;
    }
    u->starved = 0;
    u->starved_ms += now - u->starve_since;
    u->taken_at = now;
    adl_http_unpause(&u->req.http);     /* may take data at once */
}


/* --- requests ------------------------------------------------------------- */

/* libcurl is done with the request (after curl_multi_socket_action
 * returned): recorded, read by run() */
static void
request_done(adl_s3_req_t *r)
{
    adl_upload_t  *u = r->data;

    u->answered = 1;
    *u->c.wake = 1;
}

/* The same step again after a backoff, within the retry policy; else
 * FAILED.  u->error and u->transient say what failed. */
static void
later(adl_upload_t *u, const char *retry_after, int64_t now)
{
    int64_t  delay;

    if (u->stopped) {
        return;                     /* read by stop(): nothing is retried */
    }
    delay = adl_retry_next(&u->c.retry, &u->tries, u->transient,
                           retry_after, now);
    if (delay >= 0) {
        ULOG(ADL_LOG_WARN, u, "%s: %s; retrying in %lld ms", u->c.log_what,
             u->error, (long long) delay);
        u->retry_at = now + delay;
        return;
    }
    set_state(u, ADL_UP_FAILED);
}

static void
oom(adl_upload_t *u, int64_t now)
{
    snprintf(u->error, sizeof(u->error), "out of memory");
    u->transient = 1;
    later(u, NULL, now);
}

/* Starts a request; 0, or -1 when it could not start (u->error). */
static int
start(adl_upload_t *u, adl_s3_op_t op, const char *body, size_t len)
{
    adl_s3_req_t  *r = &u->req;

    r->op = op;
    r->key = u->c.key;
    r->upload_id = u->upload_id;
    r->content_type = u->c.content_type;
    r->part_number = op == S3_PART ? u->up_part : 0;
    r->body = body;
    r->body_len = len;
    r->read = NULL;
    r->done = request_done;
    r->data = u;
    u->req_gen = op == S3_PART ? u->up_gen : u->gen;
    u->req_stream = 0;
    if (op == S3_PUT || op == S3_COMPLETE) {
        u->final_sent = 1;          /* from now on, maybe in the bucket */
    }
    if (adl_s3_start(u->c.s3, r) != 0) {
        r->op = S3_NONE;
        snprintf(u->error, sizeof(u->error), "%s", r->error);
        u->transient = 1;
        return -1;
    }
    if (op == S3_PART) {
        u->up_busy = 1;
    }
    return 0;
}

/* What comes next, when nothing is under way or waiting for a retry. */
static void
next_request(adl_upload_t *u)
{
    int64_t  now = adl_now_ms();
    int      rc;

    if (u->req.op != S3_NONE || u->answered || u->retry_at != 0) {
        return;
    }
    if (u->state == ADL_UP_STREAMING) {
        stream_start(u, now);
        return;
    }
    if (u->state != ADL_UP_FILLING && u->state != ADL_UP_CLOSING) {
        return;
    }

    if (u->fill.len >= u->c.part_size && up_free(u) && cut(u) != 0) {
        oom(u, now);
        return;
    }
    if (u->up.len > 0 && !u->up_busy) {
        rc = u->upload_id == NULL ? start(u, S3_CREATE, NULL, 0)
                                  : start(u, S3_PART, u->up.data, u->up.len);
        if (rc != 0) {
            later(u, NULL, now);
        }
        return;
    }
    if (u->state != ADL_UP_CLOSING || u->up_busy) {
        return;
    }

    if (u->upload_id == NULL) {
        rc = start(u, S3_PUT, u->fill.data, u->fill.len);
    } else if (u->fill.len > 0 || u->next_part == 1) {
        /* the last part (an empty part 1: the data started over, and
         * came to nothing, after the upload was created) */
        adl_buf_swap(&u->fill, &u->up);
        u->fill.len = 0;
        u->up_part = u->next_part++;
        u->up_gen = u->gen;
        rc = start(u, S3_PART, u->up.data, u->up.len);
    } else if (adl_parts_xml(&u->parts, u->next_part - 1, &u->xml) != 0) {
        /* its own buffer: a failed Complete is sent again as it was */
        oom(u, now);
        return;
    } else {
        rc = start(u, S3_COMPLETE, u->xml.data, u->xml.len);
    }
    if (rc != 0) {
        later(u, NULL, now);
    }
}

/* The part under way was stored (an answer of this generation): its ETag
 * is kept; -1 when out of memory (nothing changed). */
static int
part_stored(adl_upload_t *u)
{
    if (adl_parts_set(&u->parts, u->up_part, u->req.etag) != 0) {
        return -1;
    }
    if (u->up_part == u->stored_parts + 1) {
        u->stored_parts = u->up_part;
    }
    u->up.len = 0;
    u->up_part = 0;
    return 0;
}

/* The end, once nothing that may store the object is under way. */
static void
after_stop(adl_upload_t *u)
{
    if (u->state == ADL_UP_STORED) {
        return;
    }
    if (u->upload_id == NULL || u->keep) {
        set_state(u, ADL_UP_STOPPED);
        return;
    }
    if (start(u, S3_ABORT, NULL, 0) != 0) {
        ULOG(ADL_LOG_WARN, u, "%s: could not abort the multipart upload "
             "%s: %s", u->c.log_what, u->upload_id, u->error);
        set_state(u, ADL_UP_STOPPED);
        return;
    }
    set_state(u, ADL_UP_ABORTING);
}

/* An answer while stopping: what the end needs to know of it. */
static void
answered_stopping(adl_upload_t *u, adl_s3_op_t op)
{
    adl_s3_req_t  *r = &u->req;

    if (u->state == ADL_UP_ABORTING) {
        u->abort_done = 1;
        if (!r->ok) {
            ULOG(ADL_LOG_WARN, u, "%s: could not abort the multipart "
                 "upload %s: %s", u->c.log_what, u->upload_id, r->error);
        }
        set_state(u, ADL_UP_STOPPED);
        return;
    }
    switch (op) {
    case S3_CREATE:
        if (r->ok && u->upload_id == NULL) {
            u->upload_id = strdup(r->new_upload_id);
            if (u->upload_id == NULL) {
                ULOG(ADL_LOG_WARN, u, "out of memory: multipart upload %s "
                     "left unaborted", r->new_upload_id);
            }
        }
        break;
    case S3_PART:
        /* kept: a part of this data that answered is stored */
        if (r->ok && u->keep && u->req_gen == u->gen) {
            part_stored(u);
        }
        break;
    case S3_PUT:
    case S3_COMPLETE:
        /* stored, or no answer at all: the object may exist */
        if (r->ok || (r->status == 0 && r->reached)) {
            u->maybe_stored = 1;
        }
        if (r->ok) {
            set_state(u, ADL_UP_STORED);
            return;
        }
        break;
    default:
        break;
    }
    after_stop(u);
}

static void
answered(adl_upload_t *u, int64_t now)
{
    adl_s3_req_t  *r = &u->req;
    adl_s3_op_t    op = r->op;
    int            current = u->req_gen == u->gen;

    r->op = S3_NONE;
    if (op == S3_PART) {
        u->up_busy = 0;
    }
    if (u->state == ADL_UP_SETTLING || u->state == ADL_UP_ABORTING) {
        answered_stopping(u, op);
        return;
    }
    if (u->state != ADL_UP_FILLING && u->state != ADL_UP_STREAMING
        && u->state != ADL_UP_CLOSING)
    {
        return;
    }
    if (!current && (op == S3_PART || op == S3_PUT)) {
        /* of the data before a restart: dropped, and its number (a part)
         * is the new data's */
        if (!r->ok) {
            ULOG(ADL_LOG_INFO, u, "%s: %s; of the data before a restart: "
                 "dropped", u->c.log_what, r->error);
        }
        if (op == S3_PART) {
            u->up.len = 0;
            u->up_part = 0;
        }
        *u->c.wake = 1;
        return;
    }

    snprintf(u->error, sizeof(u->error), "%s", r->error);
    u->transient = r->transient;
    if (!r->ok && (op == S3_PUT || op == S3_COMPLETE) && r->reached
        && (r->status == 0 || r->status >= 500))
    {
        u->maybe_stored = 1;        /* it may have been stored all the same */
    }
    if (!r->ok && u->req_stream) {
        stream_failed(u, now);
        return;
    }
    if (!r->ok) {
        if ((op == S3_PART || op == S3_COMPLETE) && r->status == 404) {
            u->gone = 1;            /* NoSuchUpload: not transient */
        }
        later(u, r->retry_after, now);      /* the same step again */
        return;
    }
    u->tries = 0;

    switch (op) {
    case S3_CREATE:
        u->upload_id = strdup(r->new_upload_id);
        if (u->upload_id == NULL) {
            ULOG(ADL_LOG_WARN, u, "out of memory: multipart upload %s left "
                 "unaborted", r->new_upload_id);
            oom(u, now);            /* a new upload then */
            return;
        }
        break;
    case S3_PART:
        if (part_stored(u) != 0) {
            oom(u, now);            /* the same part again */
            return;
        }
        break;
    case S3_PUT:
    case S3_COMPLETE:
        /* a streamed PUT can answer before its writer has closed: it had
         * every byte all the same */
        u->maybe_stored = 1;
        set_state(u, ADL_UP_STORED);
        return;
    default:
        break;
    }
    *u->c.wake = 1;                 /* room for the writer, maybe */
}

void
adl_upload_run(adl_upload_t *u, int64_t now)
{
    if (u->answered) {
        u->answered = 0;
        answered(u, now);
    }
    if (u->req.op == S3_PUT && u->req_stream && u->req_gen != u->gen) {
        /* a streamed PUT of the data before a restart */
        adl_s3_cancel(u->c.s3, &u->req);
        u->req.op = S3_NONE;
    }
    unstarve(u, now);
    watchdog(u, now);
    keep_due(u, now);
    if (u->retry_at != 0 && now >= u->retry_at) {
        u->retry_at = 0;
    }
    next_request(u);
}

void
adl_upload_stop(adl_upload_t *u, int settle)
{
    adl_s3_req_t  *r = &u->req;
    int            settles = 0;

    if (u->state == ADL_UP_SETTLING || u->state == ADL_UP_ABORTING
        || u->state == ADL_UP_STOPPED)
    {
        return;
    }
    u->retry_at = 0;
    u->closed = 1;                  /* takes no more */
    u->stopped = 1;
    if (u->answered) {
        u->answered = 0;
        answered(u, adl_now_ms());  /* what it did counts */
        if (u->state == ADL_UP_STORED) {
            return;
        }
    }
    if (u->state == ADL_UP_STORED) {
        return;
    }
    if (r->op != S3_NONE) {
        switch (r->op) {
        case S3_CREATE:
        case S3_COMPLETE:
            settles = 1;
            break;
        case S3_PART:
            /* kept, waiting for it: its ETag counts */
            settles = u->keep && u->keep_wait > 0;
            break;
        case S3_PUT:
            /* a streamed PUT can store the object only once it has all
             * of it */
            settles = !u->req_stream
                      || (u->req_gen == u->gen && u->written >= u->body_len);
            break;
        default:
            break;
        }
        if (settle && settles) {
            ULOG(ADL_LOG_DEBUG, u, "waiting for the storage request under "
                 "way to answer");
            u->taken_at = adl_now_ms();
            set_state(u, ADL_UP_SETTLING);
            return;                 /* a starved PUT gets its last bytes
                                     * from run() */
        }
        adl_s3_cancel(u->c.s3, r);
        r->op = S3_NONE;
    }
    u->up_busy = 0;
    after_stop(u);
}
