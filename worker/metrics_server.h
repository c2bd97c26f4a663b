/*
 * metrics_server: ASYNC_DL_METRICS_LISTEN, the worker's counters
 * (metrics.h) over HTTP for a Prometheus scraper: any GET answers the
 * exposition text, then the connection closes.  Non-blocking on the
 * worker's epoll, at most 16 connections, each closed after 5 s.  Access
 * is the operator's: listen on loopback or a private address.
 */
#ifndef ADL_METRICS_SERVER_H
#define ADL_METRICS_SERVER_H

#include <stdint.h>
#include <sys/socket.h>

typedef struct adl_metrics_server_s  adl_metrics_server_t;

/* "host:port" (an IPv4 or IPv6 address, [v6]:port) as a socket address;
 * -1 when it is not one (settings.c checks the setting with it). */
int adl_metrics_addr(const char *addr, struct sockaddr_storage *ss,
    socklen_t *len);

/* addr: "host:port" (an IPv4 or IPv6 address, [v6]:port); the sockets
 * are registered with data.u64 = tag << 32 | fd.  NULL when it cannot
 * listen (logged). */
adl_metrics_server_t *adl_metrics_server_create(const char *addr, int epfd,
    unsigned tag);
void adl_metrics_server_event(adl_metrics_server_t *s, int fd,
    uint32_t events);
void adl_metrics_server_tick(adl_metrics_server_t *s, int64_t now);
void adl_metrics_server_destroy(adl_metrics_server_t *s);

#endif /* ADL_METRICS_SERVER_H */
