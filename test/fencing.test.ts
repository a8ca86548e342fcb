import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';
import { runAggregated, realClock } from '../src/internal.js';
import { SimEngine } from '../src/engine/sim/sim-engine.js';
import { waitFor } from './helpers/deferred.js';
import { waitForIdle } from './helpers/cluster-idle.js';

// Pages whose transfer is aborted must stay fenced until the prefill side acknowledges the
// abort: the writes still in flight then land in the aborted room's own quarantined pages and
// never in pages that were handed to another request.

const fabricLatencyMs = 150;
const pageBytes = 1024;

describe('fencing of aborted transfers', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await createCluster({
      port: 0,
      seed: 11,
      log: silentLogger,
      pageBytes,
      pageCount: 512,
      fabric: { latencyMs: fabricLatencyMs },
      engine: { speedup: Number.POSITIVE_INFINITY },
    });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it('quarantines the pages of a request cancelled mid-transfer until the writes in flight have landed, then frees them', async () => {
    const decode = () => cluster.stats().decode[0]!;
    const controller = new AbortController();
    const prompt = 'x'.repeat(3000); // 3000 tokens × 64 KV bytes: about 190 pages, several writes
    const response = fetch(`${cluster.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tandem-sim', prompt, max_tokens: 4, stream: true }),
      signal: controller.signal,
    }).catch((error: unknown) => error);
    await waitFor(() => decode().pool.held > 0 && cluster.stats().prefill[0]!.rooms === 1, 5000, 'the pages to be allocated');
    const appliedBeforeCancel = decode().region.appliedWrites;
    controller.abort();
    await response;

    await waitFor(() => decode().pool.quarantined > 0, 2000, 'the pages to be quarantined');
    expect(decode().fencedRooms).toBe(1);
    await waitForIdle(cluster);

    const after = decode();
    expect(after.region.appliedWrites).toBeGreaterThan(appliedBeforeCancel);
    expect(after.region.rejectedWrites).toBe(0);
    expect(after.finished.cancelled).toBe(1);
    expect(cluster.stats().prefill[0]!.retired.released).toBe(1);
  });

  it('serves the next request correctly from the pages the cancelled one gave back', async () => {
    const prompt = 'the quick brown fox '.repeat(150);
    const response = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tandem-sim', prompt, max_tokens: 12, temperature: 0, ignore_eos: true }),
    });
    const body = (await response.json()) as { choices: Array<{ text: string }> };
    const engine = new SimEngine({ clock: realClock, speedup: Number.POSITIVE_INFINITY });
    const reference = await runAggregated(engine, engine.tokenize(prompt), { temperature: 0, topP: 1, seed: 0, maxTokens: 12, ignoreEos: true });
    const detokenizer = engine.createDetokenizer();
    expect(body.choices[0]!.text).toBe(detokenizer.push(reference) + detokenizer.flush());
    await waitForIdle(cluster);
    expect(cluster.stats().decode[0]!.region.rejectedWrites).toBe(0);
  });
});
