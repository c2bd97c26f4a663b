/*
 * checkpoint: a paused file's stored parts, as JSON (checkpoint.h).
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "checkpoint.h"

typedef struct {
    json_t       *json;
    const char  **etags;
} owner_t;

static const char *
text_of(json_t *o, const char *name)
{
    return json_string_value(json_object_get(o, name));
}

int
adl_checkpoint_parse(adl_checkpoint_t *c, const char *text)
{
    owner_t  *own;
    json_t   *o, *parts, *size, *offset;
    size_t    i, n;

    memset(c, 0, sizeof(*c));
    own = calloc(1, sizeof(owner_t));
    if (own == NULL) {
        return -1;
    }
    c->owner = own;
    o = json_loads(text, 0, NULL);
    own->json = o;
    parts = json_object_get(o, "parts");
    offset = json_object_get(o, "offset");
    size = json_object_get(o, "size");
    if (!json_is_object(o) || !json_is_array(parts)
        || !json_is_integer(offset)
        || !(json_is_integer(size) || json_is_null(size))
        || text_of(o, "key") == NULL || text_of(o, "uploadId") == NULL
        || text_of(o, "hash") == NULL || text_of(o, "validator") == NULL
        || text_of(o, "contentType") == NULL)
    {
        return -1;
    }
    n = json_array_size(parts);
    if (n == 0 || n > 10000) {
        return -1;
    }
    own->etags = calloc(n, sizeof(char *));
    if (own->etags == NULL) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        own->etags[i] = json_string_value(json_array_get(parts, i));
        if (own->etags[i] == NULL) {
            return -1;
        }
    }
    c->key = text_of(o, "key");
    c->upload_id = text_of(o, "uploadId");
    c->etags = own->etags;
    c->nparts = (int) n;
    c->offset = (int64_t) json_integer_value(offset);
    c->hash = text_of(o, "hash");
    c->size = json_is_null(size) ? -1 : (int64_t) json_integer_value(size);
    c->validator = text_of(o, "validator");
    c->content_type = text_of(o, "contentType");
    return 0;
}

void
adl_checkpoint_free(adl_checkpoint_t *c)
{
    owner_t  *own = c->owner;

    if (own != NULL) {
        json_decref(own->json);
        free(own->etags);
        free(own);
    }
    memset(c, 0, sizeof(*c));
}

char *
adl_checkpoint_text(const adl_checkpoint_t *c, const adl_parts_t *parts)
{
    json_t  *o, *a;
    char    *text = NULL;
    int      i;

    a = json_array();
    o = json_object();
    if (a == NULL || o == NULL) {
        goto out;
    }
    for (i = 0; i < c->nparts; i++) {
        if (i >= parts->n || parts->etags[i] == NULL
            || json_array_append_new(a, json_string(parts->etags[i])) != 0)
        {
            goto out;
        }
    }
    if (json_object_set_new(o, "key", json_string(c->key)) == 0
        && json_object_set_new(o, "uploadId", json_string(c->upload_id)) == 0
        && json_object_set(o, "parts", a) == 0
        && json_object_set_new(o, "offset", json_integer(c->offset)) == 0
        && json_object_set_new(o, "hash", json_string(c->hash)) == 0
        && json_object_set_new(o, "size", c->size >= 0
                                          ? json_integer(c->size)
                                          : json_null()) == 0
        && json_object_set_new(o, "validator",
                               json_string(c->validator)) == 0
        && json_object_set_new(o, "contentType",
                               json_string(c->content_type)) == 0)
    {
        text = json_dumps(o, JSON_COMPACT);
    }
out:
    json_decref(a);
    json_decref(o);
    return text;
}
