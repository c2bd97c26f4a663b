
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


#define NGX_HTTP_ASYNC_DL_PG_MAX_STMTS  64
#define NGX_HTTP_ASYNC_DL_PG_NAME_LEN   63      /* NAMEDATALEN - 1 */


typedef struct ngx_http_async_dl_pg_s        ngx_http_async_dl_pg_t;
typedef struct ngx_http_async_dl_pg_conn_s   ngx_http_async_dl_pg_conn_t;
typedef struct ngx_http_async_dl_pg_query_s  ngx_http_async_dl_pg_query_t;
typedef struct ngx_http_async_dl_pg_sock_s   ngx_http_async_dl_pg_sock_t;

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


/* a statement, prepared on each connection the first time it is used */
typedef struct {
    const char                         *name;
    const char                         *sql;
    int                                 nparams;
} ngx_http_async_dl_pg_stmt_t;


typedef struct {
    const char                        **keywords;  /* PQconnectStartParams */
    const char                        **values;
    ngx_uint_t                          size;      /* connections */
    ngx_msec_t                          timeout;
    ngx_http_async_dl_pg_stmt_t        *stmts;
    ngx_uint_t                          nstmts;
} ngx_http_async_dl_pg_conf_t;


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
    unsigned                            waiting:1;
    unsigned                            retried:1; /* run again once */
};


/*
 * A libpq connection on nginx's event loop, its socket wrapped in an nginx
 * connection with level-triggered events: the pool's connections and the
 * LISTEN connection (ngx_http_async_dl_listen.c) are driven by this code.
 * The owner sets read_handler, write_handler, data (found in c->data) and
 * log once, and pgconn from PQconnectStartParams() for each attempt; then:
 *
 * - _start(), right after PQconnectStartParams(): waits for writability;
 * - _poll(), from the read (write) handler while poll is
 *   PGRES_POLLING_READING (WRITING): NGX_AGAIN, still connecting; NGX_OK,
 *   connected and nonblocking, no events registered yet;
 * - _events(), _flush(), once connected;
 * - _close(): PQfinish(), pgconn is NULL afterwards.
 *
 * When _start() or _poll() return NGX_ERROR, s->error says why (valid until
 * _close()).
 */

struct ngx_http_async_dl_pg_sock_s {
    PGconn                             *pgconn;
    ngx_connection_t                   *c;         /* wraps PQsocket() */
    PostgresPollingStatusType           poll;      /* while connecting */
    const char                         *error;

    ngx_event_handler_pt                read_handler;
    ngx_event_handler_pt                write_handler;
    void                               *data;
    ngx_log_t                          *log;
};


ngx_int_t ngx_http_async_dl_pg_sock_start(ngx_http_async_dl_pg_sock_t *s);
ngx_int_t ngx_http_async_dl_pg_sock_poll(ngx_http_async_dl_pg_sock_t *s);
ngx_int_t ngx_http_async_dl_pg_sock_events(ngx_http_async_dl_pg_sock_t *s,
    ngx_uint_t read, ngx_uint_t write);
ngx_int_t ngx_http_async_dl_pg_sock_flush(ngx_http_async_dl_pg_sock_t *s);
void ngx_http_async_dl_pg_sock_close(ngx_http_async_dl_pg_sock_t *s);


char *ngx_http_async_dl_pg_conninfo(ngx_conf_t *cf, ngx_str_t *conninfo,
    ngx_http_async_dl_pg_conf_t *pgcf);

ngx_http_async_dl_pg_t *ngx_http_async_dl_pg_create(ngx_cycle_t *cycle,
    ngx_http_async_dl_pg_conf_t *pgcf);
void ngx_http_async_dl_pg_destroy(ngx_http_async_dl_pg_t *pg);

ngx_http_async_dl_pg_query_t *ngx_http_async_dl_pg_query(ngx_pool_t *pool,
    ngx_log_t *log);
ngx_http_async_dl_pg_status_e ngx_http_async_dl_pg_run(
    ngx_http_async_dl_pg_t *pg, ngx_http_async_dl_pg_query_t *q);
void ngx_http_async_dl_pg_detach(ngx_http_async_dl_pg_query_t *q);

ngx_str_t *ngx_http_async_dl_pg_last_error(ngx_http_async_dl_pg_t *pg);

/* the server's message of a failed statement, never NULL */
const char *ngx_http_async_dl_pg_message(PGresult *res);


#endif /* _NGX_HTTP_ASYNC_DL_PG_H_INCLUDED_ */
