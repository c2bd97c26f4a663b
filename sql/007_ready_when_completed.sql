-- async-dl schema, version 7: "completed" means the download is there.
--
-- Until 6, a multi-file job became completed when its last file ended,
-- and its zip was built after: the final event and the status said
-- "completed" while GET {p}{id} still answered 409 for a second or more,
-- and a client that downloads on "completed" failed (the stream had
-- already closed, so it could not learn when the zip was ready).
--
-- Now a multi-file job whose files ended with at least one stored stays
-- "processing" while its zip is built (bundle "pending", then "building",
-- progress 99), and becomes completed in the same row update that records
-- the zip's end: the final event, the callback and the expiry all start
-- from there.  A zip that could not be built ends the job completed all
-- the same, its "bundle" saying "failed" with the error (the files stay
-- downloadable one by one).  A cancel while the zip is being built
-- cancels the job and drops the zip (its builder's lease check fails and
-- it queues what it stored for the janitor).

-- The job's counters, as in 005; when the last file ends with some stored,
-- a multi-file job stays processing and its zip is queued (bundle
-- pending), instead of the job completing.  Every condition is written on
-- the row's columns, so that it applies to the latest version of the row
-- (see 005).
CREATE OR REPLACE FUNCTION async_dl_job_add(p_job uuid, dc integer,
                                            df integer, ds integer,
                                            dd bigint, dt bigint,
                                            p_started boolean,
                                            p_cancel boolean)
RETURNS void
LANGUAGE sql AS $$
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
     WHERE id = p_job
$$;

-- The zip's phases, whatever path moved them (the counters above, a
-- builder's finish, a claim giving up after the last attempt): a zip
-- queued wakes the workers at once; a zip that ended (stored or failed
-- for good) completes its job in the same update.  Named to run before
-- async_dl_jobs_ended (triggers of one kind run in name order), which then
-- sees the job end.
CREATE FUNCTION async_dl_jobs_bundle() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.bundle_status = 'pending' AND OLD.bundle_status IS NULL THEN
        PERFORM pg_notify('async_dl_lifecycle', NEW.id::text);
    ELSIF NEW.bundle_status IN ('completed', 'failed')
          AND NEW.status = 'processing'
    THEN
        NEW.status := 'completed';
        NEW.completed_at := now();
    END IF;
    -- a zip that will not be built again (failed for good, or dropped by
    -- a cancel) may have been stored by a build whose worker died before
    -- recording it: its key goes to the janitor
    IF (NEW.bundle_status IS NULL OR NEW.bundle_status = 'failed')
       AND OLD.bundle_status IN ('pending', 'building')
       AND NEW.bundle_write_key IS NOT NULL
    THEN
        INSERT INTO async_dl_deleted_objects (job_id, object_key)
        VALUES (NEW.id, NEW.bundle_write_key);
        PERFORM pg_notify('async_dl_deleted', NEW.id::text);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER async_dl_jobs_bundle
    BEFORE UPDATE ON async_dl_jobs
    FOR EACH ROW
    WHEN (OLD.bundle_status IS DISTINCT FROM NEW.bundle_status)
    EXECUTE FUNCTION async_dl_jobs_bundle();

-- A job that ends: as in 004, without the zip, queued above before the job
-- can end.
CREATE OR REPLACE FUNCTION async_dl_jobs_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    s async_dl_lifecycle_settings;
BEGIN
    SELECT * INTO s FROM async_dl_lifecycle_settings;
    NEW.expires_at := coalesce(NEW.completed_at, now())
        + CASE WHEN NEW.status = 'failed'
               THEN coalesce(s.ttl_failed, interval '1 hour')
               ELSE coalesce(s.ttl_completed, interval '24 hours') END;
    IF NEW.callback_url IS NOT NULL THEN
        NEW.callback_status := 'pending';
        NEW.callback_next_at := now();
    END IF;
    PERFORM pg_notify('async_dl_lifecycle', NEW.id::text);
    RETURN NEW;
END $$;

-- The counts behind the limits follow actual status changes: a trigger
-- on "UPDATE OF status" fires for the columns a statement sets, and a
-- zip's end now changes the status from a trigger (a statement that sets
-- only bundle_* columns).
DROP TRIGGER async_dl_jobs_count ON async_dl_jobs;
CREATE TRIGGER async_dl_jobs_count
    AFTER INSERT OR DELETE ON async_dl_jobs
    FOR EACH ROW EXECUTE FUNCTION async_dl_jobs_count();
CREATE TRIGGER async_dl_jobs_count_update
    AFTER UPDATE ON async_dl_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION async_dl_jobs_count();

-- Progress, as in 002; 99 while the zip is built (every file ended).
CREATE OR REPLACE FUNCTION async_dl_job_progress(j async_dl_jobs)
RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN j.status IN ('completed', 'failed') THEN 100
        WHEN j.status = 'canceled'
            THEN (j.completed_files * 100 / j.total_files)::integer
        WHEN j.completed_files + j.failed_files >= j.total_files THEN 99
        WHEN j.sized_files = j.total_files AND j.bytes_total > 0
            THEN least(99, j.bytes_done * 100 / j.bytes_total)::integer
        ELSE least(99, (j.completed_files + j.failed_files) * 100
                       / j.total_files)::integer
    END
$$;
