
/*
 * GET {p}stream/{id}: Server-Sent Events.
 *
 * Per nginx worker process, one hub: the jobs that have subscribers in this
 * process (an rbtree keyed by job id and location prefix), each with its
 * queue of subscribers.  No subscriber ever queries the database:
 *
 * - The LISTEN connection hands over each async_dl_events notification
 *   ("<job id> <event seq> e|p"); a job with subscribers here marks itself
 *   stale and posts its event.
 * - A job fetches its state with ONE query on the pool
 *   (async_dl_job_events_state, sql/003_events.sql) and fans the result out
 *   to all its subscribers.  One fetch at a time per job: what arrives
 *   meanwhile leaves the job stale and it fetches again once the answer is
 *   in.  Progress-only changes ("p") are fetched at most every
 *   NGX_HTTP_ASYNC_DL_SSE_THROTTLE ms; a file or the job ending ("e") is
 *   fetched at once.  A storm of notifications costs a bounded number of
 *   queries.
 * - The fan-out compares the new state with the previous one: each file
 *   that ended becomes a "file" event (kept in the job's log until every
 *   subscriber sent it), a new event_seq a "progress" event (the latest
 *   state only), an ended job the final event, after which the stream ends.
 *   The event texts are built once per state and shared, reference counted,
 *   by the subscribers that send them.
 * - A subscriber whose client reads slowly keeps at most one event in
 *   flight; meanwhile progress is coalesced (only the latest is sent), file
 *   events wait in the job's log and the final event is kept.  Its memory
 *   does not grow with the number of events.
 * - When LISTEN (re)connects, every job is stale: notifications sent while
 *   there was no LISTEN are lost, so each job fetches again and no
 *   subscriber misses its final event.
 *
 * A new subscriber is answered from the job's last state when there is one
 * and LISTEN is up (10,000 subscribers of 100 jobs cost 100 queries), else
 * after a fetch.  The owner check (async_dl_owner) is made against the
 * fetched owner; until the first event is sent, any failure is an ordinary
 * JSON error (404 JOB_NOT_FOUND, 503 DATABASE_UNAVAILABLE).
 *
 * Lifetimes: a subscriber lives in its request's pool; its request cleanup
 * takes it out of its job and deletes its heartbeat timer at once (client
 * gone, final event sent, error), its pool cleanup drops its references to
 * shared event texts once nginx is done sending them.  A job lives while it
 * has subscribers (and while a fan-out runs over it: job->busy).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_listen.h"
#include "ngx_http_async_dl_sse.h"


#define NGX_HTTP_ASYNC_DL_SSE_THROTTLE   250    /* ms between progress */
#define NGX_HTTP_ASYNC_DL_SSE_REFETCH    1000   /* ms after a failed fetch */
#define NGX_HTTP_ASYNC_DL_SSE_RETRY      2000   /* "retry:", ms */
#define NGX_HTTP_ASYNC_DL_SSE_HEAD       80     /* retry:, event:, id: */


typedef enum {
    NGX_HTTP_ASYNC_DL_SSE_QUEUED = 0,
    NGX_HTTP_ASYNC_DL_SSE_PROCESSING,
    NGX_HTTP_ASYNC_DL_SSE_COMPLETED,
    NGX_HTTP_ASYNC_DL_SSE_FAILED,
    NGX_HTTP_ASYNC_DL_SSE_CANCELED,
    NGX_HTTP_ASYNC_DL_SSE_DELETED
} ngx_http_async_dl_sse_status_e;

#define ngx_http_async_dl_sse_ended(s)  ((s) >= NGX_HTTP_ASYNC_DL_SSE_COMPLETED)


/* how much a job knows that its last state is old */
typedef enum {
    NGX_HTTP_ASYNC_DL_SSE_FRESH = 0,
    NGX_HTTP_ASYNC_DL_SSE_STALE_PROGRESS,  /* bytes moved: throttled */
    NGX_HTTP_ASYNC_DL_SSE_STALE_NOW        /* anything else: at once */
} ngx_http_async_dl_sse_stale_e;


/* an event's "data:" lines, shared by the subscribers that send it */
typedef struct {
    ngx_uint_t                         refs;
    uint64_t                           seq;       /* the event's id */
    size_t                             len;
    u_char                             text[1];
} ngx_http_async_dl_sse_data_t;


typedef struct ngx_http_async_dl_sse_job_s  ngx_http_async_dl_sse_job_t;


typedef struct {
    ngx_queue_t                        queue;     /* in job->subs */
    ngx_http_request_t                *r;
    ngx_http_async_dl_sse_job_t       *job;       /* NULL: left it */
    ngx_msec_t                         heartbeat_period;

    uint64_t                           seq;       /* last state sent */
    ngx_uint_t                         file_next; /* in the job's log */
    ngx_http_async_dl_sse_status_e     final;
    ngx_http_async_dl_sse_data_t      *final_data;
    ngx_http_async_dl_sse_data_t      *sending;   /* in flight */

    ngx_buf_t                          head;
    ngx_buf_t                          body;
    ngx_chain_t                        out[2];
    ngx_event_t                        heartbeat;
    u_char                             text[NGX_HTTP_ASYNC_DL_SSE_HEAD];

    unsigned                           streaming:1; /* headers sent */
    unsigned                           progress:1;  /* a newer state */
    unsigned                           has_final:1;
    unsigned                           retry_sent:1;
} ngx_http_async_dl_sse_sub_t;


struct ngx_http_async_dl_sse_job_s {
    ngx_rbtree_node_t                  node;      /* key: crc32 of id */
    u_char                             id[NGX_HTTP_ASYNC_DL_UUID_LEN + 1];
    ngx_str_t                         *prefix;    /* {p}, NUL-terminated */

    ngx_queue_t                        subs;
    ngx_uint_t                         nsubs;
    ngx_uint_t                         nwaiting;  /* no headers sent yet */
    ngx_uint_t                         busy;      /* fan-outs running */

    /* the last state */
    ngx_str_t                          owner;
    uint64_t                           seq;
    ngx_http_async_dl_sse_status_e     status;
    u_char                            *states;    /* a letter per file */
    size_t                             nstates;
    ngx_http_async_dl_sse_data_t      *full;      /* status document */
    ngx_http_async_dl_sse_data_t      *summary;   /* without the files */

    /* "file" events that some subscriber has not sent yet */
    ngx_http_async_dl_sse_data_t     **log;
    ngx_uint_t                         log_base;  /* number of the first */
    ngx_uint_t                         log_n;
    ngx_uint_t                         log_size;

    ngx_pool_t                        *fetch;     /* the query in flight */
    ngx_http_async_dl_sse_stale_e      stale;
    ngx_msec_t                         fetched;   /* last fetch started */
    ngx_msec_t                         not_before;
    ngx_event_t                        event;     /* timer, or posted */

    unsigned                           known:1;
};


typedef struct {
    ngx_rbtree_t                       tree;
    ngx_rbtree_node_t                  sentinel;
    ngx_http_async_dl_pg_t            *pg;
    ngx_http_async_dl_listen_t        *listen;
    ngx_log_t                         *log;

    ngx_uint_t                         nsubs;
    ngx_uint_t                         njobs;
    ngx_uint_t                         nfetches;
} ngx_http_async_dl_sse_hub_t;


static ngx_int_t ngx_http_async_dl_sse_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static void ngx_http_async_dl_sse_notify(void *data, const char *payload);
static void ngx_http_async_dl_sse_resync(void *data);

static ngx_http_async_dl_sse_job_t *ngx_http_async_dl_sse_job(
    ngx_str_t *id, ngx_str_t *prefix);
static void ngx_http_async_dl_sse_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_async_dl_sse_job_cmp(
    ngx_http_async_dl_sse_job_t *job, uint32_t hash, u_char *id,
    ngx_str_t *prefix);
static void ngx_http_async_dl_sse_job_handler(ngx_event_t *ev);
static void ngx_http_async_dl_sse_job_post(ngx_http_async_dl_sse_job_t *job,
    ngx_http_async_dl_sse_stale_e stale);
static void ngx_http_async_dl_sse_job_kick(ngx_http_async_dl_sse_job_t *job);
static void ngx_http_async_dl_sse_job_fetch(ngx_http_async_dl_sse_job_t *job);
static void ngx_http_async_dl_sse_job_fetched(
    ngx_http_async_dl_pg_query_t *q);
static ngx_int_t ngx_http_async_dl_sse_job_update(
    ngx_http_async_dl_sse_job_t *job, PGresult *res);
static ngx_int_t ngx_http_async_dl_sse_job_gone(
    ngx_http_async_dl_sse_job_t *job);
static void ngx_http_async_dl_sse_job_failed(
    ngx_http_async_dl_sse_job_t *job, ngx_http_async_dl_pg_status_e status,
    PGresult *res);
static void ngx_http_async_dl_sse_job_fanout(
    ngx_http_async_dl_sse_job_t *job);
static ngx_int_t ngx_http_async_dl_sse_job_log(
    ngx_http_async_dl_sse_job_t *job, ngx_http_async_dl_sse_data_t *d);
static void ngx_http_async_dl_sse_job_trim(ngx_http_async_dl_sse_job_t *job);
static void ngx_http_async_dl_sse_job_unlock(
    ngx_http_async_dl_sse_job_t *job);
static void ngx_http_async_dl_sse_job_free(ngx_http_async_dl_sse_job_t *job);

static void ngx_http_async_dl_sse_start(ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_refuse(ngx_http_async_dl_sse_sub_t *sub,
    ngx_uint_t status, const char *code, const char *msg);
static ngx_int_t ngx_http_async_dl_sse_created(ngx_http_request_t *r,
    ngx_http_async_dl_ctx_t *ctx);
static void ngx_http_async_dl_sse_send(ngx_http_async_dl_sse_sub_t *sub);
static ngx_int_t ngx_http_async_dl_sse_emit(ngx_http_async_dl_sse_sub_t *sub,
    const char *name, ngx_http_async_dl_sse_data_t *d, ngx_uint_t last);
static void ngx_http_async_dl_sse_wait_write(
    ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_write_handler(ngx_http_request_t *r);
static void ngx_http_async_dl_sse_heartbeat_handler(ngx_event_t *ev);
static void ngx_http_async_dl_sse_finish(ngx_http_async_dl_sse_sub_t *sub,
    ngx_int_t rc);
static void ngx_http_async_dl_sse_leave(ngx_http_async_dl_sse_sub_t *sub);
static void ngx_http_async_dl_sse_cleanup(void *data);
static void ngx_http_async_dl_sse_pool_cleanup(void *data);

static ngx_http_async_dl_sse_data_t *ngx_http_async_dl_sse_data(
    uint64_t seq, ngx_str_t *parts, ngx_uint_t nparts);
static void ngx_http_async_dl_sse_data_release(
    ngx_http_async_dl_sse_data_t *d);


static ngx_str_t  ngx_http_async_dl_sse_names[] = {
    ngx_string("queued"),
    ngx_string("processing"),
    ngx_string("completed"),
    ngx_string("failed"),
    ngx_string("canceled"),
    ngx_string("deleted")
};


static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_sse_stmt = {
    "async_dl_events_state",
    "SELECT o_owner, o_seq, o_status, o_states, o_summary, o_files, o_full"
    " FROM async_dl_job_events_state($1, $2)", 2
};


static ngx_http_variable_t  ngx_http_async_dl_sse_vars[] = {

    { ngx_string("async_dl_stream_subscribers"), NULL,
      ngx_http_async_dl_sse_variable,
      offsetof(ngx_http_async_dl_sse_hub_t, nsubs),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("async_dl_stream_jobs"), NULL,
      ngx_http_async_dl_sse_variable,
      offsetof(ngx_http_async_dl_sse_hub_t, njobs),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("async_dl_stream_queries"), NULL,
      ngx_http_async_dl_sse_variable,
      offsetof(ngx_http_async_dl_sse_hub_t, nfetches),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/* the statement's index in the pool's list: set at configuration */
static ngx_uint_t                    ngx_http_async_dl_sse_stmt_index;

/* this worker process's hub */
static ngx_http_async_dl_sse_hub_t  *ngx_http_async_dl_sse_hub;


/* configuration and process life */


char *
ngx_http_async_dl_sse_init_conf(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf)
{
    ngx_uint_t                    n;
    ngx_http_async_dl_pg_stmt_t  *stmts;

    n = amcf->pg.nstmts;

    if (n + 1 > NGX_HTTP_ASYNC_DL_PG_MAX_STMTS) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "async_dl: too many statements");
        return NGX_CONF_ERROR;
    }

    stmts = ngx_palloc(cf->pool,
                       (n + 1) * sizeof(ngx_http_async_dl_pg_stmt_t));
    if (stmts == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(stmts, amcf->pg.stmts, n * sizeof(ngx_http_async_dl_pg_stmt_t));
    stmts[n] = ngx_http_async_dl_sse_stmt;

    amcf->pg.stmts = stmts;
    amcf->pg.nstmts = n + 1;
    ngx_http_async_dl_sse_stmt_index = n;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_async_dl_sse_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_async_dl_sse_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_async_dl_sse_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char      *p;
    ngx_uint_t   n;

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    n = ngx_http_async_dl_sse_hub
        ? *(ngx_uint_t *) ((u_char *) ngx_http_async_dl_sse_hub + data) : 0;

    v->len = ngx_sprintf(p, "%ui", n) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


ngx_int_t
ngx_http_async_dl_sse_init_process(ngx_cycle_t *cycle,
    ngx_http_async_dl_main_conf_t *amcf)
{
    ngx_http_async_dl_sse_hub_t  *hub;

    if (amcf->pool == NULL) {
        return NGX_OK;
    }

    hub = ngx_pcalloc(cycle->pool, sizeof(ngx_http_async_dl_sse_hub_t));
    if (hub == NULL) {
        return NGX_ERROR;
    }

    ngx_rbtree_init(&hub->tree, &hub->sentinel,
                    ngx_http_async_dl_sse_rbtree_insert);

    hub->pg = amcf->pool;
    hub->log = cycle->log;

    hub->listen = ngx_http_async_dl_listen_start(cycle, &amcf->pg,
                                                 ngx_http_async_dl_sse_notify,
                                                 ngx_http_async_dl_sse_resync,
                                                 hub);
    if (hub->listen == NULL) {
        return NGX_ERROR;
    }

    ngx_http_async_dl_sse_hub = hub;

    return NGX_OK;
}


void
ngx_http_async_dl_sse_exit_process(ngx_cycle_t *cycle)
{
    if (ngx_http_async_dl_sse_hub) {
        ngx_http_async_dl_listen_stop(ngx_http_async_dl_sse_hub->listen);
        ngx_http_async_dl_sse_hub = NULL;
    }
}


/* GET {p}stream/{id} */


ngx_int_t
ngx_http_async_dl_stream(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t            *pcln;
    ngx_http_cleanup_t            *cln;
    ngx_http_async_dl_ctx_t       *ctx;
    ngx_http_async_dl_sse_job_t   *job;
    ngx_http_async_dl_sse_sub_t   *sub;
    ngx_http_async_dl_sse_hub_t   *hub;
    ngx_http_async_dl_loc_conf_t  *alcf;

    hub = ngx_http_async_dl_sse_hub;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    if (hub == NULL && ctx->stream_status) {
        return ngx_http_async_dl_sse_created(r, ctx);
    }

    if (hub == NULL) {
        if (ngx_http_async_dl_retry_after(r, NGX_HTTP_ASYNC_DL_RETRY_DATABASE)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_async_dl_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "DATABASE_UNAVAILABLE",
                                            "the database is not configured "
                                            "in this process");
    }

    /*
     * A reconnecting EventSource sends Last-Event-ID (or lastEventId in
     * the query): it gets "connected" with the current state, which says
     * everything it missed, so the value itself is not needed.
     */

    sub = ngx_pcalloc(r->pool, sizeof(ngx_http_async_dl_sse_sub_t));
    if (sub == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_http_cleanup_add(r, 0);
    pcln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL || pcln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    job = ngx_http_async_dl_sse_job(&ctx->job_id, &alcf->prefix);
    if (job == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    sub->r = r;
    sub->job = job;
    sub->heartbeat_period = alcf->heartbeat;
    sub->heartbeat.handler = ngx_http_async_dl_sse_heartbeat_handler;
    sub->heartbeat.data = sub;
    sub->heartbeat.log = r->connection->log;
    sub->heartbeat.cancelable = 1;

    ngx_queue_insert_tail(&job->subs, &sub->queue);
    job->nsubs++;
    job->nwaiting++;
    hub->nsubs++;

    cln->handler = ngx_http_async_dl_sse_cleanup;
    cln->data = sub;
    pcln->handler = ngx_http_async_dl_sse_pool_cleanup;
    pcln->data = sub;

    ctx->stream = sub;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "async_dl sse: subscribed to %s, %ui here, %ui in all",
                   job->id, job->nsubs, hub->nsubs);

    /*
     * Answered from the job's event handler, never from here: the answer
     * may end the request (404, an ended job), which must not happen
     * before this handler has returned NGX_DONE.
     */

    ngx_http_async_dl_sse_job_post(job,
                               (job->known
                                && ngx_http_async_dl_listen_ready(hub->listen))
                               ? NGX_HTTP_ASYNC_DL_SSE_FRESH
                               : NGX_HTTP_ASYNC_DL_SSE_STALE_NOW);

    r->main->count++;

    /* notice a client that goes away */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    return NGX_DONE;
}


/* notifications */


static void
ngx_http_async_dl_sse_notify(void *data, const char *payload)
{
    ngx_http_async_dl_sse_hub_t *hub = data;

    u_char                          *p, *id, *last;
    uint32_t                         hash;
    uint64_t                         seq;
    ngx_int_t                        rc;
    ngx_rbtree_node_t               *node, *sentinel, *first;
    ngx_http_async_dl_sse_job_t     *job;
    ngx_http_async_dl_sse_stale_e    stale;

    /* "<job id> <event seq>[ e|p]" */

    id = (u_char *) payload;
    last = id + ngx_strlen(payload);
    p = id + NGX_HTTP_ASYNC_DL_UUID_LEN;

    if (last - id < NGX_HTTP_ASYNC_DL_UUID_LEN + 2 || *p != ' ') {
        goto invalid;
    }

    seq = 0;

    for (p++; p < last && *p >= '0' && *p <= '9'; p++) {
        seq = seq * 10 + (*p - '0');
    }

    stale = (p + 2 == last && p[0] == ' ' && p[1] == 'p')
            ? NGX_HTTP_ASYNC_DL_SSE_STALE_PROGRESS
            : NGX_HTTP_ASYNC_DL_SSE_STALE_NOW;

    hash = ngx_crc32_short(id, NGX_HTTP_ASYNC_DL_UUID_LEN);

    /*
     * The leftmost job of this id (a lower bound on hash and id), then its
     * right neighbours: the same job seen from other prefixes.
     */

    node = hub->tree.root;
    sentinel = hub->tree.sentinel;
    first = NULL;
    rc = 0;

    while (node != sentinel) {
        job = (ngx_http_async_dl_sse_job_t *) node;

        if (hash < node->key
            || (hash == node->key
                && (rc = ngx_memcmp(id, job->id, NGX_HTTP_ASYNC_DL_UUID_LEN))
                   <= 0))
        {
            if (hash == node->key && rc == 0) {
                first = node;
            }

            node = node->left;

        } else {
            node = node->right;
        }
    }

    node = first;

    while (node != NULL && node->key == hash) {
        job = (ngx_http_async_dl_sse_job_t *) node;

        if (ngx_memcmp(id, job->id, NGX_HTTP_ASYNC_DL_UUID_LEN) != 0) {
            break;
        }

        /* a state it already has (its own fetch was later) is no news */

        if (!job->known || seq == 0 || seq > job->seq) {
            ngx_http_async_dl_sse_job_post(job, stale);
        }

        node = ngx_rbtree_next(&hub->tree, node);
    }

    return;

invalid:

    ngx_log_error(NGX_LOG_WARN, hub->log, 0,
                  "async_dl: ignored a malformed notification \"%s\"",
                  payload);
}


/* LISTEN is (again) in place: every job may have missed something */

static void
ngx_http_async_dl_sse_resync(void *data)
{
    ngx_http_async_dl_sse_hub_t *hub = data;

    ngx_rbtree_node_t  *node;

    if (hub->tree.root == hub->tree.sentinel) {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, hub->log, 0,
                  "async_dl: LISTEN ready, refreshing %ui streamed jobs",
                  hub->njobs);

    for (node = ngx_rbtree_min(hub->tree.root, hub->tree.sentinel);
         node;
         node = ngx_rbtree_next(&hub->tree, node))
    {
        ngx_http_async_dl_sse_job_post((ngx_http_async_dl_sse_job_t *) node,
                                       NGX_HTTP_ASYNC_DL_SSE_STALE_NOW);
    }
}


/* jobs */


static ngx_http_async_dl_sse_job_t *
ngx_http_async_dl_sse_job(ngx_str_t *id, ngx_str_t *prefix)
{
    uint32_t                      hash;
    ngx_int_t                     rc;
    ngx_rbtree_node_t            *node, *sentinel;
    ngx_http_async_dl_sse_job_t  *job;
    ngx_http_async_dl_sse_hub_t  *hub;

    hub = ngx_http_async_dl_sse_hub;
    hash = ngx_crc32_short(id->data, NGX_HTTP_ASYNC_DL_UUID_LEN);

    node = hub->tree.root;
    sentinel = hub->tree.sentinel;

    while (node != sentinel) {
        job = (ngx_http_async_dl_sse_job_t *) node;

        rc = ngx_http_async_dl_sse_job_cmp(job, hash, id->data, prefix);

        if (rc == 0) {
            return job;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    job = ngx_calloc(sizeof(ngx_http_async_dl_sse_job_t), hub->log);
    if (job == NULL) {
        return NULL;
    }

    ngx_memcpy(job->id, id->data, NGX_HTTP_ASYNC_DL_UUID_LEN);
    job->id[NGX_HTTP_ASYNC_DL_UUID_LEN] = '\0';
    job->prefix = prefix;
    job->node.key = hash;

    ngx_queue_init(&job->subs);

    job->event.handler = ngx_http_async_dl_sse_job_handler;
    job->event.data = job;
    job->event.log = hub->log;
    job->event.cancelable = 1;

    job->fetched = ngx_current_msec - NGX_HTTP_ASYNC_DL_SSE_THROTTLE;
    job->not_before = ngx_current_msec;

    ngx_rbtree_insert(&hub->tree, &job->node);
    hub->njobs++;

    return job;
}


/* order: hash, id, prefix; <0: what is looked for is on the left */

static ngx_int_t
ngx_http_async_dl_sse_job_cmp(ngx_http_async_dl_sse_job_t *job,
    uint32_t hash, u_char *id, ngx_str_t *prefix)
{
    ngx_int_t  rc;

    if (hash != job->node.key) {
        return (hash < job->node.key) ? -1 : 1;
    }

    rc = ngx_memcmp(id, job->id, NGX_HTTP_ASYNC_DL_UUID_LEN);
    if (rc != 0) {
        return rc;
    }

    if (prefix == job->prefix) {
        return 0;
    }

    return ngx_memn2cmp(prefix->data, job->prefix->data, prefix->len,
                        job->prefix->len);
}


static void
ngx_http_async_dl_sse_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t           **p;
    ngx_http_async_dl_sse_job_t  *job;

    job = (ngx_http_async_dl_sse_job_t *) node;

    for ( ;; ) {
        p = (ngx_http_async_dl_sse_job_cmp((ngx_http_async_dl_sse_job_t *)
                                           temp, node->key, job->id,
                                           job->prefix)
             < 0) ? &temp->left : &temp->right;

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/* the job knows it is stale (or has new subscribers): act from its event */

static void
ngx_http_async_dl_sse_job_post(ngx_http_async_dl_sse_job_t *job,
    ngx_http_async_dl_sse_stale_e stale)
{
    if (stale > job->stale) {
        job->stale = stale;
    }

    ngx_post_event(&job->event, &ngx_posted_events);
}


static void
ngx_http_async_dl_sse_job_handler(ngx_event_t *ev)
{
    ngx_http_async_dl_sse_job_t  *job = ev->data;

    job->busy++;

    /* new subscribers, when the last state is good enough for them */

    if (job->nwaiting && job->known
        && ngx_http_async_dl_listen_ready(ngx_http_async_dl_sse_hub->listen))
    {
        ngx_http_async_dl_sse_job_fanout(job);
    }

    ngx_http_async_dl_sse_job_unlock(job);
}


/* fetch now, later (throttled, backing off) or not at all */

static void
ngx_http_async_dl_sse_job_kick(ngx_http_async_dl_sse_job_t *job)
{
    ngx_msec_t      when;
    ngx_msec_int_t  delta;

    if (job->fetch || job->stale == NGX_HTTP_ASYNC_DL_SSE_FRESH) {
        /* a fetch in flight kicks again when its answer is in */
        return;
    }

    when = job->not_before;

    if (job->stale == NGX_HTTP_ASYNC_DL_SSE_STALE_PROGRESS
        && (ngx_msec_int_t) (job->fetched + NGX_HTTP_ASYNC_DL_SSE_THROTTLE
                             - when) > 0)
    {
        when = job->fetched + NGX_HTTP_ASYNC_DL_SSE_THROTTLE;
    }

    delta = (ngx_msec_int_t) (when - ngx_current_msec);

    if (job->event.timer_set) {
        ngx_del_timer(&job->event);
    }

    if (delta > 0) {
        ngx_add_timer(&job->event, (ngx_msec_t) delta);
        return;
    }

    ngx_http_async_dl_sse_job_fetch(job);
}


static void
ngx_http_async_dl_sse_job_fetch(ngx_http_async_dl_sse_job_t *job)
{
    ngx_pool_t                      *pool;
    const char                     **params;
    ngx_http_async_dl_sse_hub_t     *hub;
    ngx_http_async_dl_pg_query_t    *q;
    ngx_http_async_dl_pg_status_e    status;

    hub = ngx_http_async_dl_sse_hub;

    status = NGX_HTTP_ASYNC_DL_PG_UNAVAILABLE;

    pool = ngx_create_pool(512, hub->log);
    if (pool == NULL) {
        goto failed;
    }

    q = ngx_http_async_dl_pg_query(pool, hub->log);
    params = ngx_palloc(pool, 2 * sizeof(char *));

    if (q == NULL || params == NULL) {
        goto failed;
    }

    params[0] = (char *) job->id;
    params[1] = (char *) job->prefix->data;

    q->stmt = ngx_http_async_dl_sse_stmt_index;
    q->params = params;
    q->handler = ngx_http_async_dl_sse_job_fetched;
    q->data = job;

    job->stale = NGX_HTTP_ASYNC_DL_SSE_FRESH;
    job->fetched = ngx_current_msec;
    hub->nfetches++;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, hub->log, 0,
                   "async_dl sse: fetching job %s", job->id);

    status = ngx_http_async_dl_pg_run(hub->pg, q);

    if (status != NGX_HTTP_ASYNC_DL_PG_OK) {
        goto failed;
    }

    job->fetch = pool;

    return;

failed:

    if (pool) {
        ngx_destroy_pool(pool);
    }

    ngx_http_async_dl_sse_job_failed(job, status, NULL);

    /* arms the refetch */
    ngx_http_async_dl_sse_job_kick(job);
}


static void
ngx_http_async_dl_sse_job_fetched(ngx_http_async_dl_pg_query_t *q)
{
    ngx_pool_t                   *pool;
    ngx_http_async_dl_sse_job_t  *job;

    job = q->data;
    pool = job->fetch;
    job->fetch = NULL;
    job->busy++;

    if (q->status != NGX_HTTP_ASYNC_DL_PG_OK) {
        ngx_http_async_dl_sse_job_failed(job, q->status, q->result);

    } else if (PQntuples(q->result) == 0
               || (PQnfields(q->result) == 7
                   && PQgetisnull(q->result, 0, 6)))
    {
        if (ngx_http_async_dl_sse_job_gone(job) != NGX_OK) {
            ngx_http_async_dl_sse_job_failed(job,
                                             NGX_HTTP_ASYNC_DL_PG_UNAVAILABLE,
                                             NULL);
        }

    } else if (ngx_http_async_dl_sse_job_update(job, q->result) != NGX_OK) {
        ngx_http_async_dl_sse_job_failed(job,
                                         NGX_HTTP_ASYNC_DL_PG_UNAVAILABLE,
                                         NULL);
    }

    /* the result was read: it goes with the query's pool */
    ngx_destroy_pool(pool);

    ngx_http_async_dl_sse_job_unlock(job);
}


/* the row of async_dl_job_events_state(): the new state, then the fan-out */

static ngx_int_t
ngx_http_async_dl_sse_job_update(ngx_http_async_dl_sse_job_t *job,
    PGresult *res)
{
    u_char                          *states, *files, *line, *eol, *last;
    size_t                           nstates;
    uint64_t                         seq;
    ngx_str_t                        parts[1], status, owner;
    ngx_uint_t                       i, s;
    ngx_http_async_dl_sse_data_t    *full, *summary, *d;

    if (PQnfields(res) != 7) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_async_dl_sse_hub->log, 0,
                      "async_dl: stream of job %s: unexpected answer",
                      job->id);
        return NGX_ERROR;
    }

    owner.data = (u_char *) PQgetvalue(res, 0, 0);
    owner.len = PQgetlength(res, 0, 0);
    seq = (uint64_t) ngx_atoof((u_char *) PQgetvalue(res, 0, 1),
                               PQgetlength(res, 0, 1));
    status.data = (u_char *) PQgetvalue(res, 0, 2);
    status.len = PQgetlength(res, 0, 2);
    states = (u_char *) PQgetvalue(res, 0, 3);
    nstates = PQgetlength(res, 0, 3);
    files = (u_char *) PQgetvalue(res, 0, 5);

    if (!job->known) {
        job->owner.data = ngx_alloc(owner.len + 1, ngx_cycle->log);
        if (job->owner.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(job->owner.data, owner.data, owner.len);
        job->owner.len = owner.len;

    } else if (seq <= job->seq) {
        /* nothing new (a refresh after LISTEN came back) */
        ngx_http_async_dl_sse_job_fanout(job);
        return NGX_OK;
    }

    for (s = 0; s < NGX_HTTP_ASYNC_DL_SSE_DELETED; s++) {
        if (status.len == ngx_http_async_dl_sse_names[s].len
            && ngx_strncmp(status.data, ngx_http_async_dl_sse_names[s].data,
                           status.len) == 0)
        {
            break;
        }
    }

    if (nstates == 0) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_async_dl_sse_hub->log, 0,
                      "async_dl: stream of job %s: no files", job->id);
        return NGX_ERROR;
    }

    parts[0].data = (u_char *) PQgetvalue(res, 0, 4);
    parts[0].len = PQgetlength(res, 0, 4);

    summary = ngx_http_async_dl_sse_data(seq, parts, 1);
    if (summary == NULL) {
        return NGX_ERROR;
    }

    parts[0].data = (u_char *) PQgetvalue(res, 0, 6);
    parts[0].len = PQgetlength(res, 0, 6);

    full = ngx_http_async_dl_sse_data(seq, parts, 1);
    if (full == NULL) {
        ngx_http_async_dl_sse_data_release(summary);
        return NGX_ERROR;
    }

    /* "file": the files that ended since the last state */

    last = files + PQgetlength(res, 0, 5);
    line = files;

    for (i = 0; i < nstates && line < last; i++, line = eol + 1) {
        eol = ngx_strlchr(line, last, '\n');
        if (eol == NULL) {
            eol = last;
        }

        if (!job->known
            || states[i] == 'p' || states[i] == 'd'
            || (i < job->nstates
                && job->states[i] != 'p' && job->states[i] != 'd'))
        {
            continue;
        }

        parts[0].data = line;
        parts[0].len = eol - line;

        d = ngx_http_async_dl_sse_data(seq, parts, 1);
        if (d == NULL || ngx_http_async_dl_sse_job_log(job, d) != NGX_OK) {
            if (d) {
                ngx_http_async_dl_sse_data_release(d);
            }

            ngx_http_async_dl_sse_data_release(summary);
            ngx_http_async_dl_sse_data_release(full);
            return NGX_ERROR;
        }
    }

    if (nstates > job->nstates) {
        if (job->states) {
            ngx_free(job->states);
        }

        job->states = ngx_alloc(nstates, ngx_cycle->log);
        if (job->states == NULL) {
            job->nstates = 0;
            ngx_http_async_dl_sse_data_release(summary);
            ngx_http_async_dl_sse_data_release(full);
            return NGX_ERROR;
        }
    }

    ngx_memcpy(job->states, states, nstates);     /* nstates > 0 */
    job->nstates = nstates;

    if (job->full) {
        ngx_http_async_dl_sse_data_release(job->full);
        ngx_http_async_dl_sse_data_release(job->summary);
    }

    job->full = full;
    job->summary = summary;
    job->seq = seq;
    job->status = s;
    job->known = 1;

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, ngx_http_async_dl_sse_hub->log, 0,
                   "async_dl sse: job %s is %V at %uL, %ui subscribers",
                   job->id, &status, seq, job->nsubs);

    ngx_http_async_dl_sse_job_fanout(job);

    return NGX_OK;
}


/* no row: the job was deleted (or never was, or is another owner's) */

static ngx_int_t
ngx_http_async_dl_sse_job_gone(ngx_http_async_dl_sse_job_t *job)
{
    u_char                        *p, buf[160];
    ngx_str_t                      part;
    ngx_http_async_dl_sse_data_t  *d;

    p = ngx_sprintf(buf, "{\"jobId\":\"%s\",\"status\":\"deleted\","
                    "\"error\":{\"code\":\"JOB_DELETED\","
                    "\"message\":\"the job was deleted\"}}", job->id);

    part.data = buf;
    part.len = p - buf;

    d = ngx_http_async_dl_sse_data(job->seq + 1, &part, 1);
    if (d == NULL) {
        return NGX_ERROR;
    }

    if (job->full) {
        ngx_http_async_dl_sse_data_release(job->full);
        ngx_http_async_dl_sse_data_release(job->summary);
    }

    job->full = d;
    d->refs++;
    job->summary = d;
    job->seq++;
    job->status = NGX_HTTP_ASYNC_DL_SSE_DELETED;

    ngx_http_async_dl_sse_job_fanout(job);

    return NGX_OK;
}


static void
ngx_http_async_dl_sse_job_failed(ngx_http_async_dl_sse_job_t *job,
    ngx_http_async_dl_pg_status_e status, PGresult *res)
{
    char                         *msg;
    ngx_uint_t                    level;
    ngx_queue_t                  *q, *next;
    ngx_connection_t             *c;
    ngx_http_async_dl_sse_sub_t  *sub;

    msg = (res && status == NGX_HTTP_ASYNC_DL_PG_SQL_ERROR)
          ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    level = msg ? NGX_LOG_ERR : NGX_LOG_INFO;

    ngx_log_error(level, ngx_http_async_dl_sse_hub->log, 0,
                  "async_dl: stream of job %s: fetching its state failed "
                  "(%s), again in %d ms", job->id,
                  msg ? msg : (status == NGX_HTTP_ASYNC_DL_PG_TIMEOUT
                               ? "timed out" : "database unavailable"),
                  NGX_HTTP_ASYNC_DL_SSE_REFETCH);

    job->stale = NGX_HTTP_ASYNC_DL_SSE_STALE_NOW;
    job->not_before = ngx_current_msec + NGX_HTTP_ASYNC_DL_SSE_REFETCH;

    /* who got no answer yet gets one now; streams wait for the refetch */

    job->busy++;

    for (q = ngx_queue_head(&job->subs);
         q != ngx_queue_sentinel(&job->subs);
         q = next)
    {
        next = ngx_queue_next(q);
        sub = ngx_queue_data(q, ngx_http_async_dl_sse_sub_t, queue);

        if (sub->streaming) {
            continue;
        }

        c = sub->r->connection;

        ngx_http_async_dl_sse_refuse(sub, NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "DATABASE_UNAVAILABLE",
                                     "the database is unavailable, "
                                     "retry later");
        ngx_http_run_posted_requests(c);
    }

    job->busy--;
}


/* the job's state (or news of its deletion) to every subscriber */

static void
ngx_http_async_dl_sse_job_fanout(ngx_http_async_dl_sse_job_t *job)
{
    ngx_queue_t                  *q, *next;
    ngx_connection_t             *c;
    ngx_http_async_dl_sse_sub_t  *sub;

    job->busy++;

    for (q = ngx_queue_head(&job->subs);
         q != ngx_queue_sentinel(&job->subs);
         q = next)
    {
        next = ngx_queue_next(q);
        sub = ngx_queue_data(q, ngx_http_async_dl_sse_sub_t, queue);
        c = sub->r->connection;

        if (!sub->streaming) {
            ngx_http_async_dl_sse_start(sub);
            ngx_http_run_posted_requests(c);
            continue;
        }

        if (sub->has_final || sub->seq >= job->seq) {
            continue;
        }

        sub->progress = 1;

        if (ngx_http_async_dl_sse_ended(job->status)) {
            sub->has_final = 1;
            sub->final = job->status;
            sub->final_data = job->full;
            job->full->refs++;
        }

        ngx_http_async_dl_sse_send(sub);
        ngx_http_run_posted_requests(c);
    }

    job->busy--;

    ngx_http_async_dl_sse_job_trim(job);
}


static ngx_int_t
ngx_http_async_dl_sse_job_log(ngx_http_async_dl_sse_job_t *job,
    ngx_http_async_dl_sse_data_t *d)
{
    ngx_uint_t                      size;
    ngx_http_async_dl_sse_data_t  **log;

    if (job->log_n == job->log_size) {
        size = job->log_size ? job->log_size * 2 : 8;

        log = ngx_alloc(size * sizeof(ngx_http_async_dl_sse_data_t *),
                        ngx_cycle->log);
        if (log == NULL) {
            return NGX_ERROR;
        }

        if (job->log) {
            ngx_memcpy(log, job->log,
                       job->log_n * sizeof(ngx_http_async_dl_sse_data_t *));
            ngx_free(job->log);
        }

        job->log = log;
        job->log_size = size;
    }

    job->log[job->log_n++] = d;

    return NGX_OK;
}


/* "file" events every subscriber has sent are dropped */

static void
ngx_http_async_dl_sse_job_trim(ngx_http_async_dl_sse_job_t *job)
{
    ngx_uint_t                    min, n, i;
    ngx_queue_t                  *q;
    ngx_http_async_dl_sse_sub_t  *sub;

    if (job->log_n == 0) {
        return;
    }

    min = job->log_base + job->log_n;

    for (q = ngx_queue_head(&job->subs);
         q != ngx_queue_sentinel(&job->subs);
         q = ngx_queue_next(q))
    {
        sub = ngx_queue_data(q, ngx_http_async_dl_sse_sub_t, queue);

        if (sub->streaming && sub->file_next < min) {
            min = sub->file_next;
        }
    }

    n = min - job->log_base;

    if (n == 0) {
        return;
    }

    for (i = 0; i < n; i++) {
        ngx_http_async_dl_sse_data_release(job->log[i]);
    }

    ngx_memmove(job->log, job->log + n,
                (job->log_n - n) * sizeof(ngx_http_async_dl_sse_data_t *));

    job->log_n -= n;
    job->log_base = min;
}


/* the end of something done on a job: free it, or see what comes next */

static void
ngx_http_async_dl_sse_job_unlock(ngx_http_async_dl_sse_job_t *job)
{
    if (--job->busy) {
        return;
    }

    if (job->nsubs == 0) {
        ngx_http_async_dl_sse_job_free(job);
        return;
    }

    job->busy++;
    ngx_http_async_dl_sse_job_kick(job);

    if (--job->busy == 0 && job->nsubs == 0) {
        /* the fetch failed at once and its waiting subscribers left */
        ngx_http_async_dl_sse_job_free(job);
    }
}


static void
ngx_http_async_dl_sse_job_free(ngx_http_async_dl_sse_job_t *job)
{
    ngx_uint_t                    i;
    ngx_http_async_dl_sse_hub_t  *hub;

    hub = ngx_http_async_dl_sse_hub;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, hub->log, 0,
                   "async_dl sse: no more subscribers of job %s", job->id);

    if (job->fetch) {
        /* detaches the query: its answer is drained and dropped */
        ngx_destroy_pool(job->fetch);
    }

    if (job->event.timer_set) {
        ngx_del_timer(&job->event);
    }

    if (job->event.posted) {
        ngx_delete_posted_event(&job->event);
    }

    ngx_rbtree_delete(&hub->tree, &job->node);
    hub->njobs--;

    for (i = 0; i < job->log_n; i++) {
        ngx_http_async_dl_sse_data_release(job->log[i]);
    }

    if (job->full) {
        ngx_http_async_dl_sse_data_release(job->full);
        ngx_http_async_dl_sse_data_release(job->summary);
    }

    if (job->log) {
        ngx_free(job->log);
    }

    if (job->states) {
        ngx_free(job->states);
    }

    if (job->owner.data) {
        ngx_free(job->owner.data);
    }

    ngx_free(job);
}


/* subscribers */


/* the first answer: a JSON error, or the stream and its "connected" */

static void
ngx_http_async_dl_sse_start(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_int_t                      rc;
    ngx_str_t                      owner;
    ngx_connection_t              *c;
    ngx_http_request_t            *r;
    ngx_http_async_dl_ctx_t       *ctx;
    ngx_http_async_dl_sse_job_t   *job;
    ngx_http_core_loc_conf_t      *clcf;

    r = sub->r;
    c = r->connection;
    job = sub->job;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    owner = ctx->owner;

    if (job->status == NGX_HTTP_ASYNC_DL_SSE_DELETED
        || owner.len != job->owner.len
        || (owner.len && ngx_memcmp(owner.data, job->owner.data, owner.len)
                         != 0))
    {
        ngx_http_async_dl_sse_refuse(sub, NGX_HTTP_NOT_FOUND,
                                     "JOB_NOT_FOUND", "no such job");
        return;
    }

    ctx->replied = 1;

    /* 202 (or 200, replayed) for an initiate that asked for the stream */
    r->headers_out.status = ctx->stream_status ? ctx->stream_status
                                               : NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    if (ngx_http_async_dl_add_header(r, "Cache-Control",
                                     (u_char *) "no-cache", 8)
        != NGX_OK
        || ngx_http_async_dl_add_header(r, "X-Accel-Buffering",
                                        (u_char *) "no", 2)
           != NGX_OK)
    {
        ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
        return;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_async_dl_sse_finish(sub, rc);
        return;
    }

    sub->streaming = 1;
    job->nwaiting--;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->tcp_nodelay && ngx_tcp_nodelay(c) != NGX_OK) {
        ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
        return;
    }

    /* a graceful shutdown ends the stream, the client reconnects */
    if (r->http_version < NGX_HTTP_VERSION_20) {
        c->idle = 1;
    }

    sub->seq = job->seq;
    sub->file_next = job->log_base + job->log_n;

    if (ngx_http_async_dl_sse_ended(job->status)) {
        sub->has_final = 1;
        sub->final = job->status;
        sub->final_data = job->full;
        job->full->refs++;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "async_dl sse: streaming job %s from %uL", job->id,
                   job->seq);

    if (ngx_http_async_dl_sse_emit(sub, "connected", job->full, 0)
        != NGX_OK)
    {
        ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
        return;
    }

    ngx_http_async_dl_sse_send(sub);
}


static void
ngx_http_async_dl_sse_refuse(ngx_http_async_dl_sse_sub_t *sub,
    ngx_uint_t status, const char *code, const char *msg)
{
    ngx_int_t                 rc;
    ngx_http_request_t       *r;
    ngx_http_async_dl_ctx_t  *ctx;

    r = sub->r;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    ngx_http_async_dl_sse_leave(sub);

    if (ctx->stream_status) {
        /* an initiate whose job exists: its answer without the stream */
        ngx_http_finalize_request(r, ngx_http_async_dl_sse_created(r, ctx));
        return;
    }

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE
        && ngx_http_async_dl_retry_after(r, NGX_HTTP_ASYNC_DL_RETRY_DATABASE)
           != NGX_OK)
    {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_async_dl_send_error(r, status, code, "%s", msg);

    ngx_http_finalize_request(r, rc);
}


/* An initiate asked for the stream, which cannot start: its JSON answer. */

static ngx_int_t
ngx_http_async_dl_sse_created(ngx_http_request_t *r,
    ngx_http_async_dl_ctx_t *ctx)
{
    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "async_dl: job %V created, its stream could not start: "
                  "answered as JSON", &ctx->job_id);

    return ngx_http_async_dl_send_json(r, ctx->stream_status,
                                       ctx->created.data, ctx->created.len);
}


/*
 * Sends what the subscriber has pending, in order: "file" events, the
 * latest progress, the final event; one event in flight at a time, so a
 * slow client holds at most one event and coalesces the progress.
 */

static void
ngx_http_async_dl_sse_send(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_connection_t              *c;
    ngx_http_async_dl_sse_job_t   *job;
    ngx_http_async_dl_sse_data_t  *d;

    c = sub->r->connection;
    job = sub->job;

    for ( ;; ) {

        if (c->buffered) {
            ngx_http_async_dl_sse_wait_write(sub);
            return;
        }

        if (sub->sending) {
            ngx_http_async_dl_sse_data_release(sub->sending);
            sub->sending = NULL;
        }

        if (job == NULL) {
            return;
        }

        if (sub->file_next < job->log_base + job->log_n) {
            d = job->log[sub->file_next++ - job->log_base];

            if (ngx_http_async_dl_sse_emit(sub, "file", d, 0) != NGX_OK) {
                ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
                return;
            }

            continue;
        }

        if (sub->has_final) {
            d = sub->final_data;
            sub->final_data = NULL;
            sub->seq = d->seq;

            /* ends the request: sub may be gone when it returns */
            (void) ngx_http_async_dl_sse_emit(sub,
                         (char *) ngx_http_async_dl_sse_names[sub->final].data,
                         d, 1);
            ngx_http_async_dl_sse_data_release(d);
            return;
        }

        if (sub->progress) {
            sub->progress = 0;
            sub->seq = job->seq;

            if (ngx_http_async_dl_sse_emit(sub, "progress", job->summary, 0)
                != NGX_OK)
            {
                ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
                return;
            }

            continue;
        }

        return;
    }
}


/*
 * One event: "retry:" the first time, "event:" and "id:" from the
 * subscriber's own buffer, the shared "data:" lines.  A final event ends
 * the response and the request.
 */

static ngx_int_t
ngx_http_async_dl_sse_emit(ngx_http_async_dl_sse_sub_t *sub,
    const char *name, ngx_http_async_dl_sse_data_t *d, ngx_uint_t last)
{
    u_char              *p;
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = sub->r;
    p = sub->text;

    if (!sub->retry_sent) {
        p = ngx_sprintf(p, "retry: %d\n", NGX_HTTP_ASYNC_DL_SSE_RETRY);
        sub->retry_sent = 1;
    }

    p = ngx_sprintf(p, "event: %s\nid: %uL\n", name, d->seq);

    ngx_memzero(&sub->head, sizeof(ngx_buf_t));
    sub->head.start = sub->text;
    sub->head.pos = sub->text;
    sub->head.last = p;
    sub->head.end = p;
    sub->head.memory = 1;

    ngx_memzero(&sub->body, sizeof(ngx_buf_t));
    sub->body.start = d->text;
    sub->body.pos = d->text;
    sub->body.last = d->text + d->len;
    sub->body.end = sub->body.last;
    sub->body.memory = 1;
    sub->body.flush = 1;
    sub->body.last_in_chain = 1;

    if (last) {
        sub->body.last_buf = (r == r->main) ? 1 : 0;
    }

    sub->out[0].buf = &sub->head;
    sub->out[0].next = &sub->out[1];
    sub->out[1].buf = &sub->body;
    sub->out[1].next = NULL;

    /* held until nginx is done with the buffers (see send, pool cleanup) */
    sub->sending = d;
    d->refs++;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "async_dl sse: event %s id %uL, %uz bytes", name, d->seq,
                   d->len);

    rc = ngx_http_output_filter(r, sub->out);

    if (last) {
        ngx_http_async_dl_sse_finish(sub, rc);
        return NGX_OK;
    }

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    ngx_add_timer(&sub->heartbeat, sub->heartbeat_period);

    return NGX_OK;
}


static void
ngx_http_async_dl_sse_wait_write(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_event_t               *wev;
    ngx_http_request_t        *r;
    ngx_http_core_loc_conf_t  *clcf;

    r = sub->r;
    wev = r->connection->write;
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    r->write_event_handler = ngx_http_async_dl_sse_write_handler;

    if (!wev->delayed && !wev->timer_set) {
        ngx_add_timer(wev, clcf->send_timeout);
    }

    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
        ngx_http_async_dl_sse_finish(sub, NGX_ERROR);
    }
}


static void
ngx_http_async_dl_sse_write_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_event_t                  *wev;
    ngx_connection_t             *c;
    ngx_http_async_dl_ctx_t      *ctx;
    ngx_http_async_dl_sse_sub_t  *sub;

    c = r->connection;
    wev = c->write;
    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    sub = ctx->stream;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "client timed out reading the event stream");
        c->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    if (wev->delayed) {
        if (ngx_handle_write_event(wev, 0) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_ERROR);
        }
        return;
    }

    rc = ngx_http_output_filter(r, NULL);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    if (c->buffered) {
        ngx_http_async_dl_sse_wait_write(sub);
        return;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_http_async_dl_sse_send(sub);
}


static void
ngx_http_async_dl_sse_heartbeat_handler(ngx_event_t *ev)
{
    ngx_http_async_dl_sse_sub_t *sub = ev->data;

    u_char              *p;
    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = sub->r;
    c = r->connection;

    if (c->destroyed || sub->job == NULL) {
        return;
    }

    if (c->buffered) {
        /* the client is not reading: the send timeout deals with it */
        ngx_add_timer(&sub->heartbeat, sub->heartbeat_period);
        return;
    }

    if (sub->sending) {
        ngx_http_async_dl_sse_data_release(sub->sending);
        sub->sending = NULL;
    }

    p = ngx_sprintf(sub->text, "event: heartbeat\nid: %uL\ndata: {}\n\n",
                    sub->seq);

    ngx_memzero(&sub->head, sizeof(ngx_buf_t));
    sub->head.start = sub->text;
    sub->head.pos = sub->text;
    sub->head.last = p;
    sub->head.end = p;
    sub->head.memory = 1;
    sub->head.flush = 1;

    sub->out[0].buf = &sub->head;
    sub->out[0].next = NULL;

    rc = ngx_http_output_filter(r, sub->out);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);

    } else {
        ngx_add_timer(&sub->heartbeat, sub->heartbeat_period);

        if (c->buffered) {
            ngx_http_async_dl_sse_wait_write(sub);
        }
    }

    ngx_http_run_posted_requests(c);
}


/* the stream ends: out of the job, then the request */

static void
ngx_http_async_dl_sse_finish(ngx_http_async_dl_sse_sub_t *sub, ngx_int_t rc)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, sub->r->connection->log, 0,
                   "async_dl sse: stream ends, rc %i", rc);

    ngx_http_async_dl_sse_leave(sub);
    ngx_http_finalize_request(sub->r, rc);
}


static void
ngx_http_async_dl_sse_leave(ngx_http_async_dl_sse_sub_t *sub)
{
    ngx_http_async_dl_sse_job_t  *job;

    job = sub->job;

    if (job == NULL) {
        return;
    }

    if (sub->heartbeat.timer_set) {
        ngx_del_timer(&sub->heartbeat);
    }

    ngx_queue_remove(&sub->queue);
    sub->job = NULL;

    job->nsubs--;

    if (!sub->streaming) {
        job->nwaiting--;
    }

    ngx_http_async_dl_sse_hub->nsubs--;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, sub->r->connection->log, 0,
                   "async_dl sse: left job %s, %ui here, %ui in all",
                   job->id, job->nsubs, ngx_http_async_dl_sse_hub->nsubs);

    if (job->nsubs == 0 && job->busy == 0) {
        ngx_http_async_dl_sse_job_free(job);
    }
}


/* the request ends (any way): leave at once */

static void
ngx_http_async_dl_sse_cleanup(void *data)
{
    ngx_http_async_dl_sse_sub_t *sub = data;

    if (ngx_http_async_dl_sse_hub == NULL) {
        /* the process is exiting: the hub went with it */
        return;
    }

    ngx_http_async_dl_sse_leave(sub);
}


/* the request's memory goes: so do its references to shared events */

static void
ngx_http_async_dl_sse_pool_cleanup(void *data)
{
    ngx_http_async_dl_sse_sub_t *sub = data;

    if (sub->sending) {
        ngx_http_async_dl_sse_data_release(sub->sending);
        sub->sending = NULL;
    }

    if (sub->final_data) {
        ngx_http_async_dl_sse_data_release(sub->final_data);
        sub->final_data = NULL;
    }
}


/* event texts */


/*
 * "data: <JSON>\n\n": the parts, concatenated, compacted the way the other
 * routes compact their answers (no blanks outside strings), so the JSON is
 * one line; newlines between the parts' objects become commas.
 */

static ngx_http_async_dl_sse_data_t *
ngx_http_async_dl_sse_data(uint64_t seq, ngx_str_t *parts,
    ngx_uint_t nparts)
{
    u_char                        *p, *raw;
    size_t                         len, n;
    ngx_uint_t                     i;
    ngx_http_async_dl_sse_data_t  *d;

    len = 0;

    for (i = 0; i < nparts; i++) {
        len += parts[i].len;
    }

    raw = ngx_alloc(len, ngx_cycle->log);
    if (raw == NULL) {
        return NULL;
    }

    p = raw;

    for (i = 0; i < nparts; i++) {
        p = ngx_cpymem(p, parts[i].data, parts[i].len);
    }

    for (p = raw; p < raw + len; p++) {
        if (*p == '\n') {
            *p = ',';
        }
    }

    n = ngx_http_async_dl_compact(NULL, raw, len);

    d = ngx_alloc(offsetof(ngx_http_async_dl_sse_data_t, text)
                  + sizeof("data: ") - 1 + n + 2, ngx_cycle->log);
    if (d == NULL) {
        ngx_free(raw);
        return NULL;
    }

    d->refs = 1;
    d->seq = seq;

    p = ngx_cpymem(d->text, "data: ", sizeof("data: ") - 1);
    p += ngx_http_async_dl_compact(p, raw, len);
    *p++ = '\n';
    *p++ = '\n';

    d->len = p - d->text;

    ngx_free(raw);

    return d;
}


static void
ngx_http_async_dl_sse_data_release(ngx_http_async_dl_sse_data_t *d)
{
    if (--d->refs == 0) {
        ngx_free(d);
    }
}
