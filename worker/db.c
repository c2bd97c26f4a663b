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
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "db.h"
#include "log.h"
#include "worker.h"

/* A query unanswered for half a lease means a dead or stuck connection
 * (leases would be lost anyway); a third of a lease of silence gets a
 * SELECT 1, so a half-open connection is found within about a lease. */
#define DB_QUERY_TIMEOUT(s)  ((s)->lease / 2)
#define DB_IDLE_CHECK(s)     ((s)->lease / 3)
#define DB_BACKOFF_MIN      100
#define DB_BACKOFF_MAX      5000

typedef enum {
    DB_DOWN = 0,
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
    char              *sql;
    char              *params[];
};

struct adl_db_s {
    const adl_settings_t  *settings;
    adl_db_handlers_t      h;
    int                    epfd;

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

static PGconn *
connect_start(const adl_settings_t *s, int blocking)
{
    const char  *kw[NKW + 2], *val[NKW + 2];
    size_t       i;

    for (i = 0; i < NKW; i++) {
        kw[i] = kw_defaults[i][0];
        val[i] = kw_defaults[i][1];
    }
    if (blocking) {
        val[0] = "async-dl-worker migrate";     /* start-up only */
    }
    /* last, so that what the URL sets wins over the defaults above */
    kw[NKW] = "dbname";
    val[NKW] = s->database_url;
    kw[NKW + 1] = NULL;
    val[NKW + 1] = NULL;

    return blocking ? PQconnectdbParams(kw, val, 1)
                    : PQconnectStartParams(kw, val, 1);
}

PGconn *
adl_db_connect_blocking(const adl_settings_t *s)
{
    PGconn  *conn = connect_start(s, 1);

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
    ev.data.u64 = ADL_EV_DB;
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

int
adl_db_query(adl_db_t *db, const char *sql, int nparams,
    const char *const *params, adl_db_result_pt cb, void *data)
{
    query_t  *q = query_new(sql, nparams, params);

    if (q == NULL) {
        adl_log_error(NULL, -1, "database: out of memory queuing a query");
        return -1;
    }
    q->cb = cb;
    q->data = data;
    enqueue(db, q, 0);
    db_send_next(db);
    return 0;
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

static void
db_send_next(adl_db_t *db)
{
    query_t  *q;
    int       rc;

    if (db->state != DB_READY || db->running != NULL || db->head == NULL) {
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
    if (!rc) {
        db_fail(db, PQerrorMessage(db->conn));
        return;
    }

    rc = PQflush(db->conn);
    if (rc < 0) {
        db_fail(db, PQerrorMessage(db->conn));
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

    watch(db, -1, 0);
    if (db->conn != NULL) {
        PQfinish(db->conn);
        db->conn = NULL;
    }
    db->state = DB_DOWN;
    db->listening = 0;
    PQclear(db->result);
    db->result = NULL;

    /* drop our own queries; those of the worker wait for the next
     * connection, except the one that was running: it learns of the
     * failure */
    q = db->running;
    db->running = NULL;
    if (q != NULL) {
        q->cb(q->data, NULL);
        query_free(q);
    }
    {
        query_t  **pp = &db->head;

        db->tail = NULL;
        while (*pp != NULL) {
            q = *pp;
            if (q->internal) {
                *pp = q->next;
                query_free(q);
                continue;
            }
            db->tail = q;
            pp = &q->next;
        }
    }

    db->backoff = db->backoff == 0 ? DB_BACKOFF_MIN
                  : db->backoff * 2 > DB_BACKOFF_MAX ? DB_BACKOFF_MAX
                  : db->backoff * 2;
    db->retry_at = now + db->backoff / 2 + rand() % (db->backoff / 2 + 1);
}

static void
db_connect_poll(adl_db_t *db)
{
    PostgresPollingStatusType  st = PQconnectPoll(db->conn);

    switch (st) {
    case PGRES_POLLING_READING:
        watch(db, PQsocket(db->conn), EPOLLIN);
        return;
    case PGRES_POLLING_WRITING:
        watch(db, PQsocket(db->conn), EPOLLOUT);
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
    if (queue_internal(db, "LISTEN async_dl_jobs; LISTEN async_dl_cancel; "
                       "LISTEN async_dl_deleted; "
                       "LISTEN async_dl_lifecycle",
                       1) != 0)
    {
        db_fail(db, "out of memory");
        return;
    }
    db_send_next(db);
}

static void
db_connect(adl_db_t *db)
{
    db->conn = connect_start(db->settings, 0);
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
    watch(db, PQsocket(db->conn), EPOLLOUT);
}

void
adl_db_event(adl_db_t *db, uint32_t events)
{
    int  rc;

    switch (db->state) {
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
    switch (db->state) {
    case DB_DOWN:
        if (now >= db->retry_at) {
            db_connect(db);
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

int
adl_db_idle(const adl_db_t *db)
{
    return db->running == NULL && db->head == NULL;
}

adl_db_t *
adl_db_create(const adl_settings_t *s, int epfd, const adl_db_handlers_t *h)
{
    adl_db_t  *db = calloc(1, sizeof(adl_db_t));

    if (db == NULL) {
        return NULL;
    }
    db->settings = s;
    db->epfd = epfd;
    db->h = *h;
    db->fd = -1;
    db->state = DB_DOWN;
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
    free(db);
}
