
/*
 * The job hub of one nginx worker process: the jobs watched here (an rbtree
 * keyed by job id and location prefix), each with its queue of watchers.
 * No watcher ever queries the database:
 *
 * - The LISTEN connection hands over each async_dl_events notification
 *   ("<job id> <event seq> e|p"); a job watched here marks itself stale and
 *   posts its event.
 * - A job fetches its state with ONE query on the pool
 *   (async_dl_job_events_state, sql/003_events.sql) and tells all its
 *   watchers (their handler, ngx_http_async_dl_hub.h).  One fetch at a time
 *   per job: what arrives meanwhile leaves the job stale and it fetches
 *   again once the answer is in.  Progress-only changes ("p") are fetched
 *   at most every NGX_HTTP_ASYNC_DL_HUB_THROTTLE ms; a file or the job
 *   ending ("e") is fetched at once.  A storm of notifications costs a
 *   bounded number of queries.
 * - The new state is read by ngx_http_async_dl_hub_state.c: each file that
 *   ended becomes a "file" text in the job's log, kept until every started
 *   watcher has read it; the documents are built once per state and shared,
 *   reference counted, by the watchers that send them.
 * - When LISTEN (re)connects, every job is stale: notifications sent while
 *   there was no LISTEN are lost, so each job fetches again and no watcher
 *   misses its final state.
 * - With async_dl_status_cache, the same connection keeps the cache
 *   (ngx_http_async_dl_status_cache.c) current: each notification drops
 *   its job's documents, its pings keep the cache fresh, and it flushes
 *   the cache when LISTEN is lost or (re)connects.
 *
 * A new watcher is told the job's last state when there is one and LISTEN
 * is up (10,000 watchers of 100 jobs cost 100 queries), else after a fetch.
 * It waits in the job's `waiting` queue until it has answered, then moves
 * to `watchers`: new arrivals are told without a walk over the watchers
 * already streaming, so each costs O(1) however many watch the job.
 *
 * Lifetimes: a job lives while it has watchers (and while a fan-out runs
 * over it: job->busy); a watcher lives in its owner's memory and leaves
 * with ngx_http_async_dl_hub_leave().
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_listen.h"
#include "ngx_http_async_dl_metrics.h"
#include "ngx_http_async_dl_status_cache.h"
#include "ngx_http_async_dl_owner.h"
#include "ngx_http_async_dl_hub.h"


#define NGX_HTTP_ASYNC_DL_HUB_THROTTLE   250    /* ms between progress */
#define NGX_HTTP_ASYNC_DL_HUB_REFETCH    1000   /* ms after a failed fetch */


typedef struct {
    ngx_rbtree_t                       tree;
    ngx_rbtree_node_t                  sentinel;
    ngx_http_async_dl_pg_t            *pg;
    ngx_http_async_dl_listen_t        *listen;
    ngx_http_async_dl_sc_t            *cache;       /* NULL: none */
    ngx_log_t                         *log;

    ngx_uint_t                         nwatchers;
    ngx_uint_t                         njobs;
    ngx_uint_t                         nfetches;
    ngx_uint_t                         ntells;
    ngx_uint_t                         nready;    /* LISTEN was ready */
} ngx_http_async_dl_hub_t;


static ngx_int_t ngx_http_async_dl_hub_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static void ngx_http_async_dl_hub_notify(void *data, const char *payload);
static void ngx_http_async_dl_hub_resync(void *data);
static void ngx_http_async_dl_hub_lost(void *data);
static void ngx_http_async_dl_hub_pong(void *data, int64_t sent);

static ngx_http_async_dl_hub_job_t *ngx_http_async_dl_hub_job(
    ngx_str_t *id, ngx_str_t *prefix);
static void ngx_http_async_dl_hub_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_async_dl_hub_job_cmp(
    ngx_http_async_dl_hub_job_t *job, uint32_t hash, u_char *id,
    ngx_str_t *prefix);
static void ngx_http_async_dl_hub_job_handler(ngx_event_t *ev);
static void ngx_http_async_dl_hub_job_post(ngx_http_async_dl_hub_job_t *job,
    ngx_http_async_dl_hub_stale_e stale);
static void ngx_http_async_dl_hub_job_kick(ngx_http_async_dl_hub_job_t *job);
static void ngx_http_async_dl_hub_job_fetch(ngx_http_async_dl_hub_job_t *job);
static void ngx_http_async_dl_hub_job_fetched(
    ngx_http_async_dl_pg_query_t *q);
static void ngx_http_async_dl_hub_job_failed(
    ngx_http_async_dl_hub_job_t *job, ngx_http_async_dl_pg_status_e status,
    PGresult *res);
static void ngx_http_async_dl_hub_job_fanout(
    ngx_http_async_dl_hub_job_t *job);
static void ngx_http_async_dl_hub_job_tell(ngx_http_async_dl_hub_job_t *job,
    ngx_http_async_dl_hub_news_e news, ngx_uint_t started);
static void ngx_http_async_dl_hub_job_trim(ngx_http_async_dl_hub_job_t *job);
static void ngx_http_async_dl_hub_job_unlock(
    ngx_http_async_dl_hub_job_t *job);
static void ngx_http_async_dl_hub_job_free(ngx_http_async_dl_hub_job_t *job);


static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_hub_stmt = {
    "async_dl_events_state",
    "SELECT o_owner, o_seq, o_status, o_states, o_summary, o_files, o_full"
    " FROM async_dl_job_events_state($1, $2, true)", 2
};


static ngx_http_variable_t  ngx_http_async_dl_hub_vars[] = {

    { ngx_string("async_dl_stream_subscribers"), NULL,
      ngx_http_async_dl_hub_variable,
      offsetof(ngx_http_async_dl_hub_t, nwatchers),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("async_dl_stream_jobs"), NULL,
      ngx_http_async_dl_hub_variable,
      offsetof(ngx_http_async_dl_hub_t, njobs),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("async_dl_stream_queries"), NULL,
      ngx_http_async_dl_hub_variable,
      offsetof(ngx_http_async_dl_hub_t, nfetches),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("async_dl_stream_tells"), NULL,
      ngx_http_async_dl_hub_variable,
      offsetof(ngx_http_async_dl_hub_t, ntells),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/* the statement's index in the pool's list: set at configuration */
static ngx_uint_t                ngx_http_async_dl_hub_stmt_index;

/* this worker process's hub */
static ngx_http_async_dl_hub_t  *ngx_http_async_dl_hub;


/* configuration and process life */


char *
ngx_http_async_dl_hub_init_conf(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf)
{
    ngx_int_t  n;

    n = ngx_http_async_dl_pg_add_stmt(cf, &amcf->pg,
                                      &ngx_http_async_dl_hub_stmt);
    if (n == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    ngx_http_async_dl_hub_stmt_index = n;

    return ngx_http_async_dl_owner_init_conf(cf, amcf);
}


ngx_int_t
ngx_http_async_dl_hub_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_async_dl_hub_vars; v->name.len; v++) {
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
ngx_http_async_dl_hub_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char      *p;
    ngx_uint_t   n;

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    n = ngx_http_async_dl_hub
        ? *(ngx_uint_t *) ((u_char *) ngx_http_async_dl_hub + data) : 0;

    v->len = ngx_sprintf(p, "%ui", n) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


ngx_int_t
ngx_http_async_dl_hub_init_process(ngx_cycle_t *cycle,
    ngx_http_async_dl_main_conf_t *amcf)
{
    ngx_http_async_dl_hub_t              *hub;
    ngx_http_async_dl_listen_handlers_t   h;

    if (amcf->pool == NULL) {
        return NGX_OK;
    }

    hub = ngx_pcalloc(cycle->pool, sizeof(ngx_http_async_dl_hub_t));
    if (hub == NULL) {
        return NGX_ERROR;
    }

    ngx_rbtree_init(&hub->tree, &hub->sentinel,
                    ngx_http_async_dl_hub_rbtree_insert);

    hub->pg = amcf->pool;
    hub->cache = amcf->status_cache;
    hub->log = cycle->log;

    h.notify = ngx_http_async_dl_hub_notify;
    h.ready = ngx_http_async_dl_hub_resync;
    h.lost = ngx_http_async_dl_hub_lost;
    h.pong = ngx_http_async_dl_hub_pong;
    h.ping = hub->cache ? ngx_http_async_dl_sc_ping_interval(hub->cache) : 0;
    h.data = hub;

    hub->listen = ngx_http_async_dl_listen_start(cycle, &amcf->pg, &h);
    if (hub->listen == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_async_dl_owner_init_process(cycle, amcf->pool) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_async_dl_hub = hub;

    return NGX_OK;
}


void
ngx_http_async_dl_hub_exit_process(ngx_cycle_t *cycle)
{
    if (ngx_http_async_dl_hub) {
        ngx_http_async_dl_listen_stop(ngx_http_async_dl_hub->listen);
        ngx_http_async_dl_owner_exit_process();
        ngx_http_async_dl_hub = NULL;
    }
}


/* watchers */


ngx_int_t
ngx_http_async_dl_hub_watch(ngx_http_async_dl_watcher_t *w, ngx_str_t *id,
    ngx_str_t *prefix, ngx_log_t *log)
{
    ngx_http_async_dl_hub_t      *hub;
    ngx_http_async_dl_hub_job_t  *job;

    hub = ngx_http_async_dl_hub;

    if (hub == NULL) {
        return NGX_DECLINED;
    }

    job = ngx_http_async_dl_hub_job(id, prefix);
    if (job == NULL) {
        return NGX_ERROR;
    }

    w->job = job;
    w->started = 0;

    ngx_queue_insert_tail(&job->waiting, &w->queue);
    job->nwatchers++;
    job->nwaiting++;
    hub->nwatchers++;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, log, 0,
                   "async_dl hub: watching %s, %ui here, %ui in all",
                   job->id, job->nwatchers, hub->nwatchers);

    /*
     * Told from the job's event handler, never from here: the answer may
     * end the watcher's request, which must not happen before its handler
     * has returned.
     */

    ngx_http_async_dl_hub_job_post(job,
                               (job->known
                                && ngx_http_async_dl_listen_ready(hub->listen))
                               ? NGX_HTTP_ASYNC_DL_HUB_FRESH
                               : NGX_HTTP_ASYNC_DL_HUB_STALE_NOW);

    return NGX_OK;
}


void
ngx_http_async_dl_hub_started(ngx_http_async_dl_watcher_t *w)
{
    ngx_http_async_dl_hub_job_t  *job;

    job = w->job;

    w->started = 1;
    w->file_next = job->log_base + job->log_n;
    job->nwaiting--;

    ngx_queue_remove(&w->queue);
    ngx_queue_insert_tail(&job->watchers, &w->queue);
}


ngx_http_async_dl_hub_text_t *
ngx_http_async_dl_hub_next_file(ngx_http_async_dl_watcher_t *w)
{
    ngx_http_async_dl_hub_job_t  *job;

    job = w->job;

    if (w->file_next < job->log_base + job->log_n) {
        return job->log[w->file_next++ - job->log_base];
    }

    return NULL;
}


void
ngx_http_async_dl_hub_leave(ngx_http_async_dl_watcher_t *w)
{
    ngx_http_async_dl_hub_t      *hub;
    ngx_http_async_dl_hub_job_t  *job;

    hub = ngx_http_async_dl_hub;
    job = w->job;

    if (job == NULL || hub == NULL) {
        /* not watching, or the process is exiting: the hub went with it */
        return;
    }

    ngx_queue_remove(&w->queue);
    w->job = NULL;

    job->nwatchers--;

    if (!w->started) {
        job->nwaiting--;
    }

    hub->nwatchers--;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, hub->log, 0,
                   "async_dl hub: left job %s, %ui here, %ui in all",
                   job->id, job->nwatchers, hub->nwatchers);

    if (job->nwatchers == 0 && job->busy == 0) {
        ngx_http_async_dl_hub_job_free(job);
    }
}


/* notifications */


static void
ngx_http_async_dl_hub_notify(void *data, const char *payload)
{
    ngx_http_async_dl_hub_t *hub = data;

    u_char                         *p, *id, *last;
    uint32_t                        hash;
    uint64_t                        seq;
    ngx_int_t                       rc;
    ngx_rbtree_node_t              *node, *sentinel, *first;
    ngx_http_async_dl_hub_job_t    *job;
    ngx_http_async_dl_hub_stale_e   stale;

    /* "flush": a migration changed how documents are written */

    if (ngx_strcmp(payload, "flush") == 0) {
        if (hub->cache) {
            ngx_http_async_dl_sc_flush(hub->cache, "asked by a notification");
        }

        return;
    }

    /* "<job id> <event seq>[ e|p|n <md5 of owner>]" */

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
            ? NGX_HTTP_ASYNC_DL_HUB_STALE_PROGRESS
            : NGX_HTTP_ASYNC_DL_HUB_STALE_NOW;

    if (last - p == 3 + NGX_HTTP_ASYNC_DL_OWNER_KEY_LEN
        && p[0] == ' ' && p[1] == 'n' && p[2] == ' ')
    {
        /*
         * A new job: the streams of its owner follow it.  Nothing of it
         * can be in the status cache older than it is (nothing is kept
         * of a job that did not exist), so the cache is left alone: a
         * first poll's fill under way is kept.
         */
        ngx_http_async_dl_owner_created(id, p + 3);
        goto watched;
    }

    if (hub->cache) {
        /* before anything else: a poll after this sees the change */
        ngx_http_async_dl_sc_invalidate(hub->cache, id, seq);
    }

watched:

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
        job = (ngx_http_async_dl_hub_job_t *) node;

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
        job = (ngx_http_async_dl_hub_job_t *) node;

        if (ngx_memcmp(id, job->id, NGX_HTTP_ASYNC_DL_UUID_LEN) != 0) {
            break;
        }

        /* a state it already has (its own fetch was later) is no news */

        if (!job->known || seq == 0 || seq > job->seq) {
            ngx_http_async_dl_hub_job_post(job, stale);
        }

        node = ngx_rbtree_next(&hub->tree, node);
    }

    return;

invalid:

    ngx_log_error(NGX_LOG_WARN, hub->log, 0,
                  "async_dl: ignored a malformed notification \"%s\"",
                  payload);
}


/* LISTEN is gone: what it would have said is unknown */

static void
ngx_http_async_dl_hub_lost(void *data)
{
    ngx_http_async_dl_hub_t *hub = data;

    if (hub->cache) {
        ngx_http_async_dl_sc_flush(hub->cache, "LISTEN lost");
    }
}


static void
ngx_http_async_dl_hub_pong(void *data, int64_t sent)
{
    ngx_http_async_dl_hub_t *hub = data;

    if (hub->cache) {
        ngx_http_async_dl_sc_pong(hub->cache, sent);
    }
}


/* LISTEN is (again) in place: every job may have missed something */

static void
ngx_http_async_dl_hub_resync(void *data)
{
    ngx_http_async_dl_hub_t *hub = data;

    ngx_rbtree_node_t  *node;

    if (hub->cache) {
        ngx_http_async_dl_sc_flush(hub->cache, "LISTEN ready");
    }

    if (hub->nready++) {
        ngx_http_async_dl_m_count(listen_reconnects);
    }

    /* their new jobs may have been missed too */
    ngx_http_async_dl_owner_resync();

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
        ngx_http_async_dl_hub_job_post((ngx_http_async_dl_hub_job_t *) node,
                                       NGX_HTTP_ASYNC_DL_HUB_STALE_NOW);
    }
}


/* jobs */


static ngx_http_async_dl_hub_job_t *
ngx_http_async_dl_hub_job(ngx_str_t *id, ngx_str_t *prefix)
{
    uint32_t                      hash;
    ngx_int_t                     rc;
    ngx_rbtree_node_t            *node, *sentinel;
    ngx_http_async_dl_hub_t      *hub;
    ngx_http_async_dl_hub_job_t  *job;

    hub = ngx_http_async_dl_hub;
    hash = ngx_crc32_short(id->data, NGX_HTTP_ASYNC_DL_UUID_LEN);

    node = hub->tree.root;
    sentinel = hub->tree.sentinel;

    while (node != sentinel) {
        job = (ngx_http_async_dl_hub_job_t *) node;

        rc = ngx_http_async_dl_hub_job_cmp(job, hash, id->data, prefix);

        if (rc == 0) {
            return job;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    job = ngx_calloc(sizeof(ngx_http_async_dl_hub_job_t), hub->log);
    if (job == NULL) {
        return NULL;
    }

    ngx_memcpy(job->id, id->data, NGX_HTTP_ASYNC_DL_UUID_LEN);
    job->id[NGX_HTTP_ASYNC_DL_UUID_LEN] = '\0';
    job->prefix = prefix;
    job->node.key = hash;

    ngx_queue_init(&job->watchers);
    ngx_queue_init(&job->waiting);

    job->event.handler = ngx_http_async_dl_hub_job_handler;
    job->event.data = job;
    job->event.log = hub->log;
    job->event.cancelable = 1;

    job->fetched = ngx_current_msec - NGX_HTTP_ASYNC_DL_HUB_THROTTLE;
    job->not_before = ngx_current_msec;

    ngx_rbtree_insert(&hub->tree, &job->node);
    hub->njobs++;

    return job;
}


/* order: hash, id, prefix; <0: what is looked for is on the left */

static ngx_int_t
ngx_http_async_dl_hub_job_cmp(ngx_http_async_dl_hub_job_t *job,
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
ngx_http_async_dl_hub_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t           **p;
    ngx_http_async_dl_hub_job_t  *job;

    job = (ngx_http_async_dl_hub_job_t *) node;

    for ( ;; ) {
        p = (ngx_http_async_dl_hub_job_cmp((ngx_http_async_dl_hub_job_t *)
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


/* the job knows it is stale (or has new watchers): act from its event */

static void
ngx_http_async_dl_hub_job_post(ngx_http_async_dl_hub_job_t *job,
    ngx_http_async_dl_hub_stale_e stale)
{
    if (stale > job->stale) {
        job->stale = stale;
    }

    ngx_post_event(&job->event, &ngx_posted_events);
}


static void
ngx_http_async_dl_hub_job_handler(ngx_event_t *ev)
{
    ngx_http_async_dl_hub_job_t  *job = ev->data;

    job->busy++;

    /*
     * New watchers, when the last state is good enough for them: only
     * them (they start at the end of the job's log, so nothing to trim).
     */

    if (job->nwaiting && job->known
        && ngx_http_async_dl_listen_ready(ngx_http_async_dl_hub->listen))
    {
        ngx_http_async_dl_hub_job_tell(job, NGX_HTTP_ASYNC_DL_HUB_STATE, 0);
    }

    ngx_http_async_dl_hub_job_unlock(job);
}


/* fetch now, later (throttled, backing off) or not at all */

static void
ngx_http_async_dl_hub_job_kick(ngx_http_async_dl_hub_job_t *job)
{
    ngx_msec_t      when;
    ngx_msec_int_t  delta;

    if (job->fetch || job->stale == NGX_HTTP_ASYNC_DL_HUB_FRESH) {
        /* a fetch in flight kicks again when its answer is in */
        return;
    }

    when = job->not_before;

    if (job->stale == NGX_HTTP_ASYNC_DL_HUB_STALE_PROGRESS
        && (ngx_msec_int_t) (job->fetched + NGX_HTTP_ASYNC_DL_HUB_THROTTLE
                             - when) > 0)
    {
        when = job->fetched + NGX_HTTP_ASYNC_DL_HUB_THROTTLE;
    }

    delta = (ngx_msec_int_t) (when - ngx_current_msec);

    if (job->event.timer_set) {
        ngx_del_timer(&job->event);
    }

    if (delta > 0) {
        ngx_add_timer(&job->event, (ngx_msec_t) delta);
        return;
    }

    ngx_http_async_dl_hub_job_fetch(job);
}


static void
ngx_http_async_dl_hub_job_fetch(ngx_http_async_dl_hub_job_t *job)
{
    ngx_pool_t                      *pool;
    const char                     **params;
    ngx_http_async_dl_hub_t         *hub;
    ngx_http_async_dl_pg_query_t    *q;
    ngx_http_async_dl_pg_status_e    status;

    hub = ngx_http_async_dl_hub;

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

    q->stmt = ngx_http_async_dl_hub_stmt_index;
    q->params = params;
    q->handler = ngx_http_async_dl_hub_job_fetched;
    q->data = job;

    job->stale = NGX_HTTP_ASYNC_DL_HUB_FRESH;
    job->fetched = ngx_current_msec;
    hub->nfetches++;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, hub->log, 0,
                   "async_dl hub: fetching job %s", job->id);

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

    ngx_http_async_dl_hub_job_failed(job, status, NULL);

    /* arms the refetch */
    ngx_http_async_dl_hub_job_kick(job);
}


static void
ngx_http_async_dl_hub_job_fetched(ngx_http_async_dl_pg_query_t *q)
{
    ngx_int_t                     rc;
    ngx_pool_t                   *pool;
    ngx_http_async_dl_hub_job_t  *job;

    job = q->data;
    pool = job->fetch;
    job->fetch = NULL;
    job->busy++;

    if (q->status != NGX_HTTP_ASYNC_DL_PG_OK) {
        ngx_http_async_dl_hub_job_failed(job, q->status, q->result);
        goto done;
    }

    if (PQntuples(q->result) == 0
        || (PQnfields(q->result) == 7 && PQgetisnull(q->result, 0, 6)))
    {
        rc = ngx_http_async_dl_hub_state_gone(job);

    } else {
        rc = ngx_http_async_dl_hub_state_update(job, q->result,
                                                ngx_http_async_dl_hub->log);
    }

    if (rc != NGX_ERROR && ngx_http_async_dl_hub->cache) {
        /*
         * The streams may send this state before its notification is in:
         * a poll must not answer an older one from the status cache.
         */
        ngx_http_async_dl_sc_invalidate(ngx_http_async_dl_hub->cache,
                                        job->id,
                                        job->status
                                        == NGX_HTTP_ASYNC_DL_HUB_DELETED
                                        ? 0 : job->seq);
    }

    if (rc == NGX_ERROR) {
        ngx_http_async_dl_hub_job_failed(job,
                                         NGX_HTTP_ASYNC_DL_PG_UNAVAILABLE,
                                         NULL);

    } else {
        /* NGX_DECLINED, nothing newer: the new watchers still need it */
        ngx_http_async_dl_hub_job_fanout(job);
    }

done:

    /* the result was read: it goes with the query's pool */
    ngx_destroy_pool(pool);

    ngx_http_async_dl_hub_job_unlock(job);
}


static void
ngx_http_async_dl_hub_job_failed(ngx_http_async_dl_hub_job_t *job,
    ngx_http_async_dl_pg_status_e status, PGresult *res)
{
    char        *msg;
    ngx_uint_t   level;

    msg = (res && status == NGX_HTTP_ASYNC_DL_PG_SQL_ERROR)
          ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    level = msg ? NGX_LOG_ERR : NGX_LOG_INFO;

    ngx_log_error(level, ngx_http_async_dl_hub->log, 0,
                  "async_dl: stream of job %s: fetching its state failed "
                  "(%s), again in %d ms", job->id,
                  msg ? msg : (status == NGX_HTTP_ASYNC_DL_PG_TIMEOUT
                               ? "timed out" : "database unavailable"),
                  NGX_HTTP_ASYNC_DL_HUB_REFETCH);

    job->stale = NGX_HTTP_ASYNC_DL_HUB_STALE_NOW;
    job->not_before = ngx_current_msec + NGX_HTTP_ASYNC_DL_HUB_REFETCH;

    /* who got no answer yet gets one now; the others wait for the refetch */

    ngx_http_async_dl_hub_job_tell(job, NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE, 0);
}


/* the job's state (or news of its deletion) to every watcher */

static void
ngx_http_async_dl_hub_job_fanout(ngx_http_async_dl_hub_job_t *job)
{
    ngx_http_async_dl_hub_job_tell(job, NGX_HTTP_ASYNC_DL_HUB_STATE, 1);
    ngx_http_async_dl_hub_job_trim(job);
}


/*
 * News for the waiting watchers, and with `started` for the started ones
 * too, first (a waiting one that starts now moves to their tail, after
 * their walk): a new state goes to all, UNAVAILABLE and the last state
 * for new arrivals only to the waiting ones.
 */

static void
ngx_http_async_dl_hub_job_tell(ngx_http_async_dl_hub_job_t *job,
    ngx_http_async_dl_hub_news_e news, ngx_uint_t started)
{
    ngx_queue_t                  *q, *next;
    ngx_http_async_dl_watcher_t  *w;

    job->busy++;

    if (started) {
        for (q = ngx_queue_head(&job->watchers);
             q != ngx_queue_sentinel(&job->watchers);
             q = next)
        {
            next = ngx_queue_next(q);
            w = ngx_queue_data(q, ngx_http_async_dl_watcher_t, queue);
            ngx_http_async_dl_hub->ntells++;
            w->handler(w, news);
        }
    }

    for (q = ngx_queue_head(&job->waiting);
         q != ngx_queue_sentinel(&job->waiting);
         q = next)
    {
        next = ngx_queue_next(q);
        w = ngx_queue_data(q, ngx_http_async_dl_watcher_t, queue);
        ngx_http_async_dl_hub->ntells++;
        w->handler(w, news);
    }

    job->busy--;
}


/* "file" events every started watcher has read are dropped */

static void
ngx_http_async_dl_hub_job_trim(ngx_http_async_dl_hub_job_t *job)
{
    ngx_uint_t                    min, n, i;
    ngx_queue_t                  *q;
    ngx_http_async_dl_watcher_t  *w;

    if (job->log_n == 0) {
        return;
    }

    min = job->log_base + job->log_n;

    for (q = ngx_queue_head(&job->watchers);
         q != ngx_queue_sentinel(&job->watchers);
         q = ngx_queue_next(q))
    {
        w = ngx_queue_data(q, ngx_http_async_dl_watcher_t, queue);

        if (w->file_next < min) {
            min = w->file_next;
        }
    }

    n = min - job->log_base;

    if (n == 0) {
        return;
    }

    for (i = 0; i < n; i++) {
        ngx_http_async_dl_hub_text_release(job->log[i]);
    }

    ngx_memmove(job->log, job->log + n,
                (job->log_n - n) * sizeof(ngx_http_async_dl_hub_text_t *));

    job->log_n -= n;
    job->log_base = min;
}


/* the end of something done on a job: free it, or see what comes next */

static void
ngx_http_async_dl_hub_job_unlock(ngx_http_async_dl_hub_job_t *job)
{
    if (--job->busy) {
        return;
    }

    if (job->nwatchers == 0) {
        ngx_http_async_dl_hub_job_free(job);
        return;
    }

    job->busy++;
    ngx_http_async_dl_hub_job_kick(job);

    if (--job->busy == 0 && job->nwatchers == 0) {
        /* the fetch failed at once and its waiting watchers left */
        ngx_http_async_dl_hub_job_free(job);
    }
}


static void
ngx_http_async_dl_hub_job_free(ngx_http_async_dl_hub_job_t *job)
{
    ngx_http_async_dl_hub_t  *hub;

    hub = ngx_http_async_dl_hub;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, hub->log, 0,
                   "async_dl hub: no more watchers of job %s", job->id);

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

    ngx_http_async_dl_hub_state_free(job);

    ngx_free(job);
}
