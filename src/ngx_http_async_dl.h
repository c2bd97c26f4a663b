
/*
 * ngx_http_async_dl_module: the types shared by the module's files.
 *
 *   ngx_http_async_dl_module.c   directives, configuration, route dispatch
 *   src/ngx_http_async_dl_api.c     one function per route, and the SQL
 *   src/ngx_http_async_dl_input.c   the initiate body (jansson)
 *   src/ngx_http_async_dl_reply.c   JSON answers, errors, the error filter
 *   src/ngx_http_async_dl_presign.c presigned storage links (adl_sigv4)
 *   src/ngx_http_async_dl_delivery.c async_dl_delivery proxy: the object
 *                                   streamed through nginx
 *   src/ngx_http_async_dl_links.c   {id}/links: the presigned links as JSON
 *   src/ngx_http_async_dl_pg.c      the non-blocking PostgreSQL pool
 *   src/ngx_http_async_dl_sse.c     the event stream (Server-Sent Events)
 *   src/ngx_http_async_dl_listen.c  its LISTEN connection
 */


#ifndef _NGX_HTTP_ASYNC_DL_H_INCLUDED_
#define _NGX_HTTP_ASYNC_DL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl_pg.h"


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


typedef enum {
    NGX_HTTP_ASYNC_DL_ROUTE_NONE = 0,
    NGX_HTTP_ASYNC_DL_ROUTE_HEALTH,         /* health */
    NGX_HTTP_ASYNC_DL_ROUTE_INITIATE,       /* initiate */
    NGX_HTTP_ASYNC_DL_ROUTE_STATUS,         /* status/{id} */
    NGX_HTTP_ASYNC_DL_ROUTE_STREAM,         /* stream/{id} */
    NGX_HTTP_ASYNC_DL_ROUTE_JOBS,           /* jobs */
    NGX_HTTP_ASYNC_DL_ROUTE_JOB,            /* {id}: download, DELETE */
    NGX_HTTP_ASYNC_DL_ROUTE_CANCEL,         /* {id}/cancel */
    NGX_HTTP_ASYNC_DL_ROUTE_FILE,           /* {id}/files/{index} */
    NGX_HTTP_ASYNC_DL_ROUTE_LINKS           /* {id}/links */
} ngx_http_async_dl_route_e;


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

    ngx_uint_t                      used;          /* a location has it */
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


typedef struct {
    ngx_http_async_dl_route_e       route;
    ngx_str_t                       job_id;        /* $async_dl_job_id */
    ngx_str_t                       owner;
    ngx_int_t                       index;         /* ROUTE_FILE */
    ngx_http_async_dl_pg_query_t   *query;
    ngx_http_async_dl_done_pt       done;          /* the query's result */
    ngx_str_t                       error_body;    /* json_error */
    void                           *stream;        /* ROUTE_STREAM: sse.c */
    ngx_uint_t                      stream_status; /* an initiate answered
                                                      as its job's stream */
    ngx_str_t                       created;       /* its JSON answer, for
                                                      a stream that cannot
                                                      start */

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
    u_char                          hash[65];      /* sha256 hex */
    ngx_str_t                       error;         /* 400 message */
} ngx_http_async_dl_input_t;


extern ngx_module_t  ngx_http_async_dl_module;


/* api.c */
extern ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmts[];
extern ngx_uint_t                   ngx_http_async_dl_nstmts;

ngx_int_t ngx_http_async_dl_health(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_initiate(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_status(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_jobs(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_cancel(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_delete(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_download(ngx_http_request_t *r);
ngx_int_t ngx_http_async_dl_links(ngx_http_request_t *r);
char *ngx_http_async_dl_url_name(ngx_http_request_t *r, char *url);

/* input.c */
ngx_int_t ngx_http_async_dl_parse_initiate(ngx_http_request_t *r,
    ngx_http_async_dl_loc_conf_t *alcf, u_char *body, size_t len,
    ngx_http_async_dl_input_t *in);
ngx_int_t ngx_http_async_dl_is_uuid(u_char *p, size_t len);
size_t ngx_http_async_dl_utf8_char(u_char *p, u_char *last);
ngx_int_t ngx_http_async_dl_is_text(u_char *p, size_t len);

/* reply.c */
ngx_int_t ngx_http_async_dl_send_json(ngx_http_request_t *r,
    ngx_uint_t status, u_char *body, size_t len);
ngx_int_t ngx_http_async_dl_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *fmt, ...);
ngx_int_t ngx_http_async_dl_add_header(ngx_http_request_t *r,
    const char *name, u_char *value, size_t len);
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
ngx_int_t ngx_http_async_dl_links_done(ngx_http_request_t *r,
    PGresult *res);


#endif /* _NGX_HTTP_ASYNC_DL_H_INCLUDED_ */
