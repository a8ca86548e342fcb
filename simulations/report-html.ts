import { describeFault } from './fault-schedule.js';
import type { Percentiles, SimulationReport, TimelineRow } from './report.js';

// A self-contained page: inline CSS and SVG, no script, nothing fetched.

const stateColors: Record<string, string> = {
  bootstrap: '#9aa5b1',
  allocation: '#c3a6e0',
  prefill: '#f2b56b',
  transfer: '#e8d36a',
  polling: '#8fd19e',
  cleanup: '#6cc3d5',
  decode: '#4a90d9',
};
const outcomeColors: Record<string, string> = { done: '#2e7d32', failed: '#c62828', cancelled: '#757575', none: '#000000' };

function escape(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function fmt(value: number, digits = 1): string {
  return Number.isFinite(value) ? value.toFixed(digits) : String(value);
}

function table(headers: string[], rows: Array<Array<string | number>>): string {
  const head = headers.map((h) => `<th>${escape(h)}</th>`).join('');
  const body = rows.map((row) => `<tr>${row.map((cell) => `<td>${typeof cell === 'number' ? cell : escape(cell)}</td>`).join('')}</tr>`).join('');
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function counts(record: Record<string, number>): string {
  const entries = Object.entries(record).sort((a, b) => b[1] - a[1]);
  return entries.length === 0 ? '<p>none</p>' : table(['', 'count'], entries);
}

/** An empirical CDF on a logarithmic time axis. */
function cdfPlot(title: string, values: number[], stats: Percentiles): string {
  const width = 460;
  const height = 240;
  const left = 48;
  const bottom = 32;
  const plotW = width - left - 12;
  const plotH = height - bottom - 24;
  if (values.length === 0) return `<figure><figcaption>${escape(title)}</figcaption><p>no samples</p></figure>`;
  const sorted = Float64Array.from(values).sort();
  const floor = Math.max(1e-3, sorted.find((v) => v > 0) ?? 1e-3);
  const lo = Math.floor(Math.log10(floor));
  const hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(floor, sorted.at(-1)!))));
  const x = (v: number): number => left + ((Math.log10(Math.max(v, floor)) - lo) / (hi - lo)) * plotW;
  const y = (q: number): number => 24 + (1 - q) * plotH;
  const step = Math.max(1, Math.floor(sorted.length / 400));
  let path = `M${x(sorted[0]!).toFixed(1)},${y(0).toFixed(1)}`;
  for (let i = 0; i < sorted.length; i += step) path += ` L${x(sorted[i]!).toFixed(1)},${y((i + 1) / sorted.length).toFixed(1)}`;
  path += ` L${x(sorted.at(-1)!).toFixed(1)},${y(1).toFixed(1)}`;
  const ticks: string[] = [];
  for (let e = lo; e <= hi; e++) {
    const tx = x(10 ** e);
    ticks.push(`<line x1="${tx}" y1="24" x2="${tx}" y2="${24 + plotH}" class="grid"/><text x="${tx}" y="${height - 12}" text-anchor="middle">${10 ** e >= 1 ? 10 ** e : (10 ** e).toFixed(-e)}</text>`);
  }
  for (const q of [0, 0.5, 0.9, 0.99, 1]) {
    ticks.push(`<line x1="${left}" y1="${y(q)}" x2="${left + plotW}" y2="${y(q)}" class="grid"/><text x="${left - 4}" y="${y(q) + 4}" text-anchor="end">${q}</text>`);
  }
  return `<figure><figcaption>${escape(title)} — p50 ${fmt(stats.p50)} ms, p99 ${fmt(stats.p99)} ms, n=${stats.count}</figcaption>
<svg viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="${escape(title)}">
${ticks.join('\n')}
<path d="${path}" fill="none" stroke="#1565c0" stroke-width="2"/>
<text x="${left + plotW / 2}" y="${height - 1}" text-anchor="middle">virtual ms (log scale)</text>
</svg></figure>`;
}

/** Each sampled request as a row of coloured state segments, with fault times marked. */
function timelinePlot(report: SimulationReport): string {
  const rows = report.timeline;
  if (rows.length === 0) return '<p>no requests</p>';
  const rowH = 6;
  const left = 90;
  const width = 1100;
  const plotW = width - left - 10;
  const endMs = Math.max(1, ...rows.map((row) => row.endMs ?? row.arrivalMs), report.healAtMs);
  const height = rows.length * rowH + 40;
  const x = (ms: number): number => left + (ms / endMs) * plotW;
  const parts: string[] = [];
  for (const fault of report.faultSchedule) {
    if (fault.kind === 'partition') {
      parts.push(`<rect x="${x(fault.atMs)}" y="0" width="${Math.max(1, x(Math.min(endMs, fault.atMs + fault.durationMs)) - x(fault.atMs))}" height="${height - 30}" fill="#ffb74d" opacity="0.18"><title>${escape(describeFault(fault))}</title></rect>`);
    } else {
      parts.push(`<line x1="${x(fault.atMs)}" y1="0" x2="${x(fault.atMs)}" y2="${height - 30}" stroke="#c62828" stroke-dasharray="3,2"><title>${escape(describeFault(fault))}</title></line>`);
    }
  }
  parts.push(`<line x1="${x(report.healAtMs)}" y1="0" x2="${x(report.healAtMs)}" y2="${height - 30}" stroke="#2e7d32" stroke-width="2"><title>healed at ${report.healAtMs} ms</title></line>`);
  rows.forEach((row: TimelineRow, i) => {
    const top = i * rowH;
    const end = row.endMs ?? endMs;
    if (i % Math.max(1, Math.ceil(rows.length / 16)) === 0) parts.push(`<text x="${left - 4}" y="${top + rowH}" text-anchor="end" class="small">${escape(row.requestId)}</text>`);
    parts.push(`<rect x="${x(row.arrivalMs)}" y="${top + 1}" width="${Math.max(0.5, x(row.states[0]?.[1] ?? end) - x(row.arrivalMs))}" height="${rowH - 2}" fill="#e0e0e0"/>`);
    row.states.forEach(([state, atMs], j) => {
      const until = row.states[j + 1]?.[1] ?? end;
      const color = stateColors[state];
      if (!color) return;
      parts.push(`<rect x="${x(atMs)}" y="${top + 1}" width="${Math.max(0.5, x(until) - x(atMs))}" height="${rowH - 2}" fill="${color}"><title>${escape(`${row.requestId} ${state} from ${atMs} ms`)}</title></rect>`);
    });
    const status = row.outcome.split(' ')[0] ?? 'none';
    parts.push(`<circle cx="${x(end)}" cy="${top + rowH / 2}" r="2.2" fill="${outcomeColors[status] ?? '#000'}"><title>${escape(`${row.requestId}: ${row.outcome} at ${row.endMs ?? '?'} ms`)}</title></circle>`);
  });
  const ticks: string[] = [];
  const tickMs = niceStep(endMs / 10);
  for (let ms = 0; ms <= endMs; ms += tickMs) ticks.push(`<text x="${x(ms)}" y="${height - 14}" text-anchor="middle" class="small">${fmt(ms / 1000, tickMs < 1000 ? 2 : 0)} s</text>`);
  const legend = [...Object.entries(stateColors).map(([state, color]) => `<span class="key" style="background:${color}"></span>${state}`), ...Object.entries(outcomeColors).map(([outcome, color]) => `<span class="key round" style="background:${color}"></span>${outcome}`)].join(' ');
  return `<p class="legend">${legend} <span class="key" style="background:#ffb74d;opacity:.4"></span>partition <span class="key" style="background:#c62828"></span>crash <span class="key" style="background:#2e7d32"></span>heal</p>
<svg viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="request timeline">${parts.join('')}${ticks.join('')}</svg>`;
}

function niceStep(raw: number): number {
  const power = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-3)));
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

/** The report as one HTML page with inline SVG plots. */
export function renderHtml(report: SimulationReport): string {
  const verdict = report.passed ? '<span class="pass">PASS</span>' : '<span class="fail">FAIL</span>';
  const speed = report.speed
    ? `<tr><th>speed</th><td>${fmt(report.speed.wallMs / 1000, 2)} s wall · ${fmt(report.speed.requestsPerSecond, 0)} simulated requests/s · ${fmt(report.speed.eventsPerSecond, 0)} events/s</td></tr>`
    : '';
  const lat = (name: string, q: Percentiles): Array<string | number> => [name, q.count, fmt(q.mean), fmt(q.p50), fmt(q.p90), fmt(q.p99), fmt(q.max)];
  const violations = report.violations
    .map((v) => `<h3>${escape(v.invariant)} at t=${fmt(v.atMs, 3)} ms</h3><p>${escape(v.message)}</p>${v.histories.map((h) => `<pre>${escape(h.join('\n'))}</pre>`).join('')}`)
    .join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tandem simulate — seed ${report.seed}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#212121;max-width:1160px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}.pass{color:#2e7d32;font-weight:700}.fail{color:#c62828;font-weight:700}
figure{display:inline-block;margin:0 16px 16px 0}figcaption{font-weight:600;margin-bottom:4px}
svg text{font-size:11px;fill:#424242}svg .small{font-size:9px}svg .grid{stroke:#eee}
pre{background:#fafafa;border:1px solid #eee;padding:8px;overflow:auto;font-size:12px}
.key{display:inline-block;width:12px;height:10px;margin:0 3px 0 10px;vertical-align:middle}.key.round{border-radius:50%}
.legend{font-size:12px}code{background:#f5f5f5;padding:1px 4px}
</style></head><body>
<h1>tandem simulate: ${escape(report.scenario.name)} — ${verdict}</h1>
<table>
<tr><th>seed</th><td>${report.seed}</td></tr>
<tr><th>trace hash</th><td><code>${report.traceHash}</code></td></tr>
<tr><th>requests</th><td>${report.requests.workload} workload + ${report.requests.probes} probes</td></tr>
<tr><th>virtual time</th><td>${fmt(report.virtualMs / 1000, 2)} s; faults healed at ${fmt(report.healAtMs / 1000, 2)} s; liveness bound ${fmt(report.livenessBoundMs / 1000, 0)} s</td></tr>
<tr><th>events</th><td>${report.events}</td></tr>
${speed}
<tr><th>cluster</th><td>${report.scenario.cluster.prefillWorkers} prefill, ${report.scenario.cluster.decodeWorkers} decode, ${report.scenario.cluster.pageCount} pages × ${report.scenario.cluster.pageBytes} B</td></tr>
${report.stoppedBy ? `<tr><th>stopped by</th><td>${escape(report.stoppedBy)}</td></tr>` : ''}
</table>
<h2>Invariants</h2>
${table(['status', 'invariant', 'checks', 'violations'], report.invariants.map((inv) => [inv.status, inv.title, inv.checks, inv.violations]))}
${violations ? `<h2>Violations</h2>${violations}` : ''}
<h2>Latency</h2>
${table(['', 'n', 'mean', 'p50', 'p90', 'p99', 'max'], [lat('TTFT (ms)', report.latency.ttftMs), lat('ITL (ms)', report.latency.itlMs), lat('E2E (ms)', report.latency.e2eMs)])}
<p>Goodput at TTFT ≤ ${report.goodput.slo.ttftMs} ms and mean ITL ≤ ${report.goodput.slo.itlMs} ms: <b>${report.goodput.requests}</b> requests (${fmt(report.goodput.fractionOfWorkload * 100)}% of the workload), ${report.goodput.perSecond} per virtual second.</p>
${cdfPlot('TTFT CDF', report.samples.ttftMs, report.latency.ttftMs)}
${cdfPlot('Inter-token latency CDF', report.samples.itlMs, report.latency.itlMs)}
<h2>Timeline of request states</h2>
${timelinePlot(report)}
<h2>Outcomes</h2>
<figure><figcaption>by status</figcaption>${counts(report.outcomes.byStatus)}</figure>
<figure><figcaption>by error code</figcaption>${counts(report.outcomes.byCode)}</figure>
<figure><figcaption>request machines</figcaption>${counts(report.machines.request)}</figure>
<figure><figcaption>room machines</figcaption>${counts(report.machines.room)}</figure>
<h2>Faults</h2>
<figure><figcaption>injected</figcaption>${counts(report.faults)}</figure>
<figure><figcaption>observed</figcaption>${counts(report.observed)}</figure>
<figure><figcaption>fabric</figcaption>${counts(report.fabric as unknown as Record<string, number>)}</figure>
${report.faultSchedule.length ? `<pre>${escape(report.faultSchedule.map(describeFault).join('\n'))}</pre>` : ''}
<h2>Scenario</h2>
<pre>${escape(JSON.stringify(report.scenario, null, 2))}</pre>
</body></html>
`;
}
