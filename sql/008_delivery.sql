-- async-dl schema, version 8: delivery through nginx, and links as JSON.
--
-- Until 7 the module only answered a download with a 302 to a presigned
-- link on the public storage endpoint.  Two new ways to hand out a job's
-- files need more than async_dl_job_file (002) tells:
--
--   async_dl_delivery proxy   nginx streams the object itself, from the
--       internal endpoint, for deployments whose clients cannot reach the
--       storage.  It decides If-Range itself, before asking the storage
--       (an S3 server need not honour it: s3rver ignores it and answers
--       the range of whatever it has), so it needs a validator known
--       without asking the storage: the object's SHA-256, which the worker
--       records with the file (and the bundle), is its ETag.
--   GET {p}{id}/links         every stored object of a job at once, each
--       with its size, for clients that want URLs rather than a redirect.
--
-- Both are new functions: async_dl_job_file keeps its columns, so a module
-- that still uses it (redirect mode) is unaffected by this migration.

-- GET {p}{id} and {p}{id}/files/{index} delivered through nginx:
-- async_dl_job_file's answer, plus o_sha256, the stored object's SHA-256
-- (hex) when it is ready and known.
CREATE FUNCTION async_dl_job_object(p_job uuid, p_owner text, p_idx integer)
RETURNS TABLE (o_outcome text, o_key text, o_name text, o_message text,
               o_url text, o_sha256 text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT f.o_outcome, f.o_key, f.o_name, f.o_message, f.o_url,
           CASE WHEN f.o_outcome <> 'ready' THEN NULL
                WHEN p_idx IS NULL AND j.total_files > 1 THEN j.bundle_sha256
                ELSE (SELECT s.sha256 FROM async_dl_files s
                       WHERE s.job_id = p_job AND s.idx = coalesce(p_idx, 0))
           END
      FROM async_dl_job_file(p_job, p_owner, p_idx) f
      LEFT JOIN async_dl_jobs j ON j.id = p_job;
END $$;

-- GET {p}{id}/links: what of the job is stored, owner-checked.  Rows:
--   no_job   alone: no such job for this owner, or it expired (404)
--   job      first, always: o_name is the job's status
--   file     each stored file, in index order: o_index, o_key, o_name
--            (NULL: the module names it after o_url, as a download),
--            o_url, o_size
--   bundle   last, the zip of a multi-file job once built: o_key,
--            o_name "<job id>.zip", o_size
-- Only the job row: nothing is stored (yet).
CREATE FUNCTION async_dl_job_links(p_job uuid, p_owner text)
RETURNS TABLE (o_kind text, o_index integer, o_key text, o_name text,
               o_url text, o_size bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    j  async_dl_jobs;
BEGIN
    SELECT * INTO j FROM async_dl_jobs
     WHERE id = p_job AND owner = p_owner
       AND async_dl_job_live(expires_at);
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_job'::text, NULL::integer, NULL::text,
                            NULL::text, NULL::text, NULL::bigint;
        RETURN;
    END IF;

    RETURN QUERY SELECT 'job'::text, NULL::integer, NULL::text, j.status,
                        NULL::text, NULL::bigint;

    RETURN QUERY
    SELECT 'file'::text, f.idx, f.object_key, nullif(f.name, ''), f.url,
           f.size
      FROM async_dl_files f
     WHERE f.job_id = p_job AND f.status = 'completed'
       AND f.object_key IS NOT NULL
     ORDER BY f.idx;

    IF j.bundle_status = 'completed' AND j.bundle_key IS NOT NULL THEN
        RETURN QUERY SELECT 'bundle'::text, NULL::integer, j.bundle_key,
                            j.id::text || '.zip', NULL::text, j.bundle_size;
    END IF;
END $$;
