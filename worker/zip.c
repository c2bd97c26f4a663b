/*
 * zip: libarchive's zip writer behind a sink, and the entries' names.
 */
#include <archive.h>
#include <archive_entry.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "zip.h"

#define NAME_MAX_BYTES    200

struct adl_zip_s {
    struct archive   *ar;
    adl_zip_sink_pt   sink;
    void             *data;
};


/* --- the writer ----------------------------------------------------------- */

static la_ssize_t
zip_write(struct archive *a, void *data, const void *buf, size_t n)
{
    adl_zip_t  *z = data;

    (void) a;
    if (z->sink(z->data, buf, n) != 0) {
        return -1;
    }
    return (la_ssize_t) n;
}

adl_zip_t *
adl_zip_open(int force_zip64, adl_zip_sink_pt sink, void *data)
{
    adl_zip_t  *z;

    z = calloc(1, sizeof(adl_zip_t));
    if (z == NULL) {
        return NULL;
    }
    z->sink = sink;
    z->data = data;
    z->ar = archive_write_new();
    if (z->ar == NULL
        || archive_write_set_format_zip(z->ar) != ARCHIVE_OK
        || archive_write_set_format_option(z->ar, "zip", "compression",
                                           "store") != ARCHIVE_OK
        || archive_write_set_format_option(z->ar, "zip", "hdrcharset",
                                           "UTF-8") != ARCHIVE_OK
        || (force_zip64
            && archive_write_set_format_option(z->ar, "zip", "zip64", "1")
               != ARCHIVE_OK)
        || archive_write_set_bytes_per_block(z->ar, 0) != ARCHIVE_OK
        || archive_write_set_bytes_in_last_block(z->ar, 1) != ARCHIVE_OK
        || archive_write_open(z->ar, z, NULL, zip_write, NULL) != ARCHIVE_OK)
    {
        adl_zip_free(z);
        return NULL;
    }
    return z;
}

int
adl_zip_entry(adl_zip_t *z, const char *name, int64_t size, int64_t mtime)
{
    struct archive_entry  *ae = archive_entry_new();
    int                    rc;

    if (ae == NULL) {
        return -1;
    }
    archive_entry_set_pathname_utf8(ae, name);
    archive_entry_set_filetype(ae, AE_IFREG);
    archive_entry_set_perm(ae, 0644);
    archive_entry_set_size(ae, size);
    archive_entry_set_mtime(ae, (time_t) mtime, 0);
    rc = archive_write_header(z->ar, ae);
    archive_entry_free(ae);
    return rc == ARCHIVE_OK ? 0 : -1;
}

int
adl_zip_data(adl_zip_t *z, const void *p, size_t n)
{
    return archive_write_data(z->ar, p, n) == (la_ssize_t) n ? 0 : -1;
}

int
adl_zip_close(adl_zip_t *z)
{
    return archive_write_close(z->ar) == ARCHIVE_OK ? 0 : -1;
}

const char *
adl_zip_error(adl_zip_t *z)
{
    const char  *e = archive_error_string(z->ar);

    return e != NULL ? e : "unknown error";
}

void
adl_zip_free(adl_zip_t *z)
{
    if (z == NULL) {
        return;
    }
    if (z->ar != NULL) {
        archive_write_free(z->ar);      /* closes too */
    }
    free(z);
}


/* --- names -------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 if invalid. */
static size_t
utf8_len(const unsigned char *p, size_t n)
{
    size_t    len, i;
    uint32_t  c;

    if (p[0] < 0x80) {
        return 1;
    }
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        c = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        c = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        c = p[0] & 0x07;
    } else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        c = (c << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff)))
        || (len == 4 && (c < 0x10000 || c > 0x10ffff)))
    {
        return 0;
    }
    /* C1 controls (U+0080..U+009F) */
    if (len == 2 && c < 0xa0) {
        return 0;
    }
    return len;
}

/* A safe file name for raw (malloc'ed). */
static char *
clean_name(const char *raw)
{
    const unsigned char  *p, *end, *base;
    char                 *out;
    size_t                n = 0, len, skip;

    /* the last path segment, '/' or '\\' */
    p = (const unsigned char *) (raw ? raw : "");
    end = p + strlen((const char *) p);
    while (end > p && (end[-1] == '/' || end[-1] == '\\')) {
        end--;
    }
    base = end;
    while (base > p && base[-1] != '/' && base[-1] != '\\') {
        base--;
    }

    out = malloc(NAME_MAX_BYTES + 16);
    if (out == NULL) {
        return NULL;
    }
    for (p = base; p < end; p += skip) {
        len = utf8_len(p, (size_t) (end - p));
        skip = len ? len : 1;
        if (len == 1 && (*p < 0x20 || *p == 0x7f
                         || strchr("<>:\"|?*", *p) != NULL))
        {
            len = 0;                    /* control or reserved: '_' */
        }
        if (n + (len ? len : 1) > NAME_MAX_BYTES) {
            break;                      /* never cuts a character */
        }
        if (len == 0) {
            if (n == 0 || out[n - 1] != '_') {
                out[n++] = '_';
            }
            continue;
        }
        memcpy(out + n, p, len);
        n += len;
    }
    /* no leading or trailing spaces, no trailing dots (Windows) */
    while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == '.')) {
        n--;
    }
    out[n] = '\0';
    skip = strspn(out, " ");
    memmove(out, out + skip, n - skip + 1);
    if (out[0] == '\0' || strcmp(out, "_") == 0) {
        strcpy(out, "file");
    }
    return out;
}

static int
name_taken(char **names, size_t n, const char *name)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        if (strcasecmp(names[i], name) == 0) {
            return 1;
        }
    }
    return 0;
}

int
adl_bundle_names(char **names, size_t n)
{
    size_t   i, stem;
    char    *c, *u, *dot;
    int      k;

    for (i = 0; i < n; i++) {
        c = clean_name(names[i]);
        if (c == NULL) {
            return -1;
        }
        free(names[i]);
        names[i] = c;

        if (!name_taken(names, i, c)) {
            continue;
        }
        /* "a.pdf" -> "a (1).pdf"; a leading dot is not an extension */
        dot = strrchr(c, '.');
        stem = dot != NULL && dot != c ? (size_t) (dot - c) : strlen(c);
        u = malloc(strlen(c) + 24);
        if (u == NULL) {
            return -1;
        }
        for (k = 1; ; k++) {
            sprintf(u, "%.*s (%d)%s", (int) stem, c, k, c + stem);
            if (!name_taken(names, i, u)) {
                break;
            }
        }
        free(c);
        names[i] = u;
    }
    return 0;
}
