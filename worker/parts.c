/*
 * parts: the byte buffers an upload fills and sends, and a multipart
 * upload's part ETags with its CompleteMultipartUpload body.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parts.h"

int
adl_buf_reserve(adl_buf_t *b, size_t need, size_t max)
{
    size_t   cap;
    char    *p;

    if (need <= b->cap) {
        return 0;
    }
    cap = b->cap ? b->cap : 64 * 1024;
    while (cap < need) {
        cap *= 2;
    }
    if (cap > max) {
        cap = max;
    }
    p = realloc(b->data, cap);
    if (p == NULL) {
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static int
buf_append(adl_buf_t *b, const void *p, size_t n)
{
    if (adl_buf_reserve(b, b->len + n, SIZE_MAX) != 0) {
        return -1;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void
adl_buf_free(adl_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void
adl_buf_swap(adl_buf_t *a, adl_buf_t *b)
{
    adl_buf_t  t = *a;

    *a = *b;
    *b = t;
}

int
adl_parts_set(adl_parts_t *p, int part, const char *etag)
{
    char  **e, *copy;

    if (part > p->n) {
        e = realloc(p->etags, (size_t) (part + 16) * sizeof(char *));
        if (e == NULL) {
            return -1;
        }
        memset(e + p->n, 0, (size_t) (part + 16 - p->n) * sizeof(char *));
        p->etags = e;
        p->n = part + 16;
    }
    copy = strdup(etag);
    if (copy == NULL) {
        return -1;
    }
    free(p->etags[part - 1]);
    p->etags[part - 1] = copy;
    return 0;
}

int
adl_parts_xml(const adl_parts_t *p, int nparts, adl_buf_t *out)
{
    char  line[256];
    int   i, n;

    out->len = 0;
    if (buf_append(out, "<CompleteMultipartUpload>", 25) != 0) {
        return -1;
    }
    for (i = 1; i <= nparts; i++) {
        if (i > p->n || p->etags[i - 1] == NULL) {
            return -1;
        }
        n = snprintf(line, sizeof(line), "<Part><PartNumber>%d</PartNumber>"
                     "<ETag>%s</ETag></Part>", i, p->etags[i - 1]);
        if (buf_append(out, line, (size_t) n) != 0) {
            return -1;
        }
    }
    return buf_append(out, "</CompleteMultipartUpload>", 26);
}

void
adl_parts_free(adl_parts_t *p)
{
    int  i;

    for (i = 0; i < p->n; i++) {
        free(p->etags[i]);
    }
    free(p->etags);
    p->etags = NULL;
    p->n = 0;
}
