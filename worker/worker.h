/*
 * worker: the daemon's global state and event loop (worker.c), shared
 * with the transfers (transfer.c) it owns.
 *
 * One process, one thread, one epoll loop: signals (signalfd), a tick
 * timer (timerfd), the PostgreSQL connection (db.c) and two libcurl multi
 * handles (http.c: origin and storage, each with its own timerfd).
 */
#ifndef ADL_WORKER_H
#define ADL_WORKER_H

#include <stdint.h>

#include "db.h"
#include "http.h"
#include "s3.h"
#include "settings.h"

/* epoll tags (data.u64 >> 32); curl sockets carry their fd below */
#define ADL_TAG_SIGNAL   1
#define ADL_TAG_TICK     2
#define ADL_TAG_DB       3
#define ADL_TAG_ORIGIN   4      /* 4: sockets, 5: timer */
#define ADL_TAG_STORAGE  6      /* 6: sockets, 7: timer */
#define ADL_EV_DB        ((uint64_t) ADL_TAG_DB << 32)

typedef struct adl_job_s     adl_job_t;
typedef struct adl_xfer_s    adl_xfer_t;
typedef struct adl_worker_s  adl_worker_t;
typedef struct adl_janitor_s  adl_janitor_t;
typedef struct adl_bundler_s  adl_bundler_t;
typedef struct adl_callbacks_s  adl_callbacks_t;
typedef struct adl_expiry_s  adl_expiry_t;

/* A job with at least one of its files transferred here. */
struct adl_job_s {
    adl_job_t  *next;
    char        id[40];
    int64_t     deadline;        /* adl_now_ms() clock */
    int         refs;            /* transfers */
    int64_t     last_progress;   /* throttles its progress writes */
};

struct adl_worker_s {
    const adl_settings_t  *settings;
    int                    epfd;
    int                    sigfd;
    int                    tickfd;
    int64_t                tick_ms;      /* current tick period */
    adl_http_t            *origin;
    adl_http_t            *storage;
    adl_s3_t              *s3;
    adl_db_t              *db;

    adl_job_t             *jobs;
    adl_xfer_t            *xfers;        /* doubly linked */
    int                    nxfers;
    int                    ending;       /* some transfers ended */
    int                    reap;         /* some transfers are done */
    int                    kick;         /* some want unpausing */

    int                    claiming;     /* a claim query is running */
    int64_t                claim_sent;   /* when it was sent */
    int                    claim_limit;
    int                    more_work;    /* a claim may find something */
    int64_t                next_poll;
    adl_janitor_t         *janitor;
    adl_bundler_t         *bundler;      /* after a job: bundle.c, */
    adl_callbacks_t       *callbacks;    /* callback.c, */
    adl_expiry_t          *expiry;       /* expiry.c */

    int                    stopping;
    int                    handed_back;
    int64_t                stop_at;      /* grace period ends */
};

/* Monotonic milliseconds. */
int64_t adl_now_ms(void);

int adl_worker_run(const adl_settings_t *s);

/* Called by transfer.c when a transfer was freed. */
void adl_worker_xfer_released(adl_worker_t *w, adl_job_t *job);

#endif /* ADL_WORKER_H */
