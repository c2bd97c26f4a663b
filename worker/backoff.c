#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "backoff.h"

#define BACKOFF_CAP      (10 * 60 * 1000LL)
#define RETRY_AFTER_CAP  (60 * 60 * 1000LL)

int64_t
adl_backoff_ms(int64_t base_ms, int attempt)
{
    int64_t  d = base_ms;

    while (--attempt > 0 && d < BACKOFF_CAP) {
        d *= 2;
    }
    if (d > BACKOFF_CAP) {
        d = BACKOFF_CAP;
    }
    return d / 2 + (int64_t) (random() % (d / 2 + 1));
}

int64_t
adl_retry_after_ms(const char *value)
{
    char    *end;
    long     secs;
    time_t   when;

    if (value == NULL || value[0] == '\0') {
        return -1;
    }
    secs = strtol(value, &end, 10);
    if (end != value && (*end == '\0' || *end == ' ' || *end == '\r')) {
        if (secs < 0) {
            return -1;
        }
        return secs * 1000LL > RETRY_AFTER_CAP ? RETRY_AFTER_CAP
                                               : secs * 1000LL;
    }
    when = curl_getdate(value, NULL);
    if (when == (time_t) -1) {
        return -1;
    }
    secs = (long) (when - time(NULL));
    if (secs < 0) {
        return 0;
    }
    return secs * 1000LL > RETRY_AFTER_CAP ? RETRY_AFTER_CAP : secs * 1000LL;
}

int64_t
adl_retry_next(const adl_retry_t *p, int *tries, int transient,
    const char *retry_after, int64_t now)
{
    int64_t  delay = -1;

    if (!transient || ++*tries >= p->max_tries) {
        return -1;
    }
    if (p->retry_after) {
        delay = adl_retry_after_ms(retry_after);
    }
    if (delay < 0) {
        delay = adl_backoff_ms(p->base_ms, *tries);
    }
    if (p->deadline != 0 && now + delay >= p->deadline) {
        return -1;
    }
    return delay;
}
