
/*
 * GET {p}{id}/links: the presigned links of what a job has stored, as
 * JSON, for clients that want URLs rather than a redirect (to hand them
 * to a download manager, or to fetch several files at once):
 *
 *   {"jobId":"...","expiresAt":"2025-01-31T12:15:00.000Z",
 *    "files":[{"index":0,"name":"a.pdf","size":123,"url":"https://..."}],
 *    "bundle":{"name":"<id>.zip","size":456,"url":"https://..."}}
 *
 * Every link is signed at the same second, so expiresAt (that second plus
 * async_dl_presign_expires) is when all of them stop working.  They are
 * links on the public endpoint, named as the downloads are
 * (response-content-disposition).  The rows come from async_dl_job_links
 * (sql/008_delivery.sql).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"


typedef struct {
    ngx_int_t                       index;         /* -1: the bundle */
    ngx_str_t                       name;
    ngx_str_t                       size;          /* digits, or "null" */
    ngx_str_t                       url;
} ngx_http_async_dl_link_row_t;


static ngx_int_t ngx_http_async_dl_links_done(ngx_http_request_t *r,
    PGresult *res);
static ngx_int_t ngx_http_async_dl_links_nothing(ngx_http_request_t *r,
    char *status);
static size_t ngx_http_async_dl_link_write(u_char *dst,
    ngx_http_async_dl_link_row_t *row);


ngx_int_t
ngx_http_async_dl_links(ngx_http_request_t *r)
{
    const char  **params;

    params = ngx_http_async_dl_job_params(r, 2);
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_async_dl_run(r, params, ngx_http_async_dl_links_done);
}


static ngx_int_t
ngx_http_async_dl_links_done(ngx_http_request_t *r, PGresult *res)
{
    int                             i, n;
    u_char                         *body, *p;
    char                           *kind, *name;
    size_t                          len;
    time_t                          expires;
    ngx_tm_t                        tm;
    ngx_http_async_dl_ctx_t        *ctx;
    ngx_http_async_dl_link_t        link;
    ngx_http_async_dl_link_row_t   *rows, *bundle;
    ngx_http_async_dl_main_conf_t  *amcf;

    n = PQntuples(res);

    if (n < 1 || PQnfields(res) != 6) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    kind = PQgetvalue(res, 0, 0);

    if (ngx_strcmp(kind, "no_job") == 0) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "JOB_NOT_FOUND", "no such job");
    }

    if (ngx_strcmp(kind, "job") != 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (n == 1) {
        return ngx_http_async_dl_links_nothing(r, PQgetvalue(res, 0, 3));
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    rows = ngx_pcalloc(r->pool, n * sizeof(ngx_http_async_dl_link_row_t));
    if (rows == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    link.method = "GET";
    link.now = ngx_time();
    link.internal = 0;

    bundle = NULL;
    len = sizeof("{\"jobId\":\"\",\"expiresAt\":\"\",\"files\":[],"
                 "\"bundle\":null}") - 1
          + ctx->job_id.len + sizeof("1970-01-01T00:00:00.000Z") - 1;

    for (i = 1; i < n; i++) {

        kind = PQgetvalue(res, i, 0);

        name = PQgetisnull(res, i, 3)
               ? ngx_http_async_dl_url_name(r, PQgetvalue(res, i, 4))
               : PQgetvalue(res, i, 3);

        if (name == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        link.key = PQgetvalue(res, i, 2);
        link.name = name;

        if (ngx_http_async_dl_presign(r, amcf, &link, &rows[i].url)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rows[i].name.data = (u_char *) name;
        rows[i].name.len = ngx_strlen(name);

        if (PQgetisnull(res, i, 5)) {
            ngx_str_set(&rows[i].size, "null");

        } else {
            rows[i].size.data = (u_char *) PQgetvalue(res, i, 5);
            rows[i].size.len = PQgetlength(res, i, 5);
        }

        if (ngx_strcmp(kind, "bundle") == 0) {
            rows[i].index = -1;
            bundle = &rows[i];

        } else {
            rows[i].index = ngx_atoi((u_char *) PQgetvalue(res, i, 1),
                                     PQgetlength(res, i, 1));
            if (rows[i].index == NGX_ERROR) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }

        len += ngx_http_async_dl_link_write(NULL, &rows[i]) + 1;
    }

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    expires = link.now + (time_t) (amcf->presign_expires / 1000);
    ngx_gmtime(expires, &tm);

    p = ngx_sprintf(body, "{\"jobId\":\"%V\",\"expiresAt\":"
                    "\"%4d-%02d-%02dT%02d:%02d:%02d.000Z\",\"files\":[",
                    &ctx->job_id, tm.ngx_tm_year, tm.ngx_tm_mon,
                    tm.ngx_tm_mday, tm.ngx_tm_hour, tm.ngx_tm_min,
                    tm.ngx_tm_sec);

    for (i = 1; i < n; i++) {
        if (&rows[i] == bundle) {
            continue;
        }

        if (p[-1] == '}') {
            *p++ = ',';
        }

        p += ngx_http_async_dl_link_write(p, &rows[i]);
    }

    p = ngx_cpymem(p, "],\"bundle\":", sizeof("],\"bundle\":") - 1);

    if (bundle) {
        p += ngx_http_async_dl_link_write(p, bundle);

    } else {
        p = ngx_cpymem(p, "null", 4);
    }

    *p++ = '}';

    return ngx_http_async_dl_send_json(r, NGX_HTTP_OK, body, p - body);
}


/* only the job's row: 409, to retry while the job runs */

static ngx_int_t
ngx_http_async_dl_links_nothing(ngx_http_request_t *r, char *status)
{
    if (ngx_strcmp(status, "queued") == 0
        || ngx_strcmp(status, "processing") == 0)
    {
        if (ngx_http_async_dl_retry_after(r,
                                          NGX_HTTP_ASYNC_DL_RETRY_NOT_READY)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_async_dl_send_error(r, NGX_HTTP_CONFLICT,
                                            "NOT_READY", "not ready yet: "
                                            "the job is %s and has no "
                                            "stored file", status);
    }

    return ngx_http_async_dl_send_error(r, NGX_HTTP_CONFLICT,
                                        "NOTHING_STORED", "the job is %s "
                                        "and has no stored file", status);
}


/*
 * {"index":n,"name":"...","size":n,"url":"..."}, without "index" for the
 * bundle.  Returns the length; with dst NULL, only computes it.
 */

static size_t
ngx_http_async_dl_link_write(u_char *dst, ngx_http_async_dl_link_row_t *row)
{
    u_char  index[NGX_INT_T_LEN + sizeof("{\"index\":,")];
    size_t   n, len;

    len = (row->index >= 0)
          ? (size_t) (ngx_sprintf(index, "{\"index\":%i,", row->index)
                      - index)
          : (size_t) (ngx_cpymem(index, "{", 1) - index);

    n = 0;

#define ngx_http_async_dl_put(s, l)                                           \
    if (dst) {                                                                \
        ngx_memcpy(dst + n, s, l);                                            \
    }                                                                         \
    n += l

#define ngx_http_async_dl_put_escaped(v)                                      \
    n += ngx_http_async_dl_escape(dst ? dst + n : NULL, (v)->data, (v)->len)

    ngx_http_async_dl_put(index, len);
    ngx_http_async_dl_put("\"name\":\"", 8);
    ngx_http_async_dl_put_escaped(&row->name);
    ngx_http_async_dl_put("\",\"size\":", 9);
    ngx_http_async_dl_put(row->size.data, row->size.len);
    ngx_http_async_dl_put(",\"url\":\"", 8);
    ngx_http_async_dl_put_escaped(&row->url);
    ngx_http_async_dl_put("\"}", 2);

#undef ngx_http_async_dl_put
#undef ngx_http_async_dl_put_escaped

    return n;
}
