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
  const [jobId, setJobIdState] = useState(options.jobId || null);
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);
  // the job as of now, not as of the render a callback was made in:
  // `await start(files); cancel()` cancels the new job
  const idRef = useRef(jobId);
  const setJobId = useCallback((id) => { idRef.current = id; setJobIdState(id); }, []);
  // downloads waiting for their job: aborted at unmount
  const pending = useRef(new Set());

  // options.jobId is followed when it changes (a route parameter, say)
  const propId = options.jobId || null;
  const lastProp = useRef(propId);
  useEffect(() => {
    if (propId === lastProp.current) return;
    lastProp.current = propId;
    setError(null);
    setJob(null);
    setJobId(propId);
  }, [propId, setJobId]);

  // follows jobId for as long as it is the one shown
  useEffect(() => {
    if (!jobId) return undefined;
    const f = client().follow(jobId, (u) => { if (idRef.current === jobId) setJob(u); });
    f.done.catch((err) => { if (idRef.current === jobId) setError(err); });
    return () => f.stop();
  }, [jobId, client]);

  useEffect(() => () => {
    for (const c of pending.current) c.abort();
    pending.current.clear();
  }, []);

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
  }, [client, setJobId]);

  const guard = (fn) => async (...args) => {
    const id = idRef.current;
    if (!id) return undefined;
    try { return await fn(id, ...args); } catch (err) { setError(err); throw err; }
  };

  return {
    jobId,
    job,
    error,
    start,
    /** follow another (earlier) job */
    follow: useCallback((id) => { setError(null); setJob(null); setJobId(id); }, [setJobId]),
    cancel: guard((id) => client().cancel(id)),
    remove: guard(async (id) => {
      await client().remove(id);
      if (idRef.current === id) { setJobId(null); setJob(null); }
    }),
    // a download that waits for a running job stops at unmount (and
    // resolves undefined then)
    download: async (index) => {
      const id = idRef.current;
      if (!id) return undefined;
      const ctl = new AbortController();
      pending.current.add(ctl);
      try {
        return await client().download(id, { ...(index == null ? {} : { index }), signal: ctl.signal });
      } catch (err) {
        if (ctl.signal.aborted) return undefined;
        setError(err);
        throw err;
      } finally {
        pending.current.delete(ctl);
      }
    },
  };
}
