
/*
 * A query's life in the pool (ngx_http_async_dl_pg.h): made in its
 * caller's pool, with one timer over its wait and its run; detached when
 * its caller goes away (its pool's cleanup), or completed exactly once,
 * when its result, its timeout or the loss of every connection comes.
 * The connections that run queries are ngx_http_async_dl_pg.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_async_dl_pg.h"
#include "ngx_http_async_dl_pg_sock.h"
#include "ngx_http_async_dl_pg_pool.h"


static void ngx_http_async_dl_pg_query_cleanup(void *data);
static void ngx_http_async_dl_pg_count(ngx_http_async_dl_pg_query_t *q,
    ngx_http_async_dl_pg_status_e status);


ngx_msec_t  ngx_http_async_dl_pg_buckets[NGX_HTTP_ASYNC_DL_PG_BUCKETS] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000
};
static void ngx_http_async_dl_pg_query_timer_handler(ngx_event_t *ev);


ngx_http_async_dl_pg_query_t *
ngx_http_async_dl_pg_query(ngx_pool_t *pool, ngx_log_t *log)
{
    ngx_pool_cleanup_t            *cln;
    ngx_http_async_dl_pg_query_t  *q;

    q = ngx_pcalloc(pool, sizeof(ngx_http_async_dl_pg_query_t));
    if (q == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_async_dl_pg_query_cleanup;
    cln->data = q;

    q->log = log;
    q->timer.handler = ngx_http_async_dl_pg_query_timer_handler;
    q->timer.data = q;
    q->timer.log = log;

    return q;
}


void
ngx_http_async_dl_pg_detach(ngx_http_async_dl_pg_query_t *q)
{
    ngx_http_async_dl_pg_conn_t  *pc;

    if (q->timer.timer_set) {
        ngx_del_timer(&q->timer);
    }

    if (q->waiting) {
        ngx_queue_remove(&q->queue);
        q->waiting = 0;
        q->pg->nwaiting--;
    }

    pc = q->conn;

    if (pc) {
        /* the statement runs on; its results will be drained */
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, q->log, 0,
                       "async_dl pg: query detached from connection #%ui",
                       pc->n);

        pc->query = NULL;
        q->conn = NULL;

        if (!pc->timer.timer_set) {
            ngx_add_timer(&pc->timer,
                          q->pg->conf->timeout + NGX_HTTP_ASYNC_DL_PG_GRACE);
        }
    }
}


static void
ngx_http_async_dl_pg_query_cleanup(void *data)
{
    ngx_http_async_dl_pg_query_t  *q = data;

    ngx_http_async_dl_pg_detach(q);

    if (q->result) {
        PQclear(q->result);
        q->result = NULL;
    }
}


static void
ngx_http_async_dl_pg_query_timer_handler(ngx_event_t *ev)
{
    ngx_http_async_dl_pg_query_t  *q = ev->data;

    ngx_log_error(NGX_LOG_ERR, q->log, 0,
                  "async_dl: postgres query \"%s\" timed out after %M ms%s",
                  q->pg->conf->stmts[q->stmt].name, q->pg->conf->timeout,
                  q->waiting ? " waiting for a connection" : "");

    ngx_http_async_dl_pg_detach(q);
    ngx_http_async_dl_pg_complete(q, NGX_HTTP_ASYNC_DL_PG_TIMEOUT, NULL);
}


void
ngx_http_async_dl_pg_complete(ngx_http_async_dl_pg_query_t *q,
    ngx_http_async_dl_pg_status_e status, PGresult *res)
{
    if (q->timer.timer_set) {
        ngx_del_timer(&q->timer);
    }

    q->conn = NULL;
    q->status = status;
    q->result = res;

    if (q->pg && q->pg->counters && !q->uncounted) {
        ngx_http_async_dl_pg_count(q, status);
    }

    /* the handler may free q and everything of its request */
    q->handler(q);
}


void
ngx_http_async_dl_pg_fail_waiting(ngx_http_async_dl_pg_t *pg)
{
    ngx_queue_t                   *link;
    ngx_http_async_dl_pg_query_t  *q;

    while (!ngx_queue_empty(&pg->waiting) && pg->nlive == 0) {
        link = ngx_queue_head(&pg->waiting);
        q = ngx_queue_data(link, ngx_http_async_dl_pg_query_t, queue);

        ngx_queue_remove(link);
        q->waiting = 0;
        pg->nwaiting--;

        ngx_http_async_dl_pg_complete(q, NGX_HTTP_ASYNC_DL_PG_UNAVAILABLE,
                                      NULL);
    }
}


/* the answer in the pool's counters: its kind, and how long it took */

static void
ngx_http_async_dl_pg_count(ngx_http_async_dl_pg_query_t *q,
    ngx_http_async_dl_pg_status_e status)
{
    ngx_uint_t                        i;
    ngx_msec_t                        ms;
    ngx_http_async_dl_pg_counters_t  *c;

    c = q->pg->counters;

    switch (status) {

    case NGX_HTTP_ASYNC_DL_PG_OK:
        (void) ngx_atomic_fetch_add(&c->queries, 1);
        break;

    case NGX_HTTP_ASYNC_DL_PG_SQL_ERROR:
        (void) ngx_atomic_fetch_add(&c->queries, 1);
        (void) ngx_atomic_fetch_add(&c->sql_errors, 1);
        break;

    case NGX_HTTP_ASYNC_DL_PG_TIMEOUT:
        (void) ngx_atomic_fetch_add(&c->timeouts, 1);
        return;

    default:
        (void) ngx_atomic_fetch_add(&c->unavailable, 1);
        return;
    }

    ms = ngx_current_msec - q->started;

    for (i = 0; i < NGX_HTTP_ASYNC_DL_PG_BUCKETS; i++) {
        if (ms <= ngx_http_async_dl_pg_buckets[i]) {
            break;
        }
    }

    /* the bucket it falls in; the sums are cumulated when read */
    (void) ngx_atomic_fetch_add(&c->le[i], 1);
    (void) ngx_atomic_fetch_add(&c->ms, (ngx_atomic_int_t) ms);
}
