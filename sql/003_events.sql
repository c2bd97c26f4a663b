-- async-dl schema, version 3: what the SSE stream (GET {p}stream/{id})
-- needs.
--
-- Each nginx worker process LISTENs on async_dl_events (sent by the trigger
-- async_dl_jobs_notify, 001, whose third payload word tells a progress
-- change from a status change) and, for a job that has subscribers in that
-- process, fetches the job's state once per change with
-- async_dl_job_events_state() below and fans it out.

-- A job's state for its event stream, from one snapshot, whatever its
-- owner (the module compares the owner itself: one fetch serves every
-- subscriber of the job).  No row, or o_full NULL (an expired job): no
-- such job any more.
--   o_owner, o_seq (event_seq: the events' id), o_status
--   o_states   one letter per file, in index order: p(ending) d(ownloading)
--              c(ompleted) f(ailed) x (canceled); the module compares it
--              with the previous snapshot to find the files that ended
--   o_summary  the job without its files (async_dl_job_summary): "progress"
--   o_files    each file's JSON (as in the status document), one a line,
--              in index order: the "file" events
--   o_full     the status document itself (async_dl_job_status, 002):
--              "connected" and the final event
CREATE FUNCTION async_dl_job_events_state(p_job uuid, p_prefix text)
RETURNS TABLE (o_owner text, o_seq bigint, o_status text, o_states text,
               o_summary text, o_files text, o_full text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- PL/pgSQL keeps the plan per connection (a SQL function with a FROM
    -- clause is planned again on every call)
    RETURN QUERY
    SELECT j.owner, j.event_seq, j.status,
           coalesce(f.states, ''),
           async_dl_job_summary(j, p_prefix)::text,
           coalesce(f.files, ''),
           async_dl_job_status(j.id, j.owner, p_prefix)
      FROM async_dl_jobs j
      LEFT JOIN LATERAL (
           SELECT string_agg(CASE e ->> 'status'
                                 WHEN 'pending' THEN 'p'
                                 WHEN 'downloading' THEN 'd'
                                 WHEN 'completed' THEN 'c'
                                 WHEN 'failed' THEN 'f'
                                 ELSE 'x' END, '' ORDER BY n) AS states,
                  string_agg(replace(e::text, E'\n', ' '), E'\n'
                             ORDER BY n) AS files
             FROM json_array_elements(async_dl_job_files_json(j, p_prefix))
                  WITH ORDINALITY AS x (e, n)) f ON true
     WHERE j.id = p_job;
END $$;
