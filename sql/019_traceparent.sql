-- async-dl schema, version 19: a job keeps the W3C trace context
-- (traceparent) of the request that created it.
--
-- The module validates the request's traceparent header, or makes one up
-- when it is absent or malformed, and passes it as the eleventh argument of
-- async_dl_job_create.  The worker reads it with its claims, sends it to
-- the origin and to the callback, and logs it on the job's lines.  A
-- module of version 18 calls with ten arguments and stores none.

-- (NOT VALID: the existing rows have none, and checking them would hold
-- the table's lock for a scan)
ALTER TABLE async_dl_jobs ADD COLUMN traceparent text;
ALTER TABLE async_dl_jobs ADD CONSTRAINT async_dl_jobs_traceparent
    CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$')
    NOT VALID;

-- The new job's row takes the value the call below set for its
-- transaction; a replayed initiate inserts nothing and keeps the first.
CREATE FUNCTION async_dl_jobs_fill_trace() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.traceparent := nullif(current_setting('async_dl.traceparent', true),
                              '');
    RETURN NEW;
END $$;

CREATE TRIGGER async_dl_jobs_fill_trace BEFORE INSERT ON async_dl_jobs
    FOR EACH ROW WHEN (NEW.traceparent IS NULL)
    EXECUTE FUNCTION async_dl_jobs_fill_trace();

-- Initiate with a traceparent: 15's async_dl_job_create in a transaction
-- that names it.
CREATE FUNCTION async_dl_job_create(p_owner text, p_key text, p_hash text,
                                    p_timeout_ms bigint, p_callback text,
                                    p_files json, p_max_pending integer,
                                    p_max_active integer, p_prefix text,
                                    p_priority smallint, p_traceparent text)
RETURNS TABLE (outcome text, job_id uuid, body text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('async_dl.traceparent', coalesce(p_traceparent, ''),
                       true);
    RETURN QUERY SELECT * FROM async_dl_job_create(p_owner, p_key, p_hash,
        p_timeout_ms, p_callback, p_files, p_max_pending, p_max_active,
        p_prefix, p_priority);
    PERFORM set_config('async_dl.traceparent', '', true);
END $$;
