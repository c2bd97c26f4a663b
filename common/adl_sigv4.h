/*
 * adl_sigv4: AWS Signature V4 and S3 helpers shared by the async-dl nginx
 * module and worker; C99 + OpenSSL 3 libcrypto.  Cross-checked byte for
 * byte against botocore by t/010-sigv4.t.
 *
 * - Output goes to caller buffers of explicit size, always NUL-terminated;
 *   ssize_t results are the length without the NUL.  Any error (bad input,
 *   short buffer, OpenSSL failure) returns -1, buffer contents unspecified.
 * - No malloc of our own, no global state, no stdio: thread-safe.  OpenSSL
 *   allocates short-lived digest/HMAC contexts internally.
 * - Paths, keys and query names/values are raw bytes (UTF-8), encoded here
 *   exactly once as S3 wants: RFC 3986 unreserved kept, else %XX uppercase.
 */

#ifndef ADL_SIGV4_H
#define ADL_SIGV4_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#define ADL_UNSIGNED_PAYLOAD   "UNSIGNED-PAYLOAD"
#define ADL_EMPTY_SHA256                                                      \
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define ADL_SIGV4_MAX_EXPIRES  604800       /* 7 days, the S3 maximum */

typedef struct {
    const char  *name;                      /* raw, unencoded */
    const char  *value;                     /* raw; NULL means "" */
} adl_kv_t;

typedef struct {
    const char  *access_key;
    const char  *secret_key;
    const char  *session_token;             /* NULL unless temporary */
    const char  *region;                    /* "us-east-1" */
    const char  *service;                   /* "s3" */
} adl_sigv4_creds_t;

typedef struct {
    const char      *method;                /* "GET", "PUT", ... */
    const char      *host;                  /* Host value: host[:port] */
    const char      *path;                  /* raw, absolute: "/b/a b" */
    const adl_kv_t  *query;                 /* raw; we encode and sort */
    size_t           nquery;
    const adl_kv_t  *headers;               /* extra signed headers */
    size_t           nheaders;
    const char      *payload_hash;          /* hex sha256 or UNSIGNED-... */
    time_t           now;
} adl_sigv4_req_t;

/*
 * Header auth.  Signs "host", "x-amz-content-sha256" (= payload_hash),
 * "x-amz-date" (and "x-amz-security-token" with a session token) plus
 * req->headers, which must not repeat those names.  The caller sends all of
 * them with these exact values, and "Authorization: <authorization>".
 */
int adl_sigv4_sign_headers(const adl_sigv4_creds_t *creds,
    const adl_sigv4_req_t *req, char *authorization, size_t len,
    char amz_date[17]);

/*
 * Query (presigned URL) auth: writes the query string, without '?', in
 * botocore's order: the caller's params as given, then X-Amz-Algorithm,
 * -Credential, -Date, -Expires, -SignedHeaders[, -Security-Token],
 * -Signature.  Signs "host" plus req->headers (which the client must then
 * send); the payload is UNSIGNED-PAYLOAD (req->payload_hash is ignored).
 * expires: 1..ADL_SIGV4_MAX_EXPIRES.  The URL is
 * scheme "://" host adl_uri_encode(path, keep_slash = 1) "?" out.
 */
ssize_t adl_sigv4_presign_query(const adl_sigv4_creds_t *creds,
    const adl_sigv4_req_t *req, unsigned expires, char *out, size_t len);

/* Encoded "a=b&c=" in the given order, for request lines. */
ssize_t adl_query_string(const adl_kv_t *query, size_t nquery, char *out,
    size_t len);

/*
 * S3 addressing as botocore does it for a custom endpoint_url
 * "http[s]://host[:port][/prefix]" (lowercase scheme; no userinfo, query or
 * fragment).  Yields the scheme, the Host value (lowercased, default port
 * dropped) and the raw path "/prefix/bucket/key", or for virtual hosting
 * "bucket.host" and "/prefix/key".  Like botocore, virtual hosting falls
 * back to path style unless the bucket is one DNS label (3-63 [a-z0-9-],
 * alphanumeric ends).  An empty key addresses the bucket ("/prefix/bucket"
 * or "/prefix/").
 */
int adl_s3_locate(const char *endpoint, const char *bucket,
    int virtual_hosted, const char *key, char *scheme, size_t scheme_len,
    char *host, size_t host_len, char *path, size_t path_len);

/* Percent-encode; keep_slash leaves '/' alone (for paths). */
ssize_t adl_uri_encode(const char *in, size_t inlen, char *out, size_t len,
    int keep_slash);

/* Fetches SHA-256 once for the process (OpenSSL 3); -1 when it cannot.
 * Optional: without it each digest uses EVP_sha256(). */
int adl_crypto_init(void);
void adl_crypto_cleanup(void);

int adl_sha256_hex(const void *data, size_t len, char out[65]);

/* n bytes as 2n lowercase hex characters and a NUL into out. */
void adl_hex(const unsigned char *p, size_t n, char *out);
int adl_hmac_sha256(const void *key, size_t keylen, const void *data,
    size_t len, unsigned char out[32]);

/*
 * attachment; filename="<ascii>"; filename*=UTF-8''<pct-encoded UTF-8>
 * with control chars, '"', '\\' and '/' removed from the name, and each
 * non-ASCII character shown as '_' in <ascii>.  If nothing is left:
 * attachment; filename="download".
 */
ssize_t adl_content_disposition(const char *name, size_t namelen, char *out,
    size_t len);

/*
 * Streaming SHA-256.  init allocates an OpenSSL context: always call
 * adl_sha256_free() afterwards (it accepts a zeroed, never-inited ctx).
 */
typedef struct {
    struct evp_md_ctx_st  *md;
} adl_sha256_t;

int adl_sha256_init(adl_sha256_t *ctx);
int adl_sha256_update(adl_sha256_t *ctx, const void *data, size_t len);
int adl_sha256_final_hex(adl_sha256_t *ctx, char out[65]);
void adl_sha256_free(adl_sha256_t *ctx);

#endif /* ADL_SIGV4_H */
