
/*
 * The initiate body, checked with jansson.  One of
 *   {"file_ids":[70000,70001]}  {"file_id":70000}
 *   {"files":[{"url":"https://...","name":"optional.pdf"}]}
 * and optionally "timeout" ("90s", "5m" or seconds), "callback_url" and
 * "priority" (-100..100, among the owner's jobs).
 * Every refusal is a 400 whose message starts with the field it is about.
 * Also the initiate's W3C trace context (traceparent), which is never
 * refused: a malformed one is replaced, as the W3C says.
 *
 * jansson allocates with malloc(): every object is released before
 * returning, the results are copied into the request's pool.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "ngx_http_async_dl.h"
#include "adl_sigv4.h"


#define NGX_HTTP_ASYNC_DL_MAX_URL   8192
#define NGX_HTTP_ASYNC_DL_MAX_NAME  1024


static ngx_int_t ngx_http_async_dl_input_files(ngx_http_request_t *r,
    ngx_http_async_dl_loc_conf_t *alcf, json_t *value, json_t *out,
    ngx_http_async_dl_input_t *in);
static ngx_int_t ngx_http_async_dl_input_ids(ngx_http_request_t *r,
    ngx_http_async_dl_loc_conf_t *alcf, const char *field, json_t *value,
    json_t *out, ngx_http_async_dl_input_t *in);
static ngx_int_t ngx_http_async_dl_input_timeout(ngx_http_request_t *r,
    ngx_http_async_dl_loc_conf_t *alcf, json_t *value,
    ngx_http_async_dl_input_t *in);
static const char *ngx_http_async_dl_check_url(const char *url, size_t len);
static ngx_int_t ngx_http_async_dl_refuse(ngx_http_request_t *r,
    ngx_http_async_dl_input_t *in, const char *fmt, ...);
static ngx_int_t ngx_http_async_dl_dump(ngx_http_request_t *r, json_t *json,
    size_t flags, ngx_str_t *out);


ngx_int_t
ngx_http_async_dl_parse_initiate(ngx_http_request_t *r,
    ngx_http_async_dl_loc_conf_t *alcf, u_char *body, size_t len,
    ngx_http_async_dl_input_t *in)
{
    size_t        n;
    json_t       *root, *value, *files, *canon;
    ngx_int_t     rc;
    ngx_str_t     s;
    const char   *key, *err;
    json_error_t  jerr;

    root = json_loadb((const char *) body, len, JSON_REJECT_DUPLICATES,
                      &jerr);
    if (root == NULL) {
        return ngx_http_async_dl_refuse(r, in,
                                        "body: invalid JSON (line %d, "
                                        "column %d): %s", jerr.line,
                                        jerr.column, jerr.text);
    }

    files = json_array();
    canon = NULL;

    if (files == NULL) {
        json_decref(root);
        return NGX_ERROR;
    }

    if (!json_is_object(root)) {
        rc = ngx_http_async_dl_refuse(r, in, "body: must be a JSON object");
        goto done;
    }

    n = 0;

    json_object_foreach(root, key, value) {
        if (ngx_strcmp(key, "file_ids") == 0
            || ngx_strcmp(key, "file_id") == 0
            || ngx_strcmp(key, "files") == 0)
        {
            n++;

        } else if (ngx_strcmp(key, "timeout") != 0
                   && ngx_strcmp(key, "callback_url") != 0
                   && ngx_strcmp(key, "priority") != 0)
        {
            rc = ngx_http_async_dl_refuse(r, in, "%s: unknown field", key);
            goto done;
        }
    }

    if (n != 1) {
        rc = ngx_http_async_dl_refuse(r, in,
                                      "%s: give one of \"file_ids\", "
                                      "\"file_id\" or \"files\"",
                                      n ? "files" : "file_ids");
        goto done;
    }

    if ((value = json_object_get(root, "files")) != NULL) {
        rc = ngx_http_async_dl_input_files(r, alcf, value, files, in);

    } else if ((value = json_object_get(root, "file_ids")) != NULL) {
        rc = ngx_http_async_dl_input_ids(r, alcf, "file_ids", value, files,
                                         in);
    } else {
        rc = ngx_http_async_dl_input_ids(r, alcf, "file_id",
                                         json_object_get(root, "file_id"),
                                         files, in);
    }

    if (rc != NGX_OK) {
        goto done;
    }

    rc = ngx_http_async_dl_input_timeout(r, alcf,
                                         json_object_get(root, "timeout"),
                                         in);
    if (rc != NGX_OK) {
        goto done;
    }

    value = json_object_get(root, "callback_url");
    ngx_str_null(&in->callback_url);

    if (value && !json_is_null(value)) {
        if (!json_is_string(value)) {
            rc = ngx_http_async_dl_refuse(r, in,
                                          "callback_url: must be a string");
            goto done;
        }

        err = ngx_http_async_dl_check_url(json_string_value(value),
                                          json_string_length(value));
        if (err) {
            rc = ngx_http_async_dl_refuse(r, in, "callback_url: %s", err);
            goto done;
        }

        s.len = json_string_length(value);
        s.data = ngx_pnalloc(r->pool, s.len + 1);
        if (s.data == NULL) {
            rc = NGX_ERROR;
            goto done;
        }

        ngx_memcpy(s.data, json_string_value(value), s.len + 1);
        in->callback_url = s;
    }

    /* the order among the owner's own jobs: higher first */
    value = json_object_get(root, "priority");
    in->priority = 0;

    if (value && !json_is_null(value)) {
        if (!json_is_integer(value) || json_integer_value(value) < -100
            || json_integer_value(value) > 100)
        {
            rc = ngx_http_async_dl_refuse(r, in, "priority: must be an "
                                          "integer from -100 to 100");
            goto done;
        }

        in->priority = (ngx_int_t) json_integer_value(value);
    }

    in->nfiles = json_array_size(files);

    if (ngx_http_async_dl_dump(r, files, JSON_COMPACT, &in->files)
        != NGX_OK)
    {
        rc = NGX_ERROR;
        goto done;
    }

    /*
     * The Idempotency-Key fingerprint: the request as understood, so that
     * spacing, key order or "file_id" vs "file_ids" do not matter.
     */

    canon = json_pack("{s:O,s:I,s:s?}", "files", files,
                      "timeout", (json_int_t) in->timeout,
                      "callback_url", (char *) in->callback_url.data);

    /* only when given: the fingerprints of earlier requests stay valid */
    if (canon != NULL && in->priority != 0
        && json_object_set_new(canon, "priority",
                               json_integer((json_int_t) in->priority))
           != 0)
    {
        rc = NGX_ERROR;
        goto done;
    }

    if (canon == NULL
        || ngx_http_async_dl_dump(r, canon, JSON_COMPACT|JSON_SORT_KEYS, &s)
           != NGX_OK
        || adl_sha256_hex(s.data, s.len, (char *) in->hash) != 0)
    {
        rc = NGX_ERROR;
        goto done;
    }

    rc = NGX_OK;

done:

    if (canon) {
        json_decref(canon);
    }

    json_decref(files);
    json_decref(root);

    return rc;
}


static ngx_int_t
ngx_http_async_dl_input_files(ngx_http_request_t *r,
    ngx_http_async_dl_loc_conf_t *alcf, json_t *value, json_t *out,
    ngx_http_async_dl_input_t *in)
{
    size_t       i;
    json_t      *f, *v, *url, *name, *o;
    const char  *key, *err;

    if (!alcf->urls) {
        return ngx_http_async_dl_refuse(r, in,
                                        "files: URLs are not accepted here "
                                        "(async_dl_urls off), use "
                                        "\"file_ids\"");
    }

    if (!json_is_array(value)) {
        return ngx_http_async_dl_refuse(r, in, "files: must be an array");
    }

    if (json_array_size(value) == 0) {
        return ngx_http_async_dl_refuse(r, in, "files: must not be empty");
    }

    if (json_array_size(value) > (size_t) alcf->max_files) {
        return ngx_http_async_dl_refuse(r, in,
                                        "files: at most %i files per job",
                                        alcf->max_files);
    }

    json_array_foreach(value, i, f) {

        if (!json_is_object(f)) {
            return ngx_http_async_dl_refuse(r, in,
                                            "files[%uz]: must be an object "
                                            "with \"url\"", i);
        }

        json_object_foreach(f, key, v) {
            if (ngx_strcmp(key, "url") != 0 && ngx_strcmp(key, "name") != 0)
            {
                return ngx_http_async_dl_refuse(r, in,
                                                "files[%uz].%s: unknown "
                                                "field", i, key);
            }
        }

        url = json_object_get(f, "url");

        if (url == NULL) {
            return ngx_http_async_dl_refuse(r, in,
                                            "files[%uz].url: is required", i);
        }

        if (!json_is_string(url)) {
            return ngx_http_async_dl_refuse(r, in,
                                            "files[%uz].url: must be a "
                                            "string", i);
        }

        err = ngx_http_async_dl_check_url(json_string_value(url),
                                          json_string_length(url));
        if (err) {
            return ngx_http_async_dl_refuse(r, in, "files[%uz].url: %s", i,
                                            err);
        }

        name = json_object_get(f, "name");

        if (name && json_is_null(name)) {
            name = NULL;
        }

        if (name) {
            if (!json_is_string(name)) {
                return ngx_http_async_dl_refuse(r, in,
                                                "files[%uz].name: must be a "
                                                "string", i);
            }

            if (json_string_length(name) > NGX_HTTP_ASYNC_DL_MAX_NAME
                || ngx_strlen(json_string_value(name))
                   != json_string_length(name))
            {
                return ngx_http_async_dl_refuse(r, in,
                                                "files[%uz].name: must be at "
                                                "most %d bytes, without NUL",
                                                i, NGX_HTTP_ASYNC_DL_MAX_NAME);
            }

            if (json_string_length(name) == 0) {
                name = NULL;
            }
        }

        o = json_pack("{s:O,s:O?}", "url", url, "name", name);

        if (o == NULL || json_array_append_new(out, o) != 0) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_async_dl_input_ids(ngx_http_request_t *r,
    ngx_http_async_dl_loc_conf_t *alcf, const char *field, json_t *value,
    json_t *out, ngx_http_async_dl_input_t *in)
{
    u_char      *p, *last, *t, *end, url[NGX_HTTP_ASYNC_DL_MAX_URL];
    size_t       i, n;
    json_t      *v, *o;
    json_int_t   id;

    if (alcf->source_url.len == 0) {
        return ngx_http_async_dl_refuse(r, in,
                                        "%s: file ids are not accepted here "
                                        "(async_dl_source_url is not "
                                        "configured)", field);
    }

    if (ngx_strcmp(field, "file_id") == 0) {
        if (!json_is_integer(value) || json_integer_value(value) <= 0) {
            return ngx_http_async_dl_refuse(r, in,
                                            "file_id: must be a positive "
                                            "integer");
        }
        n = 1;

    } else {
        if (!json_is_array(value)) {
            return ngx_http_async_dl_refuse(r, in,
                                            "file_ids: must be an array of "
                                            "positive integers");
        }

        n = json_array_size(value);

        if (n == 0) {
            return ngx_http_async_dl_refuse(r, in,
                                            "file_ids: must not be empty");
        }

        if (n > (size_t) alcf->max_files) {
            return ngx_http_async_dl_refuse(r, in,
                                            "file_ids: at most %i files per "
                                            "job", alcf->max_files);
        }
    }

    end = alcf->source_url.data + alcf->source_url.len;

    for (i = 0; i < n; i++) {

        if (json_is_array(value)) {
            v = json_array_get(value, i);

            if (!json_is_integer(v) || json_integer_value(v) <= 0) {
                return ngx_http_async_dl_refuse(r, in,
                                                "file_ids[%uz]: must be a "
                                                "positive integer", i);
            }

        } else {
            v = value;
        }

        id = json_integer_value(v);

        /* async_dl_source_url with every "{file_id}" replaced */

        p = url;
        last = url + sizeof(url) - 1;

        for (t = alcf->source_url.data; t < end; /* void */) {
            if (end - t >= 9 && ngx_strncmp(t, "{file_id}", 9) == 0) {
                p = ngx_slprintf(p, last, "%L", (int64_t) id);
                t += 9;

            } else if (p < last) {
                *p++ = *t++;

            } else {
                break;
            }
        }

        *p = '\0';

        o = json_pack("{s:s,s:I}", "url", (char *) url, "file_id", id);

        if (o == NULL || json_array_append_new(out, o) != 0) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_async_dl_input_timeout(ngx_http_request_t *r,
    ngx_http_async_dl_loc_conf_t *alcf, json_t *value,
    ngx_http_async_dl_input_t *in)
{
    ngx_str_t       s;
    ngx_msec_int_t  ms;

    if (value == NULL || json_is_null(value)) {
        in->timeout = alcf->default_timeout;
        return NGX_OK;
    }

    if (json_is_integer(value)) {
        if (json_integer_value(value) <= 0
            || json_integer_value(value) > 365 * 86400)
        {
            ms = -1;
        } else {
            ms = (ngx_msec_int_t) json_integer_value(value) * 1000;
        }

    } else if (json_is_string(value) && json_string_length(value) > 0) {
        s.data = (u_char *) json_string_value(value);
        s.len = json_string_length(value);

        ms = ngx_parse_time(&s, 0);

    } else {
        ms = NGX_ERROR;
    }

    if (ms == NGX_ERROR || ms <= 0) {
        return ngx_http_async_dl_refuse(r, in,
                                        "timeout: must be a duration such as "
                                        "\"90s\" or \"5m\", or a positive "
                                        "number of seconds");
    }

    if ((ngx_msec_t) ms > alcf->max_timeout) {
        return ngx_http_async_dl_refuse(r, in,
                                        "timeout: must be at most %M "
                                        "seconds", alcf->max_timeout / 1000);
    }

    in->timeout = (ngx_msec_t) ms;

    return NGX_OK;
}


/* NULL when the URL is acceptable, else why not */

static const char *
ngx_http_async_dl_check_url(const char *url, size_t len)
{
    u_char  *p, *a, *last, *host, *end, *colon;
    size_t   i;

    if (len > NGX_HTTP_ASYNC_DL_MAX_URL) {
        return "is too long";
    }

    if (ngx_strlen(url) != len) {
        return "must not contain NUL";
    }

    for (i = 0; i < len; i++) {
        if ((u_char) url[i] <= 0x20 || (u_char) url[i] >= 0x7f) {
            return "must not contain spaces, control or non-ASCII characters "
                   "(percent-encode them)";
        }
    }

    p = (u_char *) url;
    last = p + len;

    if (len > 7 && ngx_strncasecmp(p, (u_char *) "http://", 7) == 0) {
        p += 7;

    } else if (len > 8 && ngx_strncasecmp(p, (u_char *) "https://", 8) == 0) {
        p += 8;

    } else {
        return "must be an http or https URL";
    }

    /* authority: [userinfo@]host[:port] */

    end = p;
    while (end < last && *end != '/' && *end != '?' && *end != '#') {
        end++;
    }

    host = p;

    for (a = p; a < end; a++) {
        if (*a == '@') {
            host = a + 1;
        }
    }

    if (host == end) {
        return "has no host";
    }

    if (*host == '[') {
        colon = ngx_strlchr(host, end, ']');
        if (colon == NULL || colon == host + 1) {
            return "has a malformed IPv6 address";
        }
        colon++;

        if (colon < end && *colon != ':') {
            return "has a malformed host";
        }

    } else {
        colon = ngx_strlchr(host, end, ':');
        if (colon == host) {
            return "has no host";
        }
    }

    if (colon && colon < end) {
        colon++;

        if (colon == end || end - colon > 5
            || ngx_atoi(colon, end - colon) == NGX_ERROR
            || ngx_atoi(colon, end - colon) == 0
            || ngx_atoi(colon, end - colon) > 65535)
        {
            return "has an invalid port";
        }
    }

    return NULL;
}


ngx_int_t
ngx_http_async_dl_is_uuid(u_char *p, size_t len)
{
    size_t  i;

    if (len != NGX_HTTP_ASYNC_DL_UUID_LEN) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (p[i] != '-') {
                return 0;
            }

        } else if (!((p[i] >= '0' && p[i] <= '9')
                     || (p[i] >= 'a' && p[i] <= 'f')
                     || (p[i] >= 'A' && p[i] <= 'F')))
        {
            return 0;
        }
    }

    return 1;
}


/*
 * The length of the UTF-8 character at p, or 0 when the bytes there are
 * not one (RFC 3629: no overlong form, no surrogate, nothing above
 * U+10FFFF, nothing cut short by last): what PostgreSQL accepts.
 */

size_t
ngx_http_async_dl_utf8_char(u_char *p, u_char *last)
{
    u_char  lo, hi;
    size_t  i, n;

    if (*p < 0x80) {
        return 1;
    }

    lo = 0x80;
    hi = 0xbf;

    if (*p >= 0xc2 && *p <= 0xdf) {
        n = 2;

    } else if (*p >= 0xe0 && *p <= 0xef) {
        n = 3;

        if (*p == 0xe0) {
            lo = 0xa0;                  /* overlong */

        } else if (*p == 0xed) {
            hi = 0x9f;                  /* surrogates */
        }

    } else if (*p >= 0xf0 && *p <= 0xf4) {
        n = 4;

        if (*p == 0xf0) {
            lo = 0x90;                  /* overlong */

        } else if (*p == 0xf4) {
            hi = 0x8f;                  /* above U+10FFFF */
        }

    } else {
        return 0;
    }

    if ((size_t) (last - p) < n || p[1] < lo || p[1] > hi) {
        return 0;
    }

    for (i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf) {
            return 0;
        }
    }

    return n;
}


/* what PostgreSQL takes as text: valid UTF-8 without NUL */

ngx_int_t
ngx_http_async_dl_is_text(u_char *p, size_t len)
{
    size_t   n;
    u_char  *last;

    last = p + len;

    while (p < last) {
        if (*p == '\0') {
            return 0;
        }

        n = ngx_http_async_dl_utf8_char(p, last);
        if (n == 0) {
            return 0;
        }

        p += n;
    }

    return 1;
}


static ngx_int_t
ngx_http_async_dl_refuse(ngx_http_request_t *r, ngx_http_async_dl_input_t *in,
    const char *fmt, ...)
{
    u_char   *p, msg[512];
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(msg, msg + sizeof(msg), fmt, args);
    va_end(args);

    in->error.len = p - msg;
    in->error.data = ngx_pnalloc(r->pool, in->error.len);
    if (in->error.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(in->error.data, msg, in->error.len);

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_async_dl_dump(ngx_http_request_t *r, json_t *json, size_t flags,
    ngx_str_t *out)
{
    char    *s;
    size_t   len;

    s = json_dumps(json, flags);
    if (s == NULL) {
        return NGX_ERROR;
    }

    len = ngx_strlen(s);

    out->data = ngx_pnalloc(r->pool, len + 1);
    if (out->data == NULL) {
        free(s);
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, s, len + 1);
    out->len = len;

    free(s);

    return NGX_OK;
}


/*
 * The initiate's traceparent (W3C Trace Context): the request's, when well
 * formed, as version 00: "00-" 32 hex digits "-" 16 hex digits "-" 2 hex
 * digits, in lower case, neither id all zeros.  A later version (not ff)
 * is read the same way from its first 55 characters, followed by nothing
 * or a "-", and passed on as version 00.  Else a new trace with a new
 * parent id, sampled.  In the request's pool.
 */

ngx_int_t
ngx_http_async_dl_traceparent(ngx_http_request_t *r, ngx_str_t *tp)
{
    u_char      *p, c, ids[24];
    ngx_str_t    h;
    ngx_uint_t   i, zero_trace, zero_parent;

    static const size_t  len = 55;

    tp->data = ngx_pnalloc(r->pool, len);
    if (tp->data == NULL) {
        return NGX_ERROR;
    }

    tp->len = len;

    if (ngx_http_async_dl_header_in(r, "traceparent", &h) == NGX_OK
        && h.len >= len
        && (ngx_strncmp(h.data, "00-", 3) == 0
            ? h.len == len
            : ngx_strncmp(h.data, "ff", 2) != 0
              && (h.len == len || h.data[len] == '-'))
        && h.data[2] == '-' && h.data[35] == '-' && h.data[52] == '-')
    {
        zero_trace = 1;
        zero_parent = 1;

        for (i = 0; i < len; i++) {
            if (i == 2 || i == 35 || i == 52) {
                continue;
            }

            c = h.data[i];

            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
                break;
            }

            if (c != '0') {
                if (i > 2 && i < 35) {
                    zero_trace = 0;

                } else if (i > 35 && i < 52) {
                    zero_parent = 0;
                }
            }
        }

        if (i == len && !zero_trace && !zero_parent) {
            p = ngx_cpymem(tp->data, "00", 2);
            ngx_memcpy(p, h.data + 2, len - 2);
            return NGX_OK;
        }
    }

    /* a new trace: 16 bytes of trace id, 8 of parent id */
    if (RAND_bytes(ids, sizeof(ids)) != 1) {
        return NGX_ERROR;
    }

    ids[0] |= 1;            /* never all zeros */
    ids[16] |= 1;

    p = ngx_cpymem(tp->data, "00-", 3);
    p = ngx_hex_dump(p, ids, 16);
    *p++ = '-';
    p = ngx_hex_dump(p, ids + 16, 8);
    ngx_memcpy(p, "-01", 3);

    return NGX_OK;
}
