
/*
 * The job hub of one nginx worker process: the jobs that are watched here,
 * each with its last state, fed by the LISTEN connection and fetched with
 * one query per job, whatever the number of watchers.
 *
 * A watcher (an event stream today: ngx_http_async_dl_sse.c) registers a
 * handler and is told, through it, the news of its job:
 *
 * - NGX_HTTP_ASYNC_DL_HUB_STATE: the job has a state (w->job->known), or a
 *   newer one.  A watcher that has not answered yet answers now and calls
 *   ngx_http_async_dl_hub_started(); one that has compares job->seq with
 *   what it sent last.  job->status is DELETED when the job is gone.
 * - NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE: the state could not be fetched;
 *   only a watcher that has not answered yet is told (the others wait for
 *   the refetch).
 *
 * The handler may leave the hub (ngx_http_async_dl_hub_leave()) and end
 * its request; it is called from the job's own event or the answer of its
 * fetch, never from ngx_http_async_dl_hub_watch().
 */


#ifndef _NGX_HTTP_ASYNC_DL_HUB_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_HUB_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"


typedef enum {
    NGX_HTTP_ASYNC_DL_HUB_QUEUED = 0,
    NGX_HTTP_ASYNC_DL_HUB_PROCESSING,
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


typedef enum {
    NGX_HTTP_ASYNC_DL_HUB_STATE = 0,
    NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE
} ngx_http_async_dl_hub_news_e;


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
typedef struct ngx_http_async_dl_watcher_s  ngx_http_async_dl_watcher_t;

typedef void (*ngx_http_async_dl_hub_handler_pt)(
    ngx_http_async_dl_watcher_t *w, ngx_http_async_dl_hub_news_e news);


struct ngx_http_async_dl_watcher_s {
    /* set by the watcher */
    ngx_http_async_dl_hub_handler_pt   handler;
    void                              *data;

    /* the hub's */
    ngx_http_async_dl_hub_job_t       *job;       /* NULL: not watching */
    ngx_queue_t                        queue;     /* in job->watchers */
    ngx_uint_t                         file_next; /* in the job's log */
    unsigned                           started:1; /* answered, reads log */
};


struct ngx_http_async_dl_hub_job_s {
    ngx_rbtree_node_t                  node;      /* key: crc32 of id */
    u_char                             id[NGX_HTTP_ASYNC_DL_UUID_LEN + 1];
    ngx_str_t                         *prefix;    /* {p}, NUL-terminated */

    ngx_queue_t                        watchers;
    ngx_uint_t                         nwatchers;
    ngx_uint_t                         nwaiting;  /* not started yet */
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


/* hub.c: configuration and process life */
char *ngx_http_async_dl_hub_init_conf(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf);
ngx_int_t ngx_http_async_dl_hub_add_variables(ngx_conf_t *cf);
ngx_int_t ngx_http_async_dl_hub_init_process(ngx_cycle_t *cycle,
    ngx_http_async_dl_main_conf_t *amcf);
void ngx_http_async_dl_hub_exit_process(ngx_cycle_t *cycle);

/*
 * hub.c: watching a job.  _watch(): NGX_DECLINED when this process has no
 * hub (no database configured), NGX_ERROR, or NGX_OK and the handler is
 * called later.  _started(): the watcher answered and takes the job's
 * events from its current state on.  _next_file(): the next "file" event
 * for this watcher, NULL when none is pending.
 */
ngx_int_t ngx_http_async_dl_hub_watch(ngx_http_async_dl_watcher_t *w,
    ngx_str_t *id, ngx_str_t *prefix, ngx_log_t *log);
void ngx_http_async_dl_hub_started(ngx_http_async_dl_watcher_t *w);
ngx_http_async_dl_hub_text_t *ngx_http_async_dl_hub_next_file(
    ngx_http_async_dl_watcher_t *w);
void ngx_http_async_dl_hub_leave(ngx_http_async_dl_watcher_t *w);

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


#endif /* _NGX_HTTP_ASYNC_DL_HUB_H_INCLUDED_ */
