-- async-dl schema, version 14: a claim that is not planned again on every
-- call.
--
-- The claim's statements read the claimed files from arrays (unnest of
-- PL/pgSQL variables).  For those, PostgreSQL's plan cache kept making a
-- custom plan on each call, because a custom plan sees how long the arrays
-- are and a generic one guesses 10 rows: five statements planned again per
-- claim, about 0.6 ms of a claim that did 1.7 ms of work for 4 files.  Their
-- generic plans are the same index probes (unnest -> primary key), so the
-- claim now always uses them.
ALTER FUNCTION async_dl_claim(text, integer, interval, integer, text)
    SET plan_cache_mode = force_generic_plan;

-- The same key as in 6, in PL/pgSQL: as a LANGUAGE sql function with a
-- FROM it could not be inlined and was planned again in every statement
-- that called it; PL/pgSQL keeps its plans for the session.
CREATE OR REPLACE FUNCTION async_dl_object_key(p_prefix text, p_job uuid,
                                               p_idx integer, p_name text,
                                               p_url text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    src  text;
    p    text;
    k    text;
BEGIN
    IF coalesce(p_name, '') <> '' THEN
        -- after the last separator that is not the last character
        -- ("a/b/" names "b")
        src := regexp_replace(CASE WHEN right(p_name, 1) IN ('/', '\')
                                   THEN left(p_name, -1) ELSE p_name END,
                              '^.*[/\\]', '');
    ELSE
        -- the URL's path without query or fragment; a URL with no path at
        -- all names nothing
        p := substring(CASE WHEN strpos(p_url, '://') > 0
                            THEN substr(p_url, strpos(p_url, '://') + 3)
                            ELSE p_url END
                       FROM '^[^?#]*');
        src := CASE WHEN strpos(p, '/') = 0 THEN ''
                    ELSE regexp_replace(p, '^.*/', '') END;
    END IF;
    k := left(ltrim(regexp_replace(regexp_replace(src, '[^A-Za-z0-9._-]',
                                                  '_', 'g'),
                                   '_{2,}', '_', 'g'), '.'), 160);
    RETURN p_prefix || p_job::text || '/' || p_idx::text || '/'
           || CASE WHEN k IN ('', '_') THEN 'download' ELSE k END;
END $$;
