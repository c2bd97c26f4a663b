-- async-dl schema, version 3: the worker's fixes to version 1.
--
-- async_dl_claim: a file taken over from a worker whose lease ran out
-- (a crash) starts again from byte 0, but the bytes its previous holder
-- reported stayed counted in the job's bytes_done, so the job's progress
-- could pass 100 % until the file ended.  They are taken off the job now,
-- in the same statement that resets the file.
CREATE OR REPLACE FUNCTION async_dl_claim(p_worker text, p_limit integer,
                                          p_lease interval)
RETURNS TABLE (job_id uuid, idx integer, url text, name text,
               attempts integer, deadline timestamptz, file_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT f.job_id, f.idx, f.bytes_done
          FROM async_dl_files f
         WHERE (f.status = 'pending' AND f.next_attempt_at <= now())
            OR (f.status = 'downloading' AND f.lease_until < now())
         ORDER BY f.next_attempt_at, f.job_id, f.idx
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE async_dl_files f
           SET status = 'downloading', lease_owner = p_worker,
               lease_until = now() + p_lease,
               started_at = coalesce(f.started_at, now()),
               bytes_done = 0, updated_at = now()
          FROM picked p
         WHERE f.job_id = p.job_id AND f.idx = p.idx
        RETURNING f.job_id, f.idx, f.url, f.name, f.attempts, f.file_id
    ), lost AS (
        SELECT p.job_id, sum(p.bytes_done) AS bytes
          FROM picked p
         WHERE p.bytes_done <> 0
         GROUP BY p.job_id
    ), started AS (
        UPDATE async_dl_jobs j
           SET status = CASE WHEN j.status = 'queued' THEN 'processing'
                             ELSE j.status END,
               started_at = coalesce(j.started_at, now()),
               bytes_done = greatest(0, j.bytes_done
                                        - coalesce(l.bytes, 0))
          FROM (SELECT DISTINCT c.job_id FROM claimed c) c
          LEFT JOIN lost l ON l.job_id = c.job_id
         WHERE j.id = c.job_id
           AND (j.status = 'queued' OR l.bytes IS NOT NULL)
    )
    SELECT c.job_id, c.idx, c.url, c.name, c.attempts, j.deadline, c.file_id
      FROM claimed c JOIN async_dl_jobs j ON j.id = c.job_id;
END $$;
