/*
 * hash: the SHA-256 of a file as it is downloaded, whose state can be
 * written down at a 64-byte boundary and taken up again by another
 * process: a paused file's hash goes on where its stored parts end.
 *
 * OpenSSL's EVP contexts cannot be saved; its SHA256_CTX (the same
 * compression code) can.  The state is the eight words of the hash so
 * far, in hex; the length comes with it (a multiple of 64).
 */
#ifndef ADL_HASH_H
#define ADL_HASH_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/sha.h>

#define ADL_HASH_STATE_LEN  64          /* hex characters */

typedef struct {
    SHA256_CTX     c;
    int64_t        len;                 /* bytes hashed */
} adl_hash_t;

void adl_hash_init(adl_hash_t *h);
void adl_hash_update(adl_hash_t *h, const void *data, size_t len);
void adl_hash_final_hex(adl_hash_t *h, char out[65]);

/* The state after h->len bytes into out; -1 when h->len is not a multiple
 * of 64. */
int adl_hash_save(const adl_hash_t *h, char out[ADL_HASH_STATE_LEN + 1]);

/* The state saved after len bytes; -1 when it is malformed or len is not
 * a multiple of 64 (h is then a fresh hash). */
int adl_hash_restore(adl_hash_t *h, const char *state, int64_t len);

#endif /* ADL_HASH_H */
