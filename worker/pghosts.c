/*
 * pghosts: where the worker's PostgreSQL connection goes (pghosts.h).
 *
 * The host list of the URL (or of PGHOST, PGHOSTADDR, PGPORT, which libpq
 * reads when the URL has none) becomes targets: a socket path, an IP
 * literal or a given hostaddr needs no lookup; a name does.  Names are
 * looked up on threads, never on the loop (libpq's PQconnectPoll would
 * call getaddrinfo() there, for each host it tries): one thread per name,
 * at once, each writing its slot; the last one signals an eventfd that
 * the loop watches.  The lists handed to libpq then carry host= (the
 * names, for TLS, .pgpass and messages) with hostaddr= (one entry per
 * address found), so libpq connects without a lookup.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "log.h"
#include "pghosts.h"

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

struct adl_pghosts_s {
    target_t  *targets;             /* NULL: the URL as it is */
    size_t     ntargets;
    char      *port;                /* every target's, or NULL */
    int        lookups;             /* some targets need one */
    lookup_t  *lookup;              /* running */
};

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
targets_free(adl_pghosts_t *h)
{
    size_t  i;

    for (i = 0; i < h->ntargets; i++) {
        free(h->targets[i].host);
        free(h->targets[i].hostaddr);
        free(h->targets[i].port);
    }
    free(h->targets);
    free(h->port);
    h->targets = NULL;
    h->ntargets = 0;
    h->port = NULL;
    h->lookups = 0;
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
targets_build(adl_pghosts_t *h, const char *url)
{
    PQconninfoOption  *opts;
    const char        *host, *hostaddr, *port, *service;
    char              *err = NULL, **hosts = NULL, **addrs = NULL;
    char             **ports = NULL;
    size_t             nhosts = 0, naddrs = 0, nports = 0, i;
    int                rc = -1;

    /* a plain database name is no conninfo: the rest from the environment */
    opts = PQconninfoParse(url, &err);
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

    h->targets = calloc(nhosts, sizeof(target_t));
    if (h->targets == NULL) {
        goto done;
    }
    h->ntargets = nhosts;
    if (ports != NULL && nports == 1) {
        h->port = strdup(ports[0]);
        if (h->port == NULL) {
            goto done;
        }
    }
    for (i = 0; i < nhosts; i++) {
        target_t  *t = &h->targets[i];

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
            h->lookups = 1;                            /* a name */
            continue;
        }
        if (t->hostaddr == NULL) {
            goto done;
        }
    }
    rc = 0;

done:
    if (rc != 0) {
        targets_free(h);
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

int
adl_pghosts_lookup_start(adl_pghosts_t *h)
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
    for (i = 0; i < h->ntargets; i++) {
        n += h->targets[i].hostaddr == NULL;
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
    for (i = 0, n = 0; i < h->ntargets; i++) {
        if (h->targets[i].hostaddr == NULL) {
            l->names[n] = strdup(h->targets[i].host);
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

    h->lookup = l;
    return l->efd;
}

void
adl_pghosts_lookup_cancel(adl_pghosts_t *h)
{
    lookup_t  *l = h->lookup;

    if (l != NULL) {
        h->lookup = NULL;
        lookup_release(l);
    }
}

int
adl_pghosts_lookup_ready(adl_pghosts_t *h)
{
    lookup_t  *l = h->lookup;
    uint64_t   v;
    size_t     ndone;

    if (read(l->efd, &v, sizeof(v)) != (ssize_t) sizeof(v)) {
        return 0;                   /* not yet */
    }
    pthread_mutex_lock(&l->lock);
    ndone = l->ndone;
    pthread_mutex_unlock(&l->lock);
    return ndone == l->n;
}

int
adl_pghosts_lists(adl_pghosts_t *h, adl_pghosts_lists_t *out)
{
    lookup_t    *l = h->lookup;
    sbuf_t       host = { NULL, 0, 0 }, addr = { NULL, 0, 0 };
    sbuf_t       port = { NULL, 0, 0 };
    const char  *a, *end, *found;
    target_t    *t;
    size_t       i, k = 0, n = 0;
    int          nomem = 0, gai = 0, sys = 0, done, rc;
    char        *why = out->why;
    size_t       whylen = sizeof(out->why);

    why[0] = '\0';
    for (i = 0; i < h->ntargets; i++) {
        t = &h->targets[i];
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
                    snprintf(why, whylen, "could not translate host "
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

    h->lookup = NULL;
    if (l != NULL) {
        lookup_release(l);
    }
    if (port.data == NULL && h->port != NULL) {
        port.data = strdup(h->port);
        nomem |= port.data == NULL;
    }
    if (nomem || n == 0) {
        free(host.data);
        free(addr.data);
        free(port.data);
        if (n == 0 && why[0] == '\0') {
            snprintf(why, whylen, "no host to connect to");
        }
        rc = nomem ? -1 : 1;
        if (nomem) {
            snprintf(why, whylen, "out of memory");
        }
        return rc;
    }
    out->host = host.data;
    out->hostaddr = addr.data;
    out->port = port.data;
    return 0;
}


adl_pghosts_t *
adl_pghosts_create(const char *database_url)
{
    adl_pghosts_t  *h = calloc(1, sizeof(adl_pghosts_t));

    if (h == NULL) {
        return NULL;
    }
    if (targets_build(h, database_url) != 0) {
        free(h);
        return NULL;
    }
    return h;
}

void
adl_pghosts_destroy(adl_pghosts_t *h)
{
    if (h == NULL) {
        return;
    }
    adl_pghosts_lookup_cancel(h);
    targets_free(h);
    free(h);
}

int
adl_pghosts_plain(const adl_pghosts_t *h)
{
    return h->targets == NULL;
}

int
adl_pghosts_need_lookup(const adl_pghosts_t *h)
{
    return h->lookups;
}
