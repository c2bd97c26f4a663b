/*
 * callback: one delivery = one claimed callback: POST -> record the
 * outcome (delivered, retry later, failed) -> freed.
 *
 * Each claim holds its callbacks under a token of its own (worker id,
 * start, claim number), so the outcome of a delivery whose lease ran out
 * and was claimed again, even by this worker, is not recorded over the
 * new claim.  An outcome whose answer was lost is sent again on the next
 * connection (recording twice is harmless: the second finds the callback
 * no longer this claim's), so a delivered callback is not delivered again
 * for want of its record.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adl_sigv4.h"
#include "backoff.h"
#include "callback.h"
#include "claim.h"
#include "clock.h"
#include "log.h"
#include "metrics.h"

#define DELIVERIES_AT_ONCE  8
#define DELIVERY_TIMEOUT    15000           /* ms, one POST */
#define CLAIM_LEASE         "60 seconds"    /* > DELIVERY_TIMEOUT */

typedef enum {
    CB_POSTING = 0,
    CB_RECORDING,
    CB_DONE
} delivery_state_t;

typedef struct delivery_s    delivery_t;
typedef struct callbacks_s   callbacks_t;

struct delivery_s {
    adl_http_req_t      http;           /* first */
    delivery_t         *next;
    callbacks_t    *owner;
    delivery_state_t    state;
    char                job[40];
    char                traceparent[64];   /* the job's, or "" */
    char                lease[ADL_CLAIM_TOKEN_MAX];  /* its claim's token */
    char               *url;
    char               *body;
    int                 attempt;
    struct curl_slist  *headers;
    char                errbuf[CURL_ERROR_SIZE];
    adl_http_guard_t    guard;
    int                 db_refs;
    int                 ok;             /* the outcome, once known */
    char               *error;
    char                delay[24];
};

struct callbacks_s {
    adl_claimer_t   claim;          /* first: adl_claimer_wake */
    adl_env_t      *env;
    delivery_t     *list;
    int             n;
    int64_t         next_due;       /* a retry of ours is due then */
    int             stopping;
};

#define CLOG(level, d, ...)  adl_log(level, (d)->job, -1, __VA_ARGS__)

static void record(delivery_t *d, int ok, const char *error, int retry);
static void record_send(delivery_t *d);


/* --- the POST ------------------------------------------------------------- */

static size_t
discard(char *data, size_t size, size_t nmemb, void *userp)
{
    (void) data;
    (void) userp;
    return size * nmemb;
}

static void
post_done(adl_http_req_t *http, CURLcode rc)
{
    delivery_t  *d = (delivery_t *) (void *) http;
    long         status = 0;
    char         msg[400];

    curl_easy_getinfo(http->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(http->easy);
    http->easy = NULL;

    if (rc == CURLE_OK && status >= 200 && status <= 299) {
        CLOG(ADL_LOG_INFO, d, "callback delivered to %s (attempt %d, "
             "HTTP %ld)", d->url, d->attempt, status);
        record(d, 1, NULL, 0);
        return;
    }
    if (d->guard.blocked) {
        snprintf(msg, sizeof(msg), "BLOCKED_ADDRESS: %s", d->guard.msg);
    } else if (rc != CURLE_OK) {
        snprintf(msg, sizeof(msg), "%s",
                 d->errbuf[0] ? d->errbuf : curl_easy_strerror(rc));
    } else {
        snprintf(msg, sizeof(msg), "HTTP %ld", status);
    }
    record(d, 0, msg, !d->guard.blocked);
}

static int
sign(delivery_t *d, char *hdr, size_t len)
{
    const char     *secret = d->owner->env->settings->callback_secret;
    unsigned char   mac[32];
    char            hex[65], *msg;
    size_t          blen = strlen(d->body), tlen;
    long long       t = (long long) time(NULL);
    int             i;

    msg = malloc(blen + 32);
    if (msg == NULL) {
        return -1;
    }
    tlen = (size_t) sprintf(msg, "%lld.", t);
    memcpy(msg + tlen, d->body, blen);
    if (adl_hmac_sha256(secret, strlen(secret), msg, tlen + blen, mac) != 0) {
        free(msg);
        return -1;
    }
    free(msg);
    for (i = 0; i < 32; i++) {
        sprintf(hex + 2 * i, "%02x", mac[i]);
    }
    snprintf(hdr, len, "X-Async-DL-Signature: t=%lld,sha256=%s", t, hex);
    return 0;
}

static int
post_start(delivery_t *d)
{
    const adl_settings_t  *s = d->owner->env->settings;
    struct curl_slist     *l;
    char                   sig[160], trace[96];
    const char            *hs[5] = { "Content-Type: application/json",
                                     "User-Agent: async-dl-worker",
                                     "Expect:", NULL, NULL };
    CURL                  *e;
    int                    i, n = 3;

    if (s->callback_secret != NULL && s->callback_secret[0] != '\0') {
        if (sign(d, sig, sizeof(sig)) != 0) {
            return -1;
        }
        hs[n++] = sig;
    }
    if (d->traceparent[0] != '\0') {
        snprintf(trace, sizeof(trace), "traceparent: %s", d->traceparent);
        hs[n++] = trace;
    }
    for (i = 0; i < n; i++) {
        l = curl_slist_append(d->headers, hs[i]);
        if (l == NULL) {
            return -1;
        }
        d->headers = l;
    }

    e = adl_http_origin_easy(s, d->url, d->headers, &d->guard, d->errbuf);
    if (e == NULL) {
        return -1;
    }
    d->http.easy = e;
    d->http.done = post_done;
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, d->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t) strlen(d->body));
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) DELIVERY_TIMEOUT);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    if (adl_http_start(d->owner->env->origin, &d->http) != 0) {
        curl_easy_cleanup(e);
        d->http.easy = NULL;
        return -1;
    }
    return 0;
}


/* --- recording the outcome ------------------------------------------------ */

static void
record_result(void *data, PGresult *res)
{
    delivery_t  *d = data;

    d->db_refs--;
    if (res == NULL) {
        record_send(d);             /* again on the next connection */
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        CLOG(ADL_LOG_ERROR, d, "callback: recording the outcome failed: %s",
             PQresultErrorMessage(res));
    } else if (PQgetvalue(res, 0, 0)[0] != 't') {
        CLOG(ADL_LOG_INFO, d, "callback: outcome not recorded: the "
             "callback is no longer this claim's");
    }
    d->state = CB_DONE;
}

static void
record_send(delivery_t *d)
{
    const char  *p[5];

    p[0] = d->job;
    p[1] = d->lease;
    p[2] = d->ok ? "true" : "false";
    p[3] = d->error;
    p[4] = d->delay[0] ? d->delay : NULL;
    if (adl_db_query(d->owner->env->db, "SELECT async_dl_callback_finish("
                     "$1::uuid, $2, $3::boolean, $4, now() + $5::bigint * "
                     "interval '1 millisecond')", 5, p, record_result, d)
        != 0)
    {
        CLOG(ADL_LOG_ERROR, d, "callback: out of memory: the outcome is "
             "left to the claim's lease");
        d->state = CB_DONE;
        return;
    }
    d->db_refs++;
}

static void
record(delivery_t *d, int ok, const char *error, int retry)
{
    const adl_settings_t  *s = d->owner->env->settings;
    int64_t                delay;

    d->state = CB_RECORDING;
    d->ok = ok;
    adl_metrics.ended[ADL_M_CALLBACKS][ok ? ADL_M_COMPLETED
                                       : retry && d->attempt
                                                  < ADL_CALLBACK_ATTEMPTS
                                         ? ADL_M_RETRIED : ADL_M_FAILED]++;
    if (error != NULL) {
        d->error = strdup(error);
        if (d->error == NULL) {
            CLOG(ADL_LOG_ERROR, d, "callback: out of memory: the outcome "
                 "is left to the claim's lease");
            d->state = CB_DONE;
            return;
        }
    }
    if (!ok) {
        if (retry && d->attempt < ADL_CALLBACK_ATTEMPTS) {
            delay = adl_backoff_ms(s->retry_base, d->attempt);
            snprintf(d->delay, sizeof(d->delay), "%lld", (long long) delay);
            if (d->owner->next_due == 0
                || adl_now_ms() + delay < d->owner->next_due)
            {
                d->owner->next_due = adl_now_ms() + delay;
            }
            CLOG(ADL_LOG_WARN, d, "callback to %s failed (attempt %d): %s; "
                 "retrying in %s ms", d->url, d->attempt, error, d->delay);
        } else {
            CLOG(ADL_LOG_WARN, d, "callback to %s failed for good (attempt "
                 "%d): %s", d->url, d->attempt, error);
        }
    }
    record_send(d);
}


/* --- claims --------------------------------------------------------------- */

static void
delivery_free(delivery_t *d)
{
    if (d->http.easy != NULL) {
        adl_http_stop(d->owner->env->origin, &d->http);
        curl_easy_cleanup(d->http.easy);
    }
    curl_slist_free_all(d->headers);
    adl_log_untrace(d->job);
    free(d->url);
    free(d->body);
    free(d->error);
    free(d);
}

static void
claim_result(void *data, PGresult *res)
{
    callbacks_t  *c = data;
    delivery_t       *d;
    int               i, n;

    n = adl_claimer_answered(&c->claim, res, "callback");
    if (n > 0) {
        c->claim.pending = 1;       /* maybe more */
    }
    for (i = 0; i < n; i++) {
        d = calloc(1, sizeof(delivery_t));
        if (d == NULL
            || (d->url = strdup(PQgetvalue(res, i, 1))) == NULL
            || (d->body = strdup(PQgetvalue(res, i, 3))) == NULL)
        {
            if (d != NULL) {
                free(d->url);
                free(d);
            }
            adl_log_error(PQgetvalue(res, i, 0), -1, "callback: out of "
                          "memory: left to its lease");
            continue;
        }
        d->owner = c;
        snprintf(d->job, sizeof(d->job), "%s", PQgetvalue(res, i, 0));
        snprintf(d->traceparent, sizeof(d->traceparent), "%s",
                 PQgetvalue(res, i, 4));
        adl_log_trace(d->job, d->traceparent);
        memcpy(d->lease, c->claim.token, sizeof(d->lease));
        d->attempt = atoi(PQgetvalue(res, i, 2));
        d->next = c->list;
        c->list = d;
        c->n++;
        CLOG(ADL_LOG_DEBUG, d, "callback: POST %s (attempt %d)", d->url,
             d->attempt);
        if (post_start(d) != 0) {
            record(d, 0, "cannot start the request", 1);
        }
    }
}

static void *
callbacks_create(adl_env_t *env)
{
    callbacks_t  *c = calloc(1, sizeof(callbacks_t));

    if (c != NULL) {
        c->env = env;
        adl_claimer_init(&c->claim, 'c');
    }
    return c;
}

static void
callbacks_destroy(void *k)
{
    callbacks_t  *c = k;
    delivery_t   *d;

    while ((d = c->list) != NULL) {
        c->list = d->next;
        delivery_free(d);
    }
    free(c);
}

static int
callbacks_busy(const void *k)
{
    const callbacks_t  *c = k;

    return c->list != NULL || c->claim.claiming;
}

static void
callbacks_hand_back(void *k)
{
    callbacks_t  *c = k;
    delivery_t   *d;

    c->stopping = 1;
    for (d = c->list; d != NULL; d = d->next) {
        if (d->state == CB_POSTING && d->http.easy != NULL) {
            adl_http_stop(c->env->origin, &d->http);
            curl_easy_cleanup(d->http.easy);
            d->http.easy = NULL;
            CLOG(ADL_LOG_INFO, d, "callback: stopped (shutting down); "
                 "retried after its lease");
            d->state = CB_DONE;
        }
    }
}

static void
callbacks_tick(void *k, int64_t now)
{
    callbacks_t  *c = k;
    delivery_t  **pp, *d;
    char          limit[16];
    const char   *p[3];

    if (c->next_due != 0 && now >= c->next_due) {
        c->next_due = 0;
        c->claim.pending = 1;
    }
    for (pp = &c->list; (d = *pp) != NULL; ) {
        if (d->state == CB_DONE && d->db_refs == 0) {
            *pp = d->next;
            c->n--;
            delivery_free(d);
            continue;
        }
        pp = &d->next;
    }

    if (c->stopping
        || !adl_claimer_due(&c->claim, c->env, DELIVERIES_AT_ONCE - c->n))
    {
        return;
    }
    snprintf(limit, sizeof(limit), "%d", DELIVERIES_AT_ONCE - c->n);
    p[0] = adl_claimer_token(&c->claim, c->env);
    p[1] = limit;
    p[2] = CLAIM_LEASE;
    (void) adl_claimer_send(&c->claim, c->env, "SELECT job_id, url, "
                            "attempts, body, (SELECT j.traceparent FROM "
                            "async_dl_jobs j WHERE j.id = k.job_id) FROM "
                            "async_dl_callback_claim($1, $2::integer, "
                            "$3::interval) k", 3, p, claim_result, c);
}

static const char *const  callbacks_channels[] = {
    "async_dl_lifecycle", NULL
};

const adl_task_ops_t  adl_callbacks_ops = {
    "callbacks",
    callbacks_channels,
    callbacks_create,
    callbacks_destroy,
    adl_claimer_wake,
    NULL,                           /* notify: wake */
    NULL,                           /* poll: wake */
    callbacks_tick,
    NULL,                           /* settle: the tick does it */
    callbacks_hand_back,
    callbacks_busy,
    NULL
};
