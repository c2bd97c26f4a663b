// follow(): the event stream first, polling when EventSource is missing,
// held back, refused or failing; reconnects with the last event id; stops
// at the final event.  Fake EventSource and fetch, a virtual clock.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { follow, AsyncDLError } from '../async-dl.js';
import { FakeEventSource as ES, fakeFetch, json, doc, clock } from './fakes.mjs';

// a fetch that must not be called: its throw lands inside poll()'s try,
// where it would only look like a network error, so the tests that use it
// check its calls instead
const never = fakeFetch(() => { throw new Error('no poll expected'); });

beforeEach(() => { ES.reset(); never.calls.length = 0; });

// setTimeout and clearTimeout counted while a test runs (real timers)
function liveTimers(t) {
  const live = new Set();
  const { setTimeout: st, clearTimeout: ct } = globalThis;
  globalThis.setTimeout = (fn, ms, ...a) => {
    const h = st(() => { live.delete(h); fn(...a); }, ms);
    live.add(h);
    return h;
  };
  globalThis.clearTimeout = (h) => { live.delete(h); ct(h); };
  t.after(() => {
    globalThis.setTimeout = st;
    globalThis.clearTimeout = ct;
    for (const h of live) ct(h);
  });
  return live;
}

test('the stream: events merged into the document, stopped at the final one', async (t) => {
  const c = clock(t);
  const updates = [];
  const f = follow('j1', (u) => updates.push(u),
                   { EventSource: ES, fetch: never, base: '/api', now: () => c.now });
  const es = ES.last();
  assert.equal(es.url, '/api/stream/j1', 'the base gets its slash');
  assert.equal(f.transport, 'eventsource');

  es.emit('connected', doc(), 3);
  c.now += 1000;
  es.emit('progress', { jobId: 'j1', status: 'processing', progress: 50, bytesDone: 500 }, 4);
  es.emit('file', { index: 0, status: 'completed', size: 500, error: null }, 5);
  es.emit('heartbeat', {}, 5);
  es.emit('file', { index: 1, status: 'failed', size: null,
                    error: { code: 'HTTP_STATUS', message: 'origin answered 404' } }, 6);
  es.emit('completed', doc({ status: 'completed', progress: 100, bytesDone: 500, completedFiles: 1,
                             failedFiles: 1,
                             files: [{ index: 0, status: 'completed', size: 500, error: null },
                                     { index: 1, status: 'failed', size: null,
                                       error: { code: 'HTTP_STATUS', message: 'origin answered 404' } }] }), 7);

  assert.deepEqual(updates.map((u) => u.event),
                   ['connected', 'progress', 'file', 'file', 'completed'], 'no update for a heartbeat');
  const p = updates[1];
  assert.equal(p.progress, 50);
  assert.equal(p.files.length, 2, 'a progress event keeps the files');
  assert.equal(p.speed, 400, 'bytes a second between the two documents');
  assert.equal(updates[2].files[0].status, 'completed', 'a file event replaces its file');
  assert.equal(updates[2].files[1].status, 'pending', '... and only it');
  assert.equal(updates[2].files[1].bytesDone, 0, 'the only open file: bytes by difference');
  assert.equal(updates[3].files[1].error.code, 'HTTP_STATUS', 'per-file errors reach the update');
  const last = updates[4];
  assert.equal(last.final, true);
  assert.equal(last.transport, 'eventsource');
  assert.ok(es.closed, 'the stream is closed after the final event');
  assert.equal(await f.done, last, 'done resolves to the final update');
  es.emit('progress', { progress: 1 }, 8);
  assert.equal(updates.length, 5, 'nothing after the final event');
  assert.equal(never.calls.length, 0, 'no poll');
});

test('paused and resumed: the job and its files not ended are held, then let go', async () => {
  const updates = [];
  const f = follow('j1', (u) => updates.push(u), { EventSource: ES, fetch: never });
  const es = ES.last();
  es.emit('connected', doc({ status: 'processing',
                             files: [{ index: 0, status: 'completed', size: 5, error: null },
                                     { index: 1, status: 'downloading', size: null, error: null }] }), 1);
  es.emit('paused', { jobId: 'j1', status: 'paused', pausedAt: '2026-12-01T00:00:00.000Z' }, 2);
  es.emit('resumed', { jobId: 'j1', status: 'processing', pausedAt: null }, 3);
  assert.deepEqual(updates.map((u) => u.event), ['connected', 'paused', 'resumed']);
  assert.equal(updates[1].status, 'paused');
  assert.deepEqual(updates[1].files.map((x) => x.status), ['completed', 'paused'],
                   'a pause holds the files not ended');
  assert.equal(updates[1].final, false, 'a pause is not an end');
  assert.deepEqual(updates[2].files.map((x) => x.status), ['completed', 'pending'],
                   'a resume lets them go: pending until claimed');
  assert.equal(es.closed, false, 'the stream stays open');
  f.stop();
});

test('a deleted job ends the follow', async () => {
  const updates = [];
  const f = follow('j1', (u) => updates.push(u), { EventSource: ES, fetch: never });
  ES.last().emit('connected', doc(), 1);
  ES.last().emit('deleted', { jobId: 'j1', status: 'deleted', error: { code: 'JOB_DELETED' } }, 2);
  const u = await f.done;
  assert.equal(u.status, 'deleted');
  assert.equal(u.error.code, 'JOB_DELETED');
  assert.equal(u.files.length, 2, 'what was known of the files stays');
  assert.equal(never.calls.length, 0, 'no poll');
});

test('no EventSource: polls with the headers, ETag revalidation, until the end', async (t) => {
  const c = clock(t);
  const answers = [
    () => json(200, doc(), { ETag: '"e1"' }),
    () => new Response(null, { status: 304 }),
    () => json(200, doc({ status: 'completed', progress: 100, updatedAt: 't2' }), { ETag: '"e2"' }),
  ];
  const fetch = fakeFetch((url, init, n) => answers[n - 1](), c);
  const updates = [];
  const f = follow('j1', (u) => updates.push(u),
                   { EventSource: null, fetch, headers: { 'X-User': 'alice' }, pollInterval: 100 });
  assert.equal(f.transport, 'poll');
  assert.equal(f.reason, 'no-eventsource');
  await c.advance(1000);
  assert.equal(fetch.calls.length, 3, 'stops polling at the final document');
  assert.equal(fetch.calls[0].url, '/v1/download/status/j1');
  assert.equal(fetch.calls[0].init.headers['X-User'], 'alice', 'the owner header on polls');
  assert.equal(fetch.calls[0].init.headers['If-None-Match'], undefined);
  assert.equal(fetch.calls[1].init.headers['If-None-Match'], '"e1"', 'revalidates with the ETag');
  assert.deepEqual(updates.map((u) => [u.event, u.status, u.transport]),
                   [['status', 'processing', 'poll'], ['status', 'completed', 'poll']],
                   'a 304 makes no update');
  assert.equal((await f.done).final, true);
});

test('transport "poll" never opens a stream', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => json(200, doc({ status: 'canceled' })), c);
  const f = follow('j1', null, { EventSource: ES, fetch, transport: 'poll' });
  await c.settle();
  assert.equal(ES.instances.length, 0);
  assert.equal(f.reason, 'asked');
  assert.equal((await f.done).status, 'canceled');
});

test('a stream held back (no event in blockedTimeout): polls', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => json(200, doc({ status: 'completed' })), c);
  const f = follow('j1', null, { EventSource: ES, fetch, blockedTimeout: 300 });
  const es = ES.last();
  await c.advance(290);
  assert.equal(fetch.calls.length, 0, 'waits for the first event');
  assert.equal(f.transport, 'eventsource');
  await c.advance(20);
  assert.ok(es.closed, 'the held-back stream is closed');
  assert.equal(f.transport, 'poll');
  assert.equal(f.reason, 'blocked');
  assert.equal((await f.done).status, 'completed');
  es.emit('connected', doc(), 1);      // late bytes of the closed stream
  assert.equal(fetch.calls.length, 1, 'ignored');
});

test('a stream refused (EventSource closed by a 401/404/503): polls, and a 404 there fails', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => json(404, { error: { code: 'JOB_NOT_FOUND', message: 'no such job' } }), c);
  const updates = [];
  const f = follow('nope', (u) => updates.push(u), { EventSource: ES, fetch });
  ES.last().fail({ closed: true });
  assert.equal(f.reason, 'refused');
  await assert.rejects(f.done, (e) => e instanceof AsyncDLError && e.code === 'JOB_NOT_FOUND'
                                      && e.status === 404);
  await c.advance(5000, 100);
  assert.equal(fetch.calls.length, 1, 'no poll after a final refusal');
  assert.equal(updates.length, 0);
});

test('errors in a row: EventSource retries by itself, then the client polls', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => json(200, doc({ status: 'completed' })), c);
  const f = follow('j1', null, { EventSource: ES, fetch, maxStreamFailures: 3, blockedTimeout: 10000 });
  const es = ES.last();
  es.emit('connected', doc(), 1);
  es.fail();
  es.fail();
  es.emit('connected', doc(), 2);      // a reconnect that worked: the count starts again
  es.fail();
  es.fail();
  assert.equal(f.transport, 'eventsource', 'two failures in a row: still the stream');
  assert.equal(ES.instances.length, 1, 'EventSource reconnects by itself (with Last-Event-ID)');
  es.fail();
  assert.equal(f.transport, 'poll');
  assert.equal(f.reason, 'failing');
  assert.ok(es.closed);
  assert.equal((await f.done).status, 'completed');
});

test('a reconnect that brings no event in time: polls', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => json(200, doc({ status: 'completed' })), c);
  const f = follow('j1', null, { EventSource: ES, fetch, blockedTimeout: 200 });
  ES.last().emit('connected', doc(), 1);
  await c.advance(1000);
  assert.equal(f.transport, 'eventsource', 'after an event, no blocked timer');
  ES.last().fail();
  await c.advance(200);
  assert.equal(f.reason, 'blocked');
  await f.done;
});

test('an open stream gone silent: reopened with lastEventId, then polls', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => json(200, doc({ status: 'completed' })), c);
  const f = follow('j1', null, { EventSource: ES, fetch, idleTimeout: 500, blockedTimeout: 400,
                                 maxStreamFailures: 2 });
  ES.last().emit('connected', doc(), 41);
  ES.last().emit('heartbeat', {}, 42);
  await c.advance(490);
  assert.equal(ES.instances.length, 1);
  await c.advance(20);
  assert.equal(ES.instances.length, 2, 'silent past idleTimeout: a new connection');
  assert.ok(ES.instances[0].closed);
  assert.equal(ES.last().url, '/v1/download/stream/j1?lastEventId=42', 'resumes after the last event');
  await c.advance(400);
  assert.equal(f.transport, 'poll', 'the new connection brought nothing either');
  await f.done;
});

test('lastEventId given: the first connection resumes there', () => {
  const f = follow('j 1', null, { EventSource: ES, fetch: never, lastEventId: 7 });
  assert.equal(ES.last().url, '/v1/download/stream/j%201?lastEventId=7');
  f.stop();
  assert.equal(never.calls.length, 0, 'no poll');
});

test('polling backs off while nothing changes, and on errors, within maxPollInterval', async (t) => {
  const c = clock(t);
  let n = 0;
  const fetch = fakeFetch(() => {
    n += 1;
    if (n === 1) return json(200, doc(), { ETag: '"a"' });
    if (n <= 5) return new Response(null, { status: 304 });
    if (n === 6) return json(503, { error: { code: 'DATABASE_UNAVAILABLE', message: 'x' } }, { 'Retry-After': '3' });
    if (n === 7) throw new TypeError('network down');
    if (n === 8) return json(200, doc({ bytesDone: 300, updatedAt: 't9' }), { ETag: '"b"' });
    return json(200, doc({ status: 'failed' }));
  }, c);
  const f = follow('j1', null, { EventSource: null, fetch, pollInterval: 100, maxPollInterval: 4000 });
  await c.advance(12000, 10);
  const at = fetch.calls.map((x) => x.at);
  const gaps = at.slice(1).map((v, i) => v - at[i]);
  assert.equal(fetch.calls.length, 9, `polls at ${at}`);
  assert.ok(gaps[0] >= 100 && gaps[0] <= 110, `the first document is news: pollInterval (${gaps[0]})`);
  assert.ok(gaps[1] >= 120 && gaps[1] <= 135, `nothing new (304): 100 * 1.25 (${gaps[1]})`);
  assert.ok(gaps[2] > gaps[1] && gaps[3] > gaps[2] && gaps[4] > gaps[3], `growing: ${gaps}`);
  assert.ok(gaps[5] >= 3000 && gaps[5] <= 4000, `after a 503 with Retry-After: 3, at least 3 s (${gaps[5]})`);
  assert.ok(gaps[6] >= 4000 && gaps[6] <= 4010, `a network error: doubled, capped at maxPollInterval (${gaps[6]})`);
  assert.ok(gaps[7] >= 100 && gaps[7] <= 110, `a change: back to pollInterval (${gaps[7]})`);
  assert.equal((await f.done).status, 'failed');
});

test('a job that disappears while polled (404 after a document): final "deleted"', async (t) => {
  const c = clock(t);
  let n = 0;
  const fetch = fakeFetch(() => (++n === 1 ? json(200, doc())
    : json(404, { error: { code: 'JOB_NOT_FOUND', message: 'gone' } })), c);
  const f = follow('j1', null, { EventSource: null, fetch, pollInterval: 50 });
  await c.advance(200);
  const u = await f.done;
  assert.equal(u.status, 'deleted');
  assert.equal(u.final, true);
  assert.equal(u.error.code, 'JOB_NOT_FOUND');
});

test('401 (no owner) is final, not retried', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => json(401, { error: { code: 'UNAUTHORIZED', message: 'no owner' } }), c);
  const f = follow('j1', null, { EventSource: null, fetch });
  await assert.rejects(f.done, { code: 'UNAUTHORIZED', status: 401 });
  await c.advance(3000, 100);
  assert.equal(fetch.calls.length, 1);
});

test('stop(): closes the stream, no more polls, done resolves to null', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => json(200, doc()), c);
  const f = follow('j1', null, { EventSource: ES, fetch, blockedTimeout: 100, pollInterval: 100 });
  await c.advance(150);
  assert.equal(f.transport, 'poll');
  const polls = fetch.calls.length;
  f.stop();
  await c.advance(1000);
  assert.equal(fetch.calls.length, polls);
  assert.equal(await f.done, null);
});

test('an onUpdate that throws does not stop the follow', async () => {
  const seen = [];
  const reported = [];
  const had = globalThis.reportError;
  globalThis.reportError = (e) => reported.push(e.message);
  try {
    const f = follow('j1', (u) => { seen.push(u.event); throw new Error('render bug'); },
                     { EventSource: ES, fetch: never });
    ES.last().emit('connected', doc(), 1);
    ES.last().emit('completed', doc({ status: 'completed' }), 2);
    assert.deepEqual(seen, ['connected', 'completed']);
    assert.equal((await f.done).status, 'completed');
    assert.equal(never.calls.length, 0, 'no poll');
  } finally {
    if (had) globalThis.reportError = had; else delete globalThis.reportError;
  }
  assert.deepEqual(reported, ['render bug', 'render bug'], 'the error is reported, not swallowed');
});

test('stop() during the stream: the stream closed, no timer left, done null', async (t) => {
  const live = liveTimers(t);
  const f = follow('j1', null, { EventSource: ES, fetch: never });
  const es = ES.last();
  assert.equal(live.size, 1, 'the blocked timer waits for the first event');
  es.emit('connected', doc(), 1);
  es.fail();                            // reconnecting: blocked timer again
  es.emit('progress', { progress: 20 }, 2);
  assert.ok(live.size >= 1, 'the idle timer runs while the stream is open');
  f.stop();
  assert.ok(es.closed, 'the EventSource is closed');
  assert.equal(live.size, 0, 'no timer left');
  assert.equal(await f.done, null);
  es.emit('completed', doc({ status: 'completed' }), 3);
  assert.equal(live.size, 0, 'a late event arms nothing');
  assert.equal(never.calls.length, 0, 'no poll');
});

test('stop() while a poll is in flight: its answer arms no timer', async (t) => {
  const live = liveTimers(t);
  let answer;
  const fetch = fakeFetch(() => new Promise((r) => { answer = r; }));
  const f = follow('j1', null, { EventSource: null, fetch });
  await new Promise((r) => setImmediate(r));
  assert.equal(fetch.calls.length, 1);
  f.stop();
  answer(json(200, doc()));
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  assert.equal(live.size, 0, 'no timer left');
  assert.equal(fetch.calls.length, 1);
  assert.equal(await f.done, null);
});

test('an AbortSignal stops the follow like stop()', async () => {
  const ctl = new AbortController();
  const f = follow('j1', null, { EventSource: ES, fetch: never, signal: ctl.signal });
  const es = ES.last();
  ctl.abort();
  assert.ok(es.closed);
  assert.equal(await f.done, null);
  const g = follow('j1', null, { EventSource: ES, fetch: never, signal: ctl.signal });
  assert.equal(ES.instances.length, 1, 'an aborted signal: nothing opened');
  assert.equal(await g.done, null);
  assert.equal(never.calls.length, 0);
});

test('a failing stream: polls, then the stream again after streamRetryAfter of good polls', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => json(200, doc()), c);      // running, never changing
  const f = follow('j1', null, { EventSource: ES, fetch, now: () => c.now, maxStreamFailures: 1,
                                 pollInterval: 1000, maxPollInterval: 2000,
                                 streamRetryAfter: 10000, blockedTimeout: 100000 });
  ES.last().emit('connected', doc(), 5);
  ES.last().fail();
  assert.equal(f.reason, 'failing');
  await c.advance(9000, 100);
  assert.equal(ES.instances.length, 1, 'polls for streamRetryAfter first');
  assert.equal(f.transport, 'poll');
  await c.advance(3000, 100);
  assert.equal(ES.instances.length, 2, 'then the stream again');
  assert.equal(ES.last().url, '/v1/download/stream/j1?lastEventId=5', 'where it left off');
  assert.equal(f.transport, 'eventsource');
  assert.equal(f.reason, null);
  const polls = fetch.calls.length;
  ES.last().emit('progress', { progress: 30 }, 6);
  await c.advance(5000, 100);
  assert.equal(fetch.calls.length, polls, 'no polls while on the stream');
  ES.last().fail();                     // failing again: polls, and waits twice as long
  assert.equal(f.reason, 'failing');
  await c.advance(18000, 100);
  assert.equal(ES.instances.length, 2, 'the second return waits 2 x streamRetryAfter');
  await c.advance(4000, 100);
  assert.equal(ES.instances.length, 3);
  ES.last().emit('completed', doc({ status: 'completed' }), 7);
  assert.equal((await f.done).status, 'completed');
});

test('the wait for the stream counts polls that went well in a row', async (t) => {
  const c = clock(t);
  let n = 0;
  const fetch = fakeFetch(() => (++n === 4 ? json(503, { error: { code: 'DATABASE_UNAVAILABLE' } })
    : json(200, doc())), c);
  follow('j1', null, { EventSource: ES, fetch, now: () => c.now, maxStreamFailures: 1,
                       pollInterval: 1000, maxPollInterval: 1000, streamRetryAfter: 5000,
                       blockedTimeout: 100000 });
  ES.last().fail();
  await c.advance(7500, 100);
  assert.equal(ES.instances.length, 1, 'the 503 at the 4th poll started the count again');
  await c.advance(2000, 100);
  assert.equal(ES.instances.length, 2);
  ES.last().emit('completed', doc({ status: 'completed' }), 1);
});

function probing(streamAnswers) {
  const probes = [];
  return {
    probes,
    handler: (url, init) => {
      if (url.includes('/stream/')) {
        probes.push(init);
        const st = streamAnswers.length > 1 ? streamAnswers.shift() : streamAnswers[0];
        return st === 200
          ? new Response('retry: 1000\n\n', { status: 200, headers: { 'Content-Type': 'text/event-stream' } })
          : json(st, { error: { code: `HTTP_${st}` } });
      }
      return json(200, doc());
    },
  };
}

test('a refused stream (a 503): asked again after streamRetryAfter, back on it once it answers', async (t) => {
  const c = clock(t);
  const p = probing([503, 200]);
  const fetch = fakeFetch(p.handler, c);
  const f = follow('j1', null, { EventSource: ES, fetch, now: () => c.now, headers: { 'X-User': 'al' },
                                 pollInterval: 1000, maxPollInterval: 1000, streamRetryAfter: 5000 });
  ES.last().fail({ closed: true });
  assert.equal(f.reason, 'refused');
  await c.advance(5500, 100);
  assert.equal(p.probes.length, 1, 'the stream is asked after streamRetryAfter');
  assert.equal(p.probes[0].headers['X-User'], undefined, '... as EventSource asks it: no headers of ours');
  assert.equal(p.probes[0].headers.Accept, 'text/event-stream');
  assert.equal(ES.instances.length, 1, 'still a 503: polls on');
  assert.equal(f.transport, 'poll');
  await c.advance(5500, 100);
  assert.equal(p.probes.length, 2);
  assert.equal(ES.instances.length, 2, 'answered: the stream again');
  assert.equal(f.transport, 'eventsource');
  ES.last().emit('completed', doc({ status: 'completed' }), 1);
  assert.equal((await f.done).status, 'completed');
});

// a fetch whose stream answers are held back until aborted (a buffering
// proxy), its polls answered at once
function heldStream() {
  const probes = [];
  return {
    probes,
    handler: (url, init) => {
      if (!url.includes('/stream/')) return json(200, doc());
      probes.push(init);
      return new Promise((resolve, reject) => {
        init.signal.addEventListener('abort', () => reject(new Error('aborted')));
      });
    },
  };
}

test('a stream probe held back: given up after blockedTimeout, polling goes on', async (t) => {
  const c = clock(t);
  const p = heldStream();
  const fetch = fakeFetch(p.handler, c);
  const f = follow('j1', null, { EventSource: ES, fetch, now: () => c.now, pollInterval: 1000,
                                 maxPollInterval: 1000, streamRetryAfter: 5000,
                                 blockedTimeout: 2000 });
  ES.last().fail({ closed: true });
  await c.advance(5500, 100);
  assert.equal(p.probes.length, 1, 'the stream is asked');
  const polls = fetch.calls.length;
  await c.advance(4000, 100);
  assert.ok(p.probes[0].signal.aborted, 'the probe was given up');
  assert.ok(fetch.calls.length > polls + 1, 'polls went on after it');
  assert.equal(f.transport, 'poll');
  f.stop();
});

test('stop() during a stream probe aborts it', async (t) => {
  const c = clock(t);
  const p = heldStream();
  const fetch = fakeFetch(p.handler, c);
  const f = follow('j1', null, { EventSource: ES, fetch, now: () => c.now, pollInterval: 1000,
                                 maxPollInterval: 1000, streamRetryAfter: 5000,
                                 blockedTimeout: 60000 });
  ES.last().fail({ closed: true });
  await c.advance(5500, 100);
  assert.equal(p.probes.length, 1);
  f.stop();
  await c.settle();
  assert.ok(p.probes[0].signal.aborted, 'stop() gave the probe up');
  assert.equal(await f.done, null);
});

test('a stream refused with a 4xx (no owner cookie): polls to the end, asked once', async (t) => {
  const c = clock(t);
  const p = probing([401]);
  const fetch = fakeFetch(p.handler, c);
  const f = follow('j1', null, { EventSource: ES, fetch, now: () => c.now,
                                 pollInterval: 1000, maxPollInterval: 1000, streamRetryAfter: 5000 });
  ES.last().fail({ closed: true });
  await c.advance(30000, 100);
  assert.equal(p.probes.length, 1, 'a 401 is not asked again');
  assert.equal(ES.instances.length, 1);
  assert.equal(f.transport, 'poll');
  assert.ok(fetch.calls.length > 20, 'polling went on');
  f.stop();
});

test('no stream again after a buffering proxy or without EventSource', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => json(200, doc()), c);
  const f = follow('j1', null, { EventSource: ES, fetch, now: () => c.now, blockedTimeout: 100,
                                 pollInterval: 1000, maxPollInterval: 1000, streamRetryAfter: 2000 });
  await c.advance(20000, 100);
  assert.equal(f.reason, 'blocked');
  assert.equal(ES.instances.length, 1, 'held back once, held back again: not retried');
  assert.ok(fetch.calls.every((x) => x.url.includes('/status/')), 'never asked');
  f.stop();
});

test('200s that are not JSON documents: done rejects after 3 in a row, saying so', async (t) => {
  const c = clock(t);
  const fetch = fakeFetch(() => new Response('<html>Sign in to the Wi-Fi</html>', { status: 200 }), c);
  const f = follow('j1', null, { EventSource: null, fetch, pollInterval: 100 });
  await c.advance(5000, 100);
  await assert.rejects(f.done, (e) => e instanceof AsyncDLError && e.code === 'BAD_RESPONSE'
                                      && /not a JSON document \(3 times in a row\)/.test(e.message));
  assert.equal(fetch.calls.length, 3, 'no poll after');

  let n = 0;
  const mixed = fakeFetch(() => {
    n += 1;
    if (n === 3) return json(200, doc());
    if (n === 4) return json(200, null);  // JSON, but no document
    if (n >= 6) return json(200, doc({ status: 'completed' }));
    return new Response('oops', { status: 200 });
  }, c);
  const g = follow('j1', null, { EventSource: null, fetch: mixed, pollInterval: 100 });
  await c.advance(20000, 100);
  assert.equal((await g.done).status, 'completed', 'a document between them starts the count again');
});

test('Retry-After beyond maxPollInterval is honoured, as seconds or as a date', async (t) => {
  const c = clock(t);
  let n = 0;
  const fetch = fakeFetch(() => {
    n += 1;
    if (n === 1) return json(429, { error: { code: 'RATE_LIMITED' } }, { 'Retry-After': '30' });
    if (n === 2) {
      return json(503, { error: { code: 'DATABASE_UNAVAILABLE' } },
                  { 'Retry-After': new Date(Date.now() + 20000).toUTCString() });
    }
    return json(200, doc({ status: 'completed' }));
  }, c);
  const f = follow('j1', null, { EventSource: null, fetch, pollInterval: 100, maxPollInterval: 10000 });
  await c.advance(70000, 100);
  const at = fetch.calls.map((x) => x.at);
  assert.equal(at.length, 3, `polls at ${at}`);
  assert.ok(at[1] - at[0] >= 30000, `a 429 with Retry-After: 30 waits 30 s (${at[1] - at[0]})`);
  assert.ok(at[2] - at[1] >= 18000, `an HTTP date 20 s ahead: about 20 s (${at[2] - at[1]})`);
  assert.equal((await f.done).status, 'completed');
});
