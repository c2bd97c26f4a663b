// The demo page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core), against the stack t/610-browser.t started.  Prints one
// JSON line per check ({"check", "ok", "diag"}) and per fact the Perl side
// verifies against the stack ({"fact", "value"}).
//
// Environment: ADL_URL (the nginx with the module and the page), ADL_ORIGIN
// (the origin nginx), ADL_OUT (a folder for downloads), ADL_SCREENSHOT (if
// set: where the picture of a finished job goes), ADL_CHROMIUM.
import { chromium } from 'playwright-core';
import path from 'node:path';

const URL_ = process.env.ADL_URL;
const ORIGIN = process.env.ADL_ORIGIN;
const OUT = process.env.ADL_OUT;
const SHOT = process.env.ADL_SCREENSHOT || '';
const OWNER = 'alice';
const T0 = Date.now();

function out(o) { process.stdout.write(`${JSON.stringify(o)}\n`); }
function check(name, ok, diag) { out({ check: name, ok: !!ok, diag: ok ? undefined : diag }); return !!ok; }
function fact(name, value) { out({ fact: name, value }); }

const browser = await chromium.launch({
  executablePath: process.env.ADL_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const pageErrors = [];

async function newPage({ noEventSource = false, query = '' } = {}) {
  const context = await browser.newContext({ acceptDownloads: true,
                                             viewport: { width: 1100, height: 900 } });
  if (noEventSource) await context.addInitScript(() => { delete window.EventSource; });
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`); });
  await page.goto(`${URL_}/${query}`);
  await page.fill('#owner', OWNER);
  await page.dispatchEvent('#owner', 'change');
  return { context, page };
}

// Starts a job of these URLs (or file ids) with the keyboard: the start
// button focused, Enter pressed.  Returns its id.
async function start(page, { urls = [], ids = [] }) {
  await page.fill('#urls', urls.join('\n'));
  for (const id of ids) await page.check(`input[name=fileId][value="${id}"]`);
  await page.focus('#start');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => /^[0-9a-f-]{36}$/.test(document.querySelector('#job-id').textContent));
  return page.textContent('#job-id');
}

async function waitStatus(page, status, timeout = 60000) {
  try {
    await page.waitForFunction((s) => document.querySelector('#job-status').textContent === s,
                               status, { timeout });
    return true;
  } catch {
    return false;
  }
}

// what the page shows of the job
function shown(page) {
  return page.evaluate(() => {
    const q = (s) => document.querySelector(s);
    return {
      jobId: q('#job-id').textContent,
      status: q('#job-status').textContent,
      transport: q('#transport').dataset.transport || '',
      transportText: q('#transport').textContent,
      progress: q('#job-progress').value,
      percent: q('#job-percent').textContent,
      bytes: q('#job-bytes').textContent,
      jobError: q('#job-error').hidden ? '' : q('#job-error').textContent,
      zipEnabled: !q('#download-zip').disabled,
      cancelEnabled: !q('#cancel').disabled,
      pauseEnabled: !q('#pause').disabled,
      pauseText: q('#pause').textContent,
      pausePressed: q('#pause').getAttribute('aria-pressed'),
      files: [...document.querySelectorAll('#files tbody tr')].map((tr) => ({
        index: Number(tr.dataset.index),
        status: tr.children[2].textContent,
        bar: tr.querySelector('progress').hasAttribute('value')
          ? tr.querySelector('progress').value : null,
        size: tr.children[4].textContent,
        error: tr.children[5].textContent.trim(),
        code: tr.querySelector('.code') ? tr.querySelector('.code').textContent : '',
        canDownload: !tr.querySelector('button').disabled,
      })),
    };
  });
}

async function scenario(name, fn) {
  const t = Date.now();
  try {
    await fn();
  } catch (e) {
    check(`${name}: ran to its end`, false, String(e && e.stack ? e.stack : e));
  }
  fact(`ms_${name}`, Date.now() - t);
}

const files3 = ['a.bin', 'b.bin', 'c.bin'].map((n) => `${ORIGIN}/f/${n}`);

// --- 1. three files, followed by EventSource, downloaded as a zip and one by one
await scenario('eventsource', async () => {
  const { page, context } = await newPage();
  const id = await start(page, { urls: files3 });
  fact('job_stream', id);
  check('the page starts a job and shows its id', /^[0-9a-f-]{36}$/.test(id), id);
  check('the hash keeps the job id', (await page.evaluate(() => location.hash)) === `#job=${id}`);
  check('the job completes', await waitStatus(page, 'completed'), await shown(page));
  const s = await shown(page);
  check('followed by the event stream', s.transport === 'eventsource', s);
  check('the job bar is at 100', s.progress === 100 && s.percent === '100%', s);
  check('three file rows', s.files.length === 3, s.files);
  check('every file bar at 100 and completed',
        s.files.every((f) => f.bar === 100 && f.status === 'completed'), s.files);
  check('sizes shown', s.files.every((f) => /\d.*(B|KiB|MiB)$/.test(f.size)), s.files);
  check('bytes and file counts shown', /of 3 files stored/.test(s.bytes) && /KiB|MiB/.test(s.bytes), s.bytes);
  check('the average speed shown', /\/s on average over [\d.]+ s/.test(s.bytes), s.bytes);
  check('no error shown', s.jobError === '' && s.files.every((f) => f.error === ''), s);
  check('cancel disabled once ended, download enabled', !s.cancelEnabled && s.zipEnabled, s);
  await page.waitForSelector(`#jobs tbody tr[data-job="${id}"]`);
  const listed = await page.textContent(`#jobs tbody tr[data-job="${id}"] td:nth-child(2)`);
  check("the owner's jobs list it as completed", listed === 'completed', listed);
  if (SHOT) {
    await page.screenshot({ path: SHOT, fullPage: true });
    fact('screenshot', SHOT);
  }
  const [zip] = await Promise.all([page.waitForEvent('download'), page.click('#download-zip')]);
  const zipPath = path.join(OUT, 'job.zip');
  await zip.saveAs(zipPath);
  fact('zip', zipPath);
  check('the zip is named after the job', zip.suggestedFilename() === `${id}.zip`, zip.suggestedFilename());
  const [one] = await Promise.all([page.waitForEvent('download'),
                                   page.click('#files tbody tr[data-index="1"] button')]);
  const onePath = path.join(OUT, 'file1.bin');
  await one.saveAs(onePath);
  fact('file1', onePath);

  // an API that answers a javascript: link: refused, nothing runs
  await page.route('**/v1/download/*/links', (route) => route.fulfill({
    status: 200, contentType: 'application/json',
    body: JSON.stringify({ jobId: id, files: [], bundle: { name: 'x.zip', url: 'javascript:window.__pwned=1' } }),
  }));
  await page.click('#download-zip');
  await page.waitForFunction(() => !document.querySelector('#job-error').hidden, null, { timeout: 10000 });
  const hostile = await page.evaluate(() => ({ pwned: window.__pwned,
                                                error: document.querySelector('#job-error').textContent,
                                                url: location.href }));
  check('a javascript: link from the API is refused, not run',
        hostile.pwned === undefined && /UNSAFE_LINK/.test(hostile.error) && hostile.url.startsWith('http'),
        hostile);
  await page.unroute('**/v1/download/*/links');
  await context.close();
});

// --- 2. no EventSource at all: the page polls (sample file ids)
await scenario('no_eventsource', async () => {
  const { page, context } = await newPage({ noEventSource: true });
  check('EventSource is gone in this page', await page.evaluate(() => typeof EventSource === 'undefined'));
  const id = await start(page, { ids: [70001, 70002, 70003] });
  fact('job_poll', id);
  check('without EventSource the job completes', await waitStatus(page, 'completed'), await shown(page));
  const s = await shown(page);
  check('... followed by polling, saying why', s.transport === 'poll' && /no-eventsource/.test(s.transportText), s);
  check('... bars at 100', s.progress === 100 && s.files.length === 3
        && s.files.every((f) => f.bar === 100), s);
  await context.close();
});

// --- 3. a proxy that buffers the stream: the page notices and polls
await scenario('buffered', async () => {
  // blocked=2000: the client gives up on the held-back stream after 2 s
  // instead of 5, far from both ends of the checks below on a loaded machine
  const { page, context } = await newPage({ query: '?api=/buffered/v1/download/&blocked=2000' });
  const t = Date.now();
  const id = await start(page, { urls: [`${ORIGIN}/slow/slow1.bin?rate=64k`] });
  fact('job_buffered', id);
  await page.waitForFunction(() => document.querySelector('#transport').dataset.transport === 'poll',
                             null, { timeout: 30000 });
  const fellBack = Date.now() - t;
  fact('fallback_ms', fellBack);
  let s = await shown(page);
  check('behind a buffering proxy the page polls, saying why', /blocked/.test(s.transportText), s);
  check('... before the job ended', s.status !== 'completed', s);
  check('... within a few seconds', fellBack < 15000, fellBack);
  check('... and the job completes', await waitStatus(page, 'completed'), await shown(page));
  s = await shown(page);
  check('... bars at 100', s.progress === 100 && s.files.every((f) => f.bar === 100), s);
  await context.close();
});

// --- 4. a reload mid-job picks the job up again
await scenario('reload', async () => {
  const { page, context } = await newPage();
  const id = await start(page, { urls: [`${ORIGIN}/slow/slow2.bin?rate=64k`, `${ORIGIN}/slow/slow3.bin?rate=64k`] });
  fact('job_reload', id);
  await page.waitForFunction(() => document.querySelector('#job-status').textContent === 'processing'
                             && document.querySelector('#job-progress').value > 0, null, { timeout: 30000 });
  let speedShown = true;
  await page.waitForFunction(() => /[KM]iB\/s/.test(document.querySelector('#job-bytes').textContent),
                             null, { timeout: 5000 }).catch(() => { speedShown = false; });
  const before = await shown(page);
  check('a running job shows its speed', speedShown, before.bytes);
  await page.reload();
  const after = await page.evaluate(() => ({ hash: location.hash, shown: document.querySelector('#job-id').textContent }));
  check('after a reload the page shows the same job', after.shown === id, { id, after });
  // the first update after the reload: the job as the page picked it up
  await page.waitForFunction(() => document.querySelector('#job-status').textContent !== 'connecting',
                             null, { timeout: 20000 }).catch(() => {});
  const mid = await shown(page);
  check('... still running when picked up', mid.status === 'processing' && mid.progress > 0
        && mid.progress < 100, { before, mid });
  check('... and it completes', await waitStatus(page, 'completed'), await shown(page));
  const s = await shown(page);
  check('... bars at 100', s.progress === 100 && s.files.length === 2 && s.files.every((f) => f.bar === 100), s);
  await context.close();
});

// --- 5. a file the origin does not have: its error code on its row
await scenario('failing', async () => {
  const { page, context } = await newPage();
  const id = await start(page, { urls: [`${ORIGIN}/f/a.bin`, `${ORIGIN}/status/404`] });
  fact('job_failing', id);
  await page.waitForFunction(() => ['completed', 'failed'].includes(document.querySelector('#job-status').textContent),
                             null, { timeout: 60000 });
  const s = await shown(page);
  const bad = s.files.find((f) => f.index === 1) || {};
  const good = s.files.find((f) => f.index === 0) || {};
  check('the failing file shows its error code', bad.code === 'HTTP_STATUS' && bad.status === 'failed', s.files);
  check('... with the origin\'s status in the message', /404/.test(bad.error), bad);
  check('... and no download button', !bad.canDownload, bad);
  check('the other file is stored and offered', good.status === 'completed' && good.canDownload, good);
  check('the job line counts the failure', /1 failed/.test(s.bytes), s.bytes);
  await context.close();
});

// --- 6. cancel from the keyboard
await scenario('cancel', async () => {
  const { page, context } = await newPage();
  const id = await start(page, { urls: [`${ORIGIN}/slow/slow4.bin?rate=32k`] });
  fact('job_cancel', id);
  await page.waitForFunction(() => !document.querySelector('#cancel').disabled, null, { timeout: 20000 });
  // pause, then resume, from the keyboard
  await page.waitForFunction(() => !document.querySelector('#pause').disabled, null, { timeout: 20000 });
  await page.focus('#pause');
  await page.keyboard.press('Enter');
  check('a pause shows paused', await waitStatus(page, 'paused', 20000), await shown(page));
  let p = await shown(page);
  check('... the button resumes now, pressed', p.pauseText === 'Resume' && p.pausePressed === 'true'
        && p.pauseEnabled, p);
  check('... and the file shows paused', p.files.length === 1 && /^paused/.test(p.files[0].status), p.files);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('#job-status').textContent !== 'paused',
                             null, { timeout: 20000 });
  p = await shown(page);
  check('a resume lets it go on', ['queued', 'processing'].includes(p.status)
        && p.pauseText === 'Pause' && p.pausePressed === 'false', p);
  await page.focus('#cancel');
  await page.keyboard.press('Enter');
  check('a cancel shows canceled', await waitStatus(page, 'canceled', 20000), await shown(page));
  const s = await shown(page);
  check('... with cancel, pause and download disabled', !s.cancelEnabled && !s.pauseEnabled
        && !s.zipEnabled, s);

  // the owner's jobs: another owner sees none of alice's, even when
  // alice's list (asked just before) answers after bob's
  await page.route('**/v1/download/jobs*', async (route) => {
    if (route.request().headers()['x-user'] === OWNER) await new Promise((r) => setTimeout(r, 1500));
    await route.continue();
  });
  await page.click('#refresh');
  await page.fill('#owner', 'bob');
  await page.dispatchEvent('#owner', 'change');
  await page.waitForFunction(() => !document.querySelector('#jobs-empty').hidden, null, { timeout: 10000 });
  check('another owner lists none of them',
        (await page.locator('#jobs tbody tr').count()) === 0);
  check("... and the previous owner's job is no longer shown",
        await page.evaluate(() => document.querySelector('#job').hidden && location.hash === ''));
  await page.waitForTimeout(2500);
  const late = await page.evaluate(() => ({ rows: document.querySelectorAll('#jobs tbody tr').length,
                                           empty: !document.querySelector('#jobs-empty').hidden }));
  check("... not even once the previous owner's late list has answered", late.rows === 0 && late.empty, late);
  await page.unroute('**/v1/download/jobs*');
  await context.close();
});

// --- 7. delete, asked first, from the keyboard; the focus goes on
await scenario('delete', async () => {
  const { page, context } = await newPage();
  const id = await start(page, { urls: [`${ORIGIN}/f/c.bin`] });
  fact('job_deleted', id);
  check('a job to delete completes', await waitStatus(page, 'completed'), await shown(page));
  const asked = [];
  page.once('dialog', (d) => { asked.push(d.message()); d.dismiss(); });
  await page.focus('#delete');
  await page.keyboard.press('Enter');
  await page.waitForTimeout(500);
  check('delete asks first', asked.length === 1 && asked[0].includes(id), asked);
  check('... and a "no" keeps the job', await page.evaluate(() => !document.querySelector('#job').hidden));
  page.once('dialog', (d) => { asked.push(d.message()); d.accept(); });
  await page.focus('#delete');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('#job').hidden, null, { timeout: 10000 });
  const after = await page.evaluate(() => ({ focused: document.activeElement && document.activeElement.id,
                                             hash: location.hash }));
  check('a "yes" deletes it: the focus goes to the jobs heading, not the body',
        after.focused === 'jobs-h' && after.hash === '', after);
  await page.waitForFunction((j) => !document.querySelector(`#jobs tbody tr[data-job="${j}"]`), id,
                             { timeout: 10000 }).catch(() => {});
  check('... and the list no longer has it',
        (await page.locator(`#jobs tbody tr[data-job="${id}"]`).count()) === 0);
  await context.close();
});

// --- 8. ?api= on another origin: not taken
await scenario('api_origin', async () => {
  const { page, context } = await newPage({ query: '?api=https://api.invalid/v1/download/' });
  const s = await page.evaluate(() => ({ error: document.querySelector('#form-error').textContent,
                                         hidden: document.querySelector('#form-error').hidden }));
  check("?api= on another origin is refused, saying so", !s.hidden && /origin/.test(s.error), s);
  // (the owner has jobs from the scenarios before: waiting for "no job"
  // too would pass on the empty list shown before the answer)
  await page.waitForFunction(() => document.querySelectorAll('#jobs tbody tr').length > 0,
                             null, { timeout: 10000 }).catch(() => {});
  check('... the page uses its own API', (await page.locator('#jobs tbody tr').count()) >= 1);
  await context.close();
});

// --- 8b. a path of this origin that reads as another host ("//host/"):
// the requests stay on this origin
await scenario('api_protocol_relative', async () => {
  const errorsBefore = pageErrors.length;
  const asked = [];
  const { page, context } = await newPage({ query: '?api=/.//evil.invalid/v1/download/' });
  page.on('request', (rq) => asked.push(new URL(rq.url()).host));
  // an owner change lists the owner's jobs: through the API base
  await page.fill('#owner', `${OWNER}-b`);
  await page.dispatchEvent('#owner', 'change');
  await page.waitForTimeout(800);
  check('... and asks its own origin', asked.some((h) => !h.startsWith('evil.invalid')), asked);
  check('?api=/.//host/ sends nothing to that host',
        !asked.some((h) => h.startsWith('evil.invalid')), asked);
  // (that path has no API on this origin: its 404s are this scenario's own)
  pageErrors.length = errorsBefore;
  await context.close();
});

check('no error in the pages\' consoles', pageErrors.length === 0, pageErrors);
fact('ms_total', Date.now() - T0);
await browser.close();
