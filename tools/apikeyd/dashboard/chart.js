// apikeyd's usage dashboard: the trend and latency charts of a key's page,
// hand-written SVG (docs/dashboard.md).
//
// Safety rule, as in app.js: text from the API is inserted with
// textContent or as attribute values, never as HTML.

import { DAY_MS, HOUR_MS, fmtBaseline, fmtBucket, fmtInt, fmtMs, svgEl } from './util.js';

// --- charts (hand-written SVG) ---------------------------------------------
// Drawn in CSS pixels (the viewBox is the SVG's rendered size), so text is
// never stretched; redrawn when the window is resized.

function stepOf(interval) {
  return interval === 'day' ? DAY_MS : HOUR_MS;
}

const MARGIN = { left: 56, right: 12, top: 10, bottom: 26 };

function bucketsOf(series) {
  return series.map((b) => Object.assign({}, b, { ms: Date.parse(b.t) }));
}

// 0 .. a round number >= max, split into 4 ticks.
function niceMax(max) {
  if (!(max > 0)) return 4;
  const step = Math.pow(10, Math.floor(Math.log10(max / 4)));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (step * m * 4 >= max) return step * m * 4;
  }
  return max;
}

// Empties `svg` and sizes its viewBox to its rendered size.
function resetChart(svg) {
  svg.replaceChildren();
  const box = svg.getBoundingClientRect();
  const size = { width: Math.max(200, Math.round(box.width) || 800),
                 height: Math.max(120, Math.round(box.height) || 220) };
  svg.setAttribute('viewBox', '0 0 ' + size.width + ' ' + size.height);
  return size;
}

// Scales from bucket time / value to SVG coordinates, and the bar width.
function chartScales(size, buckets, range, yMax) {
  const step = stepOf(range.interval);
  const last = buckets.length ? buckets[buckets.length - 1].ms + step : 0;
  const t0 = Math.min(range.from.getTime(), buckets.length ? buckets[0].ms : Infinity);
  const t1 = Math.max(range.to.getTime(), last);
  const plotW = size.width - MARGIN.left - MARGIN.right;
  const plotH = size.height - MARGIN.top - MARGIN.bottom;
  return {
    size,
    interval: range.interval,
    step,
    t0,
    t1,
    x: (ms) => MARGIN.left + (ms - t0) / (t1 - t0) * plotW,
    y: (v) => MARGIN.top + plotH - v / yMax * plotH,
    barWidth: Math.max(1, step / (t1 - t0) * plotW * 0.8),
  };
}

function drawGrid(svg, scales, yMax, fmtTick) {
  const g = svgEl('g', { class: 'grid' });
  for (let i = 0; i <= 4; i++) {
    const y = scales.y(yMax * i / 4);
    g.append(svgEl('line', { x1: MARGIN.left, x2: scales.size.width - MARGIN.right, y1: y, y2: y }),
             svgEl('text', { x: MARGIN.left - 6, y: y + 4, class: 'y-label' }, fmtTick(yMax * i / 4)));
  }
  svg.append(g);
}

// Time labels on bucket boundaries, about one per 110 px.
function drawTimeAxis(svg, scales) {
  const g = svgEl('g', { class: 'axis' });
  const count = Math.round((scales.t1 - scales.t0) / scales.step);
  const fit = Math.max(2, Math.floor((scales.size.width - MARGIN.left) / 110));
  const every = Math.max(1, Math.ceil(count / fit));
  const long = scales.interval === 'hour' && scales.t1 - scales.t0 > DAY_MS;
  for (let i = 0; i < count; i += every) {
    const ms = scales.t0 + i * scales.step;
    g.append(svgEl('text', { x: scales.x(ms + scales.step / 2), y: scales.size.height - 8,
                             class: 'x-label' }, fmtBucket(ms, scales.interval, long)));
  }
  svg.append(g);
}

function bucketTitle(b, interval) {
  let title = fmtBucket(b.ms, interval, true) + ' UTC: ' + fmtInt(b.requests) +
    ' requests, ' + fmtInt(b.errors_4xx) + ' 4xx, ' + fmtInt(b.errors_5xx) + ' 5xx, avg ' +
    fmtMs(b.avg_ms) + ', p95 ' + fmtMs(b.p95_ms);
  for (const s of b.spikes) {
    title += '; spike at ' + fmtBucket(Date.parse(s.t), 'hour', true) + ': ' +
      fmtInt(s.requests) + ' requests, ' + fmtBaseline(s.baseline_hourly);
  }
  return title;
}

// The spike hours of each bucket (a day bucket may hold several).
function withSpikes(buckets, spikes, stepMs) {
  for (const b of buckets) {
    b.spikes = (spikes || []).filter((s) => {
      const t = Date.parse(s.t);
      return t >= b.ms && t < b.ms + stepMs;
    });
  }
  return buckets;
}

// One <g class="bucket"> per series entry: the requests bar with its 4xx
// and 5xx parts stacked over its foot.
function drawBar(scales, b) {
  const slot = scales.x(b.ms + scales.step) - scales.x(b.ms);
  const x = scales.x(b.ms) + (slot - scales.barWidth) / 2;
  const bar = (cls, from, count) => svgEl('rect', {
    class: cls, x: x.toFixed(2), width: scales.barWidth.toFixed(2),
    y: scales.y(from + count).toFixed(2),
    height: Math.max(0, scales.y(from) - scales.y(from + count)).toFixed(2),
  });
  const g = svgEl('g', { class: 'bucket' },
    svgEl('title', {}, bucketTitle(b, scales.interval)),
    bar('req', 0, b.requests),
    bar('e4', 0, b.errors_4xx),
    bar('e5', b.errors_4xx, b.errors_5xx));
  g.dataset.t = b.t;
  g.dataset.requests = String(b.requests);
  if (b.spikes.length) {
    // A dot over the bar: the hour (or a day holding one) met the rule.
    g.classList.add('spike');
    g.append(svgEl('circle', {
      class: 'spike-mark', r: 4,
      cx: (x + scales.barWidth / 2).toFixed(2),
      cy: (scales.y(b.requests) - 7).toFixed(2),
    }));
  }
  return g;
}

function drawRequestChart(svg, buckets, range) {
  const size = resetChart(svg);
  const yMax = niceMax(Math.max(0, ...buckets.map((b) => b.requests)));
  const scales = chartScales(size, buckets, range, yMax);
  drawGrid(svg, scales, yMax, (v) => fmtInt(Math.round(v)));
  drawTimeAxis(svg, scales);
  const bars = svgEl('g', { class: 'bars' });
  for (const b of buckets) bars.append(drawBar(scales, b));
  svg.append(bars);
  svg.setAttribute('aria-label', buckets.length + ' buckets, ' +
    fmtInt(buckets.reduce((sum, b) => sum + b.requests, 0)) + ' requests');
}

// A polyline per run of buckets that have a value (null: no requests); a
// dot for a run of one.
function latencyLine(scales, buckets, field, cls) {
  const g = svgEl('g', { class: 'line ' + cls });
  let run = [];
  const flush = () => {
    if (run.length === 1) {
      g.append(svgEl('circle', { cx: run[0][0], cy: run[0][1], r: 2.5 }));
    } else if (run.length > 1) {
      g.append(svgEl('polyline', { points: run.map((p) => p.join(',')).join(' ') }));
    }
    run = [];
  };
  for (const b of buckets) {
    if (b[field] == null) {
      flush();
    } else {
      run.push([scales.x(b.ms + scales.step / 2).toFixed(1), scales.y(b[field]).toFixed(1)]);
    }
  }
  flush();
  return g;
}

function drawLatencyChart(svg, buckets, range) {
  const size = resetChart(svg);
  const values = buckets.flatMap((b) => [b.avg_ms, b.p95_ms]).filter((v) => v != null);
  const yMax = niceMax(Math.max(0, ...values));
  const scales = chartScales(size, buckets, range, yMax);
  drawGrid(svg, scales, yMax, (v) => (yMax < 4 ? v.toFixed(1) : fmtInt(Math.round(v))));
  drawTimeAxis(svg, scales);
  svg.append(latencyLine(scales, buckets, 'avg_ms', 'avg'),
             latencyLine(scales, buckets, 'p95_ms', 'p95'));
}

// Both charts of a key's page: `data` is the per-key view's answer, `range`
// {from, to} (Dates) and its `interval` ('hour' or 'day').
export function drawCharts(trendSvg, latencySvg, data, range) {
  const buckets = withSpikes(bucketsOf(data.series), data.spikes, stepOf(range.interval));
  drawRequestChart(trendSvg, buckets, range);
  drawLatencyChart(latencySvg, buckets, range);
}
