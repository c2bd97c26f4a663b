// useDownload (react.js) on a small hooks runtime standing in for 'react':
// start follows the new job, updates re-render, cancel and download reach
// the API, unmount stops the follow, a job id resumes, failures land in error.
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
