
/*
 * A long-lived subscriber takes its connection over from its request
 * (ngx_http_async_dl_detach.h).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl_detach.h"


ngx_uint_t
ngx_http_async_dl_detach_possible(ngx_http_request_t *r)
{
    ngx_connection_t  *c;

    c = r->connection;

    return !(c->buffered
             || r->out
             || c->destroyed
             || r != r->main
             || r->http_version < NGX_HTTP_VERSION_10
             || r->http_version >= NGX_HTTP_VERSION_20
             || r->headers_out.content_encoding
             || r->limit_rate
             || r->limit_conn_status    /* its slot goes with the pool */
             || r->buffered
             || r->filter_need_in_memory    /* sub_filter, SSI, charset */
             || r->filter_need_temporary
             || r->expect_trailers
             || r->postponed
             || r->main->count != 1
             || r->blocked
             || (r->header_in && r->header_in->pos < r->header_in->last)
#if (NGX_HTTP_SSL)
             || c->ssl
#endif
             );
}


ngx_int_t
ngx_http_async_dl_detach(ngx_http_request_t *r, void *data,
    ngx_http_cleanup_t **cln, ngx_pool_cleanup_t **pcln,
    ngx_event_handler_pt read_handler, char *action)
{
    ngx_chain_t            *cl;
    ngx_connection_t       *c;
    ngx_http_log_ctx_t     *lctx;
    ngx_http_connection_t  *hc;

    c = r->connection;
    hc = r->http_connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "async_dl: a subscriber gives its request back");

    /* from now on the connection owns the subscriber */
    (*cln)->handler = NULL;
    (*pcln)->handler = NULL;
    *cln = NULL;
    *pcln = NULL;

    /* the access log line, the request's pool */
    ngx_http_free_request(r, 0);

    c->destroyed = 0;
    c->data = data;

    lctx = c->log->data;
    lctx->request = NULL;
    lctx->current_request = NULL;
    c->log->action = action;

    /* the header buffers, as for an idle keepalive connection */

    if (c->buffer && c->buffer->start
        && ngx_pfree(c->pool, c->buffer->start) == NGX_OK)
    {
        c->buffer->start = NULL;
        c->buffer->pos = NULL;
        c->buffer->last = NULL;
        c->buffer->end = NULL;
    }

    for (cl = hc->free; cl; cl = cl->next) {
        ngx_pfree(c->pool, cl->buf->start);
    }

    for (cl = hc->busy; cl; cl = cl->next) {
        ngx_pfree(c->pool, cl->buf->start);
    }

    hc->free = NULL;
    hc->busy = NULL;
    hc->nbusy = 0;

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    c->write->handler = ngx_http_empty_handler;
    c->read->handler = read_handler;

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
    }

    return NGX_OK;
}
