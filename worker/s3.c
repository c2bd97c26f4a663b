/*
 * s3: builds, signs and starts one storage request on the "storage" multi
 * handle, and reads its outcome (status, ETag, UploadId, S3 <Error>).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "s3.h"

#define S3_MAX_RESPONSE  65536

struct adl_s3_s {
    const adl_settings_t  *settings;
    adl_http_t            *http;
    adl_sigv4_creds_t      creds;
};

static const char  *op_names[] = { "none", "PutObject",
    "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
    "AbortMultipartUpload", "DeleteObject", "GetObject" };

#define S3_EURL    (-1)
#define S3_ESIGN   (-2)
#define S3_ENOMEM  (-3)

adl_s3_t *
adl_s3_create(const adl_settings_t *s, adl_http_t *storage)
{
    adl_s3_t  *s3 = calloc(1, sizeof(adl_s3_t));

    if (s3 == NULL) {
        return NULL;
    }
    s3->settings = s;
    s3->http = storage;
    s3->creds.access_key = s->s3_access_key;
    s3->creds.secret_key = s->s3_secret_key;
    s3->creds.region = s->s3_region;
    s3->creds.service = "s3";
    return s3;
}

void
adl_s3_destroy(adl_s3_t *s3)
{
    free(s3);
}


/* --- curl callbacks --------------------------------------------------- */

static size_t
read_cb(char *buf, size_t size, size_t nmemb, void *userp)
{
    adl_s3_req_t  *r = userp;
    size_t         n = size * nmemb, left = r->body_len - r->body_off;

    if (n > left) {
        n = left;
    }
    memcpy(buf, r->body + r->body_off, n);
    r->body_off += n;
    return n;
}

static int
seek_cb(void *userp, curl_off_t offset, int origin)
{
    adl_s3_req_t  *r = userp;

    if (origin != SEEK_SET || offset < 0 || (size_t) offset > r->body_len) {
        return CURL_SEEKFUNC_CANTSEEK;
    }
    r->body_off = (size_t) offset;
    return CURL_SEEKFUNC_OK;
}

static size_t
write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    adl_s3_req_t  *r = userp;
    size_t         n = size * nmemb, keep = n;
    long           status = 0;
    char          *p;

    if (r->op == S3_GET) {
        curl_easy_getinfo(r->http.easy, CURLINFO_RESPONSE_CODE, &status);
    }
    if (status >= 200 && status <= 299) {
        /* the object's bytes, into the owner's buffer */
        if (n > r->into_cap - r->into_len) {
            return 0;
        }
        memcpy(r->into + r->into_len, data, n);
        r->into_len += n;
        return n;
    }
    if (r->resp_len + keep > S3_MAX_RESPONSE) {
        keep = S3_MAX_RESPONSE - r->resp_len;
    }
    if (keep > 0) {
        p = realloc(r->resp, r->resp_len + keep + 1);
        if (p == NULL) {
            return 0;
        }
        r->resp = p;
        memcpy(r->resp + r->resp_len, data, keep);
        r->resp_len += keep;
        r->resp[r->resp_len] = '\0';
    }
    return n;
}

static void
trim_value(const char **v, size_t *vlen)
{
    while (*vlen > 0 && (**v == ' ' || **v == '\t')) {
        (*v)++;
        (*vlen)--;
    }
    while (*vlen > 0 && ((*v)[*vlen - 1] == '\r' || (*v)[*vlen - 1] == '\n'
                         || (*v)[*vlen - 1] == ' ' || (*v)[*vlen - 1] == '\t'))
    {
        (*vlen)--;
    }
}

static size_t
header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    adl_s3_req_t  *r = userp;
    size_t         n = size * nmemb, vlen;
    const char    *v;

    if (n > 5 && strncasecmp(data, "HTTP/", 5) == 0) {
        r->retry_after[0] = '\0';      /* a new answer (after a 100) */
        return n;
    }
    if (n > 5 && strncasecmp(data, "ETag:", 5) == 0) {
        v = data + 5;
        vlen = n - 5;
        trim_value(&v, &vlen);
        if (vlen < sizeof(r->etag)) {
            memcpy(r->etag, v, vlen);
            r->etag[vlen] = '\0';
        }
    } else if (n > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
        v = data + 12;
        vlen = n - 12;
        trim_value(&v, &vlen);
        if (vlen < sizeof(r->retry_after)) {
            memcpy(r->retry_after, v, vlen);
            r->retry_after[vlen] = '\0';
        }
    }
    return n;
}

/* The text of <tag>...</tag> in the response body, or 0. */
static int
xml_value(const char *body, const char *tag, char *out, size_t len)
{
    char         open[64], close[64];
    const char  *b, *e;

    if (body == NULL) {
        return 0;
    }
    snprintf(open, sizeof(open), "<%s>", tag);
    snprintf(close, sizeof(close), "</%s>", tag);
    b = strstr(body, open);
    if (b == NULL) {
        return 0;
    }
    b += strlen(open);
    e = strstr(b, close);
    if (e == NULL || (size_t) (e - b) >= len) {
        return 0;
    }
    memcpy(out, b, (size_t) (e - b));
    out[e - b] = '\0';
    return 1;
}

static void
release(adl_s3_req_t *r)
{
    if (r->http.easy != NULL) {
        curl_easy_cleanup(r->http.easy);
        r->http.easy = NULL;
    }
    curl_slist_free_all(r->headers);
    r->headers = NULL;
    free(r->resp);
    r->resp = NULL;
    r->resp_len = 0;
}

static void
done(adl_http_req_t *http, CURLcode rc)
{
    adl_s3_req_t  *r = (adl_s3_req_t *) (void *) http;
    char           code[64] = "", msg[160] = "";
    const char    *op = op_names[r->op];

    curl_easy_getinfo(r->http.easy, CURLINFO_RESPONSE_CODE, &r->status);
    r->reached = rc != CURLE_COULDNT_CONNECT && rc != CURLE_COULDNT_RESOLVE_HOST
                 && rc != CURLE_COULDNT_RESOLVE_PROXY;

    if (rc != CURLE_OK) {
        snprintf(r->error, sizeof(r->error), "%s: %s", op,
                 r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
        r->transient = rc != CURLE_ABORTED_BY_CALLBACK;
        goto out;
    }

    if (r->op == S3_ABORT && (r->status == 405 || r->status == 501)) {
        /* stores that cannot abort (s3rver): the parts just linger */
        adl_log_debug(NULL, -1, "storage: %s answered %ld, ignored", op,
                      r->status);
        r->ok = 1;
        goto out;
    }
    if ((r->op == S3_DELETE || r->op == S3_ABORT) && r->status == 404) {
        /* gone already (an upload completed or aborted: NoSuchUpload) */
        r->ok = 1;
        goto out;
    }

    if (r->status < 200 || r->status > 299
        || (r->op == S3_COMPLETE && xml_value(r->resp, "Code", code,
                                              sizeof(code))))
    {
        xml_value(r->resp, "Code", code, sizeof(code));
        xml_value(r->resp, "Message", msg, sizeof(msg));
        snprintf(r->error, sizeof(r->error), "%s: HTTP %ld %s%s%s", op,
                 r->status, code, msg[0] ? ": " : "", msg);
        r->transient = r->status >= 500 || r->status == 408
                       || r->status == 429
                       || strcmp(code, "InternalError") == 0
                       || strcmp(code, "SlowDown") == 0
                       || strcmp(code, "RequestTimeout") == 0;
        goto out;
    }

    if (r->op == S3_CREATE
        && !xml_value(r->resp, "UploadId", r->new_upload_id,
                      sizeof(r->new_upload_id)))
    {
        snprintf(r->error, sizeof(r->error), "%s: no UploadId in the "
                 "answer", op);
        goto out;
    }
    if (r->op == S3_GET && r->status != 206
        && !(r->status == 200 && r->range_from == 0))
    {
        snprintf(r->error, sizeof(r->error), "%s: HTTP %ld", op, r->status);
        goto out;
    }
    if (r->op == S3_PART && r->etag[0] == '\0') {
        snprintf(r->error, sizeof(r->error), "%s: no ETag in the answer",
                 op);
        goto out;
    }
    r->ok = 1;

out:
    if (!r->ok) {
        adl_metrics.storage_errors++;
    }
    release(r);
    r->done(r);
}


/* --- building a request ------------------------------------------------ */

static int
add_header(struct curl_slist **headers, const char *name, const char *value)
{
    char                hdr[1400];
    struct curl_slist  *l;

    snprintf(hdr, sizeof(hdr), "%s: %s", name, value);
    l = curl_slist_append(*headers, hdr);
    if (l == NULL) {
        return -1;
    }
    *headers = l;
    return 0;
}

/*
 * The URL of key with the query q into url, and the SigV4 headers of
 * method on it (over q and the signed headers sh, which the caller sends;
 * UNSIGNED-PAYLOAD) appended to *headers, which the caller frees (also on
 * failure).  0, or S3_EURL (no URL for the key), S3_ESIGN, S3_ENOMEM.
 */
static int
s3_sign(adl_s3_t *s3, const char *method, const char *key,
    const adl_kv_t *q, size_t nq, const adl_kv_t *sh, size_t nsh,
    char *url, size_t len, struct curl_slist **headers)
{
    const adl_settings_t  *s = s3->settings;
    char                   scheme[8], host[512], path[2048], epath[6144];
    char                   query[1200], auth[1024], date[17];
    adl_sigv4_req_t        sr;

    if (adl_s3_locate(s->s3_endpoint, s->s3_bucket, s->s3_addressing == 1,
                      key, scheme, sizeof(scheme), host, sizeof(host),
                      path, sizeof(path)) != 0
        || adl_uri_encode(path, strlen(path), epath, sizeof(epath), 1) < 0
        || adl_query_string(q, nq, query, sizeof(query)) < 0)
    {
        return S3_EURL;
    }
    snprintf(url, len, "%s://%s%s%s%s", scheme, host, epath, nq ? "?" : "",
             query);

    memset(&sr, 0, sizeof(sr));
    sr.method = method;
    sr.host = host;
    sr.path = path;
    sr.query = q;
    sr.nquery = nq;
    sr.headers = sh;
    sr.nheaders = nsh;
    sr.payload_hash = ADL_UNSIGNED_PAYLOAD;
    sr.now = time(NULL);
    if (adl_sigv4_sign_headers(&s3->creds, &sr, auth, sizeof(auth), date)
        != 0)
    {
        return S3_ESIGN;
    }

    if (add_header(headers, "Authorization", auth) != 0
        || add_header(headers, "x-amz-date", date) != 0
        || add_header(headers, "x-amz-content-sha256", ADL_UNSIGNED_PAYLOAD)
           != 0)
    {
        return S3_ENOMEM;
    }
    return 0;
}

/* adl_http_easy() for the storage, with the timeouts of the settings;
 * NULL when out of memory. */
static CURL *
s3_easy(adl_s3_t *s3, const char *url, struct curl_slist *headers,
    char *errbuf)
{
    const adl_settings_t  *s = s3->settings;
    CURL                  *e;

    e = adl_http_easy(url, headers, errbuf, s->connect_timeout);
    if (e == NULL) {
        return NULL;
    }
    if (curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME,
                            (long) (s->idle_timeout / 1000)) != CURLE_OK)
    {
        curl_easy_cleanup(e);
        return NULL;
    }
    return e;
}

int
adl_s3_start(adl_s3_t *s3, adl_s3_req_t *r)
{
    char                   url[8192], hdr[1400], partno[16];
    adl_kv_t               q[2], sh[1];
    size_t                 nq = 0, nsh = 0;
    const char            *method;
    CURL                  *e;
    int                    upload = 0, post = 0;

    r->ok = 0;
    r->transient = 0;
    r->reached = 0;
    r->status = 0;
    r->etag[0] = '\0';
    r->retry_after[0] = '\0';
    r->new_upload_id[0] = '\0';
    r->error[0] = '\0';
    r->errbuf[0] = '\0';
    r->body_off = 0;
    r->resp = NULL;
    r->resp_len = 0;
    r->headers = NULL;

    switch (r->op) {
    case S3_PUT:
        method = "PUT";
        upload = 1;
        break;
    case S3_CREATE:
        method = "POST";
        post = 1;
        q[nq++] = (adl_kv_t) { "uploads", "" };
        break;
    case S3_PART:
        method = "PUT";
        upload = 1;
        snprintf(partno, sizeof(partno), "%d", r->part_number);
        q[nq++] = (adl_kv_t) { "partNumber", partno };
        q[nq++] = (adl_kv_t) { "uploadId", r->upload_id };
        break;
    case S3_COMPLETE:
        method = "POST";
        post = 1;
        q[nq++] = (adl_kv_t) { "uploadId", r->upload_id };
        break;
    case S3_ABORT:
        method = "DELETE";
        q[nq++] = (adl_kv_t) { "uploadId", r->upload_id };
        break;
    case S3_DELETE:
        method = "DELETE";
        break;
    case S3_GET:
        method = "GET";
        r->into_len = 0;
        break;
    default:
        snprintf(r->error, sizeof(r->error), "bad storage operation");
        return -1;
    }

    if ((r->op == S3_PUT || r->op == S3_CREATE) && r->content_type) {
        sh[nsh++] = (adl_kv_t) { "content-type", r->content_type };
    } else if (r->op == S3_COMPLETE) {
        sh[nsh++] = (adl_kv_t) { "content-type", "application/xml" };
    }

    switch (s3_sign(s3, method, r->key, q, nq, sh, nsh, url, sizeof(url),
                        &r->headers))
    {
    case 0:
        break;
    case S3_EURL:
        snprintf(r->error, sizeof(r->error), "%s: cannot build the URL for "
                 "\"%s\"", op_names[r->op], r->key);
        release(r);
        return -1;
    case S3_ESIGN:
        snprintf(r->error, sizeof(r->error), "%s: signing failed",
                 op_names[r->op]);
        release(r);
        return -1;
    default:
        goto nomem;
    }

#define ADD_HEADER(...)                                                      \
    do {                                                                     \
        struct curl_slist  *l_;                                              \
        snprintf(hdr, sizeof(hdr), __VA_ARGS__);                             \
        l_ = curl_slist_append(r->headers, hdr);                             \
        if (l_ == NULL) {                                                    \
            goto nomem;                                                      \
        }                                                                    \
        r->headers = l_;                                                     \
    } while (0)

    ADD_HEADER("Expect:");
    if (r->op == S3_GET) {
        ADD_HEADER("Range: bytes=%lld-%lld", (long long) r->range_from,
                   (long long) r->range_to);
    }
    if (nsh) {
        ADD_HEADER("Content-Type: %s", sh[0].value);
    } else if (post) {
        ADD_HEADER("Content-Type:");
    }
#undef ADD_HEADER

    e = s3_easy(s3, url, r->headers, r->errbuf);
    if (e == NULL) {
        goto nomem;
    }
    r->http.easy = e;
    r->http.done = done;

    if (r->no_speed_check
        && curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 0L) != CURLE_OK)
    {
        goto nomem;
    }

    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);

    if (upload && r->read != NULL) {
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, r->read);
        curl_easy_setopt(e, CURLOPT_READDATA, r->read_data);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
                         (curl_off_t) r->body_len);
    } else if (upload) {
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
        curl_easy_setopt(e, CURLOPT_READDATA, r);
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, seek_cb);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, r);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
                         (curl_off_t) r->body_len);
    } else if (r->op == S3_GET) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (post) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body ? r->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t) (r->body ? r->body_len : 0));
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(e, CURLOPT_NOBODY, 0L);
    }

    if (adl_http_start(s3->http, &r->http) != 0) {
        snprintf(r->error, sizeof(r->error), "%s: cannot start",
                 op_names[r->op]);
        r->transient = 1;           /* out of memory in libcurl */
        release(r);
        return -1;
    }
    adl_log_debug(NULL, -1, "storage: %s %s", op_names[r->op], url);
    return 0;

nomem:
    snprintf(r->error, sizeof(r->error), "out of memory");
    r->transient = 1;
    release(r);
    return -1;
}

void
adl_s3_cancel(adl_s3_t *s3, adl_s3_req_t *r)
{
    if (r->http.easy == NULL) {
        return;
    }
    adl_http_stop(s3->http, &r->http);
    release(r);
}
