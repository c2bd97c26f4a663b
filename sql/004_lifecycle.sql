-- async-dl schema, version 4: what happens after a job ended.
--
--   bundle    a multi-file job that completed gets one zip of its stored
--             files, built by one worker under a lease (like a file)
--   callback  the job's callback_url gets the final status document,
--             POSTed by one worker at a time, retried with backoff
--   expiry    expires_at is set when the job ends (TTLs written by the
--             workers in async_dl_lifecycle_settings); a sweeper removes
--             expired jobs: objects first, then rows
--
-- The three start in one place, the trigger below, whatever ended the job
-- (the last file, the deadline sweep, a cancel from the API).  Workers are
-- told on the channel async_dl_lifecycle (payload: job id).
--
-- The jobs' bundle_* and callback_* columns, their indexes and
-- async_dl_lifecycle_settings are in 001; what the API shows of them
-- (the status document's "bundle" and "callback", the bundle download,
-- expired jobs answering as no job) is in 002.

-- A job ends: when it expires, whether it gets a bundle and a callback.
CREATE FUNCTION async_dl_jobs_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    s async_dl_lifecycle_settings;
BEGIN
    SELECT * INTO s FROM async_dl_lifecycle_settings;
    NEW.expires_at := coalesce(NEW.completed_at, now())
        + CASE WHEN NEW.status = 'failed'
               THEN coalesce(s.ttl_failed, interval '1 hour')
               ELSE coalesce(s.ttl_completed, interval '24 hours') END;

    IF NEW.status = 'completed' AND NEW.total_files > 1
       AND NEW.completed_files > 0
    THEN
        NEW.bundle_status := 'pending';
    END IF;
    IF NEW.callback_url IS NOT NULL THEN
        NEW.callback_status := 'pending';
        NEW.callback_next_at := now();
    END IF;
    PERFORM pg_notify('async_dl_lifecycle', NEW.id::text);
    RETURN NEW;
END $$;

CREATE TRIGGER async_dl_jobs_ended
    BEFORE UPDATE ON async_dl_jobs
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'canceled')
          AND OLD.status IN ('queued', 'processing'))
    EXECUTE FUNCTION async_dl_jobs_ended();


-- The name a file is downloaded as (also its name inside the bundle,
-- before the worker makes it safe and unique).
CREATE FUNCTION async_dl_file_display_name(f async_dl_files) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(nullif(f.name, ''),
                    nullif(regexp_replace(split_part(split_part(f.url, '?', 1),
                                                     '#', 1),
                                          '^.*/', ''), ''),
                    'download')
$$;


-- Worker: claim one job's bundle for p_worker.  Claimable: pending ones
-- whose retry time came, and building ones whose builder's lease ran out
-- (a crashed worker: the bundle is built again from the start).  After
-- p_max_attempts the bundle fails.  Rows: the stored files, in order.
CREATE FUNCTION async_dl_bundle_claim(p_worker text, p_lease interval,
                                      p_max_attempts integer)
RETURNS TABLE (job_id uuid, attempts integer, idx integer, name text,
               object_key text, size bigint, mtime bigint)
LANGUAGE plpgsql AS $$
DECLARE
    j async_dl_jobs;
BEGIN
    LOOP
        SELECT * INTO j FROM async_dl_jobs jb
         WHERE jb.bundle_status IN ('pending', 'building')
           AND coalesce(jb.bundle_lease_until, '-infinity') < now()
         ORDER BY jb.bundle_lease_until NULLS FIRST
         LIMIT 1
           FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        EXIT WHEN j.bundle_attempts < p_max_attempts;
        UPDATE async_dl_jobs
           SET bundle_status = 'failed', bundle_lease_owner = NULL,
               bundle_lease_until = NULL,
               bundle_error = coalesce(bundle_error || ' (gave up after '
                                       || bundle_attempts || ' attempts)',
                                       'gave up after ' || bundle_attempts
                                       || ' attempts')
         WHERE id = j.id;
    END LOOP;

    UPDATE async_dl_jobs
       SET bundle_status = 'building', bundle_lease_owner = p_worker,
           bundle_lease_until = now() + p_lease,
           bundle_attempts = bundle_attempts + 1
     WHERE id = j.id
    RETURNING * INTO j;

    RETURN QUERY
    SELECT j.id, j.bundle_attempts, f.idx, async_dl_file_display_name(f),
           f.object_key, f.size,
           extract(epoch FROM coalesce(f.completed_at, now()))::bigint
      FROM async_dl_files f
     WHERE f.job_id = j.id AND f.status = 'completed'
       AND f.object_key IS NOT NULL
     ORDER BY f.idx;
END $$;

-- Worker: renew the lease of a bundle being built; false when it is no
-- longer this worker's (job deleted, lease lost): stop building.
CREATE FUNCTION async_dl_bundle_renew(p_job uuid, p_worker text,
                                      p_lease interval)
RETURNS boolean
LANGUAGE sql AS $$
    WITH r AS (
        UPDATE async_dl_jobs SET bundle_lease_until = now() + p_lease
         WHERE id = p_job AND bundle_status = 'building'
           AND bundle_lease_owner = p_worker
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM r)
$$;

-- Worker: a bundle build ended.  p_status: 'completed' (key, size,
-- sha256, files), 'failed' (error; retried after p_retry_at when that is
-- given, else final) or 'pending' (handed back: not counted as an
-- attempt).  False when it was not this worker's.
CREATE FUNCTION async_dl_bundle_finish(p_job uuid, p_worker text,
                                       p_status text, p_key text,
                                       p_size bigint, p_sha256 text,
                                       p_files integer, p_error text,
                                       p_retry_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM async_dl_jobs
      WHERE id = p_job AND bundle_status = 'building'
        AND bundle_lease_owner = p_worker
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;

    IF p_status = 'completed' THEN
        UPDATE async_dl_jobs
           SET bundle_status = 'completed', bundle_key = p_key,
               bundle_size = p_size, bundle_sha256 = p_sha256,
               bundle_files = p_files, bundle_error = NULL,
               bundle_lease_owner = NULL, bundle_lease_until = NULL,
               bundle_completed_at = now()
         WHERE id = p_job;
    ELSIF p_status = 'pending' OR p_retry_at IS NOT NULL THEN
        UPDATE async_dl_jobs
           SET bundle_status = 'pending', bundle_error = p_error,
               bundle_lease_owner = NULL, bundle_lease_until = p_retry_at,
               bundle_attempts = bundle_attempts
                                 - (p_status = 'pending')::integer
         WHERE id = p_job;
    ELSE
        UPDATE async_dl_jobs
           SET bundle_status = 'failed', bundle_error = p_error,
               bundle_lease_owner = NULL, bundle_lease_until = NULL
         WHERE id = p_job;
    END IF;
    PERFORM pg_notify('async_dl_lifecycle', p_job::text);
    RETURN true;
END $$;


-- Worker: claim up to p_limit callbacks that are due: pending, their time
-- came, and the job's bundle (if any) is settled, so that the document
-- sent is final.  The claim counts the attempt and holds the callback for
-- p_lease (callback_next_at), so a crashed worker's delivery is retried.
-- body is the job's status document, as GET {p}status/{id} answers it.
CREATE FUNCTION async_dl_callback_claim(p_worker text, p_limit integer,
                                        p_lease interval)
RETURNS TABLE (job_id uuid, url text, attempts integer, body text)
LANGUAGE plpgsql AS $$
DECLARE
    j async_dl_jobs;
BEGIN
    FOR j IN
        SELECT * FROM async_dl_jobs jb
         WHERE jb.callback_status = 'pending'
           AND jb.callback_next_at <= now()
           AND (jb.bundle_status IS NULL
                OR jb.bundle_status IN ('completed', 'failed'))
         ORDER BY jb.callback_next_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE async_dl_jobs
           SET callback_attempts = callback_attempts + 1,
               callback_next_at = now() + p_lease,
               callback_owner = p_worker
         WHERE id = j.id
        RETURNING * INTO j;
        RETURN QUERY
        SELECT j.id, j.callback_url, j.callback_attempts,
               async_dl_job_status(j.id, j.owner,
                                   coalesce(j.api_prefix, '/'));
    END LOOP;
END $$;

-- Worker: a delivery attempt ended.  p_ok: delivered.  Else p_error, and
-- p_retry_at: when to try again (NULL: no more tries, failed).  False when
-- the callback was not this worker's any more.
CREATE FUNCTION async_dl_callback_finish(p_job uuid, p_worker text,
                                         p_ok boolean, p_error text,
                                         p_retry_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE async_dl_jobs
       SET callback_status = CASE WHEN p_ok THEN 'delivered'
                                  WHEN p_retry_at IS NULL THEN 'failed'
                                  ELSE 'pending' END,
           callback_error = CASE WHEN p_ok THEN NULL ELSE p_error END,
           callback_next_at = CASE WHEN p_ok THEN NULL ELSE p_retry_at END,
           delivered_at = CASE WHEN p_ok THEN now() END,
           callback_owner = NULL
     WHERE id = p_job AND callback_status = 'pending'
       AND callback_owner = p_worker;
    RETURN FOUND;
END $$;


-- Worker (expiry sweeper, holding the advisory lock): expired jobs and
-- the objects to delete before their rows, up to p_limit jobs.  Jobs with
-- a bundle being built or a callback still to deliver wait for those.  A
-- job without objects has one row with a NULL key.
CREATE FUNCTION async_dl_expired(p_limit integer)
RETURNS TABLE (job_id uuid, object_key text)
LANGUAGE sql STABLE AS $$
    WITH e AS (
        SELECT j.id, j.bundle_key FROM async_dl_jobs j
         WHERE j.expires_at <= now()
           AND j.status IN ('completed', 'failed', 'canceled')
           AND coalesce(j.bundle_status, '') NOT IN ('pending', 'building')
           AND coalesce(j.callback_status, '') <> 'pending'
         ORDER BY j.expires_at
         LIMIT p_limit)
    SELECT e.id, k.key
      FROM e
      LEFT JOIN LATERAL (
          SELECT f.object_key AS key FROM async_dl_files f
           WHERE f.job_id = e.id AND f.object_key IS NOT NULL
          UNION
          SELECT e.bundle_key WHERE e.bundle_key IS NOT NULL) k ON true
     ORDER BY e.id
$$;

-- Worker: remove the rows of expired jobs whose objects are gone.
CREATE FUNCTION async_dl_expired_delete(p_jobs uuid[]) RETURNS integer
LANGUAGE sql AS $$
    WITH d AS (
        DELETE FROM async_dl_jobs
         WHERE id = ANY (p_jobs) AND expires_at <= now()
           AND status IN ('completed', 'failed', 'canceled')
        RETURNING 1)
    SELECT count(*)::integer FROM d
$$;
