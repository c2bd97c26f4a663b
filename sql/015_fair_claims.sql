-- async-dl schema, version 15: claims that are fair to owners and polite
-- to origins.
--
-- Until 14 the claim took the oldest pending files: one owner's backlog of
-- 10,000 jobs ran before anything queued after it, and every slot of every
-- worker could be on one origin.  Now each claim
--
--   * runs alone (a transaction advisory lock), so that it counts the
--     files every worker is downloading, and no two claims take the same
--     room on a host;
--   * gives each free slot to the owner that would then have the fewest
--     files downloading (its files in their own order: priority, then
--     oldest first), so a newcomer's job starts at the next free slot;
--   * takes at most p_host_limit files downloading per origin host (its
--     host:port, all workers together), none from a host paused by its
--     Retry-After (async_dl_hosts), and at most p_owner_limit per owner.
--
-- 0 for a limit means none.  A worker of version 14 calls with five
-- arguments and gets fairness without limits.

-- the advisory lock of the claim (pg_advisory_xact_lock)
-- 6920133011209537015

ALTER TABLE async_dl_jobs
    ADD COLUMN priority smallint NOT NULL DEFAULT 0
    CHECK (priority BETWEEN -100 AND 100);

-- copied from the job and the URL when the file is inserted, for the index
-- the claim walks; only pending and downloading files need them
ALTER TABLE async_dl_files ADD COLUMN owner text;
ALTER TABLE async_dl_files ADD COLUMN host text;
ALTER TABLE async_dl_files ADD COLUMN priority smallint NOT NULL DEFAULT 0;

-- The origin host of a URL as the limits count it: host and port in lower
-- case, without user info (up to the last '@', as libcurl reads it), the
-- scheme's default port or a trailing dot; '' when there is none.
CREATE FUNCTION async_dl_url_host(p_url text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    scheme  text := lower(substring(p_url FROM
                                    '^([A-Za-z][A-Za-z0-9+.-]*)://'));
    h       text := lower(substring(p_url FROM
                    '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#]*@)?([^/?#]*)'));
BEGIN
    IF h IS NULL THEN
        RETURN '';
    END IF;
    IF scheme = 'http' AND h LIKE '%:80' THEN
        h := left(h, -3);
    ELSIF scheme = 'https' AND h LIKE '%:443' THEN
        h := left(h, -4);
    END IF;
    RETURN regexp_replace(h, '\.(:[0-9]*)?$', '\1');
END $$;

CREATE FUNCTION async_dl_files_fill() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT j.owner, j.priority INTO NEW.owner, NEW.priority
      FROM async_dl_jobs j WHERE j.id = NEW.job_id;
    NEW.host := async_dl_url_host(NEW.url);
    RETURN NEW;
END $$;

CREATE TRIGGER async_dl_files_fill BEFORE INSERT ON async_dl_files
    FOR EACH ROW EXECUTE FUNCTION async_dl_files_fill();

UPDATE async_dl_files f
   SET owner = j.owner, host = async_dl_url_host(f.url)
  FROM async_dl_jobs j
 WHERE j.id = f.job_id AND f.status IN ('pending', 'downloading');

-- the claim's walk: each (owner, host) with files ready, then each one's
-- files in order
CREATE INDEX async_dl_files_fair
    ON async_dl_files (owner, host, priority DESC, next_attempt_at, job_id, idx)
    WHERE status = 'pending';
DROP INDEX async_dl_files_pending;

-- Origin hosts that asked every worker to wait (429 or 503 with
-- Retry-After): no claim takes their files before paused_until.
CREATE TABLE async_dl_hosts (
    host          text PRIMARY KEY,
    paused_until  timestamptz NOT NULL,
    reason        text NOT NULL
);

-- A worker was told to wait by p_url's host until p_until: the later of
-- that and any pause already recorded wins.
CREATE FUNCTION async_dl_host_pause(p_url text, p_until timestamptz,
                                    p_reason text)
RETURNS void
LANGUAGE sql AS $$
    DELETE FROM async_dl_hosts WHERE paused_until < now() - interval '1 hour';
    INSERT INTO async_dl_hosts AS h (host, paused_until, reason)
    VALUES (async_dl_url_host(p_url), p_until, p_reason)
    ON CONFLICT (host) DO UPDATE
       SET paused_until = EXCLUDED.paused_until, reason = EXCLUDED.reason
     WHERE h.paused_until < EXCLUDED.paused_until;
$$;

-- Initiate, as in 10, with the job's priority (the module's "priority");
-- a module of version 14 calls with nine arguments and gets 0.
DROP FUNCTION async_dl_job_create(text, text, text, bigint, text, json,
                                  integer, integer, text);
CREATE FUNCTION async_dl_job_create(p_owner text, p_key text, p_hash text,
                                    p_timeout_ms bigint, p_callback text,
                                    p_files json, p_max_pending integer,
                                    p_max_active integer, p_prefix text,
                                    p_priority smallint DEFAULT 0)
RETURNS TABLE (outcome text, job_id uuid, body text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    j  async_dl_jobs;
    n  bigint;
BEGIN
    IF p_key IS NOT NULL THEN
        SELECT * INTO j FROM async_dl_jobs
         WHERE owner = p_owner AND idempotency_key = p_key;
        IF FOUND THEN
            RETURN QUERY SELECT * FROM async_dl_job_replayed(j, p_hash,
                                                             p_prefix);
            RETURN;
        END IF;
    END IF;

    IF p_max_pending > 0 THEN
        IF (SELECT count(*) FROM (SELECT 1 FROM async_dl_count_deltas
                                   LIMIT 1001) d) > 1000
        THEN
            -- nobody folded them lately (no worker running?): fold now
            -- unless another session is at it
            PERFORM async_dl_counts_compact();
        END IF;
        n := async_dl_queued_count();   -- one snapshot: totals and deltas
        IF n >= p_max_pending THEN
            RETURN QUERY SELECT 'queue_full'::text, NULL::uuid, NULL::text;
            RETURN;
        END IF;
    END IF;

    IF p_max_active > 0 THEN
        IF async_dl_owner_active_count(p_owner) >= p_max_active THEN
            RETURN QUERY SELECT 'owner_limit'::text, NULL::uuid, NULL::text;
            RETURN;
        END IF;
    END IF;

    -- a 202 is a promise: this commit waits for the WAL flush
    PERFORM set_config('synchronous_commit', 'on', true);

    INSERT INTO async_dl_jobs (owner, idempotency_key, request_hash,
                               total_files, timeout_ms, deadline,
                               callback_url, api_prefix, priority)
    VALUES (p_owner, p_key, p_hash, json_array_length(p_files), p_timeout_ms,
            now() + p_timeout_ms * interval '1 millisecond', p_callback,
            nullif(p_prefix, ''), coalesce(p_priority, 0))
    ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING * INTO j;

    IF NOT FOUND THEN
        -- a concurrent request with the same key committed first
        SELECT * INTO j FROM async_dl_jobs
         WHERE owner = p_owner AND idempotency_key = p_key;
        RETURN QUERY SELECT * FROM async_dl_job_replayed(j, p_hash, p_prefix);
        RETURN;
    END IF;

    INSERT INTO async_dl_files (job_id, idx, file_id, url, name)
    SELECT j.id, (e.ord - 1)::integer, (e.f ->> 'file_id')::bigint,
           e.f ->> 'url', e.f ->> 'name'
      FROM json_array_elements(p_files) WITH ORDINALITY AS e (f, ord);

    RETURN QUERY SELECT 'created'::text, j.id,
                        async_dl_job_created(j, p_prefix)::text;
END $$;

-- Where the next claim's walk over (owner, host) pairs starts (one row).
CREATE TABLE async_dl_claim_cursor (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    owner  text NOT NULL DEFAULT '',
    host   text NOT NULL DEFAULT ''
);
INSERT INTO async_dl_claim_cursor DEFAULT VALUES;

-- The pending files the next claim of p_n takes, in the order above.
-- (ROWS 16: about a claim's size, so that the claim probes these files by
-- their primary key instead of reading every pending file.)
CREATE FUNCTION async_dl_claim_pick(p_n integer, p_host_limit integer,
                                    p_owner_limit integer)
RETURNS TABLE (job_id uuid, idx integer)
LANGUAGE plpgsql ROWS 16 AS $$
#variable_conflict use_column
DECLARE
    v_job     uuid[];
    v_idx     integer[];
    v_even    boolean := true;
    v_capped  boolean;
    v_walk    integer := greatest(16, 4 * p_n);
    v_owners  text[];
    v_hosts   text[];
    c_owner   text;
    c_host    text;
BEGIN
    -- the (owner, host) pairs with files ready, one index probe each: at
    -- most v_walk of them, from where the last claim's walk stopped, then
    -- from the first (so that thousands of owners cost a claim no more
    -- than v_walk probes, and each gets its turn)
    SELECT c.owner, c.host INTO c_owner, c_host FROM async_dl_claim_cursor c;
    c_owner := coalesce(c_owner, '');           -- (no row: from the first)
    c_host := coalesce(c_host, '');
    SELECT coalesce(array_agg(w.owner ORDER BY w.n), '{}'),
           coalesce(array_agg(w.host ORDER BY w.n), '{}')
      INTO v_owners, v_hosts
      FROM (WITH RECURSIVE walk (owner, host, n) AS (
                (SELECT f.owner, f.host, 1 FROM async_dl_files f
                  WHERE f.status = 'pending' AND f.next_attempt_at <= now()
                    AND (f.owner, f.host) >= (c_owner, c_host)
                  ORDER BY f.owner, f.host LIMIT 1)
                UNION ALL
                SELECT q.owner, q.host, w.n + 1
                  FROM walk w CROSS JOIN LATERAL (
                       SELECT f.owner, f.host FROM async_dl_files f
                        WHERE f.status = 'pending'
                          AND f.next_attempt_at <= now()
                          AND (f.owner, f.host) > (w.owner, w.host)
                        ORDER BY f.owner, f.host LIMIT 1) q
                 WHERE w.n <= v_walk)
            SELECT * FROM walk) w;
    IF cardinality(v_owners) > v_walk THEN
        -- more to see: the next claim starts at the one left out
        UPDATE async_dl_claim_cursor
           SET owner = v_owners[v_walk + 1], host = v_hosts[v_walk + 1];
        v_owners := v_owners[1:v_walk];
        v_hosts := v_hosts[1:v_walk];
    ELSIF (c_owner, c_host) > ('', '') THEN
        SELECT v_owners || coalesce(array_agg(w.owner ORDER BY w.n), '{}'),
               v_hosts || coalesce(array_agg(w.host ORDER BY w.n), '{}')
          INTO v_owners, v_hosts
          FROM (WITH RECURSIVE walk (owner, host, n) AS (
                    (SELECT f.owner, f.host, 1 FROM async_dl_files f
                      WHERE f.status = 'pending'
                        AND f.next_attempt_at <= now()
                        AND (f.owner, f.host) < (c_owner, c_host)
                      ORDER BY f.owner, f.host LIMIT 1)
                    UNION ALL
                    SELECT q.owner, q.host, w.n + 1
                      FROM walk w CROSS JOIN LATERAL (
                           SELECT f.owner, f.host FROM async_dl_files f
                            WHERE f.status = 'pending'
                              AND f.next_attempt_at <= now()
                              AND (f.owner, f.host) > (w.owner, w.host)
                              AND (f.owner, f.host) < (c_owner, c_host)
                            ORDER BY f.owner, f.host LIMIT 1) q
                     WHERE w.n <= v_walk - cardinality(v_owners))
                SELECT * FROM walk) w;
        IF cardinality(v_owners) > v_walk THEN
            -- the wrap was cut short too: on from the one left out
            UPDATE async_dl_claim_cursor
               SET owner = v_owners[v_walk + 1], host = v_hosts[v_walk + 1];
            v_owners := v_owners[1:v_walk];
            v_hosts := v_hosts[1:v_walk];
        ELSE
            UPDATE async_dl_claim_cursor SET owner = '', host = '';
        END IF;
    END IF;

    LOOP
        SELECT coalesce(array_agg(z.job_id ORDER BY z.ord), '{}'),
               coalesce(array_agg(z.idx ORDER BY z.ord), '{}'),
               coalesce(bool_or(z.capped), false)
          INTO v_job, v_idx, v_capped
          FROM (
        WITH pairs (owner, host) AS (
            SELECT u.o, u.h FROM unnest(v_owners, v_hosts) AS u (o, h)
        ),
        running AS (
            SELECT f.owner, f.host FROM async_dl_files f
             WHERE f.status = 'downloading'
        ),
        host_busy AS (
            SELECT r.host, count(*) AS n FROM running r GROUP BY r.host
        ),
        owner_busy AS (
            SELECT r.owner, count(*) AS n FROM running r GROUP BY r.owner
        ),
        host_room AS (
            SELECT h.host,
                   CASE WHEN p_host_limit > 0
                        THEN p_host_limit - coalesce(b.n, 0)
                        ELSE p_n END AS room
              FROM (SELECT DISTINCT p.host FROM pairs p) h
              LEFT JOIN host_busy b ON b.host = h.host
             WHERE NOT EXISTS (SELECT 1 FROM async_dl_hosts x
                                WHERE x.host = h.host AND x.paused_until > now())
        ),
        owner_load AS (
            SELECT o.owner, coalesce(b.n, 0) AS active
              FROM (SELECT DISTINCT p.owner FROM pairs p) o
              LEFT JOIN owner_busy b ON b.owner = o.owner
        ),
        open_pairs AS (
            SELECT p.owner, p.host, h.room, l.active
              FROM pairs p
              JOIN host_room h ON h.host = p.host AND h.room > 0
              JOIN owner_load l ON l.owner = p.owner
             WHERE p_owner_limit <= 0 OR l.active < p_owner_limit
        ),
        shape AS (
            SELECT count(DISTINCT o.owner) AS owners, max(o.active) AS most
              FROM open_pairs o
        ),
        capped AS (
            -- whether the even share held back any pair's files
            SELECT bool_or(v_even
                           AND (p_n + x.owners - 1) / x.owners + x.most
                               - o.active < least(o.room, p_n)) AS c
              FROM open_pairs o CROSS JOIN shape x
        ),
        candidates AS (
            -- first enough of each pair's files to fill the claim up to one
            -- load level for all, the busiest owner's plus an even share (not
            -- every pair's p_n files: many owners made that the claim's cost)
            SELECT c.job_id, c.idx, c.owner, c.host, c.priority,
                   c.next_attempt_at, o.active, o.room
              FROM open_pairs o CROSS JOIN shape x
              CROSS JOIN LATERAL (
                   SELECT f.job_id, f.idx, f.owner, f.host, f.priority,
                          f.next_attempt_at
                     FROM async_dl_files f
                    WHERE f.status = 'pending' AND f.next_attempt_at <= now()
                      AND f.owner = o.owner AND f.host = o.host
                    ORDER BY f.priority DESC, f.next_attempt_at, f.job_id, f.idx
                    LIMIT least(o.room, p_n,
                                CASE WHEN v_even
                                     THEN (p_n + x.owners - 1) / x.owners
                                          + x.most - o.active
                                     ELSE p_n END)) c
        ),
        by_owner AS (
            -- the files the owner would have downloading with this one
            SELECT c.*, c.active + row_number() OVER (
                       PARTITION BY c.owner
                       ORDER BY c.priority DESC, c.next_attempt_at, c.job_id,
                                c.idx) AS load
              FROM candidates c
        ),
        by_host AS (
            SELECT b.*, row_number() OVER (
                       PARTITION BY b.host
                       ORDER BY b.load, b.next_attempt_at, b.job_id, b.idx) AS nth
              FROM by_owner b
             WHERE p_owner_limit <= 0 OR b.load <= p_owner_limit
        )
        SELECT x.job_id, x.idx,
               row_number() OVER (ORDER BY x.load, x.next_attempt_at, x.job_id,
                                           x.idx) AS ord,
               (SELECT k.c FROM capped k) AS capped
          FROM by_host x
         WHERE x.nth <= x.room
         ORDER BY x.load, x.next_attempt_at, x.job_id, x.idx
         LIMIT p_n) z;
        -- an owner with fewer files than its share leaves the claim
        -- short: then once more with all of each pair's files that fit
        -- (only when the share held any back)
        EXIT WHEN NOT v_even OR NOT v_capped OR cardinality(v_job) >= p_n;
        v_even := false;
    END LOOP;
    RETURN QUERY SELECT u.j, u.i FROM unnest(v_job, v_idx) AS u (j, i);
END $$;

-- The claim of 6 (and 14's generic plans), with the pick above and the
-- lock that makes its counts true.
DROP FUNCTION async_dl_claim(text, integer, interval, integer, text);
CREATE FUNCTION async_dl_claim(p_worker text, p_limit integer,
                               p_lease interval, p_max_attempts integer,
                               p_prefix text DEFAULT NULL,
                               p_host_limit integer DEFAULT 0,
                               p_owner_limit integer DEFAULT 0)
RETURNS TABLE (job_id uuid, idx integer, url text, name text,
               attempts integer, deadline timestamptz, file_id bigint,
               lease text, write_key text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    v_job   uuid[];
    v_idx   integer[];
    v_dead  boolean[];
    v_done  bigint[];
    n       integer;
    r       record;
BEGIN
    p_host_limit := coalesce(p_host_limit, 0);
    p_owner_limit := coalesce(p_owner_limit, 0);
    PERFORM pg_advisory_xact_lock(6920133011209537015);

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
          FROM (SELECT f.job_id, f.idx, f.bytes_done
                  FROM (SELECT c.job_id, c.idx
                          FROM async_dl_claim_pick(n, p_host_limit,
                                                   p_owner_limit) c
                        OFFSET 0) c
                  JOIN async_dl_files f
                    ON f.job_id = c.job_id AND f.idx = c.idx
                 WHERE f.status = 'pending'
                   FOR UPDATE OF f SKIP LOCKED) p;
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
