/*
 * transfer: one claimed file, from its claim to the database write of its
 * result: download with libcurl (retries, Range resume, limits, SSRF
 * checks), SHA-256 on the way, upload to S3 alongside (one PUT when the
 * whole file fits in a part, else multipart), lease renewal and progress.
 *
 * Memory: at most two part buffers per transfer (one filling from the
 * origin, one uploading); when both are busy the download is paused.
 *
 * Its owner (files.c) holds the list of transfers and the jobs they
 * belong to.  A transfer never calls its owner: it sets *wake, from
 * anywhere (libcurl and database callbacks included), and the owner then
 * calls adl_xfer_settle() from the loop.
 */
#ifndef ADL_TRANSFER_H
#define ADL_TRANSFER_H

#include <stdint.h>

#include "task.h"

/* A job with at least one of its files transferred here (files.c's). */
typedef struct adl_job_s  adl_job_t;

struct adl_job_s {
    adl_job_t  *next;
    char        id[40];
    char        traceparent[64]; /* W3C trace context, or "" */
    int64_t     deadline;        /* adl_now_ms() clock */
    int         refs;            /* transfers */
    int64_t     last_progress;   /* throttles its progress writes */
};

typedef struct adl_xfer_s  adl_xfer_t;

typedef struct {
    const char  *job_id;
    int          idx;
    const char  *url;
    int          attempts;      /* transfers started, this claim included */
    const char  *lease;         /* this claim's lease token */
    const char  *key;           /* the object key, recorded by the claim */
    int64_t      claimed_at;    /* adl_now_ms() when the claim was sent */
    const char  *traceparent;   /* the job's, or "" */
    const char  *resume;        /* a paused file's stored parts (JSON,
                                   checkpoint.h), or NULL */
} adl_claim_t;

/* Starts a claimed file; NULL on allocation failure (the file is then
 * left to its lease).  While the worker is stopping, the file is handed
 * back at once instead (its claim not counted as an attempt). */
adl_xfer_t *adl_xfer_start(adl_env_t *env, int *wake, adl_job_t *job,
    const adl_claim_t *c);

/* Every tick: deadline, retries, progress and lease renewal. */
void adl_xfer_tick(adl_xfer_t *x, int64_t now);

/* From the loop only, outside every libcurl callback, after *wake was
 * set: closes the transfer if it ended, unpauses the side that has room
 * or data.  1 when the transfer is done: adl_xfer_free() it. */
int adl_xfer_settle(adl_xfer_t *x);

/* The job was canceled or deleted: stop, write nothing. */
void adl_xfer_cancel(adl_xfer_t *x);

/* Claimed again by this worker: the lease ran out; stop, write nothing. */
void adl_xfer_lease_lost(adl_xfer_t *x);

/* Shutting down, or the job was paused: stop and hand the file back
 * (pending), the attempt under way not counted, keeping the parts a
 * multipart upload stored for the worker that takes it up; why: for the
 * log. */
void adl_xfer_hand_back(adl_xfer_t *x, const char *why);

/* The job was paused: hand the file back as above, unless all of it was
 * downloaded (its upload is finishing: it ends as usual).  1: stopped. */
int adl_xfer_pause(adl_xfer_t *x);

/* The worker's grace is over: handed back if still active; a hand-back
 * waiting for the part under way (a pause) waits no longer. */
void adl_xfer_shutdown(adl_xfer_t *x);

/* Frees it, whatever its state (done, or at exit). */
void adl_xfer_free(adl_xfer_t *x);

/* Its result was written (answered by the database). */
int adl_xfer_recorded(const adl_xfer_t *x);

adl_job_t *adl_xfer_job(const adl_xfer_t *x);
int adl_xfer_idx(const adl_xfer_t *x);
int adl_xfer_active(const adl_xfer_t *x);   /* not ending already */

#endif /* ADL_TRANSFER_H */
