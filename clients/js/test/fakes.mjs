// Fakes for the client's unit tests: an EventSource and a fetch that the
// test scripts, and a virtual clock on node:test's mock timers.  No network.

export class FakeEventSource {
  static instances = [];

  constructor(url, init) {
    this.url = url;
    this.init = init;
    this.readyState = 0;                // CONNECTING
    this.listeners = new Map();
    this.onerror = null;
    this.closed = false;
    FakeEventSource.instances.push(this);
  }

  addEventListener(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, []);
    this.listeners.get(name).push(fn);
  }

  close() {
    this.closed = true;
    this.readyState = 2;
  }

  // the server sends an event
  emit(name, data, id) {
    this.readyState = 1;
    const e = { type: name, data: JSON.stringify(data), lastEventId: id == null ? '' : String(id) };
    for (const fn of this.listeners.get(name) || []) fn(e);
  }

  // the connection fails: closed (the server refused it) or reconnecting
  fail({ closed = false } = {}) {
    this.readyState = closed ? 2 : 0;
    if (this.onerror) this.onerror({ type: 'error' });
  }

  static reset() { FakeEventSource.instances = []; }
  static last() { return FakeEventSource.instances[FakeEventSource.instances.length - 1]; }
}

// fetch(url, init) answered by handler(url, init, n) -> Response (or a
// throw: a network error); every call is kept in .calls.
export function fakeFetch(handler, clock) {
  const calls = [];
  const f = async (url, init = {}) => {
    calls.push({ url, init, at: clock ? clock.now : 0 });
    return handler(url, init, calls.length);
  };
  f.calls = calls;
  return f;
}

export function json(status, body, headers = {}) {
  return new Response(body == null ? null : JSON.stringify(body),
                      { status, headers: { 'Content-Type': 'application/json', ...headers } });
}

export function doc(over = {}) {
  return {
    jobId: 'j1', status: 'processing', progress: 10, totalFiles: 2, completedFiles: 0,
    failedFiles: 0, bytesDone: 100, bytesTotal: 1000, updatedAt: 't1', bundle: null,
    files: [
      { index: 0, url: 'http://o/a', status: 'downloading', size: 500, error: null },
      { index: 1, url: 'http://o/b', status: 'pending', size: 500, error: null },
    ],
    ...over,
  };
}

// A virtual clock on t.mock.timers: advance(ms) fires the timers due in
// steps, letting promises (fetch answers) settle between them.
export function clock(t) {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const c = {
    now: 0,
    async settle() {
      for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    },
    async advance(ms, step = 10) {
      for (let done = 0; done < ms; done += step) {
        c.now += step;
        t.mock.timers.tick(step);
        await c.settle();
      }
    },
  };
  return c;
}
