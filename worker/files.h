/*
 * files: the transfer kind.  Claims files (async_dl_claim, woken by
 * NOTIFY async_dl_jobs and the poll), starts a transfer for each, keeps
 * the jobs they belong to (their deadline, their progress throttle),
 * routes a cancel (NOTIFY async_dl_cancel) and a lease lost to the
 * transfers concerned, settles and frees them from the loop.
 */
#ifndef ADL_FILES_H
#define ADL_FILES_H

#include "task.h"

extern const adl_task_ops_t  adl_files_ops;

#endif /* ADL_FILES_H */
