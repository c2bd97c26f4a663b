/*
 * log: one line per event on stderr, text or JSON.  Job and file events
 * carry the job id (and the file index) as fields of their own.
 *
 *   text: 2024-05-01T10:00:00.123Z [info] job=<uuid> file=0 msg trace=00-..
 *   json: {"ts":"...","level":"info","job":"<uuid>","file":0,
 *          "traceparent":"00-...","msg":"..."}
 */
#ifndef ADL_LOG_H
#define ADL_LOG_H

#include "settings.h"

void adl_log_init(int level, int json);

/*
 * A job's trace context (its traceparent), printed on each of its lines
 * from _trace() to the matching _untrace() (calls nest: a job's transfers,
 * its zip and its callback each hold it).  Out of memory: its lines go
 * without it.
 */
void adl_log_trace(const char *job, const char *traceparent);
void adl_log_untrace(const char *job);

/* job NULL and idx < 0: not about a job or a file. */
void adl_log(int level, const char *job, int idx, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define adl_log_debug(...)  adl_log(ADL_LOG_DEBUG, __VA_ARGS__)
#define adl_log_info(...)   adl_log(ADL_LOG_INFO, __VA_ARGS__)
#define adl_log_warn(...)   adl_log(ADL_LOG_WARN, __VA_ARGS__)
#define adl_log_error(...)  adl_log(ADL_LOG_ERROR, __VA_ARGS__)

#endif /* ADL_LOG_H */
