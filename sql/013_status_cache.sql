-- async-dl schema, version 13: every change of a status document is
-- announced, and one call reads a document with what a cache needs.
--
-- nginx may keep status documents in shared memory (async_dl_status_cache)
-- and drop one when async_dl_events names its job with a higher event_seq.
-- That needs every change a client can see in the document to bump the
-- job's event_seq, and until 12 some did not: a file claimed in a job that
-- is already processing (its status and attempts change, the job's row
-- not), a try that failed before its first byte (error and status back to
-- pending, bytes still 0).  The job's row now changes with them (p_touch),
-- and its trigger numbers and announces the change as before (kind "p":
-- no file ended).
--
-- A later migration that changes how documents are written (the functions
-- below async_dl_job_status) must end with
-- NOTIFY async_dl_events, 'flush': the caches drop every document.

-- As in 11, with p_touch: the file rows of this job changed in what the
-- document shows.  A file that starts (p_started, the claim) always does.
DROP FUNCTION async_dl_job_add(uuid, integer, integer, integer, bigint,
                               bigint, boolean, boolean);

CREATE FUNCTION async_dl_job_add(p_job uuid, dc integer, df integer,
                                 ds integer, dd bigint, dt bigint,
                                 p_started boolean, p_cancel boolean,
                                 p_touch boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE async_dl_jobs
       SET event_seq = event_seq + (p_started OR p_touch)::integer,
           completed_files = completed_files + dc,
           failed_files = failed_files + df,
           sized_files = sized_files + ds,
           bytes_done = bytes_done + dd,
           bytes_total = bytes_total + dt,
           status = CASE
               WHEN status NOT IN ('queued', 'processing') THEN status
               WHEN p_cancel THEN 'canceled'
               WHEN completed_files + dc + failed_files + df >= total_files
                   THEN CASE WHEN completed_files + dc = 0 THEN 'failed'
                             WHEN total_files > 1 THEN 'processing'
                             ELSE 'completed' END
               WHEN p_started THEN 'processing'
               ELSE status END,
           bundle_status = CASE
               WHEN status NOT IN ('queued', 'processing') THEN bundle_status
               WHEN p_cancel THEN NULL
               WHEN completed_files + dc + failed_files + df >= total_files
                    AND completed_files + dc > 0 AND total_files > 1
                   THEN coalesce(bundle_status, 'pending')
               ELSE bundle_status END,
           started_at = CASE WHEN p_started THEN coalesce(started_at, now())
                             ELSE started_at END,
           completed_at = CASE
               WHEN status NOT IN ('queued', 'processing') THEN completed_at
               WHEN p_cancel THEN now()
               WHEN completed_files + dc + failed_files + df >= total_files
                    AND (completed_files + dc = 0 OR total_files = 1)
                   THEN now()
               ELSE completed_at END,
           error_code = CASE
               WHEN status NOT IN ('queued', 'processing') THEN error_code
               WHEN p_cancel THEN 'CANCELED'
               WHEN completed_files + dc + failed_files + df >= total_files
                    AND completed_files + dc = 0 THEN 'ALL_FILES_FAILED'
               ELSE error_code END,
           error_message = CASE
               WHEN status NOT IN ('queued', 'processing') THEN error_message
               WHEN p_cancel THEN 'the job was canceled'
               WHEN completed_files + dc + failed_files + df >= total_files
                    AND completed_files + dc = 0
                   THEN 'no file could be downloaded'
               ELSE error_message END
     WHERE id = p_job;
END $$;

-- As in 11; a change the document shows (a file's status, name, size,
-- type, digest, attempts or error) touches the job even when the counters
-- stay.  bytes_done alone is in the job's counters, not in the files.
CREATE OR REPLACE FUNCTION async_dl_job_file_changed(o async_dl_files,
                                                     n async_dl_files)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    shown boolean;
BEGIN
    shown := (o.status, o.name, o.size, o.content_type, o.sha256,
              o.attempts, o.error_code, o.error_message)
             IS DISTINCT FROM
             (n.status, n.name, n.size, n.content_type, n.sha256,
              n.attempts, n.error_code, n.error_message);
    IF shown OR o.bytes_done IS DISTINCT FROM n.bytes_done THEN
        PERFORM async_dl_job_add(n.job_id,
            (n.status = 'completed')::integer
                - (o.status = 'completed')::integer,
            (n.status IN ('failed', 'canceled'))::integer
                - (o.status IN ('failed', 'canceled'))::integer,
            (n.size IS NOT NULL)::integer - (o.size IS NOT NULL)::integer,
            n.bytes_done - o.bytes_done,
            coalesce(n.size, 0) - coalesce(o.size, 0),
            false, false, shown);
    END IF;
END $$;

-- nginx's status cache, on a miss: the document of a job whatever its
-- owner (nginx compares the owner itself, and answers another owner the
-- same 404 as a missing job), with its event_seq and expires_at (ms since
-- the epoch, -1 for none) from the same snapshot.  No row: no such job,
-- or it expired.  The document is async_dl_job_status's, byte for byte, so
-- its ETag is the same whether it came from the cache or not.
CREATE FUNCTION async_dl_job_status_fill(p_job uuid, p_prefix text)
RETURNS TABLE (o_owner text, o_seq bigint, o_expires_ms bigint, o_doc text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT j.owner, j.event_seq,
           coalesce((extract(epoch FROM j.expires_at) * 1000)::bigint, -1),
           async_dl_job_status(j.id, j.owner, p_prefix)::text
      FROM async_dl_jobs j
     WHERE j.id = p_job AND async_dl_job_live(j.expires_at);
END $$;
