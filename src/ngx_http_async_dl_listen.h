
/*
 * The LISTEN connection: one libpq connection per nginx worker process, not
 * from the query pool, that LISTENs on async_dl_events and hands each
 * notification to its owner (the job hub: the event streams and the status
 * cache).  Asked to, it also pings itself through a channel of its own
 * (async_dl_ping_<backend pid>) and says when each ping comes back: every
 * notification committed before the ping was sent has been handed over.
 */


#ifndef _NGX_HTTP_ASYNC_DL_LISTEN_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_LISTEN_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_async_dl_pg_conf.h"

#include <time.h>


#define NGX_HTTP_ASYNC_DL_CHANNEL  "async_dl_events"


typedef struct ngx_http_async_dl_listen_s  ngx_http_async_dl_listen_t;

/* a notification's payload, NUL-terminated */
typedef void (*ngx_http_async_dl_listen_notify_pt)(void *data,
    const char *payload);

/* LISTEN is in place (again): what was sent meanwhile was missed */
typedef void (*ngx_http_async_dl_listen_ready_pt)(void *data);

/* LISTEN was in place and is not any more */
typedef void (*ngx_http_async_dl_listen_lost_pt)(void *data);

/* the ping sent at `sent` (ngx_http_async_dl_listen_now()) came back */
typedef void (*ngx_http_async_dl_listen_pong_pt)(void *data, int64_t sent);


typedef struct {
    ngx_http_async_dl_listen_notify_pt   notify;
    ngx_http_async_dl_listen_ready_pt    ready;
    ngx_http_async_dl_listen_lost_pt     lost;
    ngx_http_async_dl_listen_pong_pt     pong;
    ngx_msec_t                           ping;   /* interval; 0: no pings,
                                                    a SELECT 1 every 30 s */
    void                                *data;
} ngx_http_async_dl_listen_handlers_t;


/* the clock of pings, the same in every process: CLOCK_MONOTONIC, ms */
static ngx_inline int64_t
ngx_http_async_dl_listen_now(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


ngx_http_async_dl_listen_t *ngx_http_async_dl_listen_start(
    ngx_cycle_t *cycle, ngx_http_async_dl_pg_conf_t *pgcf,
    ngx_http_async_dl_listen_handlers_t *handlers);
void ngx_http_async_dl_listen_stop(ngx_http_async_dl_listen_t *ls);
ngx_uint_t ngx_http_async_dl_listen_ready(ngx_http_async_dl_listen_t *ls);


#endif /* _NGX_HTTP_ASYNC_DL_LISTEN_H_INCLUDED_ */
