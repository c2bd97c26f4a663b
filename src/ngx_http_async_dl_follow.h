
/*
 * What a subscriber of one job owes its client next, whatever carries it
 * (the event stream, ngx_http_async_dl_sse.c; the WebSocket,
 * ngx_http_async_dl_ws.c): "connected" with the status document, a "file"
 * event as each file ends, the latest "progress" (a slow client's are
 * coalesced), then the final event named after the job's status.  It holds
 * "paused" and "resumed" are the "progress" in which the job's pause
 * changed from the last state given (a pause and a resume between two
 * of a slow client's events give a "progress").  A follower holds
 * the text of the event in flight, so a client that reads slowly holds at
 * most one event, and memory does not grow with the number of events.
 *
 * A follower's states, in f->state, changed only here:
 *
 *   WAITING --(open, next: "connected")--> LIVE <--(next: "progress")
 *      |                                    |  \                  |
 *      |                                    |   (news) --> BEHIND-+
 *      |                  (the job ended)   v                     |
 *      |                                  ENDING <----------------+
 *      |                      (next: the final event)
 *      v                                    v
 *     DONE <--------------------------------+
 *
 *   WAITING: watching, nothing owed yet: the transport waits for the
 *   job's first state, checks it with _open() and answers (its headers,
 *   its handshake).  LIVE: up to date (file events may still be owed).
 *   BEHIND: a newer state than the last one given.  ENDING: the job ended;
 *   its final state is kept.  DONE: the final event was given, or the
 *   follower left the hub.
 */


#ifndef _NGX_HTTP_ASYNC_DL_FOLLOW_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_FOLLOW_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_hub.h"


typedef enum {
    NGX_HTTP_ASYNC_DL_FOLLOW_WAITING = 0,
    NGX_HTTP_ASYNC_DL_FOLLOW_LIVE,
    NGX_HTTP_ASYNC_DL_FOLLOW_BEHIND,
    NGX_HTTP_ASYNC_DL_FOLLOW_ENDING,
    NGX_HTTP_ASYNC_DL_FOLLOW_DONE
} ngx_http_async_dl_follow_state_e;


/* an event for the transport to send */
typedef struct {
    const char                        *name;
    ngx_http_async_dl_hub_text_t      *t;         /* its data */
    u_char                            *job;       /* the job it is of, in a
                                                     stream of all an
                                                     owner's jobs; else
                                                     NULL */
    uint64_t                           id;
    unsigned                           has_id:1;
} ngx_http_async_dl_event_t;


typedef struct {
    ngx_http_async_dl_watcher_t        watcher;   /* in the hub */
    ngx_http_async_dl_follow_state_e   state;
    uint64_t                           seq;       /* last state given */
    ngx_http_async_dl_hub_status_e     final;     /* ENDING: its name */
    ngx_http_async_dl_hub_text_t      *final_data;
    ngx_http_async_dl_hub_text_t      *sending;   /* the event in flight */
    ngx_log_t                         *log;
    unsigned                           paused:1;  /* as last given */
} ngx_http_async_dl_follower_t;


/*
 * A subscriber for the request's job, for a route: size bytes, zeroed,
 * its follower first and set to tell news; freed by free_sub when the
 * request's pool goes.  *cln: a request cleanup for _watch().  NULL when
 * out of memory.
 */
void *ngx_http_async_dl_follow_new(ngx_http_request_t *r, size_t size,
    ngx_http_async_dl_hub_handler_pt news, ngx_pool_cleanup_pt free_sub,
    ngx_http_cleanup_t **cln, ngx_pool_cleanup_t **pcln);

/*
 * Watches the request's job (ctx->job_id): NGX_DONE, the request waits
 * for the news and cleanup runs when it ends (any way); NGX_DECLINED when
 * this process has no database; NGX_ERROR.
 */
ngx_int_t ngx_http_async_dl_follow_watch(ngx_http_request_t *r,
    ngx_http_async_dl_follower_t *f, ngx_http_cleanup_t *cln,
    ngx_http_cleanup_pt cleanup);

/*
 * The subscriber is watching (its job, or its owner: mux.h): the request
 * waits for the news, cleanup runs when it ends (any way).  NGX_DONE.
 */
ngx_int_t ngx_http_async_dl_follow_wait(ngx_http_request_t *r, void *sub,
    ngx_http_cleanup_t *cln, ngx_http_cleanup_pt cleanup);

/*
 * The JSON answer to a follow that cannot start: 503 DATABASE_UNAVAILABLE
 * (to be retried) for a status 503, else code and msg with status.
 */
ngx_int_t ngx_http_async_dl_follow_refusal(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *msg);

/*
 * An event's buffers: head, the shared text t (left out when empty), then
 * tail; out[0] is the chain.
 */
void ngx_http_async_dl_follow_chain(ngx_chain_t *out, ngx_buf_t *bufs,
    u_char *head, u_char *head_end, ngx_http_async_dl_hub_text_t *t,
    u_char *tail, u_char *tail_end);

/*
 * The job's first state is known (WAITING): NGX_DECLINED when this owner
 * may not see the job (deleted, or another owner's); else NGX_OK, and the
 * follower takes the job's events from its current state on.
 */
ngx_int_t ngx_http_async_dl_follow_open(ngx_http_async_dl_follower_t *f,
    ngx_str_t *owner);

/* The hub's news of a newer state (LIVE: now BEHIND or ENDING). */
void ngx_http_async_dl_follow_news(ngx_http_async_dl_follower_t *f);

/*
 * The next event owed (its id: the job's event seq), its text held in
 * f->sending until the next call (the transport calls again only once
 * that event is out) or _release().  NGX_OK for an event, NGX_DONE for the
 * final one (then DONE), NGX_DECLINED when nothing is owed now.
 */
ngx_int_t ngx_http_async_dl_follow_next(ngx_http_async_dl_follower_t *f,
    ngx_http_async_dl_event_t *ev);

/* Out of the hub (DONE); again is harmless. */
void ngx_http_async_dl_follow_leave(ngx_http_async_dl_follower_t *f);

/* The texts held, once nothing of them is in flight any more. */
void ngx_http_async_dl_follow_release(ngx_http_async_dl_follower_t *f);


#endif /* _NGX_HTTP_ASYNC_DL_FOLLOW_H_INCLUDED_ */
