/*
 * worker: the event loop, and nothing else: it waits on epoll, routes each
 * event (signals, the tick, the database, the two curl multis), and calls
 * the kinds of work (task.h) at their times:
 *
 *   each epoll batch   every kind's settle (ends, next requests, claims)
 *   each tick          the database's tick, every kind's tick, the poll
 *                      when due, the hand-back when the grace is over
 *   a NOTIFY           the kinds listening on its channel
 *   a new connection   every kind's wake
 *
 * Handlers never close or free what libcurl or libpq may still call back
 * into: they record, and the kinds act in settle, after the batch.  The
 * tick runs every 100 ms while any kind is busy, every second when idle.
 *
 * Shutdown: at the first SIGTERM (or SIGINT) no kind claims any more; work
 * in flight has ASYNC_DL_SHUTDOWN_GRACE to finish, then is handed back;
 * the loop exits when no kind is busy and the database has nothing to
 * send, or EXIT_HARD_LIMIT after the grace regardless.
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
#include "clock.h"
#include "expiry.h"
#include "files.h"
#include "janitor.h"
#include "presence.h"
#include "log.h"
#include "metrics_server.h"
#include "task.h"
#include "worker.h"

#define TICK_BUSY        100     /* ms */
#define TICK_IDLE        1000
#define EXIT_HARD_LIMIT  10000   /* ms after the grace: exit regardless */

/* epoll tags (data.u64 >> 32); curl sockets carry their fd below */
#define TAG_SIGNAL   1
#define TAG_TICK     2
#define TAG_DB       3
#define TAG_ORIGIN   4          /* 4: sockets, 5: timer */
#define TAG_STORAGE  6          /* 6: sockets, 7: timer */
#define TAG_METRICS  8          /* its sockets carry their fd below */

static const adl_task_ops_t  *const kinds[] = {
    &adl_files_ops, &adl_bundles_ops, &adl_callbacks_ops, &adl_expiry_ops,
    &adl_janitor_ops, &adl_presence_ops
};

#define NKINDS  (sizeof(kinds) / sizeof(kinds[0]))
#define MAX_CHANNELS  16

typedef struct {
    adl_env_t   env;
    adl_http_t *storage;        /* the storage's curl multi (env.s3's) */
    void       *k[NKINDS];
    int         epfd;
    int         sigfd;
    int         tickfd;
    int64_t     tick_ms;        /* current tick period */
    int64_t     next_poll;
    int         handed_back;
    int64_t     stop_at;        /* grace period ends */
    adl_metrics_server_t  *metrics;     /* ASYNC_DL_METRICS_LISTEN */
} loop_t;


/* --- database events ----------------------------------------------------- */

static void
on_connected(void *data)
{
    loop_t  *l = data;
    size_t   i;

    l->next_poll = 0;
    for (i = 0; i < NKINDS; i++) {
        if (kinds[i]->wake != NULL) {
            kinds[i]->wake(l->k[i]);
        }
    }
}

static void
on_notify(void *data, const char *channel, const char *payload)
{
    loop_t             *l = data;
    const char *const  *c;
    size_t              i;

    for (i = 0; i < NKINDS; i++) {
        for (c = kinds[i]->channels; c != NULL && *c != NULL; c++) {
            if (strcmp(*c, channel) == 0) {
                if (kinds[i]->notify != NULL) {
                    kinds[i]->notify(l->k[i], channel, payload);
                } else {
                    kinds[i]->wake(l->k[i]);
                }
                break;
            }
        }
    }
}


/* --- the loop ------------------------------------------------------------ */

static int
busy(const loop_t *l)
{
    size_t  i;
    int     n = 0;

    for (i = 0; i < NKINDS; i++) {
        n += kinds[i]->busy(l->k[i]) > 0;
    }
    return n;
}

/* "files 3, bundles 1": what is in flight, for the log. */
static void
in_flight(const loop_t *l, char *buf, size_t size)
{
    size_t  i, len = 0;
    int     n;

    buf[0] = '\0';
    for (i = 0; i < NKINDS && len < size; i++) {
        n = kinds[i]->busy(l->k[i]);
        if (n > 0) {
            len += (size_t) snprintf(buf + len, size - len, "%s%s %d",
                                     len ? ", " : "", kinds[i]->name, n);
        }
    }
    if (buf[0] == '\0') {
        snprintf(buf, size, "nothing");
    }
}

static void
set_tick(loop_t *l, int64_t ms)
{
    struct itimerspec  its, cur;

    if (l->tick_ms == ms) {
        return;
    }
    memset(&its, 0, sizeof(its));
    its.it_interval.tv_sec = ms / 1000;
    its.it_interval.tv_nsec = (ms % 1000) * 1000000;
    its.it_value = its.it_interval;
    /* never push the next tick back: a loop that turns busy and idle
     * more often than a tick would otherwise never tick at all (no
     * lease renewal, no expiry, no query timeout while under load) */
    if (timerfd_gettime(l->tickfd, &cur) == 0
        && (cur.it_value.tv_sec != 0 || cur.it_value.tv_nsec != 0)
        && (cur.it_value.tv_sec < its.it_value.tv_sec
            || (cur.it_value.tv_sec == its.it_value.tv_sec
                && cur.it_value.tv_nsec < its.it_value.tv_nsec)))
    {
        its.it_value = cur.it_value;
    }
    timerfd_settime(l->tickfd, 0, &its, NULL);
    l->tick_ms = ms;
}

static void
begin_shutdown(loop_t *l, const char *sig)
{
    int64_t  now = adl_now_ms();
    char     what[160];

    if (l->env.stopping) {
        adl_log_info(NULL, -1, "%s again: handing back in-flight work now",
                     sig);
        l->stop_at = now;
        return;
    }
    l->env.stopping = 1;
    l->stop_at = now + l->env.settings->shutdown_grace;
    in_flight(l, what, sizeof(what));
    adl_log_info(NULL, -1, "%s: no new claims; in flight: %s; %lld ms to "
                 "finish", sig, what,
                 (long long) l->env.settings->shutdown_grace);
}

static void
on_tick(loop_t *l)
{
    int64_t  now = adl_now_ms();
    size_t   i;
    int      poll = 0;

    adl_db_tick(l->env.db, now);
    if (l->metrics != NULL) {
        adl_metrics_server_tick(l->metrics, now);
    }

    if (!l->env.stopping && now >= l->next_poll
        && adl_db_connected(l->env.db))
    {
        l->next_poll = now + l->env.settings->poll_interval;
        poll = 1;
    }
    for (i = 0; poll && i < NKINDS; i++) {
        if (kinds[i]->wake != NULL) {
            kinds[i]->wake(l->k[i]);
        }
        if (kinds[i]->poll != NULL) {
            kinds[i]->poll(l->k[i], now);
        }
    }
    for (i = 0; i < NKINDS; i++) {
        if (kinds[i]->tick != NULL) {
            kinds[i]->tick(l->k[i], now);
        }
    }

    if (l->env.stopping && !l->handed_back && now >= l->stop_at) {
        l->handed_back = 1;
        for (i = 0; i < NKINDS; i++) {
            if (kinds[i]->hand_back != NULL) {
                kinds[i]->hand_back(l->k[i]);
            }
        }
    }
}

static void
settle(loop_t *l)
{
    int64_t  now = adl_now_ms();
    size_t   i;

    for (i = 0; i < NKINDS; i++) {
        if (kinds[i]->settle != NULL) {
            kinds[i]->settle(l->k[i], now);
        }
    }
}

static int
done_stopping(loop_t *l)
{
    char    what[160];
    size_t  i;
    int     unrecorded = 0;

    if (!l->env.stopping) {
        return 0;
    }
    if (busy(l) == 0
        && (adl_db_idle(l->env.db) || !adl_db_connected(l->env.db)))
    {
        return 1;
    }
    if (adl_now_ms() >= l->stop_at + EXIT_HARD_LIMIT) {
        for (i = 0; i < NKINDS; i++) {
            if (kinds[i]->unrecorded != NULL) {
                unrecorded += kinds[i]->unrecorded(l->k[i]);
            }
        }
        in_flight(l, what, sizeof(what));
        adl_log_warn(NULL, -1, "exiting with work still ending (%s), %d "
                     "transfer(s) not recorded (their leases will run out)",
                     what, unrecorded);
        return 1;
    }
    return 0;
}

static void
on_signal(loop_t *l)
{
    struct signalfd_siginfo  si;

    while (read(l->sigfd, &si, sizeof(si)) == (ssize_t) sizeof(si)) {
        begin_shutdown(l, si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
    }
}

/* The kinds' channels, each once: what the connection LISTENs on. */
static const char *const *
channels(const char **buf, size_t size)
{
    const char *const  *c;
    size_t              i, k, n = 0;

    for (i = 0; i < NKINDS; i++) {
        for (c = kinds[i]->channels; c != NULL && *c != NULL; c++) {
            for (k = 0; k < n && strcmp(buf[k], *c) != 0; k++) {
                /* void */
            }
            if (k == n && n + 1 < size) {
                buf[n++] = *c;
            }
        }
    }
    buf[n] = NULL;
    return buf;
}

static int
add_fd(loop_t *l, int fd, unsigned tag)
{
    struct epoll_event  ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = (uint64_t) tag << 32;
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static int
setup(loop_t *l, const adl_settings_t *s)
{
    adl_db_handlers_t  h;
    sigset_t           mask;
    size_t             i;
    static const char  *channels_buf[MAX_CHANNELS + 1];

    memset(l, 0, sizeof(*l));
    l->env.settings = s;
    l->sigfd = l->tickfd = -1;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        return -1;
    }

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0) {
        return -1;
    }
    l->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    l->tickfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (l->sigfd < 0 || l->tickfd < 0
        || add_fd(l, l->sigfd, TAG_SIGNAL) != 0
        || add_fd(l, l->tickfd, TAG_TICK) != 0)
    {
        return -1;
    }

    l->env.origin = adl_http_create(l->epfd, TAG_ORIGIN, 0);
    l->storage = adl_http_create(l->epfd, TAG_STORAGE, 0);
    if (l->env.origin == NULL || l->storage == NULL) {
        return -1;
    }
    l->env.s3 = adl_s3_create(s, l->storage);
    if (l->env.s3 == NULL) {
        return -1;
    }

    h.channels = channels(channels_buf, MAX_CHANNELS + 1);
    h.connected = on_connected;
    h.notify = on_notify;
    h.data = l;
    l->env.db = adl_db_create(s, l->epfd, (uint64_t) TAG_DB << 32, &h);
    if (l->env.db == NULL) {
        return -1;
    }

    for (i = 0; i < NKINDS; i++) {
        l->k[i] = kinds[i]->create(&l->env);
        if (l->k[i] == NULL) {
            return -1;
        }
    }
    if (s->metrics_listen != NULL && s->metrics_listen[0] != '\0') {
        l->metrics = adl_metrics_server_create(s->metrics_listen, l->epfd,
                                               TAG_METRICS);
        if (l->metrics == NULL) {
            return -1;
        }
    }
    set_tick(l, TICK_IDLE);
    return 0;
}

static void
teardown(loop_t *l)
{
    size_t  i;

    for (i = 0; i < NKINDS; i++) {
        if (l->k[i] != NULL) {
            kinds[i]->destroy(l->k[i]);
        }
    }
    adl_metrics_server_destroy(l->metrics);
    adl_db_destroy(l->env.db);
    adl_s3_destroy(l->env.s3);
    adl_http_destroy(l->env.origin);
    adl_http_destroy(l->storage);
    if (l->sigfd >= 0) {
        close(l->sigfd);
    }
    if (l->tickfd >= 0) {
        close(l->tickfd);
    }
    if (l->epfd >= 0) {
        close(l->epfd);
    }
}

int
adl_worker_run(const adl_settings_t *s)
{
    loop_t              l;
    struct epoll_event  evs[64];
    uint64_t            u;
    ssize_t             rd;
    int                 i, n, rc = 0;

    srandom((unsigned) (time(NULL) ^ getpid()));

    if (setup(&l, s) != 0) {
        adl_log_error(NULL, -1, "cannot set up the event loop: %s",
                      strerror(errno));
        teardown(&l);
        return -1;
    }
    adl_log_info(NULL, -1, "worker %s started: concurrency %lld, part size "
                 "%lld, storage %s bucket %s", s->worker_id,
                 (long long) s->concurrency, (long long) s->part_size,
                 s->s3_endpoint, s->s3_bucket);
    adl_db_tick(l.env.db, adl_now_ms());

    for ( ;; ) {
        n = epoll_wait(l.epfd, evs, 64, -1);
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
            case TAG_SIGNAL:
                on_signal(&l);
                break;
            case TAG_TICK:
                rd = read(l.tickfd, &u, sizeof(u));
                (void) rd;
                on_tick(&l);
                break;
            case TAG_DB:
                adl_db_event(l.env.db, evs[i].events);
                break;
            case TAG_ORIGIN:
                adl_http_socket_event(l.env.origin, fd, evs[i].events);
                break;
            case TAG_ORIGIN + 1:
                adl_http_timer_event(l.env.origin);
                break;
            case TAG_STORAGE:
                adl_http_socket_event(l.storage, fd, evs[i].events);
                break;
            case TAG_STORAGE + 1:
                adl_http_timer_event(l.storage);
                break;
            case TAG_METRICS:
                adl_metrics_server_event(l.metrics, fd, evs[i].events);
                break;
            }
        }

        settle(&l);
        set_tick(&l, busy(&l) > 0 || l.env.stopping ? TICK_BUSY : TICK_IDLE);

        if (done_stopping(&l)) {
            adl_log_info(NULL, -1, "stopped");
            break;
        }
    }

    teardown(&l);
    return rc;
}
