
/*
 * GET {p}ws/{id}: the job's events over a WebSocket (RFC 6455), one
 * subscriber per connection, fed by the job hub (ngx_http_async_dl_hub.c)
 * through its handler like the event stream (ngx_http_async_dl_sse.c);
 * no subscriber ever queries the database.
 *
 * A subscriber's states, in sub->state:
 *
 *   WAITING --(the job's first state: 101, "connected")--> LIVE <-> BEHIND
 *      |                                                   |
 *      |                         (the job ended)           v
 *      |                                                 ENDING
 *      |                         (the final event and a close frame 1000)
 *      v                                                   v
 *     GONE <--(the client's close, or 5 s; a fault)------ CLOSING
 *
 *   WAITING -> GONE: an ordinary JSON error (404, 503) instead of 101.
 *
 * - WAITING: the handshake was checked (a bad one is a 400 or 426 with a
 *   JSON error and nothing else), subscribed, nothing sent.  The first
 *   state of the job decides: the owner check is made against the fetched
 *   owner, as for the event stream.
 * - LIVE, BEHIND, ENDING: as the event stream's.  Each event is one text
 *   frame: {"event":"<name>","id":<seq>,"data":<the same JSON>}.
 * - CLOSING: out of the hub; our close frame is queued.  After the final
 *   event it waits up to NGX_HTTP_ASYNC_DL_WS_LINGER for the client's
 *   close; after the client's close or a bad frame (1002, 1007, 1009)
 *   the connection closes once the close frame is out.  A graceful
 *   shutdown of nginx closes the connection (the client sees 1006 and
 *   reconnects, as an event stream does).
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
#include "ngx_http_async_dl_hub.h"
#include "ngx_http_async_dl_ws.h"
#include "ngx_http_async_dl_ws_frame.h"


#define NGX_HTTP_ASYNC_DL_WS_TEXT_MAX   128     /* frame head, {"event":.. */
#define NGX_HTTP_ASYNC_DL_WS_CTL_MAX    384     /* control frames waiting */
#define NGX_HTTP_ASYNC_DL_WS_LINGER     5000    /* for the client's close */
#define NGX_HTTP_ASYNC_DL_WS_ACCEPT_LEN 28      /* base64 of a SHA-1 */


typedef enum {
    NGX_HTTP_ASYNC_DL_WS_WAITING = 0,
    NGX_HTTP_ASYNC_DL_WS_LIVE,
    NGX_HTTP_ASYNC_DL_WS_BEHIND,
    NGX_HTTP_ASYNC_DL_WS_ENDING,
    NGX_HTTP_ASYNC_DL_WS_CLOSING,
    NGX_HTTP_ASYNC_DL_WS_GONE
} ngx_http_async_dl_ws_state_e;


typedef struct {
    ngx_http_async_dl_watcher_t        watcher;   /* in the hub */
    ngx_http_request_t                *r;
    ngx_connection_t                  *c;
    ngx_http_async_dl_ws_state_e       state;
    ngx_msec_t                         heartbeat_period;

    uint64_t                           seq;       /* last state sent */
    ngx_http_async_dl_hub_status_e     final;     /* ENDING: its name */
    ngx_http_async_dl_hub_text_t      *final_data;
    ngx_http_async_dl_hub_text_t      *sending;   /* in flight */

    /* the event in flight: frame head and {"event":..,"data":, JSON, } */
    ngx_buf_t                          head;
    ngx_buf_t                          body;
    ngx_buf_t                          tail;
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
    unsigned                           end_when_sent:1;
    unsigned                           discard:1;    /* input ignored */
} ngx_http_async_dl_ws_sub_t;


static ngx_int_t ngx_http_async_dl_ws_handshake(ngx_http_request_t *r,
    u_char *accept);
static ngx_uint_t ngx_http_async_dl_ws_has_token(ngx_str_t *value,
    const char *token);
static void ngx_http_async_dl_ws_news(ngx_http_async_dl_watcher_t *w,
    ngx_http_async_dl_hub_news_e news);
static void ngx_http_async_dl_ws_start(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_refuse(ngx_http_async_dl_ws_sub_t *sub,
    ngx_uint_t status, const char *code, const char *msg);
static void ngx_http_async_dl_ws_follow(ngx_http_async_dl_ws_sub_t *sub,
    ngx_http_async_dl_ws_state_e state);
static void ngx_http_async_dl_ws_send(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_emit(ngx_http_async_dl_ws_sub_t *sub,
    const char *name, ngx_http_async_dl_hub_text_t *t);
static void ngx_http_async_dl_ws_control(ngx_http_async_dl_ws_sub_t *sub,
    ngx_uint_t opcode, u_char *payload, size_t len);
static void ngx_http_async_dl_ws_close(ngx_http_async_dl_ws_sub_t *sub,
    ngx_uint_t code, ngx_uint_t end_when_sent);
static ngx_int_t ngx_http_async_dl_ws_flush(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_read_handler(ngx_http_request_t *r);
static void ngx_http_async_dl_ws_input(ngx_http_async_dl_ws_sub_t *sub,
    u_char *p, u_char *last);
static void ngx_http_async_dl_ws_write_handler(ngx_http_request_t *r);
static void ngx_http_async_dl_ws_timer_handler(ngx_event_t *ev);
static void ngx_http_async_dl_ws_leave(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_end(ngx_http_async_dl_ws_sub_t *sub);
static void ngx_http_async_dl_ws_cleanup(void *data);
static void ngx_http_async_dl_ws_pool_cleanup(void *data);


static u_char  ngx_http_async_dl_ws_brace[] = "}";


/* GET {p}ws/{id} */

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

    rc = ngx_http_async_dl_ws_handshake(r, accept);
    if (rc != NGX_OK) {
        return rc;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    cln = ngx_http_cleanup_add(r, 0);
    pcln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL || pcln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    sub = ngx_calloc(sizeof(ngx_http_async_dl_ws_sub_t), r->connection->log);
    if (sub == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the request's: freed with its pool */
    pcln->handler = ngx_http_async_dl_ws_pool_cleanup;
    pcln->data = sub;

    /*
     * set by ngx_calloc():
     *
     *     sub->state = NGX_HTTP_ASYNC_DL_WS_WAITING;
     *     sub->pending = NULL;
     *     sub->ctl_len = 0;
     */

    sub->r = r;
    sub->c = r->connection;
    sub->watcher.handler = ngx_http_async_dl_ws_news;
    sub->watcher.data = sub;
    sub->heartbeat_period = alcf->heartbeat;
    sub->timer.handler = ngx_http_async_dl_ws_timer_handler;
    sub->timer.data = sub;
    sub->timer.log = r->connection->log;
    sub->timer.cancelable = 1;
    ngx_memcpy(sub->accept, accept, NGX_HTTP_ASYNC_DL_WS_ACCEPT_LEN);

    rc = ngx_http_async_dl_hub_watch(&sub->watcher, &ctx->job_id,
                                     &alcf->prefix, r->connection->log);

    if (rc == NGX_DECLINED) {
        return ngx_http_async_dl_db_unavailable(r, "the database is not "
                                                "configured in this process");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_async_dl_ws_cleanup;
    cln->data = sub;

    ctx->stream = sub;

    r->write_event_handler = ngx_http_request_empty_handler;

    return ngx_http_async_dl_wait(r);
}


/*
 * The client's handshake (RFC 6455, 4.2.1): HTTP/1.1, Upgrade: websocket,
 * Connection: upgrade, Sec-WebSocket-Version: 13 (else 426 naming it) and
 * a Sec-WebSocket-Key of 16 bytes; its answer in accept.
 */

static ngx_int_t
ngx_http_async_dl_ws_handshake(ngx_http_request_t *r, u_char *accept)
{
    u_char     key[64], digest[SHA_DIGEST_LENGTH];
    ngx_str_t  upgrade, connection, version, k, decoded, src, dst;

    static const char  guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

    if (r->http_version != NGX_HTTP_VERSION_11) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                            "INVALID_REQUEST",
                                            "a WebSocket needs HTTP/1.1");
    }

    if (ngx_http_async_dl_header_in(r, "Upgrade", &upgrade) != NGX_OK
        || !ngx_http_async_dl_ws_has_token(&upgrade, "websocket")
        || ngx_http_async_dl_header_in(r, "Connection", &connection)
           != NGX_OK
        || !ngx_http_async_dl_ws_has_token(&connection, "upgrade"))
    {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                            "INVALID_REQUEST",
                                            "a WebSocket handshake needs "
                                            "\"Upgrade: websocket\" and "
                                            "\"Connection: upgrade\"");
    }

    if (ngx_http_async_dl_header_in(r, "Sec-WebSocket-Version", &version)
        != NGX_OK
        || version.len != 2 || ngx_strncmp(version.data, "13", 2) != 0)
    {
        if (ngx_http_async_dl_add_header(r, "Sec-WebSocket-Version",
                                         (u_char *) "13", 2)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_async_dl_send_error(r, 426, "UPGRADE_REQUIRED",
                                            "only WebSocket version 13 is "
                                            "spoken here");
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

    return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                        "INVALID_REQUEST",
                                        "Sec-WebSocket-Key must be 16 bytes "
                                        "in base64");
}


/* whether a comma-separated header value has the token, in any case */

static ngx_uint_t
ngx_http_async_dl_ws_has_token(ngx_str_t *value, const char *token)
{
    u_char  *p, *last, *start;
    size_t   len;

    len = ngx_strlen(token);
    p = value->data;
    last = p + value->len;

    while (p < last) {
        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        start = p;

        while (p < last && *p != ',' && *p != ' ' && *p != '\t') {
            p++;
        }

        if ((size_t) (p - start) == len
            && ngx_strncasecmp(start, (u_char *) token, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/* the hub's news of the job */

static void
ngx_http_async_dl_ws_news(ngx_http_async_dl_watcher_t *w,
    ngx_http_async_dl_hub_news_e news)
{
    ngx_http_async_dl_ws_sub_t *sub = w->data;

    ngx_connection_t  *c;

    c = sub->c;

    if (sub->state == NGX_HTTP_ASYNC_DL_WS_WAITING) {
        if (news == NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE) {
            ngx_http_async_dl_ws_refuse(sub, NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "DATABASE_UNAVAILABLE",
                                        "the database is unavailable, "
                                        "retry later");
        } else {
            ngx_http_async_dl_ws_start(sub);
        }

    } else if (news == NGX_HTTP_ASYNC_DL_HUB_STATE
               && sub->state != NGX_HTTP_ASYNC_DL_WS_ENDING
               && sub->seq < sub->watcher.job->seq)
    {
        ngx_http_async_dl_ws_follow(sub, NGX_HTTP_ASYNC_DL_WS_BEHIND);
    }

    /* sub may be gone: only the connection is looked at */

    ngx_http_run_posted_requests(c);
}


/* the first answer: a JSON error, or 101 and "connected" */

static void
ngx_http_async_dl_ws_start(ngx_http_async_dl_ws_sub_t *sub)
{
    ngx_int_t                     rc;
    ngx_str_t                     owner;
    ngx_buf_t                    *b;
    ngx_connection_t             *c;
    ngx_http_request_t           *r;
    ngx_http_async_dl_ctx_t      *ctx;
    ngx_http_async_dl_hub_job_t  *job;
    ngx_http_core_loc_conf_t     *clcf;

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

    ngx_http_async_dl_hub_started(&sub->watcher);

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->tcp_nodelay && ngx_tcp_nodelay(c) != NGX_OK) {
        ngx_http_async_dl_ws_end(sub);
        return;
    }

    /* a graceful shutdown closes it */
    c->idle = 1;
    c->log->action = "sending job events over a WebSocket";

    sub->seq = job->seq;
    r->read_event_handler = ngx_http_async_dl_ws_read_handler;
    r->write_event_handler = ngx_http_async_dl_ws_write_handler;

    ngx_add_timer(&sub->timer, sub->heartbeat_period);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "async_dl ws: job %s from %uL", job->id, job->seq);

    ngx_http_async_dl_ws_emit(sub, "connected", job->full);

    /* frames the client sent right after its handshake */
    b = r->header_in;

    if (b && b->pos < b->last) {
        ngx_http_async_dl_ws_input(sub, b->pos, b->last);
        return;                             /* (sends; sub may be gone) */
    }

    ngx_http_async_dl_ws_follow(sub, NGX_HTTP_ASYNC_DL_WS_LIVE);
}


static void
ngx_http_async_dl_ws_refuse(ngx_http_async_dl_ws_sub_t *sub,
    ngx_uint_t status, const char *code, const char *msg)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = sub->r;

    ngx_http_async_dl_ws_leave(sub);

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        rc = ngx_http_async_dl_db_unavailable(r, "%s", msg);

    } else {
        rc = ngx_http_async_dl_send_error(r, status, code, "%s", msg);
    }

    ngx_http_finalize_request(r, rc);
}


/* the job ended: its final event is kept; else the state given; then send */

static void
ngx_http_async_dl_ws_follow(ngx_http_async_dl_ws_sub_t *sub,
    ngx_http_async_dl_ws_state_e state)
{
    ngx_http_async_dl_hub_job_t  *job;

    job = sub->watcher.job;

    if (sub->state < NGX_HTTP_ASYNC_DL_WS_ENDING
        && ngx_http_async_dl_hub_ended(job->status))
    {
        sub->final = job->status;
        sub->final_data = job->full;
        job->full->refs++;
        state = NGX_HTTP_ASYNC_DL_WS_ENDING;
    }

    sub->state = state;
    ngx_http_async_dl_ws_send(sub);
}


/*
 * Sends what is pending, in order: the event in flight and the control
 * frames, then "file" events, the latest progress, the final event and
 * the close frame; ends the connection once CLOSING has nothing to wait
 * for.  sub may be gone when it returns.
 */

static void
ngx_http_async_dl_ws_send(ngx_http_async_dl_ws_sub_t *sub)
{
    ngx_int_t                      rc;
    ngx_http_async_dl_hub_job_t   *job;
    ngx_http_async_dl_hub_text_t  *t;

    for ( ;; ) {

        rc = ngx_http_async_dl_ws_flush(sub);

        if (rc == NGX_ERROR) {
            ngx_http_async_dl_ws_end(sub);
            return;
        }

        if (rc == NGX_AGAIN) {
            return;
        }

        if (sub->sending) {
            ngx_http_async_dl_hub_text_release(sub->sending);
            sub->sending = NULL;
        }

        switch (sub->state) {

        case NGX_HTTP_ASYNC_DL_WS_CLOSING:
            if (sub->end_when_sent) {
                ngx_http_async_dl_ws_end(sub);
            }

            return;

        case NGX_HTTP_ASYNC_DL_WS_GONE:
            return;

        default:
            break;
        }

        job = sub->watcher.job;

        t = ngx_http_async_dl_hub_next_file(&sub->watcher);

        if (t) {
            ngx_http_async_dl_ws_emit(sub, "file", t);
            continue;
        }

        switch (sub->state) {

        case NGX_HTTP_ASYNC_DL_WS_ENDING:
            t = sub->final_data;
            sub->final_data = NULL;
            sub->seq = t->seq;

            ngx_http_async_dl_ws_emit(sub,
                      (char *) ngx_http_async_dl_hub_status_name(sub->final)
                                                                   ->data,
                      t);
            ngx_http_async_dl_hub_text_release(t);

            /* the client closes, or the linger ends it */
            ngx_http_async_dl_ws_close(sub, NGX_HTTP_ASYNC_DL_WS_NORMAL, 0);
            continue;

        case NGX_HTTP_ASYNC_DL_WS_BEHIND:
            sub->state = NGX_HTTP_ASYNC_DL_WS_LIVE;
            sub->seq = job->seq;
            ngx_http_async_dl_ws_emit(sub, "progress", job->summary);
            continue;

        default: /* LIVE */
            return;
        }
    }
}


/* One event as a text frame: {"event":"<name>","id":<seq>,"data":<t>} */

static void
ngx_http_async_dl_ws_emit(ngx_http_async_dl_ws_sub_t *sub, const char *name,
    ngx_http_async_dl_hub_text_t *t)
{
    u_char    prefix[NGX_HTTP_ASYNC_DL_WS_TEXT_MAX], *p, *last;
    uint64_t  len;

    last = ngx_snprintf(prefix, sizeof(prefix) - NGX_HTTP_ASYNC_DL_WS_HEAD_MAX,
                        "{\"event\":\"%s\",\"id\":%uL,\"data\":", name,
                        t->seq);

    len = (last - prefix) + t->len + 1;

    p = ngx_http_async_dl_ws_head(sub->text, NGX_HTTP_ASYNC_DL_WS_TEXT, len);
    p = ngx_cpymem(p, prefix, last - prefix);

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
    sub->tail.start = ngx_http_async_dl_ws_brace;
    sub->tail.pos = ngx_http_async_dl_ws_brace;
    sub->tail.last = ngx_http_async_dl_ws_brace + 1;
    sub->tail.end = sub->tail.last;
    sub->tail.memory = 1;

    sub->out[0].buf = &sub->head;
    sub->out[0].next = &sub->out[1];
    sub->out[1].buf = &sub->body;
    sub->out[1].next = &sub->out[2];
    sub->out[2].buf = &sub->tail;
    sub->out[2].next = NULL;

    if (t->len == 0) {
        sub->out[0].next = &sub->out[2];
    }

    /* held until the frame is out (see send, pool cleanup) */
    sub->sending = t;
    t->refs++;

    sub->pending = sub->out;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, sub->c->log, 0,
                   "async_dl ws: event %s id %uL, %uL bytes", name, t->seq,
                   len);
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

    if (sub->ctl_len + 2 + len > NGX_HTTP_ASYNC_DL_WS_CTL_MAX) {
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
 * Our close frame (a code, or none for 1005), and CLOSING: out of the hub;
 * the connection ends once the frame is out (end_when_sent), or when the
 * client's close comes or the linger runs out.
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

        ngx_add_timer(&sub->timer, NGX_HTTP_ASYNC_DL_WS_LINGER);
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
    ssize_t                    n;
    ngx_event_t               *wev;
    ngx_chain_t               *out;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_core_loc_conf_t  *clcf;

    r = sub->r;
    c = sub->c;
    wev = c->write;

    if (c->error) {
        return NGX_ERROR;
    }

    if (c->buffered) {
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

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (!wev->timer_set) {
        ngx_add_timer(wev, clcf->send_timeout);
    }

    if (ngx_handle_write_event(wev, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_AGAIN;
}


static void
ngx_http_async_dl_ws_write_handler(ngx_http_request_t *r)
{
    ngx_connection_t            *c;
    ngx_http_async_dl_ctx_t     *ctx;
    ngx_http_async_dl_ws_sub_t  *sub;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    sub = ctx->stream;

    if (c->write->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out reading the WebSocket");
        c->timedout = 1;
        ngx_http_async_dl_ws_end(sub);
        return;
    }

    ngx_http_async_dl_ws_send(sub);
}


static void
ngx_http_async_dl_ws_read_handler(ngx_http_request_t *r)
{
    u_char                       buf[4096];
    ssize_t                      n;
    ngx_connection_t            *c;
    ngx_http_async_dl_ctx_t     *ctx;
    ngx_http_async_dl_ws_sub_t  *sub;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    sub = ctx->stream;

    for ( ;; ) {
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

        ngx_http_async_dl_ws_input(sub, buf, buf + n);

        if (c->destroyed || sub->state == NGX_HTTP_ASYNC_DL_WS_GONE) {
            return;
        }
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_async_dl_ws_end(sub);
    }
}


/* the client's frames; then sends what they asked for (sub may be gone) */

static void
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
            ngx_http_async_dl_ws_close(sub, code, 1);
            break;
        }
    }

    if (sub->state == NGX_HTTP_ASYNC_DL_WS_LIVE
        || sub->state == NGX_HTTP_ASYNC_DL_WS_WAITING)
    {
        /* (WAITING: the frames that came with the handshake) */
        ngx_http_async_dl_ws_follow(sub, NGX_HTTP_ASYNC_DL_WS_LIVE);
        return;
    }

    ngx_http_async_dl_ws_send(sub);
}


/* every heartbeat: a ping, or the end of a client that did not answer the
 * last one; CLOSING: the linger ran out */

static void
ngx_http_async_dl_ws_timer_handler(ngx_event_t *ev)
{
    ngx_http_async_dl_ws_sub_t *sub = ev->data;

    ngx_connection_t  *c;

    c = sub->c;

    if (sub->state == NGX_HTTP_ASYNC_DL_WS_CLOSING) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "async_dl ws: no close from the client");
        ngx_http_async_dl_ws_end(sub);
        ngx_http_run_posted_requests(c);
        return;
    }

    if (sub->ping_out) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "async_dl ws: the client did not answer a ping, "
                      "closing");
        c->error = 1;
        ngx_http_async_dl_ws_end(sub);
        ngx_http_run_posted_requests(c);
        return;
    }

    sub->ping_out = 1;
    ngx_http_async_dl_ws_control(sub, NGX_HTTP_ASYNC_DL_WS_PING, NULL, 0);
    ngx_add_timer(&sub->timer, sub->heartbeat_period);

    ngx_http_async_dl_ws_send(sub);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_async_dl_ws_leave(ngx_http_async_dl_ws_sub_t *sub)
{
    if (sub->state >= NGX_HTTP_ASYNC_DL_WS_CLOSING) {
        return;
    }

    ngx_http_async_dl_hub_leave(&sub->watcher);
}


/* the end: out of the hub, the connection closed (sub is gone after) */

static void
ngx_http_async_dl_ws_end(ngx_http_async_dl_ws_sub_t *sub)
{
    ngx_http_async_dl_ws_leave(sub);
    sub->state = NGX_HTTP_ASYNC_DL_WS_GONE;

    if (sub->timer.timer_set) {
        ngx_del_timer(&sub->timer);
    }

    ngx_http_finalize_request(sub->r, NGX_HTTP_CLOSE);
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
}


/* the request's memory goes: so do its references to shared texts */

static void
ngx_http_async_dl_ws_pool_cleanup(void *data)
{
    ngx_http_async_dl_ws_sub_t *sub = data;

    if (sub->sending) {
        ngx_http_async_dl_hub_text_release(sub->sending);
    }

    if (sub->final_data) {
        ngx_http_async_dl_hub_text_release(sub->final_data);
    }

    if (sub->timer.timer_set) {
        ngx_del_timer(&sub->timer);
    }

    ngx_free(sub);
}
