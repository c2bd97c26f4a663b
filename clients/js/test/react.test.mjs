// useDownload (react.js) on a small hooks runtime standing in for 'react':
// start follows the new job, updates re-render, cancel and download reach
// the API, unmount stops the follow (and a download still waiting), a job
// id resumes and is followed when it changes, failures land in error.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { register } from 'node:module';
import { FakeEventSource as ES, fakeFetch, json, doc } from './fakes.mjs';

register('./react/resolve.mjs', import.meta.url);
const { useDownload } = await import('../react.js');
const { renderHook } = await import('react');

beforeEach(() => ES.reset());
const tick = () => new Promise((r) => setImmediate(r));

function api() {
  return fakeFetch((url, init) => {
    if (url.endsWith('/initiate')) return json(202, { jobId: 'j1', status: 'queued' });
    if (url.endsWith('/cancel')) return json(200, doc({ status: 'canceled' }));
    if (url.endsWith('/links')) return json(200, { jobId: 'j1', files: [], bundle: { url: 'https://s3/zip' } });
    if (url.includes('/status/')) return json(200, doc({ status: 'completed' }));
    throw new Error(`unexpected ${init.method} ${url}`);
  });
}

test('start, follow, re-render on updates, cancel; unmount stops the stream', async () => {
  const fetch = api();
  const h = renderHook(() => useDownload({ fetch, EventSource: ES, headers: { 'X-User': 'alice' } }));
  assert.equal(h.result.jobId, null);
  assert.equal(h.result.job, null);
  const r = await h.result.start([70000, 70001]);
  assert.equal(r.jobId, 'j1');
  assert.deepEqual(JSON.parse(fetch.calls[0].init.body), { file_ids: [70000, 70001] });
  await tick();
  assert.equal(h.result.jobId, 'j1');
  const es = ES.last();
  assert.equal(es.url, '/v1/download/stream/j1', 'the new job is followed');
  es.emit('connected', doc({ progress: 40 }), 1);
  await tick();
  assert.equal(h.result.job.progress, 40, 'an update re-renders with the job');
  await h.result.cancel();
  assert.equal(fetch.calls[1].url, '/v1/download/j1/cancel');
  assert.equal(fetch.calls[1].init.headers['X-User'], 'alice');
  h.unmount();
  assert.ok(es.closed, 'unmount closes the stream');
});

test('a job id to resume; download once completed', async () => {
  const fetch = api();
  const h = renderHook(() => useDownload({ fetch, EventSource: ES, jobId: 'j1' }));
  assert.equal(ES.last().url, '/v1/download/stream/j1', 'followed from the first render');
  ES.last().emit('completed', doc({ status: 'completed', bundle: { status: 'completed' },
                                    files: [{ index: 0, status: 'completed' }] }), 9);
  await tick();
  assert.equal(h.result.job.final, true);
  const went = [];
  const prev = globalThis.location;
  globalThis.location = { assign: (u) => went.push(u) };
  try {
    await h.result.download();
  } finally {
    globalThis.location = prev;
  }
  assert.deepEqual(went, ['https://s3/zip'], 'download goes to the zip\'s link');
  h.unmount();
});

test('following another job replaces the stream; a refused one sets error', async () => {
  const fetch = fakeFetch(() => json(404, { error: { code: 'JOB_NOT_FOUND', message: 'no such job' } }));
  const h = renderHook(() => useDownload({ fetch, EventSource: ES, jobId: 'j1' }));
  const first = ES.last();
  h.result.follow('j2');
  await tick();
  assert.ok(first.closed, 'the first job\'s stream is closed');
  ES.last().fail({ closed: true });
  await tick();
  await tick();
  assert.equal(h.result.error && h.result.error.code, 'JOB_NOT_FOUND');
  h.unmount();
});

test('a refused start is in error and thrown', async () => {
  const fetch = fakeFetch(() => json(400, { error: { code: 'INVALID_REQUEST', message: 'files: empty' } }));
  const h = renderHook(() => useDownload({ fetch, EventSource: ES }));
  await assert.rejects(h.result.start(['https://a/x']), { code: 'INVALID_REQUEST' });
  await tick();
  assert.equal(h.result.error.code, 'INVALID_REQUEST');
  assert.equal(h.result.jobId, null);
});

test('cancel right after start, from the same render, cancels the new job', async () => {
  const fetch = api();
  const h = renderHook(() => useDownload({ fetch, EventSource: ES }));
  const { start, cancel } = h.result;          // one render's functions, as in a handler
  await start([70000]);
  const r = await cancel();
  assert.equal(r && r.status, 'canceled', 'not a no-op for want of a job id');
  assert.equal(fetch.calls[1].url, '/v1/download/j1/cancel');
  h.unmount();
});

test('options.jobId: a new value is followed', async () => {
  const fetch = api();
  let jobId = 'j1';
  const h = renderHook(() => useDownload({ fetch, EventSource: ES, jobId }));
  const first = ES.last();
  assert.equal(first.url, '/v1/download/stream/j1');
  jobId = 'j2';
  h.rerender();
  await tick();
  assert.equal(h.result.jobId, 'j2');
  assert.ok(first.closed, 'the old job is no longer followed');
  assert.equal(ES.last().url, '/v1/download/stream/j2', 'the new one is');
  const n = ES.instances.length;
  h.rerender();
  await tick();
  assert.equal(ES.instances.length, n, 'the same value: nothing new');
  h.unmount();
  assert.ok(ES.last().closed);
});

test('a download waiting for a running job stops at unmount', { timeout: 5000 }, async () => {
  const fetch = fakeFetch((url) => {
    if (url.endsWith('/links')) throw new Error('no links after unmount');
    return json(200, doc());                      // running
  });
  const h = renderHook(() => useDownload({ fetch, EventSource: ES, jobId: 'j1' }));
  const p = h.result.download();
  for (let i = 0; i < 5; i++) await tick();
  const waiting = ES.instances.filter((e) => !e.closed);
  assert.equal(waiting.length, 2, 'the hook\'s follow and the download\'s');
  h.unmount();
  assert.ok(ES.instances.every((e) => e.closed), 'both closed at unmount');
  assert.equal(await p, undefined, 'the download resolves quietly');
  assert.equal(h.result.error, null);
});
