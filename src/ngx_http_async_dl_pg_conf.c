
/*
 * async_dl_postgres: the conninfo, checked and resolved once, when nginx
 * reads its configuration, into the keywords and values that the pool and
 * the LISTEN connection give PQconnectStartParams().
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include <netdb.h>
#include <arpa/inet.h>
#include <libpq-fe.h>

#include "ngx_http_async_dl_pg_conf.h"


static char *ngx_http_async_dl_pg_resolve(ngx_conf_t *cf, ngx_array_t *hosts,
    ngx_array_t *addrs, ngx_array_t *ports, char *host, char *port);
static ngx_int_t ngx_http_async_dl_pg_split(ngx_conf_t *cf, char *list,
    ngx_array_t *a);
static ngx_int_t ngx_http_async_dl_pg_push(ngx_array_t *hosts,
    ngx_array_t *addrs, ngx_array_t *ports, char *host, char *addr,
    char *port);
static char *ngx_http_async_dl_pg_join(ngx_pool_t *pool, ngx_array_t *a);
static char *ngx_http_async_dl_pg_strdup(ngx_pool_t *pool, const char *s);


char *
ngx_http_async_dl_pg_conninfo(ngx_conf_t *cf, ngx_str_t *conninfo,
    ngx_http_async_dl_pg_conf_t *pgcf)
{
    char                *err, *host, *hostaddr, *port;
    ngx_uint_t           i, n, have_fallback, have_gss, have_encoding;
    ngx_array_t          hosts, addrs, ports;
    PQconninfoOption    *opts, *o;
    const char         **kw, **val;

    err = NULL;
    opts = PQconninfoParse((char *) conninfo->data, &err);

    if (opts == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid async_dl_postgres \"%V\": %s", conninfo,
                           err ? err : "out of memory");
        if (err) {
            PQfreemem(err);
        }
        return NGX_CONF_ERROR;
    }

    host = NULL;
    hostaddr = NULL;
    port = NULL;
    have_fallback = 0;
    have_gss = 0;
    have_encoding = 0;
    n = 0;

    for (o = opts; o->keyword; o++) {
        if (o->val == NULL) {
            continue;
        }

        n++;

        if (ngx_strcmp(o->keyword, "host") == 0) {
            host = o->val;

        } else if (ngx_strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = o->val;

        } else if (ngx_strcmp(o->keyword, "port") == 0) {
            port = o->val;

        } else if (ngx_strcmp(o->keyword, "fallback_application_name") == 0) {
            have_fallback = 1;

        } else if (ngx_strcmp(o->keyword, "gssencmode") == 0) {
            have_gss = 1;

        } else if (ngx_strcmp(o->keyword, "client_encoding") == 0) {
            have_encoding = 1;

        } else if (ngx_strcmp(o->keyword, "service") == 0) {
            /* a service file may name a host: libpq would resolve it */
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "async_dl_postgres: \"service\" is not "
                               "supported, write the host into the conninfo");
            PQconninfoFree(opts);
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_array_init(&hosts, cf->pool, 4, sizeof(char *)) != NGX_OK
        || ngx_array_init(&addrs, cf->pool, 4, sizeof(char *)) != NGX_OK
        || ngx_array_init(&ports, cf->pool, 4, sizeof(char *)) != NGX_OK)
    {
        PQconninfoFree(opts);
        return NGX_CONF_ERROR;
    }

    /*
     * libpq resolves host names with a blocking getaddrinfo() inside
     * PQconnectPoll(); it must never run in a worker's event loop.  Names
     * are therefore resolved here, once, when the configuration is read,
     * and passed as "hostaddr" (the name stays in "host" for TLS checks and
     * .pgpass).  IP literals and Unix socket directories need no lookup.
     */

    if (host && hostaddr == NULL) {
        if (ngx_http_async_dl_pg_resolve(cf, &hosts, &addrs, &ports, host,
                                         port)
            != NGX_CONF_OK)
        {
            PQconninfoFree(opts);
            return NGX_CONF_ERROR;
        }
    }

    kw = ngx_pcalloc(cf->pool, (n + 6) * sizeof(char *));
    val = ngx_pcalloc(cf->pool, (n + 6) * sizeof(char *));
    if (kw == NULL || val == NULL) {
        PQconninfoFree(opts);
        return NGX_CONF_ERROR;
    }

    i = 0;

    for (o = opts; o->keyword; o++) {
        if (o->val == NULL) {
            continue;
        }

        if ((hosts.nelts && ngx_strcmp(o->keyword, "host") == 0)
            || (ports.nelts && ngx_strcmp(o->keyword, "port") == 0))
        {
            continue;
        }

        kw[i] = ngx_http_async_dl_pg_strdup(cf->pool, o->keyword);
        val[i] = ngx_http_async_dl_pg_strdup(cf->pool, o->val);
        if (kw[i] == NULL || val[i] == NULL) {
            PQconninfoFree(opts);
            return NGX_CONF_ERROR;
        }

        i++;
    }

    PQconninfoFree(opts);

    if (hosts.nelts) {
        kw[i] = "host";
        val[i++] = ngx_http_async_dl_pg_join(cf->pool, &hosts);
        kw[i] = "hostaddr";
        val[i++] = ngx_http_async_dl_pg_join(cf->pool, &addrs);

        if (ports.nelts) {
            kw[i] = "port";
            val[i++] = ngx_http_async_dl_pg_join(cf->pool, &ports);
        }
    }

    if (!have_fallback) {
        kw[i] = "fallback_application_name";
        val[i++] = "async-dl-nginx";
    }

    /*
     * libpq's default gssencmode=prefer may ask the GSSAPI library for
     * credentials inside PQconnectPoll(), which can block on a credential
     * cache daemon: off unless the conninfo asks for it.
     */
    if (!have_gss) {
        kw[i] = "gssencmode";
        val[i++] = "disable";
    }

    /*
     * Parameters and answers are UTF-8 whatever the database's encoding:
     * the API checks client text as UTF-8 and answers JSON.
     */
    if (!have_encoding) {
        kw[i] = "client_encoding";
        val[i++] = "UTF8";
    }

    for (n = 0; n < i; n++) {
        if (val[n] == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    kw[i] = NULL;
    val[i] = NULL;

    pgcf->keywords = kw;
    pgcf->values = val;

    return NGX_CONF_OK;
}


static char *
ngx_http_async_dl_pg_resolve(ngx_conf_t *cf, ngx_array_t *hosts,
    ngx_array_t *addrs, ngx_array_t *ports, char *host, char *port)
{
    int               rc;
    char             *h, *p, *addr, ip[NGX_INET6_ADDRSTRLEN + 1];
    void             *sa;
    ngx_uint_t        i, nport;
    ngx_array_t       hl, pl;
    struct addrinfo   hints, *res, *ai;
    struct in6_addr   a6;

    if (ngx_array_init(&hl, cf->temp_pool, 4, sizeof(char *)) != NGX_OK
        || ngx_array_init(&pl, cf->temp_pool, 4, sizeof(char *)) != NGX_OK
        || ngx_http_async_dl_pg_split(cf, host, &hl) != NGX_OK
        || (port && ngx_http_async_dl_pg_split(cf, port, &pl) != NGX_OK))
    {
        return NGX_CONF_ERROR;
    }

    nport = pl.nelts;

    if (nport > 1 && nport != hl.nelts) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "async_dl_postgres: \"port\" must have one value "
                           "or one per host");
        return NGX_CONF_ERROR;
    }

    for (i = 0; i < hl.nelts; i++) {
        h = ((char **) hl.elts)[i];
        p = (nport > 1) ? ((char **) pl.elts)[i] : NULL;

        if (h[0] == '\0' || h[0] == '/' || h[0] == '@') {
            /* a Unix socket directory: an empty hostaddr uses "host" */
            if (ngx_http_async_dl_pg_push(hosts, addrs, ports, h, "", p)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }
            continue;
        }

        if (inet_pton(AF_INET, h, &a6) == 1
            || inet_pton(AF_INET6, h, &a6) == 1)
        {
            if (ngx_http_async_dl_pg_push(hosts, addrs, ports, h, h, p)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }
            continue;
        }

        ngx_memzero(&hints, sizeof(struct addrinfo));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;

        rc = getaddrinfo(h, NULL, &hints, &res);
        if (rc != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "async_dl_postgres: host \"%s\" not found: %s",
                               h, gai_strerror(rc));
            return NGX_CONF_ERROR;
        }

        /* every address, in the resolver's order, as libpq would try */

        for (ai = res; ai; ai = ai->ai_next) {
            if (ai->ai_family == AF_INET) {
                sa = &((struct sockaddr_in *) ai->ai_addr)->sin_addr;
            } else if (ai->ai_family == AF_INET6) {
                sa = &((struct sockaddr_in6 *) ai->ai_addr)->sin6_addr;
            } else {
                continue;
            }

            if (inet_ntop(ai->ai_family, sa, ip, sizeof(ip)) == NULL) {
                continue;
            }

            addr = ngx_http_async_dl_pg_strdup(cf->pool, ip);

            if (addr == NULL
                || ngx_http_async_dl_pg_push(hosts, addrs, ports, h, addr, p)
                   != NGX_OK)
            {
                freeaddrinfo(res);
                return NGX_CONF_ERROR;
            }
        }

        freeaddrinfo(res);
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_async_dl_pg_push(ngx_array_t *hosts, ngx_array_t *addrs,
    ngx_array_t *ports, char *host, char *addr, char *port)
{
    char  **e;

    e = ngx_array_push(hosts);
    if (e == NULL) {
        return NGX_ERROR;
    }
    *e = host;

    e = ngx_array_push(addrs);
    if (e == NULL) {
        return NGX_ERROR;
    }
    *e = addr;

    if (port) {
        e = ngx_array_push(ports);
        if (e == NULL) {
            return NGX_ERROR;
        }
        *e = port;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_async_dl_pg_split(ngx_conf_t *cf, char *list, ngx_array_t *a)
{
    char  *s, *comma, **e;

    s = ngx_http_async_dl_pg_strdup(cf->pool, list);
    if (s == NULL) {
        return NGX_ERROR;
    }

    for ( ;; ) {
        e = ngx_array_push(a);
        if (e == NULL) {
            return NGX_ERROR;
        }

        *e = s;

        comma = strchr(s, ',');
        if (comma == NULL) {
            return NGX_OK;
        }

        *comma = '\0';
        s = comma + 1;
    }
}


static char *
ngx_http_async_dl_pg_join(ngx_pool_t *pool, ngx_array_t *a)
{
    char        **e, *s, *p;
    size_t        len;
    ngx_uint_t    i;

    e = a->elts;
    len = 1;

    for (i = 0; i < a->nelts; i++) {
        len += ngx_strlen(e[i]) + 1;
    }

    s = ngx_pnalloc(pool, len);
    if (s == NULL) {
        return NULL;
    }

    p = s;

    for (i = 0; i < a->nelts; i++) {
        if (i) {
            *p++ = ',';
        }
        p = (char *) ngx_cpymem(p, e[i], ngx_strlen(e[i]));
    }

    *p = '\0';

    return s;
}


static char *
ngx_http_async_dl_pg_strdup(ngx_pool_t *pool, const char *s)
{
    char    *d;
    size_t   len;

    len = ngx_strlen(s);

    d = ngx_pnalloc(pool, len + 1);
    if (d == NULL) {
        return NULL;
    }

    ngx_memcpy(d, s, len + 1);

    return d;
}


/* a statement for the pool to prepare: its index; one of that name once */

ngx_int_t
ngx_http_async_dl_pg_add_stmt(ngx_conf_t *cf,
    ngx_http_async_dl_pg_conf_t *pgcf, ngx_http_async_dl_pg_stmt_t *stmt)
{
    ngx_uint_t                    i, n;
    ngx_http_async_dl_pg_stmt_t  *stmts;

    n = pgcf->nstmts;

    for (i = 0; i < n; i++) {
        if (ngx_strcmp(pgcf->stmts[i].name, stmt->name) == 0) {
            return i;
        }
    }

    if (n + 1 > NGX_HTTP_ASYNC_DL_PG_MAX_STMTS) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "async_dl: too many statements");
        return NGX_ERROR;
    }

    stmts = ngx_palloc(cf->pool,
                       (n + 1) * sizeof(ngx_http_async_dl_pg_stmt_t));
    if (stmts == NULL) {
        return NGX_ERROR;
    }

    if (n) {
        ngx_memcpy(stmts, pgcf->stmts,
                   n * sizeof(ngx_http_async_dl_pg_stmt_t));
    }

    stmts[n] = *stmt;

    pgcf->stmts = stmts;
    pgcf->nstmts = n + 1;

    return n;
}
