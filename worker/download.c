/*
 * download: one attempt at a file from its origin (see download.h).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "backoff.h"
#include "clock.h"
#include "download.h"
#include "log.h"

#define MAX_REDIRECTS     5L

#define DLOG(level, d, ...)  adl_log(level, (d)->c.log_job, (d)->c.log_idx, \
                                     __VA_ARGS__)

static void
trim_copy(char *dst, size_t len, const char *v, size_t vlen)
{
    while (vlen > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }
    while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n'
                        || v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
    {
        vlen--;
    }
    if (vlen >= len) {
        vlen = len - 1;
    }
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
}

void
adl_download_init(adl_download_t *d, const adl_download_conf_t *c)
{
    memset(d, 0, sizeof(*d));
    d->c = *c;
    d->size = -1;
    d->retry_after = -1;
    d->http_code = 0;
    snprintf(d->content_type, sizeof(d->content_type),
             "application/octet-stream");
}

int
adl_download_fail(adl_download_t *d, const char *code, int transient,
    const char *fmt, ...)
{
    va_list  ap;

    d->code = code;
    d->transient = transient;
    va_start(ap, fmt);
    vsnprintf(d->msg, sizeof(d->msg), fmt, ap);
    va_end(ap);
    return -1;
}

static size_t
header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    adl_download_t  *d = userp;
    size_t           n = size * nmemb;

#define HDR(name, field)                                                     \
    if (n > sizeof(name) - 1                                                 \
        && strncasecmp(data, name, sizeof(name) - 1) == 0)                   \
    {                                                                        \
        trim_copy(d->field, sizeof(d->field), data + sizeof(name) - 1,       \
                  n - (sizeof(name) - 1));                                   \
        return n;                                                            \
    }

    if (n > 5 && strncmp(data, "HTTP/", 5) == 0) {
        /* a new response (after a redirect or 100): forget the last one */
        d->h_retry_after[0] = '\0';
        d->h_content_range[0] = '\0';
        d->h_etag[0] = '\0';
        d->h_last_modified[0] = '\0';
        d->h_content_encoding[0] = '\0';
        return n;
    }
    HDR("Retry-After:", h_retry_after)
    HDR("Content-Range:", h_content_range)
    HDR("ETag:", h_etag)
    HDR("Last-Modified:", h_last_modified)
    HDR("Content-Encoding:", h_content_encoding)
#undef HDR
    return n;
}

/* The final response's status and headers, before its first byte. */
static int
check_response(adl_download_t *d)
{
    const adl_settings_t  *s = d->c.settings;
    long                   code = 0;
    curl_off_t             cl = -1;
    char                  *ct = NULL;
    int                    n, enc;
    long long              start, end, total;

    d->checked = 1;
    enc = d->h_content_encoding[0] != '\0'
          && strcasecmp(d->h_content_encoding, "identity") != 0;
    curl_easy_getinfo(d->req.easy, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(d->req.easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    d->http_code = code;

    if (code == 206 && d->offset > 0) {
        if (enc) {
            /* a range of the encoded bytes: nothing to do with the
             * decoded ones kept so far; the next attempt starts over */
            d->encoded = 1;
            return adl_download_fail(d, "DOWNLOAD_FAILED", 1, "resume at "
                                     "%lld answered with Content-Encoding "
                                     "%s", (long long) d->offset,
                                     d->h_content_encoding);
        }
        /* the rest of the same file: same start, and the same total when
         * the first answer announced one (else another version of it) */
        n = sscanf(d->h_content_range, "bytes %lld-%lld/%lld", &start, &end,
                   &total);
        if (n < 2 || start != d->offset
            || (d->size >= 0 && (n != 3 || total != d->size)))
        {
            return adl_download_fail(d, "DOWNLOAD_FAILED", 1, "resume at "
                                     "%lld answered with Content-Range "
                                     "\"%s\"", (long long) d->offset,
                                     d->h_content_range);
        }
        DLOG(ADL_LOG_INFO, d, "resuming at byte %lld", (long long) start);
        d->from = d->offset;
        if (d->c.head(d->c.data, d->offset) != 0) {
            return adl_download_fail(d, "DOWNLOAD_FAILED", 1,
                                     "out of memory");
        }
        return 0;
    }

    if (code != 200 && code != 203) {
        int  transient = code >= 500 || code == 408 || code == 429;

        return adl_download_fail(d, "HTTP_STATUS", transient,
                                 "the origin answered HTTP %ld", code);
    }
    if (d->offset > 0) {
        DLOG(ADL_LOG_INFO, d, "origin ignored the Range request: "
             "starting again from byte 0");
    }
    d->from = 0;

    /* a content-encoded answer is decoded (what users download is the
     * file, not its encoding): its Content-Length is the encoded size,
     * so the size is known at the end only, and a Range would count
     * encoded bytes: a later attempt starts over from byte 0 */
    d->encoded = enc;
    d->size = cl >= 0 && !enc ? (int64_t) cl : -1;
    if (s->max_file_size > 0 && d->size > s->max_file_size) {
        return adl_download_fail(d, "TOO_LARGE", 0, "the file is %lld bytes,"
                                 " more than the %lld allowed",
                                 (long long) d->size,
                                 (long long) s->max_file_size);
    }

    curl_easy_getinfo(d->req.easy, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(d->content_type, sizeof(d->content_type), "%s",
             ct && ct[0] ? ct : "application/octet-stream");

    /* a validator for a later If-Range: a strong ETag, else the date */
    if (d->h_etag[0] && strncmp(d->h_etag, "W/", 2) != 0) {
        snprintf(d->validator, sizeof(d->validator), "%s", d->h_etag);
    } else {
        snprintf(d->validator, sizeof(d->validator), "%s",
                 d->h_last_modified);
    }
    if (d->c.head(d->c.data, 0) != 0) {
        return adl_download_fail(d, "DOWNLOAD_FAILED", 1, "out of memory");
    }
    return 0;
}

static size_t
write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    adl_download_t        *d = userp;
    const adl_settings_t  *s = d->c.settings;
    size_t                 n = size * nmemb;

    if (d->code != NULL) {
        return 0;                   /* failed already */
    }
    if (!d->checked && check_response(d) != 0) {
        return 0;
    }
    if (s->max_file_size > 0
        && d->from + d->got + (int64_t) n > s->max_file_size)
    {
        adl_download_fail(d, "TOO_LARGE", 0, "the file is larger than the "
                          "%lld bytes allowed", (long long) s->max_file_size);
        return 0;
    }
    n = d->c.body(d->c.data, data, n);
    if (n != CURL_WRITEFUNC_PAUSE) {
        d->got += (int64_t) n;
    }
    return n;
}

/* What failed, from libcurl's code. */
static void
classify(adl_download_t *d, CURLcode rc)
{
    const adl_settings_t  *s = d->c.settings;
    const char            *what = d->errbuf[0] ? d->errbuf
                                               : curl_easy_strerror(rc);

    d->code = "DOWNLOAD_FAILED";
    d->transient = 0;
    snprintf(d->msg, sizeof(d->msg), "%s", what);
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
        if (d->guard.blocked) {
            d->code = "BLOCKED_ADDRESS";
            snprintf(d->msg, sizeof(d->msg), "%s", d->guard.msg);
            break;
        }
        d->transient = 1;
        break;
    case CURLE_OPERATION_TIMEDOUT:
        if (adl_now_ms() + 100 >= d->c.deadline) {
            d->code = "TIMEOUT";
            snprintf(d->msg, sizeof(d->msg), "the job's deadline passed");
            break;
        }
        d->transient = 1;
        break;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
        d->transient = 1;
        break;
    case CURLE_FILESIZE_EXCEEDED:
        d->code = "TOO_LARGE";
        snprintf(d->msg, sizeof(d->msg), "the file is larger than the %lld "
                 "bytes allowed", (long long) s->max_file_size);
        break;
    case CURLE_TOO_MANY_REDIRECTS:
        snprintf(d->msg, sizeof(d->msg), "too many redirects (more than "
                 "%ld)", MAX_REDIRECTS);
        break;
    case CURLE_UNSUPPORTED_PROTOCOL:
        snprintf(d->msg, sizeof(d->msg), "refused: only http and https are "
                 "allowed (%s)", what);
        break;
    default:
        break;
    }
}

static void
release(adl_download_t *d)
{
    if (d->req.easy != NULL) {
        curl_easy_cleanup(d->req.easy);
        d->req.easy = NULL;
    }
    curl_slist_free_all(d->headers);
    d->headers = NULL;
}

/* libcurl is done with the attempt (after curl_multi_socket_action
 * returned, the handle out of the multi): the outcome is recorded */
static void
done_cb(adl_http_req_t *req, CURLcode rc)
{
    adl_download_t  *d = (adl_download_t *) ((char *) req
                                             - offsetof(adl_download_t, req));

    if (rc == CURLE_OK && d->code == NULL && !d->checked) {
        check_response(d);          /* an empty body */
    }
    if (d->code != NULL) {
        /* failed in a callback: its reason */
        if (strcmp(d->code, "HTTP_STATUS") == 0) {
            d->retry_after = adl_retry_after_ms(d->h_retry_after);
        }
    } else if (rc == CURLE_OK) {
        d->ok = 1;
    } else {
        classify(d, rc);
    }
    release(d);
    d->ended = 1;
    *d->c.wake = 1;
}

/* An attempt that could not start ends at once, as one that failed for
 * a while: the owner retries it after a backoff. */
static int
not_started(adl_download_t *d, const char *why)
{
    release(d);
    adl_download_fail(d, "DOWNLOAD_FAILED", 1, "%s", why);
    d->ended = 1;
    *d->c.wake = 1;
    return -1;
}

int
adl_download_start(adl_download_t *d, int64_t offset)
{
    const adl_settings_t  *s = d->c.settings;
    char                   hdr[320];
    struct curl_slist     *l;
    CURL                  *e;
    int64_t                left = d->c.deadline - adl_now_ms();

    d->checked = 0;
    d->ended = 0;
    d->ok = 0;
    d->code = NULL;
    d->transient = 0;
    d->retry_after = -1;
    d->http_code = 0;
    d->msg[0] = '\0';
    d->errbuf[0] = '\0';
    d->offset = offset;
    d->from = offset;
    d->got = 0;

    if (d->c.traceparent != NULL && d->c.traceparent[0] != '\0') {
        snprintf(hdr, sizeof(hdr), "traceparent: %s", d->c.traceparent);
        l = curl_slist_append(d->headers, hdr);
        if (l == NULL) {
            return not_started(d, "out of memory");
        }
        d->headers = l;
    }
    if (offset > 0) {
        snprintf(hdr, sizeof(hdr), "Range: bytes=%lld-", (long long) offset);
        l = curl_slist_append(d->headers, hdr);
        if (l != NULL) {
            d->headers = l;
        }
        if (d->validator[0]) {
            snprintf(hdr, sizeof(hdr), "If-Range: %s", d->validator);
            l = curl_slist_append(d->headers, hdr);
            if (l != NULL) {
                d->headers = l;
            }
        }
    }

    e = adl_http_origin_easy(s, d->c.url, d->headers, &d->guard, d->errbuf);
    if (e == NULL) {
        return not_started(d, "out of memory");
    }
    d->req.easy = e;
    d->req.done = done_cb;

    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, MAX_REDIRECTS);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) (left > 1 ? left : 1));
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME,
                     (long) (s->idle_timeout / 1000));
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "async-dl-worker");
    /* ask for the file as it is, and decode whatever encoding comes all
     * the same (one curl cannot decode fails the file) */
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "identity");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, d);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, d);
    if (s->max_file_size > 0) {
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                         (curl_off_t) s->max_file_size);
    }

    if (adl_http_start(d->c.origin, &d->req) != 0) {
        return not_started(d, "cannot start");
    }
    return 0;
}

void
adl_download_stop(adl_download_t *d)
{
    if (d->req.easy != NULL) {
        adl_http_stop(d->c.origin, &d->req);
    }
    release(d);
    d->ended = 0;
}

int
adl_download_running(const adl_download_t *d)
{
    return d->req.easy != NULL;
}

void
adl_download_unpause(adl_download_t *d)
{
    adl_http_unpause(&d->req);
}
