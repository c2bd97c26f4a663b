
/*
 * GET {p}ws/{id}: the job's events over a WebSocket (RFC 6455), fed by the
 * job hub (ngx_http_async_dl_hub.h) like the event stream.
 */


#ifndef _NGX_HTTP_ASYNC_DL_WS_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_WS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"


/* the route; ctx->job_id is a well-formed id */
ngx_int_t ngx_http_async_dl_ws(ngx_http_request_t *r);


#endif /* _NGX_HTTP_ASYNC_DL_WS_H_INCLUDED_ */
