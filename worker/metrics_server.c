/*
 * metrics_server: the counters over HTTP (metrics_server.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "metrics_server.h"

#define MAX_CONNS   16
#define MAX_AGE_MS  5000

typedef struct {
    int       fd;
    int64_t   started;
    char      in[2048];
    size_t    in_len;
    char     *out;              /* the answer, once the request is read */
    size_t    out_len;
    size_t    out_pos;
} conn_t;

struct adl_metrics_server_s {
    int       fd;
    int       epfd;
    unsigned  tag;
    int64_t   resume_at;        /* out of descriptors: accept again then */
    conn_t   *conns[MAX_CONNS];
};

static int
watch(adl_metrics_server_t *s, int fd, uint32_t events, int op)
{
    struct epoll_event  ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = ((uint64_t) s->tag << 32) | (uint32_t) fd;
    return epoll_ctl(s->epfd, op, fd, &ev);
}

static void
conn_close(adl_metrics_server_t *s, int i)
{
    conn_t  *c = s->conns[i];

    (void) epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
    s->conns[i] = NULL;
}

int
adl_metrics_addr(const char *addr, struct sockaddr_storage *ss,
    socklen_t *len)
{
    struct sockaddr_in   *in4 = (struct sockaddr_in *) ss;
    struct sockaddr_in6  *in6 = (struct sockaddr_in6 *) ss;
    char                  host[64];
    const char           *colon;
    long                  port;
    char                 *end;
    size_t                hl;

    colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr) {
        return -1;
    }
    port = strtol(colon + 1, &end, 10);
    hl = (size_t) (colon - addr);
    if (colon[1] == '\0' || *end != '\0' || port < 1 || port > 65535
        || hl >= sizeof(host))
    {
        return -1;
    }
    if (addr[0] == '[' && hl >= 2 && addr[hl - 1] == ']') {
        memcpy(host, addr + 1, hl - 2);
        host[hl - 2] = '\0';
    } else {
        memcpy(host, addr, hl);
        host[hl] = '\0';
    }
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t) port);
        *len = sizeof(*in4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t) port);
        *len = sizeof(*in6);
        return 0;
    }
    return -1;
}

adl_metrics_server_t *
adl_metrics_server_create(const char *addr, int epfd, unsigned tag)
{
    adl_metrics_server_t     *s;
    struct sockaddr_storage   ss;
    socklen_t                 len;
    int                       one = 1;

    if (adl_metrics_addr(addr, &ss, &len) != 0) {
        adl_log_error(NULL, -1, "ASYNC_DL_METRICS_LISTEN: \"%s\" is not "
                      "host:port (an IP address)", addr);
        return NULL;
    }

    s = calloc(1, sizeof(adl_metrics_server_t));
    if (s == NULL) {
        adl_log_error(NULL, -1, "metrics: out of memory");
        return NULL;
    }
    s->epfd = epfd;
    s->tag = tag;
    s->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                   0);
    if (s->fd < 0
        || setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one))
           != 0
        || bind(s->fd, (struct sockaddr *) &ss, len) != 0
        || listen(s->fd, 64) != 0
        || watch(s, s->fd, EPOLLIN, EPOLL_CTL_ADD) != 0)
    {
        adl_log_error(NULL, -1, "metrics: cannot listen on %s: %s", addr,
                      strerror(errno));
        if (s->fd >= 0) {
            close(s->fd);
        }
        free(s);
        return NULL;
    }
    adl_log_info(NULL, -1, "metrics: listening on %s", addr);
    return s;
}

static void
accept_all(adl_metrics_server_t *s)
{
    conn_t  *c;
    int      fd, i;

    for ( ;; ) {
        fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                /* the connection stays queued and the socket readable:
                 * not watched for a second, else the loop spins */
                adl_log_warn(NULL, -1, "metrics: out of file descriptors, "
                             "not accepting for a second");
                (void) watch(s, s->fd, 0, EPOLL_CTL_MOD);
                s->resume_at = adl_now_ms() + 1000;
            }
            return;                 /* EAGAIN, or a transient error */
        }
        for (i = 0; i < MAX_CONNS && s->conns[i] != NULL; i++) {
            /* void */
        }
        c = i < MAX_CONNS ? calloc(1, sizeof(conn_t)) : NULL;
        if (c == NULL) {
            close(fd);              /* full: the scraper tries again */
            continue;
        }
        c->fd = fd;
        c->started = adl_now_ms();
        s->conns[i] = c;
        if (watch(s, fd, EPOLLIN, EPOLL_CTL_ADD) != 0) {
            conn_close(s, i);
        }
    }
}

/* the request is in: the answer, and writing */
static int
answer(adl_metrics_server_t *s, conn_t *c)
{
    char    *body = NULL, head[256];
    size_t   blen = 0;
    int      n, get = strncmp(c->in, "GET ", 4) == 0,
             head_only = strncmp(c->in, "HEAD ", 5) == 0;

    if (get || head_only) {
        body = adl_metrics_text(&blen);
        if (body == NULL) {
            return -1;
        }
        n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Type: "
                     "text/plain; version=0.0.4; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     blen);
    } else {
        n = snprintf(head, sizeof(head), "HTTP/1.1 405 Method Not Allowed"
                     "\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n");
    }
    c->out_len = (size_t) n + (get ? blen : 0);
    c->out = malloc(c->out_len);
    if (c->out == NULL) {
        free(body);
        return -1;
    }
    memcpy(c->out, head, (size_t) n);
    if (get) {
        memcpy(c->out + n, body, blen);
    }
    free(body);
    return watch(s, c->fd, EPOLLOUT, EPOLL_CTL_MOD);
}

void
adl_metrics_server_event(adl_metrics_server_t *s, int fd, uint32_t events)
{
    conn_t   *c = NULL;
    ssize_t   r;
    int       i;

    if (fd == s->fd) {
        accept_all(s);
        return;
    }
    for (i = 0; i < MAX_CONNS; i++) {
        if (s->conns[i] != NULL && s->conns[i]->fd == fd) {
            c = s->conns[i];
            break;
        }
    }
    if (c == NULL) {
        return;
    }

    if (c->out == NULL) {
        for ( ;; ) {
            r = read(fd, c->in + c->in_len, sizeof(c->in) - 1 - c->in_len);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (events & (EPOLLHUP | EPOLLERR)) {
                    conn_close(s, i);
                }
                return;
            }
            if (r <= 0) {
                conn_close(s, i);
                return;
            }
            c->in_len += (size_t) r;
            c->in[c->in_len] = '\0';
            if (strstr(c->in, "\r\n\r\n") != NULL
                || strstr(c->in, "\n\n") != NULL)
            {
                break;
            }
            if (c->in_len == sizeof(c->in) - 1) {
                conn_close(s, i);       /* a head this long: not a scrape */
                return;
            }
        }
        if (answer(s, c) != 0) {
            conn_close(s, i);
            return;
        }
    }

    while (c->out_pos < c->out_len) {
        r = write(fd, c->out + c->out_pos, c->out_len - c->out_pos);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        if (r <= 0) {
            break;
        }
        c->out_pos += (size_t) r;
    }
    conn_close(s, i);
}

void
adl_metrics_server_tick(adl_metrics_server_t *s, int64_t now)
{
    int  i;

    if (s->resume_at != 0 && now >= s->resume_at) {
        s->resume_at = 0;
        (void) watch(s, s->fd, EPOLLIN, EPOLL_CTL_MOD);
    }
    for (i = 0; i < MAX_CONNS; i++) {
        if (s->conns[i] != NULL && now - s->conns[i]->started > MAX_AGE_MS) {
            conn_close(s, i);
        }
    }
}

void
adl_metrics_server_destroy(adl_metrics_server_t *s)
{
    int  i;

    if (s == NULL) {
        return;
    }
    for (i = 0; i < MAX_CONNS; i++) {
        if (s->conns[i] != NULL) {
            conn_close(s, i);
        }
    }
    close(s->fd);
    free(s);
}
