
/*
 * A request's statement: the prepared statement of its route (the route
 * table, ngx_http_async_dl_routes.c), run on the worker process's pool,
 * and its result handed to the route's done handler; a failure of the
 * database answered as the API answers it.
 *
 * While a statement runs the request holds a reference (r->main->count++)
 * and watches its client (ngx_http_test_reading): a client that goes away
 * terminates the request, whose cleanup detaches the statement from the
 * PostgreSQL pool; the connection drains the result and stays usable.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"


static void ngx_http_async_dl_result(ngx_http_async_dl_pg_query_t *q);
static void ngx_http_async_dl_cleanup(void *data);
static ngx_int_t ngx_http_async_dl_db_error(ngx_http_request_t *r,
    ngx_http_async_dl_pg_status_e status, PGresult *res);


/* a statement on the request's job: (job id, owner, prefix) */

ngx_int_t
ngx_http_async_dl_run_job(ngx_http_request_t *r,
    ngx_http_async_dl_done_pt done)
{
    const char                    **params;
    ngx_http_async_dl_loc_conf_t   *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    params = ngx_http_async_dl_job_params(r, 3);
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[2] = (char *) alcf->prefix.data;

    return ngx_http_async_dl_run(r, params, done);
}


/* n statement parameters, the first two the request's job id and owner */

const char **
ngx_http_async_dl_job_params(ngx_http_request_t *r, ngx_uint_t n)
{
    const char               **params;
    ngx_http_async_dl_ctx_t   *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    params = ngx_pcalloc(r->pool, n * sizeof(char *));
    if (params == NULL) {
        return NULL;
    }

    params[0] = (char *) ctx->job_id.data;
    params[1] = ngx_http_async_dl_cstr(r->pool, &ctx->owner);

    return params[1] ? params : NULL;
}


ngx_int_t
ngx_http_async_dl_run(ngx_http_request_t *r, const char **params,
    ngx_http_async_dl_done_pt done)
{
    ngx_http_async_dl_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    return ngx_http_async_dl_run_stmt(r, ctx->route->stmt_index, params, done);
}


/* another statement than the route's (its index in the pool's list) */

ngx_int_t
ngx_http_async_dl_run_stmt(ngx_http_request_t *r, ngx_uint_t stmt,
    const char **params, ngx_http_async_dl_done_pt done)
{
    ngx_http_cleanup_t              *cln;
    ngx_http_async_dl_ctx_t         *ctx;
    ngx_http_async_dl_pg_query_t    *q;
    ngx_http_async_dl_pg_status_e    status;
    ngx_http_async_dl_main_conf_t   *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    q = ngx_http_async_dl_pg_query(r->pool, r->connection->log);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->stmt = stmt;
    q->params = params;
    q->handler = ngx_http_async_dl_result;
    q->data = r;

    status = ngx_http_async_dl_pg_run(amcf->pool, q);

    if (status != NGX_HTTP_ASYNC_DL_PG_OK) {
        return ngx_http_async_dl_db_error(r, status, NULL);
    }

    cln->handler = ngx_http_async_dl_cleanup;
    cln->data = q;

    ctx->done = done;

    return ngx_http_async_dl_wait(r);
}


/*
 * The request waits for an answer from outside (its statement, the job
 * hub): it holds a reference, and a client that goes away terminates it,
 * which runs its cleanups.
 */

ngx_int_t
ngx_http_async_dl_wait(ngx_http_request_t *r)
{
    r->main->count++;
    r->read_event_handler = ngx_http_test_reading;

    return NGX_DONE;
}


static void
ngx_http_async_dl_result(ngx_http_async_dl_pg_query_t *q)
{
    ngx_int_t                 rc;
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_async_dl_ctx_t  *ctx;

    r = q->data;
    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    r->read_event_handler = ngx_http_block_reading;

    if (q->status == NGX_HTTP_ASYNC_DL_PG_OK) {
        rc = ctx->done(r, q->result);

    } else {
        rc = ngx_http_async_dl_db_error(r, q->status, q->result);
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_async_dl_cleanup(void *data)
{
    ngx_http_async_dl_pg_query_t  *q = data;

    ngx_http_async_dl_pg_detach(q);
}


static ngx_int_t
ngx_http_async_dl_db_error(ngx_http_request_t *r,
    ngx_http_async_dl_pg_status_e status, PGresult *res)
{
    char                           *state, *msg;
    ngx_http_async_dl_ctx_t        *ctx;
    ngx_http_async_dl_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);

    if (status == NGX_HTTP_ASYNC_DL_PG_SQL_ERROR && res) {
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

        state = state ? state : "?????";
        msg = msg ? msg : "unknown error";

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "async_dl: postgres error %s: %s", state, msg);

        /*
         * Text the server refused (22021 invalid UTF-8, 22P05 not in the
         * database's encoding) can only come from the client: every field
         * is checked before, this keeps one that was missed a 400.
         */

        if (ngx_strcmp(state, "22021") == 0
            || ngx_strcmp(state, "22P05") == 0)
        {
            return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                "INVALID_REQUEST",
                                                "a value of the request is "
                                                "not valid UTF-8 text");
        }

        /*
         * Transient states of the server (shutting down, statement timeout,
         * connection or resource trouble, schema not installed yet) are
         * "unavailable"; anything else is a bug: 500.
         */

        if (!(ngx_strncmp(state, "57", 2) == 0
              || ngx_strncmp(state, "08", 2) == 0
              || ngx_strncmp(state, "53", 2) == 0
              || ngx_strncmp(state, "40", 2) == 0
              || ngx_strcmp(state, "42883") == 0
              || ngx_strcmp(state, "42P01") == 0
              || ngx_strcmp(state, "3D000") == 0))
        {
            return ngx_http_async_dl_send_error(r,
                                           NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           "INTERNAL_ERROR",
                                           "the database refused the "
                                           "request");
        }
    }

    switch (status) {

    case NGX_HTTP_ASYNC_DL_PG_TIMEOUT:
        return ngx_http_async_dl_db_unavailable(r, "the database did not "
                                                "answer within %M ms",
                                                amcf->pg_timeout);

    case NGX_HTTP_ASYNC_DL_PG_BUSY:
        return ngx_http_async_dl_db_unavailable(r, "all database "
                                                "connections are busy");

    case NGX_HTTP_ASYNC_DL_PG_SQL_ERROR:
        return ngx_http_async_dl_db_unavailable(r, "the database cannot "
                                                "serve the request now: %s",
                                     ngx_http_async_dl_pg_message(res));

    default:
        break;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    if (amcf->pool && (ctx->route->flags & NGX_HTTP_ASYNC_DL_R_HEALTH)) {
        /* the health check says why; other routes do not show it */
        return ngx_http_async_dl_db_unavailable(r, "the database is "
                                                "unavailable: %V",
                                 ngx_http_async_dl_pg_last_error(amcf->pool));
    }

    return ngx_http_async_dl_db_unavailable(r, "the database is "
                                            "unavailable");
}


char *
ngx_http_async_dl_cstr(ngx_pool_t *pool, ngx_str_t *s)
{
    char  *p;

    p = ngx_pnalloc(pool, s->len + 1);
    if (p == NULL) {
        return NULL;
    }

    /* an empty value (no owner configured) may have a NULL data */
    if (s->len) {
        ngx_memcpy(p, s->data, s->len);
    }

    p[s->len] = '\0';

    return p;
}


const char *
ngx_http_async_dl_num(ngx_pool_t *pool, int64_t n)
{
    u_char  *p;

    p = ngx_pnalloc(pool, NGX_INT64_LEN + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_sprintf(p, "%L", n) = '\0';

    return (const char *) p;
}
