/*
 * checkpoint: the record of a paused file's stored parts, as the worker
 * handing it back writes it (async_dl_file_checkpoint, sql/022_pause.sql)
 * and the worker claiming it again reads it: a JSON object
 *
 *   {"key","uploadId","parts":[ETag, ...],"offset","hash","size",
 *    "validator","contentType"}
 *
 * parts 1..n of the multipart upload uploadId of key hold the file's
 * first offset bytes; hash is the SHA-256 state after them (hash.h); size
 * the origin's (null: not announced), validator its ETag or date for
 * If-Range, contentType its type.
 */
#ifndef ADL_CHECKPOINT_H
#define ADL_CHECKPOINT_H

#include <stdint.h>

#include "parts.h"

typedef struct {
    const char          *key;
    const char          *upload_id;
    const char *const   *etags;
    int                  nparts;
    int64_t              offset;
    const char          *hash;
    int64_t              size;          /* -1: not announced */
    const char          *validator;
    const char          *content_type;
    void                *owner;         /* what the strings live in */
} adl_checkpoint_t;

/* The record in text; -1 when it is malformed or out of memory (c is then
 * empty).  Always adl_checkpoint_free() afterwards. */
int adl_checkpoint_parse(adl_checkpoint_t *c, const char *text);

void adl_checkpoint_free(adl_checkpoint_t *c);

/* The record of c (etags from parts 1..c->nparts), as text to free();
 * NULL when out of memory. */
char *adl_checkpoint_text(const adl_checkpoint_t *c,
    const adl_parts_t *parts);

#endif /* ADL_CHECKPOINT_H */
