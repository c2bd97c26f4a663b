-- async-dl schema, version 6: a claim records the key its transfer writes.
--
-- Until 5, the key of a file's object was known to the worker only, and
-- written to the row once the object was stored.  A worker killed between
-- the storage's commit and that write, then a cancel, a DELETE, a deadline
-- or a last failed attempt before anybody claimed the file again, left an
-- object in the bucket that no row named: nobody could ever delete it.
--
-- Now the key is named here (async_dl_object_key) and the claim records it
-- in write_key before any byte is sent to the storage; a zip's key is
-- recorded by its bundle claim (bundle_write_key) the same way.  Whenever a file
-- ends without its object (canceled or failed, by any path) a trigger
-- queues write_key for the workers' janitor, and DELETE queues it along
-- with the stored objects.  A transfer still running when that happens
-- checks again when it stops (async_dl_file_orphan), because its upload
-- may commit after the janitor has deleted the key.

ALTER TABLE async_dl_files ADD COLUMN write_key text;

-- The same for a job's zip: its key, recorded by the bundle claim.
ALTER TABLE async_dl_jobs ADD COLUMN bundle_write_key text;

-- The object key of a job's file: <prefix><job>/<idx>/<name>.  The name
-- is the file's name without folders, else the last segment of the URL's
-- path; anything but [A-Za-z0-9._-] becomes '_', runs of '_' collapse,
-- leading dots go, at most 160 characters, "download" when nothing is left.
CREATE FUNCTION async_dl_object_key(p_prefix text, p_job uuid,
                                    p_idx integer, p_name text, p_url text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_prefix || p_job::text || '/' || p_idx::text || '/'
           || CASE WHEN k.k IN ('', '_') THEN 'download' ELSE k.k END
      FROM (SELECT left(ltrim(regexp_replace(
                       regexp_replace(s.src, '[^A-Za-z0-9._-]', '_', 'g'),
                       '_{2,}', '_', 'g'), '.'), 160) AS k
              FROM (SELECT CASE
                      WHEN coalesce(p_name, '') <> '' THEN
                        -- after the last separator that is not the last
                        -- character ("a/b/" names "b")
                        regexp_replace(
                          CASE WHEN right(p_name, 1) IN ('/', '\')
                               THEN left(p_name, -1) ELSE p_name END,
                          '^.*[/\\]', '')
                      ELSE
                        -- the URL's path without query or fragment; a URL
                        -- with no path at all names nothing
                        (SELECT CASE WHEN strpos(u.p, '/') = 0 THEN ''
                                     ELSE regexp_replace(u.p, '^.*/', '')
                                END
                           FROM (SELECT substring(
                                          CASE WHEN strpos(p_url, '://') > 0
                                               THEN substr(p_url,
                                                 strpos(p_url, '://') + 3)
                                               ELSE p_url END
                                          FROM '^[^?#]*') AS p) u)
                    END AS src) s) k
$$;

-- A file that ends without its object (canceled, failed) may still have
-- one in the bucket, from an attempt whose worker died after the storage
-- committed: queue its key.  One place, whichever path ended it (cancel,
-- deadline sweep, WORKER_LOST, a failed finish).
CREATE FUNCTION async_dl_file_write_key_queue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO async_dl_deleted_objects (job_id, object_key)
    VALUES (NEW.job_id, NEW.write_key);
    PERFORM pg_notify('async_dl_deleted', NEW.job_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER async_dl_files_write_key
    AFTER UPDATE OF status ON async_dl_files
    FOR EACH ROW
    WHEN (NEW.write_key IS NOT NULL
          AND NEW.status IN ('canceled', 'failed')
          AND OLD.status NOT IN ('canceled', 'failed'))
    EXECUTE FUNCTION async_dl_file_write_key_queue();

-- The claim of 005, recording write_key.  p_prefix is the claiming
-- worker's key prefix; a worker of version 5 calls without it and names
-- its keys itself (write_key stays unknown for its claims).
DROP FUNCTION async_dl_claim(text, integer, interval, integer);
CREATE FUNCTION async_dl_claim(p_worker text, p_limit integer,
                               p_lease interval, p_max_attempts integer,
                               p_prefix text DEFAULT NULL)
RETURNS TABLE (job_id uuid, idx integer, url text, name text,
               attempts integer, deadline timestamptz, file_id bigint,
               lease text, write_key text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_job   uuid[];
    v_idx   integer[];
    v_dead  boolean[];
    v_done  bigint[];
    n       integer;
    r       record;
BEGIN
    -- leases that ran out: few rows, found by the downloading index
    SELECT coalesce(array_agg(p.job_id), '{}'),
           coalesce(array_agg(p.idx), '{}'),
           coalesce(array_agg(p.attempts >= p_max_attempts), '{}'),
           coalesce(array_agg(p.bytes_done), '{}')
      INTO v_job, v_idx, v_dead, v_done
      FROM (SELECT f.job_id, f.idx, f.attempts, f.bytes_done
              FROM async_dl_files f
             WHERE f.status = 'downloading' AND f.lease_until < now()
             ORDER BY f.lease_until
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED) p;

    -- files that fail here take no room in the claim
    n := p_limit - (SELECT count(*) FROM unnest(v_dead) d WHERE NOT d);
    IF n > 0 THEN
        SELECT v_job || coalesce(array_agg(p.job_id), '{}'),
               v_idx || coalesce(array_agg(p.idx), '{}'),
               v_dead || coalesce(array_agg(false), '{}'),
               v_done || coalesce(array_agg(p.bytes_done), '{}')
          INTO v_job, v_idx, v_dead, v_done
          FROM (SELECT f.job_id, f.idx, f.bytes_done FROM async_dl_files f
                 WHERE f.status = 'pending' AND f.next_attempt_at <= now()
                 ORDER BY f.next_attempt_at, f.job_id, f.idx
                 LIMIT n
                   FOR UPDATE SKIP LOCKED) p;
    END IF;
    IF cardinality(v_job) = 0 THEN
        RETURN;
    END IF;

    UPDATE async_dl_files f
       SET status = 'failed', lease_owner = NULL, lease_until = NULL,
           error_code = 'WORKER_LOST',
           error_message = 'gave up after ' || f.attempts || ' attempts: '
                           || 'the last one''s worker stopped renewing '
                           || 'its lease',
           completed_at = now(), updated_at = now()
      FROM unnest(v_job, v_idx, v_dead) AS u (j, i, dead)
     WHERE u.dead AND f.job_id = u.j AND f.idx = u.i;

    -- a key an earlier attempt wrote under another worker's prefix is
    -- nobody's once this claim writes elsewhere
    INSERT INTO async_dl_deleted_objects (job_id, object_key)
    SELECT f.job_id, f.write_key
      FROM unnest(v_job, v_idx, v_dead) AS u (j, i, dead)
      JOIN async_dl_files f ON f.job_id = u.j AND f.idx = u.i
     WHERE NOT u.dead AND p_prefix IS NOT NULL AND f.write_key IS NOT NULL
       AND f.write_key <> async_dl_object_key(p_prefix, f.job_id, f.idx,
                                              f.name, f.url);

    UPDATE async_dl_files f
       SET status = 'downloading',
           lease_owner = p_worker || '/' || nextval('async_dl_lease_seq'),
           lease_until = now() + p_lease,
           attempts = f.attempts + 1,
           started_at = coalesce(f.started_at, now()),
           write_key = CASE WHEN p_prefix IS NULL THEN f.write_key
                            ELSE async_dl_object_key(p_prefix, f.job_id,
                                                     f.idx, f.name, f.url)
                       END,
           bytes_done = 0, updated_at = now()
      FROM unnest(v_job, v_idx, v_dead) AS u (j, i, dead)
     WHERE NOT u.dead AND f.job_id = u.j AND f.idx = u.i;

    -- their jobs, in id order: failed files, and the bytes of reclaimed
    -- files, which start again from 0
    FOR r IN
        SELECT u.j, count(*) FILTER (WHERE u.dead) AS failed,
               coalesce(sum(u.done) FILTER (WHERE NOT u.dead), 0) AS lost
          FROM unnest(v_job, v_dead, v_done) AS u (j, dead, done)
         GROUP BY u.j ORDER BY u.j
    LOOP
        PERFORM async_dl_job_add(r.j, 0, r.failed::integer, 0,
                                 (-r.lost)::bigint, 0,
                                 true, false);
    END LOOP;

    RETURN QUERY
    SELECT f.job_id, f.idx, f.url, f.name, f.attempts, j.deadline,
           f.file_id, f.lease_owner, f.write_key
      FROM unnest(v_job, v_idx, v_dead) AS u (j, i, dead)
      JOIN async_dl_files f ON f.job_id = u.j AND f.idx = u.i
      JOIN async_dl_jobs j ON j.id = f.job_id
     WHERE NOT u.dead;
END $$;

-- The bundle claim of 004, recording the zip's key (zip_key).
-- p_prefix is the claiming worker's key prefix; a worker of version 5
-- calls without it and names the key itself.
DROP FUNCTION async_dl_bundle_claim(text, interval, integer);
CREATE FUNCTION async_dl_bundle_claim(p_worker text, p_lease interval,
                                      p_max_attempts integer,
                                      p_prefix text DEFAULT NULL)
RETURNS TABLE (job_id uuid, attempts integer, idx integer, name text,
               object_key text, size bigint, mtime bigint, zip_key text)
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
           bundle_attempts = bundle_attempts + 1,
           bundle_write_key = coalesce(p_prefix || j.id::text || '/'
                                       || j.id::text || '.zip',
                                       bundle_write_key)
     WHERE id = j.id
    RETURNING * INTO j;

    RETURN QUERY
    SELECT j.id, j.bundle_attempts, f.idx, async_dl_file_display_name(f),
           f.object_key, f.size,
           extract(epoch FROM coalesce(f.completed_at, now()))::bigint,
           j.bundle_write_key
      FROM async_dl_files f
     WHERE f.job_id = j.id AND f.status = 'completed'
       AND f.object_key IS NOT NULL
     ORDER BY f.idx;
END $$;

-- DELETE: every object the job may have in the bucket, its zip and the
-- keys of transfers that have not recorded theirs included.
CREATE OR REPLACE FUNCTION async_dl_job_delete(p_job uuid, p_owner text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT async_dl_lock_job(p_job, p_owner) THEN
        RETURN false;
    END IF;
    PERFORM set_config('synchronous_commit', 'on', true);   -- answered 204

    INSERT INTO async_dl_deleted_objects (job_id, object_key)
    SELECT p_job, k.key FROM (
        SELECT f.object_key AS key FROM async_dl_files f
         WHERE f.job_id = p_job AND f.object_key IS NOT NULL
        UNION
        SELECT f.write_key FROM async_dl_files f
         WHERE f.job_id = p_job AND f.write_key IS NOT NULL
           AND f.status NOT IN ('canceled', 'failed')   -- queued then
        UNION
        SELECT j.bundle_key FROM async_dl_jobs j
         WHERE j.id = p_job AND j.bundle_key IS NOT NULL
        UNION
        SELECT j.bundle_write_key FROM async_dl_jobs j
         WHERE j.id = p_job AND j.bundle_write_key IS NOT NULL) k;
    IF FOUND THEN
        PERFORM pg_notify('async_dl_deleted', p_job::text);
    END IF;

    DELETE FROM async_dl_jobs WHERE id = p_job;
    RETURN true;
END $$;

-- A transfer that stopped without recording its object (canceled,
-- deleted, lease lost, storage answer lost) and may have stored it after
-- all: when nobody will store the file again (its job is gone, or it
-- ended canceled or failed), or the key is not the one the file's claim
-- writes or its row records (a worker with another key prefix claimed it
-- since), the key is queued for the janitor.  When the file is pending,
-- or held or completed by a claim writing that key, the object is theirs.
-- Returns the file's status (or 'gone') when it queued the key, else NULL.
CREATE FUNCTION async_dl_file_orphan(p_job uuid, p_idx integer, p_key text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    st  text;
    wk  text;
    ok  text;
BEGIN
    SELECT f.status, f.write_key, f.object_key INTO st, wk, ok
      FROM async_dl_files f
     WHERE f.job_id = p_job AND f.idx = p_idx;
    st := coalesce(st, 'gone');
    IF st IN ('gone', 'canceled', 'failed')
       OR (wk IS NOT NULL AND p_key IS DISTINCT FROM wk
           AND p_key IS DISTINCT FROM ok)
    THEN
        INSERT INTO async_dl_deleted_objects (job_id, object_key)
        VALUES (p_job, p_key);
        PERFORM pg_notify('async_dl_deleted', p_job::text);
        RETURN st;
    END IF;
    RETURN NULL;
END $$;
