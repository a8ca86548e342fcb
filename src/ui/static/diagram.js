// Draws a machine diagram (the JSON form of `tandem machines`) as SVG, in layers: the initial
// state on top, each state one layer below the first state that reaches it, final states last.
// The current state and the transitions a request took are highlighted.

const NODE_W = 132;
const NODE_H = 30;
const GAP_X = 26;
const GAP_Y = 56;
const PAD = 24;
const SVG_NS = 'http://www.w3.org/2000/svg';

function layers(diagram) {
  const depth = new Map([[diagram.initial, 0]]);
  const queue = [diagram.initial];
  while (queue.length > 0) {
    const key = queue.shift();
    for (const t of diagram.transitions) {
      if (t.source !== key || t.target === null || t.fromRoot || depth.has(t.target)) continue;
      if (diagram.states.find((s) => s.key === t.target)?.final) continue;
      depth.set(t.target, depth.get(key) + 1);
      queue.push(t.target);
    }
  }
  let last = Math.max(...depth.values());
  for (const state of diagram.states) if (!state.final && !depth.has(state.key)) depth.set(state.key, ++last);
  for (const state of diagram.states) if (state.final) depth.set(state.key, last + 1);
  const rows = [];
  for (const state of diagram.states) (rows[depth.get(state.key)] ??= []).push(state);
  return rows.filter(Boolean);
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * @param diagram the machine's JSON diagram
 * @param highlight { current: string | null, visited: Set<string>, taken: Set<string> of "from>to" }
 */
export function renderDiagram(diagram, highlight) {
  const rows = layers(diagram);
  const widest = Math.max(...rows.map((row) => row.length));
  const width = PAD * 2 + widest * NODE_W + (widest - 1) * GAP_X + 80;
  const height = PAD * 2 + rows.length * NODE_H + (rows.length - 1) * GAP_Y;
  const pos = new Map();
  rows.forEach((row, r) => {
    const rowWidth = row.length * NODE_W + (row.length - 1) * GAP_X;
    const x0 = (width - 80 - rowWidth) / 2;
    row.forEach((state, i) => pos.set(state.key, { x: x0 + i * (NODE_W + GAP_X), y: PAD + r * (NODE_H + GAP_Y), row: r }));
  });
  const svg = el('svg', { width, height, viewBox: `0 0 ${width} ${height}`, 'data-machine': diagram.id, role: 'img' });
  const defs = el('defs', {});
  for (const [id, color] of [['arrow', '#b8bfcc'], ['arrow-taken', '#2563eb']]) {
    const marker = el('marker', { id: `${diagram.id}-${id}`, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: 'auto-start-reverse' });
    marker.append(el('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: color }));
    defs.append(marker);
  }
  svg.append(defs);

  // One drawn edge per (source, target) pair; its tooltip lists every event that takes it.
  const edges = new Map();
  for (const t of diagram.transitions) {
    const target = t.target ?? t.source;
    const key = `${t.source}>${target}`;
    const edge = edges.get(key) ?? { source: t.source, target, labels: [], root: true };
    edge.labels.push(t.guard ? `${t.label} [${t.guard}]` : t.label);
    edge.root = edge.root && t.fromRoot;
    edges.set(key, edge);
  }
  const edgeLayer = el('g', {});
  for (const [key, edge] of edges) {
    const a = pos.get(edge.source);
    const b = pos.get(edge.target);
    const taken = highlight.taken.has(key);
    const g = el('g', { class: `edge${edge.root ? ' root' : ''}${taken ? ' taken' : ''}`, 'data-edge': key });
    let d;
    let labelAt;
    if (edge.source === edge.target) {
      const x = a.x + NODE_W;
      const y = a.y + NODE_H / 2;
      d = `M ${x} ${y - 8} C ${x + 34} ${y - 26}, ${x + 34} ${y + 26}, ${x} ${y + 8}`;
      labelAt = { x: x + 30, y };
    } else if (b.row > a.row) {
      const x1 = a.x + NODE_W / 2;
      const y1 = a.y + NODE_H;
      const x2 = b.x + NODE_W / 2;
      const y2 = b.y;
      const bend = (y2 - y1) / 2;
      d = `M ${x1} ${y1} C ${x1} ${y1 + bend}, ${x2} ${y2 - bend}, ${x2} ${y2}`;
      labelAt = { x: (x1 + x2) / 2, y: (y1 + y2) / 2 };
    } else {
      // Back or sideways edges go around the right of the nodes.
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x + NODE_W;
      const y2 = b.y + NODE_H / 2;
      const out = Math.max(x1, x2) + 40;
      d = `M ${x1} ${y1} C ${out} ${y1}, ${out} ${y2}, ${x2} ${y2}`;
      labelAt = { x: out - 10, y: (y1 + y2) / 2 };
    }
    g.append(el('path', { d, 'marker-end': `url(#${diagram.id}-${taken ? 'arrow-taken' : 'arrow'})` }));
    g.append(el('title', {}, `${edge.source} → ${edge.target}: ${edge.labels.join(', ')}`));
    if (!edge.root && taken) g.append(el('text', { x: labelAt.x, y: labelAt.y }, edge.labels[0]));
    edgeLayer.append(g);
  }
  svg.append(edgeLayer);
  const start = pos.get(diagram.initial);
  svg.append(el('circle', { cx: start.x + NODE_W / 2, cy: start.y - 12, r: 5, fill: '#374151' }));
  for (const state of diagram.states) {
    const p = pos.get(state.key);
    const classes = ['node'];
    if (state.final) classes.push('final');
    if (highlight.visited.has(state.key)) classes.push('visited');
    if (highlight.current === state.key) classes.push('current');
    const g = el('g', { class: classes.join(' '), 'data-state': state.key, transform: `translate(${p.x},${p.y})` });
    g.append(el('rect', { width: NODE_W, height: NODE_H, rx: state.final ? 15 : 6 }));
    g.append(el('text', { x: NODE_W / 2, y: NODE_H / 2 }, state.key));
    g.append(el('title', {}, state.invokes.length ? `${state.key} — invokes ${state.invokes.join(', ')}` : state.key));
    svg.append(g);
  }
  return svg;
}
