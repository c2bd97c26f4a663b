
/*
 * GET {p}stream/{id}: the job's events as Server-Sent Events, one subscriber
 * per request, fed by the job hub (ngx_http_async_dl_hub.c) through its
 * handler; no subscriber ever queries the database.
 *
 * What a subscriber sends, and when, is its follower's
 * (ngx_http_async_dl_follow.h): "connected" (with the "retry:" line and
 * the job's whole status document) once the job's first state says the
 * owner may see it, then "file" events as they come, the latest
 * "progress", the final event named after the job's status, which ends
 * the response.  Before that first state any failure is an ordinary JSON
 * error (404 JOB_NOT_FOUND, 503 DATABASE_UNAVAILABLE).
 *
 * A heartbeat
 * ("event: heartbeat", data {}) is sent after async_dl_heartbeat without an
 * event.
 *
 * A reconnecting EventSource sends Last-Event-ID (or lastEventId in the
 * query): it gets "connected" with the current state, which says
 * everything it missed, so the value itself is not needed.
 *
 * Detached streams.  Once "connected" is out and nothing waits to be
 * sent, a stream over HTTP/1.x (not TLS, not compressed, not rate-limited,
 * nothing pipelined) gives its request back: the request is freed (its
 * access log line is written then, with the bytes sent so far) along with
 * the connection's header buffers, and the subscriber alone holds the
 * connection: it writes its events with its own chunked framing through
 * c->send_chain, notices the client leaving on a read, and closes the
 * connection after the final event.  A stream then costs the connection's
 * small pool and the subscriber, about 1.7 KB instead of a whole request
 * (two 4 KiB pool blocks).
 *
 * Lifetimes: a subscriber is allocated on its own (ngx_calloc).  Until it
 * detaches, its request owns it: the request cleanup takes it out of the
 * hub and deletes its heartbeat timer at once (client gone, final event
 * sent, error), the pool cleanup drops its references to shared texts once
 * nginx is done sending them and frees it.  Detached, its connection owns
 * it: ngx_http_async_dl_sse_close() does all of that and closes the
 * connection.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_detach.h"
#include "ngx_http_async_dl_follow.h"
#include "ngx_http_async_dl_metrics.h"
#include "ngx_http_async_dl_mux.h"
#include "ngx_http_async_dl_sse.h"


#define NGX_HTTP_ASYNC_DL_SSE_RETRY      2000   /* "retry:", ms */
#define NGX_HTTP_ASYNC_DL_SSE_HEAD       160    /* retry:, event:, id:,
                                                   data: {"jobId":...,"data": */


typedef struct {
    ngx_http_async_dl_follower_t       f;         /* first: the watcher */
    ngx_http_async_dl_mux_t           *mux;       /* all an owner's jobs:
                                                     f is not used */
    ngx_http_request_t                *r;         /* NULL once detached */
    ngx_connection_t                  *c;
    ngx_msec_t                         heartbeat_period;

    ngx_buf_t                          bufs[3];   /* event:, id:, data:;
                                                     the shared JSON; the
                                                     blank line */
    ngx_chain_t                        out[3];
    ngx_event_t                        heartbeat;
    ngx_event_t                        detach;    /* posted when idle */
    u_char                             text[NGX_HTTP_ASYNC_DL_SSE_HEAD];

    ngx_http_cleanup_t                *cln;
    ngx_pool_cleanup_t                *pcln;

    /* detached: what is not sent yet, the chunk framing around an event */
    ngx_chain_t                       *pending;
    ngx_msec_t                         send_timeout;
    ngx_buf_t                          chunk;     /* "<size>\r\n" */
    ngx_buf_t                          crlf;      /* "\r\n", "0\r\n\r\n" */
    ngx_chain_t                        frame[2];
    u_char                             chunk_text[NGX_OFF_T_LEN + 2];

    unsigned                           started:1; /* answered */
    unsigned                           detached:1;
    unsigned                           chunked:1;
    unsigned                           last:1;    /* the final event went */
    unsigned                           stays:1;   /* cannot detach */
} ngx_http_async_dl_sse_sub_t;


static void ngx_http_async_dl_sse_news(ngx_http_async_dl_watcher_t *w,
    ngx_http_async_dl_hub_news_e news);
static void ngx_http_async_dl_sse_mux_news(void *data,
    ngx_http_async_dl_hub_news_e news);
static void ngx_http_async_dl_sse_tell(ngx_http_async_dl_sse_sub_t *sub,
    ngx_http_async_dl_hub_news_e news);
static ngx_http_async_dl_follow_state_e ngx_http_async_dl_sse_state(
    ngx_http_async_dl_sse_sub_t *sub);
static ngx_int_t ngx_http_async_dl_sse_next(ngx_http_async_dl_sse_sub_t *sub,
    ngx_http_async_dl_event_t *ev);
static void ngx_http_async_dl_sse_start(ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_refuse(ngx_http_async_dl_sse_sub_t *sub,
    ngx_uint_t status, const char *code, const char *msg);
static ngx_int_t ngx_http_async_dl_sse_created(ngx_http_request_t *r,
    ngx_http_async_dl_ctx_t *ctx);
static void ngx_http_async_dl_sse_send(ngx_http_async_dl_sse_sub_t *sub);
static ngx_int_t ngx_http_async_dl_sse_emit(ngx_http_async_dl_sse_sub_t *sub,
    ngx_http_async_dl_event_t *ev, ngx_uint_t last);
static void ngx_http_async_dl_sse_wait_write(
    ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_write_handler(ngx_http_request_t *r);
static void ngx_http_async_dl_sse_heartbeat_handler(ngx_event_t *ev);
static void ngx_http_async_dl_sse_finish(ngx_http_async_dl_sse_sub_t *sub,
    ngx_int_t rc);
static void ngx_http_async_dl_sse_leave(ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_cleanup(void *data);
static void ngx_http_async_dl_sse_pool_cleanup(void *data);
static ngx_int_t ngx_http_async_dl_sse_output(ngx_http_async_dl_sse_sub_t *sub,
    ngx_uint_t last);
static ngx_uint_t ngx_http_async_dl_sse_busy(ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_detach(ngx_event_t *ev);
static void ngx_http_async_dl_sse_conn_read(ngx_event_t *rev);
static void ngx_http_async_dl_sse_conn_write(ngx_event_t *wev);
static void ngx_http_async_dl_sse_close(ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_free(ngx_http_async_dl_sse_sub_t *sub);


static u_char  ngx_http_async_dl_sse_blank[] = "}\n\n";
static u_char  ngx_http_async_dl_sse_crlf[] = "\r\n0\r\n\r\n";


/* GET {p}stream/{id}, and GET {p}stream: all the owner's jobs */


ngx_int_t
ngx_http_async_dl_stream(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_pool_cleanup_t            *pcln;
    ngx_http_cleanup_t            *cln;
    ngx_http_async_dl_ctx_t       *ctx;
    ngx_http_async_dl_sse_sub_t   *sub;
    ngx_http_async_dl_loc_conf_t  *alcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    /* the request's until it detaches: freed with its pool */
    sub = ngx_http_async_dl_follow_new(r, sizeof(ngx_http_async_dl_sse_sub_t),
                                       ngx_http_async_dl_sse_news,
                                       ngx_http_async_dl_sse_pool_cleanup,
                                       &cln, &pcln);
    if (sub == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    sub->r = r;
    sub->c = r->connection;
    sub->cln = cln;
    sub->pcln = pcln;
    sub->heartbeat_period = alcf->heartbeat;

    ngx_http_async_dl_m_gauge(subscribers[NGX_HTTP_ASYNC_DL_M_SSE], 1);
    sub->heartbeat.handler = ngx_http_async_dl_sse_heartbeat_handler;
    sub->heartbeat.data = sub;
    sub->heartbeat.log = r->connection->log;
    sub->heartbeat.cancelable = 1;
    sub->detach.handler = ngx_http_async_dl_sse_detach;
    sub->detach.data = sub;
    sub->detach.log = r->connection->log;

    if (ctx->job_id.len == 0) {
        return ngx_http_async_dl_mux_open(r, ngx_http_async_dl_sse_mux_news,
                                          sub, &sub->mux, cln,
                                          ngx_http_async_dl_sse_cleanup);
    }

    rc = ngx_http_async_dl_follow_watch(r, &sub->f, cln,
                                        ngx_http_async_dl_sse_cleanup);

    if (rc == NGX_DECLINED) {
        /* this process has no database */

        if (ctx->stream_status) {
            return ngx_http_async_dl_sse_created(r, ctx);
        }

        return ngx_http_async_dl_db_unavailable(r, "the database is not "
                                                "configured in this process");
    }

    return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR : rc;
}


/* the hub's news of the job; the mux's of the owner's jobs */

static void
ngx_http_async_dl_sse_news(ngx_http_async_dl_watcher_t *w,
    ngx_http_async_dl_hub_news_e news)
{
    ngx_http_async_dl_sse_sub_t *sub = w->data;

    if (news == NGX_HTTP_ASYNC_DL_HUB_STATE
        && sub->f.state != NGX_HTTP_ASYNC_DL_FOLLOW_WAITING)
    {
        ngx_http_async_dl_follow_news(&sub->f);
    }

    ngx_http_async_dl_sse_tell(sub, news);
}


static void
ngx_http_async_dl_sse_mux_news(void *data, ngx_http_async_dl_hub_news_e news)
{
    ngx_http_async_dl_sse_tell(data, news);
}


static void
ngx_http_async_dl_sse_tell(ngx_http_async_dl_sse_sub_t *sub,
    ngx_http_async_dl_hub_news_e news)
{
    ngx_uint_t         detached;
    ngx_connection_t  *c;

    c = sub->c;
    detached = sub->detached;

    if (news == NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE && sub->r) {
        ngx_http_async_dl_sse_refuse(sub, NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "DATABASE_UNAVAILABLE",
                                     "the database is unavailable, "
                                     "retry later");

    } else if (!sub->started) {
        ngx_http_async_dl_sse_start(sub);

    } else {
        ngx_http_async_dl_sse_send(sub);
    }

    /* sub may be gone: only the connection is looked at */

    if (detached) {
        /* no request any more (a detach runs from its own event) */
        return;
    }

    ngx_http_run_posted_requests(c);
}


/* the first answer: a JSON error, or the stream and its "connected" */

static ngx_http_async_dl_follow_state_e
ngx_http_async_dl_sse_state(ngx_http_async_dl_sse_sub_t *sub)
{
    return sub->mux ? sub->mux->state : sub->f.state;
}


static ngx_int_t
ngx_http_async_dl_sse_next(ngx_http_async_dl_sse_sub_t *sub,
    ngx_http_async_dl_event_t *ev)
{
    return sub->mux ? ngx_http_async_dl_mux_next(sub->mux, ev)
                    : ngx_http_async_dl_follow_next(&sub->f, ev);
}


static void
ngx_http_async_dl_sse_start(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_int_t                   rc;
    ngx_connection_t           *c;
    ngx_http_request_t         *r;
    ngx_http_async_dl_ctx_t    *ctx;
    ngx_http_async_dl_event_t   ev;
    ngx_http_core_loc_conf_t   *clcf;

    r = sub->r;
    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    sub->started = 1;

    if (sub->mux == NULL
        && ngx_http_async_dl_follow_open(&sub->f, &ctx->owner) != NGX_OK)
    {
        ngx_http_async_dl_sse_refuse(sub, NGX_HTTP_NOT_FOUND,
                                     "JOB_NOT_FOUND", "no such job");
        return;
    }

    /* 202 (or 200, replayed) for an initiate that asked for the stream */
    r->headers_out.status = ctx->stream_status ? ctx->stream_status
                                               : NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    ctx->replied = 1;

    if (ngx_http_async_dl_add_header(r, "Cache-Control",
                                     (u_char *) "no-cache", 8)
        != NGX_OK
        || ngx_http_async_dl_add_header(r, "X-Accel-Buffering",
                                        (u_char *) "no", 2)
           != NGX_OK)
    {
        ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
        return;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_async_dl_sse_finish(sub, rc);
        return;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->tcp_nodelay && ngx_tcp_nodelay(c) != NGX_OK) {
        ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
        return;
    }

    /* a graceful shutdown ends the stream, the client reconnects */
    if (r->http_version < NGX_HTTP_VERSION_20) {
        c->idle = 1;
    }

    /* "connected" (with "retry:") at once, behind the header that nginx
     * may hold back until the first flush; then what follows */
    if (ngx_http_async_dl_sse_next(sub, &ev) != NGX_OK
        || ngx_http_async_dl_sse_emit(sub, &ev, 0) != NGX_OK)
    {
        ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
        return;
    }

    ngx_http_async_dl_sse_send(sub);
}


static void
ngx_http_async_dl_sse_refuse(ngx_http_async_dl_sse_sub_t *sub,
    ngx_uint_t status, const char *code, const char *msg)
{
    ngx_http_request_t       *r;
    ngx_http_async_dl_ctx_t  *ctx;

    r = sub->r;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    ngx_http_async_dl_sse_leave(sub);

    if (ctx->stream_status) {
        /* an initiate whose job exists: its answer without the stream */
        ngx_http_finalize_request(r, ngx_http_async_dl_sse_created(r, ctx));
        return;
    }

    ngx_http_finalize_request(r, ngx_http_async_dl_follow_refusal(r, status,
                                                                  code, msg));
}


/* An initiate asked for the stream, which cannot start: its JSON answer. */

static ngx_int_t
ngx_http_async_dl_sse_created(ngx_http_request_t *r,
    ngx_http_async_dl_ctx_t *ctx)
{
    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "async_dl: job %V created, its stream could not start: "
                  "answered as JSON", &ctx->job_id);

    return ngx_http_async_dl_send_json(r, ctx->stream_status,
                                       ctx->created.data, ctx->created.len);
}


/*
 * Sends what the subscriber has pending, in order: "file" events, the
 * latest progress, the final event; one event in flight at a time, so a
 * slow client holds at most one event and coalesces the progress.
 */

static void
ngx_http_async_dl_sse_send(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_int_t                   rc;
    ngx_http_async_dl_event_t   ev;

    for ( ;; ) {

        if (ngx_http_async_dl_sse_busy(sub)) {
            ngx_http_async_dl_sse_wait_write(sub);
            return;
        }

        rc = ngx_http_async_dl_sse_next(sub, &ev);

        if (rc == NGX_DONE) {
            /* the final event ends the request: sub may be gone after */
            (void) ngx_http_async_dl_sse_emit(sub, &ev, 1);
            return;
        }

        if (rc == NGX_DECLINED) {
            if (ngx_http_async_dl_sse_state(sub)
                == NGX_HTTP_ASYNC_DL_FOLLOW_LIVE
                && !sub->detached && !sub->stays && !sub->detach.posted)
            {
                /* idle: give the request back, from the event loop */
                ngx_post_event(&sub->detach, &ngx_posted_events);
            }

            return;
        }

        if (ngx_http_async_dl_sse_emit(sub, &ev, 0) != NGX_OK) {
            ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
            return;
        }
    }
}


/*
 * One event: "retry:" the first time, "event:", "id:" and "data: " from
 * the subscriber's own buffer, the shared JSON, the blank line.  In a
 * stream of all an owner's jobs the data of a job's event is
 * {"jobId":"<id>","data":<the JSON>}.  A final event ends the response
 * and the request.
 */

static ngx_int_t
ngx_http_async_dl_sse_emit(ngx_http_async_dl_sse_sub_t *sub,
    ngx_http_async_dl_event_t *ev, ngx_uint_t last)
{
    u_char                        *p;
    ngx_int_t                      rc;
    ngx_http_async_dl_hub_text_t  *t;

    p = sub->text;
    t = ev->t;

    if (ngx_strcmp(ev->name, "connected") == 0) {
        p = ngx_sprintf(p, "retry: %d\n", NGX_HTTP_ASYNC_DL_SSE_RETRY);
    }

    p = ngx_sprintf(p, "event: %s\n", ev->name);

    if (ev->has_id) {
        p = ngx_sprintf(p, "id: %uL\n", ev->id);
    }

    p = ngx_cpymem(p, "data: ", 6);

    if (ev->job) {
        p = ngx_sprintf(p, "{\"jobId\":\"%*s\",\"data\":",
                        (size_t) NGX_HTTP_ASYNC_DL_UUID_LEN, ev->job);
    }

    ngx_http_async_dl_follow_chain(sub->out, sub->bufs, sub->text, p, t,
                                   ngx_http_async_dl_sse_blank
                                   + (ev->job ? 0 : 1),
                                   ngx_http_async_dl_sse_blank + 3);
    sub->bufs[2].flush = 1;
    sub->bufs[2].last_in_chain = 1;

    if (last && sub->r) {
        sub->bufs[2].last_buf = (sub->r == sub->r->main) ? 1 : 0;
    }

    /* (the follower holds t until the next event: nginx is done with it
     * by then, see send, pool cleanup) */

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, sub->c->log, 0,
                   "async_dl sse: event %s id %uL, %uz bytes", ev->name,
                   ev->id, t->len);

    rc = ngx_http_async_dl_sse_output(sub, last);

    ngx_http_async_dl_m_count(events[NGX_HTTP_ASYNC_DL_M_SSE]);

    if (last) {
        ngx_http_async_dl_sse_finish(sub, rc);
        return NGX_OK;
    }

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    ngx_add_timer(&sub->heartbeat, sub->heartbeat_period);

    return NGX_OK;
}


static void
ngx_http_async_dl_sse_wait_write(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_event_t               *wev;
    ngx_http_request_t        *r;
    ngx_http_core_loc_conf_t  *clcf;

    if (sub->detached) {
        wev = sub->c->write;
        wev->handler = ngx_http_async_dl_sse_conn_write;

        if (!wev->timer_set) {
            ngx_add_timer(wev, sub->send_timeout);
        }

        if (ngx_handle_write_event(wev, 0) != NGX_OK) {
            ngx_http_async_dl_sse_close(sub);
        }

        return;
    }

    r = sub->r;
    wev = r->connection->write;
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    r->write_event_handler = ngx_http_async_dl_sse_write_handler;

    if (!wev->delayed && !wev->timer_set) {
        ngx_add_timer(wev, clcf->send_timeout);
    }

    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
        ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
    }
}


static void
ngx_http_async_dl_sse_write_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_event_t                  *wev;
    ngx_connection_t             *c;
    ngx_http_async_dl_ctx_t      *ctx;
    ngx_http_async_dl_sse_sub_t  *sub;

    c = r->connection;
    wev = c->write;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    sub = ctx->stream;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out reading the event stream");
        c->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    if (wev->delayed) {
        if (ngx_handle_write_event(wev, 0) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_ERROR);
        }
        return;
    }

    rc = ngx_http_output_filter(r, NULL);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    if (c->buffered) {
        ngx_http_async_dl_sse_wait_write(sub);
        return;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_http_async_dl_sse_send(sub);
}


static void
ngx_http_async_dl_sse_heartbeat_handler(ngx_event_t *ev)
{
    ngx_http_async_dl_sse_sub_t *sub = ev->data;

    u_char            *p;
    ngx_int_t          rc;
    ngx_connection_t  *c;

    c = sub->c;

    if (c->destroyed
        || ngx_http_async_dl_sse_state(sub) == NGX_HTTP_ASYNC_DL_FOLLOW_DONE)
    {
        return;
    }

    if (ngx_http_async_dl_sse_busy(sub)) {
        /* the client is not reading: the send timeout deals with it */
        ngx_add_timer(&sub->heartbeat, sub->heartbeat_period);
        return;
    }

    p = ngx_sprintf(sub->text, "event: heartbeat\n");

    if (sub->mux == NULL || sub->mux->has_horizon) {
        p = ngx_sprintf(p, "id: %uL\n",
                        sub->mux ? sub->mux->horizon : sub->f.seq);
    }

    p = ngx_sprintf(p, "data: {}\n\n");

    ngx_memzero(&sub->bufs[0], sizeof(ngx_buf_t));
    sub->bufs[0].start = sub->text;
    sub->bufs[0].pos = sub->text;
    sub->bufs[0].last = p;
    sub->bufs[0].end = p;
    sub->bufs[0].memory = 1;
    sub->bufs[0].flush = 1;

    sub->out[0].buf = &sub->bufs[0];
    sub->out[0].next = NULL;

    rc = ngx_http_async_dl_sse_output(sub, 0);

    if (sub->detached) {
        if (rc == NGX_ERROR) {
            ngx_http_async_dl_sse_close(sub);
            return;
        }

        ngx_add_timer(&sub->heartbeat, sub->heartbeat_period);

        if (sub->pending) {
            ngx_http_async_dl_sse_wait_write(sub);
        }

        return;
    }

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(sub->r, NGX_ERROR);

    } else {
        ngx_add_timer(&sub->heartbeat, sub->heartbeat_period);

        if (c->buffered) {
            ngx_http_async_dl_sse_wait_write(sub);
        }
    }

    ngx_http_run_posted_requests(c);
}


/* the stream ends: out of the hub, then the request */

static void
ngx_http_async_dl_sse_finish(ngx_http_async_dl_sse_sub_t *sub, ngx_int_t rc)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, sub->c->log, 0,
                   "async_dl sse: stream ends, rc %i", rc);

    ngx_http_async_dl_sse_leave(sub);

    if (sub->detached) {
        if (rc != NGX_ERROR && sub->pending) {
            /* the final event is on its way: closed once it is out */
            sub->last = 1;
            ngx_http_async_dl_sse_wait_write(sub);
            return;
        }

        ngx_http_async_dl_sse_close(sub);
        return;
    }

    ngx_http_finalize_request(sub->r, rc);
}


static void
ngx_http_async_dl_sse_leave(ngx_http_async_dl_sse_sub_t *sub)
{
    if (sub->heartbeat.timer_set) {
        ngx_del_timer(&sub->heartbeat);
    }

    if (sub->detach.posted) {
        ngx_delete_posted_event(&sub->detach);
    }

    if (sub->mux) {
        ngx_http_async_dl_mux_leave(sub->mux);
    }

    ngx_http_async_dl_follow_leave(&sub->f);
}


/* the request ends (any way): leave at once */

static void
ngx_http_async_dl_sse_cleanup(void *data)
{
    ngx_http_async_dl_sse_sub_t *sub = data;

    ngx_http_async_dl_sse_leave(sub);
}


/* the request's memory goes: so do its references to shared texts */

static void
ngx_http_async_dl_sse_pool_cleanup(void *data)
{
    ngx_http_async_dl_sse_sub_t *sub = data;

    ngx_http_async_dl_sse_free(sub);
}


/* --- the stream without its request ------------------------------------- */


/* out: through the request's filters, or framed here on the connection */

static ngx_int_t
ngx_http_async_dl_sse_output(ngx_http_async_dl_sse_sub_t *sub,
    ngx_uint_t last)
{
    off_t         size;
    ngx_chain_t  *cl, *in, *out;

    in = sub->out;

    if (!sub->detached) {
        return ngx_http_output_filter(sub->r, in);
    }

    if (sub->chunked) {
        size = 0;

        for (cl = in; cl; cl = cl->next) {
            size += ngx_buf_size(cl->buf);
        }

        ngx_memzero(&sub->chunk, sizeof(ngx_buf_t));
        sub->chunk.start = sub->chunk_text;
        sub->chunk.pos = sub->chunk_text;
        sub->chunk.last = ngx_sprintf(sub->chunk_text, "%xO\r\n", size);
        sub->chunk.end = sub->chunk.last;
        sub->chunk.memory = 1;

        /* "\r\n" ends the chunk; "0\r\n\r\n" the body, after the last */
        ngx_memzero(&sub->crlf, sizeof(ngx_buf_t));
        sub->crlf.start = ngx_http_async_dl_sse_crlf;
        sub->crlf.pos = ngx_http_async_dl_sse_crlf;
        sub->crlf.last = ngx_http_async_dl_sse_crlf
                         + (last ? sizeof(ngx_http_async_dl_sse_crlf) - 1 : 2);
        sub->crlf.end = sub->crlf.last;
        sub->crlf.memory = 1;

        sub->frame[0].buf = &sub->chunk;
        sub->frame[0].next = in;
        sub->frame[1].buf = &sub->crlf;
        sub->frame[1].next = NULL;

        for (cl = in; cl->next; cl = cl->next) { /* void */ }
        cl->next = &sub->frame[1];

        in = &sub->frame[0];
    }

    out = sub->c->send_chain(sub->c, in, 0);

    if (out == NGX_CHAIN_ERROR) {
        sub->c->error = 1;
        return NGX_ERROR;
    }

    sub->pending = out;

    return NGX_OK;
}


static ngx_uint_t
ngx_http_async_dl_sse_busy(ngx_http_async_dl_sse_sub_t *sub)
{
    return sub->detached ? sub->pending != NULL : sub->c->buffered != 0;
}


/*
 * Posted when the stream is live and idle: the request goes when nothing
 * of it is needed any more (see the top of this file); a stream that
 * cannot detach says so once and keeps its request.
 */

static void
ngx_http_async_dl_sse_detach(ngx_event_t *ev)
{
    ngx_http_async_dl_sse_sub_t *sub = ev->data;

    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_core_loc_conf_t  *clcf;

    r = sub->r;
    c = sub->c;

    if (sub->detached
        || ngx_http_async_dl_sse_state(sub) != NGX_HTTP_ASYNC_DL_FOLLOW_LIVE
        || c->buffered || r->out || c->destroyed)
    {
        /* not now: asked again when it is idle */
        return;
    }

    if (!ngx_http_async_dl_detach_possible(r)) {
        sub->stays = 1;
        return;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    sub->send_timeout = clcf->send_timeout;
    sub->chunked = r->chunked;

    sub->r = NULL;
    sub->detached = 1;

    if (ngx_http_async_dl_detach(r, sub, &sub->cln, &sub->pcln,
                                 ngx_http_async_dl_sse_conn_read,
                                 "sending events")
        != NGX_OK)
    {
        ngx_http_async_dl_sse_close(sub);
    }
}


/* the client may only go away: anything it sends is dropped */

static void
ngx_http_async_dl_sse_conn_read(ngx_event_t *rev)
{
    u_char                        buf[64];
    ssize_t                       n;
    ngx_uint_t                    i;
    ngx_connection_t             *c;
    ngx_http_async_dl_sse_sub_t  *sub;

    c = rev->data;
    sub = c->data;

    if (c->close) {
        /* nginx is shutting down: the client reconnects elsewhere */
        ngx_http_async_dl_sse_close(sub);
        return;
    }

    for (i = 0; i < 16; i++) {
        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                           "async_dl sse: the client went away");
            ngx_http_async_dl_sse_close(sub);
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_async_dl_sse_close(sub);
    }
}


static void
ngx_http_async_dl_sse_conn_write(ngx_event_t *wev)
{
    ngx_chain_t                  *out;
    ngx_connection_t             *c;
    ngx_http_async_dl_sse_sub_t  *sub;

    c = wev->data;
    sub = c->data;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out reading the event stream");
        c->timedout = 1;
        ngx_http_async_dl_sse_close(sub);
        return;
    }

    if (sub->pending) {
        out = c->send_chain(c, sub->pending, 0);

        if (out == NGX_CHAIN_ERROR) {
            c->error = 1;
            ngx_http_async_dl_sse_close(sub);
            return;
        }

        sub->pending = out;

        if (out) {
            ngx_http_async_dl_sse_wait_write(sub);
            return;
        }
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    wev->handler = ngx_http_empty_handler;

    if (sub->last) {
        ngx_http_async_dl_sse_close(sub);
        return;
    }

    ngx_http_async_dl_sse_send(sub);
}


/* a detached stream ends: out of the hub, its texts, the connection */

static void
ngx_http_async_dl_sse_close(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_connection_t  *c;

    c = sub->c;

    ngx_http_async_dl_sse_leave(sub);
    ngx_http_async_dl_sse_free(sub);

    ngx_http_close_connection(c);
}


/* its texts, its mux and itself: the last of it */

static void
ngx_http_async_dl_sse_free(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_http_async_dl_follow_release(&sub->f);

    if (sub->mux) {
        ngx_http_async_dl_mux_free(sub->mux);
    }

    if (sub->detach.posted) {
        ngx_delete_posted_event(&sub->detach);
    }

    ngx_http_async_dl_m_gauge(subscribers[NGX_HTTP_ASYNC_DL_M_SSE], -1);

    ngx_free(sub);
}
