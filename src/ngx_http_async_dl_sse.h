
/*
 * GET {p}stream/{id}: the job's events as Server-Sent Events, fed by the
 * LISTEN connection (ngx_http_async_dl_listen.c).
 */


#ifndef _NGX_HTTP_ASYNC_DL_SSE_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_SSE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"


/* init_main_conf: adds the stream's statement to the pool's */
char *ngx_http_async_dl_sse_init_conf(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf);

/* preconfiguration: $async_dl_stream_subscribers and friends */
ngx_int_t ngx_http_async_dl_sse_add_variables(ngx_conf_t *cf);

/* init_process, after the pool; exit_process, before it */
ngx_int_t ngx_http_async_dl_sse_init_process(ngx_cycle_t *cycle,
    ngx_http_async_dl_main_conf_t *amcf);
void ngx_http_async_dl_sse_exit_process(ngx_cycle_t *cycle);

/* the route; ctx->job_id is a well-formed id */
ngx_int_t ngx_http_async_dl_stream(ngx_http_request_t *r);


#endif /* _NGX_HTTP_ASYNC_DL_SSE_H_INCLUDED_ */
