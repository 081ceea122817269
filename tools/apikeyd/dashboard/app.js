// apikeyd's usage dashboard: plain JS, no dependencies, served by apikeyd
// itself (docs/dashboard.md). It reads the analytics API with the key the
// user pastes (the org comes from the key; a key without usage:read sees
// its own usage only); the key lives in sessionStorage only and goes out
// only in an Authorization header.
//
// Safety rule for this file: text from the API (key names, endpoints, ...)
// is inserted with textContent or as attribute values, never as HTML.
// A module (strict, deferred); chart.js draws the charts, util.js holds the
// DOM helpers and formats both use.

import { drawCharts } from './chart.js';
import {
  DAY_MS, HOUR_MS, byId, el, fmtBaseline, fmtInt, fmtMs, fmtRate, fmtTime,
  fmtTimeSeconds, isoSeconds, setText, show,
} from './util.js';

const MAX_HOURLY_RANGE_MS = 31 * DAY_MS;
const RANGE_DAYS = { '24h': 1, '7d': 7, '30d': 30 };
const RANGE_INTERVAL = { '24h': 'hour', '7d': 'hour', '30d': 'day' };
const STORE_ORG = 'apikey.dashboard.org';
const STORE_KEY = 'apikey.dashboard.key';
// 'self': the key has no usage:read and sees its own usage only.
const STORE_MODE = 'apikey.dashboard.mode';
const SELF_PATH = '/api/keys/self/usage';
const STATUSES = ['active', 'expired', 'revoked'];
const PAGE_SIZE = 50;
const SEARCH_DELAY_MS = 300;
// The API's default order per sort: activity sorts busiest / latest first.
const DEFAULT_ORDER = { created_at: 'asc', name: 'asc', last_used_at: 'desc',
                        requests_today: 'desc', requests_this_month: 'desc',
                        requests_last_hour: 'desc' };

const state = {
  org: '',
  key: '',
  self: false,       // own usage only (no usage:read)
  range: '24h',
  interval: 'hour',
  custom: { from: '', to: '' },
  seq: 0,            // the latest request; older answers are dropped
  shown: null,       // {data, range} of the key on screen, for redraws
  // The key list's sort, filters and page: cursors[i] starts page i
  // ('' = the first), so "Previous" goes back without the API's help.
  list: { sort: 'created_at', order: 'asc', status: '', dormant: '', q: '',
          cursors: [''], page: 0, next: null },
  // Last answer per URL with its ETag: a refresh that changed nothing is a
  // 304 and reuses it.
  cache: new Map(),
};

// --- session (sessionStorage only: never a URL, cookie or localStorage) ----

function loadSession() {
  state.org = sessionStorage.getItem(STORE_ORG) || '';
  state.key = sessionStorage.getItem(STORE_KEY) || '';
  state.self = sessionStorage.getItem(STORE_MODE) === 'self';
}

function saveSession(org, key, self) {
  state.org = org;
  state.key = key;
  state.self = self;
  sessionStorage.setItem(STORE_ORG, org);
  sessionStorage.setItem(STORE_KEY, key);
  sessionStorage.setItem(STORE_MODE, self ? 'self' : 'org');
}

function forgetKey() {
  state.key = '';
  state.self = false;
  state.cache.clear();
  sessionStorage.removeItem(STORE_KEY);
  sessionStorage.removeItem(STORE_MODE);
  byId('admin-key').value = '';
}

// --- the API ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// 401/403 mean the pasted key cannot be used: it is forgotten.
function isKeyRejected(status) {
  return status === 401 || status === 403;
}

function apiErrorMessage(status, body) {
  const detail = body && typeof body.error === 'string' ? body.error : '';
  if (isKeyRejected(status)) {
    return 'Key rejected' + (detail ? ' (' + detail + ')' : '') +
           ': paste an active API key.';
  }
  if (status === 404) return 'No such org or key.';
  if (status === 400) return detail || 'Bad request.';
  if (status === 503) return 'apikeyd is not ready' + (detail ? ' (' + detail + ')' : '') + '; try again.';
  return 'apikeyd answered HTTP ' + status + (detail ? ': ' + detail : '.');
}

async function apiGet(path, params) {
  const query = new URLSearchParams(params || {}).toString();
  const url = path + (query ? '?' + query : '');
  const cached = state.cache.get(url);
  const headers = { 'Authorization': 'Bearer ' + state.key,
                    'Accept': 'application/json' };
  if (cached) headers['If-None-Match'] = cached.etag;
  let res;
  try {
    res = await fetch(url, {
      headers,
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    });
  } catch (e) {
    throw new ApiError(0, 'Cannot reach apikeyd (' + e.message + ').');
  }
  if (res.status === 304 && cached) return cached.body;
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, apiErrorMessage(res.status, body));
  if (!body) throw new ApiError(res.status, 'apikeyd sent an unreadable answer.');
  const etag = res.headers.get('ETag');
  if (etag) state.cache.set(url, { etag, body });
  return body;
}

function orgPath() {
  return '/api/orgs/' + encodeURIComponent(state.org) + '/api-keys';
}

// Runs `load` for the current view; shows the loading note and errors, and
// drops the answer if another load started meanwhile. True if it loaded.
async function runLoad(load) {
  const seq = ++state.seq;
  const isCurrent = () => seq === state.seq;
  showError('');
  show('loading', true);
  try {
    await load(isCurrent);
    return isCurrent();
  } catch (e) {
    if (isCurrent()) handleLoadError(e);
    return false;
  } finally {
    if (isCurrent()) show('loading', false);
  }
}

function handleLoadError(e) {
  showError(e.message || String(e));
  if (isKeyRejected(e.status)) {
    forgetKey();
    showLogin();
  }
}

function showError(message) {
  setText('error', message);
  show('error', message !== '');
}

// --- views -----------------------------------------------------------------

function showOnly(view) {
  show('keys-view', view === 'keys');
  show('key-view', view === 'key');
}

function showLogin() {
  showOnly('');
  show('session', false);
  show('login', true);
  byId('admin-key').focus();
}

function showSessionBar() {
  show('login', false);
  show('session', true);
  setText('session-org', state.org);
  // What the API calls the hint: prefix + 4 characters, not a secret.
  const hint = state.key.match(/^[a-z0-9]{1,8}_.{4}/);
  setText('session-key', (hint ? hint[0] : '') + '…');
}

function statusBadge(status) {
  const known = STATUSES.includes(status) ? status : 'other';
  return el('span', { className: 'badge status-' + known }, status || 'unknown');
}

function badges(key) {
  const span = el('span', { className: 'badges' }, statusBadge(key.status));
  if (key.dormant) {
    span.append(el('span', { className: 'badge dormant',
                             title: 'No use within the dormant window' }, 'dormant'));
  }
  if (key.spike) {
    span.append(el('span', { className: 'badge spike',
                             title: fmtInt(key.requests_last_hour) +
                               ' requests in the last complete hour, ' +
                               fmtBaseline(key.baseline_hourly) }, 'spike'));
  }
  return span;
}

function scopeList(scopes) {
  if (!scopes || scopes.length === 0) return el('span', { className: 'muted' }, 'none');
  const span = el('span', { className: 'scopes' });
  for (const s of scopes) span.append(el('code', {}, s));
  return span;
}

// Distinct client addresses beside the last one: many for one key is the
// sign of a shared or leaked key.
function distinctIps(key) {
  const today = key.distinct_ips_today;
  return fmtInt(today) + (today === 1 ? ' IP' : ' IPs') + ' today, ' +
    fmtInt(key.distinct_ips_7d) + ' in 7 days';
}

function lastUsed(key) {
  if (!key.last_used_at) return el('span', { className: 'muted' }, 'never');
  const span = el('span', { title: key.last_used_at },
                  fmtTime(key.last_used_at),
                  el('br'),
                  el('span', { className: 'muted ip' }, key.last_used_ip || ''));
  if (key.distinct_ips_7d > 0) {
    span.append(' · ', el('span', { className: 'distinct-ips',
                                    title: 'distinct client addresses' }, distinctIps(key)));
  }
  return span;
}

function numCell(className, value) {
  const td = el('td', { className: 'num ' + className }, fmtInt(value));
  td.dataset.value = String(value);
  return td;
}

function keyRow(key) {
  const link = el('a', { href: '#/key/' + encodeURIComponent(key.key_id) }, key.name);
  const tr = el('tr', {},
    el('td', { className: 'c-name' }, link),
    el('td', { className: 'c-hint' }, el('code', {}, key.hint)),
    el('td', { className: 'c-status' }, badges(key)),
    el('td', { className: 'c-scopes' }, scopeList(key.scopes)),
    el('td', { className: 'c-last-used' }, lastUsed(key)),
    numCell('c-today', key.requests_today),
    numCell('c-month', key.requests_this_month),
    numCell('c-last-hour', key.requests_last_hour));
  tr.dataset.keyId = key.key_id;
  return tr;
}

function completeNote(iso) {
  if (!iso) return 'Freshness unknown: this apikeyd has not committed any usage since it started.';
  return 'Data complete until ' + fmtTimeSeconds(iso) + '; later requests may still be on their way.';
}

function renderSortHeaders() {
  for (const button of document.querySelectorAll('#keys-table th button.sort')) {
    const th = button.parentElement;
    if (button.dataset.sort === state.list.sort) {
      th.setAttribute('aria-sort', state.list.order === 'asc' ? 'ascending' : 'descending');
    } else {
      th.removeAttribute('aria-sort');
    }
  }
}

function renderKeyList(data) {
  const list = state.list;
  const tbody = byId('keys-table').tBodies[0];
  tbody.replaceChildren(...data.keys.map(keyRow));
  show('keys-empty', data.keys.length === 0);
  list.next = data.next_cursor || null;
  byId('keys-prev').disabled = list.page === 0;
  byId('keys-next').disabled = !list.next;
  setText('keys-page', 'Page ' + (list.page + 1));
  renderSortHeaders();
  setText('keys-complete', completeNote(data.complete_until));
  byId('keys-complete').dataset.value = data.complete_until || '';
  showOnly('keys');
}

function dormantDays() {
  return byId('dormant-days').value || '30';
}

function listParams() {
  const list = state.list;
  const params = { dormant_days: dormantDays(), limit: String(PAGE_SIZE),
                   sort: list.sort, order: list.order };
  if (list.status) params.status = list.status;
  // One select: dormant=true|false, or spike=true.
  if (list.dormant === 'spike') params.spike = 'true';
  else if (list.dormant) params.dormant = list.dormant;
  if (list.q) params.q = list.q;
  const cursor = list.cursors[list.page];
  if (cursor) params.cursor = cursor;
  return params;
}

async function loadKeyList() {
  return runLoad(async (isCurrent) => {
    const data = await apiGet(orgPath() + '/usage', listParams());
    if (isCurrent()) renderKeyList(data);
  });
}

// Any change of sort or filter starts again at the first page.
function reloadFromFirstPage() {
  state.list.cursors = [''];
  state.list.page = 0;
  loadKeyList();
}

function onSortClick(event) {
  const button = event.target.closest('button.sort');
  if (!button) return;
  const list = state.list;
  const sort = button.dataset.sort;
  if (list.sort === sort) {
    list.order = list.order === 'asc' ? 'desc' : 'asc';
  } else {
    list.sort = sort;
    list.order = DEFAULT_ORDER[sort];
  }
  reloadFromFirstPage();
}

function onFilterChange() {
  state.list.status = byId('status-filter').value;
  state.list.dormant = byId('dormant-filter').value;
  reloadFromFirstPage();
}

let searchTimer = null;
function onSearchInput() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    const q = byId('key-search').value.trim();
    if (q === state.list.q) return;
    state.list.q = q;
    reloadFromFirstPage();
  }, SEARCH_DELAY_MS);
}

function onNextPage() {
  const list = state.list;
  if (!list.next) return;
  list.cursors[list.page + 1] = list.next;
  list.page++;
  loadKeyList();
}

function onPrevPage() {
  if (state.list.page === 0) return;
  state.list.page--;
  loadKeyList();
}

// --- one key ---------------------------------------------------------------

// {from, to} (Dates) of the chosen range, on the interval's UTC grid.
function currentRange() {
  if (state.range === 'custom') {
    const from = new Date(state.custom.from + 'T00:00:00Z');
    const to = new Date(new Date(state.custom.to + 'T00:00:00Z').getTime() + DAY_MS);
    return { from, to };
  }
  const step = state.interval === 'hour' ? HOUR_MS : DAY_MS;
  const to = Math.ceil((Date.now() + 1) / step) * step;
  return { from: new Date(to - RANGE_DAYS[state.range] * DAY_MS), to: new Date(to) };
}

function rangeError(range) {
  if (isNaN(range.from) || isNaN(range.to)) return 'Pick both days of the custom range.';
  if (range.from >= range.to) return 'The range must end after it starts.';
  return '';
}

// Hourly series are limited to 31 days: switch to daily beyond that.
function syncIntervalPicker() {
  const range = currentRange();
  const tooLong = !rangeError(range) && range.to - range.from > MAX_HOURLY_RANGE_MS;
  const hour = byId('interval').querySelector('option[value="hour"]');
  hour.disabled = tooLong;
  if (tooLong && state.interval === 'hour') state.interval = 'day';
  byId('interval').value = state.interval;
}

function syncRangePicker() {
  for (const b of byId('range-picker').querySelectorAll('button')) {
    b.setAttribute('aria-pressed', String(b.dataset.range === state.range));
  }
  show('custom-range', state.range === 'custom');
}

function renderKeyHead(key) {
  setText('key-name', key.name);
  setText('key-hint', key.hint);
  byId('key-badges').replaceChildren(badges(key), scopeList(key.scopes));
  const meta = ['created ' + fmtTime(key.created_at)];
  if (key.expires_at) meta.push('expires ' + fmtTime(key.expires_at));
  meta.push(key.last_used_at
    ? 'last used ' + fmtTime(key.last_used_at) + ' from ' + (key.last_used_ip || '?') +
      ' (' + distinctIps(key) + ')'
    : 'never used');
  meta.push(fmtInt(key.request_count) + ' requests in total');
  setText('key-meta', meta.join(' · '));
}

function setCard(id, text, value) {
  setText(id, text);
  byId(id).dataset.value = value == null ? '' : String(value);
}

function renderCards(data) {
  const inRange = data.series.reduce((sum, b) => sum + b.requests, 0);
  setCard('requests-today', fmtInt(data.requests_today), data.requests_today);
  setCard('requests-month', fmtInt(data.requests_this_month), data.requests_this_month);
  setCard('requests-range', fmtInt(inRange), inRange);
  setCard('rate-4xx', fmtRate(data.error_rate['4xx']), data.error_rate['4xx']);
  setCard('rate-5xx', fmtRate(data.error_rate['5xx']), data.error_rate['5xx']);
  setCard('avg-ms', fmtMs(data.avg_ms), data.avg_ms);
  setCard('p95-ms', fmtMs(data.p95_ms), data.p95_ms);
}

function topRow(row) {
  return el('tr', {},
    el('td', { className: 'c-endpoint' }, el('code', {}, row.endpoint)),
    el('td', { className: 'c-method' }, row.method),
    numCell('c-requests', row.requests),
    numCell('c-4xx', row.errors_4xx),
    numCell('c-5xx', row.errors_5xx),
    el('td', { className: 'num c-avg' }, fmtMs(row.avg_ms)));
}

function renderTopEndpoints(rows) {
  byId('top-table').tBodies[0].replaceChildren(...rows.map(topRow));
  show('top-empty', rows.length === 0);
}

function renderKeyDetail(data, range) {
  renderKeyHead(data.key);
  show('back', !state.self);
  show('self-note', state.self);
  renderCards(data);
  setText('trend-unit', state.interval);
  renderTopEndpoints(data.top_endpoints);
  setText('key-complete', completeNote(data.complete_until));
  byId('key-complete').dataset.value = data.complete_until || '';
  showOnly('key');              // visible first: the charts measure themselves
  state.shown = { data, range };
  redrawCharts();
}

async function loadKey(keyId) {
  syncRangePicker();
  syncIntervalPicker();
  const range = currentRange();
  const problem = rangeError(range);
  if (problem) {
    showError(problem);
    return;
  }
  await runLoad(async (isCurrent) => {
    const path = state.self ? SELF_PATH
                            : orgPath() + '/' + encodeURIComponent(keyId) + '/usage';
    const data = await apiGet(path, {
      from: isoSeconds(range.from), to: isoSeconds(range.to),
      interval: state.interval, top: '10', dormant_days: dormantDays(),
    });
    if (isCurrent()) renderKeyDetail(data, range);
  });
}

// The charts of the key on screen (again after a resize).
function redrawCharts() {
  if (!state.shown) return;
  drawCharts(byId('trend-chart'), byId('latency-chart'), state.shown.data,
             Object.assign({ interval: state.interval }, state.shown.range));
}

let resizeTimer = 0;
function onResize() {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (!byId('key-view').hidden) redrawCharts();
  }, 150);
}

// --- routing and events ----------------------------------------------------

// "#/" is the key list, "#/key/<key_id>" one key.
function route() {
  if (!state.org || !state.key) {
    showLogin();
    return;
  }
  showSessionBar();
  const m = location.hash.match(/^#\/key\/([^/?]+)$/);
  if (state.self) loadKey(null);
  else if (m) loadKey(decodeURIComponent(m[1]));
  else loadKeyList();
}

function currentKeyId() {
  const m = location.hash.match(/^#\/key\/([^/?]+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

// The key's own view (no scope needed) names its org; then the org's key
// list, or, for a key without usage:read (403), the key's own usage. The
// key is kept (sessionStorage) only once one of them loaded with it; until
// then the form stays, with the API's error under it.
async function onSignIn(event) {
  event.preventDefault();
  const key = byId('admin-key').value.trim();
  if (!key) {
    showError('Enter an API key.');
    return;
  }
  state.key = key;
  state.self = false;
  state.list.cursors = [''];
  state.list.page = 0;
  let org = '';
  const found = await runLoad(async (isCurrent) => {
    const self = await apiGet(SELF_PATH, {});
    if (isCurrent()) org = self.key.org_id;
  });
  if (!found || !org) {
    state.key = '';             // not kept: the form still holds it for a retry
    if (found) showError('apikeyd did not name the key\'s org.');
    return;
  }
  state.org = org;
  let self = false;
  const listed = await runLoad(async (isCurrent) => {
    try {
      const data = await apiGet(orgPath() + '/usage', listParams());
      if (isCurrent()) renderKeyList(data);
    } catch (e) {
      if (e.status !== 403) throw e;
      self = true;              // a valid key without usage:read
    }
  });
  if (!listed) {
    state.key = '';
    return;
  }
  saveSession(org, key, self);
  byId('admin-key').value = '';
  showSessionBar();
  if (self || currentKeyId()) route();
}

function onForget() {
  forgetKey();
  state.seq++;        // answers still on their way are dropped
  showError('');
  show('loading', false);
  showLogin();
}

function onRangeClick(event) {
  const range = event.target.closest('button[data-range]');
  if (!range) return;
  state.range = range.dataset.range;
  if (state.range === 'custom') {
    prefillCustomRange();
    syncRangePicker();
    return;                     // loads on "Apply"
  }
  state.interval = RANGE_INTERVAL[state.range];
  loadKey(currentKeyId());
}

// The custom range starts as the last 7 days, if nothing was picked yet.
function prefillCustomRange() {
  if (state.custom.from && state.custom.to) return;
  const today = new Date().toISOString().slice(0, 10);
  state.custom.to = today;
  state.custom.from = new Date(Date.parse(today) - 6 * DAY_MS).toISOString().slice(0, 10);
  byId('range-from').value = state.custom.from;
  byId('range-to').value = state.custom.to;
}

function onApplyCustom() {
  state.custom.from = byId('range-from').value;
  state.custom.to = byId('range-to').value;
  loadKey(currentKeyId());
}

function onIntervalChange() {
  state.interval = byId('interval').value;
  loadKey(currentKeyId());
}

function init() {
  loadSession();
  byId('login').addEventListener('submit', onSignIn);
  byId('forget-key').addEventListener('click', onForget);
  byId('refresh-keys').addEventListener('click', loadKeyList);
  byId('dormant-days').addEventListener('change', reloadFromFirstPage);
  byId('keys-table').tHead.addEventListener('click', onSortClick);
  byId('status-filter').addEventListener('change', onFilterChange);
  byId('dormant-filter').addEventListener('change', onFilterChange);
  byId('key-search').addEventListener('input', onSearchInput);
  byId('keys-next').addEventListener('click', onNextPage);
  byId('keys-prev').addEventListener('click', onPrevPage);
  byId('refresh-key').addEventListener('click', () => loadKey(currentKeyId()));
  byId('range-picker').addEventListener('click', onRangeClick);
  byId('apply-range').addEventListener('click', onApplyCustom);
  byId('interval').addEventListener('change', onIntervalChange);
  window.addEventListener('hashchange', route);
  window.addEventListener('resize', onResize);
  route();
}

document.addEventListener('DOMContentLoaded', init);
