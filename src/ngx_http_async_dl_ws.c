
/*
 * GET {p}ws/{id}: the job's events over a WebSocket (RFC 6455), one
 * subscriber per connection, fed by the job hub (ngx_http_async_dl_hub.c)
 * through its handler like the event stream (ngx_http_async_dl_sse.c);
 * no subscriber ever queries the database.
 *
 * What it sends, and when, is its follower's (ngx_http_async_dl_follow.h),
 * as for the event stream: "connected", "file" events, the latest
 * "progress", the final event.  Each event is one text frame:
 * {"event":"<name>","id":<seq>,"data":<the same JSON>}.
 *
 * The connection's states, in sub->state:
 *
 *   WAITING --(the job's first state: 101, "connected")--> OPEN
 *      |                                                   |
 *      |     (the final event and a close frame 1000; the client's close;
 *      |      a bad frame: 1002, 1007, 1009)                v
 *      v                                                 CLOSING
 *     GONE <--(the client's close, our close frame out, 5 s; a fault)
 *
 * - WAITING: the handshake was checked (a bad one is a 400 or 426 with a
 *   JSON error and nothing else), subscribed, nothing sent.  The first
 *   state of the job decides: the owner check is made against the fetched
 *   owner; a refusal is an ordinary JSON error (404, 503) instead of 101.
 * - OPEN: events go out as the follower has them.
 * - CLOSING: out of the hub; our close frame is queued.  After the final
 *   event it waits up to NGX_HTTP_ASYNC_DL_WS_LINGER for the client's
 *   close; after the client's close or a bad frame the connection closes
 *   once the close frame is out.  A graceful shutdown of nginx closes the
 *   connection (the client sees 1006 and reconnects, as an event stream
 *   does).
 *
 * Frames go out on the connection itself (c->send_chain), after the 101
 * has left nginx's buffers: one event in flight at a time, the control
 * frames (pong, ping, close) between events, never inside one.  A ping
 * goes out every async_dl_heartbeat; a client that has not answered the
 * last one by the next is gone, and its connection closes.  Frames from
 * the client are read as they arrive (ngx_http_async_dl_ws_frame.c): data
 * messages are checked and dropped.
 *
 * Lifetimes: a subscriber is allocated on its own (ngx_calloc) and its
 * request owns it: the request cleanup takes it out of the hub and deletes
 * its timer, the pool cleanup drops its references to shared texts and
 * frees it.  The request ends with ngx_http_async_dl_ws_end(), which
 * closes the connection; nothing touches the subscriber after that.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/sha.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_detach.h"
#include "ngx_http_async_dl_follow.h"
#include "ngx_http_async_dl_metrics.h"
#include "ngx_http_async_dl_mux.h"
#include "ngx_http_async_dl_ws.h"
#include "ngx_http_async_dl_ws_frame.h"


#define NGX_HTTP_ASYNC_DL_WS_TEXT_MAX   160     /* frame head, {"event":..,
                                                   "jobId":..,"data": */
#define NGX_HTTP_ASYNC_DL_WS_CTL_MAX    384     /* control frames waiting */
#define NGX_HTTP_ASYNC_DL_WS_LINGER     5000    /* for the client's close */
#define NGX_HTTP_ASYNC_DL_WS_CLOSE_LEN  4       /* a close frame with a code */
#define NGX_HTTP_ASYNC_DL_WS_READS      16      /* reads per read event */
#define NGX_HTTP_ASYNC_DL_WS_ACCEPT_LEN 28      /* base64 of a SHA-1 */


typedef enum {
    NGX_HTTP_ASYNC_DL_WS_WAITING = 0,
    NGX_HTTP_ASYNC_DL_WS_OPEN,
    NGX_HTTP_ASYNC_DL_WS_CLOSING,
    NGX_HTTP_ASYNC_DL_WS_GONE
} ngx_http_async_dl_ws_state_e;


typedef struct {
    ngx_http_async_dl_follower_t       f;         /* first: the watcher */
    ngx_http_async_dl_mux_t           *mux;       /* all an owner's jobs:
                                                     f is not used */
    ngx_http_request_t                *r;         /* NULL once detached */
    ngx_connection_t                  *c;
    ngx_http_async_dl_ws_state_e       state;
    ngx_msec_t                         heartbeat_period;
    ngx_msec_t                         send_timeout;
    ngx_http_cleanup_t                *cln;
    ngx_pool_cleanup_t                *pcln;
    ngx_event_t                        detach;    /* posted when idle */

    /* the event in flight: frame head and {"event":..,"data":, JSON, } */
    ngx_buf_t                          bufs[3];
    ngx_chain_t                        out[3];
    ngx_chain_t                       *pending;   /* not sent yet */
    u_char                             text[NGX_HTTP_ASYNC_DL_WS_TEXT_MAX];

    /* control frames, sent after the event in flight */
    u_char                             ctl[NGX_HTTP_ASYNC_DL_WS_CTL_MAX];
    size_t                             ctl_pos;
    size_t                             ctl_len;

    ngx_event_t                        timer;     /* ping; CLOSING: linger */
    ngx_http_async_dl_ws_reader_t      rd;
    u_char                             accept[NGX_HTTP_ASYNC_DL_WS_ACCEPT_LEN];

    unsigned                           ping_out:1;   /* no pong yet */
    unsigned                           close_queued:1;
    unsigned                           end_when_sent:1;  /* peer closed */
    unsigned                           failed:1;     /* it broke the protocol */
    unsigned                           lingering:1;  /* our close is out */
    unsigned                           discard:1;    /* input ignored */
    unsigned                           detached:1;
    unsigned                           stays:1;      /* cannot detach */
} ngx_http_async_dl_ws_sub_t;


static ngx_int_t ngx_http_async_dl_ws_handshake(ngx_http_request_t *r,
    u_char *accept, ngx_int_t *answered);
static void ngx_http_async_dl_ws_news(ngx_http_async_dl_watcher_t *w,
    ngx_http_async_dl_hub_news_e news);
static void ngx_http_async_dl_ws_mux_news(void *data,
    ngx_http_async_dl_hub_news_e news);
static void ngx_http_async_dl_ws_tell(ngx_http_async_dl_ws_sub_t *sub,
    ngx_http_async_dl_hub_news_e news);
static void ngx_http_async_dl_ws_leave(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_start(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_refuse(ngx_http_async_dl_ws_sub_t *sub,
    ngx_uint_t status, const char *code, const char *msg);
static ngx_int_t ngx_http_async_dl_ws_send(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_emit(ngx_http_async_dl_ws_sub_t *sub,
    ngx_http_async_dl_event_t *ev);
static void ngx_http_async_dl_ws_control(ngx_http_async_dl_ws_sub_t *sub,
    ngx_uint_t opcode, u_char *payload, size_t len);
static void ngx_http_async_dl_ws_close(ngx_http_async_dl_ws_sub_t *sub,
    ngx_uint_t code, ngx_uint_t end_when_sent);
static ngx_int_t ngx_http_async_dl_ws_flush(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_read_handler(ngx_http_request_t *r);
static void ngx_http_async_dl_ws_conn_read(ngx_event_t *rev);
static void ngx_http_async_dl_ws_receive(ngx_http_async_dl_ws_sub_t *sub);
static ngx_int_t ngx_http_async_dl_ws_input(ngx_http_async_dl_ws_sub_t *sub,
    u_char *p, u_char *last);
static void ngx_http_async_dl_ws_write_handler(ngx_http_request_t *r);
static void ngx_http_async_dl_ws_conn_write(ngx_event_t *wev);
static void ngx_http_async_dl_ws_write(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_detach(ngx_event_t *ev);
static void ngx_http_async_dl_ws_timer_handler(ngx_event_t *ev);
static void ngx_http_async_dl_ws_end(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_cleanup(void *data);
static void ngx_http_async_dl_ws_pool_cleanup(void *data);


static u_char  ngx_http_async_dl_ws_brace[] = "}";


/* GET {p}ws/{id}, and GET {p}ws: all the owner's jobs */

ngx_int_t
ngx_http_async_dl_ws(ngx_http_request_t *r)
{
    u_char                         accept[NGX_HTTP_ASYNC_DL_WS_ACCEPT_LEN];
    ngx_int_t                      rc;
    ngx_pool_cleanup_t            *pcln;
    ngx_http_cleanup_t            *cln;
    ngx_http_async_dl_ctx_t       *ctx;
    ngx_http_async_dl_ws_sub_t    *sub;
    ngx_http_async_dl_loc_conf_t  *alcf;

    if (ngx_http_async_dl_ws_handshake(r, accept, &rc) != NGX_OK) {
        return rc;                          /* refused, as JSON */
    }

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    /* the request's: freed with its pool */
    sub = ngx_http_async_dl_follow_new(r, sizeof(ngx_http_async_dl_ws_sub_t),
                                       ngx_http_async_dl_ws_news,
                                       ngx_http_async_dl_ws_pool_cleanup,
                                       &cln, &pcln);
    if (sub == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * set by ngx_calloc():
     *
     *     sub->state = NGX_HTTP_ASYNC_DL_WS_WAITING;
     *     sub->pending = NULL;
     *     sub->ctl_len = 0;
     */

    sub->r = r;
    sub->c = r->connection;
    sub->cln = cln;
    sub->pcln = pcln;
    sub->heartbeat_period = alcf->heartbeat;

    ngx_http_async_dl_m_gauge(subscribers[NGX_HTTP_ASYNC_DL_M_WS], 1);
    sub->detach.handler = ngx_http_async_dl_ws_detach;
    sub->detach.data = sub;
    sub->detach.log = r->connection->log;
    sub->timer.handler = ngx_http_async_dl_ws_timer_handler;
    sub->timer.data = sub;
    sub->timer.log = r->connection->log;
    sub->timer.cancelable = 1;
    ngx_memcpy(sub->accept, accept, NGX_HTTP_ASYNC_DL_WS_ACCEPT_LEN);

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    if (ctx->job_id.len == 0) {
        return ngx_http_async_dl_mux_open(r, ngx_http_async_dl_ws_mux_news,
                                          sub, &sub->mux, cln,
                                          ngx_http_async_dl_ws_cleanup);
    }

    rc = ngx_http_async_dl_follow_watch(r, &sub->f, cln,
                                        ngx_http_async_dl_ws_cleanup);

    if (rc == NGX_DECLINED) {
        return ngx_http_async_dl_db_unavailable(r, "the database is not "
                                                "configured in this process");
    }

    return rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR : rc;
}


/*
 * The client's handshake (RFC 6455, 4.2.1): HTTP/1.1, Upgrade: websocket,
 * Connection: upgrade, Sec-WebSocket-Version: 13 (else 426 naming it) and
 * a Sec-WebSocket-Key of 16 bytes: NGX_OK and its answer in accept; or
 * NGX_DECLINED, refused with a JSON error, *answered what sending it gave.
 */

static ngx_int_t
ngx_http_async_dl_ws_handshake(ngx_http_request_t *r, u_char *accept,
    ngx_int_t *answered)
{
    u_char     key[64], digest[SHA_DIGEST_LENGTH];
    ngx_str_t  version, k, decoded, src, dst;

    static const char  guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

    if (r->http_version != NGX_HTTP_VERSION_11
        || r->headers_in.content_length_n > 0 || r->headers_in.chunked)
    {
        *answered = ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                 "INVALID_REQUEST",
                                                 "a WebSocket needs "
                                                 "HTTP/1.1 and a GET "
                                                 "without a body");
        return NGX_DECLINED;
    }

    if (!ngx_http_async_dl_header_has(r, "Upgrade", "websocket")
        || !ngx_http_async_dl_header_has(r, "Connection", "upgrade"))
    {
        *answered = ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                 "INVALID_REQUEST",
                                                 "a WebSocket handshake "
                                                 "needs \"Upgrade: "
                                                 "websocket\" and "
                                                 "\"Connection: upgrade\"");
        return NGX_DECLINED;
    }

    if (ngx_http_async_dl_header_in(r, "Sec-WebSocket-Version", &version)
        != NGX_OK
        || version.len != 2 || ngx_strncmp(version.data, "13", 2) != 0)
    {
        if (ngx_http_async_dl_add_header(r, "Sec-WebSocket-Version",
                                         (u_char *) "13", 2)
            != NGX_OK)
        {
            *answered = NGX_HTTP_INTERNAL_SERVER_ERROR;
            return NGX_DECLINED;
        }

        *answered = ngx_http_async_dl_send_error(r, 426, "UPGRADE_REQUIRED",
                                                 "only WebSocket version "
                                                 "13 is spoken here");
        return NGX_DECLINED;
    }

    if (ngx_http_async_dl_header_in(r, "Sec-WebSocket-Key", &k) != NGX_OK
        || k.len != 24)
    {
        goto bad_key;
    }

    decoded.data = key;
    if (ngx_decode_base64(&decoded, &k) != NGX_OK || decoded.len != 16) {
        goto bad_key;
    }

    /* SHA-1 of the key as sent and the GUID, in base64 */
    ngx_memcpy(key, k.data, 24);
    ngx_memcpy(key + 24, guid, sizeof(guid) - 1);
    (void) SHA1(key, 24 + sizeof(guid) - 1, digest);

    src.data = digest;
    src.len = SHA_DIGEST_LENGTH;
    dst.data = accept;
    ngx_encode_base64(&dst, &src);

    return NGX_OK;

bad_key:

    *answered = ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                             "INVALID_REQUEST",
                                             "Sec-WebSocket-Key must be "
                                             "16 bytes in base64");
    return NGX_DECLINED;
}


/* the hub's news of the job; the mux's of the owner's jobs */

static void
ngx_http_async_dl_ws_news(ngx_http_async_dl_watcher_t *w,
    ngx_http_async_dl_hub_news_e news)
{
    ngx_http_async_dl_ws_sub_t *sub = w->data;

    if (sub->state != NGX_HTTP_ASYNC_DL_WS_WAITING
        && news == NGX_HTTP_ASYNC_DL_HUB_STATE)
    {
        ngx_http_async_dl_follow_news(&sub->f);
    }

    ngx_http_async_dl_ws_tell(sub, news);
}


static void
ngx_http_async_dl_ws_mux_news(void *data, ngx_http_async_dl_hub_news_e news)
{
    ngx_http_async_dl_ws_tell(data, news);
}


static void
ngx_http_async_dl_ws_tell(ngx_http_async_dl_ws_sub_t *sub,
    ngx_http_async_dl_hub_news_e news)
{
    ngx_uint_t         detached;
    ngx_connection_t  *c;

    c = sub->c;
    detached = sub->detached;

    if (sub->state == NGX_HTTP_ASYNC_DL_WS_WAITING) {
        if (news == NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE) {
            ngx_http_async_dl_ws_refuse(sub, NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "DATABASE_UNAVAILABLE",
                                        "the database is unavailable, "
                                        "retry later");
        } else {
            ngx_http_async_dl_ws_start(sub);
        }

    } else if (news == NGX_HTTP_ASYNC_DL_HUB_STATE) {
        (void) ngx_http_async_dl_ws_send(sub);
    }

    /* sub may be gone: only the connection is looked at */

    if (!detached) {
        /* (a detach runs from its own event, never from here) */
        ngx_http_run_posted_requests(c);
    }
}


/* the first answer: a JSON error, or 101 and "connected" */

static void
ngx_http_async_dl_ws_start(ngx_http_async_dl_ws_sub_t *sub)
{
    u_char                    *p;
    ngx_int_t                  rc;
    ngx_buf_t                 *b;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_async_dl_ctx_t   *ctx;
    ngx_http_core_loc_conf_t  *clcf;

    r = sub->r;
    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    if (sub->mux == NULL
        && ngx_http_async_dl_follow_open(&sub->f, &ctx->owner) != NGX_OK)
    {
        ngx_http_async_dl_ws_refuse(sub, NGX_HTTP_NOT_FOUND,
                                    "JOB_NOT_FOUND", "no such job");
        return;
    }

    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");
    r->headers_out.content_length_n = -1;
    r->keepalive = 0;

    ctx->replied = 1;

    if (ngx_http_async_dl_add_header(r, "Upgrade", (u_char *) "websocket", 9)
        != NGX_OK
        || ngx_http_async_dl_add_header(r, "Sec-WebSocket-Accept",
                                        sub->accept,
                                        NGX_HTTP_ASYNC_DL_WS_ACCEPT_LEN)
           != NGX_OK)
    {
        ngx_http_async_dl_ws_end(sub);
        return;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK
        || ngx_http_send_special(r, NGX_HTTP_FLUSH) == NGX_ERROR)
    {
        ngx_http_async_dl_ws_end(sub);
        return;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
    sub->send_timeout = clcf->send_timeout;

    if (clcf->tcp_nodelay && ngx_tcp_nodelay(c) != NGX_OK) {
        ngx_http_async_dl_ws_end(sub);
        return;
    }

    /* a graceful shutdown closes it */
    c->idle = 1;
    c->log->action = "sending job events over a WebSocket";

    sub->state = NGX_HTTP_ASYNC_DL_WS_OPEN;
    r->read_event_handler = ngx_http_async_dl_ws_read_handler;
    r->write_event_handler = ngx_http_async_dl_ws_write_handler;

    ngx_add_timer(&sub->timer, sub->heartbeat_period);

    /* frames that came while the request waited were only peeked at */
    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);

    } else if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_async_dl_ws_end(sub);
        return;
    }

    /* "connected", then what follows */
    if (ngx_http_async_dl_ws_send(sub) == NGX_DONE) {
        return;
    }

    /* frames the client sent right after its handshake */
    b = r->header_in;

    if (b && b->pos < b->last) {
        p = b->pos;
        b->pos = b->last;
        (void) ngx_http_async_dl_ws_input(sub, p, b->last);
    }
}


static void
ngx_http_async_dl_ws_refuse(ngx_http_async_dl_ws_sub_t *sub,
    ngx_uint_t status, const char *code, const char *msg)
{
    ngx_http_async_dl_ws_leave(sub);
    ngx_http_finalize_request(sub->r,
                              ngx_http_async_dl_follow_refusal(sub->r, status,
                                                               code, msg));
}


/*
 * Sends what is pending, in order: the event in flight and the control
 * frames, then "file" events, the latest progress, the final event and
 * the close frame; ends the connection once CLOSING has nothing to wait
 * for: then NGX_DONE, and sub is gone.
 */

static ngx_int_t
ngx_http_async_dl_ws_send(ngx_http_async_dl_ws_sub_t *sub)
{
    ngx_int_t                   rc;
    ngx_http_async_dl_event_t   ev;

    for ( ;; ) {

        rc = ngx_http_async_dl_ws_flush(sub);

        if (rc == NGX_ERROR) {
            ngx_http_async_dl_ws_end(sub);
            return NGX_DONE;
        }

        if (rc == NGX_AGAIN) {
            return NGX_OK;
        }

        if (sub->state == NGX_HTTP_ASYNC_DL_WS_CLOSING) {
            /* our close frame is out */

            if (sub->end_when_sent) {
                ngx_http_async_dl_ws_end(sub);
                return NGX_DONE;
            }

            if (!sub->lingering) {
                sub->lingering = 1;

                if (sub->failed
                    && ngx_shutdown_socket(sub->c->fd, NGX_WRITE_SHUTDOWN)
                       == -1)
                {
                    ngx_http_async_dl_ws_end(sub);
                    return NGX_DONE;
                }

                ngx_add_timer(&sub->timer, NGX_HTTP_ASYNC_DL_WS_LINGER);
            }

            return NGX_OK;
        }

        if (sub->state != NGX_HTTP_ASYNC_DL_WS_OPEN) {
            return NGX_OK;
        }

        rc = sub->mux ? ngx_http_async_dl_mux_next(sub->mux, &ev)
                      : ngx_http_async_dl_follow_next(&sub->f, &ev);

        if (rc == NGX_DECLINED) {
            if (!sub->detached && !sub->stays && !sub->detach.posted) {
                /* idle: give the request back, from the event loop */
                ngx_post_event(&sub->detach, &ngx_posted_events);
            }

            return NGX_OK;
        }

        ngx_http_async_dl_ws_emit(sub, &ev);

        if (rc == NGX_DONE) {
            /* the client closes, or the linger ends it */
            ngx_http_async_dl_ws_close(sub, NGX_HTTP_ASYNC_DL_WS_NORMAL, 0);
        }
    }
}


/*
 * One event as a text frame: {"event":"<name>","id":<id>,"data":<t>};
 * in a stream of all an owner's jobs, "jobId":"<id>" before "data" (and
 * "id":null before the first id).
 */

static void
ngx_http_async_dl_ws_emit(ngx_http_async_dl_ws_sub_t *sub,
    ngx_http_async_dl_event_t *ev)
{
    u_char                        prefix[NGX_HTTP_ASYNC_DL_WS_TEXT_MAX], *p;
    u_char                       *last, *end;
    uint64_t                      len;
    ngx_http_async_dl_hub_text_t  *t;

    t = ev->t;
    end = prefix + sizeof(prefix) - NGX_HTTP_ASYNC_DL_WS_HEAD_MAX;

    last = ngx_slprintf(prefix, end, "{\"event\":\"%s\",\"id\":", ev->name);

    if (ev->has_id) {
        last = ngx_slprintf(last, end, "%uL", ev->id);

    } else {
        last = ngx_slprintf(last, end, "null");
    }

    if (ev->job) {
        last = ngx_slprintf(last, end, ",\"jobId\":\"%*s\"",
                            (size_t) NGX_HTTP_ASYNC_DL_UUID_LEN, ev->job);
    }

    last = ngx_slprintf(last, end, ",\"data\":");

    len = (last - prefix) + t->len + 1;

    p = ngx_http_async_dl_ws_head(sub->text, NGX_HTTP_ASYNC_DL_WS_TEXT, len);
    p = ngx_cpymem(p, prefix, last - prefix);

    ngx_http_async_dl_follow_chain(sub->out, sub->bufs, sub->text, p, t,
                                   ngx_http_async_dl_ws_brace,
                                   ngx_http_async_dl_ws_brace + 1);

    /* (the follower holds t until the next event, after this frame is
     * out: see send, pool cleanup) */
    sub->pending = sub->out;

    ngx_http_async_dl_m_count(events[NGX_HTTP_ASYNC_DL_M_WS]);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, sub->c->log, 0,
                   "async_dl ws: event %s id %uL, %uL bytes", ev->name,
                   ev->id, len);
}


/* a control frame, after the event in flight; dropped when there is no
 * room (a pong: the client pings faster than it reads) */

static void
ngx_http_async_dl_ws_control(ngx_http_async_dl_ws_sub_t *sub,
    ngx_uint_t opcode, u_char *payload, size_t len)
{
    u_char  *p;

    if (sub->close_queued) {
        return;                             /* nothing after a close */
    }

    if (sub->ctl_pos == sub->ctl_len) {
        sub->ctl_pos = 0;
        sub->ctl_len = 0;
    }

    /* room is kept for the close frame */
    if (sub->ctl_len + 2 + len
        > NGX_HTTP_ASYNC_DL_WS_CTL_MAX
          - (opcode == NGX_HTTP_ASYNC_DL_WS_CLOSE
             ? 0 : NGX_HTTP_ASYNC_DL_WS_CLOSE_LEN))
    {
        ngx_log_error(NGX_LOG_INFO, sub->c->log, 0,
                      "async_dl ws: control frame dropped, the client "
                      "does not read");
        return;
    }

    p = ngx_http_async_dl_ws_head(sub->ctl + sub->ctl_len, opcode, len);

    if (len) {
        p = ngx_cpymem(p, payload, len);
    }

    sub->ctl_len = p - sub->ctl;
}


/*
 * Our close frame (a code, or none for 1005), and CLOSING: out of the hub,
 * no more pings.  Once the frame is out (see send) the connection ends if
 * the client has closed (end_when_sent); else it waits up to the linger
 * for the client's close, reading and dropping what comes (after a bad
 * frame, with our side of the connection shut down).
 */

static void
ngx_http_async_dl_ws_close(ngx_http_async_dl_ws_sub_t *sub, ngx_uint_t code,
    ngx_uint_t end_when_sent)
{
    u_char  payload[2];

    if (!sub->close_queued) {
        payload[0] = (u_char) (code >> 8);
        payload[1] = (u_char) code;

        ngx_http_async_dl_ws_control(sub, NGX_HTTP_ASYNC_DL_WS_CLOSE, payload,
                                     code == NGX_HTTP_ASYNC_DL_WS_NO_STATUS
                                     ? 0 : 2);
        sub->close_queued = 1;
    }

    if (end_when_sent) {
        sub->end_when_sent = 1;
    }

    if (sub->state != NGX_HTTP_ASYNC_DL_WS_CLOSING) {
        ngx_http_async_dl_ws_leave(sub);
        sub->state = NGX_HTTP_ASYNC_DL_WS_CLOSING;

        if (sub->timer.timer_set) {
            ngx_del_timer(&sub->timer);
        }
    }
}


/*
 * Out with what waits: the 101 if still in nginx's buffers, the event in
 * flight, the control frames.  NGX_OK: all out; NGX_AGAIN: waiting to
 * write; NGX_ERROR: the connection failed.
 */

static ngx_int_t
ngx_http_async_dl_ws_flush(ngx_http_async_dl_ws_sub_t *sub)
{
    ssize_t              n;
    ngx_event_t         *wev;
    ngx_chain_t         *out;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = sub->r;
    c = sub->c;
    wev = c->write;

    if (c->error) {
        return NGX_ERROR;
    }

    if (!sub->detached && c->buffered) {
        /* the 101, still in nginx's buffers */
        if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (c->buffered) {
            goto again;
        }
    }

    if (sub->pending) {
        out = c->send_chain(c, sub->pending, 0);

        if (out == NGX_CHAIN_ERROR) {
            c->error = 1;
            return NGX_ERROR;
        }

        sub->pending = out;

        if (out) {
            goto again;
        }
    }

    while (sub->ctl_pos < sub->ctl_len) {
        n = c->send(c, sub->ctl + sub->ctl_pos, sub->ctl_len - sub->ctl_pos);

        if (n == NGX_ERROR) {
            c->error = 1;
            return NGX_ERROR;
        }

        if (n == NGX_AGAIN) {
            goto again;
        }

        sub->ctl_pos += n;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    return NGX_OK;

again:

    if (!wev->timer_set) {
        ngx_add_timer(wev, sub->send_timeout);
    }

    if (ngx_handle_write_event(wev, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_AGAIN;
}


/* the write handlers: the request's, then the connection's */

static void
ngx_http_async_dl_ws_write_handler(ngx_http_request_t *r)
{
    ngx_http_async_dl_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    ngx_http_async_dl_ws_write(ctx->stream);
}


static void
ngx_http_async_dl_ws_conn_write(ngx_event_t *wev)
{
    ngx_connection_t  *c;

    c = wev->data;
    ngx_http_async_dl_ws_write(c->data);
}


static void
ngx_http_async_dl_ws_write(ngx_http_async_dl_ws_sub_t *sub)
{
    ngx_connection_t  *c;

    c = sub->c;

    if (c->write->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out reading the WebSocket");
        c->timedout = 1;
        ngx_http_async_dl_ws_end(sub);
        return;
    }

    (void) ngx_http_async_dl_ws_send(sub);
}


/* the read handlers: the request's, then the connection's */

static void
ngx_http_async_dl_ws_read_handler(ngx_http_request_t *r)
{
    ngx_http_async_dl_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    ngx_http_async_dl_ws_receive(ctx->stream);
}


static void
ngx_http_async_dl_ws_conn_read(ngx_event_t *rev)
{
    ngx_connection_t  *c;

    c = rev->data;

    if (c->close) {
        /* nginx is shutting down: the client reconnects elsewhere */
        ngx_http_async_dl_ws_end(c->data);
        return;
    }

    ngx_http_async_dl_ws_receive(c->data);
}


static void
ngx_http_async_dl_ws_receive(ngx_http_async_dl_ws_sub_t *sub)
{
    u_char             buf[4096];
    ssize_t            n;
    ngx_uint_t         i;
    ngx_connection_t  *c;

    c = sub->c;

    for (i = 0; /* void */; i++) {

        if (i == NGX_HTTP_ASYNC_DL_WS_READS) {
            /* the others' turn: on from the posted event */
            ngx_post_event(c->read, &ngx_posted_events);
            return;
        }

        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            /* the client went away */
            c->error = 1;
            ngx_http_async_dl_ws_end(sub);
            return;
        }

        if (sub->discard) {
            continue;
        }

        if (ngx_http_async_dl_ws_input(sub, buf, buf + n) == NGX_DONE) {
            return;                         /* sub is gone */
        }
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_async_dl_ws_end(sub);
    }
}


/*
 * Posted when the connection is open and idle: the request goes (see
 * ngx_http_async_dl_detach.h); one that cannot detach keeps its request.
 */

static void
ngx_http_async_dl_ws_detach(ngx_event_t *ev)
{
    ngx_http_async_dl_ws_sub_t *sub = ev->data;

    ngx_http_request_t  *r;

    r = sub->r;

    if (sub->detached || sub->state != NGX_HTTP_ASYNC_DL_WS_OPEN
        || sub->pending || sub->ctl_len > sub->ctl_pos)
    {
        return;                             /* asked again when idle */
    }

    if (!ngx_http_async_dl_detach_possible(r)) {
        sub->stays = 1;
        return;
    }

    sub->r = NULL;
    sub->detached = 1;

    if (ngx_http_async_dl_detach(r, sub, &sub->cln, &sub->pcln,
                                 ngx_http_async_dl_ws_conn_read,
                                 "sending job events over a WebSocket")
        != NGX_OK)
    {
        ngx_http_async_dl_ws_end(sub);
        return;
    }

    sub->c->write->handler = ngx_http_async_dl_ws_conn_write;
}


/* the client's frames; then sends what they asked for (NGX_DONE: sub is
 * gone) */

static ngx_int_t
ngx_http_async_dl_ws_input(ngx_http_async_dl_ws_sub_t *sub, u_char *p,
    u_char *last)
{
    ngx_uint_t                  code;
    ngx_http_async_dl_ws_got_e  got;

    while (p < last && !sub->discard) {

        got = ngx_http_async_dl_ws_read(&sub->rd, &p, last, &code);

        switch (got) {

        case NGX_HTTP_ASYNC_DL_WS_MORE:
            break;

        case NGX_HTTP_ASYNC_DL_WS_GOT_PING:
            ngx_http_async_dl_ws_control(sub, NGX_HTTP_ASYNC_DL_WS_PONG,
                                         sub->rd.ctl, sub->rd.ctl_len);
            break;

        case NGX_HTTP_ASYNC_DL_WS_GOT_PONG:
            sub->ping_out = 0;
            break;

        case NGX_HTTP_ASYNC_DL_WS_GOT_MESSAGE:
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, sub->c->log, 0,
                           "async_dl ws: a message from the client, dropped");
            break;

        case NGX_HTTP_ASYNC_DL_WS_GOT_CLOSE:
            /* answered with its code; closed once the answer is out */
            sub->discard = 1;
            ngx_http_async_dl_ws_close(sub, code, 1);
            break;

        default: /* BAD */
            ngx_log_error(NGX_LOG_INFO, sub->c->log, 0,
                          "async_dl ws: the client broke the protocol, "
                          "closing with %ui", code);
            sub->discard = 1;
            sub->failed = 1;
            ngx_http_async_dl_ws_close(sub, code, 0);
            break;
        }
    }

    return ngx_http_async_dl_ws_send(sub);
}


/* every heartbeat: a ping, or the end of a client that did not answer the
 * last one (sent in full: a client still reading an event is not asked);
 * CLOSING: the linger ran out */

static void
ngx_http_async_dl_ws_timer_handler(ngx_event_t *ev)
{
    ngx_http_async_dl_ws_sub_t *sub = ev->data;

    ngx_uint_t         detached;
    ngx_connection_t  *c;

    c = sub->c;
    detached = sub->detached;

    if (sub->state == NGX_HTTP_ASYNC_DL_WS_CLOSING) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "async_dl ws: no close from the client in %d ms, "
                      "closing", NGX_HTTP_ASYNC_DL_WS_LINGER);
        ngx_http_async_dl_ws_end(sub);

    } else if (sub->pending || sub->ctl_len > sub->ctl_pos) {
        /* the client is not reading what we sent: send_timeout deals
         * with that; a ping waits for it */
        ngx_add_timer(&sub->timer, sub->heartbeat_period);

    } else if (sub->ping_out) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "async_dl ws: the client did not answer a ping, "
                      "closing");
        c->error = 1;
        ngx_http_async_dl_ws_end(sub);

    } else {
        sub->ping_out = 1;
        ngx_http_async_dl_ws_control(sub, NGX_HTTP_ASYNC_DL_WS_PING, NULL, 0);
        ngx_add_timer(&sub->timer, sub->heartbeat_period);

        (void) ngx_http_async_dl_ws_send(sub);
    }

    /* sub may be gone */

    if (!detached) {
        ngx_http_run_posted_requests(c);
    }
}


/* the end: out of the hub, the connection closed (sub is gone after) */

static void
ngx_http_async_dl_ws_end(ngx_http_async_dl_ws_sub_t *sub)
{
    ngx_connection_t  *c;

    if (!sub->detached) {
        /* the request cleanups do the rest */
        ngx_http_finalize_request(sub->r, NGX_HTTP_CLOSE);
        return;
    }

    c = sub->c;

    ngx_http_async_dl_ws_cleanup(sub);
    ngx_http_async_dl_ws_pool_cleanup(sub);

    ngx_http_close_connection(c);
}


/* the request ends (any way): leave at once */

static void
ngx_http_async_dl_ws_cleanup(void *data)
{
    ngx_http_async_dl_ws_sub_t *sub = data;

    ngx_http_async_dl_ws_leave(sub);
    sub->state = NGX_HTTP_ASYNC_DL_WS_GONE;

    if (sub->timer.timer_set) {
        ngx_del_timer(&sub->timer);
    }

    if (sub->detach.posted) {
        ngx_delete_posted_event(&sub->detach);
    }
}


/* the request's memory goes: so do its references to shared texts */

static void
ngx_http_async_dl_ws_pool_cleanup(void *data)
{
    ngx_http_async_dl_ws_sub_t *sub = data;

    ngx_http_async_dl_follow_release(&sub->f);

    if (sub->mux) {
        ngx_http_async_dl_mux_free(sub->mux);
    }

    ngx_http_async_dl_m_gauge(subscribers[NGX_HTTP_ASYNC_DL_M_WS], -1);

    if (sub->timer.timer_set) {
        ngx_del_timer(&sub->timer);
    }

    if (sub->detach.posted) {
        ngx_delete_posted_event(&sub->detach);
    }

    ngx_free(sub);
}


/* out of the hub, and of the owners' registry */

static void
ngx_http_async_dl_ws_leave(ngx_http_async_dl_ws_sub_t *sub)
{
    if (sub->mux) {
        ngx_http_async_dl_mux_leave(sub->mux);
    }

    ngx_http_async_dl_follow_leave(&sub->f);
}
