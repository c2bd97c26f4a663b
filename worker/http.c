/*
 * http: libcurl multi on epoll + timerfd (ephiperfifo.c's shape), and the
 * SSRF-checked easy handles of origin requests.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "ssrf.h"

struct adl_http_s {
    CURLM     *multi;
    int        epfd;
    int        timerfd;
    unsigned   tag;
};

/* Inside libcurl's data callbacks (curl_multi_socket_action, an unpause):
 * no request of any multi handle may start or stop there.  One process,
 * one thread: one counter for both multi handles. */
static int  callback_depth;

/* after libcurl failed in socket_action (out of memory) */
#define RETRY_MS  100

static void check_multi_info(adl_http_t *h);

static int
socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
    adl_http_t          *h = userp;
    struct epoll_event   ev;
    uintptr_t            known = (uintptr_t) sockp;

    (void) easy;

    if (what == CURL_POLL_REMOVE) {
        if (known) {
            epoll_ctl(h->epfd, EPOLL_CTL_DEL, fd, NULL);
            curl_multi_assign(h->multi, fd, NULL);
        }
        return 0;
    }

    memset(&ev, 0, sizeof(ev));
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0)
                | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    ev.data.u64 = ((uint64_t) h->tag << 32) | (uint32_t) fd;

    if (epoll_ctl(h->epfd, known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev)
        != 0)
    {
        /* curl may hand us a socket it re-created with the same number */
        if (errno == ENOENT) {
            epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev);
        } else if (errno == EEXIST) {
            epoll_ctl(h->epfd, EPOLL_CTL_MOD, fd, &ev);
        } else {
            adl_log_error(NULL, -1, "epoll_ctl(%d): %s", fd,
                          strerror(errno));
        }
    }
    if (!known) {
        curl_multi_assign(h->multi, fd, (void *) (uintptr_t) 1);
    }
    return 0;
}

static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    adl_http_t         *h = userp;
    struct itimerspec   its;

    (void) multi;

    memset(&its, 0, sizeof(its));
    if (timeout_ms > 0) {
        its.it_value.tv_sec = timeout_ms / 1000;
        its.it_value.tv_nsec = (timeout_ms % 1000) * 1000000;
    } else if (timeout_ms == 0) {
        its.it_value.tv_nsec = 1;       /* as soon as possible */
    }
    /* -1: disarm (all zero) */
    timerfd_settime(h->timerfd, 0, &its, NULL);
    return 0;
}

adl_http_t *
adl_http_create(int epfd, unsigned tag, int max_host_conns)
{
    adl_http_t          *h;
    struct epoll_event   ev;

    h = calloc(1, sizeof(adl_http_t));
    if (h == NULL) {
        return NULL;
    }
    h->epfd = epfd;
    h->tag = tag;
    h->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    h->multi = curl_multi_init();
    if (h->timerfd < 0 || h->multi == NULL) {
        goto failed;
    }

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = (uint64_t) (tag + 1) << 32;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, h->timerfd, &ev) != 0) {
        goto failed;
    }

    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    if (max_host_conns > 0) {
        curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                          (long) max_host_conns);
    }
    return h;

failed:
    adl_http_destroy(h);
    return NULL;
}

void
adl_http_destroy(adl_http_t *h)
{
    if (h == NULL) {
        return;
    }
    if (h->multi != NULL) {
        curl_multi_cleanup(h->multi);
    }
    if (h->timerfd >= 0) {
        close(h->timerfd);
    }
    free(h);
}

static int
inside_callback(const char *what)
{
    if (callback_depth == 0) {
        return 0;
    }
    adl_log_error(NULL, -1, "%s inside a libcurl callback", what);
    return 1;
}

int
adl_http_start(adl_http_t *h, adl_http_req_t *req)
{
    CURLMcode  mc;

    if (inside_callback("starting a request")) {
        return -1;
    }
    curl_easy_setopt(req->easy, CURLOPT_PRIVATE, req);
    mc = curl_multi_add_handle(h->multi, req->easy);
    if (mc != CURLM_OK) {
        adl_log_error(NULL, -1, "curl_multi_add_handle: %s",
                      curl_multi_strerror(mc));
        return -1;
    }
    return 0;
}

void
adl_http_stop(adl_http_t *h, adl_http_req_t *req)
{
    if (req->easy == NULL) {
        return;
    }
    /* logged, not refused: the caller frees the handle next, and that
     * would take it out of the multi handle all the same */
    inside_callback("stopping a request");
    curl_multi_remove_handle(h->multi, req->easy);
}

void
adl_http_unpause(adl_http_req_t *req)
{
    if (req->easy == NULL) {
        return;
    }
    /* may deliver data at once: the callbacks run from here */
    callback_depth++;
    curl_easy_pause(req->easy, CURLPAUSE_CONT);
    callback_depth--;
}

static void
check_multi_info(adl_http_t *h)
{
    CURLMsg         *msg;
    int              left;
    adl_http_req_t  *req;
    CURL            *easy;
    CURLcode         rc;

    while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        easy = msg->easy_handle;
        rc = msg->data.result;
        req = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &req);
        curl_multi_remove_handle(h->multi, easy);
        if (req != NULL) {
            req->done(req, rc);
        }
    }
}

/* libcurl's state machines for a socket event or the timer.  When it
 * fails (out of memory in the middle of a transfer) it may not have armed
 * its timer again, and a transfer with no socket event coming would stall
 * until its deadline: the timer is armed here, to drive them again soon. */
static void
socket_action(adl_http_t *h, curl_socket_t fd, int action)
{
    int        running;
    CURLMcode  mc;

    callback_depth++;
    mc = curl_multi_socket_action(h->multi, fd, action, &running);
    callback_depth--;
    if (mc != CURLM_OK) {
        adl_log_warn(NULL, -1, "curl_multi_socket_action: %s; again in "
                     "%d ms", curl_multi_strerror(mc), RETRY_MS);
        timer_cb(h->multi, RETRY_MS, h);
    }
    check_multi_info(h);
}

void
adl_http_socket_event(adl_http_t *h, int fd, uint32_t events)
{
    int  action = 0;

    if (events & EPOLLIN) {
        action |= CURL_CSELECT_IN;
    }
    if (events & EPOLLOUT) {
        action |= CURL_CSELECT_OUT;
    }
    if (events & (EPOLLERR | EPOLLHUP)) {
        action |= CURL_CSELECT_ERR;
    }
    socket_action(h, fd, action);
}

void
adl_http_timer_event(adl_http_t *h)
{
    uint64_t  count;
    ssize_t   n;

    n = read(h->timerfd, &count, sizeof(count));
    (void) n;
    socket_action(h, CURL_SOCKET_TIMEOUT, 0);
}


/* --- origin requests ----------------------------------------------------- */

static curl_socket_t
open_socket_cb(void *userp, curlsocktype purpose, struct curl_sockaddr *a)
{
    adl_http_guard_t      *g = userp;
    const adl_settings_t  *s = g->settings;
    const char            *why = NULL;
    char                   host[64] = "?";

    (void) purpose;

    if (adl_ssrf_allowed(&a->addr, &s->cidrs, s->allow_private, &why)) {
        return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    }
    if (a->family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *) (void *)
                  &a->addr)->sin_addr, host, sizeof(host));
    } else if (a->family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *) (void *)
                  &a->addr)->sin6_addr, host, sizeof(host));
    }
    g->blocked = 1;
    snprintf(g->msg, sizeof(g->msg), "refused to connect to %s: %s", host,
             why);
    return CURL_SOCKET_BAD;
}

CURL *
adl_http_easy(const char *url, struct curl_slist *headers, char *errbuf,
    int64_t connect_ms)
{
    CURL  *e;

    e = curl_easy_init();
    if (e == NULL) {
        return NULL;
    }
    if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long) connect_ms)
           != CURLE_OK)
    {
        curl_easy_cleanup(e);
        return NULL;
    }
    return e;
}

CURL *
adl_http_origin_easy(const adl_settings_t *s, const char *url,
    struct curl_slist *headers, adl_http_guard_t *g, char *errbuf)
{
    CURL  *e;

    g->settings = s;
    g->blocked = 0;
    g->msg[0] = '\0';

    e = adl_http_easy(url, headers, errbuf, s->connect_timeout);
    if (e == NULL) {
        return NULL;
    }
    if (curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket_cb)
           != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, g) != CURLE_OK)
    {
        curl_easy_cleanup(e);
        return NULL;
    }
    return e;
}
