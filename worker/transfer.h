/*
 * transfer: one claimed file, from its claim to the database write of its
 * result: download with libcurl (retries, Range resume, limits, SSRF
 * checks), SHA-256 on the way, upload to S3 alongside (one PUT when the
 * whole file fits in a part, else multipart), lease renewal and progress.
 *
 * Memory: at most two part buffers per transfer (one filling from the
 * origin, one uploading); when both are busy the download is paused.
 */
#ifndef ADL_TRANSFER_H
#define ADL_TRANSFER_H

#include <stdint.h>

#include "worker.h"

typedef struct {
    const char  *job_id;
    int          idx;
    const char  *url;
    int          attempts;      /* transfers started, this claim included */
    const char  *lease;         /* this claim's lease token */
    const char  *key;           /* the object key, recorded by the claim */
    int64_t      claimed_at;    /* adl_now_ms() when the claim was sent */
} adl_claim_t;

/* Starts a claimed file; NULL on allocation failure (the file is then
 * left to its lease).  While the worker is stopping, the file is handed
 * back at once instead (its claim not counted as an attempt). */
adl_xfer_t *adl_xfer_start(adl_worker_t *w, adl_job_t *job,
    const adl_claim_t *c);

/* Every tick: deadline, retries, progress and lease renewal. */
void adl_xfer_tick(adl_xfer_t *x, int64_t now);

/* Unpauses the transfers whose other side made room or data. */
void adl_xfer_kick(adl_worker_t *w);

/* The job was canceled or deleted: stop, write nothing. */
void adl_xfer_cancel(adl_xfer_t *x);

/* Claimed again by this worker: the lease ran out; stop, write nothing. */
void adl_xfer_lease_lost(adl_xfer_t *x);

/* Shutting down: stop and hand the file back (pending). */
void adl_xfer_hand_back(adl_xfer_t *x);

/* Closes the transfers that ended (w->ending): from the loop, outside
 * every libcurl callback. */
void adl_xfer_process_ends(adl_worker_t *w);

/* Frees the transfers that are done (called by the loop between events). */
void adl_xfer_reap(adl_worker_t *w);

/* Transfers whose result has not been written (yet). */
int adl_xfer_unrecorded(const adl_worker_t *w);

/* At exit: frees every transfer, whatever its state. */
void adl_xfer_free_all(adl_worker_t *w);

/* Job the transfer belongs to, and the list link (worker.c). */
adl_job_t *adl_xfer_job(const adl_xfer_t *x);
int adl_xfer_idx(const adl_xfer_t *x);
adl_xfer_t *adl_xfer_next(const adl_xfer_t *x);
int adl_xfer_active(const adl_xfer_t *x);   /* not ending already */

#endif /* ADL_TRANSFER_H */
