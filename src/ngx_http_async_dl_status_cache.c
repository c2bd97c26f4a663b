
/*
 * The status cache (see ngx_http_async_dl_status_cache.h): a slab zone
 * with one rbtree of documents, ordered by (crc32(id), id, prefix), and an
 * LRU queue; one lock, the slab pool's mutex.
 *
 * Why a hit is never too old:
 *
 * - Freshness.  Every process's LISTEN connection sends a NOTIFY to a
 *   channel of its own every lag/4 and, when it comes back, moves
 *   fresh_until to (time sent + lag).  PostgreSQL delivers notifications
 *   in commit order, so by then that connection handed every notification
 *   committed before the ping to ngx_http_async_dl_sc_invalidate().  A hit
 *   is served only before fresh_until: it reflects every commit older than
 *   lag.  A connection that stalls stops moving it; one that is lost or
 *   (re)subscribes flushes the cache (what it missed is unknown).
 *
 * - Fills.  A miss records the epoch (flushes), gen[slot] (invalidations)
 *   and done[slot] (fills ended) of its job's slot before it sends its
 *   query.  Its document is kept only when none of them moved: nothing
 *   changed the job since the query's snapshot might have been taken, and
 *   no fill that ended meanwhile answered something newer.  Every fill that
 *   ends drops the job's documents older than its own, so nothing older
 *   than an answer this instance gave can be served after it.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_listen.h"
#include "ngx_http_async_dl_status_cache.h"


#define NGX_HTTP_ASYNC_DL_SC_SLOTS      4096        /* gen[], done[] */
#define NGX_HTTP_ASYNC_DL_SC_MIN_SIZE   (256 * 1024)
#define NGX_HTTP_ASYNC_DL_SC_EVICT      8           /* per failed alloc */
#define NGX_HTTP_ASYNC_DL_SC_SKEW       1000        /* ms, before expiry */


typedef enum {
    NGX_HTTP_ASYNC_DL_SC_HITS = 0,
    NGX_HTTP_ASYNC_DL_SC_MISSES,
    NGX_HTTP_ASYNC_DL_SC_STALE,
    NGX_HTTP_ASYNC_DL_SC_OWNER_MISSES,
    NGX_HTTP_ASYNC_DL_SC_EXPIRED,
    NGX_HTTP_ASYNC_DL_SC_FILLS,
    NGX_HTTP_ASYNC_DL_SC_REFUSED,
    NGX_HTTP_ASYNC_DL_SC_TOO_LARGE,
    NGX_HTTP_ASYNC_DL_SC_INVALIDATIONS,
    NGX_HTTP_ASYNC_DL_SC_FLUSHES,
    NGX_HTTP_ASYNC_DL_SC_EVICTIONS,
    NGX_HTTP_ASYNC_DL_SC_ENTRIES,
    NGX_HTTP_ASYNC_DL_SC_BYTES,
    NGX_HTTP_ASYNC_DL_SC_NCOUNTERS
} ngx_http_async_dl_sc_counter_e;


typedef struct {
    ngx_rbtree_t              rbtree;
    ngx_rbtree_node_t         sentinel;
    ngx_queue_t               lru;              /* most recent first */
    uint64_t                  epoch;
    int64_t                   fresh_until;      /* listen clock, ms */
    ngx_msec_t                lag;              /* the newest config's */
    uint64_t                  counters[NGX_HTTP_ASYNC_DL_SC_NCOUNTERS];
    uint32_t                  gen[NGX_HTTP_ASYNC_DL_SC_SLOTS];
    uint32_t                  done[NGX_HTTP_ASYNC_DL_SC_SLOTS];
} ngx_http_async_dl_sc_sh_t;


typedef struct {
    ngx_rbtree_node_t         node;             /* key: crc32(id) */
    ngx_queue_t               lru;
    uint64_t                  seq;              /* the job's event_seq */
    int64_t                   expires_ms;       /* wall clock; -1: none */
    size_t                    size;             /* allocated */
    u_char                    id[NGX_HTTP_ASYNC_DL_UUID_LEN];
    u_char                    etag[34];
    uint16_t                  prefix_len;
    uint16_t                  owner_len;
    uint32_t                  body_len;
    u_char                    data[1];          /* prefix, owner, body */
} ngx_http_async_dl_sc_node_t;


struct ngx_http_async_dl_sc_s {
    ngx_shm_zone_t           *zone;
    ngx_slab_pool_t          *shpool;
    ngx_http_async_dl_sc_sh_t *sh;
    ngx_msec_t                lag;
    size_t                    max_entry;
};


static ngx_int_t ngx_http_async_dl_sc_init_zone(ngx_shm_zone_t *zone,
    void *data);
static void ngx_http_async_dl_sc_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_async_dl_sc_cmp(u_char *id, ngx_str_t *prefix,
    ngx_http_async_dl_sc_node_t *n);
static ngx_http_async_dl_sc_node_t *ngx_http_async_dl_sc_find(
    ngx_http_async_dl_sc_sh_t *sh, uint32_t hash, u_char *id,
    ngx_str_t *prefix);
static ngx_uint_t ngx_http_async_dl_sc_drop(ngx_http_async_dl_sc_t *sc,
    uint32_t hash, u_char *id, uint64_t seq);
static void ngx_http_async_dl_sc_free(ngx_http_async_dl_sc_t *sc,
    ngx_http_async_dl_sc_node_t *n);
static ngx_http_async_dl_sc_node_t *ngx_http_async_dl_sc_alloc(
    ngx_http_async_dl_sc_t *sc, size_t size);
static ngx_int_t ngx_http_async_dl_sc_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_sc_fill_stmt = {
    "async_dl_status_fill",
    "SELECT o_owner, o_seq, o_expires_ms, o_doc"
    " FROM async_dl_job_status_fill($1, $2)", 2
};

/* the statement's index in the pool's list: set at configuration */
static ngx_uint_t  ngx_http_async_dl_sc_stmt_index;


static ngx_str_t  ngx_http_async_dl_sc_names[] = {
    ngx_string("async_dl_status_cache_hits"),
    ngx_string("async_dl_status_cache_misses"),
    ngx_string("async_dl_status_cache_stale"),
    ngx_string("async_dl_status_cache_owner_misses"),
    ngx_string("async_dl_status_cache_expired"),
    ngx_string("async_dl_status_cache_fills"),
    ngx_string("async_dl_status_cache_refused"),
    ngx_string("async_dl_status_cache_too_large"),
    ngx_string("async_dl_status_cache_invalidations"),
    ngx_string("async_dl_status_cache_flushes"),
    ngx_string("async_dl_status_cache_evictions"),
    ngx_string("async_dl_status_cache_entries"),
    ngx_string("async_dl_status_cache_bytes")
};


/* configuration */


char *
ngx_http_async_dl_sc_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_async_dl_main_conf_t *amcf = conf;

    ssize_t                  size, n;
    ngx_str_t               *value, s, name;
    ngx_int_t                idx;
    ngx_msec_t               lag;
    ngx_uint_t               i;
    ngx_http_async_dl_sc_t  *sc;

    if (amcf->status_cache_set) {
        return "is duplicate";
    }

    amcf->status_cache_set = 1;

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts > 2) {
            return "takes no parameters after \"off\"";
        }

        return NGX_CONF_OK;
    }

    size = ngx_parse_size(&value[1]);

    if (size == NGX_ERROR || size < NGX_HTTP_ASYNC_DL_SC_MIN_SIZE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "async_dl_status_cache: \"%V\" is not a size of "
                           "at least 256k, or \"off\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    sc = ngx_pcalloc(cf->pool, sizeof(ngx_http_async_dl_sc_t));
    if (sc == NULL) {
        return NGX_CONF_ERROR;
    }

    sc->lag = 1000;
    sc->max_entry = ngx_min(64 * 1024, size / 8);

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "lag=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            lag = ngx_parse_time(&s, 0);

            if (lag == (ngx_msec_t) NGX_ERROR || lag < 100 || lag > 60000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "async_dl_status_cache: \"%V\": lag is "
                                   "a time from 100ms to 60s", &value[i]);
                return NGX_CONF_ERROR;
            }

            sc->lag = lag;
            continue;
        }

        if (ngx_strncmp(value[i].data, "max_entry=", 10) == 0) {
            s.data = value[i].data + 10;
            s.len = value[i].len - 10;

            n = ngx_parse_size(&s);

            if (n == NGX_ERROR || n < 1024 || n > size / 8) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "async_dl_status_cache: \"%V\": "
                                   "max_entry is a size from 1k to an "
                                   "eighth of the zone", &value[i]);
                return NGX_CONF_ERROR;
            }

            sc->max_entry = n;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "async_dl_status_cache: unknown parameter \"%V\"",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&name, "async_dl_status_cache");

    sc->zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_async_dl_module);
    if (sc->zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (sc->zone->data) {
        return "is duplicate";
    }

    sc->zone->init = ngx_http_async_dl_sc_init_zone;
    sc->zone->data = sc;

    idx = ngx_http_async_dl_pg_add_stmt(cf, &amcf->pg,
                                        &ngx_http_async_dl_sc_fill_stmt);
    if (idx == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    ngx_http_async_dl_sc_stmt_index = idx;

    amcf->status_cache = sc;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_async_dl_sc_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_async_dl_sc_t *osc = data;

    size_t                      len;
    ngx_slab_pool_t            *shpool;
    ngx_http_async_dl_sc_t     *sc;
    ngx_http_async_dl_sc_sh_t  *sh;

    sc = zone->data;
    shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (osc) {
        /* a reload: the zone is kept, what it holds is not trusted */
        sc->shpool = osc->shpool;
        sc->sh = osc->sh;
        ngx_http_async_dl_sc_flush(sc, "nginx reloaded");

        /* the old worker processes' pings count with the new lag */
        ngx_shmtx_lock(&sc->shpool->mutex);
        sc->sh->lag = sc->lag;
        ngx_shmtx_unlock(&sc->shpool->mutex);

        return NGX_OK;
    }

    sc->shpool = shpool;

    if (zone->shm.exists) {
        sc->sh = shpool->data;
        return NGX_OK;
    }

    sh = ngx_slab_alloc(shpool, sizeof(ngx_http_async_dl_sc_sh_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(sh, sizeof(ngx_http_async_dl_sc_sh_t));

    ngx_rbtree_init(&sh->rbtree, &sh->sentinel,
                    ngx_http_async_dl_sc_rbtree_insert);
    ngx_queue_init(&sh->lru);
    sh->lag = sc->lag;

    sc->sh = sh;
    shpool->data = sh;

    len = sizeof(" in async_dl_status_cache zone") + zone->shm.name.len;

    shpool->log_ctx = ngx_slab_alloc(shpool, len);
    if (shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(shpool->log_ctx, " in async_dl_status_cache zone \"%V\"%Z",
                &zone->shm.name);

    /* a full zone evicts the least recently used documents: no alert */
    shpool->log_nomem = 0;

    return NGX_OK;
}


ngx_int_t
ngx_http_async_dl_sc_add_variables(ngx_conf_t *cf)
{
    ngx_uint_t            i;
    ngx_http_variable_t  *var;

    for (i = 0; i < NGX_HTTP_ASYNC_DL_SC_NCOUNTERS; i++) {
        var = ngx_http_add_variable(cf, &ngx_http_async_dl_sc_names[i],
                                    NGX_HTTP_VAR_NOCACHEABLE);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = ngx_http_async_dl_sc_variable;
        var->data = i;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_async_dl_sc_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                         *p;
    uint64_t                        n;
    ngx_http_async_dl_sc_t         *sc;
    ngx_http_async_dl_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_async_dl_module);
    sc = amcf->status_cache;

    if (sc == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_shmtx_lock(&sc->shpool->mutex);
    n = sc->sh->counters[data];
    ngx_shmtx_unlock(&sc->shpool->mutex);

    v->len = ngx_sprintf(p, "%uL", n) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


ngx_uint_t
ngx_http_async_dl_sc_stmt(void)
{
    return ngx_http_async_dl_sc_stmt_index;
}


ngx_msec_t
ngx_http_async_dl_sc_ping_interval(ngx_http_async_dl_sc_t *sc)
{
    return sc->lag / 4;
}


/* the tree */


static ngx_int_t
ngx_http_async_dl_sc_cmp(u_char *id, ngx_str_t *prefix,
    ngx_http_async_dl_sc_node_t *n)
{
    ngx_int_t  rc;

    rc = ngx_memcmp(id, n->id, NGX_HTTP_ASYNC_DL_UUID_LEN);
    if (rc != 0) {
        return rc;
    }

    return ngx_memn2cmp(prefix->data, n->data, prefix->len, n->prefix_len);
}


static void
ngx_http_async_dl_sc_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_str_t                     prefix;
    ngx_rbtree_node_t           **p;
    ngx_http_async_dl_sc_node_t  *n, *t;

    n = (ngx_http_async_dl_sc_node_t *) node;
    prefix.data = n->data;
    prefix.len = n->prefix_len;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            t = (ngx_http_async_dl_sc_node_t *) temp;
            p = (ngx_http_async_dl_sc_cmp(n->id, &prefix, t) < 0)
                ? &temp->left : &temp->right;
        }

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


static ngx_http_async_dl_sc_node_t *
ngx_http_async_dl_sc_find(ngx_http_async_dl_sc_sh_t *sh, uint32_t hash,
    u_char *id, ngx_str_t *prefix)
{
    ngx_int_t                     rc;
    ngx_rbtree_node_t            *node, *sentinel;
    ngx_http_async_dl_sc_node_t  *n;

    node = sh->rbtree.root;
    sentinel = sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        n = (ngx_http_async_dl_sc_node_t *) node;
        rc = ngx_http_async_dl_sc_cmp(id, prefix, n);

        if (rc == 0) {
            return n;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/*
 * Frees the job's documents (every prefix) older than seq, all of them
 * for seq 0.  Returns how many were kept.
 */

static ngx_uint_t
ngx_http_async_dl_sc_drop(ngx_http_async_dl_sc_t *sc, uint32_t hash,
    u_char *id, uint64_t seq)
{
    ngx_int_t                     rc;
    ngx_uint_t                    kept;
    ngx_rbtree_node_t            *node, *next, *sentinel, *first;
    ngx_http_async_dl_sc_sh_t    *sh;
    ngx_http_async_dl_sc_node_t  *n;

    sh = sc->sh;
    node = sh->rbtree.root;
    sentinel = sh->rbtree.sentinel;
    first = NULL;

    /* the leftmost document of this id: a lower bound on (hash, id) */

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        n = (ngx_http_async_dl_sc_node_t *) node;
        rc = ngx_memcmp(id, n->id, NGX_HTTP_ASYNC_DL_UUID_LEN);

        if (rc <= 0) {
            if (rc == 0) {
                first = node;
            }

            node = node->left;

        } else {
            node = node->right;
        }
    }

    kept = 0;

    for (node = first; node != NULL; node = next) {
        n = (ngx_http_async_dl_sc_node_t *) node;

        if (node->key != hash
            || ngx_memcmp(id, n->id, NGX_HTTP_ASYNC_DL_UUID_LEN) != 0)
        {
            break;
        }

        next = ngx_rbtree_next(&sh->rbtree, node);

        if (seq == 0 || n->seq < seq) {
            ngx_http_async_dl_sc_free(sc, n);

        } else {
            kept++;
        }
    }

    return kept;
}


static void
ngx_http_async_dl_sc_free(ngx_http_async_dl_sc_t *sc,
    ngx_http_async_dl_sc_node_t *n)
{
    ngx_http_async_dl_sc_sh_t  *sh = sc->sh;

    ngx_rbtree_delete(&sh->rbtree, &n->node);
    ngx_queue_remove(&n->lru);

    sh->counters[NGX_HTTP_ASYNC_DL_SC_ENTRIES]--;
    sh->counters[NGX_HTTP_ASYNC_DL_SC_BYTES] -= n->size;

    ngx_slab_free_locked(sc->shpool, n);
}


/* a full zone gives back its least recently used documents */

static ngx_http_async_dl_sc_node_t *
ngx_http_async_dl_sc_alloc(ngx_http_async_dl_sc_t *sc, size_t size)
{
    ngx_uint_t                    i;
    ngx_queue_t                  *q;
    ngx_http_async_dl_sc_sh_t    *sh;
    ngx_http_async_dl_sc_node_t  *n;

    sh = sc->sh;

    for ( ;; ) {
        n = ngx_slab_alloc_locked(sc->shpool, size);
        if (n != NULL || ngx_queue_empty(&sh->lru)) {
            return n;
        }

        for (i = 0; i < NGX_HTTP_ASYNC_DL_SC_EVICT; i++) {
            if (ngx_queue_empty(&sh->lru)) {
                break;
            }

            q = ngx_queue_last(&sh->lru);
            n = ngx_queue_data(q, ngx_http_async_dl_sc_node_t, lru);

            ngx_http_async_dl_sc_free(sc, n);
            sh->counters[NGX_HTTP_ASYNC_DL_SC_EVICTIONS]++;
        }
    }
}


/* the operations */


ngx_int_t
ngx_http_async_dl_sc_lookup(ngx_http_async_dl_sc_t *sc, ngx_pool_t *pool,
    ngx_str_t *id, ngx_str_t *prefix, ngx_str_t *owner,
    ngx_http_async_dl_sc_doc_t *doc, ngx_http_async_dl_sc_fill_t *fill)
{
    u_char                       *p;
    int64_t                       now, wall;
    uint32_t                      hash, slot;
    ngx_time_t                   *tp;
    ngx_http_async_dl_sc_sh_t    *sh;
    ngx_http_async_dl_sc_node_t  *n;

    sh = sc->sh;
    now = ngx_http_async_dl_listen_now();

    tp = ngx_timeofday();
    wall = (int64_t) tp->sec * 1000 + tp->msec;

    hash = ngx_crc32_short(id->data, NGX_HTTP_ASYNC_DL_UUID_LEN);
    slot = hash & (NGX_HTTP_ASYNC_DL_SC_SLOTS - 1);

    ngx_shmtx_lock(&sc->shpool->mutex);

    fill->epoch = sh->epoch;
    fill->gen = sh->gen[slot];
    fill->done = sh->done[slot];

    if (now >= sh->fresh_until) {
        sh->counters[NGX_HTTP_ASYNC_DL_SC_STALE]++;
        goto miss;
    }

    n = ngx_http_async_dl_sc_find(sh, hash, id->data, prefix);

    if (n == NULL) {
        goto miss;
    }

    if (n->expires_ms >= 0
        && wall + NGX_HTTP_ASYNC_DL_SC_SKEW >= n->expires_ms)
    {
        /* gone for the API (or about to be): PostgreSQL says 404 */
        ngx_http_async_dl_sc_free(sc, n);
        sh->counters[NGX_HTTP_ASYNC_DL_SC_EXPIRED]++;
        goto miss;
    }

    if (owner->len != n->owner_len
        || (owner->len
            && ngx_memcmp(owner->data, n->data + n->prefix_len, owner->len)
               != 0))
    {
        /* another owner's job: PostgreSQL answers, as for any miss */
        sh->counters[NGX_HTTP_ASYNC_DL_SC_OWNER_MISSES]++;
        goto miss;
    }

    p = ngx_pnalloc(pool, n->body_len + 1 + sizeof(n->etag));
    if (p == NULL) {
        ngx_shmtx_unlock(&sc->shpool->mutex);
        return NGX_ERROR;
    }

    doc->body.data = p;
    doc->body.len = n->body_len + 1;
    p = ngx_cpymem(p, n->data + n->prefix_len + n->owner_len, n->body_len);
    *p++ = '\n';

    doc->etag.data = p;
    doc->etag.len = sizeof(n->etag);
    ngx_memcpy(p, n->etag, sizeof(n->etag));

    ngx_queue_remove(&n->lru);
    ngx_queue_insert_head(&sh->lru, &n->lru);

    sh->counters[NGX_HTTP_ASYNC_DL_SC_HITS]++;

    ngx_shmtx_unlock(&sc->shpool->mutex);

    return NGX_OK;

miss:

    sh->counters[NGX_HTTP_ASYNC_DL_SC_MISSES]++;

    ngx_shmtx_unlock(&sc->shpool->mutex);

    return NGX_DECLINED;
}


void
ngx_http_async_dl_sc_fill(ngx_http_async_dl_sc_t *sc,
    ngx_http_async_dl_sc_fill_t *fill, ngx_str_t *id, ngx_str_t *prefix,
    ngx_str_t *owner, uint64_t seq, int64_t expires_ms, ngx_str_t *body,
    u_char *etag)
{
    u_char                       *p;
    size_t                        len, size;
    uint32_t                      hash, slot;
    ngx_uint_t                    current;
    ngx_http_async_dl_sc_sh_t    *sh;
    ngx_http_async_dl_sc_node_t  *n;

    sh = sc->sh;

    hash = ngx_crc32_short(id->data, NGX_HTTP_ASYNC_DL_UUID_LEN);
    slot = hash & (NGX_HTTP_ASYNC_DL_SC_SLOTS - 1);

    len = (owner != NULL) ? ngx_http_async_dl_compact(NULL, body->data,
                                                       body->len)
                          : 0;

    size = offsetof(ngx_http_async_dl_sc_node_t, data)
           + (owner ? prefix->len + owner->len + len : 0);

    ngx_shmtx_lock(&sc->shpool->mutex);

    current = fill->epoch == sh->epoch
              && fill->gen == sh->gen[slot]
              && fill->done == sh->done[slot];

    sh->done[slot]++;
    sh->counters[NGX_HTTP_ASYNC_DL_SC_FILLS]++;

    if (owner == NULL) {
        /* no such job (any more) */
        (void) ngx_http_async_dl_sc_drop(sc, hash, id->data, 0);
        goto done;
    }

    /* what is older than this answer goes, whatever becomes of it */
    (void) ngx_http_async_dl_sc_drop(sc, hash, id->data, seq);

    if (!current) {
        sh->counters[NGX_HTTP_ASYNC_DL_SC_REFUSED]++;
        goto done;
    }

    if (size > sc->max_entry || prefix->len > 0xffff || owner->len > 0xffff)
    {
        sh->counters[NGX_HTTP_ASYNC_DL_SC_TOO_LARGE]++;
        goto done;
    }

    if (ngx_http_async_dl_sc_find(sh, hash, id->data, prefix) != NULL) {
        /* the same document, from a fill that ended before this began */
        goto done;
    }

    n = ngx_http_async_dl_sc_alloc(sc, size);
    if (n == NULL) {
        goto done;
    }

    n->node.key = hash;
    n->seq = seq;
    n->expires_ms = expires_ms;
    n->size = size;
    ngx_memcpy(n->id, id->data, NGX_HTTP_ASYNC_DL_UUID_LEN);
    ngx_memcpy(n->etag, etag, sizeof(n->etag));
    n->prefix_len = (uint16_t) prefix->len;
    n->owner_len = (uint16_t) owner->len;
    n->body_len = (uint32_t) len;

    p = ngx_cpymem(n->data, prefix->data, prefix->len);
    p = ngx_cpymem(p, owner->data, owner->len);
    (void) ngx_http_async_dl_compact(p, body->data, body->len);

    ngx_rbtree_insert(&sh->rbtree, &n->node);
    ngx_queue_insert_head(&sh->lru, &n->lru);

    sh->counters[NGX_HTTP_ASYNC_DL_SC_ENTRIES]++;
    sh->counters[NGX_HTTP_ASYNC_DL_SC_BYTES] += size;

done:

    ngx_shmtx_unlock(&sc->shpool->mutex);
}


void
ngx_http_async_dl_sc_invalidate(ngx_http_async_dl_sc_t *sc, u_char *id,
    uint64_t seq)
{
    uint32_t                    hash;
    ngx_http_async_dl_sc_sh_t  *sh;

    sh = sc->sh;
    hash = ngx_crc32_short(id, NGX_HTTP_ASYNC_DL_UUID_LEN);

    ngx_shmtx_lock(&sc->shpool->mutex);

    sh->gen[hash & (NGX_HTTP_ASYNC_DL_SC_SLOTS - 1)]++;
    sh->counters[NGX_HTTP_ASYNC_DL_SC_INVALIDATIONS]++;

    (void) ngx_http_async_dl_sc_drop(sc, hash, id, seq);

    ngx_shmtx_unlock(&sc->shpool->mutex);
}


void
ngx_http_async_dl_sc_flush(ngx_http_async_dl_sc_t *sc, const char *why)
{
    ngx_uint_t                    n;
    ngx_queue_t                  *q;
    ngx_http_async_dl_sc_sh_t    *sh;
    ngx_http_async_dl_sc_node_t  *node;

    sh = sc->sh;
    n = 0;

    ngx_shmtx_lock(&sc->shpool->mutex);

    sh->epoch++;
    sh->fresh_until = 0;
    sh->counters[NGX_HTTP_ASYNC_DL_SC_FLUSHES]++;

    while (!ngx_queue_empty(&sh->lru)) {
        q = ngx_queue_head(&sh->lru);
        node = ngx_queue_data(q, ngx_http_async_dl_sc_node_t, lru);
        ngx_http_async_dl_sc_free(sc, node);
        n++;
    }

    ngx_shmtx_unlock(&sc->shpool->mutex);

    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "async_dl: status cache flushed (%ui documents): %s",
                  n, why);
}


void
ngx_http_async_dl_sc_pong(ngx_http_async_dl_sc_t *sc, int64_t sent)
{
    ngx_http_async_dl_sc_sh_t  *sh = sc->sh;

    ngx_shmtx_lock(&sc->shpool->mutex);

    if (sent + (int64_t) sh->lag > sh->fresh_until) {
        sh->fresh_until = sent + (int64_t) sh->lag;
    }

    ngx_shmtx_unlock(&sc->shpool->mutex);
}
