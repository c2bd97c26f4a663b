
/*
 * The pool's own structures, shared by its connections
 * (ngx_http_async_dl_pg.c) and its queries (ngx_http_async_dl_pg_query.c);
 * nothing else of the module sees them.
 */


#ifndef _NGX_HTTP_ASYNC_DL_PG_POOL_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_PG_POOL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_async_dl_pg.h"
#include "ngx_http_async_dl_pg_sock.h"


#define NGX_HTTP_ASYNC_DL_PG_WAITING     64     /* queued per connection */
#define NGX_HTTP_ASYNC_DL_PG_BACKOFF     100    /* first retry, ms */
#define NGX_HTTP_ASYNC_DL_PG_BACKOFF_MAX 1000
#define NGX_HTTP_ASYNC_DL_PG_GRACE       1000   /* drain beyond timeout, ms */
/* statement_timeout is the timeout plus this, ms */
#define NGX_HTTP_ASYNC_DL_PG_MARGIN      250


typedef enum {
    NGX_HTTP_ASYNC_DL_PG_DOWN = 0,
    NGX_HTTP_ASYNC_DL_PG_CONNECTING,
    NGX_HTTP_ASYNC_DL_PG_SETUP,
    NGX_HTTP_ASYNC_DL_PG_IDLE,
    NGX_HTTP_ASYNC_DL_PG_DEALLOCATE,
    NGX_HTTP_ASYNC_DL_PG_PREPARE,
    NGX_HTTP_ASYNC_DL_PG_QUERY
} ngx_http_async_dl_pg_state_e;


struct ngx_http_async_dl_pg_conn_s {
    ngx_http_async_dl_pg_t             *pg;
    ngx_uint_t                          n;         /* for the logs */
    ngx_http_async_dl_pg_state_e        state;
    ngx_queue_t                         queue;     /* in pg->idle */

    ngx_http_async_dl_pg_sock_t         sock;

    ngx_http_async_dl_pg_query_t       *query;     /* NULL: none/detached */
    ngx_uint_t                          stmt;      /* being prepared/run */
    PGresult                           *result;    /* being collected */
    uint64_t                            prepared;  /* bit per statement */
    uint64_t                            stale;     /* on the server, unfit */

    ngx_event_t                         timer;
    ngx_msec_t                          backoff;
    ngx_uint_t                          failures;  /* since last success */
    ngx_log_t                           log;       /* with our action */
};


struct ngx_http_async_dl_pg_s {
    ngx_http_async_dl_pg_conf_t        *conf;
    ngx_log_t                          *log;
    ngx_http_async_dl_pg_conn_t        *conns;
    ngx_queue_t                         idle;
    ngx_queue_t                         waiting;
    ngx_uint_t                          nwaiting;
    ngx_uint_t                          max_waiting;
    ngx_uint_t                          nlive;     /* conns not DOWN */
    ngx_http_async_dl_pg_counters_t    *counters;  /* NULL: none */
    ngx_str_t                           last_error;
    u_char                              error[512];
    char                                setup[64];
};


/* pg_query.c: the answer of a query (its handler is called), and every
 * waiting query's when no connection is left */
void ngx_http_async_dl_pg_complete(ngx_http_async_dl_pg_query_t *q,
    ngx_http_async_dl_pg_status_e status, PGresult *res);
void ngx_http_async_dl_pg_fail_waiting(ngx_http_async_dl_pg_t *pg);


#endif /* _NGX_HTTP_ASYNC_DL_PG_POOL_H_INCLUDED_ */
