/*
 * http: a libcurl multi handle driven by the worker's epoll loop, as in
 * curl's docs/examples/ephiperfifo.c: CURLMOPT_SOCKETFUNCTION registers
 * curl's sockets in epoll, CURLMOPT_TIMERFUNCTION arms a timerfd, and
 * finished transfers are handed back in one place, check_multi_info().
 *
 * The worker runs two: "origin" (downloads; every connection checked by
 * the SSRF rules) and "storage" (S3).  Separate multi handles mean
 * separate connection caches: a download can never reuse a connection
 * to the (trusted, often loopback) storage endpoint.
 */
#ifndef ADL_HTTP_H
#define ADL_HTTP_H

#include <stdint.h>
#include <curl/curl.h>

#include "settings.h"

typedef struct adl_http_s      adl_http_t;
typedef struct adl_http_req_s  adl_http_req_t;

/* Embedded in whatever owns an easy handle; set as CURLOPT_PRIVATE. */
struct adl_http_req_s {
    CURL   *easy;
    void  (*done)(adl_http_req_t *req, CURLcode rc);
};

adl_http_t *adl_http_create(int epfd, unsigned tag, int max_host_conns);
void adl_http_destroy(adl_http_t *h);

/* Adds req->easy (its CURLOPT_PRIVATE is set to req).  -1 on failure. */
int adl_http_start(adl_http_t *h, adl_http_req_t *req);

/* Removes a running request without calling done; easy stays the
 * caller's.  Safe to call for a request that is not running. */
void adl_http_stop(adl_http_t *h, adl_http_req_t *req);

/* Neither may run inside a libcurl callback (a write or read callback,
 * an unpause): an error is logged, and a start refused.  Callbacks record what
 * happened; the loop acts on it.  done() runs after libcurl returned, and
 * may start and stop requests. */

/* Unpauses a request paused by its callback (its callbacks may run from
 * here, with data that was waiting). */
void adl_http_unpause(adl_http_req_t *req);

/* The epoll tags: socket events carry (tag << 32 | fd), the timer
 * (tag + 1) << 32. */
void adl_http_socket_event(adl_http_t *h, int fd, uint32_t events);
void adl_http_timer_event(adl_http_t *h);

/*
 * A new easy handle as every request of the worker starts: url and
 * headers, no proxy, no signals, errors into errbuf, a connect timeout of
 * connect_ms.  NULL when out of memory.
 */
CURL *adl_http_easy(const char *url, struct curl_slist *headers,
    char *errbuf, int64_t connect_ms);

/* What the SSRF check of an origin request refused, if anything. */
typedef struct {
    const adl_settings_t  *settings;    /* the rules: set by origin_easy */
    int                    blocked;
    char                   msg[160];    /* "refused to connect to A: why" */
} adl_http_guard_t;

/*
 * adl_http_easy() for a request to an untrusted origin (a download, a
 * callback), to run on the "origin" multi handle: the connect timeout of
 * s, http and https only, and every connection it opens checked by the
 * SSRF rules of s (adl_ssrf_allowed); a refusal is recorded in g, which
 * is reset here and must outlive the handle.  The caller sets the rest
 * (redirects, timeouts, callbacks).  NULL when out of memory.
 */
CURL *adl_http_origin_easy(const adl_settings_t *s, const char *url,
    struct curl_slist *headers, adl_http_guard_t *g, char *errbuf);

#endif /* ADL_HTTP_H */
