
/*
 * Non-blocking PostgreSQL for the async-dl module: one pool of libpq
 * connections per nginx worker process, driven by nginx's event loop.
 *
 * A query is run with ngx_http_async_dl_pg_run(); its handler is called
 * exactly once, later, from the event loop, unless the query is detached
 * first (a request that went away).  The query lives in its caller's pool.
 */


#ifndef _NGX_HTTP_ASYNC_DL_PG_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_PG_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <libpq-fe.h>

#include "ngx_http_async_dl_pg_conf.h"


typedef struct ngx_http_async_dl_pg_s        ngx_http_async_dl_pg_t;
typedef struct ngx_http_async_dl_pg_conn_s   ngx_http_async_dl_pg_conn_t;
typedef struct ngx_http_async_dl_pg_query_s  ngx_http_async_dl_pg_query_t;

typedef void (*ngx_http_async_dl_pg_handler_pt)(
    ngx_http_async_dl_pg_query_t *q);


/* what a query's handler finds in q->status */
typedef enum {
    NGX_HTTP_ASYNC_DL_PG_OK = 0,        /* q->result: the statement's rows */
    NGX_HTTP_ASYNC_DL_PG_SQL_ERROR,     /* q->result: the server's error */
    NGX_HTTP_ASYNC_DL_PG_UNAVAILABLE,   /* no connection, or it was lost */
    NGX_HTTP_ASYNC_DL_PG_TIMEOUT,       /* async_dl_postgres_timeout */
    NGX_HTTP_ASYNC_DL_PG_BUSY           /* the wait queue is full */
} ngx_http_async_dl_pg_status_e;


/*
 * What the pool counts, when given where (the metrics' shared zone):
 * queries answered, failures by kind, the time from run to answer.
 */
#define NGX_HTTP_ASYNC_DL_PG_BUCKETS  12

typedef struct {
    ngx_atomic_t                        queries;
    ngx_atomic_t                        sql_errors;
    ngx_atomic_t                        unavailable;
    ngx_atomic_t                        timeouts;
    ngx_atomic_t                        busy;      /* refused, queue full */
    ngx_atomic_t                        le[NGX_HTTP_ASYNC_DL_PG_BUCKETS + 1];
    ngx_atomic_t                        ms;        /* sum */
} ngx_http_async_dl_pg_counters_t;

/* the buckets' upper bounds, ms (the last is +Inf) */
extern ngx_msec_t  ngx_http_async_dl_pg_buckets[NGX_HTTP_ASYNC_DL_PG_BUCKETS];


struct ngx_http_async_dl_pg_query_s {
    /* set by the caller */
    ngx_uint_t                          stmt;      /* index in conf->stmts */
    const char                        **params;    /* text, NULL is SQL NULL */
    ngx_http_async_dl_pg_handler_pt     handler;
    void                               *data;
    ngx_log_t                          *log;

    /* set before the handler is called */
    ngx_http_async_dl_pg_status_e       status;
    PGresult                           *result;    /* freed with the pool */

    /* private */
    ngx_http_async_dl_pg_t             *pg;
    ngx_http_async_dl_pg_conn_t        *conn;      /* running on it */
    ngx_queue_t                         queue;     /* in pg->waiting */
    ngx_event_t                         timer;     /* wait + run deadline */
    ngx_msec_t                          started;   /* ngx_current_msec */
    unsigned                            uncounted:1; /* by the counters */
    unsigned                            waiting:1;
    unsigned                            retried:1; /* run again once */
};


ngx_http_async_dl_pg_t *ngx_http_async_dl_pg_create(ngx_cycle_t *cycle,
    ngx_http_async_dl_pg_conf_t *pgcf);
void ngx_http_async_dl_pg_destroy(ngx_http_async_dl_pg_t *pg);

ngx_http_async_dl_pg_query_t *ngx_http_async_dl_pg_query(ngx_pool_t *pool,
    ngx_log_t *log);
ngx_http_async_dl_pg_status_e ngx_http_async_dl_pg_run(
    ngx_http_async_dl_pg_t *pg, ngx_http_async_dl_pg_query_t *q);
void ngx_http_async_dl_pg_detach(ngx_http_async_dl_pg_query_t *q);

ngx_str_t *ngx_http_async_dl_pg_last_error(ngx_http_async_dl_pg_t *pg);

/* counting into c from now on; the connections up, running, waiting */
void ngx_http_async_dl_pg_count_into(ngx_http_async_dl_pg_t *pg,
    ngx_http_async_dl_pg_counters_t *c);
void ngx_http_async_dl_pg_stats(ngx_http_async_dl_pg_t *pg, ngx_uint_t *up,
    ngx_uint_t *busy, ngx_uint_t *waiting);

/* the server's message of a failed statement, never NULL */
const char *ngx_http_async_dl_pg_message(PGresult *res);


#endif /* _NGX_HTTP_ASYNC_DL_PG_H_INCLUDED_ */
