
/*
 * GET {p}stream/{id}: the job's events as Server-Sent Events, one subscriber
 * per request, fed by the job hub (ngx_http_async_dl_hub.c) through its
 * handler; no subscriber ever queries the database.
 *
 * A subscriber's states, in sub->state, changed only by
 * ngx_http_async_dl_sse_set_state():
 *
 *   WAITING --(the job's first state: headers, "connected")--> LIVE
 *      |    \                                                 |  ^
 *      |     \                    (a newer state; "progress") v  |
 *      |      \ (the job had ended)                           BEHIND
 *      |       v                                              |
 *      |     ENDING <-------------(the job ended, from LIVE or BEHIND)
 *      |       | (the final event: "completed", "failed", ...)
 *      v       v
 *     GONE <---+
 *
 *   WAITING -> GONE: 404 or 503 as JSON (or an initiate's JSON answer);
 *   any state -> GONE: the client went away, a send failed, the process
 *   exits.
 *
 * - WAITING: subscribed, nothing sent.  The first state of the job decides:
 *   the owner check (async_dl_owner) is made against the fetched owner; any
 *   failure is an ordinary JSON error (404 JOB_NOT_FOUND, 503
 *   DATABASE_UNAVAILABLE).  The first event, "connected", carries the
 *   "retry:" line and the job's whole status document.
 * - LIVE: up to date: "file" events are sent as they come.
 * - BEHIND: a newer state than the last one sent waits: "progress" (the
 *   latest state only, a slow client's progress is coalesced).
 * - ENDING: the job ended: the "file" events not yet sent, then the final
 *   event named after the job's status, which ends the response.
 * - GONE: out of the hub; nothing more is sent.
 *
 * A client that reads slowly keeps at most one event in flight: file
 * events wait in the job's log, progress is coalesced, the final event is
 * kept; memory does not grow with the number of events.  A heartbeat
 * ("event: heartbeat", data {}) is sent after async_dl_heartbeat without an
 * event.
 *
 * A reconnecting EventSource sends Last-Event-ID (or lastEventId in the
 * query): it gets "connected" with the current state, which says
 * everything it missed, so the value itself is not needed.
 *
 * Lifetimes: a subscriber lives in its request's pool; its request cleanup
 * takes it out of the hub and deletes its heartbeat timer at once (client
 * gone, final event sent, error), its pool cleanup drops its references to
 * shared texts once nginx is done sending them.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_hub.h"
#include "ngx_http_async_dl_sse.h"


#define NGX_HTTP_ASYNC_DL_SSE_RETRY      2000   /* "retry:", ms */
#define NGX_HTTP_ASYNC_DL_SSE_HEAD       96     /* retry:, event:, id: */


typedef enum {
    NGX_HTTP_ASYNC_DL_SSE_WAITING = 0,
    NGX_HTTP_ASYNC_DL_SSE_LIVE,
    NGX_HTTP_ASYNC_DL_SSE_BEHIND,
    NGX_HTTP_ASYNC_DL_SSE_ENDING,
    NGX_HTTP_ASYNC_DL_SSE_GONE
} ngx_http_async_dl_sse_state_e;


typedef struct {
    ngx_http_async_dl_watcher_t        watcher;   /* in the hub */
    ngx_http_request_t                *r;
    ngx_http_async_dl_sse_state_e      state;
    ngx_msec_t                         heartbeat_period;

    uint64_t                           seq;       /* last state sent */
    ngx_http_async_dl_hub_status_e     final;     /* ENDING: its name */
    ngx_http_async_dl_hub_text_t      *final_data;
    ngx_http_async_dl_hub_text_t      *sending;   /* in flight */

    ngx_buf_t                          head;      /* event:, id:, data: */
    ngx_buf_t                          body;      /* the shared JSON */
    ngx_buf_t                          tail;      /* the blank line */
    ngx_chain_t                        out[3];
    ngx_event_t                        heartbeat;
    u_char                             text[NGX_HTTP_ASYNC_DL_SSE_HEAD];
} ngx_http_async_dl_sse_sub_t;


static void ngx_http_async_dl_sse_set_state(ngx_http_async_dl_sse_sub_t *sub,
    ngx_http_async_dl_sse_state_e state);
static void ngx_http_async_dl_sse_news(ngx_http_async_dl_watcher_t *w,
    ngx_http_async_dl_hub_news_e news);
static void ngx_http_async_dl_sse_start(ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_update(ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_follow(ngx_http_async_dl_sse_sub_t *sub,
    ngx_http_async_dl_sse_state_e state);
static void ngx_http_async_dl_sse_refuse(ngx_http_async_dl_sse_sub_t *sub,
    ngx_uint_t status, const char *code, const char *msg);
static ngx_int_t ngx_http_async_dl_sse_created(ngx_http_request_t *r,
    ngx_http_async_dl_ctx_t *ctx);
static void ngx_http_async_dl_sse_send(ngx_http_async_dl_sse_sub_t *sub);
static ngx_int_t ngx_http_async_dl_sse_emit(ngx_http_async_dl_sse_sub_t *sub,
    const char *name, ngx_http_async_dl_hub_text_t *t, ngx_uint_t last);
static void ngx_http_async_dl_sse_wait_write(
    ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_write_handler(ngx_http_request_t *r);
static void ngx_http_async_dl_sse_heartbeat_handler(ngx_event_t *ev);
static void ngx_http_async_dl_sse_finish(ngx_http_async_dl_sse_sub_t *sub,
    ngx_int_t rc);
static void ngx_http_async_dl_sse_leave(ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_cleanup(void *data);
static void ngx_http_async_dl_sse_pool_cleanup(void *data);


static u_char  ngx_http_async_dl_sse_blank[] = "\n\n";


/* GET {p}stream/{id} */


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

    sub = ngx_pcalloc(r->pool, sizeof(ngx_http_async_dl_sse_sub_t));
    if (sub == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_http_cleanup_add(r, 0);
    pcln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL || pcln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     sub->state = NGX_HTTP_ASYNC_DL_SSE_WAITING;
     */

    sub->r = r;
    sub->watcher.handler = ngx_http_async_dl_sse_news;
    sub->watcher.data = sub;
    sub->heartbeat_period = alcf->heartbeat;
    sub->heartbeat.handler = ngx_http_async_dl_sse_heartbeat_handler;
    sub->heartbeat.data = sub;
    sub->heartbeat.log = r->connection->log;
    sub->heartbeat.cancelable = 1;

    rc = ngx_http_async_dl_hub_watch(&sub->watcher, &ctx->job_id,
                                     &alcf->prefix, r->connection->log);

    if (rc == NGX_DECLINED) {
        /* this process has no database */

        if (ctx->stream_status) {
            return ngx_http_async_dl_sse_created(r, ctx);
        }

        return ngx_http_async_dl_db_unavailable(r, "the database is not "
                                                "configured in this process");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_async_dl_sse_cleanup;
    cln->data = sub;
    pcln->handler = ngx_http_async_dl_sse_pool_cleanup;
    pcln->data = sub;

    ctx->stream = sub;

    r->write_event_handler = ngx_http_request_empty_handler;

    return ngx_http_async_dl_wait(r);
}


static void
ngx_http_async_dl_sse_set_state(ngx_http_async_dl_sse_sub_t *sub,
    ngx_http_async_dl_sse_state_e state)
{
#if (NGX_DEBUG)
    static const char  *names[] = {
        "waiting", "live", "behind", "ending", "gone"
    };

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, sub->r->connection->log, 0,
                   "async_dl sse: %s -> %s", names[sub->state], names[state]);
#endif

    sub->state = state;
}


/* the hub's news of the job */

static void
ngx_http_async_dl_sse_news(ngx_http_async_dl_watcher_t *w,
    ngx_http_async_dl_hub_news_e news)
{
    ngx_http_async_dl_sse_sub_t *sub = w->data;

    ngx_connection_t  *c;

    c = sub->r->connection;

    if (news == NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE) {
        ngx_http_async_dl_sse_refuse(sub, NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "DATABASE_UNAVAILABLE",
                                     "the database is unavailable, "
                                     "retry later");

    } else if (sub->state == NGX_HTTP_ASYNC_DL_SSE_WAITING) {
        ngx_http_async_dl_sse_start(sub);

    } else {
        ngx_http_async_dl_sse_update(sub);
    }

    ngx_http_run_posted_requests(c);
}


/* the first answer: a JSON error, or the stream and its "connected" */

static void
ngx_http_async_dl_sse_start(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_int_t                      rc;
    ngx_str_t                      owner;
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_async_dl_ctx_t       *ctx;
    ngx_http_async_dl_hub_job_t   *job;
    ngx_http_core_loc_conf_t      *clcf;

    r = sub->r;
    c = r->connection;
    job = sub->watcher.job;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    owner = ctx->owner;

    if (job->status == NGX_HTTP_ASYNC_DL_HUB_DELETED
        || owner.len != job->owner.len
        || (owner.len && ngx_memcmp(owner.data, job->owner.data, owner.len)
                         != 0))
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

    ngx_http_async_dl_hub_started(&sub->watcher);

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->tcp_nodelay && ngx_tcp_nodelay(c) != NGX_OK) {
        ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
        return;
    }

    /* a graceful shutdown ends the stream, the client reconnects */
    if (r->http_version < NGX_HTTP_VERSION_20) {
        c->idle = 1;
    }

    sub->seq = job->seq;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "async_dl sse: streaming job %s from %uL", job->id,
                   job->seq);

    /* still WAITING: "connected" carries "retry:" */

    if (ngx_http_async_dl_sse_emit(sub, "connected", job->full, 0)
        != NGX_OK)
    {
        ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
        return;
    }

    ngx_http_async_dl_sse_follow(sub, NGX_HTTP_ASYNC_DL_SSE_LIVE);
}


/* a state of the job, newer or not than the last one sent */

static void
ngx_http_async_dl_sse_update(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_http_async_dl_hub_job_t  *job;

    job = sub->watcher.job;

    if (sub->state == NGX_HTTP_ASYNC_DL_SSE_ENDING || sub->seq >= job->seq) {
        return;
    }

    ngx_http_async_dl_sse_follow(sub, NGX_HTTP_ASYNC_DL_SSE_BEHIND);
}


/* the job ended: its final event is kept; else the state given; then send */

static void
ngx_http_async_dl_sse_follow(ngx_http_async_dl_sse_sub_t *sub,
    ngx_http_async_dl_sse_state_e state)
{
    ngx_http_async_dl_hub_job_t  *job;

    job = sub->watcher.job;

    if (ngx_http_async_dl_hub_ended(job->status)) {
        sub->final = job->status;
        sub->final_data = job->full;
        job->full->refs++;
        state = NGX_HTTP_ASYNC_DL_SSE_ENDING;
    }

    ngx_http_async_dl_sse_set_state(sub, state);
    ngx_http_async_dl_sse_send(sub);
}


static void
ngx_http_async_dl_sse_refuse(ngx_http_async_dl_sse_sub_t *sub,
    ngx_uint_t status, const char *code, const char *msg)
{
    ngx_int_t                 rc;
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

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        rc = ngx_http_async_dl_db_unavailable(r, "%s", msg);

    } else {
        rc = ngx_http_async_dl_send_error(r, status, code, "%s", msg);
    }

    ngx_http_finalize_request(r, rc);
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
    ngx_connection_t              *c;
    ngx_http_async_dl_hub_job_t   *job;
    ngx_http_async_dl_hub_text_t  *t;

    c = sub->r->connection;

    for ( ;; ) {

        if (c->buffered) {
            ngx_http_async_dl_sse_wait_write(sub);
            return;
        }

        if (sub->sending) {
            ngx_http_async_dl_hub_text_release(sub->sending);
            sub->sending = NULL;
        }

        if (sub->state == NGX_HTTP_ASYNC_DL_SSE_GONE) {
            return;
        }

        job = sub->watcher.job;

        t = ngx_http_async_dl_hub_next_file(&sub->watcher);

        if (t) {
            if (ngx_http_async_dl_sse_emit(sub, "file", t, 0) != NGX_OK) {
                ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
                return;
            }

            continue;
        }

        switch (sub->state) {

        case NGX_HTTP_ASYNC_DL_SSE_ENDING:
            t = sub->final_data;
            sub->final_data = NULL;
            sub->seq = t->seq;

            /* ends the request: sub may be gone when it returns */
            (void) ngx_http_async_dl_sse_emit(sub,
                      (char *) ngx_http_async_dl_hub_status_name(sub->final)
                                                                   ->data,
                      t, 1);
            ngx_http_async_dl_hub_text_release(t);
            return;

        case NGX_HTTP_ASYNC_DL_SSE_BEHIND:
            ngx_http_async_dl_sse_set_state(sub, NGX_HTTP_ASYNC_DL_SSE_LIVE);
            sub->seq = job->seq;

            if (ngx_http_async_dl_sse_emit(sub, "progress", job->summary, 0)
                != NGX_OK)
            {
                ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
                return;
            }

            continue;

        default: /* LIVE */
            return;
        }
    }
}


/*
 * One event: "retry:" the first time, "event:", "id:" and "data: " from
 * the subscriber's own buffer, the shared JSON, the blank line.  A final
 * event ends the response and the request.
 */

static ngx_int_t
ngx_http_async_dl_sse_emit(ngx_http_async_dl_sse_sub_t *sub,
    const char *name, ngx_http_async_dl_hub_text_t *t, ngx_uint_t last)
{
    u_char              *p;
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = sub->r;
    p = sub->text;

    if (sub->state == NGX_HTTP_ASYNC_DL_SSE_WAITING) {
        p = ngx_sprintf(p, "retry: %d\n", NGX_HTTP_ASYNC_DL_SSE_RETRY);
    }

    p = ngx_sprintf(p, "event: %s\nid: %uL\ndata: ", name, t->seq);

    ngx_memzero(&sub->head, sizeof(ngx_buf_t));
    sub->head.start = sub->text;
    sub->head.pos = sub->text;
    sub->head.last = p;
    sub->head.end = p;
    sub->head.memory = 1;

    ngx_memzero(&sub->body, sizeof(ngx_buf_t));
    sub->body.start = t->text;
    sub->body.pos = t->text;
    sub->body.last = t->text + t->len;
    sub->body.end = sub->body.last;
    sub->body.memory = 1;

    ngx_memzero(&sub->tail, sizeof(ngx_buf_t));
    sub->tail.start = ngx_http_async_dl_sse_blank;
    sub->tail.pos = ngx_http_async_dl_sse_blank;
    sub->tail.last = ngx_http_async_dl_sse_blank + 2;
    sub->tail.end = sub->tail.last;
    sub->tail.memory = 1;
    sub->tail.flush = 1;
    sub->tail.last_in_chain = 1;

    if (last) {
        sub->tail.last_buf = (r == r->main) ? 1 : 0;
    }

    sub->out[0].buf = &sub->head;
    sub->out[0].next = &sub->out[1];
    sub->out[1].buf = &sub->body;
    sub->out[1].next = &sub->out[2];
    sub->out[2].buf = &sub->tail;
    sub->out[2].next = NULL;

    if (t->len == 0) {
        /* an empty buffer in the middle of a chain is an nginx alert */
        sub->out[0].next = &sub->out[2];
    }

    /* held until nginx is done with the buffers (see send, pool cleanup) */
    sub->sending = t;
    t->refs++;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "async_dl sse: event %s id %uL, %uz bytes", name, t->seq,
                   t->len);

    rc = ngx_http_output_filter(r, sub->out);

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

    u_char              *p;
    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = sub->r;
    c = r->connection;

    if (c->destroyed || sub->state == NGX_HTTP_ASYNC_DL_SSE_GONE) {
        return;
    }

    if (c->buffered) {
        /* the client is not reading: the send timeout deals with it */
        ngx_add_timer(&sub->heartbeat, sub->heartbeat_period);
        return;
    }

    if (sub->sending) {
        ngx_http_async_dl_hub_text_release(sub->sending);
        sub->sending = NULL;
    }

    p = ngx_sprintf(sub->text, "event: heartbeat\nid: %uL\ndata: {}\n\n",
                    sub->seq);

    ngx_memzero(&sub->head, sizeof(ngx_buf_t));
    sub->head.start = sub->text;
    sub->head.pos = sub->text;
    sub->head.last = p;
    sub->head.end = p;
    sub->head.memory = 1;
    sub->head.flush = 1;

    sub->out[0].buf = &sub->head;
    sub->out[0].next = NULL;

    rc = ngx_http_output_filter(r, sub->out);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);

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
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, sub->r->connection->log, 0,
                   "async_dl sse: stream ends, rc %i", rc);

    ngx_http_async_dl_sse_leave(sub);
    ngx_http_finalize_request(sub->r, rc);
}


static void
ngx_http_async_dl_sse_leave(ngx_http_async_dl_sse_sub_t *sub)
{
    if (sub->state == NGX_HTTP_ASYNC_DL_SSE_GONE) {
        return;
    }

    if (sub->heartbeat.timer_set) {
        ngx_del_timer(&sub->heartbeat);
    }

    ngx_http_async_dl_sse_set_state(sub, NGX_HTTP_ASYNC_DL_SSE_GONE);
    ngx_http_async_dl_hub_leave(&sub->watcher);
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

    if (sub->sending) {
        ngx_http_async_dl_hub_text_release(sub->sending);
        sub->sending = NULL;
    }

    if (sub->final_data) {
        ngx_http_async_dl_hub_text_release(sub->final_data);
        sub->final_data = NULL;
    }
}
