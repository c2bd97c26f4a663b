
/*
 * The owners followed in one nginx worker process (GET {p}stream and
 * GET {p}ws without a job id): who is told of an owner's new jobs, and
 * the listings of an owner's changes (async_dl_owner_changes, schema 20).
 *
 * A watch registers with _watch() under the md5 of its owner (the new-job
 * notification names the owner so, sql/020_owner_stream.sql) and is told,
 * through its handler:
 *
 * - NGX_HTTP_ASYNC_DL_OWNER_CREATED: a job of its owner was created
 *   (ow->created, its id): called from the hub's notification, the
 *   handler only takes note (it must not leave the registry then).
 * - NGX_HTTP_ASYNC_DL_OWNER_RESYNC: LISTEN (re)connected, notifications
 *   may have been lost: the handler only takes note, and lists again.
 * - NGX_HTTP_ASYNC_DL_OWNER_LISTED: the listing asked with _list() is in:
 *   ow->horizon and ow->rows (valid during the call); the handler may
 *   leave then.
 * - NGX_HTTP_ASYNC_DL_OWNER_UNAVAILABLE: that listing failed.
 */


#ifndef _NGX_HTTP_ASYNC_DL_OWNER_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_OWNER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_pg.h"


#define NGX_HTTP_ASYNC_DL_OWNER_KEY_LEN  32       /* md5, hex */


typedef enum {
    NGX_HTTP_ASYNC_DL_OWNER_CREATED = 0,
    NGX_HTTP_ASYNC_DL_OWNER_RESYNC,
    NGX_HTTP_ASYNC_DL_OWNER_LISTED,
    NGX_HTTP_ASYNC_DL_OWNER_UNAVAILABLE
} ngx_http_async_dl_owner_news_e;


/* a job a listing names: ended (or deleted: seq 0), or not */
typedef struct {
    u_char                             id[NGX_HTTP_ASYNC_DL_UUID_LEN];
    uint64_t                           seq;
    unsigned                           ended:1;
} ngx_http_async_dl_owner_row_t;


typedef struct ngx_http_async_dl_owner_watch_s  ngx_http_async_dl_owner_watch_t;

typedef void (*ngx_http_async_dl_owner_handler_pt)(
    ngx_http_async_dl_owner_watch_t *ow, ngx_http_async_dl_owner_news_e news);


struct ngx_http_async_dl_owner_watch_s {
    /* set by the watcher */
    ngx_http_async_dl_owner_handler_pt   handler;
    void                                *data;
    ngx_str_t                            owner;     /* its copy */
    ngx_log_t                           *log;

    /* the news */
    u_char                              *created;   /* CREATED: job id */
    uint64_t                             horizon;   /* LISTED */
    ngx_http_async_dl_owner_row_t       *rows;
    ngx_uint_t                           nrows;

    /* the registry's */
    void                                *group;     /* NULL: not watching */
    ngx_queue_t                          queue;     /* in its group */
    ngx_pool_t                          *fetch;     /* the listing asked */
};


/* configuration and process life (from the hub's) */
char *ngx_http_async_dl_owner_init_conf(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf);
ngx_int_t ngx_http_async_dl_owner_init_process(ngx_cycle_t *cycle,
    ngx_http_async_dl_pg_t *pg);
void ngx_http_async_dl_owner_exit_process(void);

/* the hub's notifications: a new job (key: md5 hex of its owner); LISTEN
 * (re)connected */
void ngx_http_async_dl_owner_created(u_char *id, u_char *key);
void ngx_http_async_dl_owner_resync(void);

/*
 * _watch(): NGX_DECLINED when this process has no database, NGX_ERROR, or
 * NGX_OK.  _list(): with all, the jobs not ended; with has_since, those
 * that ended (or were deleted) from since on (a horizon): NGX_OK and the
 * handler is called later, or NGX_ERROR (the database cannot be asked
 * now).  _leave(): out of the registry, its listing forgotten; again is
 * harmless.
 */
ngx_int_t ngx_http_async_dl_owner_watch(ngx_http_async_dl_owner_watch_t *ow);
ngx_int_t ngx_http_async_dl_owner_list(ngx_http_async_dl_owner_watch_t *ow,
    uint64_t since, ngx_uint_t has_since, ngx_uint_t all);
void ngx_http_async_dl_owner_leave(ngx_http_async_dl_owner_watch_t *ow);


#endif /* _NGX_HTTP_ASYNC_DL_OWNER_H_INCLUDED_ */
