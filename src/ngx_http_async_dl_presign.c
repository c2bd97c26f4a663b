
/*
 * Presigned storage links: AWS SigV4 query signing with the shared code in
 * common/adl_sigv4.c (the worker signs its requests with the same code).
 * The host is async_dl_s3_public_endpoint's (the address clients reach),
 * or async_dl_s3_endpoint's for a link nginx itself follows (delivery
 * through nginx); X-Amz-Expires is async_dl_presign_expires, and the object
 * is served as an attachment named after the file
 * (response-content-disposition).  SigV4 signs the method: a HEAD needs a
 * link signed for HEAD.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "adl_sigv4.h"


static char *ngx_http_async_dl_presign_endpoint(ngx_conf_t *cf,
    const char *directive, ngx_str_t *endpoint, ngx_str_t *bucket);


char *
ngx_http_async_dl_presign_check(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf)
{
    if (amcf->s3_endpoint.len
        && ngx_http_async_dl_presign_endpoint(cf, "async_dl_s3_endpoint",
                                              &amcf->s3_endpoint,
                                              &amcf->s3_bucket)
           != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (amcf->s3_public_endpoint.len
        && amcf->s3_public_endpoint.data != amcf->s3_endpoint.data
        && ngx_http_async_dl_presign_endpoint(cf,
                                              "async_dl_s3_public_endpoint",
                                              &amcf->s3_public_endpoint,
                                              &amcf->s3_bucket)
           != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_async_dl_presign_endpoint(ngx_conf_t *cf, const char *directive,
    ngx_str_t *endpoint, ngx_str_t *bucket)
{
    char  scheme[8], host[512], path[1024];

    if (endpoint->len < sizeof(path) - 64
        && adl_s3_locate((char *) endpoint->data,
                         bucket->len ? (char *) bucket->data : "bucket", 0,
                         "key", scheme, sizeof(scheme), host, sizeof(host),
                         path, sizeof(path))
           == 0)
    {
        return NGX_CONF_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid \"%s\" value \"%V\": must be "
                       "\"http[s]://host[:port][/prefix]\"", directive,
                       endpoint);

    return NGX_CONF_ERROR;
}


ngx_int_t
ngx_http_async_dl_presign(ngx_http_request_t *r,
    ngx_http_async_dl_main_conf_t *amcf, ngx_http_async_dl_link_t *link,
    ngx_str_t *url)
{
    char               scheme[8], host[512], *path, *epath, *cd, *qs;
    const char        *key;
    ngx_str_t         *endpoint;
    u_char            *p;
    size_t             klen, nlen, plen, cdlen, qslen;
    ssize_t            n, en, qn;
    adl_kv_t           query[1];
    adl_sigv4_req_t    req;
    adl_sigv4_creds_t  creds;

    key = link->key;
    endpoint = link->internal ? &amcf->s3_endpoint : &amcf->s3_public_endpoint;

    klen = ngx_strlen(key);
    nlen = ngx_strlen(link->name);

    plen = endpoint->len + amcf->s3_bucket.len + klen + 8;
    cdlen = 64 + nlen * 4;
    qslen = 1024 + cdlen * 3 + amcf->s3_access_key.len * 3
            + amcf->s3_region.len * 3;

    path = ngx_pnalloc(r->pool, plen);
    epath = ngx_pnalloc(r->pool, plen * 3 + 1);
    cd = ngx_pnalloc(r->pool, cdlen);
    qs = ngx_pnalloc(r->pool, qslen);

    if (path == NULL || epath == NULL || cd == NULL || qs == NULL) {
        return NGX_ERROR;
    }

    if (adl_s3_locate((char *) endpoint->data,
                      (char *) amcf->s3_bucket.data,
                      amcf->s3_addressing == NGX_HTTP_ASYNC_DL_S3_VIRTUAL,
                      key, scheme, sizeof(scheme), host, sizeof(host),
                      path, plen)
        != 0)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "async_dl: cannot address object \"%s\"", key);
        return NGX_ERROR;
    }

    n = adl_content_disposition(link->name, nlen, cd, cdlen);
    if (n < 0) {
        return NGX_ERROR;
    }

    query[0].name = "response-content-disposition";
    query[0].value = cd;

    creds.access_key = (char *) amcf->s3_access_key.data;
    creds.secret_key = (char *) amcf->s3_secret_key.data;
    creds.session_token = NULL;
    creds.region = (char *) amcf->s3_region.data;
    creds.service = "s3";

    ngx_memzero(&req, sizeof(adl_sigv4_req_t));
    req.method = link->method;
    req.host = host;
    req.path = path;
    req.query = query;
    req.nquery = 1;
    req.payload_hash = ADL_UNSIGNED_PAYLOAD;
    req.now = link->now;

    qn = adl_sigv4_presign_query(&creds, &req,
                                 (unsigned) (amcf->presign_expires / 1000),
                                 qs, qslen);
    en = adl_uri_encode(path, ngx_strlen(path), epath, plen * 3 + 1, 1);

    if (qn < 0 || en < 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "async_dl: cannot presign object \"%s\"", key);
        return NGX_ERROR;
    }

    url->len = ngx_strlen(scheme) + 3 + ngx_strlen(host) + en + 1 + qn;
    url->data = ngx_pnalloc(r->pool, url->len);
    if (url->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(url->data, "%s://%s", scheme, host);
    p = ngx_cpymem(p, epath, en);
    *p++ = '?';
    ngx_memcpy(p, qs, qn);

    return NGX_OK;
}
