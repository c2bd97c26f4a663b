
/*
 * What a subscriber of all an owner's jobs owes its client
 * (ngx_http_async_dl_mux.h).
 *
 * Lifetimes: the mux and its children are allocated on their own
 * (ngx_calloc) and freed by _free(), which the transport calls once
 * nothing of their texts is in flight.  A child stays in `children` while
 * it follows its job, then in `ended` (out of the hub) until a listing no
 * longer names its job; it is in the mux's tree, by job id, all along.
 * The text of the event in flight is always the mux's (mux->sending),
 * never a child's: a child can go whatever is being sent.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl_mux.h"


typedef struct {
    ngx_http_async_dl_follower_t       f;         /* first: its watcher */
    ngx_str_node_t                     sn;        /* in mux->tree */
    ngx_http_async_dl_mux_t           *mux;
    ngx_queue_t                        queue;     /* children or ended */
    ngx_queue_t                        ready;     /* in mux->ready */
    ngx_http_async_dl_hub_text_t      *gone;      /* "deleted", owed */
    u_char                             id[NGX_HTTP_ASYNC_DL_UUID_LEN + 1];
    unsigned                           in_ready:1;
    unsigned                           ended:1;   /* its final event given */
    unsigned                           owed:1;    /* a listing waits for
                                                     its end */
    unsigned                           named:1;   /* by the last listing */
} ngx_http_async_dl_mux_child_t;


static ngx_int_t ngx_http_async_dl_mux_create(ngx_http_request_t *r,
    ngx_http_async_dl_mux_handler_pt handler, void *data,
    ngx_http_async_dl_mux_t **out);
static ngx_int_t ngx_http_async_dl_mux_watch(ngx_http_async_dl_mux_t *mux);
static void ngx_http_async_dl_mux_owner_news(
    ngx_http_async_dl_owner_watch_t *ow, ngx_http_async_dl_owner_news_e news);
static void ngx_http_async_dl_mux_listed(ngx_http_async_dl_mux_t *mux);
static void ngx_http_async_dl_mux_timer_handler(ngx_event_t *ev);
static ngx_http_async_dl_mux_child_t *ngx_http_async_dl_mux_find(
    ngx_http_async_dl_mux_t *mux, u_char *id);
static void ngx_http_async_dl_mux_list(ngx_http_async_dl_mux_t *mux,
    ngx_msec_t after);
static ngx_http_async_dl_mux_child_t *ngx_http_async_dl_mux_follow(
    ngx_http_async_dl_mux_t *mux, u_char *id);
static void ngx_http_async_dl_mux_child_news(ngx_http_async_dl_watcher_t *w,
    ngx_http_async_dl_hub_news_e news);
static void ngx_http_async_dl_mux_owe(ngx_http_async_dl_mux_child_t *child);
static void ngx_http_async_dl_mux_owed_check(ngx_http_async_dl_mux_t *mux);
static void ngx_http_async_dl_mux_adopt(ngx_http_async_dl_mux_t *mux);
static void ngx_http_async_dl_mux_ready(ngx_http_async_dl_mux_child_t *child);
static void ngx_http_async_dl_mux_settle(ngx_http_async_dl_mux_child_t *child);
static void ngx_http_async_dl_mux_child_end(
    ngx_http_async_dl_mux_child_t *child);
static void ngx_http_async_dl_mux_child_free(
    ngx_http_async_dl_mux_child_t *child);


ngx_int_t
ngx_http_async_dl_mux_open(ngx_http_request_t *r,
    ngx_http_async_dl_mux_handler_pt handler, void *data,
    ngx_http_async_dl_mux_t **mux, ngx_http_cleanup_t *cln,
    ngx_http_cleanup_pt cleanup)
{
    ngx_int_t  n;

    n = ngx_http_async_dl_mux_create(r, handler, data, mux);

    if (n == NGX_DECLINED) {
        return ngx_http_async_dl_send_error(r, NGX_HTTP_BAD_REQUEST,
                                            "INVALID_REQUEST",
                                            "Last-Event-ID (lastEventId) is "
                                            "not an id of this stream");
    }

    if (n != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    n = ngx_http_async_dl_mux_watch(*mux);

    if (n != NGX_OK) {
        return ngx_http_async_dl_db_unavailable(r, "%s",
                                      n == NGX_DECLINED
                                      ? "the database is not configured in "
                                        "this process"
                                      : "the database is unavailable, retry "
                                        "later");
    }

    return ngx_http_async_dl_follow_wait(r, data, cln, cleanup);
}


/* NGX_DECLINED: the Last-Event-ID is not one this stream gives */

static ngx_int_t
ngx_http_async_dl_mux_create(ngx_http_request_t *r,
    ngx_http_async_dl_mux_handler_pt handler, void *data,
    ngx_http_async_dl_mux_t **out)
{
    off_t                          n;
    uint64_t                       since;
    ngx_str_t                      v;
    ngx_uint_t                     has_since;
    ngx_http_async_dl_ctx_t       *ctx;
    ngx_http_async_dl_mux_t       *mux;
    ngx_http_async_dl_loc_conf_t  *alcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    /* Last-Event-ID, or lastEventId in the query (a first EventSource) */

    has_since = 0;
    since = 0;

    if (ngx_http_async_dl_header_in(r, "Last-Event-ID", &v) != NGX_OK
        && ngx_http_arg(r, (u_char *) "lastEventId", 11, &v) != NGX_OK)
    {
        v.len = 0;
    }

    if (v.len == 4 && ngx_strncmp(v.data, "null", 4) == 0) {
        /* a WebSocket client echoing "id":null */
        v.len = 0;
    }

    if (v.len) {
        n = ngx_atoof(v.data, v.len);       /* digits only, no overflow */
        if (n == NGX_ERROR) {
            return NGX_DECLINED;
        }

        since = (uint64_t) n;
        has_since = 1;
    }

    mux = ngx_calloc(sizeof(ngx_http_async_dl_mux_t) + ctx->owner.len,
                     r->connection->log);
    if (mux == NULL) {
        return NGX_ERROR;
    }

    /*
     * set by ngx_calloc():
     *
     *     mux->state = NGX_HTTP_ASYNC_DL_FOLLOW_WAITING;
     *     mux->owed = 0;
     */

    mux->horizon = since;
    mux->has_horizon = has_since;
    mux->handler = handler;
    mux->data = data;
    mux->prefix = &alcf->prefix;
    mux->log = r->connection->log;
    mux->period = alcf->heartbeat;

    ngx_rbtree_init(&mux->tree, &mux->sentinel, ngx_str_rbtree_insert_value);
    ngx_queue_init(&mux->children);
    ngx_queue_init(&mux->ended);
    ngx_queue_init(&mux->ready);
    mux->all = 1;

    mux->ow.handler = ngx_http_async_dl_mux_owner_news;
    mux->ow.data = mux;
    mux->ow.log = mux->log;
    mux->ow.owner.len = ctx->owner.len;
    mux->ow.owner.data = (u_char *) &mux[1];
    ngx_memcpy(mux->ow.owner.data, ctx->owner.data, ctx->owner.len);

    mux->timer.handler = ngx_http_async_dl_mux_timer_handler;
    mux->timer.data = mux;
    mux->timer.log = mux->log;
    mux->timer.cancelable = 1;

    *out = mux;

    return NGX_OK;
}


/* NGX_DECLINED: this process has no database */

static ngx_int_t
ngx_http_async_dl_mux_watch(ngx_http_async_dl_mux_t *mux)
{
    ngx_int_t  rc;

    /* first registered: a job created after the listing is told */

    rc = ngx_http_async_dl_owner_watch(&mux->ow);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_async_dl_owner_list(&mux->ow, mux->horizon,
                                     mux->has_horizon, 1)
        != NGX_OK)
    {
        ngx_http_async_dl_owner_leave(&mux->ow);
        return NGX_ERROR;
    }

    mux->all = 0;

    return NGX_OK;
}


/* the owners' registry: a new job, LISTEN back, a listing */

static void
ngx_http_async_dl_mux_owner_news(ngx_http_async_dl_owner_watch_t *ow,
    ngx_http_async_dl_owner_news_e news)
{
    ngx_http_async_dl_mux_t *mux = ow->data;

    switch (news) {

    case NGX_HTTP_ASYNC_DL_OWNER_CREATED:

        if (ngx_http_async_dl_mux_find(mux, ow->created) == NULL
            && ngx_http_async_dl_mux_follow(mux, ow->created) == NULL)
        {
            /* the next listing of all names it */
            mux->dirty = 1;
            mux->all = 1;
        }

        return;

    case NGX_HTTP_ASYNC_DL_OWNER_RESYNC:

        /* jobs created while LISTEN was away were not told: all again,
         * the streams of this process spread over a second */
        mux->dirty = 1;
        mux->all = 1;

        if (mux->state == NGX_HTTP_ASYNC_DL_FOLLOW_LIVE && ow->fetch == NULL) {
            ngx_add_timer(&mux->timer, 1 + ngx_random() % 1000);
        }

        return;

    case NGX_HTTP_ASYNC_DL_OWNER_LISTED:
        ngx_http_async_dl_mux_listed(mux);
        return;

    default: /* NGX_HTTP_ASYNC_DL_OWNER_UNAVAILABLE */

        if (mux->state == NGX_HTTP_ASYNC_DL_FOLLOW_WAITING) {
            mux->handler(mux->data, NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE);
            return;
        }

        /* again later */
        ngx_http_async_dl_mux_list(mux, mux->period);
        return;
    }
}


/*
 * A listing is in: every job it names is followed; the horizon it gives
 * is the events' id once every ended (or deleted) job it names has had
 * its final event sent.  Ended children it does not name are forgotten.
 */

static void
ngx_http_async_dl_mux_listed(ngx_http_async_dl_mux_t *mux)
{
    u_char                          buf[64], *p;
    ngx_uint_t                      i;
    ngx_queue_t                    *q, *next;
    ngx_http_async_dl_owner_row_t  *row;
    ngx_http_async_dl_mux_child_t  *child;

    for (q = ngx_queue_head(&mux->ended);
         q != ngx_queue_sentinel(&mux->ended);
         q = ngx_queue_next(q))
    {
        child = ngx_queue_data(q, ngx_http_async_dl_mux_child_t, queue);
        child->named = 0;
    }

    for (i = 0; i < mux->ow.nrows; i++) {
        row = &mux->ow.rows[i];

        child = ngx_http_async_dl_mux_find(mux, row->id);

        if (child == NULL) {
            child = ngx_http_async_dl_mux_follow(mux, row->id);
            if (child == NULL) {
                goto failed;
            }
        }

        child->named = 1;

        if (row->ended) {
            /* its end (or deletion: the hub's "deleted") is owed, unless
             * already given: later changes of an ended job are no events */
            ngx_http_async_dl_mux_owe(child);
        }
    }

    for (q = ngx_queue_head(&mux->ended);
         q != ngx_queue_sentinel(&mux->ended);
         q = next)
    {
        next = ngx_queue_next(q);
        child = ngx_queue_data(q, ngx_http_async_dl_mux_child_t, queue);

        if (!child->named) {
            ngx_queue_remove(&child->queue);
            ngx_http_async_dl_mux_child_free(child);
        }
    }

    mux->listed = mux->ow.horizon;
    mux->adopting = 1;

    ngx_http_async_dl_mux_owed_check(mux);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, mux->log, 0,
                   "async_dl mux: listed %ui jobs to horizon %uL, %ui owed",
                   mux->ow.nrows, mux->listed, mux->owed);

    ngx_http_async_dl_mux_adopt(mux);

    ngx_add_timer(&mux->timer, mux->period);

    if (mux->state == NGX_HTTP_ASYNC_DL_FOLLOW_WAITING) {
        p = ngx_sprintf(buf, "{\"jobs\":%ui}", mux->ow.nrows);

        mux->connected = ngx_http_async_dl_hub_text(mux->horizon, buf,
                                                     p - buf);
        if (mux->connected == NULL) {
            goto failed;
        }

        mux->state = NGX_HTTP_ASYNC_DL_FOLLOW_LIVE;
        mux->connected_owed = 1;
    }

    mux->handler(mux->data, NGX_HTTP_ASYNC_DL_HUB_STATE);

    return;

failed:

    if (mux->state == NGX_HTTP_ASYNC_DL_FOLLOW_WAITING) {
        mux->handler(mux->data, NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE);
        return;
    }

    /* again, whole, later */
    mux->adopting = 0;
    mux->all = 1;
    ngx_http_async_dl_mux_list(mux, mux->period);
}


/* asks for a listing after some ms (0: the timer only) */

static void
ngx_http_async_dl_mux_list(ngx_http_async_dl_mux_t *mux, ngx_msec_t after)
{
    mux->dirty = 1;

    if (after && !mux->timer.timer_set) {
        ngx_add_timer(&mux->timer, after);
    }
}


/* the next listing, when events went out since the last one */

static void
ngx_http_async_dl_mux_timer_handler(ngx_event_t *ev)
{
    ngx_http_async_dl_mux_t *mux = ev->data;

    if (mux->state != NGX_HTTP_ASYNC_DL_FOLLOW_LIVE || mux->ow.fetch) {
        return;
    }

    if (mux->adopting) {
        /* its jobs are still being sent: the count of them, checked */
        ngx_http_async_dl_mux_owed_check(mux);
        ngx_http_async_dl_mux_adopt(mux);
    }

    if (mux->adopting || !mux->dirty) {
        /* its jobs are still being sent, or nothing changed */
        ngx_add_timer(&mux->timer, mux->period);
        return;
    }

    mux->dirty = 0;

    if (ngx_http_async_dl_owner_list(&mux->ow, mux->horizon,
                                     mux->has_horizon, mux->all)
        != NGX_OK)
    {
        ngx_http_async_dl_mux_list(mux, mux->period);
        return;
    }

    mux->all = 0;
}


static ngx_http_async_dl_mux_child_t *
ngx_http_async_dl_mux_find(ngx_http_async_dl_mux_t *mux, u_char *id)
{
    ngx_str_t        key;
    ngx_str_node_t  *sn;

    key.data = id;
    key.len = NGX_HTTP_ASYNC_DL_UUID_LEN;

    sn = ngx_str_rbtree_lookup(&mux->tree, &key,
                               ngx_crc32_short(id, key.len));
    if (sn == NULL) {
        return NULL;
    }

    return (ngx_http_async_dl_mux_child_t *)
           ((u_char *) sn - offsetof(ngx_http_async_dl_mux_child_t, sn));
}


/* a child for the job: watching it in the hub */

static ngx_http_async_dl_mux_child_t *
ngx_http_async_dl_mux_follow(ngx_http_async_dl_mux_t *mux, u_char *id)
{
    ngx_str_t                       s;
    ngx_http_async_dl_mux_child_t  *child;

    if (mux->state == NGX_HTTP_ASYNC_DL_FOLLOW_DONE) {
        return NULL;
    }

    child = ngx_calloc(sizeof(ngx_http_async_dl_mux_child_t), mux->log);
    if (child == NULL) {
        return NULL;
    }

    /*
     * set by ngx_calloc():
     *
     *     child->f.state = NGX_HTTP_ASYNC_DL_FOLLOW_WAITING;
     *     child->owed = 0;
     */

    child->mux = mux;
    child->f.watcher.handler = ngx_http_async_dl_mux_child_news;
    child->f.watcher.data = child;
    child->f.log = mux->log;
    ngx_memcpy(child->id, id, NGX_HTTP_ASYNC_DL_UUID_LEN);

    s.data = child->id;
    s.len = NGX_HTTP_ASYNC_DL_UUID_LEN;

    if (ngx_http_async_dl_hub_watch(&child->f.watcher, &s, mux->prefix,
                                    mux->log)
        != NGX_OK)
    {
        ngx_free(child);
        return NULL;
    }

    ngx_queue_insert_tail(&mux->children, &child->queue);

    child->sn.str.data = child->id;
    child->sn.str.len = NGX_HTTP_ASYNC_DL_UUID_LEN;
    child->sn.node.key = ngx_crc32_short(child->id,
                                         NGX_HTTP_ASYNC_DL_UUID_LEN);
    ngx_rbtree_insert(&mux->tree, &child->sn.node);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, mux->log, 0,
                   "async_dl mux: following job %s", child->id);

    return child;
}


/* the hub's news of one job */

static void
ngx_http_async_dl_mux_child_news(ngx_http_async_dl_watcher_t *w,
    ngx_http_async_dl_hub_news_e news)
{
    ngx_http_async_dl_mux_child_t *child = w->data;

    ngx_http_async_dl_mux_t      *mux;
    ngx_http_async_dl_hub_job_t  *job;

    mux = child->mux;

    if (news == NGX_HTTP_ASYNC_DL_HUB_UNAVAILABLE) {
        /* it fetches again */
        return;
    }

    if (child->f.state == NGX_HTTP_ASYNC_DL_FOLLOW_WAITING) {

        if (ngx_http_async_dl_follow_open(&child->f, &mux->ow.owner)
            != NGX_OK)
        {
            job = w->job;

            if (job->status == NGX_HTTP_ASYNC_DL_HUB_DELETED) {
                /* "deleted", as a stream of the job says it */
                child->gone = job->full;
                child->gone->refs++;
            }

            /* else another owner's (an md5 alike): nothing to say */

            ngx_http_async_dl_follow_leave(&child->f);

            if (child->gone == NULL) {
                ngx_http_async_dl_mux_child_end(child);
                return;
            }
        }

    } else {
        ngx_http_async_dl_follow_news(&child->f);
    }

    ngx_http_async_dl_mux_ready(child);

    if (mux->state == NGX_HTTP_ASYNC_DL_FOLLOW_LIVE) {
        /* (may end the transport, and free the mux: not looked at after) */
        mux->handler(mux->data, NGX_HTTP_ASYNC_DL_HUB_STATE);
    }
}


/* a listing needs the child's final event */

static void
ngx_http_async_dl_mux_owe(ngx_http_async_dl_mux_child_t *child)
{
    if (child->ended || child->owed) {
        return;
    }

    child->owed = 1;
    child->mux->owed++;
}


static void
ngx_http_async_dl_mux_ready(ngx_http_async_dl_mux_child_t *child)
{
    if (!child->in_ready) {
        child->in_ready = 1;
        ngx_queue_insert_tail(&child->mux->ready, &child->ready);
    }
}


ngx_int_t
ngx_http_async_dl_mux_next(ngx_http_async_dl_mux_t *mux,
    ngx_http_async_dl_event_t *ev)
{
    ngx_int_t                       rc;
    ngx_queue_t                    *q;
    ngx_http_async_dl_mux_child_t  *child;

    if (mux->sending) {
        /* the last event is out */
        ngx_http_async_dl_hub_text_release(mux->sending);
        mux->sending = NULL;
    }

    if (mux->state != NGX_HTTP_ASYNC_DL_FOLLOW_LIVE) {
        return NGX_DECLINED;
    }

    if (mux->connected_owed) {
        mux->connected_owed = 0;
        mux->sending = mux->connected;
        mux->connected = NULL;

        ev->name = "connected";
        ev->t = mux->sending;
        ev->job = NULL;
        goto found;
    }

    while (!ngx_queue_empty(&mux->ready)) {
        q = ngx_queue_head(&mux->ready);
        child = ngx_queue_data(q, ngx_http_async_dl_mux_child_t, ready);

        ngx_queue_remove(q);
        child->in_ready = 0;

        if (child->gone) {
            /* its reference goes to the event in flight */
            mux->sending = child->gone;
            child->gone = NULL;

            ev->name = "deleted";
            ev->t = mux->sending;
            rc = NGX_DONE;

        } else {
            rc = ngx_http_async_dl_follow_next(&child->f, ev);

            if (rc == NGX_DECLINED) {
                continue;
            }

            if (rc == NGX_OK && ngx_strcmp(ev->name, "connected") == 0) {
                ev->name = "job";

                if (child->f.state == NGX_HTTP_ASYNC_DL_FOLLOW_ENDING) {
                    /* ended already: the same document follows as its
                     * final event, which alone is sent */
                    rc = ngx_http_async_dl_follow_next(&child->f, ev);
                }
            }

            /* the text in flight is the mux's: the child may go first */
            mux->sending = child->f.sending;
            child->f.sending = NULL;
        }

        ev->job = child->id;

        if (rc == NGX_DONE) {
            /* (settles what a listing owed) */
            ngx_http_async_dl_mux_child_end(child);

        } else {
            /* the others' turn first */
            ngx_http_async_dl_mux_ready(child);
        }

        goto found;
    }

    return NGX_DECLINED;

found:

    mux->dirty = 1;
    ev->id = mux->horizon;
    ev->has_id = mux->has_horizon;

    return NGX_OK;
}


/*
 * The count of owed ends, kept as children change, against a recount, where
 * it decides the horizon (a listing, the last end sent, and each period
 * while one is awaited) and when the stream ends: a drift would give a
 * horizon too early (events lost to a reconnect) or never (the ids stop
 * moving).  Both queues hold every child; an ended child may still owe its
 * deletion.
 */

static void
ngx_http_async_dl_mux_owed_check(ngx_http_async_dl_mux_t *mux)
{
    ngx_uint_t                      i, n;
    ngx_queue_t                    *q, *list[2];
    ngx_http_async_dl_mux_child_t  *child;

    list[0] = &mux->children;
    list[1] = &mux->ended;
    n = 0;

    for (i = 0; i < 2; i++) {
        for (q = ngx_queue_head(list[i]); q != ngx_queue_sentinel(list[i]);
             q = ngx_queue_next(q))
        {
            child = ngx_queue_data(q, ngx_http_async_dl_mux_child_t, queue);
            n += child->owed;
        }
    }

    if (n != mux->owed) {
        ngx_log_error(NGX_LOG_ALERT, mux->log, 0,
                      "async_dl mux: %ui ends counted as owed, %ui owed",
                      mux->owed, n);
        mux->owed = n;
    }
}


/* the child ended: what the listing waited for, and the horizon */

static void
ngx_http_async_dl_mux_settle(ngx_http_async_dl_mux_child_t *child)
{
    ngx_http_async_dl_mux_t  *mux;

    mux = child->mux;

    if (!child->owed) {
        return;
    }

    child->owed = 0;
    mux->owed--;

    if (mux->owed == 0) {
        ngx_http_async_dl_mux_owed_check(mux);
    }

    ngx_http_async_dl_mux_adopt(mux);
}


/* the listing's horizon, once every end it named has been sent */

static void
ngx_http_async_dl_mux_adopt(ngx_http_async_dl_mux_t *mux)
{
    if (!mux->adopting || mux->owed != 0) {
        return;
    }

    mux->horizon = mux->listed;
    mux->has_horizon = 1;
    mux->adopting = 0;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, mux->log, 0,
                   "async_dl mux: horizon %uL", mux->horizon);
}


/* the child's final event was given (or there is none): out of the hub */

static void
ngx_http_async_dl_mux_child_end(ngx_http_async_dl_mux_child_t *child)
{
    ngx_http_async_dl_follow_leave(&child->f);

    child->ended = 1;

    if (child->in_ready) {
        ngx_queue_remove(&child->ready);
        child->in_ready = 0;
    }

    ngx_queue_remove(&child->queue);
    ngx_queue_insert_tail(&child->mux->ended, &child->queue);

    ngx_http_async_dl_mux_settle(child);
}


void
ngx_http_async_dl_mux_leave(ngx_http_async_dl_mux_t *mux)
{
    ngx_queue_t                    *q;
    ngx_http_async_dl_mux_child_t  *child;

    mux->state = NGX_HTTP_ASYNC_DL_FOLLOW_DONE;

    ngx_http_async_dl_owner_leave(&mux->ow);

    if (mux->timer.timer_set) {
        ngx_del_timer(&mux->timer);
    }

    for (q = ngx_queue_head(&mux->children);
         q != ngx_queue_sentinel(&mux->children);
         q = ngx_queue_next(q))
    {
        child = ngx_queue_data(q, ngx_http_async_dl_mux_child_t, queue);
        ngx_http_async_dl_follow_leave(&child->f);
    }
}


void
ngx_http_async_dl_mux_free(ngx_http_async_dl_mux_t *mux)
{
    ngx_queue_t                    *q;
    ngx_http_async_dl_mux_child_t  *child;

    ngx_http_async_dl_mux_owed_check(mux);
    ngx_http_async_dl_mux_leave(mux);

    while (!ngx_queue_empty(&mux->children)) {
        q = ngx_queue_head(&mux->children);
        child = ngx_queue_data(q, ngx_http_async_dl_mux_child_t, queue);
        ngx_queue_remove(q);
        ngx_http_async_dl_mux_child_free(child);
    }

    while (!ngx_queue_empty(&mux->ended)) {
        q = ngx_queue_head(&mux->ended);
        child = ngx_queue_data(q, ngx_http_async_dl_mux_child_t, queue);
        ngx_queue_remove(q);
        ngx_http_async_dl_mux_child_free(child);
    }

    if (mux->sending) {
        ngx_http_async_dl_hub_text_release(mux->sending);
    }

    if (mux->connected) {
        ngx_http_async_dl_hub_text_release(mux->connected);
    }

    ngx_free(mux);
}


/* (out of its list already) */

static void
ngx_http_async_dl_mux_child_free(ngx_http_async_dl_mux_child_t *child)
{
    ngx_rbtree_delete(&child->mux->tree, &child->sn.node);

    if (child->owed) {
        child->mux->owed--;
    }

    ngx_http_async_dl_follow_leave(&child->f);
    ngx_http_async_dl_follow_release(&child->f);

    if (child->gone) {
        ngx_http_async_dl_hub_text_release(child->gone);
    }

    ngx_free(child);
}
