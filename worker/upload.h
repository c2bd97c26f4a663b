/*
 * upload: one object into the storage, written once for the transfers (a
 * downloaded file) and the bundles (a zip).
 *
 *   FILLING --a part is full--> CreateMultipartUpload, then the parts one
 *      |                        at a time, while the next one fills
 *      |--close--> CLOSING: the last part and Complete, or one PUT
 *      |           when it all fits in a part ------------> STORED
 *      \--expect(part < size <= 5 GiB)--> STREAMING: one PUT fed as
 *                  the data comes --2xx--> STORED
 *                                 --failed--> REWIND (the owner starts
 *                                 the data again: restart -> FILLING)
 *   a request failed, tries used up (or not transient) --> FAILED
 *   any --stop--> SETTLING (a PUT, Complete or Create under way answers
 *                 first, when the owner lets it) --> ABORTING --> STOPPED
 *                 (or STORED, when what settled stored the object)
 *   any --keep--> as stop, but a part under way answers first too and the
 *                 multipart upload is not aborted: STOPPED with its
 *                 upload id and the parts stored, for another process to
 *                 go on with (resume(): a paused file)
 *
 * The state changes only in set_state().  Nothing here starts, stops or
 * unpauses a request inside a libcurl callback: write(), close(),
 * restart() and the request's callbacks only record and set *wake; the
 * owner then calls adl_upload_run() from the loop, which reads the
 * answer, starts the next request, retries when due, unpauses a PUT that
 * waited for data and judges the streamed PUT's progress.
 *
 * Parts are cut at exactly part_size, numbered when cut and tagged with
 * the generation of the data: restart() starts a new one, and an answer
 * for an older one is dropped (its ETag is not kept, its failure not
 * retried), so a part number is never taken back.
 */
#ifndef ADL_UPLOAD_H
#define ADL_UPLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "backoff.h"
#include "parts.h"
#include "s3.h"

/* Room that unpauses a writer paused for want of it, and data that
 * unpauses a streamed PUT that waited for it. */
#define ADL_UPLOAD_KICK   (128 * 1024)

typedef enum {
    ADL_UP_FILLING = 0,
    ADL_UP_STREAMING,
    ADL_UP_CLOSING,
    ADL_UP_STORED,
    ADL_UP_REWIND,
    ADL_UP_FAILED,
    ADL_UP_SETTLING,
    ADL_UP_ABORTING,
    ADL_UP_STOPPED
} adl_upload_state_t;

typedef struct {
    adl_s3_t            *s3;
    const char          *key;
    const char          *content_type;  /* read when a request starts */
    size_t               part_size;
    int64_t              idle_ms;       /* the streamed PUT's watchdog */
    adl_retry_t          retry;         /* each request's tries */
    const char          *log_job;
    int                  log_idx;       /* -1: none */
    const char          *log_what;      /* "storage", "bundle: storage" */
    int                 *wake;          /* set: call adl_upload_run soon */
} adl_upload_conf_t;

typedef struct {
    adl_upload_conf_t    c;
    adl_upload_state_t   state;

    adl_s3_req_t         req;           /* one request at a time */
    int                  answered;      /* req's done() came, unread */
    int                  req_gen;       /* the data generation req carries */
    int                  req_stream;    /* req is the streamed PUT */
    int                  tries;         /* of the step, in a row */
    int64_t              retry_at;      /* the step again then; 0: none */

    int                  gen;           /* of the data: restart() bumps it */
    int64_t              written;       /* bytes of this generation */
    int                  closed;        /* all of them written */
    adl_buf_t            fill;          /* being written; the stream's ring */
    adl_buf_t            up;            /* a whole part, to send or sent */
    int                  up_part;       /* its number, 0: none */
    int                  up_gen;
    int                  up_busy;       /* under way */
    adl_buf_t            xml;           /* Complete's body, kept for retries */
    char                *upload_id;
    int                  next_part;
    adl_parts_t          parts;
    int                  room_wanted;   /* wake the owner for room */
    int                  stopped;       /* stop() was called */
    int                  keep;          /* ...by keep(): not aborted */
    int64_t              keep_wait;     /* ...once its part has answered,
                                           waiting that long at most (ms;
                                           0: it does not wait) */
    int64_t              keep_until;    /* ...that is, until then */
    int                  stored_parts;  /* of this generation, from 1 */

    /* the streamed PUT */
    int64_t              body_len;
    size_t               ring_head;
    int                  starved;       /* paused for want of data */
    int64_t              starve_since;
    int64_t              starved_ms;    /* in all, this PUT */
    int64_t              taken_at;      /* took data or was unpaused */
    int                  no_stream;     /* a stream starved long and failed:
                                         * parts from now on */

    /* out */
    char                 error[512];
    int                  transient;
    int64_t              rewind_in;     /* REWIND: ms, or -1: give up */
    int                  final_sent;    /* a PUT or Complete was sent */
    int                  maybe_stored;  /* ...and stored, or not answered */
    int                  abort_done;
    int                  gone;          /* the storage knows the upload no
                                         * more (404 NoSuchUpload) */
} adl_upload_t;

void adl_upload_init(adl_upload_t *u, const adl_upload_conf_t *c);

/* Cancels what is under way; warns of a multipart upload left behind. */
void adl_upload_free(adl_upload_t *u);

/* The data's size, when it is announced (-1: not), before the first
 * write: a buffer of its size when it fits in a part; the streamed PUT
 * when it is above a part and at most 5 GiB (and no stream starved and
 * failed before).  Starts nothing.  -1: out of memory. */
int adl_upload_expect(adl_upload_t *u, int64_t size);

/* What write() takes at once (0 when the upload takes no data). */
size_t adl_upload_room(const adl_upload_t *u);

/* Whether write() takes n bytes now; if not, the owner is woken once
 * adl_upload_room() reaches ADL_UPLOAD_KICK. */
int adl_upload_takes(adl_upload_t *u, size_t n);

/* A part's worth is not yet buffered: the owner may produce more (a
 * producer that cannot pause writes past a part while one is under
 * way). */
int adl_upload_wants(const adl_upload_t *u);

/* All n bytes, or none: -1 when out of memory or not taking data. */
int adl_upload_write(adl_upload_t *u, const void *p, size_t n);

/* All data is written. */
void adl_upload_close(adl_upload_t *u);

/* The data again from byte 0 (after REWIND, or when the source started
 * over): a new generation. */
void adl_upload_restart(adl_upload_t *u);

/* From the loop only. */
void adl_upload_run(adl_upload_t *u, int64_t now);

/* The owner ends: what is under way is cancelled (settle: a request that
 * may store the object, or create an upload, answers first), then an
 * unfinished multipart upload is aborted.  From the loop only. */
void adl_upload_stop(adl_upload_t *u, int settle);

/* As stop(u, 1), but the multipart upload is kept with the parts it
 * stored: a part under way answers first, for wait_ms at most (run()
 * cancels it then), or is cancelled at once (wait_ms 0).  STOPPED, then
 * upload_id and stored_parts say what there is (or STORED).  A FAILED
 * upload is not kept (aborted, keep 0).  From the loop only. */
void adl_upload_keep(adl_upload_t *u, int64_t wait_ms);

/* A keep waiting for its part under way waits no longer (the worker is
 * stopping): that part is cancelled, the parts before it kept.  From the
 * loop only. */
void adl_upload_keep_now(adl_upload_t *u);

/* A kept upload nobody will record after all: aborted (ABORTING, then
 * STOPPED).  From the loop only. */
void adl_upload_drop_kept(adl_upload_t *u);

/* A FAILED upload the storage no longer knows (u->gone): forgotten, for a
 * new one from byte 0 (FILLING, as after init). */
void adl_upload_forget(adl_upload_t *u);

/* Before the first write: go on with the multipart upload upload_id,
 * whose parts 1..n (etags) hold the data's first n x part_size bytes; the
 * next write is the byte after them.  -1: out of memory. */
int adl_upload_resume(adl_upload_t *u, const char *upload_id,
    const char *const *etags, int n);

adl_upload_state_t adl_upload_state(const adl_upload_t *u);

/* No request under way. */
int adl_upload_idle(const adl_upload_t *u);

#endif /* ADL_UPLOAD_H */
