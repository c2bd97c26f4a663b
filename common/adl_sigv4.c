/*
 * AWS Signature V4 / S3 helpers, see adl_sigv4.h.  The canonical request is
 * never materialized: it is streamed into a SHA-256 context, and sorted
 * orders come from repeated selection (O(n^2), n is tiny), so no scratch
 * arrays or allocations are needed.
 */

#include <limits.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "adl_sigv4.h"

/* SHA-256, fetched once by adl_crypto_init() where OpenSSL 3 fetches
 * algorithms: an implicit fetch that fails (out of memory) at the first
 * digest is not tried again, and would leave the process without SHA-256
 * for good.  Without the init (the nginx module), EVP_sha256(). */
static EVP_MD  *adl_md_sha256;

static const EVP_MD *
sha256_md(void)
{
    return adl_md_sha256 != NULL ? adl_md_sha256 : EVP_sha256();
}

int
adl_crypto_init(void)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    unsigned char  mac[32];

    if (adl_md_sha256 == NULL) {
        adl_md_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    }
    /* HMAC's own algorithm is built at its first use too: here, where a
     * failure stops the start, not at the first request signed */
    return adl_md_sha256 != NULL
           && adl_hmac_sha256("k", 1, "d", 1, mac) == 0 ? 0 : -1;
#else
    return 0;
#endif
}

void
adl_crypto_cleanup(void)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    EVP_MD_free(adl_md_sha256);
#endif
    adl_md_sha256 = NULL;
}

#define ADL_ALGO      "AWS4-HMAC-SHA256"
#define ADL_STR(s)    ((s) != NULL ? (s) : "")
#define ADL_LC(c)     (((c) >= 'A' && (c) <= 'Z') ? (c) + ('a' - 'A') : (c))
#define ADL_AT(l, i)  ((i) < (l)->na ? &(l)->a[i] : &(l)->b[(i) - (l)->na])
#define adl_puts(s, p)  adl_put(s, p, strlen(p))
#define ADL_WS        " \t\n\v\f\r"
#define ADL_MAX_CRED  512           /* stack bound for keys, scope, etc. */

/* Output target: a digest when md is set, else a NUL-terminated buffer. */
typedef struct {
    EVP_MD_CTX  *md;
    char        *buf;
    size_t       len;
    size_t       pos;
    int          err;
} adl_sink_t;

/* Caller entries followed by ours, as one list to sort or emit. */
typedef struct {
    const adl_kv_t  *a;
    size_t           na;
    const adl_kv_t  *b;
    size_t           nb;
    int              hdr;           /* header names: case-insensitive */
} adl_list_t;

static void
adl_sink_buf(adl_sink_t *s, char *buf, size_t len)
{
    memset(s, 0, sizeof(*s));
    s->buf = buf;
    s->len = len;
    s->err = (buf == NULL || len == 0);
    if (!s->err) {
        buf[0] = '\0';
    }
}

static void
adl_put(adl_sink_t *s, const char *p, size_t n)
{
    if (s->err || n == 0) {
        return;
    }
    if (s->md != NULL) {
        s->err = (EVP_DigestUpdate(s->md, p, n) != 1);
    } else if (n >= s->len - s->pos) {     /* keep room for the NUL */
        s->err = 1;
    } else {
        memcpy(s->buf + s->pos, p, n);
        s->pos += n;
        s->buf[s->pos] = '\0';
    }
}

/* ASCII case folding only: nothing may depend on the locale */
static int
adl_lc_cmp(const char *a, const char *b)
{
    int  ca, cb;

    do {
        ca = ADL_LC((unsigned char) *a);
        cb = ADL_LC((unsigned char) *b);
        a++;
        b++;
    } while (ca == cb && ca != '\0');

    return ca - cb;
}

static void
adl_put_lower(adl_sink_t *s, const char *p, size_t n)
{
    char  c;

    for ( /* void */ ; n--; p++) {
        c = (char) ADL_LC(*p);
        adl_put(s, &c, 1);
    }
}

static void
adl_put_uint(adl_sink_t *s, unsigned v)
{
    char  d[16], *p = d + sizeof(d);

    do {
        *--p = (char) ('0' + v % 10);
        v /= 10;
    } while (v != 0);
    adl_put(s, p, (size_t) (d + sizeof(d) - p));
}

void
adl_hex(const unsigned char *p, size_t n, char *out)
{
    static const char  hex[] = "0123456789abcdef";

    for ( /* void */ ; n--; p++) {
        *out++ = hex[*p >> 4];
        *out++ = hex[*p & 0xf];
    }
    *out = '\0';
}

/* Encodes one byte into e[3], returns the encoded length. */
static size_t
adl_enc1(unsigned char c, char *e, int keep_slash)
{
    static const char  hex[] = "0123456789ABCDEF";

    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
        || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'
        || c == '~' || (keep_slash && c == '/'))
    {
        e[0] = (char) c;
        return 1;
    }
    e[0] = '%';
    e[1] = hex[c >> 4];
    e[2] = hex[c & 0xf];
    return 3;
}

static void
adl_put_enc(adl_sink_t *s, const char *p, size_t n, int keep_slash)
{
    char    chunk[96];
    size_t  k = 0;

    /* batched so that digest sinks are not fed byte by byte */
    while (n--) {
        k += adl_enc1((unsigned char) *p++, chunk + k, keep_slash);
        if (k > sizeof(chunk) - 3) {
            adl_put(s, chunk, k);
            k = 0;
        }
    }
    adl_put(s, chunk, k);
}

/* Compares the percent-encoded forms of a and b without building them. */
static int
adl_enc_cmp(const char *a, const char *b)
{
    char    ea[3], eb[3];
    size_t  ia = 0, na = 0, ib = 0, nb = 0;
    int     ca, cb;

    for ( ;; ) {
        if (ia == na && *a != '\0') {
            na = adl_enc1((unsigned char) *a++, ea, 0);
            ia = 0;
        }
        if (ib == nb && *b != '\0') {
            nb = adl_enc1((unsigned char) *b++, eb, 0);
            ib = 0;
        }
        ca = (ia < na) ? (unsigned char) ea[ia++] : -1;
        cb = (ib < nb) ? (unsigned char) eb[ib++] : -1;
        if (ca != cb || ca == -1) {
            return ca - cb;
        }
    }
}

/* Total order; ties broken by position so duplicates keep caller order. */
static int
adl_cmp(const adl_list_t *l, size_t i, size_t j)
{
    const adl_kv_t  *x = ADL_AT(l, i), *y = ADL_AT(l, j);
    int              r;

    if (l->hdr) {
        r = adl_lc_cmp(x->name, y->name);
    } else {
        r = adl_enc_cmp(x->name, y->name);
        if (r == 0) {
            r = adl_enc_cmp(ADL_STR(x->value), ADL_STR(y->value));
        }
    }
    return (r != 0) ? r : (i > j) - (i < j);
}

/* The entry following prev in sorted order; prev == n starts, n ends. */
static size_t
adl_next(const adl_list_t *l, size_t prev)
{
    size_t  i, n = l->na + l->nb, best = n;

    for (i = 0; i < n; i++) {
        if ((prev == n || adl_cmp(l, i, prev) > 0)
            && (best == n || adl_cmp(l, i, best) < 0))
        {
            best = i;
        }
    }
    return best;
}

static void
adl_put_query(adl_sink_t *s, const adl_list_t *q, int sorted)
{
    size_t           i, n = q->na + q->nb;
    const adl_kv_t  *kv;
    int              first = 1;

    for (i = sorted ? adl_next(q, n) : 0; i < n;
         i = sorted ? adl_next(q, i) : i + 1, first = 0)
    {
        kv = ADL_AT(q, i);
        adl_put(s, "&", !first);
        adl_put_enc(s, kv->name, strlen(kv->name), 0);
        adl_put(s, "=", 1);
        adl_put_enc(s, ADL_STR(kv->value), strlen(ADL_STR(kv->value)), 0);
    }
}

/*
 * canon: "name:value\n" lines, values trimmed with inner whitespace runs
 * collapsed, repeated names joined with ',' (as in the AWS docs and
 * botocore); else the ';'-separated signed header list.
 */
static void
adl_put_headers(adl_sink_t *s, const adl_list_t *h, int canon)
{
    size_t           i, n = h->na + h->nb, prev = n;
    const adl_kv_t  *kv;
    const char      *v, *e;
    int              first;

    for (i = adl_next(h, n); i < n; prev = i, i = adl_next(h, i)) {
        kv = ADL_AT(h, i);
        if (prev == n || adl_lc_cmp(ADL_AT(h, prev)->name, kv->name) != 0) {
            adl_put(s, canon ? "\n" : ";", prev != n);
            adl_put_lower(s, kv->name, strlen(kv->name));
            adl_put(s, ":", canon != 0);
        } else if (canon) {
            adl_put(s, ",", 1);
        }
        for (v = ADL_STR(kv->value), first = 1; canon; v = e, first = 0) {
            v += strspn(v, ADL_WS);
            if (*v == '\0') {
                break;
            }
            e = v + strcspn(v, ADL_WS);
            adl_put(s, " ", !first);
            adl_put(s, v, (size_t) (e - v));
        }
    }
    adl_put(s, "\n", canon != 0);
}

/* "[AK/]date/region/service/aws4_request" */
static void
adl_put_scope(adl_sink_t *s, const adl_sigv4_creds_t *c, const char *date,
    int with_key)
{
    if (with_key) {
        adl_puts(s, c->access_key);
        adl_put(s, "/", 1);
    }
    adl_put(s, date, 8);
    adl_put(s, "/", 1);
    adl_puts(s, c->region);
    adl_put(s, "/", 1);
    adl_puts(s, c->service);
    adl_puts(s, "/aws4_request");
}

static int
adl_reserved(const char *name, const char *const *list)
{
    for ( /* void */ ; *list != NULL; list++) {
        if (adl_lc_cmp(name, *list) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Rejects what could not be signed or would split a header line. */
static int
adl_check(const adl_sigv4_creds_t *c, const adl_sigv4_req_t *r,
    const char *payload, int presign)
{
    static const char *const  hdrs[] = { "host", "x-amz-date",
        "x-amz-content-sha256", "x-amz-security-token", "authorization",
        NULL };
    static const char *const  qs[] = { "x-amz-algorithm", "x-amz-credential",
        "x-amz-date", "x-amz-expires", "x-amz-signedheaders",
        "x-amz-security-token", "x-amz-signature", NULL };
    const char               *p;
    size_t                    i;

    if (c == NULL || r == NULL || c->access_key == NULL
        || c->secret_key == NULL || c->region == NULL || c->service == NULL
        || r->method == NULL || r->host == NULL || r->path == NULL
        || payload == NULL || (r->path[0] != '/' && r->path[0] != '\0')
        || (r->nquery > 0 && r->query == NULL)
        || (r->nheaders > 0 && r->headers == NULL)
        || strpbrk(r->host, "\r\n") || strpbrk(payload, "\r\n")
        || strpbrk(ADL_STR(c->session_token), "\r\n"))
    {
        return -1;
    }
    for (i = 0; i < r->nquery; i++) {
        p = r->query[i].name;
        if (p == NULL || (presign && adl_reserved(p, qs))) {
            return -1;
        }
    }
    for (i = 0; i < r->nheaders; i++) {
        p = r->headers[i].name;
        /* a token, and a value that cannot split the header line */
        if (p == NULL || *p == '\0' || adl_reserved(p, hdrs)
            || p[strcspn(p, " \t\r\n:\x7f")] != '\0'
            || strpbrk(ADL_STR(r->headers[i].value), "\r\n") != NULL)
        {
            return -1;
        }
    }
    return 0;
}

static int
adl_amz_date(time_t now, char out[17])
{
    struct tm  tm;

    if (gmtime_r(&now, &tm) == NULL) {
        return -1;
    }
    return (strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) == 16) ? 0 : -1;
}

/* Canonical request -> string to sign -> hex signature. */
static int
adl_sign(const adl_sigv4_creds_t *c, const adl_sigv4_req_t *r,
    const adl_list_t *q, const adl_list_t *h, const char *payload,
    const char *date, char sig[65])
{
    const char     *path = (r->path[0] != '\0') ? r->path : "/";
    char            sts[ADL_MAX_CRED + 128], secret[ADL_MAX_CRED];
    unsigned char   hash[EVP_MAX_MD_SIZE], k1[32], k2[32];
    unsigned int    hlen = 0;
    EVP_MD_CTX     *md;
    adl_sink_t      s;
    int             rc = -1;

    /* md is kept apart from s: s is reset for the buffers that follow */
    md = EVP_MD_CTX_new();
    if (md == NULL) {
        return -1;
    }
    memset(&s, 0, sizeof(s));
    s.md = md;
    s.err = (EVP_DigestInit_ex(md, sha256_md(), NULL) != 1);

    adl_puts(&s, r->method);
    adl_put(&s, "\n", 1);
    adl_put_enc(&s, path, strlen(path), 1);
    adl_put(&s, "\n", 1);
    adl_put_query(&s, q, 1);
    adl_put(&s, "\n", 1);
    adl_put_headers(&s, h, 1);
    adl_put(&s, "\n", 1);
    adl_put_headers(&s, h, 0);
    adl_put(&s, "\n", 1);
    adl_puts(&s, payload);
    if (s.err || EVP_DigestFinal_ex(md, hash, &hlen) != 1 || hlen != 32) {
        goto done;
    }
    adl_hex(hash, 32, sig);

    adl_sink_buf(&s, sts, sizeof(sts));
    adl_puts(&s, ADL_ALGO "\n");
    adl_puts(&s, date);
    adl_put(&s, "\n", 1);
    adl_put_scope(&s, c, date, 0);
    adl_put(&s, "\n", 1);
    adl_puts(&s, sig);
    if (s.err) {
        goto done;
    }

    adl_sink_buf(&s, secret, sizeof(secret));
    adl_puts(&s, "AWS4");
    adl_puts(&s, c->secret_key);
    if (s.err
        || adl_hmac_sha256(secret, s.pos, date, 8, k1) != 0
        || adl_hmac_sha256(k1, 32, c->region, strlen(c->region), k2) != 0
        || adl_hmac_sha256(k2, 32, c->service, strlen(c->service), k1) != 0
        || adl_hmac_sha256(k1, 32, "aws4_request", 12, k2) != 0
        || adl_hmac_sha256(k2, 32, sts, strlen(sts), k1) != 0)
    {
        goto done;
    }
    adl_hex(k1, 32, sig);
    rc = 0;

done:

    /* the derived keys are as good as the secret for a day */
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(k1, sizeof(k1));
    OPENSSL_cleanse(k2, sizeof(k2));
    EVP_MD_CTX_free(md);
    return rc;
}

int
adl_sigv4_sign_headers(const adl_sigv4_creds_t *creds,
    const adl_sigv4_req_t *req, char *authorization, size_t len,
    char amz_date[17])
{
    char        sig[65];
    adl_sink_t  s;
    adl_kv_t    own[4] = { { "host", NULL }, { "x-amz-content-sha256", NULL },
                           { "x-amz-date", NULL },
                           { "x-amz-security-token", NULL } };
    adl_list_t  q = { NULL, 0, NULL, 0, 0 }, h = { NULL, 0, own, 3, 1 };

    if (adl_check(creds, req, req ? req->payload_hash : NULL, 0) != 0
        || adl_amz_date(req->now, amz_date) != 0)
    {
        return -1;
    }
    own[0].value = req->host;
    own[1].value = req->payload_hash;
    own[2].value = amz_date;
    own[3].value = creds->session_token;
    h.nb += (creds->session_token != NULL);
    h.a = req->headers;
    h.na = req->nheaders;
    q.a = req->query;
    q.na = req->nquery;

    if (adl_sign(creds, req, &q, &h, req->payload_hash, amz_date, sig) != 0) {
        return -1;
    }
    adl_sink_buf(&s, authorization, len);
    adl_puts(&s, ADL_ALGO " Credential=");
    adl_put_scope(&s, creds, amz_date, 1);
    adl_puts(&s, ", SignedHeaders=");
    adl_put_headers(&s, &h, 0);
    adl_puts(&s, ", Signature=");
    adl_puts(&s, sig);
    return s.err ? -1 : 0;
}

ssize_t
adl_sigv4_presign_query(const adl_sigv4_creds_t *creds,
    const adl_sigv4_req_t *req, unsigned expires, char *out, size_t len)
{
    char        date[17], cred[ADL_MAX_CRED], sh[ADL_MAX_CRED], exp[16];
    char        sig[65];
    adl_sink_t  s;
    adl_kv_t    host = { "host", NULL };
    adl_kv_t    own[6] = { { "X-Amz-Algorithm", ADL_ALGO },
                           { "X-Amz-Credential", cred },
                           { "X-Amz-Date", date }, { "X-Amz-Expires", exp },
                           { "X-Amz-SignedHeaders", sh },
                           { "X-Amz-Security-Token", NULL } };
    adl_list_t  q = { NULL, 0, own, 5, 0 }, h = { NULL, 0, &host, 1, 1 };

    if (adl_check(creds, req, ADL_UNSIGNED_PAYLOAD, 1) != 0
        || expires == 0 || expires > ADL_SIGV4_MAX_EXPIRES
        || adl_amz_date(req->now, date) != 0)
    {
        return -1;
    }
    host.value = req->host;
    h.a = req->headers;
    h.na = req->nheaders;
    q.a = req->query;
    q.na = req->nquery;
    own[5].value = creds->session_token;
    q.nb += (creds->session_token != NULL);

    adl_sink_buf(&s, cred, sizeof(cred));
    adl_put_scope(&s, creds, date, 1);
    if (s.err) {
        return -1;
    }
    adl_sink_buf(&s, sh, sizeof(sh));
    adl_put_headers(&s, &h, 0);
    if (s.err) {
        return -1;
    }
    adl_sink_buf(&s, exp, sizeof(exp));
    adl_put_uint(&s, expires);

    if (adl_sign(creds, req, &q, &h, ADL_UNSIGNED_PAYLOAD, date, sig) != 0) {
        return -1;
    }
    adl_sink_buf(&s, out, len);
    adl_put_query(&s, &q, 0);
    adl_puts(&s, "&X-Amz-Signature=");
    adl_puts(&s, sig);
    return s.err ? -1 : (ssize_t) s.pos;
}

ssize_t
adl_query_string(const adl_kv_t *query, size_t nquery, char *out, size_t len)
{
    adl_list_t  q = { query, nquery, NULL, 0, 0 };
    adl_sink_t  s;
    size_t      i;

    for (i = 0; i < nquery; i++) {
        if (query[i].name == NULL) {
            return -1;
        }
    }
    adl_sink_buf(&s, out, len);
    adl_put_query(&s, &q, 0);
    return s.err ? -1 : (ssize_t) s.pos;
}

/* What botocore puts in the host name: a single DNS label, 3-63 long. */
static int
adl_dns_bucket(const char *b)
{
    size_t  n = strlen(b);

    return n >= 3 && n <= 63 && b[0] != '-' && b[n - 1] != '-'
           && strspn(b, "abcdefghijklmnopqrstuvwxyz0123456789-") == n;
}

int
adl_s3_locate(const char *endpoint, const char *bucket, int virtual_hosted,
    const char *key, char *scheme, size_t scheme_len, char *host,
    size_t host_len, char *path, size_t path_len)
{
    const char  *h, *hp, *he, *pe, *p;
    adl_sink_t   s;
    unsigned     port = 0;
    int          https;

    if (endpoint == NULL || bucket == NULL || bucket[0] == '\0') {
        return -1;
    }
    https = (strncmp(endpoint, "https://", 8) == 0);
    if (!https && strncmp(endpoint, "http://", 7) != 0) {
        return -1;
    }
    h = endpoint + (https ? 8 : 7);

    /* authority: no userinfo, query or fragment in an endpoint */
    he = h + strcspn(h, "/?#@");
    if (*he != '\0' && *he != '/') {
        return -1;
    }
    if (*h == '[') {
        hp = memchr(h, ']', (size_t) (he - h));
        if (hp++ == NULL) {
            return -1;
        }
    } else {
        hp = memchr(h, ':', (size_t) (he - h));
        hp = (hp != NULL) ? hp : he;
    }
    if (hp == h || (hp < he && (*hp != ':' || hp + 1 == he))) {
        return -1;
    }
    for (p = hp + 1; p < he; p++) {
        if (*p < '0' || *p > '9') {
            return -1;
        }
        port = port * 10 + (unsigned) (*p - '0');
        if (port > 65535) {
            return -1;
        }
    }
    for (p = h; p < hp; p++) {
        if ((unsigned char) *p <= ' ' || *p == 0x7f) {
            return -1;
        }
    }

    adl_sink_buf(&s, scheme, scheme_len);
    adl_puts(&s, https ? "https" : "http");
    if (s.err) {
        return -1;
    }

    /* Host value as botocore signs it: lowercase, no default port */
    virtual_hosted = virtual_hosted && adl_dns_bucket(bucket);
    adl_sink_buf(&s, host, host_len);
    if (virtual_hosted) {
        adl_puts(&s, bucket);
        adl_put(&s, ".", 1);
    }
    adl_put_lower(&s, h, (size_t) (hp - h));
    if (hp < he && port != (https ? 443u : 80u)) {
        adl_put(&s, ":", 1);
        adl_put_uint(&s, port);
    }
    if (s.err) {
        return -1;
    }

    /* the endpoint path is a raw prefix; botocore drops its final '/' */
    pe = he + strlen(he);
    pe -= (pe > he && pe[-1] == '/');
    adl_sink_buf(&s, path, path_len);
    adl_put(&s, he, (size_t) (pe - he));
    if (!virtual_hosted) {
        adl_put(&s, "/", 1);
        adl_puts(&s, bucket);
    }
    if (ADL_STR(key)[0] != '\0' || virtual_hosted) {
        adl_put(&s, "/", 1);
        adl_puts(&s, ADL_STR(key));
    }
    return s.err ? -1 : 0;
}

ssize_t
adl_uri_encode(const char *in, size_t inlen, char *out, size_t len,
    int keep_slash)
{
    adl_sink_t  s;

    adl_sink_buf(&s, out, len);
    adl_put_enc(&s, in, inlen, keep_slash);
    return s.err ? -1 : (ssize_t) s.pos;
}

/* Bytes dropped from file names: they could break out of the header. */
static int
adl_cd_drop(unsigned char c)
{
    return c < ' ' || c == 0x7f || c == '"' || c == '\\' || c == '/';
}

ssize_t
adl_content_disposition(const char *name, size_t namelen, char *out,
    size_t len)
{
    adl_sink_t  s;
    size_t      i, kept = 0;

    adl_sink_buf(&s, out, len);
    adl_puts(&s, "attachment; filename=\"");
    for (i = 0; i < namelen; i++) {
        /* one '_' per non-ASCII character: skip UTF-8 continuations */
        if (!adl_cd_drop((unsigned char) name[i])
            && ((unsigned char) name[i] & 0xc0) != 0x80)
        {
            adl_put(&s, ((unsigned char) name[i] & 0x80) ? "_" : &name[i], 1);
            kept++;
        }
    }
    adl_puts(&s, kept ? "\"; filename*=UTF-8''" : "download\"");
    for (i = 0; kept && i < namelen; i++) {
        if (!adl_cd_drop((unsigned char) name[i])) {
            adl_put_enc(&s, &name[i], 1, 0);
        }
    }
    return s.err ? -1 : (ssize_t) s.pos;
}

int
adl_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char  md[EVP_MAX_MD_SIZE];
    unsigned int   n = 0;

    if (EVP_Digest(data, len, md, &n, sha256_md(), NULL) != 1 || n != 32) {
        return -1;
    }
    adl_hex(md, 32, out);
    return 0;
}

int
adl_hmac_sha256(const void *key, size_t keylen, const void *data,
    size_t len, unsigned char out[32])
{
    unsigned int  n = 0;

    if (keylen > INT_MAX
        || HMAC(sha256_md(), key, (int) keylen, data, len, out, &n) == NULL
        || n != 32)
    {
        return -1;
    }
    return 0;
}

int
adl_sha256_init(adl_sha256_t *ctx)
{
    ctx->md = EVP_MD_CTX_new();
    return (ctx->md != NULL
            && EVP_DigestInit_ex(ctx->md, sha256_md(), NULL) == 1) ? 0 : -1;
}

int
adl_sha256_update(adl_sha256_t *ctx, const void *data, size_t len)
{
    return (ctx->md != NULL && EVP_DigestUpdate(ctx->md, data, len) == 1)
           ? 0 : -1;
}

int
adl_sha256_final_hex(adl_sha256_t *ctx, char out[65])
{
    unsigned char  md[EVP_MAX_MD_SIZE];
    unsigned int   n = 0;

    if (ctx->md == NULL || EVP_DigestFinal_ex(ctx->md, md, &n) != 1
        || n != 32)
    {
        return -1;
    }
    adl_hex(md, 32, out);
    return 0;
}

void
adl_sha256_free(adl_sha256_t *ctx)
{
    EVP_MD_CTX_free(ctx->md);
    ctx->md = NULL;
}
