/*
 * worker: the event loop and what it drives: claims (woken by NOTIFY and
 * a slow safety poll), cancels, the deadline sweep, shutdown.
 *
 * Everything runs on one thread.  Handlers never close or free a
 * transfer: they record that it ended, and the loop closes ended
 * transfers after each epoll_wait() batch (outside every libcurl
 * callback) and frees those done, so no callback ever finds its object
 * gone.  The tick timer runs every 100 ms while
 * there is work (deadlines, retries, progress, leases) and every second
 * when idle.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "bundle.h"
#include "callback.h"
#include "expiry.h"
#include "janitor.h"
#include "log.h"
#include "transfer.h"
#include "worker.h"

#define TICK_BUSY        100     /* ms */
#define TICK_IDLE        1000
#define EXIT_HARD_LIMIT  10000   /* ms after the grace: exit regardless */

static adl_worker_t  *the_worker;

int64_t
adl_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


/* --- jobs ---------------------------------------------------------------- */

static adl_job_t *
job_get(adl_worker_t *w, const char *id, int64_t remaining_ms)
{
    adl_job_t  *j;

    for (j = w->jobs; j != NULL; j = j->next) {
        if (strcmp(j->id, id) == 0) {
            return j;
        }
    }
    j = calloc(1, sizeof(adl_job_t));
    if (j == NULL) {
        return NULL;
    }
    snprintf(j->id, sizeof(j->id), "%s", id);
    j->deadline = adl_now_ms() + remaining_ms;
    j->next = w->jobs;
    w->jobs = j;
    return j;
}

static void
job_unref(adl_worker_t *w, adl_job_t *job)
{
    adl_job_t  **pp;

    if (--job->refs > 0) {
        return;
    }
    for (pp = &w->jobs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == job) {
            *pp = job->next;
            free(job);
            return;
        }
    }
}

void
adl_worker_xfer_released(adl_worker_t *w, adl_job_t *job)
{
    job_unref(w, job);
}


/* --- claims -------------------------------------------------------------- */

static void
claim_result(void *data, PGresult *res)
{
    adl_worker_t  *w = data;
    adl_claim_t    c;
    adl_job_t     *job;
    adl_xfer_t    *x;
    int            i, n;

    w->claiming = 0;
    if (res == NULL) {
        w->more_work = 1;           /* again on the next connection */
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "claim failed: %s",
                      PQresultErrorMessage(res));
        return;                     /* the poll tries again */
    }

    n = PQntuples(res);
    for (i = 0; i < n; i++) {
        c.job_id = PQgetvalue(res, i, 0);
        c.idx = atoi(PQgetvalue(res, i, 1));
        c.url = PQgetvalue(res, i, 2);
        c.attempts = atoi(PQgetvalue(res, i, 4));
        c.lease = PQgetvalue(res, i, 6);
        c.key = PQgetvalue(res, i, 3);
        c.claimed_at = w->claim_sent;

        /* ours again: the lease ran out while the database was away.  The
         * old transfer stops at its lease's end, before this answer can
         * arrive; if it has not, it stops now, before the new one starts */
        for (x = w->xfers; x != NULL; x = adl_xfer_next(x)) {
            if (adl_xfer_active(x) && adl_xfer_idx(x) == c.idx
                && strcmp(adl_xfer_job(x)->id, c.job_id) == 0)
            {
                adl_xfer_lease_lost(x);
            }
        }

        job = job_get(w, c.job_id, strtoll(PQgetvalue(res, i, 5), NULL, 10));
        if (job == NULL) {
            adl_log_error(c.job_id, c.idx, "out of memory: file left to "
                          "its lease");
            continue;
        }
        job->refs++;
        if (adl_xfer_start(w, job, &c) == NULL) {
            adl_log_error(c.job_id, c.idx, "out of memory: file left to "
                          "its lease");
        }
        job_unref(w, job);
    }
    if (n >= w->claim_limit) {
        w->more_work = 1;
    }
}

static void
maybe_claim(adl_worker_t *w)
{
    const adl_settings_t  *s = w->settings;
    char                   limit[16], lease[32], max[16];
    const char            *p[5];
    int                    room = (int) s->concurrency - w->nxfers;
    int                    batch = (int) s->concurrency / 4;

    if (w->stopping || w->claiming || !w->more_work || room <= 0
        || !adl_db_connected(w->db))
    {
        return;
    }
    /* when busy, claim in batches rather than one file at a time */
    if (w->nxfers > 0 && room < (batch > 0 ? batch : 1)) {
        return;
    }

    snprintf(limit, sizeof(limit), "%d", room);
    snprintf(lease, sizeof(lease), "%lld milliseconds", (long long) s->lease);
    snprintf(max, sizeof(max), "%lld", (long long) s->max_attempts);
    p[0] = s->worker_id;
    p[1] = limit;
    p[2] = lease;
    p[3] = max;
    p[4] = s->s3_prefix;
    /* the claim names and records the key each transfer writes to; it
     * dies with its connection, so that on the next one the results
     * queued meanwhile (an object stored after its lease ran out) are
     * written before any claim can take those files again */
    if (adl_db_query_live(w->db, "SELECT job_id, idx, url, write_key, "
                          "attempts, greatest(0, extract(epoch FROM "
                          "deadline - clock_timestamp()) * 1000)::bigint, "
                          "lease FROM async_dl_claim($1, $2::integer, "
                          "$3::interval, $4::integer, $5)", 5, p,
                          claim_result, w) == 0)
    {
        w->claiming = 1;
        w->claim_sent = adl_now_ms();
        w->claim_limit = room;
        w->more_work = 0;
    }
}

static void
sweep_result(void *data, PGresult *res)
{
    (void) data;

    if (res == NULL) {
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "deadline sweep failed: %s",
                      PQresultErrorMessage(res));
    } else if (PQntuples(res) == 1 && atoi(PQgetvalue(res, 0, 0)) > 0) {
        adl_log_info(NULL, -1, "deadline sweep: %s file(s) timed out",
                     PQgetvalue(res, 0, 0));
    }
}

static void
compact_result(void *data, PGresult *res)
{
    (void) data;

    if (res != NULL && PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "compacting the queue counts failed: %s",
                      PQresultErrorMessage(res));
    }
}


/* --- database events ----------------------------------------------------- */

static void
on_connected(void *data)
{
    adl_worker_t  *w = data;

    w->more_work = 1;               /* what was queued while away */
    w->next_poll = 0;
    adl_janitor_connected(w->janitor);
}

static void
on_notify(void *data, const char *channel, const char *payload)
{
    adl_worker_t  *w = data;
    adl_xfer_t    *x;
    int            n = 0;

    if (strcmp(channel, "async_dl_jobs") == 0) {
        w->more_work = 1;
        return;
    }
    if (strcmp(channel, "async_dl_deleted") == 0) {
        adl_janitor_kick(w->janitor);
        return;
    }
    if (strcmp(channel, "async_dl_lifecycle") == 0) {
        adl_bundler_kick(w->bundler);
        adl_callbacks_kick(w->callbacks);
        return;
    }
    if (strcmp(channel, "async_dl_cancel") == 0) {
        for (x = w->xfers; x != NULL; x = adl_xfer_next(x)) {
            if (adl_xfer_active(x)
                && strcmp(adl_xfer_job(x)->id, payload) == 0)
            {
                adl_xfer_cancel(x);
                n++;
            }
        }
        if (n > 0) {
            adl_log_info(payload, -1, "canceled: stopped %d transfer(s)", n);
        }
    }
}


/* --- the loop ------------------------------------------------------------ */

static void
set_tick(adl_worker_t *w, int64_t ms)
{
    struct itimerspec  its, cur;

    if (w->tick_ms == ms) {
        return;
    }
    memset(&its, 0, sizeof(its));
    its.it_interval.tv_sec = ms / 1000;
    its.it_interval.tv_nsec = (ms % 1000) * 1000000;
    its.it_value = its.it_interval;
    /* never push the next tick back: a loop that turns busy and idle
     * more often than a tick would otherwise never tick at all (no
     * lease renewal, no expiry, no query timeout while under load) */
    if (timerfd_gettime(w->tickfd, &cur) == 0
        && (cur.it_value.tv_sec != 0 || cur.it_value.tv_nsec != 0)
        && (cur.it_value.tv_sec < its.it_value.tv_sec
            || (cur.it_value.tv_sec == its.it_value.tv_sec
                && cur.it_value.tv_nsec < its.it_value.tv_nsec)))
    {
        its.it_value = cur.it_value;
    }
    timerfd_settime(w->tickfd, 0, &its, NULL);
    w->tick_ms = ms;
}

static void
begin_shutdown(adl_worker_t *w, const char *sig)
{
    int64_t  now = adl_now_ms();

    if (w->stopping) {
        adl_log_info(NULL, -1, "%s again: handing back in-flight work now",
                     sig);
        w->stop_at = now;
        return;
    }
    w->stopping = 1;
    w->stop_at = now + w->settings->shutdown_grace;
    adl_log_info(NULL, -1, "%s: no new claims; %d transfer(s) in flight, "
                 "%lld ms to finish", sig, w->nxfers,
                 (long long) w->settings->shutdown_grace);
}

static void
on_tick(adl_worker_t *w)
{
    adl_xfer_t  *x;
    int64_t      now = adl_now_ms();

    adl_db_tick(w->db, now);

    for (x = w->xfers; x != NULL; x = adl_xfer_next(x)) {
        adl_xfer_tick(x, now);
    }

    if (!w->stopping && now >= w->next_poll && adl_db_connected(w->db)) {
        w->next_poll = now + w->settings->poll_interval;
        w->more_work = 1;
        adl_janitor_kick(w->janitor);
        adl_bundler_kick(w->bundler);
        adl_callbacks_kick(w->callbacks);
        adl_db_query(w->db, "SELECT async_dl_sweep_deadlines()", 0, NULL,
                     sweep_result, w);
        adl_db_query(w->db, "SELECT async_dl_counts_compact()", 0, NULL,
                     compact_result, w);
    }
    adl_bundler_tick(w->bundler, now);
    adl_callbacks_tick(w->callbacks, now);
    adl_expiry_tick(w->expiry, now);

    if (w->stopping && !w->handed_back && now >= w->stop_at) {
        w->handed_back = 1;
        for (x = w->xfers; x != NULL; x = adl_xfer_next(x)) {
            if (adl_xfer_active(x)) {
                adl_xfer_hand_back(x);
            }
        }
        adl_bundler_hand_back(w->bundler);
        adl_callbacks_hand_back(w->callbacks);
    }
}

static int
done_stopping(adl_worker_t *w)
{
    if (!w->stopping) {
        return 0;
    }
    if (w->nxfers == 0 && !adl_janitor_busy(w->janitor)
        && !adl_bundler_busy(w->bundler) && !adl_callbacks_busy(w->callbacks)
        && !adl_expiry_busy(w->expiry)
        && (adl_db_idle(w->db) || !adl_db_connected(w->db)))
    {
        return 1;
    }
    if (adl_now_ms() >= w->stop_at + EXIT_HARD_LIMIT) {
        adl_log_warn(NULL, -1, "exiting with %d transfer(s) still ending, "
                     "%d not recorded (their leases will run out)",
                     w->nxfers, adl_xfer_unrecorded(w));
        return 1;
    }
    return 0;
}

static void
on_signal(adl_worker_t *w)
{
    struct signalfd_siginfo  si;

    while (read(w->sigfd, &si, sizeof(si)) == (ssize_t) sizeof(si)) {
        begin_shutdown(w, si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
    }
}

static int
add_fd(adl_worker_t *w, int fd, unsigned tag)
{
    struct epoll_event  ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = (uint64_t) tag << 32;
    return epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static int
setup(adl_worker_t *w, const adl_settings_t *s)
{
    adl_db_handlers_t  h;
    sigset_t           mask;

    memset(w, 0, sizeof(*w));
    w->settings = s;
    w->sigfd = w->tickfd = -1;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0) {
        return -1;
    }

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0) {
        return -1;
    }
    w->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    w->tickfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (w->sigfd < 0 || w->tickfd < 0
        || add_fd(w, w->sigfd, ADL_TAG_SIGNAL) != 0
        || add_fd(w, w->tickfd, ADL_TAG_TICK) != 0)
    {
        return -1;
    }

    w->origin = adl_http_create(w->epfd, ADL_TAG_ORIGIN, 0);
    w->storage = adl_http_create(w->epfd, ADL_TAG_STORAGE, 0);
    if (w->origin == NULL || w->storage == NULL) {
        return -1;
    }
    w->s3 = adl_s3_create(s, w->storage);
    if (w->s3 == NULL) {
        return -1;
    }

    w->janitor = adl_janitor_create(w);
    w->bundler = adl_bundler_create(w, s->bundle_zip64);
    w->callbacks = adl_callbacks_create(w);
    w->expiry = adl_expiry_create(w);
    if (w->janitor == NULL || w->bundler == NULL || w->callbacks == NULL
        || w->expiry == NULL)
    {
        return -1;
    }

    h.connected = on_connected;
    h.notify = on_notify;
    h.data = w;
    w->db = adl_db_create(s, w->epfd, &h);
    if (w->db == NULL) {
        return -1;
    }
    set_tick(w, TICK_IDLE);
    return 0;
}

static void
teardown(adl_worker_t *w)
{
    adl_job_t  *j;

    adl_xfer_free_all(w);
    adl_janitor_destroy(w->janitor);
    adl_bundler_destroy(w->bundler);
    adl_callbacks_destroy(w->callbacks);
    adl_expiry_destroy(w->expiry);
    while ((j = w->jobs) != NULL) {
        w->jobs = j->next;
        free(j);
    }
    adl_db_destroy(w->db);
    adl_s3_destroy(w->s3);
    adl_http_destroy(w->origin);
    adl_http_destroy(w->storage);
    if (w->sigfd >= 0) {
        close(w->sigfd);
    }
    if (w->tickfd >= 0) {
        close(w->tickfd);
    }
    if (w->epfd >= 0) {
        close(w->epfd);
    }
}

int
adl_worker_run(const adl_settings_t *s)
{
    adl_worker_t        w;
    struct epoll_event  evs[64];
    uint64_t            u;
    ssize_t             rd;
    int                 i, n, rc = 0;

    srandom((unsigned) (time(NULL) ^ getpid()));

    if (setup(&w, s) != 0) {
        adl_log_error(NULL, -1, "cannot set up the event loop: %s",
                      strerror(errno));
        teardown(&w);
        return -1;
    }
    the_worker = &w;
    adl_log_info(NULL, -1, "worker %s started: concurrency %lld, part size "
                 "%lld, storage %s bucket %s", s->worker_id,
                 (long long) s->concurrency, (long long) s->part_size,
                 s->s3_endpoint, s->s3_bucket);
    adl_db_tick(w.db, adl_now_ms());

    for ( ;; ) {
        n = epoll_wait(w.epfd, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            adl_log_error(NULL, -1, "epoll_wait: %s", strerror(errno));
            rc = -1;
            break;
        }

        for (i = 0; i < n; i++) {
            unsigned  tag = (unsigned) (evs[i].data.u64 >> 32);
            int       fd = (int) (evs[i].data.u64 & 0xffffffffu);

            switch (tag) {
            case ADL_TAG_SIGNAL:
                on_signal(&w);
                break;
            case ADL_TAG_TICK:
                rd = read(w.tickfd, &u, sizeof(u));
                (void) rd;
                on_tick(&w);
                break;
            case ADL_TAG_DB:
                adl_db_event(w.db, evs[i].events);
                break;
            case ADL_TAG_ORIGIN:
                adl_http_socket_event(w.origin, fd, evs[i].events);
                break;
            case ADL_TAG_ORIGIN + 1:
                adl_http_timer_event(w.origin);
                break;
            case ADL_TAG_STORAGE:
                adl_http_socket_event(w.storage, fd, evs[i].events);
                break;
            case ADL_TAG_STORAGE + 1:
                adl_http_timer_event(w.storage);
                break;
            }
        }

        /* transfers end here, never inside a libcurl callback */
        if (w.ending) {
            adl_xfer_process_ends(&w);
        }
        if (w.kick) {
            adl_xfer_kick(&w);
        }
        if (w.ending) {
            adl_xfer_process_ends(&w);
        }
        if (w.reap) {
            adl_xfer_reap(&w);
        }
        maybe_claim(&w);
        adl_janitor_run(w.janitor);
        set_tick(&w, w.nxfers > 0 || w.stopping
                     || adl_bundler_busy(w.bundler)
                     || adl_callbacks_busy(w.callbacks)
                     ? TICK_BUSY : TICK_IDLE);

        if (done_stopping(&w)) {
            adl_log_info(NULL, -1, "stopped");
            break;
        }
    }

    teardown(&w);
    the_worker = NULL;
    return rc;
}
