// apikeyd's usage dashboard: DOM helpers and the formats of numbers, times
// and buckets, shared by app.js and chart.js (docs/dashboard.md).
//
// Safety rule, as in app.js: text is inserted with textContent or as
// attribute values, never as HTML.

// --- DOM helpers -----------------------------------------------------------

export function byId(id) {
  return document.getElementById(id);
}

// el('td', {className: 'num', title: 'x'}, 'text', childNode, ...)
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

export function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    node.setAttribute(name, String(value));
  }
  node.append(...children);
  return node;
}

export function show(id, visible) {
  byId(id).hidden = !visible;
}

export function setText(id, text) {
  byId(id).textContent = text;
}

export const HOUR_MS = 3600 * 1000;
export const DAY_MS = 24 * HOUR_MS;

// --- formatting ------------------------------------------------------------

const intFormat = new Intl.NumberFormat('en-US');

export function fmtInt(n) {
  return n == null ? '—' : intFormat.format(n);
}

// A rate in [0, 1] as a percentage.
export function fmtRate(rate) {
  if (rate == null) return '—';
  const pct = rate * 100;
  if (pct > 0 && pct < 0.1) return '<0.1%';
  return pct.toFixed(1) + '%';
}

export function fmtMs(ms) {
  if (ms == null) return '—';
  if (ms >= 1000) return (ms / 1000).toFixed(2) + ' s';
  return ms.toFixed(1) + ' ms';
}

// "2024-05-01 13:05 UTC"
export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (isNaN(d)) return iso;
  return d.toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
}

// "2024-05-01 13:05:09 UTC"
export function fmtTimeSeconds(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toISOString().slice(0, 19).replace('T', ' ') + ' UTC';
}

// Axis and tooltip label of a bucket.
export function fmtBucket(ms, interval, long) {
  const iso = new Date(ms).toISOString();
  if (interval === 'day') return iso.slice(5, 10);
  return long ? iso.slice(5, 16).replace('T', ' ') : iso.slice(11, 16);
}

export function isoSeconds(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function fmtBaseline(b) {
  return b == null ? 'no baseline yet' : 'baseline ' + (Math.round(b * 10) / 10) + '/h';
}
