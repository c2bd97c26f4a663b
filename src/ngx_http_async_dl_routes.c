
/*
 * The routes under {p} (the async_dl location's prefix), in one table: the
 * path's shape, the methods, the handler and the statement it runs.  A new
 * route is a row here, its handler and its SQL function.
 *
 * The location handler finds the row, answers what no row takes (404, 405
 * with Allow), checks the owner (async_dl_owner) and the job id, then calls
 * the row's handler.  $async_dl_job_id is the request's job.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_sse.h"
#include "ngx_http_async_dl_ws.h"


#define NGX_HTTP_ASYNC_DL_READ      (NGX_HTTP_GET|NGX_HTTP_HEAD)


static ngx_http_async_dl_route_t *ngx_http_async_dl_route(
    ngx_http_request_t *r, ngx_http_async_dl_loc_conf_t *alcf,
    ngx_http_async_dl_ctx_t *ctx, ngx_uint_t *allowed);
static ngx_uint_t ngx_http_async_dl_route_match(const char *shape,
    u_char *p, u_char *last, ngx_str_t *id, ngx_str_t *n);
static ngx_int_t ngx_http_async_dl_not_allowed(ngx_http_request_t *r,
    ngx_uint_t allowed);
static ngx_int_t ngx_http_async_dl_ctx_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


/* the statements (sql/002_api.sql, sql/008_delivery.sql) */

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_health = {
    "async_dl_health",
    "SELECT o_workers, o_waiting FROM async_dl_health()", 0
};

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_create = {
    "async_dl_create",
    "SELECT outcome, job_id, body"
    " FROM async_dl_job_create($1, $2, $3, $4, $5, $6, $7, $8, $9,"
    " $10::smallint, $11)", 11
};

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_status = {
    "async_dl_status", "SELECT async_dl_job_status($1, $2, $3)", 3
};

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_list = {
    "async_dl_list", "SELECT async_dl_job_list($1, $2, $3, $4, $5, $6)", 6
};

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_cancel = {
    "async_dl_cancel",
    "SELECT outcome, body FROM async_dl_job_cancel_status($1, $2, $3)", 3
};

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_pause = {
    "async_dl_pause",
    "SELECT outcome, body FROM async_dl_job_pause_status($1, $2, $3, true)", 3
};

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_resume = {
    "async_dl_resume",
    "SELECT outcome, body FROM async_dl_job_pause_status($1, $2, $3, false)", 3
};

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_delete = {
    "async_dl_delete", "SELECT async_dl_job_delete($1, $2)", 2
};

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_file = {
    "async_dl_file",
    "SELECT o_outcome, o_key, o_name, o_message, o_url"
    " FROM async_dl_job_file($1, $2, $3)", 3
};

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_object = {
    "async_dl_object",
    "SELECT o_outcome, o_key, o_name, o_message, o_url, o_sha256"
    " FROM async_dl_job_object($1, $2, $3)", 3
};

static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_stmt_links = {
    "async_dl_links",
    "SELECT o_kind, o_index, o_key, o_name, o_url, o_size"
    " FROM async_dl_job_links($1, $2)", 2
};


/*
 * The shape of the path after {p}: its text, "{id}" a job id (a path
 * segment, checked afterwards: a malformed one is JOB_NOT_FOUND), "{n}" a
 * file index (the rest of the path).  The first row whose shape, method
 * and delivery fit is the route.
 */

static ngx_http_async_dl_route_t  ngx_http_async_dl_routes[] = {

    { "health", NGX_HTTP_ASYNC_DL_READ, NGX_HTTP_ASYNC_DL_R_HEALTH,
      ngx_http_async_dl_health, &ngx_http_async_dl_stmt_health, 0 },

    { "initiate", NGX_HTTP_POST, NGX_HTTP_ASYNC_DL_R_BODY,
      ngx_http_async_dl_initiate, &ngx_http_async_dl_stmt_create, 0 },

    { "jobs", NGX_HTTP_ASYNC_DL_READ, 0,
      ngx_http_async_dl_jobs, &ngx_http_async_dl_stmt_list, 0 },

    { "status/{id}", NGX_HTTP_ASYNC_DL_READ, 0,
      ngx_http_async_dl_status, &ngx_http_async_dl_stmt_status, 0 },

    /* the job hub's own statement; without an id, all the owner's jobs
     * (the owners' registry's statement) */
    { "stream/{id}", NGX_HTTP_ASYNC_DL_READ, 0,
      ngx_http_async_dl_stream, NULL, 0 },

    { "stream", NGX_HTTP_ASYNC_DL_READ, 0,
      ngx_http_async_dl_stream, NULL, 0 },

    { "ws/{id}", NGX_HTTP_GET, 0,
      ngx_http_async_dl_ws, NULL, 0 },

    { "ws", NGX_HTTP_GET, 0,
      ngx_http_async_dl_ws, NULL, 0 },

    { "{id}", NGX_HTTP_ASYNC_DL_READ, NGX_HTTP_ASYNC_DL_R_REDIRECT,
      ngx_http_async_dl_download, &ngx_http_async_dl_stmt_file, 0 },

    { "{id}", NGX_HTTP_ASYNC_DL_READ, NGX_HTTP_ASYNC_DL_R_PROXY,
      ngx_http_async_dl_download, &ngx_http_async_dl_stmt_object, 0 },

    { "{id}", NGX_HTTP_DELETE, 0,
      ngx_http_async_dl_delete, &ngx_http_async_dl_stmt_delete, 0 },

    { "{id}/cancel", NGX_HTTP_POST, 0,
      ngx_http_async_dl_cancel, &ngx_http_async_dl_stmt_cancel, 0 },

    { "{id}/pause", NGX_HTTP_POST, 0,
      ngx_http_async_dl_pause, &ngx_http_async_dl_stmt_pause, 0 },

    { "{id}/resume", NGX_HTTP_POST, 0,
      ngx_http_async_dl_pause, &ngx_http_async_dl_stmt_resume, 0 },

    { "{id}/links", NGX_HTTP_ASYNC_DL_READ, 0,
      ngx_http_async_dl_links, &ngx_http_async_dl_stmt_links, 0 },

    { "{id}/files/{n}", NGX_HTTP_ASYNC_DL_READ, NGX_HTTP_ASYNC_DL_R_REDIRECT,
      ngx_http_async_dl_download, &ngx_http_async_dl_stmt_file, 0 },

    { "{id}/files/{n}", NGX_HTTP_ASYNC_DL_READ, NGX_HTTP_ASYNC_DL_R_PROXY,
      ngx_http_async_dl_download, &ngx_http_async_dl_stmt_object, 0 },

    { NULL, 0, 0, NULL, NULL, 0 }
};


static ngx_str_t  ngx_http_async_dl_job_id_name = ngx_string("async_dl_job_id");
static ngx_str_t  ngx_http_async_dl_traceparent_name =
    ngx_string("async_dl_traceparent");


/* the table, for the metrics (its rows end with one whose path is NULL) */

ngx_http_async_dl_route_t *
ngx_http_async_dl_routes_table(void)
{
    return ngx_http_async_dl_routes;
}


/* init_main_conf: the routes' statements, in the pool's list */

char *
ngx_http_async_dl_routes_init_conf(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf)
{
    ngx_int_t                   n;
    ngx_http_async_dl_route_t  *rt;

    for (rt = ngx_http_async_dl_routes; rt->path; rt++) {
        if (rt->stmt == NULL) {
            continue;
        }

        n = ngx_http_async_dl_pg_add_stmt(cf, &amcf->pg, rt->stmt);
        if (n == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }

        rt->stmt_index = n;
    }

    return NGX_CONF_OK;
}


/* preconfiguration */

ngx_int_t
ngx_http_async_dl_routes_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var;

    var = ngx_http_add_variable(cf, &ngx_http_async_dl_job_id_name,
                                NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) {
        return NGX_ERROR;
    }

    var->get_handler = ngx_http_async_dl_ctx_variable;
    var->data = offsetof(ngx_http_async_dl_ctx_t, job_id);

    var = ngx_http_add_variable(cf, &ngx_http_async_dl_traceparent_name,
                                NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) {
        return NGX_ERROR;
    }

    var->get_handler = ngx_http_async_dl_ctx_variable;
    var->data = offsetof(ngx_http_async_dl_ctx_t, traceparent);

    return NGX_OK;
}


/* the location handler */

ngx_int_t
ngx_http_async_dl_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_uint_t                     allowed;
    ngx_http_async_dl_ctx_t       *ctx;
    ngx_http_async_dl_route_t     *rt;
    ngx_http_async_dl_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_async_dl_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_async_dl_module);

    rt = ngx_http_async_dl_route(r, alcf, ctx, &allowed);

    if (rt == NULL) {
        (void) ngx_http_discard_request_body(r);

        if (allowed) {
            return ngx_http_async_dl_not_allowed(r, allowed);
        }

        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "NOT_FOUND",
                                            "no such route: \"%V\"", &r->uri);
    }

    ctx->route = rt;

    if (!(rt->flags & NGX_HTTP_ASYNC_DL_R_BODY)) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    if (alcf->owner && !(rt->flags & NGX_HTTP_ASYNC_DL_R_HEALTH)) {
        if (ngx_http_complex_value(r, alcf->owner, &ctx->owner) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ctx->owner.len == 0) {
            (void) ngx_http_discard_request_body(r);

            return ngx_http_async_dl_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                                "UNAUTHORIZED",
                                                "the request has no owner "
                                                "(async_dl_owner is empty)");
        }

        /* a value PostgreSQL would refuse is the client's error, never 500 */

        if (ctx->owner.len > NGX_HTTP_ASYNC_DL_MAX_OWNER
            || !ngx_http_async_dl_is_text(ctx->owner.data, ctx->owner.len))
        {
            (void) ngx_http_discard_request_body(r);

            return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                "INVALID_OWNER",
                                                "the request's owner "
                                                "(async_dl_owner) must be at "
                                                "most %d bytes of UTF-8 "
                                                "without NUL",
                                                NGX_HTTP_ASYNC_DL_MAX_OWNER);
        }
    }

    /* the routes of one job: an unknown or malformed id is the same 404 */

    if (ngx_strstr(rt->path, "{id}") && ctx->job_id.len == 0) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "JOB_NOT_FOUND",
                                            "no such job");
    }

    if (ngx_strstr(rt->path, "{n}") && ctx->index < 0) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "FILE_NOT_FOUND",
                                            "no such file in this job");
    }

    return rt->handler(r);
}


/*
 * The row of the request; NULL when none fits, with *allowed the methods
 * of the rows whose path fits (0: no such route) and ctx->route the first
 * of them.  A well-formed id is
 * kept in ctx->job_id (lowercase); a malformed one leaves it empty.
 */

static ngx_http_async_dl_route_t *
ngx_http_async_dl_route(ngx_http_request_t *r,
    ngx_http_async_dl_loc_conf_t *alcf, ngx_http_async_dl_ctx_t *ctx,
    ngx_uint_t *allowed)
{
    u_char                     *p, *last;
    ngx_int_t                   n;
    ngx_str_t                   id, index;
    const char                 *shape;
    ngx_uint_t                  delivery;
    ngx_http_async_dl_route_t  *rt;

    *allowed = 0;
    ctx->index = -1;

    if (r->uri.len < alcf->prefix.len
        || ngx_strncmp(r->uri.data, alcf->prefix.data, alcf->prefix.len) != 0)
    {
        return NULL;
    }

    p = r->uri.data + alcf->prefix.len;
    last = r->uri.data + r->uri.len;

    delivery = (alcf->delivery == NGX_HTTP_ASYNC_DL_PROXY)
               ? NGX_HTTP_ASYNC_DL_R_PROXY : NGX_HTTP_ASYNC_DL_R_REDIRECT;

    shape = NULL;

    for (rt = ngx_http_async_dl_routes; rt->path; rt++) {

        /* once a path fits, only its other methods may */
        if (shape && ngx_strcmp(rt->path, shape) != 0) {
            continue;
        }

        if ((rt->flags & (NGX_HTTP_ASYNC_DL_R_REDIRECT
                          |NGX_HTTP_ASYNC_DL_R_PROXY))
            && !(rt->flags & delivery))
        {
            continue;
        }

        if (!ngx_http_async_dl_route_match(rt->path, p, last, &id, &index)) {
            continue;
        }

        if (!(r->method & rt->methods)) {
            if (shape == NULL) {
                /* the 405 of the health route is shaped as its answers */
                ctx->route = rt;
            }

            shape = rt->path;
            *allowed |= rt->methods;
            continue;
        }

        break;
    }

    if (rt->path == NULL) {
        return NULL;
    }

    if (index.len) {
        n = ngx_atoi(index.data, index.len);
        if (n != NGX_ERROR && index.len <= 9) {
            ctx->index = n;
        }
    }

    if (id.len && ngx_http_async_dl_is_uuid(id.data, id.len)) {
        ctx->job_id.data = ngx_pnalloc(r->pool, id.len + 1);
        if (ctx->job_id.data == NULL) {
            return NULL;
        }

        ngx_strlow(ctx->job_id.data, id.data, id.len);
        ctx->job_id.data[id.len] = '\0';        /* a statement parameter */
        ctx->job_id.len = id.len;
    }

    return rt;
}


/*
 * "{id}" takes a path segment, empty only when the shape goes on; "{n}"
 * the rest of the path, not empty; any other character itself.
 */

static ngx_uint_t
ngx_http_async_dl_route_match(const char *shape, u_char *p, u_char *last,
    ngx_str_t *id, ngx_str_t *n)
{
    ngx_str_null(id);
    ngx_str_null(n);

    while (*shape) {

        if (ngx_strncmp(shape, "{id}", 4) == 0) {
            id->data = p;

            while (p < last && *p != '/') {
                p++;
            }

            id->len = p - id->data;
            shape += 4;

            if (id->len == 0 && *shape == '\0') {
                return 0;
            }

            continue;
        }

        if (ngx_strncmp(shape, "{n}", 3) == 0) {
            n->data = p;
            n->len = last - p;
            p = last;
            shape += 3;

            if (n->len == 0) {
                return 0;
            }

            continue;
        }

        if (p == last || *p != (u_char) *shape) {
            return 0;
        }

        p++;
        shape++;
    }

    return p == last;
}


/* 405, with Allow: the methods of the path's rows */

static ngx_int_t
ngx_http_async_dl_not_allowed(ngx_http_request_t *r, ngx_uint_t allowed)
{
    u_char      *p, *allow;
    ngx_uint_t   i;

    static struct {
        ngx_uint_t   method;
        const char  *name;
    }  methods[] = {
        { NGX_HTTP_GET, "GET" },
        { NGX_HTTP_HEAD, "HEAD" },
        { NGX_HTTP_DELETE, "DELETE" },
        { NGX_HTTP_POST, "POST" }
    };

    allow = ngx_pnalloc(r->pool, sizeof("GET, HEAD, DELETE, POST"));
    if (allow == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = allow;

    for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (allowed & methods[i].method) {
            p = ngx_sprintf(p, "%s%s", p == allow ? "" : ", ",
                            methods[i].name);
        }
    }

    *p = '\0';

    if (ngx_http_async_dl_add_header(r, "Allow", allow, p - allow)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                        "METHOD_NOT_ALLOWED",
                                        "%V is not allowed here, use %s",
                                        &r->method_name, allow);
}


/* $async_dl_job_id, $async_dl_traceparent: a string of the context */

static ngx_int_t
ngx_http_async_dl_ctx_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                *s;
    ngx_http_async_dl_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((char *) ctx + data);

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = s->data;

    return NGX_OK;
}
