
/*
 * The owners followed in one nginx worker process
 * (ngx_http_async_dl_owner.h): an rbtree of groups keyed by the md5 of an
 * owner, each with the queue of its watches, and the listings they ask.
 *
 * Lifetimes: a watch lives in its watcher's memory; a group lives while
 * it has watches; a listing's pool lives from _list() until its answer is
 * read (or the watch leaves: the query is detached and the pool goes).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_md5.h>

#include "ngx_http_async_dl_owner.h"


typedef struct {
    ngx_str_node_t                     sn;        /* key: md5 hex */
    ngx_queue_t                        watches;
    u_char                             key[NGX_HTTP_ASYNC_DL_OWNER_KEY_LEN];
} ngx_http_async_dl_owner_group_t;


typedef struct {
    ngx_rbtree_t                       tree;
    ngx_rbtree_node_t                  sentinel;
    ngx_http_async_dl_pg_t            *pg;
    ngx_log_t                         *log;
} ngx_http_async_dl_owners_t;


static void ngx_http_async_dl_owner_listed(ngx_http_async_dl_pg_query_t *q);
static ngx_int_t ngx_http_async_dl_owner_rows(
    ngx_http_async_dl_owner_watch_t *ow, ngx_pool_t *pool, PGresult *res);
static void ngx_http_async_dl_owner_forget(
    ngx_http_async_dl_owner_watch_t *ow);


static ngx_http_async_dl_pg_stmt_t  ngx_http_async_dl_owner_stmt = {
    "async_dl_owner_changes",
    "SELECT horizon, job_id, event_seq, ended"
    " FROM async_dl_owner_changes($1, $2, $3)", 3
};

static ngx_uint_t                   ngx_http_async_dl_owner_stmt_index;

/* this worker process's owners */
static ngx_http_async_dl_owners_t  *ngx_http_async_dl_owners;


char *
ngx_http_async_dl_owner_init_conf(ngx_conf_t *cf,
    ngx_http_async_dl_main_conf_t *amcf)
{
    ngx_int_t  n;

    n = ngx_http_async_dl_pg_add_stmt(cf, &amcf->pg,
                                      &ngx_http_async_dl_owner_stmt);
    if (n == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    ngx_http_async_dl_owner_stmt_index = n;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_async_dl_owner_init_process(ngx_cycle_t *cycle,
    ngx_http_async_dl_pg_t *pg)
{
    ngx_http_async_dl_owners_t  *owners;

    owners = ngx_pcalloc(cycle->pool, sizeof(ngx_http_async_dl_owners_t));
    if (owners == NULL) {
        return NGX_ERROR;
    }

    ngx_rbtree_init(&owners->tree, &owners->sentinel,
                    ngx_str_rbtree_insert_value);

    owners->pg = pg;
    owners->log = cycle->log;

    ngx_http_async_dl_owners = owners;

    return NGX_OK;
}


void
ngx_http_async_dl_owner_exit_process(void)
{
    ngx_http_async_dl_owners = NULL;
}


ngx_int_t
ngx_http_async_dl_owner_watch(ngx_http_async_dl_owner_watch_t *ow)
{
    u_char                            key[NGX_HTTP_ASYNC_DL_OWNER_KEY_LEN];
    u_char                            digest[16];
    uint32_t                          hash;
    ngx_str_t                         name;
    ngx_md5_t                         md5;
    ngx_http_async_dl_owners_t       *owners;
    ngx_http_async_dl_owner_group_t  *g;

    owners = ngx_http_async_dl_owners;

    if (owners == NULL) {
        return NGX_DECLINED;
    }

    ngx_md5_init(&md5);
    ngx_md5_update(&md5, ow->owner.data, ow->owner.len);
    ngx_md5_final(digest, &md5);
    ngx_hex_dump(key, digest, sizeof(digest));

    name.data = key;
    name.len = sizeof(key);
    hash = ngx_crc32_short(key, sizeof(key));

    g = (ngx_http_async_dl_owner_group_t *)
        ngx_str_rbtree_lookup(&owners->tree, &name, hash);

    if (g == NULL) {
        g = ngx_calloc(sizeof(ngx_http_async_dl_owner_group_t), ow->log);
        if (g == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(g->key, key, sizeof(key));
        g->sn.str.data = g->key;
        g->sn.str.len = sizeof(key);
        g->sn.node.key = hash;
        ngx_queue_init(&g->watches);

        ngx_rbtree_insert(&owners->tree, &g->sn.node);
    }

    ngx_queue_insert_tail(&g->watches, &ow->queue);
    ow->group = g;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ow->log, 0,
                   "async_dl owner: watching %*s", sizeof(key), key);

    return NGX_OK;
}


void
ngx_http_async_dl_owner_leave(ngx_http_async_dl_owner_watch_t *ow)
{
    ngx_http_async_dl_owner_group_t  *g;

    ngx_http_async_dl_owner_forget(ow);

    g = ow->group;

    if (g == NULL) {
        return;
    }

    ow->group = NULL;
    ngx_queue_remove(&ow->queue);

    if (ngx_queue_empty(&g->watches)) {
        if (ngx_http_async_dl_owners) {
            ngx_rbtree_delete(&ngx_http_async_dl_owners->tree, &g->sn.node);
        }

        ngx_free(g);
    }
}


/* from the hub's notification "<job id> <seq> n <md5 of owner>" */

void
ngx_http_async_dl_owner_created(u_char *id, u_char *key)
{
    ngx_str_t                         name;
    ngx_queue_t                      *q;
    ngx_http_async_dl_owners_t       *owners;
    ngx_http_async_dl_owner_watch_t  *ow;
    ngx_http_async_dl_owner_group_t  *g;

    owners = ngx_http_async_dl_owners;

    if (owners == NULL) {
        return;
    }

    name.data = key;
    name.len = NGX_HTTP_ASYNC_DL_OWNER_KEY_LEN;

    g = (ngx_http_async_dl_owner_group_t *)
        ngx_str_rbtree_lookup(&owners->tree, &name,
                              ngx_crc32_short(key, name.len));
    if (g == NULL) {
        return;
    }

    /* the handlers only take note: none leaves from here */

    for (q = ngx_queue_head(&g->watches);
         q != ngx_queue_sentinel(&g->watches);
         q = ngx_queue_next(q))
    {
        ow = ngx_queue_data(q, ngx_http_async_dl_owner_watch_t, queue);
        ow->created = id;
        ow->handler(ow, NGX_HTTP_ASYNC_DL_OWNER_CREATED);
        ow->created = NULL;
    }
}


void
ngx_http_async_dl_owner_resync(void)
{
    ngx_queue_t                      *q;
    ngx_rbtree_node_t                *node;
    ngx_http_async_dl_owners_t       *owners;
    ngx_http_async_dl_owner_watch_t  *ow;
    ngx_http_async_dl_owner_group_t  *g;

    owners = ngx_http_async_dl_owners;

    if (owners == NULL || owners->tree.root == owners->tree.sentinel) {
        return;
    }

    for (node = ngx_rbtree_min(owners->tree.root, owners->tree.sentinel);
         node;
         node = ngx_rbtree_next(&owners->tree, node))
    {
        g = (ngx_http_async_dl_owner_group_t *) node;

        for (q = ngx_queue_head(&g->watches);
             q != ngx_queue_sentinel(&g->watches);
             q = ngx_queue_next(q))
        {
            ow = ngx_queue_data(q, ngx_http_async_dl_owner_watch_t, queue);
            ow->handler(ow, NGX_HTTP_ASYNC_DL_OWNER_RESYNC);
        }
    }
}


/* listings */


ngx_int_t
ngx_http_async_dl_owner_list(ngx_http_async_dl_owner_watch_t *ow,
    uint64_t since, ngx_uint_t has_since, ngx_uint_t all)
{
    u_char                        *p;
    ngx_pool_t                    *pool;
    const char                   **params;
    ngx_http_async_dl_owners_t    *owners;
    ngx_http_async_dl_pg_query_t  *q;

    owners = ngx_http_async_dl_owners;

    if (owners == NULL || ow->fetch) {
        return NGX_ERROR;
    }

    pool = ngx_create_pool(1024, ow->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    q = ngx_http_async_dl_pg_query(pool, ow->log);
    params = ngx_palloc(pool, 3 * sizeof(char *));
    p = ngx_pnalloc(pool, ow->owner.len + 1 + NGX_INT64_LEN + 1);

    if (q == NULL || params == NULL || p == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    params[0] = (char *) p;
    p = ngx_cpymem(p, ow->owner.data, ow->owner.len);
    *p++ = '\0';

    if (has_since) {
        params[1] = (char *) p;
        ngx_sprintf(p, "%uL%Z", since);

    } else {
        params[1] = NULL;
    }

    params[2] = all ? "t" : "f";

    q->stmt = ngx_http_async_dl_owner_stmt_index;
    q->params = params;
    q->handler = ngx_http_async_dl_owner_listed;
    q->data = ow;

    if (ngx_http_async_dl_pg_run(owners->pg, q) != NGX_HTTP_ASYNC_DL_PG_OK) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    ow->fetch = pool;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ow->log, 0,
                   "async_dl owner: listing since %uL (%ui), all %ui", since,
                   has_since, all);

    return NGX_OK;
}


static void
ngx_http_async_dl_owner_listed(ngx_http_async_dl_pg_query_t *q)
{
    ngx_http_async_dl_owner_watch_t *ow = q->data;

    ngx_pool_t                      *pool;
    ngx_http_async_dl_owner_news_e   news;

    pool = ow->fetch;
    ow->fetch = NULL;

    news = NGX_HTTP_ASYNC_DL_OWNER_UNAVAILABLE;

    if (q->status == NGX_HTTP_ASYNC_DL_PG_OK) {
        if (ngx_http_async_dl_owner_rows(ow, pool, q->result) == NGX_OK) {
            news = NGX_HTTP_ASYNC_DL_OWNER_LISTED;
        }

    } else if (q->status == NGX_HTTP_ASYNC_DL_PG_SQL_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ow->log, 0,
                      "async_dl: listing an owner's jobs failed (%s)",
                      ngx_http_async_dl_pg_message(q->result));

    } else {
        ngx_log_error(NGX_LOG_INFO, ow->log, 0,
                      "async_dl: listing an owner's jobs failed (%s)",
                      q->status == NGX_HTTP_ASYNC_DL_PG_TIMEOUT
                      ? "timed out" : "database unavailable");
    }

    /* (the handler may leave, and free ow: not looked at after) */
    ow->handler(ow, news);

    /* the rows were read: they go with the query's pool */
    ngx_destroy_pool(pool);
}


/* the rows of async_dl_owner_changes(): each with the horizon, one
 * without a job */

static ngx_int_t
ngx_http_async_dl_owner_rows(ngx_http_async_dl_owner_watch_t *ow,
    ngx_pool_t *pool, PGresult *res)
{
    char                           *v;
    size_t                          len;
    off_t                           n;
    ngx_int_t                       i, nt;
    ngx_http_async_dl_owner_row_t  *row;

    nt = PQntuples(res);

    if (nt < 1 || PQnfields(res) != 4 || PQgetisnull(res, 0, 0)) {
        goto invalid;
    }

    v = PQgetvalue(res, 0, 0);
    n = ngx_atoof((u_char *) v, PQgetlength(res, 0, 0));

    if (n == NGX_ERROR) {
        goto invalid;
    }

    ow->horizon = (uint64_t) n;
    ow->nrows = 0;
    ow->rows = ngx_palloc(pool, nt * sizeof(ngx_http_async_dl_owner_row_t));

    if (ow->rows == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < nt; i++) {

        if (PQgetisnull(res, i, 1)) {
            continue;
        }

        row = &ow->rows[ow->nrows];

        len = PQgetlength(res, i, 1);
        v = PQgetvalue(res, i, 2);

        if (len != NGX_HTTP_ASYNC_DL_UUID_LEN || PQgetisnull(res, i, 2)) {
            goto invalid;
        }

        ngx_memcpy(row->id, PQgetvalue(res, i, 1), len);
        row->seq = ngx_atoof((u_char *) v, ngx_strlen(v));
        row->ended = (PQgetvalue(res, i, 3)[0] == 't');

        if (row->seq == (uint64_t) NGX_ERROR) {
            goto invalid;
        }

        ow->nrows++;
    }

    return NGX_OK;

invalid:

    ngx_log_error(NGX_LOG_ERR, ow->log, 0,
                  "async_dl: async_dl_owner_changes() answered an unexpected "
                  "row (is the schema at version 20?)");

    return NGX_ERROR;
}


/* a listing asked is not wanted any more */

static void
ngx_http_async_dl_owner_forget(ngx_http_async_dl_owner_watch_t *ow)
{
    if (ow->fetch == NULL) {
        return;
    }

    /* (its cleanup detaches the query) */
    ngx_destroy_pool(ow->fetch);

    ow->fetch = NULL;
}
