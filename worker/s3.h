/*
 * s3: the storage requests of a transfer, signed with the shared SigV4
 * code (common/adl_sigv4.h; bodies are streamed from memory and sent as
 * UNSIGNED-PAYLOAD).  One request at a time per adl_s3_req_t; the owner
 * gets `done` once with the outcome filled in and may then start the next
 * one with the same struct.
 */
#ifndef ADL_S3_H
#define ADL_S3_H

#include <stddef.h>

#include "adl_sigv4.h"
#include "http.h"
#include "settings.h"

typedef enum {
    S3_NONE = 0,
    S3_PUT,             /* the whole object in one request */
    S3_CREATE,          /* CreateMultipartUpload -> upload_id */
    S3_PART,            /* UploadPart part_number -> etag */
    S3_COMPLETE,        /* CompleteMultipartUpload of body (XML) */
    S3_ABORT,           /* AbortMultipartUpload (405 at the test server) */
    S3_DELETE           /* DeleteObject */
} adl_s3_op_t;

typedef struct adl_s3_s      adl_s3_t;
typedef struct adl_s3_req_s  adl_s3_req_t;

struct adl_s3_req_s {
    adl_http_req_t      http;          /* first: done() casts back */
    adl_s3_op_t         op;

    /* in: set by the owner before adl_s3_start */
    const char         *key;
    const char         *upload_id;
    const char         *content_type;
    int                 part_number;
    const char         *body;          /* not owned */
    size_t              body_len;
    /* or a body streamed by the owner (CURL_READFUNC_PAUSE allowed) of
     * exactly body_len bytes */
    curl_read_callback  read;
    void               *read_data;
    /* no low-speed check: the owner judges the request's progress (a
     * streamed body that waits for its data is not a stalled storage) */
    int                 no_speed_check;

    /* out */
    int                 ok;
    int                 transient;     /* worth trying again */
    int                 reached;       /* it may have reached the storage */
    long                status;        /* 0: no answer */
    char                etag[128];
    char                retry_after[64];   /* the answer's Retry-After */
    char                new_upload_id[512];
    char                error[512];

    void              (*done)(adl_s3_req_t *r);
    void               *data;

    /* private */
    size_t              body_off;
    struct curl_slist  *headers;
    char               *resp;
    size_t              resp_len;
    char                errbuf[CURL_ERROR_SIZE];
};

adl_s3_t *adl_s3_create(const adl_settings_t *s, adl_http_t *storage);
void adl_s3_destroy(adl_s3_t *s3);

/* Starts r->op; -1 (r->error set) when it could not even start. */
int adl_s3_start(adl_s3_t *s3, adl_s3_req_t *r);

/* Stops a running request without calling done, frees its resources. */
void adl_s3_cancel(adl_s3_t *s3, adl_s3_req_t *r);

/*
 * The start of every storage request, for adl_s3_start() and for reads of
 * stored objects (bundle.c).  adl_s3_sign(): the URL of key with the query
 * q into url, and the SigV4 headers of method on it (over q and the signed
 * headers sh, which the caller sends; UNSIGNED-PAYLOAD) appended to
 * *headers, which the caller frees (also on failure).  0, or ADL_S3_EURL
 * (no URL for the key), ADL_S3_ESIGN, ADL_S3_ENOMEM.  adl_s3_easy():
 * adl_http_easy() for the "storage" multi handle, with the timeouts of
 * the settings; NULL when out of memory.
 */
#define ADL_S3_EURL    (-1)
#define ADL_S3_ESIGN   (-2)
#define ADL_S3_ENOMEM  (-3)

int adl_s3_sign(adl_s3_t *s3, const char *method, const char *key,
    const adl_kv_t *q, size_t nq, const adl_kv_t *sh, size_t nsh,
    char *url, size_t len, struct curl_slist **headers);
CURL *adl_s3_easy(adl_s3_t *s3, const char *url, struct curl_slist *headers,
    char *errbuf);

#endif /* ADL_S3_H */
