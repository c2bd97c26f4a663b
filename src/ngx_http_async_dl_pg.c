
/*
 * Non-blocking PostgreSQL: a pool of libpq connections per nginx worker
 * process.
 *
 * Each connection is one state machine (ngx_http_async_dl_pg_state_e),
 * changed only by ngx_http_async_dl_pg_set_state(), driven by the read and
 * write events of its socket and by one timer:
 *
 *   DOWN -> CONNECTING -> SETUP -> IDLE -> [DEALLOCATE ->] [PREPARE ->] QUERY
 *     ^                             ^_____________________________________|
 *     |_______________________________________________________|
 *                                                        (any failure)
 *   and QUERY -> DEALLOCATE or PREPARE for a statement that a schema change
 *   made unfit (below).
 *
 * - CONNECTING: PQconnectStartParams + PQconnectPoll; the timer is the
 *   connect timeout (async_dl_postgres_timeout).
 * - SETUP: "SET statement_timeout", so that the server itself gives up on a
 *   statement at the same deadline as we do (see "Timeouts" below).
 * - PREPARE: a statement is prepared lazily, the first time a connection
 *   runs it (the schema may be created after nginx starts: the worker
 *   migrates it), then QUERY: PQsendQueryPrepared.
 * - DEALLOCATE: a schema change under a running nginx (a function
 *   recreated with another result type) makes the server refuse a prepared
 *   statement that it still has (0A000 "cached plan must not change result
 *   type"): the statement is deallocated, prepared again and the query run
 *   again, on the same connection.  A query is run again once at most, and
 *   only after errors that ran nothing: 0A000, 26000 (the statement is gone)
 *   or 42P05 (one of that name exists) while preparing.
 * - DOWN: closed; the timer is the reconnect backoff (0, then 100 ms
 *   doubling up to 1 s, so a database that comes back is used again within
 *   about a second, without a reload).
 *
 * Queries: an idle connection takes a query at once; when none is idle the
 * query waits in a bounded FIFO (NGX_HTTP_ASYNC_DL_PG_WAITING per
 * connection).  When no connection is even trying (all DOWN), a query fails
 * at once with UNAVAILABLE rather than waiting: the API answers 503 without
 * delay while the database is down.
 *
 * Timeouts: each query has one timer covering its wait and its run.  When it
 * fires on a running query, the query is detached from its connection and
 * answered TIMEOUT; PQcancel() is not used because it blocks (it opens a new
 * connection synchronously).  Instead every connection has statement_timeout
 * set to the same value plus a small margin, so the server cancels the
 * statement itself just after nginx gave up on it (nginx always decides the
 * answer: with equal values the server's timer could win the race); the
 * connection keeps draining and is reused once the error arrives.  If
 * nothing arrives within the timeout plus a grace period (a dead network),
 * the connection is closed and reopened.
 *
 * Detaching (a request that went away): the query leaves the wait queue or
 * its connection; a running statement's results are drained and discarded,
 * and the connection goes back to the pool clean.  Nothing of the request is
 * touched afterwards.
 *
 * A connection's socket is driven by ngx_http_async_dl_pg_sock.c; the
 * conninfo it connects with was made by ngx_http_async_dl_pg_conf.c; a
 * query's own life (its timer, detaching, its completion) is
 * ngx_http_async_dl_pg_query.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_async_dl_pg.h"
#include "ngx_http_async_dl_pg_sock.h"
#include "ngx_http_async_dl_pg_pool.h"


static void ngx_http_async_dl_pg_set_state(ngx_http_async_dl_pg_conn_t *pc,
    ngx_http_async_dl_pg_state_e state);
static void ngx_http_async_dl_pg_connect(ngx_http_async_dl_pg_conn_t *pc);
static void ngx_http_async_dl_pg_connect_poll(
    ngx_http_async_dl_pg_conn_t *pc);
static void ngx_http_async_dl_pg_read_handler(ngx_event_t *rev);
static void ngx_http_async_dl_pg_write_handler(ngx_event_t *wev);
static void ngx_http_async_dl_pg_timer_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_async_dl_pg_send(ngx_http_async_dl_pg_conn_t *pc,
    ngx_http_async_dl_pg_query_t *q);
static void ngx_http_async_dl_pg_done(ngx_http_async_dl_pg_conn_t *pc);
static ngx_int_t ngx_http_async_dl_pg_is(PGresult *res, const char *sqlstate);
static void ngx_http_async_dl_pg_release(ngx_http_async_dl_pg_conn_t *pc);
static void ngx_http_async_dl_pg_dispatch(ngx_http_async_dl_pg_t *pg);
static void ngx_http_async_dl_pg_close(ngx_http_async_dl_pg_conn_t *pc,
    const char *reason);
static void ngx_http_async_dl_pg_error(ngx_http_async_dl_pg_t *pg,
    const char *msg);
static void ngx_http_async_dl_pg_notice(void *arg, const char *message);


/* the pool of one worker process */


ngx_http_async_dl_pg_t *
ngx_http_async_dl_pg_create(ngx_cycle_t *cycle,
    ngx_http_async_dl_pg_conf_t *pgcf)
{
    ngx_uint_t                    i;
    ngx_http_async_dl_pg_t       *pg;
    ngx_http_async_dl_pg_conn_t  *pc;

    pg = ngx_pcalloc(cycle->pool, sizeof(ngx_http_async_dl_pg_t));
    if (pg == NULL) {
        return NULL;
    }

    pg->conns = ngx_pcalloc(cycle->pool,
                            pgcf->size * sizeof(ngx_http_async_dl_pg_conn_t));
    if (pg->conns == NULL) {
        return NULL;
    }

    pg->conf = pgcf;
    pg->log = cycle->log;
    pg->max_waiting = pgcf->size * NGX_HTTP_ASYNC_DL_PG_WAITING;
    ngx_queue_init(&pg->idle);
    ngx_queue_init(&pg->waiting);
    ngx_str_set(&pg->last_error, "not connected yet");

    ngx_snprintf((u_char *) pg->setup, sizeof(pg->setup),
                 "SET statement_timeout = %M%Z",
                 pgcf->timeout + NGX_HTTP_ASYNC_DL_PG_MARGIN);

    for (i = 0; i < pgcf->size; i++) {
        pc = &pg->conns[i];
        pc->pg = pg;
        pc->n = i;
        pc->state = NGX_HTTP_ASYNC_DL_PG_DOWN;
        pc->log = *cycle->log;
        pc->timer.handler = ngx_http_async_dl_pg_timer_handler;
        pc->timer.data = pc;
        pc->timer.log = &pc->log;
        pc->timer.cancelable = 1;
        pc->sock.read_handler = ngx_http_async_dl_pg_read_handler;
        pc->sock.write_handler = ngx_http_async_dl_pg_write_handler;
        pc->sock.data = pc;
        pc->sock.log = &pc->log;

        ngx_http_async_dl_pg_connect(pc);
    }

    return pg;
}


void
ngx_http_async_dl_pg_destroy(ngx_http_async_dl_pg_t *pg)
{
    ngx_uint_t                    i;
    ngx_http_async_dl_pg_conn_t  *pc;

    for (i = 0; i < pg->conf->size; i++) {
        pc = &pg->conns[i];

        if (pc->timer.timer_set) {
            ngx_del_timer(&pc->timer);
        }

        pc->query = NULL;

        if (pc->result) {
            PQclear(pc->result);
            pc->result = NULL;
        }

        ngx_http_async_dl_pg_sock_close(&pc->sock);
    }
}


ngx_str_t *
ngx_http_async_dl_pg_last_error(ngx_http_async_dl_pg_t *pg)
{
    return &pg->last_error;
}


void
ngx_http_async_dl_pg_count_into(ngx_http_async_dl_pg_t *pg,
    ngx_http_async_dl_pg_counters_t *c)
{
    pg->counters = c;
}


void
ngx_http_async_dl_pg_stats(ngx_http_async_dl_pg_t *pg, ngx_uint_t *up,
    ngx_uint_t *busy, ngx_uint_t *waiting)
{
    ngx_uint_t  i;

    *up = pg->nlive;
    *busy = 0;
    *waiting = pg->nwaiting;

    for (i = 0; i < pg->conf->size; i++) {
        if (pg->conns[i].query) {
            (*busy)++;
        }
    }
}


/* queries */


/*
 * NGX_HTTP_ASYNC_DL_PG_OK: the query is sent or waits; its handler will be
 * called.  Anything else: it failed now, and its handler is not called.
 */

ngx_http_async_dl_pg_status_e
ngx_http_async_dl_pg_run(ngx_http_async_dl_pg_t *pg,
    ngx_http_async_dl_pg_query_t *q)
{
    ngx_queue_t                  *link;
    ngx_http_async_dl_pg_conn_t  *pc;

    if (pg == NULL) {
        return NGX_HTTP_ASYNC_DL_PG_UNAVAILABLE;
    }

    q->pg = pg;
    q->started = ngx_current_msec;

    while (!ngx_queue_empty(&pg->idle)) {
        link = ngx_queue_head(&pg->idle);
        pc = ngx_queue_data(link, ngx_http_async_dl_pg_conn_t, queue);

        if (ngx_http_async_dl_pg_send(pc, q) == NGX_OK) {
            ngx_add_timer(&q->timer, pg->conf->timeout);
            return NGX_HTTP_ASYNC_DL_PG_OK;
        }

        /* that connection was closed: try the next one */
    }

    if (pg->nlive == 0) {
        if (pg->counters && !q->uncounted) {
            (void) ngx_atomic_fetch_add(&pg->counters->unavailable, 1);
        }

        return NGX_HTTP_ASYNC_DL_PG_UNAVAILABLE;
    }

    if (pg->nwaiting >= pg->max_waiting) {
        ngx_log_error(NGX_LOG_WARN, q->log, 0,
                      "async_dl: all %ui postgres connections are busy and "
                      "%ui queries wait", pg->conf->size, pg->nwaiting);

        if (pg->counters && !q->uncounted) {
            (void) ngx_atomic_fetch_add(&pg->counters->busy, 1);
        }

        return NGX_HTTP_ASYNC_DL_PG_BUSY;
    }

    ngx_queue_insert_tail(&pg->waiting, &q->queue);
    q->waiting = 1;
    pg->nwaiting++;

    ngx_add_timer(&q->timer, pg->conf->timeout);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, q->log, 0,
                   "async_dl pg: query waits, %ui waiting", pg->nwaiting);

    return NGX_HTTP_ASYNC_DL_PG_OK;
}


/* a connection's life */


static void
ngx_http_async_dl_pg_set_state(ngx_http_async_dl_pg_conn_t *pc,
    ngx_http_async_dl_pg_state_e state)
{
#if (NGX_DEBUG)
    static const char  *names[] = {
        "down", "connecting", "setup", "idle", "deallocate", "prepare",
        "query"
    };

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, pc->pg->log, 0,
                   "async_dl pg #%ui: %s -> %s", pc->n, names[pc->state],
                   names[state]);
#endif

    if (pc->state == NGX_HTTP_ASYNC_DL_PG_DOWN
        && state != NGX_HTTP_ASYNC_DL_PG_DOWN)
    {
        pc->pg->nlive++;

    } else if (pc->state != NGX_HTTP_ASYNC_DL_PG_DOWN
               && state == NGX_HTTP_ASYNC_DL_PG_DOWN)
    {
        pc->pg->nlive--;
    }

    if (pc->state == NGX_HTTP_ASYNC_DL_PG_IDLE) {
        ngx_queue_remove(&pc->queue);
    }

    if (state == NGX_HTTP_ASYNC_DL_PG_IDLE) {
        ngx_queue_insert_tail(&pc->pg->idle, &pc->queue);
    }

    pc->state = state;
}


static void
ngx_http_async_dl_pg_connect(ngx_http_async_dl_pg_conn_t *pc)
{
    ngx_http_async_dl_pg_t  *pg;

    pg = pc->pg;

    pc->sock.pgconn = PQconnectStartParams(pg->conf->keywords,
                                           pg->conf->values, 0);
    if (pc->sock.pgconn == NULL) {
        ngx_http_async_dl_pg_close(pc, "out of memory");
        return;
    }

    PQsetNoticeProcessor(pc->sock.pgconn, ngx_http_async_dl_pg_notice, pg);

    pc->prepared = 0;
    pc->stale = 0;
    ngx_http_async_dl_pg_set_state(pc, NGX_HTTP_ASYNC_DL_PG_CONNECTING);

    if (ngx_http_async_dl_pg_sock_start(&pc->sock) != NGX_OK) {
        ngx_http_async_dl_pg_close(pc, pc->sock.error);
        return;
    }

    ngx_add_timer(&pc->timer, pg->conf->timeout);
}


static void
ngx_http_async_dl_pg_connect_poll(ngx_http_async_dl_pg_conn_t *pc)
{
    ngx_int_t                rc;
    ngx_http_async_dl_pg_t  *pg;

    pg = pc->pg;
    pc->log.action = "connecting to postgres";

    rc = ngx_http_async_dl_pg_sock_poll(&pc->sock);

    if (rc == NGX_AGAIN) {
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_async_dl_pg_close(pc, pc->sock.error);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pg->log, 0,
                   "async_dl pg #%ui: connected", pc->n);

    if (ngx_http_async_dl_pg_sock_events(&pc->sock, 1, 0) != NGX_OK) {
        ngx_http_async_dl_pg_close(pc, "cannot add events");
        return;
    }

    if (!PQsendQuery(pc->sock.pgconn, pg->setup)) {
        ngx_http_async_dl_pg_close(pc, PQerrorMessage(pc->sock.pgconn));
        return;
    }

    ngx_http_async_dl_pg_set_state(pc, NGX_HTTP_ASYNC_DL_PG_SETUP);

    if (ngx_http_async_dl_pg_sock_flush(&pc->sock) != NGX_OK) {
        ngx_http_async_dl_pg_close(pc, PQerrorMessage(pc->sock.pgconn));
    }
}


static void
ngx_http_async_dl_pg_write_handler(ngx_event_t *wev)
{
    ngx_connection_t             *c;
    ngx_http_async_dl_pg_conn_t  *pc;

    c = wev->data;
    pc = c->data;

    if (pc->state == NGX_HTTP_ASYNC_DL_PG_CONNECTING) {
        if (pc->sock.poll == PGRES_POLLING_WRITING) {
            ngx_http_async_dl_pg_connect_poll(pc);
        }
        return;
    }

    if (ngx_http_async_dl_pg_sock_flush(&pc->sock) != NGX_OK) {
        ngx_http_async_dl_pg_close(pc, PQerrorMessage(pc->sock.pgconn));
    }
}


static void
ngx_http_async_dl_pg_read_handler(ngx_event_t *rev)
{
    PGresult                     *res;
    PGnotify                     *notify;
    ngx_connection_t             *c;
    ngx_http_async_dl_pg_conn_t  *pc;

    c = rev->data;
    pc = c->data;

    if (pc->state == NGX_HTTP_ASYNC_DL_PG_CONNECTING) {
        if (pc->sock.poll == PGRES_POLLING_READING) {
            ngx_http_async_dl_pg_connect_poll(pc);
        }
        return;
    }

    if (!PQconsumeInput(pc->sock.pgconn)) {
        ngx_http_async_dl_pg_close(pc, PQerrorMessage(pc->sock.pgconn));
        return;
    }

    /* libpq: after consuming input, try to flush pending output again */
    if (pc->sock.c->write->active
        && ngx_http_async_dl_pg_sock_flush(&pc->sock) != NGX_OK)
    {
        ngx_http_async_dl_pg_close(pc, PQerrorMessage(pc->sock.pgconn));
        return;
    }

    while ((notify = PQnotifies(pc->sock.pgconn)) != NULL) {
        PQfreemem(notify);
    }

    if (pc->state == NGX_HTTP_ASYNC_DL_PG_IDLE) {
        /* an idle connection speaks only when the server drops it */
        if (PQstatus(pc->sock.pgconn) == CONNECTION_BAD) {
            ngx_http_async_dl_pg_close(pc, PQerrorMessage(pc->sock.pgconn));
        }
        return;
    }

    while (!PQisBusy(pc->sock.pgconn)) {
        res = PQgetResult(pc->sock.pgconn);

        if (res == NULL) {
            ngx_http_async_dl_pg_done(pc);
            return;
        }

        /* one statement: keep its result, or an error that came after */

        if (pc->result == NULL) {
            pc->result = res;

        } else if (PQresultStatus(res) == PGRES_FATAL_ERROR) {
            PQclear(pc->result);
            pc->result = res;

        } else {
            PQclear(res);
        }
    }

    if (PQstatus(pc->sock.pgconn) == CONNECTION_BAD) {
        ngx_http_async_dl_pg_close(pc, PQerrorMessage(pc->sock.pgconn));
    }
}


static void
ngx_http_async_dl_pg_timer_handler(ngx_event_t *ev)
{
    ngx_http_async_dl_pg_conn_t  *pc = ev->data;

    switch (pc->state) {

    case NGX_HTTP_ASYNC_DL_PG_DOWN:
        ngx_http_async_dl_pg_connect(pc);
        return;

    case NGX_HTTP_ASYNC_DL_PG_CONNECTING:
    case NGX_HTTP_ASYNC_DL_PG_SETUP:
        ngx_http_async_dl_pg_close(pc, "connection timed out");
        return;

    default:
        /* a detached statement that the server did not end in time */
        ngx_http_async_dl_pg_close(pc, "no answer to a timed out statement");
        return;
    }
}


static ngx_int_t
ngx_http_async_dl_pg_send(ngx_http_async_dl_pg_conn_t *pc,
    ngx_http_async_dl_pg_query_t *q)
{
    int                           rc;
    u_char                        sql[NGX_HTTP_ASYNC_DL_PG_NAME_LEN + 16];
    uint64_t                      bit;
    ngx_http_async_dl_pg_stmt_t  *st;

    st = &pc->pg->conf->stmts[q->stmt];
    bit = (uint64_t) 1 << q->stmt;

    if (pc->prepared & bit) {
        rc = PQsendQueryPrepared(pc->sock.pgconn, st->name,
                                 st->nparams, q->params, NULL, NULL, 0);
        ngx_http_async_dl_pg_set_state(pc, NGX_HTTP_ASYNC_DL_PG_QUERY);

    } else if (pc->stale & bit) {
        /* the server still has the statement that no longer fits */
        *ngx_snprintf(sql, sizeof(sql) - 1, "DEALLOCATE \"%s\"", st->name)
                                                                        = '\0';
        rc = PQsendQuery(pc->sock.pgconn, (char *) sql);
        ngx_http_async_dl_pg_set_state(pc, NGX_HTTP_ASYNC_DL_PG_DEALLOCATE);

    } else {
        rc = PQsendPrepare(pc->sock.pgconn, st->name, st->sql, st->nparams,
                           NULL);
        ngx_http_async_dl_pg_set_state(pc, NGX_HTTP_ASYNC_DL_PG_PREPARE);
    }

    if (!rc || ngx_http_async_dl_pg_sock_flush(&pc->sock) != NGX_OK) {
        /* q is not attached yet: closing does not complete it */
        ngx_http_async_dl_pg_close(pc, PQerrorMessage(pc->sock.pgconn));
        return NGX_ERROR;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, q->log, 0,
                   "async_dl pg #%ui: %s \"%s\"", pc->n,
                   pc->state == NGX_HTTP_ASYNC_DL_PG_QUERY ? "run"
                   : pc->state == NGX_HTTP_ASYNC_DL_PG_PREPARE ? "prepare"
                   : "deallocate", st->name);

    pc->query = q;
    pc->stmt = q->stmt;
    q->conn = pc;
    pc->log.action = "running a postgres statement";

    return NGX_OK;
}


/* all results of what was sent are in */

static void
ngx_http_async_dl_pg_done(ngx_http_async_dl_pg_conn_t *pc)
{
    PGresult                       *res;
    uint64_t                        bit;
    ngx_uint_t                      again;
    ExecStatusType                  st;
    ngx_http_async_dl_pg_query_t   *q;
    ngx_http_async_dl_pg_status_e   status;

    res = pc->result;
    pc->result = NULL;
    q = pc->query;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    bit = (uint64_t) 1 << pc->stmt;
    again = 0;                      /* send q on this connection again */

    switch (pc->state) {

    case NGX_HTTP_ASYNC_DL_PG_SETUP:

        if (st != PGRES_COMMAND_OK) {
            ngx_http_async_dl_pg_close(pc, res ? PQresultErrorMessage(res)
                                               : "no answer to setup");
            if (res) {
                PQclear(res);
            }
            return;
        }

        PQclear(res);

        if (pc->failures) {
            ngx_log_error(NGX_LOG_NOTICE, pc->pg->log, 0,
                          "async_dl: postgres connection #%ui is back",
                          pc->n);
        }

        pc->failures = 0;
        pc->backoff = 0;
        ngx_str_set(&pc->pg->last_error, "");

        ngx_http_async_dl_pg_release(pc);
        return;

    case NGX_HTTP_ASYNC_DL_PG_DEALLOCATE:

        /* the old statement is gone (26000: it already was): prepare it */

        if (st == PGRES_COMMAND_OK
            || ngx_http_async_dl_pg_is(res, "26000"))
        {
            pc->stale &= ~bit;
            again = 1;
        }

        break;

    case NGX_HTTP_ASYNC_DL_PG_PREPARE:

        if (st == PGRES_COMMAND_OK) {
            pc->prepared |= bit;
            again = 1;

        } else if (ngx_http_async_dl_pg_is(res, "42P05")) {
            /* the server has one of that name: replace it */
            pc->stale |= bit;

            if (q && !q->retried) {
                q->retried = 1;
                again = 1;
            }
        }

        break;

    default: /* NGX_HTTP_ASYNC_DL_PG_QUERY */

        /*
         * 0A000 "cached plan must not change result type" after a schema
         * change: the statement is still on the server, it is replaced;
         * 26000: it is gone, it is prepared.  Neither ran anything: the
         * query is run again, once.
         */

        if (ngx_http_async_dl_pg_is(res, "0A000")
            || ngx_http_async_dl_pg_is(res, "26000"))
        {
            pc->prepared &= ~bit;

            if (ngx_http_async_dl_pg_is(res, "0A000")) {
                pc->stale |= bit;
            }

            ngx_log_error(NGX_LOG_NOTICE, q ? q->log : pc->pg->log, 0,
                          "async_dl: postgres statement \"%s\" on "
                          "connection #%ui is prepared again: %s",
                          pc->pg->conf->stmts[pc->stmt].name, pc->n,
                          ngx_http_async_dl_pg_message(res));

            if (q && !q->retried) {
                q->retried = 1;
                again = 1;
            }
        }

        break;
    }

    if (PQstatus(pc->sock.pgconn) == CONNECTION_BAD) {
        /* the connection was lost while the statement ran */
        if (res) {
            PQclear(res);
        }

        ngx_http_async_dl_pg_close(pc, PQerrorMessage(pc->sock.pgconn));
        return;
    }

    pc->query = NULL;

    if (again) {
        if (res) {
            PQclear(res);
        }

        if (q == NULL) {
            /* detached: nothing to run */
            ngx_http_async_dl_pg_release(pc);
            return;
        }

        q->conn = NULL;

        if (ngx_http_async_dl_pg_send(pc, q) != NGX_OK) {
            ngx_http_async_dl_pg_complete(q, NGX_HTTP_ASYNC_DL_PG_UNAVAILABLE,
                                          NULL);
        }

        return;
    }

    if (q == NULL) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pc->pg->log, 0,
                       "async_dl pg #%ui: result of a detached query dropped",
                       pc->n);
        if (res) {
            PQclear(res);
        }

        ngx_http_async_dl_pg_release(pc);
        return;
    }

    status = (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
             ? NGX_HTTP_ASYNC_DL_PG_OK : NGX_HTTP_ASYNC_DL_PG_SQL_ERROR;

    /* the connection serves the next query before this one's handler runs */
    ngx_http_async_dl_pg_release(pc);

    ngx_http_async_dl_pg_complete(q, status, res);
}


static ngx_int_t
ngx_http_async_dl_pg_is(PGresult *res, const char *sqlstate)
{
    const char  *state;

    if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR) {
        return 0;
    }

    state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    return state != NULL && ngx_strcmp(state, sqlstate) == 0;
}


static void
ngx_http_async_dl_pg_release(ngx_http_async_dl_pg_conn_t *pc)
{
    ngx_http_async_dl_pg_set_state(pc, NGX_HTTP_ASYNC_DL_PG_IDLE);
    pc->log.action = NULL;

    ngx_http_async_dl_pg_dispatch(pc->pg);
}


static void
ngx_http_async_dl_pg_dispatch(ngx_http_async_dl_pg_t *pg)
{
    ngx_queue_t                   *link;
    ngx_http_async_dl_pg_conn_t   *pc;
    ngx_http_async_dl_pg_query_t  *q;

    while (!ngx_queue_empty(&pg->idle) && !ngx_queue_empty(&pg->waiting)) {

        link = ngx_queue_head(&pg->idle);
        pc = ngx_queue_data(link, ngx_http_async_dl_pg_conn_t, queue);

        link = ngx_queue_head(&pg->waiting);
        q = ngx_queue_data(link, ngx_http_async_dl_pg_query_t, queue);

        ngx_queue_remove(link);
        q->waiting = 0;
        pg->nwaiting--;

        /*
         * A query that waited for most of its time would be answered 503
         * almost at once, leaving the connection busy with a statement
         * nobody waits for: under overload that snowballs.  Give it up.
         */
        if (q->timer.timer_set
            && (ngx_msec_int_t) (q->timer.timer.key - ngx_current_msec)
               < (ngx_msec_int_t) (pg->conf->timeout / 10))
        {
            ngx_http_async_dl_pg_complete(q, NGX_HTTP_ASYNC_DL_PG_TIMEOUT,
                                          NULL);
            continue;
        }

        if (ngx_http_async_dl_pg_send(pc, q) != NGX_OK) {
            /* that connection is closed now: q waits for another one */
            ngx_queue_insert_head(&pg->waiting, &q->queue);
            q->waiting = 1;
            pg->nwaiting++;
        }
    }

    ngx_http_async_dl_pg_fail_waiting(pg);
}


static void
ngx_http_async_dl_pg_close(ngx_http_async_dl_pg_conn_t *pc,
    const char *reason)
{
    ngx_uint_t                     was_up;
    ngx_http_async_dl_pg_t        *pg;
    ngx_http_async_dl_pg_query_t  *q;

    pg = pc->pg;
    q = pc->query;
    pc->query = NULL;

    was_up = (pc->state >= NGX_HTTP_ASYNC_DL_PG_IDLE);

    ngx_http_async_dl_pg_error(pg, reason);

    if (pc->failures++ == 0) {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "async_dl: postgres connection #%ui %s: %V", pc->n,
                      was_up ? "lost" : "failed", &pg->last_error);

    } else {
        ngx_log_error(NGX_LOG_INFO, pg->log, 0,
                      "async_dl: postgres connection #%ui failed again "
                      "(%ui): %V", pc->n, pc->failures, &pg->last_error);
    }

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    if (pc->result) {
        PQclear(pc->result);
        pc->result = NULL;
    }

    ngx_http_async_dl_pg_sock_close(&pc->sock);

    ngx_http_async_dl_pg_set_state(pc, NGX_HTTP_ASYNC_DL_PG_DOWN);

    /* a connection that worked is retried at once, then with backoff */

    if (was_up) {
        pc->backoff = 0;

    } else if (pc->backoff == 0) {
        pc->backoff = NGX_HTTP_ASYNC_DL_PG_BACKOFF;

    } else {
        pc->backoff = ngx_min(pc->backoff * 2,
                              NGX_HTTP_ASYNC_DL_PG_BACKOFF_MAX);
    }

    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(&pc->timer, pc->backoff ? pc->backoff : 1);
    }

    if (q) {
        q->conn = NULL;
        ngx_http_async_dl_pg_complete(q, NGX_HTTP_ASYNC_DL_PG_UNAVAILABLE,
                                      NULL);
    }

    ngx_http_async_dl_pg_fail_waiting(pg);
}


/* keep the last reason, one line, for logs and the health route */

static void
ngx_http_async_dl_pg_error(ngx_http_async_dl_pg_t *pg, const char *msg)
{
    u_char  *p, *last;

    p = pg->error;
    last = pg->error + sizeof(pg->error);

    while (*msg && p < last) {
        *p++ = (*msg == '\n' || *msg == '\r' || *msg == '\t') ? ' ' : *msg;
        msg++;
    }

    while (p > pg->error && p[-1] == ' ') {
        p--;
    }

    pg->last_error.data = pg->error;
    pg->last_error.len = p - pg->error;

    if (pg->last_error.len == 0) {
        ngx_str_set(&pg->last_error, "connection failed");
    }
}


static void
ngx_http_async_dl_pg_notice(void *arg, const char *message)
{
    ngx_http_async_dl_pg_t  *pg = arg;

    size_t  len;

    len = ngx_strlen(message);

    while (len && (message[len - 1] == '\n' || message[len - 1] == '\r')) {
        len--;
    }

    ngx_log_error(NGX_LOG_INFO, pg->log, 0, "async_dl: postgres: %*s",
                  len, message);
}


const char *
ngx_http_async_dl_pg_message(PGresult *res)
{
    const char  *msg;

    msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    return msg ? msg : "no message from the server";
}
