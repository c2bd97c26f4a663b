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
    S3_DELETE,          /* DeleteObject */
    S3_GET              /* GetObject of range_from..range_to into `into` */
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
    /* S3_GET: the bytes range_from..range_to (both included) into `into`
     * (not owned), at most into_cap of them: more is a (transient) error;
     * a 206, or a 200 when range_from is 0, is ok */
    int64_t             range_from, range_to;
    char               *into;
    size_t              into_cap;
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
    size_t              into_len;      /* S3_GET: bytes read into `into` */

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

#endif /* ADL_S3_H */
