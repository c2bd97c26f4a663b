/*
 * callback: POSTs a job's final status document to its callback_url
 * (sql/004_lifecycle.sql queues it when the job ends, once its bundle is
 * settled).  Deliveries are claimed with SKIP LOCKED and held for a lease,
 * so one worker delivers each; a worker that dies mid-delivery leaves it
 * to the lease (at-least-once: receivers dedupe on jobId).
 *
 *   Content-Type: application/json
 *   X-Async-DL-Signature: t=<unix time>,sha256=<hex HMAC-SHA256 of
 *                         "<t>.<body>" keyed with ASYNC_DL_CALLBACK_SECRET>
 *                         (only when the secret is set)
 *
 * Any 2xx is a delivery.  Anything else is retried with backoff
 * (ASYNC_DL_RETRY_BASE doubled, jittered) up to CALLBACK_ATTEMPTS, except
 * a refused address (the download SSRF rules, checked on every connection
 * opened): that fails at once.  Redirects are not followed.
 */
#ifndef ADL_CALLBACK_H
#define ADL_CALLBACK_H

#include "task.h"

#define ADL_CALLBACK_ATTEMPTS  8

extern const adl_task_ops_t  adl_callbacks_ops;

#endif /* ADL_CALLBACK_H */
