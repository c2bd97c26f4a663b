/*
 * backoff: when to try a failed request again.
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

/* How one step (a request, tried again as long as it fails) is retried. */
typedef struct {
    int      max_tries;     /* tries of the step in a row, the first one
                             * included */
    int64_t  base_ms;       /* adl_backoff_ms(base_ms, tries) */
    int      retry_after;   /* an answer's Retry-After wins */
    int64_t  deadline;      /* adl_now_ms() clock; 0: none */
} adl_retry_t;

/* The delay before the next try of a step that failed (*tries counts the
 * failed tries in a row), or -1 to give up: not transient, the tries
 * used up, or past the deadline. */
int64_t adl_retry_next(const adl_retry_t *p, int *tries, int transient,
    const char *retry_after, int64_t now);

#endif /* ADL_BACKOFF_H */
