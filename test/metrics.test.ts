import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';
import { serveMetrics } from '../src/metrics/metrics-server.js';
import { waitForIdle } from './helpers/cluster-idle.js';
import { parsePrometheusText, valueOf, type Family } from './helpers/prometheus-text.js';

const model = 'tandem-sim';
const pageCount = 256;
const prompt = 'Once upon a time';
const promptTokens = new TextEncoder().encode(prompt).length;

async function scrape(url: string): Promise<Map<string, Family>> {
  const response = await fetch(url);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePrometheusText(await response.text());
}

async function complete(cluster: Cluster, body: Record<string, unknown>): Promise<Response> {
  return fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
}

describe('metrics', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await createCluster({ port: 0, log: silentLogger, seed: 99, engine: { speedup: Infinity }, pageCount, prefillWorkers: 1, decodeWorkers: 1 });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it('moves counters and histograms by exactly what a batch of requests did, in a valid exposition', async () => {
    const before = await scrape(`${cluster.url}/metrics`);
    const requests = 5;
    const maxTokens = 8;
    const streamed = await Promise.all(
      Array.from({ length: requests }, (_, i) => complete(cluster, { model, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: i % 2 === 0 })),
    );
    for (const response of streamed) {
      expect(response.status).toBe(200);
      await response.text();
    }
    const refused = await complete(cluster, { model: 'no-such-model', prompt, max_tokens: 4 });
    expect(refused.status).toBe(404);
    await waitForIdle(cluster);
    const after = await scrape(`${cluster.url}/metrics`);
    const delta = (name: string, labels: Record<string, string> = {}): number => valueOf(after, name, labels) - valueOf(before, name, labels);

    expect(delta('tandem_requests_total', { outcome: 'done', code: 'none' })).toBe(requests);
    expect(delta('tandem_requests_total', { outcome: 'failed', code: 'model_not_found' })).toBe(1);
    expect(delta('tandem_decode_requests_total', { outcome: 'done', code: 'none' })).toBe(requests);
    expect(delta('tandem_input_tokens_total')).toBe(requests * promptTokens);
    expect(delta('tandem_output_tokens_total')).toBe(requests * maxTokens);
    expect(delta('tandem_time_to_first_token_seconds_count')).toBe(requests);
    expect(delta('tandem_request_duration_seconds_count', { outcome: 'done' })).toBe(requests);
    // Every token after the first follows another one.
    expect(delta('tandem_inter_token_latency_seconds_count')).toBe(requests * (maxTokens - 1));
    for (const state of ['bootstrap', 'allocation', 'prefill', 'transfer', 'polling', 'cleanup', 'decode']) {
      expect(delta('tandem_request_state_seconds_count', { state }), state).toBe(requests);
    }
    expect(delta('tandem_request_state_seconds_count', { state: 'done' })).toBe(0);
    expect(delta('tandem_kv_transfer_seconds_count', { fabric: 'sim' })).toBe(requests);
    expect(delta('tandem_kv_transfer_bytes_count', { fabric: 'sim' })).toBe(requests);
    expect(delta('tandem_kv_transfer_bytes_sum', { fabric: 'sim' })).toBeGreaterThan(requests * promptTokens);
    expect(delta('tandem_bootstrap_retries_total')).toBe(0);

    const worker = cluster.decode[0]!.instanceId;
    expect(valueOf(after, 'tandem_kv_pool_capacity_pages', { worker })).toBe(pageCount);
    expect(valueOf(after, 'tandem_kv_pool_used_pages', { worker })).toBe(0);
    expect(valueOf(after, 'tandem_kv_pool_quarantined_pages', { worker })).toBe(0);
    expect(valueOf(after, 'tandem_kv_pool_free_pages', { worker })).toBe(pageCount);
    expect(valueOf(after, 'tandem_rooms_open', { worker: cluster.prefill[0]!.instanceId })).toBe(0);
    expect(valueOf(after, 'tandem_requests_in_flight')).toBe(0);
    expect(valueOf(after, 'tandem_requests_queued', { queue: 'allocation' })).toBe(0);

    expect(after.get('tandem_requests_total')?.type).toBe('counter');
    expect(after.get('tandem_request_state_seconds')?.type).toBe('histogram');
    expect(after.get('tandem_kv_pool_used_pages')?.type).toBe('gauge');
  });

  it('keeps the registries of two clusters in one process apart', async () => {
    const other = await createCluster({ port: 0, log: silentLogger, seed: 7, engine: { speedup: Infinity } });
    try {
      const response = await complete(other, { model, prompt, max_tokens: 2, ignore_eos: true });
      expect(response.status).toBe(200);
      await response.text();
      const mine = valueOf(await scrape(`${cluster.url}/metrics`), 'tandem_requests_total');
      const theirs = valueOf(await scrape(`${other.url}/metrics`), 'tandem_requests_total');
      expect(theirs).toBe(1);
      expect(mine).not.toBe(theirs);
    } finally {
      await other.close();
    }
  });

  it('serves a worker-only process on its own listener, and nothing but /metrics', async () => {
    const workers = await createCluster({ frontend: false, log: silentLogger, seed: 3, engine: { speedup: Infinity } });
    const server = await serveMetrics(workers.metrics, '127.0.0.1', 0);
    try {
      const families = await scrape(server.url);
      expect(valueOf(families, 'tandem_kv_pool_capacity_pages')).toBe(4096);
      expect(families.has('tandem_rooms_open')).toBe(true);
      expect((await fetch(server.url.replace('/metrics', '/other'))).status).toBe(404);
    } finally {
      await server.close();
      await workers.close();
    }
  });

  it('counts a prefill worker leaving discovery as a death seen', async () => {
    const before = valueOf(await scrape(`${cluster.url}/metrics`), 'tandem_worker_deaths_seen_total', { role: 'prefill' });
    await cluster.prefill[0]!.stop();
    const after = valueOf(await scrape(`${cluster.url}/metrics`), 'tandem_worker_deaths_seen_total', { role: 'prefill' });
    expect(after - before).toBe(1);
  });
});
