
/*
 * The module's metrics (ngx_http_async_dl_metrics.h): the shared zone, the
 * requests counted at the log phase, each process's gauges, the queue
 * read at most once a second, and the Prometheus text of it all.
 *
 * The queue is read by a query of the process (in its own pool), never of
 * a scrape: a scrape answers at once with the figures last read, and may
 * start the next read.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl_metrics.h"


#define NGX_HTTP_ASYNC_DL_M_ZONE_SIZE   (64 * 1024)
#define NGX_HTTP_ASYNC_DL_M_TICK        1000   /* ms between gauges */
#define NGX_HTTP_ASYNC_DL_M_QUEUE_AGE   1000   /* ms a queue read is kept */
#define NGX_HTTP_ASYNC_DL_M_TEXT        8192   /* all but the requests */
#define NGX_HTTP_ASYNC_DL_M_LINE        96     /* a requests line */
#define NGX_HTTP_ASYNC_DL_M_NONE        NGX_HTTP_ASYNC_DL_M_ROUTES
#define NGX_HTTP_ASYNC_DL_M_DELIVERY    (NGX_HTTP_ASYNC_DL_M_ROUTES + 1)


static ngx_int_t ngx_http_async_dl_m_init_zone(ngx_shm_zone_t *zone,
    void *data);
static ngx_int_t ngx_http_async_dl_m_log(ngx_http_request_t *r);
static void ngx_http_async_dl_m_tick(ngx_event_t *ev);
static void ngx_http_async_dl_m_gauges(void);
static ngx_int_t ngx_http_async_dl_m_handler(ngx_http_request_t *r);
static uint64_t ngx_http_async_dl_m_now(void);
static void ngx_http_async_dl_m_read_queue(void);
static void ngx_http_async_dl_m_queue_read(ngx_http_async_dl_pg_query_t *q);
static u_char *ngx_http_async_dl_m_text(u_char *p, u_char *last);
static uint64_t ngx_http_async_dl_m_gauge_value(ngx_atomic_t *a);
static char *ngx_http_async_dl_m_le(ngx_msec_t ms, u_char *buf);


static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_m_stmt = {
    "async_dl_metrics_queue",
    "SELECT j.queued, j.processing, j.oldest, f.pending, f.downloading,"
    " j.paused, f.held"
    " FROM (SELECT count(*) FILTER (WHERE s = 'queued') AS queued,"
    " count(*) FILTER (WHERE s = 'processing') AS processing,"
    " count(*) FILTER (WHERE s = 'paused') AS paused,"
    " coalesce((extract(epoch FROM now() - min(created_at)"
    " FILTER (WHERE s = 'queued')) * 1000)::bigint, 0) AS oldest"
    " FROM (SELECT async_dl_job_shown_status(x) AS s, x.created_at"
    " FROM async_dl_jobs x WHERE x.status IN ('queued', 'processing')) y) j,"
    " (SELECT count(*) FILTER (WHERE next_attempt_at <> 'infinity')"
    " AS pending,"
    " count(*) FILTER (WHERE next_attempt_at = 'infinity') AS held,"
    " (SELECT count(*) FROM async_dl_files"
    " WHERE status = 'downloading') AS downloading"
    " FROM async_dl_files WHERE status = 'pending') f", 0
};

static ngx_uint_t                   ngx_http_async_dl_m_stmt_index;
static ngx_shm_zone_t              *ngx_http_async_dl_m_zone;
static ngx_slab_pool_t             *ngx_http_async_dl_m_shpool;
static ngx_event_t                  ngx_http_async_dl_m_timer;
static ngx_http_async_dl_pg_t      *ngx_http_async_dl_m_pg;
static ngx_pool_t                  *ngx_http_async_dl_m_reading; /* its query */
static ngx_msec_t                   ngx_http_async_dl_m_pg_timeout;

ngx_http_async_dl_m_t              *ngx_http_async_dl_m;
ngx_http_async_dl_m_slot_t         *ngx_http_async_dl_m_slot;


/* configuration */


char *
ngx_http_async_dl_metrics_init_conf(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf)
{
    ngx_int_t                   n;
    ngx_str_t                   name;
    ngx_http_async_dl_route_t  *rt;

    for (n = 0, rt = ngx_http_async_dl_routes_table(); rt->path; rt++) {
        n++;
    }

    if (n > NGX_HTTP_ASYNC_DL_M_ROUTES) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "async_dl: %i routes, metrics count %d",
                           n, NGX_HTTP_ASYNC_DL_M_ROUTES);
        return NGX_CONF_ERROR;
    }

    /* (the version in the name: a zone of another layout is never taken
     * over by a reload) */
    ngx_str_set(&name, "async_dl_metrics_2");

    ngx_http_async_dl_m_zone = ngx_shared_memory_add(cf, &name,
                                   NGX_HTTP_ASYNC_DL_M_ZONE_SIZE,
                                   &ngx_http_async_dl_module);
    if (ngx_http_async_dl_m_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_http_async_dl_m_zone->init = ngx_http_async_dl_m_init_zone;
    ngx_http_async_dl_m_zone->data = amcf;

    n = ngx_http_async_dl_pg_add_stmt(cf, &amcf->pg, &ngx_http_async_dl_m_stmt);
    if (n == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    ngx_http_async_dl_m_stmt_index = n;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_async_dl_m_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_slab_pool_t        *shpool;
    ngx_http_async_dl_m_t  *m;

    shpool = (ngx_slab_pool_t *) zone->shm.addr;
    ngx_http_async_dl_m_shpool = shpool;

    if (data || zone->shm.exists) {
        /* a reload: the counters go on */
        ngx_http_async_dl_m = shpool->data;
        return NGX_OK;
    }

    m = ngx_slab_alloc(shpool, sizeof(ngx_http_async_dl_m_t));
    if (m == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(m, sizeof(ngx_http_async_dl_m_t));

    shpool->data = m;
    ngx_http_async_dl_m = m;

    return NGX_OK;
}


/* postconfiguration: the requests are counted at the log phase */

ngx_int_t
ngx_http_async_dl_metrics_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_async_dl_m_log;

    return NGX_OK;
}


char *
ngx_http_async_dl_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_async_dl_m_handler;

    return NGX_CONF_OK;
}


/* process life: this process's slot, its pool counting into the zone */

void
ngx_http_async_dl_metrics_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                      i;
    ngx_atomic_uint_t               pid;
    ngx_http_async_dl_m_slot_t     *slot;
    ngx_http_async_dl_main_conf_t  *amcf;

    if (ngx_http_async_dl_m == NULL) {
        return;
    }

    amcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_async_dl_module);

    /*
     * A free slot, or one whose process is gone without freeing it (it
     * crashed): the old processes of a reload keep theirs meanwhile.
     */

    for (i = 0; i < NGX_HTTP_ASYNC_DL_M_SLOTS; i++) {
        slot = &ngx_http_async_dl_m->slots[i];
        pid = slot->pid;

        if (pid != 0 && pid != (ngx_atomic_uint_t) ngx_pid
            && (kill((ngx_pid_t) pid, 0) == 0 || ngx_errno != NGX_ESRCH))
        {
            continue;
        }

        if (ngx_atomic_cmp_set(&slot->pid, pid, ngx_pid)) {
            slot->pg_conns = 0;
            slot->pg_busy = 0;
            slot->pg_waiting = 0;
            slot->subscribers[0] = 0;
            slot->subscribers[1] = 0;
            ngx_http_async_dl_m_slot = slot;
            break;
        }
    }

    if (ngx_http_async_dl_m_slot == NULL) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "async_dl: no metrics slot left for this process: "
                      "its gauges are not counted");
    }

    if (amcf && amcf->pool) {
        ngx_http_async_dl_m_pg = amcf->pool;
        ngx_http_async_dl_m_pg_timeout = amcf->pg_timeout;
        ngx_http_async_dl_pg_count_into(amcf->pool, &ngx_http_async_dl_m->pg);

        ngx_http_async_dl_m_timer.handler = ngx_http_async_dl_m_tick;
        ngx_http_async_dl_m_timer.log = cycle->log;
        ngx_http_async_dl_m_timer.cancelable = 1;
        ngx_add_timer(&ngx_http_async_dl_m_timer, NGX_HTTP_ASYNC_DL_M_TICK);
    }
}


void
ngx_http_async_dl_metrics_exit_process(void)
{
    if (ngx_http_async_dl_m_slot) {
        /* its own slot only */
        (void) ngx_atomic_cmp_set(&ngx_http_async_dl_m_slot->pid, ngx_pid, 0);
        ngx_http_async_dl_m_slot = NULL;
    }

    if (ngx_http_async_dl_m_reading) {
        ngx_destroy_pool(ngx_http_async_dl_m_reading);
        ngx_http_async_dl_m_reading = NULL;
    }

    ngx_http_async_dl_m_pg = NULL;
}


static void
ngx_http_async_dl_m_tick(ngx_event_t *ev)
{
    ngx_http_async_dl_m_gauges();
    ngx_add_timer(ev, NGX_HTTP_ASYNC_DL_M_TICK);
}


/* the pool's gauges into this process's slot */

static void
ngx_http_async_dl_m_gauges(void)
{
    ngx_uint_t                   up, busy, waiting;
    ngx_http_async_dl_m_slot_t  *slot;

    slot = ngx_http_async_dl_m_slot;

    if (slot == NULL || ngx_http_async_dl_m_pg == NULL) {
        return;
    }

    ngx_http_async_dl_pg_stats(ngx_http_async_dl_m_pg, &up, &busy, &waiting);

    slot->pg_conns = up;
    slot->pg_busy = busy;
    slot->pg_waiting = waiting;
}


/* the log phase: a request the module answered, by route and class */

static ngx_int_t
ngx_http_async_dl_m_log(ngx_http_request_t *r)
{
    ngx_uint_t                  row, status;
    ngx_http_async_dl_ctx_t    *ctx;
    ngx_http_async_dl_route_t  *routes;

    if (r != r->main || ngx_http_async_dl_m == NULL) {
        return NGX_OK;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    if (ngx_http_async_dl_delivered(r)) {
        /* the bytes came through the delivery location, which had the
         * request's module context cleared */
        row = NGX_HTTP_ASYNC_DL_M_DELIVERY;

    } else if (ctx == NULL) {
        return NGX_OK;

    } else {
        routes = ngx_http_async_dl_routes_table();
        row = ctx->route ? (ngx_uint_t) (ctx->route - routes)
                         : NGX_HTTP_ASYNC_DL_M_NONE;

        if (row > NGX_HTTP_ASYNC_DL_M_NONE) {
            row = NGX_HTTP_ASYNC_DL_M_NONE;
        }
    }

    status = r->headers_out.status;
    status = (status >= 100 && status < 600) ? status / 100 - 1 : 4;

    (void) ngx_atomic_fetch_add(&ngx_http_async_dl_m->requests[row][status],
                                1);

    return NGX_OK;
}


/* the location handler */


static ngx_int_t
ngx_http_async_dl_m_handler(ngx_http_request_t *r)
{
    size_t        size;
    ngx_int_t     rc, n;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_async_dl_m == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ngx_http_async_dl_m_gauges();
    ngx_http_async_dl_m_read_queue();

    /* room for every requests line of every route, and the rest */
    n = (NGX_HTTP_ASYNC_DL_M_ROUTES + 2) * 5;
    size = NGX_HTTP_ASYNC_DL_M_TEXT + n * NGX_HTTP_ASYNC_DL_M_LINE;

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_http_async_dl_m_text(b->pos, b->end);

    if (b->last == b->end) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "async_dl: the metrics do not fit in %uz bytes", size);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static uint64_t
ngx_http_async_dl_m_now(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}


/*
 * The queue is read again when the last read is a second old and no
 * process is reading it (a reader that died holds it for its query's
 * timeout and a second).  The answer goes to the zone; the scrape that
 * asked has already answered with what was there.
 */

static void
ngx_http_async_dl_m_read_queue(void)
{
    uint64_t                       now;
    ngx_uint_t                     read;
    ngx_pool_t                    *pool;
    ngx_http_async_dl_m_t         *m;
    ngx_http_async_dl_pg_query_t  *q;

    m = ngx_http_async_dl_m;

    if (ngx_http_async_dl_m_pg == NULL || ngx_http_async_dl_m_reading) {
        return;
    }

    now = ngx_http_async_dl_m_now();
    read = 0;

    ngx_shmtx_lock(&ngx_http_async_dl_m_shpool->mutex);

    if ((int64_t) (now - m->queue_read_at) >= NGX_HTTP_ASYNC_DL_M_QUEUE_AGE
        && (int64_t) (now - m->queue_reading_until) >= 0)
    {
        m->queue_reading_until = now + ngx_http_async_dl_m_pg_timeout + 1000;
        read = 1;
    }

    ngx_shmtx_unlock(&ngx_http_async_dl_m_shpool->mutex);

    if (!read) {
        return;
    }

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        goto failed;
    }

    q = ngx_http_async_dl_pg_query(pool, ngx_cycle->log);
    if (q == NULL) {
        goto failed;
    }

    q->stmt = ngx_http_async_dl_m_stmt_index;
    q->params = NULL;
    q->handler = ngx_http_async_dl_m_queue_read;
    q->data = NULL;
    q->uncounted = 1;

    if (ngx_http_async_dl_pg_run(ngx_http_async_dl_m_pg, q)
        != NGX_HTTP_ASYNC_DL_PG_OK)
    {
        goto failed;
    }

    ngx_http_async_dl_m_reading = pool;

    return;

failed:

    if (pool) {
        ngx_destroy_pool(pool);
    }

    ngx_shmtx_lock(&ngx_http_async_dl_m_shpool->mutex);
    m->queue_reading_until = 0;
    ngx_shmtx_unlock(&ngx_http_async_dl_m_shpool->mutex);
}


static void
ngx_http_async_dl_m_queue_read(ngx_http_async_dl_pg_query_t *q)
{
    ngx_int_t               i;
    ngx_pool_t             *pool;
    ngx_http_async_dl_m_t  *m;
    int64_t                 v[NGX_HTTP_ASYNC_DL_M_QUEUE_N];

    m = ngx_http_async_dl_m;
    pool = ngx_http_async_dl_m_reading;
    ngx_http_async_dl_m_reading = NULL;

    ngx_shmtx_lock(&ngx_http_async_dl_m_shpool->mutex);

    m->queue_reading_until = 0;

    if (q->status == NGX_HTTP_ASYNC_DL_PG_OK && PQntuples(q->result) == 1
        && PQnfields(q->result) == NGX_HTTP_ASYNC_DL_M_QUEUE_N)
    {
        for (i = 0; i < NGX_HTTP_ASYNC_DL_M_QUEUE_N; i++) {
            v[i] = ngx_atoof((u_char *) PQgetvalue(q->result, 0, i),
                             PQgetlength(q->result, 0, i));
        }

        ngx_memcpy(m->queue, v, sizeof(v));
        m->queue_read_at = ngx_http_async_dl_m_now();
        m->queue_reads++;
    }

    ngx_shmtx_unlock(&ngx_http_async_dl_m_shpool->mutex);

    /* the result was read: it goes with the query's pool */
    ngx_destroy_pool(pool);
}


/* a gauge of one process, which a reload's old process may have taken
 * below zero */

static uint64_t
ngx_http_async_dl_m_gauge_value(ngx_atomic_t *a)
{
    ngx_atomic_int_t  v;

    v = (ngx_atomic_int_t) *a;

    return v > 0 ? (uint64_t) v : 0;
}


/* the Prometheus text */

static u_char *
ngx_http_async_dl_m_text(u_char *p, u_char *last)
{
    u_char                       le[NGX_INT_T_LEN + 8];
    int64_t                      q[NGX_HTTP_ASYNC_DL_M_QUEUE_N];
    uint64_t                     n, cum, sum[5];
    uint64_t                     read_at, now;
    ngx_uint_t                   i, j, k, procs, nroutes, row;
    ngx_atomic_uint_t            pid;
    ngx_http_async_dl_m_t       *m;
    ngx_http_async_dl_route_t   *routes;
    ngx_http_async_dl_m_slot_t  *s;

    static const char  *classes[] = { "1xx", "2xx", "3xx", "4xx", "5xx" };

    m = ngx_http_async_dl_m;
    routes = ngx_http_async_dl_routes_table();

    p = ngx_slprintf(p, last,
            "# HELP async_dl_requests_total Requests the module answered, "
            "by route and status class.\n"
            "# TYPE async_dl_requests_total counter\n");

    /* rows of one path (GET and DELETE {id}) are one route */

    for (nroutes = 0;
         nroutes < NGX_HTTP_ASYNC_DL_M_ROUTES && routes[nroutes].path;
         nroutes++)
    { /* void */ }

    for (i = 0; i <= nroutes; i++) {

        if (i < nroutes) {
            for (k = 0; k < i; k++) {
                if (ngx_strcmp(routes[k].path, routes[i].path) == 0) {
                    break;
                }
            }

            if (k < i) {
                continue;           /* counted with the first of its path */
            }
        }

        ngx_memzero(sum, sizeof(sum));

        for (k = i; k <= nroutes; k++) {
            row = (k == nroutes) ? NGX_HTTP_ASYNC_DL_M_NONE : k;

            if (k == i
                || (i < nroutes && k < nroutes
                    && ngx_strcmp(routes[k].path, routes[i].path) == 0))
            {
                for (j = 0; j < 5; j++) {
                    sum[j] += m->requests[row][j];
                }
            }

            if (i == nroutes) {
                break;
            }
        }

        for (j = 0; j < 5; j++) {
            if (sum[j] == 0 && j != 1) {
                continue;           /* 2xx always: the series exists */
            }

            p = ngx_slprintf(p, last,
                    "async_dl_requests_total{route=\"%s\",code=\"%s\"} %uL\n",
                    i == nroutes ? "none" : routes[i].path, classes[j],
                    sum[j]);
        }
    }

    /* downloads whose bytes nginx streamed (async_dl_delivery proxy) */

    for (j = 0; j < 5; j++) {
        n = m->requests[NGX_HTTP_ASYNC_DL_M_DELIVERY][j];

        if (n || j == 1) {
            p = ngx_slprintf(p, last,
                    "async_dl_requests_total{route=\"delivery\",code=\"%s\"} "
                    "%uL\n", classes[j], n);
        }
    }

    /* PostgreSQL: the pools of all processes */

    procs = 0;
    ngx_memzero(sum, sizeof(sum));

    for (i = 0; i < NGX_HTTP_ASYNC_DL_M_SLOTS; i++) {
        s = &m->slots[i];

        pid = s->pid;

        if (pid == 0) {
            continue;
        }

        if (pid != (ngx_atomic_uint_t) ngx_pid
            && kill((ngx_pid_t) pid, 0) == -1 && ngx_errno == NGX_ESRCH)
        {
            /* its process died (killed) without freeing it: freed here */
            (void) ngx_atomic_cmp_set(&s->pid, pid, 0);
            continue;
        }

        procs++;
        sum[0] += s->pg_conns;
        sum[1] += s->pg_busy;
        sum[2] += s->pg_waiting;
        sum[3] += ngx_http_async_dl_m_gauge_value(
                      &s->subscribers[NGX_HTTP_ASYNC_DL_M_SSE]);
        sum[4] += ngx_http_async_dl_m_gauge_value(
                      &s->subscribers[NGX_HTTP_ASYNC_DL_M_WS]);
    }

    p = ngx_slprintf(p, last,
            "# HELP async_dl_worker_processes Worker processes reporting.\n"
            "# TYPE async_dl_worker_processes gauge\n"
            "async_dl_worker_processes %ui\n"
            "# HELP async_dl_postgres_connections PostgreSQL connections up.\n"
            "# TYPE async_dl_postgres_connections gauge\n"
            "async_dl_postgres_connections %uL\n"
            "# HELP async_dl_postgres_busy Connections running a query.\n"
            "# TYPE async_dl_postgres_busy gauge\n"
            "async_dl_postgres_busy %uL\n"
            "# HELP async_dl_postgres_waiting Queries waiting for a "
            "connection.\n"
            "# TYPE async_dl_postgres_waiting gauge\n"
            "async_dl_postgres_waiting %uL\n"
            "# HELP async_dl_postgres_queries_total Queries answered (rows "
            "or an SQL error).\n"
            "# TYPE async_dl_postgres_queries_total counter\n"
            "async_dl_postgres_queries_total %uA\n"
            "# HELP async_dl_postgres_errors_total Queries that got no "
            "answer, or an error, by kind.\n"
            "# TYPE async_dl_postgres_errors_total counter\n"
            "async_dl_postgres_errors_total{kind=\"sql\"} %uA\n"
            "async_dl_postgres_errors_total{kind=\"unavailable\"} %uA\n"
            "async_dl_postgres_errors_total{kind=\"timeout\"} %uA\n"
            "async_dl_postgres_errors_total{kind=\"busy\"} %uA\n"
            "# HELP async_dl_postgres_query_seconds Time from a query's "
            "start to its answer (timeouts are not in it).\n"
            "# TYPE async_dl_postgres_query_seconds histogram\n",
            procs, sum[0], sum[1], sum[2], m->pg.queries,
            m->pg.sql_errors, m->pg.unavailable, m->pg.timeouts, m->pg.busy);

    cum = 0;

    for (i = 0; i <= NGX_HTTP_ASYNC_DL_PG_BUCKETS; i++) {
        cum += m->pg.le[i];

        if (i == NGX_HTTP_ASYNC_DL_PG_BUCKETS) {
            p = ngx_slprintf(p, last,
                    "async_dl_postgres_query_seconds_bucket{le=\"+Inf\"} "
                    "%uL\n", cum);
            break;
        }

        p = ngx_slprintf(p, last,
                "async_dl_postgres_query_seconds_bucket{le=\"%s\"} %uL\n",
                ngx_http_async_dl_m_le(ngx_http_async_dl_pg_buckets[i], le),
                cum);
    }

    n = m->pg.ms;

    p = ngx_slprintf(p, last,
            "async_dl_postgres_query_seconds_sum %uL.%03uL\n"
            "async_dl_postgres_query_seconds_count %uL\n"
            "# HELP async_dl_stream_subscribers Event stream and WebSocket "
            "subscribers.\n"
            "# TYPE async_dl_stream_subscribers gauge\n"
            "async_dl_stream_subscribers{transport=\"sse\"} %uL\n"
            "async_dl_stream_subscribers{transport=\"websocket\"} %uL\n"
            "# HELP async_dl_stream_events_total Events sent to "
            "subscribers.\n"
            "# TYPE async_dl_stream_events_total counter\n"
            "async_dl_stream_events_total{transport=\"sse\"} %uA\n"
            "async_dl_stream_events_total{transport=\"websocket\"} %uA\n"
            "# HELP async_dl_listen_reconnects_total LISTEN connections "
            "made again after one was lost.\n"
            "# TYPE async_dl_listen_reconnects_total counter\n"
            "async_dl_listen_reconnects_total %uA\n",
            n / 1000, n % 1000, cum, sum[3], sum[4],
            m->events[NGX_HTTP_ASYNC_DL_M_SSE],
            m->events[NGX_HTTP_ASYNC_DL_M_WS], m->listen_reconnects);

    /* the queue as last read */

    ngx_shmtx_lock(&ngx_http_async_dl_m_shpool->mutex);
    ngx_memcpy(q, m->queue, sizeof(q));
    read_at = m->queue_read_at;
    n = m->queue_reads;
    ngx_shmtx_unlock(&ngx_http_async_dl_m_shpool->mutex);

    if (read_at == 0) {
        return p;
    }

    now = ngx_http_async_dl_m_now();
    read_at = now > read_at ? now - read_at : 0;

    p = ngx_slprintf(p, last,
            "# HELP async_dl_jobs Jobs not ended, by the status they "
            "show, as the database last said.\n"
            "# TYPE async_dl_jobs gauge\n"
            "async_dl_jobs{status=\"queued\"} %L\n"
            "async_dl_jobs{status=\"processing\"} %L\n"
            "async_dl_jobs{status=\"paused\"} %L\n"
            "# HELP async_dl_queue_oldest_seconds Age of the oldest queued "
            "job not paused.\n"
            "# TYPE async_dl_queue_oldest_seconds gauge\n"
            "async_dl_queue_oldest_seconds %L.%03L\n"
            "# HELP async_dl_files Files waiting, in flight, and held by a "
            "pause.\n"
            "# TYPE async_dl_files gauge\n"
            "async_dl_files{status=\"pending\"} %L\n"
            "async_dl_files{status=\"downloading\"} %L\n"
            "async_dl_files{status=\"paused\"} %L\n"
            "# HELP async_dl_queue_read_age_seconds How old the figures "
            "of the queue are (read at most once a second).\n"
            "# TYPE async_dl_queue_read_age_seconds gauge\n"
            "async_dl_queue_read_age_seconds %uL.%03uL\n"
            "# HELP async_dl_queue_reads_total Reads of the queue from "
            "the database.\n"
            "# TYPE async_dl_queue_reads_total counter\n"
            "async_dl_queue_reads_total %uL\n",
            q[0], q[1], q[5], q[2] / 1000, q[2] % 1000, q[3], q[4], q[6],
            read_at / 1000, read_at % 1000, n);

    return p;
}


/* a bound in seconds as Prometheus writes them: "0.005", "1", "2.5" */

static char *
ngx_http_async_dl_m_le(ngx_msec_t ms, u_char *buf)
{
    u_char  *p;

    p = ngx_sprintf(buf, "%M", ms / 1000);

    if (ms % 1000) {
        p = ngx_sprintf(p, ".%03M", ms % 1000);

        while (p[-1] == '0') {
            p--;
        }
    }

    *p = '\0';

    return (char *) buf;
}
