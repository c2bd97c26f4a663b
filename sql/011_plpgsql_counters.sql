-- async-dl schema, version 11: the job's counters in PL/pgSQL.
--
-- A LANGUAGE sql function that is not inlined is planned again on every
-- call.  The four below run for every job (initiate's limit counts) and
-- for every file's claim, end and hand-back (the job's counters): as
-- PL/pgSQL they keep their plans for the session.  Same bodies, same
-- results; only the language changes.

CREATE OR REPLACE FUNCTION async_dl_job_add(p_job uuid, dc integer,
                                            df integer, ds integer,
                                            dd bigint, dt bigint,
                                            p_started boolean,
                                            p_cancel boolean)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE async_dl_jobs
       SET completed_files = completed_files + dc,
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

-- One file's row changed from o to n (both read under its row lock).
CREATE OR REPLACE FUNCTION async_dl_job_file_changed(o async_dl_files,
                                                     n async_dl_files)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF (o.status, o.size, o.bytes_done)
       IS DISTINCT FROM (n.status, n.size, n.bytes_done)
    THEN
        PERFORM async_dl_job_add(n.job_id,
            (n.status = 'completed')::integer
                - (o.status = 'completed')::integer,
            (n.status IN ('failed', 'canceled'))::integer
                - (o.status IN ('failed', 'canceled'))::integer,
            (n.size IS NOT NULL)::integer - (o.size IS NOT NULL)::integer,
            n.bytes_done - o.bytes_done,
            coalesce(n.size, 0) - coalesce(o.size, 0),
            false, false);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION async_dl_queued_count() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT queued FROM async_dl_queue_count)
           + (SELECT coalesce(sum(queued), 0) FROM async_dl_count_deltas);
END $$;

CREATE OR REPLACE FUNCTION async_dl_owner_active_count(p_owner text)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT active FROM async_dl_owner_active
                      WHERE owner = p_owner), 0)
           + (SELECT coalesce(sum(active), 0) FROM async_dl_count_deltas
               WHERE owner = p_owner);
END $$;
