/*
 * clock: the worker's one clock, monotonic milliseconds.  Deadlines,
 * leases, retries and ticks are all on it.
 */
#ifndef ADL_CLOCK_H
#define ADL_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t
adl_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif /* ADL_CLOCK_H */
