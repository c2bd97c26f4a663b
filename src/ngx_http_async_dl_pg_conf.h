
/*
 * What the PostgreSQL connections of a worker process are configured with:
 * async_dl_postgres (the conninfo, checked and resolved when nginx reads
 * its configuration: ngx_http_async_dl_pg_conf.c), the pool's size and
 * timeout, and the statements it prepares.
 */


#ifndef _NGX_HTTP_ASYNC_DL_PG_CONF_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_PG_CONF_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_HTTP_ASYNC_DL_PG_MAX_STMTS  64
#define NGX_HTTP_ASYNC_DL_PG_NAME_LEN   63      /* NAMEDATALEN - 1 */


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


char *ngx_http_async_dl_pg_conninfo(ngx_conf_t *cf, ngx_str_t *conninfo,
    ngx_http_async_dl_pg_conf_t *pgcf);
ngx_int_t ngx_http_async_dl_pg_add_stmt(ngx_conf_t *cf,
    ngx_http_async_dl_pg_conf_t *pgcf, ngx_http_async_dl_pg_stmt_t *stmt);


#endif /* _NGX_HTTP_ASYNC_DL_PG_CONF_H_INCLUDED_ */
