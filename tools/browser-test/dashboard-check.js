#!/usr/bin/env node
// Drives the apikeyd dashboard in a real (headless) Chromium and checks
// what it shows against the API answers it received. Run by
// t/031-dashboard-browser.t; every check is written to the report file, the
// .t file turns each into a TAP test.
//
// Environment:
//   DASHBOARD_URL      apikeyd base URL, e.g. http://127.0.0.1:8089
//   DASHBOARD_ORG      org id (the session bar must show it: the sign-in
//                      asks for the key alone)
//   DASHBOARD_KEY      an admin key of that org (scope usage:read)
//   DASHBOARD_KEY_ID   the key to open (it must be in the list, spiking in
//                      the last complete hour)
//   DASHBOARD_SELF_KEY the secret of DASHBOARD_KEY_ID (no usage:read)
//   DASHBOARD_REPORT   where to write the JSON report
//   DASHBOARD_SCREENSHOT  PNG path (1280 px wide, the key's page); the key
//                      list goes to *-keys.png, the key's page at 390 px
//                      to *-narrow.png
//   DASHBOARD_PROFILE  a fresh, empty directory for Chromium's profile
//   CHROMIUM           browser binary (default /usr/bin/chromium)
//
// Exit status: 0 all checks passed, 1 some failed, 2 the run broke.
'use strict';

const fs = require('fs');
const { chromium } = require('playwright-core');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(name + ' is not set');
  return v;
};

const URL_BASE = env('DASHBOARD_URL').replace(/\/$/, '');
const ORG = env('DASHBOARD_ORG');
const ADMIN_KEY = env('DASHBOARD_KEY');
const KEY_ID = env('DASHBOARD_KEY_ID');
const SELF_KEY = env('DASHBOARD_SELF_KEY');
const REPORT = env('DASHBOARD_REPORT');
const SCREENSHOT = env('DASHBOARD_SCREENSHOT');
const PROFILE = env('DASHBOARD_PROFILE');
const TIMEOUT_MS = 15000;

const report = { checks: [], api: {}, requests: [], console: [] };

function check(name, ok, got, want) {
  report.checks.push({ name, ok: !!ok, got, want });
}

function checkEq(name, got, want) {
  check(name, JSON.stringify(got) === JSON.stringify(want), got, want);
}

// --- the dashboard's formats, written independently of app.js -------------

const fmtInt = (n) => (n == null ? '—' : Number(n).toLocaleString('en-US'));

function fmtRate(r) {
  const pct = r * 100;
  if (pct > 0 && pct < 0.1) return '<0.1%';
  return pct.toFixed(1) + '%';
}

function fmtMs(ms) {
  if (ms == null) return '—';
  return ms >= 1000 ? (ms / 1000).toFixed(2) + ' s' : ms.toFixed(1) + ' ms';
}

const utcMinutes = (iso) => iso.slice(0, 16).replace('T', ' ') + ' UTC';

// --- browser plumbing --------------------------------------------------------

async function launch() {
  return chromium.launchPersistentContext(PROFILE, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    timeout: 60000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
           '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
}

function watch(page) {
  page.on('console', (m) => report.console.push({ type: m.type(), text: m.text() }));
  page.on('pageerror', (e) => report.console.push({ type: 'pageerror', text: e.message }));
  page.on('request', (r) => report.requests.push({
    url: r.url(), authorization: r.headers()['authorization'] ? 'present' : 'absent',
  }));
}

// Runs `action` and returns the JSON of the API answer it triggers.
async function apiAnswer(page, pathRe, action) {
  const [res] = await Promise.all([
    page.waitForResponse((r) => pathRe.test(new URL(r.url()).pathname), { timeout: TIMEOUT_MS }),
    action(),
  ]);
  const u = new URL(res.url());
  return { status: res.status(), path: u.pathname + u.search, json: await res.json() };
}

const LIST_RE = /^\/api\/orgs\/[^/]+\/api-keys\/usage$/;
const KEY_RE = /^\/api\/orgs\/[^/]+\/api-keys\/[^/]+\/usage$/;
const SELF_RE = /^\/api\/keys\/self\/usage$/;

// The key alone: the dashboard finds its org.
async function signIn(page, key) {
  await page.fill('#admin-key', key);
  await page.click('#sign-in');
}

// --- the key list ------------------------------------------------------------

async function rowOf(page, keyId) {
  return page.$eval(`#keys-table tbody tr[data-key-id="${keyId}"]`, (tr) => ({
    name: tr.querySelector('.c-name').textContent,
    hint: tr.querySelector('.c-hint').textContent,
    badges: [...tr.querySelectorAll('.c-status .badge')].map((b) => b.textContent),
    scopes: [...tr.querySelectorAll('.c-scopes code')].map((c) => c.textContent),
    lastUsed: tr.querySelector('.c-last-used').innerText,
    distinctIps: (tr.querySelector('.c-last-used .distinct-ips') || {}).textContent || '',
    today: tr.querySelector('.c-today').textContent,
    month: tr.querySelector('.c-month').textContent,
    lastHour: tr.querySelector('.c-last-hour').textContent,
  }));
}

// The dashboard's marker beside the last-used address.
function distinctIpsText(k) {
  const today = k.distinct_ips_today;
  return fmtInt(today) + (today === 1 ? ' IP' : ' IPs') + ' today, ' +
    fmtInt(k.distinct_ips_7d) + ' in 7 days';
}

function expectedRow(k) {
  return {
    name: k.name,
    hint: k.hint,
    badges: [k.status].concat(k.dormant ? ['dormant'] : [], k.spike ? ['spike'] : []),
    scopes: k.scopes,
    lastUsed: k.last_used_at ? utcMinutes(k.last_used_at) + '\n' + (k.last_used_ip || '') +
      (k.distinct_ips_7d > 0 ? ' · ' + distinctIpsText(k) : '') : 'never',
    distinctIps: k.last_used_at && k.distinct_ips_7d > 0 ? distinctIpsText(k) : '',
    today: fmtInt(k.requests_today),
    month: fmtInt(k.requests_this_month),
    lastHour: fmtInt(k.requests_last_hour),
  };
}

async function checkKeyList(page, list) {
  report.api.list = list;
  checkEq('list: API answered 200', list.status, 200);
  await page.waitForSelector('#keys-view:not([hidden])', { timeout: TIMEOUT_MS });
  const ids = await page.$$eval('#keys-table tbody tr', (trs) => trs.map((tr) => tr.dataset.keyId));
  checkEq('list: one row per key, in API order', ids, list.json.keys.map((k) => k.key_id));
  for (const k of list.json.keys) {
    checkEq(`list: row of "${k.name}" shows the API's values`, await rowOf(page, k.key_id), expectedRow(k));
  }
  const marked = await page.$$eval('#keys-table .c-last-used .distinct-ips', (n) => n.length);
  check('list: distinct-IP marker beside the last-used address',
    marked > 0 && marked === list.json.keys.filter((k) => k.last_used_at && k.distinct_ips_7d > 0).length,
    marked, '> 0, one per used key with addresses');
  checkEq('list: key names are text, never markup',
    await page.$$eval('#keys-table b, #keys-table script, #keys-table img', (n) => n.length), 0);
  const note = await page.textContent('#keys-complete');
  check('list: "complete until" note', list.json.complete_until
    ? note.includes(list.json.complete_until.slice(0, 19).replace('T', ' ')) : /unknown/.test(note), note,
    list.json.complete_until);
}

// --- paging, sorting, filtering, search --------------------------------------

// Every 200 list answer by its query: a 304 means "the one you have".
const listSeen = new Map();

// Runs `action`; the key list's answer (a 304's json: the 200 it confirms).
async function listAnswer(page, action) {
  const [res] = await Promise.all([
    page.waitForResponse((r) => LIST_RE.test(new URL(r.url()).pathname), { timeout: TIMEOUT_MS }),
    action(),
  ]);
  const u = new URL(res.url());
  if (res.status() === 200) listSeen.set(u.search, await res.json());
  return { status: res.status(), query: Object.fromEntries(u.searchParams),
           json: listSeen.get(u.search) || null };
}

async function shownIds(page) {
  await page.waitForSelector('#loading', { state: 'hidden', timeout: TIMEOUT_MS });
  return page.$$eval('#keys-table tbody tr', (trs) => trs.map((tr) => tr.dataset.keyId));
}

const ariaSort = (page, sort) =>
  page.$eval(`#keys-table th:has(button[data-sort="${sort}"])`, (th) => th.getAttribute('aria-sort'));

// One step: what the API was asked, and the rows shown = its answer.
async function listStep(page, label, action, want) {
  const a = await listAnswer(page, action);
  check(`${label}: API 200 (or 304 for a page already seen)`,
    a.status === 200 || (a.status === 304 && a.json), a.status, '200 or 304');
  for (const [name, value] of Object.entries(want)) {
    checkEq(`${label}: asks ${name}=${value}`, a.query[name], value);
  }
  const ids = await shownIds(page);
  checkEq(`${label}: rows = the API's answer, in order`, ids, (a.json ? a.json.keys : []).map((k) => k.key_id));
  return a;
}

async function checkListControls(page, firstPage) {
  listSeen.set(new URL(URL_BASE + firstPage.path).search, firstPage.json);
  const p2 = await listStep(page, 'next page', () => page.click('#keys-next'), { limit: '50' });
  check('next page: sent the cursor of page 1', p2.query.cursor === firstPage.json.next_cursor,
    p2.query.cursor, firstPage.json.next_cursor);
  checkEq('next page: "Page 2", Previous enabled, Next disabled on the last page',
    [await page.textContent('#keys-page'), await page.isDisabled('#keys-prev'),
     await page.isDisabled('#keys-next')], ['Page 2', false, p2.json.next_cursor == null]);
  const firstIds = firstPage.json.keys.map((k) => k.key_id);
  check('next page: none of page 1\'s keys', p2.json.keys.every((k) => !firstIds.includes(k.key_id)),
    p2.json.keys.length, 'disjoint');
  const back = await listAnswer(page, () => page.click('#keys-prev'));
  check('previous page: no cursor, 200 or 304 (ETag)', !back.query.cursor && [200, 304].includes(back.status),
    back.status, 'no cursor');
  checkEq('previous page: page 1 again', await shownIds(page), firstIds);

  const refresh = await listAnswer(page, () => page.click('#refresh-keys'));
  checkEq('refresh of an unchanged page: 304 (If-None-Match)', refresh.status, 304);
  checkEq('refresh: the rows stay', await shownIds(page), firstIds);

  const today = 'button.sort[data-sort="requests_today"]';
  await listStep(page, 'click "Today"', () => page.click(today), { sort: 'requests_today', order: 'desc' });
  checkEq('"Today" header: aria-sort descending', await ariaSort(page, 'requests_today'), 'descending');
  const asc = await listStep(page, 'click "Today" again', () => page.click(today),
    { sort: 'requests_today', order: 'asc' });
  checkEq('"Today" header: aria-sort ascending', await ariaSort(page, 'requests_today'), 'ascending');
  const counts = asc.json.keys.map((k) => k.requests_today);
  checkEq('ascending by requests today', counts, [...counts].sort((x, y) => x - y));
  await listStep(page, 'click "Name"', () => page.click('button.sort[data-sort="name"]'),
    { sort: 'name', order: 'asc' });
  checkEq('"Today" header: no aria-sort once another column sorts', await ariaSort(page, 'requests_today'), null);

  const revoked = await listStep(page, 'status revoked',
    () => page.selectOption('#status-filter', 'revoked'), { status: 'revoked', sort: 'name' });
  check('status revoked: only revoked keys', revoked.json.keys.length > 0 &&
    revoked.json.keys.every((k) => k.status === 'revoked'), revoked.json.keys.length, '> 0, all revoked');
  await listStep(page, 'status any', () => page.selectOption('#status-filter', ''), { sort: 'name' });
  const dormant = await listStep(page, 'dormant only',
    () => page.selectOption('#dormant-filter', 'true'), { dormant: 'true' });
  const badges = await page.$$eval('#keys-table tbody tr', (trs) =>
    trs.map((tr) => !!tr.querySelector('.badge.dormant')));
  check('dormant only: every row has the dormant badge', badges.length === dormant.json.keys.length &&
    badges.length > 0 && badges.every(Boolean), badges, 'all true');
  await listStep(page, 'all keys', () => page.selectOption('#dormant-filter', ''), { sort: 'name' });

  const found = await listStep(page, 'search "Check"', () => page.fill('#key-search', 'Check'), { q: 'Check' });
  checkEq('search "Check": the checkout key only', found.json.keys.map((k) => k.name), ['checkout-web']);
  await listStep(page, 'search cleared', () => page.fill('#key-search', ''), { sort: 'name' });
}

// --- one key -----------------------------------------------------------------

async function cardTexts(page) {
  const ids = ['requests-today', 'requests-month', 'requests-range', 'rate-4xx', 'rate-5xx', 'avg-ms', 'p95-ms'];
  const out = {};
  for (const id of ids) out[id] = await page.textContent('#' + id);
  return out;
}

function expectedCards(j) {
  return {
    'requests-today': fmtInt(j.requests_today),
    'requests-month': fmtInt(j.requests_this_month),
    'requests-range': fmtInt(j.series.reduce((s, b) => s + b.requests, 0)),
    'rate-4xx': fmtRate(j.error_rate['4xx']),
    'rate-5xx': fmtRate(j.error_rate['5xx']),
    'avg-ms': fmtMs(j.avg_ms),
    'p95-ms': fmtMs(j.p95_ms),
  };
}

async function topRows(page) {
  return page.$$eval('#top-table tbody tr', (trs) => trs.map((tr) =>
    [...tr.cells].map((td) => td.textContent)));
}

function expectedTopRows(j) {
  return j.top_endpoints.map((e) => [e.endpoint, e.method, fmtInt(e.requests),
    fmtInt(e.errors_4xx), fmtInt(e.errors_5xx), fmtMs(e.avg_ms)]);
}

async function checkKeyView(page, answer, label) {
  const j = answer.json;
  checkEq(`${label}: API answered 200`, answer.status, 200);
  await page.waitForSelector('#key-view:not([hidden])', { timeout: TIMEOUT_MS });
  // Rendered once the bars are this answer's (the previous view may have
  // had as many).
  const ends = [j.series.length, j.series[0] && j.series[0].t, j.series.length && j.series[j.series.length - 1].t];
  await page.waitForFunction(([n, first, last]) => {
    const gs = document.querySelectorAll('#trend-chart g.bucket');
    return gs.length === n && (n === 0 || (gs[0].dataset.t === first && gs[n - 1].dataset.t === last));
  }, ends, { timeout: TIMEOUT_MS });
  checkEq(`${label}: key name`, await page.textContent('#key-name'), j.key.name);
  if (j.key.last_used_at) {
    const meta = await page.textContent('#key-meta');
    check(`${label}: distinct IPs beside the last-used address`,
      meta.includes('(' + distinctIpsText(j.key) + ')'), meta, distinctIpsText(j.key));
    // one address today reads in the singular, any other count in the plural
    check(`${label}: "IP" or "IPs" by today's count`,
      meta.includes(j.key.distinct_ips_today === 1 ? '(1 IP today,' : ' IPs today,'),
      meta, j.key.distinct_ips_today);
  }
  const bars = await page.$$eval('#trend-chart g.bucket', (gs) => gs.map((g) => [g.dataset.t, +g.dataset.requests]));
  checkEq(`${label}: one bar per series bucket, same times and counts`, bars,
    j.series.map((b) => [b.t, b.requests]));
  const errorBars = await page.$$eval('#trend-chart g.bucket', (gs) =>
    gs.filter((g) => +g.querySelector('.e4').getAttribute('height') > 0 ||
                     +g.querySelector('.e5').getAttribute('height') > 0).length);
  checkEq(`${label}: 4xx/5xx overlaid on the buckets that have errors`, errorBars,
    j.series.filter((b) => b.errors_4xx + b.errors_5xx > 0).length);
  const step = queryOf(answer).interval === 'day' ? 86400000 : 3600000;
  checkEq(`${label}: spike marks on the buckets holding a spike hour`,
    await page.$$eval('#trend-chart g.bucket.spike', (gs) => gs.map((g) => g.dataset.t)),
    j.series.filter((b) => (j.spikes || []).some((s) =>
      Date.parse(s.t) >= Date.parse(b.t) && Date.parse(s.t) < Date.parse(b.t) + step)).map((b) => b.t));
  checkEq(`${label}: summary cards match the API`, await cardTexts(page), expectedCards(j));
  checkEq(`${label}: top endpoints table matches the API`, await topRows(page), expectedTopRows(j));
  const latencyRuns = await page.$$eval('#latency-chart .line.avg > *', (n) => n.length);
  check(`${label}: latency line drawn`, latencyRuns > 0 || j.avg_ms == null, latencyRuns, '>0');
}

function queryOf(answer) {
  return Object.fromEntries(new URL(URL_BASE + answer.path).searchParams);
}

async function checkRanges(page) {
  const week = await apiAnswer(page, KEY_RE, () => page.click('button[data-range="7d"]'));
  report.api.week = week;
  checkEq('7 d: hourly', queryOf(week).interval, 'hour');
  checkEq('7 d: 168 hourly bars', week.json.series.length, 168);
  await checkKeyView(page, week, '7 d');

  const month = await apiAnswer(page, KEY_RE, () => page.click('button[data-range="30d"]'));
  report.api.month = month;
  checkEq('30 d: daily', queryOf(month).interval, 'day');
  checkEq('30 d: 30 daily bars', month.json.series.length, 30);
  await checkKeyView(page, month, '30 d');

  // A custom range of 60 days: hourly is not offered.
  await page.click('button[data-range="custom"]');
  const to = new Date().toISOString().slice(0, 10);
  const from = new Date(Date.parse(to) - 59 * 86400000).toISOString().slice(0, 10);
  await page.fill('#range-from', from);
  await page.fill('#range-to', to);
  const custom = await apiAnswer(page, KEY_RE, () => page.click('#apply-range'));
  checkEq('custom 60 days: 60 daily bars', custom.json.series.length, 60);
  checkEq('custom 60 days: sent from/to/interval',
    [queryOf(custom).from, queryOf(custom).to, queryOf(custom).interval],
    [from + 'T00:00:00Z', new Date(Date.parse(to) + 86400000).toISOString().replace('.000', ''), 'day']);
  checkEq('custom 60 days: "hour" is disabled',
    await page.$eval('#interval option[value="hour"]', (o) => o.disabled), true);
}

// --- errors, storage, layout -------------------------------------------------

async function errorText(page) {
  await page.waitForSelector('#error:not([hidden])', { timeout: TIMEOUT_MS });
  return page.textContent('#error');
}

async function checkErrors(page) {
  await page.click('#forget-key');
  checkEq('forget key: removed from sessionStorage',
    await page.evaluate(() => sessionStorage.getItem('apikey.dashboard.key')), null);
  checkEq('forget key: back to the sign-in form', await page.isVisible('#login'), true);

  // The answer to the bad key's own request, not a late one of the session
  // before it: matched by the key the request carried.
  const badKey = ADMIN_KEY.slice(0, -1) + 'x';
  const [badRes] = await Promise.all([
    page.waitForResponse((r) => SELF_RE.test(new URL(r.url()).pathname) &&
      r.request().headers().authorization === 'Bearer ' + badKey, { timeout: TIMEOUT_MS }),
    signIn(page, badKey),
  ]);
  const a = { status: badRes.status() };
  checkEq('bad key: API 401', a.status, 401);
  check('bad key: "key rejected"', /^Key rejected/.test(await errorText(page)), await errorText(page), 'Key rejected…');
  checkEq('bad key: not kept', await page.evaluate(() => sessionStorage.getItem('apikey.dashboard.key')), null);
}

// A key without usage:read: the org listing answers 403, the dashboard
// shows the key's own usage (the self view) with a note.
async function checkSelfSignIn(page) {
  let listed = null;
  const onList = (r) => { if (LIST_RE.test(new URL(r.url()).pathname)) listed = r.status(); };
  page.on('response', onList);
  // The view's own request (with its range), not the sign-in's probe.
  const viewed = page.waitForResponse((r) => {
    const u = new URL(r.url());
    return SELF_RE.test(u.pathname) && u.searchParams.has('interval');
  }, { timeout: TIMEOUT_MS }).catch(() => null);
  await signIn(page, SELF_KEY);
  const res = await viewed;
  const own = res && { status: res.status(), path: new URL(res.url()).pathname + new URL(res.url()).search,
                       json: await res.json() };
  page.off('response', onList);
  checkEq('own key: the org listing answered 403', listed, 403);
  check('own key: the self view loaded', own && own.status === 200, own && own.status, 200);
  if (!own) return;
  await checkKeyView(page, own, 'own key');
  checkEq('own key: the note says so, no way back to a list',
    [await page.isVisible('#self-note'), await page.isVisible('#back')], [true, false]);
  checkEq('own key: the session bar names its org', await page.textContent('#session-org'), ORG);
  checkEq('own key: kept where the admin key was',
    await page.evaluate(() => sessionStorage.getItem('apikey.dashboard.key')), SELF_KEY);
  check('own key: its spike hour marked', own.json.spikes.length > 0 &&
    (await page.$$('#trend-chart g.bucket.spike')).length > 0, own.json.spikes, '>0');
  await page.click('#forget-key');
}

async function checkStorage(page) {
  checkEq('the key is in sessionStorage',
    await page.evaluate(() => sessionStorage.getItem('apikey.dashboard.key')), ADMIN_KEY);
  checkEq('nothing in localStorage', await page.evaluate(() => localStorage.length), 0);
  checkEq('no cookies', await page.evaluate(() => document.cookie), '');
}

function checkRequests() {
  const leaked = report.requests.filter((r) => r.url.includes(ADMIN_KEY) ||
                                               r.url.includes(encodeURIComponent(ADMIN_KEY)));
  checkEq('the key is in no URL', leaked.length, 0);
  const api = report.requests.filter((r) => new URL(r.url).pathname.startsWith('/api/'));
  check('every API request carries Authorization', api.length > 0 && api.every((r) => r.authorization === 'present'),
    api.length, 'all');
  const foreign = report.requests.filter((r) => !r.url.startsWith(URL_BASE + '/'));
  checkEq('no request leaves apikeyd (no CDN)', foreign.map((r) => r.url), []);
}

async function checkNarrow(page) {
  await page.setViewportSize({ width: 390, height: 800 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check('390 px wide: no sideways scrolling of the page', overflow <= 1, overflow, '<= 1');
  await page.screenshot({ path: SCREENSHOT.replace(/\.png$/, '-narrow.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
}

// --- the run -----------------------------------------------------------------

async function run() {
  const context = await launch();
  try {
    const page = context.pages()[0] || await context.newPage();
    watch(page);
    await page.goto(URL_BASE + '/', { timeout: TIMEOUT_MS });
    checkEq('the page loads with its script', await page.isVisible('#login'), true);

    const list = await apiAnswer(page, LIST_RE, () => signIn(page, ADMIN_KEY));
    await checkKeyList(page, list);
    checkEq('sign-in by the key alone: the org came from the key', await page.textContent('#session-org'), ORG);
    const spiking = list.json.keys.filter((k) => k.spike).map((k) => k.key_id);
    checkEq('list: the spiking key is marked', [spiking, await page.$$eval(
      '#keys-table tbody tr', (trs) => trs.filter((tr) => tr.querySelector('.badge.spike'))
        .map((tr) => tr.dataset.keyId))], [[KEY_ID], [KEY_ID]]);
    await checkStorage(page);
    await page.screenshot({ path: SCREENSHOT.replace(/\.png$/, '-keys.png'), fullPage: true });

    const day = await apiAnswer(page, KEY_RE,
      () => page.click(`#keys-table tr[data-key-id="${KEY_ID}"] .c-name a`));
    report.api.day = day;
    checkEq('24 h: hourly, 24 bars', [queryOf(day).interval, day.json.series.length], ['hour', 24]);
    checkEq('24 h: one spike hour, the last complete one', day.json.spikes.map((s) => s.t),
      [new Date(Math.floor(Date.now() / 3600000) * 3600000 - 3600000).toISOString().replace('.000', '')]);
    await checkKeyView(page, day, '24 h');
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    await checkNarrow(page);
    await checkRanges(page);
    await page.click('#back');
    await page.waitForSelector('#keys-view:not([hidden])', { timeout: TIMEOUT_MS });
    await shownIds(page);
    await checkListControls(page, list);

    const errors = report.console.filter((m) => m.type === 'error' || m.type === 'pageerror');
    checkEq('no console errors (CSP violations included)', errors, []);
    await checkErrors(page);
    await checkSelfSignIn(page);
    checkRequests();
  } finally {
    await context.close();
  }
}

run().then(() => {
  fs.writeFileSync(REPORT, JSON.stringify(report, null, 1));
  process.exit(report.checks.every((c) => c.ok) ? 0 : 1);
}, (e) => {
  report.error = String(e && e.stack || e);
  fs.writeFileSync(REPORT, JSON.stringify(report, null, 1));
  console.error(report.error);
  process.exit(2);
});
