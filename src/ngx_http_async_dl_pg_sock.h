
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


#ifndef _NGX_HTTP_ASYNC_DL_PG_SOCK_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_PG_SOCK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <libpq-fe.h>


typedef struct ngx_http_async_dl_pg_sock_s   ngx_http_async_dl_pg_sock_t;


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


#endif /* _NGX_HTTP_ASYNC_DL_PG_SOCK_H_INCLUDED_ */
