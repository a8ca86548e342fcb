// The tandem UI: cluster overview, a virtualised request list and one request's machine,
// path and timeline. Live mode follows /ui/api/events; trace mode adds a time slider.
import { renderDiagram } from './diagram.js';

const ROW_H = 24;
const OVERSCAN = 10;
const $ = (id) => document.getElementById(id);
const colors = ['#2563eb', '#7c3aed', '#0891b2', '#ca8a04', '#db2777', '#059669', '#ea580c', '#4f46e5', '#0d9488', '#9333ea'];

const view = { info: null, machines: null, at: null, selected: null, dirty: true, total: 0, loading: false, pending: false };

async function api(path) {
  const response = await fetch(path, { cache: 'no-store' });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function atParam() {
  return view.at === null ? '' : `&at=${view.at}`;
}

function esc(text) {
  return String(text ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function ms(value) {
  if (value === null || value === undefined) return '–';
  if (value < 1) return `${value.toFixed(2)} ms`;
  if (value < 1000) return `${value.toFixed(value < 10 ? 1 : 0)} ms`;
  return `${(value / 1000).toFixed(2)} s`;
}

function nowMs() {
  if (view.at !== null) return view.at;
  return view.info ? view.info.now_ms + (performance.now() - view.infoAt) : 0;
}

// ---- cluster ---------------------------------------------------------------------------------

async function refreshCluster() {
  if (view.info?.mode !== 'live') {
    const range = view.info?.time_range;
    $('cluster').innerHTML = `<p class="muted">Recorded trace: ${view.info?.requests ?? 0} requests, ${view.info?.ring.recorded ?? 0} transitions${range ? `, ${ms(range.end_ms - range.start_ms)}` : ''}.</p>`;
    return;
  }
  let cluster;
  try {
    cluster = await api('/ui/api/cluster');
  } catch (error) {
    $('cluster').innerHTML = `<p class="err">${esc(error.message)}</p>`;
    return;
  }
  const rows = (cluster.workers ?? []).map((w) => {
    const s = w.stats ?? {};
    const health = w.error ? `<span class="err" title="${esc(w.error.message)}">${esc(w.error.code)}</span>` : '<span class="ok">ok</span>';
    let load = '';
    let pool = '';
    if (w.role === 'decode' && s.pool) {
      const used = s.pool.capacity - s.pool.free;
      load = `${s.activeRequests ?? 0} requests`;
      pool = `<span class="bar" title="${used}/${s.pool.capacity} pages (${s.pool.quarantined} quarantined)"><i style="width:${(100 * used) / Math.max(1, s.pool.capacity)}%"></i></span> ${used}/${s.pool.capacity}`;
    } else if (w.role === 'prefill') {
      load = `${s.rooms ?? 0} rooms`;
    }
    return `<tr data-role="${esc(w.role)}"><td>${esc(w.role)}</td><td>${esc(w.instance_id)}</td><td>${health}</td><td>${load}</td><td>${pool}</td></tr>`;
  });
  $('cluster').innerHTML = `<p>${cluster.in_flight ?? 0} requests in flight at the frontend, model <b>${esc(cluster.model ?? '')}</b></p>
    <table><thead><tr><th>role</th><th>worker</th><th>health</th><th>load</th><th>KV pages</th></tr></thead><tbody>${rows.join('') || '<tr><td colspan="5" class="muted">no workers registered</td></tr>'}</tbody></table>`;
}

// ---- request list (virtualised: only the visible rows are fetched and drawn) ------------------

async function refreshList() {
  if (view.loading) {
    view.pending = true;
    return;
  }
  view.loading = true;
  try {
    const list = $('list');
    const first = Math.max(0, Math.floor(list.scrollTop / ROW_H) - OVERSCAN);
    const count = Math.ceil(list.clientHeight / ROW_H) + 2 * OVERSCAN;
    const q = encodeURIComponent($('filter').value);
    const state = encodeURIComponent($('state').value);
    const page = await api(`/ui/api/requests?offset=${first}&limit=${count}&q=${q}&state=${state}${atParam()}`);
    view.total = page.total;
    $('count').textContent = `${page.total} shown`;
    $('list-spacer').style.height = `${page.total * ROW_H}px`;
    updateStateOptions(page.states);
    const now = nowMs();
    const html = page.items.map((item, i) => {
      const top = (page.offset + i) * ROW_H;
      const selected = item.request_id === view.selected ? ' selected' : '';
      return `<div class="row${selected}" style="top:${top}px" data-id="${esc(item.request_id)}" data-state="${esc(item.state)}"><span title="${esc(item.request_id)}">${esc(item.request_id)}</span><span class="state ${esc(item.state)}">${esc(item.state)}</span><span title="${esc(item.worker ?? item.prefill_worker)}">${esc(item.worker ?? item.prefill_worker ?? '')}</span><span>${ms(now - item.started_ms)}</span></div>`;
    });
    $('list-spacer').innerHTML = html.join('');
  } catch (error) {
    $('count').textContent = error.message;
  } finally {
    view.loading = false;
    if (view.pending) {
      view.pending = false;
      void refreshList();
    }
  }
}

function updateStateOptions(states) {
  const select = $('state');
  const known = new Set([...select.options].map((o) => o.value));
  for (const state of Object.keys(states).sort()) {
    if (known.has(state)) continue;
    const option = document.createElement('option');
    option.value = state;
    option.textContent = state;
    select.append(option);
  }
  for (const option of select.options) {
    if (option.value && option.value !== 'live' && option.value !== 'terminal') option.textContent = `${option.value} (${states[option.value] ?? 0})`;
  }
}

// ---- one request ------------------------------------------------------------------------------

async function refreshDetail() {
  if (!view.selected) return;
  let detail;
  try {
    detail = await api(`/ui/api/requests/${encodeURIComponent(view.selected)}?_=1${atParam()}`);
  } catch (error) {
    $('detail').innerHTML = `<h2>${esc(view.selected)}</h2><p class="err">${esc(error.message)} (not recorded yet at this time, or forgotten)</p>`;
    return;
  }
  const byMachine = new Map();
  for (const record of detail.transitions) {
    const entry = byMachine.get(record.machine) ?? { current: null, visited: new Set(), taken: new Set(), worker: record.worker };
    entry.visited.add(record.to);
    if (record.from !== null) entry.taken.add(`${record.from}>${record.to}`);
    entry.current = record.to;
    entry.worker = record.worker;
    byMachine.set(record.machine, entry);
  }
  const root = $('detail');
  root.innerHTML = `<h2 id="detail-title">${esc(detail.request_id)}</h2>
    <p>state <b class="state ${esc(detail.state)}" id="detail-state">${esc(detail.state)}</b>${detail.room_state ? `, room ${esc(detail.room)} <b class="state ${esc(detail.room_state)}">${esc(detail.room_state)}</b> on ${esc(detail.prefill_worker)}` : ''}${detail.worker ? `, decode on ${esc(detail.worker)}` : ''}</p>
    <h3>Machines</h3><div class="diagrams" id="diagrams"></div>
    <h3>Timeline</h3><div id="timeline"></div>
    <h3>Transitions${detail.transitions_dropped ? ` (${detail.transitions_dropped} older ones dropped)` : ''}</h3><div id="transitions"></div>`;
  for (const [machine, entry] of byMachine) {
    const diagram = view.machines?.[machine];
    if (!diagram) continue;
    const box = document.createElement('div');
    box.className = 'diagram';
    box.innerHTML = `<div class="muted">${esc(machine)} machine on ${esc(entry.worker)}</div>`;
    box.append(renderDiagram(diagram, entry));
    $('diagrams').append(box);
  }
  renderTimeline(detail);
  const start = detail.started_ms;
  $('transitions').innerHTML = `<table><thead><tr><th>+time</th><th>machine</th><th>worker</th><th>from</th><th>to</th><th>event</th></tr></thead><tbody>${detail.transitions
    .map((r) => `<tr><td>${ms(r.ts_ms - start)}</td><td>${esc(r.machine)}</td><td>${esc(r.worker)}</td><td class="state">${esc(r.from ?? '·')}</td><td class="state ${esc(r.to)}">${esc(r.to)}</td><td>${esc(r.event)}</td></tr>`)
    .join('')}</tbody></table>`;
}

function renderTimeline(detail) {
  const start = detail.started_ms;
  const open = detail.timeline.some((s) => s.end_ms === null);
  const end = Math.max(open ? nowMs() : detail.updated_ms, start + 0.001);
  const span = end - start;
  const lanes = new Map();
  for (const segment of detail.timeline) {
    const key = `${segment.machine} @ ${segment.worker}`;
    (lanes.get(key) ?? lanes.set(key, []).get(key)).push(segment);
  }
  const stateColor = new Map();
  const html = [...lanes].map(([lane, segments]) => {
    const bars = segments.map((s) => {
      if (!stateColor.has(s.state)) stateColor.set(s.state, colors[stateColor.size % colors.length]);
      const segEnd = s.end_ms ?? end;
      const left = (100 * (s.start_ms - start)) / span;
      const width = Math.max(0, (100 * (segEnd - s.start_ms)) / span);
      return `<div class="segment" data-state="${esc(s.state)}" style="left:${left}%;width:${width}%;background:${stateColor.get(s.state)}" title="${esc(s.state)} on ${esc(s.worker)}: ${ms(segEnd - s.start_ms)}${s.end_ms === null ? ' so far' : ''}">${esc(s.state)}</div>`;
    });
    return `<div class="lane"><span>${esc(lane)}</span><div class="track">${bars.join('')}</div></div>`;
  });
  const durations = detail.timeline
    .filter((s) => !['done', 'failed', 'cancelled', 'released', 'expired'].includes(s.state) || s.end_ms !== s.start_ms)
    .map((s) => `<tr><td>${esc(s.machine)}</td><td>${esc(s.worker)}</td><td class="state ${esc(s.state)}">${esc(s.state)}</td><td>${ms((s.end_ms ?? end) - s.start_ms)}${s.end_ms === null ? ' so far' : ''}</td></tr>`);
  $('timeline').innerHTML = `${html.join('')}<div class="axis"><span>0</span><span>${ms(span)}</span></div>
    <table><thead><tr><th>machine</th><th>worker</th><th>state</th><th>time in state</th></tr></thead><tbody>${durations.join('')}</tbody></table>`;
}

// ---- wiring -----------------------------------------------------------------------------------

function select(id) {
  view.selected = id;
  if (location.hash !== `#/request/${encodeURIComponent(id)}`) history.replaceState(null, '', `#/request/${encodeURIComponent(id)}`);
  void refreshList();
  void refreshDetail();
}

async function refreshInfo() {
  view.info = await api('/ui/api/info');
  view.infoAt = performance.now();
  $('mode').textContent = view.info.mode === 'live' ? 'live' : 'trace replay';
  $('title').textContent = view.info.title ?? '';
  $('feed').textContent = `${view.info.requests} requests tracked, ring ${view.info.ring.size}/${view.info.ring.capacity} transitions`;
}

function setupReplay() {
  const range = view.info.time_range;
  if (view.info.mode !== 'trace' || !range) return;
  $('replay').hidden = false;
  const slider = $('time');
  slider.min = '0';
  slider.max = String(Math.ceil(range.end_ms - range.start_ms));
  slider.value = slider.max;
  const apply = () => {
    view.at = range.start_ms + Number(slider.value);
    $('time-label').textContent = `+${ms(Number(slider.value))} of ${ms(range.end_ms - range.start_ms)}`;
    view.dirty = true;
  };
  slider.addEventListener('input', apply);
  apply();
  let playing = null;
  $('play').addEventListener('click', () => {
    if (playing) {
      clearInterval(playing);
      playing = null;
      $('play').textContent = '▶';
      return;
    }
    if (Number(slider.value) >= Number(slider.max)) slider.value = '0';
    const step = Math.max(1, Number(slider.max) / 200);
    $('play').textContent = '❚❚';
    playing = setInterval(() => {
      slider.value = String(Math.min(Number(slider.max), Number(slider.value) + step));
      apply();
      if (Number(slider.value) >= Number(slider.max)) $('play').click();
    }, 100);
  });
}

async function main() {
  await refreshInfo();
  view.machines = await api('/ui/api/machines');
  setupReplay();
  $('list').addEventListener('scroll', () => void refreshList());
  $('filter').addEventListener('input', () => {
    $('list').scrollTop = 0;
    void refreshList();
  });
  $('state').addEventListener('change', () => {
    $('list').scrollTop = 0;
    void refreshList();
  });
  $('list').addEventListener('click', (event) => {
    const row = event.target.closest('.row[data-id]');
    if (row) select(row.dataset.id);
  });
  const fromHash = /^#\/request\/(.+)$/.exec(location.hash);
  if (fromHash) view.selected = decodeURIComponent(fromHash[1]);
  if (view.info.mode === 'live') {
    const events = new EventSource('/ui/api/events');
    events.addEventListener('transitions', () => {
      view.dirty = true;
    });
    events.addEventListener('error', () => ($('feed').textContent = 'event stream disconnected; retrying…'));
    setInterval(() => void refreshCluster(), 2000);
  }
  // Redraw at most twice a second, however fast transitions arrive.
  setInterval(() => {
    if (!view.dirty) return;
    view.dirty = false;
    if (view.info.mode === 'live') void refreshInfo();
    void refreshList();
    void refreshDetail();
  }, 500);
  await refreshCluster();
  await refreshList();
  await refreshDetail();
}

void main();
