// useDownload: a React hook on async-dl.js.  React comes from the caller's
// 'react' (this file has no dependency of its own; async-dl.js none at all).
//
//   const { job, start, cancel, download, error } = useDownload({ headers });
//   <button onClick={() => start([70000, 70001])}>Download</button>
//   {job && <progress max="100" value={job.progress} />}
//   {job?.status === 'completed' && <button onClick={() => download()}>Save</button>}
import { useCallback, useEffect, useRef, useState } from 'react';
import { createClient } from './async-dl.js';

export function useDownload(options = {}) {
  const opts = useRef(options);
  opts.current = options;
  const client = useCallback(() => createClient(opts.current), []);
  const [jobId, setJobId] = useState(options.jobId || null);
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);

  // follows jobId for as long as it is the one shown
  useEffect(() => {
    if (!jobId) return undefined;
    const f = client().follow(jobId, (u) => setJob(u));
    f.done.catch((err) => setError(err));
    return () => f.stop();
  }, [jobId, client]);

  const start = useCallback(async (files, more) => {
    setError(null);
    setJob(null);
    try {
      const r = await client().initiate(files, more);
      setJobId(r.jobId);
      return r;
    } catch (err) {
      setError(err);
      throw err;
    }
  }, [client]);

  const guard = (fn) => async (...args) => {
    if (!jobId) return undefined;
    try { return await fn(jobId, ...args); } catch (err) { setError(err); throw err; }
  };

  return {
    jobId,
    job,
    error,
    start,
    /** follow another (earlier) job */
    follow: useCallback((id) => { setError(null); setJob(null); setJobId(id); }, []),
    cancel: guard((id) => client().cancel(id)),
    remove: guard(async (id) => { await client().remove(id); setJobId(null); setJob(null); }),
    download: guard((id, index) => client().download(id, index == null ? {} : { index })),
  };
}
