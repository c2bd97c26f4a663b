
/*
 * JSON answers.  Every answer under {p} is JSON, errors included:
 *   {"error":{"code":"UPPER_SNAKE","message":"human sentence"}}
 * Our own errors are built here; errors that nginx itself produces in an
 * async_dl location (413 from client_max_body_size, 400 for a bad body,
 * 500 on an allocation failure...) are rewritten into the same shape by a
 * header and body filter, so no HTML page ever leaves the API.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"


static ngx_int_t ngx_http_async_dl_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_async_dl_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_async_dl_send_body(ngx_http_request_t *r,
    ngx_uint_t status, u_char *body, size_t len, ngx_uint_t compact);
static ngx_str_t *ngx_http_async_dl_error_body(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, u_char *msg, size_t len);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


ngx_int_t
ngx_http_async_dl_send_json(ngx_http_request_t *r, ngx_uint_t status,
    u_char *body, size_t len)
{
    return ngx_http_async_dl_send_body(r, status, body, len, 1);
}


/* a body already compact and ending with its newline (the status cache's
 * copy in the request's pool): sent as it is */

ngx_int_t
ngx_http_async_dl_send_compact_json(ngx_http_request_t *r, ngx_uint_t status,
    u_char *body, size_t len)
{
    return ngx_http_async_dl_send_body(r, status, body, len, 0);
}


static ngx_int_t
ngx_http_async_dl_send_body(ngx_http_request_t *r, ngx_uint_t status,
    u_char *body, size_t len, ngx_uint_t compact)
{
    u_char                   *p;
    size_t                    size;
    ngx_int_t                 rc;
    ngx_buf_t                *b;
    const char               *cache;
    ngx_chain_t               out;
    ngx_http_async_dl_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    if (ctx) {
        ctx->replied = 1;
    }

    r->headers_out.status = status;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    size = compact ? ngx_http_async_dl_compact(NULL, body, len) + 1 : len;
    r->headers_out.content_length_n = size;

    /* status answers are revalidated with their ETag, nothing is stored */
    cache = (ctx && ctx->revalidate) ? "no-cache" : "no-store";

    if (ngx_http_async_dl_add_header(r, "Cache-Control", (u_char *) cache,
                                     ngx_strlen(cache))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    if (compact) {
        b = ngx_create_temp_buf(r->pool, size);
        if (b == NULL) {
            return NGX_ERROR;
        }

        p = b->last + ngx_http_async_dl_compact(b->last, body, len);
        *p++ = '\n';
        b->last = p;

    } else {
        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            return NGX_ERROR;
        }

        b->pos = body;
        b->last = body + len;
        b->memory = 1;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * PostgreSQL's json_build_object() writes {"a" : 1, "b" : 2}: the blanks
 * outside strings are dropped.  Returns the new length; with dst NULL,
 * only computes it.
 */

size_t
ngx_http_async_dl_compact(u_char *dst, u_char *src, size_t len)
{
    u_char     *last;
    size_t      n;
    ngx_uint_t  in_string, escaped;

    n = 0;
    last = src + len;
    in_string = 0;
    escaped = 0;

    for ( /* void */ ; src < last; src++) {

        if (in_string) {
            if (escaped) {
                escaped = 0;

            } else if (*src == '\\') {
                escaped = 1;

            } else if (*src == '"') {
                in_string = 0;
            }

        } else if (*src == '"') {
            in_string = 1;

        } else if (*src == ' ' || *src == '\n' || *src == '\t'
                   || *src == '\r')
        {
            continue;
        }

        if (dst) {
            dst[n] = *src;
        }

        n++;
    }

    return n;
}


ngx_int_t
ngx_http_async_dl_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *fmt, ...)
{
    u_char                   *p, msg[1024];
    va_list                   args;
    ngx_str_t                *body;
    ngx_http_async_dl_ctx_t  *ctx;

    static u_char  health[] = "{\"status\":\"unavailable\",";

    va_start(args, fmt);
    p = ngx_vslprintf(msg, msg + sizeof(msg), fmt, args);
    va_end(args);

    body = ngx_http_async_dl_error_body(r, status, code, msg, p - msg);
    if (body == NULL) {
        return NGX_ERROR;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    if (ctx && ctx->route
        && (ctx->route->flags & NGX_HTTP_ASYNC_DL_R_HEALTH))
    {
        /* the health answer also says what it is about */
        p = ngx_pnalloc(r->pool, sizeof(health) - 1 + body->len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(ngx_cpymem(p, health, sizeof(health) - 1),
                   body->data + 1, body->len - 1);

        return ngx_http_async_dl_send_json(r, status, p,
                                           sizeof(health) - 2 + body->len);
    }

    return ngx_http_async_dl_send_json(r, status, body->data, body->len);
}


/* 503 DATABASE_UNAVAILABLE, to be retried soon: the one way to say it */

ngx_int_t
ngx_http_async_dl_db_unavailable(ngx_http_request_t *r, const char *fmt, ...)
{
    u_char   *p, msg[1024];
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(msg, msg + sizeof(msg), fmt, args);
    va_end(args);

    if (ngx_http_async_dl_retry_after(r, NGX_HTTP_ASYNC_DL_RETRY_DATABASE)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_async_dl_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "DATABASE_UNAVAILABLE", "%*s",
                                        (size_t) (p - msg), msg);
}


static ngx_str_t *
ngx_http_async_dl_error_body(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, u_char *msg, size_t len)
{
    u_char     *p;
    size_t      size;
    ngx_str_t  *body;

    body = ngx_palloc(r->pool, sizeof(ngx_str_t));
    if (body == NULL) {
        return NULL;
    }

    size = sizeof("{\"error\":{\"code\":\"\",\"message\":\"\"}}") - 1
           + ngx_strlen(code) + ngx_http_async_dl_escape(NULL, msg, len);

    /* one more byte: the filter appends a newline */
    body->data = ngx_pnalloc(r->pool, size + 1);
    if (body->data == NULL) {
        return NULL;
    }

    p = ngx_sprintf(body->data, "{\"error\":{\"code\":\"%s\",\"message\":\"",
                    code);
    p += ngx_http_async_dl_escape(p, msg, len);
    p = ngx_cpymem(p, "\"}}", 3);

    body->len = p - body->data;

    return body;
}


/*
 * The inside of a JSON string, from any bytes: a message may quote what
 * the client sent (a URI, a JSON key) and may have been cut short, yet the
 * answer must be valid JSON.  Quotes, backslashes and control characters
 * are escaped, UTF-8 characters kept, and every other byte becomes U+FFFD.
 * Returns the length written; with dst NULL, only computes it.
 */

size_t
ngx_http_async_dl_escape(u_char *dst, u_char *src, size_t len)
{
    u_char   c, *last, *out, esc[6];
    size_t   n, size;

    static u_char  hex[] = "0123456789abcdef";

    size = 0;
    last = src + len;

    while (src < last) {
        c = *src;
        out = esc;

        if (c >= 0x80) {
            n = ngx_http_async_dl_utf8_char(src, last);

            if (n) {
                out = src;                      /* a character: as it is */
                src += n;

            } else {
                out = (u_char *) "\\ufffd";     /* a stray byte */
                n = 6;
                src++;
            }

        } else if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = c;
            n = 2;
            src++;

        } else if (c < 0x20) {
            esc[0] = '\\';
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            n = 6;
            src++;

        } else {
            esc[0] = c;
            n = 1;
            src++;
        }

        if (dst) {
            ngx_memcpy(dst + size, out, n);
        }

        size += n;
    }

    return size;
}


ngx_int_t
ngx_http_async_dl_add_header(ngx_http_request_t *r, const char *name,
    u_char *value, size_t len)
{
    return ngx_http_async_dl_push_header(r, name, value, len) ? NGX_OK
                                                              : NGX_ERROR;
}


/* a header of the answer; the caller may link it (headers_out.etag) */

ngx_table_elt_t *
ngx_http_async_dl_push_header(ngx_http_request_t *r, const char *name,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NULL;
    }

    h->hash = 1;
    ngx_http_async_dl_header_init(h);
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = value;
    h->value.len = len;

    return h;
}


ngx_int_t
ngx_http_async_dl_retry_after(ngx_http_request_t *r, time_t seconds)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_async_dl_add_header(r, "Retry-After", p,
                                        ngx_sprintf(p, "%T", seconds) - p);
}


/* nginx's own error pages, as JSON */


ngx_int_t
ngx_http_async_dl_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_async_dl_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_async_dl_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_async_dl_header_filter(ngx_http_request_t *r)
{
    const char                    *code, *msg;
    ngx_str_t                     *body, message;
    ngx_http_async_dl_ctx_t       *ctx;
    ngx_http_async_dl_loc_conf_t  *alcf;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    /* the storage's answer to a delivery through nginx (delivery.c) */

    code = NULL;
    ngx_str_null(&message);

    if (ngx_http_async_dl_delivered(r)) {
        if (ngx_http_async_dl_delivery_headers(r, &code, &message) != NGX_OK) {
            return NGX_ERROR;
        }

        if (r->headers_out.status < NGX_HTTP_BAD_REQUEST) {
            return ngx_http_next_header_filter(r);
        }

    } else {
        if (r->headers_out.status < NGX_HTTP_BAD_REQUEST) {
            return ngx_http_next_header_filter(r);
        }

        alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

        if (!alcf->enable) {
            return ngx_http_next_header_filter(r);
        }
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    if (ctx && ctx->replied) {
        return ngx_http_next_header_filter(r);
    }

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_async_dl_ctx_t));
        if (ctx == NULL) {
            return NGX_ERROR;
        }

        ngx_http_set_ctx(r, ctx, ngx_http_async_dl_module);
    }

    switch (code ? 0 : r->headers_out.status) {

    case 0:
        msg = NULL;
        break;

    case NGX_HTTP_BAD_REQUEST:
        code = "BAD_REQUEST";
        msg = "the request is malformed";
        break;

    case NGX_HTTP_REQUEST_TIME_OUT:
        code = "REQUEST_TIMEOUT";
        msg = "the request was not received in time";
        break;

    case NGX_HTTP_LENGTH_REQUIRED:
        code = "LENGTH_REQUIRED";
        msg = "the request body needs a length";
        break;

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        code = "PAYLOAD_TOO_LARGE";
        msg = "the request body is larger than client_max_body_size";
        break;

    case NGX_HTTP_REQUEST_URI_TOO_LARGE:
        code = "URI_TOO_LONG";
        msg = "the request URI is too long";
        break;

    case NGX_HTTP_NOT_FOUND:
        code = "NOT_FOUND";
        msg = "not found";
        break;

    case NGX_HTTP_FORBIDDEN:
        code = "FORBIDDEN";
        msg = "access is forbidden";
        break;

    case NGX_HTTP_NOT_ALLOWED:
        code = "METHOD_NOT_ALLOWED";
        msg = "this method is not allowed here";
        break;

    case NGX_HTTP_SERVICE_UNAVAILABLE:
        code = "SERVICE_UNAVAILABLE";
        msg = "the service is unavailable";
        break;

    default:
        if (r->headers_out.status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
            code = "INTERNAL_ERROR";
            msg = "internal server error";
        } else {
            code = "BAD_REQUEST";
            msg = "the request was refused";
        }
        break;
    }

    if (msg) {
        message.data = (u_char *) msg;
        message.len = ngx_strlen(msg);
    }

    body = ngx_http_async_dl_error_body(r, r->headers_out.status, code,
                                        message.data, message.len);
    if (body == NULL) {
        return NGX_ERROR;
    }

    ctx->error_body.data = body->data;
    ctx->error_body.len = body->len + 1;
    body->data[body->len] = '\n';

    ctx->json_error = 1;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;

    r->headers_out.content_length_n = ctx->error_body.len;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_async_dl_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t                *b;
    ngx_chain_t               out, *cl;
    ngx_http_async_dl_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    if (ctx == NULL || !ctx->json_error || r->header_only) {
        return ngx_http_next_body_filter(r, in);
    }

    /*
     * nginx's HTML page, or the storage's XML error: dropped, and marked as
     * sent, for an upstream's buffers are reused only once they are
     */

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
    }

    if (ctx->json_sent) {
        return NGX_OK;
    }

    ctx->json_sent = 1;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = ctx->error_body.data;
    b->last = ctx->error_body.data + ctx->error_body.len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_next_body_filter(r, &out);
}
