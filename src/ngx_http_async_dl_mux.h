
/*
 * What a subscriber of all an owner's jobs owes its client (GET {p}stream
 * and GET {p}ws without a job id), whatever carries it (sse.c, ws.c):
 * "connected" once the owner's jobs are listed, then, for each job, what
 * a subscriber of that job alone would send (follow.h: its status as
 * "job", "file" events, "progress", the final event), each event naming
 * its job; the jobs created later too.
 *
 * Each job is a child: a follower in the hub.  The owner's new jobs come
 * from the owners' registry (owner.h), which also lists the owner's jobs:
 * at the start (those not ended, and from the client's Last-Event-ID the
 * ones that ended or were deleted since), after LISTEN came back (the
 * same), and every async_dl_heartbeat while events flow (those that ended
 * since the horizon).  The events' id is the horizon of the last listing
 * whose ended jobs all had their final event sent (sql/020_owner_stream.sql
 * says why no job's end is lost to a client that resumes from it); before
 * the first, the client's own.
 *
 * The mux's state, in mux->state: WAITING (the first listing is asked),
 * LIVE, DONE (left).  It never ends by itself: the client leaves.
 */


#ifndef _NGX_HTTP_ASYNC_DL_MUX_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_MUX_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_follow.h"
#include "ngx_http_async_dl_owner.h"


/* news for the transport: STATE (started, or an event owed), UNAVAILABLE
 * (the first listing failed: answer 503) */
typedef void (*ngx_http_async_dl_mux_handler_pt)(void *data,
    ngx_http_async_dl_hub_news_e news);


typedef struct {
    ngx_http_async_dl_follow_state_e   state;
    uint64_t                           horizon;   /* the events' id */
    unsigned                           has_horizon:1;

    /* the rest is the mux's */
    ngx_http_async_dl_mux_handler_pt   handler;
    void                              *data;
    ngx_http_async_dl_owner_watch_t    ow;
    ngx_str_t                         *prefix;
    ngx_log_t                         *log;
    ngx_msec_t                         period;    /* between listings */

    ngx_rbtree_t                       tree;      /* children, by job id */
    ngx_rbtree_node_t                  sentinel;
    ngx_queue_t                        children;  /* followed */
    ngx_queue_t                        ended;     /* final event given */
    ngx_queue_t                        ready;     /* may owe an event */

    uint64_t                           listed;    /* horizon, adopting */
    ngx_uint_t                         owed;      /* ends it waits for */
    ngx_http_async_dl_hub_text_t      *connected;
    ngx_http_async_dl_hub_text_t      *sending;   /* own text in flight */
    ngx_event_t                        timer;     /* the next listing */

    unsigned                           adopting:1;
    unsigned                           dirty:1;   /* list again */
    unsigned                           all:1;     /* ... with the jobs not
                                                     ended */
    unsigned                           connected_owed:1;
} ngx_http_async_dl_mux_t;


/*
 * For the request (its owner, location, Last-Event-ID or ?lastEventId):
 * registers for the owner's new jobs and lists its jobs, and the request
 * waits (ngx_http_async_dl_follow_wait(), with cln and cleanup).  Returns
 * what the content handler returns: NGX_DONE, *mux set (freed by _free(),
 * also when it fails later) and the handler called later; or the answer
 * given (a JSON error: 400 for an id this stream does not give, 503
 * without the database).
 */
ngx_int_t ngx_http_async_dl_mux_open(ngx_http_request_t *r,
    ngx_http_async_dl_mux_handler_pt handler, void *data,
    ngx_http_async_dl_mux_t **mux, ngx_http_cleanup_t *cln,
    ngx_http_cleanup_pt cleanup);

/* the next event owed (LIVE): NGX_OK, or NGX_DECLINED when none is now */
ngx_int_t ngx_http_async_dl_mux_next(ngx_http_async_dl_mux_t *mux,
    ngx_http_async_dl_event_t *ev);

/* out of the registry and the hub (DONE); again is harmless */
void ngx_http_async_dl_mux_leave(ngx_http_async_dl_mux_t *mux);

/* once nothing of its texts is in flight any more: left, then freed */
void ngx_http_async_dl_mux_free(ngx_http_async_dl_mux_t *mux);


#endif /* _NGX_HTTP_ASYNC_DL_MUX_H_INCLUDED_ */
