// The demo page: starts jobs, follows them with the client module, offers
// their files.  Query parameters: ?api=/prefix/ (the API's location on this
// page's origin, default /v1/download/), ?blocked=ms (the client's
// blockedTimeout, for tests).
import { createClient, AsyncDLError } from './js/async-dl.js';

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);
const DEFAULT_API = '/v1/download/';

// ?api= only on this page's origin: another origin's API would choose the
// links this page goes to, and get the owner's header
function apiOf(v) {
  if (!v) return { base: DEFAULT_API, refused: false };
  try {
    const u = new URL(v, location.href);
    // (the base is given whole: a path "//host/" alone would be read as
    // another host's, protocol-relative)
    if (u.origin === location.origin) {
      return { base: u.origin + u.pathname, refused: false };
    }
  } catch { /* not a URL */ }
  return { base: DEFAULT_API, refused: true };
}
const api = apiOf(params.get('api'));
const API = api.base;
const blocked = Number(params.get('blocked'));
const TIMINGS = Number.isFinite(blocked) && blocked > 0 ? { blockedTimeout: blocked } : {};

let client = null;
let owner = null;
let current = null;     // { jobId, following, rows: Map(index -> row) }
let listed = 0;         // the last jobs list asked for: older answers are dropped

// --- the owner: a header on every fetch, a cookie for the event stream
// (EventSource cannot send headers).  `make run` takes X-User, else this
// adl_user cookie: an unauthenticated claim, for the demo only (README,
// "The browser client").
function setOwner(name) {
  const v = encodeURIComponent(name);
  document.cookie = `adl_user=${v}; path=/; SameSite=Strict`;
  localStorage.setItem('adl-owner', name);
  const changed = owner !== null && owner !== name;
  owner = name;
  client = createClient({ base: API, headers: { 'X-User': v }, ...TIMINGS });
  if (changed) hideJob();   // the job shown is the previous owner's
}

// --- formatting
function bytes(n) {
  if (n == null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i ? v.toFixed(v < 10 ? 2 : 1) : v} ${units[i]}`;
}
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}
function showError(node, err) {
  if (!err) { node.hidden = true; node.textContent = ''; return; }
  node.hidden = false;
  node.textContent = err instanceof AsyncDLError
    ? `${err.code}${err.status ? ` (HTTP ${err.status})` : ''}: ${err.message}` : String(err);
}
function fileName(f) {
  if (f.name) return f.name;
  if (f.fileId != null) return `file ${f.fileId}`;
  try { return decodeURIComponent(new URL(f.url).pathname.split('/').pop()) || f.url; } catch { return f.url; }
}

// --- the job shown
function rememberJob(jobId) {
  if (jobId) {
    sessionStorage.setItem('adl-job', jobId);
    history.replaceState(null, '', `${location.pathname}${location.search}#job=${jobId}`);
  } else {
    sessionStorage.removeItem('adl-job');
    history.replaceState(null, '', `${location.pathname}${location.search}`);
  }
}

function hideJob() {
  if (current) current.following.stop();
  current = null;
  $('#job').hidden = true;
  rememberJob(null);
}

function showJob(jobId) {
  if (current) current.following.stop();
  $('#job').hidden = false;
  $('#job-id').textContent = jobId;
  $('#job-status').textContent = 'connecting';
  $('#job-status').className = 'status';
  $('#transport').textContent = '';
  $('#job-progress').value = 0;
  $('#job-percent').textContent = '0%';
  $('#job-bytes').textContent = '';
  $('#files tbody').replaceChildren();
  $('#download-zip').disabled = true;
  $('#cancel').disabled = true;
  showPaused(false, true);
  showError($('#job-error'), null);
  rememberJob(jobId);
  const me = { jobId, rows: new Map(), following: null };
  current = me;
  me.following = client.follow(jobId, (u) => { if (current === me) render(me, u); });
  me.following.done.then((u) => {
    if (current !== me) return;
    if (u) refreshJobs();
  }, (err) => {
    if (current !== me) return;
    $('#job-status').textContent = 'unavailable';
    $('#job-status').className = 'status failed';
    showError($('#job-error'), err);
  });
}

function fileRow(me, f) {
  const bar = el('progress', { max: '100', 'aria-label': `Progress of ${fileName(f)}` });
  const button = el('button', {
    type: 'button', disabled: '', text: 'Download',
    'aria-label': `Download ${fileName(f)}`,
    onclick: () => save(me.jobId, f.index),
  });
  const row = {
    tr: el('tr', { 'data-index': String(f.index) }),
    name: el('td', { class: 'url', title: f.url, text: fileName(f) }),
    status: el('td'),
    bar,
    size: el('td', { class: 'numbers' }),
    error: el('td'),
    button,
  };
  row.tr.append(el('td', { text: String(f.index) }), row.name, row.status,
                el('td', {}, bar), row.size, row.error, el('td', {}, button));
  $('#files tbody').append(row.tr);
  me.rows.set(f.index, row);
  return row;
}

function render(me, u) {
  const st = $('#job-status');
  if (st.textContent !== u.status) {   // a live region: only real changes
    st.textContent = u.status;
    st.className = `status ${u.status}`;
  }
  const how = u.transport === 'eventsource'
    ? 'live: event stream'
    : `polling${me.following.reason ? ` (${me.following.reason})` : ''}`;
  if ($('#transport').textContent !== how) $('#transport').textContent = how;
  $('#transport').dataset.transport = u.transport;
  const pct = Math.max(0, Math.min(100, u.progress || 0));
  $('#job-progress').value = pct;
  $('#job-percent').textContent = `${pct}%`;
  const parts = [];
  if (u.bytesDone != null) {
    parts.push(u.bytesTotal ? `${bytes(u.bytesDone)} of ${bytes(u.bytesTotal)}` : bytes(u.bytesDone));
  }
  if (u.speed != null) parts.push(`${bytes(Math.round(u.speed))}/s`);
  if (u.final && u.startedAt && u.completedAt && u.bytesDone) {
    const secs = (Date.parse(u.completedAt) - Date.parse(u.startedAt)) / 1000;
    if (secs > 0) parts.push(`${bytes(Math.round(u.bytesDone / secs))}/s on average over ${secs.toFixed(1)} s`);
  }
  if (u.totalFiles != null) {
    parts.push(`${u.completedFiles || 0} of ${u.totalFiles} files stored`
               + (u.failedFiles ? `, ${u.failedFiles} failed` : ''));
  }
  if (u.bundle && u.bundle.status !== 'completed') parts.push(`zip ${u.bundle.status}`);
  $('#job-bytes').textContent = parts.join(' · ');

  for (const f of u.files || []) {
    const row = me.rows.get(f.index) || fileRow(me, f);
    row.status.textContent = f.waiting ? `${f.status} (${f.waiting})` : f.status;
    row.status.className = f.status;
    row.tr.className = f.status;
    if (f.status === 'completed') {
      row.bar.value = 100;
    } else if (f.bytesDone != null && f.size) {
      row.bar.value = Math.min(100, Math.floor((f.bytesDone * 100) / f.size));
    } else if (f.status === 'pending' || f.status === 'failed' || f.status === 'canceled'
               || u.final) {
      row.bar.value = 0;
    } else {
      row.bar.removeAttribute('value');   // running, bytes not known: indeterminate
    }
    row.size.textContent = f.size != null ? bytes(f.size) : '';
    if (f.error) {
      row.error.replaceChildren(el('span', { class: 'code', text: f.error.code }),
                                ` ${f.error.message || ''}`);
    } else {
      row.error.replaceChildren();
    }
    row.button.disabled = f.status !== 'completed';
  }
  const zipReady = u.status === 'completed'
    && !(u.bundle && u.bundle.status === 'failed');
  $('#download-zip').disabled = !zipReady;
  $('#download-zip').textContent = u.totalFiles > 1 ? 'Download all (zip)' : 'Download';
  $('#cancel').disabled = u.final;
  // a job whose files have all ended (its zip being built) has nothing to pause
  showPaused(u.status === 'paused', u.final || pauseDisabled(u));
  if (u.status === 'completed' && u.bundle && u.bundle.status === 'failed') {
    showError($('#job-error'), `The zip could not be built (${u.bundle.error}); the files can be downloaded one by one.`);
  } else if (u.status === 'failed' || u.status === 'deleted') {
    showError($('#job-error'), u.error ? `${u.error.code}: ${u.error.message || ''}` : `The job ${u.status}.`);
  }
}

async function save(jobId, index) {
  try {
    await client.download(jobId, index == null ? {} : { index });
  } catch (err) {
    showError($('#job-error'), err);
  }
}

// --- the owner's jobs
async function refreshJobs() {
  const body = $('#jobs tbody');
  const mine = ++listed;
  try {
    const r = await client.list({ limit: 20 });
    if (mine !== listed) return;        // a later list (another owner's?) was asked
    showError($('#jobs-error'), null);
    body.replaceChildren(...r.jobs.map((j) => el('tr', { 'data-job': j.jobId },
      el('td', {}, el('button', {
        type: 'button', class: 'link', text: j.jobId.slice(0, 8),
        'aria-label': `Show job ${j.jobId}`, onclick: () => showJob(j.jobId),
      })),
      el('td', { class: j.status, text: j.status }),
      el('td', {}, el('progress', { max: '100', value: String(j.progress),
                                    'aria-label': `Progress of job ${j.jobId}` })),
      el('td', { class: 'numbers',
                 text: `${j.completedFiles}/${j.totalFiles}${j.failedFiles ? ` (${j.failedFiles} failed)` : ''}` }),
      el('td', { class: 'numbers', text: new Date(j.createdAt).toLocaleString() }))));
    $('#jobs-empty').hidden = r.jobs.length > 0;
  } catch (err) {
    if (mine === listed) showError($('#jobs-error'), err);
  }
}

// --- wiring
$('#start-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  showError($('#form-error'), null);
  setOwner($('#owner').value.trim());
  const urls = $('#urls').value.split('\n').map((s) => s.trim()).filter(Boolean);
  const ids = [...document.querySelectorAll('input[name=fileId]:checked')].map((c) => Number(c.value));
  if (!urls.length && !ids.length) {
    showError($('#form-error'), 'Enter URLs or pick sample files.');
    return;
  }
  if (urls.length && ids.length) {
    showError($('#form-error'), 'One job takes URLs or file ids, not both.');
    return;
  }
  $('#start').disabled = true;
  try {
    const job = await client.initiate(urls.length ? urls : ids);
    showJob(job.jobId);
    refreshJobs();
  } catch (err) {
    showError($('#form-error'), err);
  } finally {
    $('#start').disabled = false;
  }
});

$('#owner').addEventListener('change', () => {
  setOwner($('#owner').value.trim());
  refreshJobs();
});
$('#download-zip').addEventListener('click', () => current && save(current.jobId));
// the pause button: "Pause", or pressed and "Resume" while the job is paused
function showPaused(paused, disabled) {
  const b = $('#pause');
  b.textContent = paused ? 'Resume' : 'Pause';
  b.setAttribute('aria-pressed', paused ? 'true' : 'false');
  b.disabled = disabled;
}
// the rule render() applies: nothing to pause once the job or its files ended
function pauseDisabled(u) {
  const open = (u.files || []).some((f) => ['pending', 'downloading', 'paused'].includes(f.status));
  return ['completed', 'failed', 'canceled', 'deleted'].includes(u.status) || !open;
}
$('#pause').addEventListener('click', async () => {
  const b = $('#pause');
  // one request at a time (busy, not disabled: a disabled button would
  // drop the keyboard's focus)
  if (!current || b.getAttribute('aria-busy') === 'true') return;
  const me = current;
  const resume = b.getAttribute('aria-pressed') === 'true';
  b.setAttribute('aria-busy', 'true');
  try {
    const doc = await (resume ? client.resume(me.jobId) : client.pause(me.jobId));
    // the answer shows at once (the stream's paused/resumed event follows),
    // for the job it was about only
    if (current === me && doc && doc.status) showPaused(doc.status === 'paused', pauseDisabled(doc));
  } catch (err) {
    if (current === me) showError($('#job-error'), err);
  } finally {
    b.removeAttribute('aria-busy');
  }
});
$('#cancel').addEventListener('click', async () => {
  if (!current) return;
  try { await client.cancel(current.jobId); } catch (err) { showError($('#job-error'), err); }
});
$('#delete').addEventListener('click', async () => {
  if (!current) return;
  const me = current;
  // its files go too: ask first
  if (!window.confirm(`Delete job ${me.jobId} and its stored files?`)) return;
  try {
    await client.remove(me.jobId);
    if (current === me) hideJob();
    // the focused button is hidden now: focus the list the job left
    $('#jobs-h').focus();
    refreshJobs();
  } catch (err) { showError($('#job-error'), err); }
});
$('#refresh').addEventListener('click', refreshJobs);

// a reload (or a link shared with the same owner) picks the job up again:
// #job=<id>, else this tab's last job
$('#owner').value = localStorage.getItem('adl-owner') || 'demo';
setOwner($('#owner').value.trim());
if (api.refused) {
  showError($('#form-error'), `?api= must be on this page's origin; using ${DEFAULT_API}`);
}
const fromHash = /^#job=([0-9a-fA-F-]{36})$/.exec(location.hash);
const resume = fromHash ? fromHash[1] : sessionStorage.getItem('adl-job');
if (resume) showJob(resume);
refreshJobs();
