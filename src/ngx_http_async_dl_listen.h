
/*
 * The LISTEN connection: one libpq connection per nginx worker process, not
 * from the query pool, that LISTENs on async_dl_events and hands each
 * notification to the event streams (ngx_http_async_dl_sse.c).
 */


#ifndef _NGX_HTTP_ASYNC_DL_LISTEN_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_LISTEN_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_async_dl_pg_conf.h"


#define NGX_HTTP_ASYNC_DL_CHANNEL  "async_dl_events"


typedef struct ngx_http_async_dl_listen_s  ngx_http_async_dl_listen_t;

/* a notification's payload, NUL-terminated */
typedef void (*ngx_http_async_dl_listen_notify_pt)(void *data,
    const char *payload);

/* LISTEN is in place (again): what was sent meanwhile was missed */
typedef void (*ngx_http_async_dl_listen_ready_pt)(void *data);


ngx_http_async_dl_listen_t *ngx_http_async_dl_listen_start(
    ngx_cycle_t *cycle, ngx_http_async_dl_pg_conf_t *pgcf,
    ngx_http_async_dl_listen_notify_pt notify,
    ngx_http_async_dl_listen_ready_pt ready, void *data);
void ngx_http_async_dl_listen_stop(ngx_http_async_dl_listen_t *ls);
ngx_uint_t ngx_http_async_dl_listen_ready(ngx_http_async_dl_listen_t *ls);


#endif /* _NGX_HTTP_ASYNC_DL_LISTEN_H_INCLUDED_ */
