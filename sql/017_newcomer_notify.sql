-- async-dl schema, version 17: a new job tells the workers whether its
-- owner has nothing downloading.
--
-- The notification of a new job (async_dl_jobs) carried its id; now it is
-- "<job id> idle" when no file of the job's owner is downloading on any
-- worker.  A worker whose slots are all taken may then claim one file
-- beyond them for such owners (ASYNC_DL_NEWCOMER_SLOTS), so that a new
-- owner's job starts at once instead of after a slot of another owner's
-- backlog frees.  Readers of the first word need not look at the second.
-- The check reads the few downloading files (async_dl_files_downloading).
-- (001's async_dl_jobs_notify keeps the updates.)

CREATE FUNCTION async_dl_jobs_created_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- delivered at commit, when the job's files are visible too
    PERFORM pg_notify('async_dl_jobs', NEW.id::text
                      || CASE WHEN EXISTS (
                              SELECT 1 FROM async_dl_files f
                               WHERE f.status = 'downloading'
                                 AND f.owner = NEW.owner)
                              THEN '' ELSE ' idle' END);
    RETURN NULL;
END $$;

DROP TRIGGER async_dl_jobs_notify_insert ON async_dl_jobs;
CREATE TRIGGER async_dl_jobs_notify_insert
    AFTER INSERT ON async_dl_jobs
    FOR EACH ROW EXECUTE FUNCTION async_dl_jobs_created_notify();

-- the check above, and the claim's count of an owner's downloading files
CREATE INDEX async_dl_files_owner_downloading
    ON async_dl_files (owner) WHERE status = 'downloading';

-- A worker's claim beyond its slots, for the newcomer job p_job: nothing
-- when that job has no file pending any more (another worker took it:
-- every full worker heard the same notification), else a claim of
-- p_limit for owners with nothing downloading only (an owner limit of 1).
-- Like every claim it first takes back files whose lease ran out, of any
-- owner (a worker died holding them).
CREATE FUNCTION async_dl_claim_newcomer(p_job uuid, p_worker text,
                                        p_limit integer, p_lease interval,
                                        p_max_attempts integer,
                                        p_prefix text, p_host_limit integer)
RETURNS TABLE (job_id uuid, idx integer, url text, name text,
               attempts integer, deadline timestamptz, file_id bigint,
               lease text, write_key text)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM async_dl_files f
                    WHERE f.job_id = p_job AND f.status = 'pending') THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM async_dl_claim(p_worker, p_limit, p_lease,
                                              p_max_attempts, p_prefix,
                                              p_host_limit, 1);
END $$;
