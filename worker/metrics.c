/*
 * metrics: the worker's counters and their exposition text (metrics.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

/* seconds; the last bucket, +Inf, is the count */
static const double  bounds[ADL_M_BUCKETS - 1] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5
};
/* a pickup waits for a queue: milliseconds to minutes */
static const double  long_bounds[ADL_M_BUCKETS - 1] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300
};

adl_metrics_t  adl_metrics = {
    .claim_seconds = { .bounds = bounds },
    .pickup_seconds = { .bounds = long_bounds },
};

static const char  *outcome_names[ADL_M_OUTCOMES] = {
    "completed", "failed", "handed_back", "dropped", "retried"
};

static const char  *kind_names[ADL_M_KINDS] = {
    "files", "bundles", "callbacks"
};

void
adl_metric_observe(adl_histogram_t *h, double seconds)
{
    int  i;

    for (i = 0; i < ADL_M_BUCKETS - 1; i++) {
        if (seconds <= h->bounds[i]) {
            h->buckets[i]++;
        }
    }
    h->buckets[ADL_M_BUCKETS - 1]++;
    h->count++;
    h->sum += seconds;
}

void
adl_metric_retry(const char *reason)
{
    int  i;

    if (reason == NULL || reason[0] == '\0') {
        reason = "UNKNOWN";
    }
    if (strspn(reason, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
        != strlen(reason) || strlen(reason) >= sizeof(adl_metrics.reason[0]))
    {
        adl_metrics.retries[ADL_M_REASONS]++;   /* "other" */
        return;
    }
    for (i = 0; i < ADL_M_REASONS; i++) {
        if (adl_metrics.reason[i][0] == '\0') {
            snprintf(adl_metrics.reason[i], sizeof(adl_metrics.reason[i]),
                     "%s", reason);
        }
        if (strcmp(adl_metrics.reason[i], reason) == 0) {
            adl_metrics.retries[i]++;
            return;
        }
    }
    adl_metrics.retries[ADL_M_REASONS]++;
}

/* --- the text ------------------------------------------------------------- */

typedef struct {
    char    *p;
    size_t   len;
    size_t   size;
    int      failed;
} text_t;

static void
put(text_t *t, const char *fmt, ...)
{
    va_list  ap;
    int      n;
    char    *np;

    if (t->failed) {
        return;
    }
    for ( ;; ) {
        va_start(ap, fmt);
        n = vsnprintf(t->p + t->len, t->size - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t) n < t->size - t->len) {
            t->len += (size_t) n;
            return;
        }
        np = realloc(t->p, t->size * 2 + (size_t) n);
        if (np == NULL) {
            t->failed = 1;
            return;
        }
        t->p = np;
        t->size = t->size * 2 + (size_t) n;
    }
}

static void
head(text_t *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP async_dl_worker_%s %s\n# TYPE async_dl_worker_%s %s\n",
        name, help, name, type);
}

static void
histogram(text_t *t, const char *name, const char *help,
    const adl_histogram_t *h)
{
    int  i;

    head(t, name, "histogram", help);
    for (i = 0; i < ADL_M_BUCKETS - 1; i++) {
        put(t, "async_dl_worker_%s_bucket{le=\"%g\"} %llu\n", name,
            h->bounds[i], (unsigned long long) h->buckets[i]);
    }
    put(t, "async_dl_worker_%s_bucket{le=\"+Inf\"} %llu\n", name,
        (unsigned long long) h->buckets[ADL_M_BUCKETS - 1]);
    put(t, "async_dl_worker_%s_sum %.6f\n", name, h->sum);
    put(t, "async_dl_worker_%s_count %llu\n", name,
        (unsigned long long) h->count);
}

char *
adl_metrics_text(size_t *len)
{
    const adl_metrics_t  *m = &adl_metrics;
    text_t                t;
    int                   i, k;

    t.size = 8192;
    t.len = 0;
    t.failed = 0;
    t.p = malloc(t.size);
    if (t.p == NULL) {
        return NULL;
    }

    head(&t, "transfers_in_flight", "gauge", "files being transferred");
    put(&t, "async_dl_worker_transfers_in_flight %lld\n",
        (long long) m->transfers);
    head(&t, "download_bytes_total", "counter", "bytes taken from origins");
    put(&t, "async_dl_worker_download_bytes_total %llu\n",
        (unsigned long long) m->download_bytes);
    head(&t, "upload_bytes_total", "counter",
         "bytes stored in the bucket (files and zips)");
    put(&t, "async_dl_worker_upload_bytes_total %llu\n",
        (unsigned long long) m->upload_bytes);

    head(&t, "ended_total", "counter",
         "transfers, zips and callback deliveries that ended, by outcome");
    for (k = 0; k < ADL_M_KINDS; k++) {
        for (i = 0; i < ADL_M_OUTCOMES; i++) {
            if (m->ended[k][i] > 0 || i <= ADL_M_FAILED) {
                put(&t, "async_dl_worker_ended_total{kind=\"%s\","
                    "outcome=\"%s\"} %llu\n", kind_names[k],
                    outcome_names[i], (unsigned long long) m->ended[k][i]);
            }
        }
    }

    head(&t, "retries_total", "counter", "transfer attempts retried, by "
         "the error of the attempt that failed");
    for (i = 0; i < ADL_M_REASONS && m->reason[i][0] != '\0'; i++) {
        put(&t, "async_dl_worker_retries_total{reason=\"%s\"} %llu\n",
            m->reason[i], (unsigned long long) m->retries[i]);
    }
    put(&t, "async_dl_worker_retries_total{reason=\"other\"} %llu\n",
        (unsigned long long) m->retries[ADL_M_REASONS]);

    head(&t, "claims_total", "counter", "claim queries answered, by kind");
    for (k = 0; k < ADL_M_KINDS; k++) {
        put(&t, "async_dl_worker_claims_total{kind=\"%s\"} %llu\n",
            kind_names[k], (unsigned long long) m->claims[k]);
    }
    head(&t, "claimed_total", "counter", "rows the claims took, by kind");
    for (k = 0; k < ADL_M_KINDS; k++) {
        put(&t, "async_dl_worker_claimed_total{kind=\"%s\"} %llu\n",
            kind_names[k], (unsigned long long) m->claimed[k]);
    }
    histogram(&t, "claim_seconds", "a claim's round trip to PostgreSQL",
              &m->claim_seconds);
    histogram(&t, "pickup_seconds", "from a job's creation to the first "
              "claim of one of its files", &m->pickup_seconds);

    head(&t, "storage_errors_total", "counter",
         "storage requests that failed (each try)");
    put(&t, "async_dl_worker_storage_errors_total %llu\n",
        (unsigned long long) m->storage_errors);
    head(&t, "db_reconnects_total", "counter",
         "PostgreSQL connections made again after one was lost");
    put(&t, "async_dl_worker_db_reconnects_total %llu\n",
        (unsigned long long) m->db_reconnects);

    if (t.failed) {
        free(t.p);
        return NULL;
    }
    *len = t.len;
    return t.p;
}
