
/*
 * The status cache: GET {p}status/{id} answered from shared memory, shared
 * by the worker processes of one nginx instance (async_dl_status_cache).
 *
 * A document is cached per (job id, prefix) with the job's event_seq, its
 * owner, its ETag and its expiry.  It is dropped when a notification on
 * async_dl_events names its job with a higher event_seq (or deletes it),
 * when this instance cancels or deletes the job, and all at once when a
 * LISTEN connection is lost or comes (back).  It is served only while the
 * cache is fresh: some process's LISTEN connection received its own ping,
 * sent less than `lag` ago, which PostgreSQL delivers after every
 * notification committed before it.  So a hit reflects every commit older
 * than `lag`, and never goes back before what this instance already
 * answered (see ngx_http_async_dl_status_cache.c).
 */


#ifndef _NGX_HTTP_ASYNC_DL_STATUS_CACHE_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_STATUS_CACHE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


typedef struct ngx_http_async_dl_sc_s  ngx_http_async_dl_sc_t;


/* what a miss saw, to be given back with the document it fetched */
typedef struct {
    uint64_t                  epoch;
    uint32_t                  gen;
    uint32_t                  done;
} ngx_http_async_dl_sc_fill_t;


/* a hit: copies in the request's pool */
typedef struct {
    ngx_str_t                 body;        /* compact JSON and a newline:
                                              the response body as it is */
    ngx_str_t                 etag;        /* "\"<md5 hex>\"" */
} ngx_http_async_dl_sc_doc_t;


/* async_dl_status_cache off | size [lag=time] [max_entry=size] */
char *ngx_http_async_dl_sc_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_async_dl_sc_add_variables(ngx_conf_t *cf);

/* the statement a miss runs: (id, prefix) -> owner, seq, expires, doc */
ngx_uint_t ngx_http_async_dl_sc_stmt(void);

/* the ping interval the LISTEN connection should keep: lag / 4 */
ngx_msec_t ngx_http_async_dl_sc_ping_interval(ngx_http_async_dl_sc_t *sc);

/*
 * NGX_OK: a hit, in *doc.  NGX_DECLINED: a miss; *fill records what the
 * fill must be checked against.  NGX_ERROR: no memory.
 */
ngx_int_t ngx_http_async_dl_sc_lookup(ngx_http_async_dl_sc_t *sc,
    ngx_pool_t *pool, ngx_str_t *id, ngx_str_t *prefix, ngx_str_t *owner,
    ngx_http_async_dl_sc_doc_t *doc, ngx_http_async_dl_sc_fill_t *fill);

/*
 * A miss's answer: the job's owner, event_seq, expiry (ms since the
 * epoch, -1: none), document (PostgreSQL's text) and ETag; owner NULL:
 * no such job.  Kept when nothing newer was seen meanwhile.
 */
void ngx_http_async_dl_sc_fill(ngx_http_async_dl_sc_t *sc,
    ngx_http_async_dl_sc_fill_t *fill, ngx_str_t *id, ngx_str_t *prefix,
    ngx_str_t *owner, uint64_t seq, int64_t expires_ms, ngx_str_t *body,
    u_char *etag);

/* the job changed (seq: its new event_seq; 0: anything it had) */
void ngx_http_async_dl_sc_invalidate(ngx_http_async_dl_sc_t *sc,
    u_char *id, uint64_t seq);

/* everything goes: the notifications may have been missed */
void ngx_http_async_dl_sc_flush(ngx_http_async_dl_sc_t *sc,
    const char *why);

/* a ping sent at `sent` (ngx_http_async_dl_listen_now()) came back */
void ngx_http_async_dl_sc_pong(ngx_http_async_dl_sc_t *sc, int64_t sent);


#endif /* _NGX_HTTP_ASYNC_DL_STATUS_CACHE_H_INCLUDED_ */
