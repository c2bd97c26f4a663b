
/*
 * async_dl_delivery proxy @name: the download routes stream the stored
 * object through nginx, for clients that cannot reach the storage.
 *
 * The module does not talk to the storage itself: once the database says
 * the object is there, it presigns a link on the internal endpoint
 * (async_dl_s3_endpoint) for the request's method, puts it in
 * $async_dl_storage_url and redirects the request to the named location,
 * whose "proxy_pass $async_dl_storage_url;" fetches it with nginx's
 * upstream machinery: non-blocking, buffered in nginx's own bounded
 * buffers, the URI sent verbatim (a proxy_pass with variables), the Host
 * the URL's, which is the host the link was signed for.
 *
 * The named location clears the modules' contexts; what the response
 * needs later lives in the request's variables, which survive it:
 *
 *   $async_dl_storage_url    the presigned link
 *   $async_dl_storage_range  the Range to send to the storage, empty when
 *                            the whole object must come (If-Range did not
 *                            match: answered here, as the storage may not)
 *   $async_dl_etag           the object's ETag, its SHA-256 in quotes
 *
 * and the header filter (reply.c) knows a delivered response by the first
 * one: it strips the storage's x-amz-* headers, puts our ETag in place of
 * the storage's, lets nginx's not_modified filter answer If-None-Match and
 * If-Match against it, and turns the storage's failures into JSON errors.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"


static ngx_int_t ngx_http_async_dl_delivery_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_async_dl_set_variable(ngx_http_request_t *r,
    ngx_int_t index, ngx_str_t *value);
static void ngx_http_async_dl_strip_storage_headers(ngx_http_request_t *r);
static ngx_int_t ngx_http_async_dl_set_etag(ngx_http_request_t *r,
    ngx_str_t *etag);


static ngx_str_t  ngx_http_async_dl_storage_url_name =
    ngx_string("async_dl_storage_url");
static ngx_str_t  ngx_http_async_dl_storage_range_name =
    ngx_string("async_dl_storage_range");
static ngx_str_t  ngx_http_async_dl_etag_name =
    ngx_string("async_dl_etag");


/* configuration */


/* async_dl_delivery redirect | proxy @name */

char *
ngx_http_async_dl_delivery_slot(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_async_dl_loc_conf_t *alcf = conf;

    ngx_str_t  *value;

    if (alcf->delivery != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2
        && ngx_strcmp(value[1].data, "redirect") == 0)
    {
        alcf->delivery = NGX_HTTP_ASYNC_DL_REDIRECT;
        return NGX_CONF_OK;
    }

    if (cf->args->nelts == 3
        && ngx_strcmp(value[1].data, "proxy") == 0
        && value[2].len > 1 && value[2].data[0] == '@')
    {
        alcf->delivery = NGX_HTTP_ASYNC_DL_PROXY;
        alcf->delivery_location = value[2];
        return NGX_CONF_OK;
    }

    return "must be \"redirect\" or \"proxy @location\", where @location "
           "has \"proxy_pass $async_dl_storage_url;\"";
}


/*
 * Inherited as a pair.  A proxy delivery in an async_dl location is
 * remembered with its server, to check once the server's named locations
 * are known (ngx_http_async_dl_delivery_init): a missing one would only
 * show as a 500 on the first download.
 */

char *
ngx_http_async_dl_delivery_merge(ngx_conf_t *cf,
    ngx_http_async_dl_loc_conf_t *prev, ngx_http_async_dl_loc_conf_t *conf)
{
    ngx_http_async_dl_main_conf_t       *amcf;
    ngx_http_async_dl_delivery_check_t  *check;

    if (conf->delivery == NGX_CONF_UNSET_UINT) {
        conf->delivery = (prev->delivery == NGX_CONF_UNSET_UINT)
                         ? NGX_HTTP_ASYNC_DL_REDIRECT : prev->delivery;
        conf->delivery_location = prev->delivery_location;
    }

    if (!conf->enable || conf->delivery != NGX_HTTP_ASYNC_DL_PROXY) {
        return NGX_CONF_OK;
    }

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_async_dl_module);

    check = ngx_array_push(&amcf->deliveries);
    if (check == NULL) {
        return NGX_CONF_ERROR;
    }

    check->cscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);
    check->name = conf->delivery_location;
    check->prefix = conf->prefix;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_async_dl_delivery_add_variables(ngx_conf_t *cf)
{
    ngx_str_t            *names[3];
    ngx_uint_t            i;
    ngx_http_variable_t  *var;

    names[0] = &ngx_http_async_dl_storage_url_name;
    names[1] = &ngx_http_async_dl_storage_range_name;
    names[2] = &ngx_http_async_dl_etag_name;

    for (i = 0; i < 3; i++) {
        var = ngx_http_add_variable(cf, names[i], 0);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = ngx_http_async_dl_delivery_variable;
    }

    return NGX_OK;
}


/* postconfiguration: the variables' indexes, the named locations checked */

ngx_int_t
ngx_http_async_dl_delivery_init(ngx_conf_t *cf)
{
    ngx_uint_t                           i;
    ngx_http_core_loc_conf_t           **clcfp;
    ngx_http_async_dl_main_conf_t       *amcf;
    ngx_http_async_dl_delivery_check_t  *check;

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_async_dl_module);

    amcf->storage_url_index = ngx_http_get_variable_index(cf,
                                        &ngx_http_async_dl_storage_url_name);
    amcf->storage_range_index = ngx_http_get_variable_index(cf,
                                        &ngx_http_async_dl_storage_range_name);
    amcf->etag_index = ngx_http_get_variable_index(cf,
                                        &ngx_http_async_dl_etag_name);

    if (amcf->storage_url_index == NGX_ERROR
        || amcf->storage_range_index == NGX_ERROR
        || amcf->etag_index == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    check = amcf->deliveries.elts;

    for (i = 0; i < amcf->deliveries.nelts; i++) {

        clcfp = check[i].cscf->named_locations;

        for ( /* void */ ; clcfp && *clcfp; clcfp++) {
            if ((*clcfp)->name.len == check[i].name.len
                && ngx_strncmp((*clcfp)->name.data, check[i].name.data,
                               check[i].name.len) == 0)
            {
                break;
            }
        }

        if (clcfp == NULL || *clcfp == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"async_dl_delivery proxy %V\" in location "
                          "\"%V\": the server has no location \"%V\"",
                          &check[i].name, &check[i].prefix,
                          &check[i].name);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* set by ngx_http_async_dl_deliver() only: anywhere else, not found */

static ngx_int_t
ngx_http_async_dl_delivery_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    v->not_found = 1;
    return NGX_OK;
}


/* a download through nginx: the database said the object is there */

ngx_int_t
ngx_http_async_dl_deliver(ngx_http_request_t *r, const char *key,
    const char *name, const char *sha256)
{
    u_char                         *p;
    size_t                          len;
    ngx_str_t                       url, etag, range, *if_range;
    ngx_http_async_dl_link_t        link;
    ngx_http_async_dl_loc_conf_t   *alcf;
    ngx_http_async_dl_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    link.key = key;
    link.name = name;
    link.method = (r->method == NGX_HTTP_HEAD) ? "HEAD" : "GET";
    link.now = ngx_time();
    link.internal = 1;

    if (ngx_http_async_dl_presign(r, amcf, &link, &url) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the ETag: the object's SHA-256, when the database has a sound one */

    ngx_str_null(&etag);
    len = sha256 ? ngx_strlen(sha256) : 0;

    if (len == 64) {
        for (p = (u_char *) sha256; p < (u_char *) sha256 + 64; p++) {
            if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) {
                break;
            }
        }

        if (p == (u_char *) sha256 + 64) {
            etag.data = ngx_pnalloc(r->pool, 66);
            if (etag.data == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            etag.len = ngx_sprintf(etag.data, "\"%s\"", sha256) - etag.data;
        }
    }

    /*
     * Range goes to the storage, which answers it (206, Content-Range),
     * unless If-Range names another version than ours, or the object has
     * no ETag to compare with: then the whole object, 200 (RFC 9110 13.1.5:
     * a strong comparison; a date never matches here).
     */

    ngx_str_null(&range);

    if (r->headers_in.range) {
        range = r->headers_in.range->value;

        if (r->headers_in.if_range) {
            if_range = &r->headers_in.if_range->value;

            if (etag.len == 0 || if_range->len != etag.len
                || ngx_strncmp(if_range->data, etag.data, etag.len) != 0)
            {
                ngx_str_null(&range);
            }
        }
    }

    if (ngx_http_async_dl_set_variable(r, amcf->storage_url_index, &url)
           != NGX_OK
        || ngx_http_async_dl_set_variable(r, amcf->storage_range_index,
                                          &range)
           != NGX_OK
        || ngx_http_async_dl_set_variable(r, amcf->etag_index, &etag)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "async_dl: delivering \"%s\" through \"%V\"", key,
                   &alcf->delivery_location);

    return ngx_http_named_location(r, &alcf->delivery_location);
}


/* as "set" does: the value is the variable's for the rest of the request */

static ngx_int_t
ngx_http_async_dl_set_variable(ngx_http_request_t *r, ngx_int_t index,
    ngx_str_t *value)
{
    ngx_http_variable_value_t  *vv;

    if (r->variables == NULL || index == NGX_ERROR) {
        return NGX_ERROR;
    }

    vv = &r->variables[index];

    vv->len = value->len;
    vv->data = value->data;
    vv->valid = 1;
    vv->no_cacheable = 0;
    vv->not_found = (value->len == 0);
    vv->escape = 0;

    return NGX_OK;
}


ngx_uint_t
ngx_http_async_dl_delivered(ngx_http_request_t *r)
{
    ngx_http_variable_value_t      *vv;
    ngx_http_async_dl_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);

    if (amcf == NULL || r->variables == NULL
        || amcf->storage_url_index == NGX_ERROR)
    {
        return 0;
    }

    vv = &r->variables[amcf->storage_url_index];

    return vv->valid && !vv->not_found && vv->len;
}


/*
 * A delivered response's headers, from the header filter.  A success gets
 * our ETag; an error gets, in *code and *message, what the JSON error
 * says (code NULL: the filter's usual words for that status):
 *
 *   416 from the storage    416 RANGE_NOT_SATISFIABLE, its Content-Range
 *   412 (If-Match, ...)     412 PRECONDITION_FAILED
 *   nginx's 502, 504        502 STORAGE_UNAVAILABLE, 504 STORAGE_TIMEOUT:
 *                           the storage could not be reached, or was late
 *   any other storage error 502 STORAGE_ERROR: the database says the
 *                           object is stored, so whatever the storage
 *                           answers (403, 404, 500...) is our failure,
 *                           not the client's
 */

ngx_int_t
ngx_http_async_dl_delivery_headers(ngx_http_request_t *r, const char **code,
    ngx_str_t *message)
{
    u_char                         *p;
    ngx_str_t                       etag;
    ngx_uint_t                      status, storage;
    ngx_http_variable_value_t      *vv;
    ngx_http_async_dl_main_conf_t  *amcf;

    *code = NULL;
    ngx_str_null(message);

    ngx_http_async_dl_strip_storage_headers(r);

    status = r->headers_out.status;

    if (status == NGX_HTTP_OK || status == NGX_HTTP_PARTIAL_CONTENT) {
        amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);
        vv = &r->variables[amcf->etag_index];

        if (!vv->valid || vv->not_found || vv->len == 0) {
            return NGX_OK;
        }

        /*
         * The storage never sees the conditional headers (the location
         * does not pass them): nginx's not_modified filter answers
         * If-None-Match, If-Match and the dates, against our ETag and the
         * storage's Last-Modified.
         */

        r->disable_not_modified = 0;

        etag.len = vv->len;
        etag.data = vv->data;

        return ngx_http_async_dl_set_etag(r, &etag);
    }

    if (status < NGX_HTTP_BAD_REQUEST) {
        return NGX_OK;
    }

    storage = (r->upstream && r->upstream->headers_in.status_n == status);

    r->headers_out.status_line.len = 0;

    if (status != NGX_HTTP_RANGE_NOT_SATISFIABLE
        && r->headers_out.content_range)
    {
        r->headers_out.content_range->hash = 0;
        r->headers_out.content_range = NULL;
    }

    if (status == NGX_HTTP_RANGE_NOT_SATISFIABLE && storage) {
        *code = "RANGE_NOT_SATISFIABLE";
        ngx_str_set(message, "the range is not within the file");
        return NGX_OK;
    }

    if (status == NGX_HTTP_PRECONDITION_FAILED && !storage) {
        *code = "PRECONDITION_FAILED";
        ngx_str_set(message, "the file does not match the request's "
                             "preconditions");
        return NGX_OK;
    }

    if (!storage) {
        if (status == NGX_HTTP_BAD_GATEWAY) {
            *code = "STORAGE_UNAVAILABLE";
            ngx_str_set(message, "the storage could not be reached");

        } else if (status == NGX_HTTP_GATEWAY_TIME_OUT) {
            *code = "STORAGE_TIMEOUT";
            ngx_str_set(message, "the storage did not answer in time");
        }

        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, sizeof("the storage answered ") - 1
                             + NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    message->data = p;
    message->len = ngx_sprintf(p, "the storage answered %ui", status) - p;

    *code = "STORAGE_ERROR";
    r->headers_out.status = NGX_HTTP_BAD_GATEWAY;

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "async_dl: the storage answered %ui to a delivery",
                  status);

    return NGX_OK;
}


/* x-amz-*: request ids, metadata, encryption... nothing for a client */

static void
ngx_http_async_dl_strip_storage_headers(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash && h[i].key.len > 6
            && ngx_strncasecmp(h[i].key.data, (u_char *) "x-amz-", 6) == 0)
        {
            h[i].hash = 0;
        }
    }
}


static ngx_int_t
ngx_http_async_dl_set_etag(ngx_http_request_t *r, ngx_str_t *etag)
{
    ngx_table_elt_t  *h;

    h = r->headers_out.etag;

    if (h == NULL) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_http_async_dl_header_init(h);
        ngx_str_set(&h->key, "ETag");
        r->headers_out.etag = h;
    }

    h->value = *etag;

    return NGX_OK;
}
