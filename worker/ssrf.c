/*
 * ssrf: the address check of origin connections.  Ranges are written as
 * tables; an address is refused when it falls in a blocked range, unless
 * the allow list (ASYNC_DL_ALLOW_CIDRS) has it, or it is merely "private"
 * and ASYNC_DL_ALLOW_PRIVATE_NETWORKS is on.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ssrf.h"

typedef struct {
    const char  *net;
    int          prefix;
    int          private_net;   /* allowed by ALLOW_PRIVATE_NETWORKS */
    const char  *why;
} range_t;

static const range_t  v4_blocked[] = {
    { "0.0.0.0", 8, 0, "unspecified/this-network address" },
    { "10.0.0.0", 8, 1, "private address" },
    { "100.64.0.0", 10, 1, "carrier-grade NAT address" },
    { "127.0.0.0", 8, 1, "loopback address" },
    { "169.254.0.0", 16, 1, "link-local address" },
    { "172.16.0.0", 12, 1, "private address" },
    { "192.0.0.0", 24, 0, "IETF protocol assignment" },
    { "192.0.2.0", 24, 0, "documentation address" },
    { "192.88.99.0", 24, 0, "6to4 relay address" },
    { "192.168.0.0", 16, 1, "private address" },
    { "198.18.0.0", 15, 1, "benchmarking address" },
    { "198.51.100.0", 24, 0, "documentation address" },
    { "203.0.113.0", 24, 0, "documentation address" },
    { "224.0.0.0", 4, 0, "multicast address" },
    { "240.0.0.0", 4, 0, "reserved or broadcast address" },
};

static const range_t  v6_blocked[] = {
    { "::", 128, 0, "unspecified address" },
    { "::1", 128, 1, "loopback address" },
    { "::ffff:0:0", 96, 0, "IPv4-mapped address" },
    { "::", 96, 0, "IPv4-compatible address" },
    { "::ffff:0:0:0", 96, 0, "IPv4-translated address" },
    { "64:ff9b::", 96, 0, "NAT64 (IPv4-embedded) address" },
    { "64:ff9b:1::", 48, 0, "NAT64 (IPv4-embedded) address" },
    { "100::", 64, 0, "discard-only address" },
    { "2001::", 32, 0, "Teredo (IPv4-embedded) address" },
    { "2001:db8::", 32, 0, "documentation address" },
    { "2002::", 16, 0, "6to4 (IPv4-embedded) address" },
    { "fc00::", 7, 1, "unique local address" },
    { "fe80::", 10, 1, "link-local address" },
    { "fec0::", 10, 1, "site-local address" },
    { "ff00::", 8, 0, "multicast address" },
};

static int
prefix_match(const uint8_t *a, const uint8_t *net, int prefix)
{
    int  full = prefix / 8, rest = prefix % 8;

    if (memcmp(a, net, (size_t) full) != 0) {
        return 0;
    }
    if (rest == 0) {
        return 1;
    }
    return ((a[full] ^ net[full]) & (0xff << (8 - rest))) == 0;
}

static int
in_table(int family, const uint8_t *a, const range_t *t, size_t n,
    const range_t **hit)
{
    uint8_t  net[16];
    size_t   i;

    for (i = 0; i < n; i++) {
        if (inet_pton(family, t[i].net, net) == 1
            && prefix_match(a, net, t[i].prefix))
        {
            *hit = &t[i];
            return 1;
        }
    }
    return 0;
}

static int
in_list(const adl_cidr_list_t *l, int family, const uint8_t *a)
{
    size_t  i;

    for (i = 0; l != NULL && i < l->n; i++) {
        if (l->items[i].family == family
            && prefix_match(a, l->items[i].addr, l->items[i].prefix))
        {
            return 1;
        }
    }
    return 0;
}

int
adl_ssrf_allowed(const struct sockaddr *sa, const adl_cidr_list_t *allow,
    int allow_private, const char **why)
{
    static const uint8_t  mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                         0xff, 0xff };
    const range_t        *hit = NULL;
    const uint8_t        *a;
    int                   family = sa->sa_family;

    if (family == AF_INET) {
        a = (const uint8_t *) &((const struct sockaddr_in *) (const void *)
                                sa)->sin_addr;
        if (in_list(allow, AF_INET, a)) {
            return 1;
        }
        if (!in_table(AF_INET, a, v4_blocked,
                      sizeof(v4_blocked) / sizeof(v4_blocked[0]), &hit))
        {
            return 1;
        }

    } else if (family == AF_INET6) {
        a = (const uint8_t *) &((const struct sockaddr_in6 *) (const void *)
                                sa)->sin6_addr;
        if (in_list(allow, AF_INET6, a)
            || (memcmp(a, mapped, 12) == 0 && in_list(allow, AF_INET, a + 12)))
        {
            return 1;
        }
        if (!in_table(AF_INET6, a, v6_blocked,
                      sizeof(v6_blocked) / sizeof(v6_blocked[0]), &hit))
        {
            return 1;
        }

    } else {
        *why = "not an IP address";
        return 0;
    }

    if (allow_private && hit->private_net) {
        return 1;
    }
    *why = hit->why;
    return 0;
}

int
adl_cidr_list_parse(const char *text, adl_cidr_list_t *out, char *err,
    size_t errlen)
{
    const char  *p = text ? text : "";
    char         item[128], *slash, *end;
    size_t       len;
    long         prefix;
    adl_cidr_t  *c, *items;

    out->items = NULL;
    out->n = 0;

    while (*p) {
        while (*p == ' ' || *p == ',') {
            p++;
        }
        len = strcspn(p, ", ");
        if (len == 0) {
            break;
        }
        if (len >= sizeof(item)) {
            snprintf(err, errlen, "entry too long: \"%.40s...\"", p);
            goto failed;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        p += len;

        items = realloc(out->items, (out->n + 1) * sizeof(adl_cidr_t));
        if (items == NULL) {
            snprintf(err, errlen, "out of memory");
            goto failed;
        }
        out->items = items;
        c = &out->items[out->n];
        memset(c, 0, sizeof(*c));

        slash = strchr(item, '/');
        if (slash != NULL) {
            *slash++ = '\0';
        }
        if (inet_pton(AF_INET, item, c->addr) == 1) {
            c->family = AF_INET;
            c->prefix = 32;
        } else if (inet_pton(AF_INET6, item, c->addr) == 1) {
            c->family = AF_INET6;
            c->prefix = 128;
        } else {
            snprintf(err, errlen, "invalid address \"%s\"", item);
            goto failed;
        }
        if (slash != NULL) {
            prefix = strtol(slash, &end, 10);
            if (*slash == '\0' || *end != '\0' || prefix < 0
                || prefix > c->prefix)
            {
                snprintf(err, errlen, "invalid prefix length \"/%s\" for "
                         "\"%s\"", slash, item);
                goto failed;
            }
            c->prefix = (int) prefix;
        }
        out->n++;
    }
    return 0;

failed:
    adl_cidr_list_free(out);
    return -1;
}

void
adl_cidr_list_free(adl_cidr_list_t *l)
{
    free(l->items);
    l->items = NULL;
    l->n = 0;
}
