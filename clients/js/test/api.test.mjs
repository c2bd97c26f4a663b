// The request side of the client: what initiate, cancel, remove, list,
// links and download send and make of the answers.  A fake fetch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initiate, initiateBody, cancel, pause, resume, remove, list, links, download, status, createClient,
         AsyncDLError } from '../async-dl.js';
import { fakeFetch, json, doc } from './fakes.mjs';

test('initiateBody: file ids, URLs, named URLs; never both', () => {
  assert.deepEqual(initiateBody([70000, 70001]), { file_ids: [70000, 70001] });
  assert.deepEqual(initiateBody(70000), { file_ids: [70000] });
  assert.deepEqual(initiateBody(['https://a/x', { url: 'https://b/y', name: 'y.pdf' }]),
                   { files: [{ url: 'https://a/x' }, { url: 'https://b/y', name: 'y.pdf' }] });
  assert.deepEqual(initiateBody(['https://a/x'], { timeout: '5m', priority: 3, callbackUrl: 'https://cb/' }),
                   { files: [{ url: 'https://a/x' }], timeout: '5m', priority: 3,
                     callback_url: 'https://cb/' });
  assert.throws(() => initiateBody([1, 'https://a/x']), TypeError);
  assert.throws(() => initiateBody([]), TypeError);
  assert.throws(() => initiateBody([{ name: 'no url' }]), TypeError);
});

test('initiate: POST {base}initiate, JSON, the extra headers and the idempotency key', async () => {
  const fetch = fakeFetch(() => json(202, { jobId: 'j1', status: 'queued', totalFiles: 2 }));
  const r = await initiate([1, 2], { fetch, base: '/dl/', headers: { 'X-User': 'alice' },
                                     idempotencyKey: 'k-1' });
  assert.equal(r.jobId, 'j1');
  const { url, init } = fetch.calls[0];
  assert.equal(url, '/dl/initiate');
  assert.equal(init.method, 'POST');
  assert.equal(init.headers['X-User'], 'alice');
  assert.equal(init.headers['Content-Type'], 'application/json');
  assert.equal(init.headers['Idempotency-Key'], 'k-1');
  assert.deepEqual(JSON.parse(init.body), { file_ids: [1, 2] });
});

test('an error answer becomes an AsyncDLError with the API\'s code', async () => {
  const fetch = fakeFetch(() => json(429, { error: { code: 'TOO_MANY_JOBS', message: 'slow down' } },
                                     { 'Retry-After': '2' }));
  await assert.rejects(initiate([1], { fetch }), (e) => e instanceof AsyncDLError
    && e.status === 429 && e.code === 'TOO_MANY_JOBS' && e.message === 'slow down' && e.retryAfter === 2);
  const html = fakeFetch(() => new Response('<h1>Bad gateway</h1>', { status: 502 }));
  await assert.rejects(status('j1', { fetch: html }), { status: 502, code: 'HTTP_502' });
  const down = fakeFetch(() => { throw new TypeError('Failed to fetch'); });
  await assert.rejects(status('j1', { fetch: down }), { status: 0, code: 'NETWORK_ERROR' });
});

test('cancel, remove, list, links: their routes and methods', async () => {
  const fetch = fakeFetch((url, init) => {
    if (init.method === 'DELETE') return new Response(null, { status: 204 });
    return json(200, { url, method: init.method });
  });
  const o = { fetch, headers: { 'X-User': 'bob' } };
  assert.deepEqual(await cancel('j1', o), { url: '/v1/download/j1/cancel', method: 'POST' });
  assert.deepEqual(await pause('j1', o), { url: '/v1/download/j1/pause', method: 'POST' });
  assert.deepEqual(await resume('j1', o), { url: '/v1/download/j1/resume', method: 'POST' });
  assert.equal(await remove('j1', o), undefined);
  assert.equal(fetch.calls[3].url, '/v1/download/j1');
  assert.equal(fetch.calls[3].init.method, 'DELETE');
  assert.equal((await list(o)).url, '/v1/download/jobs');
  assert.equal((await list({ ...o, limit: 5, status: 'completed', cursor: 'c/1' })).url,
               '/v1/download/jobs?limit=5&status=completed&cursor=c%2F1');
  assert.equal((await links('a/b', o)).url, '/v1/download/a%2Fb/links', 'ids are escaped');
  assert.ok(fetch.calls.every((c) => c.init.headers['X-User'] === 'bob'), 'the owner on every call');
});

function server(job, linkDoc) {
  return fakeFetch((url) => {
    if (url.endsWith('/links')) return json(200, linkDoc);
    if (url.includes('/status/')) return json(200, job);
    throw new Error(`unexpected ${url}`);
  });
}

test('download: the zip of a completed multi-file job, through its presigned link', async () => {
  const job = doc({ status: 'completed', bundle: { status: 'completed' },
                    files: [{ index: 0, status: 'completed' }, { index: 1, status: 'completed' }] });
  const fetch = server(job, { jobId: 'j1', files: [{ index: 0, url: 'https://s3/a' }],
                              bundle: { name: 'j1.zip', url: 'https://s3/zip' } });
  const went = [];
  const link = await download('j1', { fetch, navigate: (u) => went.push(u) });
  assert.equal(link.url, 'https://s3/zip');
  assert.deepEqual(went, ['https://s3/zip']);
  const one = await download('j1', { fetch, index: 0, navigate: null });
  assert.equal(one.url, 'https://s3/a', 'one file by index');
});

test('download: the only file of a one-file job; refusals say why', async () => {
  const single = doc({ status: 'completed', totalFiles: 1,
                       files: [{ index: 0, status: 'completed', size: 3 }] });
  const fetch = server(single, { jobId: 'j1', files: [{ index: 0, url: 'https://s3/only' }], bundle: null });
  assert.equal((await download('j1', { fetch, navigate: null })).url, 'https://s3/only');

  const failedZip = doc({ status: 'completed', bundle: { status: 'failed', error: 'disk full' } });
  await assert.rejects(download('j1', { fetch: server(failedZip, {}), navigate: null }),
                       { code: 'FILE_FAILED' });
  const failedFile = doc({ status: 'completed', files: [
    { index: 0, status: 'completed' },
    { index: 1, status: 'failed', error: { code: 'HTTP_STATUS', message: 'origin answered 404' } }] });
  await assert.rejects(download('j1', { fetch: server(failedFile, {}), index: 1, navigate: null }),
                       { code: 'FILE_FAILED', message: 'origin answered 404' });
  await assert.rejects(download('j1', { fetch: server(doc({ status: 'canceled' }), {}), navigate: null }),
                       { code: 'NOT_READY' });
  await assert.rejects(download('j1', { fetch: server(doc(), {}), wait: false, navigate: null }),
                       { code: 'NOT_READY' }, 'a running job, wait: false');
});

test('download waits for a running job to end (polling here), then goes', async () => {
  let polls = 0;
  const fetch = fakeFetch((url) => {
    if (url.endsWith('/links')) {
      return json(200, { jobId: 'j1', files: [], bundle: { name: 'j1.zip', url: 'https://s3/zip' } });
    }
    polls += 1;
    return json(200, polls < 3 ? doc() : doc({ status: 'completed', updatedAt: 't3' }));
  });
  const link = await download('j1', { fetch, EventSource: null, pollInterval: 5, navigate: null });
  assert.equal(link.url, 'https://s3/zip');
  assert.equal(polls, 3, 'followed until completed');
});

test('createClient binds the options; a call can add to them', async () => {
  const fetch = fakeFetch(() => json(200, { jobs: [], total: 0 }));
  const c = createClient({ fetch, base: '/x', headers: { 'X-User': 'carol' } });
  await c.list({ limit: 1 });
  assert.equal(fetch.calls[0].url, '/x/jobs?limit=1');
  assert.equal(fetch.calls[0].init.headers['X-User'], 'carol');
});

test('download refuses a link that is not http(s): a hostile API cannot run script', async () => {
  const job = doc({ status: 'completed', bundle: { status: 'completed' },
                    files: [{ index: 0, status: 'completed' }, { index: 1, status: 'completed' }] });
  for (const bad of ['javascript:alert(document.cookie)', ' JavaScript:alert(1)',
                     'data:text/html,<script>alert(1)</script>', 'vbscript:x', 'not a url']) {
    const went = [];
    const fetch = server(job, { jobId: 'j1', files: [{ index: 0, url: bad }],
                                bundle: { name: 'j1.zip', url: bad } });
    await assert.rejects(download('j1', { fetch, navigate: (u) => went.push(u) }),
                         (e) => e instanceof AsyncDLError && e.code === 'UNSAFE_LINK'
                           && /not http: or https:/.test(e.message), `the zip's link ${bad}`);
    await assert.rejects(download('j1', { fetch, index: 0, navigate: (u) => went.push(u) }),
                         { code: 'UNSAFE_LINK' }, `a file's link ${bad}`);
    assert.deepEqual(went, [], `never navigated to ${bad}`);
  }
  // the default navigation too: location.assign is never called
  const assigned = [];
  const prev = globalThis.location;
  globalThis.location = { href: 'https://app.example/', assign: (u) => assigned.push(u) };
  try {
    const fetch = server(job, { jobId: 'j1', files: [], bundle: { url: 'javascript:alert(1)' } });
    await assert.rejects(download('j1', { fetch }), { code: 'UNSAFE_LINK' });
    const ok = server(job, { jobId: 'j1', files: [], bundle: { url: 'http://s3/zip' } });
    await download('j1', { fetch: ok });
  } finally {
    globalThis.location = prev;
  }
  assert.deepEqual(assigned, ['http://s3/zip'], 'only the http link was assigned');
});

test('POST and DELETE send X-Requested-With (a cookie-owned API can refuse cross-site ones)', async () => {
  const fetch = fakeFetch((url, init) => (init.method === 'DELETE' ? new Response(null, { status: 204 })
    : json(init.method === 'POST' && url.endsWith('/initiate') ? 202 : 200, { jobId: 'j1' })));
  await initiate([1], { fetch });
  await cancel('j1', { fetch });
  await remove('j1', { fetch });
  await status('j1', { fetch });
  await list({ fetch });
  assert.deepEqual(fetch.calls.map((c) => [c.init.method, c.init.headers['X-Requested-With']]),
                   [['POST', 'XMLHttpRequest'], ['POST', 'XMLHttpRequest'], ['DELETE', 'XMLHttpRequest'],
                    ['GET', undefined], ['GET', undefined]]);
});

test('download with an AbortSignal: the wait for a running job stops, ABORTED', { timeout: 5000 }, async () => {
  const ctl = new AbortController();
  let polls = 0;
  const fetch = fakeFetch((url, init) => {
    if (url.endsWith('/links')) throw new Error('no links after an abort');
    polls += 1;
    assert.equal(init.signal === undefined || init.signal === ctl.signal, true);
    return json(200, doc());
  });
  const p = download('j1', { fetch, EventSource: null, pollInterval: 5, navigate: null, signal: ctl.signal });
  await new Promise((r) => setTimeout(r, 30));
  assert.ok(polls >= 2, `it waits for the job (${polls} polls)`);
  ctl.abort();
  await assert.rejects(p, { code: 'ABORTED' });
  const n = polls;
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(polls, n, 'no poll after the abort');
  await assert.rejects(download('j1', { fetch, signal: ctl.signal, navigate: null }), { code: 'ABORTED' },
                       'an aborted signal: nothing asked');
  assert.equal(polls, n);
});
