import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';
import type { RequestDetail, RequestSummary, TransitionRecord } from '../src/internal.js';

async function json<T>(url: string): Promise<T> {
  const response = await fetch(url);
  expect(response.status).toBe(200);
  return (await response.json()) as T;
}

function complete(cluster: Cluster, prompt: string, maxTokens: number): Promise<Response> {
  return fetch(`${cluster.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tandem-sim', prompt, max_tokens: maxTokens, ignore_eos: true }),
  });
}

describe('UI API (GET /ui/api/*) against a running cluster', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await createCluster({ port: 0, log: silentLogger, seed: 7, prefillWorkers: 2, decodeWorkers: 2, engine: { speedup: 20 } });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it('serves the UI page and the machines', async () => {
    const page = await fetch(`${cluster.url}/ui`);
    expect(page.headers.get('content-type')).toContain('text/html');
    expect(await page.text()).toContain('/ui/app.js');
    for (const asset of ['app.js', 'diagram.js', 'app.css']) expect((await fetch(`${cluster.url}/ui/${asset}`)).status).toBe(200);
    const machines = await json<Record<string, { states: Array<{ key: string }> }>>(`${cluster.url}/ui/api/machines`);
    expect(Object.keys(machines)).toEqual(['request', 'room', 'localRequest']);
    const view = await json<{ workers: Array<{ role: string; stats?: unknown }> }>(`${cluster.url}/ui/api/cluster`);
    expect(view.workers.map((w) => w.role).sort()).toEqual(['decode', 'decode', 'prefill', 'prefill']);
  });

  it('shows requests appear and move through the request and room machines, streaming transitions over SSE', async () => {
    const events = await fetch(`${cluster.url}/ui/api/events`);
    expect(events.headers.get('content-type')).toContain('text/event-stream');
    const reader = events.body!.getReader();
    const streamed: TransitionRecord[] = [];
    const reading = (async () => {
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const chunk = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = chunk.split('\n').find((line) => line.startsWith('data: '));
          if (data) streamed.push(...(JSON.parse(data.slice(6)) as { records: TransitionRecord[] }).records);
        }
      }
    })();

    const responses = Array.from({ length: 6 }, (_, i) => complete(cluster, `watch me ${i}`, 48));
    // While they run, some are live (not in a final state) in the list.
    const seenLive = new Set<string>();
    for (let i = 0; i < 100 && seenLive.size === 0; i++) {
      const page = await json<{ items: RequestSummary[] }>(`${cluster.url}/ui/api/requests?state=live`);
      for (const item of page.items) seenLive.add(`${item.request_id}:${item.state}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(seenLive.size).toBeGreaterThan(0);
    for (const response of await Promise.all(responses)) expect(response.status).toBe(200);

    const page = await json<{ total: number; items: RequestSummary[]; states: Record<string, number> }>(`${cluster.url}/ui/api/requests?limit=50`);
    expect(page.total).toBeGreaterThanOrEqual(6);
    const ours = page.items.slice(0, 6);
    expect(ours.every((item) => item.state === 'done' && item.terminal && item.worker?.startsWith('decode-') && item.prefill_worker?.startsWith('prefill-'))).toBe(true);

    const detail = await json<RequestDetail>(`${cluster.url}/ui/api/requests/${ours[0]!.request_id}`);
    const path = detail.transitions.filter((r) => r.machine === 'request').map((r) => r.to);
    expect(path).toEqual(['bootstrap', 'allocation', 'prefill', 'transfer', 'polling', 'cleanup', 'decode', 'done']);
    const roomPath = detail.transitions.filter((r) => r.machine === 'room').map((r) => r.to);
    expect(roomPath[0]).toBe('reserved');
    expect(roomPath).toContain('computing');
    expect(detail.timeline.length).toBe(detail.transitions.length);
    const decodeSegment = detail.timeline.find((s) => s.machine === 'request' && s.state === 'decode')!;
    expect(decodeSegment.end_ms! - decodeSegment.start_ms).toBeGreaterThan(0);
    expect((await fetch(`${cluster.url}/ui/api/requests/no-such-request`)).status).toBe(404);

    for (let i = 0; i < 100 && !streamed.some((r) => r.request_id === ours[0]!.request_id && r.to === 'done'); i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(streamed.filter((r) => r.request_id === ours[0]!.request_id).map((r) => r.to)).toEqual(detail.transitions.map((r) => r.to));
    await reader.cancel();
    await reading.catch(() => {});
  });

  it('stays bounded and answers quickly with 10,000 recorded requests', async () => {
    const { inspection } = cluster;
    const states = ['bootstrap', 'allocation', 'prefill', 'transfer', 'polling', 'cleanup', 'decode', 'done'];
    for (let i = 0; i < 10_000; i++) {
      const to = states[i % states.length]!;
      inspection.record({ ts_ms: 1_000_000 + i, worker: 'decode-synthetic', machine: 'request', request_id: `synthetic-${i}`, from: null, to, event: 'xstate.init' });
    }
    for (let i = 0; i < 10_000; i++) inspection.record({ ts_ms: 2_000_000 + i, worker: 'decode-synthetic', machine: 'request', request_id: `synthetic-${i}`, from: 'x', to: 'failed', event: 'always' });
    expect(inspection.ring.size).toBe(inspection.ring.capacityMax);
    expect(inspection.ring.capacityMax).toBe(10_000);
    expect(inspection.index.size).toBeLessThanOrEqual(10_000);
    const started = performance.now();
    const page = await json<{ total: number; items: RequestSummary[] }>(`${cluster.url}/ui/api/requests?offset=5000&limit=40&q=synthetic-9`);
    const list = await json<{ total: number; items: RequestSummary[] }>(`${cluster.url}/ui/api/requests?state=failed&limit=40`);
    expect(performance.now() - started).toBeLessThan(1000);
    expect(page.items.length).toBeLessThanOrEqual(40);
    expect(list.total).toBe(10_000);
    const info = await json<{ ring: { size: number; capacity: number; recorded: number } }>(`${cluster.url}/ui/api/info`);
    expect(info.ring.size).toBe(10_000);
    expect(info.ring.recorded).toBeGreaterThan(20_000);
  });
});

describe('tandem viz (the UI over a recorded trace)', () => {
  it('replays a trace written with trace.file, as of any time on the slider', async () => {
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { serveTrace } = await import('../src/cli/viz-commands.js');
    const dir = mkdtempSync(join(tmpdir(), 'tandem-viz-'));
    const file = join(dir, 'trace.jsonl');
    const cluster = await createCluster({ port: 0, log: silentLogger, seed: 3, engine: { speedup: Infinity }, trace: { file } });
    for (let i = 0; i < 3; i++) expect((await complete(cluster, `trace ${i}`, 4)).status).toBe(200);
    await cluster.close();
    const viz = await serveTrace([file], '127.0.0.1', 0);
    try {
      const info = await json<{ mode: string; requests: number; time_range: { start_ms: number; end_ms: number } }>(`${viz.url}/ui/api/info`);
      expect(info.mode).toBe('trace');
      expect(info.requests).toBe(3);
      const end = await json<{ total: number; items: RequestSummary[] }>(`${viz.url}/ui/api/requests?at=${info.time_range.end_ms}`);
      expect(end.items.map((item) => item.state)).toEqual(['done', 'done', 'done']);
      const start = await json<{ total: number; items: RequestSummary[] }>(`${viz.url}/ui/api/requests?at=${info.time_range.start_ms}`);
      expect(start.items.map((item) => item.state)).toEqual(['bootstrap']);
      expect((await fetch(`${viz.url}/ui`)).status).toBe(200);
    } finally {
      await viz.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
