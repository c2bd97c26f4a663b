
/*
 * The module's metrics (ngx_http_async_dl_metrics.c), for the location
 * handler "async_dl_metrics", in the Prometheus text format: summed over
 * the worker processes of this nginx through a shared zone.
 *
 * Counters are atomics in the zone, counted where things happen (the
 * macros below; nothing is counted when the zone is not there).  Gauges
 * are kept per worker process, in its own slot of the zone.  The queue as
 * the database sees it is read at most once a second, by whichever
 * process is scraped first, and kept in the zone for the others.
 */


#ifndef _NGX_HTTP_ASYNC_DL_METRICS_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_METRICS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_pg.h"


#define NGX_HTTP_ASYNC_DL_M_ROUTES     24     /* rows of the route table */
#define NGX_HTTP_ASYNC_DL_M_QUEUE_N    7      /* jobs queued, processing;
                                               * oldest queued (ms); files
                                               * pending, downloading; jobs
                                               * paused; files paused */
#define NGX_HTTP_ASYNC_DL_M_SLOTS      128    /* worker processes, old and
                                                 new ones of a reload */


typedef enum {
    NGX_HTTP_ASYNC_DL_M_SSE = 0,
    NGX_HTTP_ASYNC_DL_M_WS
} ngx_http_async_dl_m_transport_e;


/* a worker process's gauges: the slot is its while pid is its pid */
typedef struct {
    ngx_atomic_t                    pid;
    ngx_atomic_t                    pg_conns;
    ngx_atomic_t                    pg_busy;
    ngx_atomic_t                    pg_waiting;
    ngx_atomic_t                    subscribers[2];   /* by transport */
} ngx_http_async_dl_m_slot_t;


typedef struct {
    /* requests, by route row, then no route, then delivered through
     * nginx; by status class */
    ngx_atomic_t                    requests[NGX_HTTP_ASYNC_DL_M_ROUTES + 2][5];

    ngx_http_async_dl_pg_counters_t pg;               /* counted by it */

    ngx_atomic_t                    events[2];        /* by transport */
    ngx_atomic_t                    listen_reconnects;

    ngx_http_async_dl_m_slot_t      slots[NGX_HTTP_ASYNC_DL_M_SLOTS];

    /* the queue, read by one process at a time (the slab pool's mutex) */
    uint64_t                        queue_read_at;    /* wall clock, ms */
    uint64_t                        queue_reading_until;
    ngx_atomic_t                    queue_reads;
    int64_t                         queue[NGX_HTTP_ASYNC_DL_M_QUEUE_N];
} ngx_http_async_dl_m_t;


/* this nginx's zone (NULL: none yet), this process's slot (or NULL) */
extern ngx_http_async_dl_m_t       *ngx_http_async_dl_m;
extern ngx_http_async_dl_m_slot_t  *ngx_http_async_dl_m_slot;

#define ngx_http_async_dl_m_count(field)                                     \
    do {                                                                     \
        if (ngx_http_async_dl_m) {                                           \
            (void) ngx_atomic_fetch_add(&ngx_http_async_dl_m->field, 1);     \
        }                                                                    \
    } while (0)

#define ngx_http_async_dl_m_gauge(field, delta)                              \
    do {                                                                     \
        if (ngx_http_async_dl_m_slot) {                                      \
            (void) ngx_atomic_fetch_add(&ngx_http_async_dl_m_slot->field,    \
                                        (ngx_atomic_int_t) (delta));         \
        }                                                                    \
    } while (0)


/* configuration, process life */
char *ngx_http_async_dl_metrics_init_conf(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf);
ngx_int_t ngx_http_async_dl_metrics_init(ngx_conf_t *cf);
void ngx_http_async_dl_metrics_init_process(ngx_cycle_t *cycle);
void ngx_http_async_dl_metrics_exit_process(void);

/* the location handler (the async_dl_metrics directive) */
char *ngx_http_async_dl_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


#endif /* _NGX_HTTP_ASYNC_DL_METRICS_H_INCLUDED_ */
