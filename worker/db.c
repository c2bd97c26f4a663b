/*
 * db: one non-blocking libpq connection in the worker's epoll loop.
 *
 * States: DOWN (waiting to reconnect) -> CONNECTING (PQconnectPoll) ->
 * READY.  LISTEN is the first query of every new connection; only once it
 * answered is `connected` reported.  Queries run one at a time from a
 * FIFO; the one running when the connection fails is answered with NULL
 * (it may or may not have been applied: the worker's state functions are
 * safe to call again), queued ones wait for the next connection.
 *
 * A half-open connection is found by TCP keepalives and tcp_user_timeout
 * (added to the user's conninfo unless it sets them), by a time limit on
 * every query, and by a "SELECT 1" when the connection was quiet for a
 * while.
 *
 * Host names are never looked up on the loop: DOWN -> RESOLVING while
 * pghosts.c looks the names of the host list up on threads (it tells
 * through an eventfd); libpq then gets the lists pghosts.c makes, which
 * connect without a lookup.  A lookup that fails or takes longer than the
 * connect timeout fails like a connection: with backoff.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "clock.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "pghosts.h"

/* A query unanswered for half a lease means a dead or stuck connection
 * (leases would be lost anyway); a third of a lease of silence gets a
 * SELECT 1, so a half-open connection is found within about a lease. */
#define DB_QUERY_TIMEOUT(s)  ((s)->lease / 2)
#define DB_IDLE_CHECK(s)     ((s)->lease / 3)
#define DB_BACKOFF_MIN      100
#define DB_BACKOFF_MAX      5000

typedef enum {
    DB_DOWN = 0,
    DB_RESOLVING,
    DB_CONNECTING,
    DB_READY
} db_state_t;

typedef struct query_s  query_t;

struct query_s {
    query_t           *next;
    adl_db_result_pt   cb;
    void              *data;
    int                nparams;
    int                internal;     /* LISTEN, SELECT 1: ours */
    int                live;         /* answered NULL, not kept, when the
                                        connection fails before it ran */
    char              *sql;
    char              *params[];
};

struct adl_db_s {
    const adl_settings_t  *settings;
    adl_db_handlers_t      h;
    int                    epfd;
    uint64_t               ev_tag;       /* epoll data of its socket */

    db_state_t             state;
    PGconn                *conn;
    int                    fd;           /* registered in epfd, or -1 */
    uint32_t               events;       /* what fd is watched for */

    query_t               *head, *tail;  /* queued, not sent */
    query_t               *running;
    PGresult              *result;       /* of the running query */
    int                    listening;    /* LISTEN answered */

    int64_t                since;        /* connect start, query sent */
    int64_t                last_io;
    int64_t                retry_at;
    int                    backoff;
    uint64_t               session;      /* connections lost so far */
    char                   fail_why[256];  /* failed sending: db_fail
                                              from the loop, not the
                                              caller of adl_db_query */

    adl_pghosts_t         *hosts;        /* where to connect */
    char                  *listen;       /* "LISTEN a; LISTEN b", or NULL */
};

static void db_fail(adl_db_t *db, const char *why);
static void db_send_next(adl_db_t *db);

static const char  *kw_defaults[][2] = {
    { "application_name", "async-dl-worker" },
    { "connect_timeout", "10" },
    { "keepalives", "1" },
    { "keepalives_idle", "10" },
    { "keepalives_interval", "5" },
    { "keepalives_count", "3" },
    { "tcp_user_timeout", "15000" },
};

#define NKW  (sizeof(kw_defaults) / sizeof(kw_defaults[0]))

/* host, hostaddr, port: lists that replace those of the URL, or NULL. */
static PGconn *
connect_start(const adl_settings_t *s, int blocking, const char *host,
    const char *hostaddr, const char *port)
{
    const char  *kw[NKW + 5], *val[NKW + 5];
    size_t       i, n;

    for (i = 0; i < NKW; i++) {
        kw[i] = kw_defaults[i][0];
        val[i] = kw_defaults[i][1];
    }
    if (blocking) {
        val[0] = "async-dl-worker migrate";     /* start-up only */
    }
    /* after the defaults, so that what the URL sets wins over them */
    n = NKW;
    kw[n] = "dbname";
    val[n++] = s->database_url;
    /* after the URL: the looked-up host list replaces its own */
    if (host != NULL) {
        kw[n] = "host";
        val[n++] = host;
        kw[n] = "hostaddr";
        val[n++] = hostaddr;
        if (port != NULL) {
            kw[n] = "port";
            val[n++] = port;
        }
    }
    kw[n] = NULL;
    val[n] = NULL;

    return blocking ? PQconnectdbParams(kw, val, 1)
                    : PQconnectStartParams(kw, val, 1);
}

PGconn *
adl_db_connect_blocking(const adl_settings_t *s)
{
    PGconn  *conn = connect_start(s, 1, NULL, NULL, NULL);

    if (conn == NULL) {
        adl_log_error(NULL, -1, "database: out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        adl_log_error(NULL, -1, "database: cannot connect: %s",
                      PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    return conn;
}


/* --- the socket in epoll ---------------------------------------------- */

static int
watch(adl_db_t *db, int fd, uint32_t events)
{
    struct epoll_event  ev;

    if (fd != db->fd && db->fd >= 0) {
        epoll_ctl(db->epfd, EPOLL_CTL_DEL, db->fd, NULL);
        db->fd = -1;
    }
    if (fd < 0) {
        return 0;
    }
    if (fd == db->fd && events == db->events) {
        return 0;
    }
    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = db->ev_tag;
    if (epoll_ctl(db->epfd, fd == db->fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD,
                  fd, &ev) != 0)
    {
        adl_log_error(NULL, -1, "database: epoll_ctl: %s", strerror(errno));
        return -1;
    }
    db->fd = fd;
    db->events = events;
    return 0;
}


/* --- queries ---------------------------------------------------------- */

static query_t *
query_new(const char *sql, int nparams, const char *const *params)
{
    size_t    size = sizeof(query_t) + (size_t) nparams * sizeof(char *);
    query_t  *q;
    int       i;

    q = calloc(1, size);
    if (q == NULL) {
        return NULL;
    }
    q->nparams = nparams;
    q->sql = strdup(sql);
    if (q->sql == NULL) {
        free(q);
        return NULL;
    }
    for (i = 0; i < nparams; i++) {
        if (params[i] == NULL) {
            continue;                   /* SQL NULL */
        }
        q->params[i] = strdup(params[i]);
        if (q->params[i] == NULL) {
            while (i-- > 0) {
                free(q->params[i]);
            }
            free(q->sql);
            free(q);
            return NULL;
        }
    }
    return q;
}

static void
query_free(query_t *q)
{
    int  i;

    for (i = 0; i < q->nparams; i++) {
        free(q->params[i]);
    }
    free(q->sql);
    free(q);
}

static void
enqueue(adl_db_t *db, query_t *q, int front)
{
    if (front) {
        q->next = db->head;
        db->head = q;
        if (db->tail == NULL) {
            db->tail = q;
        }
        return;
    }
    q->next = NULL;
    if (db->tail != NULL) {
        db->tail->next = q;
    } else {
        db->head = q;
    }
    db->tail = q;
}

static int
query_add(adl_db_t *db, const char *sql, int nparams,
    const char *const *params, adl_db_result_pt cb, void *data, int live)
{
    query_t  *q = query_new(sql, nparams, params);

    if (q == NULL) {
        adl_log_error(NULL, -1, "database: out of memory queuing a query");
        return -1;
    }
    q->cb = cb;
    q->data = data;
    q->live = live;
    enqueue(db, q, 0);
    db_send_next(db);
    return 0;
}

int
adl_db_query(adl_db_t *db, const char *sql, int nparams,
    const char *const *params, adl_db_result_pt cb, void *data)
{
    return query_add(db, sql, nparams, params, cb, data, 0);
}

int
adl_db_query_live(adl_db_t *db, const char *sql, int nparams,
    const char *const *params, adl_db_result_pt cb, void *data)
{
    return query_add(db, sql, nparams, params, cb, data, 1);
}

static void
internal_result(void *data, PGresult *res)
{
    adl_db_t  *db = data;

    if (res == NULL) {
        return;
    }
    if (PQresultStatus(res) != PGRES_COMMAND_OK
        && PQresultStatus(res) != PGRES_TUPLES_OK)
    {
        adl_log_error(NULL, -1, "database: %s", PQresultErrorMessage(res));
        return;
    }
    if (!db->listening) {
        db->listening = 1;
        db->backoff = 0;
        adl_log_info(NULL, -1, "database: connected, listening");
        db->h.connected(db->h.data);
    }
}

static int
queue_internal(adl_db_t *db, const char *sql, int front)
{
    query_t  *q = query_new(sql, 0, NULL);

    if (q == NULL) {
        return -1;
    }
    q->cb = internal_result;
    q->data = db;
    q->internal = 1;
    enqueue(db, q, front);
    return 0;
}

/* Sending failed: the connection is given up from the loop (the next
 * event or tick), never inside db_send_next's caller, which may be
 * adl_db_query's: a callback run from there (NULL, connection lost) would
 * run before its caller had noted the query as sent. */
static void
fail_soon(adl_db_t *db, const char *why)
{
    snprintf(db->fail_why, sizeof(db->fail_why), "%s",
             why[0] != '\0' ? why : "sending a query failed");
    if (db->fd >= 0) {
        watch(db, db->fd, EPOLLIN | EPOLLOUT);      /* wakes the loop */
    }
}

static void
db_send_next(adl_db_t *db)
{
    query_t  *q;
    int       rc;

    if (db->state != DB_READY || db->running != NULL || db->head == NULL
        || db->fail_why[0] != '\0')
    {
        return;
    }
    q = db->head;
    db->head = q->next;
    if (db->head == NULL) {
        db->tail = NULL;
    }
    q->next = NULL;
    db->running = q;
    db->since = adl_now_ms();

    if (q->nparams == 0 && q->internal) {
        rc = PQsendQuery(db->conn, q->sql);     /* may be several */
    } else {
        rc = PQsendQueryParams(db->conn, q->sql, q->nparams, NULL,
                               (const char *const *) q->params, NULL, NULL,
                               0);
    }
    if (rc) {
        rc = PQflush(db->conn);
    } else {
        rc = -1;
    }
    if (rc < 0) {
        fail_soon(db, PQerrorMessage(db->conn));
        return;
    }
    watch(db, db->fd, EPOLLIN | (rc == 1 ? EPOLLOUT : 0));
}

/* Reads what arrived: results of the running query, notifications. */
static void
db_read(adl_db_t *db)
{
    PGnotify  *n;
    PGresult  *res;
    query_t   *q;

    if (!PQconsumeInput(db->conn)) {
        db_fail(db, PQerrorMessage(db->conn));
        return;
    }
    db->last_io = adl_now_ms();

    while (db->running != NULL && !PQisBusy(db->conn)) {
        res = PQgetResult(db->conn);
        if (res != NULL) {
            /* several statements (LISTEN; LISTEN): keep the first error,
             * else the last result */
            if (db->result == NULL
                || PQresultStatus(db->result) == PGRES_COMMAND_OK
                || PQresultStatus(db->result) == PGRES_TUPLES_OK)
            {
                PQclear(db->result);
                db->result = res;
            } else {
                PQclear(res);
            }
            continue;
        }
        q = db->running;
        db->running = NULL;
        res = db->result;
        db->result = NULL;
        q->cb(q->data, res);
        PQclear(res);
        query_free(q);
        if (db->state != DB_READY) {
            return;                     /* the callback gave up on us */
        }
        db_send_next(db);
    }

    while ((n = PQnotifies(db->conn)) != NULL) {
        db->h.notify(db->h.data, n->relname, n->extra);
        PQfreemem(n);
    }

    if (db->state == DB_READY && PQstatus(db->conn) == CONNECTION_BAD) {
        db_fail(db, PQerrorMessage(db->conn));
    }
}


/* --- the connection ----------------------------------------------------- */

static void
db_fail(adl_db_t *db, const char *why)
{
    query_t  *q;
    int64_t   now = adl_now_ms();
    size_t    len = strlen(why);

    while (len > 0 && (why[len - 1] == '\n' || why[len - 1] == ' ')) {
        len--;
    }
    adl_log_error(NULL, -1, "database: connection lost: %.*s", (int) len,
                  why);
    db->fail_why[0] = '\0';

    if (db->state == DB_READY) {
        adl_metrics.db_reconnects++;    /* a connection lost */
    }
    db->session++;                  /* its session state is gone */
    watch(db, -1, 0);
    adl_pghosts_lookup_cancel(db->hosts);
    if (db->conn != NULL) {
        PQfinish(db->conn);
        db->conn = NULL;
    }
    db->state = DB_DOWN;
    db->listening = 0;
    PQclear(db->result);
    db->result = NULL;

    /* drop our own queries; those of the worker wait for the next
     * connection, except the one that was running and the live ones:
     * they learn of the failure */
    {
        query_t  **pp = &db->head, *gone = NULL, **gp = &gone;

        db->tail = NULL;
        while (*pp != NULL) {
            q = *pp;
            if (q->internal || q->live) {
                *pp = q->next;
                q->next = NULL;
                if (q->internal) {
                    query_free(q);
                } else {
                    *gp = q;
                    gp = &q->next;
                }
                continue;
            }
            db->tail = q;
            pp = &q->next;
        }

        /* the callbacks last: they may queue queries again */
        q = db->running;
        db->running = NULL;
        if (q != NULL) {
            q->next = gone;
            gone = q;
        }
        while (gone != NULL) {
            q = gone;
            gone = q->next;
            q->cb(q->data, NULL);
            query_free(q);
        }
    }

    db->backoff = db->backoff == 0 ? DB_BACKOFF_MIN
                  : db->backoff * 2 > DB_BACKOFF_MAX ? DB_BACKOFF_MAX
                  : db->backoff * 2;
    db->retry_at = now + db->backoff / 2 + rand() % (db->backoff / 2 + 1);
}

/* While connecting, libpq may close its socket and open another (the next
 * address or host), which can get the same number: closing took the old
 * one out of epoll, so the socket is registered anew every time. */
static void
watch_connecting(adl_db_t *db, uint32_t events)
{
    if (db->fd >= 0) {
        epoll_ctl(db->epfd, EPOLL_CTL_DEL, db->fd, NULL);
        db->fd = -1;
    }
    if (watch(db, PQsocket(db->conn), events) != 0) {
        db_fail(db, "cannot watch the socket");
    }
}

static void
db_connect_poll(adl_db_t *db)
{
    PostgresPollingStatusType  st = PQconnectPoll(db->conn);

    switch (st) {
    case PGRES_POLLING_READING:
        watch_connecting(db, EPOLLIN);
        return;
    case PGRES_POLLING_WRITING:
        watch_connecting(db, EPOLLOUT);
        return;
    case PGRES_POLLING_FAILED:
        db_fail(db, PQerrorMessage(db->conn));
        return;
    default:
        break;
    }

    /* PGRES_POLLING_OK */
    if (PQsetnonblocking(db->conn, 1) != 0) {
        db_fail(db, PQerrorMessage(db->conn));
        return;
    }
    db->state = DB_READY;
    db->last_io = adl_now_ms();
    watch(db, PQsocket(db->conn), EPOLLIN);
    if (db->listen != NULL && queue_internal(db, db->listen, 1) != 0) {
        db_fail(db, "out of memory");
        return;
    }
    db_send_next(db);
}

/* Connects to the host lists given (NULL: the URL's own). */
static void
db_connect_to(adl_db_t *db, const char *host, const char *hostaddr,
    const char *port)
{
    db->conn = connect_start(db->settings, 0, host, hostaddr, port);
    if (db->conn == NULL) {
        db_fail(db, "out of memory");
        return;
    }
    if (PQstatus(db->conn) == CONNECTION_BAD) {
        db_fail(db, PQerrorMessage(db->conn));
        return;
    }
    db->state = DB_CONNECTING;
    db->since = adl_now_ms();
    watch_connecting(db, EPOLLOUT);
}

/* Connects to the hosts' lists, with the addresses looked up by now. */
static void
db_connect_lists(adl_db_t *db)
{
    adl_pghosts_lists_t  l;

    switch (adl_pghosts_lists(db->hosts, &l)) {
    case 0:
        db_connect_to(db, l.host, l.hostaddr, l.port);
        free(l.host);
        free(l.hostaddr);
        free(l.port);
        return;
    default:
        db_fail(db, l.why);
        return;
    }
}

static void
db_connect(adl_db_t *db)
{
    int  efd;

    if (adl_pghosts_plain(db->hosts)) {
        db_connect_to(db, NULL, NULL, NULL);
        return;
    }
    if (!adl_pghosts_need_lookup(db->hosts)) {
        db_connect_lists(db);
        return;
    }
    efd = adl_pghosts_lookup_start(db->hosts);
    if (efd < 0) {
        db_fail(db, "cannot start the host name lookup");
        return;
    }
    db->state = DB_RESOLVING;
    db->since = adl_now_ms();
    if (watch(db, efd, EPOLLIN) != 0) {
        adl_pghosts_lookup_cancel(db->hosts);
        db->state = DB_DOWN;
        db_fail(db, "cannot watch the host name lookup");
    }
}

/* All names looked up, or time is up: connect to what was found. */
static void
db_lookup_end(adl_db_t *db, int timed_out)
{
    if (!timed_out && !adl_pghosts_lookup_ready(db->hosts)) {
        return;                     /* not yet */
    }
    watch(db, -1, 0);
    db->state = DB_DOWN;
    db_connect_lists(db);
}

void
adl_db_event(adl_db_t *db, uint32_t events)
{
    int  rc;

    if (db->fail_why[0] != '\0') {
        db_fail(db, db->fail_why);
        return;
    }
    switch (db->state) {
    case DB_RESOLVING:
        db_lookup_end(db, 0);
        return;

    case DB_CONNECTING:
        db_connect_poll(db);
        return;

    case DB_READY:
        if (events & EPOLLOUT) {
            rc = PQflush(db->conn);
            if (rc < 0) {
                db_fail(db, PQerrorMessage(db->conn));
                return;
            }
            if (rc == 0) {
                watch(db, db->fd, EPOLLIN);
            }
        }
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            db_read(db);
        }
        return;

    default:
        return;
    }
}

void
adl_db_tick(adl_db_t *db, int64_t now)
{
    if (db->fail_why[0] != '\0') {
        db_fail(db, db->fail_why);
        return;
    }
    switch (db->state) {
    case DB_DOWN:
        if (now >= db->retry_at) {
            db_connect(db);
        }
        return;

    case DB_RESOLVING:
        if (now - db->since > db->settings->connect_timeout) {
            db_lookup_end(db, 1);   /* with the names found so far */
        }
        return;

    case DB_CONNECTING:
        if (now - db->since > db->settings->connect_timeout) {
            db_fail(db, "connect timed out");
        }
        return;

    case DB_READY:
        if (db->running != NULL
            && now - db->since > DB_QUERY_TIMEOUT(db->settings))
        {
            db_fail(db, "no answer to a query in time");
            return;
        }
        if (db->running == NULL && db->head == NULL
            && now - db->last_io > DB_IDLE_CHECK(db->settings))
        {
            db->last_io = now;
            if (queue_internal(db, "SELECT 1", 0) == 0) {
                db_send_next(db);
            }
        }
        return;
    }
}

int
adl_db_connected(const adl_db_t *db)
{
    return db->state == DB_READY && db->listening;
}

uint64_t
adl_db_session(const adl_db_t *db)
{
    return db->session;
}

int
adl_db_idle(const adl_db_t *db)
{
    return db->running == NULL && db->head == NULL;
}

/* "LISTEN a; LISTEN b": the first query of every connection. */
static int
listen_build(adl_db_t *db, const char *const *channels)
{
    const char *const  *c;
    size_t              len = 0;
    char               *p;

    for (c = channels; c != NULL && *c != NULL; c++) {
        len += strlen(*c) + sizeof("LISTEN ; ");
    }
    if (len == 0) {
        return 0;
    }
    db->listen = malloc(len);
    if (db->listen == NULL) {
        return -1;
    }
    p = db->listen;
    for (c = channels; *c != NULL; c++) {
        p += sprintf(p, "%sLISTEN %s", p == db->listen ? "" : "; ", *c);
    }
    return 0;
}

adl_db_t *
adl_db_create(const adl_settings_t *s, int epfd, uint64_t ev_tag,
    const adl_db_handlers_t *h)
{
    adl_db_t  *db = calloc(1, sizeof(adl_db_t));

    if (db == NULL) {
        return NULL;
    }
    db->settings = s;
    db->epfd = epfd;
    db->ev_tag = ev_tag;
    db->h = *h;
    db->fd = -1;
    db->state = DB_DOWN;
    db->hosts = adl_pghosts_create(s->database_url);
    if (db->hosts == NULL || listen_build(db, h->channels) != 0) {
        adl_pghosts_destroy(db->hosts);
    free(db->listen);
        free(db);
        return NULL;
    }
    return db;
}

void
adl_db_destroy(adl_db_t *db)
{
    query_t  *q;

    if (db == NULL) {
        return;
    }
    watch(db, -1, 0);
    adl_pghosts_lookup_cancel(db->hosts);
    if (db->conn != NULL) {
        PQfinish(db->conn);
    }
    PQclear(db->result);
    if (db->running != NULL) {
        query_free(db->running);
    }
    while ((q = db->head) != NULL) {
        db->head = q->next;
        query_free(q);
    }
    adl_pghosts_destroy(db->hosts);
    free(db->listen);
    free(db);
}
