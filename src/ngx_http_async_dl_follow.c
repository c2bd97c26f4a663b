
/*
 * What a subscriber of one job owes its client next
 * (ngx_http_async_dl_follow.h).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl_follow.h"


static ngx_int_t ngx_http_async_dl_follow_step(
    ngx_http_async_dl_follower_t *f, const char **name,
    ngx_http_async_dl_hub_text_t **t);
static void ngx_http_async_dl_follow_buf(ngx_buf_t *b, u_char *start,
    u_char *end);
static void ngx_http_async_dl_follow_set(ngx_http_async_dl_follower_t *f,
    ngx_http_async_dl_follow_state_e state);
static void ngx_http_async_dl_follow_hold(ngx_http_async_dl_follower_t *f,
    ngx_http_async_dl_hub_text_t *t);


void *
ngx_http_async_dl_follow_new(ngx_http_request_t *r, size_t size,
    ngx_http_async_dl_hub_handler_pt news, ngx_pool_cleanup_pt free_sub,
    ngx_http_cleanup_t **cln, ngx_pool_cleanup_t **pcln)
{
    ngx_http_async_dl_follower_t  *f;

    *cln = ngx_http_cleanup_add(r, 0);
    *pcln = ngx_pool_cleanup_add(r->pool, 0);
    if (*cln == NULL || *pcln == NULL) {
        return NULL;
    }

    f = ngx_calloc(size, r->connection->log);
    if (f == NULL) {
        return NULL;
    }

    (*pcln)->handler = free_sub;
    (*pcln)->data = f;

    /*
     * set by ngx_calloc():
     *
     *     f->state = NGX_HTTP_ASYNC_DL_FOLLOW_WAITING;
     */

    f->watcher.handler = news;
    f->watcher.data = f;
    f->log = r->connection->log;

    return f;
}


ngx_int_t
ngx_http_async_dl_follow_watch(ngx_http_request_t *r,
    ngx_http_async_dl_follower_t *f, ngx_http_cleanup_t *cln,
    ngx_http_cleanup_pt cleanup)
{
    ngx_int_t                      rc;
    ngx_http_async_dl_ctx_t       *ctx;
    ngx_http_async_dl_loc_conf_t  *alcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_async_dl_module);

    rc = ngx_http_async_dl_hub_watch(&f->watcher, &ctx->job_id,
                                     &alcf->prefix, r->connection->log);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_async_dl_follow_wait(r, f, cln, cleanup);
}


ngx_int_t
ngx_http_async_dl_follow_wait(ngx_http_request_t *r, void *sub,
    ngx_http_cleanup_t *cln, ngx_http_cleanup_pt cleanup)
{
    ngx_http_async_dl_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_async_dl_module);

    cln->handler = cleanup;
    cln->data = sub;

    ctx->stream = sub;

    r->write_event_handler = ngx_http_request_empty_handler;

    return ngx_http_async_dl_wait(r);
}


ngx_int_t
ngx_http_async_dl_follow_refusal(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *msg)
{
    if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        return ngx_http_async_dl_db_unavailable(r, "%s", msg);
    }

    return ngx_http_async_dl_send_error(r, status, code, "%s", msg);
}


void
ngx_http_async_dl_follow_chain(ngx_chain_t *out, ngx_buf_t *bufs,
    u_char *head, u_char *head_end, ngx_http_async_dl_hub_text_t *t,
    u_char *tail, u_char *tail_end)
{
    ngx_http_async_dl_follow_buf(&bufs[0], head, head_end);
    ngx_http_async_dl_follow_buf(&bufs[1], t->text, t->text + t->len);
    ngx_http_async_dl_follow_buf(&bufs[2], tail, tail_end);

    out[0].buf = &bufs[0];
    out[0].next = &out[1];
    out[1].buf = &bufs[1];
    out[1].next = &out[2];
    out[2].buf = &bufs[2];
    out[2].next = NULL;

    if (t->len == 0) {
        /* an empty buffer in the middle of a chain is an nginx alert */
        out[0].next = &out[2];
    }
}


static void
ngx_http_async_dl_follow_buf(ngx_buf_t *b, u_char *start, u_char *end)
{
    ngx_memzero(b, sizeof(ngx_buf_t));
    b->start = start;
    b->pos = start;
    b->last = end;
    b->end = end;
    b->memory = 1;
}


ngx_int_t
ngx_http_async_dl_follow_open(ngx_http_async_dl_follower_t *f,
    ngx_str_t *owner)
{
    ngx_http_async_dl_hub_job_t  *job;

    job = f->watcher.job;

    if (job->status == NGX_HTTP_ASYNC_DL_HUB_DELETED
        || owner->len != job->owner.len
        || (owner->len
            && ngx_memcmp(owner->data, job->owner.data, owner->len) != 0))
    {
        return NGX_DECLINED;
    }

    ngx_http_async_dl_hub_started(&f->watcher);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, f->log, 0,
                   "async_dl follow: job %s from %uL", job->id, job->seq);

    return NGX_OK;
}


void
ngx_http_async_dl_follow_news(ngx_http_async_dl_follower_t *f)
{
    ngx_http_async_dl_hub_job_t  *job;

    job = f->watcher.job;

    if ((f->state != NGX_HTTP_ASYNC_DL_FOLLOW_LIVE
         && f->state != NGX_HTTP_ASYNC_DL_FOLLOW_BEHIND)
        || f->seq >= job->seq)
    {
        return;
    }

    ngx_http_async_dl_follow_set(f, NGX_HTTP_ASYNC_DL_FOLLOW_BEHIND);
}


ngx_int_t
ngx_http_async_dl_follow_next(ngx_http_async_dl_follower_t *f,
    ngx_http_async_dl_event_t *ev)
{
    ngx_int_t  rc;

    rc = ngx_http_async_dl_follow_step(f, &ev->name, &ev->t);

    if (rc != NGX_DECLINED) {
        ev->job = NULL;
        ev->id = ev->t->seq;
        ev->has_id = 1;
    }

    return rc;
}


static ngx_int_t
ngx_http_async_dl_follow_step(ngx_http_async_dl_follower_t *f,
    const char **name, ngx_http_async_dl_hub_text_t **t)
{
    ngx_http_async_dl_hub_job_t   *job;
    ngx_http_async_dl_hub_text_t  *text;

    if (f->sending) {
        /* the last event is out */
        ngx_http_async_dl_hub_text_release(f->sending);
        f->sending = NULL;
    }

    job = f->watcher.job;

    switch (f->state) {

    case NGX_HTTP_ASYNC_DL_FOLLOW_DONE:
        return NGX_DECLINED;

    case NGX_HTTP_ASYNC_DL_FOLLOW_WAITING:
        f->seq = job->seq;
        f->paused = (job->status == NGX_HTTP_ASYNC_DL_HUB_PAUSED);
        *name = "connected";
        *t = job->full;
        ngx_http_async_dl_follow_hold(f, job->full);
        ngx_http_async_dl_follow_set(f, NGX_HTTP_ASYNC_DL_FOLLOW_LIVE);
        return NGX_OK;

    default:
        break;
    }

    text = ngx_http_async_dl_hub_next_file(&f->watcher);

    if (text) {
        *name = "file";
        *t = text;
        ngx_http_async_dl_follow_hold(f, text);
        return NGX_OK;
    }

    switch (f->state) {

    case NGX_HTTP_ASYNC_DL_FOLLOW_ENDING:
        /* its reference goes to the event in flight */
        text = f->final_data;
        f->final_data = NULL;
        f->sending = text;
        f->seq = text->seq;
        *name = (char *) ngx_http_async_dl_hub_status_name(f->final)->data;
        *t = text;
        ngx_http_async_dl_follow_set(f, NGX_HTTP_ASYNC_DL_FOLLOW_DONE);
        return NGX_DONE;

    case NGX_HTTP_ASYNC_DL_FOLLOW_BEHIND:
        f->seq = job->seq;
        *name = "progress";

        if (f->paused != (job->status == NGX_HTTP_ASYNC_DL_HUB_PAUSED)) {
            f->paused = !f->paused;
            *name = f->paused ? "paused" : "resumed";
        }

        *t = job->summary;
        ngx_http_async_dl_follow_hold(f, job->summary);
        ngx_http_async_dl_follow_set(f, NGX_HTTP_ASYNC_DL_FOLLOW_LIVE);
        return NGX_OK;

    default: /* LIVE */
        return NGX_DECLINED;
    }
}


void
ngx_http_async_dl_follow_leave(ngx_http_async_dl_follower_t *f)
{
    ngx_http_async_dl_hub_leave(&f->watcher);

    if (f->state != NGX_HTTP_ASYNC_DL_FOLLOW_DONE) {
        ngx_http_async_dl_follow_set(f, NGX_HTTP_ASYNC_DL_FOLLOW_DONE);
    }
}


void
ngx_http_async_dl_follow_release(ngx_http_async_dl_follower_t *f)
{
    if (f->sending) {
        ngx_http_async_dl_hub_text_release(f->sending);
        f->sending = NULL;
    }

    if (f->final_data) {
        ngx_http_async_dl_hub_text_release(f->final_data);
        f->final_data = NULL;
    }
}


/* a state, and ENDING instead of LIVE or BEHIND once the job has ended */

static void
ngx_http_async_dl_follow_set(ngx_http_async_dl_follower_t *f,
    ngx_http_async_dl_follow_state_e state)
{
    ngx_http_async_dl_hub_job_t  *job;

#if (NGX_DEBUG)
    static const char  *names[] = {
        "waiting", "live", "behind", "ending", "done"
    };
#endif

    job = f->watcher.job;

    if ((state == NGX_HTTP_ASYNC_DL_FOLLOW_LIVE
         || state == NGX_HTTP_ASYNC_DL_FOLLOW_BEHIND)
        && ngx_http_async_dl_hub_ended(job->status))
    {
        f->final = job->status;
        f->final_data = job->full;
        job->full->refs++;
        state = NGX_HTTP_ASYNC_DL_FOLLOW_ENDING;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, f->log, 0,
                   "async_dl follow: %s -> %s", names[f->state],
                   names[state]);

    f->state = state;
}


static void
ngx_http_async_dl_follow_hold(ngx_http_async_dl_follower_t *f,
    ngx_http_async_dl_hub_text_t *t)
{
    f->sending = t;
    t->refs++;
}
