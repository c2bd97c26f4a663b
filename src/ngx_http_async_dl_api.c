
/*
 * The routes' handlers (the route table: ngx_http_async_dl_routes.c).
 * Each one checks what it can without the database, then runs its route's
 * statement (ngx_http_async_dl_query.c; the SQL functions of
 * sql/002_api.sql build the answers) and turns its result into the HTTP
 * answer.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_md5.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_sse.h"


static ngx_int_t ngx_http_async_dl_header_find(ngx_http_request_t *r,
    const char *name, const char *token, ngx_str_t *value);
static ngx_uint_t ngx_http_async_dl_has_token(ngx_str_t *value,
    const char *token);
static ngx_uint_t ngx_http_async_dl_has_arg(ngx_http_request_t *r,
    const char *name);

static ngx_int_t ngx_http_async_dl_health_done(ngx_http_request_t *r,
    PGresult *res);
static void ngx_http_async_dl_initiate_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_async_dl_initiate_start(ngx_http_request_t *r);
static ngx_int_t ngx_http_async_dl_body(ngx_http_request_t *r,
    ngx_str_t *body);
static ngx_uint_t ngx_http_async_dl_accepts_stream(ngx_http_request_t *r);
static ngx_int_t ngx_http_async_dl_initiate_done(ngx_http_request_t *r,
    PGresult *res);
static ngx_int_t ngx_http_async_dl_status_filled(ngx_http_request_t *r,
    PGresult *res);
static int64_t ngx_http_async_dl_status_expires(PGresult *res);
static void ngx_http_async_dl_status_digest(u_char *body, size_t len,
    u_char *etag);
static ngx_int_t ngx_http_async_dl_status_etag(ngx_http_request_t *r,
    u_char *etag);
static void ngx_http_async_dl_status_changed(ngx_http_request_t *r);
static ngx_int_t ngx_http_async_dl_status_done(ngx_http_request_t *r,
    PGresult *res);
static ngx_int_t ngx_http_async_dl_jobs_done(ngx_http_request_t *r,
    PGresult *res);
static ngx_int_t ngx_http_async_dl_pause_done(ngx_http_request_t *r,
    PGresult *res);
static ngx_int_t ngx_http_async_dl_changed(ngx_http_request_t *r,
    PGresult *res, const char *ok1, const char *ok2);
static ngx_int_t ngx_http_async_dl_cancel_done(ngx_http_request_t *r,
    PGresult *res);
static ngx_int_t ngx_http_async_dl_delete_done(ngx_http_request_t *r,
    PGresult *res);
static ngx_int_t ngx_http_async_dl_download_done(ngx_http_request_t *r,
    PGresult *res);


/* GET {p}health */

ngx_int_t
ngx_http_async_dl_health(ngx_http_request_t *r)
{
    return ngx_http_async_dl_run(r, NULL, ngx_http_async_dl_health_done);
}


/*
 * The database answers: "ok" with the workers alive, or "degraded" when
 * files wait and no worker is alive to take them (NO_WORKERS): 200, so
 * that a load balancer keeps serving status polls; 503 with ?strict.
 */

static ngx_int_t
ngx_http_async_dl_health_done(ngx_http_request_t *r, PGresult *res)
{
    u_char     *body, *p;
    ngx_int_t   workers;
    ngx_uint_t  status;

    static const size_t  len = sizeof("{\"status\":\"degraded\",\"workers\":,"
                                      "\"error\":{\"code\":\"NO_WORKERS\","
                                      "\"message\":\"files wait to be "
                                      "downloaded and no worker is alive\"}}")
                               + NGX_INT_T_LEN;

    if (PQntuples(res) != 1 || PQnfields(res) != 2) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                            "INTERNAL_ERROR", "the health "
                                            "query answered %d rows",
                                            PQntuples(res));
    }

    workers = ngx_atoi((u_char *) PQgetvalue(res, 0, 0),
                       PQgetlength(res, 0, 0));

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    status = NGX_HTTP_OK;

    if (workers == 0 && PQgetvalue(res, 0, 1)[0] == 't') {
        p = ngx_sprintf(body, "{\"status\":\"degraded\",\"workers\":0,"
                        "\"error\":{\"code\":\"NO_WORKERS\",\"message\":"
                        "\"files wait to be downloaded and no worker is "
                        "alive\"}}");

        if (ngx_http_async_dl_has_arg(r, "strict")) {
            status = NGX_HTTP_SERVICE_UNAVAILABLE;
        }

    } else {
        p = ngx_sprintf(body, "{\"status\":\"ok\",\"workers\":%i}",
                        workers < 0 ? 0 : workers);
    }

    return ngx_http_async_dl_send_json(r, status, body, p - body);
}


/* POST {p}initiate */

ngx_int_t
ngx_http_async_dl_initiate(ngx_http_request_t *r)
{
    u_char     *p, *last;
    ngx_int_t   rc;
    ngx_str_t  *ct;

    ct = r->headers_in.content_type ? &r->headers_in.content_type->value
                                    : NULL;

    if (ct) {
        p = ct->data;
        last = ct->data + ct->len;

        /* "application/json" with parameters or not, any case */

        if (ct->len < 16
            || ngx_strncasecmp(p, (u_char *) "application/json", 16) != 0
            || (p + 16 < last && p[16] != ';' && p[16] != ' '
                && p[16] != '\t'))
        {
            ct = NULL;
        }
    }

    if (ct == NULL) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_async_dl_send_error(r,
                                            NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                            "UNSUPPORTED_MEDIA_TYPE",
                                            "Content-Type must be "
                                            "application/json");
    }

    /* in one buffer when it can be (see ngx_http_async_dl_body) */
    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_async_dl_initiate_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_async_dl_initiate_body(ngx_http_request_t *r)
{
    ngx_http_finalize_request(r, ngx_http_async_dl_initiate_start(r));
}


static ngx_int_t
ngx_http_async_dl_initiate_start(ngx_http_request_t *r)
{
    ngx_str_t                       body, key, hash;
    ngx_uint_t                      i;
    const char                    **params;
    ngx_http_async_dl_ctx_t        *ctx;
    ngx_http_async_dl_input_t       in;
    ngx_http_async_dl_loc_conf_t   *alcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    switch (ngx_http_async_dl_body(r, &body)) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        return ngx_http_async_dl_send_error(r,
                                            NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                            "PAYLOAD_TOO_LARGE",
                                            "body: larger than "
                                            "client_max_body_size");

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (body.len == 0) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                            "INVALID_REQUEST",
                                            "body: is empty");
    }

    ngx_memzero(&in, sizeof(ngx_http_async_dl_input_t));

    switch (ngx_http_async_dl_parse_initiate(r, alcf, body.data, body.len,
                                             &in))
    {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                            "INVALID_REQUEST", "%V",
                                            &in.error);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_null(&key);

    if (ngx_http_async_dl_header_in(r, "Idempotency-Key", &key) == NGX_OK) {

        for (i = 0; i < key.len; i++) {
            if (key.data[i] < 0x21 || key.data[i] > 0x7e) {
                break;
            }
        }

        if (key.len == 0 || key.len > 255 || i != key.len) {
            return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                "INVALID_REQUEST",
                                                "Idempotency-Key: must be 1 "
                                                "to 255 visible ASCII "
                                                "characters");
        }
    }

    /* the trace context, stored with the job and answered */
    if (ngx_http_async_dl_traceparent(r, &ctx->traceparent) != NGX_OK
        || ngx_http_async_dl_add_header(r, "traceparent",
                                        ctx->traceparent.data,
                                        ctx->traceparent.len)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params = ngx_pcalloc(r->pool, 11 * sizeof(char *));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    hash.data = in.hash;
    hash.len = 64;

    params[0] = ngx_http_async_dl_cstr(r->pool, &ctx->owner);
    params[1] = key.len ? ngx_http_async_dl_cstr(r->pool, &key) : NULL;
    params[2] = ngx_http_async_dl_cstr(r->pool, &hash);  /* in is local */
    params[3] = ngx_http_async_dl_num(r->pool, (int64_t) in.timeout);
    params[4] = (char *) in.callback_url.data;
    params[5] = (char *) in.files.data;
    params[6] = ngx_http_async_dl_num(r->pool, alcf->max_pending);
    params[7] = ngx_http_async_dl_num(r->pool, alcf->max_active);
    params[8] = (char *) alcf->prefix.data;
    params[9] = ngx_http_async_dl_num(r->pool, (int64_t) in.priority);
    params[10] = ngx_http_async_dl_cstr(r->pool, &ctx->traceparent);

    if (params[0] == NULL || (key.len && params[1] == NULL)
        || params[2] == NULL || params[3] == NULL || params[6] == NULL
        || params[7] == NULL || params[9] == NULL || params[10] == NULL)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_async_dl_run(r, params,
                                 ngx_http_async_dl_initiate_done);
}


/*
 * The initiate body as one piece of memory.  nginx hands it over as a
 * chain: one buffer for a small body sent with a length; one buffer per
 * chunk and an empty last one for a chunked body; one buffer in a temporary
 * file for a body larger than client_body_buffer_size (see merge_loc_conf)
 * or with client_body_in_file_only.  That file, which nginx has just
 * written, is read back with ngx_read_file() as nginx's own modules do.
 * NGX_DECLINED: larger than client_max_body_size (nginx checks it while
 * reading: only a configuration that changed since would get here).
 */

static ngx_int_t
ngx_http_async_dl_body(ngx_http_request_t *r, ngx_str_t *body)
{
    off_t                      size, n;
    u_char                    *p;
    ssize_t                    got;
    ngx_buf_t                 *b;
    ngx_chain_t               *cl;
    ngx_http_core_loc_conf_t  *clcf;

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    size = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        size += ngx_buf_size(cl->buf);

        if (clcf->client_max_body_size
            && size > clcf->client_max_body_size)
        {
            return NGX_DECLINED;
        }
    }

    if (size == 0) {
        return NGX_OK;
    }

    b = r->request_body->bufs->buf;

    if (ngx_buf_in_memory(b) && b->last - b->pos == size) {
        body->data = b->pos;
        body->len = (size_t) size;
        return NGX_OK;
    }

    body->data = ngx_pnalloc(r->pool, (size_t) size);
    if (body->data == NULL) {
        return NGX_ERROR;
    }

    p = body->data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            n = b->last - b->pos;

            if (n) {
                p = ngx_cpymem(p, b->pos, n);
            }

            continue;
        }

        if (!b->in_file || b->file_last == b->file_pos) {
            continue;                   /* the last, empty, buffer */
        }

        n = b->file_last - b->file_pos;

        got = ngx_read_file(b->file, p, (size_t) n, b->file_pos);

        if (got != (ssize_t) n) {
            if (got != NGX_ERROR) {     /* ngx_read_file() logged errors */
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "async_dl: read %z of %O bytes of the request "
                              "body from \"%V\"", got, n, &b->file->name);
            }

            return NGX_ERROR;
        }

        p += n;
    }

    body->len = p - body->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_async_dl_initiate_done(ngx_http_request_t *r, PGresult *res)
{
    u_char                        *loc;
    char                          *outcome, *id;
    size_t                         len;
    ngx_uint_t                     status;
    ngx_http_async_dl_ctx_t       *ctx;
    ngx_http_async_dl_loc_conf_t  *alcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    if (PQntuples(res) != 1 || PQnfields(res) != 3) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    outcome = PQgetvalue(res, 0, 0);

    if (ngx_strcmp(outcome, "queue_full") == 0) {
        if (ngx_http_async_dl_retry_after(r,
                                          NGX_HTTP_ASYNC_DL_RETRY_QUEUE_FULL)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_async_dl_send_error(r,
                                            NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "QUEUE_FULL",
                                            "%i jobs are already queued, "
                                            "retry later",
                                            alcf->max_pending);
    }

    if (ngx_strcmp(outcome, "owner_limit") == 0) {
        if (ngx_http_async_dl_retry_after(r, NGX_HTTP_ASYNC_DL_RETRY_OWNER)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_async_dl_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                                            "TOO_MANY_JOBS",
                                            "you have %i unfinished jobs, "
                                            "the most allowed",
                                            alcf->max_active);
    }

    if (ngx_strcmp(outcome, "conflict") == 0) {
        return ngx_http_async_dl_send_error(r, 422, "IDEMPOTENCY_CONFLICT",
                                            "Idempotency-Key: already used "
                                            "with another request");
    }

    id = PQgetvalue(res, 0, 1);
    len = ngx_strlen(id);

    ctx->job_id.data = (u_char *) id;
    ctx->job_id.len = len;

    loc = ngx_pnalloc(r->pool, alcf->prefix.len + sizeof("status/") - 1
                               + len);
    if (loc == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_async_dl_add_header(r, "Location", loc,
                                     ngx_sprintf(loc, "%Vstatus/%s",
                                                 &alcf->prefix, id)
                                     - loc)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_strcmp(outcome, "replayed") == 0) {
        status = NGX_HTTP_OK;

        if (ngx_http_async_dl_add_header(r, "Idempotent-Replayed",
                                         (u_char *) "true", 4)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

    } else {
        status = NGX_HTTP_ACCEPTED;
    }

    if (ngx_http_async_dl_accepts_stream(r)) {

        /*
         * Answered as the job's event stream.  The job exists now: if the
         * stream cannot start (the database, the pool), the answer is the
         * JSON one, never a refusal that a client would retry with a new
         * job.  The result lives as long as the request (its query's pool
         * cleanup clears it).
         */

        ctx->stream_status = status;
        ctx->created.data = (u_char *) PQgetvalue(res, 0, 2);
        ctx->created.len = PQgetlength(res, 0, 2);

        return ngx_http_async_dl_stream(r);
    }

    return ngx_http_async_dl_send_json(r, status,
                                       (u_char *) PQgetvalue(res, 0, 2),
                                       PQgetlength(res, 0, 2));
}


/* Accept: text/event-stream, a client that wants the job's stream */

static ngx_uint_t
ngx_http_async_dl_accepts_stream(ngx_http_request_t *r)
{
    ngx_str_t  accept;

    return ngx_http_async_dl_header_in(r, "Accept", &accept) == NGX_OK
           && ngx_strlcasestrn(accept.data, accept.data + accept.len,
                               (u_char *) "text/event-stream",
                               sizeof("text/event-stream") - 1 - 1)
              != NULL;
}


/*
 * GET {p}status/{id}: from the status cache when it has the document
 * (ngx_http_async_dl_status_cache.c), else from PostgreSQL.  The ETag is a
 * digest of the document itself, whichever way it came: every change a
 * client can see changes it, and nginx's not_modified filter answers
 * If-None-Match.
 */

ngx_int_t
ngx_http_async_dl_status(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    const char                     **params;
    ngx_http_async_dl_ctx_t         *ctx;
    ngx_http_async_dl_sc_doc_t       doc;
    ngx_http_async_dl_loc_conf_t    *alcf;
    ngx_http_async_dl_main_conf_t   *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);

    if (amcf->status_cache == NULL) {
        return ngx_http_async_dl_run_job(r, ngx_http_async_dl_status_done);
    }

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    rc = ngx_http_async_dl_sc_lookup(amcf->status_cache, r->pool,
                                     &ctx->job_id, &alcf->prefix, &ctx->owner,
                                     &doc, &ctx->fill);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_OK) {
        if (ngx_http_async_dl_status_etag(r, doc.etag.data) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_async_dl_send_compact_json(r, NGX_HTTP_OK,
                                                   doc.body.data,
                                                   doc.body.len);
    }

    /* whatever the owner: another owner's job gets the 404 of a missing one */

    params = ngx_palloc(r->pool, 2 * sizeof(char *));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[0] = (char *) ctx->job_id.data;
    params[1] = (char *) alcf->prefix.data;

    return ngx_http_async_dl_run_stmt(r, ngx_http_async_dl_sc_stmt(), params,
                                      ngx_http_async_dl_status_filled);
}


static ngx_int_t
ngx_http_async_dl_status_done(ngx_http_request_t *r, PGresult *res)
{
    u_char  etag[34];

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "JOB_NOT_FOUND", "no such job");
    }

    ngx_http_async_dl_status_digest((u_char *) PQgetvalue(res, 0, 0),
                                    PQgetlength(res, 0, 0), etag);

    if (ngx_http_async_dl_status_etag(r, etag) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_async_dl_send_json(r, NGX_HTTP_OK,
                                       (u_char *) PQgetvalue(res, 0, 0),
                                       PQgetlength(res, 0, 0));
}


/* a cache miss's answer: (owner, seq, expires_ms, document), or no row */

static ngx_int_t
ngx_http_async_dl_status_filled(ngx_http_request_t *r, PGresult *res)
{
    off_t                           seq;
    u_char                          etag[34];
    ngx_str_t                       owner, body;
    ngx_http_async_dl_ctx_t        *ctx;
    ngx_http_async_dl_loc_conf_t   *alcf;
    ngx_http_async_dl_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    if (PQntuples(res) != 1 || PQnfields(res) != 4
        || PQgetisnull(res, 0, 0) || PQgetisnull(res, 0, 3))
    {
        ngx_http_async_dl_sc_fill(amcf->status_cache, &ctx->fill,
                                  &ctx->job_id, &alcf->prefix, NULL, 0, -1,
                                  NULL, NULL);

        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "JOB_NOT_FOUND", "no such job");
    }

    owner.data = (u_char *) PQgetvalue(res, 0, 0);
    owner.len = PQgetlength(res, 0, 0);
    body.data = (u_char *) PQgetvalue(res, 0, 3);
    body.len = PQgetlength(res, 0, 3);

    ngx_http_async_dl_status_digest(body.data, body.len, etag);

    seq = ngx_atoof((u_char *) PQgetvalue(res, 0, 1), PQgetlength(res, 0, 1));

    if (seq > 0) {
        ngx_http_async_dl_sc_fill(amcf->status_cache, &ctx->fill,
                                  &ctx->job_id, &alcf->prefix, &owner,
                                  (uint64_t) seq,
                                  ngx_http_async_dl_status_expires(res),
                                  &body, etag);
    }

    if (owner.len != ctx->owner.len
        || (owner.len && ngx_memcmp(owner.data, ctx->owner.data, owner.len)
                         != 0))
    {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "JOB_NOT_FOUND", "no such job");
    }

    if (ngx_http_async_dl_status_etag(r, etag) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_async_dl_send_json(r, NGX_HTTP_OK, body.data, body.len);
}


/* o_expires_ms: milliseconds since the epoch, -1 for none */

static int64_t
ngx_http_async_dl_status_expires(PGresult *res)
{
    char  *v;
    int    len;

    v = PQgetvalue(res, 0, 2);
    len = PQgetlength(res, 0, 2);

    if (PQgetisnull(res, 0, 2) || len == 0 || v[0] == '-') {
        return -1;
    }

    return ngx_atoof((u_char *) v, len);
}


/* "\"<md5 hex of the document>\"" */

static void
ngx_http_async_dl_status_digest(u_char *body, size_t len, u_char *etag)
{
    u_char     hash[16];
    ngx_md5_t  md5;

    ngx_md5_init(&md5);
    ngx_md5_update(&md5, body, len);
    ngx_md5_final(hash, &md5);

    etag[0] = '"';
    ngx_hex_dump(etag + 1, hash, 16);
    etag[33] = '"';
}


/* the ETag header, and revalidation (no-cache) rather than no-store */

static ngx_int_t
ngx_http_async_dl_status_etag(ngx_http_request_t *r, u_char *etag)
{
    u_char                   *p;
    ngx_table_elt_t          *h;
    ngx_http_async_dl_ctx_t  *ctx;

    p = ngx_pnalloc(r->pool, 34);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, etag, 34);

    h = ngx_http_async_dl_push_header(r, "ETag", p, 34);
    if (h == NULL) {
        return NGX_ERROR;
    }

    r->headers_out.etag = h;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    ctx->revalidate = 1;

    return NGX_OK;
}


/* GET {p}jobs?limit=&offset=&status=&cursor= */

ngx_int_t
ngx_http_async_dl_jobs(ngx_http_request_t *r)
{
    u_char                         *dot;
    ngx_int_t                       limit, offset;
    ngx_str_t                       v, status, cursor;
    const char                    **params;
    ngx_http_async_dl_ctx_t        *ctx;
    ngx_http_async_dl_loc_conf_t   *alcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    limit = 20;
    offset = 0;
    ngx_str_null(&status);
    ngx_str_null(&cursor);

    if (ngx_http_arg(r, (u_char *) "limit", 5, &v) == NGX_OK) {
        limit = ngx_atoi(v.data, v.len);

        if (limit < 1 || limit > 100) {
            return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                "INVALID_REQUEST",
                                                "limit: must be an integer "
                                                "from 1 to 100");
        }
    }

    if (ngx_http_arg(r, (u_char *) "offset", 6, &v) == NGX_OK) {
        offset = ngx_atoi(v.data, v.len);

        if (offset < 0 || offset > 1000000000 || v.len > 10) {
            return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                "INVALID_REQUEST",
                                                "offset: must be a "
                                                "non-negative integer");
        }
    }

    if (ngx_http_arg(r, (u_char *) "status", 6, &status) == NGX_OK) {

#define ngx_http_async_dl_eq(s)                                               \
        (status.len == sizeof(s) - 1                                          \
         && ngx_strncmp(status.data, s, sizeof(s) - 1) == 0)

        if (!(ngx_http_async_dl_eq("queued")
              || ngx_http_async_dl_eq("processing")
              || ngx_http_async_dl_eq("paused")
              || ngx_http_async_dl_eq("completed")
              || ngx_http_async_dl_eq("failed")
              || ngx_http_async_dl_eq("canceled")))
        {
            return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                "INVALID_REQUEST",
                                                "status: must be queued, "
                                                "processing, paused, "
                                                "completed, failed or "
                                                "canceled");
        }

#undef ngx_http_async_dl_eq
    }

    if (ngx_http_arg(r, (u_char *) "cursor", 6, &cursor) == NGX_OK) {

        /* "<epoch microseconds>.<uuid>", from nextCursor */

        dot = ngx_strlchr(cursor.data, cursor.data + cursor.len, '.');

        if (dot == NULL || dot == cursor.data || dot - cursor.data > 18
            || ngx_atoi(cursor.data, dot - cursor.data) == NGX_ERROR
            || !ngx_http_async_dl_is_uuid(dot + 1,
                                          cursor.data + cursor.len - dot - 1))
        {
            return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                "INVALID_REQUEST",
                                                "cursor: must be a nextCursor "
                                                "of an earlier page");
        }

        if (offset) {
            return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                "INVALID_REQUEST",
                                                "offset: cannot be combined "
                                                "with cursor");
        }
    }

    params = ngx_pcalloc(r->pool, 6 * sizeof(char *));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[0] = ngx_http_async_dl_cstr(r->pool, &ctx->owner);
    params[1] = (char *) alcf->prefix.data;
    params[2] = status.len ? ngx_http_async_dl_cstr(r->pool, &status) : NULL;
    params[3] = ngx_http_async_dl_num(r->pool, limit);
    params[4] = ngx_http_async_dl_num(r->pool, offset);
    params[5] = cursor.len ? ngx_http_async_dl_cstr(r->pool, &cursor) : NULL;

    if (params[0] == NULL || (status.len && params[2] == NULL)
        || params[3] == NULL || params[4] == NULL
        || (cursor.len && params[5] == NULL))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_async_dl_run(r, params,
                                 ngx_http_async_dl_jobs_done);
}


static ngx_int_t
ngx_http_async_dl_jobs_done(ngx_http_request_t *r, PGresult *res)
{
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_async_dl_send_json(r, NGX_HTTP_OK,
                                       (u_char *) PQgetvalue(res, 0, 0),
                                       PQgetlength(res, 0, 0));
}


/*
 * This instance changed the job (committed): its cached documents go now,
 * before the answer, so that the client's next poll here sees the change
 * (the notification would do it a moment later).
 */

static void
ngx_http_async_dl_status_changed(ngx_http_request_t *r)
{
    ngx_http_async_dl_ctx_t        *ctx;
    ngx_http_async_dl_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);

    if (amcf->status_cache) {
        ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
        ngx_http_async_dl_sc_invalidate(amcf->status_cache, ctx->job_id.data,
                                        0);
    }
}


/* POST {p}{id}/cancel */

ngx_int_t
ngx_http_async_dl_cancel(ngx_http_request_t *r)
{
    return ngx_http_async_dl_run_job(r, ngx_http_async_dl_cancel_done);
}


static ngx_int_t
ngx_http_async_dl_cancel_done(ngx_http_request_t *r, PGresult *res)
{
    return ngx_http_async_dl_changed(r, res, "canceled", "canceled");
}


/* POST {p}{id}/pause and POST {p}{id}/resume (the route's statement) */

ngx_int_t
ngx_http_async_dl_pause(ngx_http_request_t *r)
{
    return ngx_http_async_dl_run_job(r, ngx_http_async_dl_pause_done);
}


static ngx_int_t
ngx_http_async_dl_pause_done(ngx_http_request_t *r, PGresult *res)
{
    return ngx_http_async_dl_changed(r, res, "paused", "resumed");
}


/*
 * The answer of a route that changes a job (cancel, pause, resume): the
 * row (outcome, status document); an outcome other than ok1 or ok2 is the
 * status of a job that ended.
 */

static ngx_int_t
ngx_http_async_dl_changed(ngx_http_request_t *r, PGresult *res,
    const char *ok1, const char *ok2)
{
    char  *outcome;

    if (PQntuples(res) == 0) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "JOB_NOT_FOUND", "no such job");
    }

    outcome = PQgetvalue(res, 0, 0);

    if (ngx_strcmp(outcome, ok1) != 0 && ngx_strcmp(outcome, ok2) != 0) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_CONFLICT,
                                            "JOB_FINISHED",
                                            "the job already ended: %s",
                                            outcome);
    }

    ngx_http_async_dl_status_changed(r);

    return ngx_http_async_dl_send_json(r, NGX_HTTP_OK,
                                       (u_char *) PQgetvalue(res, 0, 1),
                                       PQgetlength(res, 0, 1));
}


/* DELETE {p}{id} */

ngx_int_t
ngx_http_async_dl_delete(ngx_http_request_t *r)
{
    const char  **params;

    params = ngx_http_async_dl_job_params(r, 2);
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_async_dl_run(r, params,
                                 ngx_http_async_dl_delete_done);
}


static ngx_int_t
ngx_http_async_dl_delete_done(ngx_http_request_t *r, PGresult *res)
{
    ngx_http_async_dl_ctx_t  *ctx;

    if (PQntuples(res) != 1 || PQgetvalue(res, 0, 0)[0] != 't') {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "JOB_NOT_FOUND", "no such job");
    }

    ngx_http_async_dl_status_changed(r);

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    ctx->replied = 1;

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/*
 * GET {p}{id} and {p}{id}/files/{index}: 302 to a presigned link, or with
 * async_dl_delivery proxy the object itself, through nginx (delivery.c),
 * which also needs the object's SHA-256 (its ETag).
 */

ngx_int_t
ngx_http_async_dl_download(ngx_http_request_t *r)
{
    const char               **params;
    ngx_http_async_dl_ctx_t   *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    params = ngx_http_async_dl_job_params(r, 3);
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* {id}/files/{n}: that file; {id}: NULL, the job's bundle */

    if (ctx->index >= 0) {
        params[2] = ngx_http_async_dl_num(r->pool, ctx->index);
        if (params[2] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_async_dl_run(r, params, ngx_http_async_dl_download_done);
}


static ngx_int_t
ngx_http_async_dl_download_done(ngx_http_request_t *r, PGresult *res)
{
    char                           *outcome, *msg, *name;
    ngx_int_t                       rc;
    ngx_str_t                       url;
    ngx_table_elt_t                *h;
    ngx_http_async_dl_link_t        link;
    ngx_http_async_dl_loc_conf_t   *alcf;
    ngx_http_async_dl_main_conf_t  *amcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    if (PQntuples(res) != 1
        || PQnfields(res)
           != (alcf->delivery == NGX_HTTP_ASYNC_DL_PROXY ? 6 : 5))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    outcome = PQgetvalue(res, 0, 0);
    msg = PQgetvalue(res, 0, 3);

    if (ngx_strcmp(outcome, "no_job") == 0) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "JOB_NOT_FOUND", "no such job");
    }

    if (ngx_strcmp(outcome, "no_file") == 0) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "FILE_NOT_FOUND",
                                            "no such file: %s", msg);
    }

    if (ngx_strcmp(outcome, "expired") == 0) {
        return ngx_http_async_dl_send_error(r, 410, "JOB_EXPIRED",
                                            "%s", msg);
    }

    if (ngx_strcmp(outcome, "not_ready") == 0
        || ngx_strcmp(outcome, "no_bundle") == 0)
    {
        if (ngx_http_async_dl_retry_after(r,
                                          NGX_HTTP_ASYNC_DL_RETRY_NOT_READY)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_async_dl_send_error(r, NGX_HTTP_CONFLICT,
                                            "NOT_READY", "not ready yet: %s",
                                            msg);
    }

    if (ngx_strcmp(outcome, "ready") != 0) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_CONFLICT,
                                            outcome[0] == 'c'
                                            ? "FILE_CANCELED" : "FILE_FAILED",
                                            "%s", msg);
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);

    name = PQgetisnull(res, 0, 2)
           ? ngx_http_async_dl_url_name(r, PQgetvalue(res, 0, 4))
           : PQgetvalue(res, 0, 2);

    if (name == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (alcf->delivery == NGX_HTTP_ASYNC_DL_PROXY) {
        return ngx_http_async_dl_deliver(r, PQgetvalue(res, 0, 1), name,
                                         PQgetisnull(res, 0, 5)
                                         ? NULL : PQgetvalue(res, 0, 5));
    }

    /* signed for the method the client will follow the 302 with: SigV4
     * signs it, so a HEAD followed with HEAD needs a link for HEAD */
    link.key = PQgetvalue(res, 0, 1);
    link.name = name;
    link.method = r->method == NGX_HTTP_HEAD ? "HEAD" : "GET";
    link.now = ngx_time();
    link.internal = 0;

    if (ngx_http_async_dl_presign(r, amcf, &link, &url) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h = ngx_http_async_dl_push_header(r, "Location", url.data, url.len);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_async_dl_add_header(r, "Cache-Control",
                                     (u_char *) "no-store", 8)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_clear_location(r);
    r->headers_out.location = h;
    r->headers_out.status = NGX_HTTP_MOVED_TEMPORARILY;
    r->headers_out.content_length_n = 0;

    ((ngx_http_async_dl_ctx_t *)
        ngx_http_get_module_ctx(r, ngx_http_async_dl_module))->replied = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    return ngx_http_send_special(r, NGX_HTTP_LAST);
}


/* a file without a name is named after its URL's last path segment */

char *
ngx_http_async_dl_url_name(ngx_http_request_t *r, char *url)
{
    u_char  *p, *last, *start, *dst, *name;

    p = (u_char *) url;
    last = p + ngx_strlen(url);

    for (start = p; p < last && *p != '?' && *p != '#'; p++) {
        if (*p == '/') {
            start = p + 1;
        }
    }

    name = ngx_pnalloc(r->pool, (p - start) + sizeof("download"));
    if (name == NULL) {
        return NULL;
    }

    dst = name;
    ngx_unescape_uri(&dst, &start, p - start, 0);

    if (dst == name || ngx_strlchr(name, dst, '\0') != NULL) {
        dst = ngx_cpymem(name, "download", sizeof("download") - 1);
    }

    *dst = '\0';

    return (char *) name;
}


ngx_int_t
ngx_http_async_dl_header_in(ngx_http_request_t *r, const char *name,
    ngx_str_t *value)
{
    return ngx_http_async_dl_header_find(r, name, NULL, value);
}


ngx_uint_t
ngx_http_async_dl_header_has(ngx_http_request_t *r, const char *name,
    const char *token)
{
    ngx_str_t  value;

    return ngx_http_async_dl_header_find(r, name, token, &value) == NGX_OK;
}


/* the first header of that name (whose value lists token, when given) */

static ngx_int_t
ngx_http_async_dl_header_find(ngx_http_request_t *r, const char *name,
    const char *token, ngx_str_t *value)
{
    size_t            len;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    len = ngx_strlen(name);
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NGX_DECLINED;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0
            && (token == NULL
                || ngx_http_async_dl_has_token(&h[i].value, token)))
        {
            *value = h[i].value;
            return NGX_OK;
        }
    }
}


/* whether the query string has the argument, with a value or not */

static ngx_uint_t
ngx_http_async_dl_has_arg(ngx_http_request_t *r, const char *name)
{
    u_char  *p, *last, *start;
    size_t   len;

    len = ngx_strlen(name);
    p = r->args.data;
    last = p + r->args.len;

    while (p < last) {
        start = p;

        while (p < last && *p != '&') {
            p++;
        }

        if ((size_t) (p - start) >= len
            && ngx_strncmp(start, name, len) == 0
            && ((size_t) (p - start) == len || start[len] == '='))
        {
            return 1;
        }

        p++;
    }

    return 0;
}


/* whether a comma-separated value lists the token, in any case */

static ngx_uint_t
ngx_http_async_dl_has_token(ngx_str_t *value, const char *token)
{
    u_char  *p, *last, *start;
    size_t   len;

    len = ngx_strlen(token);
    p = value->data;
    last = p + value->len;

    while (p < last) {
        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        start = p;

        while (p < last && *p != ',' && *p != ' ' && *p != '\t') {
            p++;
        }

        if ((size_t) (p - start) == len
            && ngx_strncasecmp(start, (u_char *) token, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}
