
/*
 * A long-lived subscriber (an event stream, a WebSocket) takes its
 * connection over from its request once nothing of the request is needed
 * any more: the request is freed (its access log line is written then,
 * with the bytes sent so far) with the connection's header buffers, and
 * the subscriber alone holds the connection, writing through
 * c->send_chain.  It then costs the connection's small pool and its own
 * state instead of a whole request (two 4 KiB pool blocks).
 */


#ifndef _NGX_HTTP_ASYNC_DL_DETACH_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_DETACH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/*
 * Whether the request may be given back: HTTP/1.x, no TLS, nothing in
 * nginx's buffers or filters, no limit that lives in its pool, nothing
 * pipelined after it.
 */
ngx_uint_t ngx_http_async_dl_detach_possible(ngx_http_request_t *r);

/*
 * The request goes, without running the subscriber's cleanups (*cln,
 * *pcln: taken off and set to NULL); data becomes c->data and read events
 * go to read_handler, writes to no one until the caller says.  NGX_ERROR:
 * the caller closes the connection (ngx_http_close_connection).
 */
ngx_int_t ngx_http_async_dl_detach(ngx_http_request_t *r, void *data,
    ngx_http_cleanup_t **cln, ngx_pool_cleanup_t **pcln,
    ngx_event_handler_pt read_handler, char *action);


#endif /* _NGX_HTTP_ASYNC_DL_DETACH_H_INCLUDED_ */
