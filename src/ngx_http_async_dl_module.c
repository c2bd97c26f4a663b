
/*
 * ngx_http_async_dl_module: the async-dl HTTP API inside nginx.
 *
 * This file holds the module's definition: its directives, their
 * configuration (created, merged, checked across directives) and the life
 * of a worker process (its PostgreSQL pool and the job hub's LISTEN
 * connection).  A request under {p}, the async_dl location's prefix, goes
 * to the location handler of the route table (ngx_http_async_dl_routes.c).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_hub.h"
#include "ngx_http_async_dl_metrics.h"
#include "ngx_http_async_dl_status_cache.h"


/* the values a number or a time directive accepts (cmd->post) */

typedef struct {
    ngx_int_t                 low;
    ngx_int_t                 high;
} ngx_http_async_dl_num_bounds_t;

typedef struct {
    ngx_msec_t                low;
    ngx_msec_t                high;
} ngx_http_async_dl_msec_bounds_t;


static ngx_int_t ngx_http_async_dl_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_async_dl_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_async_dl_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_async_dl_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_async_dl_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_async_dl_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_async_dl(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_async_dl_postgres(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_async_dl_set_num(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_async_dl_set_msec(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_async_dl_set_enum(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_async_dl_invalid(ngx_conf_t *cf, const char *fmt, ...);
static char *ngx_http_async_dl_check_source_url(ngx_conf_t *cf, void *post,
    void *data);
static ngx_int_t ngx_http_async_dl_init_process(ngx_cycle_t *cycle);
static void ngx_http_async_dl_exit_process(ngx_cycle_t *cycle);


static ngx_http_async_dl_num_bounds_t  ngx_http_async_dl_pool_bounds = {
    1, 1024
};

static ngx_http_async_dl_num_bounds_t  ngx_http_async_dl_max_files_bounds = {
    1, 100000
};

/* 0: no limit */
static ngx_http_async_dl_num_bounds_t  ngx_http_async_dl_limit_bounds = {
    0, NGX_MAX_INT32_VALUE
};

static ngx_http_async_dl_msec_bounds_t  ngx_http_async_dl_pg_timeout_bounds = {
    10, 3600000
};

static ngx_http_async_dl_msec_bounds_t  ngx_http_async_dl_expires_bounds = {
    1000, 604800000      /* 1s .. 7d, S3 */
};

static ngx_http_async_dl_msec_bounds_t  ngx_http_async_dl_job_timeout_bounds = {
    1000, 604800000
};

static ngx_http_async_dl_msec_bounds_t  ngx_http_async_dl_heartbeat_bounds = {
    1000, 3600000
};

static ngx_conf_post_t  ngx_http_async_dl_source_url_post = {
    ngx_http_async_dl_check_source_url
};

static ngx_conf_enum_t  ngx_http_async_dl_addressing[] = {
    { ngx_string("path"), NGX_HTTP_ASYNC_DL_S3_PATH },
    { ngx_string("virtual"), NGX_HTTP_ASYNC_DL_S3_VIRTUAL },
    { ngx_null_string, 0 }
};


#define NGX_HTTP_ASYNC_DL_LOC_CONF                                            \
    (NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF)


static ngx_command_t  ngx_http_async_dl_commands[] = {

    /* http level */

    { ngx_string("async_dl_postgres"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_postgres,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("async_dl_postgres_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_set_num,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_async_dl_main_conf_t, pg_pool),
      &ngx_http_async_dl_pool_bounds },

    { ngx_string("async_dl_postgres_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_set_msec,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_async_dl_main_conf_t, pg_timeout),
      &ngx_http_async_dl_pg_timeout_bounds },

    { ngx_string("async_dl_status_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_async_dl_sc_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("async_dl_s3_endpoint"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_async_dl_main_conf_t, s3_endpoint),
      NULL },

    { ngx_string("async_dl_s3_public_endpoint"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_async_dl_main_conf_t, s3_public_endpoint),
      NULL },

    { ngx_string("async_dl_s3_bucket"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_async_dl_main_conf_t, s3_bucket),
      NULL },

    { ngx_string("async_dl_s3_region"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_async_dl_main_conf_t, s3_region),
      NULL },

    { ngx_string("async_dl_s3_access_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_async_dl_main_conf_t, s3_access_key),
      NULL },

    { ngx_string("async_dl_s3_secret_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_async_dl_main_conf_t, s3_secret_key),
      NULL },

    { ngx_string("async_dl_s3_addressing"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_set_enum,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_async_dl_main_conf_t, s3_addressing),
      &ngx_http_async_dl_addressing },

    { ngx_string("async_dl_presign_expires"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_set_msec,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_async_dl_main_conf_t, presign_expires),
      &ngx_http_async_dl_expires_bounds },

    /* location level (and inherited from http and server) */

    { ngx_string("async_dl"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_async_dl,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("async_dl_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_async_dl_metrics,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("async_dl_owner"),
      NGX_HTTP_ASYNC_DL_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_async_dl_loc_conf_t, owner),
      NULL },

    { ngx_string("async_dl_source_url"),
      NGX_HTTP_ASYNC_DL_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_async_dl_loc_conf_t, source_url),
      &ngx_http_async_dl_source_url_post },

    { ngx_string("async_dl_urls"),
      NGX_HTTP_ASYNC_DL_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_async_dl_loc_conf_t, urls),
      NULL },

    { ngx_string("async_dl_max_files"),
      NGX_HTTP_ASYNC_DL_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_set_num,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_async_dl_loc_conf_t, max_files),
      &ngx_http_async_dl_max_files_bounds },

    { ngx_string("async_dl_max_pending"),
      NGX_HTTP_ASYNC_DL_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_set_num,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_async_dl_loc_conf_t, max_pending),
      &ngx_http_async_dl_limit_bounds },

    { ngx_string("async_dl_max_active_per_owner"),
      NGX_HTTP_ASYNC_DL_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_set_num,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_async_dl_loc_conf_t, max_active),
      &ngx_http_async_dl_limit_bounds },

    { ngx_string("async_dl_default_timeout"),
      NGX_HTTP_ASYNC_DL_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_set_msec,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_async_dl_loc_conf_t, default_timeout),
      &ngx_http_async_dl_job_timeout_bounds },

    { ngx_string("async_dl_max_timeout"),
      NGX_HTTP_ASYNC_DL_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_set_msec,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_async_dl_loc_conf_t, max_timeout),
      &ngx_http_async_dl_job_timeout_bounds },

    { ngx_string("async_dl_delivery"),
      NGX_HTTP_ASYNC_DL_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_async_dl_delivery_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("async_dl_heartbeat"),
      NGX_HTTP_ASYNC_DL_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_async_dl_set_msec,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_async_dl_loc_conf_t, heartbeat),
      &ngx_http_async_dl_heartbeat_bounds },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_async_dl_module_ctx = {
    ngx_http_async_dl_preconfiguration,    /* preconfiguration */
    ngx_http_async_dl_postconfiguration,   /* postconfiguration */

    ngx_http_async_dl_create_main_conf,    /* create main configuration */
    ngx_http_async_dl_init_main_conf,      /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_async_dl_create_loc_conf,     /* create location configuration */
    ngx_http_async_dl_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_async_dl_module = {
    NGX_MODULE_V1,
    &ngx_http_async_dl_module_ctx,         /* module context */
    ngx_http_async_dl_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_async_dl_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_async_dl_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* configuration */


static ngx_int_t
ngx_http_async_dl_preconfiguration(ngx_conf_t *cf)
{
    if (ngx_http_async_dl_routes_add_variables(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_async_dl_delivery_add_variables(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_async_dl_sc_add_variables(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_async_dl_hub_add_variables(cf);
}


static ngx_int_t
ngx_http_async_dl_postconfiguration(ngx_conf_t *cf)
{
    if (ngx_http_async_dl_delivery_init(cf) != NGX_OK
        || ngx_http_async_dl_metrics_init(cf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_async_dl_filter_init(cf);
}


static void *
ngx_http_async_dl_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_async_dl_main_conf_t  *amcf;

    amcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_async_dl_main_conf_t));
    if (amcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     amcf->postgres = { 0, NULL };
     *     amcf->pg = { NULL, ... };
     *     amcf->s3_* = { 0, NULL };
     *     amcf->pool = NULL;
     */

    amcf->pg_pool = NGX_CONF_UNSET;
    amcf->pg_timeout = NGX_CONF_UNSET_MSEC;
    amcf->s3_addressing = NGX_CONF_UNSET_UINT;
    amcf->presign_expires = NGX_CONF_UNSET_MSEC;
    amcf->storage_url_index = NGX_ERROR;
    amcf->storage_range_index = NGX_ERROR;
    amcf->etag_index = NGX_ERROR;

    if (ngx_array_init(&amcf->deliveries, cf->pool, 1,
                       sizeof(ngx_http_async_dl_delivery_check_t))
        != NGX_OK)
    {
        return NULL;
    }

    return amcf;
}


static char *
ngx_http_async_dl_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_async_dl_main_conf_t  *amcf = conf;

    ngx_conf_init_value(amcf->pg_pool, 4);
    ngx_conf_init_msec_value(amcf->pg_timeout, 5000);
    ngx_conf_init_uint_value(amcf->s3_addressing, NGX_HTTP_ASYNC_DL_S3_PATH);
    ngx_conf_init_msec_value(amcf->presign_expires, 15 * 60 * 1000);

    if (amcf->s3_region.data == NULL) {
        ngx_str_set(&amcf->s3_region, "us-east-1");
    }

    if (amcf->s3_public_endpoint.data == NULL) {
        amcf->s3_public_endpoint = amcf->s3_endpoint;
    }

    amcf->pg.size = amcf->pg_pool;
    amcf->pg.timeout = amcf->pg_timeout;
    if (ngx_http_async_dl_routes_init_conf(cf, amcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_async_dl_hub_init_conf(cf, amcf) != NGX_CONF_OK
        || ngx_http_async_dl_metrics_init_conf(cf, amcf) != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    return ngx_http_async_dl_presign_check(cf, amcf);
}


static void *
ngx_http_async_dl_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_async_dl_loc_conf_t  *alcf;

    alcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_async_dl_loc_conf_t));
    if (alcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     alcf->prefix = { 0, NULL };
     *     alcf->source_url = { 0, NULL };
     *     alcf->delivery_location = { 0, NULL };
     */

    alcf->enable = NGX_CONF_UNSET;
    alcf->owner = NGX_CONF_UNSET_PTR;
    alcf->urls = NGX_CONF_UNSET;
    alcf->max_files = NGX_CONF_UNSET;
    alcf->max_pending = NGX_CONF_UNSET;
    alcf->max_active = NGX_CONF_UNSET;
    alcf->default_timeout = NGX_CONF_UNSET_MSEC;
    alcf->max_timeout = NGX_CONF_UNSET_MSEC;
    alcf->heartbeat = NGX_CONF_UNSET_MSEC;
    alcf->delivery = NGX_CONF_UNSET_UINT;

    return alcf;
}


static char *
ngx_http_async_dl_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_async_dl_loc_conf_t *prev = parent;
    ngx_http_async_dl_loc_conf_t *conf = child;

    ngx_http_core_loc_conf_t       *clcf;
    ngx_http_async_dl_main_conf_t  *amcf;

    /* "async_dl" itself is not inherited: it sets this location's handler */
    ngx_conf_init_value(conf->enable, 0);

    ngx_conf_merge_ptr_value(conf->owner, prev->owner, NULL);
    ngx_conf_merge_str_value(conf->source_url, prev->source_url, "");
    ngx_conf_merge_value(conf->urls, prev->urls, 1);
    ngx_conf_merge_value(conf->max_files, prev->max_files, 1000);
    ngx_conf_merge_value(conf->max_pending, prev->max_pending, 10000);
    ngx_conf_merge_value(conf->max_active, prev->max_active, 100);
    ngx_conf_merge_msec_value(conf->default_timeout, prev->default_timeout,
                              10 * 60 * 1000);
    ngx_conf_merge_msec_value(conf->max_timeout, prev->max_timeout,
                              60 * 60 * 1000);
    ngx_conf_merge_msec_value(conf->heartbeat, prev->heartbeat, 15 * 1000);

    if (ngx_http_async_dl_delivery_merge(cf, prev, conf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (conf->default_timeout > conf->max_timeout) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"async_dl_default_timeout\" (%M ms) is more "
                           "than \"async_dl_max_timeout\" (%M ms)",
                           conf->default_timeout, conf->max_timeout);
        return NGX_CONF_ERROR;
    }

    if (!conf->enable) {
        return NGX_CONF_OK;
    }

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_async_dl_module);

#define ngx_http_async_dl_require(field, name)                                \
    if (amcf->field.len == 0) {                                               \
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,                              \
                           "\"async_dl\" in location \"%V\" needs \"" name   \
                           "\" at http level", &conf->prefix);                \
        return NGX_CONF_ERROR;                                                \
    }

    ngx_http_async_dl_require(postgres, "async_dl_postgres");
    ngx_http_async_dl_require(s3_endpoint, "async_dl_s3_endpoint");
    ngx_http_async_dl_require(s3_bucket, "async_dl_s3_bucket");
    ngx_http_async_dl_require(s3_access_key, "async_dl_s3_access_key");
    ngx_http_async_dl_require(s3_secret_key, "async_dl_s3_secret_key");

#undef ngx_http_async_dl_require

    /*
     * The initiate body: bounded even when client_max_body_size is 0, and
     * read into memory when it is not larger than 1m (the default
     * client_max_body_size), so that usual bodies never go through a
     * temporary file; a larger one does, and is read back from it.
     */

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->client_max_body_size == 0) {
        clcf->client_max_body_size = NGX_HTTP_ASYNC_DL_MAX_BODY;
    }

    if (clcf->client_body_buffer_size < (size_t) clcf->client_max_body_size
        && clcf->client_body_buffer_size < NGX_HTTP_ASYNC_DL_BODY_BUFFER)
    {
        clcf->client_body_buffer_size =
                         ngx_min((size_t) clcf->client_max_body_size,
                                 NGX_HTTP_ASYNC_DL_BODY_BUFFER);
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_async_dl(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_async_dl_loc_conf_t *alcf = conf;

    size_t                     len;
    ngx_http_core_loc_conf_t  *clcf;

    if (alcf->enable != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->named || clcf->exact_match
#if (NGX_PCRE)
        || clcf->regex
#endif
        || clcf->name.len == 0 || clcf->name.data[0] != '/')
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"async_dl\" must be in a prefix location, "
                           "such as \"location /v1/download/\"");
        return NGX_CONF_ERROR;
    }

    /* {p}: the location's prefix, with a trailing slash */

    len = clcf->name.len;

    alcf->prefix.data = ngx_pnalloc(cf->pool, len + 2);
    if (alcf->prefix.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(alcf->prefix.data, clcf->name.data, len);

    if (clcf->name.data[len - 1] != '/') {
        alcf->prefix.data[len++] = '/';
    }

    alcf->prefix.data[len] = '\0';            /* a statement parameter */
    alcf->prefix.len = len;
    alcf->enable = 1;

    clcf->handler = ngx_http_async_dl_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_async_dl_postgres(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_async_dl_main_conf_t *amcf = conf;

    ngx_str_t  *value;

    if (amcf->postgres.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        return "needs a conninfo, such as \"host=127.0.0.1 dbname=async_dl\"";
    }

    amcf->postgres = value[1];

    return ngx_http_async_dl_pg_conninfo(cf, &value[1], &amcf->pg);
}


/*
 * The stock slot setters, with every wrong value named with its directive
 * and what the directive accepts:
 *   invalid "async_dl_max_files" value "0": must be between 1 and 100000
 *   invalid value "sideways" in "async_dl_s3_addressing" directive, it
 *   must be "path" or "virtual" (the words of nginx's own flag setter)
 */

static char *
ngx_http_async_dl_set_num(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_async_dl_num_bounds_t  *b = cmd->post;

    ngx_int_t   n, *np;
    ngx_str_t  *value;

    np = (ngx_int_t *) ((char *) conf + cmd->offset);

    if (*np != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;
    n = ngx_atoi(value[1].data, value[1].len);

    if (n == NGX_ERROR || n < b->low || n > b->high) {
        return ngx_http_async_dl_invalid(cf, "must be between %i and %i",
                                         b->low, b->high);
    }

    *np = n;

    return NGX_CONF_OK;
}


static char *
ngx_http_async_dl_set_msec(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_async_dl_msec_bounds_t  *b = cmd->post;

    ngx_int_t    n;
    ngx_str_t   *value;
    ngx_msec_t  *mp;

    mp = (ngx_msec_t *) ((char *) conf + cmd->offset);

    if (*mp != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;
    n = ngx_parse_time(&value[1], 0);

    if (n == NGX_ERROR || (ngx_msec_t) n < b->low || (ngx_msec_t) n > b->high)
    {
        return ngx_http_async_dl_invalid(cf, "must be between %M ms and "
                                         "%M ms", b->low, b->high);
    }

    *mp = (ngx_msec_t) n;

    return NGX_CONF_OK;
}


static char *
ngx_http_async_dl_set_enum(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_conf_enum_t  *e = cmd->post;

    u_char      *p, *last, list[256];
    ngx_str_t   *value;
    ngx_uint_t   i, *np;

    np = (ngx_uint_t *) ((char *) conf + cmd->offset);

    if (*np != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 0; e[i].name.len; i++) {
        if (e[i].name.len == value[1].len
            && ngx_strcasecmp(e[i].name.data, value[1].data) == 0)
        {
            *np = e[i].value;
            return NGX_CONF_OK;
        }
    }

    /* "a", "b" or "c" */

    p = list;
    last = list + sizeof(list);

    for (i = 0; e[i].name.len; i++) {
        p = ngx_slprintf(p, last, "%s\"%V\"",
                         i == 0 ? "" : (e[i + 1].name.len ? ", " : " or "),
                         &e[i].name);
    }

    /* as ngx_conf_set_flag_slot() says it */

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\" directive, "
                       "it must be %*s", &value[1], &value[0],
                       (size_t) (p - list), list);

    return NGX_CONF_ERROR;
}


/* the directive and its value, then why: NGX_CONF_ERROR */

static char *
ngx_http_async_dl_invalid(ngx_conf_t *cf, const char *fmt, ...)
{
    u_char      *p, why[512];
    va_list      args;
    ngx_str_t   *value;

    va_start(args, fmt);
    p = ngx_vslprintf(why, why + sizeof(why), fmt, args);
    va_end(args);

    value = cf->args->elts;

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid \"%V\" value \"%V\": %*s", &value[0],
                       &value[1], (size_t) (p - why), why);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_async_dl_check_source_url(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t  *url = data;

    if ((ngx_strncasecmp(url->data, (u_char *) "http://", 7) == 0
         || ngx_strncasecmp(url->data, (u_char *) "https://", 8) == 0)
        && ngx_strnstr(url->data, "{file_id}", url->len) != NULL)
    {
        return NGX_CONF_OK;
    }

    return ngx_http_async_dl_invalid(cf, "must be an http or https URL "
                                     "with \"{file_id}\"");
}


/* the worker process's PostgreSQL pool */


static ngx_int_t
ngx_http_async_dl_init_process(ngx_cycle_t *cycle)
{
    ngx_http_async_dl_main_conf_t  *amcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    amcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_async_dl_module);

    if (amcf == NULL || amcf->postgres.len == 0) {
        ngx_http_async_dl_metrics_init_process(cycle);
        return NGX_OK;
    }

    amcf->pool = ngx_http_async_dl_pg_create(cycle, &amcf->pg);
    if (amcf->pool == NULL) {
        return NGX_ERROR;
    }

    ngx_http_async_dl_metrics_init_process(cycle);

    /* the LISTEN connection of the event streams */
    return ngx_http_async_dl_hub_init_process(cycle, amcf);
}


static void
ngx_http_async_dl_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_async_dl_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_async_dl_module);

    ngx_http_async_dl_hub_exit_process(cycle);
    ngx_http_async_dl_metrics_exit_process();

    if (amcf && amcf->pool) {
        ngx_http_async_dl_pg_destroy(amcf->pool);
        amcf->pool = NULL;
    }
}
