
/*
 * GET {p}stream/{id}: the job's events as Server-Sent Events, fed by the
 * job hub (ngx_http_async_dl_hub.h).
 */


#ifndef _NGX_HTTP_ASYNC_DL_SSE_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_SSE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"


/* the route; ctx->job_id is a well-formed id */
ngx_int_t ngx_http_async_dl_stream(ngx_http_request_t *r);


#endif /* _NGX_HTTP_ASYNC_DL_SSE_H_INCLUDED_ */
