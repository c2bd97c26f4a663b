/*
 * metrics: the worker's counters, and their text in the Prometheus
 * exposition format (version 0.0.4).  The rest of the worker only adds to
 * them (the process is one thread: plain integers); metrics_server.c
 * serves the text on ASYNC_DL_METRICS_LISTEN.
 */
#ifndef ADL_METRICS_H
#define ADL_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* the outcomes of a transfer, a zip, a callback delivery */
typedef enum {
    ADL_M_COMPLETED = 0,
    ADL_M_FAILED,
    ADL_M_HANDED_BACK,
    ADL_M_DROPPED,                  /* canceled, or no longer ours */
    ADL_M_RETRIED,                  /* a callback to be tried again */
    ADL_M_OUTCOMES
} adl_metric_outcome_t;

typedef enum {
    ADL_M_FILES = 0,
    ADL_M_BUNDLES,
    ADL_M_CALLBACKS,
    ADL_M_KINDS
} adl_metric_kind_t;

#define ADL_M_BUCKETS  12

typedef struct {
    const double  *bounds;              /* ADL_M_BUCKETS - 1 of them */
    uint64_t  buckets[ADL_M_BUCKETS];   /* counts <= each bound */
    uint64_t  count;
    double    sum;                      /* seconds */
} adl_histogram_t;

#define ADL_M_REASONS  16               /* distinct retry reasons kept */

typedef struct {
    int64_t          transfers;         /* in flight: files.c sets it to its
                                           array of transfers */
    uint64_t         download_bytes;    /* taken from origins */
    uint64_t         upload_bytes;      /* stored: files and zips */
    uint64_t         ended[ADL_M_KINDS][ADL_M_OUTCOMES];
    uint64_t         claims[ADL_M_KINDS];       /* claim queries answered */
    uint64_t         claimed[ADL_M_KINDS];      /* rows they took */
    adl_histogram_t  claim_seconds;     /* a claim's round trip */
    adl_histogram_t  pickup_seconds;    /* a job created -> its file claimed */
    uint64_t         storage_errors;    /* storage requests that failed */
    uint64_t         db_reconnects;
    char             reason[ADL_M_REASONS][32];
    uint64_t         retries[ADL_M_REASONS + 1];    /* the last: "other" */
} adl_metrics_t;

extern adl_metrics_t  adl_metrics;

void adl_metric_observe(adl_histogram_t *h, double seconds);

/* a transfer's retry, by its error code */
void adl_metric_retry(const char *reason);

/* The exposition text, malloc()ed (*len its length); NULL out of memory. */
char *adl_metrics_text(size_t *len);

#endif /* ADL_METRICS_H */
