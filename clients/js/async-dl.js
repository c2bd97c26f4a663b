// async-dl: the browser client of the /v1/download/ API.
//
// One ES module, no dependency, no build step: import it as it is
// (<script type="module">, a bundler, or node >= 18 with fetch).  Types are
// in async-dl.d.ts beside it.
//
//   import { initiate, follow, download } from './async-dl.js';
//   const opts = { headers: { 'X-User': 'alice' } };
//   const job = await initiate([70000, 70001], opts);          // file ids, or URLs
//   follow(job.jobId, (u) => bar.value = u.progress, opts)
//     .done.then((u) => u.status === 'completed' && download(u.jobId, opts));
//
// follow() listens on the job's event stream (EventSource) and falls back to
// polling the status route, with backoff, when EventSource is missing, when
// no event comes within `blockedTimeout` (a proxy that buffers the stream),
// when the server refuses the stream, or when it keeps failing; in the last
// two cases it tries the stream again after `streamRetryAfter` of polls that
// went well (a refused stream only if it is refused no more).  EventSource
// sends cookies, never headers: where the owner is a header, the stream
// needs the same owner from a cookie or from the proxy in front (see
// README, "The browser client"), else it is refused and the client polls.

/** Statuses after which a job never changes again. */
export const FINAL_STATUSES = Object.freeze(['completed', 'failed', 'canceled', 'deleted']);

const FINAL = new Set(FINAL_STATUSES);
const STREAM_EVENTS = ['connected', 'progress', 'paused', 'resumed', 'file', 'completed',
                       'failed', 'canceled', 'deleted', 'heartbeat'];

/** The defaults of every option (see async-dl.d.ts, Options). */
export const DEFAULTS = Object.freeze({
  base: '/v1/download/',
  headers: {},
  credentials: 'same-origin',
  withCredentials: false,
  transport: 'auto',
  pollInterval: 1000,
  maxPollInterval: 10000,
  blockedTimeout: 5000,
  idleTimeout: 45000,
  maxStreamFailures: 3,
  streamRetryAfter: 30000,
});

/** An answer of the API that is not a success, or a job that cannot be followed. */
export class AsyncDLError extends Error {
  constructor(message, { status = 0, code = 'CLIENT_ERROR', body = null, retryAfter = null } = {}) {
    super(message);
    this.name = 'AsyncDLError';
    this.status = status;
    this.code = code;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}

function settings(options) {
  const o = { ...DEFAULTS, ...(options || {}) };
  o.base = String(o.base);
  if (!o.base.endsWith('/')) o.base += '/';
  o.headers = { ...(o.headers || {}) };
  return o;
}

function fetchOf(o) {
  const f = o.fetch || globalThis.fetch;
  if (typeof f !== 'function') throw new AsyncDLError('no fetch in this environment');
  return f;
}

function jobPath(jobId) {
  const id = String(jobId || '');
  if (!id) throw new TypeError('a job id is needed');
  return encodeURIComponent(id);
}

// Retry-After in seconds: delay-seconds, or an HTTP date (RFC 9110 10.2.3).
function retryAfterOf(r) {
  const v = r.headers && r.headers.get('Retry-After');
  if (v == null) return null;
  const s = String(v).trim();
  if (/^\d+$/.test(s)) return Number(s);
  const t = Date.parse(s);
  return Number.isFinite(t) ? Math.max(0, Math.ceil((t - Date.now()) / 1000)) : null;
}

function abortedError() {
  return new AsyncDLError('aborted', { code: 'ABORTED' });
}

async function errorOf(r) {
  let body = null;
  try { body = await r.json(); } catch { /* not JSON: the status says it */ }
  const e = body && body.error;
  return new AsyncDLError(e && e.message ? e.message : `HTTP ${r.status}`, {
    status: r.status, code: e && e.code ? e.code : `HTTP_${r.status}`,
    body, retryAfter: retryAfterOf(r),
  });
}

// POST and DELETE carry X-Requested-With: a header a cross-site form or
// <img> cannot send, so a server that takes the owner from a cookie can
// refuse those without it (CSRF; see README, "The browser client").
async function call(o, method, path, { body, headers } = {}) {
  const h = { Accept: 'application/json',
              ...(method === 'POST' || method === 'DELETE' ? { 'X-Requested-With': 'XMLHttpRequest' } : {}),
              ...o.headers, ...(headers || {}) };
  const init = { method, headers: h, credentials: o.credentials, cache: 'no-store' };
  if (o.signal) init.signal = o.signal;
  if (o.signal && o.signal.aborted) throw abortedError();
  if (body !== undefined) {
    h['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetchOf(o)(o.base + path, init);
  } catch (err) {
    if (o.signal && o.signal.aborted) throw abortedError();
    throw new AsyncDLError(`network error: ${err && err.message ? err.message : err}`,
                           { code: 'NETWORK_ERROR' });
  }
  if (!r.ok) throw await errorOf(r);
  if (r.status === 204) return null;
  return r.json();
}

/**
 * The body of POST {p}initiate for a list of file ids (numbers), URLs
 * (strings) or {url, name} objects.
 */
export function initiateBody(files, options = {}) {
  const list = Array.isArray(files) ? files : [files];
  if (list.length === 0) throw new TypeError('initiate: no files');
  let body;
  if (list.every((x) => typeof x === 'number' || typeof x === 'bigint')) {
    body = { file_ids: list.map(Number) };
  } else if (list.every((x) => typeof x === 'string' || (x && typeof x === 'object' && typeof x.url === 'string'))) {
    body = {
      files: list.map((x) => (typeof x === 'string' ? { url: x }
        : x.name == null ? { url: x.url } : { url: x.url, name: String(x.name) })),
    };
  } else {
    throw new TypeError('initiate: give file ids (numbers) or URLs (strings or {url, name}), not both');
  }
  if (options.timeout != null) body.timeout = options.timeout;
  if (options.priority != null) body.priority = options.priority;
  if (options.callbackUrl != null) body.callback_url = options.callbackUrl;
  return body;
}

/** POST {p}initiate: starts a job; resolves to the 202 answer ({jobId, ...}). */
export function initiate(files, options) {
  const o = settings(options);
  const headers = o.idempotencyKey ? { 'Idempotency-Key': String(o.idempotencyKey) } : {};
  return call(o, 'POST', 'initiate', { body: initiateBody(files, o), headers });
}

/** GET {p}status/{id}: the job's status document. */
export function status(jobId, options) {
  return call(settings(options), 'GET', `status/${jobPath(jobId)}`);
}

/** POST {p}{id}/cancel: stops the job, keeps its record; resolves to the job. */
export function cancel(jobId, options) {
  return call(settings(options), 'POST', `${jobPath(jobId)}/cancel`);
}

/** POST {p}{id}/pause: stops the job's transfers until resume(); resolves to the job. */
export function pause(jobId, options) {
  return call(settings(options), 'POST', `${jobPath(jobId)}/pause`);
}

/** POST {p}{id}/resume: lets a paused job go on; resolves to the job. */
export function resume(jobId, options) {
  return call(settings(options), 'POST', `${jobPath(jobId)}/resume`);
}

/** DELETE {p}{id}: cancels the job and removes it and what it stored. */
export async function remove(jobId, options) {
  await call(settings(options), 'DELETE', jobPath(jobId));
}

/** GET {p}{id}/links: presigned links of every stored file and of the zip. */
export function links(jobId, options) {
  return call(settings(options), 'GET', `${jobPath(jobId)}/links`);
}

/** GET {p}jobs: the owner's jobs, newest first ({jobs, total, nextCursor, ...}). */
export function list(options = {}) {
  const o = settings(options);
  const q = new URLSearchParams();
  for (const k of ['limit', 'offset', 'status', 'cursor']) {
    if (o[k] != null) q.set(k, String(o[k]));
  }
  const qs = q.toString();
  return call(o, 'GET', qs ? `jobs?${qs}` : 'jobs');
}

// An error of the caller's onUpdate: reported as uncaught (the console,
// window.onerror), without stopping the follow.
function report(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else setTimeout(() => { throw err; }, 0);
}

function isFinal(doc) {
  return !!doc && FINAL.has(doc.status);
}

// A link the API gave, before it is followed: only http: and https:.  A
// hostile or broken API answering javascript:... must not run script in
// the page (location.assign would).
function checkLink(url) {
  let u = null;
  try {
    const loc = globalThis.location;
    u = new URL(String(url), loc && loc.href ? loc.href : undefined);
  } catch { /* not a URL */ }
  if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:')) {
    throw new AsyncDLError(`refused a link that is not http: or https: (${u ? u.protocol : 'not a URL'})`,
                           { code: 'UNSAFE_LINK' });
  }
}

/**
 * Waits until the job can be downloaded, then goes to its link: the zip of
 * a multi-file job (or its only file), or file `index`.  The link is a
 * presigned one from {p}{id}/links, so the owner's headers are sent where
 * a plain navigation could not send them.  Resolves to the link; rejects
 * with UNSAFE_LINK for a link that is not http(s), and with ABORTED when
 * options.signal aborts (the wait for a running job included).
 */
export async function download(jobId, options = {}) {
  const o = settings(options);
  let doc = await status(jobId, o);
  if (!isFinal(doc) && o.wait !== false) {
    doc = await follow(jobId, null, o).done;
    if (doc === null) throw abortedError();   // only the signal stops this follow
  }
  const index = o.index == null ? null : Number(o.index);
  const refuse = (code, message) => { throw new AsyncDLError(message, { status: 409, code }); };
  if (index == null) {
    if (doc.status !== 'completed') refuse('NOT_READY', `the job is ${doc.status}`);
    if (doc.bundle && doc.bundle.status === 'failed') {
      refuse('FILE_FAILED', `the zip could not be built: ${doc.bundle.error || 'failed'}`);
    }
  } else {
    const f = (doc.files || []).find((x) => x.index === index);
    if (!f) throw new AsyncDLError(`no file ${index}`, { status: 404, code: 'FILE_NOT_FOUND' });
    if (f.status !== 'completed') {
      refuse(f.status === 'failed' ? 'FILE_FAILED' : f.status === 'canceled' ? 'FILE_CANCELED' : 'NOT_READY',
             f.error && f.error.message ? f.error.message : `the file is ${f.status}`);
    }
  }
  const l = await links(jobId, o);
  const link = index != null ? (l.files || []).find((x) => x.index === index)
    : l.bundle || ((l.files || []).length === 1 && doc.totalFiles === 1 ? l.files[0] : null);
  if (!link) refuse('NOT_READY', 'no link for it yet');
  checkLink(link.url);
  if (o.signal && o.signal.aborted) throw abortedError();
  const go = o.navigate === undefined
    ? (url) => globalThis.location.assign(url)
    : o.navigate;
  if (go) go(link.url, link);
  return link;
}

// Bytes a second over the last few seconds of (time, bytesDone) samples.
function speedMeter(windowMs = 5000) {
  const samples = [];
  return (now, bytes) => {
    if (typeof bytes !== 'number') return null;
    const last = samples[samples.length - 1];
    if (last && bytes < last.bytes) samples.length = 0;   // went back: a retry
    if (!last || last.t !== now) samples.push({ t: now, bytes });
    while (samples.length > 2 && now - samples[1].t >= windowMs) samples.shift();
    const first = samples[0];
    const dt = (now - first.t) / 1000;
    return samples.length > 1 && dt >= 0.25 ? (bytes - first.bytes) / dt : null;
  };
}

// What a file has downloaded, where the documents say it exactly: a stored
// file its size, a pending one 0, and the only file still running the
// job's bytes less those of the stored files.  Else null (not known: the
// API counts bytes per job).
function fileBytes(doc) {
  const files = doc.files || [];
  const open = files.filter((f) => f.status === 'pending' || f.status === 'downloading');
  const stored = files.reduce((n, f) => n + (f.status === 'completed' ? (f.size || 0) : 0), 0);
  return files.map((f) => {
    if (f.status === 'completed') return f.size;
    if (open.length === 1 && open[0] === f && typeof doc.bytesDone === 'number') {
      return Math.max(0, doc.bytesDone - stored);
    }
    if (f.status === 'pending') return 0;
    return null;
  });
}

/**
 * Follows a job until its final event.  onUpdate(update) gets the job's
 * status document as it is now (files included), plus `event`,
 * `transport`, `final` and `speed`.  Returns {stop(), done, transport,
 * reason}: done resolves to the final update (or null after stop(), or
 * once options.signal aborts), and rejects with an AsyncDLError when the job
 * cannot be followed (an unknown job, another owner's, a refused request,
 * status answers that are not JSON three times in a row).
 */
export function follow(jobId, onUpdate, options) {
  const o = settings(options);
  const id = jobPath(jobId);
  const ES = o.EventSource !== undefined ? o.EventSource : globalThis.EventSource;
  const now = o.now || (() => Date.now());
  const timers = new Map();
  const meter = speedMeter();
  let doc = null;
  let lastEventId = o.lastEventId != null ? String(o.lastEventId) : null;
  let es = null;
  let failures = 0;
  let etag = null;
  let interval = o.pollInterval;
  let okSince = null;                   // polls that went well since then
  let badBodies = 0;                    // 200s without a JSON document, in a row
  let retryStream = false;              // go back to the stream after a while
  let streamReturns = 0;
  let stopped = false;
  let probing = null;                   // the stream probe in flight (its abort)
  let resolveDone;
  let rejectDone;
  const done = new Promise((res, rej) => { resolveDone = res; rejectDone = rej; });
  done.catch(() => {});                 // the caller may not look at it
  const handle = { stop, done, transport: null, reason: null };

  function arm(name, ms, fn) {
    clear(name);
    timers.set(name, setTimeout(() => { timers.delete(name); if (!stopped) fn(); }, ms));
  }
  function clear(name) {
    if (timers.has(name)) { clearTimeout(timers.get(name)); timers.delete(name); }
  }
  function closeStream() {
    clear('blocked');
    clear('idle');
    if (es) { const e = es; es = null; e.close(); }
  }
  function end() {
    stopped = true;
    if (probing) probing.abort();
    closeStream();
    for (const t of timers.values()) clearTimeout(t);
    timers.clear();
    if (o.signal) o.signal.removeEventListener('abort', stop);
  }
  function stop() {
    if (stopped) return;
    end();
    resolveDone(null);
  }
  function fail(err) {
    if (stopped) return;
    end();
    rejectDone(err);
  }

  function emit(event) {
    const final = isFinal(doc);
    const speed = final ? null : meter(now(), doc.bytesDone);
    const bytes = fileBytes(doc);
    const update = {
      ...doc,
      files: (doc.files || []).map((f, i) => ({ ...f, bytesDone: bytes[i] })),
      event, transport: handle.transport, final, speed,
    };
    if (onUpdate) {
      try { onUpdate(update); } catch (err) { report(err); }
    }
    if (final) {
      end();
      resolveDone(update);
    }
  }

  // One event (or a polled document) merged into the document.
  function apply(event, data) {
    if (!data || typeof data !== 'object') return;
    if (event === 'progress' || event === 'deleted' || event === 'paused' || event === 'resumed') {
      doc = { ...(doc || { jobId: String(jobId), files: [] }), ...data };
      if (!Array.isArray(doc.files)) doc.files = [];
      // the summary carries no files: a pause holds those not ended
      const held = { paused: ['pending', 'downloading'], resumed: ['paused'] }[event];
      if (held) {
        const to = event === 'paused' ? 'paused' : 'pending';
        doc.files = doc.files.map((f) => (held.includes(f.status) ? { ...f, status: to } : f));
      }
    } else if (event === 'file') {
      if (!doc) return;                 // a file before connected: not expected
      const files = (doc.files || []).slice();
      const i = files.findIndex((f) => f.index === data.index);
      if (i >= 0) files[i] = { ...files[i], ...data }; else files.push(data);
      doc = { ...doc, files };
    } else {                            // connected, a final event, a poll
      doc = { ...data, files: Array.isArray(data.files) ? data.files : (doc && doc.files) || [] };
    }
    emit(event);
  }

  // --- the event stream ---------------------------------------------------
  function openStream() {
    handle.transport = 'eventsource';
    handle.reason = null;
    const qs = lastEventId != null ? `?lastEventId=${encodeURIComponent(lastEventId)}` : '';
    let source;
    try {
      source = new ES(`${o.base}stream/${id}${qs}`, { withCredentials: !!o.withCredentials });
    } catch {
      return toPolling('eventsource-error');
    }
    es = source;
    arm('blocked', o.blockedTimeout, () => toPolling('blocked'));
    for (const name of STREAM_EVENTS) {
      source.addEventListener(name, (e) => {
        if (stopped || es !== source) return;
        failures = 0;
        clear('blocked');
        arm('idle', o.idleTimeout, idle);
        if (e.lastEventId) lastEventId = e.lastEventId;
        if (name === 'heartbeat') return;
        let data;
        try { data = JSON.parse(e.data); } catch { return; }
        apply(name, data);
      });
    }
    source.onerror = () => {
      if (stopped || es !== source) return;
      // CLOSED: the server answered something else than a stream (401,
      // 404, 503...): the polls will say what and go on where they can.
      if (source.readyState === 2) return toPolling('refused');
      if (++failures >= o.maxStreamFailures) return toPolling('failing');
      // EventSource reconnects by itself, with Last-Event-ID; that
      // attempt must bring an event in time too.
      clear('idle');
      arm('blocked', o.blockedTimeout, () => toPolling('blocked'));
    };
  }

  // Open, but silent for longer than a few heartbeats: a connection that
  // died without an error.  Reconnect (with lastEventId), or poll.
  function idle() {
    closeStream();
    if (++failures >= o.maxStreamFailures) return toPolling('failing');
    openStream();
  }

  function toPolling(reason) {
    if (stopped) return;
    closeStream();
    handle.transport = 'poll';
    handle.reason = reason;
    interval = o.pollInterval;
    okSince = null;
    // A stream that failed, or was refused (maybe a 503), may work again
    // later; a missing EventSource will not come back, and a proxy that
    // held the stream back will hold it back again.
    retryStream = reason === 'failing' || reason === 'refused';
    poll();
  }

  // The stream's own answer, as EventSource gets it (no headers of ours,
  // its credentials): EventSource does not tell why it was refused.
  // A probe whose answer is held back (a buffering proxy) is given up
  // after blockedTimeout, as no answer; stop() gives it up at once.
  async function probeStream() {
    const ctl = typeof AbortController === 'function' ? new AbortController() : null;
    probing = ctl;
    if (ctl) arm('probe', o.blockedTimeout, () => ctl.abort());
    try {
      const r = await fetchOf(o)(`${o.base}stream/${id}`, {
        headers: { Accept: 'text/event-stream' },
        credentials: o.withCredentials ? 'include' : 'same-origin',
        cache: 'no-store',
        signal: ctl ? ctl.signal : undefined,
      });
      try { if (r.body && r.body.cancel) r.body.cancel().catch(() => {}); } catch { /* gone */ }
      if (ctl) ctl.abort();
      return r.status;
    } catch {
      return 0;
    } finally {
      probing = null;
      clear('probe');
    }
  }

  // After streamRetryAfter (doubling with each return, up to 8 times) of
  // polls that went well: the stream again.  A refused stream is asked
  // first: still a 5xx, 408, 429 or no answer: wait again; another refusal
  // (401, 403, 404: the stream is not for this page): poll to the end.
  async function backToStream() {
    if (handle.reason === 'refused') {
      const st = await probeStream();
      if (stopped) return;
      if (st < 200 || st > 299) {
        if (st === 0 || st === 408 || st === 429 || st >= 500) okSince = now();
        else retryStream = false;
        again(interval);
        return;
      }
    }
    streamReturns += 1;
    failures = 0;
    openStream();
  }
  function polledWell() {
    if (okSince == null) okSince = now();
    const wait = o.streamRetryAfter * Math.min(2 ** streamReturns, 8);
    return retryStream && typeof ES === 'function' && now() - okSince >= wait;
  }

  // --- polling ------------------------------------------------------------
  function again(ms) {
    if (!stopped) arm('poll', ms, poll);
  }
  function backoff(factor, floorMs) {
    interval = Math.min(o.maxPollInterval, Math.max(interval * factor, floorMs || 0));
    return interval;
  }

  async function poll() {
    if (stopped) return;
    const headers = { Accept: 'application/json', ...o.headers };
    if (etag) headers['If-None-Match'] = etag;
    let r;
    try {
      r = await fetchOf(o)(`${o.base}status/${id}`,
                           { headers, credentials: o.credentials, cache: 'no-store' });
    } catch {
      okSince = null;
      if (!stopped) again(backoff(2));  // the network: try again later
      return;
    }
    if (stopped) return;
    if (r.status === 304) {
      if (polledWell()) return backToStream();
      return again(backoff(1.25));
    }
    if (r.ok) {
      let data;
      try { data = await r.json(); } catch { data = undefined; }
      if (stopped) return;
      if (!data || typeof data !== 'object') {
        // a 200 that is no status document (a captive portal, a proxy's
        // page): a few times may be chance, more is not going to change
        okSince = null;
        if (++badBodies >= 3) {
          return fail(new AsyncDLError(
            `the status answer is not a JSON document (${badBodies} times in a row)`,
            { status: r.status, code: 'BAD_RESPONSE' }));
        }
        return again(backoff(2));
      }
      badBodies = 0;
      const changed = !doc || data.updatedAt !== doc.updatedAt || data.status !== doc.status
        || data.bytesDone !== doc.bytesDone;
      etag = (r.headers && r.headers.get('ETag')) || null;
      apply('status', data);
      if (!stopped) {
        if (changed) interval = o.pollInterval;
        if (polledWell()) return backToStream();
        again(changed ? interval : backoff(1.25));
      }
      return;
    }
    okSince = null;
    const err = await errorOf(r);
    if (stopped) return;
    if (r.status === 404 && doc) {      // it was there: deleted, or expired
      return apply('deleted', { jobId: String(jobId), status: 'deleted',
                                error: { code: err.code, message: err.message } });
    }
    if (r.status === 408 || r.status === 429 || r.status >= 500) {
      // backoff within maxPollInterval, but never before Retry-After
      const after = (err.retryAfter || 0) * 1000;
      return again(Math.max(backoff(2, after), after));
    }
    fail(err);                          // 400, 401, 403, 404: it will not change
  }

  if (o.signal) {
    if (o.signal.aborted) { stop(); return handle; }
    o.signal.addEventListener('abort', stop, { once: true });
  }
  if (o.transport !== 'poll' && typeof ES === 'function') {
    openStream();
  } else {
    toPolling(o.transport === 'poll' ? 'asked' : 'no-eventsource');
  }
  return handle;
}

/** The functions above with these options bound (each call may add more). */
export function createClient(options = {}) {
  const bound = (fn) => (a, b) => fn(a, { ...options, ...(b || {}) });
  return {
    options,
    initiate: bound(initiate),
    status: bound(status),
    cancel: bound(cancel),
    pause: bound(pause),
    resume: bound(resume),
    remove: bound(remove),
    links: bound(links),
    download: bound(download),
    list: (b) => list({ ...options, ...(b || {}) }),
    follow: (jobId, onUpdate, b) => follow(jobId, onUpdate, { ...options, ...(b || {}) }),
  };
}
