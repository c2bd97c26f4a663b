/*
 * ssrf: which addresses a download may connect to.  Every connection an
 * origin transfer opens (the first and each redirect's) goes through
 * adl_ssrf_allowed() from libcurl's open-socket callback; storage
 * requests do not (the S3 endpoint is configured, hence trusted).
 */
#ifndef ADL_SSRF_H
#define ADL_SSRF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct {
    int       family;           /* AF_INET or AF_INET6 */
    uint8_t   addr[16];
    int       prefix;
} adl_cidr_t;

typedef struct {
    adl_cidr_t  *items;
    size_t       n;
} adl_cidr_list_t;

/* "10.0.0.0/8, 127.0.0.1, fd00::/8" (empty: none).  -1 on a bad item. */
int adl_cidr_list_parse(const char *text, adl_cidr_list_t *out,
    char *err, size_t errlen);
void adl_cidr_list_free(adl_cidr_list_t *l);

/*
 * 1 when a connection to sa may be opened: a public unicast address, or
 * one in the allow list, or (allow_private) a loopback, private,
 * link-local, CGNAT or unique-local one.  why gets the reason of a refusal.
 */
int adl_ssrf_allowed(const struct sockaddr *sa, const adl_cidr_list_t *allow,
    int allow_private, const char **why);

#endif /* ADL_SSRF_H */
