/*
 * download: one attempt at a file from its origin.
 *
 * A GET (with Range and If-Range from `offset` when resuming), redirects
 * limited to http and https, the SSRF guard on every address, limits of
 * time, speed and size.  The final response is checked before its first
 * byte (status; on a resume, Content-Range and encoding): then the
 * owner's head() is told whether the body is the rest of the file or the
 * file again from byte 0, and body() gets its bytes.  The end is only
 * recorded (`ended`, and the outcome below) and *wake set: the owner acts
 * from the loop.
 */
#ifndef ADL_DOWNLOAD_H
#define ADL_DOWNLOAD_H

#include <stdint.h>

#include "http.h"
#include "settings.h"

typedef struct {
    const adl_settings_t  *settings;
    adl_http_t            *origin;
    const char            *url;
    const char            *log_job;
    int                    log_idx;
    const char            *traceparent; /* sent to the origin; or "" */
    int64_t                deadline;    /* adl_now_ms() clock */
    /* the final response is the file from byte `from` (0: again from
     * the start, whatever came before); -1 refuses it (out of memory) */
    int                  (*head)(void *data, int64_t from);
    /* its bytes: n taken, CURL_WRITEFUNC_PAUSE, or 0 after
     * adl_download_fail() */
    size_t               (*body)(void *data, const char *p, size_t n);
    void                  *data;
    int                   *wake;
} adl_download_conf_t;

typedef struct {
    adl_download_conf_t    c;
    adl_http_req_t         req;
    struct curl_slist     *headers;
    char                   errbuf[CURL_ERROR_SIZE];
    adl_http_guard_t       guard;       /* the SSRF check's refusal */
    int64_t                offset;      /* Range start, this attempt */
    int64_t                from;        /* where its body starts */
    int64_t                got;         /* body bytes taken */
    int                    checked;     /* the final response's head */

    /* kept across attempts */
    int64_t                size;        /* announced, or -1 */
    int                    encoded;     /* decoded by curl: no Range */
    char                   validator[200];      /* for If-Range */
    char                   content_type[200];

    /* the response's headers */
    char                   h_retry_after[64];
    char                   h_content_range[128];
    char                   h_etag[200];
    char                   h_last_modified[64];
    char                   h_content_encoding[64];

    /* the outcome, once `ended` */
    int                    ended;
    int                    ok;
    const char            *code;        /* DOWNLOAD_FAILED, HTTP_STATUS... */
    int                    transient;
    int64_t                retry_after; /* ms, or -1 */
    long                   http_code;   /* the final answer's, or 0 */
    char                   msg[300];
} adl_download_t;

void adl_download_init(adl_download_t *d, const adl_download_conf_t *c);

/* An attempt from byte `offset` (0: the whole file).  -1 when it could
 * not start: it has ended then (transient, d->msg), as if it had
 * failed. */
int adl_download_start(adl_download_t *d, int64_t offset);

/* Stops the attempt under way, if any; from the loop only. */
void adl_download_stop(adl_download_t *d);

/* Under way (started, not yet ended). */
int adl_download_running(const adl_download_t *d);

/* The body gets its bytes again (it paused); from the loop only. */
void adl_download_unpause(adl_download_t *d);

/* For body() and head(): the attempt fails with code (-1 returned). */
int adl_download_fail(adl_download_t *d, const char *code, int transient,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif /* ADL_DOWNLOAD_H */
