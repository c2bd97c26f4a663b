/*
 * backoff: when to try a failed download again.
 */
#ifndef ADL_BACKOFF_H
#define ADL_BACKOFF_H

#include <stdint.h>

/* "Equal jitter": base * 2^(attempt-1), capped, then a random point in
 * its upper half.  attempt counts from 1. */
int64_t adl_backoff_ms(int64_t base_ms, int attempt);

/* A Retry-After value (seconds or an HTTP date) in ms from now, capped
 * at an hour; -1 when absent or unreadable. */
int64_t adl_retry_after_ms(const char *value);

#endif /* ADL_BACKOFF_H */
