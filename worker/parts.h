/*
 * parts: the byte buffers an upload fills and sends, and a multipart
 * upload's part ETags with its CompleteMultipartUpload body.
 */
#ifndef ADL_PARTS_H
#define ADL_PARTS_H

#include <stddef.h>

typedef struct {
    char    *data;
    size_t   len;
    size_t   cap;
} adl_buf_t;

/* Room for need bytes: the capacity doubles from 64 KiB, up to max (need
 * is at most max).  -1 when out of memory, b unchanged. */
int adl_buf_reserve(adl_buf_t *b, size_t need, size_t max);

void adl_buf_swap(adl_buf_t *a, adl_buf_t *b);

void adl_buf_free(adl_buf_t *b);

/* The ETags of the parts stored so far, by part number (from 1). */
typedef struct {
    char   **etags;
    int      n;                 /* slots */
} adl_parts_t;

/* The ETag of part; -1 when out of memory (the one before is kept). */
int adl_parts_set(adl_parts_t *p, int part, const char *etag);

/* The CompleteMultipartUpload body of parts 1..nparts into out
 * (replaced); -1 when out of memory or a part has no ETag. */
int adl_parts_xml(const adl_parts_t *p, int nparts, adl_buf_t *out);

void adl_parts_free(adl_parts_t *p);

#endif /* ADL_PARTS_H */
