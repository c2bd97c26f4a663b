-- async-dl schema, version 9: the worker calls functions, not tables.
--
-- Until 8 the worker wrote some of its SQL against the tables themselves
-- (the janitor's queue of deleted objects, the orphan zip of a bundle
-- build, the expiry lock, the TTL settings).  Each is a function here, so
-- the tables can change without a new worker, and what a statement means
-- is named where it is defined.  Nothing changes in what they do.

-- The janitor takes up to p_limit objects that are due, and holds them for
-- p_lease_ms by moving their time past it: a worker that dies with them
-- leaves them to come back when that time is due.
CREATE FUNCTION async_dl_deleted_take(p_lease_ms bigint, p_limit integer)
RETURNS TABLE (o_id bigint, o_job uuid, o_key text)
LANGUAGE sql AS $$
    UPDATE async_dl_deleted_objects
       SET deleted_at = now() + p_lease_ms * interval '1 millisecond'
     WHERE id IN (SELECT id FROM async_dl_deleted_objects
                   WHERE deleted_at <= now()
                   ORDER BY id LIMIT p_limit FOR UPDATE SKIP LOCKED)
    RETURNING id, job_id, object_key
$$;

-- The objects are gone from the storage: their rows go.
CREATE FUNCTION async_dl_deleted_done(p_ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM async_dl_deleted_objects WHERE id = ANY (p_ids)
$$;

-- Their deletion failed: due again after p_delay_ms.
CREATE FUNCTION async_dl_deleted_retry(p_ids bigint[], p_delay_ms bigint)
RETURNS void
LANGUAGE sql AS $$
    UPDATE async_dl_deleted_objects
       SET deleted_at = now() + p_delay_ms * interval '1 millisecond'
     WHERE id = ANY (p_ids)
$$;

-- A bundle build that may have stored its zip ended without recording it.
-- The key goes to the janitor's queue when no build can write it again
-- (the job is gone or canceled, or its bundle failed for good); else (the
-- lease passed to another build, which writes the same key, or stored it)
-- it stays.  True when it was queued; the janitors are told.
CREATE FUNCTION async_dl_bundle_orphan(p_job uuid, p_key text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM async_dl_jobs
                WHERE id = p_job
                  AND bundle_status IN ('pending', 'building', 'completed'))
    THEN
        RETURN false;
    END IF;
    INSERT INTO async_dl_deleted_objects (job_id, object_key)
    VALUES (p_job, p_key);
    PERFORM pg_notify('async_dl_deleted', p_job::text);
    RETURN true;
END $$;

-- One expiry sweep at a time across all workers: a session-level advisory
-- lock, held by the sweeping worker's connection (it goes with it).  When
-- it is not granted, o_holder says who has it (for the log).
CREATE FUNCTION async_dl_expiry_lock()
RETURNS TABLE (o_ok boolean, o_holder text)
LANGUAGE plpgsql AS $$
DECLARE
    k  CONSTANT bigint := 7021786468426065272;
BEGIN
    o_ok := pg_try_advisory_lock(k);
    o_holder := NULL;
    IF NOT o_ok THEN
        SELECT 'pid ' || l.pid
               || coalesce(' (' || a.application_name || ')', '')
          INTO o_holder
          FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory'
           AND l.classid = (k >> 32)::oid
           AND l.objid = (k & 4294967295)::oid
           AND l.objsubid = 1 AND l.granted
         LIMIT 1;
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION async_dl_expiry_unlock() RETURNS boolean
LANGUAGE sql AS $$
    SELECT pg_advisory_unlock(7021786468426065272)
$$;

-- A worker's TTL settings, stored at its start for the sweep (the last
-- worker started wins; all of a deployment's workers share them).
CREATE FUNCTION async_dl_lifecycle_ttls(p_completed_ms bigint,
                                        p_failed_ms bigint)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO async_dl_lifecycle_settings (id, ttl_completed, ttl_failed)
    VALUES (true, p_completed_ms * interval '1 millisecond',
            p_failed_ms * interval '1 millisecond')
    ON CONFLICT (id) DO UPDATE
       SET ttl_completed = EXCLUDED.ttl_completed,
           ttl_failed = EXCLUDED.ttl_failed, updated_at = now()
$$;
