
/*
 * ngx_http_async_dl_module: the types shared by the module's files.
 *
 *   ngx_http_async_dl_module.c    directives and configuration
 *   ngx_http_async_dl_routes.c    the route table, the location handler
 *   ngx_http_async_dl_api.c       the routes' handlers
 *   ngx_http_async_dl_query.c     a request's statement, database errors
 *   ngx_http_async_dl_input.c     the initiate body (jansson)
 *   ngx_http_async_dl_reply.c     JSON answers, errors, the error filter
 *   ngx_http_async_dl_presign.c   presigned storage links (adl_sigv4)
 *   ngx_http_async_dl_delivery.c  async_dl_delivery proxy: the object
 *                                 streamed through nginx
 *   ngx_http_async_dl_links.c     {id}/links: the presigned links as JSON
 *   ngx_http_async_dl_sse.c       the event stream (Server-Sent Events)
 *   ngx_http_async_dl_ws.c        the same events over a WebSocket
 *   ngx_http_async_dl_ws_frame.c  WebSocket frames: reading, headers
 *   ngx_http_async_dl_hub.c       the jobs watched by this process's streams
 *   ngx_http_async_dl_hub_state.c a watched job's state, shared texts
 *   ngx_http_async_dl_listen.c    the hub's LISTEN connection
 *   ngx_http_async_dl_status_cache.c  status documents in shared memory
 *   ngx_http_async_dl_pg.c        the non-blocking PostgreSQL pool
 *   ngx_http_async_dl_pg_sock.c   a libpq connection on nginx's event loop
 *   ngx_http_async_dl_pg_conf.c   async_dl_postgres, the statements
 */


#ifndef _NGX_HTTP_ASYNC_DL_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl_pg.h"
#include "ngx_http_async_dl_status_cache.h"


#define NGX_HTTP_ASYNC_DL_UUID_LEN          36

/*
 * The initiate body: the bound when client_max_body_size is 0, and the
 * largest one read into memory (see merge_loc_conf).
 */
#define NGX_HTTP_ASYNC_DL_MAX_BODY          (16 * 1024 * 1024)
#define NGX_HTTP_ASYNC_DL_BODY_BUFFER       (1024 * 1024)

/* async_dl_owner's value: at most this many bytes (it is indexed) */
#define NGX_HTTP_ASYNC_DL_MAX_OWNER         1024

/* nginx 1.23 chains headers of the same name */
#if (nginx_version >= 1023000)
#define ngx_http_async_dl_header_init(h)    (h)->next = NULL
#else
#define ngx_http_async_dl_header_init(h)
#endif

/* Retry-After, seconds */
#define NGX_HTTP_ASYNC_DL_RETRY_DATABASE    1
#define NGX_HTTP_ASYNC_DL_RETRY_QUEUE_FULL  10
#define NGX_HTTP_ASYNC_DL_RETRY_OWNER       5
#define NGX_HTTP_ASYNC_DL_RETRY_NOT_READY   2


#define NGX_HTTP_ASYNC_DL_S3_PATH      0
#define NGX_HTTP_ASYNC_DL_S3_VIRTUAL   1

/* async_dl_delivery */
#define NGX_HTTP_ASYNC_DL_REDIRECT     0
#define NGX_HTTP_ASYNC_DL_PROXY        1


/* a named location that async_dl_delivery proxy uses, checked in time */
typedef struct {
    ngx_http_core_srv_conf_t       *cscf;
    ngx_str_t                       name;          /* "@name" */
    ngx_str_t                       prefix;        /* the async_dl location */
} ngx_http_async_dl_delivery_check_t;


typedef struct {
    ngx_str_t                       postgres;      /* conninfo as written */
    ngx_http_async_dl_pg_conf_t     pg;
    ngx_int_t                       pg_pool;
    ngx_msec_t                      pg_timeout;

    ngx_str_t                       s3_endpoint;
    ngx_str_t                       s3_public_endpoint;
    ngx_str_t                       s3_bucket;
    ngx_str_t                       s3_region;
    ngx_str_t                       s3_access_key;
    ngx_str_t                       s3_secret_key;
    ngx_uint_t                      s3_addressing;
    ngx_msec_t                      presign_expires;

    /* the variables of a delivery through nginx (delivery.c) */
    ngx_int_t                       storage_url_index;
    ngx_int_t                       storage_range_index;
    ngx_int_t                       etag_index;
    ngx_array_t                     deliveries;    /* named locations */

    ngx_http_async_dl_sc_t         *status_cache;  /* NULL: off */
    ngx_flag_t                      status_cache_set;

    ngx_http_async_dl_pg_t         *pool;          /* this worker's */
} ngx_http_async_dl_main_conf_t;


typedef struct {
    ngx_flag_t                      enable;
    ngx_str_t                       prefix;        /* {p}, ends with '/' */
    ngx_http_complex_value_t       *owner;
    ngx_str_t                       source_url;
    ngx_flag_t                      urls;
    ngx_int_t                       max_files;
    ngx_int_t                       max_pending;
    ngx_int_t                       max_active;
    ngx_msec_t                      default_timeout;
    ngx_msec_t                      max_timeout;
    ngx_msec_t                      heartbeat;
    ngx_uint_t                      delivery;      /* REDIRECT, PROXY */
    ngx_str_t                       delivery_location; /* "@name" */
} ngx_http_async_dl_loc_conf_t;


typedef ngx_int_t (*ngx_http_async_dl_done_pt)(ngx_http_request_t *r,
    PGresult *res);

typedef ngx_int_t (*ngx_http_async_dl_handler_pt)(ngx_http_request_t *r);


/* route flags */
#define NGX_HTTP_ASYNC_DL_R_HEALTH     0x01   /* no owner; errors say why */
#define NGX_HTTP_ASYNC_DL_R_BODY       0x02   /* reads the request body */
#define NGX_HTTP_ASYNC_DL_R_REDIRECT   0x04   /* async_dl_delivery redirect */
#define NGX_HTTP_ASYNC_DL_R_PROXY      0x08   /* async_dl_delivery proxy */


/* a row of the route table (routes.c) */
typedef struct {
    const char                     *path;          /* after {p}: "{id}/..." */
    ngx_uint_t                      methods;       /* NGX_HTTP_GET|... */
    ngx_uint_t                      flags;
    ngx_http_async_dl_handler_pt    handler;
    ngx_http_async_dl_pg_stmt_t    *stmt;          /* NULL: none */
    ngx_uint_t                      stmt_index;    /* in the pool's list */
} ngx_http_async_dl_route_t;


typedef struct {
    ngx_http_async_dl_route_t      *route;
    ngx_str_t                       job_id;        /* $async_dl_job_id */
    ngx_str_t                       traceparent;   /* an initiate's: its
                                                      request's, or made up
                                                      ($async_dl_traceparent)
                                                    */
    ngx_str_t                       owner;
    ngx_int_t                       index;         /* {n}; else -1 */
    ngx_http_async_dl_done_pt       done;          /* the query's result */
    ngx_str_t                       error_body;    /* json_error */
    void                           *stream;        /* stream/{id}: sse.c */
    ngx_uint_t                      stream_status; /* an initiate answered
                                                      as its job's stream */
    ngx_str_t                       created;       /* its JSON answer, for
                                                      a stream that cannot
                                                      start */
    ngx_http_async_dl_sc_fill_t     fill;          /* status: a cache miss */

    unsigned                        replied:1;     /* our own answer */
    unsigned                        revalidate:1;  /* no-cache, not no-store */
    unsigned                        json_error:1;  /* nginx's, as JSON */
    unsigned                        json_sent:1;
} ngx_http_async_dl_ctx_t;


/* a presigned link to an object */
typedef struct {
    const char                     *key;
    const char                     *name;          /* Content-Disposition */
    const char                     *method;        /* "GET", "HEAD" */
    time_t                          now;
    unsigned                        internal:1;    /* async_dl_s3_endpoint */
} ngx_http_async_dl_link_t;


/* the initiate body, checked */
typedef struct {
    ngx_uint_t                      nfiles;
    ngx_str_t                       files;         /* JSON array for SQL */
    ngx_msec_t                      timeout;
    ngx_str_t                       callback_url;  /* data NULL: none */
    ngx_int_t                       priority;      /* -100..100 */
    u_char                          hash[65];      /* sha256 hex */
    ngx_str_t                       error;         /* 400 message */
} ngx_http_async_dl_input_t;


extern ngx_module_t  ngx_http_async_dl_module;


/* routes.c */
char *ngx_http_async_dl_routes_init_conf(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf);
ngx_int_t ngx_http_async_dl_routes_add_variables(ngx_conf_t *cf);
ngx_http_async_dl_route_t *ngx_http_async_dl_routes_table(void);
ngx_int_t ngx_http_async_dl_handler(ngx_http_request_t *r);

/* api.c: the handlers */
ngx_int_t ngx_http_async_dl_health(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_initiate(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_status(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_jobs(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_cancel(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_pause(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_delete(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_download(ngx_http_request_t *r);
char *ngx_http_async_dl_url_name(ngx_http_request_t *r, char *url);
ngx_int_t ngx_http_async_dl_header_in(ngx_http_request_t *r,
    const char *name, ngx_str_t *value);
ngx_uint_t ngx_http_async_dl_header_has(ngx_http_request_t *r,
    const char *name, const char *token);

/* query.c: the route's statement; params[0], [1]: job id, owner */
ngx_int_t ngx_http_async_dl_run(ngx_http_request_t *r, const char **params,
    ngx_http_async_dl_done_pt done);
ngx_int_t ngx_http_async_dl_run_stmt(ngx_http_request_t *r, ngx_uint_t stmt,
    const char **params, ngx_http_async_dl_done_pt done);
ngx_int_t ngx_http_async_dl_run_job(ngx_http_request_t *r,
    ngx_http_async_dl_done_pt done);
const char **ngx_http_async_dl_job_params(ngx_http_request_t *r,
    ngx_uint_t n);
char *ngx_http_async_dl_cstr(ngx_pool_t *pool, ngx_str_t *s);
const char *ngx_http_async_dl_num(ngx_pool_t *pool, int64_t n);
ngx_int_t ngx_http_async_dl_wait(ngx_http_request_t *r);

/* input.c */
ngx_int_t ngx_http_async_dl_parse_initiate(ngx_http_request_t *r,
    ngx_http_async_dl_loc_conf_t *alcf, u_char *body, size_t len,
    ngx_http_async_dl_input_t *in);
ngx_int_t ngx_http_async_dl_is_uuid(u_char *p, size_t len);
size_t ngx_http_async_dl_utf8_char(u_char *p, u_char *last);
ngx_int_t ngx_http_async_dl_is_text(u_char *p, size_t len);
ngx_int_t ngx_http_async_dl_traceparent(ngx_http_request_t *r,
    ngx_str_t *tp);

/* reply.c */
ngx_int_t ngx_http_async_dl_send_json(ngx_http_request_t *r,
    ngx_uint_t status, u_char *body, size_t len);
ngx_int_t ngx_http_async_dl_send_compact_json(ngx_http_request_t *r,
    ngx_uint_t status, u_char *body, size_t len);
ngx_int_t ngx_http_async_dl_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *fmt, ...);
ngx_int_t ngx_http_async_dl_add_header(ngx_http_request_t *r,
    const char *name, u_char *value, size_t len);
ngx_table_elt_t *ngx_http_async_dl_push_header(ngx_http_request_t *r,
    const char *name, u_char *value, size_t len);
ngx_int_t ngx_http_async_dl_db_unavailable(ngx_http_request_t *r,
    const char *fmt, ...);
ngx_int_t ngx_http_async_dl_retry_after(ngx_http_request_t *r,
    time_t seconds);
ngx_int_t ngx_http_async_dl_filter_init(ngx_conf_t *cf);
size_t ngx_http_async_dl_compact(u_char *dst, u_char *src, size_t len);
size_t ngx_http_async_dl_escape(u_char *dst, u_char *src, size_t len);

/* presign.c */
char *ngx_http_async_dl_presign_check(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf);
ngx_int_t ngx_http_async_dl_presign(ngx_http_request_t *r,
    ngx_http_async_dl_main_conf_t *amcf, ngx_http_async_dl_link_t *link,
    ngx_str_t *url);

/* delivery.c */
char *ngx_http_async_dl_delivery_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_async_dl_delivery_merge(ngx_conf_t *cf,
    ngx_http_async_dl_loc_conf_t *prev, ngx_http_async_dl_loc_conf_t *conf);
ngx_int_t ngx_http_async_dl_delivery_add_variables(ngx_conf_t *cf);
ngx_int_t ngx_http_async_dl_delivery_init(ngx_conf_t *cf);
ngx_int_t ngx_http_async_dl_deliver(ngx_http_request_t *r,
    const char *key, const char *name, const char *sha256);
ngx_uint_t ngx_http_async_dl_delivered(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_delivery_headers(ngx_http_request_t *r,
    const char **code, ngx_str_t *message);

/* links.c */
ngx_int_t ngx_http_async_dl_links(ngx_http_request_t *r);


#endif /* _NGX_HTTP_ASYNC_DL_H_INCLUDED_ */
