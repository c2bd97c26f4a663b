/*
 * hash: a SHA-256 whose state can be saved (hash.h).  The SHA256_*
 * functions are deprecated in OpenSSL 3 in favour of EVP, which cannot
 * export a state; they are the same code underneath.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adl_sigv4.h"
#include "hash.h"

void
adl_hash_init(adl_hash_t *h)
{
    SHA256_Init(&h->c);
    h->len = 0;
}

void
adl_hash_update(adl_hash_t *h, const void *data, size_t len)
{
    SHA256_Update(&h->c, data, len);
    h->len += (int64_t) len;
}

void
adl_hash_final_hex(adl_hash_t *h, char out[65])
{
    unsigned char  md[SHA256_DIGEST_LENGTH];

    SHA256_Final(md, &h->c);
    adl_hex(md, SHA256_DIGEST_LENGTH, out);
}

int
adl_hash_save(const adl_hash_t *h, char out[ADL_HASH_STATE_LEN + 1])
{
    int  i;

    if (h->len % 64 != 0 || h->c.num != 0) {
        return -1;
    }
    for (i = 0; i < 8; i++) {
        snprintf(out + 8 * i, 9, "%08x", (unsigned int) h->c.h[i]);
    }
    return 0;
}

int
adl_hash_restore(adl_hash_t *h, const char *state, int64_t len)
{
    char           word[9];
    unsigned long  v;
    uint64_t       bits;
    int            i;

    adl_hash_init(h);
    if (state == NULL || strlen(state) != ADL_HASH_STATE_LEN || len < 0
        || len % 64 != 0)
    {
        return -1;
    }
    for (i = 0; i < 8; i++) {
        memcpy(word, state + 8 * i, 8);
        word[8] = '\0';
        if (strspn(word, "0123456789abcdef") != 8) {
            adl_hash_init(h);
            return -1;
        }
        v = strtoul(word, NULL, 16);
        h->c.h[i] = (SHA_LONG) v;
    }
    bits = (uint64_t) len * 8;
    h->c.Nl = (SHA_LONG) (bits & 0xffffffffu);
    h->c.Nh = (SHA_LONG) (bits >> 32);
    h->c.num = 0;
    h->len = len;
    return 0;
}
