import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SimEngine } from '../src/engine/sim/sim-engine.js';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';
import { natsBackends } from '../src/runtime/nats-backends.js';
import { waitUntil } from '../src/time/clock.js';
import { realClock } from '../src/time/real-clock.js';
import { startNatsServer, type NatsServer } from './helpers/nats-server.js';

// KV-aware routing over a real NATS server: prefill workers publish KV events on NATS, the
// frontend's indexer follows them, and a gap in a worker's sequence numbers is repaired by asking
// that worker for its blocks over NATS.

describe('KV-aware routing over NATS', () => {
  let nats: NatsServer;
  let cluster: Cluster;

  beforeAll(async () => {
    nats = await startNatsServer();
    cluster = await createCluster({
      port: 0,
      seed: 12,
      log: silentLogger,
      prefillWorkers: 2,
      decodeWorkers: 1,
      routing: 'kv-aware',
      engine: { speedup: Number.POSITIVE_INFINITY },
      backends: natsBackends({ servers: [nats.url], name: 'kv-aware-test' }, { kind: 'tcp' }, { bucket: `kv_aware_${process.pid}` }),
    });
  }, 30_000);

  afterAll(async () => {
    await cluster?.close();
    await nats?.stop();
  });

  const complete = async (prompt: string): Promise<void> => {
    const response = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tandem-sim', prompt, max_tokens: 2 }),
    });
    expect(response.status).toBe(200);
  };

  it('routes a shared prefix to the worker that caches it, and resyncs a worker after a gap', async () => {
    const prefix = 'You are a careful assistant who answers briefly. '.repeat(4);
    const feed = cluster.kvFeed!;
    await complete(`${prefix}first question`);
    // The KV event travels over NATS; wait until the index has it.
    expect(await waitUntil(realClock, () => feed.indexer.stats().entries > 0, 5_000)).toBe(true);
    for (let i = 0; i < 4; i++) await complete(`${prefix}question ${i}`);
    const stats = cluster.prefill.map((worker) => (worker.engine as SimEngine).stats());
    console.log(`prefills per worker: ${stats.map((s) => s.prefills).join(', ')}; cached tokens: ${stats.map((s) => s.cachedTokens).join(', ')}`);
    // Every later request found the prefix cached on the worker that had it.
    expect(stats.reduce((sum, s) => sum + s.cachedTokens, 0)).toBeGreaterThanOrEqual(4 * Math.floor(prefix.length / 16) * 16);

    // A gap: an event far ahead of the worker's sequence makes the indexer ask that worker for its blocks.
    const holder = cluster.prefill.find((worker) => (worker.engine as SimEngine).stats().prefills > 0)!;
    const gapsBefore = feed.indexer.stats().gaps;
    feed.apply({ worker: holder.instanceId, seq: 1_000_000, kind: 'removed', blocks: [] });
    expect(feed.indexer.stats().gaps).toBe(gapsBefore + 1);
    const snapshot = (holder.engine as SimEngine).kvSnapshot();
    expect(feed.indexer.needsResync(holder.instanceId)).toBe(true);
    expect(await waitUntil(realClock, () => !feed.indexer.needsResync(holder.instanceId), 5_000)).toBe(true);
    expect(new Set(feed.indexer.blocksOf(holder.instanceId))).toEqual(new Set(snapshot.blocks));
    await complete(`${prefix}after the resync`);
    expect((holder.engine as SimEngine).stats().lastCachedTokens).toBeGreaterThanOrEqual(Math.floor(prefix.length / 16) * 16);
  }, 30_000);
});
