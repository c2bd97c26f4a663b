
/*
 * The LISTEN connection of one nginx worker process.
 *
 * One libpq connection, apart from the query pool, driven by nginx's event
 * loop like the pool's connections.  One state machine, changed only by
 * ngx_http_async_dl_listen_set_state(), with one timer whose meaning
 * depends on the state:
 *
 *   DOWN -> CONNECTING -> SUBSCRIBING -> READY
 *     ^_______________________________________|  (any failure)
 *
 * - DOWN: the timer is the reconnect backoff (at once after a connection
 *   that worked, then 100 ms doubling up to 1 s).
 * - CONNECTING: PQconnectStartParams + PQconnectPoll; the timer is the
 *   connect timeout (async_dl_postgres_timeout).
 * - SUBSCRIBING: "LISTEN async_dl_events" was sent; same timeout.
 * - READY: notifications are read as they come and handed over one by
 *   one.  The timer sends a "SELECT 1" every 30 s and closes the
 *   connection when its answer does not come within the timeout: a
 *   connection that silently died (no FIN, a dead network) is noticed.
 *   With pings asked for, it instead sends
 *   "NOTIFY async_dl_ping_<backend pid>, '<time sent>'" every `ping` ms,
 *   one at a time, and closes the connection when a ping has not come
 *   back within the timeout: a connection that falls behind is noticed
 *   too.  The channel is LISTENed to with async_dl_events; PostgreSQL
 *   delivers notifications in commit order, so a ping that comes back
 *   follows every notification committed before it was sent.
 *
 * Each time READY is reached, the first time included, the ready handler
 * is called: notifications sent while there was no LISTEN are lost, so the
 * event streams fetch again the state of every job they follow.  Each time
 * READY is left, the lost handler is.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_async_dl_pg_sock.h"
#include "ngx_http_async_dl_listen.h"


#define NGX_HTTP_ASYNC_DL_LISTEN_BACKOFF      100    /* first retry, ms */
#define NGX_HTTP_ASYNC_DL_LISTEN_BACKOFF_MAX  1000
#define NGX_HTTP_ASYNC_DL_LISTEN_PING         30000


typedef enum {
    NGX_HTTP_ASYNC_DL_LISTEN_DOWN = 0,
    NGX_HTTP_ASYNC_DL_LISTEN_CONNECTING,
    NGX_HTTP_ASYNC_DL_LISTEN_SUBSCRIBING,
    NGX_HTTP_ASYNC_DL_LISTEN_READY
} ngx_http_async_dl_listen_state_e;


struct ngx_http_async_dl_listen_s {
    ngx_http_async_dl_listen_state_e     state;

    const char                         **keywords;
    const char                         **values;
    ngx_msec_t                           timeout;

    ngx_http_async_dl_pg_sock_t          sock;

    ngx_event_t                          timer;
    ngx_msec_t                           backoff;
    ngx_uint_t                           failures;  /* since last READY */
    ngx_log_t                            log;

    ngx_http_async_dl_listen_handlers_t  h;

    char                                 channel[40]; /* pings' */
    int64_t                              ping_sent;

    unsigned                             busy:1;    /* a command runs */
    unsigned                             failed:1;  /* and it failed */
    unsigned                             ping:1;    /* a ping awaits */
    unsigned                             worked:1;  /* see _worked() */
};


static ngx_int_t ngx_http_async_dl_listen_conninfo(
    ngx_http_async_dl_listen_t *ls, ngx_pool_t *pool,
    ngx_http_async_dl_pg_conf_t *pgcf);
static void ngx_http_async_dl_listen_set_state(
    ngx_http_async_dl_listen_t *ls, ngx_http_async_dl_listen_state_e state);
static void ngx_http_async_dl_listen_connect(ngx_http_async_dl_listen_t *ls);
static void ngx_http_async_dl_listen_connect_poll(
    ngx_http_async_dl_listen_t *ls);
static ngx_int_t ngx_http_async_dl_listen_send(
    ngx_http_async_dl_listen_t *ls, const char *sql);
static void ngx_http_async_dl_listen_done(ngx_http_async_dl_listen_t *ls);
static void ngx_http_async_dl_listen_read_handler(ngx_event_t *rev);
static void ngx_http_async_dl_listen_write_handler(ngx_event_t *wev);
static void ngx_http_async_dl_listen_timer_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_async_dl_listen_ping(ngx_http_async_dl_listen_t *ls);
static void ngx_http_async_dl_listen_pong(ngx_http_async_dl_listen_t *ls,
    const char *payload);
static void ngx_http_async_dl_listen_worked(ngx_http_async_dl_listen_t *ls);
static void ngx_http_async_dl_listen_close(ngx_http_async_dl_listen_t *ls,
    const char *reason);


ngx_http_async_dl_listen_t *
ngx_http_async_dl_listen_start(ngx_cycle_t *cycle,
    ngx_http_async_dl_pg_conf_t *pgcf,
    ngx_http_async_dl_listen_handlers_t *handlers)
{
    ngx_http_async_dl_listen_t  *ls;

    ls = ngx_pcalloc(cycle->pool, sizeof(ngx_http_async_dl_listen_t));
    if (ls == NULL) {
        return NULL;
    }

    if (ngx_http_async_dl_listen_conninfo(ls, cycle->pool, pgcf) != NGX_OK) {
        return NULL;
    }

    ls->state = NGX_HTTP_ASYNC_DL_LISTEN_DOWN;
    ls->timeout = pgcf->timeout;
    ls->h = *handlers;
    ls->log = *cycle->log;

    ls->timer.handler = ngx_http_async_dl_listen_timer_handler;
    ls->timer.data = ls;
    ls->timer.log = &ls->log;
    ls->timer.cancelable = 1;

    ls->sock.read_handler = ngx_http_async_dl_listen_read_handler;
    ls->sock.write_handler = ngx_http_async_dl_listen_write_handler;
    ls->sock.data = ls;
    ls->sock.log = &ls->log;

    ngx_http_async_dl_listen_connect(ls);

    return ls;
}


void
ngx_http_async_dl_listen_stop(ngx_http_async_dl_listen_t *ls)
{
    if (ls->timer.timer_set) {
        ngx_del_timer(&ls->timer);
    }

    ngx_http_async_dl_pg_sock_close(&ls->sock);

    ls->state = NGX_HTTP_ASYNC_DL_LISTEN_DOWN;
}


ngx_uint_t
ngx_http_async_dl_listen_ready(ngx_http_async_dl_listen_t *ls)
{
    return ls != NULL && ls->state == NGX_HTTP_ASYNC_DL_LISTEN_READY;
}


/*
 * The pool's conninfo (already resolved, see ngx_http_async_dl_pg_conninfo),
 * with its own default application_name, so that the connection can be
 * told apart in pg_stat_activity.
 */

static ngx_int_t
ngx_http_async_dl_listen_conninfo(ngx_http_async_dl_listen_t *ls,
    ngx_pool_t *pool, ngx_http_async_dl_pg_conf_t *pgcf)
{
    ngx_uint_t  i, n;

    for (n = 0; pgcf->keywords[n]; n++) { /* void */ }

    ls->keywords = ngx_pcalloc(pool, (n + 1) * sizeof(char *));
    ls->values = ngx_pcalloc(pool, (n + 1) * sizeof(char *));
    if (ls->keywords == NULL || ls->values == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        ls->keywords[i] = pgcf->keywords[i];
        ls->values[i] = pgcf->values[i];

        if (ngx_strcmp(pgcf->keywords[i], "fallback_application_name") == 0
            && ngx_strcmp(pgcf->values[i], "async-dl-nginx") == 0)
        {
            ls->values[i] = "async-dl-nginx-listen";
        }
    }

    return NGX_OK;
}


static void
ngx_http_async_dl_listen_set_state(ngx_http_async_dl_listen_t *ls,
    ngx_http_async_dl_listen_state_e state)
{
#if (NGX_DEBUG)
    static const char  *names[] = {
        "down", "connecting", "subscribing", "ready"
    };

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &ls->log, 0,
                   "async_dl listen: %s -> %s", names[ls->state],
                   names[state]);
#endif

    ls->state = state;

    switch (state) {

    case NGX_HTTP_ASYNC_DL_LISTEN_CONNECTING:
        ls->log.action = "connecting to postgres for LISTEN";
        break;

    case NGX_HTTP_ASYNC_DL_LISTEN_SUBSCRIBING:
        ls->log.action = "sending LISTEN " NGX_HTTP_ASYNC_DL_CHANNEL;
        break;

    case NGX_HTTP_ASYNC_DL_LISTEN_READY:
        ls->log.action = "listening on " NGX_HTTP_ASYNC_DL_CHANNEL;
        break;

    default:
        ls->log.action = NULL;
        break;
    }
}


static void
ngx_http_async_dl_listen_connect(ngx_http_async_dl_listen_t *ls)
{
    ls->busy = 0;
    ls->failed = 0;
    ls->ping = 0;

    ls->sock.pgconn = PQconnectStartParams(ls->keywords, ls->values, 0);
    if (ls->sock.pgconn == NULL) {
        ngx_http_async_dl_listen_close(ls, "out of memory");
        return;
    }

    ngx_http_async_dl_listen_set_state(ls,
                                       NGX_HTTP_ASYNC_DL_LISTEN_CONNECTING);

    if (ngx_http_async_dl_pg_sock_start(&ls->sock) != NGX_OK) {
        ngx_http_async_dl_listen_close(ls, ls->sock.error);
        return;
    }

    ngx_add_timer(&ls->timer, ls->timeout);
}


static void
ngx_http_async_dl_listen_connect_poll(ngx_http_async_dl_listen_t *ls)
{
    u_char     sql[96];
    ngx_int_t  rc;

    rc = ngx_http_async_dl_pg_sock_poll(&ls->sock);

    if (rc == NGX_AGAIN) {
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_async_dl_listen_close(ls, ls->sock.error);
        return;
    }

    ngx_http_async_dl_listen_set_state(ls,
                                       NGX_HTTP_ASYNC_DL_LISTEN_SUBSCRIBING);

    if (ls->h.ping) {
        /* the backend's pid names a channel nobody else listens to */
        ngx_sprintf((u_char *) ls->channel, "async_dl_ping_%d%Z",
                    PQbackendPID(ls->sock.pgconn));

        ngx_sprintf(sql, "LISTEN " NGX_HTTP_ASYNC_DL_CHANNEL "; LISTEN %s%Z",
                    ls->channel);

    } else {
        ngx_sprintf(sql, "LISTEN " NGX_HTTP_ASYNC_DL_CHANNEL "%Z");
    }

    if (ngx_http_async_dl_listen_send(ls, (char *) sql) != NGX_OK) {
        ngx_http_async_dl_listen_close(ls,
                                       PQerrorMessage(ls->sock.pgconn));
    }
}


static ngx_int_t
ngx_http_async_dl_listen_send(ngx_http_async_dl_listen_t *ls,
    const char *sql)
{
    if (!PQsendQuery(ls->sock.pgconn, sql)) {
        return NGX_ERROR;
    }

    ls->busy = 1;
    ls->failed = 0;

    return ngx_http_async_dl_pg_sock_flush(&ls->sock);
}


/* all results of the command sent (LISTEN or a ping) are in */

static void
ngx_http_async_dl_listen_done(ngx_http_async_dl_listen_t *ls)
{
    ls->busy = 0;

    if (ls->state == NGX_HTTP_ASYNC_DL_LISTEN_SUBSCRIBING) {

        if (ls->failed) {
            ngx_http_async_dl_listen_close(ls, PQerrorMessage(ls->sock.pgconn));
            return;
        }

        if (!ls->h.ping) {
            ngx_http_async_dl_listen_worked(ls);
        }

        ngx_http_async_dl_listen_set_state(ls,
                                           NGX_HTTP_ASYNC_DL_LISTEN_READY);

        if (ls->timer.timer_set) {
            ngx_del_timer(&ls->timer);
        }

        ngx_add_timer(&ls->timer, ls->h.ping ? ls->h.ping
                                             : NGX_HTTP_ASYNC_DL_LISTEN_PING);

        ls->h.ready(ls->h.data);

        if (ls->h.ping) {
            /* the first at once: until it is back, nothing is fresh */
            (void) ngx_http_async_dl_listen_ping(ls);
        }

        return;
    }

    if (ls->h.ping) {
        if (ls->failed) {
            /* e.g. the notification queue is full: not current any more */
            ngx_http_async_dl_listen_close(ls,
                                           PQerrorMessage(ls->sock.pgconn));
            return;
        }

        /* the NOTIFY was sent: the ping itself comes back as a notification */
        return;
    }

    /* READY: the answer to a SELECT 1 */

    ls->ping = 0;

    if (ls->timer.timer_set) {
        ngx_del_timer(&ls->timer);
    }

    ngx_add_timer(&ls->timer, NGX_HTTP_ASYNC_DL_LISTEN_PING);
}


static void
ngx_http_async_dl_listen_read_handler(ngx_event_t *rev)
{
    PGresult                    *res;
    PGnotify                    *n;
    ngx_connection_t            *c;
    ngx_http_async_dl_listen_t  *ls;

    c = rev->data;
    ls = c->data;

    if (ls->state == NGX_HTTP_ASYNC_DL_LISTEN_CONNECTING) {
        if (ls->sock.poll == PGRES_POLLING_READING) {
            ngx_http_async_dl_listen_connect_poll(ls);
        }
        return;
    }

    if (!PQconsumeInput(ls->sock.pgconn)) {
        ngx_http_async_dl_listen_close(ls, PQerrorMessage(ls->sock.pgconn));
        return;
    }

    /* libpq: after consuming input, try to flush pending output again */
    if (ls->sock.c->write->active
        && ngx_http_async_dl_pg_sock_flush(&ls->sock) != NGX_OK)
    {
        ngx_http_async_dl_listen_close(ls, PQerrorMessage(ls->sock.pgconn));
        return;
    }

    while (ls->busy && !PQisBusy(ls->sock.pgconn)) {
        res = PQgetResult(ls->sock.pgconn);

        if (res == NULL) {
            ngx_http_async_dl_listen_done(ls);

            if (ls->sock.pgconn == NULL) {
                return;
            }

            break;
        }

        if (PQresultStatus(res) != PGRES_COMMAND_OK
            && PQresultStatus(res) != PGRES_TUPLES_OK)
        {
            ls->failed = 1;
        }

        PQclear(res);
    }

    while ((n = PQnotifies(ls->sock.pgconn)) != NULL) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &ls->log, 0,
                       "async_dl listen: notification \"%s\"", n->extra);

        if (ngx_strcmp(n->relname, NGX_HTTP_ASYNC_DL_CHANNEL) == 0) {
            ls->h.notify(ls->h.data, n->extra);

        } else if (ls->h.ping && ngx_strcmp(n->relname, ls->channel) == 0) {
            ngx_http_async_dl_listen_pong(ls, n->extra);
        }

        PQfreemem(n);

        if (ls->sock.pgconn == NULL) {
            /* a handler closed it */
            return;
        }
    }

    if (PQstatus(ls->sock.pgconn) == CONNECTION_BAD) {
        ngx_http_async_dl_listen_close(ls, PQerrorMessage(ls->sock.pgconn));
    }
}


static void
ngx_http_async_dl_listen_write_handler(ngx_event_t *wev)
{
    ngx_connection_t            *c;
    ngx_http_async_dl_listen_t  *ls;

    c = wev->data;
    ls = c->data;

    if (ls->state == NGX_HTTP_ASYNC_DL_LISTEN_CONNECTING) {
        if (ls->sock.poll == PGRES_POLLING_WRITING) {
            ngx_http_async_dl_listen_connect_poll(ls);
        }
        return;
    }

    if (ngx_http_async_dl_pg_sock_flush(&ls->sock) != NGX_OK) {
        ngx_http_async_dl_listen_close(ls, PQerrorMessage(ls->sock.pgconn));
    }
}


static void
ngx_http_async_dl_listen_timer_handler(ngx_event_t *ev)
{
    ngx_http_async_dl_listen_t  *ls = ev->data;

    switch (ls->state) {

    case NGX_HTTP_ASYNC_DL_LISTEN_DOWN:
        ngx_http_async_dl_listen_connect(ls);
        return;

    case NGX_HTTP_ASYNC_DL_LISTEN_CONNECTING:
    case NGX_HTTP_ASYNC_DL_LISTEN_SUBSCRIBING:
        ngx_http_async_dl_listen_close(ls, "connection timed out");
        return;

    default: /* NGX_HTTP_ASYNC_DL_LISTEN_READY */

        if (ls->h.ping) {
            if (ngx_http_async_dl_listen_ping(ls) != NGX_OK) {
                return;
            }

            ngx_add_timer(&ls->timer, ls->h.ping);
            return;
        }

        if (ls->ping || ls->busy) {
            ngx_http_async_dl_listen_close(ls, "no answer to a ping");
            return;
        }

        if (ngx_http_async_dl_listen_send(ls, "SELECT 1") != NGX_OK) {
            ngx_http_async_dl_listen_close(ls, PQerrorMessage(ls->sock.pgconn));
            return;
        }

        ls->ping = 1;
        ngx_add_timer(&ls->timer, ls->timeout);
        return;
    }
}


/*
 * A ping every h.ping ms, one at a time: one still out after the timeout
 * means a connection that is gone or behind.  NGX_ERROR: closed.
 */

static ngx_int_t
ngx_http_async_dl_listen_ping(ngx_http_async_dl_listen_t *ls)
{
    u_char   sql[96];
    int64_t  now;

    now = ngx_http_async_dl_listen_now();

    if (ls->ping || ls->busy) {
        if (now - ls->ping_sent >= (int64_t) ls->timeout) {
            ngx_http_async_dl_listen_close(ls, "a ping did not come back "
                                           "in time");
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    ngx_sprintf(sql, "NOTIFY %s, '%L'%Z", ls->channel, now);

    if (ngx_http_async_dl_listen_send(ls, (char *) sql) != NGX_OK) {
        ngx_http_async_dl_listen_close(ls, PQerrorMessage(ls->sock.pgconn));
        return NGX_ERROR;
    }

    ls->ping = 1;
    ls->ping_sent = now;

    return NGX_OK;
}


static void
ngx_http_async_dl_listen_pong(ngx_http_async_dl_listen_t *ls,
    const char *payload)
{
    int64_t  sent;

    sent = ngx_atoof((u_char *) payload, ngx_strlen(payload));

    if (!ls->ping || sent != ls->ping_sent) {
        /* not the one out: a ping of an earlier connection cannot come */
        return;
    }

    ls->ping = 0;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &ls->log, 0,
                   "async_dl listen: ping back after %L ms",
                   ngx_http_async_dl_listen_now() - sent);

    if (!ls->worked) {
        ngx_http_async_dl_listen_worked(ls);
    }

    ls->h.pong(ls->h.data, sent);
}


/*
 * The connection works: LISTEN is in place and, with pings, the first one
 * came back.  Only then is a failure retried at once.
 */

static void
ngx_http_async_dl_listen_worked(ngx_http_async_dl_listen_t *ls)
{
    if (ls->failures) {
        ngx_log_error(NGX_LOG_NOTICE, &ls->log, 0,
                      "async_dl: LISTEN " NGX_HTTP_ASYNC_DL_CHANNEL
                      " is back after %ui failures", ls->failures);
    }

    ls->failures = 0;
    ls->backoff = 0;
    ls->worked = 1;
}


static void
ngx_http_async_dl_listen_close(ngx_http_async_dl_listen_t *ls,
    const char *reason)
{
    size_t      len;
    ngx_uint_t  was_ready;

    was_ready = (ls->state == NGX_HTTP_ASYNC_DL_LISTEN_READY);

    len = ngx_strlen(reason);

    while (len && (reason[len - 1] == '\n' || reason[len - 1] == ' ')) {
        len--;
    }

    if (ls->failures++ == 0) {
        ngx_log_error(NGX_LOG_ERR, &ls->log, 0,
                      "async_dl: LISTEN connection %s: %*s",
                      was_ready ? "lost" : "failed", len, reason);

    } else {
        ngx_log_error(NGX_LOG_INFO, &ls->log, 0,
                      "async_dl: LISTEN connection failed again (%ui): %*s",
                      ls->failures, len, reason);
    }

    if (ls->timer.timer_set) {
        ngx_del_timer(&ls->timer);
    }

    ngx_http_async_dl_pg_sock_close(&ls->sock);

    ls->busy = 0;
    ls->ping = 0;

    ngx_http_async_dl_listen_set_state(ls, NGX_HTTP_ASYNC_DL_LISTEN_DOWN);

    if (was_ready) {
        ls->h.lost(ls->h.data);
    }

    /*
     * A connection that worked is retried at once, then with backoff; one
     * that failed before its first ping came back backs off (a ping that
     * keeps failing must not make a loop of reconnections).
     */

    if (ls->worked) {
        ls->backoff = 0;
        ls->worked = 0;

    } else if (ls->backoff == 0) {
        ls->backoff = NGX_HTTP_ASYNC_DL_LISTEN_BACKOFF;

    } else {
        ls->backoff = ngx_min(ls->backoff * 2,
                              NGX_HTTP_ASYNC_DL_LISTEN_BACKOFF_MAX);
    }

    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(&ls->timer, ls->backoff ? ls->backoff : 1);
    }
}
