
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
#include "ngx_http_async_dl_hub_state.h"


typedef enum {
    NGX_HTTP_ASYNC_DL_HUB_STATE = 0,
    NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE
} ngx_http_async_dl_hub_news_e;


typedef struct ngx_http_async_dl_watcher_s  ngx_http_async_dl_watcher_t;

typedef void (*ngx_http_async_dl_hub_handler_pt)(
    ngx_http_async_dl_watcher_t *w, ngx_http_async_dl_hub_news_e news);


struct ngx_http_async_dl_watcher_s {
    /* set by the watcher */
    ngx_http_async_dl_hub_handler_pt   handler;
    void                              *data;

    /* the hub's */
    ngx_http_async_dl_hub_job_t       *job;       /* NULL: not watching */
    ngx_queue_t                        queue;     /* in job->waiting, then
                                                     job->watchers */
    ngx_uint_t                         file_next; /* in the job's log */
    unsigned                           started:1; /* answered, reads log */
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


#endif /* _NGX_HTTP_ASYNC_DL_HUB_H_INCLUDED_ */
