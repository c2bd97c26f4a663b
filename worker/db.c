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
 * Host names are never looked up on the loop (libpq's PQconnectPoll would
 * call getaddrinfo() there, for each host it tries): DOWN -> RESOLVING
 * runs getaddrinfo() on a thread of its own for the names of the host
 * list, which tells the loop through an eventfd; libpq then gets host=
 * (the names, for TLS, .pgpass and messages) with hostaddr= (one entry per
 * address found), so it connects without a lookup.  Socket paths, IP
 * literals and given hostaddr entries need no lookup.  A lookup that fails
 * or takes longer than the connect timeout fails like a connection: with
 * backoff.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

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
    DB_RESOLVING,
    DB_CONNECTING,
    DB_READY
} db_state_t;

/* One entry of the host list. */
typedef struct {
    char  *host;         /* as given: a name, a socket path, "" */
    char  *hostaddr;     /* given, or the literal host; NULL: look up */
    char  *port;         /* this host's own port, or NULL */
} target_t;

/*
 * A lookup: one thread per name, at once (one slow name does not hold the
 * others back).  Shared by the loop and the threads, each holding a
 * reference; the last one to let go frees it (the loop may give up on a
 * lookup still running: its threads then finish alone).  A thread takes
 * the next name, writes its slot, then marks it done under the lock; the
 * last one signals efd.
 */
typedef struct {
    pthread_mutex_t   lock;
    int               refs;
    int               efd;
    size_t            n;         /* names */
    size_t            next;      /* the next name a thread takes */
    size_t            ndone;
    char            **names;
    char            **addrs;     /* out: "a,b,..." per name, or NULL */
    int              *gai;       /* out: getaddrinfo()'s error */
    int              *sys;       /* out: errno for EAI_SYSTEM */
    unsigned char    *done;
} lookup_t;

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

    /* where to connect; NULL targets: the URL as it is (no lookup) */
    target_t              *targets;
    size_t                 ntargets;
    char                  *port;         /* every target's, or NULL */
    int                    lookups;      /* some targets need one */
    lookup_t              *lookup;       /* running */
};

static void db_fail(adl_db_t *db, const char *why);
static void db_send_next(adl_db_t *db);
static void db_connect_targets(adl_db_t *db, lookup_t *l);
static void lookup_cancel(adl_db_t *db);

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


/* --- where to connect: the host list, looked up off the loop ----------- */

typedef struct {
    char    *data;
    size_t   len;
    size_t   cap;
} sbuf_t;

/* Appends item n of a comma-separated list: -1 when out of memory. */
static int
sbuf_item(sbuf_t *b, size_t n, const char *s, size_t len)
{
    size_t   need = b->len + len + 2, cap;
    char    *p;

    if (need > b->cap) {
        cap = b->cap ? b->cap : 64;
        while (cap < need) {
            cap *= 2;
        }
        p = realloc(b->data, cap);
        if (p == NULL) {
            return -1;
        }
        b->data = p;
        b->cap = cap;
    }
    if (n > 0) {
        b->data[b->len++] = ',';
    }
    memcpy(b->data + b->len, s, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

/* Splits a comma-separated list (as libpq does) into *out (n items). */
static int
split_list(const char *list, char ***out, size_t *n)
{
    const char  *p, *end;
    size_t       k = 1, i = 0;
    char       **v;

    for (p = list; *p != '\0'; p++) {
        k += *p == ',';
    }
    v = calloc(k, sizeof(char *));
    if (v == NULL) {
        return -1;
    }
    for (p = list; i < k; p = end + 1) {
        end = p + strcspn(p, ",");
        v[i] = strndup(p, (size_t) (end - p));
        if (v[i] == NULL) {
            while (i-- > 0) {
                free(v[i]);
            }
            free(v);
            return -1;
        }
        i++;
    }
    *out = v;
    *n = k;
    return 0;
}

static void
free_list(char **v, size_t n)
{
    size_t  i;

    if (v == NULL) {
        return;
    }
    for (i = 0; i < n; i++) {
        free(v[i]);
    }
    free(v);
}

static void
targets_free(adl_db_t *db)
{
    size_t  i;

    for (i = 0; i < db->ntargets; i++) {
        free(db->targets[i].host);
        free(db->targets[i].hostaddr);
        free(db->targets[i].port);
    }
    free(db->targets);
    free(db->port);
    db->targets = NULL;
    db->ntargets = 0;
    db->port = NULL;
    db->lookups = 0;
}

static int
is_ip_literal(const char *host)
{
    unsigned char  buf[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, host, buf) == 1
           || inet_pton(AF_INET6, host, buf) == 1;
}

static const char *
conninfo_value(const PQconninfoOption *o, const char *kw)
{
    for (; o != NULL && o->keyword != NULL; o++) {
        if (strcmp(o->keyword, kw) == 0) {
            return o->val != NULL && o->val[0] != '\0' ? o->val : NULL;
        }
    }
    return NULL;
}

/*
 * The host list of the URL (or of PGHOST, PGHOSTADDR, PGPORT, which libpq
 * reads when the URL has none), as targets: 0, or -1 when out of memory.
 * No targets (the URL used as it is): no host list (libpq's default socket),
 * a service file (which may name the host: libpq then looks it up itself).
 */
static int
targets_build(adl_db_t *db)
{
    PQconninfoOption  *opts;
    const char        *host, *hostaddr, *port, *service;
    char              *err = NULL, **hosts = NULL, **addrs = NULL;
    char             **ports = NULL;
    size_t             nhosts = 0, naddrs = 0, nports = 0, i;
    int                rc = -1;

    /* a plain database name is no conninfo: the rest from the environment */
    opts = PQconninfoParse(db->settings->database_url, &err);
    if (opts == NULL && err == NULL) {
        return -1;
    }
    PQfreemem(err);
    host = conninfo_value(opts, "host");
    hostaddr = conninfo_value(opts, "hostaddr");
    port = conninfo_value(opts, "port");
    service = conninfo_value(opts, "service");
    if (service == NULL && host == NULL && hostaddr == NULL) {
        service = getenv("PGSERVICE");
    }
    if (service != NULL && host == NULL && hostaddr == NULL) {
        adl_log_warn(NULL, -1, "database: the host comes from the service "
                     "file: libpq looks its name up itself, on the event "
                     "loop, when it connects");
        PQconninfoFree(opts);
        return 0;
    }
    if (host == NULL) {
        host = getenv("PGHOST");
        if (hostaddr == NULL) {
            hostaddr = getenv("PGHOSTADDR");
        }
    }
    if (port == NULL) {
        port = getenv("PGPORT");
    }
    if (host == NULL || host[0] == '\0') {
        PQconninfoFree(opts);
        return 0;
    }

    if (split_list(host, &hosts, &nhosts) != 0
        || (hostaddr != NULL && hostaddr[0] != '\0'
            && split_list(hostaddr, &addrs, &naddrs) != 0)
        || (port != NULL && port[0] != '\0'
            && split_list(port, &ports, &nports) != 0))
    {
        goto done;
    }
    if ((addrs != NULL && naddrs != nhosts)
        || (ports != NULL && nports != 1 && nports != nhosts))
    {
        rc = 0;                     /* libpq says what is wrong */
        goto done;
    }

    db->targets = calloc(nhosts, sizeof(target_t));
    if (db->targets == NULL) {
        goto done;
    }
    db->ntargets = nhosts;
    if (ports != NULL && nports == 1) {
        db->port = strdup(ports[0]);
        if (db->port == NULL) {
            goto done;
        }
    }
    for (i = 0; i < nhosts; i++) {
        target_t  *t = &db->targets[i];

        t->host = strdup(hosts[i]);
        if (t->host == NULL) {
            goto done;
        }
        if (ports != NULL && nports > 1) {
            t->port = strdup(ports[i]);
            if (t->port == NULL) {
                goto done;
            }
        }
        if (addrs != NULL && addrs[i][0] != '\0') {
            t->hostaddr = strdup(addrs[i]);             /* given */
        } else if (hosts[i][0] == '\0' || hosts[i][0] == '/'
                   || hosts[i][0] == '@')
        {
            t->hostaddr = strdup("");                   /* a socket */
        } else if (is_ip_literal(hosts[i])) {
            t->hostaddr = strdup(hosts[i]);
        } else {
            db->lookups = 1;                            /* a name */
            continue;
        }
        if (t->hostaddr == NULL) {
            goto done;
        }
    }
    rc = 0;

done:
    if (rc != 0) {
        targets_free(db);
    }
    free_list(hosts, nhosts);
    free_list(addrs, naddrs);
    free_list(ports, nports);
    PQconninfoFree(opts);
    return rc;
}

static void
lookup_release(lookup_t *l)
{
    int  last;

    pthread_mutex_lock(&l->lock);
    last = --l->refs == 0;
    pthread_mutex_unlock(&l->lock);
    if (!last) {
        return;
    }
    pthread_mutex_destroy(&l->lock);
    close(l->efd);
    free_list(l->names, l->n);
    free_list(l->addrs, l->n);
    free(l->gai);
    free(l->sys);
    free(l->done);
    free(l);
}

/* A thread: one name looked up, its addresses as numeric strings. */
static void *
lookup_run(void *arg)
{
    lookup_t         *l = arg;
    struct addrinfo   hints, *res = NULL, *ai;
    sbuf_t            b;
    char              num[NI_MAXHOST];
    uint64_t          one = 1;
    size_t            i, k = 0;
    ssize_t           w;
    int               rc, sys, last;

    pthread_mutex_lock(&l->lock);
    i = l->next++;
    pthread_mutex_unlock(&l->lock);

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    memset(&b, 0, sizeof(b));
    rc = getaddrinfo(l->names[i], NULL, &hints, &res);
    sys = errno;
    if (rc == 0) {
        for (ai = res; ai != NULL; ai = ai->ai_next) {
            if (getnameinfo(ai->ai_addr, ai->ai_addrlen, num, sizeof(num),
                            NULL, 0, NI_NUMERICHOST) != 0)
            {
                continue;
            }
            if (sbuf_item(&b, k++, num, strlen(num)) != 0) {
                free(b.data);
                b.data = NULL;
                rc = EAI_MEMORY;
                break;
            }
        }
        freeaddrinfo(res);
        if (b.data == NULL && rc == 0) {
            rc = EAI_NONAME;
        }
    }

    pthread_mutex_lock(&l->lock);
    l->addrs[i] = b.data;
    l->gai[i] = rc;
    l->sys[i] = sys;
    l->done[i] = 1;
    last = ++l->ndone == l->n;
    pthread_mutex_unlock(&l->lock);
    if (last) {
        w = write(l->efd, &one, sizeof(one));
        (void) w;
    }
    lookup_release(l);
    return NULL;
}

/* Starts looking up the targets' names: 0, or -1 (nothing running). */
static int
lookup_start(adl_db_t *db)
{
    pthread_attr_t   attr;
    pthread_t        tid;
    sigset_t         all, old;
    lookup_t        *l;
    size_t           i, n = 0;
    int              rc = 0;

    l = calloc(1, sizeof(lookup_t));
    if (l == NULL) {
        return -1;
    }
    l->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->efd < 0) {
        free(l);
        return -1;
    }
    if (pthread_mutex_init(&l->lock, NULL) != 0) {
        close(l->efd);
        free(l);
        return -1;
    }
    l->refs = 1;
    for (i = 0; i < db->ntargets; i++) {
        n += db->targets[i].hostaddr == NULL;
    }
    l->n = n;
    l->names = calloc(n, sizeof(char *));
    l->addrs = calloc(n, sizeof(char *));
    l->gai = calloc(n, sizeof(int));
    l->sys = calloc(n, sizeof(int));
    l->done = calloc(n, 1);
    if (l->names == NULL || l->addrs == NULL || l->gai == NULL
        || l->sys == NULL || l->done == NULL)
    {
        lookup_release(l);
        return -1;
    }
    for (i = 0, n = 0; i < db->ntargets; i++) {
        if (db->targets[i].hostaddr == NULL) {
            l->names[n] = strdup(db->targets[i].host);
            if (l->names[n++] == NULL) {
                lookup_release(l);
                return -1;
            }
        }
    }

    /* the threads take no signal (signalfd reads them on the loop) */
    if (pthread_attr_init(&attr) != 0) {
        lookup_release(l);
        return -1;
    }
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (i = 0; i < l->n; i++) {
        pthread_mutex_lock(&l->lock);
        l->refs++;
        pthread_mutex_unlock(&l->lock);
        rc = pthread_create(&tid, &attr, lookup_run, l);
        if (rc != 0) {
            pthread_mutex_lock(&l->lock);
            l->refs--;
            pthread_mutex_unlock(&l->lock);
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);

    if (i == 0) {
        adl_log_error(NULL, -1, "database: cannot start a thread: %s",
                      strerror(rc));
        lookup_release(l);
        return -1;
    }
    if (i < l->n) {
        /* names no thread took fail, the others go on */
        adl_log_error(NULL, -1, "database: cannot start a thread: %s",
                      strerror(rc));
        pthread_mutex_lock(&l->lock);
        for (; i < l->n; i++) {     /* the threads take 0 .. i-1 */
            l->gai[i] = EAI_AGAIN;
            l->done[i] = 1;
            l->ndone++;
        }
        n = l->ndone;
        pthread_mutex_unlock(&l->lock);
        if (n == l->n) {            /* the threads were all done before */
            uint64_t  one = 1;
            ssize_t   w = write(l->efd, &one, sizeof(one));

            (void) w;
        }
    }

    db->lookup = l;
    db->state = DB_RESOLVING;
    db->since = adl_now_ms();
    if (watch(db, l->efd, EPOLLIN) != 0) {
        lookup_cancel(db);
        db->state = DB_DOWN;
        return -1;
    }
    return 0;
}

/* Lets go of a running lookup (its threads finish alone). */
static void
lookup_cancel(adl_db_t *db)
{
    lookup_t  *l = db->lookup;

    if (l == NULL) {
        return;
    }
    if (db->fd == l->efd) {
        watch(db, -1, 0);
    }
    db->lookup = NULL;
    lookup_release(l);
}

/* All names looked up (the eventfd), or time is up (timed_out): connect
 * to what was found. */
static void
lookup_end(adl_db_t *db, int timed_out)
{
    lookup_t  *l = db->lookup;
    uint64_t   v;
    size_t     ndone;

    if (!timed_out && read(l->efd, &v, sizeof(v)) != (ssize_t) sizeof(v)) {
        return;                     /* not yet */
    }
    pthread_mutex_lock(&l->lock);
    ndone = l->ndone;
    pthread_mutex_unlock(&l->lock);
    if (!timed_out && ndone < l->n) {
        return;
    }
    watch(db, -1, 0);
    db->lookup = NULL;
    db->state = DB_DOWN;
    db_connect_targets(db, l);
    lookup_release(l);
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

    db->session++;                  /* its session state is gone */
    watch(db, -1, 0);
    lookup_cancel(db);
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

/* The host lists from the targets and, for those looked up (l: NULL when
 * none needed it), the addresses found by then; connects to them. */
static void
db_connect_targets(adl_db_t *db, lookup_t *l)
{
    sbuf_t       host = { NULL, 0, 0 }, addr = { NULL, 0, 0 };
    sbuf_t       port = { NULL, 0, 0 };
    char         why[512];
    const char  *a, *end, *found;
    target_t    *t;
    size_t       i, k = 0, n = 0;
    int          nomem = 0, gai = 0, sys = 0, done;

    why[0] = '\0';
    for (i = 0; i < db->ntargets; i++) {
        t = &db->targets[i];
        found = t->hostaddr;
        if (found == NULL) {
            pthread_mutex_lock(&l->lock);
            done = l->done[k];
            if (done) {
                found = l->addrs[k];
                gai = l->gai[k];
                sys = l->sys[k];
            }
            pthread_mutex_unlock(&l->lock);
            k++;
            if (found == NULL) {
                if (why[0] == '\0') {
                    snprintf(why, sizeof(why), "could not translate host "
                             "name \"%s\" to address: %s", t->host,
                             !done ? "timed out"
                             : gai == EAI_SYSTEM ? strerror(sys)
                             : gai_strerror(gai));
                }
                adl_log_debug(NULL, -1, "database: %s", why);
                continue;
            }
            adl_log_debug(NULL, -1, "database: %s is %s", t->host, found);
        }
        /* one entry per address: libpq connects without a lookup */
        for (a = found; ; a = end + 1) {
            end = a + strcspn(a, ",");
            nomem |= sbuf_item(&host, n, t->host, strlen(t->host))
                     | sbuf_item(&addr, n, a, (size_t) (end - a))
                     | (t->port != NULL
                        ? sbuf_item(&port, n, t->port, strlen(t->port)) : 0);
            n++;
            if (*end == '\0') {
                break;
            }
        }
    }

    if (nomem) {
        db_fail(db, "out of memory");
    } else if (n == 0) {
        db_fail(db, why[0] ? why : "no host to connect to");
    } else {
        db_connect_to(db, host.data, addr.data,
                      port.data != NULL ? port.data : db->port);
    }
    free(host.data);
    free(addr.data);
    free(port.data);
}

static void
db_connect(adl_db_t *db)
{
    if (db->targets == NULL) {
        db_connect_to(db, NULL, NULL, NULL);
    } else if (!db->lookups) {
        db_connect_targets(db, NULL);
    } else if (lookup_start(db) != 0) {
        db_fail(db, "cannot start the host name lookup");
    }
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
        lookup_end(db, 0);
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
            lookup_end(db, 1);      /* with the names found so far */
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
    if (targets_build(db) != 0) {
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
    lookup_cancel(db);
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
    targets_free(db);
    free(db);
}
