/*
 * zip: the zip file of a bundle, written a range at a time, and the names
 * of its entries.
 *
 * libarchive's zip writer in store mode (no compression), UTF-8 names,
 * ZIP64 where needed (or on every entry, to test it); its output goes to
 * the owner's sink as it is produced, nothing is kept here.  libarchive
 * only copies and CRCs what it is given.
 */
#ifndef ADL_ZIP_H
#define ADL_ZIP_H

#include <stddef.h>
#include <stdint.h>

typedef struct adl_zip_s  adl_zip_t;

/* Takes the next n bytes of the zip file: 0, or -1 to fail the write. */
typedef int (*adl_zip_sink_pt)(void *data, const void *p, size_t n);

/* NULL when out of memory. */
adl_zip_t *adl_zip_open(int force_zip64, adl_zip_sink_pt sink, void *data);

/* The next entry's header; its size bytes follow with adl_zip_data. */
int adl_zip_entry(adl_zip_t *z, const char *name, int64_t size,
    int64_t mtime);
int adl_zip_data(adl_zip_t *z, const void *p, size_t n);

/* The central directory: the zip is complete. */
int adl_zip_close(adl_zip_t *z);

/* Why the last call failed. */
const char *adl_zip_error(adl_zip_t *z);

/* Frees the writer, closed or not (what it writes then is discarded by
 * the owner: the sink may still be called). */
void adl_zip_free(adl_zip_t *z);

/*
 * The names of the entries: each name reduced to a file name (no folders,
 * no "." or "..", no control characters, no characters Windows refuses,
 * valid UTF-8, at most 200 bytes), then made unique ignoring ASCII case:
 * "a.pdf", "a (1).pdf", ...  names[i] is replaced by a malloc'ed string.
 * -1 on allocation failure.
 */
int adl_bundle_names(char **names, size_t n);

#endif /* ADL_ZIP_H */
