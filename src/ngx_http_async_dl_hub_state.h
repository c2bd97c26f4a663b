
/*
 * A job as the hub keeps it (ngx_http_async_dl_hub.c): its watchers and
 * its last state, read by ngx_http_async_dl_hub_state.c from the row of
 * async_dl_job_events_state(), with the shared texts the watchers send.
 */


#ifndef _NGX_HTTP_ASYNC_DL_HUB_STATE_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_HUB_STATE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <libpq-fe.h>

#include "ngx_http_async_dl.h"


typedef enum {
    NGX_HTTP_ASYNC_DL_HUB_QUEUED = 0,
    NGX_HTTP_ASYNC_DL_HUB_PROCESSING,
    NGX_HTTP_ASYNC_DL_HUB_PAUSED,          /* queued or processing, paused */
    NGX_HTTP_ASYNC_DL_HUB_COMPLETED,
    NGX_HTTP_ASYNC_DL_HUB_FAILED,
    NGX_HTTP_ASYNC_DL_HUB_CANCELED,
    NGX_HTTP_ASYNC_DL_HUB_DELETED
} ngx_http_async_dl_hub_status_e;

#define ngx_http_async_dl_hub_ended(s)  ((s) >= NGX_HTTP_ASYNC_DL_HUB_COMPLETED)


/* how much a job knows that its last state is old */
typedef enum {
    NGX_HTTP_ASYNC_DL_HUB_FRESH = 0,
    NGX_HTTP_ASYNC_DL_HUB_STALE_PROGRESS,  /* bytes moved: throttled */
    NGX_HTTP_ASYNC_DL_HUB_STALE_NOW        /* anything else: at once */
} ngx_http_async_dl_hub_stale_e;


/*
 * A JSON document of the job on one line, shared, reference counted, by
 * the watchers that send it: the whole status document, the summary
 * without the files, one ended file.
 */
typedef struct {
    ngx_uint_t                         refs;
    uint64_t                           seq;       /* the job's event_seq */
    size_t                             len;
    u_char                             text[1];
} ngx_http_async_dl_hub_text_t;


typedef struct ngx_http_async_dl_hub_job_s  ngx_http_async_dl_hub_job_t;

struct ngx_http_async_dl_hub_job_s {
    ngx_rbtree_node_t                  node;      /* key: crc32 of id */
    u_char                             id[NGX_HTTP_ASYNC_DL_UUID_LEN + 1];
    ngx_str_t                         *prefix;    /* {p}, NUL-terminated */

    ngx_queue_t                        watchers;  /* started */
    ngx_queue_t                        waiting;   /* not started yet */
    ngx_uint_t                         nwatchers; /* both */
    ngx_uint_t                         nwaiting;
    ngx_uint_t                         busy;      /* fan-outs running */

    /* the last state */
    ngx_str_t                          owner;
    uint64_t                           seq;
    ngx_http_async_dl_hub_status_e     status;
    u_char                            *states;    /* a letter per file */
    size_t                             nstates;
    ngx_http_async_dl_hub_text_t      *full;      /* status document */
    ngx_http_async_dl_hub_text_t      *summary;   /* without the files */

    /* "file" events that some watcher has not sent yet */
    ngx_http_async_dl_hub_text_t     **log;
    ngx_uint_t                         log_base;  /* number of the first */
    ngx_uint_t                         log_n;
    ngx_uint_t                         log_size;

    ngx_pool_t                        *fetch;     /* the query in flight */
    ngx_http_async_dl_hub_stale_e      stale;
    ngx_msec_t                         fetched;   /* last fetch started */
    ngx_msec_t                         not_before;
    ngx_event_t                        event;     /* timer, or posted */

    unsigned                           known:1;
};


/* hub_state.c: the name of a status ("completed"), NUL-terminated */
ngx_str_t *ngx_http_async_dl_hub_status_name(
    ngx_http_async_dl_hub_status_e status);

/*
 * hub_state.c: a job's state from a row of async_dl_job_events_state():
 * NGX_OK, a newer state (and "file" events in its log); NGX_DECLINED,
 * nothing newer; NGX_ERROR.  _gone(): the job has no row (any more).
 */
ngx_int_t ngx_http_async_dl_hub_state_update(ngx_http_async_dl_hub_job_t *job,
    PGresult *res, ngx_log_t *log);
ngx_int_t ngx_http_async_dl_hub_state_gone(ngx_http_async_dl_hub_job_t *job);
void ngx_http_async_dl_hub_state_free(ngx_http_async_dl_hub_job_t *job);

/* hub_state.c: shared texts */
ngx_http_async_dl_hub_text_t *ngx_http_async_dl_hub_text(uint64_t seq,
    u_char *json, size_t len);
void ngx_http_async_dl_hub_text_release(ngx_http_async_dl_hub_text_t *t);


#endif /* _NGX_HTTP_ASYNC_DL_HUB_STATE_H_INCLUDED_ */
