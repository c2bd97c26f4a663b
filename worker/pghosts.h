/*
 * pghosts: where the worker's PostgreSQL connection goes: the host list of
 * ASYNC_DL_DATABASE_URL (or of the PG* environment), and the lookup of
 * its names on threads of their own, so that the loop never blocks on DNS.
 */
#ifndef ADL_PGHOSTS_H
#define ADL_PGHOSTS_H

#include <stddef.h>

typedef struct adl_pghosts_s  adl_pghosts_t;

/* What to hand libpq: comma-separated lists (malloc'ed; port may be
 * NULL), or why there is nothing to connect to. */
typedef struct {
    char  *host;
    char  *hostaddr;
    char  *port;
    char   why[512];
} adl_pghosts_lists_t;

/* NULL when out of memory. */
adl_pghosts_t *adl_pghosts_create(const char *database_url);
void adl_pghosts_destroy(adl_pghosts_t *h);

/* No host list (libpq's default socket, or a service file): connect with
 * the URL as it is. */
int adl_pghosts_plain(const adl_pghosts_t *h);

/* Some hosts are names, to look up before connecting. */
int adl_pghosts_need_lookup(const adl_pghosts_t *h);

/* Starts looking the names up: the eventfd to watch (readable when all
 * are done), or -1 (nothing running; logged). */
int adl_pghosts_lookup_start(adl_pghosts_t *h);

/* The eventfd was readable: 1 when every name is done. */
int adl_pghosts_lookup_ready(adl_pghosts_t *h);

/* Lets go of a running lookup (its threads finish alone). */
void adl_pghosts_lookup_cancel(adl_pghosts_t *h);

/* The lists, from the targets and what the lookup found by now (the
 * lookup ends): 0; 1 when no host could be used (out->why says why);
 * -1 when out of memory. */
int adl_pghosts_lists(adl_pghosts_t *h, adl_pghosts_lists_t *out);

#endif /* ADL_PGHOSTS_H */
