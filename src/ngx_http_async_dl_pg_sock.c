
/*
 * A libpq connection on nginx's event loop (ngx_http_async_dl_pg_sock.h):
 * its socket wrapped in an nginx connection with level-triggered events,
 * for the pool's connections and the LISTEN connection alike.
 *
 * Events are registered level-triggered: libpq may leave bytes in the
 * socket after PQconsumeInput(), which edge-triggered epoll would never
 * report again.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_async_dl_pg_sock.h"


static ngx_int_t ngx_http_async_dl_pg_wrap(ngx_http_async_dl_pg_sock_t *s);
static void ngx_http_async_dl_pg_unwrap(ngx_http_async_dl_pg_sock_t *s,
    ngx_uint_t flags);


ngx_int_t
ngx_http_async_dl_pg_sock_start(ngx_http_async_dl_pg_sock_t *s)
{
    if (PQstatus(s->pgconn) == CONNECTION_BAD) {
        s->error = PQerrorMessage(s->pgconn);
        return NGX_ERROR;
    }

    if (ngx_http_async_dl_pg_wrap(s) != NGX_OK) {
        s->error = "no free nginx connection";
        return NGX_ERROR;
    }

    /* just after PQconnectStart, behave as if polling returned WRITING */
    s->poll = PGRES_POLLING_WRITING;

    if (ngx_http_async_dl_pg_sock_events(s, 0, 1) != NGX_OK) {
        s->error = "cannot add events";
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_async_dl_pg_sock_poll(ngx_http_async_dl_pg_sock_t *s)
{
    /*
     * libpq may close this socket inside PQconnectPoll() and open another
     * for the next address (multi-host, failover, SSL/GSS fallback); the
     * new one often gets the same fd number, and epoll silently forgets a
     * closed fd.  So take the socket out of epoll while it is still open,
     * and register whatever socket libpq holds afterwards.
     */
    ngx_http_async_dl_pg_unwrap(s, 0);

    s->poll = PQconnectPoll(s->pgconn);

    switch (s->poll) {

    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
    case PGRES_POLLING_OK:
        break;

    default: /* PGRES_POLLING_FAILED */
        s->error = PQerrorMessage(s->pgconn);
        return NGX_ERROR;
    }

    if (ngx_http_async_dl_pg_wrap(s) != NGX_OK) {
        s->error = "no free nginx connection";
        return NGX_ERROR;
    }

    if (s->poll == PGRES_POLLING_OK) {
        if (PQsetnonblocking(s->pgconn, 1) == -1) {
            s->error = PQerrorMessage(s->pgconn);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (ngx_http_async_dl_pg_sock_events(s,
                                         s->poll == PGRES_POLLING_READING,
                                         s->poll == PGRES_POLLING_WRITING)
        != NGX_OK)
    {
        s->error = "cannot add events";
        return NGX_ERROR;
    }

    return NGX_AGAIN;
}


/* level-triggered interest in read and/or write readiness */

ngx_int_t
ngx_http_async_dl_pg_sock_events(ngx_http_async_dl_pg_sock_t *s,
    ngx_uint_t read, ngx_uint_t write)
{
    ngx_connection_t  *c;

    c = s->c;

    if (read && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (!read && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (write && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (!write && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_async_dl_pg_sock_flush(ngx_http_async_dl_pg_sock_t *s)
{
    int  rc;

    rc = PQflush(s->pgconn);

    if (rc == -1) {
        return NGX_ERROR;
    }

    /* 1: more to send, wait until the socket is writable */
    return ngx_http_async_dl_pg_sock_events(s, 1, rc == 1);
}


void
ngx_http_async_dl_pg_sock_close(ngx_http_async_dl_pg_sock_t *s)
{
    if (s->pgconn) {
        ngx_http_async_dl_pg_unwrap(s, NGX_CLOSE_EVENT);
        PQfinish(s->pgconn);
        s->pgconn = NULL;
    }
}


static ngx_int_t
ngx_http_async_dl_pg_wrap(ngx_http_async_dl_pg_sock_t *s)
{
    int                fd;
    ngx_connection_t  *c;

    fd = PQsocket(s->pgconn);
    if (fd == -1) {
        return NGX_ERROR;
    }

    c = ngx_get_connection(fd, s->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = s->data;
    c->read->handler = s->read_handler;
    c->write->handler = s->write_handler;
    c->read->log = s->log;
    c->write->log = s->log;
    c->log = s->log;
    c->log_error = NGX_ERROR_INFO;

    s->c = c;

    return NGX_OK;
}


/*
 * forget the nginx side of the socket; libpq owns and closes the fd.
 * flags: NGX_CLOSE_EVENT when the fd is closed right after (epoll drops it
 * by itself), 0 when it stays open and must be removed from epoll now.
 */

static void
ngx_http_async_dl_pg_unwrap(ngx_http_async_dl_pg_sock_t *s, ngx_uint_t flags)
{
    ngx_connection_t  *c;

    c = s->c;
    if (c == NULL) {
        return;
    }

    if (c->read->active || c->read->disabled) {
        ngx_del_event(c->read, NGX_READ_EVENT, flags);
    }

    if (c->write->active || c->write->disabled) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, flags);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    c->read->closed = 1;
    c->write->closed = 1;

    ngx_free_connection(c);

    c->fd = (ngx_socket_t) -1;
    s->c = NULL;
}
