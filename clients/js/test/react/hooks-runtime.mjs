// Just enough of React's hooks to run useDownload in node: useState,
// useRef, useCallback, useEffect (after each render, cleaned up when their
// deps change and at unmount), a re-render a microtask after a state change
// or on rerender().
let current = null;

function slot(make) {
  const inst = current;
  if (!inst) throw new Error('a hook outside a render');
  const i = inst.next++;
  if (!(i in inst.slots)) inst.slots[i] = make();
  return [inst, inst.slots[i]];
}

const changed = (a, b) => !a || !b || a.length !== b.length || a.some((x, i) => !Object.is(x, b[i]));

export function useState(init) {
  const [inst, s] = slot(() => ({ value: typeof init === 'function' ? init() : init }));
  return [s.value, (v) => {
    const nv = typeof v === 'function' ? v(s.value) : v;
    if (Object.is(nv, s.value)) return;
    s.value = nv;
    inst.schedule();
  }];
}

export function useRef(value) {
  return slot(() => ({ current: value }))[1];
}

export function useCallback(fn, deps) {
  const [, s] = slot(() => ({ fn, deps }));
  if (changed(s.deps, deps)) { s.fn = fn; s.deps = deps; }
  return s.fn;
}

export function useEffect(fn, deps) {
  const [inst, s] = slot(() => ({ deps: undefined, cleanup: null, first: true }));
  if (s.first || changed(s.deps, deps)) {
    s.first = false;
    s.deps = deps;
    inst.effects.push(() => {
      if (s.cleanup) s.cleanup();
      const c = fn();
      s.cleanup = typeof c === 'function' ? c : null;
    });
  }
}

export function renderHook(hook) {
  const inst = { slots: [], effects: [], next: 0, alive: true, pending: false, renders: 0, result: null };
  inst.render = () => {
    if (!inst.alive) return;
    current = inst;
    inst.next = 0;
    try { inst.result = hook(); } finally { current = null; }
    inst.renders += 1;
    for (const e of inst.effects.splice(0)) e();
  };
  inst.schedule = () => {
    if (inst.pending || !inst.alive) return;
    inst.pending = true;
    queueMicrotask(() => { inst.pending = false; inst.render(); });
  };
  inst.render();
  return {
    get result() { return inst.result; },
    get renders() { return inst.renders; },
    /** renders again now (the hook reads new props from its closure) */
    rerender() { inst.render(); },
    unmount() {
      inst.alive = false;
      for (const s of inst.slots) if (s && typeof s.cleanup === 'function') s.cleanup();
    },
  };
}
