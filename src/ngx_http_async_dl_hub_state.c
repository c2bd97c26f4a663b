
/*
 * A watched job's state, as the hub keeps it: read from the row of
 * async_dl_job_events_state() (sql/003_events.sql), the files that ended
 * since the previous state kept as "file" events in the job's log, and the
 * shared texts that the watchers send.  Nothing here runs a query or tells
 * a watcher: the hub (ngx_http_async_dl_hub.c) does.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_async_dl.h"
#include "ngx_http_async_dl_hub_state.h"


static ngx_int_t ngx_http_async_dl_hub_state_log(
    ngx_http_async_dl_hub_job_t *job, ngx_http_async_dl_hub_text_t *t);
static void ngx_http_async_dl_hub_state_set(ngx_http_async_dl_hub_job_t *job,
    ngx_http_async_dl_hub_text_t *full, ngx_http_async_dl_hub_text_t *summary);


static ngx_str_t  ngx_http_async_dl_hub_names[] = {
    ngx_string("queued"),
    ngx_string("processing"),
    ngx_string("paused"),
    ngx_string("completed"),
    ngx_string("failed"),
    ngx_string("canceled"),
    ngx_string("deleted")
};


ngx_str_t *
ngx_http_async_dl_hub_status_name(ngx_http_async_dl_hub_status_e status)
{
    return &ngx_http_async_dl_hub_names[status];
}


/* the row: o_owner, o_seq, o_status, o_states, o_summary, o_files, o_full */

ngx_int_t
ngx_http_async_dl_hub_state_update(ngx_http_async_dl_hub_job_t *job,
    PGresult *res, ngx_log_t *log)
{
    u_char                        *states, *files, *line, *eol, *last;
    size_t                         nstates;
    uint64_t                       seq;
    ngx_str_t                      status, owner;
    ngx_uint_t                     i, s;
    ngx_http_async_dl_hub_text_t  *full, *summary, *t;

    if (PQnfields(res) != 7) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
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
        job->owner.data = ngx_alloc(owner.len + 1, log);
        if (job->owner.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(job->owner.data, owner.data, owner.len);
        job->owner.len = owner.len;

    } else if (seq <= job->seq) {
        /* nothing new (a refresh after LISTEN came back) */
        return NGX_DECLINED;
    }

    for (s = 0; s < NGX_HTTP_ASYNC_DL_HUB_DELETED; s++) {
        if (status.len == ngx_http_async_dl_hub_names[s].len
            && ngx_strncmp(status.data, ngx_http_async_dl_hub_names[s].data,
                           status.len) == 0)
        {
            break;
        }
    }

    if (nstates == 0) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "async_dl: stream of job %s: no files", job->id);
        return NGX_ERROR;
    }

    summary = ngx_http_async_dl_hub_text(seq, (u_char *) PQgetvalue(res, 0, 4),
                                         PQgetlength(res, 0, 4));
    if (summary == NULL) {
        return NGX_ERROR;
    }

    full = ngx_http_async_dl_hub_text(seq, (u_char *) PQgetvalue(res, 0, 6),
                                      PQgetlength(res, 0, 6));
    if (full == NULL) {
        ngx_http_async_dl_hub_text_release(summary);
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

        t = ngx_http_async_dl_hub_text(seq, line, eol - line);
        if (t == NULL || ngx_http_async_dl_hub_state_log(job, t) != NGX_OK) {
            if (t) {
                ngx_http_async_dl_hub_text_release(t);
            }

            ngx_http_async_dl_hub_text_release(summary);
            ngx_http_async_dl_hub_text_release(full);
            return NGX_ERROR;
        }
    }

    if (nstates > job->nstates) {
        if (job->states) {
            ngx_free(job->states);
        }

        job->states = ngx_alloc(nstates, log);
        if (job->states == NULL) {
            job->nstates = 0;
            ngx_http_async_dl_hub_text_release(summary);
            ngx_http_async_dl_hub_text_release(full);
            return NGX_ERROR;
        }
    }

    ngx_memcpy(job->states, states, nstates);     /* nstates > 0 */
    job->nstates = nstates;

    ngx_http_async_dl_hub_state_set(job, full, summary);
    job->seq = seq;
    job->status = s;
    job->known = 1;

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, log, 0,
                   "async_dl hub: job %s is %V at %uL, %ui watchers",
                   job->id, &status, seq, job->nwatchers);

    return NGX_OK;
}


/* no row: the job was deleted (or never was, or is another owner's) */

ngx_int_t
ngx_http_async_dl_hub_state_gone(ngx_http_async_dl_hub_job_t *job)
{
    u_char                        *p, buf[160];
    ngx_http_async_dl_hub_text_t  *t;

    p = ngx_sprintf(buf, "{\"jobId\":\"%s\",\"status\":\"deleted\","
                    "\"error\":{\"code\":\"JOB_DELETED\","
                    "\"message\":\"the job was deleted\"}}", job->id);

    t = ngx_http_async_dl_hub_text(job->seq + 1, buf, p - buf);
    if (t == NULL) {
        return NGX_ERROR;
    }

    t->refs++;
    ngx_http_async_dl_hub_state_set(job, t, t);
    job->seq++;
    job->status = NGX_HTTP_ASYNC_DL_HUB_DELETED;

    return NGX_OK;
}


static void
ngx_http_async_dl_hub_state_set(ngx_http_async_dl_hub_job_t *job,
    ngx_http_async_dl_hub_text_t *full, ngx_http_async_dl_hub_text_t *summary)
{
    if (job->full) {
        ngx_http_async_dl_hub_text_release(job->full);
        ngx_http_async_dl_hub_text_release(job->summary);
    }

    job->full = full;
    job->summary = summary;
}


static ngx_int_t
ngx_http_async_dl_hub_state_log(ngx_http_async_dl_hub_job_t *job,
    ngx_http_async_dl_hub_text_t *t)
{
    ngx_uint_t                      size;
    ngx_http_async_dl_hub_text_t  **log;

    if (job->log_n == job->log_size) {
        size = job->log_size ? job->log_size * 2 : 8;

        log = ngx_alloc(size * sizeof(ngx_http_async_dl_hub_text_t *),
                        ngx_cycle->log);
        if (log == NULL) {
            return NGX_ERROR;
        }

        if (job->log) {
            ngx_memcpy(log, job->log,
                       job->log_n * sizeof(ngx_http_async_dl_hub_text_t *));
            ngx_free(job->log);
        }

        job->log = log;
        job->log_size = size;
    }

    job->log[job->log_n++] = t;

    return NGX_OK;
}


/* everything the state holds, when the job is freed */

void
ngx_http_async_dl_hub_state_free(ngx_http_async_dl_hub_job_t *job)
{
    ngx_uint_t  i;

    for (i = 0; i < job->log_n; i++) {
        ngx_http_async_dl_hub_text_release(job->log[i]);
    }

    if (job->full) {
        ngx_http_async_dl_hub_text_release(job->full);
        ngx_http_async_dl_hub_text_release(job->summary);
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
}


/*
 * The JSON compacted the way the other routes compact their answers (no
 * blanks outside strings), so that it is one line; newlines between its
 * objects become commas.
 */

ngx_http_async_dl_hub_text_t *
ngx_http_async_dl_hub_text(uint64_t seq, u_char *json, size_t len)
{
    u_char                        *p, *raw;
    size_t                         n;
    ngx_http_async_dl_hub_text_t  *t;

    raw = ngx_alloc(len, ngx_cycle->log);
    if (raw == NULL) {
        return NULL;
    }

    ngx_memcpy(raw, json, len);

    for (p = raw; p < raw + len; p++) {
        if (*p == '\n') {
            *p = ',';
        }
    }

    n = ngx_http_async_dl_compact(NULL, raw, len);

    t = ngx_alloc(offsetof(ngx_http_async_dl_hub_text_t, text) + n,
                  ngx_cycle->log);
    if (t == NULL) {
        ngx_free(raw);
        return NULL;
    }

    t->refs = 1;
    t->seq = seq;
    t->len = ngx_http_async_dl_compact(t->text, raw, len);

    ngx_free(raw);

    return t;
}


void
ngx_http_async_dl_hub_text_release(ngx_http_async_dl_hub_text_t *t)
{
    if (--t->refs == 0) {
        ngx_free(t);
    }
}
